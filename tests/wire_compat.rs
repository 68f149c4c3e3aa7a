//! Wire compatibility with Envoy's ext_authz v3 API, without the
//! `envoy-types` crate.
//!
//! 1. Golden `CheckRequest` encodings are built here field by field from the
//!    protobuf wire rules (a field's key is `field_number << 3 | wire_type`;
//!    wire type 0 varint, 2 length-delimited) with the field numbers of
//!    Envoy's public protos (`api/envoy/service/auth/v3/attribute_context.proto`,
//!    `external_auth.proto`, `api/envoy/config/core/v3/base.proto`,
//!    `address.proto`), including fields tollgate does not declare, as Envoy
//!    sends them. They must decode with tollgate's types to the same values.
//! 2. tollgate's encoded `CheckResponse`s are read back with a small wire
//!    reader written here, asserting the exact field numbers and values
//!    Envoy reads.
//!
//! The real-Envoy tests (`tests/e2e_*.rs`) prove the same end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use tollgate::decision::{Allow, ChallengeParams, Decision, Deny, Identity, Verdict};
use tollgate::grpc::pb::CheckRequest;
use tollgate::grpc::pb::envoy::config::core::v3::address;
use tollgate::grpc::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use tollgate::grpc::request::to_context;
use tollgate::grpc::response::to_check_response;
use tollgate::reason::Reason;

// ---------------------------------------------------------------- writer

const VARINT: u64 = 0;
const LEN: u64 = 2;

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn key(field: u64, wire_type: u64) -> Vec<u8> {
    varint(field << 3 | wire_type)
}

/// A length-delimited field (string, bytes, message, map entry).
fn bytes(field: u64, value: &[u8]) -> Vec<u8> {
    let mut out = key(field, LEN);
    out.extend(varint(value.len() as u64));
    out.extend_from_slice(value);
    out
}

fn string(field: u64, value: &str) -> Vec<u8> {
    bytes(field, value.as_bytes())
}

fn uint(field: u64, value: u64) -> Vec<u8> {
    let mut out = key(field, VARINT);
    out.extend(varint(value));
    out
}

fn message(field: u64, parts: &[Vec<u8>]) -> Vec<u8> {
    bytes(field, &parts.concat())
}

/// A `map<string, string>` entry: a message with key = 1, value = 2.
fn map_entry(field: u64, k: &str, v: &str) -> Vec<u8> {
    message(field, &[string(1, k), string(2, v)])
}

/// `envoy.config.core.v3.Address{socket_address = 1: SocketAddress{
/// protocol = 1, address = 2, port_value = 3}}`.
fn address(field: u64, ip: &str, port: u64) -> Vec<u8> {
    message(
        field,
        &[message(1, &[uint(1, 0), string(2, ip), uint(3, port)])],
    )
}

