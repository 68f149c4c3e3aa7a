//! `tollgate operator` against a real kube-apiserver (etcd, RBAC, the
//! CRDs with their admission rules): what `kubectl get` and `kubectl
//! describe` show users, the admission rules, leader election, events, and
//! the least privilege it runs with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use support::Tollgate;
use support::check::check;
use support::kube::{KubeApi, dynamic_api};
use support::operator::{LEASE_DURATION, Operator};

/// Bound for a status to appear or change (normally well under a second).
const SETTLE: Duration = Duration::from_secs(20);

const KEY: &str = "k3Jd9sQ2mX8vL5pR7tY1wZ4nB6cF0gHa";

fn policy(name: &str, hosts: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: {name}, namespace: mobility }}
spec:
  hosts: [{hosts}]
  transport: {{ requireHttps: false }}
  app: {{ required: true, identify: {{ apiKey: {{ header: x-api-key }} }} }}
  defaultPlan: free
  plans: [{{ name: free }}, {{ name: gold }}]
{extra}"#
    )
}

/// Accepted by the API server (no schema can know it), refused by the
/// compile step: an address range that is not one.
fn broken(name: &str, hosts: &str) -> String {
    policy(name, hosts, "").replace(
        "transport: { requireHttps: false }",
        "transport: { requireHttps: false, allowCidrs: [10.0.0.300/8] }",
    )
}

fn app(plan: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: ios, namespace: mobility }}
spec: {{ appId: commuter-ios, plan: {plan}, apiKey: {{ secretRef: {{ name: ios-key, key: apiKey }} }} }}
"#
    )
}

const SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: { name: ios-key, namespace: mobility, labels: { tollgate.dev/secret: "true" } }
stringData: { apiKey: k3Jd9sQ2mX8vL5pR7tY1wZ4nB6cF0gHa }
"#;

async fn cluster(audited: bool) -> KubeApi {
    let api = if audited {
        KubeApi::start_audited().await
    } else {
        KubeApi::start().await
    };
    api.namespace("mobility").await;
    api.namespace("tollgate").await;
    api
}

async fn get(api: &KubeApi, kind: &str, name: &str) -> DynamicObject {
    dynamic_api(
        &api.client(),
        "tollgate.dev/v1alpha1",
        kind,
        Some("mobility"),
    )
    .await
    .get(name)
    .await
    .unwrap()
}

