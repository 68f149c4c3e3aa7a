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
//!   enough. With the TLS values, the Deployment's Secret volumes are
//!   written out as files from the API server and Envoy calls the server
//!   over mutual TLS.
//! - The TLS manifests (the chart's Certificate and ServiceMonitor,
//!   deploy/tls, deploy/envoy-gateway/backend-tls.yaml) against the CRDs
//!   of cert-manager, Gateway API, Envoy Gateway and the Prometheus
//!   Operator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::Tollgate;
use support::envoy::{Envoy, UpstreamTls, adapt_example};
use support::helm::{Helm, Rendered, chart_dir, env_entry, env_value, path_str};
use support::kube::{KubeApi, dynamic_api};
use support::operator::Operator;
use support::otlp::OtlpReceiver;
use support::redis::RedisServer;
use support::tls::TestPki;

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
  tracing:
    otlpEndpoint: "http://otel-collector.monitoring:4317"
    samplerRatio: 0.05
    env: { OTEL_BSP_MAX_QUEUE_SIZE: "4096" }
  audit: { user: hashed, allowRatio: 0.001 }
serviceMonitor: { enabled: true, labels: { release: prometheus } }
grafanaDashboard: { enabled: true, annotations: { grafana_folder: tollgate } }
prometheusRule: { enabled: true, labels: { release: prometheus } }
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
        ("tls-everything.yaml", TLS_EVERYTHING),
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
        json!({ "path": "/healthz", "port": "admin", "scheme": "HTTP" })
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({ "path": "/readyz", "port": "admin", "scheme": "HTTP" })
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

/// `server.quotaLeases` becomes `--quota-leases on|off`; on by default,
/// as tollgate's own default (docs/operations.md).
#[test]
fn quota_leases_follow_their_value() {
    let helm = Helm::new();
    let env = |values: &str| {
        let rendered = helm.template(values);
        let container =
            &rendered.get("Deployment", "tollgate")["spec"]["template"]["spec"]["containers"][0];
        env_value(container, "TOLLGATE_QUOTA_LEASES").map(str::to_owned)
    };
    assert_eq!(env("").as_deref(), Some("on"));
    assert_eq!(
        env("server: { quotaLeases: false }\n").as_deref(),
        Some("off")
    );
    assert_eq!(
        env("server: { quotaLeases: true }\n").as_deref(),
        Some("on")
    );
    let refused = helm
        .try_template("server: { quotaLeases: \"off\" }\n")
        .err()
        .unwrap();
    assert!(refused.contains("quotaLeases"), "{refused}");
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

    // A ServiceMonitor per component scrapes the admin port of its
    // Service, over plain HTTP (no admin TLS here).
    for name in ["tollgate", "tollgate-operator"] {
        let monitor = rendered.get("ServiceMonitor", name);
        assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], "admin", "{monitor}");
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["scheme"], "http");
        assert!(endpoint["tlsConfig"].is_null());
        assert_eq!(
            scraped_services(&rendered, monitor),
            [name],
            "each monitor scrapes its own component"
        );
        assert!(service_port(rendered.get("Service", name), "admin").is_some());
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
    assert_schema_refuses(
        &helm,
        &[
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
            (
                "server: { tracing: { samplerRatio: 1.5 } }\n",
                "at '/server/tracing/samplerRatio'",
            ),
            (
                "server: { tracing: { otlpEndpoint: \"otel:4317\" } }\n",
                "at '/server/tracing/otlpEndpoint'",
            ),
            (
                "server: { tracing: { env: { JAVA_OPTS: x } } }\n",
                // (helm names a wrong location for property names)
                "'JAVA_OPTS' does not match pattern '^OTEL_[A-Z0-9_]+$'",
            ),
            (
                "server: { audit: { user: anonymous } }\n",
                "at '/server/audit/user'",
            ),
            (
                "server: { audit: { allowRatio: -0.1 } }\n",
                "at '/server/audit/allowRatio'",
            ),
            (
                "grafanaDashboard: { enable: true }\n",
                "at '/grafanaDashboard': additional properties 'enable' not allowed",
            ),
            (
                "prometheusRule: { labels: { release: 1 } }\n",
                "at '/prometheusRule/labels/release'",
            ),
        ],
    );
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
        "env",
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
// Observability
// ---------------------------------------------------------------------------

