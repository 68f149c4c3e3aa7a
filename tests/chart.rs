//! The Helm chart `charts/tollgate`, with the real `helm` v4 CLI.
//!
//! - What it renders, under several value sets, asserted field by field
//!   on the parsed objects (security contexts, probes, RBAC rules,
//!   selectors, the store settings): what a user relies on, never a golden
//!   file.
//! - What it refuses: schema violations and combinations of values, each
//!   naming the value.
//! - Installed into a real kube-apiserver (`support::kube`), which
//!   validates every object server-side; then `tollgate serve` runs as a
//!   local process with the environment of the chart's Deployment and a
//!   token of the chart's own ServiceAccount, and decides a request
//!   through the real Envoy: proof that the chart's RBAC and settings are
//!   enough.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::Tollgate;
use support::envoy::{Envoy, adapt_example};
use support::helm::{Helm, Rendered, chart_dir, env_entry, env_value, path_str};
use support::kube::{KubeApi, dynamic_api};
use support::operator::Operator;
use support::redis::RedisServer;

/// The quickstart's API key (deploy/examples/quickstart.yaml).
const QUICKSTART_KEY: &str = "k3Jd9sQ2mX8vL5pR7tY1wZ4nB6cF0gHa";
/// Bound for the server to notice a change or a failure (not a speed
/// assertion).
const PROPAGATE: Duration = Duration::from_secs(30);

/// Every optional object switched on (with a Redis, so several replicas
/// are allowed).
const EVERYTHING_ON: &str = r#"
redis: { url: "redis://:s3cret-pass@redis.example:6379" }
server:
  replicas: 3
  topologySpread: { enabled: true }
  podDisruptionBudget: { enabled: true }
  autoscaling: { enabled: true }
serviceMonitor: { enabled: true, labels: { release: prometheus } }
networkPolicy:
  enabled: true
  grpcFromNamespaces: [istio-system, envoy-gateway-system]
  adminFromNamespaces: [monitoring]
"#;

// ---------------------------------------------------------------------------
// The chart as a package
// ---------------------------------------------------------------------------

#[test]
fn the_chart_lints_clean_in_strict_mode() {
    let helm = Helm::new();
    let chart = path_str(&chart_dir());
    let run = helm.ok(&["lint", "--strict", &chart]);
    assert!(
        run.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{}",
        run.output()
    );
    for (name, values) in [
        ("everything-on.yaml", EVERYTHING_ON),
        ("dev-redis.yaml", "devRedis: { enabled: true }\n"),
        ("namespaced.yaml", "watchNamespaces: [mobility, trains]\n"),
    ] {
        let file = path_str(&helm.values_file(name, values));
        helm.ok(&["lint", "--strict", &chart, "--values", &file]);
    }
}

/// Helm installs `crds/` as they are: they must be the CRDs generated
/// from the Rust types (`tollgate crds`, also committed in deploy/crds/).
#[test]
fn the_charts_crds_are_the_generated_ones() {
    let in_chart = std::fs::read_to_string(chart_dir().join("crds/tollgate.dev.yaml")).unwrap();
    let committed =
        std::fs::read_to_string(support::repo_path("deploy/crds/tollgate.dev.yaml")).unwrap();
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("crds")
        .output()
        .expect("run tollgate crds");
    assert!(generated.status.success());
    let generated = String::from_utf8(generated.stdout).unwrap();
    assert!(
        in_chart == generated && in_chart == committed,
        "charts/tollgate/crds/tollgate.dev.yaml differs from the generated CRDs: regenerate \
         both copies with `cargo run -- crds -o deploy/crds/tollgate.dev.yaml && cp \
         deploy/crds/tollgate.dev.yaml charts/tollgate/crds/`"
    );
    let files: Vec<_> = std::fs::read_dir(chart_dir().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["tollgate.dev.yaml"], "crds/ holds only the CRDs");
}

#[test]
fn the_chart_installs_the_crates_version() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let rendered = Helm::new().template("");
    let image = rendered.get("Deployment", "tollgate")["spec"]["template"]["spec"]["containers"][0]
        ["image"]
        .as_str()
        .unwrap();
    assert_eq!(
        image,
        format!(
            "ghcr.io/tollgate-dev/tollgate:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let pinned = Helm::new().template(&format!(
        "image: {{ repository: registry.example/tollgate, tag: dev, digest: \"sha256:{}\" }}\n",
        "ab".repeat(32)
    ));
    let image =
        pinned.get("Deployment", "tollgate-operator")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .unwrap();
    assert_eq!(
        image,
        format!("registry.example/tollgate@sha256:{}", "ab".repeat(32)),
        "a digest wins over the tag"
    );
}

// ---------------------------------------------------------------------------
// What the chart renders
// ---------------------------------------------------------------------------

#[test]
fn by_default_one_hardened_server_and_one_operator_watch_every_namespace() {
    let rendered = Helm::new().template("");

    let server = rendered.get("Deployment", "tollgate");
    assert_eq!(server["spec"]["replicas"], 1);
    let pod = &server["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"], json!(["serve"]));
    assert_eq!(env_value(container, "TOLLGATE_KUBERNETES"), Some("true"));
    assert!(
        env_entry(container, "TOLLGATE_NAMESPACES").is_none(),
        "all namespaces"
    );
    assert!(
        env_entry(container, "TOLLGATE_REDIS").is_none(),
        "the in-memory store"
    );
    assert_eq!(
        env_value(container, "TOLLGATE_SECRET_LABEL"),
        Some("tollgate.dev/secret=true")
    );
    assert_eq!(env_value(container, "TOLLGATE_LOG_FORMAT"), Some("json"));

    // The listeners bind the ports the pod declares, named as the Service
    // and the probes use them.
    let port = |name: &str| -> u64 {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    let bound = |variable: &str| -> u64 {
        let addr = env_value(container, variable).unwrap();
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    };
    assert_eq!(bound("TOLLGATE_GRPC_ADDR"), port("grpc"));
    assert_eq!(bound("TOLLGATE_ADMIN_ADDR"), port("admin"));
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({ "path": "/healthz", "port": "admin" })
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({ "path": "/readyz", "port": "admin" })
    );

    // Kubernetes waits for the pre-stop sleep and the drain.
    let drain = env_value(container, "TOLLGATE_DRAIN_TIMEOUT").unwrap();
    let drain: u64 = drain.strip_suffix('s').unwrap().parse().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + drain,
        "grace {grace}s, pre-stop {pre_stop}s, drain {drain}s"
    );

    // The Service: port `grpc`, appProtocol grpc (Istio needs it).
    let service = rendered.get("Service", "tollgate");
    let grpc = &service["spec"]["ports"][0];
    assert_eq!(grpc["name"], "grpc");
    assert_eq!(grpc["appProtocol"], "grpc");
    assert_eq!(grpc["port"], 50051);
    assert_eq!(grpc["targetPort"], "grpc");
    assert_selects(&service["spec"]["selector"], server);
    assert!(service["spec"]["clusterIP"].is_null());

    // Tokens: mounted only where the process uses the Kubernetes API.
    assert_eq!(pod["serviceAccountName"], "tollgate");
    assert_eq!(pod["automountServiceAccountToken"], true);
    for account in ["tollgate", "tollgate-operator"] {
        assert_eq!(
            rendered.get("ServiceAccount", account)["automountServiceAccountToken"],
            false,
            "{account}"
        );
    }

    let operator = rendered.get("Deployment", "tollgate-operator");
    assert_eq!(operator["spec"]["replicas"], 1);
    let operator_pod = &operator["spec"]["template"]["spec"];
    let container = &operator_pod["containers"][0];
    assert_eq!(
        container["args"],
        json!(["operator", "--lease-name=tollgate-operator"])
    );
    assert_eq!(
        env_entry(container, "TOLLGATE_LEASE_NAMESPACE").unwrap()["valueFrom"],
        json!({ "fieldRef": { "fieldPath": "metadata.namespace" } })
    );
    assert_eq!(
        env_entry(container, "TOLLGATE_IDENTITY").unwrap()["valueFrom"],
        json!({ "fieldRef": { "fieldPath": "metadata.name" } })
    );
    assert_eq!(operator_pod["serviceAccountName"], "tollgate-operator");
    assert_eq!(operator_pod["automountServiceAccountToken"], true);
    // The old leader stops before the new pod starts.
    assert_eq!(
        operator["spec"]["strategy"]["rollingUpdate"],
        json!({ "maxSurge": 0, "maxUnavailable": 1 })
    );

    for (name, pod) in rendered.pod_specs() {
        assert_hardened(name, pod);
    }
    for kind in [
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
        "Secret",
    ] {
        assert!(rendered.all(kind).is_empty(), "no {kind} by default");
    }
    assert_eq!(rendered.all("Deployment").len(), 2);
}