/// The `Ready` condition of an object, once it satisfies `expected`.
async fn ready_until(
    api: &KubeApi,
    kind: &str,
    name: &str,
    expected: impl Fn(&Value) -> bool,
) -> (DynamicObject, Value) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let object = get(api, kind, name).await;
        let ready = object.data["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or(Value::Null);
        if expected(&ready) {
            return (object, ready);
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{kind} {name}: Ready is still {ready} (status {})",
                object.data["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is(status: &'static str, reason: &'static str) -> impl Fn(&Value) -> bool {
    move |ready| ready["status"] == status && ready["reason"] == reason
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_objects_are_refused_at_admission_with_the_rules_message() {
    let api = cluster(false).await;
    let both = policy(
        "bikes",
        "b.example",
        "  routes: [{ name: r, match: { path: /a, pathPrefix: /b } }]\n",
    );
    let refused = api.try_apply(&both).await.unwrap_err().to_string();
    assert!(
        refused.contains("set path or pathPrefix, not both"),
        "{refused}"
    );
    let public = policy(
        "bikes",
        "b.example",
        "  routes: [{ name: r, public: true, cost: 3 }]\n",
    );
    let refused = api.try_apply(&public).await.unwrap_err().to_string();
    assert!(
        refused.contains("a public route checks no credentials"),
        "{refused}"
    );
    let plan =
        policy("bikes", "b.example", "").replace("defaultPlan: free", "defaultPlan: platinum");
    let refused = api.try_apply(&plan).await.unwrap_err().to_string();
    assert!(
        refused.contains("defaultPlan must name one of spec.plans"),
        "{refused}"
    );
    let host = policy("bikes", "B.example:443", "");
    let refused = api.try_apply(&host).await.unwrap_err().to_string();
    assert!(refused.contains("spec.hosts[0]"), "{refused}");
    // Names are list-map keys: a second route of the same name is refused.
    let twice = policy(
        "bikes",
        "b.example",
        "  routes: [{ name: r }, { name: r }]\n",
    );
    let refused = api.try_apply(&twice).await.unwrap_err().to_string();
    assert!(
        refused.contains("duplicate entries for key [name=\"r\"]"),
        "{refused}"
    );
    // And the corrected object is accepted.
    api.apply(&policy("bikes", "b.example", "")).await;
}

/// The story of one policy and its app, as `kubectl get` shows it, with a
/// server running beside the operator.
#[tokio::test(flavor = "multi_thread")]
async fn statuses_follow_the_objects() {
    let api = cluster(false).await;
    api.apply(&policy("bikes", "api.bikes.example", "")).await;
    api.apply(&app("gold")).await;
    let _operator = Operator::start(api.admin_kubeconfig(), "tollgate", "operator-a");

    // The Secret is missing: the app says which, and mentions the label.
    let (_, ready) = ready_until(
        &api,
        "AppRegistration",
        "ios",
        is("False", "SecretNotFound"),
    )
    .await;
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("Secret mobility/ios-key (key \"apiKey\") not found"),
        "{message}"
    );
    assert!(message.contains("tollgate.dev/secret=true"), "{message}");
    api.apply(SECRET).await;
    let (ios, _) = ready_until(&api, "AppRegistration", "ios", is("True", "Valid")).await;
    assert_eq!(
        ios.data["status"]["plans"],
        serde_json::json!([{ "policy": "bikes", "plan": "gold" }])
    );

    // A valid policy: Ready with the generation it describes and its facts.
    let (bikes, ready) = ready_until(&api, "ApiPolicy", "bikes", |r| {
        r["status"] == "True" && r["message"] == "served for 1 host(s), accepting 1 app(s)"
    })
    .await;
    let generation = bikes.metadata.generation.unwrap();
    assert_eq!(bikes.data["status"]["observedGeneration"], generation);
    assert_eq!(ready["observedGeneration"], generation);
    assert_eq!(
        bikes.data["status"]["hosts"],
        serde_json::json!(["api.bikes.example"])
    );
    assert_eq!(bikes.data["status"]["acceptedApps"], 1);

    // A broken update: Invalid, naming the field, while a server keeps
    // serving the previous generation.
    let tollgate = Tollgate::start_kubernetes(api.admin_kubeconfig(), &[]);
    api.apply(&broken("bikes", "api.bikes.example")).await;
    let (bikes, ready) = ready_until(&api, "ApiPolicy", "bikes", is("False", "Invalid")).await;
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("generation {generation} keeps serving: ")),
        "{message}"
    );
    assert!(
        message.contains("spec.transport.allowCidrs[0]"),
        "{message}"
    );
    assert_eq!(
        bikes.data["status"]["observedGeneration"],
        bikes.metadata.generation.unwrap()
    );
    let accepted = bikes.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap()
        .clone();
    assert_eq!(
        (accepted["status"].as_str(), accepted["reason"].as_str()),
        (Some("False"), Some("Invalid"))
    );
    let served = check(
        tollgate.grpc_addr(),
        "api.bikes.example",
        "/",
        &[("x-api-key", KEY)],
    )
    .await;
    assert_eq!(
        served.outcome(),
        "allow",
        "the previous generation keeps serving"
    );

    // An app on a plan no policy defines.
    api.apply(&app("platinum")).await;
    let (_, ready) = ready_until(&api, "AppRegistration", "ios", is("False", "PlanNotFound")).await;
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("plan \"platinum\" is not defined by ApiPolicy mobility/bikes")
    );

    // kubectl get: the printer columns as the API server renders them.
    let table = table(&api, "apipolicies").await;
    assert_eq!(
        table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["Name", "Hosts", "Mode", "Apps", "Ready", "Reason", "Age"]
    );
    let row = &table["rows"][0]["cells"];
    assert_eq!(row[0], "bikes");
    assert_eq!(row[4], "False");
    assert_eq!(row[5], "Invalid");

    // Events: the transitions, not one per reconcile.
    let events = events(&api, "bikes").await;
    assert!(
        events.contains(&("Normal".to_owned(), "Ready".to_owned())),
        "{events:?}"
    );
    assert!(
        events.contains(&("Warning".to_owned(), "Invalid".to_owned())),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_newer_policy_of_a_contested_host_is_conflicted() {
    let api = cluster(false).await;
    api.apply(&policy("bikes", "shared.example", "")).await;
    // Creation timestamps have one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.apply(&policy("scooters", "shared.example, s.example", ""))
        .await;
    let _operator = Operator::start(api.admin_kubeconfig(), "tollgate", "operator-a");
    let (scooters, ready) =
        ready_until(&api, "ApiPolicy", "scooters", is("False", "Conflicted")).await;
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("already served by the older ApiPolicy mobility/bikes"),
        "{message}"
    );
    assert_eq!(
        scooters.data["status"]["hosts"],
        serde_json::json!(["s.example"])
    );
    ready_until(&api, "ApiPolicy", "bikes", is("True", "Valid")).await;

    // The holder goes: the newer policy becomes ready.
    api.delete(
        "tollgate.dev/v1alpha1",
        "ApiPolicy",
        Some("mobility"),
        "bikes",
    )
    .await;
    ready_until(&api, "ApiPolicy", "scooters", is("True", "Valid")).await;
}

