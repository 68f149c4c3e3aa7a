//! `tollgate token`: mint development keys and tokens, so a policy can be
//! tried without an IdP or an attestation service.
//!
//! ```text
//! tollgate token keygen --alg ES256 --kid dev-1 --out-dir ./keys      # key.pem + jwks.json
//! tollgate token user --key ./keys/key.pem --alg ES256 --kid dev-1 \
//!     --issuer https://id.example/ --audience bikes-api --subject alice --scope "read rent"
//! tollgate token app --secret "$(cat approov-secret.b64)" \
//!     --authorization "Bearer $USER_TOKEN" --device dev-42 --fractional-exp
//! tollgate token jkt --key ./dpop/key.pem --alg ES256          # cnf.jkt for `user --jkt`
//! tollgate token dpop --key ./dpop/key.pem --alg ES256 --method GET \
//!     --url https://api.bikes.example/v1/bikes --access-token "$USER_TOKEN"
//! tollgate token sign --secret "$(cat hmac.b64)" --keyid commuter-ios --method POST \
//!     --url https://api.bikes.example/v1/rentals --body '{"bike":7}'
//! ```
//!
//! Tokens go to stdout (one line), so they compose with shell variables.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::authn::mint::{self, AppClaims, SigningKey, UserClaims};
use crate::authn::{certificate, dpop, jwk, signature};
use crate::policy::duration::parse_duration;

/// `tollgate token` arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// What to mint.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Generate a key pair: the private key (PEM) and a JWKS with its
    /// public key (for `jwks: { inline: … }`, a Secret, or a test IdP).
    Keygen(KeygenArgs),
    /// Mint a user access token (RFC 9068 claims, `typ: at+jwt`).
    User(UserArgs),
    /// Mint an Approov-style app attestation token (HMAC, base64 secret)
    /// with the `pay` binding to an Authorization value.
    App(AppArgs),
    /// Print the RFC 7638 thumbprint of a key: the `cnf.jkt` of tokens
    /// bound to it (`user --jkt`).
    Jkt(JktArgs),
    /// Mint a DPoP proof (RFC 9449) for one request.
    Dpop(DpopArgs),
    /// Sign a request (RFC 9421): prints the Content-Digest,
    /// Signature-Input and Signature header lines to send.
    Sign(SignArgs),
}

/// `tollgate token jkt`.
#[derive(Debug, clap::Args)]
pub struct JktArgs {
    /// The private key (PEM) from `keygen`.
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, default_value = "ES256")]
    pub alg: String,
}

/// `tollgate token dpop`.
#[derive(Debug, clap::Args)]
pub struct DpopArgs {
    /// The DPoP private key (PEM) from `keygen`.
    #[arg(long)]
    pub key: PathBuf,
    /// ES256, PS256, RS256 or EdDSA.
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    /// The request method (`htm`).
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request URL (`htu`; query and fragment are ignored by verifiers).
    #[arg(long)]
    pub url: String,
    /// The access token the proof accompanies (adds `ath`).
    #[arg(long)]
    pub access_token: Option<String>,
    /// The proof's `jti`; random by default.
    #[arg(long)]
    pub jti: Option<String>,
}

/// `tollgate token sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// HMAC secret, base64 (the app's `signingKey`): `hmac-sha256`.
    #[arg(long, env = "TOLLGATE_SIGNING_SECRET", conflicts_with = "key")]
    pub secret: Option<String>,
    /// A P-256 or Ed25519 private key (PEM): `ecdsa-p256-sha256` / `ed25519`
    /// (the installation key whose public half is the app token's `ipk`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The `keyid` parameter (the app's `appId` for HMAC).
    #[arg(long)]
    pub keyid: Option<String>,
    /// The signature label; `install` for the installation key.
    #[arg(long, default_value = "sig1")]
    pub label: String,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request URL as the client sends it.
    #[arg(long)]
    pub url: String,
    /// A header the request carries, `name: value` (repeatable); covered
    /// only when listed with `--component`.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// The request body (adds Content-Digest, sha-256).
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// The request body, from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// A covered component (repeatable). Default: @method @authority @path,
    /// plus content-digest when there is a body.
    #[arg(long = "component")]
    pub components: Vec<String>,
    /// The `nonce` parameter; random by default, `none` for no nonce.
    #[arg(long)]
    pub nonce: Option<String>,
    /// Also set `expires` this far after `created` (e.g. 5m).
    #[arg(long)]
    pub expires_in: Option<String>,
}

