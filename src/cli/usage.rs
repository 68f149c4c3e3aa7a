//! `tollgate usage`: print usage counters (allowed requests and consumed
//! cost per app per UTC day, optionally per app-user) from Redis, for
//! billing and support.
//!
//! ```text
//! tollgate usage --redis redis://127.0.0.1:6379 --app commuter-ios --from 2024-05-01 --to 2024-05-31 --format csv
//! ```
//!
//! Reading usage SCANs the usage keys (on every primary of a Cluster); it
//! is a support tool, never on the request path. Both layouts of the usage
//! hashes are read (`count`/`extra`, and the earlier `requests`/`cost`;
//! see `store::keys::USAGE_FIELDS`), so days written before an upgrade
//! still print.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::store::{RedisStore, RedisUrl, Retention, Store, UsageQuery, UsageRow};

/// Output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

/// `tollgate usage` arguments.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// Redis URL (repeat for Redis Cluster seed nodes).
    #[arg(
        long = "redis",
        env = "TOLLGATE_REDIS",
        value_delimiter = ',',
        required = true
    )]
    pub redis: Vec<RedisUrl>,
    /// Treat a single `--redis` URL as a Redis Cluster seed node.
    #[arg(long, env = "TOLLGATE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Only this app (default: every app).
    #[arg(long)]
    pub app: Option<String>,
    /// First UTC day, `YYYY-MM-DD` (default: the first of this month).
    #[arg(long)]
    pub from: Option<Date>,
    /// Last UTC day, inclusive (default: today).
    #[arg(long)]
    pub to: Option<Date>,
    /// Include per-user rows (users appear as digests of issuer and
    /// subject, never in clear).
    #[arg(long)]
    pub users: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Runs `tollgate usage`: 0 on success, 2 on error.
pub fn main(args: UsageArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tollgate usage: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate usage: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads the rows and renders them.
pub async fn run(args: &UsageArgs) -> anyhow::Result<String> {
    let today = Timestamp::now().to_zoned_datetime(TimeZone::UTC).date();
    let from = args.from.unwrap_or_else(|| today.first_of_month());
    let to = args.to.unwrap_or(today);
    anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
    let store = RedisStore::connect(
        &args.redis,
        args.redis_cluster,
        Duration::from_secs(5),
        Retention::default(),
    )
    .context("cannot set up the Redis client")?;
    let query = UsageQuery {
        app: args.app.clone(),
        from: from.to_string(),
        to: to.to_string(),
        users: args.users,
    };
    let rows = store
        .usage(&query)
        .await
        .with_context(|| format!("cannot read usage from {:?}", args.redis))?;
    render(&rows, args.format)
}

/// Renders rows in `format`.
pub fn render(rows: &[UsageRow], format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(rows)? + "\n",
        Format::Csv => {
            let mut out = String::from("app,day,user,requests,cost\n");
            for r in rows {
                out.push_str(&format!(
                    "{},{},{},{},{}\n",
                    csv_field(&r.app),
                    r.day,
                    r.user.as_deref().unwrap_or(""),
                    r.requests,
                    r.cost
                ));
            }
            out
        }
        Format::Table => {
            let width = rows.iter().map(|r| r.app.len()).max().unwrap_or(3).max(3);
            let mut out = format!(
                "{:<width$}  {:<10}  {:<32}  {:>10}  {:>10}\n",
                "APP", "DAY", "USER", "REQUESTS", "COST"
            );
            for r in rows {
                out.push_str(&format!(
                    "{:<width$}  {:<10}  {:<32}  {:>10}  {:>10}\n",
                    r.app,
                    r.day,
                    r.user.as_deref().unwrap_or("-"),
                    r.requests,
                    r.cost
                ));
            }
            out
        }
    })
}

/// Quotes a CSV field when it needs it (RFC 4180 §2).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<UsageRow> {
        vec![
            UsageRow {
                app: "a,b".into(),
                day: "2024-05-07".into(),
                user: None,
                requests: 3,
                cost: 9,
            },
            UsageRow {
                app: "a,b".into(),
                day: "2024-05-07".into(),
                user: Some("0123".into()),
                requests: 1,
                cost: 1,
            },
        ]
    }

    #[test]
    fn csv_quotes_and_json_round_trips() {
        let csv = render(&rows(), Format::Csv).unwrap();
        assert_eq!(
            csv,
            "app,day,user,requests,cost\n\"a,b\",2024-05-07,,3,9\n\"a,b\",2024-05-07,0123,1,1\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows(), Format::Json).unwrap()).unwrap();
        assert_eq!(json[0]["cost"], 9);
        assert!(json[0].get("user").is_none());
        let table = render(&rows(), Format::Table).unwrap();
        assert!(table.starts_with("APP"));
        assert_eq!(table.lines().count(), 3);
    }
}
