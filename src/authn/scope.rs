//! Per-route requirements on the user token:
//! `routes[].require: {scopes: [...], claims: {name: [values]}}`.
//!
//! A missing scope or claim is 403 `insufficient_scope` with the RFC 6750
//! §3.1 challenge `Bearer error="insufficient_scope", scope="…"` naming the
//! scopes the route needs.

use serde_json::{Map, Value};

use super::user::UserIdentity;
use crate::decision::Deny;
use crate::policy::types::RouteRequire;
use crate::reason::Reason;

/// The scopes a token grants: RFC 9068 §2.2.3 / RFC 8693 §4.2 `scope`
/// (space-separated string), or the common `scp` (array or string).
pub fn granted_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut scopes = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    scopes
}

/// True when the claim `value` (a scalar or an array of scalars) equals one
/// of `accepted`.
fn claim_matches(value: &Value, accepted: &[String]) -> bool {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(scalar)
            .any(|v| accepted.contains(&v)),
        other => scalar(other).is_some_and(|v| accepted.contains(&v)),
    }
}

/// Checks a route's requirements against the authenticated user. Without a
/// user token the client is asked to authenticate (401
/// `user_token_missing`), since no token can satisfy the route otherwise.
pub fn check(require: &RouteRequire, user: Option<&UserIdentity>) -> Result<(), Deny> {
    if require.scopes.is_empty() && require.claims.is_empty() {
        return Ok(());
    }
    let Some(user) = user else {
        return Err(Deny::new(
            Reason::UserTokenMissing,
            "this route requires a user token",
        ));
    };
    let granted = granted_scopes(&user.claims);
    let missing: Vec<&str> = require
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !granted.contains(s))
        .collect();
    let challenge = || {
        format!(
            r#"Bearer realm="tollgate", error="insufficient_scope", scope="{}""#,
            require.scopes.join(" ")
        )
    };
    if !missing.is_empty() {
        return Err(Deny::new(
            Reason::InsufficientScope,
            format!("the token lacks scope {}", missing.join(" ")),
        )
        .with_header("www-authenticate", challenge()));
    }
    for (name, accepted) in &require.claims {
        let ok = user
            .claims
            .get(name)
            .is_some_and(|v| claim_matches(v, accepted));
        if !ok {
            return Err(Deny::new(
                Reason::InsufficientScope,
                format!("the token's {name} claim does not hold a required value"),
            )
            .with_header("www-authenticate", challenge()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(claims: Value) -> UserIdentity {
        UserIdentity {
            issuer: "https://id".into(),
            subject: "u".into(),
            claims: std::sync::Arc::new(claims.as_object().unwrap().clone()),
            ..Default::default()
        }
    }

    fn require(scopes: &[&str], claims: &[(&str, &[&str])]) -> RouteRequire {
        RouteRequire {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let r = require(&["rent", "read"], &[]);
        assert!(check(&r, Some(&user(json!({"scope": "read rent other"})))).is_ok());
        assert!(check(&r, Some(&user(json!({"scp": ["rent", "read"]})))).is_ok());
        let deny = check(&r, Some(&user(json!({"scope": "read"})))).unwrap_err();
        assert_eq!(deny.reason, Reason::InsufficientScope);
        assert!(deny.detail.contains("rent"));
        let (_, challenge) = &deny.headers[0];
        assert_eq!(
            challenge,
            r#"Bearer realm="tollgate", error="insufficient_scope", scope="rent read""#
        );
    }

    #[test]
    fn claims_any_of() {
        let r = require(&[], &[("tier", &["gold", "silver"]), ("admin", &["true"])]);
        assert!(check(&r, Some(&user(json!({"tier": "gold", "admin": true})))).is_ok());
        assert!(
            check(
                &r,
                Some(&user(json!({"tier": ["x", "silver"], "admin": "true"})))
            )
            .is_ok()
        );
        let deny = check(&r, Some(&user(json!({"tier": "bronze", "admin": true})))).unwrap_err();
        assert_eq!(deny.reason, Reason::InsufficientScope);
        assert!(check(&r, Some(&user(json!({"admin": true})))).is_err());
    }

    #[test]
    fn no_user_means_authenticate_first() {
        let r = require(&["rent"], &[]);
        assert_eq!(
            check(&r, None).unwrap_err().reason,
            Reason::UserTokenMissing
        );
        assert!(check(&require(&[], &[]), None).is_ok());
    }
}