/// `tollgate token keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// ES256, RS256, PS256 or EdDSA.
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    /// The key id (`kid`) published in the JWKS.
    #[arg(long, default_value = "dev-1")]
    pub kid: String,
    /// Write `key.pem` and `jwks.json` here instead of printing JSON.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// `tollgate token user`.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// The private key (PEM) from `keygen`.
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    #[arg(long, default_value = "dev-1")]
    pub kid: String,
    #[arg(long)]
    pub issuer: String,
    #[arg(long)]
    pub audience: String,
    #[arg(long)]
    pub subject: String,
    /// Lifetime, e.g. 5m, 1h.
    #[arg(long, default_value = "1h")]
    pub lifetime: String,
    /// Space-separated scopes.
    #[arg(long)]
    pub scope: Option<String>,
    /// Bind the token to this client certificate (PEM file): RFC 8705
    /// `cnf.x5t#S256`.
    #[arg(long)]
    pub bind_certificate: Option<PathBuf>,
    /// Bind the token to a DPoP key: `cnf.jkt` (RFC 9449).
    #[arg(long)]
    pub jkt: Option<String>,
}

/// `tollgate token app`.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// The attestation secret, base64 (Approov's format).
    #[arg(long, env = "TOLLGATE_APP_SECRET")]
    pub secret: String,
    /// HS256, HS384 or HS512.
    #[arg(long, default_value = "HS256")]
    pub alg: String,
    /// The `kid` header, when the policy's keys have ids.
    #[arg(long)]
    pub kid: Option<String>,
    /// The Authorization value (e.g. `Bearer eyJ…`) the `pay` claim binds.
    #[arg(long)]
    pub authorization: Option<String>,
    /// Further bound header values, in the policy's `binding.headers` order
    /// after the Authorization value.
    #[arg(long = "bind")]
    pub bind: Vec<String>,
    /// The device id (`did`).
    #[arg(long)]
    pub device: Option<String>,
    /// Lifetime, e.g. 5m.
    #[arg(long, default_value = "5m")]
    pub lifetime: String,
    /// Keep the fraction of a second in `exp`, as Approov does
    /// (`4708683205.891912`).
    #[arg(long)]
    pub fractional_exp: bool,
    /// Extra string claims, `name=value` (e.g. `app_id=commuter-ios`).
    #[arg(long = "claim")]
    pub claims: Vec<String>,
}