#[test]
fn rbac_grants_exactly_what_the_server_and_the_operator_use() {
    let helm = Helm::new();
    let server_rules = rules_of_file("deploy/rbac/server.yaml", "ClusterRole");
    let operator_rules = rules_of_file("deploy/rbac/operator.yaml", "ClusterRole");
    // deploy/rbac/operator.yaml's lease Role: reading and renewing only
    // the release's own Lease (named tollgate-operator in a release
    // called tollgate).
    let lease_rules = rules_of_file("deploy/rbac/operator.yaml", "Role");

    // Every namespace: ClusterRoles, plus the lease Role.
    let rendered = helm.template("");
    assert_eq!(
        rule_set(&rendered.get("ClusterRole", "tollgate-server")["rules"]),
        server_rules,
        "the server's rules are deploy/rbac/server.yaml's"
    );
    assert_eq!(
        rule_set(&rendered.get("ClusterRole", "tollgate-operator")["rules"]),
        operator_rules
    );
    assert_binding(
        rendered.get("ClusterRoleBinding", "tollgate-server"),
        "ClusterRole",
        "tollgate-server",
        "tollgate",
    );
    assert_binding(
        rendered.get("ClusterRoleBinding", "tollgate-operator"),
        "ClusterRole",
        "tollgate-operator",
        "tollgate-operator",
    );
    let lease = rendered.get_in("Role", "tollgate", "tollgate-operator-lease");
    assert_eq!(rule_set(&lease["rules"]), lease_rules);
    assert_binding(
        rendered.get_in("RoleBinding", "tollgate", "tollgate-operator-lease"),
        "Role",
        "tollgate-operator-lease",
        "tollgate-operator",
    );
    assert_eq!(rendered.all("Role").len(), 1);

    // Some namespaces: a Role in each, nothing cluster-wide.
    let rendered = helm.template("watchNamespaces: [mobility, trains]\n");
    assert!(rendered.all("ClusterRole").is_empty());
    assert!(rendered.all("ClusterRoleBinding").is_empty());
    let namespaced = rules_of_file("deploy/rbac/server-namespaced.yaml", "Role");
    for namespace in ["mobility", "trains"] {
        let role = rendered.get_in("Role", namespace, "tollgate-server");
        assert_eq!(rule_set(&role["rules"]), namespaced);
        assert_binding(
            rendered.get_in("RoleBinding", namespace, "tollgate-server"),
            "Role",
            "tollgate-server",
            "tollgate",
        );
        let role = rendered.get_in("Role", namespace, "tollgate-operator");
        assert_eq!(rule_set(&role["rules"]), operator_rules);
        assert_binding(
            rendered.get_in("RoleBinding", namespace, "tollgate-operator"),
            "Role",
            "tollgate-operator",
            "tollgate-operator",
        );
    }
    assert_eq!(
        rule_set(&rendered.get_in("Role", "tollgate", "tollgate-operator-lease")["rules"]),
        lease_rules,
        "the Lease stays in the release namespace"
    );
    assert_eq!(rendered.all("Role").len(), 5);
    for name in ["tollgate", "tollgate-operator"] {
        let container =
            &rendered.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            env_value(container, "TOLLGATE_NAMESPACES"),
            Some("mobility,trains"),
            "{name}"
        );
    }

    // rbac.create=false: the user brings their own.
    let rendered = helm.template("rbac: { create: false }\n");
    for kind in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"] {
        assert!(rendered.all(kind).is_empty(), "{kind}");
    }
}

#[test]
fn the_redis_url_reaches_the_server_through_a_secret_in_every_form() {
    let helm = Helm::new();
    let secret_ref = |rendered: &Rendered| -> Value {
        let container =
            &rendered.get("Deployment", "tollgate")["spec"]["template"]["spec"]["containers"][0];
        env_entry(container, "TOLLGATE_REDIS").unwrap()["valueFrom"]["secretKeyRef"].clone()
    };
    let server_env = |rendered: &Rendered, name: &str| -> Option<String> {
        let container =
            &rendered.get("Deployment", "tollgate")["spec"]["template"]["spec"]["containers"][0];
        env_value(container, name).map(str::to_owned)
    };

    // A URL with a password: in the chart's Secret, never in the Deployment.
    let rendered = helm.template(
        "redis: { url: \"redis://:s3cret-pass@redis.example:6379\", storeTimeout: 20ms }\n",
    );
    let secret = rendered.get("Secret", "tollgate-redis-url");
    assert_eq!(
        secret["stringData"]["url"],
        "redis://:s3cret-pass@redis.example:6379"
    );
    assert!(
        secret["metadata"]["labels"]["tollgate.dev/secret"].is_null(),
        "the server's Secret watch never sees it"
    );
    assert_eq!(
        secret_ref(&rendered),
        json!({ "name": "tollgate-redis-url", "key": "url" })
    );
    let deployment = serde_json::to_string(rendered.get("Deployment", "tollgate")).unwrap();
    assert!(!deployment.contains("s3cret-pass"));
    assert_eq!(
        server_env(&rendered, "TOLLGATE_STORE_TIMEOUT").as_deref(),
        Some("20ms")
    );
    assert_eq!(server_env(&rendered, "TOLLGATE_REDIS_CLUSTER"), None);

    // A Secret of the user's.
    let rendered = helm.template("redis: { existingSecret: { name: my-redis, key: uri } }\n");
    assert_eq!(
        secret_ref(&rendered),
        json!({ "name": "my-redis", "key": "uri" })
    );
    assert!(rendered.all("Secret").is_empty());

    // Redis Cluster, by node URLs or by one seed.
    let rendered = helm.template(
        "redis: { clusterUrls: [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"] }\n",
    );
    assert_eq!(
        rendered.get("Secret", "tollgate-redis-url")["stringData"]["url"],
        "redis://10.0.0.1:6379,redis://10.0.0.2:6379"
    );
    assert_eq!(
        server_env(&rendered, "TOLLGATE_REDIS_CLUSTER").as_deref(),
        Some("true")
    );
    let rendered = helm.template("redis: { url: \"redis://seed:6379\", cluster: true }\n");
    assert_eq!(
        server_env(&rendered, "TOLLGATE_REDIS_CLUSTER").as_deref(),
        Some("true")
    );

    // devRedis: a hardened single pod, reachable only by the server when
    // NetworkPolicies are on, and marked as not for production.
    let rendered = helm.template(
        "devRedis: { enabled: true }\nnetworkPolicy: { enabled: true, grpcFromNamespaces: [istio-system] }\n",
    );
    let redis = rendered.get("Deployment", "tollgate-dev-redis");
    assert_eq!(redis["spec"]["replicas"], 1);
    assert!(
        redis["metadata"]["annotations"]["tollgate.dev/not-for-production"].is_string(),
        "{redis}"
    );
    assert_eq!(
        server_env(&rendered, "TOLLGATE_REDIS").as_deref(),
        Some("redis://tollgate-dev-redis.tollgate.svc:6379")
    );
    let redis_pod = &redis["spec"]["template"]["spec"];
    assert_eq!(redis_pod["automountServiceAccountToken"], false);
    let args: Vec<&str> = redis_pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--appendonly", "no"]),
        "{args:?}"
    );
    assert!(args.windows(2).any(|w| w == ["--save", ""]), "{args:?}");
    let service = rendered.get("Service", "tollgate-dev-redis");
    assert_selects(&service["spec"]["selector"], redis);
    let policy = rendered.get("NetworkPolicy", "tollgate-dev-redis");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        rendered.get("Deployment", "tollgate")["spec"]["selector"]["matchLabels"],
        "only the server reaches devRedis"
    );
    for (name, pod) in rendered.pod_specs() {
        assert_hardened(name, pod);
    }
}

#[test]
fn several_replicas_without_redis_are_refused_unless_opted_in() {
    let helm = Helm::new();
    let refused = helm
        .try_template("server: { replicas: 2 }\n")
        .err()
        .unwrap();
    assert!(
        refused.contains("server.replicas is 2 but no Redis is set")
            && refused.contains("server.allowReplicasWithoutRedis=true"),
        "{refused}"
    );
    let refused = helm
        .try_template("server: { autoscaling: { enabled: true } }\n")
        .err()
        .unwrap();
    assert!(
        refused.contains("server.autoscaling.maxReplicas is 6 but no Redis is set"),
        "{refused}"
    );

    let opted_in = helm.template("server: { replicas: 2, allowReplicasWithoutRedis: true }\n");
    assert_eq!(
        opted_in.get("Deployment", "tollgate")["spec"]["replicas"],
        2
    );
    let with_redis = helm.template("server: { replicas: 2 }\nredis: { url: \"redis://r:6379\" }\n");
    assert_eq!(
        with_redis.get("Deployment", "tollgate")["spec"]["replicas"],
        2
    );
    let with_dev_redis = helm.template("server: { replicas: 2 }\ndevRedis: { enabled: true }\n");
    assert_eq!(
        with_dev_redis.get("Deployment", "tollgate")["spec"]["replicas"],
        2
    );
}

