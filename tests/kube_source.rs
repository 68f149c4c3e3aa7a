//! `tollgate serve --kubernetes` against a real kube-apiserver (with etcd
//! and RBAC, started per test by `support::kube`): the user's story from
//! `kubectl apply` to the decision, through gRPC `Check` and once through
//! the real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::Tollgate;
use support::check::{check, check_until};
use support::kube::KubeApi;

/// Bound for a change to reach the decision (a watch event; normally
/// milliseconds). Not an assertion on speed: the figure is printed.
const PROPAGATE: Duration = Duration::from_secs(5);
/// Bound for slower transitions (reconnecting after an outage).
const RECONNECT: Duration = Duration::from_secs(45);

const HOST: &str = "api.bikes.example";
const KEY_1: &str = "k3Jd9sQ2mX8vL5pR7tY1wZ4nB6cF0gHa";
const KEY_2: &str = "Q9w8E7r6T5y4U3i2O1pAsDfGhJkLzXcV";

fn policy(name: &str, host: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: {name}, namespace: mobility }}
spec:
  hosts: [{host}]
  transport: {{ requireHttps: false }}
  app:
    required: true
    identify: {{ apiKey: {{ header: x-api-key }} }}
  response:
    upstreamHeaders: {{ x-policy: "{{policy}}" }}
"#
    )
}

fn app(disabled: bool) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: ios, namespace: mobility }}
spec:
  appId: commuter-ios
  apiKey: {{ secretRef: {{ name: ios-key, key: apiKey }} }}
  disabled: {disabled}
"#
    )
}

fn key_secret(key: &str, labelled: bool) -> String {
    let labels = if labelled {
        "labels: { tollgate.dev/secret: \"true\" }"
    } else {
        "labels: {}"
    };
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{ name: ios-key, namespace: mobility, {labels} }}
stringData: {{ apiKey: {key} }}
"#
    )
}

/// An API server with the `mobility` namespace.
async fn cluster() -> KubeApi {
    let api = KubeApi::start().await;
    api.namespace("mobility").await;
    api
}

/// Creates the policy, the app and its labelled Secret.
async fn bikes(api: &KubeApi) {
    api.apply(&key_secret(KEY_1, true)).await;
    api.apply(&app(false)).await;
    api.apply(&policy("bikes", HOST)).await;
}