/// The dashboard and the alerts the chart ships are deploy/observability's
/// (which tests/observability.rs validates with promtool and against a
/// real /metrics), byte for byte, and reach the cluster unchanged: the
/// Grafana sidecar's ConfigMap holds the dashboard's JSON, the
/// PrometheusRule the rule groups, both only when switched on.
#[test]
fn the_dashboard_and_the_alerts_are_deploy_observabilitys_behind_their_toggles() {
    for file in ["grafana-dashboard.json", "prometheus-rules.yaml"] {
        let shipped = std::fs::read(chart_dir().join("files").join(file)).unwrap();
        let source =
            std::fs::read(support::repo_path(&format!("deploy/observability/{file}"))).unwrap();
        assert!(
            shipped == source,
            "charts/tollgate/files/{file} differs from deploy/observability/{file}: \
             cp deploy/observability/{file} charts/tollgate/files/"
        );
    }
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(support::repo_path(
            "deploy/observability/grafana-dashboard.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let groups: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(support::repo_path(
            "deploy/observability/prometheus-rules.yaml",
        ))
        .unwrap(),
    )
    .unwrap();

    let helm = Helm::new();
    let off = helm.template("");
    assert!(off.all("ConfigMap").is_empty(), "{:?}", off.summary());
    assert!(off.all("PrometheusRule").is_empty(), "{:?}", off.summary());

    let on = helm.template(EVERYTHING_ON);
    let config_map = on.get("ConfigMap", "tollgate-dashboard");
    let labels = &config_map["metadata"]["labels"];
    assert_eq!(labels["grafana_dashboard"], "1", "the sidecar's label");
    assert_eq!(labels["app.kubernetes.io/component"], "dashboard");
    assert_eq!(
        config_map["metadata"]["annotations"],
        json!({ "grafana_folder": "tollgate" })
    );
    assert_eq!(config_map["metadata"]["namespace"], "tollgate");
    let shipped: Value =
        serde_json::from_str(config_map["data"]["tollgate.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard, "the dashboard, unchanged");
    let text = config_map["data"]["tollgate.json"].as_str().unwrap();
    assert!(
        text.contains("{{reason}}"),
        "Grafana's legend templates survive Helm"
    );

    let rule = on.get("PrometheusRule", "tollgate");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(rule["spec"], groups, "the rule groups, unchanged");
    let alerts: BTreeSet<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for alert in [
        "TollgateDenyRateSpike",
        "TollgateStoreUnavailable",
        "TollgateKeysUnavailable",
        "TollgatePolicyCompileErrors",
        "TollgateCheckLatencyHigh",
    ] {
        assert!(alerts.contains(alert), "{alert} in {alerts:?}");
    }

    // Elsewhere, for a sidecar watching one namespace.
    let elsewhere = helm.template("grafanaDashboard: { enabled: true, namespace: monitoring }\n");
    assert_eq!(
        elsewhere.get("ConfigMap", "tollgate-dashboard")["metadata"]["namespace"],
        "monitoring"
    );
}

/// Tracing and audit values become tollgate's variables; by default the
/// server traces nothing and audits denials with the user as it is.
#[test]
fn tracing_and_audit_values_become_tollgates_variables() {
    let helm = Helm::new();
    let default = helm.template("");
    let container = server_container(&default);
    assert_eq!(env_value(container, "TOLLGATE_OTLP_ENDPOINT"), None);
    assert_eq!(env_value(container, "TOLLGATE_OTLP_SAMPLER_RATIO"), None);
    assert_eq!(env_value(container, "TOLLGATE_AUDIT_USER"), Some("plain"));
    assert_eq!(env_value(container, "TOLLGATE_AUDIT_ALLOW_RATIO"), None);

    let on = helm.template(EVERYTHING_ON);
    let container = server_container(&on);
    for (name, value) in [
        (
            "TOLLGATE_OTLP_ENDPOINT",
            "http://otel-collector.monitoring:4317",
        ),
        ("TOLLGATE_OTLP_SAMPLER_RATIO", "0.05"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
        ("TOLLGATE_AUDIT_USER", "hashed"),
        ("TOLLGATE_AUDIT_ALLOW_RATIO", "0.001"),
    ] {
        assert_eq!(env_value(container, name), Some(value), "{name}");
    }
    // A ratio of 0 is a value, not "unset".
    let zero = helm.template("server: { tracing: { samplerRatio: 0 } }\n");
    assert_eq!(
        env_value(server_container(&zero), "TOLLGATE_OTLP_SAMPLER_RATIO"),
        Some("0")
    );
}

// ---------------------------------------------------------------------------
// TLS on the server's ports
// ---------------------------------------------------------------------------

/// The SPIFFE ID deploy/tls/certificates.yaml gives the front proxy.
const EDGE_ENVOY_ID: &str = "spiffe://cluster.local/ns/edge/sa/envoy";

/// The name the chart's Certificate is issued for first, and the name
/// Envoy checks (release "tollgate" in namespace "tollgate").
const SERVICE_NAME: &str = "tollgate.tollgate.svc.cluster.local";

/// The file variables of `tollgate serve`'s TLS flags (src/config.rs).
const TLS_FILE_VARIABLES: [&str; 6] = [
    "TOLLGATE_GRPC_TLS_CERT",
    "TOLLGATE_GRPC_TLS_KEY",
    "TOLLGATE_GRPC_CLIENT_CA",
    "TOLLGATE_ADMIN_TLS_CERT",
    "TOLLGATE_ADMIN_TLS_KEY",
    "TOLLGATE_METRICS_CLIENT_CA",
];

/// Every TLS value switched on, each Secret its own.
const TLS_EVERYTHING: &str = r#"
server:
  tls:
    enabled: true
    certManager:
      enabled: true
      issuerRef: { name: tollgate-ca, kind: ClusterIssuer }
      extraDnsNames: [authz.example.com]
    clientCA: { secretName: edge-envoys-ca }
    allowedSpiffeIds:
      - spiffe://cluster.local/ns/edge/sa/envoy
      - spiffe://cluster.local/ns/envoy-gateway-system/sa/envoy-gateway
    allowedDnsNames: [envoy.edge.svc]
  adminTls: { enabled: true, secretName: tollgate-admin-tls }
  metrics: { separatePort: true, port: 9443, clientCA: { secretName: scrapers-ca } }
serviceMonitor: { enabled: true, tls: { clientSecretName: prometheus-client } }
networkPolicy:
  enabled: true
  grpcFromNamespaces: [edge]
  adminFromNamespaces: [monitoring]
"#;

/// Every `TOLLGATE_…` variable the chart gives the server and the operator
/// is one that `tollgate serve` / `tollgate operator` reads (their clap
/// definitions): a misspelt name would be ignored silently by the process.
#[test]
fn every_variable_the_chart_sets_is_one_tollgate_reads() {
    let helm = Helm::new();
    for values in [
        EVERYTHING_ON,
        TLS_EVERYTHING,
        "devRedis: { enabled: true }\nwatchNamespaces: [mobility]\n",
    ] {
        let rendered = helm.template(values);
        for (deployment, subcommand) in [("tollgate", "serve"), ("tollgate-operator", "operator")] {
            let known = variables_of(subcommand);
            let container = &rendered.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
                [0];
            for entry in container["env"].as_array().unwrap() {
                let name = entry["name"].as_str().unwrap();
                if name.starts_with("TOLLGATE_") {
                    assert!(
                        known.contains(name),
                        "{deployment}: tollgate {subcommand} reads no {name}"
                    );
                }
            }
        }
    }
    // And every TLS variable is one the chart can set.
    let rendered = helm.template(TLS_EVERYTHING);
    let container = server_container(&rendered);
    for name in TLS_FILE_VARIABLES.iter().chain(&[
        "TOLLGATE_GRPC_CLIENT_SPIFFE_IDS",
        "TOLLGATE_GRPC_CLIENT_DNS_NAMES",
        "TOLLGATE_METRICS_ADDR",
    ]) {
        assert!(env_value(container, name).is_some(), "{name} not set");
    }
}

#[test]
fn tls_values_become_tollgates_flags_on_files_of_mounted_secrets() {
    let helm = Helm::new();

    // Off by default: no variable, no volume, plain-HTTP probes.
    let rendered = helm.template("");
    let container = server_container(&rendered);
    let pod = server_pod(&rendered);
    for name in TLS_FILE_VARIABLES.iter().chain(&[
        "TOLLGATE_GRPC_CLIENT_SPIFFE_IDS",
        "TOLLGATE_GRPC_CLIENT_DNS_NAMES",
        "TOLLGATE_METRICS_ADDR",
    ]) {
        assert!(env_entry(container, name).is_none(), "{name}");
    }
    assert!(pod["volumes"].is_null() && container["volumeMounts"].is_null());
    assert!(pod["securityContext"]["fsGroup"].is_null());
    assert_eq!(probe_schemes(container), ["HTTP", "HTTP"]);
    assert!(rendered.all("Certificate").is_empty());
    assert_eq!(
        port_names(&rendered.get("Service", "tollgate")["spec"]["ports"]),
        ["grpc", "admin"]
    );

    // TLS with the defaults: the Secret <fullname>-grpc-tls, its own
    // ca.crt as the client CA (client certificates required), the allowed
    // SPIFFE ID; the admin port stays plain.
    let rendered = helm.template(&format!(
        "server: {{ tls: {{ enabled: true, allowedSpiffeIds: [\"{EDGE_ENVOY_ID}\"] }} }}\n"
    ));
    let container = server_container(&rendered);
    assert_eq!(
        mounted_files(&rendered),
        BTreeMap::from([
            ("TOLLGATE_GRPC_TLS_CERT", ("tollgate-grpc-tls", "tls.crt")),
            ("TOLLGATE_GRPC_TLS_KEY", ("tollgate-grpc-tls", "tls.key")),
            ("TOLLGATE_GRPC_CLIENT_CA", ("tollgate-grpc-tls", "ca.crt")),
        ])
    );
    assert_eq!(
        env_value(container, "TOLLGATE_GRPC_TLS_CERT"),
        Some("/etc/tollgate/tls/tls.crt")
    );
    assert_eq!(
        env_value(container, "TOLLGATE_GRPC_CLIENT_SPIFFE_IDS"),
        Some(EDGE_ENVOY_ID)
    );
    assert!(env_entry(container, "TOLLGATE_GRPC_CLIENT_DNS_NAMES").is_none());
    // The Secret files are mode 0440, readable through the pod's group.
    assert_eq!(server_pod(&rendered)["securityContext"]["fsGroup"], 65532);
    assert_eq!(probe_schemes(container), ["HTTP", "HTTP"]);
    assert!(env_entry(container, "TOLLGATE_ADMIN_TLS_CERT").is_none());
    assert!(
        rendered.all("Certificate").is_empty(),
        "the Secret is the user's"
    );

    // TLS for anyone: no client CA at all.
    let rendered =
        helm.template("server: { tls: { enabled: true, clientCA: { required: false } } }\n");
    assert_eq!(
        mounted_files(&rendered).keys().copied().collect::<Vec<_>>(),
        ["TOLLGATE_GRPC_TLS_CERT", "TOLLGATE_GRPC_TLS_KEY"]
    );

    // The admin port on the gRPC port's certificate: no second volume.
    let rendered =
        helm.template("server: { tls: { enabled: true }, adminTls: { enabled: true } }\n");
    let files = mounted_files(&rendered);
    assert_eq!(
        files["TOLLGATE_ADMIN_TLS_CERT"],
        ("tollgate-grpc-tls", "tls.crt")
    );
    assert_eq!(
        files["TOLLGATE_ADMIN_TLS_KEY"],
        ("tollgate-grpc-tls", "tls.key")
    );
    assert_eq!(
        server_pod(&rendered)["volumes"].as_array().unwrap().len(),
        1
    );
    assert_eq!(
        probe_schemes(server_container(&rendered)),
        ["HTTPS", "HTTPS"]
    );
    assert!(env_entry(server_container(&rendered), "TOLLGATE_METRICS_ADDR").is_none());

    // Everything, each Secret its own.
    let rendered = helm.template(TLS_EVERYTHING);
    let container = server_container(&rendered);
    assert_eq!(
        mounted_files(&rendered),
        BTreeMap::from([
            ("TOLLGATE_GRPC_TLS_CERT", ("tollgate-grpc-tls", "tls.crt")),
            ("TOLLGATE_GRPC_TLS_KEY", ("tollgate-grpc-tls", "tls.key")),
            ("TOLLGATE_GRPC_CLIENT_CA", ("edge-envoys-ca", "ca.crt")),
            ("TOLLGATE_ADMIN_TLS_CERT", ("tollgate-admin-tls", "tls.crt")),
            ("TOLLGATE_ADMIN_TLS_KEY", ("tollgate-admin-tls", "tls.key")),
            ("TOLLGATE_METRICS_CLIENT_CA", ("scrapers-ca", "ca.crt")),
        ])
    );
    assert_eq!(
        env_value(container, "TOLLGATE_GRPC_CLIENT_SPIFFE_IDS"),
        Some(
            "spiffe://cluster.local/ns/edge/sa/envoy,\
             spiffe://cluster.local/ns/envoy-gateway-system/sa/envoy-gateway"
        )
    );
    assert_eq!(
        env_value(container, "TOLLGATE_GRPC_CLIENT_DNS_NAMES"),
        Some("envoy.edge.svc")
    );
    let mount_paths: BTreeSet<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mount_paths,
        BTreeSet::from([
            "/etc/tollgate/tls",
            "/etc/tollgate/client-ca",
            "/etc/tollgate/admin-tls",
            "/etc/tollgate/metrics-client-ca",
        ])
    );
    assert_eq!(probe_schemes(container), ["HTTPS", "HTTPS"]);
    // The metrics listener binds the port the pod and the Service name.
    let addr = env_value(container, "TOLLGATE_METRICS_ADDR").unwrap();
    assert_eq!(addr, "0.0.0.0:9443");
    assert_eq!(container_port(container, "metrics"), Some(9443));
    let service = rendered.get("Service", "tollgate");
    let metrics = service_port(service, "metrics").expect("a metrics Service port");
    assert_eq!(
        (metrics["port"].as_u64(), &metrics["targetPort"]),
        (Some(9443), &json!("metrics"))
    );
    assert_eq!(
        service_port(service, "admin").unwrap()["appProtocol"],
        "https"
    );
    for (name, pod) in rendered.pod_specs() {
        assert_hardened(name, pod);
    }
}

/// With `certManager`, the chart asks cert-manager for the certificate
/// the server mounts, for the names Envoy reaches the Service by; for the
/// release of the examples it is exactly deploy/tls/certificates.yaml's.
#[test]
fn cert_manager_issues_the_certificate_the_server_mounts() {
    let helm = Helm::new();
    let rendered = helm.template(
        "server:\n  tls:\n    enabled: true\n    certManager:\n      enabled: true\n      \
         issuerRef: { name: tollgate-ca, kind: ClusterIssuer }\n",
    );
    let certificate = rendered.get_in("Certificate", "tollgate", "tollgate-grpc-tls");
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    let shipped = read_documents("deploy/tls/certificates.yaml");
    let example = shipped
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["metadata"]["name"] == "tollgate-grpc-tls")
        .unwrap();
    assert_eq!(
        certificate["spec"], example["spec"],
        "the chart issues what deploy/tls/certificates.yaml issues"
    );
    assert_eq!(certificate["spec"]["dnsNames"][0], SERVICE_NAME);
    assert_eq!(
        certificate["spec"]["privateKey"],
        json!({ "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" })
    );
    assert_eq!(certificate["spec"]["usages"], json!(["server auth"]));
    assert_eq!(
        mounted_files(&rendered)["TOLLGATE_GRPC_TLS_CERT"].0,
        certificate["spec"]["secretName"]
    );

    // Another release, namespace, Secret and issuer: the names follow the
    // Service.
    let rendered = helm
        .try_template_as(
            "edge-auth",
            "auth",
            "clusterDomain: corp.internal\nserver:\n  tls:\n    enabled: true\n    secretName: authz-tls\n    certManager:\n      \
             enabled: true\n      issuerRef: { name: internal-ca }\n      duration: 720h\n      \
             renewBefore: 240h\n      extraDnsNames: [authz.example.com]\n",
        )
        .unwrap();
    let service = rendered.get_in("Service", "auth", "edge-auth-tollgate");
    let name = service["metadata"]["name"].as_str().unwrap();
    let certificate = rendered.get_in("Certificate", "auth", "edge-auth-tollgate-grpc-tls");
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!([
            format!("{name}.auth.svc.corp.internal"),
            format!("{name}.auth.svc"),
            format!("{name}.auth"),
            "authz.example.com"
        ])
    );
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({ "name": "internal-ca", "kind": "Issuer", "group": "cert-manager.io" })
    );
    assert_eq!(certificate["spec"]["duration"], "720h");
    assert_eq!(certificate["spec"]["renewBefore"], "240h");
    assert_eq!(certificate["spec"]["secretName"], "authz-tls");
    let volumes = &rendered.get_in("Deployment", "auth", "edge-auth-tollgate")["spec"]["template"]
        ["spec"]["volumes"];
    assert_eq!(volumes[0]["secret"]["secretName"], "authz-tls");
}

