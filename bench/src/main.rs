//! `tollgate-bench`: tollgate's load benchmark (issue 6,
//! `docs/performance.md`). Run it with `bench/load.sh [--quick]`, which
//! builds tollgate and this crate in release mode first.
//!
//! - `envoy` — the same HTTP/1.1 request through one Envoy (one worker) in
//!   front of: nothing (direct response, the ceiling), a null ext_authz
//!   server, the null server making one Redis `EVALSHA` per check (the
//!   floor), Envoy's own `jwt_authn` verifying the same two tokens (without
//!   and with its cache), and tollgate with the full policy and Redis with
//!   quota leases on (the default) and off, over plaintext, and with
//!   leases over mutual TLS (the cost of TLS on tollgate's port).
//!   Saturated (closed loop), unloaded (one connection) and at a fixed
//!   open-loop rate of half the null+Redis saturation;
//! - `grpc` — `Check` driven directly (no Envoy) over 1 and 4 HTTP/2
//!   connections against tollgate (Redis, and in-memory) and the null
//!   servers, then open loop at 70 % of saturation;
//! - `memory` — tollgate's resident memory with 100 policies and 10,000
//!   apps loaded, and after floods of distinct valid and random tokens;
//! - `tracing` — tollgate (full policy, Redis) through Envoy with
//!   OpenTelemetry tracing off, sampling 1 % and 100 % of Checks, exporting
//!   to a null OTLP collector ([`collector`]);
//! - `answer` — what each part of tollgate's allow answer (identity
//!   headers, removals, RateLimit headers, dynamic metadata) costs Envoy:
//!   null servers answering with the parts added one by one;
//! - `all` — envoy, answer, grpc, tracing and memory, in that order;
//! - `null-server` — the null ext_authz server (started by the others).
//!
//! Figures are printed, never judged: the exit status says only whether the
//! benchmark ran (every request must be admitted, or the figures would
//! measure the wrong path).
//!
//! Modules: [`fixtures`] (policy, keys, tokens; shared with the criterion
//! benches), [`procs`] (child processes, CPU time, Redis), [`envoy`]
//! (bootstrap), [`check`] (the `CheckRequest`, the null servers' answer),
//! [`null`] (null servers), [`loadgen`] (closed/open-loop generator),
//! [`tls`] (the TLS scenario's certificates), [`run`] (the scenarios and
//! the report).

#[path = "../../benches/support/fixtures.rs"]
mod fixtures;

mod check;
mod collector;
mod envoy;
mod loadgen;
mod null;
mod procs;
mod run;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The same allocator as `tollgate serve`, so the null servers stay the
/// physical limit of a server built like tollgate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "tollgate-bench", about = "tollgate's load benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Envoy side by side, direct gRPC, and memory.
    All(Options),
    /// Envoy side by side.
    Envoy(Options),
    /// tollgate through Envoy with tracing off, at 1 % and at 100 %.
    Tracing(Options),
    /// Direct gRPC `Check` load (no Envoy).
    Grpc(Options),
    /// What each part of tollgate's allow answer costs Envoy: null
    /// servers answering with parts added one by one.
    Answer(Options),
    /// Resident memory with 100 policies and 10,000 apps, and under token floods.
    Memory(Options),
    /// A null ext_authz server (internal).
    NullServer {
        /// Make one `EVALSHA` per check against this Redis.
        #[arg(long)]
        redis: Option<String>,
        /// Answer a bare OK (no headers, no metadata) instead of
        /// tollgate's allow response.
        #[arg(long)]
        bare: bool,
        /// Add the dynamic metadata of a policy with
        /// `response.dynamicMetadata: always`.
        #[arg(long)]
        metadata: bool,
        /// Leave this part of tollgate's answer out (repeatable).
        #[arg(long, value_enum)]
        without: Vec<check::Part>,
    },
}

