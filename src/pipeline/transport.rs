//! Stage 3: transport checks on the external request: HTTPS required, and
//! the client address against the deny and allow lists.

use std::net::IpAddr;

use crate::decision::Deny;
use crate::origin::Origin;
use crate::policy::snapshot::Transport;
use crate::reason::Reason;

/// Passes with the client address the lists were checked against (`None`:
/// the policy restricts no address), so the caller can note it.
pub(super) fn check(transport: &Transport, origin: &Origin) -> Result<Option<IpAddr>, Deny> {
    if transport.require_https && !origin.is_https() {
        return Err(Deny::new(
            Reason::HttpsRequired,
            "this API is only served over HTTPS",
        ));
    }
    if transport.deny.is_empty() && transport.allow.is_empty() {
        return Ok(None);
    }
    // An unknown client address cannot be shown to be outside a deny list
    // or inside an allow list: fail closed.
    let Some(ip) = origin.client_ip else {
        return Err(Deny::new(
            Reason::IpDenied,
            "the client address is unknown and the policy restricts addresses",
        ));
    };
    if transport.deny.iter().any(|net| net.contains(&ip)) {
        return Err(Deny::new(
            Reason::IpDenied,
            format!("client address {ip} is denied"),
        ));
    }
    if !transport.allow.is_empty() && !transport.allow.iter().any(|net| net.contains(&ip)) {
        return Err(Deny::new(
            Reason::IpDenied,
            format!("client address {ip} is not in the allowed ranges"),
        ));
    }
    Ok(Some(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(ip: Option<&str>, https: bool) -> Origin {
        Origin {
            client_ip: ip.map(|i| i.parse().unwrap()),
            scheme: if https { "https" } else { "http" },
            host: "h".into(),
            port: None,
            client_certificate: None,
            client_principal: None,
        }
    }

    fn transport(https: bool, allow: &[&str], deny: &[&str]) -> Transport {
        Transport {
            require_https: https,
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
            deny: deny.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn https_required() {
        let deny = check(&transport(true, &[], &[]), &origin(None, false)).unwrap_err();
        assert_eq!(deny.reason, Reason::HttpsRequired);
        assert!(check(&transport(true, &[], &[]), &origin(None, true)).is_ok());
    }

    #[test]
    fn deny_list_before_allow_list() {
        let t = transport(false, &["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(check(&t, &origin(Some("10.2.3.4"), false)).is_ok());
        assert_eq!(
            check(&t, &origin(Some("10.1.3.4"), false))
                .unwrap_err()
                .reason,
            Reason::IpDenied
        );
        assert_eq!(
            check(&t, &origin(Some("192.0.2.1"), false))
                .unwrap_err()
                .reason,
            Reason::IpDenied
        );
        assert_eq!(
            check(&t, &origin(None, false)).unwrap_err().reason,
            Reason::IpDenied
        );
    }
}
