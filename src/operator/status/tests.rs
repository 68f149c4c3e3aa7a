//! Every condition reason, from catalog reports of real documents.

use std::path::Path;

use serde_json::json;

use super::*;
use crate::policy::catalog::{Age, Catalog, ObjectRef, Report};
use crate::policy::document::{Origin, parse_documents};

const NOW: &str = "2026-12-06T12:00:00Z";

fn catalog(yaml: &str) -> Catalog {
    let mut catalog = Catalog::new(Some("is the label missing?".to_owned())).with_app_plans(true);
    apply(&mut catalog, yaml);
    catalog
}

fn apply(catalog: &mut Catalog, yaml: &str) {
    for mut doc in parse_documents(Path::new("t.yaml"), yaml).unwrap() {
        doc.origin = Origin::Cluster;
        let age = Age::of(&doc.document, 0);
        catalog.upsert(doc, age);
    }
}

fn report_of(catalog: &Catalog) -> Report {
    catalog.assemble(1).1
}

fn of<'a>(report: &'a Report, kind: Kind, name: &str) -> &'a ObjectReport {
    report.get(&ObjectRef::new(kind, "m", name)).unwrap()
}

const POLICY: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicy\nmetadata: { name: bikes, namespace: m, generation: 3, creationTimestamp: '2025-01-01T00:00:00Z' }\nspec:\n  hosts: [b.example]\n  defaultPlan: free\n  plans: [{ name: free }]\n";

#[test]
fn a_valid_policy_is_accepted_and_ready_with_its_facts() {
    let report = report_of(&catalog(POLICY));
    let bikes = of(&report, Kind::ApiPolicy, "bikes");
    let status = desired(bikes, Some(3), None, NOW);
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["hosts"], json!(["b.example"]));
    assert_eq!(status["acceptedApps"], 0);
    let conditions = status["conditions"].as_array().unwrap();
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[1]["type"], "Ready");
    for condition in conditions {
        assert_eq!(condition["status"], "True");
        assert_eq!(condition["reason"], "Valid");
        assert_eq!(condition["observedGeneration"], 3);
        assert_eq!(condition["lastTransitionTime"], NOW);
    }
}

#[test]
fn an_unchanged_verdict_keeps_its_transition_time() {
    let report = report_of(&catalog(POLICY));
    let bikes = of(&report, Kind::ApiPolicy, "bikes");
    let first = desired(bikes, Some(3), None, "2026-01-01T00:00:00Z");
    let again = desired(bikes, Some(3), Some(&first), NOW);
    assert_eq!(
        first, again,
        "the same verdict is the same status: no write"
    );
}

#[test]
fn a_broken_update_is_invalid_and_names_the_field_and_what_serves() {
    let mut catalog = catalog(POLICY);
    let broken = POLICY.replace("generation: 3", "generation: 4").replace(
        "plans: [{ name: free }]",
        "plans: [{ name: free }]\n  routes: [{ name: r, cost: 0 }]",
    );
    apply(&mut catalog, &broken);
    let report = report_of(&catalog);
    let bikes = of(&report, Kind::ApiPolicy, "bikes");
    let (accepted, ready) = verdicts(bikes);
    assert_eq!((accepted.ok, accepted.reason), (false, "Invalid"));
    assert_eq!(accepted.message, "spec.routes[0].cost: must be at least 1");
    assert_eq!((ready.ok, ready.reason), (false, "Invalid"));
    assert_eq!(
        ready.message,
        "generation 3 keeps serving: spec.routes[0].cost: must be at least 1"
    );
    // Ready turned False: a new transition time.
    let valid = desired(
        of(&report_of_valid(), Kind::ApiPolicy, "bikes"),
        Some(3),
        None,
        "2026-01-01T00:00:00Z",
    );
    let status = desired(bikes, Some(4), Some(&valid), NOW);
    assert_eq!(status["conditions"][1]["lastTransitionTime"], NOW);
    assert_eq!(status["observedGeneration"], 4);
}

fn report_of_valid() -> Report {
    report_of(&catalog(POLICY))
}

#[test]
fn a_missing_secret_says_which_and_mentions_the_label() {
    let app = "apiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\nmetadata: { name: ios, namespace: m }\nspec: { appId: ios, apiKey: { secretRef: { name: ios-key, key: apiKey } } }\n";
    let report = report_of(&catalog(app));
    let ios = of(&report, Kind::AppRegistration, "ios");
    let (accepted, ready) = verdicts(ios);
    assert_eq!(accepted.reason, "SecretNotFound");
    assert_eq!(
        accepted.message,
        "spec.apiKey: Secret m/ios-key (key \"apiKey\") not found (is the label missing?)"
    );
    assert!(
        ready.message.starts_with("not served: "),
        "{}",
        ready.message
    );
}

#[test]
fn the_newer_policy_of_a_contested_host_is_conflicted_naming_the_older() {
    let newer = POLICY
        .replace("name: bikes", "name: scooters")
        .replace("2025-01-01", "2025-06-01")
        .replace("hosts: [b.example]", "hosts: [b.example, s.example]");
    let report = report_of(&catalog(&format!("{POLICY}---\n{newer}")));
    let (_, ready) = verdicts(of(&report, Kind::ApiPolicy, "scooters"));
    assert_eq!((ready.ok, ready.reason), (false, "Conflicted"));
    assert_eq!(
        ready.message,
        "served for s.example; spec.hosts[0]: host \"b.example\" is already served by the older ApiPolicy m/bikes; this policy is not served for it"
    );
    assert!(verdicts(of(&report, Kind::ApiPolicy, "bikes")).1.ok);
}

#[test]
fn an_app_on_an_unknown_plan_or_policy_is_not_ready() {
    let app = |spec: &str| {
        format!(
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\nmetadata: {{ name: ios, namespace: m }}\nspec: {spec}\n"
        )
    };
    let report = report_of(&catalog(&format!(
        "{POLICY}{}",
        app("{ appId: ios, plan: gold }")
    )));
    let ios = of(&report, Kind::AppRegistration, "ios");
    let (accepted, ready) = verdicts(ios);
    assert!(accepted.ok);
    assert_eq!(ready.reason, "PlanNotFound");
    assert!(
        ready
            .message
            .contains("plan \"gold\" is not defined by ApiPolicy m/bikes")
    );
    assert_eq!(
        desired(ios, None, None, NOW)["plans"],
        json!([{ "policy": "bikes", "plan": "free" }])
    );

    let other = report_of(&catalog(&format!(
        "{POLICY}{}",
        app("{ appId: ios, policies: [trains] }")
    )));
    let (_, ready) = verdicts(of(&other, Kind::AppRegistration, "ios"));
    assert_eq!(ready.reason, "PolicyNotFound");
    assert_eq!(ready.message, "spec.policies[0]: no ApiPolicy m/trains");
}

#[test]
fn messages_are_bounded_on_a_character_boundary() {
    let long = "é".repeat(MAX_MESSAGE);
    let bounded = bound(long.clone());
    assert!(bounded.len() <= MAX_MESSAGE + 40, "{}", bounded.len());
    assert!(bounded.ends_with("more bytes)"));
    assert_eq!(bound("short".to_owned()), "short");
}
