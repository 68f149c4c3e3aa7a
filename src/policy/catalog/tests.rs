//! The catalog's promises, object by object: last good versions, Secret
//! dependencies, contested claims by age, and the report's facts.

use std::path::Path;

use super::*;
use crate::policy::document::parse_documents;

/// Parses one document as a cluster object (`Origin::Cluster`).
fn object(yaml: &str) -> LoadedDocument {
    let mut docs = parse_documents(Path::new("t.yaml"), yaml).unwrap();
    assert_eq!(docs.len(), 1);
    let mut doc = docs.remove(0);
    doc.origin = Origin::Cluster;
    doc
}

fn upsert(catalog: &mut Catalog, yaml: &str) {
    let doc = object(yaml);
    let age = Age::of(&doc.document, 0);
    catalog.upsert(doc, age);
}

fn policy(name: &str, created: &str, spec: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{ name: {name}, namespace: mobility, generation: 1, creationTimestamp: '{created}' }}\nspec:\n{spec}\n"
    )
}

fn app(name: &str, created: &str, spec: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\nmetadata: {{ name: {name}, namespace: mobility, creationTimestamp: '{created}' }}\nspec: {spec}\n"
    )
}

fn secret(name: &str, key: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {name}, namespace: mobility }}\nstringData: {{ {key}: '{value}' }}\n"
    )
}

fn policy_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::ApiPolicy, "mobility", name)
}

fn app_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::AppRegistration, "mobility", name)
}

const KEY_A: &str = "k3Jd9sQ2mX8vL5pR7tY1wZ4nB6cF0gHa";
const KEY_B: &str = "Q9w8E7r6T5y4U3i2O1pAsDfGhJkLzXcV";
const T1: &str = "2025-01-01T00:00:00Z";
const T2: &str = "2025-06-01T00:00:00Z";

#[test]
fn an_invalid_update_keeps_the_previous_version_serving() {
    let mut catalog = Catalog::new(None);
    upsert(&mut catalog, &policy("bikes", T1, "  hosts: [a.example]"));
    upsert(&mut catalog, &policy("trains", T1, "  hosts: [t.example]"));
    let broken = policy(
        "bikes",
        T1,
        "  hosts: [b.example]\n  routes: [{ name: r, cost: 0 }]",
    )
    .replace("generation: 1", "generation: 2");
    upsert(&mut catalog, &broken);

    let (snapshot, report) = catalog.assemble(2);
    assert_eq!(
        snapshot.hosts.lookup("a.example"),
        Some(&PolicyId::new("mobility", "bikes")),
        "the previous version serves"
    );
    assert_eq!(snapshot.hosts.lookup("b.example"), None);
    assert!(
        snapshot.hosts.lookup("t.example").is_some(),
        "others untouched"
    );
    let bikes = report.get(&policy_ref("bikes")).unwrap();
    assert_eq!(bikes.state, ObjectState::ServingPrevious);
    assert_eq!(
        (bikes.generation, bikes.serving_generation),
        (Some(2), Some(1))
    );
    assert_eq!(bikes.errors[0].field, "spec.routes[0].cost");
    assert_eq!(bikes.hosts, ["a.example"]);
    assert_eq!(
        report.get(&policy_ref("trains")).unwrap().state,
        ObjectState::Serving
    );

    // Removing the object stops serving it.
    catalog.remove(&policy_ref("bikes"));
    let (snapshot, report) = catalog.assemble(3);
    assert_eq!(snapshot.hosts.lookup("a.example"), None);
    assert!(report.get(&policy_ref("bikes")).is_none());
}