/// /metrics on its own port with a client CA: the ServiceMonitor scrapes
/// that port over HTTPS, checks tollgate's certificate for a name it
/// carries and presents Prometheus' certificate; the NetworkPolicy opens
/// that port, not the admin port, to monitoring.
#[test]
fn metrics_over_tls_are_scraped_with_a_certificate_and_open_only_to_monitoring() {
    let helm = Helm::new();
    let rendered = helm.template(TLS_EVERYTHING);
    let monitor = rendered.get("ServiceMonitor", "tollgate");
    assert_eq!(scraped_services(&rendered, monitor), ["tollgate"]);
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["scheme"], "https");
    let tls = &endpoint["tlsConfig"];
    let dns_names = &rendered.get("Certificate", "tollgate-grpc-tls")["spec"]["dnsNames"];
    assert!(
        dns_names.as_array().unwrap().contains(&tls["serverName"]),
        "{} not in {dns_names}",
        tls["serverName"]
    );
    // The admin Secret's CA checks the metrics port's certificate (the
    // admin pair serves both ports).
    assert_eq!(
        tls["ca"],
        json!({ "secret": { "name": "tollgate-admin-tls", "key": "ca.crt" } })
    );
    assert_eq!(
        tls["cert"],
        json!({ "secret": { "name": "prometheus-client", "key": "tls.crt" } })
    );
    assert_eq!(
        tls["keySecret"],
        json!({ "name": "prometheus-client", "key": "tls.key" })
    );
    assert!(tls.get("insecureSkipVerify").is_none());
    let operator = &rendered.get("ServiceMonitor", "tollgate-operator")["spec"]["endpoints"][0];
    assert_eq!(
        (&operator["port"], &operator["scheme"]),
        (&json!("admin"), &json!("http"))
    );

    let ingress = &rendered.get("NetworkPolicy", "tollgate")["spec"]["ingress"];
    assert_eq!(
        ingress[0]["ports"],
        json!([{ "port": "grpc", "protocol": "TCP" }])
    );
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["monitoring"])
    );
    assert_eq!(
        ingress[1]["ports"],
        json!([{ "port": "metrics", "protocol": "TCP" }]),
        "monitoring reaches /metrics, not the probes' port"
    );
    assert_eq!(ingress.as_array().unwrap().len(), 2);

    // Admin TLS without a separate port: /metrics on the admin port, over
    // HTTPS, no client certificate.
    let rendered = helm.template(
        "server: { tls: { enabled: true }, adminTls: { enabled: true } }\n\
         serviceMonitor: { enabled: true, tls: { serverName: authz.internal } }\n",
    );
    let endpoint = &rendered.get("ServiceMonitor", "tollgate")["spec"]["endpoints"][0];
    assert_eq!(
        (&endpoint["port"], &endpoint["scheme"]),
        (&json!("admin"), &json!("https"))
    );
    assert_eq!(
        endpoint["tlsConfig"],
        json!({
            "serverName": "authz.internal",
            "ca": { "secret": { "name": "tollgate-grpc-tls", "key": "ca.crt" } }
        })
    );

    // A separate port without TLS: plain HTTP on `metrics`.
    let rendered = helm.template(
        "server: { metrics: { separatePort: true } }\nserviceMonitor: { enabled: true }\n\
         networkPolicy: { enabled: true, grpcFromNamespaces: [edge], adminFromNamespaces: [monitoring] }\n",
    );
    let endpoint = &rendered.get("ServiceMonitor", "tollgate")["spec"]["endpoints"][0];
    assert_eq!(
        (&endpoint["port"], &endpoint["scheme"]),
        (&json!("metrics"), &json!("http"))
    );
    assert!(endpoint["tlsConfig"].is_null());
    let container = server_container(&rendered);
    assert_eq!(
        env_value(container, "TOLLGATE_METRICS_ADDR"),
        Some("0.0.0.0:9091")
    );
    assert_eq!(container_port(container, "metrics"), Some(9091));
    assert!(env_entry(container, "TOLLGATE_METRICS_CLIENT_CA").is_none());
    assert_eq!(
        rendered.get("NetworkPolicy", "tollgate")["spec"]["ingress"][1]["ports"],
        json!([{ "port": "metrics", "protocol": "TCP" }])
    );
}

