//! `tollgate serve` configuration: one clap-derived struct, every flag also
//! an environment variable `TOLLGATE_…`, validated once at start-up.
//!
//! Tests build [`ServeConfig`] values directly (`ServeConfig::parse_from`
//! or field by field). `Debug` is safe to log: the only secrets (Redis URLs
//! with passwords) live in [`crate::store::StoreArgs`], whose URL type
//! redacts them; TLS keys are given as paths and read by [`crate::tls`],
//! never held here. Any future secret flag must use a redacting type too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::admission::Ipv6Prefix;
use crate::origin::TrustedOrigin;
use crate::pipeline::{DefaultDecision, Settings};
use crate::policy::duration::parse_duration;
use crate::policy::source::kubernetes::DEFAULT_SECRET_LABEL;
use crate::telemetry::LogFormat;
use crate::tls::{ClientIdentities, IdentityError, Role, TlsFiles, TlsSettings};

/// Most trusted proxy hops accepted: more is a configuration mistake.
pub const MAX_TRUSTED_HOPS: u8 = 16;
/// Longest drain a shutdown may wait (Kubernetes' default grace period is
/// 30 s; a drain longer than that is killed anyway).
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The flags of `tollgate serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeConfig {
    /// Policy file (YAML, several documents: ApiPolicy, AppRegistration,
    /// v1 Secret). Repeat for several files; the variable takes a
    /// comma-separated list.
    #[arg(
        long = "policy-file",
        env = "TOLLGATE_POLICY_FILE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub policy_files: Vec<PathBuf>,

    /// Watch the ApiPolicy and AppRegistration custom resources, and the
    /// Secrets carrying the secret label, through the Kubernetes API
    /// (exclusive with --policy-file).
    #[arg(long, env = "TOLLGATE_KUBERNETES")]
    pub kubernetes: bool,

    #[command(flatten)]
    pub kube: KubernetesArgs,

    /// Address of the ext_authz gRPC listener (port 0 picks a free port;
    /// the bound address is logged as `grpc_addr`).
    #[arg(long, env = "TOLLGATE_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin HTTP listener: /healthz, /readyz, /metrics
    /// (port 0 picks a free port; logged as `admin_addr`).
    #[arg(long, env = "TOLLGATE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,

    /// Serve /metrics on this address instead of the admin port, which
    /// then answers /healthz and /readyz only: probes need no client
    /// certificate while metrics can be restricted (`--metrics-client-ca`,
    /// a NetworkPolicy). Logged as `metrics_addr`.
    #[arg(long, env = "TOLLGATE_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// TLS and client certificates on the listeners.
    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub decision: DecisionArgs,

    /// How long in-flight checks may take to finish on SIGTERM/SIGINT,
    /// after readiness has failed (e.g. 5s, 500ms).
    #[arg(
        long,
        env = "TOLLGATE_DRAIN_TIMEOUT",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub drain_timeout: Duration,

    /// Per-app metrics (`tollgate_app_checks_total{app,outcome}`) for at
    /// most this many distinct apps; later apps share `app="_other"`.
    /// 0 (default) turns them off.
    #[arg(
        long,
        env = "TOLLGATE_METRICS_APP_LABELS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub metrics_app_labels: usize,

    /// The store: `--redis`, `--redis-cluster`, `--store-timeout`…
    /// (absent `--redis`: in-memory, single replica).
    #[command(flatten)]
    pub store: crate::store::StoreArgs,

    /// Traces: `--otlp-endpoint`, `--otlp-sampler-ratio` and `OTEL_*`.
    #[command(flatten)]
    pub trace: crate::telemetry::trace::TraceArgs,

    /// The audit log: `--audit-user`, `--audit-allow-ratio`.
    #[command(flatten)]
    pub audit: crate::telemetry::audit::AuditArgs,
}

/// TLS on tollgate's own listeners
/// (`docs/operations.md#tls-and-client-certificates`). Files are
/// PEM and are reloaded when they change (a rotated Kubernetes Secret).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// Certificate chain of the gRPC port (PEM, leaf first). With
    /// `--grpc-tls-key`, the port serves TLS 1.3/1.2 only, HTTP/2 by ALPN.
    #[arg(long, env = "TOLLGATE_GRPC_TLS_CERT", value_name = "PATH")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// Private key of the gRPC port's certificate (PEM: PKCS#8, PKCS#1 or
    /// SEC1).
    #[arg(long, env = "TOLLGATE_GRPC_TLS_KEY", value_name = "PATH")]
    pub grpc_tls_key: Option<PathBuf>,

    /// CA certificates (PEM) of the clients allowed to call `Check`: a
    /// client certificate issued by one of them is required.
    #[arg(long, env = "TOLLGATE_GRPC_CLIENT_CA", value_name = "PATH")]
    pub grpc_client_ca: Option<PathBuf>,

    /// Only clients whose certificate carries this SPIFFE ID (URI SAN).
    /// Repeat for several; the variable takes a comma-separated list.
    #[arg(
        long = "grpc-client-spiffe-id",
        env = "TOLLGATE_GRPC_CLIENT_SPIFFE_IDS",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub grpc_client_spiffe_ids: Vec<String>,

    /// Only clients whose certificate carries this DNS name (DNS SAN).
    /// Repeat for several; the variable takes a comma-separated list.
    #[arg(
        long = "grpc-client-dns-name",
        env = "TOLLGATE_GRPC_CLIENT_DNS_NAMES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub grpc_client_dns_names: Vec<String>,

    /// Certificate chain of the admin port (and of `--metrics-addr`).
    #[arg(long, env = "TOLLGATE_ADMIN_TLS_CERT", value_name = "PATH")]
    pub admin_tls_cert: Option<PathBuf>,

    /// Private key of the admin port's certificate.
    #[arg(long, env = "TOLLGATE_ADMIN_TLS_KEY", value_name = "PATH")]
    pub admin_tls_key: Option<PathBuf>,

    /// CA certificates (PEM) of the scrapers allowed to read
    /// `--metrics-addr` (needs it and the admin TLS flags).
    #[arg(long, env = "TOLLGATE_METRICS_CLIENT_CA", value_name = "PATH")]
    pub metrics_client_ca: Option<PathBuf>,
}