/// Runs `tollgate token`.
pub fn main(args: TokenArgs) -> ExitCode {
    match run(args) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tollgate token: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Mints what `args` asks for; the text to print.
pub fn run(args: TokenArgs) -> anyhow::Result<String> {
    match args.command {
        TokenCommand::Keygen(args) => keygen(args),
        TokenCommand::User(args) => user(args),
        TokenCommand::App(args) => app(args),
        TokenCommand::Jkt(args) => jkt(args),
        TokenCommand::Dpop(args) => dpop_proof(args),
        TokenCommand::Sign(args) => sign_request(args),
    }
}

fn load_key(path: &std::path::Path, alg: &str) -> anyhow::Result<SigningKey> {
    let alg = mint::key_algorithm(alg)?;
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(SigningKey::from_pem(alg, "dpop", &pem)?)
}

fn jkt(args: JktArgs) -> anyhow::Result<String> {
    let key = load_key(&args.key, &args.alg)?;
    dpop::key_thumbprint(&key).map_err(anyhow::Error::msg)
}

fn dpop_proof(args: DpopArgs) -> anyhow::Result<String> {
    let key = load_key(&args.key, &args.alg)?;
    if dpop::normalize_uri(&args.url).is_none() {
        bail!("--url must be an absolute http(s) URL");
    }
    let claims = dpop::ProofClaims {
        method: &args.method,
        url: &args.url,
        access_token: args.access_token.as_deref(),
        iat: now().floor() as u64,
        jti: args.jti.unwrap_or_else(mint::random_id),
    };
    Ok(dpop::mint_proof(&key, &claims)?)
}

fn sign_request(args: SignArgs) -> anyhow::Result<String> {
    let key = match (&args.secret, &args.key) {
        (Some(secret), None) => signature::keys::SigningKey::Hmac(
            signature::keys::decode_base64(secret).context("--secret is not base64")?,
        ),
        (None, Some(path)) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            signature::keys::SigningKey::from_pem(&pem).map_err(anyhow::Error::msg)?
        }
        _ => bail!("give --secret (hmac-sha256) or --key (ecdsa-p256-sha256, ed25519)"),
    };
    let uri: http::Uri = args.url.parse().context("--url is not a URL")?;
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        Some("http") => "http",
        _ => bail!("--url must be an absolute http(s) URL"),
    };
    let host = uri.host().context("--url has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let body = match (&args.body, &args.body_file) {
        (Some(body), _) => Some(body.as_bytes().to_vec()),
        (None, Some(path)) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        (None, None) => None,
    };
    let mut headers = crate::request::Headers::new();
    for line in &args.headers {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("--header {line:?} is not name: value"))?;
        headers.push(name.trim(), value.trim());
    }
    let mut lines = Vec::new();
    if let Some(body) = &body {
        let field = signature::digest::sha256_field(body);
        headers.push("content-digest", field.clone());
        lines.push(format!("Content-Digest: {field}"));
    }
    let components = if args.components.is_empty() {
        let mut c: Vec<String> = signature::DEFAULT_COMPONENTS.map(String::from).to_vec();
        if body.is_some() {
            c.push("content-digest".into());
        }
        c
    } else {
        args.components.clone()
    };
    let created = now().floor() as i64;
    let expires = match &args.expires_in {
        Some(text) => Some(created + lifetime(text)? as i64),
        None => None,
    };
    let nonce = match args.nonce.as_deref() {
        Some("none") => None,
        Some(n) => Some(n.to_owned()),
        None => Some(mint::random_id()),
    };
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let message = signature::base::Message {
        method: &args.method,
        scheme,
        authority: signature::base::authority(scheme, host, uri.port_u16()),
        path,
        query: uri.query(),
        headers: &headers,
    };
    let fields = signature::sign(
        &message,
        &signature::SignOptions {
            label: &args.label,
            components: &components,
            created,
            expires,
            nonce: nonce.as_deref(),
            keyid: args.keyid.as_deref(),
            include_alg: true,
        },
        &key,
    )
    .map_err(anyhow::Error::msg)?;
    lines.push(format!("Signature-Input: {}", fields.signature_input));
    lines.push(format!("Signature: {}", fields.signature));
    Ok(lines.join("\n"))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn lifetime(text: &str) -> anyhow::Result<f64> {
    parse_duration(text)
        .map(|d| d.as_secs_f64())
        .map_err(anyhow::Error::msg)
}

fn keygen(args: KeygenArgs) -> anyhow::Result<String> {
    let alg = mint::key_algorithm(&args.alg)?;
    let key = SigningKey::generate(alg, &args.kid)?;
    let jwks = mint::jwks([&key]);
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key_path = dir.join("key.pem");
            write_private(&key_path, &key.private_pem())?;
            let jwks_path = dir.join("jwks.json");
            std::fs::write(&jwks_path, serde_json::to_string_pretty(&jwks)?)
                .with_context(|| format!("writing {}", jwks_path.display()))?;
            Ok(format!(
                "wrote {} (private) and {} (public JWKS)",
                key_path.display(),
                jwks_path.display()
            ))
        }
        None => Ok(serde_json::to_string_pretty(&json!({
            "privateKeyPem": key.private_pem(),
            "jwks": jwks,
        }))?),
    }
}

