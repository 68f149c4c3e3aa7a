//! The credential-leak check of the whole end-to-end suite.
//!
//! Every credential a test sends through the harness — a header whose
//! name says it carries one (`authorization`, `x-api-key`, `approov-token`,
//! `dpop`, `signature`, any name with `key`, `token`, `auth`, `secret`,
//! `cookie`…), through Envoy ([`super::Request`]) or straight to
//! tollgate ([`super::check`]) — and every value of a `Secret` document in
//! a policy file the harness writes, is noted here. When a
//! [`super::Tollgate`] handle drops at the end of a passing test, its whole
//! output (every log line at the test's level) is scanned for each noted
//! value, and the test fails naming the leak. nextest runs each test in
//! its own process, so the notes are that test's own.
//!
//! What is looked for: the whole value; the part after an auth scheme
//! (`Bearer …`, `DPoP …`); the payload and signature parts of a JWT; the
//! bytes between the colons of a `Signature` member. Only pieces of at
//! least [`MIN_LEN`] characters: a test's `x-api-key: k` cannot be told
//! apart from ordinary text, and is not checked.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Shortest piece looked for.
pub const MIN_LEN: usize = 12;

static NOTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// True for header names that carry credentials.
pub fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name == "signature-input" {
        // Components and parameters: not secret.
        return false;
    }
    [
        "auth",
        "key",
        "token",
        "secret",
        "cookie",
        "dpop",
        "signature",
        "proof",
        "password",
    ]
    .iter()
    .any(|part| name.contains(part))
}

/// Notes a header the test sends, when it carries a credential.
pub fn note_header(name: &str, value: &str) {
    if is_credential_header(name) {
        note(value);
    }
}

/// Notes a secret value (and the pieces of it worth looking for).
pub fn note(value: &str) {
    let mut noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
    for piece in pieces(value) {
        noted.insert(piece);
    }
}

/// Notes every value of every `Secret` document in a policy file
/// (`stringData` as is, `data` decoded from base64 too).
pub fn note_policy_secrets(policy_yaml: &str) {
    use base64::Engine;
    for document in policy_yaml.split("\n---") {
        let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(document) else {
            continue;
        };
        if value["kind"] != "Secret" {
            continue;
        }
        for field in ["stringData", "data"] {
            let Some(map) = value[field].as_object() else {
                continue;
            };
            for item in map.values().filter_map(|v| v.as_str()) {
                note(item);
                if field == "data"
                    && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(item)
                    && let Ok(text) = String::from_utf8(bytes)
                {
                    note(&text);
                }
            }
        }
    }
}

/// The pieces of `value` to look for.
pub fn pieces(value: &str) -> Vec<String> {
    let value = value.trim();
    let mut out = vec![value.to_owned()];
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.chars().all(|c| c.is_ascii_alphabetic()))
        .map_or(value, |(_, rest)| rest.trim());
    out.push(token.to_owned());
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() == 3 {
        // A JWS: the payload and the signature (the header is shared by
        // every token of one key and says nothing).
        out.push(parts[1].to_owned());
        out.push(parts[2].to_owned());
    }
    // RFC 9421 `Signature: sig1=:BASE64:`.
    for member in token.split(',') {
        if let Some((_, rest)) = member.split_once("=:")
            && let Some(bytes) = rest.strip_suffix(':')
        {
            out.push(bytes.to_owned());
        }
    }
    out.retain(|p| p.chars().count() >= MIN_LEN);
    out
}

/// The noted pieces that occur in `text`.
pub fn leaks(text: &str) -> Vec<String> {
    let noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
    noted
        .iter()
        .filter(|piece| text.contains(piece.as_str()))
        .cloned()
        .collect()
}

/// How many pieces are noted (tests prove their scan is not vacuous).
pub fn noted_count() -> usize {
    NOTED.lock().unwrap_or_else(|e| e.into_inner()).len()
}