/// The TLS settings of each listener; `None` serves plaintext.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPlan {
    pub grpc: Option<TlsSettings>,
    pub admin: Option<TlsSettings>,
    pub metrics: Option<TlsSettings>,
}

impl TlsArgs {
    /// The settings these flags describe; `metrics_addr` says whether the
    /// metrics listener exists.
    pub fn plan(&self, metrics_addr: Option<SocketAddr>) -> Result<TlsPlan, ConfigError> {
        let grpc = pair("grpc", &self.grpc_tls_cert, &self.grpc_tls_key)?;
        let admin = pair("admin", &self.admin_tls_cert, &self.admin_tls_key)?;
        let listed =
            !self.grpc_client_spiffe_ids.is_empty() || !self.grpc_client_dns_names.is_empty();
        if self.grpc_client_ca.is_some() && grpc.is_none() {
            return Err(ConfigError::ClientCaWithoutTls("grpc"));
        }
        if listed && self.grpc_client_ca.is_none() {
            return Err(ConfigError::IdentitiesWithoutClientCa);
        }
        if self.metrics_client_ca.is_some() {
            if metrics_addr.is_none() {
                return Err(ConfigError::MetricsClientCaWithoutMetricsAddr);
            }
            if admin.is_none() {
                return Err(ConfigError::ClientCaWithoutTls("metrics"));
            }
        }
        let clients =
            ClientIdentities::new(&self.grpc_client_spiffe_ids, &self.grpc_client_dns_names)?;
        let settings =
            |role, (cert, key): (PathBuf, PathBuf), client_ca: &Option<PathBuf>, clients| {
                TlsSettings {
                    role,
                    files: TlsFiles {
                        cert,
                        key,
                        client_ca: client_ca.clone(),
                    },
                    clients,
                }
            };
        Ok(TlsPlan {
            grpc: grpc.map(|files| settings(Role::Grpc, files, &self.grpc_client_ca, clients)),
            metrics: admin
                .clone()
                .filter(|_| metrics_addr.is_some())
                .map(|files| {
                    settings(
                        Role::Metrics,
                        files,
                        &self.metrics_client_ca,
                        ClientIdentities::default(),
                    )
                }),
            // Probes cannot present a certificate: the admin port never
            // asks for one.
            admin: admin
                .map(|files| settings(Role::Admin, files, &None, ClientIdentities::default())),
        })
    }
}

