//! API keys: identification of the calling app by a key in a header.
//!
//! An API key identifies an app; it does not authenticate it (anyone who
//! extracts it from the app binary has it), which is why policies add app
//! attestation. Keys are stored and looked up only by their SHA-256 digest:
//! a map lookup on the digest of a high-entropy key leaks nothing useful
//! through timing, and the plain key is never kept or logged after load.

use sha2::{Digest, Sha256};

/// Fewest bits of estimated entropy a key must have.
pub const MIN_ENTROPY_BITS: f64 = 128.0;

/// The digest keys are indexed by.
pub type KeyDigest = [u8; 32];

/// SHA-256 of a presented key.
pub fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// Reads a Secret value: either the key itself (checked for entropy, then
/// reduced to its digest) or `sha256:<64 hex>`, a digest computed by the
/// operator (whose entropy cannot be measured; it is accepted as is).
pub fn load(secret_value: &[u8]) -> Result<KeyDigest, String> {
    let text = std::str::from_utf8(secret_value)
        .map_err(|_| "the API key is not UTF-8 text".to_owned())?
        .trim();
    if let Some(hex) = text.strip_prefix("sha256:") {
        return parse_hex_digest(hex);
    }
    let bits = estimate_entropy_bits(text);
    if bits < MIN_ENTROPY_BITS {
        return Err(format!(
            "the API key has about {bits:.0} bits of entropy; at least {MIN_ENTROPY_BITS:.0} are required (e.g. 32 random hex digits or 22 base64 characters)"
        ));
    }
    Ok(digest(text.as_bytes()))
}

fn parse_hex_digest(hex: &str) -> Result<KeyDigest, String> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a sha256: API key digest must be 64 hex digits".to_owned());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "a sha256: API key digest must be 64 hex digits".to_owned())?;
    }
    Ok(out)
}

/// A conservative estimate of a generated key's entropy: its length times
/// the bits per character of the smallest alphabet that explains it (hex,
/// base64, or the character classes it uses). Keys made of few distinct
/// characters, or of a repeated pattern, count as having almost none: this
/// refuses `aaaa…` and `abcabc…` however long they are.
pub fn estimate_entropy_bits(key: &str) -> f64 {
    let chars: Vec<char> = key.chars().collect();
    if chars.is_empty() {
        return 0.0;
    }
    let distinct = {
        let mut seen: Vec<char> = chars.clone();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    if distinct < 8.min(chars.len()) || is_periodic(&chars) {
        return (distinct as f64).log2() * 2.0;
    }
    let hex_lower = chars
        .iter()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(c));
    let hex_upper = chars
        .iter()
        .all(|c| c.is_ascii_digit() || ('A'..='F').contains(c));
    let alphabet: f64 = if hex_lower || hex_upper {
        16.0
    } else {
        let mut size = 0.0;
        if chars.iter().any(char::is_ascii_lowercase) {
            size += 26.0;
        }
        if chars.iter().any(char::is_ascii_uppercase) {
            size += 26.0;
        }
        if chars.iter().any(char::is_ascii_digit) {
            size += 10.0;
        }
        let symbols: Vec<&char> = chars
            .iter()
            .filter(|c| !c.is_ascii_alphanumeric())
            .collect();
        if symbols
            .iter()
            .all(|c| matches!(c, '+' | '/' | '-' | '_' | '='))
        {
            // base64 / base64url: at most two symbols carry information.
            if !symbols.is_empty() {
                size += 2.0;
            }
        } else {
            size += 32.0;
        }
        size
    };
    // Padding and separators carry no entropy.
    let informative = chars.iter().filter(|c| **c != '=').count();
    informative as f64 * alphabet.log2()
}

/// True when the key is a shorter pattern repeated.
fn is_periodic(chars: &[char]) -> bool {
    (1..=chars.len() / 2).any(|period| {
        chars.len().is_multiple_of(period)
            && chars.chunks(period).all(|chunk| chunk == &chars[..period])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strong_keys_load_as_digests() {
        let hex32 = "9f86d081884c7d659a2feaa0c55ad015";
        assert_eq!(load(hex32.as_bytes()), Ok(digest(hex32.as_bytes())));
        let b64 = "q2Xv0Zk9TmE4yPp1LwR7sA==";
        assert!(load(b64.as_bytes()).is_ok());
        assert!(load(b"tg_live_7Hq2Xv0Zk9TmE4yPp1LwR").is_ok());
    }

    #[test]
    fn weak_keys_are_refused() {
        for weak in [
            "secret",
            "password1234",
            "0123456789abcdef",
            &"a".repeat(200),
            &"abcdefgh".repeat(20),
            "",
        ] {
            let err = load(weak.as_bytes()).unwrap_err();
            assert!(err.contains("entropy"), "{weak}: {err}");
        }
    }

    #[test]
    fn digests_are_accepted_verbatim() {
        let d = digest(b"whatever");
        let text = format!("sha256:{}", super::super::certificate::hex(d));
        assert_eq!(load(text.as_bytes()), Ok(d));
        assert!(load(b"sha256:xyz").is_err());
    }
}
