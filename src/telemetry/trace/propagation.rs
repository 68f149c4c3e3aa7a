//! The trace context a `Check` joins: W3C Trace Context and B3.
//!
//! Envoy's tracers put the context of the span around the ext_authz call
//! into the gRPC call's own headers (its metadata); a client or a proxy in
//! front of Envoy may have put one into the HTTP request Envoy describes in
//! the `CheckRequest`. [`super::CheckTracer`] looks in that order, so
//! tollgate's span hangs under Envoy's ext_authz span when Envoy traces, and
//! under the caller's span otherwise. Formats, tried in this order:
//!
//! - W3C `traceparent` (+ `tracestate`), Trace Context Level 1 §3.2/§3.3;
//! - B3 single header `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`;
//! - B3 multiple headers `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`,
//!   `x-b3-flags`.
//!
//! Every value comes from the network: parsing is strict (exact lengths,
//! lower-case hex for W3C, no all-zero ids), never panics and allocates
//! nothing unless a `tracestate` is present. A malformed context is
//! ignored, and the Check starts a root span, as the W3C recommends
//! (§3.2.2.3 "restart the trace").

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// A context found in the headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    pub context: SpanContext,
    /// B3 without a sampling decision ("defer"): the root sampler decides.
    pub deferred: bool,
}

/// Finds a context among `get`'s headers (lower-case names).
pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Parent> {
    if let Some(traceparent) = get("traceparent") {
        // A present but malformed traceparent restarts the trace; a B3
        // header beside it is not consulted (W3C wins when both are sent).
        return parse_traceparent(traceparent, get("tracestate")).map(|context| Parent {
            context,
            deferred: false,
        });
    }
    if let Some(b3) = get("b3") {
        return parse_b3_single(b3);
    }
    let trace_id = get("x-b3-traceid")?;
    let span_id = get("x-b3-spanid")?;
    parse_b3_multi(trace_id, span_id, get("x-b3-sampled"), get("x-b3-flags"))
}

/// W3C `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
/// Version `ff` is invalid; a later version may append fields after a `-`
/// (§3.2.4: parse the first four, ignore the rest).
pub fn parse_traceparent(value: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let version = hex_u8(&bytes[0..2])?;
    if version == 0xff || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    match (version, bytes.len()) {
        (0, 55) => {}
        (0, _) => return None,
        (_, 55) => {}
        (_, _) if bytes[55] == b'-' => {}
        _ => return None,
    }
    let trace_id = lower_hex_u128(&bytes[3..35])?;
    let span_id = lower_hex_u64(&bytes[36..52])?;
    let flags = hex_u8(&bytes[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        // Only the sampled bit is defined in version 00.
        TraceFlags::new(flags & 1),
        true,
        state,
    ))
}