/// Both halves of a certificate pair, or neither.
fn pair(
    listener: &'static str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::HalfPair {
            given: format!("--{listener}-tls-cert"),
            missing: format!("--{listener}-tls-key"),
        }),
        (None, Some(_)) => Err(ConfigError::HalfPair {
            given: format!("--{listener}-tls-key"),
            missing: format!("--{listener}-tls-cert"),
        }),
    }
}

/// How to reach and what to watch in the Kubernetes API (`serve
/// --kubernetes`, `operator`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubernetesArgs {
    /// With --kubernetes: a namespace to watch (repeat for several; the
    /// variable takes a comma-separated list). Absent: all namespaces.
    #[arg(
        long = "namespace",
        env = "TOLLGATE_NAMESPACES",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// With --kubernetes: the label selector (`key=value` or `key`) of the
    /// Secrets tollgate reads. A Secret that policies reference but that
    /// lacks this label is reported as not found.
    #[arg(long, env = "TOLLGATE_SECRET_LABEL", default_value = DEFAULT_SECRET_LABEL, value_name = "SELECTOR")]
    pub secret_label: String,

    /// With --kubernetes: a kubeconfig file. Absent: `KUBECONFIG`,
    /// `~/.kube/config`, else the in-cluster ServiceAccount.
    #[arg(long, env = "TOLLGATE_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

impl KubernetesArgs {
    /// Checks namespaces and the secret label.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for namespace in &self.namespaces {
            if !is_dns_label(namespace) {
                return Err(ConfigError::Namespace(namespace.clone()));
            }
        }
        check_label_selector(&self.secret_label)
            .map_err(|why| ConfigError::SecretLabel(self.secret_label.clone(), why))
    }
}

/// `key=value` or `key`, with Kubernetes' label syntax: the key an
/// optional DNS-subdomain prefix and `/`, then a name of up to 63
/// characters; the value up to 63 characters. A typo here would make
/// every Secret "not found", so it is refused at start-up.
fn check_label_selector(selector: &str) -> Result<(), &'static str> {
    let (key, value) = match selector.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (selector, None),
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let label_name = |text: &str| {
        let bytes = text.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if let Some(prefix) = prefix
        && (prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return Err("the key's prefix must be a DNS subdomain");
    }
    if !label_name(name) {
        return Err("the key must be 1 to 63 letters, digits, '-', '_' or '.'");
    }
    if let Some(value) = value
        && !value.is_empty()
        && !label_name(value)
    {
        return Err("the value must be at most 63 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// RFC 1123 label: lower-case letters, digits and '-', 1 to 63.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Logging flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// `text` for people, `json` for log collectors (one object per line).
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A `tracing` filter such as `info` or `tollgate=debug,info`. Absent:
    /// `RUST_LOG`, else `info`.
    #[arg(long, env = "TOLLGATE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The decision settings shared by `serve` and `check`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DecisionArgs {
    /// How the client address and external scheme are known: `envoy` (the
    /// connection Envoy saw) or `forwarded` (X-Forwarded-For/-Proto written
    /// by trusted proxies in front of Envoy).
    #[arg(long, env = "TOLLGATE_TRUSTED_ORIGIN", value_enum, default_value_t = OriginMode::Envoy)]
    pub trusted_origin: OriginMode,

    /// With `--trusted-origin forwarded`: how many proxies (Envoy
    /// included) append to X-Forwarded-For. Default 1.
    #[arg(long, env = "TOLLGATE_TRUSTED_HOPS", value_name = "N")]
    pub trusted_hops: Option<u8>,

    /// Select policies only by the `tollgate.dev/policy` context extension;
    /// never by host.
    #[arg(long, env = "TOLLGATE_REQUIRE_POLICY_EXTENSION")]
    pub require_policy_extension: bool,

    /// What a request no policy matches gets.
    #[arg(long, env = "TOLLGATE_DEFAULT_DECISION", value_enum, default_value_t = DefaultDecisionArg::Deny)]
    pub default_decision: DefaultDecisionArg,

    /// Limits count an IPv6 client by its network of this many bits (32 to
    /// 128): one subscriber usually holds a whole /64.
    #[arg(
        long,
        env = "TOLLGATE_IPV6_LIMIT_PREFIX",
        default_value_t = 64,
        value_name = "BITS"
    )]
    pub ipv6_limit_prefix: u8,
}

