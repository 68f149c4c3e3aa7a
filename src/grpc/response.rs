//! [`Decision`] → `CheckResponse`: the decision contract on the wire
//! (`docs/decision-contract.md`).
//!
//! Every header tollgate sets carries `append_action:
//! OVERWRITE_IF_EXISTS_OR_ADD` explicitly: Envoy *appends* a header option
//! that sets neither `append` nor `append_action`, which would let a
//! client-sent copy of an identity header travel next to tollgate's.

use std::borrow::Cow;

use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use prost_types::value::Kind;
use prost_types::{Struct, Value};

use super::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use super::pb::envoy::r#type::v3::HttpStatus;
use super::pb::google::rpc::Status;
use super::pb::{
    CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use crate::decision::{Allow, ChallengeParams, Decision, Deny, Identity, Verdict};
use crate::field_value::escape_controls;
use crate::reason::GrpcCode;

/// Builds the `CheckResponse` for `decision`. `challenge` fills the
/// `WWW-Authenticate` header of a 401 that carries none of its own.
pub fn to_check_response(decision: &Decision, challenge: &ChallengeParams) -> CheckResponse {
    into_check_response(decision.clone(), challenge)
}

/// [`to_check_response`] for an owned decision: header names and values
/// and the identity move into the response instead of being copied.
pub fn into_check_response(decision: Decision, challenge: &ChallengeParams) -> CheckResponse {
    into_wire_response(decision, challenge).into_check_response()
}

/// The response the server sends: the `CheckResponse` without its
/// `dynamic_metadata`, which travels as [`Metadata`] and is encoded
/// straight onto the wire. The bytes are those prost writes for the
/// `CheckResponse` with its `prost_types::Struct` (a test compares them);
/// building that `Struct` took a `BTreeMap` node and a `String` key per
/// entry on every `Check`, for a value only ever encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct WireResponse {
    /// `dynamic_metadata` is always `None` here.
    pub response: CheckResponse,
    /// `None` when the answer carries no metadata (an allow whose policy
    /// does not ask for it: `response.dynamicMetadata`).
    pub metadata: Option<Metadata>,
}

/// The entries of the dynamic metadata, sorted by key (the order prost
/// encodes a `Struct`'s `BTreeMap` in). Every value is a string.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(&'static str, String)>,
}

/// `CheckResponse.dynamic_metadata` (envoy/service/auth/v3/external_auth.proto).
const DYNAMIC_METADATA_FIELD: u32 = 4;
/// `Struct.fields` (google/protobuf/struct.proto), a map: each entry is a
/// message with `key = 1` and `value = 2`.
const STRUCT_FIELDS_FIELD: u32 = 1;
const MAP_KEY_FIELD: u32 = 1;
const MAP_VALUE_FIELD: u32 = 2;
/// `Value.string_value` (a oneof member: written even when empty).
const VALUE_STRING_FIELD: u32 = 3;