#[test]
fn secrets_recompile_their_readers_only() {
    let mut catalog = Catalog::new(Some("is it labelled?".to_owned()));
    let ios = app(
        "ios",
        T1,
        "{ appId: ios, apiKey: { secretRef: { name: ios-key, key: apiKey } } }",
    );
    upsert(&mut catalog, &ios);
    upsert(&mut catalog, &policy("bikes", T1, "  hosts: [a.example]"));
    let (snapshot, report) = catalog.assemble(1);
    assert_eq!(snapshot.apps.len(), 0);
    let waiting = report.get(&app_ref("ios")).unwrap();
    assert_eq!(waiting.state, ObjectState::NotServing);
    assert_eq!(waiting.missing_secrets.len(), 1);
    assert_eq!(waiting.missing_secrets[0].name, "ios-key");
    assert_eq!(
        waiting.errors[0].to_string(),
        "spec.apiKey: Secret mobility/ios-key (key \"apiKey\") not found (is it labelled?)"
    );
    let compiled_before = Arc::as_ptr(&snapshot.policies[&PolicyId::new("mobility", "bikes")]);

    // The Secret arrives: the app compiles; the policy, which never read
    // it, keeps its compiled version (and caches).
    upsert(&mut catalog, &secret("ios-key", "apiKey", KEY_A));
    let (snapshot, report) = catalog.assemble(2);
    assert_eq!(snapshot.apps.len(), 1);
    assert_eq!(
        report.get(&app_ref("ios")).unwrap().state,
        ObjectState::Serving
    );
    let compiled_after = Arc::as_ptr(&snapshot.policies[&PolicyId::new("mobility", "bikes")]);
    assert_eq!(compiled_before, compiled_after);

    // A re-list delivering the same spec recompiles nothing either.
    upsert(&mut catalog, &policy("bikes", T1, "  hosts: [a.example]"));
    let (snapshot, _) = catalog.assemble(3);
    assert_eq!(
        compiled_before,
        Arc::as_ptr(&snapshot.policies[&PolicyId::new("mobility", "bikes")])
    );

    // The Secret disappears: the app keeps its last good version serving
    // and says which Secret is missing.
    catalog.remove(&ObjectRef::new(Kind::Secret, "mobility", "ios-key"));
    let (snapshot, report) = catalog.assemble(4);
    assert_eq!(snapshot.apps.len(), 1);
    let ios = report.get(&app_ref("ios")).unwrap();
    assert_eq!(ios.state, ObjectState::ServingPrevious);
    assert_eq!(ios.missing_secrets[0].name, "ios-key");
}

/// The reader index follows each object's latest compile: an object that
/// stops reading a Secret (its spec changed, it was removed, its new
/// version could not be read) is no longer recompiled when it changes.
#[test]
fn the_reader_index_follows_what_each_object_reads_now() {
    let mut catalog = Catalog::new(None);
    let key_in = |secret: &str| {
        format!("{{ appId: ios, apiKey: {{ secretRef: {{ name: {secret}, key: apiKey }} }} }}")
    };
    let readers_of = |catalog: &Catalog, secret: &str| -> Vec<ObjectRef> {
        catalog
            .readers
            .of(&("mobility".to_owned(), secret.to_owned()))
            .into_iter()
            .map(|(kind, (namespace, name))| ObjectRef::new(kind, &namespace, &name))
            .collect()
    };
    upsert(&mut catalog, &secret("key-a", "apiKey", KEY_A));
    upsert(&mut catalog, &secret("key-b", "apiKey", KEY_B));
    upsert(&mut catalog, &app("ios", T1, &key_in("key-a")));
    upsert(
        &mut catalog,
        &app("android", T1, &key_in("key-a").replace("ios", "android")),
    );
    assert_eq!(
        readers_of(&catalog, "key-a"),
        [app_ref("android"), app_ref("ios")]
    );
    assert!(readers_of(&catalog, "key-b").is_empty());

    // ios moves to key-b.
    upsert(&mut catalog, &app("ios", T1, &key_in("key-b")));
    assert_eq!(readers_of(&catalog, "key-a"), [app_ref("android")]);
    assert_eq!(readers_of(&catalog, "key-b"), [app_ref("ios")]);

    // Both keys rotate (swapped): each app recompiles with its own.
    upsert(&mut catalog, &secret("key-b", "apiKey", KEY_A));
    upsert(&mut catalog, &secret("key-a", "apiKey", KEY_B));
    let (snapshot, report) = catalog.assemble(1);
    assert_eq!(snapshot.apps.len(), 2);
    for app in ["ios", "android"] {
        let report = report.get(&app_ref(app)).unwrap();
        assert_eq!(report.state, ObjectState::Serving, "{report:?}");
        assert!(report.conflicts.is_empty(), "{report:?}");
    }

    // Removed, or unreadable: no longer a reader.
    catalog.remove(&app_ref("android"));
    assert!(readers_of(&catalog, "key-a").is_empty());
    catalog.reject(
        &app_ref("ios"),
        "t.yaml".to_owned(),
        Origin::Cluster,
        Vec::new(),
    );
    assert!(readers_of(&catalog, "key-b").is_empty());
    assert!(catalog.readers.by_secret.is_empty());
}