#[test]
fn optional_objects_follow_their_values() {
    let rendered = Helm::new().template(EVERYTHING_ON);
    let server = rendered.get("Deployment", "tollgate");
    let selector = &server["spec"]["selector"]["matchLabels"];

    let budget = rendered.get("PodDisruptionBudget", "tollgate");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);

    let autoscaler = rendered.get("HorizontalPodAutoscaler", "tollgate");
    assert_eq!(
        autoscaler["spec"]["scaleTargetRef"],
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": "tollgate" })
    );
    assert_eq!(autoscaler["spec"]["minReplicas"], 2);
    assert_eq!(autoscaler["spec"]["maxReplicas"], 6);
    assert_eq!(
        autoscaler["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    assert!(
        server["spec"].get("replicas").is_none(),
        "the autoscaler owns the replica count"
    );

    // The ServiceMonitor scrapes the admin port of the server's and the
    // operator's Services.
    let monitor = rendered.get("ServiceMonitor", "tollgate");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"], "admin",
        "{monitor}"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let scraped: Vec<&str> = rendered
        .all("Service")
        .into_iter()
        .filter(|s| label_selector_matches(&monitor["spec"]["selector"], &s["metadata"]["labels"]))
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(scraped, ["tollgate-operator", "tollgate"]);
    for name in scraped {
        let ports = &rendered.get("Service", name)["spec"]["ports"];
        assert!(
            ports
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "admin"),
            "{name}"
        );
    }

    // NetworkPolicies: gRPC from the Envoys' namespaces, admin from
    // monitoring, nothing else.
    let policy = rendered.get("NetworkPolicy", "tollgate");
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2);
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["istio-system", "envoy-gateway-system"])
    );
    assert_eq!(
        ingress[0]["ports"],
        json!([{ "port": "grpc", "protocol": "TCP" }])
    );
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchExpressions"][0],
        json!({ "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"] })
    );
    assert_eq!(
        ingress[1]["ports"],
        json!([{ "port": "admin", "protocol": "TCP" }])
    );
    let operator_policy = rendered.get("NetworkPolicy", "tollgate-operator");
    assert_eq!(
        operator_policy["spec"]["ingress"][0]["ports"],
        json!([{ "port": "admin", "protocol": "TCP" }])
    );

    // Topology spread over zones and nodes, per rollout.
    let constraints = server["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    let keys: Vec<&str> = constraints
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    for constraint in constraints {
        assert_eq!(&constraint["labelSelector"]["matchLabels"], selector);
        assert_eq!(constraint["whenUnsatisfiable"], "ScheduleAnyway");
        assert_eq!(constraint["matchLabelKeys"], json!(["pod-template-hash"]));
    }

    // A headless Service for client-side balancing.
    let headless = Helm::new().template("server: { service: { headless: true } }\n");
    assert_eq!(
        headless.get("Service", "tollgate")["spec"]["clusterIP"],
        "None"
    );
}

#[test]
fn combinations_the_schema_cannot_express_are_refused_by_name() {
    let helm = Helm::new();
    for (values, expected) in [
        (
            "redis: { url: \"redis://a:6379\", existingSecret: { name: r } }\n",
            "set one Redis, not 2: redis.url, redis.existingSecret.name",
        ),
        (
            "devRedis: { enabled: true }\nredis: { cluster: true }\n",
            "redis.cluster applies to redis.url or redis.existingSecret",
        ),
        (
            "server: { terminationGracePeriodSeconds: 10 }\n",
            "server.terminationGracePeriodSeconds (10) must exceed server.preStopSleepSeconds + server.drainTimeoutSeconds (10)",
        ),
        (
            "server: { trustedHops: 2 }\n",
            "server.trustedHops applies only with server.trustedOrigin=forwarded",
        ),
        (
            "networkPolicy: { enabled: true }\n",
            "networkPolicy.enabled needs networkPolicy.grpcFromNamespaces",
        ),
        (
            "redis: { url: \"redis://a:6379\" }\nserver: { autoscaling: { enabled: true }, resources: { requests: { cpu: null } } }\n",
            "server.autoscaling scales on CPU utilisation, which needs server.resources.requests.cpu",
        ),
        (
            "redis: { url: \"redis://a:6379\" }\nserver: { autoscaling: { enabled: true, minReplicas: 4, maxReplicas: 3 } }\n",
            "server.autoscaling.minReplicas is above server.autoscaling.maxReplicas",
        ),
    ] {
        let refused = helm
            .try_template(values)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{values}"));
        assert!(refused.contains(expected), "{values}\n→ {refused}");
    }
    let forwarded = helm.template("server: { trustedOrigin: forwarded, trustedHops: 2 }\n");
    let container =
        &forwarded.get("Deployment", "tollgate")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(container, "TOLLGATE_TRUSTED_HOPS"), Some("2"));
}

#[test]
fn a_typo_or_a_wrong_type_in_values_fails_naming_the_value() {
    let helm = Helm::new();
    for (values, expected) in [
        (
            "server: { replica: 2 }\n",
            "at '/server': additional properties 'replica' not allowed",
        ),
        (
            "server: { podDisruptionBudget: { enable: true } }\n",
            "at '/server/podDisruptionBudget': additional properties 'enable' not allowed",
        ),
        (
            "redis: { urls: [] }\n",
            "additional properties 'urls' not allowed",
        ),
        (
            "server: { replicas: two }\n",
            "at '/server/replicas': got string, want integer",
        ),
        ("logFormat: yaml\n", "at '/logFormat'"),
        ("watchNamespaces: [Mobility]\n", "at '/watchNamespaces/0'"),
        ("redis: { url: \"http://redis:6379\" }\n", "at '/redis/url'"),
        ("redis: { storeTimeout: 50 }\n", "at '/redis/storeTimeout'"),
        (
            "server: { resources: { limits: { memory: lots } } }\n",
            "at '/server/resources/limits/memory'",
        ),
        ("imagePullSecrets: [regcred]\n", "at '/imagePullSecrets/0'"),
    ] {
        let refused = helm
            .try_template(values)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{values}"));
        assert!(
            refused.contains("values don't meet the specifications of the schema")
                && refused.contains(expected),
            "{values}\n→ {refused}"
        );
    }
}

/// Every object of values.schema.json says which keys it takes: a fixed
/// set (`additionalProperties: false`), or, for maps whose keys are the
/// user's (labels, annotations, node selectors, resource quantities), a
/// schema for every value. And the schema and values.yaml name the same
/// values.
#[test]
fn the_values_schema_is_closed_at_every_level() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let maps: BTreeSet<&str> = [
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "annotations",
        "labels",
        "requests",
        "limits",
    ]
    .into();
    let mut objects = 0;
    walk_schema(&schema, "", &mut |path, node| {
        if node["type"] != "object" {
            return;
        }
        objects += 1;
        let leaf = path.rsplit('.').next().unwrap();
        match &node["additionalProperties"] {
            Value::Bool(false) => assert!(
                node["properties"].is_object(),
                "{path}: a closed object lists its properties"
            ),
            Value::Object(_) if maps.contains(leaf) => {}
            other => panic!("{path}: additionalProperties is {other}, not false"),
        }
    });
    assert!(objects > 20, "walked {objects} objects");

    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    assert_same_keys(&schema, &values, "");
}

/// The chart's README documents every value, and nothing that is not one.
#[test]
fn the_chart_readme_lists_every_value() {
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let mut paths = BTreeSet::new();
    value_paths(&values, "", &mut paths);
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(path, _)| path.to_owned())
        .collect();
    let missing: Vec<_> = paths.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&paths).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "charts/tollgate/README.md: undocumented values {missing:?}; rows that are not values \
         {unknown:?}"
    );
}

// ---------------------------------------------------------------------------
// Installed into a real API server
// ---------------------------------------------------------------------------

