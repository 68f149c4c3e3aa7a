//! The store behind quotas, replay nonces and usage metering.
//!
//! - [`Store`] — the one trait the pipeline knows (held as `Arc<dyn Store>`);
//! - [`memory`] — the embedded store for a single replica;
//! - [`redis`] — Redis (one server, `rediss://` TLS) and Redis Cluster;
//! - [`keys`] — every key tollgate writes, built in one place;
//! - [`scripts`] — the Lua scripts and their KEYS/ARGV contracts;
//! - [`lease`] — quota leases: a [`Store`] in front of another that admits
//!   hot limits from slices reserved in it, and counts usage locally.
//!
//! One request is one [`Admission`]: its nonces, every limit it is subject
//! to and its usage counters, grouped by Redis hash tag. Each group is
//! checked and consumed atomically (one script call, one round trip): every
//! nonce must be fresh and every limit must pass, or nothing of the group is
//! written. When a request spans several groups (a limit keyed by the user
//! alone, or by IP), the groups run in parallel and the groups that passed
//! are refunded when another denied — across hash tags the promise is
//! "never over-allow".
//!
//! A limit op may instead ask for a *lease* ([`LeaseAsk`]): reserve a
//! slice of the limit (at least the request's cost) for the replica to
//! admit later requests from, with no store call ([`lease`]). Leased units
//! go back through [`Store::settle`], with usage counted locally.
//!
//! Time: the caller passes `now` (the replica's clock, injectable in tests);
//! see `docs/store.md` for why, and for the skew this allows.

pub mod keys;
pub mod lease;
pub mod memory;
pub mod redis;
pub mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use futures_util::future::BoxFuture;

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, RedisUrl};

/// A quota / nonce / usage store.
pub trait Store: Send + Sync + fmt::Debug {
    /// A short name for logs and metrics (`memory`, `redis`, `redis-cluster`).
    fn kind(&self) -> &'static str;

    /// Checks and, when everything passes, consumes one request's nonces,
    /// limits and usage. See the module docs for the atomicity promise.
    fn admit<'a>(&'a self, admission: &'a Admission) -> BoxFuture<'a, Result<Outcome, StoreError>>;

    /// Returns leases' unused units and adds usage counted locally
    /// ([`Settlement`]). Applied at most once per `Settlement::id`: a call
    /// a client library re-sends after losing the reply changes nothing
    /// the second time, and the lease layer retries a failed settlement
    /// with the same id.
    fn settle<'a>(&'a self, settlement: &'a Settlement) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Called once when the server stops, after in-flight checks drained:
    /// a store holding local state (leases, usage) hands it back here.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Reads usage counters for billing and support (`tollgate usage`).
    fn usage<'a>(
        &'a self,
        query: &'a UsageQuery,
    ) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>>;

    /// How long usage counters are kept.
    fn retention(&self) -> Retention {
        Retention::default()
    }
}

/// Extra life of a calendar-quota key past its window's end, so a replica
/// whose clock lags a little does not recreate (and restart at zero) the
/// window that just ended.
pub const QUOTA_KEY_GRACE_US: u64 = 60_000_000;

/// One request's store work, grouped by hash tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The decision time in µs since the Unix epoch (the replica clock).
    pub now_us: u64,
    pub groups: Vec<Group>,
    /// A random id of this admission (empty when it has no nonce), stored
    /// as the value of its nonces: a nonce holding it was stored by this
    /// very admission — an earlier attempt of the same call that a client
    /// library retried after a lost reply — so its group was applied, and
    /// the retry is not a replay.
    pub attempt: String,
    /// Whether the policy lets hot limits be leased (`spec.leases`). Only
    /// [`lease::LeasedStore`] reads it; every store answers lease ops.
    pub leasing: Leasing,
}

/// Whether an admission's limits may be leased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leasing {
    /// Every limit is checked in the store, request by request.
    #[default]
    Off,
    /// Limits hot on this replica are admitted from leased slices.
    Auto,
}

impl Admission {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.groups
            .iter()
            .all(|g| g.nonces.is_empty() && g.limits.is_empty() && g.usage.is_empty())
    }
}

/// The keys of one hash tag: checked and consumed atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    /// The hash tag every key of the group carries (`{a:app}` …).
    pub tag: String,
    pub nonces: Vec<NonceOp>,
    pub limits: Vec<LimitOp>,
    pub usage: Vec<UsageOp>,
}