fn write_private(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    Ok(())
}

fn user(args: UserArgs) -> anyhow::Result<String> {
    let alg = mint::key_algorithm(&args.alg)?;
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let key = SigningKey::from_pem(alg, &args.kid, &pem)?;
    let cnf_x5t_s256 = match &args.bind_certificate {
        Some(path) => {
            let cert = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(certificate::thumbprint(&cert).context("the file holds no PEM certificate")?)
        }
        None => None,
    };
    let claims = UserClaims {
        issuer: args.issuer,
        audience: args.audience,
        subject: args.subject,
        now: now(),
        lifetime_secs: lifetime(&args.lifetime)?,
        scope: args.scope,
        cnf_x5t_s256,
        cnf_jkt: args.jkt,
    };
    Ok(key.sign(Some("at+jwt"), &claims.to_json())?)
}

fn app(args: AppArgs) -> anyhow::Result<String> {
    let alg = jwk::parse_algorithm(&args.alg).map_err(anyhow::Error::msg)?;
    if !jwk::is_symmetric(alg) {
        bail!("app tokens are minted with HS256/384/512 from a base64 secret");
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(args.secret.trim())
        .context("--secret is not base64")?;
    let mut exp = now() + lifetime(&args.lifetime)?;
    if !args.fractional_exp {
        exp = exp.floor();
    }
    let mut extra = Map::new();
    for claim in &args.claims {
        let (name, value) = claim
            .split_once('=')
            .with_context(|| format!("--claim {claim:?} is not name=value"))?;
        extra.insert(name.to_owned(), Value::String(value.to_owned()));
    }
    let claims = AppClaims {
        exp,
        bound_values: args.authorization.into_iter().chain(args.bind).collect(),
        device: args.device,
        extra,
    };
    Ok(mint::sign_hmac(
        alg,
        &secret,
        args.kid.as_deref(),
        &claims.to_json(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_tokens_carry_pay_and_fractional_exp() {
        let token = run(TokenArgs {
            command: TokenCommand::App(AppArgs {
                secret: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
                alg: "HS256".into(),
                kid: None,
                authorization: Some("Bearer abc".into()),
                bind: vec![],
                device: Some("d1".into()),
                lifetime: "5m".into(),
                fractional_exp: true,
                claims: vec!["app_id=commuter".into()],
            }),
        })
        .unwrap();
        let jwt = crate::authn::jwt::parse(&token).unwrap();
        assert_eq!(
            jwt.claims["pay"],
            "w1Xc6WwWEogNEZQP/dkBTThsJT4MNlKmzQanIm970rY="
        );
        assert_eq!(jwt.claims["did"], "d1");
        assert_eq!(jwt.claims["app_id"], "commuter");
        assert!(jwt.claims["exp"].is_f64());
    }

    #[test]
    fn keygen_then_user_token() {
        let dir = tempfile::tempdir().unwrap();
        run(TokenArgs {
            command: TokenCommand::Keygen(KeygenArgs {
                alg: "EdDSA".into(),
                kid: "k".into(),
                out_dir: Some(dir.path().to_owned()),
            }),
        })
        .unwrap();
        let token = run(TokenArgs {
            command: TokenCommand::User(UserArgs {
                key: dir.path().join("key.pem"),
                alg: "EdDSA".into(),
                kid: "k".into(),
                issuer: "https://id.example/".into(),
                audience: "api".into(),
                subject: "alice".into(),
                lifetime: "10m".into(),
                scope: Some("read".into()),
                bind_certificate: None,
                jkt: None,
            }),
        })
        .unwrap();
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwks.json")).unwrap())
                .unwrap();
        let set = crate::authn::jwk::KeySet::from_jwks(&jwks, false).unwrap();
        let jwt = crate::authn::jwt::parse(&token).unwrap();
        assert!(set.verify(&jwt, jsonwebtoken::Algorithm::EdDSA).is_some());
        assert_eq!(jwt.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(jwt.claims["scope"], "read");
    }

    #[test]
    fn dpop_proofs_and_signed_requests_verify() {
        use crate::authn::dpop::DpopPolicy;
        use crate::authn::signature::{KeySource, SignaturePolicy};
        use crate::origin::{self, TrustedOrigin};
        use crate::request::RequestContext;

        let dir = tempfile::tempdir().unwrap();
        run(TokenArgs {
            command: TokenCommand::Keygen(KeygenArgs {
                alg: "ES256".into(),
                kid: "d".into(),
                out_dir: Some(dir.path().to_owned()),
            }),
        })
        .unwrap();
        let key = dir.path().join("key.pem");
        let jkt = run(TokenArgs {
            command: TokenCommand::Jkt(JktArgs {
                key: key.clone(),
                alg: "ES256".into(),
            }),
        })
        .unwrap();
        assert_eq!(jkt.len(), 43);
        let proof = run(TokenArgs {
            command: TokenCommand::Dpop(DpopArgs {
                key: key.clone(),
                alg: "ES256".into(),
                method: "POST".into(),
                url: "https://api.example/v1/rentals".into(),
                access_token: Some("tok".into()),
                jti: None,
            }),
        })
        .unwrap();
        let mut request = RequestContext {
            method: "POST".into(),
            authority: "api.example".into(),
            tls: true,
            ..Default::default()
        };
        request.set_target("/v1/rentals");
        request.headers.push("dpop", proof);
        let origin = origin::resolve(&request, TrustedOrigin::Envoy);
        let policy = DpopPolicy::compile(&Default::default()).unwrap();
        let verified = policy
            .verify_proof(
                &request,
                &origin,
                Some("tok"),
                std::time::Duration::from_secs_f64(now()),
            )
            .unwrap();
        assert_eq!(verified.jkt, jkt);

        let secret = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let lines = run(TokenArgs {
            command: TokenCommand::Sign(SignArgs {
                secret: Some(secret),
                key: None,
                keyid: Some("commuter-ios".into()),
                label: "sig1".into(),
                method: "POST".into(),
                url: "https://api.example/v1/rentals?x=1".into(),
                headers: vec!["content-type: application/json".into()],
                body: Some("{}".into()),
                body_file: None,
                components: vec![],
                nonce: None,
                expires_in: Some("1m".into()),
            }),
        })
        .unwrap();
        request.headers = crate::request::Headers::new();
        for line in lines.lines() {
            let (name, value) = line.split_once(": ").unwrap();
            request.headers.push(name, value);
        }
        request.body = Some(crate::request::Body {
            bytes: b"{}".to_vec(),
            truncated: false,
        });
        struct Keys;
        impl KeySource for Keys {
            fn hmac(&self, keyid: &str) -> Option<(usize, &[u8])> {
                (keyid == "commuter-ios").then_some((0, &[3u8; 32][..]))
            }
            fn install_key(&self) -> Option<&str> {
                None
            }
        }
        let policy = SignaturePolicy::compile(&crate::policy::types::SignatureSpec {
            required: true,
            components: vec!["@method".into(), "@path".into(), "content-digest".into()],
            require_nonce: true,
            ..Default::default()
        })
        .unwrap();
        let message = crate::authn::signature::base::Message::from_request(&request, &origin);
        let verified = policy
            .verify(
                &request,
                &message,
                &Keys,
                std::time::Duration::from_secs_f64(now()),
            )
            .unwrap()
            .unwrap();
        assert!(verified.nonce.is_some());
    }
}
