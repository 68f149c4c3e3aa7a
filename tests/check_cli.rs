//! `tollgate check` as users run it: the built binary on a policy file,
//! asserting exit status (0 allow, 1 deny, 2 error) and what it prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: bikes, namespace: mobility }
spec:
  hosts: [api.bikes.example]
  transport:
    requireHttps: true
    denyCidrs: [203.0.113.0/24]
  routes:
    - { name: health, match: { path: /healthz }, public: true }
    - { name: admin, match: { pathPrefix: /admin }, deny: true }
  response:
    upstreamHeaders:
      x-bikes-route: "{route}"
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: trial, namespace: mobility }
spec:
  hosts: [trial.bikes.example]
  mode: dryRun
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    policy: PathBuf,
}

fn fixture(yaml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, yaml).unwrap();
    Fixture { _dir: dir, policy }
}

fn check(policy: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .arg("check")
        .arg("--policy-file")
        .arg(policy)
        .args(args);
    // The test decides every setting.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null()).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn allow_exits_0_and_explains_each_stage() {
    let f = fixture(POLICY);
    let output = check(
        &f.policy,
        &[
            "--url",
            "https://api.bikes.example/healthz",
            "-H",
            "x-tollgate-user: forged",
            "--source-ip",
            "198.51.100.4",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = stdout(&output);
    assert!(text.starts_with("ALLOW"), "{text}");
    for expected in [
        "policy  mobility/bikes",
        "route   health",
        "validate",
        "select",
        "transport",
        "set    x-bikes-route: health",
        "remove x-tollgate-user",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
}

#[test]
fn deny_exits_1_and_prints_the_reason() {
    let f = fixture(POLICY);
    let plaintext = check(&f.policy, &["--url", "http://api.bikes.example/healthz"]);
    assert_eq!(plaintext.status.code(), Some(1));
    let text = stdout(&plaintext);
    assert!(text.starts_with("DENY 403 https_required"), "{text}");
    assert!(text.contains("x-tollgate-reason: https_required"), "{text}");

    let denied_range = check(
        &f.policy,
        &[
            "--url",
            "https://api.bikes.example/healthz",
            "--source-ip",
            "203.0.113.9",
        ],
    );
    assert_eq!(denied_range.status.code(), Some(1));
    assert!(stdout(&denied_range).starts_with("DENY 403 ip_denied"));

    let rule = check(
        &f.policy,
        &[
            "--url",
            "https://api.bikes.example/admin/x",
            "--source-ip",
            "198.51.100.4",
        ],
    );
    assert_eq!(rule.status.code(), Some(1));
    assert!(stdout(&rule).starts_with("DENY 403 rule_denied"));

    let unnormalised = check(
        &f.policy,
        &["--url", "https://api.bikes.example/healthz/..%2Fadmin"],
    );
    assert_eq!(unnormalised.status.code(), Some(1));
    assert!(stdout(&unnormalised).starts_with("DENY 400 request_malformed"));
}

#[test]
fn context_extension_selects_the_policy_over_the_host() {
    let f = fixture(POLICY);
    let output = check(
        &f.policy,
        &[
            "--url",
            "https://unknown.example/healthz",
            "--context-extension",
            "tollgate.dev/policy=mobility/bikes",
            "--source-ip",
            "198.51.100.4",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));

    let refused = check(
        &f.policy,
        &[
            "--url",
            "https://api.bikes.example/healthz",
            "--require-policy-extension",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(stdout(&refused).starts_with("DENY 403 no_policy"));
}

#[test]
fn json_output_carries_decision_reason_and_trace() {
    let f = fixture(POLICY);
    let output = check(
        &f.policy,
        &["--url", "https://other.example/", "--output", "json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["decision"], "deny");
    assert_eq!(report["status"], 403);
    assert_eq!(report["reason"], "no_policy");
    let trace = report["trace"].as_array().unwrap();
    assert_eq!(trace.last().unwrap()["stage"], "select");
    assert_eq!(trace.last().unwrap()["outcome"], "deny");
}

#[test]
fn dry_run_allows_with_exit_0_and_shows_the_would_be_denial() {
    let f = fixture(POLICY);
    let output = check(&f.policy, &["--url", "http://trial.bikes.example/"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.starts_with("ALLOW"), "{text}");
    assert!(
        text.contains("dry run: enforcement would deny https_required"),
        "{text}"
    );
}

#[test]
fn errors_exit_2_naming_the_problem() {
    let missing = check(
        Path::new("/nonexistent/policy.yaml"),
        &["--url", "https://h/"],
    );
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/policy.yaml"), "{stderr}");

    let broken = fixture(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicy\nmetadata: { name: bikes, namespace: mobility }\nspec:\n  hostz: [a.example]\n",
    );
    let output = check(&broken.policy, &["--url", "https://a.example/"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("policy.yaml"), "{stderr}");
    assert!(stderr.contains("hostz"), "{stderr}");

    let f = fixture(POLICY);
    let bad_url = check(&f.policy, &["--url", "ftp://api.bikes.example/"]);
    assert_eq!(bad_url.status.code(), Some(2));
    let bad_header = check(&f.policy, &["--url", "https://h/", "-H", "no-colon"]);
    assert_eq!(bad_header.status.code(), Some(2));
    let no_url = check(&f.policy, &[]);
    assert_eq!(no_url.status.code(), Some(2), "clap usage errors are 2 too");
}

#[test]
fn crds_prints_both_custom_resource_definitions() {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("crds")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let yaml = stdout(&output);
    assert!(yaml.contains("name: apipolicies.tollgate.dev"), "{yaml}");
    assert!(
        yaml.contains("name: appregistrations.tollgate.dev"),
        "{yaml}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crds.yaml");
    let written = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["crds", "--output"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(written.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), yaml);
}