/// `--trusted-origin`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OriginMode {
    #[default]
    Envoy,
    Forwarded,
}

/// `--default-decision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultDecisionArg {
    #[default]
    Deny,
    Allow,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "no policy source: give --policy-file PATH (or TOLLGATE_POLICY_FILE), or --kubernetes \
         (or TOLLGATE_KUBERNETES=true) to watch the custom resources"
    )]
    NoPolicySource,
    #[error(
        "--policy-file and --kubernetes are exclusive: policies come from files or from the \
         cluster, not both"
    )]
    BothPolicySources,
    #[error("{0} only applies with --kubernetes")]
    KubernetesOnly(&'static str),
    #[error("--namespace {0:?} is not a valid namespace name (lower-case letters, digits and '-')")]
    Namespace(String),
    #[error("--secret-label {0:?} is not a label selector: {1}")]
    SecretLabel(String, &'static str),
    #[error("--trusted-hops only applies with --trusted-origin forwarded")]
    HopsWithoutForwarded,
    #[error("--trusted-hops must be between 1 and {MAX_TRUSTED_HOPS}, got {0}")]
    Hops(u8),
    #[error("two listeners (--grpc-addr, --admin-addr, --metrics-addr) are both {0}")]
    SameAddress(SocketAddr),
    #[error("--drain-timeout must be at most {}s", MAX_DRAIN_TIMEOUT.as_secs())]
    DrainTimeout,
    #[error("tracing: {0}")]
    Tracing(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("{given} needs {missing}")]
    HalfPair { given: String, missing: String },
    #[error(
        "a client CA for the {0} listener needs TLS on it (--{0}-tls-cert and --{0}-tls-key; the metrics listener uses the admin pair)"
    )]
    ClientCaWithoutTls(&'static str),
    #[error("--grpc-client-spiffe-id and --grpc-client-dns-name need --grpc-client-ca")]
    IdentitiesWithoutClientCa,
    #[error(
        "--metrics-client-ca needs --metrics-addr (a listener of its own, so probes need no certificate)"
    )]
    MetricsClientCaWithoutMetricsAddr,
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("--ipv6-limit-prefix: {0}")]
    Ipv6Prefix(String),
    #[error("--store-timeout must be between 1ms and {}s", MAX_STORE_TIMEOUT.as_secs())]
    StoreTimeout,
    #[error(
        "--usage-retention-days and --user-usage-retention-days must be at most {MAX_RETENTION_DAYS}"
    )]
    Retention,
    #[error("--metrics-app-labels must be at most {MAX_APP_LABELS}")]
    AppLabels,
    #[error(
        "--quota-lease-duration must be between 10ms and {}s, --usage-flush-interval between 10ms and {}s, and --max-quota-leases at most {MAX_LEASES}",
        MAX_LEASE_DURATION.as_secs(),
        MAX_USAGE_FLUSH.as_secs()
    )]
    Leases,
}

/// Longest `--quota-lease-duration`: units held longer under-allow the others
/// for longer, and a quota lease ends with its window anyway.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(60);
/// Longest `--usage-flush-interval`: what a crash may lose of usage.
pub const MAX_USAGE_FLUSH: Duration = Duration::from_secs(60);
/// Most `--max-quota-leases` (each lease is a few hundred bytes).
pub const MAX_LEASES: usize = 10_000_000;

