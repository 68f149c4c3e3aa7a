//! The scenarios and the report.
//!
//! Every measurement reads, before and after, the CPU time of each process
//! involved (`/proc/<pid>/stat`) and Redis's `INFO commandstats`, so each
//! row reports CPU µs per request per process and Redis commands per
//! request next to the throughput and latency. The machine has few cores
//! and the generator shares them: CPU per request is the figure that
//! carries to other machines; requests per second are this machine's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::runtime::Runtime;

use crate::Options;
use crate::check;
use crate::check::Part;
use crate::envoy::{self, Cluster, Envoy, Filter, Listener};
use crate::fixtures::{self, Fixture};
use crate::loadgen::{self, Caller, GrpcCaller, HttpCaller, Sample};
use crate::null::Answer;
use crate::procs::{self, Proc, Redis, Tollgate};

/// Limitador's Redis-mode throughput on this kind of machine (issue 6).
const LIMITADOR_REDIS_RPS: f64 = 11_500.0;

/// One measured run with its costs.
struct Measured {
    sample: Sample,
    /// (process label, CPU seconds used during the run).
    cpu: Vec<(&'static str, f64)>,
    /// (process label, seconds its threads waited for a core).
    wait: Vec<(&'static str, f64)>,
    /// The generator's own CPU seconds.
    generator_cpu: f64,
    /// Seconds the generator's threads waited for a core.
    generator_wait: f64,
    /// Redis commands during the run.
    redis_commands: Vec<(String, procs::CommandStat)>,
}

impl Measured {
    /// Adds a later round of the same measurement.
    fn absorb(&mut self, other: Measured) {
        self.sample.absorb(other.sample);
        add_by_key(&mut self.cpu, other.cpu);
        add_by_key(&mut self.wait, other.wait);
        self.generator_cpu += other.generator_cpu;
        self.generator_wait += other.generator_wait;
        add_by_key(&mut self.redis_commands, other.redis_commands);
        self.redis_commands.sort();
    }

    fn per_request_us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / (self.sample.calls.max(1) as f64)
    }

    /// Every watched process and the generator, per request: what the
    /// machine's cores are shared by.
    fn all_cpu_us(&self) -> f64 {
        let watched: f64 = self.cpu.iter().map(|(_, s)| s).sum();
        self.per_request_us(watched + self.generator_cpu)
    }

    fn cpu_us(&self, label: &str) -> Option<f64> {
        self.us_of(&self.cpu, label)
    }

    /// µs per request of `label`'s seconds in `seconds` (CPU or wait).
    fn us_of(&self, seconds: &[(&'static str, f64)], label: &str) -> Option<f64> {
        seconds
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, s)| self.per_request_us(*s))
    }

    /// CPU µs per request of the `labels` processes and the generator,
    /// as `a / b / … / generator`.
    fn cpu_cells(&self, labels: &[&str]) -> String {
        self.cells(&self.cpu, self.generator_cpu, labels)
    }

    /// Run-queue wait µs per request (time runnable but off-core) of the
    /// `labels` processes and the generator, as `a / b / … / generator`.
    fn wait_cells(&self, labels: &[&str]) -> String {
        self.cells(&self.wait, self.generator_wait, labels)
    }

    fn cells(&self, seconds: &[(&'static str, f64)], generator: f64, labels: &[&str]) -> String {
        let cells: Vec<String> = labels
            .iter()
            .map(|label| self.us_of(seconds, label))
            .chain(std::iter::once(Some(self.per_request_us(generator))))
            .map(|us| us.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")))
            .collect();
        cells.join(" / ")
    }

    /// Scripts (`EVALSHA`, `EVAL`) per request: the client round trips
    /// of servers that talk to Redis only through scripts (tollgate and
    /// the null+Redis server), counted over the whole measurement.
    fn scripts_per_request(&self) -> f64 {
        let scripts: u64 = self
            .redis_commands
            .iter()
            .filter(|(name, _)| matches!(name.as_str(), "evalsha" | "eval"))
            .map(|(_, s)| s.calls)
            .sum();
        scripts as f64 / self.sample.calls.max(1) as f64
    }

    fn redis_per_request(&self) -> f64 {
        let total: u64 = self.redis_commands.iter().map(|(_, s)| s.calls).sum();
        total as f64 / self.sample.calls.max(1) as f64
    }

    /// Per request: each command's calls and the µs Redis spent in it
    /// (`commandstats`; a script's time includes the commands it runs).
    fn redis_breakdown(&self) -> String {
        let calls = self.sample.calls.max(1) as f64;
        self.redis_commands
            .iter()
            .map(|(name, s)| {
                format!(
                    "{name} {:.2} ({:.1} µs)",
                    s.calls as f64 / calls,
                    s.usec as f64 / calls
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Adds `more` to `totals`, key by key (a process's seconds, a Redis
/// command's calls and time).
fn add_by_key<K: PartialEq, V: std::ops::AddAssign>(totals: &mut Vec<(K, V)>, more: Vec<(K, V)>) {
    for (key, value) in more {
        match totals.iter_mut().find(|(k, _)| *k == key) {
            Some((_, total)) => *total += value,
            None => totals.push((key, value)),
        }
    }
}

/// A process whose CPU a run reports.
#[derive(Clone, Copy)]
struct Watched {
    label: &'static str,
    pid: u32,
}

struct Meter {
    ticks: f64,
}

impl Meter {
    fn new() -> Self {
        Self {
            ticks: procs::clock_ticks(),
        }
    }

    /// Runs `load` on `rt`, measuring `watched` and Redis around it.
    fn measure<C: Caller, F>(
        &self,
        rt: &Runtime,
        watched: &[Watched],
        redis: &Redis,
        load: F,
    ) -> anyhow::Result<(Vec<C>, Measured)>
    where
        F: std::future::Future<Output = anyhow::Result<(Vec<C>, Sample)>>,
    {
        // (CPU seconds, run-queue wait seconds) of each watched process.
        let usage_now = || -> Vec<(f64, f64)> {
            watched
                .iter()
                .map(|w| {
                    (
                        procs::cpu_seconds(Some(w.pid), self.ticks),
                        procs::run_queue_wait_seconds(Some(w.pid)),
                    )
                })
                .collect()
        };
        let own_usage = || {
            (
                procs::cpu_seconds(None, self.ticks),
                procs::run_queue_wait_seconds(None),
            )
        };
        let commands_before = redis.command_calls()?;
        let self_before = own_usage();
        let before = usage_now();
        let (callers, sample) = rt.block_on(load)?;
        let after = usage_now();
        let self_after = own_usage();
        let commands_after = redis.command_calls()?;
        let delta = |pick: fn(&(f64, f64)) -> f64| -> Vec<(&'static str, f64)> {
            watched
                .iter()
                .zip(before.iter().zip(after.iter()))
                .map(|(w, (b, a))| (w.label, pick(a) - pick(b)))
                .collect()
        };
        let measured = Measured {
            sample,
            cpu: delta(|u| u.0),
            wait: delta(|u| u.1),
            generator_cpu: self_after.0 - self_before.0,
            generator_wait: self_after.1 - self_before.1,
            redis_commands: procs::command_delta(&commands_before, &commands_after),
        };
        if measured.sample.failures > 0 {
            bail!(
                "{} of {} requests were not admitted; first: {}",
                measured.sample.failures,
                measured.sample.calls,
                measured.sample.first_failure.as_deref().unwrap_or("?")
            );
        }
        Ok((callers, measured))
    }
}

/// Measures each of `items` in `rounds` rounds, the items taking turns
/// within each round, and merges each item's rounds: a slow minute of the
/// machine then lands on every item instead of on whichever ran in it.
fn interleaved<T>(
    rounds: u32,
    items: &[T],
    mut measure: impl FnMut(&T, u32) -> anyhow::Result<Measured>,
) -> anyhow::Result<Vec<Measured>> {
    let mut merged: Vec<Option<Measured>> = items.iter().map(|_| None).collect();
    for round in 0..rounds {
        for (item, slot) in items.iter().zip(merged.iter_mut()) {
            let measured = measure(item, round)?;
            match slot {
                Some(total) => total.absorb(measured),
                None => *slot = Some(measured),
            }
        }
    }
    Ok(merged.into_iter().flatten().collect())
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Prints the machine and the versions of what runs.
pub fn machine(options: &Options) -> anyhow::Result<()> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = fixtures::status_field_kib(&meminfo, "MemTotal:") as f64 / 1024.0 / 1024.0;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |program: &Path, arg: &str| -> String {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "?".into())
    };
    let envoy = procs::envoy_binary(&options.repo)?;
    println!("## Machine");
    println!(
        "cpu: {model}, {cores} cores; memory {mem_gib:.1} GiB; kernel {}",
        kernel.trim()
    );
    println!("envoy: {}", version(&envoy, "--version"));
    println!("redis: {}", version(Path::new("redis-server"), "--version"));
    println!(
        "tollgate: {} ({})",
        options.tollgate_binary().display(),
        if options.quick {
            "quick run"
        } else {
            "full run"
        }
    );
    println!(
        "measurements: {:?} each in {} interleaved round(s), {:?} warm-up before a scenario's first; {} connections when saturated",
        options.duration(),
        options.rounds(),
        options.warmup(),
        options.connections
    );
    println!(
        "servers (null and tollgate): {} tokio worker thread(s) each; Envoy: 1 worker",
        options.server_threads
    );
    Ok(())
}

/// Redis round trips per request, counted with `MONITOR` over a short
/// run: (per request, "evalsha 1.00, …").
fn round_trips<C: Caller>(
    rt: &Runtime,
    redis: &Redis,
    callers: Vec<C>,
) -> anyhow::Result<(f64, String)> {
    let monitor = redis.monitor()?;
    let (_, sample) = rt.block_on(loadgen::closed_loop(callers, Duration::from_millis(300)))?;
    let counts = monitor.finish()?;
    let calls = sample.calls.max(1) as f64;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let breakdown = counts
        .iter()
        .map(|(name, n)| format!("{name} {:.2}", *n as f64 / calls))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((total as f64 / calls, breakdown))
}

fn round_trip_cell(value: &Option<(f64, String)>) -> String {
    value
        .as_ref()
        .map_or_else(|| "-".to_owned(), |(n, _)| format!("{n:.2}"))
}

/// A null ext_authz server child process answering `answer`, labelled
/// `name`.
fn start_null(
    options: &Options,
    name: &'static str,
    redis: Option<&str>,
    answer: &Answer,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut command = match &options.null_wrapper {
        Some(wrapper) => {
            let mut command = Command::new(wrapper);
            command.arg(exe);
            command
        }
        None => Command::new(exe),
    };
    command
        .env("TOKIO_WORKER_THREADS", options.server_threads.to_string())
        .arg("null-server")
        .args(answer.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = redis {
        command.args(["--redis", url]);
    }
    let mut proc = Proc::spawn(name, &mut command)?;
    let stdout = proc.take_stdout().context("null server stdout")?;
    let addr = procs::wait_for_line(stdout, Duration::from_secs(30), |line| {
        line.strip_prefix("listening ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
    })
    .with_context(|| format!("{name} server did not start"))?;
    Ok((proc, addr))
}

/// tollgate's answer for the benchmark request, as the null servers send it.
fn tollgates_answer() -> Answer {
    Answer::default()
}

/// The `serve` flag that turns quota leases off.
fn leases_off() -> Vec<String> {
    vec!["--quota-leases".to_owned(), "off".to_owned()]
}

/// Writes the full policy (`policies` policies, `apps` apps) as files.
fn write_policy(
    fixture: &Fixture,
    dir: &Path,
    policies: usize,
    apps: usize,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for (i, text) in fixture.policy_files(policies, apps).iter().enumerate() {
        let path = dir.join(format!("policy-{i}.yaml"));
        std::fs::write(&path, text)?;
        paths.push(path);
    }
    Ok(paths)
}

fn start_tollgate(
    options: &Options,
    policy: &[PathBuf],
    redis: Option<&str>,
) -> anyhow::Result<Tollgate> {
    start_tollgate_with(options, policy, redis, &[])
}

/// [`start_tollgate`] with further `serve` flags.
fn start_tollgate_with(
    options: &Options,
    policy: &[PathBuf],
    redis: Option<&str>,
    extra: &[String],
) -> anyhow::Result<Tollgate> {
    let binary = options.tollgate_binary();
    if !binary.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release` (bench/load.sh does)",
            binary.display()
        );
    }
    let tollgate = Tollgate::start(&binary, policy, redis, options.server_threads, extra)?;
    // Ready once the snapshot is loaded.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = envoy::http_get(tollgate.admin, "/readyz") {
            return Ok(tollgate);
        }
        if Instant::now() > deadline {
            bail!("tollgate was not ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Envoy scenarios, in report order.
struct Scenario {
    listener: &'static str,
    title: &'static str,
    /// The authorization server's label and PID, if any.
    server: Option<Watched>,
}

/// One Envoy's listeners measured in a closed loop: the common part of
/// the `envoy`, `answer` and `tracing` runs.
struct ThroughEnvoy<'a> {
    rt: &'a Runtime,
    meter: &'a Meter,
    fixture: &'a Fixture,
    envoy: &'a Envoy,
    redis: &'a Redis,
    /// Watch Redis's CPU too (scenarios whose servers share it).
    watch_redis: bool,
    /// Length of one round's measurement.
    slice: Duration,
}

impl ThroughEnvoy<'_> {
    /// Envoy, the scenario's server, and Redis when asked.
    fn watched(&self, scenario: &Scenario) -> Vec<Watched> {
        let mut list = vec![Watched {
            label: "envoy",
            pid: self.envoy.proc.pid(),
        }];
        list.extend(scenario.server);
        if self.watch_redis {
            list.push(Watched {
                label: "redis",
                pid: self.redis.proc.pid(),
            });
        }
        list
    }

    /// `connections` callers in a closed loop through the scenario's
    /// listener: `warmup` unmeasured, then one measured slice.
    fn closed(
        &self,
        scenario: &Scenario,
        connections: usize,
        warmup: Duration,
    ) -> anyhow::Result<Measured> {
        let addr = self.envoy.listener(scenario.listener)?;
        let callers = http_callers(self.rt, addr, self.fixture, connections)?;
        let (callers, _) = self.rt.block_on(loadgen::closed_loop(callers, warmup))?;
        let (_, measured) = self.meter.measure(
            self.rt,
            &self.watched(scenario),
            self.redis,
            loadgen::closed_loop(callers, self.slice),
        )?;
        Ok(measured)
    }

    /// Every scenario saturated (`options.connections`), interleaved over
    /// the rounds; `tag` prefixes the progress lines.
    fn saturated(
        &self,
        tag: &str,
        scenarios: &[Scenario],
        options: &Options,
    ) -> anyhow::Result<Vec<Measured>> {
        let rounds = options.rounds();
        interleaved(rounds, scenarios, |scenario, round| {
            eprintln!(
                "[{tag}] round {}/{rounds}: {} ...",
                round + 1,
                scenario.title
            );
            self.closed(scenario, options.connections, options.warmup_before(round))
        })
    }

    /// Every scenario over one connection (its unloaded latency),
    /// interleaved over the rounds.
    fn unloaded(
        &self,
        tag: &str,
        scenarios: &[Scenario],
        options: &Options,
    ) -> anyhow::Result<Vec<Measured>> {
        let rounds = options.rounds();
        interleaved(rounds, scenarios, |scenario, round| {
            eprintln!(
                "[{tag}] round {}/{rounds}: {} unloaded ...",
                round + 1,
                scenario.title
            );
            self.closed(scenario, 1, options.warmup_before(round) / 2)
        })
    }
}

/// One scenario's three measurements.
struct EnvoyRow {
    title: &'static str,
    listener: &'static str,
    saturated: Measured,
    unloaded: Measured,
    open: Option<Measured>,
    /// Redis round trips per request (MONITOR), where Redis is used.
    round_trips: Option<(f64, String)>,
}

fn http_callers(
    rt: &Runtime,
    addr: SocketAddr,
    fixture: &Fixture,
    connections: usize,
) -> anyhow::Result<Vec<HttpCaller>> {
    let credentials = fixture.credentials(0, fixtures::SUBJECT);
    let headers: Vec<(&str, &str)> = check::envoy_headers(&credentials, fixtures::HOST)
        .into_iter()
        .filter(|(name, _)| !name.starts_with(':') && *name != "x-request-id")
        .collect();
    let request = loadgen::http_request(fixtures::HOST, &headers);
    rt.block_on(async {
        let mut callers = Vec::with_capacity(connections);
        for _ in 0..connections {
            callers.push(HttpCaller::connect(addr, Arc::clone(&request)).await?);
        }
        anyhow::Ok(callers)
    })
}

/// Envoy side by side.
pub fn envoy(options: &Options) -> anyhow::Result<()> {
    let rt = runtime()?;
    let meter = Meter::new();
    let fixture = Fixture::generate();
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;
    let policy = write_policy(&fixture, dir.path(), 1, 1)?;

    let redis = Redis::start()?;
    // Quota leases on (the default) and off, side by side on one Redis.
    let tollgate = start_tollgate(options, &policy, Some(&redis.url()))?;
    let tollgate_off = start_tollgate_with(options, &policy, Some(&redis.url()), &leases_off())?;
    // The same tollgate over mutual TLS: certificate, client CA and the
    // SPIFFE ID allow-list, as deploy/envoy/front-proxy-mtls.yaml uses it.
    let tls = crate::tls::Files::generate(dir.path())?;
    let tollgate_tls =
        start_tollgate_with(options, &policy, Some(&redis.url()), &tls.tollgate_args())?;
    let bare = Answer {
        bare: true,
        ..Answer::default()
    };
    let (null, null_addr) = start_null(options, "null", None, &tollgates_answer())?;
    let (null_bare, null_bare_addr) = start_null(options, "null-bare", None, &bare)?;
    let (null_redis, null_redis_addr) = start_null(
        options,
        "null+redis",
        Some(&redis.url()),
        &tollgates_answer(),
    )?;
    let listeners = [
        ("direct", Filter::None),
        ("null_bare", Filter::ExtAuthz("null_bare")),
        ("null", Filter::ExtAuthz("null")),
        ("null_redis", Filter::ExtAuthz("null_redis")),
        ("jwt", Filter::JwtAuthn { cache: false }),
        ("jwt_cache", Filter::JwtAuthn { cache: true }),
        ("tollgate", Filter::ExtAuthz("tollgate")),
        ("tollgate_off", Filter::ExtAuthz("tollgate_off")),
        ("tollgate_tls", Filter::ExtAuthz("tollgate_tls")),
    ]
    .map(|(name, filter)| Listener { name, filter });
    let bootstrap = envoy::bootstrap(
        &listeners,
        &[
            Cluster::plain("null_bare", null_bare_addr),
            Cluster::plain("null", null_addr),
            Cluster::plain("null_redis", null_redis_addr),
            Cluster::plain("tollgate", tollgate.grpc),
            Cluster::plain("tollgate_off", tollgate_off.grpc),
            Cluster {
                name: "tollgate_tls",
                addr: tollgate_tls.grpc,
                tls: Some(tls.transport_socket()),
            },
        ],
        &fixture,
    );
    let envoy = Envoy::start(&procs::envoy_binary(&options.repo)?, &bootstrap)?;

    let watched = |label, proc: &Proc| {
        Some(Watched {
            label,
            pid: proc.pid(),
        })
    };
    let scenarios = [
        Scenario {
            listener: "direct",
            title: "1 Envoy direct_response (ceiling)",
            server: None,
        },
        Scenario {
            listener: "null_bare",
            title: "2o Envoy + null ext_authz answering a bare OK",
            server: watched("server", &null_bare),
        },
        Scenario {
            listener: "null",
            title: "2a Envoy + null ext_authz",
            server: watched("server", &null),
        },
        Scenario {
            listener: "null_redis",
            title: "2b Envoy + null ext_authz + 1 EVALSHA (floor)",
            server: watched("server", &null_redis),
        },
        Scenario {
            listener: "jwt",
            title: "3a Envoy jwt_authn (2 tokens, no cache)",
            server: None,
        },
        Scenario {
            listener: "jwt_cache",
            title: "3b Envoy jwt_authn (2 tokens, jwt_cache_config)",
            server: None,
        },
        Scenario {
            listener: "tollgate",
            title: "4 Envoy + tollgate (full policy, Redis, leases)",
            server: watched("server", &tollgate.proc),
        },
        Scenario {
            listener: "tollgate_off",
            title: "4o Envoy + tollgate (full policy, Redis, leases off)",
            server: watched("server", &tollgate_off.proc),
        },
        Scenario {
            listener: "tollgate_tls",
            title: "4t Envoy + tollgate over mutual TLS (full policy, Redis, leases)",
            server: watched("server", &tollgate_tls.proc),
        },
    ];
    println!("\n## Through Envoy (HTTP/1.1, one Envoy worker)");
    let (rounds, slice) = (options.rounds(), options.slice());
    let through = ThroughEnvoy {
        rt: &rt,
        meter: &meter,
        fixture: &fixture,
        envoy: &envoy,
        redis: &redis,
        watch_redis: true,
        slice,
    };
    let saturated = through.saturated("envoy", &scenarios, options)?;
    let unloaded = through.unloaded("envoy", &scenarios, options)?;
    let mut rows = Vec::new();
    for ((scenario, saturated), unloaded) in scenarios.iter().zip(saturated).zip(unloaded) {
        let round_trips = if saturated.redis_per_request() > 0.0 {
            let addr = envoy.listener(scenario.listener)?;
            let callers = http_callers(&rt, addr, &fixture, 1)?;
            Some(round_trips(&rt, &redis, callers)?)
        } else {
            None
        };
        rows.push(EnvoyRow {
            title: scenario.title,
            listener: scenario.listener,
            saturated,
            unloaded,
            open: None,
            round_trips,
        });
    }
    let floor_rate = row(&rows, "null_redis")?.saturated.sample.rate();
    let open_rate = (floor_rate / 2.0).max(10.0);
    let open = interleaved(rounds, &scenarios, |scenario, round| {
        eprintln!(
            "[envoy] round {}/{rounds}: {} open loop at {open_rate:.0}/s ...",
            round + 1,
            scenario.title
        );
        let addr = envoy.listener(scenario.listener)?;
        let callers = http_callers(&rt, addr, &fixture, options.connections)?;
        let warmup = options.warmup_before(round);
        let (callers, _) = rt.block_on(loadgen::open_loop(callers, open_rate, warmup))?;
        let (_, open) = meter.measure(
            &rt,
            &through.watched(scenario),
            &redis,
            loadgen::open_loop(callers, open_rate, slice),
        )?;
        anyhow::Ok(open)
    })?;
    for (row, open) in rows.iter_mut().zip(open) {
        row.open = Some(open);
    }
    print_envoy(&rows, options.connections, open_rate)?;
    drop(envoy);
    drop((
        null,
        null_bare,
        null_redis,
        tollgate,
        tollgate_off,
        tollgate_tls,
    ));
    Ok(())
}

/// What each part of tollgate's allow answer costs Envoy (issue 18): one
/// null server per answer, the parts added one by one — a bare OK, the
/// upstream identity headers, the removals, the RateLimit headers
/// (tollgate's answer for the benchmark policy), and the dynamic metadata
/// a policy with `response.dynamicMetadata: always` adds — each behind its
/// own listener of one Envoy, saturated, in interleaved rounds. The
/// difference of Envoy's CPU per request between one row and the one
/// before is what that part costs it.
pub fn answer(options: &Options) -> anyhow::Result<()> {
    let rt = runtime()?;
    let meter = Meter::new();
    let fixture = Fixture::generate();
    let redis = Redis::start()?;
    let answers: [(&'static str, &'static str, Answer); 5] = [
        (
            "a_bare",
            "bare OK",
            Answer {
                bare: true,
                ..Answer::default()
            },
        ),
        (
            "a_headers",
            "+ identity headers (set upstream)",
            Answer {
                without: vec![Part::Removals, Part::Ratelimit],
                ..Answer::default()
            },
        ),
        (
            "a_removals",
            "+ header removals (credentials)",
            Answer {
                without: vec![Part::Ratelimit],
                ..Answer::default()
            },
        ),
        (
            "a_ratelimit",
            "+ RateLimit headers (tollgate's answer, the default)",
            Answer::default(),
        ),
        (
            "a_metadata",
            "+ dynamic metadata (response.dynamicMetadata: always)",
            Answer {
                metadata: true,
                ..Answer::default()
            },
        ),
    ];
    let mut servers = Vec::new();
    for (name, _, answer) in &answers {
        servers.push(start_null(options, name, None, answer)?);
    }
    let listeners: Vec<Listener> = answers
        .iter()
        .map(|&(name, _, _)| Listener {
            name,
            filter: Filter::ExtAuthz(name),
        })
        .collect();
    let clusters: Vec<Cluster> = answers
        .iter()
        .zip(&servers)
        .map(|(&(name, _, _), &(_, addr))| Cluster::plain(name, addr))
        .collect();
    let bootstrap = envoy::bootstrap(&listeners, &clusters, &fixture);
    let envoy = Envoy::start(&procs::envoy_binary(&options.repo)?, &bootstrap)?;
    let scenarios: Vec<Scenario> = answers
        .iter()
        .zip(&servers)
        .map(|(&(name, title, _), (proc, _))| Scenario {
            listener: name,
            title,
            server: Some(Watched {
                label: "server",
                pid: proc.pid(),
            }),
        })
        .collect();
    println!(
        "\n## What each part of the allow answer costs Envoy (null servers, one Envoy worker)"
    );
    let through = ThroughEnvoy {
        rt: &rt,
        meter: &meter,
        fixture: &fixture,
        envoy: &envoy,
        redis: &redis,
        watch_redis: false,
        slice: options.slice(),
    };
    let measured = through.saturated("answer", &scenarios, options)?;
    println!(
        "\nSaturated, closed loop, {} connections; each row adds one part to the row before.\n\n\
         | answer | req/s | Envoy CPU µs/req | Envoy Δ µs | server CPU µs/req | all CPU µs/req |\n\
         |---|---:|---:|---:|---:|---:|",
        options.connections
    );
    let mut previous: Option<f64> = None;
    for (scenario, m) in scenarios.iter().zip(&measured) {
        let envoy_us = m.cpu_us("envoy").unwrap_or_default();
        println!(
            "| {} | {:.0} | {envoy_us:.1} | {} | {} | {:.1} |",
            scenario.title,
            m.sample.rate(),
            previous.map_or_else(|| "-".to_owned(), |p| format!("{:+.1}", envoy_us - p)),
            cpu_cell(m.cpu_us("server")),
            m.all_cpu_us(),
        );
        previous = Some(envoy_us);
    }
    drop(envoy);
    drop(servers);
    Ok(())
}

/// tollgate through Envoy with tracing off, at 1 % and at 100 %: three
/// tollgate processes (one Redis), each exporting to the same null OTLP
/// collector, side by side in interleaved rounds. Envoy does not trace, so
/// every Check is a root span and tollgate's own sampler decides: the cost
/// measured is tollgate's alone.
pub fn tracing(options: &Options) -> anyhow::Result<()> {
    let rt = runtime()?;
    let meter = Meter::new();
    let fixture = Fixture::generate();
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;
    let policy = write_policy(&fixture, dir.path(), 1, 1)?;
    let redis = Redis::start()?;
    let collector = crate::collector::Collector::start()?;
    let endpoint = format!("http://{}", collector.addr);
    // A collector that is down: a port nothing listens on.
    let down = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", closed.local_addr()?)
    };
    let start = |ratio: Option<&str>, endpoint: &str| -> anyhow::Result<Tollgate> {
        // A generous store timeout: four tollgates, Envoy, Redis and the
        // generator share the cores, and a 503 would end the run.
        let mut args = vec!["--store-timeout".to_owned(), "1s".to_owned()];
        if let Some(ratio) = ratio {
            args.extend(["--otlp-endpoint".to_owned(), endpoint.to_owned()]);
            args.extend(["--otlp-sampler-ratio".to_owned(), ratio.to_owned()]);
        }
        start_tollgate_with(options, &policy, Some(&redis.url()), &args)
    };
    let off = start(None, &endpoint)?;
    let one = start(Some("0.01"), &endpoint)?;
    let all = start(Some("1"), &endpoint)?;
    let unreachable = start(Some("1"), &down)?;
    let listeners = [
        ("tracing_off", Filter::ExtAuthz("tracing_off")),
        ("tracing_1", Filter::ExtAuthz("tracing_1")),
        ("tracing_100", Filter::ExtAuthz("tracing_100")),
        ("tracing_down", Filter::ExtAuthz("tracing_down")),
    ]
    .map(|(name, filter)| Listener { name, filter });
    let bootstrap = envoy::bootstrap(
        &listeners,
        &[
            Cluster::plain("tracing_off", off.grpc),
            Cluster::plain("tracing_1", one.grpc),
            Cluster::plain("tracing_100", all.grpc),
            Cluster::plain("tracing_down", unreachable.grpc),
        ],
        &fixture,
    );
    let envoy = Envoy::start(&procs::envoy_binary(&options.repo)?, &bootstrap)?;
    let scenario = |listener, title, tollgate: &Tollgate| Scenario {
        listener,
        title,
        server: Some(Watched {
            label: "server",
            pid: tollgate.proc.pid(),
        }),
    };
    let scenarios = [
        scenario("tracing_off", "tracing off", &off),
        scenario("tracing_1", "tracing, 1 % sampled", &one),
        scenario("tracing_100", "tracing, 100 % sampled", &all),
        scenario(
            "tracing_down",
            "tracing, 100 % sampled, collector down",
            &unreachable,
        ),
    ];
    let through = ThroughEnvoy {
        rt: &rt,
        meter: &meter,
        fixture: &fixture,
        envoy: &envoy,
        redis: &redis,
        watch_redis: false,
        slice: options.slice(),
    };
    let spans_before = collector.spans();
    let saturated = through.saturated("tracing", &scenarios, options)?;
    let unloaded = through.unloaded("tracing", &scenarios, options)?;
    // Let the last batches reach the collector (the export delay is 5 s).
    std::thread::sleep(Duration::from_secs(6));
    let spans = collector.spans() - spans_before;
    println!(
        "\n## Tracing cost (tollgate through Envoy, full policy, Redis; OTLP to a null collector)\n\n\
         | scenario | saturated req/s | saturated p50 ms | saturated p99 ms | tollgate CPU µs/req | Envoy CPU µs/req | unloaded p50 ms | unloaded p99 ms | unloaded tollgate CPU µs/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for ((scenario, s), u) in scenarios.iter().zip(&saturated).zip(&unloaded) {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {:.3} | {:.3} | {} |",
            scenario.title,
            s.sample.rate(),
            s.sample.percentile_ms(50.0),
            s.sample.percentile_ms(99.0),
            cpu_cell(s.cpu_us("server")),
            cpu_cell(s.cpu_us("envoy")),
            u.sample.percentile_ms(50.0),
            u.sample.percentile_ms(99.0),
            cpu_cell(u.cpu_us("server")),
        );
    }
    println!("\n- spans the collector received during the runs: {spans}");
    if let Ok((200, metrics)) = envoy::http_get(unreachable.admin, "/metrics") {
        let dropped: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("tollgate_trace_spans_dropped_total"))
            .collect();
        println!("- collector down, spans dropped: {}", dropped.join(", "));
    }
    drop(envoy);
    drop((off, one, all, unreachable));
    Ok(())
}

fn row<'a>(rows: &'a [EnvoyRow], listener: &str) -> anyhow::Result<&'a EnvoyRow> {
    rows.iter()
        .find(|r| r.listener == listener)
        .with_context(|| format!("no row {listener}"))
}

fn cpu_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn print_envoy(rows: &[EnvoyRow], connections: usize, open_rate: f64) -> anyhow::Result<()> {
    println!(
        "\n### Saturated: closed loop, {connections} connections\n\n\
         | scenario | req/s | p50 ms | p99 ms | Envoy CPU µs/req | server CPU µs/req | Redis CPU µs/req | Redis cmds/req | Redis scripts/req | Redis round trips/req (MONITOR) | generator CPU µs/req | all CPU µs/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let m = &r.saturated;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {:.2} | {:.3} | {} | {:.1} | {:.1} |",
            r.title,
            m.sample.rate(),
            m.sample.percentile_ms(50.0),
            m.sample.percentile_ms(99.0),
            cpu_cell(m.cpu_us("envoy")),
            cpu_cell(m.cpu_us("server")),
            cpu_cell(m.cpu_us("redis")),
            m.redis_per_request(),
            m.scripts_per_request(),
            round_trip_cell(&r.round_trips),
            m.per_request_us(m.generator_cpu),
            m.all_cpu_us(),
        );
    }
    println!(
        "\n### Latency: unloaded (1 connection, closed loop) and open loop at {open_rate:.0} req/s (half the null+Redis saturation)\n\n\
         | scenario | unloaded req/s | unloaded p50 ms | unloaded p99 ms | open p50 ms | open p99 ms | open p99.9 ms | open achieved req/s | open: Envoy / server / Redis / generator CPU µs/req | open: run-queue wait µs/req, same order |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for r in rows {
        let u = &r.unloaded.sample;
        let (o50, o99, o999, orate) = r.open.as_ref().map_or((0.0, 0.0, 0.0, 0.0), |o| {
            (
                o.sample.percentile_ms(50.0),
                o.sample.percentile_ms(99.0),
                o.sample.percentile_ms(99.9),
                o.sample.rate(),
            )
        });
        let (ocpu, owait) = r.open.as_ref().map_or_else(Default::default, |o| {
            let labels = ["envoy", "server", "redis"];
            (o.cpu_cells(&labels), o.wait_cells(&labels))
        });
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {o50:.3} | {o99:.3} | {o999:.3} | {orate:.0} | {ocpu} | {owait} |",
            r.title,
            u.rate(),
            u.percentile_ms(50.0),
            u.percentile_ms(99.0),
        );
    }
    let tollgate = row(rows, "tollgate")?;
    let tollgate_off = row(rows, "tollgate_off")?;
    print_tls_cost(tollgate, row(rows, "tollgate_tls")?);
    println!(
        "\n### Ratios of tollgate to the others (saturated req/s)\n\n\
         | to | 4 (leases) | 4o (leases off) |\n|---|---:|---:|"
    );
    for r in rows
        .iter()
        .filter(|r| !matches!(r.listener, "tollgate" | "tollgate_off"))
    {
        let rate = r.saturated.sample.rate().max(1e-9);
        println!(
            "| {} | {:.2} | {:.2} |",
            r.title,
            tollgate.saturated.sample.rate() / rate,
            tollgate_off.saturated.sample.rate() / rate
        );
    }
    let floor = row(rows, "null_redis")?;
    for (what, r) in [
        ("tollgate, leases", tollgate),
        ("tollgate, leases off", tollgate_off),
        ("the floor (null+Redis)", floor),
    ] {
        println!(
            "- Redis per request, {what}: {:.4} scripts (round trips, INFO commandstats over the saturated run), {:.2} commands ({}), Redis CPU {} µs",
            r.saturated.scripts_per_request(),
            r.saturated.redis_per_request(),
            r.saturated.redis_breakdown(),
            cpu_cell(r.saturated.cpu_us("redis")),
        );
    }
    for (what, r) in [("leases", tollgate), ("leases off", tollgate_off)] {
        if let Some((n, breakdown)) = &r.round_trips {
            println!(
                "- Redis round trips per request, tollgate {what} (MONITOR, one connection, 0.3 s): {n:.2} ({breakdown})"
            );
        }
    }
    let null = row(rows, "null")?;
    println!("\n### Targets (issue 18, quota leases), through Envoy\n");
    target(
        "with leases ≥ 0.95× null+Redis (2b)",
        tollgate.saturated.sample.rate() / floor.saturated.sample.rate().max(1e-9),
        0.95,
        true,
        "×",
    );
    target(
        "with leases ≥ 0.80× null without Redis (2a)",
        tollgate.saturated.sample.rate() / null.saturated.sample.rate().max(1e-9),
        0.80,
        true,
        "×",
    );
    target(
        "Redis round trips per request with leases well under 0.1",
        tollgate.saturated.scripts_per_request(),
        0.1,
        false,
        "",
    );
    println!(
        "- (reported) all CPU µs per request: leases {:.1}, leases off {:.1}, null+Redis {:.1}, null {:.1}",
        tollgate.saturated.all_cpu_us(),
        tollgate_off.saturated.all_cpu_us(),
        floor.saturated.all_cpu_us(),
        null.saturated.all_cpu_us(),
    );

    let jwt = row(rows, "jwt")?;
    let jwt_cache = row(rows, "jwt_cache")?;
    let ratio = |a: &EnvoyRow, b: &EnvoyRow| {
        a.saturated.sample.rate() / b.saturated.sample.rate().max(1e-9)
    };
    let added = |f: &dyn Fn(&EnvoyRow) -> f64| f(tollgate) - f(floor);
    let open_pct =
        |r: &EnvoyRow, p: f64| r.open.as_ref().map_or(0.0, |o| o.sample.percentile_ms(p));
    println!("\n### Targets (issue 6, tollgate with leases), through Envoy\n");
    target(
        "throughput ≥ 0.85× null+Redis",
        ratio(tollgate, floor),
        0.85,
        true,
        "×",
    );
    target(
        "throughput ≥ 0.9× jwt_authn without cache",
        ratio(tollgate, jwt),
        0.9,
        true,
        "×",
    );
    println!(
        "- (reported) throughput vs jwt_authn with its cache: {:.2}×",
        ratio(tollgate, jwt_cache)
    );
    // What bounds the ratios: Envoy's own CPU for the ext_authz call
    // against its CPU for the in-process verifications, and the floor's
    // ratio, which no ext_authz server making a Redis call can exceed.
    let envoy_us = |r: &EnvoyRow| r.saturated.cpu_us("envoy").unwrap_or_default();
    let direct = row(rows, "direct")?;
    let bare = row(rows, "null_bare")?;
    println!(
        "- (reported) Envoy CPU per request beyond direct_response: ext_authz call with a bare OK {:.1} µs, with tollgate's answer (null) {:.1} µs, jwt_authn verifying both tokens {:.1} µs",
        envoy_us(bare) - envoy_us(direct),
        envoy_us(row(rows, "null")?) - envoy_us(direct),
        envoy_us(jwt) - envoy_us(direct),
    );
    println!(
        "- (reported) the floor itself (null+Redis) vs jwt_authn without cache: {:.2}× (the bound of any ext_authz server making one Redis call)",
        ratio(floor, jwt)
    );
    target(
        "added p50 over null+Redis, unloaded ≤ 0.3 ms",
        added(&|r| r.unloaded.sample.percentile_ms(50.0)),
        0.3,
        false,
        " ms",
    );
    target(
        "added p99 over null+Redis, unloaded ≤ 0.3 ms",
        added(&|r| r.unloaded.sample.percentile_ms(99.0)),
        0.3,
        false,
        " ms",
    );
    target(
        "added p50 over null+Redis, open loop ≤ 0.3 ms",
        added(&|r| open_pct(r, 50.0)),
        0.3,
        false,
        " ms",
    );
    target(
        "added p99 over null+Redis, open loop ≤ 0.3 ms",
        added(&|r| open_pct(r, 99.0)),
        0.3,
        false,
        " ms",
    );
    // The leasing processes share the Redis: their background returns
    // while 4o is measured count too (a few per thousand at most).
    target(
        "Redis round trips per allowed request ≤ 1 (leases off; other processes' lease returns on the shared Redis count too)",
        tollgate_off.saturated.scripts_per_request(),
        1.01,
        false,
        "",
    );
    Ok(())
}

/// What mutual TLS on tollgate's port costs: 4t against 4, same run.
fn print_tls_cost(plain: &EnvoyRow, tls: &EnvoyRow) {
    let cpu = |r: &EnvoyRow, label: &str| r.saturated.cpu_us(label).unwrap_or_default();
    let open_p = |r: &EnvoyRow, p: f64| r.open.as_ref().map_or(0.0, |o| o.sample.percentile_ms(p));
    println!("\n### The cost of mutual TLS on tollgate's port (4t against 4)\n");
    println!(
        "- saturated req/s: {:.2}× ({:.0} vs {:.0})",
        tls.saturated.sample.rate() / plain.saturated.sample.rate().max(1e-9),
        tls.saturated.sample.rate(),
        plain.saturated.sample.rate()
    );
    println!(
        "- CPU µs per request, saturated: Envoy {:+.1} ({:.1} vs {:.1}), tollgate {:+.1} ({:.1} vs {:.1})",
        cpu(tls, "envoy") - cpu(plain, "envoy"),
        cpu(tls, "envoy"),
        cpu(plain, "envoy"),
        cpu(tls, "server") - cpu(plain, "server"),
        cpu(tls, "server"),
        cpu(plain, "server"),
    );
    println!(
        "- unloaded p50 {:+.3} ms, p99 {:+.3} ms; open loop p50 {:+.3} ms, p99 {:+.3} ms",
        tls.unloaded.sample.percentile_ms(50.0) - plain.unloaded.sample.percentile_ms(50.0),
        tls.unloaded.sample.percentile_ms(99.0) - plain.unloaded.sample.percentile_ms(99.0),
        open_p(tls, 50.0) - open_p(plain, 50.0),
        open_p(tls, 99.0) - open_p(plain, 99.0),
    );
}

/// Prints one target line: met or missed, never a failure.
fn target(what: &str, value: f64, bound: f64, at_least: bool, unit: &str) {
    let met = if at_least {
        value >= bound
    } else {
        value <= bound + 1e-9
    };
    println!(
        "- {what}: {value:.3}{unit} — {}",
        if met { "met" } else { "MISSED" }
    );
}

/// The direct gRPC rows of tollgate with Redis, leases on and off
/// (`bench/callgrind.sh` selects the second with `--only "Redis, leases off"`).
const GRPC_LEASES: &str = "tollgate, full policy, Redis, leases";
const GRPC_LEASES_OFF: &str = "tollgate, full policy, Redis, leases off";

/// A gRPC target: a label, the server process and its address.
struct GrpcTarget {
    title: &'static str,
    pid: u32,
    addr: SocketAddr,
}

struct GrpcRow {
    title: &'static str,
    /// (connections, measurement) when saturated.
    saturated: Vec<(usize, Measured)>,
    open: Measured,
    round_trips: Option<(f64, String)>,
}

fn grpc_callers(
    rt: &Runtime,
    addr: SocketAddr,
    fixture: &Fixture,
    connections: usize,
    in_flight: usize,
) -> anyhow::Result<Vec<GrpcCaller>> {
    let request = check::request(&fixture.credentials(0, fixtures::SUBJECT));
    rt.block_on(async {
        let mut shared = Vec::with_capacity(connections);
        for _ in 0..connections {
            shared.push(loadgen::grpc_connection(addr).await?);
        }
        Ok((0..in_flight)
            .map(|i| GrpcCaller::new(shared[i % connections].clone(), &request))
            .collect())
    })
}

/// Direct gRPC `Check` load.
pub fn grpc(options: &Options) -> anyhow::Result<()> {
    let rt = runtime()?;
    let meter = Meter::new();
    let fixture = Fixture::generate();
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;
    let policy = write_policy(&fixture, dir.path(), 1, 1)?;
    let redis = Redis::start()?;
    let tollgate = start_tollgate(options, &policy, Some(&redis.url()))?;
    let tollgate_off = start_tollgate_with(options, &policy, Some(&redis.url()), &leases_off())?;
    let tollgate_memory = start_tollgate(options, &policy, None)?;
    let (null, null_addr) = start_null(options, "null", None, &tollgates_answer())?;
    let (null_redis, null_redis_addr) = start_null(
        options,
        "null+redis",
        Some(&redis.url()),
        &tollgates_answer(),
    )?;
    let targets = [
        GrpcTarget {
            title: "null ext_authz",
            pid: null.pid(),
            addr: null_addr,
        },
        GrpcTarget {
            title: "null ext_authz + 1 EVALSHA",
            pid: null_redis.pid(),
            addr: null_redis_addr,
        },
        GrpcTarget {
            title: "tollgate, full policy, in-memory store",
            pid: tollgate_memory.proc.pid(),
            addr: tollgate_memory.grpc,
        },
        GrpcTarget {
            title: GRPC_LEASES,
            pid: tollgate.proc.pid(),
            addr: tollgate.grpc,
        },
        GrpcTarget {
            title: GRPC_LEASES_OFF,
            pid: tollgate_off.proc.pid(),
            addr: tollgate_off.grpc,
        },
    ];
    let in_flight = options.connections;
    let (rounds, slice) = (options.rounds(), options.slice());
    println!("\n## Direct gRPC Check (no Envoy), {in_flight} in flight");
    let selected: Vec<&GrpcTarget> = targets
        .iter()
        .filter(|t| {
            options
                .only
                .as_ref()
                .is_none_or(|o| t.title.contains(o.as_str()))
        })
        .collect();
    let watched = |t: &GrpcTarget| {
        [
            Watched {
                label: "server",
                pid: t.pid,
            },
            Watched {
                label: "redis",
                pid: redis.proc.pid(),
            },
        ]
    };
    // Saturated over 1 and 4 connections: every (server, connections)
    // pair takes its turn in each round.
    let shapes: Vec<(&GrpcTarget, usize)> =
        selected.iter().flat_map(|t| [(*t, 1), (*t, 4)]).collect();
    let saturated = interleaved(rounds, &shapes, |(t, connections), round| {
        eprintln!(
            "[grpc] round {}/{rounds}: {} (pid {}) over {connections} connection(s) ...",
            round + 1,
            t.title,
            t.pid
        );
        let callers = grpc_callers(&rt, t.addr, &fixture, *connections, in_flight)?;
        let warmup = options.warmup_before(round);
        let (callers, _) = rt.block_on(loadgen::closed_loop(callers, warmup))?;
        let (_, m) = meter.measure(
            &rt,
            &watched(t),
            &redis,
            loadgen::closed_loop(callers, slice),
        )?;
        anyhow::Ok(m)
    })?;
    let mut saturated = shapes.iter().map(|(_, c)| *c).zip(saturated);
    // 70 % of what each server sustains over the connections the open
    // loop uses (one connection batches more and can run faster, so its
    // rate would put the open loop at or past saturation).
    let open_connections = 4;
    let mut rows = Vec::new();
    for t in &selected {
        let shaped: Vec<(usize, Measured)> = saturated.by_ref().take(2).collect();
        let same_shape = shaped
            .iter()
            .find(|(c, _)| *c == open_connections)
            .map_or(0.0, |(_, m)| m.sample.rate());
        rows.push((t, shaped, (same_shape * 0.7).max(10.0)));
    }
    let open = interleaved(rounds, &rows, |(t, _, rate), round| {
        eprintln!(
            "[grpc] round {}/{rounds}: {} open loop at {rate:.0}/s ...",
            round + 1,
            t.title
        );
        let callers = grpc_callers(&rt, t.addr, &fixture, open_connections, in_flight * 2)?;
        let warmup = options.warmup_before(round);
        let (callers, _) = rt.block_on(loadgen::open_loop(callers, *rate, warmup))?;
        let (_, open) = meter.measure(
            &rt,
            &watched(t),
            &redis,
            loadgen::open_loop(callers, *rate, slice),
        )?;
        anyhow::Ok(open)
    })?;
    let rows = rows
        .into_iter()
        .zip(open)
        .map(|((t, saturated, _), open)| {
            let round_trips = if open.redis_per_request() > 0.0 {
                let callers = grpc_callers(&rt, t.addr, &fixture, 1, 1)?;
                Some(round_trips(&rt, &redis, callers)?)
            } else {
                None
            };
            anyhow::Ok(GrpcRow {
                title: t.title,
                saturated,
                open,
                round_trips,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    print_grpc(&rows, in_flight, options.only.is_none())?;
    drop((null, null_redis, tollgate, tollgate_off, tollgate_memory));
    Ok(())
}

fn print_grpc(rows: &[GrpcRow], in_flight: usize, targets: bool) -> anyhow::Result<()> {
    println!(
        "\n### Saturated: closed loop, {in_flight} in flight\n\n\
         | server | HTTP/2 conns | checks/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/check | Redis CPU µs/check | Redis cmds/check | Redis scripts/check | Redis round trips/check (MONITOR) | generator CPU µs/check |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        for (connections, m) in &r.saturated {
            println!(
                "| {} | {connections} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.3} | {} | {:.1} |",
                r.title,
                m.sample.rate(),
                m.sample.percentile_ms(50.0),
                m.sample.percentile_ms(99.0),
                m.sample.percentile_ms(99.9),
                cpu_cell(m.cpu_us("server")),
                cpu_cell(m.cpu_us("redis")),
                m.redis_per_request(),
                m.scripts_per_request(),
                round_trip_cell(&r.round_trips),
                m.per_request_us(m.generator_cpu),
            );
        }
    }
    println!(
        "\n### Open loop at 70 % of each server's saturated rate over 4 connections\n\n\
         | server | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | server / Redis / generator CPU µs/check | run-queue wait µs/check, same order |\n\
         |---|---:|---:|---:|---:|---:|---|---|"
    );
    for r in rows {
        let s = &r.open.sample;
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.title,
            s.offered.unwrap_or_default(),
            s.rate(),
            s.percentile_ms(50.0),
            s.percentile_ms(99.0),
            s.percentile_ms(99.9),
            r.open.cpu_cells(&["server", "redis"]),
            r.open.wait_cells(&["server", "redis"]),
        );
    }
    println!(
        "\nRedis per check, fastest saturated measurement (INFO commandstats: calls, with \
         Redis's own µs in each; a script's µs include its commands'):\n"
    );
    for r in rows {
        if let Some(m) = best(r).filter(|m| m.redis_per_request() > 0.0) {
            println!("- {}: {}", r.title, m.redis_breakdown());
        }
    }
    if !targets {
        return Ok(());
    }
    let find = |title: &str| {
        rows.iter()
            .find(|r| r.title == title)
            .with_context(|| format!("no row {title}"))
    };
    let tollgate = find(GRPC_LEASES)?;
    let tollgate_off = find(GRPC_LEASES_OFF)?;
    let floor = find("null ext_authz + 1 EVALSHA")?;
    let (Some(t), Some(off), Some(f)) = (best(tollgate), best(tollgate_off), best(floor)) else {
        bail!("no saturated measurement");
    };
    println!("\n### Quota leases on and off, direct gRPC (issue 18)\n");
    for (what, row, m) in [("leases", tollgate, t), ("leases off", tollgate_off, off)] {
        println!(
            "- {what}: {:.0} checks/s saturated; server CPU {} µs/check; Redis CPU {} µs/check; {:.4} Redis scripts (round trips) per check; p99 at 70 % open loop {:.3} ms (p50 {:.3}, p99.9 {:.3})",
            m.sample.rate(),
            cpu_cell(m.cpu_us("server")),
            cpu_cell(m.cpu_us("redis")),
            m.scripts_per_request(),
            row.open.sample.percentile_ms(99.0),
            row.open.sample.percentile_ms(50.0),
            row.open.sample.percentile_ms(99.9),
        );
    }
    println!("\n### Targets (issue 6, tollgate with leases), direct gRPC\n");
    let cpu_ratio =
        t.cpu_us("server").unwrap_or_default() / f.cpu_us("server").unwrap_or(1.0).max(1e-9);
    target(
        "tollgate CPU per Check ≤ 1.2× null+Redis server's",
        cpu_ratio,
        1.2,
        false,
        "×",
    );
    target(
        "throughput with Redis ≥ 1.3× Limitador's 11.5k/s (14,950/s)",
        t.sample.rate() / LIMITADOR_REDIS_RPS,
        1.3,
        true,
        "×",
    );
    target(
        "p99 at 70 % open loop ≤ 2 ms",
        tollgate.open.sample.percentile_ms(99.0),
        2.0,
        false,
        " ms",
    );
    target(
        "p99.9 at 70 % open loop ≤ 5 ms",
        tollgate.open.sample.percentile_ms(99.9),
        5.0,
        false,
        " ms",
    );
    target(
        "Redis round trips per allowed Check ≤ 1 (leases off; the leasing process's returns on the shared Redis count too)",
        off.scripts_per_request(),
        1.01,
        false,
        "",
    );
    Ok(())
}

/// The saturated measurement with the highest throughput.
fn best(row: &GrpcRow) -> Option<&Measured> {
    row.saturated
        .iter()
        .max_by(|a, b| a.1.sample.rate().total_cmp(&b.1.sample.rate()))
        .map(|(_, m)| m)
}

/// tollgate's resident memory: 100 policies and 10,000 apps loaded, then
/// after floods of distinct valid tokens and of random tokens.
pub fn memory(options: &Options) -> anyhow::Result<()> {
    let rt = runtime()?;
    let fixture = Fixture::generate();
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;
    let policy = write_policy(&fixture, dir.path(), 100, 10_000)?;
    let redis = Redis::start()?;
    println!("\n## Memory (tollgate serve, Redis store)");
    let started = Instant::now();
    let tollgate = start_tollgate(options, &policy, Some(&redis.url()))?;
    let ready_after = started.elapsed();
    let pid = Some(tollgate.proc.pid());
    let status = || {
        std::fs::read_to_string(format!("/proc/{}/status", tollgate.proc.pid())).unwrap_or_default()
    };
    let at_ready = fixtures::rss_kib(pid);
    // The allocator returns the parser's garbage to the OS shortly after.
    std::thread::sleep(Duration::from_secs(2));
    let loaded = fixtures::rss_kib(pid);
    println!(
        "- 100 policies + 10,000 apps ({} files): ready in {:.2} s (start, parse, compile), resident {:.1} MiB when ready, {:.1} MiB 2 s later",
        policy.len(),
        ready_after.as_secs_f64(),
        at_ready as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
    let flood = if options.quick { 2_000 } else { 30_000 };
    eprintln!("[memory] minting {flood} distinct valid credentials ...");
    let requests: Vec<_> = (0..flood)
        .map(|i| check::request(&fixture.credentials(i % 10_000, &format!("flood-user-{i}"))))
        .collect();
    let valid = send_all(&rt, tollgate.grpc, requests, true)?;
    let after_valid = fixtures::rss_kib(pid);
    println!(
        "- after {valid} distinct valid token pairs (every one admitted; token cache bound 10,000 per policy): resident {:.1} MiB",
        after_valid as f64 / 1024.0
    );
    let garbage: Vec<_> = (0..flood)
        .map(|i| {
            let mut credentials = fixture.credentials(0, fixtures::SUBJECT);
            credentials.authorization = format!("Bearer {}", random_token(i));
            check::request(&credentials)
        })
        .collect();
    let denied = send_all(&rt, tollgate.grpc, garbage, false)?;
    let after_garbage = fixtures::rss_kib(pid);
    println!(
        "- after {denied} random (invalid) tokens, all denied: resident {:.1} MiB; peak (VmHWM) {:.1} MiB",
        after_garbage as f64 / 1024.0,
        fixtures::status_field_kib(&status(), "VmHWM:") as f64 / 1024.0
    );
    println!("\n### Targets (issue 6), memory\n");
    target(
        "resident memory with 100 policies + 10,000 apps < 100 MiB",
        at_ready.max(loaded) as f64 / 1024.0,
        100.0,
        false,
        " MiB",
    );
    target(
        "resident memory after the token floods < 100 MiB (bounded)",
        after_garbage.max(after_valid) as f64 / 1024.0,
        100.0,
        false,
        " MiB",
    );
    drop(tollgate);
    Ok(())
}

/// A random-looking JWT-shaped string (not a valid token).
fn random_token(i: usize) -> String {
    use base64::Engine;
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut bytes = vec![0u8; 180];
    for b in &mut bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let part = |r: std::ops::Range<usize>| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[r])
    };
    format!("{}.{}.{}", part(0..40), part(40..120), part(120..180))
}

/// Sends every request (32 in flight); all must be admitted (`expect_allow`)
/// or all denied. Returns how many were sent.
fn send_all(
    rt: &Runtime,
    addr: SocketAddr,
    requests: Vec<tollgate::grpc::pb::CheckRequest>,
    expect_allow: bool,
) -> anyhow::Result<usize> {
    let total = requests.len();
    let queue = Arc::new(std::sync::Mutex::new(requests));
    rt.block_on(async {
        let channel = loadgen::grpc_channel(addr).await?;
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let queue = Arc::clone(&queue);
            let mut client = tollgate::grpc::pb::AuthorizationClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some(request) = next else {
                        return anyhow::Ok(());
                    };
                    let response = client.check(request).await?.into_inner();
                    let allowed = response.status.as_ref().is_some_and(|s| s.code == 0);
                    if allowed != expect_allow {
                        bail!("unexpected decision in the flood: {response:?}");
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        anyhow::Ok(())
    })?;
    Ok(total)
}