impl Metadata {
    /// The `google.protobuf.Struct` (tests, and the generated trait's path).
    pub fn to_struct(&self) -> Struct {
        Struct {
            fields: self
                .entries
                .iter()
                .map(|(key, value)| {
                    (
                        (*key).to_owned(),
                        Value {
                            kind: Some(Kind::StringValue(value.clone())),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Length of one `Value { string_value }`.
    fn value_len(value: &str) -> usize {
        len_delimited(VALUE_STRING_FIELD, value.len())
    }

    /// Length of one map entry message (a key is never empty, so prost
    /// writes it; the value is never the default `Value`, so it is written).
    fn entry_len(key: &str, value: &str) -> usize {
        len_delimited(MAP_KEY_FIELD, key.len())
            + len_delimited(MAP_VALUE_FIELD, Self::value_len(value))
    }

    /// Length of the `Struct` message.
    fn struct_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(k, v)| len_delimited(STRUCT_FIELDS_FIELD, Self::entry_len(k, v)))
            .sum()
    }

    /// Writes `dynamic_metadata = 4` as prost writes `Some(self.to_struct())`.
    fn encode_field(&self, buf: &mut impl BufMut) {
        encode_key(DYNAMIC_METADATA_FIELD, WireType::LengthDelimited, buf);
        encode_varint(self.struct_len() as u64, buf);
        for (key, value) in &self.entries {
            encode_key(STRUCT_FIELDS_FIELD, WireType::LengthDelimited, buf);
            encode_varint(Self::entry_len(key, value) as u64, buf);
            encode_key(MAP_KEY_FIELD, WireType::LengthDelimited, buf);
            encode_varint(key.len() as u64, buf);
            buf.put_slice(key.as_bytes());
            encode_key(MAP_VALUE_FIELD, WireType::LengthDelimited, buf);
            encode_varint(Self::value_len(value) as u64, buf);
            encode_key(VALUE_STRING_FIELD, WireType::LengthDelimited, buf);
            encode_varint(value.len() as u64, buf);
            buf.put_slice(value.as_bytes());
        }
    }
}

/// Bytes of a length-delimited field `tag` holding `len` bytes.
fn len_delimited(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

impl WireResponse {
    /// The whole `CheckResponse`, metadata included.
    pub fn into_check_response(self) -> CheckResponse {
        CheckResponse {
            dynamic_metadata: self.metadata.as_ref().map(Metadata::to_struct),
            ..self.response
        }
    }

    /// Encodes the `CheckResponse`: its fields 1–3 by prost, then field 4
    /// when there is metadata. prost writes fields in field-number order,
    /// so appending field 4 gives its very bytes.
    pub fn encode(&self, buf: &mut impl BufMut) {
        debug_assert!(self.response.dynamic_metadata.is_none());
        self.response.encode_raw(buf);
        if let Some(metadata) = &self.metadata {
            metadata.encode_field(buf);
        }
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        self.response.encoded_len()
            + self.metadata.as_ref().map_or(0, |metadata| {
                len_delimited(DYNAMIC_METADATA_FIELD, metadata.struct_len())
            })
    }

    /// The encoded bytes.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// The server's [`into_check_response`]: the same response, with the
/// dynamic metadata kept for direct encoding.
pub fn into_wire_response(decision: Decision, challenge: &ChallengeParams) -> WireResponse {
    let Decision {
        verdict,
        identity,
        dry_run_denial,
        trace: _,
    } = decision;
    // Denials (and would-be denials of a dry run) always say why in the
    // access log; allows only when their policy asks: building and
    // applying the metadata costs Envoy work on every request.
    let wanted = match &verdict {
        Verdict::Allow(allow) => allow.metadata || dry_run_denial.is_some(),
        Verdict::Deny(_) => true,
    };
    let metadata = wanted.then(|| dynamic_metadata(identity, &verdict, dry_run_denial.as_ref()));
    let (status, http_response) = match verdict {
        Verdict::Allow(allow) => (
            Status {
                code: GrpcCode::Ok as i32,
                message: String::new(),
            },
            HttpResponse::OkResponse(ok_response(allow)),
        ),
        Verdict::Deny(deny) => (
            Status {
                code: deny.public_reason().grpc_code() as i32,
                message: deny.public_reason().code().to_owned(),
            },
            HttpResponse::DeniedResponse(denied_response(&deny, challenge)),
        ),
    };
    WireResponse {
        response: CheckResponse {
            status: Some(status),
            http_response: Some(http_response),
            dynamic_metadata: None,
        },
        metadata,
    }
}

fn ok_response(allow: Allow) -> OkHttpResponse {
    OkHttpResponse {
        headers: allow
            .set_upstream
            .into_iter()
            .map(|(n, v)| overwrite(n, v))
            .collect(),
        headers_to_remove: allow.remove_upstream,
        response_headers_to_add: allow
            .response_headers
            .into_iter()
            .map(|(n, v)| overwrite(n, v))
            .collect(),
    }
}

fn denied_response(deny: &Deny, challenge: &ChallengeParams) -> DeniedHttpResponse {
    DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(deny.public_reason().http_status()),
        }),
        headers: deny
            .response_headers(challenge)
            .into_iter()
            .map(|(n, v)| overwrite(n, v))
            .collect(),
        body: deny.problem_json(),
    }
}

/// A header option that replaces any existing value.
fn overwrite(key: String, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// The metadata Envoy stores under `envoy.filters.http.ext_authz` for its
/// access logs (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:app)%`).
/// Holds identifiers and the reason, never credentials. The logged reason is
/// the precise one even when clients see a generic one. Identity values
/// come from claims, so their control characters are escaped
/// ([`escape_controls`]): a text access log format prints them as they
/// are, and a subject holding a line break must not forge a log line.
fn dynamic_metadata(identity: Identity, verdict: &Verdict, dry_run: Option<&Deny>) -> Metadata {
    let (decision_word, reason) = match verdict {
        Verdict::Allow(_) => ("allow", None),
        Verdict::Deny(deny) => ("deny", Some(deny.reason.code())),
    };
    let claim = |value: Option<String>| {
        value.map(|v| match escape_controls(&v) {
            Cow::Borrowed(_) => v,
            Cow::Owned(escaped) => escaped,
        })
    };
    // In key order (`Struct` is a sorted map).
    let entries = [
        ("app", claim(identity.app)),
        ("decision", Some(decision_word.to_owned())),
        ("device", claim(identity.device)),
        ("dry_run", dry_run.map(|d| d.reason.code().to_owned())),
        ("issuer", claim(identity.issuer)),
        ("plan", claim(identity.plan)),
        ("policy", claim(identity.policy)),
        ("reason", reason.map(str::to_owned)),
        ("route", claim(identity.route)),
        ("user", claim(identity.user)),
    ];
    debug_assert!(entries.is_sorted_by_key(|(key, _)| *key));
    Metadata {
        entries: entries
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Identity;
    use crate::reason::Reason;

    fn decision(verdict: Verdict) -> Decision {
        Decision {
            verdict,
            identity: Identity {
                policy: Some("mobility/bikes".into()),
                app: Some("commuter-ios".into()),
                user: Some("alice".into()),
                ..Default::default()
            },
            dry_run_denial: None,
            trace: Vec::new(),
        }
    }

    fn metadata(response: &CheckResponse, key: &str) -> Option<String> {
        match response
            .dynamic_metadata
            .as_ref()?
            .fields
            .get(key)?
            .kind
            .as_ref()?
        {
            Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn allow_sets_overwrites_removals_and_response_headers() {
        let allow = Allow {
            set_upstream: vec![("x-tollgate-app".into(), "commuter-ios".into())],
            remove_upstream: vec!["x-tollgate-device".into()],
            response_headers: vec![("ratelimit".into(), "\"free\";r=9;t=1".into())],
            metadata: true,
        };
        let response = to_check_response(&decision(Verdict::Allow(allow)), &Default::default());
        assert_eq!(response.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
            panic!("not an ok response");
        };
        assert_eq!(ok.headers.len(), 1);
        assert_eq!(ok.headers[0].append_action, 2);
        assert_eq!(ok.headers[0].append, None);
        assert_eq!(ok.headers[0].header.as_ref().unwrap().key, "x-tollgate-app");
        assert_eq!(ok.headers_to_remove, ["x-tollgate-device"]);
        assert_eq!(ok.response_headers_to_add[0].append_action, 2);
        assert_eq!(metadata(&response, "decision").as_deref(), Some("allow"));
        assert_eq!(metadata(&response, "app").as_deref(), Some("commuter-ios"));
        assert_eq!(metadata(&response, "reason"), None);
    }

    #[test]
    fn deny_carries_status_body_reason_and_challenge() {
        let deny = Deny::new(Reason::UserTokenMissing, "no bearer token");
        let response = to_check_response(&decision(Verdict::Deny(deny)), &Default::default());
        assert_eq!(response.status.as_ref().unwrap().code, 16);
        let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
            panic!("not a denied response");
        };
        assert_eq!(denied.status.unwrap().code, 401);
        let header = |name: &str| {
            denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == name)
                .map(|h| h.value.clone())
        };
        assert_eq!(
            header("x-tollgate-reason").as_deref(),
            Some("user_token_missing")
        );
        assert_eq!(
            header("www-authenticate").as_deref(),
            Some(r#"Bearer realm="tollgate""#)
        );
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/problem+json")
        );
        assert!(denied.headers.iter().all(|h| h.append_action == 2));
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["reason"], "user_token_missing");
        assert_eq!(
            metadata(&response, "reason").as_deref(),
            Some("user_token_missing")
        );
    }

    #[test]
    fn hidden_reasons_stay_in_metadata_only() {
        let mut deny = Deny::new(Reason::TokenBindingMismatch, "pay differs");
        deny.disclosed_as = Some(Reason::AttestationInvalid);
        let response = to_check_response(&decision(Verdict::Deny(deny)), &Default::default());
        assert_eq!(
            response.status.as_ref().unwrap().message,
            "attestation_invalid"
        );
        assert_eq!(
            metadata(&response, "reason").as_deref(),
            Some("token_binding_mismatch")
        );
    }

    /// An allow carries dynamic metadata only when its policy asks
    /// (`response.dynamicMetadata: always`); absent, field 4 is not on the
    /// wire at all.
    #[test]
    fn allows_carry_metadata_only_when_asked() {
        let plain = decision(Verdict::Allow(Allow::default()));
        let response = to_check_response(&plain, &Default::default());
        assert_eq!(response.dynamic_metadata, None);
        let wire = into_wire_response(plain, &Default::default());
        assert_eq!(wire.metadata, None);
        assert!(
            CheckResponse::decode(wire.encode_to_vec().as_slice())
                .unwrap()
                .dynamic_metadata
                .is_none()
        );

        let asked = decision(Verdict::Allow(Allow {
            metadata: true,
            ..Allow::default()
        }));
        let response = to_check_response(&asked, &Default::default());
        assert_eq!(metadata(&response, "decision").as_deref(), Some("allow"));
        assert_eq!(
            metadata(&response, "policy").as_deref(),
            Some("mobility/bikes")
        );
    }

    #[test]
    fn dry_run_denial_is_reported() {
        let mut d = decision(Verdict::Allow(Allow::default()));
        d.dry_run_denial = Some(Deny::new(Reason::IpDenied, "denied range"));
        let response = to_check_response(&d, &Default::default());
        assert_eq!(response.status.as_ref().unwrap().code, 0);
        assert_eq!(metadata(&response, "dry_run").as_deref(), Some("ip_denied"));
    }

    /// The server's directly encoded metadata gives the very bytes prost
    /// writes for the whole `CheckResponse` with its `Struct`, whatever
    /// identity fields are set (empty, non-ASCII, and longer than 127 bytes
    /// so lengths take two varint bytes) and whatever the verdict.
    #[test]
    fn wire_response_bytes_equal_prosts() {
        use proptest::prelude::*;
        let field = || proptest::option::of("(|[a-z]{1,8}|é/ü\\{x\\}|[a-z0-9]{120,200})");
        let identity = (
            field(),
            field(),
            field(),
            field(),
            field(),
            field(),
            field(),
        );
        let verdict = 0..3u8;
        proptest!(|(ids in identity, which in verdict, metadata in proptest::bool::ANY)| {
            let (policy, route, app, plan, user, issuer, device) = ids;
            let identity = Identity { policy, route, app, plan, user, issuer, device, client: None };
            let allow = Allow {
                set_upstream: vec![("x-tollgate-app".into(), "a".into())],
                remove_upstream: vec!["x-api-key".into()],
                response_headers: vec![("ratelimit".into(), "r=1".into())],
                metadata,
            };
            let (verdict, dry_run_denial) = match which {
                0 => (Verdict::Allow(allow), None),
                1 => (Verdict::Allow(allow), Some(Deny::new(Reason::IpDenied, "range"))),
                _ => (Verdict::Deny(Deny::new(Reason::QuotaExceeded, "limit")), None),
            };
            let decision = Decision { verdict, identity, dry_run_denial, trace: Vec::new() };
            let wire = into_wire_response(decision.clone(), &Default::default());
            let prost_bytes = to_check_response(&decision, &Default::default()).encode_to_vec();
            prop_assert_eq!(wire.encoded_len(), prost_bytes.len());
            prop_assert_eq!(wire.encode_to_vec(), prost_bytes);
            prop_assert_eq!(
                CheckResponse::decode(wire.encode_to_vec().as_slice()).unwrap(),
                wire.into_check_response()
            );
        });
    }

    /// `docs/decision-contract.md` holds the reason table; every row must
    /// match `src/reason.rs` exactly, and every reason must have a row.
    #[test]
    fn every_reason_is_documented() {
        use crate::reason::{Challenge, GrpcCode};
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/decision-contract.md"
        ));
        let mut missing = Vec::new();
        for reason in Reason::ALL {
            let grpc = match reason.grpc_code() {
                GrpcCode::Ok => "OK (0)",
                GrpcCode::InvalidArgument => "INVALID_ARGUMENT (3)",
                GrpcCode::PermissionDenied => "PERMISSION_DENIED (7)",
                GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED (8)",
                GrpcCode::Unavailable => "UNAVAILABLE (14)",
                GrpcCode::Unauthenticated => "UNAUTHENTICATED (16)",
            };
            let challenge = match reason.challenge() {
                None => "—",
                Some(Challenge::Bearer) => "`Bearer`",
                Some(Challenge::Dpop) => "`DPoP`",
                Some(Challenge::App) => "`App`",
                Some(Challenge::Signature) => "`Signature`",
            };
            let row = format!(
                "| `{}` | {} | {} | {} | {} |",
                reason.code(),
                reason.http_status(),
                grpc,
                challenge,
                reason.title()
            );
            if !doc.lines().any(|line| line == row) {
                missing.push(row);
            }
        }
        assert!(
            missing.is_empty(),
            "docs/decision-contract.md lacks these rows (or they differ):\n{}",
            missing.join("\n")
        );
        let documented = doc
            .lines()
            .filter(|l| l.starts_with("| `") && l.contains("(") && l.ends_with(" |"))
            .filter(|l| {
                l.contains("INVALID_ARGUMENT")
                    || l.contains("UNAUTHENTICATED")
                    || l.contains("PERMISSION_DENIED")
                    || l.contains("RESOURCE_EXHAUSTED")
                    || l.contains("UNAVAILABLE")
            })
            .count();
        assert_eq!(
            documented,
            Reason::ALL.len(),
            "the doc lists reasons the code does not have"
        );
    }
}
