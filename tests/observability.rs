//! The shipped Grafana dashboard and alerting rules
//! (`deploy/observability/`) against the real tools and the real server:
//!
//! - the dashboard is valid JSON of the shape Grafana imports (unique
//!   panel ids, every query on the `${datasource}` variable, on the grid);
//! - `promtool check rules` (promtool built from its Go module by
//!   `scripts/promtool.sh`) accepts the rules, and every dashboard query
//!   (written as a recording rule, Grafana's variables replaced);
//! - `promtool test rules` runs the alerts' unit tests;
//! - the PrometheusRule holds exactly the plain rule groups;
//! - every metric a panel or an alert names is one a real `tollgate serve`
//!   exports: a test drives one through allows, denials, a key fetch, a
//!   failing store, a policy that does not compile and trace export, then
//!   reads `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::idp::{self, Idp};
use support::otlp::OtlpReceiver;
use support::{Tollgate, repo_path};
use tollgate::authn::mint::SigningKey;

const DASHBOARD: &str = "deploy/observability/grafana-dashboard.json";
const RULES: &str = "deploy/observability/prometheus-rules.yaml";
const PROMETHEUS_RULE: &str = "deploy/observability/prometheusrule.yaml";
const RULE_TESTS: &str = "deploy/observability/tests/alerts.test.yaml";

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_path(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_path(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// Every panel's queries: (panel title, PromQL).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Every alert: (name, expression).
fn alert_expressions() -> Vec<(String, String)> {
    yaml(RULES)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Grafana's variables replaced by what Prometheus can parse.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$__interval", "1m")
        .replace("$job", ".*")
        .replace("$policy", ".*")
}

/// The `tollgate_…` metric names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(offset) = expr[i..].find("tollgate_") {
        let start = i + offset;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        if !preceded_by_ident {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn the_dashboard_is_what_grafana_imports() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "tollgate-overview");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "job", "policy"]);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} repeats");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {id} leaves the 24-column grid");
        if panel["type"] == "row" {
            continue;
        }
        assert!(!panel["title"].as_str().unwrap().is_empty());
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {id} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            assert!(!target["expr"].as_str().unwrap().trim().is_empty());
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
    // What the issue asks the dashboard to show.
    let all: String = dashboard_queries(&dashboard)
        .iter()
        .map(|(_, q)| q.clone())
        .collect();
    for needed in [
        "by (outcome)",
        "by (reason)",
        "histogram_quantile(0.99, sum by (le) (rate(tollgate_check_duration_seconds_bucket",
        "tollgate_store_duration_seconds_bucket",
        "tollgate_store_errors_total",
        "tollgate_jwks_fetches_total",
        "tollgate_policy_compile_errors",
        "tollgate_app_checks_total",
    ] {
        assert!(all.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn the_prometheusrule_holds_the_plain_rule_groups() {
    let plain = yaml(RULES);
    let operator = yaml(PROMETHEUS_RULE);
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(operator["spec"]["groups"], plain["groups"]);
    let alerts: Vec<String> = alert_expressions().into_iter().map(|(a, _)| a).collect();
    for needed in [
        "TollgateDenyRateSpike",
        "TollgateStoreUnavailable",
        "TollgateKeysUnavailable",
        "TollgatePolicyCompileErrors",
        "TollgateCheckLatencyHigh",
    ] {
        assert!(alerts.iter().any(|a| a == needed), "no alert {needed}");
    }
}

/// promtool, built by `scripts/promtool.sh` (or `TOLLGATE_PROMTOOL`).
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_PROMTOOL") {
        return PathBuf::from(path);
    }
    let output = Command::new("bash")
        .arg(repo_path("scripts/promtool.sh"))
        .arg("--check")
        .output()
        .expect("run scripts/promtool.sh --check");
    assert!(
        output.status.success(),
        "promtool is not built: run scripts/setup.sh (or scripts/promtool.sh)\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

fn run_promtool(args: &[&str], dir: &std::path::Path) -> String {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_and_every_dashboard_query() {
    let text = run_promtool(&["check", "rules", RULES], support::repo_root());
    assert!(text.contains("SUCCESS"), "{text}");

    // The dashboard's queries as recording rules: promtool parses each.
    let rules: Vec<Value> = dashboard_queries(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({ "record": format!("tollgate:dashboard:query_{i}"), "expr": as_promql(expr) }))
        .collect();
    let count = rules.len();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    let document = json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    // JSON is YAML.
    std::fs::write(&file, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    let text = run_promtool(&["check", "rules", file.to_str().unwrap()], dir.path());
    assert!(
        text.contains(&format!("SUCCESS: {count} rules found")),
        "{text}"
    );

    // A query that does not parse is refused: the check can fail.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        r#"{"groups":[{"name":"x","rules":[{"record":"x:y","expr":"sum by (le (rate(tollgate_checks_total[5m]))"}]}]}"#,
    )
    .unwrap();
    let refused = Command::new(promtool())
        .args(["check", "rules", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn promtool_runs_the_alerts_unit_tests() {
    let dir = repo_path(RULE_TESTS);
    let text = run_promtool(
        &["test", "rules", "alerts.test.yaml"],
        dir.parent().unwrap(),
    );
    assert!(text.contains("SUCCESS"), "{text}");
}

/// The names of the metrics in a Prometheus text exposition.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn policy(idp: &Idp, extra: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: shop, namespace: obs }}
spec:
  hosts: [shop.example]
  transport: {{ requireHttps: false }}
  onStoreError: allow
  defaultPlan: free
  plans:
    - name: free
      limits: [{{ name: hourly, key: app, rate: {{ requests: 1000, period: 1h }} }}]
  user:
    required: false
    issuers:
      - issuer: "{issuer}"
        audiences: [shop-api]
        jwks: {{ uri: "{jwks}" }}
        algorithms: [ES256]
  app:
    identify:
      apiKey: {{ header: x-api-key }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: obs }}
stringData:
  ios: "obs-key-7f3a9c1e5b2d8046af1c3e5d7b9a2c4e"
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: ios, namespace: obs }}
spec:
  appId: shop-ios
  apiKey: {{ secretRef: {{ name: keys, key: ios }} }}
{extra}"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
    )
}

#[test]
fn panels_and_alerts_name_only_metrics_tollgate_exports() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let receiver = OtlpReceiver::start();
    // A store that never answers: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let tollgate = Tollgate::start_env(
        &policy(&idp, ""),
        &[
            "--redis",
            &redis,
            "--store-timeout",
            "100ms",
            "--metrics-app-labels",
            "5",
            "--otlp-endpoint",
            &receiver.endpoint(),
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let now = idp::now() as i64;
    let token = key
        .sign(
            None,
            &json!({"iss": idp.issuer(), "aud": "shop-api", "sub": "bob", "iat": now, "exp": now + 300}),
        )
        .unwrap();
    let auth = format!("Bearer {token}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let check = |headers: &[(&str, &str)]| {
        runtime.block_on(support::check::check(
            tollgate.grpc_addr(),
            "shop.example",
            "/cart",
            headers,
        ))
    };
    // Allowed twice (the store fails: onStoreError allow; the second
    // token check is a cache hit), and denied once.
    for _ in 0..2 {
        let allowed = check(&[
            ("x-api-key", "obs-key-7f3a9c1e5b2d8046af1c3e5d7b9a2c4e"),
            ("authorization", &auth),
        ]);
        assert_eq!(allowed.outcome(), "allow");
    }
    assert_eq!(check(&[]).outcome(), "app_credential_missing");
    // A document that does not compile: a reload with an error.
    tollgate.write_policy(&policy(
        &idp,
        "---\napiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicy\nmetadata: { name: broken, namespace: obs }\nspec: { hosts: [broken.example], costt: 1 }\n",
    ));
    let metrics = support::wait_for(
        "the reload error and the exported spans in /metrics",
        Duration::from_secs(30),
        || {
            let metrics = tollgate.metrics();
            let names = exported(&metrics);
            // The reload's counter is counted after the object's
            // errors are published: wait for both.
            (names.contains("tollgate_policy_compile_errors")
                && names.contains("tollgate_policy_reloads_total")
                && metrics.lines().any(|l| {
                    l.starts_with("tollgate_trace_spans_exported_total ") && !l.ends_with(" 0")
                }))
            .then_some(metrics)
        },
    );
    let names = exported(&metrics);
    let mut used: Vec<(String, String)> = dashboard_queries(&dashboard());
    used.extend(alert_expressions());
    let mut missing = Vec::new();
    for (what, expr) in &used {
        for name in metric_names(expr) {
            if !names.contains(&name) {
                missing.push(format!("{what}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:#?}\n--- /metrics ---\n{metrics}"
    );
    assert!(used.len() > 25);
    // Conventions the review added: the build info, and error series that
    // exist at 0 before the first error (so alerts see the first one).
    assert!(
        metrics.contains(&format!(
            "tollgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    let protocol_errors = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_store_errors_total{") && l.contains("kind=\"protocol\""));
    assert!(
        protocol_errors.is_some_and(|l| l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_jwks_fetches_total{outcome=\"failure\"} 0"),
        "{metrics}"
    );
}

#[test]
fn metric_names_are_read_from_expressions() {
    let names = metric_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(tollgate_check_duration_seconds_bucket{job=~"$job"}[5m]))) / tollgate:recorded"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["tollgate_check_duration_seconds_bucket"]
    );
}