/// A CheckRequest as Envoy's HTTP ext_authz filter sends it with
/// `include_peer_certificate`, `include_tls_session`, a buffered body and
/// per-route context extensions (`check_request_utils.cc`). Fields tollgate
/// does not declare (peer labels = 3, metadata_context = 11,
/// route_metadata_context = 13, google.protobuf.Timestamp) are included:
/// they must be skipped.
fn envoy_check_request(headers: Vec<u8>, body: Vec<u8>) -> Vec<u8> {
    let certificate =
        "-----BEGIN%20CERTIFICATE-----%0AMIIBszCCAVmgAwIBAgIU%0A-----END%20CERTIFICATE-----%0A";
    // AttributeContext.Peer: address = 1, service = 2, labels = 3,
    // principal = 4, certificate = 5.
    let source = message(
        1,
        &[
            address(1, "203.0.113.7", 54_321),
            string(2, "edge"),
            string(4, "spiffe://example.org/ns/mobile/sa/commuter"),
            string(5, certificate),
        ],
    );
    let destination = message(
        2,
        &[
            address(1, "10.0.0.5", 8443),
            map_entry(3, "zone", "eu-1"),
            string(4, "api.bikes.example"),
        ],
    );
    // AttributeContext.HttpRequest: id = 1, method = 2, headers = 3,
    // path = 4, host = 5, scheme = 6, size = 9, protocol = 10, body = 11,
    // raw_body = 12, header_map = 13.
    let http = message(
        2,
        &[
            string(1, "10486965214370912413"),
            string(2, "POST"),
            headers,
            string(4, "/v1/rentals?station=42"),
            string(5, "api.bikes.example"),
            string(6, "https"),
            uint(9, 57),
            string(10, "HTTP/2"),
            body,
        ],
    );
    // AttributeContext.Request: time = 1 (Timestamp: seconds = 1, nanos = 2), http = 2.
    let request = message(
        4,
        &[message(1, &[uint(1, 1_767_225_600), uint(2, 500)]), http],
    );
    // Metadata{filter_metadata = 1: map<string, Struct>}: unknown to tollgate.
    let metadata_context = message(
        11,
        &[message(
            1,
            &[string(1, "envoy.filters.http.jwt_authn"), message(2, &[])],
        )],
    );
    message(
        1,
        &[
            source,
            destination,
            request,
            map_entry(10, "tollgate.dev/policy", "mobility/bikes"),
            map_entry(10, "tier", "edge"),
            metadata_context,
            // TLSSession{sni = 1}.
            message(12, &[string(1, "api.bikes.example")]),
            message(13, &[]),
        ],
    )
}

