//! The Redis store: one server (a self-healing multiplexed connection,
//! `redis::aio::ConnectionManager`) or a Redis Cluster
//! (`redis::cluster_async`), plain or TLS (`rediss://`).
//!
//! - On one server, an admission is one `EVALSHA` of
//!   [`super::scripts::ADMIT`] over all its groups: one round trip, exact
//!   across hash tags. On a Cluster each hash-tag group is one `EVALSHA`
//!   (one slot each): the groups run concurrently, and when one denies the
//!   others are refunded ([`super::scripts::REFUND`]).
//! - Every call is bounded by the store timeout; a timeout or a lost
//!   connection is a [`StoreError`] the pipeline maps to `onStoreError`.
//! - Connections are made lazily and re-made by the client: tollgate starts
//!   while Redis is down, and heals by itself when Redis comes back (same
//!   address, or a Cluster failover) without a restart.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisError, RedisResult};

use super::{
    Admission, BoxFuture, Granted, Group, LimitState, Outcome, Retention, SettleGroup, Settlement,
    Store, StoreError, UsageQuery, UsageRow, Verdict, keys, scripts,
};
use crate::telemetry::handles;

/// A Redis URL whose password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The full URL, credentials included: only for the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "<invalid>".to_owned();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                format!("{scheme}://{user}:***@{host}{path}")
            }
            None => self.0.clone(),
        }
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(s.starts_with("redis://") || s.starts_with("rediss://")) {
            return Err("a Redis URL starts with redis:// or rediss:// (TLS)".to_owned());
        }
        redis::Client::open(s).map_err(|e| format!("invalid Redis URL: {}", e.kind_name()))?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for RedisError {
    /// The error without its message, which may echo the URL.
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// The Redis-backed store.
pub struct RedisStore {
    conn: Conn,
    timeout: Duration,
    retention: Retention,
    urls: Vec<RedisUrl>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use, and again after a failed
/// attempt, so start-up does not need the cluster to be up.
struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.client.get_async_connection().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("kind", &self.kind())
            .field("urls", &self.urls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// Prepares a store for `urls` (one URL: a single server unless
    /// `cluster`; several: Cluster seed nodes). No connection is made yet.
    pub fn connect(
        urls: &[RedisUrl],
        cluster: bool,
        timeout: Duration,
        retention: Retention,
    ) -> Result<Self, StoreError> {
        let invalid =
            |e: RedisError| StoreError::Unavailable(format!("Redis client: {}", e.kind_name()));
        let conn = match urls {
            [] => return Err(StoreError::Unavailable("no Redis URL".to_owned())),
            [url] if !cluster => {
                let client = redis::Client::open(url.expose()).map_err(invalid)?;
                // Reconnect quickly: while Redis is away every request waits
                // at most the store timeout anyway.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500));
                Conn::Single(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?,
                )
            }
            urls => {
                let client = ClusterClient::builder(urls.iter().map(|u| u.expose().to_owned()))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(500)
                    .build()
                    .map_err(invalid)?;
                Conn::Cluster(Arc::new(LazyCluster {
                    client,
                    conn: tokio::sync::Mutex::new(None),
                }))
            }
        };
        Ok(Self {
            conn,
            timeout,
            retention,
            urls: urls.to_vec(),
        })
    }

    /// Warns, once Redis answers, when it may evict tollgate's keys
    /// (`maxmemory-policy` other than `noeviction` with a `maxmemory`
    /// set): an evicted nonce re-opens a replay, an evicted counter resets a
    /// quota. Runs in the background so start-up never waits for Redis.
    pub fn spawn_startup_checks(&self) {
        let conn = self.conn.clone();
        tokio::spawn(async move {
            for attempt in 0u32..720 {
                match eviction_policy(&conn).await {
                    Ok((policy, maxmemory)) => {
                        if policy != "noeviction" && maxmemory != "0" {
                            tracing::warn!(
                                maxmemory_policy = %policy,
                                maxmemory = %maxmemory,
                                "Redis may evict keys under memory pressure: an evicted nonce \
                                 re-opens a replay and an evicted counter resets a quota; \
                                 set maxmemory-policy noeviction (every tollgate key has a TTL, \
                                 so volatile-* policies evict them too)"
                            );
                        }
                        return;
                    }
                    Err(e) if attempt == 0 => {
                        tracing::warn!(error = %e, "Redis not reachable at start-up; requests \
                            follow onStoreError until it is");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }

    /// Runs `script` over `groups` in one call (`scripts::invocation`).
    /// The command is built before the future, which owns it.
    fn eval(
        &self,
        script: &'static redis::Script,
        groups: &[&Group],
        now_us: u64,
        attempt: &str,
    ) -> BoxFuture<'_, RedisResult<Vec<i64>>> {
        let cmd = scripts::invocation(script, groups, now_us, attempt);
        let op = if std::ptr::eq(script, &*scripts::REFUND) {
            "refund"
        } else {
            "admit"
        };
        Box::pin(async move {
            handles::round_trips(self.kind(), op).increment(1);
            self.run(script, &cmd).await
        })
    }

    /// Runs the settle script over `groups` in one call.
    fn eval_settle(
        &self,
        groups: &[&SettleGroup],
        id: &str,
        now_us: u64,
    ) -> BoxFuture<'_, RedisResult<Vec<i64>>> {
        let tag = groups
            .first()
            .map_or(keys::ANONYMOUS_TAG, |g| g.tag.as_str());
        let cmd = scripts::settlement(groups, &keys::settled(tag, id), now_us);
        Box::pin(async move {
            handles::round_trips(self.kind(), "settle").increment(1);
            self.run(&scripts::SETTLE, &cmd).await
        })
    }

    async fn run(&self, script: &redis::Script, cmd: &redis::Cmd) -> RedisResult<Vec<i64>> {
        match &self.conn {
            Conn::Single(manager) => evalsha(&mut manager.clone(), script, cmd).await,
            Conn::Cluster(lazy) => {
                let mut conn = lazy.get().await?;
                evalsha(&mut conn, script, cmd).await
            }
        }
    }

    /// One server: the whole settlement in one call. A Cluster: one call
    /// per hash tag, concurrently, each with its own marker.
    async fn settle_inner(&self, settlement: &Settlement) -> Result<(), StoreError> {
        let groups: Vec<&SettleGroup> = settlement
            .groups
            .iter()
            .filter(|g| !g.returns.is_empty() || !g.usage.is_empty())
            .collect();
        if groups.is_empty() {
            return Ok(());
        }
        let (now, id) = (settlement.now_us, settlement.id.as_str());
        let replies = match self.conn {
            Conn::Single(_) => vec![self.eval_settle(&groups, id, now).await],
            Conn::Cluster(_) => {
                join_all(groups.iter().map(|g| self.eval_settle(&[g], id, now))).await
            }
        };
        for reply in replies {
            reply.map_err(map_error)?;
        }
        Ok(())
    }

    async fn admit_inner(&self, admission: &Admission) -> Result<Outcome, StoreError> {
        match self.conn {
            Conn::Single(_) => self.admit_together(admission).await,
            Conn::Cluster(_) => self.admit_per_tag(admission).await,
        }
    }

    /// One Redis server: hash tags decide nothing there, so every group of
    /// the request runs in one script call — one round trip whatever the
    /// request's tags, and exact across them (nothing to refund).
    async fn admit_together(&self, admission: &Admission) -> Result<Outcome, StoreError> {
        let groups: Vec<&Group> = admission.groups.iter().collect();
        if groups.iter().all(|g| is_idle(g)) {
            return Ok(nothing_to_do(admission));
        }
        let reply = self
            .eval(
                &scripts::ADMIT,
                &groups,
                admission.now_us,
                &admission.attempt,
            )
            .await
            .map_err(map_error)?;
        let (status, states) = parse_admit(&reply, groups.iter().copied())?;
        let verdict = match status {
            GroupStatus::Admitted | GroupStatus::AppliedBefore => Verdict::Admitted,
            GroupStatus::Exceeded => Verdict::Exceeded,
            GroupStatus::Replay(mut index) => {
                // The script numbered the nonces of every group in order.
                let mut found = None;
                for (g, group) in admission.groups.iter().enumerate() {
                    if index < group.nonces.len() {
                        found = Some(Verdict::Replay { group: g, index });
                        break;
                    }
                    index -= group.nonces.len();
                }
                found.ok_or_else(|| {
                    StoreError::Protocol(format!("admit script replied {reply:?}"))
                })?
            }
        };
        let mut limits = Vec::with_capacity(groups.len());
        let mut states = states.into_iter();
        let complete = states.len() == groups.iter().map(|g| g.limits.len()).sum::<usize>();
        for group in &groups {
            limits.push(if complete {
                states.by_ref().take(group.limits.len()).collect()
            } else {
                Vec::new()
            });
        }
        Ok(Outcome { verdict, limits })
    }

    /// A Redis Cluster: one script call per hash tag, concurrently. When one
    /// group denies (or fails), the groups that consumed are refunded: across
    /// tags the promise is "never over-allow". A definite answer — a replay,
    /// a limit exceeded — stands even when another group failed: the
    /// request is denied either way, and `onStoreError: allow` must not
    /// turn a known replay into an allow.
    async fn admit_per_tag(&self, admission: &Admission) -> Result<Outcome, StoreError> {
        let now = admission.now_us;
        let attempt = admission.attempt.as_str();
        // A group with nothing to check (its limits admitted from leases,
        // its usage counted locally) needs no call.
        let replies = join_all(admission.groups.iter().map(|g| async move {
            if is_idle(g) {
                Ok(vec![0, 0])
            } else {
                self.eval(&scripts::ADMIT, &[g], now, attempt).await
            }
        }))
        .await;
        let mut verdict = Verdict::Admitted;
        let mut states = Vec::with_capacity(replies.len());
        let mut error = None;
        let mut admitted = Vec::new();
        for (g, reply) in replies.into_iter().enumerate() {
            let group = admission.groups.get(g).into_iter();
            let reply = match reply
                .map_err(map_error)
                .and_then(|r| parse_admit(&r, group))
            {
                Ok(reply) => reply,
                Err(e) => {
                    error.get_or_insert(e);
                    states.push(Vec::new());
                    continue;
                }
            };
            match reply.0 {
                GroupStatus::Admitted | GroupStatus::AppliedBefore => admitted.push(g),
                GroupStatus::Replay(index) => {
                    if !matches!(verdict, Verdict::Replay { .. }) {
                        verdict = Verdict::Replay { group: g, index };
                    }
                }
                GroupStatus::Exceeded => {
                    if verdict == Verdict::Admitted {
                        verdict = Verdict::Exceeded;
                    }
                }
            }
            states.push(reply.1);
        }
        if error.is_some() || verdict != Verdict::Admitted {
            // Undo the groups that consumed; a refund that fails leaves them
            // over-counted, which only ever errs on the strict side.
            let refunds = join_all(
                admitted
                    .iter()
                    .filter_map(|&g| admission.groups.get(g))
                    .filter(|g| !is_idle(g))
                    .map(|g| self.eval(&scripts::REFUND, &[g], now, attempt)),
            )
            .await;
            for r in refunds {
                if let Err(e) = r {
                    tracing::warn!(error = %map_error(e), "quota refund failed; the request stays counted");
                }
            }
        }
        match error {
            Some(e) if verdict == Verdict::Admitted => Err(e),
            Some(e) => {
                tracing::debug!(error = %e, "a store group failed; another one's denial stands");
                Ok(Outcome {
                    verdict,
                    limits: states,
                })
            }
            None => Ok(Outcome {
                verdict,
                limits: states,
            }),
        }
    }

    async fn usage_inner(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let pattern = keys::usage_pattern(query.app.as_deref());
        let mut found: Vec<String> = Vec::new();
        match &self.conn {
            Conn::Single(manager) => {
                let mut conn = manager.clone();
                scan(&mut conn, &pattern, None, &mut found).await?;
            }
            Conn::Cluster(lazy) => {
                let mut conn = lazy.get().await.map_err(map_error)?;
                for (host, port) in cluster_primaries(&mut conn).await? {
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    scan(&mut conn, &pattern, Some(route), &mut found).await?;
                }
            }
        }
        let mut rows = Vec::new();
        for key in found {
            let Some((app, day, user)) = keys::parse_usage(&key) else {
                continue;
            };
            let mut row = UsageRow {
                app,
                day,
                user,
                requests: 0,
                cost: 0,
            };
            if !super::usage_matches(query, &row) {
                continue;
            }
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&key).arg(&keys::USAGE_FIELDS);
            let values: Vec<Option<i64>> = self.query(&cmd).await?;
            (row.requests, row.cost) = keys::usage_totals(&values);
            rows.push(row);
        }
        super::sort_usage(&mut rows);
        Ok(rows)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let result = match &self.conn {
            Conn::Single(manager) => cmd.query_async(&mut manager.clone()).await,
            Conn::Cluster(lazy) => {
                let mut conn = lazy.get().await.map_err(map_error)?;
                cmd.query_async(&mut conn).await
            }
        };
        result.map_err(map_error)
    }
}

/// Runs a script's `EVALSHA`; after `NOSCRIPT` (a restarted or failed-over
/// Redis, `SCRIPT FLUSH`) loads the script (on a Cluster, on every primary)
/// and runs the call once more.
async fn evalsha<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> RedisResult<Vec<i64>> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

async fn eviction_policy(conn: &Conn) -> Result<(String, String), StoreError> {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("maxmemory*");
    let reply: std::collections::HashMap<String, String> = match conn {
        Conn::Single(manager) => cmd.query_async(&mut manager.clone()).await,
        Conn::Cluster(lazy) => match lazy.get().await {
            Ok(mut c) => cmd.query_async(&mut c).await,
            Err(e) => Err(e),
        },
    }
    .map_err(map_error)?;
    Ok((
        reply.get("maxmemory-policy").cloned().unwrap_or_default(),
        reply
            .get("maxmemory")
            .cloned()
            .unwrap_or_else(|| "0".to_owned()),
    ))
}

/// SCANs one node (or the single server) for `pattern`.
async fn scan<C: RouteCommand>(
    conn: &mut C,
    pattern: &str,
    route: Option<RoutingInfo>,
    found: &mut Vec<String>,
) -> Result<(), StoreError> {
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let value = conn.route(cmd, route.clone()).await.map_err(map_error)?;
        let (next, batch): (u64, Vec<String>) =
            redis::from_redis_value(value).map_err(|e| StoreError::Protocol(e.to_string()))?;
        found.extend(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Sends a command to a chosen cluster node, or normally.
trait RouteCommand {
    fn route(
        &mut self,
        cmd: redis::Cmd,
        route: Option<RoutingInfo>,
    ) -> BoxFuture<'_, RedisResult<redis::Value>>;
}

impl RouteCommand for ConnectionManager {
    fn route(
        &mut self,
        cmd: redis::Cmd,
        _route: Option<RoutingInfo>,
    ) -> BoxFuture<'_, RedisResult<redis::Value>> {
        Box::pin(async move { cmd.query_async(self).await })
    }
}

impl RouteCommand for ClusterConnection {
    fn route(
        &mut self,
        cmd: redis::Cmd,
        route: Option<RoutingInfo>,
    ) -> BoxFuture<'_, RedisResult<redis::Value>> {
        Box::pin(async move {
            match route {
                Some(route) => self.route_command(cmd, route).await,
                None => cmd.query_async(self).await,
            }
        })
    }
}

/// The primaries of a cluster, from `CLUSTER NODES`.
async fn cluster_primaries(conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>, StoreError> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(conn)
        .await
        .map_err(map_error)?;
    let mut primaries = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
            continue;
        }
        let addr = addr.split('@').next().unwrap_or(addr);
        if let Some((host, port)) = addr.rsplit_once(':')
            && let Ok(port) = port.parse()
        {
            primaries.push((host.to_owned(), port));
        }
    }
    Ok(primaries)
}

enum GroupStatus {
    Admitted,
    Replay(usize),
    Exceeded,
    /// An earlier attempt of this very call applied the group (a retry
    /// after a lost reply); no limit states come back.
    AppliedBefore,
}

/// True when a group has nothing for the store (its limits were admitted
/// from leases, its usage is counted locally).
fn is_idle(group: &Group) -> bool {
    group.nonces.is_empty() && group.limits.is_empty() && group.usage.is_empty()
}

/// The outcome of an admission with nothing to check.
fn nothing_to_do(admission: &Admission) -> Outcome {
    Outcome {
        verdict: Verdict::Admitted,
        limits: admission.groups.iter().map(|_| Vec::new()).collect(),
    }
}

/// Parses the admit script's reply for `groups`' limit ops (4 integers
/// each, 8 for a lease op).
fn parse_admit<'g>(
    reply: &[i64],
    groups: impl Iterator<Item = &'g Group>,
) -> Result<(GroupStatus, Vec<LimitState>), StoreError> {
    let bad = || StoreError::Protocol(format!("admit script replied {reply:?}"));
    let (&status, rest) = reply.split_first().ok_or_else(bad)?;
    let (&index, mut rest) = rest.split_first().ok_or_else(bad)?;
    let status = match status {
        0 => GroupStatus::Admitted,
        1 => GroupStatus::Replay(usize::try_from(index - 1).map_err(|_| bad())?),
        2 => GroupStatus::Exceeded,
        3 => GroupStatus::AppliedBefore,
        _ => return Err(bad()),
    };
    let num = |v: i64| u64::try_from(v).unwrap_or(0);
    // A slice counts only when the script wrote it: when it admitted.
    let written = matches!(status, GroupStatus::Admitted);
    let mut states = Vec::new();
    if rest.is_empty() {
        return Ok((status, states));
    }
    for op in groups.flat_map(|g| g.limits.iter()) {
        let width = if op.lease.is_some() { 8 } else { 4 };
        let (c, more) = rest.split_at_checked(width).ok_or_else(bad)?;
        rest = more;
        states.push(LimitState {
            allowed: c[0] == 1,
            remaining: num(c[1]),
            reset_us: num(c[2]),
            retry_after_us: num(c[3]),
            lease: (width == 8 && c[0] == 1 && written).then(|| Granted {
                units: num(c[4]),
                base: num(c[5]),
                top: num(c[6]),
                epoch: num(c[7]),
            }),
        });
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok((status, states))
}

/// Maps a client error to a store error. The message is the error kind and
/// Redis's own text, never a URL.
fn map_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        return StoreError::Unavailable(format!("timed out: {}", e.kind_name()));
    }
    let text = e.to_string();
    if text.contains("Error running script") || text.contains("user_script") {
        return StoreError::Protocol(text);
    }
    StoreError::Unavailable(format!("{}: {}", e.kind_name(), e.detail().unwrap_or("")))
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        match self.conn {
            Conn::Single(_) => "redis",
            Conn::Cluster(_) => "redis-cluster",
        }
    }

    fn admit<'a>(&'a self, admission: &'a Admission) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            if admission.groups.is_empty() {
                return Ok(Outcome {
                    verdict: Verdict::Admitted,
                    limits: Vec::new(),
                });
            }
            tokio::time::timeout(self.timeout, self.admit_inner(admission))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))?
        })
    }

    fn settle<'a>(&'a self, settlement: &'a Settlement) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.settle_inner(settlement))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))?
        })
    }

    fn usage<'a>(
        &'a self,
        query: &'a UsageQuery,
    ) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>> {
        // Reading usage is a support task, not the request path: give it
        // far more time than an admission.
        Box::pin(async move {
            let limit = self.timeout.max(Duration::from_secs(30));
            tokio::time::timeout(limit, self.usage_inner(query))
                .await
                .map_err(|_| StoreError::Timeout(limit))?
        })
    }

    fn retention(&self) -> Retention {
        self.retention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        let url: RedisUrl = "rediss://user:pa55@redis.example:6380/0".parse().unwrap();
        assert_eq!(url.redacted(), "rediss://user:***@redis.example:6380/0");
        let url: RedisUrl = "redis://:pa55@10.0.0.1".parse().unwrap();
        assert_eq!(url.to_string(), "redis://:***@10.0.0.1");
        assert!(!format!("{url:?}").contains("pa55"));
        let url: RedisUrl = "redis://127.0.0.1:7000".parse().unwrap();
        assert_eq!(url.to_string(), "redis://127.0.0.1:7000");
        assert!("http://x".parse::<RedisUrl>().is_err());
    }

    #[test]
    fn admit_replies_parse() {
        use crate::store::{LeaseAsk, LimitOp, Rule};
        let op = |lease: bool| LimitOp {
            key: "k".into(),
            cost: 1,
            rule: Rule::Rate {
                interval_us: 1,
                burst: 1,
            },
            lease: lease.then_some(LeaseAsk {
                want: 5,
                ends_at_us: 9,
                previous: None,
            }),
        };
        let group = Group {
            limits: vec![op(false), op(false)],
            ..Group::default()
        };
        let (status, states) =
            parse_admit(&[2, 0, 1, 4, 100, 0, 0, 0, 5, 7], [&group].into_iter()).unwrap();
        assert!(matches!(status, GroupStatus::Exceeded));
        assert_eq!(states.len(), 2);
        assert!(states[0].allowed && !states[1].allowed);
        assert_eq!(states[1].retry_after_us, 7);
        assert!(matches!(
            parse_admit(&[1, 2], [&group].into_iter()).unwrap().0,
            GroupStatus::Replay(1)
        ));
        assert!(parse_admit(&[0, 0, 1], [&group].into_iter()).is_err());
        // A lease op's state carries its slice.
        let leased = Group {
            limits: vec![op(false), op(true)],
            ..Group::default()
        };
        let (_, states) = parse_admit(
            &[0, 0, 1, 4, 100, 0, 1, 3, 10, 0, 5, 0, 25, 77],
            [&leased].into_iter(),
        )
        .unwrap();
        assert_eq!(states[0].lease, None);
        assert_eq!(
            states[1].lease,
            Some(Granted {
                units: 5,
                base: 0,
                top: 25,
                epoch: 77
            })
        );
        assert!(parse_admit(&[0, 0, 1, 4, 100, 0, 1, 3, 10, 0], [&leased].into_iter()).is_err());
    }
}
