//! The trusted origin: how the client's address and the external scheme and
//! host are known. One setting, used by transport checks, `ip` limits, DPoP
//! `htu` and signature components alike.
//!
//! By default only what Envoy itself observed is trusted: the direct peer's
//! address, whether the downstream connection used TLS, and the client
//! certificate of that connection. A client's own `:scheme` is never
//! trusted (plaintext h2c can claim `https`). Behind a TLS-terminating load
//! balancer, `forwarded` mode reads `X-Forwarded-For` and
//! `X-Forwarded-Proto`, trusting exactly `hops` proxies, and the client
//! certificate from `X-Forwarded-Client-Cert` (see [`xfcc`]).

mod xfcc;

use std::net::IpAddr;

use crate::request::RequestContext;

/// How the external view of a request is established.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrustedOrigin {
    /// Envoy's downstream connection: peer address and TLS session.
    #[default]
    Envoy,
    /// `X-Forwarded-For` / `X-Forwarded-Proto` written by `hops` trusted
    /// proxies in front of Envoy (the right-most `hops` entries).
    Forwarded { hops: u8 },
}

/// The request as seen from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client's address, canonical: an IPv4-mapped IPv6 address
    /// (`::ffff:203.0.113.5`, RFC 4291 §2.5.5.2, what a dual-stack socket
    /// or proxy may report) is the IPv4 address it maps, so IPv4 address
    /// rules and limits see one client as one address.
    pub client_ip: Option<IpAddr>,
    /// `https` or `http`.
    pub scheme: &'static str,
    /// Lower-case host without port.
    pub host: String,
    /// The port, when the authority named one.
    pub port: Option<u16>,
    /// The client's certificate (PEM), for RFC 8705 binding and app
    /// identification.
    pub client_certificate: Option<String>,
    /// The client certificate's identity (URI SAN / SPIFFE ID, else DNS SAN
    /// or subject).
    pub client_principal: Option<String>,
}

impl Origin {
    /// True when the external request used HTTPS.
    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }
}

/// Establishes the origin of `request` under `trust`.
pub fn resolve(request: &RequestContext, trust: TrustedOrigin) -> Origin {
    let (host, port) = split_authority(&request.authority);
    match trust {
        TrustedOrigin::Envoy => Origin {
            client_ip: request.peer_ip.map(|ip| ip.to_canonical()),
            scheme: if request.tls { "https" } else { "http" },
            host,
            port,
            client_certificate: request.peer_certificate.clone(),
            client_principal: request.peer_principal.clone(),
        },
        TrustedOrigin::Forwarded { hops } => {
            let hops = usize::from(hops.max(1));
            // Each proxy appends the address it saw; the entry `hops` from the
            // right was written by the outermost trusted proxy.
            let forwarded: Vec<&str> = request
                .headers
                .get_all("x-forwarded-for")
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            let client_ip = forwarded
                .len()
                .checked_sub(hops)
                .and_then(|i| forwarded.get(i))
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical());
            let proto: Vec<&str> = request
                .headers
                .get_all("x-forwarded-proto")
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            let scheme = match proto.last() {
                Some(p) if p.eq_ignore_ascii_case("https") => "https",
                _ => "http",
            };
            // The peer certificate Envoy saw is the proxy's, not the client's.
            let client = xfcc::client(request);
            Origin {
                client_ip,
                scheme,
                host,
                port,
                client_certificate: client.certificate,
                client_principal: client.principal,
            }
        }
    }
}

/// Splits `host[:port]` (or `[v6]:port`), lower-casing the host.
pub fn split_authority(authority: &str) -> (String, Option<u16>) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host.to_ascii_lowercase(), port);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_ascii_lowercase(), port.parse().ok()),
        _ => (authority.to_ascii_lowercase(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Headers;

    fn request(headers: &[(&str, &str)], tls: bool) -> RequestContext {
        RequestContext {
            authority: "API.Example:8443".into(),
            scheme: "https".into(),
            headers: headers.iter().copied().collect::<Headers>(),
            peer_ip: Some("10.0.0.9".parse().unwrap()),
            tls,
            ..Default::default()
        }
    }

    #[test]
    fn envoy_mode_trusts_the_connection_not_the_scheme_header() {
        let origin = resolve(&request(&[], false), TrustedOrigin::Envoy);
        assert_eq!(
            origin.scheme, "http",
            ":scheme https over plaintext must not count"
        );
        assert_eq!(origin.host, "api.example");
        assert_eq!(origin.port, Some(8443));
        assert_eq!(origin.client_ip, Some("10.0.0.9".parse().unwrap()));
        assert!(resolve(&request(&[], true), TrustedOrigin::Envoy).is_https());
    }

    #[test]
    fn forwarded_mode_takes_the_entry_of_the_outermost_trusted_hop() {
        let req = request(
            &[
                ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
                ("x-forwarded-proto", "https"),
            ],
            false,
        );
        let origin = resolve(&req, TrustedOrigin::Forwarded { hops: 1 });
        assert_eq!(origin.client_ip, Some("198.51.100.7".parse().unwrap()));
        assert!(origin.is_https());
        let origin = resolve(&req, TrustedOrigin::Forwarded { hops: 2 });
        assert_eq!(origin.client_ip, Some("6.6.6.6".parse().unwrap()));
        let origin = resolve(&req, TrustedOrigin::Forwarded { hops: 3 });
        assert_eq!(origin.client_ip, None, "fewer entries than hops: unknown");
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        let mut req = request(&[("x-forwarded-for", "::ffff:198.51.100.7")], false);
        req.peer_ip = Some("::ffff:10.0.0.9".parse().unwrap());
        let origin = resolve(&req, TrustedOrigin::Envoy);
        assert_eq!(origin.client_ip, Some("10.0.0.9".parse().unwrap()));
        let origin = resolve(&req, TrustedOrigin::Forwarded { hops: 1 });
        assert_eq!(origin.client_ip, Some("198.51.100.7".parse().unwrap()));
        req.peer_ip = Some("2001:db8::1".parse().unwrap());
        let origin = resolve(&req, TrustedOrigin::Envoy);
        assert_eq!(origin.client_ip, Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn authority_forms() {
        assert_eq!(split_authority("[::1]:80"), ("::1".into(), Some(80)));
        assert_eq!(split_authority("Host"), ("host".into(), None));
        assert_eq!(split_authority("::1"), ("::1".into(), None));
    }
}
