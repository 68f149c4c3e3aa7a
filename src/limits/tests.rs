//! Plan compilation: every error names its field.

use super::*;
use crate::policy::types::ApiPolicySpec;

fn spec(yaml: &str) -> ApiPolicySpec {
    serde_json::from_value(serde_saphyr::from_str::<serde_json::Value>(yaml).unwrap()).unwrap()
}

#[test]
fn compiles_rates_quotas_and_default_plan() {
    let plans = Plans::compile(&spec(
        r#"
defaultPlan: free
plans:
  - name: free
    limits:
      - { name: per-second, key: app, rate: { requests: 10, period: 1s, burst: 20 } }
      - { name: daily, key: app, quota: { requests: 10000, reset: day } }
  - name: gold
    limits:
      - { name: monthly, key: app, quota: { requests: 5000000, reset: month, timeZone: Europe/Berlin } }
"#,
    ))
    .unwrap();
    assert_eq!(plans.default_plan().unwrap().name, "free");
    assert_eq!(plans.resolve(Some("gold")).unwrap().name, "gold");
    assert_eq!(plans.resolve(Some("nope")).unwrap().name, "free");
    assert_eq!(plans.resolve(None).unwrap().name, "free");
    let free = plans.get("free").unwrap();
    assert_eq!(free.limits[0].capacity(), 20);
    assert!(
        plans
            .check_app_plan("platinum")
            .unwrap_err()
            .contains("platinum")
    );
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            "plans: [{name: a, limits: [{name: x, rate: {requests: 1, period: 1s, burst: 0}}]}]",
            "plans[0].limits[0].rate.burst",
        ),
        (
            "defaultPlan: gold\nplans: [{name: free}]",
            "defaultPlan: unknown plan \"gold\"",
        ),
        (
            "plans: [{name: a}, {name: b, limits: [{name: x, rate: {requests: 10, period: 1s, burst: 5}}]}]\nroutes: [{name: s, cost: 6}]",
            "routes[0].cost: 6 exceeds the burst 5 of plans[1].limits[0]",
        ),
        (
            "plans: [{name: a, limits: [{name: x, quota: {requests: 5, reset: day, timeZone: Nowhere/City}}]}]",
            "plans[0].limits[0].quota.timeZone",
        ),
        ("plans: [{name: 'a:b'}]", "plans[0].name"),
        (
            "plans: [{name: a, limits: [{name: x}]}]",
            "plans[0].limits[0]: set one of rate and quota",
        ),
        ("plans: [{name: a}, {name: a}]", "plans[1].name"),
    ];
    for (yaml, expected) in cases {
        let err = Plans::compile(&spec(yaml)).unwrap_err();
        assert!(
            err.contains(expected),
            "{yaml}\n→ {err}\nexpected {expected}"
        );
    }
}

#[test]
fn route_cost_within_burst_compiles() {
    let yaml = "plans: [{name: a, limits: [{name: x, rate: {requests: 10, period: 1s, burst: 5}}]}]\nroutes: [{name: s, cost: 5}]";
    assert!(Plans::compile(&spec(yaml)).is_ok());
}
