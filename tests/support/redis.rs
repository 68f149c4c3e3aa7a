//! Real `redis-server` processes for the store tests: one server
//! ([`RedisServer`]) or a Redis Cluster of N primaries ([`RedisCluster`]),
//! on loopback ports the test proves it owns.
//!
//! A port is taken by binding `127.0.0.1:0`, releasing it and starting
//! `redis-server --port P --bind 127.0.0.1`; the server is then asked for
//! `INFO server` and its `process_id` must be our child's PID, so a test can
//! never talk to some other Redis that happened to grab the port (it then
//! retries with a new port). Persistence is off (`--save ''
//! --appendonly no`), the working directory is a temporary one, and every
//! process is killed by its PID when its handle drops. A missing
//! `redis-server` panics with the install command: never a silent skip.
//!
//! This file stands alone (it uses nothing else of `tests/support`), so a
//! test crate may include it with `#[path]`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MISSING: &str = "redis-server not found: run scripts/setup.sh (apt-get install redis-server)";

/// How long a server gets to start answering.
const START_LIMIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn check_binary() {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
        Err(e) => panic!("cannot run redis-server ({e}); {MISSING}"),
    }
}

/// One `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server on a fresh loopback port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments
    /// (e.g. `["--maxmemory-policy", "allkeys-lru"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        check_binary();
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, dir.path(), &extra) {
                return Self {
                    child: Some(child),
                    port,
                    dir,
                    extra,
                };
            }
        }
        panic!("could not start redis-server on a free loopback port after 5 attempts");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The child's PID (None after [`kill`](Self::kill)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A synchronous connection for assertions and admin commands.
    pub fn connection(&self) -> redis::Connection {
        connect(self.port).expect("connect to the test redis-server")
    }

    /// Kills the server (SIGKILL by PID) and reaps it: the "Redis crashed"
    /// fault.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)),
    /// proving again that the new process owns it. Data is gone (no
    /// persistence), as after a real crash without AOF.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(child) = spawn(self.port, self.dir.path(), &self.extra) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "could not restart redis-server on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `INFO commandstats` as command → calls (`evalsha`, `eval`, …).
    pub fn command_stats(&self) -> HashMap<String, u64> {
        command_stats(&mut self.connection())
    }

    /// `CONFIG RESETSTAT`: zeroes the command statistics.
    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut self.connection())
            .expect("CONFIG RESETSTAT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    client.get_connection_with_timeout(Duration::from_secs(2))
}

/// Spawns `redis-server` on `port` and waits until it answers and proves
/// it is our child; `None` when it exited (port taken) or is not ours.
fn spawn(port: u16, dir: &Path, extra: &[String]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!("{MISSING}")
            }
            panic!("cannot spawn redis-server: {e}")
        });
    let pid = child.id();
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if let Ok(mut conn) = connect(port) {
            let info: redis::RedisResult<String> =
                redis::cmd("INFO").arg("server").query(&mut conn);
            if let Ok(info) = info {
                let owner = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|v| v.trim().parse::<u32>().ok());
                if owner == Some(pid) {
                    return Some(child);
                }
                // Someone else's server answered on this port.
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server on port {port} did not answer within {START_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn command_stats(conn: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// A Redis Cluster of N primaries (no replicas) on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` cluster-enabled servers, assigns the 16384 slots evenly
    /// (`CLUSTER ADDSLOTSRANGE`), joins them (`CLUSTER MEET`) and waits
    /// until every node reports `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        assert!(n >= 1);
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            // The cluster bus port must be free too: pick it ourselves.
            let bus = free_port().to_string();
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "2000",
                "--cluster-config-file",
                &format!("nodes-{bus}.conf"),
            ]));
        }
        let per = 16384 / n;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == n { 16383 } else { first + per - 1 };
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query(&mut node.connection())
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let first = &nodes[0];
        for node in &nodes[1..] {
            let bus = node
                .extra
                .iter()
                .skip_while(|a| *a != "--cluster-port")
                .nth(1)
                .cloned()
                .expect("bus port");
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .arg(bus)
                .query(&mut first.connection())
                .expect("CLUSTER MEET");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = nodes.iter().all(|node| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection())
                    .unwrap_or_default();
                let known: usize = info
                    .lines()
                    .find_map(|l| l.strip_prefix("cluster_known_nodes:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                info.contains("cluster_state:ok") && known == n
            });
            if ok {
                return Self { nodes };
            }
            assert!(
                Instant::now() < deadline,
                "Redis Cluster of {n} did not reach cluster_state:ok within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' URLs (the seed list for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Command statistics summed over every node.
    pub fn command_stats(&self) -> HashMap<String, u64> {
        let mut total = HashMap::new();
        for node in &self.nodes {
            for (name, calls) in node.command_stats() {
                *total.entry(name).or_insert(0) += calls;
            }
        }
        total
    }
}