#[test]
fn envoy_check_request_with_the_headers_map_decodes() {
    // headers = 3: map<string, string>, repeats joined with ',' by Envoy.
    let headers = [
        map_entry(3, ":authority", "api.bikes.example"),
        map_entry(3, ":method", "POST"),
        map_entry(3, ":path", "/v1/rentals?station=42"),
        map_entry(3, "x-request-id", "6f1c0e0a-7d4f-4b8e-9d55-3c7a1f7b2e11"),
        map_entry(3, "authorization", "Bearer eyJ.x.y"),
        map_entry(3, "x-forwarded-for", "198.51.100.9, 203.0.113.7"),
        map_entry(3, "x-envoy-auth-partial-body", "false"),
    ]
    .concat();
    let golden = envoy_check_request(headers, string(11, r#"{"bike":17}"#));

    let decoded = CheckRequest::decode(golden.as_slice()).expect("decodes");
    let attributes = decoded.attributes.as_ref().unwrap();
    let source = attributes.source.as_ref().unwrap();
    match source.address.as_ref().unwrap().address.as_ref().unwrap() {
        address::Address::SocketAddress(socket) => {
            assert_eq!(socket.address, "203.0.113.7");
            assert_eq!(
                socket.port_specifier,
                Some(PortSpecifier::PortValue(54_321))
            );
        }
        other => panic!("unexpected address {other:?}"),
    }
    assert_eq!(source.service, "edge");
    assert_eq!(
        source.principal,
        "spiffe://example.org/ns/mobile/sa/commuter"
    );
    assert!(source.certificate.starts_with("-----BEGIN%20CERTIFICATE"));
    assert_eq!(
        attributes.destination.as_ref().unwrap().principal,
        "api.bikes.example"
    );
    let request = attributes.request.as_ref().unwrap();
    let time = request.time.as_ref().unwrap();
    assert_eq!((time.seconds, time.nanos), (1_767_225_600, 500));
    let http = request.http.as_ref().unwrap();
    assert_eq!(http.id, "10486965214370912413");
    assert_eq!(http.method, "POST");
    assert_eq!(http.path, "/v1/rentals?station=42");
    assert_eq!(http.host, "api.bikes.example");
    assert_eq!(http.scheme, "https");
    assert_eq!(http.size, 57);
    assert_eq!(http.protocol, "HTTP/2");
    assert_eq!(http.body, r#"{"bike":17}"#);
    assert_eq!(http.headers.len(), 7);
    assert_eq!(http.headers["authorization"], "Bearer eyJ.x.y");
    assert!(http.header_map.is_none());
    assert_eq!(
        attributes.context_extensions["tollgate.dev/policy"],
        "mobility/bikes"
    );
    assert_eq!(attributes.context_extensions["tier"], "edge");
    assert_eq!(
        attributes.tls_session.as_ref().unwrap().sni,
        "api.bikes.example"
    );

    // And as the decision core sees it.
    let context = to_context(&decoded);
    assert!(context.defects.is_empty(), "{:?}", context.defects);
    assert_eq!(context.id, "6f1c0e0a-7d4f-4b8e-9d55-3c7a1f7b2e11");
    assert_eq!(context.method, "POST");
    assert_eq!(context.authority, "api.bikes.example");
    assert_eq!(context.path, "/v1/rentals");
    assert_eq!(context.query.as_deref(), Some("station=42"));
    assert_eq!(context.peer_ip, Some("203.0.113.7".parse().unwrap()));
    assert!(context.tls);
    assert_eq!(
        context.peer_certificate.as_deref(),
        Some("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n")
    );
    assert_eq!(
        context.peer_principal.as_deref(),
        Some("spiffe://example.org/ns/mobile/sa/commuter")
    );
    assert_eq!(context.headers.get("authorization"), Some("Bearer eyJ.x.y"));
    assert_eq!(context.headers.get(":path"), None);
    let body = context.body.unwrap();
    assert_eq!(body.bytes, br#"{"bike":17}"#);
    assert!(!body.truncated);
}

#[test]
fn envoy_check_request_with_raw_headers_and_raw_body_decodes() {
    // encode_raw_headers: header_map = 13: HeaderMap{headers = 1:
    // HeaderValue{key = 1, raw_value = 3}}, repeats kept apart.
    let header = |k: &str, v: &[u8]| message(1, &[string(1, k), bytes(3, v)]);
    let header_map = message(
        13,
        &[
            header(":authority", b"api.bikes.example"),
            header("accept", b"application/json"),
            header("x-device", b"a"),
            header("x-device", b"b"),
        ],
    );
    // pack_as_bytes: raw_body = 12.
    let golden = envoy_check_request(header_map, bytes(12, &[0x00, 0xFF, 0x10]));

    let decoded = CheckRequest::decode(golden.as_slice()).expect("decodes");
    let http = decoded
        .attributes
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap()
        .http
        .as_ref()
        .unwrap();
    let map = http.header_map.as_ref().unwrap();
    assert_eq!(map.headers.len(), 4);
    assert_eq!(map.headers[1].key, "accept");
    assert_eq!(map.headers[1].raw_value, b"application/json");
    assert!(map.headers[1].value.is_empty());
    assert_eq!(http.raw_body, [0x00, 0xFF, 0x10]);

    let context = to_context(&decoded);
    assert!(context.defects.is_empty(), "{:?}", context.defects);
    assert_eq!(
        context.headers.get_all("x-device").collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(context.body.unwrap().bytes, [0x00, 0xFF, 0x10]);
}

// ---------------------------------------------------------------- reader

/// One decoded field value.
#[derive(Clone, Debug, PartialEq)]
enum Wire {
    Varint(u64),
    Len(Vec<u8>),
}

/// Reads every field of one message, in order; panics on anything that is
/// not valid protobuf (so a broken encoding fails the test).
fn read(mut input: &[u8]) -> Vec<(u64, Wire)> {
    fn next_varint(input: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = input.split_first().expect("truncated varint");
            *input = rest;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint too long");
    }
    let mut fields = Vec::new();
    while !input.is_empty() {
        let key = next_varint(&mut input);
        let (field, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => Wire::Varint(next_varint(&mut input)),
            2 => {
                let len = next_varint(&mut input) as usize;
                let (value, rest) = input.split_at(len);
                input = rest;
                Wire::Len(value.to_vec())
            }
            other => panic!("unexpected wire type {other} for field {field}"),
        };
        fields.push((field, value));
    }
    fields
}

fn all(fields: &[(u64, Wire)], number: u64) -> Vec<&Wire> {
    fields
        .iter()
        .filter(|(n, _)| *n == number)
        .map(|(_, v)| v)
        .collect()
}

fn one(fields: &[(u64, Wire)], number: u64) -> &Wire {
    let found = all(fields, number);
    assert_eq!(found.len(), 1, "field {number} in {fields:?}");
    found[0]
}

fn sub(fields: &[(u64, Wire)], number: u64) -> Vec<(u64, Wire)> {
    match one(fields, number) {
        Wire::Len(bytes) => read(bytes),
        other => panic!("field {number} is not a message: {other:?}"),
    }
}

fn text(wire: &Wire) -> String {
    match wire {
        Wire::Len(bytes) => String::from_utf8(bytes.clone()).unwrap(),
        other => panic!("not a string: {other:?}"),
    }
}

fn number(wire: &Wire) -> u64 {
    match wire {
        Wire::Varint(v) => *v,
        other => panic!("not a varint: {other:?}"),
    }
}

/// `HeaderValueOption`s as (key, value, append_action), asserting Envoy's
/// field numbers: header = 1 {key = 1, value = 2}, append = 2 (never set),
/// append_action = 3.
fn header_options(options: &[&Wire]) -> Vec<(String, String, u64)> {
    options
        .iter()
        .map(|option| {
            let Wire::Len(bytes) = option else {
                panic!("option is not a message")
            };
            let fields = read(bytes);
            assert!(all(&fields, 2).is_empty(), "deprecated append is set");
            let header = sub(&fields, 1);
            (
                text(one(&header, 1)),
                text(one(&header, 2)),
                number(one(&fields, 3)),
            )
        })
        .collect()
}

/// `google.protobuf.Struct{fields = 1: map<string, Value{string_value = 3}>}`.
fn struct_strings(fields: &[(u64, Wire)]) -> Vec<(String, String)> {
    all(fields, 1)
        .into_iter()
        .map(|entry| {
            let Wire::Len(bytes) = entry else {
                panic!("entry is not a message")
            };
            let entry = read(bytes);
            let value = sub(&entry, 2);
            (text(one(&entry, 1)), text(one(&value, 3)))
        })
        .collect()
}

fn decision(verdict: Verdict) -> Decision {
    Decision {
        verdict,
        identity: Identity {
            policy: Some("mobility/bikes".into()),
            route: Some("rentals".into()),
            app: Some("commuter-ios".into()),
            plan: Some("gold".into()),
            user: Some("alice".into()),
            issuer: Some("https://id.example/".into()),
            device: None,
            client: None,
        },
        dry_run_denial: None,
        trace: Vec::new(),
    }
}

const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

#[test]
fn allow_response_uses_envoys_field_numbers() {
    let allow = Allow {
        set_upstream: vec![
            ("x-tollgate-user".into(), "alice".into()),
            ("x-tollgate-app".into(), "commuter-ios".into()),
        ],
        remove_upstream: vec!["x-tollgate-device".into(), "approov-token".into()],
        response_headers: vec![("ratelimit".into(), "\"gold\";r=199;t=1".into())],
        // The policy asked for metadata on allows (`response.dynamicMetadata: always`).
        metadata: true,
    };
    let encoded = to_check_response(
        &decision(Verdict::Allow(allow)),
        &ChallengeParams::default(),
    )
    .encode_to_vec();
    let top = read(&encoded);
    // CheckResponse: status = 1, ok_response = 3, dynamic_metadata = 4; no denied_response = 2.
    assert!(all(&top, 2).is_empty());
    let status = sub(&top, 1);
    // google.rpc.Status{code = 1}: OK is 0, the default, so it is omitted.
    assert!(all(&status, 1).is_empty(), "code 0 is not encoded");
    let ok = sub(&top, 3);
    // OkHttpResponse: headers = 2, headers_to_remove = 5,
    // response_headers_to_add = 6; the deprecated dynamic_metadata = 3 is unused.
    assert!(all(&ok, 3).is_empty());
    assert_eq!(
        header_options(&all(&ok, 2)),
        [
            (
                "x-tollgate-user".into(),
                "alice".into(),
                OVERWRITE_IF_EXISTS_OR_ADD
            ),
            (
                "x-tollgate-app".into(),
                "commuter-ios".into(),
                OVERWRITE_IF_EXISTS_OR_ADD
            ),
        ]
    );
    let removed: Vec<String> = all(&ok, 5).into_iter().map(text).collect();
    assert_eq!(removed, ["x-tollgate-device", "approov-token"]);
    assert_eq!(
        header_options(&all(&ok, 6)),
        [(
            "ratelimit".into(),
            "\"gold\";r=199;t=1".into(),
            OVERWRITE_IF_EXISTS_OR_ADD
        )]
    );
    let metadata = struct_strings(&sub(&top, 4));
    for expected in [
        ("decision", "allow"),
        ("policy", "mobility/bikes"),
        ("route", "rentals"),
        ("app", "commuter-ios"),
        ("plan", "gold"),
        ("user", "alice"),
        ("issuer", "https://id.example/"),
    ] {
        assert!(
            metadata.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} missing from {metadata:?}"
        );
    }
    assert!(!metadata.iter().any(|(k, _)| k == "reason"));
}

#[test]
fn deny_response_uses_envoys_field_numbers() {
    let deny = Deny::new(Reason::QuotaExceeded, "daily quota of plan gold used up")
        .with_header("retry-after", "3600");
    let encoded = to_check_response(&decision(Verdict::Deny(deny)), &ChallengeParams::default())
        .encode_to_vec();
    let top = read(&encoded);
    assert!(all(&top, 3).is_empty(), "no ok_response on deny");
    let status = sub(&top, 1);
    // RESOURCE_EXHAUSTED = 8; message = 2 carries the reason code.
    assert_eq!(number(one(&status, 1)), 8);
    assert_eq!(text(one(&status, 2)), "quota_exceeded");
    let denied = sub(&top, 2);
    // DeniedHttpResponse: status = 1 (HttpStatus{code = 1}), headers = 2, body = 3.
    assert_eq!(number(one(&sub(&denied, 1), 1)), 429);
    let headers = header_options(&all(&denied, 2));
    for expected in [
        ("content-type", "application/problem+json"),
        ("x-tollgate-reason", "quota_exceeded"),
        ("retry-after", "3600"),
    ] {
        assert!(
            headers.contains(&(
                expected.0.into(),
                expected.1.into(),
                OVERWRITE_IF_EXISTS_OR_ADD
            )),
            "{expected:?} missing from {headers:?}"
        );
    }
    let body: serde_json::Value = serde_json::from_str(&text(one(&denied, 3))).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["reason"], "quota_exceeded");
    let metadata = struct_strings(&sub(&top, 4));
    assert!(metadata.contains(&("reason".into(), "quota_exceeded".into())));
    assert!(metadata.contains(&("decision".into(), "deny".into())));
}

#[test]
fn the_writer_and_reader_agree_with_prost() {
    // Guards the hand-written helpers themselves: a varint over several
    // bytes and a nested message round-trip through prost's encoding.
    assert_eq!(varint(300), [0xAC, 0x02]);
    assert_eq!(key(13, LEN), [0x6A]);
    let golden = message(1, &[message(4, &[message(2, &[string(2, "GET")])])]);
    let decoded = CheckRequest::decode(golden.as_slice()).unwrap();
    assert_eq!(decoded.encode_to_vec(), golden);
    assert_eq!(
        read(&golden),
        [(1, Wire::Len(golden[2..].to_vec()))],
        "reader splits the outer field"
    );
}