/// `helm install` (and `--dry-run=server`), `upgrade` and `uninstall`
/// against a real kube-apiserver: it validates every object; the pods are
/// admitted under the "restricted" Pod Security Standard; a values file
/// breaking the schema stops the install naming the value; the CRDs
/// outlive the release.
#[tokio::test(flavor = "multi_thread")]
async fn helm_installs_upgrades_and_uninstalls_in_a_real_api_server() {
    let api = KubeApi::start_without_crds().await;
    api.namespace("tollgate").await;
    let helm = Helm::new();
    let kubeconfig = path_str(api.admin_kubeconfig());
    let chart = path_str(&chart_dir());
    let install = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "install",
            "tollgate",
            &chart,
            "--namespace",
            "tollgate",
            "--kubeconfig",
            &kubeconfig,
        ]
        .map(str::to_owned)
        .into();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let run = |args: &[String]| helm.run(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // A typo in a values file: refused before anything is created.
    let typo = path_str(&helm.values_file("typo.yaml", "server:\n  replica: 2\n"));
    let refused = run(&install(&["--values", &typo]));
    assert!(!refused.success);
    assert!(
        refused
            .stderr
            .contains("at '/server': additional properties 'replica' not allowed"),
        "{}",
        refused.output()
    );
    assert!(deployment(&api, "tollgate").await.is_none());

    // --dry-run=server: the API server checks every object, keeps none.
    let dry = run(&install(&["--dry-run=server"]));
    assert!(dry.success, "{}", dry.output());
    let manifest = dry
        .stdout
        .split_once("MANIFEST:")
        .and_then(|(_, rest)| rest.split("\nNOTES:").next())
        .unwrap_or_else(|| panic!("no manifest in:\n{}", dry.stdout));
    let previewed = Rendered::parse(manifest);
    assert!(previewed.find("Deployment", "tollgate").is_some());
    assert!(deployment(&api, "tollgate").await.is_none());

    let installed = run(&install(&[]));
    assert!(installed.success, "{}", installed.output());
    assert!(installed.stdout.contains("STATUS: deployed"));
    assert!(
        installed
            .stdout
            .contains("tollgate.tollgate.svc.cluster.local:50051"),
        "NOTES name the address for Envoy:\n{}",
        installed.stdout
    );
    api.wait_established([
        "apipolicies.tollgate.dev".to_owned(),
        "appregistrations.tollgate.dev".to_owned(),
    ])
    .await;
    let service = api
        .get("v1", "Service", Some("tollgate"), "tollgate")
        .await
        .expect("the server's Service");
    assert_eq!(service.data["spec"]["ports"][0]["appProtocol"], "grpc");
    for (kind, namespace, name) in [
        ("ServiceAccount", Some("tollgate"), "tollgate"),
        ("ServiceAccount", Some("tollgate"), "tollgate-operator"),
        ("ClusterRole", None, "tollgate-server"),
        ("ClusterRole", None, "tollgate-operator"),
        ("Role", Some("tollgate"), "tollgate-operator-lease"),
    ] {
        let version = if kind == "ServiceAccount" {
            "v1"
        } else {
            "rbac.authorization.k8s.io/v1"
        };
        assert!(
            api.get(version, kind, namespace, name).await.is_some(),
            "{kind} {name}"
        );
    }

    // The pods as the API server would admit them in a namespace that
    // enforces the "restricted" Pod Security Standard (there is no
    // kubelet, so they are created as a dry run).
    api.apply(&restricted_namespace("tollgate")).await;
    for name in ["tollgate", "tollgate-operator"] {
        let template = deployment(&api, name).await.unwrap()["spec"]["template"].clone();
        let created = create_pod_dry_run(&api, "tollgate", name, &template).await;
        assert!(created.is_ok(), "{name}: {created:?}");
    }
    // The check is real: the same pod, allowed to escalate, is refused.
    let mut weakened = deployment(&api, "tollgate").await.unwrap()["spec"]["template"].clone();
    weakened["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let message = create_pod_dry_run(&api, "tollgate", "weakened", &weakened)
        .await
        .expect_err("a pod that may escalate is refused")
        .to_string();
    assert!(
        message.contains("violates PodSecurity \"restricted:latest\"")
            && message.contains("allowPrivilegeEscalation"),
        "{message}"
    );

    // Upgrade: namespaced RBAC, three replicas with Redis, a budget.
    api.namespace("mobility").await;
    let upgraded_values = path_str(&helm.values_file(
        "upgrade.yaml",
        "watchNamespaces: [mobility]\nredis: { url: \"redis://redis.example:6379\" }\n\
         server: { replicas: 3, podDisruptionBudget: { enabled: true } }\n",
    ));
    helm.ok(&[
        "upgrade",
        "tollgate",
        &chart,
        "--namespace",
        "tollgate",
        "--kubeconfig",
        &kubeconfig,
        "--values",
        &upgraded_values,
    ]);
    let server = deployment(&api, "tollgate").await.unwrap();
    assert_eq!(server["spec"]["replicas"], 3);
    let container = &server["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "TOLLGATE_NAMESPACES"),
        Some("mobility")
    );
    assert_eq!(
        env_entry(container, "TOLLGATE_REDIS").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "tollgate-redis-url"
    );
    assert!(
        api.get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
            "tollgate-server"
        )
        .await
        .is_none(),
        "the ClusterRole is gone"
    );
    assert!(
        api.get(
            "rbac.authorization.k8s.io/v1",
            "Role",
            Some("mobility"),
            "tollgate-server"
        )
        .await
        .is_some()
    );
    assert!(
        api.get(
            "policy/v1",
            "PodDisruptionBudget",
            Some("tollgate"),
            "tollgate"
        )
        .await
        .is_some()
    );
    let status = helm.ok(&[
        "status",
        "tollgate",
        "--namespace",
        "tollgate",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(status.stdout.contains("REVISION: 2"), "{}", status.stdout);

    // An upgrade that breaks the schema changes nothing.
    let refused = helm.run(&[
        "upgrade",
        "tollgate",
        &chart,
        "--namespace",
        "tollgate",
        "--kubeconfig",
        &kubeconfig,
        "--reuse-values",
        "--set",
        "operator.replica=2",
    ]);
    assert!(
        !refused.success
            && refused
                .stderr
                .contains("additional properties 'replica' not allowed"),
        "{}",
        refused.output()
    );

    // Uninstall: the release's objects go, the CRDs and the policies stay.
    let quickstart =
        std::fs::read_to_string(support::repo_path("deploy/examples/quickstart.yaml")).unwrap();
    api.apply(&quickstart).await;
    helm.ok(&[
        "uninstall",
        "tollgate",
        "--namespace",
        "tollgate",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(deployment(&api, "tollgate").await.is_none());
    assert!(deployment(&api, "tollgate-operator").await.is_none());
    assert!(
        api.get("v1", "ServiceAccount", Some("tollgate"), "tollgate")
            .await
            .is_none()
    );
    assert!(
        api.get(
            "rbac.authorization.k8s.io/v1",
            "Role",
            Some("mobility"),
            "tollgate-server"
        )
        .await
        .is_none()
    );
    for crd in ["apipolicies.tollgate.dev", "appregistrations.tollgate.dev"] {
        assert!(
            api.get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                crd
            )
            .await
            .is_some(),
            "{crd} outlives the release"
        );
    }
    assert!(
        api.get(
            "tollgate.dev/v1alpha1",
            "ApiPolicy",
            Some("mobility"),
            "bikes"
        )
        .await
        .is_some(),
        "and so do the policies"
    );
}

/// The user's story: install the chart (with a Redis URL), apply the
/// quickstart, and `tollgate serve` — configured exactly as the chart's
/// Deployment configures it, authenticated as the chart's ServiceAccount
/// — decides requests through the real Envoy of the kind walkthrough.
/// Then the namespaced RBAC (watchNamespaces) is enough on its own, and
/// without the namespace setting the same identity is refused: the token
/// really carries the chart's grants and nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_decides_through_envoy_with_the_charts_identity_and_settings() {
    let api = KubeApi::start_without_crds().await;
    api.namespace("tollgate").await;
    api.namespace("mobility").await;
    let redis = RedisServer::start();
    let helm = Helm::new();
    let kubeconfig = path_str(api.admin_kubeconfig());
    let chart = path_str(&chart_dir());
    let values = path_str(&helm.values_file(
        "values.yaml",
        &format!("redis: {{ url: \"{}\" }}\n", redis.url()),
    ));
    let release = |verb: &str, values: &str| {
        helm.ok(&[
            verb,
            "tollgate",
            &chart,
            "--namespace",
            "tollgate",
            "--kubeconfig",
            &kubeconfig,
            "--values",
            values,
        ]);
    };
    release("install", &values);
    api.wait_established([
        "apipolicies.tollgate.dev".to_owned(),
        "appregistrations.tollgate.dev".to_owned(),
    ])
    .await;
    let quickstart =
        std::fs::read_to_string(support::repo_path("deploy/examples/quickstart.yaml")).unwrap();
    api.apply(&quickstart).await;

    let (account, env, args) = server_settings(&api).await;
    assert_eq!(account, "tollgate");
    assert_eq!(
        env.iter()
            .find(|(k, _)| k == "TOLLGATE_REDIS")
            .map(|(_, v)| v.as_str()),
        Some(redis.url().as_str()),
        "the URL comes from the chart's Secret"
    );
    let token = api.service_account_kubeconfig("tollgate", &account).await;
    let tollgate = Tollgate::start_kubernetes_with_env(&token, &env, &strs(&args));
    let listening = tollgate.wait_for_log("listening", PROPAGATE);
    assert_eq!(
        support::tollgate::log_field(&listening, "store").and_then(Value::as_str),
        Some("redis"),
        "{listening}"
    );
    let envoy = kind_envoy(&tollgate);
    let allowed = envoy
        .get("/v1/bikes")
        .host("api.bikes.example")
        .header("x-api-key", QUICKSTART_KEY)
        .send();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(allowed.header("x-upstream-saw-app"), Some("commuter-ios"));
    assert_eq!(allowed.header("x-upstream-saw-plan"), Some("free"));
    assert!(allowed.header("ratelimit").is_some(), "{allowed:?}");
    let denied = envoy.get("/v1/bikes").host("api.bikes.example").send();
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("x-tollgate-reason"),
        Some("app_credential_missing")
    );
    drop(envoy);
    drop(tollgate);

    // Only the mobility namespace: the chart's Roles there are enough.
    let namespaced = path_str(&helm.values_file(
        "namespaced.yaml",
        &format!(
            "redis: {{ url: \"{}\" }}\nwatchNamespaces: [mobility]\n",
            redis.url()
        ),
    ));
    release("upgrade", &namespaced);
    let (account, env, args) = server_settings(&api).await;
    assert!(env.contains(&("TOLLGATE_NAMESPACES".to_owned(), "mobility".to_owned())));
    let tollgate = Tollgate::start_kubernetes_with_env(&token, &env, &strs(&args));
    assert_eq!(account, "tollgate");
    let envoy = kind_envoy(&tollgate);
    let allowed = envoy
        .get("/v1/bikes")
        .host("api.bikes.example")
        .header("x-api-key", QUICKSTART_KEY)
        .send();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    drop(envoy);
    drop(tollgate);

    // The same identity watching every namespace is refused by RBAC.
    let everywhere: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k != "TOLLGATE_NAMESPACES")
        .collect();
    let tollgate = Tollgate::launch_kubernetes_with_env(&token, &everywhere, &strs(&args));
    let failed = tollgate.wait_for_log(
        "Kubernetes watch failed; retrying with backoff (the last snapshot keeps serving)",
        PROPAGATE,
    );
    let error = support::tollgate::log_field(&failed, "error")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    assert!(
        error.contains("User \"system:serviceaccount:tollgate:tollgate\" cannot list resource")
            && error.contains("at the cluster scope"),
        "{error}"
    );
    assert_eq!(tollgate.admin_get("/readyz").status, 503);
}