/// TLS values that cannot work are refused at install time naming them;
/// where `tollgate serve` has the same rule, the flags they would become
/// are refused by it too (exit 2): the chart fails early what the pod
/// would fail late.
#[test]
fn tls_values_that_cannot_work_are_refused_by_name_as_tollgate_refuses_them() {
    let helm = Helm::new();
    let pair: &[&str] = &[
        "--grpc-tls-cert",
        "/t/tls.crt",
        "--grpc-tls-key",
        "/t/tls.key",
    ];
    let admin_pair: &[&str] = &[
        "--admin-tls-cert",
        "/t/tls.crt",
        "--admin-tls-key",
        "/t/tls.key",
    ];
    let cases: Vec<(&str, &str, Option<Vec<&str>>)> = vec![
        (
            "server: { tls: { clientCA: { secretName: edge-ca } } }\n",
            "server.tls.clientCA.secretName is set but server.tls.enabled is false",
            Some(vec!["--grpc-client-ca", "/t/ca.crt"]),
        ),
        (
            "server: { tls: { allowedSpiffeIds: [\"spiffe://cluster.local/ns/edge/sa/envoy\"] } }\n",
            "server.tls.allowedSpiffeIds and server.tls.allowedDnsNames need server.tls.enabled",
            Some(vec!["--grpc-client-spiffe-id", EDGE_ENVOY_ID]),
        ),
        (
            "server: { tls: { enabled: true, clientCA: { required: false }, allowedDnsNames: [envoy.edge.svc] } }\n",
            "need server.tls.clientCA.required=true",
            Some([pair, &["--grpc-client-dns-name", "envoy.edge.svc"]].concat()),
        ),
        (
            "server: { tls: { enabled: true, allowedDnsNames: [\"10.0.0.1\"] } }\n",
            "server.tls.allowedDnsNames: \"10.0.0.1\" is not a DNS name",
            Some(
                [
                    pair,
                    &[
                        "--grpc-client-ca",
                        "/t/ca.crt",
                        "--grpc-client-dns-name",
                        "10.0.0.1",
                    ],
                ]
                .concat(),
            ),
        ),
        (
            "server: { tls: { enabled: true, clientCA: { required: false, secretName: edge-ca } } }\n",
            "server.tls.clientCA.secretName is set but server.tls.clientCA.required is false",
            None,
        ),
        (
            "server: { tls: { certManager: { enabled: true, issuerRef: { name: ca } } } }\n",
            "server.tls.certManager.enabled issues the gRPC port's certificate, but server.tls.enabled is false",
            None,
        ),
        (
            "server: { tls: { enabled: true, certManager: { enabled: true } } }\n",
            "server.tls.certManager.enabled needs server.tls.certManager.issuerRef.name",
            None,
        ),
        (
            "server: { adminTls: { enabled: true } }\n",
            "server.adminTls.secretName is empty, which means the gRPC port's Secret, but server.tls.enabled is false",
            None,
        ),
        (
            "server: { adminTls: { enabled: true, secretName: admin-tls }, metrics: { clientCA: { secretName: scrapers-ca } } }\n",
            "server.metrics.clientCA.secretName needs server.metrics.separatePort=true",
            Some([admin_pair, &["--metrics-client-ca", "/t/ca.crt"]].concat()),
        ),
        (
            "server: { metrics: { separatePort: true, clientCA: { secretName: scrapers-ca } } }\n",
            "server.metrics.clientCA.secretName needs server.adminTls.enabled",
            Some(vec![
                "--metrics-addr",
                "127.0.0.1:0",
                "--metrics-client-ca",
                "/t/ca.crt",
            ]),
        ),
        (
            "server: { metrics: { separatePort: true, port: 9090 } }\n",
            "server.metrics.port (9090) is already the gRPC or the admin port",
            Some(vec![
                "--admin-addr",
                "127.0.0.1:9090",
                "--metrics-addr",
                "127.0.0.1:9090",
            ]),
        ),
        (
            "server: { adminTls: { enabled: true, secretName: admin-tls }, metrics: { separatePort: true, clientCA: { secretName: scrapers-ca } } }\n\
             serviceMonitor: { enabled: true }\n",
            "serviceMonitor.enabled with server.metrics.clientCA.secretName needs serviceMonitor.tls.clientSecretName",
            None,
        ),
        (
            "serviceMonitor: { enabled: true, tls: { serverName: tollgate.tollgate.svc } }\n",
            "serviceMonitor.tls applies to a TLS admin or metrics port",
            None,
        ),
        (
            "server: { adminTls: { enabled: true, secretName: admin-tls } }\n\
             serviceMonitor: { enabled: true, tls: { clientSecretName: prometheus-client } }\n",
            "serviceMonitor.tls.clientSecretName applies with server.metrics.clientCA.secretName",
            None,
        ),
    ];
    for (values, expected, flags) in cases {
        let refused = helm
            .try_template(values)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{values}"));
        assert!(refused.contains(expected), "{values}\n→ {refused}");
        if let Some(flags) = flags {
            let (code, output) = serve_validation(&flags);
            assert_eq!(
                code,
                Some(2),
                "tollgate serve {flags:?} is not refused like {values}:\n{output}"
            );
            assert!(output.contains("invalid configuration"), "{output}");
        }
    }
}