/// Longest `--store-timeout`: a store call longer than this is an outage,
/// and Envoy's ext_authz timeout gives up far earlier.
pub const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest usage retention (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3660;
/// Most per-app metric labels (each is a Prometheus series per outcome).
pub const MAX_APP_LABELS: usize = 100_000;

impl ServeConfig {
    /// Checks what clap cannot: call once at start-up, before binding.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (self.policy_files.is_empty(), self.kubernetes) {
            (true, false) => return Err(ConfigError::NoPolicySource),
            (false, true) => return Err(ConfigError::BothPolicySources),
            _ => {}
        }
        if !self.kubernetes {
            if !self.kube.namespaces.is_empty() {
                return Err(ConfigError::KubernetesOnly("--namespace"));
            }
            if self.kube.kubeconfig.is_some() {
                return Err(ConfigError::KubernetesOnly("--kubeconfig"));
            }
        }
        self.kube.validate()?;
        self.decision.settings()?;
        let fixed = |addr: &SocketAddr| addr.port() != 0;
        let mut addrs = vec![self.grpc_addr, self.admin_addr];
        addrs.extend(self.metrics_addr);
        for (i, addr) in addrs.iter().enumerate() {
            if fixed(addr) && addrs[..i].contains(addr) {
                return Err(ConfigError::SameAddress(*addr));
            }
        }
        self.tls.plan(self.metrics_addr)?;
        if self.drain_timeout > MAX_DRAIN_TIMEOUT {
            return Err(ConfigError::DrainTimeout);
        }
        let store = &self.store;
        if store.store_timeout < Duration::from_millis(1) || store.store_timeout > MAX_STORE_TIMEOUT
        {
            return Err(ConfigError::StoreTimeout);
        }
        if store.usage_retention_days > MAX_RETENTION_DAYS
            || store.user_usage_retention_days > MAX_RETENTION_DAYS
        {
            return Err(ConfigError::Retention);
        }
        if self.metrics_app_labels > MAX_APP_LABELS {
            return Err(ConfigError::AppLabels);
        }
        self.trace
            .settings(|name| std::env::var(name).ok())
            .map_err(ConfigError::Tracing)?;
        self.audit.settings().map_err(ConfigError::Audit)?;
        let within = |d: Duration, max: Duration| d >= Duration::from_millis(10) && d <= max;
        if !within(store.quota_lease_duration, MAX_LEASE_DURATION)
            || !within(store.usage_flush_interval, MAX_USAGE_FLUSH)
            || store.max_quota_leases > MAX_LEASES
        {
            return Err(ConfigError::Leases);
        }
        Ok(())
    }
}

