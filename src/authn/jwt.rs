//! Compact JWS parsing (RFC 7515 §7.1) and the JWT claim checks (RFC 7519
//! §4.1) shared by user access tokens and app attestation tokens.
//!
//! tollgate parses tokens itself instead of letting a JWT library decide
//! which claims to check: the header is read strictly (a `crit` header is
//! refused, `jku`/`x5u`/`jwk` are never followed), numeric dates may be
//! fractional (Approov emits `exp: 4708683205.891912`), and every failure
//! has a precise, client-safe message. Only the signature arithmetic is
//! delegated (see [`super::jwk`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Longest token accepted. Real access tokens are a few KiB; anything far
/// larger is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Largest numeric date accepted (year 9999), so an absurd `exp` cannot
/// overflow a duration.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// A parsed, not yet verified, compact JWS.
#[derive(Debug)]
pub struct Jwt<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: what the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature segment, as sent.
    pub signature: &'a str,
}

/// The JOSE header fields tollgate reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// Why a token could not be parsed. Messages never echo token content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the token is not a compact JWS (three base64url parts separated by '.')")]
    Shape,
    #[error("the token header is not base64url-encoded JSON")]
    Header,
    #[error("the token header has no string alg")]
    NoAlg,
    #[error("the token header field {0} is not a string")]
    HeaderField(&'static str),
    #[error("the token header lists critical extensions tollgate does not implement")]
    Critical,
    #[error("the token payload is not a base64url-encoded JSON object")]
    Payload,
    #[error("the token signature is not base64url")]
    Signature,
}

/// Parses a compact JWS without verifying it (RFC 7515 §5.2 steps 1–7).
pub fn parse(token: &str) -> Result<Jwt<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    if header_b64.is_empty() || payload_b64.is_empty() || signature.is_empty() {
        return Err(JwtError::Shape);
    }
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];

    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Header)?;
    let header_map: Map<String, Value> =
        serde_json::from_slice(&header_json).map_err(|_| JwtError::Header)?;
    let header = read_header(&header_map)?;

    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| JwtError::Payload)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| JwtError::Payload)?;

    if URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(JwtError::Signature);
    }
    Ok(Jwt {
        header,
        claims,
        signing_input,
        signature,
    })
}

fn read_header(map: &Map<String, Value>) -> Result<Header, JwtError> {
    let alg = match map.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(JwtError::NoAlg),
    };
    // RFC 7515 §4.1.11: a recipient that does not understand a listed
    // extension must reject the JWS. tollgate implements none.
    if map.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let text = |name: &'static str| match map.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::HeaderField(name)),
    };
    Ok(Header {
        alg,
        kid: text("kid")?,
        typ: text("typ")?,
    })
}

/// Why a token's dates are not acceptable.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TimeError {
    #[error("the token has no exp claim")]
    MissingExp,
    #[error("the token's {0} claim is not a NumericDate")]
    Malformed(&'static str),
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
}

/// The validity window of a token, in seconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Times {
    pub exp: f64,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
}

/// Reads a NumericDate claim (RFC 7519 §2): a JSON number of seconds,
/// possibly fractional. `Ok(None)` when absent.
pub fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, TimeError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && (0.0..=MAX_NUMERIC_DATE).contains(&v) => Ok(Some(v)),
            _ => Err(TimeError::Malformed(name)),
        },
        Some(_) => Err(TimeError::Malformed(name)),
    }
}

/// Checks `exp` (required, RFC 7519 §4.1.4), `nbf` (§4.1.5) and `iat`
/// (not in the future) at `now`, tolerating `leeway` seconds of skew.
pub fn check_times(claims: &Map<String, Value>, now: f64, leeway: f64) -> Result<Times, TimeError> {
    let exp = numeric_date(claims, "exp")?.ok_or(TimeError::MissingExp)?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    // §4.1.4: the current time MUST be before exp.
    if now >= exp + leeway {
        return Err(TimeError::Expired);
    }
    if let Some(nbf) = nbf
        && now + leeway < nbf
    {
        return Err(TimeError::NotYetValid);
    }
    if let Some(iat) = iat
        && iat > now + leeway
    {
        return Err(TimeError::IssuedInFuture);
    }
    Ok(Times { exp, nbf, iat })
}

/// True when the `aud` claim (a string or an array of strings, RFC 7519
/// §4.1.3) holds any of `accepted`.
pub fn audience_matches(claims: &Map<String, Value>, accepted: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => accepted.iter().any(|a| a == aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| accepted.iter().any(|a| a == aud)),
        _ => false,
    }
}

