//! `tollgate serve` configuration: one clap-derived struct, every flag also
//! an environment variable `TOLLGATE_…`, validated once at start-up.
//!
//! Tests build [`ServeConfig`] values directly (`ServeConfig::parse_from`
//! or field by field). `Debug` is safe to log: the only secrets (Redis URLs
//! with passwords) live in [`crate::store::StoreArgs`], whose URL type
//! redacts them; any future secret flag must use a redacting type too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::admission::Ipv6Prefix;
use crate::origin::TrustedOrigin;
use crate::pipeline::{DefaultDecision, Settings};
use crate::policy::duration::parse_duration;
use crate::telemetry::LogFormat;

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

    /// Address of the ext_authz gRPC listener (port 0 picks a free port;
    /// the bound address is logged as `grpc_addr`).
    #[arg(long, env = "TOLLGATE_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin HTTP listener: /healthz, /readyz, /metrics
    /// (port 0 picks a free port; logged as `admin_addr`).
    #[arg(long, env = "TOLLGATE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,

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
    #[error("no policy: give --policy-file PATH (or TOLLGATE_POLICY_FILE)")]
    NoPolicySource,
    #[error("--trusted-hops only applies with --trusted-origin forwarded")]
    HopsWithoutForwarded,
    #[error("--trusted-hops must be between 1 and {MAX_TRUSTED_HOPS}, got {0}")]
    Hops(u8),
    #[error("--grpc-addr and --admin-addr are both {0}")]
    SameAddress(SocketAddr),
    #[error("--drain-timeout must be at most {}s", MAX_DRAIN_TIMEOUT.as_secs())]
    DrainTimeout,
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
}

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
        if self.policy_files.is_empty() {
            return Err(ConfigError::NoPolicySource);
        }
        self.decision.settings()?;
        if self.grpc_addr == self.admin_addr && self.grpc_addr.port() != 0 {
            return Err(ConfigError::SameAddress(self.grpc_addr));
        }
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
}