#[test]
fn the_older_policy_keeps_a_contested_host_whatever_the_order() {
    for older_first in [true, false] {
        let mut catalog = Catalog::new(None);
        let old = policy("zeta", T1, "  hosts: [shared.example, z.example]");
        let new = policy("alpha", T2, "  hosts: [shared.example]");
        if older_first {
            upsert(&mut catalog, &old);
            upsert(&mut catalog, &new);
        } else {
            upsert(&mut catalog, &new);
            upsert(&mut catalog, &old);
        }
        let (snapshot, report) = catalog.assemble(1);
        assert_eq!(
            snapshot.hosts.lookup("shared.example"),
            Some(&PolicyId::new("mobility", "zeta")),
            "older_first={older_first}"
        );
        let alpha = report.get(&policy_ref("alpha")).unwrap();
        assert_eq!(alpha.conflicts.len(), 1);
        assert_eq!(alpha.conflicts[0].holder, policy_ref("zeta"));
        assert_eq!(alpha.conflicts[0].error.field, "spec.hosts[0]");
        assert!(alpha.hosts.is_empty());
        assert_eq!(
            report.get(&policy_ref("zeta")).unwrap().hosts,
            ["shared.example", "z.example"]
        );
    }
}

#[test]
fn the_same_creation_time_falls_back_to_namespace_and_name() {
    let mut catalog = Catalog::new(None);
    upsert(&mut catalog, &policy("b", T1, "  hosts: [x.example]"));
    upsert(&mut catalog, &policy("a", T1, "  hosts: [x.example]"));
    let (snapshot, _) = catalog.assemble(1);
    assert_eq!(
        snapshot.hosts.lookup("x.example"),
        Some(&PolicyId::new("mobility", "a"))
    );
}

#[test]
fn a_newer_registration_cannot_take_an_older_ones_api_key() {
    let mut catalog = Catalog::new(None);
    upsert(&mut catalog, &secret("keys", "a", KEY_A));
    let spec = "{ appId: APP, apiKey: { secretRef: { name: keys, key: a } } }";
    upsert(
        &mut catalog,
        &app("thief", T2, &spec.replace("APP", "thief")),
    );
    upsert(
        &mut catalog,
        &app("owner", T1, &spec.replace("APP", "owner")),
    );
    let (snapshot, report) = catalog.assemble(1);
    let ids: Vec<&str> = snapshot.apps.iter().map(|a| a.app_id.as_str()).collect();
    assert_eq!(ids, ["owner"]);
    let thief = report.get(&app_ref("thief")).unwrap();
    assert_eq!(thief.state, ObjectState::NotServing);
    assert_eq!(thief.conflicts[0].holder, app_ref("owner"));
    assert_eq!(thief.conflicts[0].error.field, "spec.apiKey");
    assert!(
        crate::policy::compile::report_errors(&report)[0]
            .to_string()
            .contains("the same API key is registered for AppRegistration mobility/owner")
    );

    // Given its own key, it is served.
    upsert(&mut catalog, &secret("keys2", "b", KEY_B));
    let own = "{ appId: thief, apiKey: { secretRef: { name: keys2, key: b } } }";
    upsert(&mut catalog, &app("thief", T2, own));
    let (snapshot, _) = catalog.assemble(2);
    assert_eq!(snapshot.apps.len(), 2);
}