/// Settings shared by the benchmark commands.
#[derive(Args, Debug, Clone)]
pub struct Options {
    /// A short run (CI smoke): about 1 s per measurement.
    #[arg(long)]
    pub quick: bool,
    /// The repository root (for `.venv/bin/envoy` and `target/release`).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The tollgate binary (default `<repo>/target/release/tollgate`).
    #[arg(long)]
    pub tollgate: Option<PathBuf>,
    /// Start each null server through this program, given the benchmark
    /// binary and the null server's arguments (a script that execs
    /// `valgrind --tool=callgrind "$@"`, as `bench/callgrind.sh` writes):
    /// the null servers' counterpart of `--tollgate`.
    #[arg(long)]
    pub null_wrapper: Option<PathBuf>,
    /// Connections (HTTP/1.1) or requests in flight (gRPC) when saturated.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds per measurement (default 10; 1 with --quick), split over
    /// the rounds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Tokio worker threads of every authorization server, null and
    /// tollgate alike (`TOKIO_WORKER_THREADS`). One, like Envoy's one
    /// worker: the servers' CPU per check is then one core's work, the
    /// unit operators size by, and on two cores shared with Envoy, Redis
    /// and the generator a second worker mostly adds cross-thread
    /// wake-ups (docs/performance.md).
    #[arg(long, default_value = "1")]
    pub server_threads: std::num::NonZeroUsize,
    /// Rounds per measurement (default 4; 1 with --quick). The scenarios
    /// take turns, one slice of each per round, so a change in the
    /// machine's speed during the run (a shared virtual machine's speed
    /// moves by up to a third) weighs on every scenario alike.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// grpc: measure only the servers whose title contains this text (for
    /// profiling one server, e.g. `--only Redis`); the targets are then
    /// not evaluated.
    #[arg(long)]
    pub only: Option<String>,
}

impl Options {
    pub fn duration(&self) -> std::time::Duration {
        let seconds = self.seconds.unwrap_or(if self.quick { 1.0 } else { 10.0 });
        std::time::Duration::from_secs_f64(seconds)
    }

    /// The warm-up before a scenario's first round (the later rounds warm
    /// up for a quarter of it: new connections, warm servers).
    pub fn warmup(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(if self.quick { 0.3 } else { 2.0 })
    }

    pub fn rounds(&self) -> u32 {
        self.rounds.unwrap_or(if self.quick { 1 } else { 4 }).max(1)
    }

    /// One round's slice of a measurement.
    pub fn slice(&self) -> std::time::Duration {
        self.duration() / self.rounds()
    }

    /// The warm-up before round `round` of a scenario.
    pub fn warmup_before(&self, round: u32) -> std::time::Duration {
        if round == 0 {
            self.warmup()
        } else {
            self.warmup() / 4
        }
    }

    pub fn tollgate_binary(&self) -> PathBuf {
        self.tollgate
            .clone()
            .unwrap_or_else(|| self.repo.join("target/release/tollgate"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::NullServer {
            redis,
            bare,
            metadata,
            without,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                let answer = null::Answer {
                    bare,
                    metadata,
                    without,
                };
                rt.block_on(null::serve(redis, answer))
            }),
        Cmd::All(options) => run::machine(&options)
            .and_then(|()| run::envoy(&options))
            .and_then(|()| run::answer(&options))
            .and_then(|()| run::grpc(&options))
            .and_then(|()| run::tracing(&options))
            .and_then(|()| run::memory(&options)),
        Cmd::Envoy(options) => run::machine(&options).and_then(|()| run::envoy(&options)),
        Cmd::Answer(options) => run::machine(&options).and_then(|()| run::answer(&options)),
        Cmd::Tracing(options) => run::machine(&options).and_then(|()| run::tracing(&options)),
        Cmd::Grpc(options) => run::machine(&options).and_then(|()| run::grpc(&options)),
        Cmd::Memory(options) => run::memory(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