/// `tollgate operator`, configured as the chart's Deployment configures
/// it and authenticated as the chart's operator ServiceAccount, takes its
/// Lease in the release namespace and writes status and events, and the
/// API server's audit log shows nothing refused and nothing used beyond
/// the chart's grants; with watchNamespaces, the namespaced Roles are
/// enough.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_writes_status_with_the_charts_identity_and_settings() {
    const OPERATOR: &str = "system:serviceaccount:tollgate:tollgate-operator";
    const POD: &str = "tollgate-operator-5f7d8c6b4-x2x9q";
    let api = KubeApi::start_audited().await;
    api.namespace("tollgate").await;
    api.namespace("mobility").await;
    let helm = Helm::new();
    let installed = install_chart(&helm, &api, "tollgate", "tollgate", "");
    assert!(installed.success, "{}", installed.output());
    let quickstart =
        std::fs::read_to_string(support::repo_path("deploy/examples/quickstart.yaml")).unwrap();
    api.apply(&quickstart).await;

    let (account, env, args) = container_settings(&api, "tollgate-operator", "operator", POD).await;
    assert_eq!(account, "tollgate-operator");
    let token = api.service_account_kubeconfig("tollgate", &account).await;
    let operator = Operator::start_with_env(&token, &env, &strs(&args));
    ready_until(&api, "ApiPolicy", "bikes", "True").await;
    ready_until(&api, "AppRegistration", "commuter-ios", "True").await;
    let lease = until("the operator's Lease to be held", || async {
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("tollgate"),
            "tollgate-operator",
        )
        .await
        .filter(|lease| lease.data["spec"]["holderIdentity"].is_string())
    })
    .await;
    assert_eq!(
        lease.data["spec"]["holderIdentity"], POD,
        "the pod's name leads"
    );

    // A broken app: status and a Warning event.
    let platinum = quickstart.replace("  plan: free\n", "  plan: platinum\n");
    assert_ne!(platinum, quickstart);
    api.apply(&platinum).await;
    let ready = ready_until(&api, "AppRegistration", "commuter-ios", "False").await;
    assert_eq!(ready["reason"], "PlanNotFound");
    let events = dynamic_api(&api.client(), "events.k8s.io/v1", "Event", Some("mobility")).await;
    until("a Warning event about commuter-ios", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.data["regarding"]["name"] == "commuter-ios" && e.data["type"] == "Warning")
    })
    .await;
    drop(operator);

    // With watchNamespaces, the Roles in mobility are enough.
    let values = path_str(&helm.values_file("ns.yaml", "watchNamespaces: [mobility]\n"));
    helm.ok(&[
        "upgrade",
        "tollgate",
        &path_str(&chart_dir()),
        "--namespace",
        "tollgate",
        "--kubeconfig",
        &path_str(api.admin_kubeconfig()),
        "--values",
        &values,
    ]);
    assert!(
        api.get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
            "tollgate-operator"
        )
        .await
        .is_none()
    );
    let (_, env, args) = container_settings(&api, "tollgate-operator", "operator", POD).await;
    assert!(env.contains(&("TOLLGATE_NAMESPACES".to_owned(), "mobility".to_owned())));
    let operator = Operator::start_with_env(&token, &env, &strs(&args));
    api.apply(&quickstart).await;
    ready_until(&api, "AppRegistration", "commuter-ios", "True").await;
    until("the operator to renew its Lease", || async {
        api.audit_events(OPERATOR)
            .iter()
            .any(|e| {
                e["verb"] == "update"
                    && e["objectRef"]["resource"] == "leases"
                    && e["responseStatus"]["code"] == 200
            })
            .then_some(())
    })
    .await;
    drop(operator);

    let events = api.audit_events(OPERATOR);
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let rendered = helm.template("");
    let mut granted = rule_set(&rendered.get("ClusterRole", "tollgate-operator")["rules"]);
    granted.extend(rule_set(
        &rendered.get_in("Role", "tollgate", "tollgate-operator-lease")["rules"],
    ));
    let granted: BTreeSet<(String, String, String)> = granted
        .into_iter()
        .map(|(group, resource, verb, _)| (group, resource, verb))
        .collect();
    let used: BTreeSet<(String, String, String)> = events
        .iter()
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
    assert!(
        used.contains(&(
            "coordination.k8s.io".into(),
            "leases".into(),
            "update".into()
        )) && used.contains(&(
            "tollgate.dev".into(),
            "appregistrations/status".into(),
            "patch".into()
        )) && used.contains(&("events.k8s.io".into(), "events".into(), "create".into())),
        "{used:?}"
    );
    assert!(
        used.is_subset(&granted),
        "used {used:?}\ngranted {granted:?}"
    );
}

