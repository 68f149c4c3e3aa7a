//! `tollgate check`: decide one request described on the command line
//! against policy files, offline, with the server's own pipeline (and an
//! in-memory store), and print the decision with every stage's verdict —
//! like `opa eval` for tollgate.
//!
//! ```text
//! tollgate check --policy-file bikes.yaml --method GET \
//!     --url https://api.bikes.example/v1/search?q=1 \
//!     -H 'x-api-key: k' --source-ip 203.0.113.7
//! ```
//!
//! Exit status: 0 allow (dry-run denials included), 1 deny, 2 error
//! (unreadable policy, bad arguments).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::SystemClock;
use crate::config::DecisionArgs;
use crate::decision::{ChallengeParams, Decision, Identity, Step, Verdict};
use crate::pipeline::{self, Deps};
use crate::policy::source;
use crate::request::{Headers, RequestContext};
use crate::store::MemoryStore;

/// The flags of `tollgate check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy file(s), as for `serve`.
    #[arg(long = "policy-file", value_name = "PATH", required = true)]
    pub policy_files: Vec<PathBuf>,

    /// The request method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,

    /// The request URL: scheme, authority (the `:authority` Envoy sees),
    /// path and query, e.g. `https://api.bikes.example/v1/search?q=1`.
    #[arg(long)]
    pub url: String,

    /// A request header, `name: value`; repeat for several.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// The address of the peer Envoy saw (the client, or the proxy in
    /// front of Envoy with `--trusted-origin forwarded`).
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<IpAddr>,

    /// The downstream connection used TLS. Implied by an `https://` URL.
    #[arg(long)]
    pub tls: bool,

    /// An Envoy per-route context extension, `key=value`, e.g.
    /// `tollgate.dev/policy=mobility/bikes`; repeat for several.
    #[arg(long = "context-extension", value_name = "KEY=VALUE")]
    pub context_extensions: Vec<String>,

    /// `text` for people, `json` for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,

    #[command(flatten)]
    pub decision: DecisionArgs,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Runs `check`; see the module docs for the exit status.
pub fn main(args: CheckArgs) -> ExitCode {
    match run(&args) {
        Ok(decision) => {
            let printed = match args.output {
                Output::Text => print_text(&decision),
                Output::Json => print_json(&decision),
            };
            if let Err(error) = printed {
                eprintln!("tollgate check: cannot write the result: {error}");
                return ExitCode::from(2);
            }
            if decision.is_allow() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("tollgate check: {error}");
            ExitCode::from(2)
        }
    }
}

/// Loads the policies and decides; errors are messages for the user.
pub fn run(args: &CheckArgs) -> Result<Decision, String> {
    let request = build_request(args)?;
    let mut settings = args.decision.settings().map_err(|e| e.to_string())?;
    // `check` prints the trace; the server leaves it off.
    settings.trace = true;
    let (snapshot, _) = source::load_initial(&args.policy_files).map_err(|e| e.to_string())?;
    for warning in &snapshot.warnings {
        eprintln!("tollgate check: warning: {warning}");
    }
    let deps = Deps {
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(SystemClock),
        settings,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    Ok(runtime.block_on(pipeline::decide(&snapshot, &request, &deps)))
}

/// The request the flags describe, as the gRPC adapter would build it.
pub fn build_request(args: &CheckArgs) -> Result<RequestContext, String> {
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e| format!("--url {:?}: {e}", args.url))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s.to_owned(),
        _ => {
            return Err(format!(
                "--url {:?}: must start with http:// or https://",
                args.url
            ));
        }
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| format!("--url {:?}: has no host", args.url))?;
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());

    let mut headers = Headers::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("-H {header:?}: expected 'name: value'"))?;
        let name = name.trim();
        if name.is_empty() || name.starts_with(':') {
            return Err(format!(
                "-H {header:?}: the name must be a regular header name"
            ));
        }
        headers.push(name, value.trim());
    }
    let mut context_extensions = BTreeMap::new();
    for extension in &args.context_extensions {
        let (key, value) = extension
            .split_once('=')
            .ok_or_else(|| format!("--context-extension {extension:?}: expected key=value"))?;
        context_extensions.insert(key.to_owned(), value.to_owned());
    }

    let mut request = RequestContext {
        id: "tollgate-check".to_owned(),
        method: args.method.clone(),
        tls: args.tls || scheme == "https",
        scheme,
        authority,
        // The request is described as HTTP/1.1 sends it: without a
        // `content-length` it has no body (RFC 9112 §6.3).
        protocol: "HTTP/1.1".to_owned(),
        headers,
        peer_ip: args.source_ip,
        context_extensions,
        ..RequestContext::default()
    };
    request.set_target(target);
    Ok(request)
}

/// The JSON form of a decision (`--output json`).
#[derive(Serialize)]
struct Report<'a> {
    decision: &'static str,
    /// The HTTP status Envoy answers with on deny (absent on allow).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// The precise reason (logged); `public_reason` is what clients see.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    identity: &'a Identity,
    trace: &'a [Step],
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run_denial: Option<DryRun<'a>>,
    /// Headers set on the upstream request (allow).
    upstream_set: Vec<(&'a str, &'a str)>,
    /// Headers removed from the upstream request (allow).
    upstream_remove: Vec<&'a str>,
    /// Headers added to the client response (allow: RateLimit…; deny: the
    /// reason, challenge…).
    response_headers: Vec<(String, String)>,
}