/// Remember a nonce (set-if-absent) for `ttl_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonceOp {
    pub key: String,
    pub ttl_ms: u64,
}

/// Check and consume `cost` units of one limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitOp {
    pub key: String,
    pub cost: u64,
    pub rule: Rule,
    /// Reserve a slice instead: the request's `cost` plus more for the
    /// replica to admit later requests from ([`crate::limits::lease`]).
    pub lease: Option<LeaseAsk>,
}

/// A lease asked for with a limit op: the op passes when the request's
/// `cost` fits, as for a single request, and then reserves a slice of at
/// most `want` units (the cost included; `limits::lease::slice`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseAsk {
    pub want: u64,
    /// The lease's end (µs since the epoch): a rate's slice is charged
    /// there (`limits::lease`); a quota's lease ends by its window's end.
    pub ends_at_us: u64,
    /// This replica's previous lease on the same key, returned in the same
    /// call before the grant.
    pub previous: Option<Unused>,
}

/// The unused part of a lease, going back to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unused {
    /// A rate's lease: its grant's `top` and `base` (`limits::lease`) and
    /// the units used; returned only while the stored TAT is still `top`.
    Rate {
        interval_us: u64,
        top: u64,
        base: u64,
        used: u64,
    },
    /// A quota's lease: the units not used, and the store's `epoch` when it
    /// was granted (a store restarted since lost the counter the units
    /// were counted in; they are not taken off its successor).
    Quota { units: u64, epoch: u64 },
}

/// One lease's unused part ([`Settlement`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseReturn {
    pub key: String,
    pub unused: Unused,
}

/// Usage counted locally: `requests` admitted requests costing `cost` in
/// all, added to a usage counter expiring at `expire_at_s`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageCount {
    pub key: String,
    pub requests: u64,
    pub cost: u64,
    pub expire_at_s: u64,
}

/// What the lease layer hands back: unused units and usage, per hash tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// µs since the epoch (the replica clock): when the leases returned
    /// here stopped being used.
    pub now_us: u64,
    /// A random id: the store applies a settlement once
    /// ([`Store::settle`]).
    pub id: String,
    pub groups: Vec<SettleGroup>,
}

/// The keys of one hash tag in a [`Settlement`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettleGroup {
    pub tag: String,
    pub returns: Vec<LeaseReturn>,
    pub usage: Vec<UsageCount>,
}

impl Settlement {
    /// True when there is nothing to hand back.
    pub fn is_empty(&self) -> bool {
        self.groups
            .iter()
            .all(|g| g.returns.is_empty() && g.usage.is_empty())
    }
}

/// How a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// GCRA (see [`crate::limits::gcra`]).
    Rate { interval_us: u64, burst: u64 },
    /// A counter for one calendar window.
    Quota {
        limit: u64,
        window_end_us: u64,
        /// When the counter key expires: the window end plus
        /// [`QUOTA_KEY_GRACE_US`].
        expire_at_us: u64,
    },
}

/// Add one request of `cost` to a usage counter that expires at
/// `expire_at_s` (in Redis a hash; its fields: [`keys::USAGE_FIELDS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageOp {
    pub key: String,
    pub cost: u64,
    pub expire_at_s: u64,
}

/// What the store decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The state of every limit, per group, in request order. Groups that
    /// were not evaluated (after a replay) have no states.
    pub limits: Vec<Vec<LimitState>>,
}

/// Admitted, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything passed and was consumed.
    Admitted,
    /// A nonce was already remembered: `nonces[index]` of group `group`.
    Replay { group: usize, index: usize },
    /// At least one limit denied; nothing was consumed.
    Exceeded,
}

/// One limit after the check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitState {
    pub allowed: bool,
    /// Units still available (after this request, when admitted).
    pub remaining: u64,
    /// µs until the limit is fully available again (the window's end for a
    /// calendar quota).
    pub reset_us: u64,
    /// µs until this request could pass; 0 when it passed.
    pub retry_after_us: u64,
    /// For a lease op that passed, the slice reserved.
    pub lease: Option<Granted>,
}

/// A slice reserved by a lease op ([`LeaseAsk`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    /// Units reserved, the request's cost included.
    pub units: u64,
    /// The stored state before and after (`limits::lease::Grant`).
    pub base: u64,
    pub top: u64,
    /// Which incarnation of the store granted it (Redis's `run_id`, cut
    /// to 48 bits): a quota's unused units go back only to the same one.
    pub epoch: u64,
}

