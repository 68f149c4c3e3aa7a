//! The file policy source: load the policy files at start-up, then watch
//! them and swap the shared snapshot when they change.
//!
//! **Per-document isolation.** Every document is an object of the
//! [`Catalog`]: a reload applies each readable document on its own, so a
//! broken document keeps *its* object's previous version serving while
//! every other change — including one that disables a compromised app —
//! goes live. A document that cannot be attributed to an object (no
//! name, a duplicate), or a file that cannot be read or is not YAML,
//! deletes nothing: objects of that file that are absent from the new
//! read keep serving until the file is readable again.
//!
//! **Start-up is strict.** [`load_initial`] refuses to serve when any
//! document has a problem (the process exits listing them all): at deploy
//! time a typo should fail loudly, not start a server without the policy.
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
//! A change is live within about one interval. Each object's problems
//! are logged once when they appear ([`super::report`]); metrics:
//! `tollgate_policy_reloads_total{result="success"|"error"}` (`error`: the
//! reload left some document unapplied) and the object gauges.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::report::Reporter;
use crate::compile_context::FieldError;
use crate::policy::catalog::{Age, Catalog, ObjectRef};
use crate::policy::compile::{self, CompileErrors};
use crate::policy::document::{self, DocumentError, LoadErrors, Origin, Parsed};
use crate::policy::snapshot::{SharedSnapshot, Snapshot};

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

/// The files, the catalog of their documents, and what was last said
/// about each object. Built by [`load_initial`], driven by
/// [`watch_files`].
#[derive(Debug)]
pub struct FileSource {
    paths: Vec<PathBuf>,
    catalog: Catalog,
    reporter: Reporter,
    /// Digest of what was last read (content, or the read errors), so
    /// each change is applied, logged and counted once.
    digest: [u8; 32],
}

/// Start-up: reads and compiles `paths` into snapshot version 1, or
/// returns every problem (the binary exits non-zero with them); warnings
/// (host conflicts…) are logged.
pub fn load_initial(paths: &[PathBuf]) -> Result<(Snapshot, FileSource), PolicyError> {
    let read = read_all(paths);
    let mut source = FileSource {
        paths: paths.to_vec(),
        catalog: Catalog::new(None),
        reporter: Reporter::default(),
        digest: read.digest,
    };
    let problems = source.apply(read.files);
    if !problems.is_empty() {
        return Err(PolicyError::Load(LoadErrors(problems)));
    }
    let (snapshot, report) = source.catalog.assemble(1);
    let errors = compile::report_errors(&report);
    if !errors.is_empty() {
        return Err(PolicyError::Compile(CompileErrors(errors)));
    }
    source.reporter.publish(&report, 1);
    Ok((snapshot, source))
}

/// Watches the files every `interval` until `shutdown` completes,
/// swapping `shared` when they change. Spawn it right after
/// [`load_initial`], which recorded the digest of what it read: the
/// watcher's first look applies again only when the files changed in
/// between.
pub async fn watch_files(
    source: FileSource,
    shared: SharedSnapshot,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    watch(source, shared, interval, shutdown, |_| {}).await;
}

/// What one look at changed files did (reported to tests).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    /// The snapshot now serving.
    version: u64,
    /// Every problem of the reload: unreadable files and documents, and
    /// each object's errors, conflicts and warnings.
    problems: Vec<String>,
}

/// [`watch_files`] with an observer of every applied change.
async fn watch(
    source: FileSource,
    shared: SharedSnapshot,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    mut observe: impl FnMut(&Outcome),
) {
    let paths = Arc::new(source.paths.clone());
    let mut digest = source.digest;
    // Shared with the blocking compile task; a panic there poisons the
    // lock, not the watcher (the next change is applied as usual).
    let source = Arc::new(std::sync::Mutex::new(source));
    let mut ticker = tokio::time::interval(interval);
    // After a slow read, wait a full interval rather than catching up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
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
        if read.digest == digest {
            continue;
        }
        digest = read.digest;
        let version = shared.load().version + 1;
        // Compiling thousands of documents takes a while: off the runtime.
        let compiling = Arc::clone(&source);
        let applied = tokio::task::spawn_blocking(move || {
            let mut source = compiling.lock().unwrap_or_else(|e| e.into_inner());
            source.digest = read.digest;
            source.reload(read.files, version)
        })
        .await;
        let (snapshot, outcome) = match applied {
            Ok(applied) => applied,
            Err(error) => {
                tracing::error!(%error, "policy compile task failed; the last snapshot keeps serving");
                continue;
            }
        };
        let policies = snapshot.policies.len();
        shared.store(Arc::new(snapshot));
        let result = if outcome.problems.is_empty() {
            "success"
        } else {
            "error"
        };
        tracing::info!(
            version,
            policies,
            problems = outcome.problems.len(),
            files = ?paths,
            "policy files reloaded"
        );
        metrics::counter!("tollgate_policy_reloads_total", "result" => result).increment(1);
        observe(&outcome);
    }
    tracing::debug!("policy file watcher stopped");
}