/// Each ServiceAccount of the chart holds exactly the permissions its
/// process uses, as the API server's authorizer answers for it
/// (SubjectAccessReview): every use allowed, and nearby permissions a
/// careless role would grant denied.
#[tokio::test(flavor = "multi_thread")]
async fn each_service_account_holds_exactly_the_permissions_its_process_uses() {
    let api = KubeApi::start_without_crds().await;
    api.namespace("tollgate").await;
    api.namespace("mobility").await;
    api.namespace("trains").await;
    let helm = Helm::new();
    let kubeconfig = path_str(api.admin_kubeconfig());
    let chart = path_str(&chart_dir());
    helm.ok(&[
        "install",
        "tollgate",
        &chart,
        "--namespace",
        "tollgate",
        "--kubeconfig",
        &kubeconfig,
    ]);

    const SERVER: &str = "system:serviceaccount:tollgate:tollgate";
    const OPERATOR: &str = "system:serviceaccount:tollgate:tollgate-operator";
    let tollgate_dev = "tollgate.dev";
    let every_watch = [
        (tollgate_dev, "apipolicies"),
        (tollgate_dev, "appregistrations"),
        ("", "secrets"),
    ];
    for user in [SERVER, OPERATOR] {
        for (group, resource) in every_watch {
            for verb in ["list", "watch"] {
                for namespace in ["mobility", "trains"] {
                    assert!(
                        can(&api, user, verb, group, resource, Some(namespace), None).await,
                        "{user} {verb} {resource} in {namespace}"
                    );
                }
            }
        }
        for (verb, group, resource) in [
            ("get", "", "secrets"),
            ("create", "", "secrets"),
            ("update", tollgate_dev, "apipolicies"),
            ("patch", tollgate_dev, "apipolicies"),
            ("delete", tollgate_dev, "appregistrations"),
            ("list", "", "configmaps"),
            ("list", "", "pods"),
            ("create", "", "events"),
        ] {
            assert!(
                !can(&api, user, verb, group, resource, Some("mobility"), None).await,
                "{user} must not {verb} {resource}"
            );
        }
    }

    // The server only reads.
    for (verb, group, resource) in [
        ("patch", tollgate_dev, "apipolicies/status"),
        ("create", "events.k8s.io", "events"),
        ("create", "coordination.k8s.io", "leases"),
    ] {
        assert!(
            !can(&api, SERVER, verb, group, resource, Some("mobility"), None).await
                && !can(&api, SERVER, verb, group, resource, Some("tollgate"), None).await,
            "the server must not {verb} {resource}"
        );
    }

    // The operator writes status and events, and holds its Lease in the
    // release namespace only.
    for (verb, group, resource) in [
        ("patch", tollgate_dev, "apipolicies/status"),
        ("patch", tollgate_dev, "appregistrations/status"),
        ("create", "events.k8s.io", "events"),
        ("patch", "events.k8s.io", "events"),
    ] {
        assert!(
            can(
                &api,
                OPERATOR,
                verb,
                group,
                resource,
                Some("mobility"),
                None
            )
            .await,
            "the operator {verb} {resource}"
        );
    }
    assert!(
        !can(
            &api,
            OPERATOR,
            "update",
            tollgate_dev,
            "apipolicies/status",
            Some("mobility"),
            None
        )
        .await
    );
    let lease = "coordination.k8s.io";
    assert!(
        can(
            &api,
            OPERATOR,
            "create",
            lease,
            "leases",
            Some("tollgate"),
            None
        )
        .await
    );
    for verb in ["get", "update"] {
        assert!(
            can(
                &api,
                OPERATOR,
                verb,
                lease,
                "leases",
                Some("tollgate"),
                Some("tollgate-operator")
            )
            .await,
            "{verb} its Lease"
        );
        assert!(
            !can(
                &api,
                OPERATOR,
                verb,
                lease,
                "leases",
                Some("tollgate"),
                Some("another-lease")
            )
            .await,
            "{verb} another Lease"
        );
    }
    for verb in ["list", "delete"] {
        assert!(
            !can(
                &api,
                OPERATOR,
                verb,
                lease,
                "leases",
                Some("tollgate"),
                None
            )
            .await
        );
    }
    assert!(
        !can(
            &api,
            OPERATOR,
            "create",
            lease,
            "leases",
            Some("mobility"),
            None
        )
        .await
    );

    // With watchNamespaces, nothing outside them.
    let values = path_str(&helm.values_file("ns.yaml", "watchNamespaces: [mobility]\n"));
    helm.ok(&[
        "upgrade",
        "tollgate",
        &chart,
        "--namespace",
        "tollgate",
        "--kubeconfig",
        &kubeconfig,
        "--values",
        &values,
    ]);
    for user in [SERVER, OPERATOR] {
        for (group, resource) in every_watch {
            assert!(can(&api, user, "watch", group, resource, Some("mobility"), None).await);
            assert!(
                !can(&api, user, "watch", group, resource, Some("trains"), None).await,
                "{user} watch {resource} in trains"
            );
            assert!(
                !can(&api, user, "list", group, resource, None, None).await,
                "{user} list {resource} cluster-wide"
            );
        }
    }
    assert!(
        can(
            &api,
            OPERATOR,
            "create",
            "events.k8s.io",
            "events",
            Some("mobility"),
            None
        )
        .await
    );
    assert!(
        !can(
            &api,
            OPERATOR,
            "create",
            "events.k8s.io",
            "events",
            Some("trains"),
            None
        )
        .await
    );
}

/// Every optional object of the chart, and the single-node Redis, pass
/// the API server's validation (strict: an unknown field fails the
/// install), the ServiceMonitor against the Prometheus Operator's CRD; a
/// second release under another name sits beside the first.
#[tokio::test(flavor = "multi_thread")]
async fn every_optional_object_installs_in_a_real_api_server() {
    let api = KubeApi::start_without_crds().await;
    api.install_crd_yaml(&third_party_crd("servicemonitors.yaml", None))
        .await;
    let helm = Helm::new();
    api.namespace("tollgate").await;
    let installed = install_chart(&helm, &api, "tollgate", "tollgate", EVERYTHING_ON);
    assert!(installed.success, "{}", installed.output());
    for (version, kind, name) in [
        ("monitoring.coreos.com/v1", "ServiceMonitor", "tollgate"),
        ("autoscaling/v2", "HorizontalPodAutoscaler", "tollgate"),
        ("policy/v1", "PodDisruptionBudget", "tollgate"),
        ("networking.k8s.io/v1", "NetworkPolicy", "tollgate"),
        ("networking.k8s.io/v1", "NetworkPolicy", "tollgate-operator"),
        ("v1", "Secret", "tollgate-redis-url"),
    ] {
        assert!(
            api.get(version, kind, Some("tollgate"), name)
                .await
                .is_some(),
            "{kind} {name}"
        );
    }

    api.apply(&restricted_namespace("trial")).await;
    let trial = install_chart(
        &helm,
        &api,
        "trial",
        "trial",
        "devRedis: { enabled: true }\nnetworkPolicy: { enabled: true, grpcFromNamespaces: [trial] }\n",
    );
    assert!(trial.success, "{}", trial.output());
    assert!(
        trial.stdout.contains("devRedis (NOT FOR PRODUCTION)"),
        "the NOTES warn:\n{}",
        trial.stdout
    );
    for name in [
        "trial-tollgate",
        "trial-tollgate-operator",
        "trial-tollgate-dev-redis",
    ] {
        let deployment = deployment_in(&api, "trial", name)
            .await
            .unwrap_or_else(|| panic!("{name}"));
        // Admitted under the "restricted" Pod Security Standard.
        let admitted =
            create_pod_dry_run(&api, "trial", name, &deployment["spec"]["template"]).await;
        assert!(admitted.is_ok(), "{name}: {admitted:?}");
    }
    assert!(
        api.get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            Some("trial"),
            "trial-tollgate-dev-redis"
        )
        .await
        .is_some()
    );
}

