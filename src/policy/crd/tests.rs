use serde_json::json;

use super::*;

/// The OpenAPI formats the Kubernetes API server knows (a subset is
/// enough: the ones a generated schema may carry).
const FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "duration",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "uuid",
    "password",
];

/// Checks the structural-schema rules the API server enforces (and the
/// ones that would silently prune fields), collecting every violation.
fn check_structural(node: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        errors.push(format!("{path}: not a schema object"));
        return;
    };
    for forbidden in ["$ref", "$schema", "definitions", "$defs", "uniqueItems"] {
        if obj.contains_key(forbidden) {
            errors.push(format!("{path}: {forbidden} is not allowed"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    match obj.get("type") {
        Some(Value::String(t))
            if ["object", "array", "string", "integer", "number", "boolean"]
                .contains(&t.as_str()) => {}
        None if preserve || int_or_string => {}
        other => errors.push(format!(
            "{path}: type must be one type name, found {other:?}"
        )),
    }
    match obj.get("additionalProperties") {
        None => {}
        Some(Value::Object(_)) if !obj.contains_key("properties") => {}
        Some(other) => errors.push(format!(
            "{path}: additionalProperties {other} (with properties: {})",
            obj.contains_key("properties")
        )),
    }
    if obj.get("type") == Some(&json!("array")) && !obj.contains_key("items") {
        errors.push(format!("{path}: an array needs items"));
    }
    if let Some(format) = obj.get("format").and_then(Value::as_str)
        && !FORMATS.contains(&format)
    {
        errors.push(format!("{path}: unknown format {format}"));
    }
    for junctor in ["anyOf", "oneOf", "allOf", "not"] {
        if obj.contains_key(junctor) {
            // Allowed only as value validation without types; the
            // generated schemas need none, so any is suspicious.
            errors.push(format!("{path}: {junctor} present"));
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, child) in props {
            check_structural(child, &format!("{path}.{name}"), errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), errors);
    }
    if let Some(additional @ Value::Object(_)) = obj.get("additionalProperties") {
        check_structural(additional, &format!("{path}{{}}"), errors);
    }
}

fn parsed() -> Vec<Value> {
    let yaml = crds_yaml();
    serde_saphyr::from_multiple::<Value>(&yaml).unwrap()
}

#[test]
fn both_crds_round_trip_with_names_group_and_version() {
    let crds = parsed();
    assert_eq!(crds.len(), 2);
    let expected = [
        ("apipolicies.tollgate.dev", "ApiPolicy", "apipolicies"),
        (
            "appregistrations.tollgate.dev",
            "AppRegistration",
            "appregistrations",
        ),
    ];
    for (crd, (name, kind, plural)) in crds.iter().zip(expected) {
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(crd["metadata"]["name"], name);
        assert_eq!(crd["spec"]["group"], "tollgate.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], kind);
        assert_eq!(crd["spec"]["names"]["plural"], plural);
        let versions = crd["spec"]["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0]["name"], "v1alpha1");
        assert_eq!(versions[0]["served"], true);
        assert_eq!(versions[0]["storage"], true);
        assert!(versions[0]["subresources"]["status"].is_object());
    }
    // The YAML equals the JSON values it was made from.
    assert_eq!(crds, super::crds());
}

#[test]
fn schemas_are_structural() {
    let yaml = crds_yaml();
    assert!(!yaml.contains("additionalProperties: false"), "{yaml}");
    for crd in parsed() {
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut errors = Vec::new();
        check_structural(schema, "openAPIV3Schema", &mut errors);
        assert!(
            errors.is_empty(),
            "{}: {errors:#?}",
            crd["metadata"]["name"]
        );
        assert!(schema["properties"]["spec"]["properties"].is_object());
    }
}

#[test]
fn free_form_and_optional_fields_keep_their_data() {
    let crd = &parsed()[0];
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let inline = &spec["properties"]["user"]["properties"]["issuers"]["items"]["properties"]["jwks"]
        ["properties"]["inline"];
    assert_eq!(
        inline["x-kubernetes-preserve-unknown-fields"], true,
        "{inline}"
    );
    assert_eq!(inline["nullable"], true);
    let cost = &spec["properties"]["routes"]["items"]["properties"]["cost"];
    assert_eq!(cost["format"], "int64");
    // Unsigned becomes `minimum: 0`; the admission rules raise it to 1.
    assert_eq!(cost["minimum"].as_f64(), Some(1.0));
    assert_eq!(cost["nullable"], true);
}

#[test]
fn rewrites_non_structural_constructs() {
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "a": { "type": ["integer", "null"], "format": "uint32" },
            "b": { "anyOf": [ { "type": "string", "enum": ["x"] }, { "type": "null" } ] },
            "c": { "type": "object", "additionalProperties": true },
            "d": { "type": "array", "items": { "type": "string" }, "uniqueItems": true }
        }
    });
    make_structural(&mut schema);
    assert_eq!(
        schema,
        json!({
            "type": "object",
            "properties": {
                "a": { "type": "integer", "nullable": true, "format": "int32", "minimum": 0 },
                "b": { "type": "string", "enum": ["x"], "nullable": true },
                "c": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                "d": { "type": "array", "items": { "type": "string" } }
            }
        })
    );
    let mut errors = Vec::new();
    check_structural(&schema, "s", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    // And the checker does catch what the rewrite removes.
    check_structural(
        &json!({ "type": "object", "additionalProperties": false, "properties": { "x": {} } }),
        "s",
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn resources_are_described_for_kubectl_explain() {
    for crd in parsed() {
        let description = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(description.contains("docs/policy.md"), "{description}");
    }
}

// ------------------------------------------------------------ admission

/// The CEL messages kube's evaluator reports for `object` against the
/// generated schema of `kind` (what the API server would say).
fn cel_errors(kind: &str, object: Value) -> Vec<String> {
    let crd = crds()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert!(schema.get("x-tollgate-error").is_none(), "{schema}");
    match kube::core::cel::Validator::new().validate(schema, &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

fn policy(spec: Value) -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ApiPolicy",
        "metadata": { "name": "p", "namespace": "n" },
        "spec": spec,
    })
}

/// Each pair: a spec the compile step refuses (and CEL must refuse with
/// the message fragment), and its corrected form (CEL must accept).
#[test]
fn cel_rules_refuse_what_the_compile_step_refuses() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "defaultPlan must name one of spec.plans",
            json!({ "plans": [{ "name": "free" }], "defaultPlan": "gold" }),
            json!({ "plans": [{ "name": "free" }], "defaultPlan": "free" }),
        ),
        (
            "defaultPlan must name one of spec.plans",
            json!({ "plans": [{ "name": "free" }] }),
            json!({ "plans": [] }),
        ),
        (
            "set path or pathPrefix, not both",
            json!({ "routes": [{ "name": "r", "match": { "path": "/a", "pathPrefix": "/b" } }] }),
            json!({ "routes": [{ "name": "r", "match": { "pathPrefix": "/b" } }] }),
        ),
        (
            "a public route checks no credentials",
            json!({ "routes": [{ "name": "r", "public": true, "cost": 2 }] }),
            json!({ "routes": [{ "name": "r", "public": true }] }),
        ),
        (
            "a public route checks no credentials",
            json!({ "routes": [{ "name": "r", "public": true, "deny": true }] }),
            json!({ "routes": [{ "name": "r", "deny": true }] }),
        ),
        (
            "routes[].require needs spec.user",
            json!({ "routes": [{ "name": "r", "require": { "scopes": ["rent"] } }] }),
            json!({ "routes": [{ "name": "r" }] }),
        ),
        (
            "set exactly one of rate and quota",
            json!({ "defaultPlan": "f", "plans": [{ "name": "f", "limits": [{ "name": "l" }] }] }),
            json!({ "defaultPlan": "f", "plans": [{ "name": "f", "limits": [{ "name": "l", "quota": { "requests": 5, "reset": "day" } }] }] }),
        ),
        (
            "upstream header names are lower-case tokens",
            json!({ "response": { "upstreamHeaders": { "X-User": "{user.sub}" } } }),
            json!({ "response": { "upstreamHeaders": { "x-user": "{user.sub}" } } }),
        ),
        (
            "upstream header names are lower-case tokens",
            json!({ "response": { "upstreamHeaders": { "x-tollgate-user": "{user.sub}" } } }),
            json!({ "response": { "upstreamHeaders": { "x-user-sub": "{user.sub}" } } }),
        ),
        (
            "set exactly one of discovery, uri, inline and secretRef",
            json!({ "user": { "issuers": [{ "issuer": "https://id/", "jwks": { "discovery": true, "uri": "https://id/jwks" } }] } }),
            json!({ "user": { "issuers": [{ "issuer": "https://id/", "jwks": { "uri": "https://id/jwks" } }] } }),
        ),
        (
            "encoding only applies to secretRef",
            json!({ "app": { "attestation": { "keys": { "uri": "https://a/jwks", "encoding": "base64" } } } }),
            json!({ "app": { "attestation": { "keys": { "secretRef": { "name": "s", "key": "k" }, "encoding": "base64" } } } }),
        ),
    ];
    for (message, refused, accepted) in cases {
        let errors = cel_errors("ApiPolicy", policy(refused.clone()));
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{refused} must be refused with {message:?}, got {errors:?}"
        );
        let errors = cel_errors("ApiPolicy", policy(accepted.clone()));
        assert!(errors.is_empty(), "{accepted} must pass, got {errors:?}");

        // The compile step agrees: the refused spec does not compile.
        let doc = serde_json::to_string(&policy(refused.clone())).unwrap();
        let docs = crate::policy::document::parse_documents(std::path::Path::new("p.yaml"), &doc);
        let compiled = docs.map(|d| crate::policy::compile::compile(&d, 1));
        assert!(
            !matches!(compiled, Ok(Ok(_))),
            "the compile step must refuse {refused} too"
        );
    }
}