/// How long usage counters live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Per app per day (billing): default 400 days.
    pub app_days: u32,
    /// Per app-user per day (support): default 31 days, so memory stays
    /// bounded with millions of users.
    pub user_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            app_days: 400,
            user_days: 31,
        }
    }
}

/// Which usage to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// One app, or every app.
    pub app: Option<String>,
    /// First and last day (UTC, `YYYY-MM-DD`), inclusive.
    pub from: String,
    pub to: String,
    /// Include the per-user rows.
    pub users: bool,
}

/// One usage counter.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    pub app: String,
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The user's digest (issuer and subject hashed), for per-user rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub requests: u64,
    pub cost: u64,
}

/// True when `row` falls within `query`.
pub(crate) fn usage_matches(query: &UsageQuery, row: &UsageRow) -> bool {
    query.app.as_ref().is_none_or(|app| app == &row.app)
        && row.day.as_str() >= query.from.as_str()
        && row.day.as_str() <= query.to.as_str()
        && (query.users || row.user.is_none())
}

/// Orders rows by app, day, then the app row before its users.
pub(crate) fn sort_usage(rows: &mut [UsageRow]) {
    rows.sort_by(|a, b| (&a.app, &a.day, &a.user).cmp(&(&b.app, &b.day, &b.user)));
}

/// A store failure. Every variant is transient from the request's point of
/// view: the request follows the policy's `onStoreError`, and the client
/// reconnects by itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected store reply: {0}")]
    Protocol(String),
}

impl StoreError {
    /// A label for `tollgate_store_errors_total{kind}`.
    pub fn kind_label(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Protocol(_) => "protocol",
        }
    }

    /// True when retrying later may succeed (timeouts and lost
    /// connections); a protocol error means a bug or an incompatible server.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Protocol(_))
    }
}

/// The `serve` flags that choose and tune the store. Absent `--redis`, the
/// in-memory store is used (single replica only).
#[derive(Clone, clap::Args)]
pub struct StoreArgs {
    /// Redis URL (`redis://`, `rediss://` for TLS). Repeat (or separate with
    /// commas) to list Redis Cluster nodes. Absent: in-memory store.
    #[arg(long = "redis", env = "TOLLGATE_REDIS", value_delimiter = ',')]
    pub redis: Vec<RedisUrl>,
    /// Treat a single `--redis` URL as a Redis Cluster seed node.
    #[arg(long, env = "TOLLGATE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Timeout of every store call; a timeout follows `onStoreError`. Keep
    /// it well under Envoy's ext_authz timeout.
    #[arg(long, env = "TOLLGATE_STORE_TIMEOUT", default_value = "50ms",
          value_parser = crate::policy::duration::parse_duration)]
    pub store_timeout: Duration,
    /// Days per-app usage counters are kept.
    #[arg(long, env = "TOLLGATE_USAGE_RETENTION_DAYS", default_value_t = 400)]
    pub usage_retention_days: u32,
    /// Days per-app-user usage counters are kept.
    #[arg(long, env = "TOLLGATE_USER_USAGE_RETENTION_DAYS", default_value_t = 31)]
    pub user_usage_retention_days: u32,
    /// Quota leases with Redis: `on` lets each replica reserve slices of
    /// the limits it serves often and admit from them without a Redis call
    /// (policies may still say `leases: off`); `off` checks every request
    /// in Redis. The in-memory store never leases (it has no round trip).
    #[arg(long, env = "TOLLGATE_QUOTA_LEASES", value_enum, default_value_t = Switch::On)]
    pub quota_leases: Switch,
    /// The longest a lease lasts (a rate's is at most an eighth of its
    /// burst period, a quota's ends with its window).
    #[arg(long, env = "TOLLGATE_QUOTA_LEASE_DURATION", default_value = "1s",
          value_parser = crate::policy::duration::parse_duration)]
    pub quota_lease_duration: Duration,
    /// Most leases one replica holds; further keys are checked request by
    /// request.
    #[arg(long, env = "TOLLGATE_MAX_QUOTA_LEASES", default_value_t = 10_000)]
    pub max_quota_leases: usize,
    /// How often usage counted locally (requests admitted from leases) is
    /// written to Redis; a crash loses at most this much usage.
    #[arg(long, env = "TOLLGATE_USAGE_FLUSH_INTERVAL", default_value = "1s",
          value_parser = crate::policy::duration::parse_duration)]
    pub usage_flush_interval: Duration,
}