/// What one read of the files found.
struct Read {
    digest: [u8; 32],
    files: Vec<(PathBuf, Result<String, DocumentError>)>,
}

/// Reads every file, in order; the digest covers contents and errors.
fn read_all(paths: &[PathBuf]) -> Read {
    let mut hasher = Sha256::new();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = document::read_file(path);
        // Length-prefixed, so moving bytes between files changes the digest.
        let name = path.as_os_str().as_encoded_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        match &text {
            Ok(text) => {
                hasher.update((text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            Err(error) => {
                hasher.update(b"\xffread error\0");
                hasher.update(error.to_string().as_bytes());
            }
        }
        files.push((path.clone(), text));
    }
    Read {
        digest: hasher.finalize().into(),
        files,
    }
}

impl FileSource {
    /// Applies a read to the catalog and assembles snapshot `version`.
    fn reload(
        &mut self,
        files: Vec<(PathBuf, Result<String, DocumentError>)>,
        version: u64,
    ) -> (Snapshot, Outcome) {
        let mut problems: Vec<String> = self.apply(files).iter().map(ToString::to_string).collect();
        let (mut snapshot, report) = self.catalog.assemble(version);
        snapshot.source_digest = Some(self.digest);
        self.reporter.publish(&report, version);
        for object in &report.objects {
            problems.extend(object.problems());
        }
        (snapshot, Outcome { version, problems })
    }

    /// Applies every readable document to the catalog and removes objects
    /// no longer defined (except those of files that could not be read
    /// whole). Returns the problems of reading; each is also logged.
    fn apply(
        &mut self,
        files: Vec<(PathBuf, Result<String, DocumentError>)>,
    ) -> Vec<DocumentError> {
        let mut problems = Vec::new();
        // Objects read in this pass → how messages name them.
        let mut seen: HashMap<ObjectRef, String> = HashMap::new();
        // Files whose absent objects must not be deleted.
        let mut keep: HashSet<PathBuf> = HashSet::new();
        let mut position = 0u64;
        for (path, text) in files {
            let results = match text.and_then(|text| document::parse_each(&path, &text)) {
                Ok(results) => results,
                Err(error) => {
                    problems.push(error);
                    keep.insert(path);
                    continue;
                }
            };
            for parsed in results {
                position += 1;
                match parsed {
                    Parsed::Loaded(loaded) => {
                        let object = ObjectRef::of(&loaded.document);
                        if let Some(first) = seen.get(&object) {
                            problems.push(duplicate(&loaded.origin, &object, first));
                            keep.insert(path.clone());
                            continue;
                        }
                        seen.insert(object, loaded.describe());
                        let age = Age::of(&loaded.document, position);
                        self.catalog.upsert(loaded, age);
                    }
                    Parsed::Rejected(rejected) => {
                        let error = rejected.error;
                        match rejected.object {
                            Some(object) if !seen.contains_key(&object) => {
                                let describe = describe(&error);
                                let origin = Origin::File {
                                    path: path.clone(),
                                    index: error.document.as_ref().map_or(0, |(i, _)| *i),
                                };
                                let field = FieldError::new(
                                    error.field.clone().unwrap_or_else(|| "document".to_owned()),
                                    error.message.clone(),
                                );
                                seen.insert(object.clone(), describe.clone());
                                self.catalog.reject(&object, describe, origin, vec![field]);
                            }
                            _ => {
                                keep.insert(path.clone());
                            }
                        }
                        problems.push(error);
                    }
                }
            }
        }
        let gone: Vec<ObjectRef> = self
            .catalog
            .objects()
            .into_iter()
            .filter(|(object, origin)| {
                let kept = matches!(origin, Origin::File { path, .. } if keep.contains(path));
                !seen.contains_key(object) && !kept
            })
            .map(|(object, _)| object)
            .collect();
        for object in &gone {
            self.catalog.remove(object);
        }
        for problem in &problems {
            tracing::error!(problem = %problem, "policy document not applied");
        }
        problems
    }
}

/// How a rejected document is named: `file: document N (Kind ns/name)`.
fn describe(error: &DocumentError) -> String {
    match &error.document {
        Some((index, label)) => format!("{}: document {index} ({label})", error.file.display()),
        None => error.file.display().to_string(),
    }
}

/// A second definition of an object: an error naming the first.
fn duplicate(origin: &Origin, object: &ObjectRef, first: &str) -> DocumentError {
    let (file, index) = match origin {
        Origin::File { path, index } => (path.clone(), *index),
        Origin::Cluster => (PathBuf::new(), 0),
    };
    DocumentError {
        file,
        document: Some((index, object.to_string())),
        field: Some("metadata.name".to_owned()),
        message: format!(
            "duplicate {}: already defined in {first}; this definition is ignored",
            object.kind
        ),
    }
}

#[cfg(test)]
mod tests;
