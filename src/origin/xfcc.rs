//! `X-Forwarded-Client-Cert` (XFCC): the client certificate a
//! TLS-terminating proxy in front of Envoy saw, used only in `forwarded`
//! mode.
//!
//! The header is a comma-separated list of elements, one per proxy that
//! terminated a TLS connection with a client certificate, each a
//! `;`-separated list of `Key=value` pairs (`By`, `Hash`, `Cert`, `Chain`,
//! `Subject`, `URI`, `DNS`); values may be double-quoted (a `"` inside
//! escaped as `\"`) and `Cert` is the URL-encoded PEM. tollgate reads the **right-most** element: it was
//! appended by the proxy nearest to Envoy, so an element a client forged
//! further left is never used. The trusted proxy must still sanitise the
//! header when it saw no client certificate (Envoy:
//! `forward_client_cert_details: SANITIZE_SET`), or a client's own element
//! would be the right-most one; `docs/envoy.md` says how.

use std::borrow::Cow;

use crate::encoding::percent_decode;
use crate::request::RequestContext;

/// Most bytes of XFCC tollgate parses (a PEM certificate is 1–3 KiB).
const MAX_XFCC_BYTES: usize = 16 * 1024;

/// The client certificate a trusted proxy forwarded.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ForwardedClient {
    pub certificate: Option<String>,
    pub principal: Option<String>,
}

/// The right-most XFCC element of `request`, if any and well-formed.
pub(super) fn client(request: &RequestContext) -> ForwardedClient {
    let mut values = request.headers.get_all("x-forwarded-client-cert");
    let (Some(value), None) = (values.next(), values.next()) else {
        // Absent, or repeated (ambiguous): no certificate.
        return ForwardedClient::default();
    };
    if value.len() > MAX_XFCC_BYTES {
        return ForwardedClient::default();
    }
    let Some(element) = split_unquoted(value, ',').and_then(|mut elements| elements.pop()) else {
        return ForwardedClient::default();
    };
    let Some(pairs) = split_unquoted(element, ';') else {
        return ForwardedClient::default();
    };
    let mut client = ForwardedClient::default();
    let mut uri = None;
    let mut dns = None;
    let mut subject = None;
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else {
            continue;
        };
        let value = unquote(raw.trim());
        match key.trim().to_ascii_lowercase().as_str() {
            "cert" => client.certificate = percent_decode(&value),
            "uri" if uri.is_none() => uri = Some(value.into_owned()),
            "dns" if dns.is_none() => dns = Some(value.into_owned()),
            "subject" => subject = Some(value.into_owned()),
            _ => {}
        }
    }
    // The same preference Envoy uses for `Peer.principal`.
    client.principal = uri.or(dns).or(subject).filter(|p| !p.is_empty());
    client
}

/// Splits on `separator` outside double quotes. Inside quotes a backslash
/// escapes the next character: Envoy writes a `"` within a value as `\"`,
/// so a certificate subject holding `",URI=…` stays one value and cannot
/// end its quotes to add a key or an element of the client's choosing.
/// `None` when a quote is left open: a client-written element with an
/// unclosed quote would otherwise swallow the trusted proxy's element
/// appended after it, so the whole header is refused.
fn split_unquoted(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// A value without its surrounding quotes and with its backslash escapes
/// resolved (`\"` is `"`, `\\` is `\`); an unquoted value as it is.
fn unquote(value: &str) -> Cow<'_, str> {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return Cow::Borrowed(value);
    };
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Headers;

    fn request(values: &[&str]) -> RequestContext {
        RequestContext {
            headers: values
                .iter()
                .map(|v| ("x-forwarded-client-cert", *v))
                .collect::<Headers>(),
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_right_most_element() {
        let forged = r#"Cert="-----BEGIN%20CERTIFICATE-----%0AFORGED";URI=spiffe://evil/app"#;
        let real = r#"By=spiffe://mesh/envoy;Hash=ab;Cert="-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A";Subject="CN=app, O=Bikes";URI=spiffe://bikes/app;DNS=app.bikes"#;
        let client = client(&request(&[&format!("{forged},{real}")]));
        assert_eq!(
            client.certificate.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        );
        assert_eq!(client.principal.as_deref(), Some("spiffe://bikes/app"));
    }

    #[test]
    fn quoted_commas_do_not_split_elements() {
        let client = client(&request(&[r#"Subject="CN=a, O=b""#]));
        assert_eq!(client.principal.as_deref(), Some("CN=a, O=b"));
        assert_eq!(client.certificate, None);
    }

    /// A value as Envoy writes it into XFCC: quoted, with `"` (and `\`)
    /// escaped by a backslash.
    fn quoted(value: &str) -> String {
        let mut out = String::from('"');
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    #[test]
    fn escaped_quotes_stay_inside_their_value() {
        // A certificate subject holding `",URI=spiffe://admin` must not end
        // the quoted value and add an element of the client's choosing.
        let subject = r#"CN=mallory",URI=spiffe://bikes/admin;DNS=x"#;
        let header = format!("By=spiffe://mesh/envoy;Subject={}", quoted(subject));
        let client = client(&request(&[&header]));
        assert_eq!(client.principal.as_deref(), Some(subject));
        let header = format!(
            r#"Subject={};URI=spiffe://bikes/app"#,
            quoted(r#"CN=\"q\""#)
        );
        assert_eq!(
            client_principal(&header).as_deref(),
            Some("spiffe://bikes/app")
        );
    }

    fn client_principal(header: &str) -> Option<String> {
        client(&request(&[header])).principal
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::test_cases(256)))]

        /// Any values, written as Envoy writes them, read back as they
        /// were; the right-most element wins whatever the others hold.
        #[test]
        fn values_round_trip_through_envoys_quoting(
            forged in "[ -~]{0,24}",
            subject in "[ -~]{0,24}",
            uri in proptest::option::of("[ -~]{1,24}"),
            dns in proptest::option::of("[ -~]{1,24}"),
        ) {
            let mut element = format!("Hash=ab;Subject={}", quoted(&subject));
            if let Some(uri) = &uri {
                element.push_str(&format!(";URI={}", quoted(uri)));
            }
            if let Some(dns) = &dns {
                element.push_str(&format!(";DNS={}", quoted(dns)));
            }
            let header = format!("URI={},{element}", quoted(&forged));
            let expected = uri.or(dns).or(Some(subject)).filter(|p| !p.is_empty());
            proptest::prop_assert_eq!(client_principal(&header), expected);
        }
    }

    #[test]
    fn absent_repeated_broken_or_oversized_gives_nothing() {
        assert_eq!(client(&request(&[])), ForwardedClient::default());
        assert_eq!(
            client(&request(&["URI=spiffe://a", "URI=spiffe://b"])),
            ForwardedClient::default()
        );
        assert_eq!(client(&request(&[r#"Cert="%zz""#])).certificate, None);
        // A quote left open by a client-written element would swallow the
        // trusted proxy's element after it: nothing is read.
        let open = r#"URI="spiffe://evil/app,By=spiffe://mesh;URI=spiffe://bikes/app"#;
        assert_eq!(client(&request(&[open])), ForwardedClient::default());
        let huge = format!("URI={}", "a".repeat(MAX_XFCC_BYTES));
        assert_eq!(client(&request(&[&huge])), ForwardedClient::default());
    }
}