/// An on/off flag value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    #[default]
    On,
    Off,
}

impl Default for StoreArgs {
    fn default() -> Self {
        Self {
            redis: Vec::new(),
            redis_cluster: false,
            store_timeout: Duration::from_millis(50),
            usage_retention_days: 400,
            user_usage_retention_days: 31,
            quota_leases: Switch::On,
            quota_lease_duration: Duration::from_secs(1),
            max_quota_leases: 10_000,
            usage_flush_interval: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RedisUrl's Debug redacts passwords.
        f.debug_struct("StoreArgs")
            .field("redis", &self.redis)
            .field("redis_cluster", &self.redis_cluster)
            .field("store_timeout", &self.store_timeout)
            .field("usage_retention_days", &self.usage_retention_days)
            .field("user_usage_retention_days", &self.user_usage_retention_days)
            .field("quota_leases", &self.quota_leases)
            .field("quota_lease_duration", &self.quota_lease_duration)
            .field("max_quota_leases", &self.max_quota_leases)
            .field("usage_flush_interval", &self.usage_flush_interval)
            .finish()
    }
}

impl StoreArgs {
    /// The retention these flags ask for.
    pub fn retention(&self) -> Retention {
        Retention {
            app_days: self.usage_retention_days,
            user_days: self.user_usage_retention_days,
        }
    }

    /// The lease settings these flags ask for.
    pub fn lease_settings(&self) -> lease::LeaseSettings {
        lease::LeaseSettings {
            duration: self.quota_lease_duration,
            max_leases: self.max_quota_leases,
            usage_flush: self.usage_flush_interval,
            wait: self.store_timeout,
            ..lease::LeaseSettings::default()
        }
    }

    /// Builds the store: Redis behind the lease layer (unless
    /// `--quota-leases off`), else the in-memory store. Redis connections
    /// are made lazily, so this succeeds while Redis is down: tollgate
    /// starts, is ready, and answers `store_unavailable` (or follows
    /// `onStoreError: allow`) until Redis is reachable. Must run inside a
    /// Tokio runtime when Redis is used (it spawns the start-up
    /// eviction-policy check and the lease keeper). `clock` is the
    /// decision clock.
    pub fn build(&self, clock: Arc<dyn crate::clock::Clock>) -> Result<Arc<dyn Store>, StoreError> {
        let store = self.build_store(clock)?;
        // Every error series exists at 0 from the start, so the first
        // failure is an increase alerts can see (`rate()` needs two
        // samples of a series).
        for kind in ["timeout", "unavailable", "protocol"] {
            metrics::counter!("tollgate_store_errors_total", "store" => store.kind(), "kind" => kind)
                .increment(0);
        }
        Ok(store)
    }

    fn build_store(
        &self,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Arc<dyn Store>, StoreError> {
        if self.redis.is_empty() {
            tracing::warn!(
                "no --redis given: using the in-memory store; quotas and replay \
                 nonces are per replica, so run a single replica"
            );
            return Ok(Arc::new(MemoryStore::with_retention(self.retention())));
        }
        let store = RedisStore::connect(
            &self.redis,
            self.redis_cluster,
            self.store_timeout,
            self.retention(),
        )?;
        tracing::info!(
            store = store.kind(),
            urls = ?self.redis,
            timeout = ?self.store_timeout,
            "using Redis store"
        );
        store.spawn_startup_checks();
        let store: Arc<dyn Store> = Arc::new(store);
        if self.quota_leases == Switch::Off {
            return Ok(store);
        }
        let settings = self.lease_settings();
        tracing::info!(
            duration = ?settings.duration,
            max_leases = settings.max_leases,
            usage_flush = ?settings.usage_flush,
            "quota leases on"
        );
        Ok(Arc::new(lease::LeasedStore::new(store, clock, settings)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn flags_parse_and_debug_redacts_passwords() {
        let cli = Cli::parse_from([
            "t",
            "--redis",
            "redis://:hunter2@10.0.0.1:6379",
            "--redis",
            "rediss://user:s3cret@10.0.0.2:6380/0",
            "--store-timeout",
            "75ms",
        ]);
        assert_eq!(cli.store.redis.len(), 2);
        assert_eq!(cli.store.store_timeout, Duration::from_millis(75));
        let debug = format!("{:?}", cli.store);
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret"),
            "{debug}"
        );
        assert!(debug.contains("10.0.0.2:6380"), "{debug}");
    }
}