/// A string claim, if present and a string.
pub fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    #[test]
    fn parses_header_claims_and_signing_input() {
        let t = token(
            json!({"alg":"ES256","kid":"k1","typ":"at+jwt"}),
            json!({"sub":"u"}),
        );
        let jwt = parse(&t).unwrap();
        assert_eq!(jwt.header.alg, "ES256");
        assert_eq!(jwt.header.kid.as_deref(), Some("k1"));
        assert_eq!(jwt.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(jwt.claims["sub"], "u");
        assert_eq!(jwt.signature, "c2ln");
        assert!(t.starts_with(jwt.signing_input));
        assert_eq!(jwt.signing_input.matches('.').count(), 1);
    }

    #[test]
    fn refuses_malformed_shapes() {
        let good = token(json!({"alg":"ES256"}), json!({}));
        let cases = [
            ("", JwtError::Shape),
            ("a.b", JwtError::Shape),
            ("a.b.c.d", JwtError::Shape),
            (&format!("{good}.x"), JwtError::Shape),
            ("..", JwtError::Shape),
            ("!!.e30.c2ln", JwtError::Header),
            (
                &format!("{}.e30.c2ln", b64(&json!({"kid":"x"}))),
                JwtError::NoAlg,
            ),
            (
                &format!("{}.e30.c2ln", b64(&json!({"alg":1}))),
                JwtError::NoAlg,
            ),
            (
                &format!("{}.e30.c2ln", b64(&json!({"alg":"RS256","kid":7}))),
                JwtError::HeaderField("kid"),
            ),
            (
                &format!("{}.e30.c2ln", b64(&json!({"alg":"RS256","crit":["b64"]}))),
                JwtError::Critical,
            ),
            (
                &format!("{}.WzFd.c2ln", b64(&json!({"alg":"RS256"}))),
                JwtError::Payload,
            ),
            (
                &format!("{}.e30.c2l=", b64(&json!({"alg":"RS256"}))),
                JwtError::Signature,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).unwrap_err(), expected, "{input:?}");
        }
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse(&long).unwrap_err(), JwtError::TooLong);
    }

    #[test]
    fn fractional_dates_are_numeric_dates() {
        let claims = json!({"exp": 4708683205.891912, "nbf": 100, "iat": "1"});
        let claims = claims.as_object().unwrap();
        assert_eq!(numeric_date(claims, "exp"), Ok(Some(4708683205.891912)));
        assert_eq!(numeric_date(claims, "nbf"), Ok(Some(100.0)));
        assert_eq!(
            numeric_date(claims, "iat"),
            Err(TimeError::Malformed("iat"))
        );
        assert_eq!(numeric_date(claims, "missing"), Ok(None));
        let negative = json!({"exp": -1});
        assert_eq!(
            numeric_date(negative.as_object().unwrap(), "exp"),
            Err(TimeError::Malformed("exp"))
        );
    }

    #[test]
    fn time_checks_honour_leeway() {
        let c = json!({"exp": 1000.5, "nbf": 900, "iat": 850});
        let c = c.as_object().unwrap();
        assert!(check_times(c, 1000.0, 0.0).is_ok());
        assert_eq!(check_times(c, 1000.5, 0.0), Err(TimeError::Expired));
        assert!(check_times(c, 1010.0, 30.0).is_ok());
        assert_eq!(check_times(c, 899.0, 0.0), Err(TimeError::NotYetValid));
        assert!(check_times(c, 899.0, 5.0).is_ok());
        let future = json!({"exp": 2000, "iat": 1500});
        assert_eq!(
            check_times(future.as_object().unwrap(), 1000.0, 30.0),
            Err(TimeError::IssuedInFuture)
        );
        let none = json!({"sub": "x"});
        assert_eq!(
            check_times(none.as_object().unwrap(), 0.0, 0.0),
            Err(TimeError::MissingExp)
        );
    }

    #[test]
    fn audience_is_any_of() {
        let accepted = vec!["api".to_owned(), "other".to_owned()];
        let one = json!({"aud": "api"});
        let many = json!({"aud": ["x", "other"]});
        let wrong = json!({"aud": ["x"]});
        let missing = json!({});
        assert!(audience_matches(one.as_object().unwrap(), &accepted));
        assert!(audience_matches(many.as_object().unwrap(), &accepted));
        assert!(!audience_matches(wrong.as_object().unwrap(), &accepted));
        assert!(!audience_matches(missing.as_object().unwrap(), &accepted));
    }
}
