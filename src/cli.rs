//! The `tollgate` command line: one binary, one subcommand per job.
//!
//! | command | module |
//! |---|---|
//! | `tollgate serve` | [`serve`]: the data plane (ext_authz gRPC + admin HTTP) |
//! | `tollgate operator` | [`operator`]: status, events and leader election for the custom resources |
//! | `tollgate check` | [`check`]: decide one request offline and explain it |
//! | `tollgate crds` | [`crds`]: the CustomResourceDefinitions, generated from the types |
//! | `tollgate usage` | [`usage`]: usage counters from Redis, for billing and support |
//! | `tollgate token` | [`token`]: development keys and tokens (user, app attestation) |
//!
//! A new subcommand is a variant of [`Command`] with its `clap::Args`
//! struct, one arm in [`Command::run`], and a module under `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod check;
pub mod crds;
pub mod operator;
pub mod serve;
pub mod token;
pub mod usage;

/// tollgate: Envoy external authorization that verifies the user,
/// authenticates the app, refuses replays and enforces the app's plan in
/// one Check call.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz gRPC API (with gRPC health and reflection)
    /// and the admin HTTP port (/healthz, /readyz, /metrics).
    // Boxed: with its TLS and Kubernetes flags the configuration is twice
    // the size of any other subcommand's.
    Serve(Box<crate::config::ServeConfig>),
    /// Reconcile the ApiPolicy and AppRegistration custom resources: write
    /// their status conditions and events (leader-elected).
    Operator(operator::OperatorConfig),
    /// Decide one request against policy files offline and print every
    /// stage's verdict. Exit status: 0 allow, 1 deny, 2 error.
    Check(check::CheckArgs),
    /// Print the CustomResourceDefinitions (ApiPolicy, AppRegistration)
    /// generated from the Rust types, for `kubectl apply -f -`.
    Crds(crds::CrdsArgs),
    /// Print usage (allowed requests and cost per app per UTC day, and per
    /// app-user) from Redis, as a table, JSON or CSV.
    Usage(usage::UsageArgs),
    /// Mint development keys and tokens: a key pair and JWKS, a user
    /// access token, an app attestation token with the `pay` binding.
    Token(token::TokenArgs),
}

impl Command {
    /// Runs the subcommand; the exit code is the process's.
    pub fn run(self) -> ExitCode {
        match self {
            Command::Serve(config) => serve::main(*config),
            Command::Operator(config) => operator::main(config),
            Command::Check(args) => check::main(args),
            Command::Crds(args) => crds::main(args),
            Command::Usage(args) => usage::main(args),
            Command::Token(args) => token::main(args),
        }
    }
}

/// The shape of a long-running subcommand (`serve`, `operator`): logging
/// set up from `log`, the configuration checked by `validate` (exit 2
/// with the reason), then `run` on a multi-threaded runtime (exit 0 when
/// it returns `Ok`, 1 with the reason logged otherwise).
pub fn run_service<E: std::fmt::Display, F: std::future::Future<Output = anyhow::Result<()>>>(
    name: &str,
    log: &crate::config::LogArgs,
    validate: impl FnOnce() -> Result<(), E>,
    run: impl FnOnce() -> F,
) -> ExitCode {
    if let Err(error) = crate::telemetry::init(log.log_format, log.log_level.as_deref()) {
        eprintln!("tollgate {name}: {error}");
        return ExitCode::from(2);
    }
    if let Err(error) = validate() {
        tracing::error!(%error, "invalid configuration");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tollgate {name} failed");
            ExitCode::FAILURE
        }
    }
}

/// The binary's entry point: parse the arguments and run the subcommand.
/// Usage errors exit with status 2 (clap's convention, and `check`'s
/// "error" status).
pub fn main() -> ExitCode {
    Cli::parse().command.run()
}