#[test]
fn bounds_patterns_and_list_types_are_in_the_schema() {
    let crds = crds();
    let policy = &crds[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let spec = &policy["spec"]["properties"];
    assert_eq!(spec["hosts"]["x-kubernetes-list-type"], "set");
    assert_eq!(spec["plans"]["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(
        spec["routes"]["x-kubernetes-list-map-keys"],
        json!(["name"])
    );
    assert_eq!(spec["routes"]["items"]["properties"]["cost"]["minimum"], 1);
    let conditions = &policy["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let app = &crds[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    assert_eq!(app["spec"]["properties"]["appId"]["minLength"], 1);
    assert_eq!(
        app["status"]["properties"]["conditions"]["x-kubernetes-list-map-keys"],
        json!(["type"])
    );

    // The host pattern is the compile step's host rule.
    let host = regex_lite_match(spec["hosts"]["items"]["pattern"].as_str().unwrap());
    for good in ["api.example", "*.bikes.example", "a-1.b2"] {
        assert!(host(good), "{good}");
        assert!(crate::policy::compile::check_host(good).is_ok());
    }
    for bad in [
        "API.example",
        "api.example:443",
        "*api.example",
        "a.*.example",
        "-a.example",
        "api.example.",
    ] {
        assert!(!host(bad), "{bad}");
        assert!(crate::policy::compile::check_host(bad).is_err(), "{bad}");
    }
}

/// Matches with CEL's own regex engine (the one the API server's
/// `pattern` follows closely enough for these ASCII classes).
fn regex_lite_match(pattern: &str) -> impl Fn(&str) -> bool {
    let pattern = pattern.to_owned();
    move |text: &str| {
        let rule = format!("self.matches('{}')", pattern.replace('\\', "\\\\"));
        let schema = json!({ "type": "string", "x-kubernetes-validations": [{ "rule": rule }] });
        kube::core::cel::Validator::new()
            .validate(&schema, &json!(text), None)
            .is_ok()
    }
}