#[test]
fn a_typo_or_a_wrong_type_under_the_tls_values_fails_naming_it() {
    let helm = Helm::new();
    assert_schema_refuses(
        &helm,
        &[
            (
                "server: { tls: { enable: true } }\n",
                "at '/server/tls': additional properties 'enable' not allowed",
            ),
            (
                "server: { tls: { certManager: { issuerRef: { namespace: cert-manager } } } }\n",
                "at '/server/tls/certManager/issuerRef': additional properties 'namespace' not allowed",
            ),
            (
                "server: { tls: { clientCa: { required: true } } }\n",
                "at '/server/tls': additional properties 'clientCa' not allowed",
            ),
            (
                "server: { tls: { clientCA: { secret: edge-ca } } }\n",
                "at '/server/tls/clientCA': additional properties 'secret' not allowed",
            ),
            (
                "server: { adminTls: { secret: admin-tls } }\n",
                "at '/server/adminTls': additional properties 'secret' not allowed",
            ),
            (
                "server: { metrics: { seperatePort: true } }\n",
                "at '/server/metrics': additional properties 'seperatePort' not allowed",
            ),
            (
                "serviceMonitor: { tls: { caSecret: x } }\n",
                "at '/serviceMonitor/tls': additional properties 'caSecret' not allowed",
            ),
            (
                "server: { tls: { enabled: \"yes\" } }\n",
                "at '/server/tls/enabled': got string, want boolean",
            ),
            (
                "server: { metrics: { port: 70000 } }\n",
                "at '/server/metrics/port'",
            ),
            (
                "server: { tls: { certManager: { duration: 90d } } }\n",
                "at '/server/tls/certManager/duration'",
            ),
            (
                "server: { tls: { secretName: My_Secret } }\n",
                "at '/server/tls/secretName'",
            ),
            (
                "server: { tls: { clientCA: { key: \"../ca.crt\" } } }\n",
                "at '/server/tls/clientCA/key'",
            ),
            (
                "server: { tls: { allowedSpiffeIds: [\"spiffe://cluster.local\"] } }\n",
                "at '/server/tls/allowedSpiffeIds/0'",
            ),
            (
                "server: { tls: { certManager: { extraDnsNames: [\"Authz.Example.com\"] } } }\n",
                "at '/server/tls/certManager/extraDnsNames/0'",
            ),
        ],
    );
}

