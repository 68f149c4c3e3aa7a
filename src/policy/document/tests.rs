use std::path::Path;

use proptest::prelude::*;

use super::*;

const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: bikes, namespace: mobility }
spec:
  hosts: [api.bikes.example]
  plans:
    - name: free
"#;

fn parse(text: &str) -> Result<Vec<LoadedDocument>, LoadErrors> {
    parse_documents(Path::new("bikes.yaml"), text)
}

fn one_error(text: &str) -> String {
    let errors = parse(text).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    errors.0[0].to_string()
}

#[test]
fn reads_all_three_kinds() {
    let text = format!(
        "{POLICY}---\n{}---\n{}",
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: { name: commuter-ios, namespace: mobility }
spec: { appId: commuter-ios, plan: free }
"#,
        r#"
apiVersion: v1
kind: Secret
metadata: { name: keys }
type: Opaque
data: { a: aGVsbG8= }
stringData: { b: world }
"#
    );
    let docs = parse(&text).unwrap();
    assert_eq!(docs.len(), 3);
    assert_eq!(
        docs[0].describe(),
        "bikes.yaml: document 1 (ApiPolicy mobility/bikes)"
    );
    assert_eq!(docs[1].document.kind(), "AppRegistration");
    let Document::Secret(secret) = &docs[2].document else {
        panic!("not a secret")
    };
    assert_eq!(docs[2].document.namespace(), "default");
    let data = secret.data.as_ref().unwrap();
    assert_eq!(data["a"].0, b"hello");
    assert_eq!(data["b"].0, b"world");
}

#[test]
fn unknown_field_names_file_document_and_path() {
    let text = POLICY.replace("- name: free", "- name: free\n      limitz: []");
    let message = one_error(&text);
    assert!(
        message.starts_with(
            "bikes.yaml: document 1 (ApiPolicy mobility/bikes): spec.plans[0].limitz: unknown field"
        ),
        "{message}"
    );
}

#[test]
fn wrong_type_names_the_nested_field() {
    let text = format!(
        "{POLICY}---\n{}",
        POLICY.replace("name: bikes", "name: trikes").replace(
            "- name: free",
            "- name: free\n      limits:\n        - name: a\n          rate: { requests: 1, period: 1s }\n        - name: b\n          rate: { requests: 1, period: 1s, burst: lots }"
        )
    );
    let message = one_error(&text);
    assert!(
        message.starts_with(
            "bikes.yaml: document 2 (ApiPolicy mobility/trikes): spec.plans[0].limits[1].rate.burst: invalid type"
        ),
        "{message}"
    );
}

#[test]
fn bad_duration_names_the_field() {
    let text = POLICY.replace("  plans:", "  replay: { window: 5 minutes }\n  plans:");
    let message = one_error(&text);
    assert!(
        message.contains("spec.replay.window: invalid duration"),
        "{message}"
    );
}

#[test]
fn bad_base64_names_the_key_and_hides_the_value() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata: { name: keys, namespace: mobility }\ndata: { hmac: 'not*base64!' }\n";
    let message = one_error(text);
    assert!(
        message.starts_with(
            "bikes.yaml: document 1 (Secret mobility/keys): data.hmac: invalid base64"
        ),
        "{message}"
    );
    assert!(!message.contains("not*base64"), "{message}");
}

#[test]
fn wrong_type_in_secret_hides_the_value() {
    let text =
        "apiVersion: v1\nkind: Secret\nmetadata: { name: keys }\nstringData: { pin: [123456] }\n";
    let message = one_error(text);
    assert!(message.contains("stringData.pin"), "{message}");
    assert!(!message.contains("123456"), "{message}");
}

#[test]
fn unknown_kind_and_api_version_are_errors() {
    let message = one_error(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicyy\nmetadata: { name: x }\nspec: {}\n",
    );
    assert!(
        message.starts_with("bikes.yaml: document 1 (kind ApiPolicyy): kind: unknown kind"),
        "{message}"
    );
    let message = one_error("apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\n");
    assert!(
        message.contains("document 1 (kind Deployment): apiVersion: unknown apiVersion"),
        "{message}"
    );
    let message = one_error("kind: ApiPolicy\n");
    assert!(
        message.contains("document 1: apiVersion: missing"),
        "{message}"
    );
    let message = one_error("- just\n- a list\n");
    assert!(
        message.contains("document 1: expected a mapping"),
        "{message}"
    );
}