/// deploy/istio and deploy/envoy-gateway, checked as far as this machine
/// can: their custom resources are applied, with strict field validation,
/// to an API server serving the CRDs of Istio, Envoy Gateway and Gateway
/// API (read from those projects' Go modules by the setup), and Istio's
/// meshConfig is read by Istio's own MeshConfig message. They point at
/// the chart's Service and the quickstart's policy. Not checked here: what
/// istiod and Envoy Gateway's controller make of them (neither runs).
#[tokio::test(flavor = "multi_thread")]
async fn istio_and_envoy_gateway_manifests_are_accepted_by_their_crds() {
    let api = KubeApi::start_without_crds().await;
    for namespace in ["istio-system", "mobility", "tollgate"] {
        api.namespace(namespace).await;
    }
    api.install_crd_yaml(&third_party_crd(
        "istio.yaml",
        Some("authorizationpolicies.security.istio.io"),
    ))
    .await;
    for file in [
        "envoy-gateway-securitypolicies.yaml",
        "gateway-api-httproutes.yaml",
        "gateway-api-referencegrants.yaml",
    ] {
        api.install_crd_yaml(&third_party_crd(file, None)).await;
    }
    let chart = Helm::new().template("");
    let service = chart.get("Service", "tollgate");
    let grpc_port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let quickstart = read_documents("deploy/examples/quickstart.yaml");
    let policy = quickstart
        .iter()
        .find(|d| d["kind"] == "ApiPolicy")
        .unwrap();
    let policy_id = format!(
        "{}/{}",
        policy["metadata"]["namespace"].as_str().unwrap(),
        policy["metadata"]["name"].as_str().unwrap()
    );

    // Envoy Gateway: accepted, and wired to the chart and the policy.
    let gateway_yaml = std::fs::read_to_string(support::repo_path(
        "deploy/envoy-gateway/security-policy.yaml",
    ))
    .unwrap();
    api.try_apply_strict(&gateway_yaml)
        .await
        .unwrap_or_else(|e| panic!("deploy/envoy-gateway refused: {e}"));
    let gateway = read_documents("deploy/envoy-gateway/security-policy.yaml");
    let security = gateway
        .iter()
        .find(|d| d["kind"] == "SecurityPolicy")
        .unwrap();
    let ext_auth = &security["spec"]["extAuth"];
    let backend = &ext_auth["grpc"]["backendRefs"][0];
    assert_eq!(backend["name"], service["metadata"]["name"]);
    assert_eq!(backend["namespace"], "tollgate");
    assert_eq!(backend["port"].as_u64(), Some(grpc_port));
    assert_eq!(
        ext_auth["contextExtensions"],
        json!([{ "name": "tollgate.dev/policy", "type": "Value", "value": policy_id }])
    );
    assert_eq!(ext_auth["failOpen"], false);
    assert!(ext_auth["timeout"].is_string(), "an explicit timeout");
    let route = gateway.iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    assert_eq!(
        security["spec"]["targetRefs"][0]["name"],
        route["metadata"]["name"]
    );
    assert_eq!(route["spec"]["hostnames"], policy["spec"]["hosts"]);
    let grant = gateway
        .iter()
        .find(|d| d["kind"] == "ReferenceGrant")
        .unwrap();
    assert_eq!(grant["metadata"]["namespace"], "tollgate");
    assert_eq!(
        grant["spec"]["from"],
        json!([{ "group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": security["metadata"]["namespace"] }])
    );
    assert_eq!(
        grant["spec"]["to"],
        json!([{ "group": "", "kind": "Service", "name": "tollgate" }])
    );
    // The validation is real: the CRD's own rules refuse a broken copy.
    let broken = gateway_yaml.replace("        value: mobility/bikes\n", "");
    assert_ne!(broken, gateway_yaml);
    let refused = api.try_apply_strict(&broken).await.unwrap_err().to_string();
    assert!(
        refused.contains("Exactly one of value or valueRef must be set"),
        "{refused}"
    );

    // Istio: the AuthorizationPolicy is accepted and names the provider
    // of the mesh configuration, which points at the chart's Service.
    let istio_yaml =
        std::fs::read_to_string(support::repo_path("deploy/istio/authorization-policy.yaml"))
            .unwrap();
    api.try_apply_strict(&istio_yaml)
        .await
        .unwrap_or_else(|e| panic!("deploy/istio refused: {e}"));
    let authorization = &read_documents("deploy/istio/authorization-policy.yaml")[0];
    assert_eq!(authorization["spec"]["action"], "CUSTOM");
    let hosts = &authorization["spec"]["rules"][0]["to"][0]["operation"]["hosts"];
    for host in policy["spec"]["hosts"].as_array().unwrap() {
        assert!(
            hosts.as_array().unwrap().contains(host),
            "the gateway asks tollgate for {host}"
        );
    }
    let typo = istio_yaml.replace("    name: tollgate\n", "    nmae: tollgate\n");
    assert_ne!(typo, istio_yaml);
    let refused = api.try_apply_strict(&typo).await.unwrap_err().to_string();
    assert!(refused.contains("nmae"), "{refused}");

    let providers = istio_mesh_check("deploy/istio/istiod-values.yaml")
        .unwrap_or_else(|e| panic!("deploy/istio/istiod-values.yaml: {e}"));
    let provider = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == authorization["spec"]["provider"]["name"])
        .unwrap_or_else(|| panic!("no provider named by the AuthorizationPolicy: {providers}"));
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["service"], "tollgate.tollgate.svc.cluster.local");
    assert_eq!(grpc["port"].as_u64(), Some(grpc_port));
    assert_eq!(grpc["timeout"], "0.250s", "explicit, not Istio's 600 s");
    assert_eq!(grpc["statusOnError"], "503");
    assert!(grpc.get("failOpen").is_none_or(|f| f == false));
    // Istio would ignore a misspelt field; the check names it.
    let dir = tempfile::tempdir().unwrap();
    let misspelt = dir.path().join("istiod-values.yaml");
    std::fs::write(
        &misspelt,
        std::fs::read_to_string(support::repo_path("deploy/istio/istiod-values.yaml"))
            .unwrap()
            .replace("statusOnError", "statusOnErorr"),
    )
    .unwrap();
    let refused = istio_mesh_check(&path_str(&misspelt)).unwrap_err();
    assert!(
        refused.contains("unknown field \"statusOnErorr\""),
        "{refused}"
    );
}

/// The example custom resources and RBAC files of deploy/ are accepted by
/// the API server as shipped.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_examples_are_accepted_by_the_api_server() {
    let api = KubeApi::start().await;
    api.namespace("mobility").await;
    api.namespace("tollgate").await;
    for file in [
        "deploy/examples/quickstart.yaml",
        "deploy/examples/bikes.yaml",
        "deploy/examples/bikes-full.yaml",
        "deploy/examples/bikes-dev.yaml",
        "deploy/rbac/server.yaml",
        "deploy/rbac/server-namespaced.yaml",
    ] {
        let yaml = std::fs::read_to_string(support::repo_path(file)).unwrap();
        let applied = api
            .try_apply(&yaml)
            .await
            .unwrap_or_else(|e| panic!("{file} refused: {e}"));
        assert!(!applied.is_empty(), "{file}");
    }
    // The kind walkthrough's Envoy: accepted with strict validation, and
    // fed the configuration file the script puts in its ConfigMap.
    let envoy_yaml =
        std::fs::read_to_string(support::repo_path("deploy/kind/envoy-deployment.yaml")).unwrap();
    api.try_apply_strict(&envoy_yaml)
        .await
        .unwrap_or_else(|e| panic!("deploy/kind/envoy-deployment.yaml refused: {e}"));
    let envoy = &read_documents("deploy/kind/envoy-deployment.yaml")[0];
    let pod = &envoy["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "edge-envoy");
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/envoy"
    );
    let args = &pod["containers"][0]["args"];
    assert_eq!(args[0], "--config-path");
    assert_eq!(args[1], "/etc/envoy/envoy.yaml");
    let script = std::fs::read_to_string(support::repo_path("deploy/kind/up.sh")).unwrap();
    assert!(
        script.contains(
            "create configmap edge-envoy \\\n  --from-file=envoy.yaml=deploy/kind/envoy.yaml"
        ),
        "up.sh fills the ConfigMap the Deployment mounts"
    );
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(support::repo_path("deploy/kind/up.sh"))
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    // The examples' Secrets carry the label tollgate selects by, or the
    // server would not see them in a cluster.
    for file in [
        "deploy/examples/quickstart.yaml",
        "deploy/examples/bikes-full.yaml",
        "deploy/examples/bikes-dev.yaml",
    ] {
        let yaml = std::fs::read_to_string(support::repo_path(file)).unwrap();
        let documents: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        for secret in documents.iter().filter(|d| d["kind"] == "Secret") {
            assert_eq!(
                secret["metadata"]["labels"]["tollgate.dev/secret"], "true",
                "{file}: Secret {}",
                secret["metadata"]["name"]
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Asserts the Pod Security Standards' "restricted" settings and the
/// chart's own: non-root with a fixed uid, no privilege escalation, a
/// read-only root, no capabilities, RuntimeDefault seccomp, and an
/// explicit choice about the ServiceAccount token.
fn assert_hardened(name: &str, pod: &Value) {
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true, "{name}");
    assert!(
        security["runAsUser"].as_u64().is_some_and(|uid| uid > 0),
        "{name}: a fixed non-root uid"
    );
    assert_eq!(
        security["seccompProfile"]["type"], "RuntimeDefault",
        "{name}"
    );
    assert!(
        pod["automountServiceAccountToken"].is_boolean(),
        "{name}: says whether it mounts a token"
    );
    for flag in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[flag].is_null(), "{name}: {flag}");
    }
    for container in pod["containers"].as_array().unwrap() {
        let context = &container["securityContext"];
        assert_eq!(context["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(context["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(context["privileged"], false, "{name}");
        assert_eq!(
            context["capabilities"],
            json!({ "drop": ["ALL"] }),
            "{name}"
        );
        assert_eq!(context["runAsNonRoot"], true, "{name}");
        assert!(
            container["resources"]["limits"]["memory"].is_string(),
            "{name}: a memory limit"
        );
    }
}

/// `selector` (a Service's) picks the pods of `deployment`.
fn assert_selects(selector: &Value, deployment: &Value) {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector.as_object().unwrap() {
        assert_eq!(&labels[key], value, "pod label {key}");
    }
    assert_eq!(selector, &deployment["spec"]["selector"]["matchLabels"]);
}

fn assert_binding(binding: &Value, kind: &str, role: &str, account: &str) {
    assert_eq!(
        binding["roleRef"],
        json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role })
    );
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": account, "namespace": "tollgate" }])
    );
}

/// RBAC rules flattened to (group, resource, verb, resource names), so
/// two ways of writing the same grant compare equal.
fn rule_set(rules: &Value) -> BTreeSet<(String, String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut set = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        let names = strings(&rule["resourceNames"]).join(",");
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert_ne!(verb, "*", "no wildcard verbs");
                    assert_ne!(resource, "*", "no wildcard resources");
                    set.insert((group.clone(), resource.clone(), verb, names.clone()));
                }
            }
        }
    }
    set
}