/// B3 single header (openzipkin/b3-propagation "Single Header"). A lone
/// sampling state (`0`, `1`, `d`) carries no ids: nothing to join.
pub fn parse_b3_single(value: &str) -> Option<Parent> {
    let mut parts = value.trim().split('-');
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let sampling = parts.next();
    let parent = parts.next();
    if parts.next().is_some() || parent.is_some_and(|p| parse_span_id(p).is_none()) {
        return None;
    }
    let sampled = match sampling {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    b3_parent(trace_id, span_id, sampled)
}

/// B3 multiple headers. `x-b3-flags: 1` (debug) implies sampled.
pub fn parse_b3_multi(
    trace_id: &str,
    span_id: &str,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<Parent> {
    let sampled = if flags.map(str::trim) == Some("1") {
        Some(true)
    } else {
        match sampled.map(str::trim) {
            None => None,
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            Some(_) => return None,
        }
    };
    b3_parent(trace_id.trim(), span_id.trim(), sampled)
}

fn b3_parent(trace_id: &str, span_id: &str, sampled: Option<bool>) -> Option<Parent> {
    // 64-bit trace ids are left-padded to 128 bits.
    let trace_id = match trace_id.len() {
        16 | 32 => any_hex_u128(trace_id.as_bytes())?,
        _ => return None,
    };
    let span_id = parse_span_id(span_id)?;
    if trace_id == 0 {
        return None;
    }
    let flags = match sampled {
        Some(true) => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    Some(Parent {
        context: SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(span_id),
            flags,
            true,
            TraceState::default(),
        ),
        deferred: sampled.is_none(),
    })
}

fn parse_span_id(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    let id = u64::try_from(any_hex_u128(text.as_bytes())?).ok()?;
    (id != 0).then_some(id)
}

fn hex_digit(byte: u8, upper_ok: bool) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' if upper_ok => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn fold_hex(bytes: &[u8], upper_ok: bool) -> Option<u128> {
    if bytes.is_empty() || bytes.len() > 32 {
        return None;
    }
    bytes.iter().try_fold(0u128, |acc, &b| {
        Some((acc << 4) | u128::from(hex_digit(b, upper_ok)?))
    })
}

fn hex_u8(bytes: &[u8]) -> Option<u8> {
    u8::try_from(fold_hex(bytes, false)?).ok()
}

fn lower_hex_u128(bytes: &[u8]) -> Option<u128> {
    fold_hex(bytes, false)
}

fn lower_hex_u64(bytes: &[u8]) -> Option<u64> {
    u64::try_from(fold_hex(bytes, false)?).ok()
}

/// B3 ids are "lower-hex" by spec, but some tracers send upper case.
fn any_hex_u128(bytes: &[u8]) -> Option<u128> {
    fold_hex(bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn w3c_traceparent_and_tracestate() {
        let value = format!("00-{TRACE}-{SPAN}-01");
        let parent = extract(headers(&[
            ("traceparent", &value),
            ("tracestate", "vendor=abc,other=1"),
        ]))
        .unwrap();
        let cx = &parent.context;
        assert_eq!(cx.trace_id().to_string(), TRACE);
        assert_eq!(cx.span_id().to_string(), SPAN);
        assert!(cx.is_sampled() && cx.is_remote() && !parent.deferred);
        assert_eq!(cx.trace_state().get("vendor"), Some("abc"));

        let unsampled = parse_traceparent(&format!("00-{TRACE}-{SPAN}-00"), None).unwrap();
        assert!(!unsampled.is_sampled());
        // Future versions may append fields; version 00 may not.
        assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-extra"), None).is_some());
        assert!(parse_traceparent(&format!("00-{TRACE}-{SPAN}-01-extra"), None).is_none());
    }

    #[test]
    fn w3c_rejects_what_the_spec_rejects() {
        let zero_trace = "0".repeat(32);
        let zero_span = "0".repeat(16);
        for bad in [
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{zero_trace}-{SPAN}-01"),
            format!("00-{TRACE}-{zero_span}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}{SPAN}-01"),
            "00-xyz".to_owned(),
            String::new(),
        ] {
            assert_eq!(parse_traceparent(&bad, None), None, "{bad:?}");
        }
        // A malformed traceparent hides a valid B3 header: the trace restarts.
        let b3 = format!("{TRACE}-{SPAN}-1");
        assert_eq!(
            extract(headers(&[("traceparent", "garbage"), ("b3", &b3)])),
            None
        );
    }

    #[test]
    fn b3_single_and_multi() {
        let single = extract(headers(&[("b3", &format!("{TRACE}-{SPAN}-1-{SPAN}"))])).unwrap();
        assert_eq!(single.context.trace_id().to_string(), TRACE);
        assert!(single.context.is_sampled() && !single.deferred);

        let debug = parse_b3_single(&format!("{TRACE}-{SPAN}-d")).unwrap();
        assert!(debug.context.is_sampled());
        let denied = parse_b3_single(&format!("{TRACE}-{SPAN}-0")).unwrap();
        assert!(!denied.context.is_sampled() && !denied.deferred);
        let deferred = parse_b3_single(&format!("{TRACE}-{SPAN}")).unwrap();
        assert!(deferred.deferred);
        // 64-bit trace ids are padded.
        let short = parse_b3_single(&format!("a3ce929d0e0e4736-{SPAN}-1")).unwrap();
        assert_eq!(
            short.context.trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert_eq!(parse_b3_single("0"), None, "a bare decision has no ids");
        assert_eq!(parse_b3_single(&format!("{TRACE}-{SPAN}-2")), None);

        let multi = extract(headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]))
        .unwrap();
        assert!(multi.context.is_sampled());
        let flagged = parse_b3_multi(TRACE, SPAN, Some("0"), Some("1")).unwrap();
        assert!(flagged.context.is_sampled(), "debug implies sampled");
        assert!(parse_b3_multi(TRACE, SPAN, None, None).unwrap().deferred);
        assert_eq!(parse_b3_multi(TRACE, "123", Some("1"), None), None);
        assert_eq!(extract(headers(&[("x-b3-traceid", TRACE)])), None);
    }

    proptest! {
        /// Untrusted input never panics, and whatever parses has non-zero ids.
        #[test]
        fn parsers_never_panic(value in ".{0,80}", state in proptest::option::of(".{0,40}")) {
            if let Some(cx) = parse_traceparent(&value, state.as_deref()) {
                prop_assert!(cx.is_valid());
            }
            if let Some(parent) = parse_b3_single(&value) {
                prop_assert!(parent.context.is_valid());
            }
        }

        /// Any valid traceparent round-trips its ids and sampled flag.
        #[test]
        fn traceparent_round_trips(trace in 1u128.., span in 1u64.., flags in 0u8..=255) {
            let value = format!("00-{trace:032x}-{span:016x}-{flags:02x}");
            let cx = parse_traceparent(&value, None).unwrap();
            prop_assert_eq!(cx.trace_id(), TraceId::from(trace));
            prop_assert_eq!(cx.span_id(), SpanId::from(span));
            prop_assert_eq!(cx.is_sampled(), flags & 1 == 1);
        }
    }
}