/// Two operators: one leads and writes; killed, the other takes over
/// within the lease duration; a SIGTERM releases the lease at once.
#[tokio::test(flavor = "multi_thread")]
async fn one_leader_writes_and_a_standby_takes_over() {
    let api = cluster(false).await;
    api.apply(&policy("bikes", "b.example", "")).await;
    let mut first = Operator::start(api.admin_kubeconfig(), "tollgate", "operator-a");
    support::wait_for("operator-a to lead", SETTLE, || first.leads().then_some(()));
    let mut second = Operator::start(api.admin_kubeconfig(), "tollgate", "operator-b");
    ready_until(&api, "ApiPolicy", "bikes", is("True", "Valid")).await;
    assert!(!second.leads(), "exactly one leader");
    let writes = |operator: &Operator| {
        operator
            .metrics()
            .lines()
            .filter(|l| {
                l.starts_with("tollgate_operator_reconciles_total")
                    && l.contains("result=\"written\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(writes(&second), 0.0, "the standby writes nothing");

    first.kill();
    let killed = std::time::Instant::now();
    support::wait_for("operator-b to take over", SETTLE, || {
        second.leads().then_some(())
    });
    let took = killed.elapsed();
    eprintln!("standby took over {took:?} after the leader died (lease {LEASE_DURATION:?})");
    assert!(
        took < LEASE_DURATION + Duration::from_secs(3),
        "took over after {took:?}; the lease is {LEASE_DURATION:?}"
    );
    api.apply(&broken("bikes", "b.example")).await;
    ready_until(&api, "ApiPolicy", "bikes", is("False", "Invalid")).await;
    assert!(writes(&second) >= 1.0);

    // A clean shutdown releases the lease: a new replica leads at once.
    let status = second.terminate();
    assert!(status.success(), "{status}");
    let third = Operator::start(api.admin_kubeconfig(), "tollgate", "operator-c");
    support::wait_for("operator-c to lead", Duration::from_secs(3), || {
        third.leads().then_some(())
    });
    assert!(second.output().contains("lease released"));
}

/// The operator with a ServiceAccount token bound to deploy/rbac/operator.yaml
/// works, and the API server's audit log shows it used every permission
/// of that role and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn the_documented_role_is_enough_and_every_permission_is_used() {
    let api = cluster(true).await;
    api.apply(SECRET).await;
    api.apply(&policy("bikes", "b.example", "")).await;
    api.apply(&app("gold")).await;
    let rbac = std::fs::read_to_string(support::repo_path("deploy/rbac/operator.yaml")).unwrap();
    api.apply(&rbac).await;
    let kubeconfig = api
        .service_account_kubeconfig("tollgate", "tollgate-operator")
        .await;
    let operator = Operator::start(&kubeconfig, "tollgate", "operator-a");
    ready_until(&api, "ApiPolicy", "bikes", is("True", "Valid")).await;
    ready_until(&api, "AppRegistration", "ios", is("True", "Valid")).await;
    // The same warning twice: the recorder patches the event series.
    for _ in 0..2 {
        api.apply(&app("platinum")).await;
        ready_until(&api, "AppRegistration", "ios", is("False", "PlanNotFound")).await;
        api.apply(&app("gold")).await;
        ready_until(&api, "AppRegistration", "ios", is("True", "Valid")).await;
    }
    // Long enough to renew the lease (retry period 500 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(operator);

    let used: BTreeSet<(String, String, String)> = api
        .audit_events("system:serviceaccount:tollgate:tollgate-operator")
        .iter()
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c < 400)
        })
        .filter_map(|e| {
            let object = &e["objectRef"];
            let resource = match object["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", object["resource"].as_str()?),
                None => object["resource"].as_str()?.to_owned(),
            };
            let group = object["apiGroup"].as_str().unwrap_or("").to_owned();
            Some((group, resource, e["verb"].as_str()?.to_owned()))
        })
        .collect();
    let refused: Vec<Value> = api
        .audit_events("system:serviceaccount:tollgate:tollgate-operator")
        .into_iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .collect();
    assert!(
        refused.is_empty(),
        "the role refused the operator something: {refused:?}"
    );

    let granted: BTreeSet<(String, String, String)> = [
        ("tollgate.dev", "apipolicies", "list"),
        ("tollgate.dev", "apipolicies", "watch"),
        ("tollgate.dev", "appregistrations", "list"),
        ("tollgate.dev", "appregistrations", "watch"),
        ("tollgate.dev", "apipolicies/status", "patch"),
        ("tollgate.dev", "appregistrations/status", "patch"),
        ("", "secrets", "list"),
        ("", "secrets", "watch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
    .collect();
    // The role file grants exactly these.
    for (group, resource, verb) in &granted {
        assert!(
            rbac.contains(resource.as_str()) && rbac.contains(verb.as_str()),
            "{group} {resource} {verb}"
        );
    }
    assert_eq!(used, granted, "used (left) vs granted (right)");
}

/// A status write for an object deleted meanwhile does not recreate it.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_object_is_not_recreated_by_a_status_write() {
    use tollgate::operator::reconcile::{self, Context, Outcome};
    use tollgate::policy::catalog::{Age, Catalog, Kind, ObjectRef};
    use tollgate::policy::source::kubernetes::Observed;

    let api = cluster(false).await;
    let yaml = policy("bikes", "b.example", "");
    let applied = api.apply(&yaml).await;
    api.delete(
        "tollgate.dev/v1alpha1",
        "ApiPolicy",
        Some("mobility"),
        "bikes",
    )
    .await;

    let mut catalog = Catalog::new(None);
    for mut doc in
        tollgate::policy::document::parse_documents(std::path::Path::new("p.yaml"), &yaml).unwrap()
    {
        doc.origin = tollgate::policy::document::Origin::Cluster;
        let age = Age::of(&doc.document, 0);
        catalog.upsert(doc, age);
    }
    let (_, report) = catalog.assemble(1);
    let object = report
        .get(&ObjectRef::new(Kind::ApiPolicy, "mobility", "bikes"))
        .unwrap();
    let observed = Observed {
        uid: applied[0].metadata.uid.clone().unwrap(),
        generation: Some(1),
        status: None,
    };
    let ctx = Context {
        client: api.client(),
        recorder: kube::runtime::events::Recorder::new(api.client(), "tollgate-tests".into()),
    };
    let (outcome, _) = reconcile::reconcile(object, &observed, &ctx).await.unwrap();
    assert_eq!(outcome, Outcome::Gone);
    let policies = dynamic_api(
        &api.client(),
        "tollgate.dev/v1alpha1",
        "ApiPolicy",
        Some("mobility"),
    )
    .await;
    assert!(
        policies.get_opt("bikes").await.unwrap().is_none(),
        "not recreated"
    );
}

/// The list `kubectl get <resource>` prints, as the API server renders it.
async fn table(api: &KubeApi, resource: &str) -> Value {
    let request = http::Request::get(format!(
        "/apis/tollgate.dev/v1alpha1/namespaces/mobility/{resource}"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let text = api.client().request_text(request).await.unwrap();
    serde_json::from_str(&text).unwrap()
}

/// (type, reason) of the events about `name`.
async fn events(api: &KubeApi, name: &str) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(api.client(), "mobility");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}