/// The chart accepts exactly the client identities `tollgate serve`
/// accepts (the schema's patterns plus the template's last-label rule
/// against tollgate's own parser), so an identity the chart lets through
/// never stops the pod at start-up.
#[test]
fn the_chart_and_tollgate_agree_on_which_client_identities_are_valid() {
    let helm = Helm::new();
    let spiffe_ids = [
        "spiffe://cluster.local/ns/edge/sa/envoy",
        "spiffe://example.org/a",
        "spiffe://my_domain-1/x.y-z_0",
        "spiffe://td/.../x",
        "spiffe://td/a/.b",
        "envoy",
        "spiffe://cluster.local",
        "spiffe://cluster.local/",
        "spiffe://Cluster.local/a",
        "spiffe://td/a/../b",
        "spiffe://td/./b",
        "spiffe://td/a//b",
        "spiffe://td:8443/a",
        "spiffe://td/a?x=1",
        "spiffe://td/a#f",
        "spiffe:///a",
        "https://td/a",
    ];
    let long_label = "a".repeat(64);
    let long_name = format!("{}.example", vec!["b".repeat(60); 5].join("."));
    let dns_names = [
        "envoy.edge.svc",
        "Envoy.Edge.SVC",
        "gateway",
        "_grpc.example",
        "envoy.edge.svc.",
        "0xg.example",
        "12ab",
        "a-b.c",
        "10.0.0.1",
        "example.123",
        "0x1f",
        "a.0X",
        "0",
        "-envoy.edge",
        "envoy-.edge",
        "envoy..edge",
        "*.edge.svc",
        "not a name",
        "",
        long_label.as_str(),
        long_name.as_str(),
    ];
    let mut disagreements = Vec::new();
    for id in spiffe_ids {
        let tollgate = tollgate::tls::ClientIdentities::new(&[id.to_owned()], &[]).is_ok();
        let values = format!(
            "server: {{ tls: {{ enabled: true, allowedSpiffeIds: [{}] }} }}\n",
            serde_json::to_string(id).unwrap()
        );
        let chart = helm.try_template(&values).is_ok();
        if chart != tollgate {
            disagreements.push(format!(
                "SPIFFE ID {id:?}: chart {chart}, tollgate {tollgate}"
            ));
        }
    }
    for name in dns_names {
        let tollgate = tollgate::tls::ClientIdentities::new(&[], &[name.to_owned()]).is_ok();
        let values = format!(
            "server: {{ tls: {{ enabled: true, allowedDnsNames: [{}] }} }}\n",
            serde_json::to_string(name).unwrap()
        );
        let chart = helm.try_template(&values).is_ok();
        if chart != tollgate {
            disagreements.push(format!(
                "DNS name {name:?}: chart {chart}, tollgate {tollgate}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // Both kinds of answer occur (the samples test something).
    assert!(tollgate::tls::ClientIdentities::new(&[], &["envoy.edge.svc".into()]).is_ok());
    assert!(tollgate::tls::ClientIdentities::new(&[], &["10.0.0.1".into()]).is_err());
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
    // Traces to a collector and every allow audited, users hashed.
    let collector = OtlpReceiver::start();
    let values = path_str(&helm.values_file(
        "values.yaml",
        &format!(
            "redis: {{ url: \"{}\" }}\nserver:\n  tracing: {{ otlpEndpoint: \"{}\", samplerRatio: 1 }}\n  \
             audit: {{ user: hashed, allowRatio: 1 }}\n",
            redis.url(),
            collector.endpoint()
        ),
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
    // The tracing values reach tollgate: its Check spans arrive at the
    // collector, naming the app and the outcome.
    let span = collector.wait_for("the allowed Check's span", |spans| {
        spans
            .iter()
            .find(|s| {
                s.name == "envoy.service.auth.v3.Authorization/Check"
                    && s.attribute("tollgate.app") == Some("commuter-ios")
            })
            .cloned()
    });
    assert_eq!(span.service, "tollgate", "{span:?}");
    // The audit values too: the allow has its line (allowRatio 1), the
    // denial its reason.
    let audit = support::wait_for("the denial's audit line", PROPAGATE, || {
        tollgate.log_lines().into_iter().find(|line| {
            line["target"] == "tollgate::audit"
                && support::tollgate::log_field(line, "reason").and_then(Value::as_str)
                    == Some("app_credential_missing")
        })
    });
    assert_eq!(
        support::tollgate::log_field(&audit, "status").and_then(Value::as_i64),
        Some(401),
        "{audit}"
    );
    assert!(
        tollgate
            .log_lines()
            .iter()
            .any(|line| line["target"] == "tollgate::audit"
                && support::tollgate::log_field(line, "app").and_then(Value::as_str)
                    == Some("commuter-ios")),
        "the sampled allow is audited"
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
    for crd in ["servicemonitors.yaml", "prometheusrules.yaml"] {
        api.install_crd_yaml(&third_party_crd(crd, None)).await;
    }
    let helm = Helm::new();
    api.namespace("tollgate").await;
    let installed = install_chart(&helm, &api, "tollgate", "tollgate", EVERYTHING_ON);
    assert!(installed.success, "{}", installed.output());
    for (version, kind, name) in [
        ("monitoring.coreos.com/v1", "ServiceMonitor", "tollgate"),
        ("monitoring.coreos.com/v1", "PrometheusRule", "tollgate"),
        ("v1", "ConfigMap", "tollgate-dashboard"),
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

/// The TLS manifests, checked server-side against their projects' own
/// CRDs (read by the setup from the Go modules of cert-manager, Envoy
/// Gateway, Gateway API and the Prometheus Operator), with strict field
/// validation: deploy/tls/certificates.yaml, deploy/envoy-gateway/
/// backend-tls.yaml, and the chart installed with every TLS value on (its
/// Certificate, ServiceMonitor with a tlsConfig, NetworkPolicy), whose
/// server pod is admitted under the "restricted" Pod Security Standard
/// with its Secret volumes. Not checked here: what cert-manager and Envoy
/// Gateway's controllers make of them (neither runs).
#[tokio::test(flavor = "multi_thread")]
async fn tls_manifests_are_accepted_by_their_crds() {
    let api = KubeApi::start_without_crds().await;
    for namespace in ["cert-manager", "tollgate", "edge", "envoy-gateway-system"] {
        api.namespace(namespace).await;
    }
    api.apply(&restricted_namespace("auth")).await;
    for file in [
        "cert-manager-certificates.yaml",
        "cert-manager-issuers.yaml",
        "cert-manager-clusterissuers.yaml",
        "envoy-gateway-envoyproxies.yaml",
        "gateway-api-backendtlspolicies.yaml",
        "gateway-api-gatewayclasses.yaml",
        "servicemonitors.yaml",
    ] {
        api.install_crd_yaml(&third_party_crd(file, None)).await;
    }

    let certificates =
        std::fs::read_to_string(support::repo_path("deploy/tls/certificates.yaml")).unwrap();
    let applied = api
        .try_apply_strict(&certificates)
        .await
        .unwrap_or_else(|e| panic!("deploy/tls/certificates.yaml refused: {e}"));
    assert_eq!(applied.len(), 5, "two ClusterIssuers, three Certificates");
    let backend_tls =
        std::fs::read_to_string(support::repo_path("deploy/envoy-gateway/backend-tls.yaml"))
            .unwrap();
    let applied = api
        .try_apply_strict(&backend_tls)
        .await
        .unwrap_or_else(|e| panic!("deploy/envoy-gateway/backend-tls.yaml refused: {e}"));
    let kinds: BTreeSet<String> = applied
        .iter()
        .map(|o| o.types.as_ref().unwrap().kind.clone())
        .collect();
    assert_eq!(
        kinds,
        [
            "BackendTLSPolicy",
            "Certificate",
            "EnvoyProxy",
            "GatewayClass"
        ]
        .map(str::to_owned)
        .into()
    );
    // The validation is real: each CRD refuses a broken copy.
    let broken = certificates.replace("  usages: [client auth]\n", "  usages: [client-auth]\n");
    assert_ne!(broken, certificates);
    let refused = api.try_apply_strict(&broken).await.unwrap_err().to_string();
    assert!(refused.contains("client-auth"), "{refused}");
    let broken = backend_tls.replace("  rotationPolicy: Always", "  rotation: Always");
    assert_ne!(broken, backend_tls);
    let refused = api.try_apply_strict(&broken).await.unwrap_err().to_string();
    assert!(
        refused.contains(".spec.privateKey.rotation: field not declared in schema"),
        "{refused}"
    );
    let no_ca = backend_tls.replace(
        "    caCertificateRefs:\n      - group: \"\"\n        kind: Secret\n        name: tollgate-grpc-tls\n",
        "",
    );
    assert_ne!(no_ca, backend_tls);
    let refused = api.try_apply_strict(&no_ca).await.unwrap_err().to_string();
    assert!(
        refused.contains("must specify either CACertificateRefs or WellKnownCACertificates"),
        "{refused}"
    );

    // The chart with every TLS value on, in a namespace of its own (the
    // Certificate tollgate/tollgate-grpc-tls above is deploy/tls's).
    let helm = Helm::new();
    let installed = install_chart(&helm, &api, "tollgate", "auth", TLS_EVERYTHING);
    assert!(installed.success, "{}", installed.output());
    assert!(
        installed
            .stdout
            .contains("Client certificates:       required"),
        "the NOTES say who may call:\n{}",
        installed.stdout
    );
    let certificate = api
        .get(
            "cert-manager.io/v1",
            "Certificate",
            Some("auth"),
            "tollgate-grpc-tls",
        )
        .await
        .expect("the chart's Certificate");
    assert_eq!(
        certificate.data["spec"]["dnsNames"][0],
        "tollgate.auth.svc.cluster.local"
    );
    let monitor = api
        .get(
            "monitoring.coreos.com/v1",
            "ServiceMonitor",
            Some("auth"),
            "tollgate",
        )
        .await
        .expect("the server's ServiceMonitor");
    assert_eq!(
        monitor.data["spec"]["endpoints"][0]["tlsConfig"]["keySecret"]["name"], "prometheus-client",
        "the tlsConfig is stored as rendered, not pruned"
    );
    assert!(
        api.get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            Some("auth"),
            "tollgate"
        )
        .await
        .is_some()
    );
    let template =
        deployment_in(&api, "auth", "tollgate").await.unwrap()["spec"]["template"].clone();
    assert_eq!(template["spec"]["volumes"].as_array().unwrap().len(), 4);
    let admitted = create_pod_dry_run(&api, "auth", "tollgate", &template).await;
    assert!(admitted.is_ok(), "{admitted:?}");
}

/// The user's story with TLS: Secrets made by the test with rcgen (as
/// cert-manager would write them), the chart installed with TLS on both
/// ports and a metrics port requiring a client certificate; then `tollgate
/// serve` runs with the installed Deployment's environment, its Secret
/// volumes resolved to files from the API server, and the chart's
/// ServiceAccount token, and the real Envoy calls it over mutual TLS: a
/// request is decided, an Envoy without an allowed certificate fails
/// closed. After an upgrade to a client CA of its own, only that CA's
/// certificates are accepted.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_calls_the_charts_server_over_mutual_tls() {
    let api = KubeApi::start_without_crds().await;
    api.namespace("tollgate").await;
    api.namespace("mobility").await;
    let helm = Helm::new();
    let files = tempfile::Builder::new()
        .prefix("chart-tls-")
        .tempdir()
        .unwrap();

    // tollgate's CA (its certificate and, by default, the Envoys'), the
    // scrapers' CA, and the Envoys' CA of the second act.
    let pki = TestPki::generate();
    let scrapers = TestPki::generate();
    let edge = TestPki::generate();
    let serving = pki.server_named(SERVICE_NAME);
    api.apply(&secret_yaml(
        "tollgate-grpc-tls",
        "kubernetes.io/tls",
        &[
            ("tls.crt", &serving.cert_pem),
            ("tls.key", &serving.key_pem),
            ("ca.crt", pki.ca_pem()),
        ],
    ))
    .await;
    api.apply(&secret_yaml(
        "tollgate-scrapers-ca",
        "Opaque",
        &[("ca.crt", scrapers.ca_pem())],
    ))
    .await;
    api.apply(&secret_yaml(
        "edge-envoys-ca",
        "Opaque",
        &[("ca.crt", edge.ca_pem())],
    ))
    .await;

    let values = format!(
        "server:\n  tls:\n    enabled: true\n    allowedSpiffeIds: [\"{EDGE_ENVOY_ID}\"]\n  \
         adminTls: {{ enabled: true }}\n  metrics: {{ separatePort: true, clientCA: {{ secretName: \
         tollgate-scrapers-ca }} }}\n"
    );
    let installed = install_chart(&helm, &api, "tollgate", "tollgate", &values);
    assert!(installed.success, "{}", installed.output());
    api.wait_established([
        "apipolicies.tollgate.dev".to_owned(),
        "appregistrations.tollgate.dev".to_owned(),
    ])
    .await;
    let quickstart =
        std::fs::read_to_string(support::repo_path("deploy/examples/quickstart.yaml")).unwrap();
    api.apply(&quickstart).await;

    let (account, env, args) = server_settings(&api).await;
    let env = mount_secret_volumes(&api, "tollgate", env, &files.path().join("act-1")).await;
    let token = api.service_account_kubeconfig("tollgate", &account).await;
    // The listeners on loopback: the harness's --grpc-addr and
    // --admin-addr, and --metrics-addr, win over the chart's 0.0.0.0
    // variables (flags win over variables).
    let mut args = args;
    args.extend(["--metrics-addr".to_owned(), "127.0.0.1:0".to_owned()]);
    let scraper = scrapers.client(
        "prometheus",
        Some("spiffe://cluster.local/ns/monitoring/sa/prometheus"),
    );
    // Probes and metrics: trusting tollgate's CA, presenting the scraper's
    // certificate when asked (only the metrics port asks).
    let tollgate = Tollgate::start_kubernetes_admin_tls(
        &token,
        &env,
        &strs(&args),
        Some(pki.client_config(Some(&scraper))),
    );
    let listening = tollgate.wait_for_log("listening", PROPAGATE);
    assert_eq!(
        support::tollgate::log_field(&listening, "grpc_tls").unwrap(),
        "mutual"
    );
    assert_eq!(
        support::tollgate::log_field(&listening, "admin_tls").unwrap(),
        "on"
    );

    let envoy_id = pki.client("envoy", Some(EDGE_ENVOY_ID));
    let envoy = tls_envoy(&tollgate, &pki, Some(envoy_id.write(files.path(), "envoy")));
    let allowed = envoy
        .get("/v1/bikes")
        .host("api.bikes.example")
        .header("x-api-key", QUICKSTART_KEY)
        .send();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(allowed.header("x-upstream-saw-app"), Some("commuter-ios"));
    let denied = envoy.get("/v1/bikes").host("api.bikes.example").send();
    assert_eq!(
        (denied.status, denied.header("x-tollgate-reason")),
        (401, Some("app_credential_missing")),
        "decided by tollgate"
    );
    assert!(handshakes(&tollgate, "grpc", "accepted") >= 1.0);
    drop(envoy);

    // Without a certificate, or with one of another identity from the same
    // CA: Envoy fails closed, tollgate counts why.
    let shop = pki.client("shop", Some("spiffe://cluster.local/ns/shop/sa/api"));
    for (client, result) in [
        (None, "no_client_certificate"),
        (
            Some(shop.write(files.path(), "shop")),
            "identity_not_allowed",
        ),
    ] {
        let envoy = tls_envoy(&tollgate, &pki, client);
        let response = envoy
            .get("/v1/bikes")
            .host("api.bikes.example")
            .header("x-api-key", QUICKSTART_KEY)
            .send();
        assert_eq!(response.status, 503, "{result}: Envoy fails closed");
        assert_eq!(response.header("x-tollgate-reason"), None);
        until_sync(&format!("a {result} handshake"), || {
            (handshakes(&tollgate, "grpc", result) >= 1.0).then_some(())
        });
    }

    // Probes need no certificate (the kubelet has none) but TLS; metrics
    // need the scraper's.
    let no_certificate = pki.client_config(None);
    let probe = support::Request::new(tollgate.admin_addr(), "GET", "/readyz")
        .with_tls(no_certificate.clone())
        .send();
    assert_eq!(probe.status, 200);
    assert!(
        support::Request::new(tollgate.admin_addr(), "GET", "/readyz")
            .try_send()
            .is_err(),
        "plain HTTP on the admin port"
    );
    assert!(
        support::Request::new(tollgate.metrics_addr(), "GET", "/metrics")
            .with_tls(no_certificate)
            .try_send()
            .is_err(),
        "metrics without the scraper's certificate"
    );
    until_sync("a refused scrape counted", || {
        (handshakes(&tollgate, "metrics", "no_client_certificate") >= 1.0).then_some(())
    });
    drop(tollgate);

    // Act 2: the Envoys' own CA (a Secret of its own) and a DNS name.
    let values = path_str(&helm.values_file(
        "act-2.yaml",
        "server:\n  tls:\n    enabled: true\n    clientCA: { secretName: edge-envoys-ca }\n    \
         allowedDnsNames: [envoy.edge.svc]\n",
    ));
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
    let (_, env, args) = server_settings(&api).await;
    assert!(env.iter().all(|(k, _)| k != "TOLLGATE_METRICS_ADDR"));
    let env = mount_secret_volumes(&api, "tollgate", env, &files.path().join("act-2")).await;
    let tollgate = Tollgate::start_kubernetes_with_env(&token, &env, &strs(&args));
    let listening = tollgate.wait_for_log("listening", PROPAGATE);
    assert_eq!(
        support::tollgate::log_field(&listening, "grpc_tls").unwrap(),
        "mutual"
    );
    assert_eq!(
        support::tollgate::log_field(&listening, "admin_tls").unwrap(),
        "off"
    );
    let edge_envoy = edge.client_dns("envoy.edge.svc");
    let envoy = tls_envoy(
        &tollgate,
        &pki,
        Some(edge_envoy.write(files.path(), "edge-envoy")),
    );
    let allowed = envoy
        .get("/v1/bikes")
        .host("api.bikes.example")
        .header("x-api-key", QUICKSTART_KEY)
        .send();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    drop(envoy);
    // The first act's certificate is from tollgate's CA, no longer the
    // client CA.
    let envoy = tls_envoy(&tollgate, &pki, Some(envoy_id.write(files.path(), "envoy")));
    let refused = envoy
        .get("/v1/bikes")
        .host("api.bikes.example")
        .header("x-api-key", QUICKSTART_KEY)
        .send();
    assert_eq!(refused.status, 503);
    until_sync("a certificate_rejected handshake", || {
        (handshakes(&tollgate, "grpc", "certificate_rejected") >= 1.0).then_some(())
    });
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

/// Each `(values, expected)`: helm refuses the values by the schema, its
/// message containing `expected` (where the bad value is).
fn assert_schema_refuses(helm: &Helm, cases: &[(&str, &str)]) {
    for (values, expected) in cases {
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

/// The `TOLLGATE_…` variables `tollgate <subcommand>` reads, from its
/// clap definition.
fn variables_of(subcommand: &str) -> BTreeSet<String> {
    use clap::CommandFactory as _;
    let cli = tollgate::cli::Cli::command();
    let command = cli
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("no subcommand {subcommand}"));
    command
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// The server Deployment's pod spec (release "tollgate").
fn server_pod(rendered: &Rendered) -> &Value {
    &rendered.get("Deployment", "tollgate")["spec"]["template"]["spec"]
}

fn server_container(rendered: &Rendered) -> &Value {
    &server_pod(rendered)["containers"][0]
}

/// The schemes of the liveness and readiness probes.
fn probe_schemes(container: &Value) -> Vec<&str> {
    ["livenessProbe", "readinessProbe"]
        .iter()
        .map(|probe| {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["port"], "admin", "{probe}");
            get["scheme"].as_str().unwrap_or("HTTP")
        })
        .collect()
}

fn port_names(ports: &Value) -> Vec<&str> {
    ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect()
}

fn container_port(container: &Value, name: &str) -> Option<u64> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["containerPort"]
        .as_u64()
}

fn service_port<'a>(service: &'a Value, name: &str) -> Option<&'a Value> {
    service["spec"]["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// The Services a ServiceMonitor's selector picks, by name.
fn scraped_services<'a>(rendered: &'a Rendered, monitor: &Value) -> Vec<&'a str> {
    rendered
        .all("Service")
        .into_iter()
        .filter(|s| label_selector_matches(&monitor["spec"]["selector"], &s["metadata"]["labels"]))
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect()
}

/// The server's TLS file variables, each resolved to the (Secret, key)
/// the kubelet would put at that path: the variable's directory is a
/// volume mount (read-only, never subPath) of a whole Secret (mode 0440).
/// Panics when a variable points at a directory nothing is mounted at.
fn mounted_files(rendered: &Rendered) -> BTreeMap<&'static str, (&str, &str)> {
    let pod = server_pod(rendered);
    let container = &pod["containers"][0];
    let mut files = BTreeMap::new();
    for variable in TLS_FILE_VARIABLES {
        let Some(path) = env_value(container, variable) else {
            continue;
        };
        let (dir, file) = path.rsplit_once('/').unwrap();
        let mount = container["volumeMounts"]
            .as_array()
            .and_then(|mounts| mounts.iter().find(|m| m["mountPath"] == dir))
            .unwrap_or_else(|| panic!("{variable}={path}: nothing is mounted at {dir}"));
        assert_eq!(mount["readOnly"], true, "{variable}");
        assert!(
            mount["subPath"].is_null(),
            "{variable}: a subPath mount is never updated when the Secret is renewed"
        );
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        let secret = &volume["secret"];
        assert!(
            secret["items"].is_null(),
            "every key of the Secret is a file"
        );
        assert_eq!(secret["defaultMode"], 0o440, "{variable}");
        files.insert(
            variable,
            (
                secret["secretName"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{variable}: not a Secret volume: {volume}")),
                file,
            ),
        );
    }
    files
}

/// Runs `tollgate serve` with `flags` (listeners on loopback unless the
/// flags say otherwise) as far as its configuration check: the exit code
/// and what it printed. A configuration it accepts fails later, reading
/// the missing policy file.
fn serve_validation(flags: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .arg("serve")
        .args(["--policy-file", &path_str(&dir.path().join("missing.yaml"))]);
    for (flag, addr) in [
        ("--grpc-addr", "127.0.0.1:0"),
        ("--admin-addr", "127.0.0.1:0"),
    ] {
        if !flags.contains(&flag) {
            command.args([flag, addr]);
        }
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    let log = std::fs::File::create(dir.path().join("output")).unwrap();
    let mut child = command
        .args(flags)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PROPAGATE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tollgate serve {flags:?} did not exit within {PROPAGATE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(dir.path().join("output")).unwrap();
    (status.code(), output)
}

/// A Secret in namespace `tollgate` holding `files`.
fn secret_yaml(name: &str, kind: &str, files: &[(&str, &str)]) -> String {
    use base64::Engine as _;
    let data: serde_json::Map<String, Value> = files
        .iter()
        .map(|(key, text)| {
            (
                (*key).to_owned(),
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            )
        })
        .collect();
    // JSON is YAML.
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": "tollgate" },
        "type": kind,
        "data": data,
    })
    .to_string()
}

/// The Secret volumes of the installed server Deployment, resolved as the
/// kubelet would: each Secret (read from the API server) written as one
/// file per key under `root/<volume>`. Returns `env` with every path
/// under a mount pointing at those files; a variable pointing under
/// /etc/tollgate at nothing mounted fails the test.
async fn mount_secret_volumes(
    api: &KubeApi,
    namespace: &str,
    env: Vec<(String, String)>,
    root: &std::path::Path,
) -> Vec<(String, String)> {
    use base64::Engine as _;
    let deployment = deployment_in(api, namespace, "tollgate").await.unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let mut mounts = Vec::new();
    for mount in pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(mount["subPath"].is_null(), "{mount}");
        assert_eq!(mount["readOnly"], true, "{mount}");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let source = &volume["secret"];
        assert!(source["items"].is_null(), "{volume}");
        let name = source["secretName"].as_str().expect("a Secret volume");
        // Without the Secret the kubelet never starts the container.
        let secret = api
            .get("v1", "Secret", Some(namespace), name)
            .await
            .unwrap_or_else(|| panic!("the Secret {name} of volume {}", volume["name"]));
        let dir = root.join(volume["name"].as_str().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        for (key, encoded) in secret.data["data"].as_object().unwrap() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_str().unwrap())
                .unwrap();
            std::fs::write(dir.join(key), bytes).unwrap();
        }
        mounts.push((mount["mountPath"].as_str().unwrap().to_owned(), dir));
    }
    env.into_iter()
        .map(|(variable, value)| {
            let local = mounts.iter().find_map(|(path, dir)| {
                value
                    .strip_prefix(&format!("{path}/"))
                    .map(|file| dir.join(file))
            });
            match local {
                Some(file) => (variable, path_str(&file)),
                None => {
                    assert!(
                        !value.starts_with("/etc/tollgate"),
                        "{variable}={value}: no volume is mounted there"
                    );
                    (variable, value)
                }
            }
        })
        .collect()
}

/// The Envoy of deploy/kind/envoy.yaml in front of `tollgate`, its
/// tollgate cluster over TLS: checking tollgate's certificate against
/// `pki`'s CA for the Service's name, presenting `client` (cert, key)
/// when given.
fn tls_envoy(
    tollgate: &Tollgate,
    pki: &TestPki,
    client: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> Envoy {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-envoy-")
        .tempdir()
        .unwrap();
    let ca = pki.write_ca(dir.path(), "tollgate-ca.crt");
    let unused_upstream = "127.0.0.1:9".parse().unwrap();
    let mut bootstrap = adapt_example(
        "deploy/kind/envoy.yaml",
        dir.path(),
        tollgate.grpc_addr(),
        unused_upstream,
        None,
        &["http"],
    );
    let cluster = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "tollgate")
        .unwrap();
    cluster["transport_socket"] = UpstreamTls {
        ca,
        client,
        server_name: SERVICE_NAME.to_owned(),
    }
    .transport_socket();
    Envoy::start_bootstrap(dir, &bootstrap, None)
}

/// The handshakes on `listener` that ended with `result`.
fn handshakes(tollgate: &Tollgate, listener: &str, result: &str) -> f64 {
    tollgate.metric(
        "tollgate_tls_handshakes_total",
        &[("listener", listener), ("result", result)],
    )
}

/// [`until`] for blocking probes.
fn until_sync<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    support::wait_for(what, PROPAGATE, probe)
}
