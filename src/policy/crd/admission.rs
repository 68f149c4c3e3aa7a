//! What the API server refuses at admission: CEL rules
//! (`x-kubernetes-validations`), patterns, bounds and list types added to
//! the generated schemas, so `kubectl apply` of an object the compile step
//! would refuse for a *static* reason fails at once, with a message naming
//! the field.
//!
//! The compile step stays the authority (it runs on policy files too, and
//! checks what no schema can: Secrets, key material, host conflicts); these
//! rules only move the statically knowable part of it to the API server's
//! door. Each rule mirrors a compile check, and `crd/tests.rs` runs every
//! rule against objects on both sides of it with kube's CEL evaluator; the
//! real API server proves the CRDs fit its CEL cost budget (which is why
//! every list and map a rule walks has a bound).
//!
//! Paths are JSON pointers into the version's `openAPIV3Schema`.

use serde_json::{Map, Value, json};

/// A CEL rule at a schema node.
pub struct Rule {
    pub at: &'static str,
    pub rule: &'static str,
    pub message: &'static str,
    /// Where the API server reports it (relative to `at`), when narrower.
    pub field_path: Option<&'static str>,
}

/// Extra keywords merged into a schema node.
pub struct Keywords {
    pub at: &'static str,
    pub keywords: fn() -> Value,
}

const SPEC: &str = "/properties/spec";

/// The CEL rules of `ApiPolicy`.
pub const POLICY_RULES: &[Rule] = &[
    Rule {
        at: SPEC,
        rule: "!has(self.plans) || size(self.plans) == 0 || (has(self.defaultPlan) && self.plans.exists(p, p.name == self.defaultPlan))",
        message: "defaultPlan must name one of spec.plans (the plan of apps that have none)",
        field_path: Some(".defaultPlan"),
    },
    Rule {
        at: SPEC,
        rule: "has(self.user) || !has(self.routes) || self.routes.all(r, !has(r.require) || ((!has(r.require.scopes) || size(r.require.scopes) == 0) && (!has(r.require.claims) || size(r.require.claims) == 0)))",
        message: "routes[].require needs spec.user: scopes and claims come from the user token",
        field_path: Some(".routes"),
    },
    Rule {
        at: "/properties/spec/properties/routes/items",
        rule: "!has(self.public) || !self.public || (!has(self.cost) && !has(self.require) && !(has(self.deny) && self.deny))",
        message: "a public route checks no credentials and consumes no quota: remove cost, require and deny, or public",
        field_path: None,
    },
    Rule {
        at: "/properties/spec/properties/routes/items/properties/match",
        rule: "!(has(self.path) && has(self.pathPrefix))",
        message: "set path or pathPrefix, not both",
        field_path: None,
    },
    Rule {
        at: "/properties/spec/properties/plans/items/properties/limits/items",
        rule: "has(self.rate) != has(self.quota)",
        message: "set exactly one of rate and quota",
        field_path: None,
    },
    Rule {
        at: "/properties/spec/properties/response/properties/upstreamHeaders",
        rule: "self.all(name, name.matches('^[a-z0-9!#$%&*+.^|~-]+$') && !name.startsWith('x-tollgate-') && !(name in ['host', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length']))",
        message: "upstream header names are lower-case tokens without '_', outside x-tollgate- (tollgate's own) and not hop-by-hop headers",
        field_path: None,
    },
    Rule {
        at: "/properties/spec/properties/user/properties/issuers/items/properties/jwks",
        rule: KEY_SOURCE_ONE_OF,
        message: KEY_SOURCE_MESSAGE,
        field_path: None,
    },
    Rule {
        at: "/properties/spec/properties/user/properties/issuers/items/properties/jwks",
        rule: KEY_SOURCE_ENCODING,
        message: KEY_SOURCE_ENCODING_MESSAGE,
        field_path: Some(".encoding"),
    },
    Rule {
        at: "/properties/spec/properties/app/properties/attestation/properties/keys",
        rule: KEY_SOURCE_ONE_OF,
        message: KEY_SOURCE_MESSAGE,
        field_path: None,
    },
    Rule {
        at: "/properties/spec/properties/app/properties/attestation/properties/keys",
        rule: KEY_SOURCE_ENCODING,
        message: KEY_SOURCE_ENCODING_MESSAGE,
        field_path: Some(".encoding"),
    },
];

const KEY_SOURCE_ONE_OF: &str = "(has(self.discovery) && self.discovery ? 1 : 0) + (has(self.uri) ? 1 : 0) + (has(self.inline) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) == 1";
const KEY_SOURCE_MESSAGE: &str = "set exactly one of discovery, uri, inline and secretRef";
const KEY_SOURCE_ENCODING: &str = "!has(self.encoding) || has(self.secretRef)";
const KEY_SOURCE_ENCODING_MESSAGE: &str = "encoding only applies to secretRef";

/// The CEL rules of `AppRegistration`.
pub const APP_RULES: &[Rule] = &[];

/// A header name in any case (compared case-insensitively).
const TOKEN: &str = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";
/// A host as the host index stores it: lower-case DNS name, optional
/// leading `*.`, no port.
const HOST: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An absolute path without query, fragment, `;` path parameters, spaces
/// or control characters.
const PATH: &str = r"^/[^?#;\s\x00-\x1f\x7f]*$";