/// Waits until `key` gets `outcome`, and returns how long it took.
async fn until(tollgate: &Tollgate, key: &str, outcome: &str) -> Duration {
    let started = Instant::now();
    let headers = [("x-api-key", key)];
    check_until(
        tollgate.grpc_addr(),
        HOST,
        "/v1/bikes",
        &headers,
        PROPAGATE,
        |c| c.outcome() == outcome,
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_lives_its_life_in_the_cluster() {
    let api = cluster().await;
    bikes(&api).await;
    let tollgate = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);

    let allowed = check(
        tollgate.grpc_addr(),
        HOST,
        "/v1/bikes",
        &[("x-api-key", KEY_1)],
    )
    .await;
    assert_eq!(allowed.outcome(), "allow", "{allowed:?}");
    assert_eq!(allowed.header("x-tollgate-app"), Some("commuter-ios"));
    assert_eq!(allowed.header("x-policy"), Some("mobility/bikes"));
    let unknown = check(
        tollgate.grpc_addr(),
        HOST,
        "/v1/bikes",
        &[("x-api-key", KEY_2)],
    )
    .await;
    assert_eq!(unknown.outcome(), "app_unknown");

    // Disabling the app (a compromised key) takes effect at once.
    api.apply(&app(true)).await;
    let took = until(&tollgate, KEY_1, "app_disabled").await;
    eprintln!("disable → app_disabled in {took:?}");
    api.apply(&app(false)).await;
    until(&tollgate, KEY_1, "allow").await;

    // Rotating the key in the Secret: the new key works, the old one is
    // unknown.
    api.apply(&key_secret(KEY_2, true)).await;
    let took = until(&tollgate, KEY_2, "allow").await;
    eprintln!("Secret rotation → new key allowed in {took:?}");
    let old = check(
        tollgate.grpc_addr(),
        HOST,
        "/v1/bikes",
        &[("x-api-key", KEY_1)],
    )
    .await;
    assert_eq!(old.outcome(), "app_unknown");

    let metrics = tollgate.metrics();
    assert!(
        metrics.contains(r#"tollgate_policy_objects{kind="ApiPolicy",state="serving"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_update_keeps_the_previous_version_and_a_delete_stops_serving() {
    let api = cluster().await;
    bikes(&api).await;
    api.apply(&policy("trains", "api.trains.example")).await;
    let tollgate = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);

    // Accepted by the API server, refused by the compile step (an
    // address range that is not one): bikes keeps serving its previous
    // version.
    let broken = policy("bikes", "api.bikes-new.example").replace(
        "transport: {{ requireHttps: false }}"
            .replace("{{", "{")
            .replace("}}", "}")
            .as_str(),
        "transport: { requireHttps: false, allowCidrs: [10.0.0.300/8] }",
    );
    api.apply(&broken).await;
    let logged = tollgate.wait_for_log(
        "policy object rejected; its previous version keeps serving",
        PROPAGATE,
    );
    let problem = support::tollgate::log_field(&logged, "problem").unwrap();
    assert_eq!(
        problem.as_str(),
        Some(
            "ApiPolicy mobility/bikes: spec.transport.allowCidrs[0]: \"10.0.0.300/8\" is not a \
             CIDR (e.g. 10.0.0.0/8, 2001:db8::/32) or an address"
        )
    );
    let old = check(
        tollgate.grpc_addr(),
        HOST,
        "/v1/bikes",
        &[("x-api-key", KEY_1)],
    )
    .await;
    assert_eq!(old.outcome(), "allow", "the previous version still serves");
    let new = check(tollgate.grpc_addr(), "api.bikes-new.example", "/", &[]).await;
    assert_eq!(new.outcome(), "no_policy");
    let trains = check(
        tollgate.grpc_addr(),
        "api.trains.example",
        "/",
        &[("x-api-key", KEY_1)],
    )
    .await;
    assert_eq!(trains.outcome(), "allow", "other policies are unaffected");
    let metrics = tollgate.metrics();
    assert!(
        metrics.contains(
            r#"tollgate_policy_compile_errors{kind="ApiPolicy",namespace="mobility",name="bikes"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tollgate_policy_objects{kind="ApiPolicy",state="serving_previous"} 1"#)
    );

    // Deleted: no longer served.
    api.delete(
        "tollgate.dev/v1alpha1",
        "ApiPolicy",
        Some("mobility"),
        "bikes",
    )
    .await;
    until(&tollgate, KEY_1, "no_policy").await;
}

/// Two policies claim one host: the older serves, on every replica, even
/// one that starts after both exist.
#[tokio::test(flavor = "multi_thread")]
async fn the_older_policy_keeps_a_contested_host_on_every_replica() {
    let api = cluster().await;
    bikes(&api).await;
    let first = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);
    // Creation timestamps have one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.apply(&policy("a-newcomer", HOST)).await;
    let second = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);
    for replica in [&first, &second] {
        replica.wait_for_log("policy object warning", PROPAGATE);
        let checked = check(replica.grpc_addr(), HOST, "/", &[("x-api-key", KEY_1)]).await;
        assert_eq!(
            checked.header("x-policy"),
            Some("mobility/bikes"),
            "{checked:?}"
        );
    }
    let warning = second.wait_for_log("policy object warning", PROPAGATE);
    let problem = support::tollgate::log_field(&warning, "problem").unwrap();
    assert!(
        problem
            .as_str()
            .unwrap()
            .contains("is already served by the older ApiPolicy mobility/bikes"),
        "{problem}"
    );

    // The holder goes away: the newcomer takes the host.
    api.delete(
        "tollgate.dev/v1alpha1",
        "ApiPolicy",
        Some("mobility"),
        "bikes",
    )
    .await;
    for replica in [&first, &second] {
        let checked = check_until(
            replica.grpc_addr(),
            HOST,
            "/",
            &[("x-api-key", KEY_1)],
            PROPAGATE,
            |c| c.header("x-policy") == Some("mobility/a-newcomer"),
        )
        .await;
        assert_eq!(checked.outcome(), "allow");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_snapshot_outlives_an_api_server_outage() {
    let mut api = cluster().await;
    bikes(&api).await;
    let tollgate = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);
    until(&tollgate, KEY_1, "allow").await;

    api.stop_apiserver();
    tollgate.wait_for_log(
        "Kubernetes watch failed; retrying with backoff (the last snapshot keeps serving)",
        RECONNECT,
    );
    let during = check(tollgate.grpc_addr(), HOST, "/", &[("x-api-key", KEY_1)]).await;
    assert_eq!(during.outcome(), "allow", "the last snapshot keeps serving");
    assert_eq!(tollgate.admin_get("/readyz").status, 200, "still ready");

    api.start_apiserver().await;
    api.apply(&app(true)).await;
    let started = Instant::now();
    check_until(
        tollgate.grpc_addr(),
        HOST,
        "/",
        &[("x-api-key", KEY_1)],
        RECONNECT,
        |c| c.outcome() == "app_disabled",
    )
    .await;
    eprintln!(
        "after the restart, the change arrived in {:?}",
        started.elapsed()
    );
    assert!(
        tollgate
            .metrics()
            .contains("tollgate_kubernetes_watch_errors_total")
    );
}

/// A Secret that policies reference but that lacks the label is "not
/// found", and the message says the label is needed; labelling it fixes
/// it. A Secret value that is not what the field needs names the field
/// and the key. Neither opens access nor stops the server.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_without_the_label_or_with_bad_values_are_reported() {
    let api = cluster().await;
    api.apply(&key_secret(KEY_1, false)).await;
    api.apply(&app(false)).await;
    api.apply(&policy("bikes", HOST)).await;
    let tollgate = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);

    let logged = tollgate.wait_for_log("policy object rejected; it is not served", PROPAGATE);
    let problem = support::tollgate::log_field(&logged, "problem").unwrap();
    assert_eq!(
        problem.as_str(),
        Some(
            "AppRegistration mobility/ios: spec.apiKey: Secret mobility/ios-key (key \"apiKey\") not found \
             (tollgate reads only Secrets labelled tollgate.dev/secret=true: is the label missing?)"
        )
    );
    let denied = check(tollgate.grpc_addr(), HOST, "/", &[("x-api-key", KEY_1)]).await;
    assert_eq!(denied.outcome(), "app_unknown");

    api.apply(&key_secret(KEY_1, true)).await;
    until(&tollgate, KEY_1, "allow").await;

    // A key too weak to be an API key: the field and the Secret's key
    // are named, the previous (good) version keeps serving.
    api.apply(&key_secret("short", true)).await;
    let logged = tollgate.wait_for_log(
        "policy object rejected; its previous version keeps serving",
        PROPAGATE,
    );
    let problem = support::tollgate::log_field(&logged, "problem").unwrap();
    assert!(
        problem
            .as_str()
            .unwrap()
            .starts_with("AppRegistration mobility/ios: spec.apiKey: the API key has about"),
        "{problem}"
    );
    assert!(
        !tollgate.output().contains("short"),
        "Secret values are never logged"
    );
    let still = check(tollgate.grpc_addr(), HOST, "/", &[("x-api-key", KEY_1)]).await;
    assert_eq!(still.outcome(), "allow");

    // A malformed inline JWKS in a policy: refused with its field.
    let jwks = format!(
        "{}  user:\n    issuers:\n      - issuer: https://id.example/\n        audiences: [bikes]\n        jwks: {{ inline: {{ keys: [{{ kty: EC, crv: P-256, x: \"!\", y: \"!\" }}] }} }}\n",
        policy("planes", "api.planes.example")
    );
    api.apply(&jwks).await;
    support::wait_for("the planes policy to be reported", PROPAGATE, || {
        tollgate.log_lines().into_iter().find(|line| {
            support::tollgate::log_field(line, "problem")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.starts_with("ApiPolicy mobility/planes: spec.user.issuers[0]"))
        })
    });
    let refused = check(tollgate.grpc_addr(), "api.planes.example", "/", &[]).await;
    assert_eq!(
        refused.outcome(),
        "no_policy",
        "a broken policy never opens access"
    );
}