#[test]
fn the_report_relates_apps_and_policies() {
    let mut catalog = Catalog::new(None).with_app_plans(true);
    let plans = "  defaultPlan: free\n  plans: [{ name: free }, { name: gold }]";
    upsert(
        &mut catalog,
        &policy("bikes", T1, &format!("  hosts: [b.example]\n{plans}")),
    );
    upsert(
        &mut catalog,
        &policy(
            "trains",
            T1,
            "  hosts: [t.example]\n  defaultPlan: free\n  plans: [{ name: free }]",
        ),
    );
    upsert(&mut catalog, &app("ios", T1, "{ appId: ios, plan: gold }"));
    upsert(
        &mut catalog,
        &app("web", T1, "{ appId: web, policies: [bikes, ships] }"),
    );
    let (_, report) = catalog.assemble(1);

    assert_eq!(report.get(&policy_ref("bikes")).unwrap().accepted_apps, 2);
    assert_eq!(report.get(&policy_ref("trains")).unwrap().accepted_apps, 1);
    let ios = report.get(&app_ref("ios")).unwrap();
    assert_eq!(
        ios.plans,
        [
            (PolicyId::new("mobility", "bikes"), Some("gold".to_owned())),
            (PolicyId::new("mobility", "trains"), Some("free".to_owned())),
        ]
    );
    assert_eq!(ios.warnings[0].field, "spec.plan");
    assert!(
        ios.warnings[0]
            .message
            .contains("not defined by ApiPolicy mobility/trains")
    );
    let web = report.get(&app_ref("web")).unwrap();
    assert_eq!(
        web.warnings[0].to_string(),
        "spec.policies[1]: no ApiPolicy mobility/ships"
    );
    assert_eq!(
        web.state,
        ObjectState::Serving,
        "warnings do not stop serving"
    );

    let counts = report.counts();
    assert_eq!(counts[&(Kind::ApiPolicy, ObjectState::Serving)], 2);
    assert_eq!(counts[&(Kind::AppRegistration, ObjectState::NotServing)], 0);

    // A server's catalog leaves the per-app plans out (they grow with
    // apps × policies); everything else is the same.
    catalog.app_plans = false;
    let (_, lean) = catalog.assemble(2);
    let ios = lean.get(&app_ref("ios")).unwrap();
    assert!(ios.plans.is_empty());
    assert_eq!(ios.warnings[0].field, "spec.plan");
    assert_eq!(lean.get(&policy_ref("bikes")).unwrap().accepted_apps, 2);
}

#[test]
fn a_rejected_read_keeps_the_previous_version() {
    let mut catalog = Catalog::new(None);
    upsert(&mut catalog, &policy("bikes", T1, "  hosts: [a.example]"));
    catalog.reject(
        &policy_ref("bikes"),
        "ApiPolicy mobility/bikes".to_owned(),
        Origin::Cluster,
        vec![FieldError::new("spec.hostz", "unknown field")],
    );
    let (snapshot, report) = catalog.assemble(2);
    assert!(snapshot.hosts.lookup("a.example").is_some());
    let bikes = report.get(&policy_ref("bikes")).unwrap();
    assert_eq!(bikes.state, ObjectState::ServingPrevious);
    assert_eq!(
        bikes.problems(),
        ["ApiPolicy mobility/bikes: spec.hostz: unknown field"]
    );

    // An object whose first version is unreadable is simply not served.
    catalog.reject(
        &policy_ref("new"),
        "ApiPolicy mobility/new".to_owned(),
        Origin::Cluster,
        vec![FieldError::new("spec", "bad")],
    );
    let (_, report) = catalog.assemble(3);
    assert_eq!(
        report.get(&policy_ref("new")).unwrap().state,
        ObjectState::NotServing
    );
}