#[test]
fn metadata_is_strict() {
    let message = one_error(&POLICY.replace("namespace: mobility", "namepsace: mobility"));
    assert!(
        message.contains("(ApiPolicy default/bikes): metadata.namepsace: unknown field"),
        "{message}"
    );
    let message = one_error(&POLICY.replace("name: bikes, ", ""));
    assert!(
        message.contains("document 1 (ApiPolicy): metadata.name: missing"),
        "{message}"
    );
    let message = one_error(&POLICY.replace("name: bikes", "name: Bikes/x"));
    assert!(
        message.contains("metadata.name: \"Bikes/x\" is not a valid name"),
        "{message}"
    );
    // Fields of ObjectMeta that kubectl exports are accepted.
    let exported = POLICY.replace(
        "namespace: mobility }",
        "namespace: mobility, uid: abc, resourceVersion: '12', creationTimestamp: '2024-05-01T10:00:00Z' }\nstatus: { conditions: [] }",
    );
    let docs = parse(&exported).unwrap();
    let Document::ApiPolicy(p) = &docs[0].document else {
        panic!()
    };
    assert!(p.metadata.creation_timestamp.is_some());
}

#[test]
fn duplicate_key_and_invalid_yaml_name_the_file() {
    let message = one_error("apiVersion: v1\napiVersion: v1\n");
    assert!(message.starts_with("bikes.yaml: invalid YAML"), "{message}");
    let message = one_error("a: [unclosed\n");
    assert!(message.starts_with("bikes.yaml: invalid YAML"), "{message}");
}

#[test]
fn duplicates_across_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, POLICY).unwrap();
    std::fs::write(&b, format!("---\n{POLICY}")).unwrap();
    let errors = load_files(&[a.clone(), b.clone()]).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let message = errors.0[0].to_string();
    assert!(message.starts_with(&format!("{}: document 1 (ApiPolicy mobility/bikes): metadata.name: duplicate ApiPolicy: already defined in {}: document 1", b.display(), a.display())), "{message}");
    // The same name in another namespace, or of another kind, is fine.
    std::fs::write(&b, POLICY.replace("mobility", "other")).unwrap();
    assert_eq!(load_files(&[a, b]).unwrap().len(), 2);
}

#[test]
fn files_report_all_errors_and_io_problems() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
    let errors = load_files(&[missing.clone(), big.clone()]).unwrap_err();
    assert_eq!(errors.0.len(), 2);
    assert!(
        errors.0[0]
            .to_string()
            .starts_with(&format!("{}: cannot open", missing.display()))
    );
    assert!(errors.0[1].to_string().contains("larger than"), "{errors}");
}

#[test]
fn empty_documents_are_skipped() {
    let docs = parse(&format!("---\n---\n{POLICY}\n---\n")).unwrap();
    assert_eq!(docs.len(), 1);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }

    #[test]
    fn mutated_policies_never_panic(cut in 0usize..400, insert in "[ -~\n]{0,12}") {
        let mut text = POLICY.to_owned();
        let at = cut.min(text.len());
        if text.is_char_boundary(at) {
            text.insert_str(at, &insert);
        }
        let _ = parse(&text);
    }
}

#[test]
fn yaml_1_1_booleans_stay_strings() {
    let docs = parse(&POLICY.replace("namespace: mobility", "namespace: n")).unwrap();
    assert_eq!(docs[0].document.namespace(), "n");
    let message =
        one_error(&POLICY.replace("  plans:", "  transport: { requireHttps: yes }\n  plans:"));
    assert!(
        message.contains(
            "spec.transport.requireHttps: invalid type: string \"yes\", expected a boolean"
        ),
        "{message}"
    );
}

/// A file may register thousands of apps (each an AppRegistration and a
/// Secret): well past the YAML parser's default budget of 1,024 documents.
#[test]
fn thousands_of_documents_in_one_file_load() {
    let mut text = String::from(POLICY);
    for i in 0..3_000 {
        text.push_str(&format!(
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\n\
             metadata: {{ name: app-{i}, namespace: mobility }}\nspec:\n  appId: app-{i}\n"
        ));
    }
    let docs = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 3_001);
}
