//! The CustomResourceDefinitions of `ApiPolicy` and `AppRegistration`,
//! generated from the Rust types (`tollgate crds`), so the cluster's
//! schema and the policy-file reader can never disagree.
//!
//! kube's derive already rewrites schemars' output towards a Kubernetes
//! *structural schema*; [`crds`] then applies the rules it leaves out,
//! because the API server refuses (or silently prunes) otherwise:
//!
//! - `additionalProperties: false` (from `deny_unknown_fields`) is removed:
//!   beside `properties` the API server rejects it ("additionalProperties
//!   and properties are mutual exclusive"), and unknown fields are pruned
//!   by the structural schema anyway;
//! - `additionalProperties: true` on a free-form object (the inline JWKS)
//!   becomes `x-kubernetes-preserve-unknown-fields: true`, or the API server
//!   would prune its content;
//! - `type: [T, "null"]` and `anyOf: [T, null]` become `type: T` with
//!   `nullable: true` (OpenAPI v3.0 has no `null` type);
//! - the unsigned formats schemars writes (`uint64`…) become `int64`/
//!   `int32` with `minimum: 0`: Kubernetes knows only the OpenAPI formats;
//! - `uniqueItems` is removed (forbidden: quadratic validation cost).
//!
//! Then [`admission`] adds what the API server checks at admission: CEL
//! rules, patterns, bounds and list types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use serde_json::{Map, Value};

use super::types::{ApiPolicy, AppRegistration};

pub mod admission;

/// The two CRDs as JSON values, schemas made structural, with their
/// admission rules.
pub fn crds() -> Vec<Value> {
    let policy_rules = (admission::POLICY_RULES, admission::policy_keywords());
    let app_rules = (admission::APP_RULES, admission::app_keywords());
    [
        (ApiPolicy::crd(), policy_rules),
        (AppRegistration::crd(), app_rules),
    ]
    .iter()
    .map(|(crd, (rules, keywords))| {
        let mut value = structural_crd(crd);
        if let Some(schema) = value.pointer_mut("/spec/versions/0/schema/openAPIV3Schema") {
            // A rule whose field was renamed fails the CRD tests; the
            // generated file then shows the message instead of a rule.
            if let Err(error) = admission::apply(schema, rules, keywords) {
                schema["x-tollgate-error"] = Value::String(error);
            }
        }
        value
    })
    .collect()
}

/// The CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# tollgate CustomResourceDefinitions, generated from the Rust types by\n\
         # `tollgate crds`. Do not edit: regenerate.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        match serde_saphyr::to_string(&crd) {
            Ok(yaml) => out.push_str(&yaml),
            // Serialising a JSON value to YAML cannot fail in practice
            // (string keys, finite numbers); say so loudly if it ever does.
            Err(error) => out.push_str(&format!("# cannot serialise this CRD: {error}\n")),
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn structural_crd(crd: &CustomResourceDefinition) -> Value {
    let mut value = serde_json::to_value(crd).unwrap_or(Value::Null);
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                make_structural(schema);
            }
        }
    }
    value
}

/// Rewrites one schema node and everything below it (see the module docs).
fn make_structural(node: &mut Value) {
    let Value::Object(obj) = node else {
        return;
    };
    obj.remove("$schema");
    obj.remove("uniqueItems");

    // `type: [T, "null"]` → `type: T, nullable: true`.
    if let Some(Value::Array(types)) = obj.get("type") {
        let non_null: Vec<Value> = types
            .iter()
            .filter(|t| t.as_str() != Some("null"))
            .cloned()
            .collect();
        if non_null.len() == 1 {
            let nullable = non_null.len() < types.len();
            obj.insert("type".to_owned(), non_null[0].clone());
            if nullable {
                obj.insert("nullable".to_owned(), Value::Bool(true));
            }
        }
    }

    // `anyOf: [T, null]` → T's keywords here, plus `nullable: true`.
    hoist_nullable(obj, "anyOf");
    hoist_nullable(obj, "oneOf");

    match obj.get("additionalProperties") {
        Some(Value::Bool(false)) => {
            obj.remove("additionalProperties");
        }
        Some(Value::Bool(true)) => {
            obj.remove("additionalProperties");
            if !obj.contains_key("properties") {
                obj.insert(
                    "x-kubernetes-preserve-unknown-fields".to_owned(),
                    Value::Bool(true),
                );
            }
        }
        _ => {}
    }

    if let Some(format) = obj.get("format").and_then(Value::as_str) {
        let signed = match format {
            "uint64" | "uint" => Some("int64"),
            "uint32" | "uint16" | "uint8" => Some("int32"),
            _ => None,
        };
        if let Some(signed) = signed {
            obj.insert("format".to_owned(), Value::String(signed.to_owned()));
            obj.entry("minimum").or_insert(Value::from(0));
        }
    }

    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = obj.get_mut(key) {
            make_structural(child);
        }
    }
    if let Some(Value::Object(properties)) = obj.get_mut("properties") {
        for child in properties.values_mut() {
            make_structural(child);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(children)) = obj.get_mut(key) {
            for child in children {
                make_structural(child);
            }
        }
    }
}

/// A junction of exactly one schema and a null schema is an optional
/// value: merge the schema into the node and mark it nullable.
fn hoist_nullable(obj: &mut Map<String, Value>, key: &str) {
    let Some(Value::Array(branches)) = obj.get(key) else {
        return;
    };
    let is_null = |v: &Value| {
        v.get("type").and_then(Value::as_str) == Some("null")
            || v.get("enum") == Some(&Value::Array(vec![Value::Null]))
    };
    let (nulls, others): (Vec<&Value>, Vec<&Value>) = branches.iter().partition(|v| is_null(v));
    if nulls.is_empty() || others.len() != 1 {
        return;
    }
    let Some(Value::Object(inner)) = others.first().map(|v| (*v).clone()) else {
        return;
    };
    obj.remove(key);
    for (k, v) in inner {
        obj.entry(k).or_insert(v);
    }
    obj.insert("nullable".to_owned(), Value::Bool(true));
}

#[cfg(test)]
mod tests;