/// The rules of the `kind` object in a deploy/ file.
fn rules_of_file(file: &str, kind: &str) -> BTreeSet<(String, String, String, String)> {
    let yaml = std::fs::read_to_string(support::repo_path(file)).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let role = documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {file}"));
    rule_set(&role["rules"])
}

/// Whether a label selector (`matchLabels`, `matchExpressions` with `In`)
/// picks an object with `labels`.
fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| &labels[k] == v));
    let by_expressions = selector["matchExpressions"].as_array().is_none_or(|all| {
        all.iter().all(|e| {
            assert_eq!(e["operator"], "In", "only In is used");
            e["values"]
                .as_array()
                .unwrap()
                .contains(&labels[e["key"].as_str().unwrap()])
        })
    });
    by_labels && by_expressions
}

/// Calls `f(path, node)` on every schema node under `properties`,
/// `items` and `additionalProperties`.
fn walk_schema(node: &Value, path: &str, f: &mut impl FnMut(&str, &Value)) {
    f(path, node);
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            walk_schema(child, &child_path, f);
        }
    }
    if node["items"].is_object() {
        walk_schema(&node["items"], &format!("{path}[]"), f);
    }
    if node["additionalProperties"].is_object() {
        walk_schema(&node["additionalProperties"], &format!("{path}.*"), f);
    }
}

/// values.yaml and the schema name the same keys, at every fixed-key
/// level.
fn assert_same_keys(schema: &Value, values: &Value, path: &str) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let declared: BTreeSet<&String> = properties.keys().collect();
    let given: BTreeSet<&String> = values
        .as_object()
        .unwrap_or_else(|| panic!("values.yaml: {path} is not a map"))
        .keys()
        .collect();
    assert_eq!(
        declared, given,
        "values.schema.json and values.yaml differ at {path:?}"
    );
    for (name, child) in properties {
        let child_path = format!("{path}.{name}");
        assert_same_keys(child, &values[name], child_path.trim_start_matches('.'));
    }
}

/// The dotted paths of values.yaml: every scalar, list and empty map, and
/// the maps of user keys (`resources.requests`…) as one value each.
fn value_paths(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() && !path.ends_with("resources") => {
            for (name, child) in map {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                value_paths(child, &child_path, out);
            }
        }
        _ => {
            out.insert(path.to_owned());
        }
    }
}

fn strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most
/// [`PROPAGATE`]; panics naming `what` when time runs out.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + PROPAGATE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PROPAGATE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `Ready` condition of the quickstart object `kind`/`name`, once its
/// status is `status` (the operator's writing).
async fn ready_until(api: &KubeApi, kind: &str, name: &str, status: &str) -> Value {
    until(&format!("{kind} {name} to be Ready={status}"), || async {
        let object = api
            .get("tollgate.dev/v1alpha1", kind, Some("mobility"), name)
            .await?;
        object.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready" && c["status"] == status)
            .cloned()
    })
    .await
}

/// A CRD file the setup read from a project's Go module
/// (`<kube tools>/crds/`), whole or only the CRD named `only`.
fn third_party_crd(file: &str, only: Option<&str>) -> String {
    let path = support::kube::tools_dir().join("crds").join(file);
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/setup.sh (scripts/kube-tools.sh reads it from its Go module)",
            path.display()
        )
    });
    let Some(name) = only else { return yaml };
    let documents: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let crd = documents
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no CRD {name} in {}", path.display()));
    // JSON is YAML.
    serde_json::to_string(&crd).unwrap()
}

/// Runs the setup's `istio-mesh-check` on `file` (relative to the
/// repository, or absolute): the extension providers it read, or its
/// error.
fn istio_mesh_check(file: &str) -> Result<Value, String> {
    let checker = support::kube::tools_dir().join("istio-mesh-check");
    let output = std::process::Command::new(&checker)
        .arg(support::repo_path(file))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run scripts/setup.sh",
                checker.display()
            )
        });
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn read_documents(file: &str) -> Vec<Value> {
    let yaml = std::fs::read_to_string(support::repo_path(file)).unwrap();
    serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// `helm install RELEASE charts/tollgate` into `namespace` with `values`.
fn install_chart(
    helm: &Helm,
    api: &KubeApi,
    release: &str,
    namespace: &str,
    values: &str,
) -> support::helm::HelmRun {
    let values = path_str(&helm.values_file(&format!("{release}.yaml"), values));
    helm.run(&[
        "install",
        release,
        &path_str(&chart_dir()),
        "--namespace",
        namespace,
        "--kubeconfig",
        &path_str(api.admin_kubeconfig()),
        "--values",
        &values,
    ])
}

async fn deployment_in(api: &KubeApi, namespace: &str, name: &str) -> Option<Value> {
    api.get("apps/v1", "Deployment", Some(namespace), name)
        .await
        .map(|d| d.data)
}

/// A Deployment of the release, as stored.
async fn deployment(api: &KubeApi, name: &str) -> Option<Value> {
    api.get("apps/v1", "Deployment", Some("tollgate"), name)
        .await
        .map(|d| d.data)
}

/// A namespace enforcing the "restricted" Pod Security Standard.
fn restricted_namespace(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
         pod-security.kubernetes.io/enforce: restricted\n"
    )
}

/// Creates (as a dry run) a Pod from a Deployment's pod template in
/// `namespace`.
async fn create_pod_dry_run(
    api: &KubeApi,
    namespace: &str,
    name: &str,
    template: &Value,
) -> Result<Pod, kube::Error> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": format!("{name}-pod"), "labels": template["metadata"]["labels"] },
        "spec": template["spec"],
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(api.client(), namespace);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&params, &pod).await
}

/// The server container's ServiceAccount, environment and extra `serve`
/// arguments, as the installed Deployment gives them.
async fn server_settings(api: &KubeApi) -> (String, Vec<(String, String)>, Vec<String>) {
    container_settings(api, "tollgate", "serve", "tollgate-6d8f7c9b5-q2x7z").await
}

/// The ServiceAccount, environment and arguments (after `subcommand`) of
/// the container of the installed Deployment `name`, resolved as the
/// kubelet would for a pod named `pod`: Secret references read from the
/// API server, downward-API fields from the pod.
async fn container_settings(
    api: &KubeApi,
    name: &str,
    subcommand: &str,
    pod: &str,
) -> (String, Vec<(String, String)>, Vec<String>) {
    let deployment = deployment(api, name)
        .await
        .unwrap_or_else(|| panic!("the Deployment {name}"));
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some(subcommand));
    let mut env = Vec::new();
    for entry in container["env"].as_array().unwrap() {
        let variable = entry["name"].as_str().unwrap().to_owned();
        let source = &entry["valueFrom"];
        let value = if let Some(value) = entry["value"].as_str() {
            value.to_owned()
        } else if let Some(field) = source["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.namespace" => "tollgate".to_owned(),
                "metadata.name" => pod.to_owned(),
                other => panic!("{variable}: a downward-API field the test does not know: {other}"),
            }
        } else {
            let reference = &source["secretKeyRef"];
            let secret = api
                .get(
                    "v1",
                    "Secret",
                    Some("tollgate"),
                    reference["name"].as_str().expect("a Secret reference"),
                )
                .await
                .unwrap_or_else(|| panic!("the Secret of {variable}"));
            let encoded = secret.data["data"][reference["key"].as_str().unwrap()]
                .as_str()
                .unwrap();
            use base64::Engine as _;
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap(),
            )
            .unwrap()
        };
        env.push((variable, value));
    }
    (
        spec["serviceAccountName"].as_str().unwrap().to_owned(),
        env,
        args[1..].to_vec(),
    )
}

/// The Envoy of deploy/kind/envoy.yaml in front of `tollgate` (listener
/// and admin on loopback ports, the tollgate cluster at the test's
/// server, access log in a temporary directory).
fn kind_envoy(tollgate: &Tollgate) -> Envoy {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-envoy-")
        .tempdir()
        .unwrap();
    let unused_upstream = "127.0.0.1:9".parse().unwrap();
    let bootstrap = adapt_example(
        "deploy/kind/envoy.yaml",
        dir.path(),
        tollgate.grpc_addr(),
        unused_upstream,
        None,
        &["http"],
    );
    Envoy::start_bootstrap(dir, &bootstrap, None)
}

/// Asks the API server whether `user` may `verb` the `resource`
/// (`resource/subresource` for a subresource) of `group`.
async fn can(
    api: &KubeApi,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, subresource)) => (resource, Some(subresource.to_owned())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                "system:serviceaccounts:tollgate".to_owned(),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(api.client());
    reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("a review has a status")
        .allowed
}