#[derive(Serialize)]
struct DryRun<'a> {
    reason: &'static str,
    detail: &'a str,
}

fn report(decision: &Decision) -> Report<'_> {
    let mut report = Report {
        decision: if decision.is_allow() { "allow" } else { "deny" },
        status: None,
        reason: None,
        public_reason: None,
        detail: None,
        identity: &decision.identity,
        trace: &decision.trace,
        dry_run_denial: decision.dry_run_denial.as_ref().map(|d| DryRun {
            reason: d.reason.code(),
            detail: &d.detail,
        }),
        upstream_set: Vec::new(),
        upstream_remove: Vec::new(),
        response_headers: Vec::new(),
    };
    match &decision.verdict {
        Verdict::Allow(allow) => {
            report.upstream_set = allow
                .set_upstream
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            report.upstream_remove = allow.remove_upstream.iter().map(String::as_str).collect();
            report.response_headers = allow.response_headers.clone();
        }
        Verdict::Deny(deny) => {
            report.status = Some(deny.public_reason().http_status());
            report.reason = Some(deny.reason.code());
            report.public_reason = Some(deny.public_reason().code());
            report.detail = Some(&deny.detail);
            report.response_headers = deny.response_headers(&ChallengeParams::default());
        }
    }
    report
}

fn print_json(decision: &Decision) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report(decision))?;
    writeln!(out)
}

fn print_text(decision: &Decision) -> std::io::Result<()> {
    let report = report(decision);
    let mut out = std::io::stdout().lock();
    match (report.status, report.reason) {
        (Some(status), Some(reason)) => {
            writeln!(out, "DENY {status} {reason}")?;
            if report.public_reason != Some(reason)
                && let Some(public) = report.public_reason
            {
                writeln!(out, "  (clients see {public})")?;
            }
            if let Some(detail) = report.detail {
                writeln!(out, "  {detail}")?;
            }
        }
        _ => writeln!(out, "ALLOW")?,
    }
    if let Some(dry) = &report.dry_run_denial {
        writeln!(
            out,
            "  dry run: enforcement would deny {}: {}",
            dry.reason, dry.detail
        )?;
    }
    let identity = report.identity;
    for (label, value) in [
        ("policy", &identity.policy),
        ("route", &identity.route),
        ("user", &identity.user),
        ("issuer", &identity.issuer),
        ("app", &identity.app),
        ("plan", &identity.plan),
        ("device", &identity.device),
    ] {
        if let Some(value) = value {
            writeln!(out, "{label:<8}{value}")?;
        }
    }
    writeln!(out, "steps:")?;
    for step in report.trace {
        let outcome = serde_json::to_value(step.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        writeln!(out, "  {:<10} {:<5} {}", step.stage, outcome, step.note)?;
    }
    if !report.upstream_set.is_empty() || !report.upstream_remove.is_empty() {
        writeln!(out, "upstream request:")?;
        for (name, value) in &report.upstream_set {
            writeln!(out, "  set    {name}: {value}")?;
        }
        for name in &report.upstream_remove {
            writeln!(out, "  remove {name}")?;
        }
    }
    if !report.response_headers.is_empty() {
        writeln!(out, "response headers:")?;
        for (name, value) in &report.response_headers {
            writeln!(out, "  {name}: {value}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        check: CheckArgs,
    }

    fn args(extra: &[&str]) -> CheckArgs {
        let base = ["check", "--policy-file", "p.yaml"];
        Cli::try_parse_from(base.iter().chain(extra.iter()).copied())
            .unwrap()
            .check
    }

    #[test]
    fn builds_the_request_from_flags() {
        let request = build_request(&args(&[
            "--url",
            "https://API.bikes.example:8443/v1/search?q=1",
            "-X",
            "POST",
            "-H",
            "x-api-key: k1",
            "-H",
            "Accept:application/json",
            "--source-ip",
            "203.0.113.7",
            "--context-extension",
            "tollgate.dev/policy=mobility/bikes",
        ]))
        .unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.scheme, "https");
        assert!(request.tls, "https implies TLS");
        assert_eq!(request.authority, "API.bikes.example:8443");
        assert_eq!(request.path, "/v1/search");
        assert_eq!(request.query.as_deref(), Some("q=1"));
        assert_eq!(request.headers.get("x-api-key"), Some("k1"));
        assert_eq!(request.headers.get("accept"), Some("application/json"));
        assert_eq!(request.peer_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(
            request
                .context_extensions
                .get("tollgate.dev/policy")
                .map(String::as_str),
            Some("mobility/bikes")
        );
    }

    #[test]
    fn plain_http_is_not_tls_unless_flagged() {
        let request = build_request(&args(&["--url", "http://h/"])).unwrap();
        assert!(!request.tls);
        let request = build_request(&args(&["--url", "http://h/", "--tls"])).unwrap();
        assert!(request.tls);
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(build_request(&args(&["--url", "ftp://h/"])).is_err());
        assert!(build_request(&args(&["--url", "/relative"])).is_err());
        assert!(build_request(&args(&["--url", "https://h/", "-H", "novalue"])).is_err());
        assert!(build_request(&args(&["--url", "https://h/", "-H", ":path: /x"])).is_err());
        assert!(
            build_request(&args(&["--url", "https://h/", "--context-extension", "k"])).is_err()
        );
    }
}
