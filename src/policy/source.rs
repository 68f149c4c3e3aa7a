//! The file policy source: load the policy files at start-up, then watch
//! them and swap the shared snapshot when they change.
//!
//! **Why polling.** The watcher re-reads the files every `interval`
//! (about 500 ms) and compares a SHA-256 of their contents, instead of
//! using inotify or modification times:
//!
//! - Kubernetes mounts a ConfigMap as symlinks (`policy.yaml` →
//!   `..data/policy.yaml`, `..data` → `..2024_05_01…`) and updates it by
//!   swapping the `..data` link. inotify watches on the file see nothing
//!   (the watched inode never changes), and editors that write a new file
//!   and rename it break watches the same way;
//! - modification times have a one-second granularity on some file
//!   systems and are copied by `kubectl cp`/`tar`, so two edits in the same
//!   second, or an old file restored, would be missed;
//! - a few KiB read twice a second costs nothing next to the request path.
//!
//! A valid change is live within about one interval. An invalid or
//! unreadable change is logged once (per distinct content or error),
//! counted, and ignored: the last good snapshot keeps serving. Metrics:
//! `tollgate_policy_reloads_total{result="success"|"error"}` and the gauge
//! `tollgate_policy_snapshot_version`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::compile::{self, CompileErrors};
use super::document::{self, DocumentError, LoadErrors};
use super::snapshot::{SharedSnapshot, Snapshot};

/// The default polling interval of [`watch_files`].
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// Why policy files cannot be served. The message lists every problem,
/// each naming the file, the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Load(#[from] LoadErrors),
    #[error("{0}")]
    Compile(#[from] CompileErrors),
}

/// Start-up: reads and compiles `paths` into snapshot version 1. Any error
/// is returned (the binary exits non-zero with it); warnings (host
/// conflicts…) are logged by the compile step.
pub fn load_initial(paths: &[PathBuf]) -> Result<Snapshot, PolicyError> {
    let (digest, files) = read_all(paths).map_err(|e| PolicyError::Load(LoadErrors(vec![e])))?;
    let mut snapshot = build(&files, 1)?;
    snapshot.source_digest = Some(digest);
    metrics::gauge!("tollgate_policy_snapshot_version").set(snapshot.version as f64);
    Ok(snapshot)
}

/// Watches `paths` every `interval` until `shutdown` completes, swapping
/// `shared` when the files change and compile. Spawn it right after
/// [`load_initial`]: the snapshot records the digest of the files it was
/// compiled from, so the watcher's first look compiles again only when
/// the files changed in between.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    shared: SharedSnapshot,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    watch(paths, shared, interval, shutdown, |_| {}).await;
}

/// What one look at the files did (reported to tests).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// A new snapshot is serving.
    Applied { version: u64 },
    /// The files are unreadable or invalid; the last good snapshot serves.
    Rejected { error: String },
}

/// [`watch_files`] with an observer of every applied or rejected change.
async fn watch(
    paths: Vec<PathBuf>,
    shared: SharedSnapshot,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    mut observe: impl FnMut(&Outcome),
) {
    let paths = Arc::new(paths);
    let mut ticker = tokio::time::interval(interval);
    // After a slow read, wait a full interval rather than catching up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Digest of what was last looked at (content, or the read error), so
    // each change is compiled, logged and counted once.
    let mut last: Option<[u8; 32]> = shared.load().source_digest;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let reading = Arc::clone(&paths);
        let read = match tokio::task::spawn_blocking(move || read_all(&reading)).await {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(%error, "policy file reader task failed");
                continue;
            }
        };
        let (digest, files) = match read {
            Ok((digest, files)) => (digest, Ok(files)),
            Err(error) => (digest_of_error(&error), Err(error)),
        };
        if last == Some(digest) {
            continue;
        }
        last = Some(digest);
        let version = shared.load().version + 1;
        let result = match files {
            Err(error) => Err(PolicyError::Load(LoadErrors(vec![error]))),
            Ok(files) => tokio::task::spawn_blocking(move || {
                build(&files, version).map(|mut snapshot| {
                    snapshot.source_digest = Some(digest);
                    snapshot
                })
            })
            .await
            .unwrap_or_else(|error| {
                Err(PolicyError::Load(LoadErrors(vec![DocumentError {
                    file: PathBuf::new(),
                    document: None,
                    field: None,
                    message: format!("policy compile task failed: {error}"),
                }])))
            }),
        };
        let outcome = match result {
            Ok(snapshot) => {
                let policies = snapshot.policies.len();
                shared.store(Arc::new(snapshot));
                metrics::gauge!("tollgate_policy_snapshot_version").set(version as f64);
                tracing::info!(version, policies, files = ?paths, "policy files reloaded");
                metrics::counter!("tollgate_policy_reloads_total", "result" => "success")
                    .increment(1);
                Outcome::Applied { version }
            }
            Err(error) => {
                tracing::error!(
                    error = %error,
                    serving = shared.load().version,
                    "policy reload failed; the last good policies keep serving"
                );
                metrics::counter!("tollgate_policy_reloads_total", "result" => "error")
                    .increment(1);
                Outcome::Rejected {
                    error: error.to_string(),
                }
            }
        };
        observe(&outcome);
    }
    tracing::debug!("policy file watcher stopped");
}

/// Reads every file: their combined digest and contents, or the first
/// read error.
/// Files as read: (path, text), in the order given.
type Files = Vec<(PathBuf, String)>;

fn read_all(paths: &[PathBuf]) -> Result<([u8; 32], Files), DocumentError> {
    let mut hasher = Sha256::new();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = document::read_file(path)?;
        // Length-prefixed, so moving bytes between files changes the digest.
        let name = path.as_os_str().as_encoded_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
        files.push((path.clone(), text));
    }
    Ok((hasher.finalize().into(), files))
}

/// A read error as a digest: the same error every tick is reported once.
fn digest_of_error(error: &DocumentError) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"read error\0");
    hasher.update(error.to_string().as_bytes());
    hasher.finalize().into()
}

fn build(files: &[(PathBuf, String)], version: u64) -> Result<Snapshot, PolicyError> {
    let docs = document::parse_files(files)?;
    Ok(compile::compile(&docs, version)?)
}

#[cfg(test)]
mod tests;