impl DecisionArgs {
    /// The pipeline settings these flags describe.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let trusted_origin = match (self.trusted_origin, self.trusted_hops) {
            (OriginMode::Envoy, None) => TrustedOrigin::Envoy,
            (OriginMode::Envoy, Some(_)) => return Err(ConfigError::HopsWithoutForwarded),
            (OriginMode::Forwarded, hops) => {
                let hops = hops.unwrap_or(1);
                if !(1..=MAX_TRUSTED_HOPS).contains(&hops) {
                    return Err(ConfigError::Hops(hops));
                }
                TrustedOrigin::Forwarded { hops }
            }
        };
        Ok(Settings {
            trusted_origin,
            require_policy_extension: self.require_policy_extension,
            default_decision: match self.default_decision {
                DefaultDecisionArg::Deny => DefaultDecision::Deny,
                DefaultDecisionArg::Allow => DefaultDecision::Allow,
            },
            ipv6_limit_prefix: Ipv6Prefix::new(self.ipv6_limit_prefix)
                .map_err(ConfigError::Ipv6Prefix)?,
            // Only `tollgate check` turns the decision trace on.
            trace: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn parse(args: &[&str]) -> ServeConfig {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    #[test]
    fn defaults() {
        let config = parse(&["--policy-file", "p.yaml"]);
        assert_eq!(config.grpc_addr, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(config.admin_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.log.log_format, LogFormat::Text);
        let settings = config.decision.settings().unwrap();
        assert_eq!(settings.trusted_origin, TrustedOrigin::Envoy);
        assert_eq!(settings.default_decision, DefaultDecision::Deny);
        assert!(!settings.require_policy_extension);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn flags_and_repeats() {
        let config = parse(&[
            "--policy-file",
            "a.yaml",
            "--policy-file",
            "b.yaml,c.yaml",
            "--trusted-origin",
            "forwarded",
            "--trusted-hops",
            "2",
            "--require-policy-extension",
            "--default-decision",
            "allow",
            "--drain-timeout",
            "750ms",
            "--log-format",
            "json",
        ]);
        assert_eq!(config.policy_files.len(), 3);
        let settings = config.decision.settings().unwrap();
        assert_eq!(
            settings.trusted_origin,
            TrustedOrigin::Forwarded { hops: 2 }
        );
        assert!(settings.require_policy_extension);
        assert_eq!(settings.default_decision, DefaultDecision::Allow);
        assert_eq!(config.drain_timeout, Duration::from_millis(750));
        assert_eq!(config.log.log_format, LogFormat::Json);
    }

    #[test]
    fn kubernetes_source_flags() {
        let config = parse(&[
            "--kubernetes",
            "--namespace",
            "mobility",
            "--namespace",
            "payments,rail",
            "--secret-label",
            "example.com/tollgate",
        ]);
        assert!(config.kubernetes);
        assert_eq!(config.kube.namespaces, ["mobility", "payments", "rail"]);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            parse(&["--kubernetes"]).kube.secret_label,
            "tollgate.dev/secret=true"
        );

        let both = parse(&["--kubernetes", "--policy-file", "p.yaml"]);
        assert_eq!(both.validate(), Err(ConfigError::BothPolicySources));
        let stray = parse(&["--policy-file", "p.yaml", "--namespace", "x"]);
        assert_eq!(
            stray.validate(),
            Err(ConfigError::KubernetesOnly("--namespace"))
        );
        let namespace = parse(&["--kubernetes", "--namespace", "Mobility"]);
        assert_eq!(
            namespace.validate(),
            Err(ConfigError::Namespace("Mobility".into()))
        );
        for bad in [
            "",
            "=true",
            "a b=c",
            "x/=y",
            "_x=y",
            "k=v!",
            "UPPER.example/k=v",
        ] {
            let label = parse(&["--kubernetes", &format!("--secret-label={bad}")]);
            assert!(
                matches!(label.validate(), Err(ConfigError::SecretLabel(..))),
                "{bad:?} must be refused"
            );
        }
        for good in ["k", "k=", "tollgate.dev/secret=true", "a.b/c_d-e=F.g"] {
            let label = parse(&["--kubernetes", "--secret-label", good]);
            assert_eq!(label.validate(), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn validation_errors() {
        assert_eq!(parse(&[]).validate(), Err(ConfigError::NoPolicySource));
        let hops = parse(&["--policy-file", "p", "--trusted-hops", "2"]);
        assert_eq!(hops.validate(), Err(ConfigError::HopsWithoutForwarded));
        let zero = parse(&[
            "--policy-file",
            "p",
            "--trusted-origin",
            "forwarded",
            "--trusted-hops",
            "0",
        ]);
        assert_eq!(zero.validate(), Err(ConfigError::Hops(0)));
        let same = parse(&[
            "--policy-file",
            "p",
            "--grpc-addr",
            "127.0.0.1:7000",
            "--admin-addr",
            "127.0.0.1:7000",
        ]);
        assert!(matches!(same.validate(), Err(ConfigError::SameAddress(_))));
        let ephemeral = parse(&[
            "--policy-file",
            "p",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ]);
        assert_eq!(ephemeral.validate(), Ok(()));
        let long = parse(&["--policy-file", "p", "--drain-timeout", "1h"]);
        assert_eq!(long.validate(), Err(ConfigError::DrainTimeout));
        for (args, error) in [
            (["--store-timeout", "0ms"], ConfigError::StoreTimeout),
            (["--store-timeout", "1h"], ConfigError::StoreTimeout),
            (["--usage-retention-days", "100000"], ConfigError::Retention),
            (
                ["--user-usage-retention-days", "4000000000"],
                ConfigError::Retention,
            ),
            (["--metrics-app-labels", "99999999"], ConfigError::AppLabels),
            (["--quota-lease-duration", "5ms"], ConfigError::Leases),
            (["--quota-lease-duration", "2m"], ConfigError::Leases),
            (["--usage-flush-interval", "0s"], ConfigError::Leases),
            (["--max-quota-leases", "99999999"], ConfigError::Leases),
        ] {
            let config = parse(&["--policy-file", "p", args[0], args[1]]);
            assert_eq!(config.validate(), Err(error), "{args:?}");
        }
        let prefix = parse(&["--policy-file", "p", "--ipv6-limit-prefix", "16"]);
        assert!(matches!(prefix.validate(), Err(ConfigError::Ipv6Prefix(_))));
        let prefix = parse(&["--policy-file", "p", "--ipv6-limit-prefix", "56"]);
        assert_eq!(
            prefix.decision.settings().unwrap().ipv6_limit_prefix.bits(),
            56
        );
        assert!(
            Cli::try_parse_from(["serve", "--drain-timeout", "soon"]).is_err(),
            "durations are parsed"
        );
    }

    #[test]
    fn tls_flags_make_a_plan_per_listener() {
        let config = parse(&[
            "--policy-file",
            "p",
            "--grpc-tls-cert",
            "/tls/grpc.crt",
            "--grpc-tls-key",
            "/tls/grpc.key",
            "--grpc-client-ca",
            "/tls/ca.crt",
            "--grpc-client-spiffe-id",
            "spiffe://cluster.local/ns/edge/sa/envoy",
            "--grpc-client-dns-name",
            "envoy.edge.svc,gateway.edge.svc",
            "--admin-tls-cert",
            "/tls/admin.crt",
            "--admin-tls-key",
            "/tls/admin.key",
            "--metrics-addr",
            "127.0.0.1:9091",
            "--metrics-client-ca",
            "/tls/scraper-ca.crt",
        ]);
        assert_eq!(config.validate(), Ok(()));
        let plan = config.tls.plan(config.metrics_addr).unwrap();
        let grpc = plan.grpc.unwrap();
        assert_eq!(grpc.role, Role::Grpc);
        assert_eq!(grpc.files.cert, PathBuf::from("/tls/grpc.crt"));
        assert_eq!(grpc.files.client_ca, Some(PathBuf::from("/tls/ca.crt")));
        assert_eq!(
            grpc.clients,
            ClientIdentities::new(
                &["spiffe://cluster.local/ns/edge/sa/envoy".into()],
                &["envoy.edge.svc".into(), "gateway.edge.svc".into()],
            )
            .unwrap()
        );
        let admin = plan.admin.unwrap();
        assert_eq!(
            admin.files.client_ca, None,
            "probes never need a certificate"
        );
        let metrics = plan.metrics.unwrap();
        assert_eq!(metrics.files.cert, PathBuf::from("/tls/admin.crt"));
        assert_eq!(
            metrics.files.client_ca,
            Some(PathBuf::from("/tls/scraper-ca.crt"))
        );

        let plain = parse(&["--policy-file", "p"]);
        assert_eq!(plain.tls.plan(None), Ok(TlsPlan::default()));
        let metrics_only = parse(&["--policy-file", "p", "--metrics-addr", "127.0.0.1:0"]);
        assert_eq!(metrics_only.validate(), Ok(()));
        assert_eq!(
            metrics_only.tls.plan(metrics_only.metrics_addr),
            Ok(TlsPlan::default())
        );
    }

    #[test]
    fn tls_flags_that_cannot_work_are_refused() {
        let refused = |args: &[&str]| {
            let mut all = vec!["--policy-file", "p"];
            all.extend_from_slice(args);
            parse(&all).validate().unwrap_err()
        };
        assert_eq!(
            refused(&["--grpc-tls-cert", "c"]),
            ConfigError::HalfPair {
                given: "--grpc-tls-cert".into(),
                missing: "--grpc-tls-key".into()
            }
        );
        assert_eq!(
            refused(&["--admin-tls-key", "k"]),
            ConfigError::HalfPair {
                given: "--admin-tls-key".into(),
                missing: "--admin-tls-cert".into()
            }
        );
        assert_eq!(
            refused(&["--grpc-client-ca", "ca"]),
            ConfigError::ClientCaWithoutTls("grpc")
        );
        let tls = ["--grpc-tls-cert", "c", "--grpc-tls-key", "k"];
        let mut ids = tls.to_vec();
        ids.extend(["--grpc-client-spiffe-id", "spiffe://a/b"]);
        assert_eq!(refused(&ids), ConfigError::IdentitiesWithoutClientCa);
        let mut bad_id = tls.to_vec();
        bad_id.extend(["--grpc-client-ca", "ca", "--grpc-client-spiffe-id", "envoy"]);
        assert!(matches!(refused(&bad_id), ConfigError::Identity(_)));
        assert_eq!(
            refused(&["--metrics-client-ca", "ca"]),
            ConfigError::MetricsClientCaWithoutMetricsAddr
        );
        assert_eq!(
            refused(&["--metrics-client-ca", "ca", "--metrics-addr", "127.0.0.1:0"]),
            ConfigError::ClientCaWithoutTls("metrics")
        );
        assert_eq!(
            refused(&[
                "--admin-addr",
                "127.0.0.1:9090",
                "--metrics-addr",
                "127.0.0.1:9090"
            ]),
            ConfigError::SameAddress("127.0.0.1:9090".parse().unwrap())
        );
    }
}