/// The server runs with a ServiceAccount token bound to the documented
/// least-privilege ClusterRole; without Secret access it stays unready
/// and says which permission is missing.
#[tokio::test(flavor = "multi_thread")]
async fn least_privilege_rbac_is_enough_and_a_missing_permission_is_named() {
    let api = cluster().await;
    api.namespace("tollgate").await;
    bikes(&api).await;
    let rbac = std::fs::read_to_string(support::repo_path("deploy/rbac/server.yaml")).unwrap();
    api.apply(&rbac).await;
    let kubeconfig = api.service_account_kubeconfig("tollgate", "tollgate").await;
    let tollgate = Tollgate::start_kubernetes(&kubeconfig, &[]);
    let allowed = check(tollgate.grpc_addr(), HOST, "/", &[("x-api-key", KEY_1)]).await;
    assert_eq!(allowed.outcome(), "allow");
    drop(tollgate);

    // The same role without Secrets.
    let without_secrets = rbac.replace(
        "  - apiGroups: [\"\"]\n    resources: [secrets]\n    verbs: [list, watch]\n",
        "",
    );
    assert_ne!(without_secrets, rbac);
    api.apply(&without_secrets).await;
    let tollgate = Tollgate::launch_kubernetes(&kubeconfig, &[]);
    let logged = tollgate.wait_for_log(
        "Kubernetes watch failed; retrying with backoff (the last snapshot keeps serving)",
        RECONNECT,
    );
    let error = support::tollgate::log_field(&logged, "error")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(
            r#"User "system:serviceaccount:tollgate:tollgate" cannot list resource "secrets""#
        ),
        "{error}"
    );
    assert!(error.starts_with("permission denied"), "{error}");
    // The other kinds list; readiness then names only what is missing.
    let readyz = support::wait_for("/readyz to name only the Secrets", PROPAGATE, || {
        let readyz = tollgate.admin_get("/readyz");
        assert_eq!(readyz.status, 503, "never ready without Secrets");
        let text = readyz.text();
        text.contains("waiting for the first list of Secrets in all namespaces (last error: permission denied")
            .then_some(text)
    });
    assert!(!readyz.contains("ApiPolicies"), "{readyz}");
}

/// The whole path through the real Envoy: the decision follows the
/// custom resources.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_decides_with_the_clusters_policy() {
    let api = cluster().await;
    bikes(&api).await;
    let tollgate = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);
    let stack = support::Stack::builder("").start_around(tollgate);

    let response = stack
        .get("/v1/bikes")
        .host(HOST)
        .header("x-api-key", KEY_1)
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.upstream().header_once("x-tollgate-app"),
        "commuter-ios"
    );

    api.apply(&app(true)).await;
    until(&stack.tollgate, KEY_1, "app_disabled").await;
    let response = stack
        .get("/v1/bikes")
        .host(HOST)
        .header("x-api-key", KEY_1)
        .send();
    assert_eq!(response.status, 403);
    assert_eq!(response.header("x-tollgate-reason"), Some("app_disabled"));
}