/// Patterns, bounds and list types of `ApiPolicy`.
pub fn policy_keywords() -> Vec<Keywords> {
    vec![
        Keywords {
            at: "/properties/spec/properties/hosts",
            keywords: || json!({"maxItems": 64, "x-kubernetes-list-type": "set"}),
        },
        Keywords {
            at: "/properties/spec/properties/hosts/items",
            keywords: || json!({"maxLength": 253, "pattern": HOST}),
        },
        Keywords {
            at: "/properties/spec/properties/plans",
            keywords: || json!({"maxItems": 64, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
        },
        Keywords {
            at: "/properties/spec/properties/plans/items/properties/name",
            keywords: || json!({"minLength": 1, "maxLength": 63}),
        },
        Keywords {
            at: "/properties/spec/properties/defaultPlan",
            keywords: || json!({"maxLength": 63}),
        },
        Keywords {
            at: "/properties/spec/properties/user/properties/issuers",
            keywords: || json!({"maxItems": 16}),
        },
        Keywords {
            at: "/properties/spec/properties/plans/items/properties/limits",
            keywords: || json!({"maxItems": 16, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
        },
        Keywords {
            at: "/properties/spec/properties/plans/items/properties/limits/items/properties/rate/properties/requests",
            keywords: || json!({"minimum": 1}),
        },
        Keywords {
            at: "/properties/spec/properties/plans/items/properties/limits/items/properties/rate/properties/burst",
            keywords: || json!({"minimum": 1}),
        },
        Keywords {
            at: "/properties/spec/properties/plans/items/properties/limits/items/properties/quota/properties/requests",
            keywords: || json!({"minimum": 1}),
        },
        Keywords {
            at: "/properties/spec/properties/routes",
            keywords: || json!({"maxItems": 256, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
        },
        Keywords {
            at: "/properties/spec/properties/routes/items/properties/name",
            keywords: || json!({"minLength": 1, "maxLength": 128}),
        },
        Keywords {
            at: "/properties/spec/properties/routes/items/properties/cost",
            keywords: || json!({"minimum": 1}),
        },
        Keywords {
            at: "/properties/spec/properties/routes/items/properties/match/properties/path",
            keywords: || json!({"maxLength": 2048, "pattern": PATH}),
        },
        Keywords {
            at: "/properties/spec/properties/routes/items/properties/match/properties/pathPrefix",
            keywords: || json!({"maxLength": 2048, "pattern": PATH}),
        },
        Keywords {
            at: "/properties/spec/properties/routes/items/properties/match/properties/methods/items",
            keywords: || json!({"maxLength": 32, "pattern": TOKEN}),
        },
        Keywords {
            at: "/properties/spec/properties/response/properties/upstreamHeaders",
            keywords: || json!({"maxProperties": 64}),
        },
        Keywords {
            at: "/properties/spec/properties/response/properties/upstreamHeaders/additionalProperties",
            keywords: || json!({"maxLength": 1024}),
        },
        Keywords {
            at: "/properties/spec/properties/app/properties/identify/properties/apiKey/properties/header",
            keywords: || json!({"maxLength": 256, "pattern": TOKEN}),
        },
        Keywords {
            at: "/properties/spec/properties/app/properties/attestation/properties/header",
            keywords: || json!({"maxLength": 256, "pattern": TOKEN}),
        },
        Keywords {
            at: "/properties/spec/properties/app/properties/attestation/properties/binding/properties/headers/items",
            keywords: || json!({"maxLength": 256, "pattern": TOKEN}),
        },
        Keywords {
            at: "/properties/status/properties/conditions",
            keywords: conditions,
        },
    ]
}

/// Patterns, bounds and list types of `AppRegistration`.
pub fn app_keywords() -> Vec<Keywords> {
    vec![
        Keywords {
            at: "/properties/spec/properties/appId",
            // Sent upstream as a header value: printable, bounded.
            keywords: || json!({"minLength": 1, "maxLength": 253, "pattern": r"^[^\x00-\x1f\x7f]+$"}),
        },
        Keywords {
            at: "/properties/spec/properties/policies",
            keywords: || json!({"x-kubernetes-list-type": "set"}),
        },
        Keywords {
            at: "/properties/status/properties/conditions",
            keywords: conditions,
        },
    ]
}

/// Conditions are a list keyed by `type` (Kubernetes API conventions).
fn conditions() -> Value {
    json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
}

/// Adds `rules` and `keywords` to `schema`; a path that does not exist is
/// an error naming it (a renamed field must not silently drop its rule).
pub fn apply(schema: &mut Value, rules: &[Rule], keywords: &[Keywords]) -> Result<(), String> {
    for rule in rules {
        let node = node(schema, rule.at)?;
        let mut entry = Map::new();
        entry.insert("rule".to_owned(), Value::from(rule.rule));
        entry.insert("message".to_owned(), Value::from(rule.message));
        if let Some(path) = rule.field_path {
            entry.insert("fieldPath".to_owned(), Value::from(path));
        }
        let list = node
            .entry("x-kubernetes-validations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = list {
            list.push(Value::Object(entry));
        }
    }
    for extra in keywords {
        let node = node(schema, extra.at)?;
        if let Value::Object(keywords) = (extra.keywords)() {
            node.extend(keywords);
        }
    }
    Ok(())
}

fn node<'a>(schema: &'a mut Value, at: &str) -> Result<&'a mut Map<String, Value>, String> {
    schema
        .pointer_mut(at)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("no schema node at {at}"))
}
