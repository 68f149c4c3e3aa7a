//! Certificate rotation: the files are polled and a changed, valid set
//! swaps the listener's configuration.
//!
//! **Why polling,** as for the policy files (`policy/source.rs`):
//! Kubernetes mounts a Secret as symlinks (`tls.crt` → `..data/tls.crt`)
//! and cert-manager's renewal swaps the `..data` link, which inotify
//! watches on the files never see. Reading three small files every
//! [`DEFAULT_INTERVAL`] and comparing their digest costs nothing.
//!
//! **What changes for whom.** New connections are accepted with the new
//! configuration; connections already open keep theirs and are not
//! interrupted (Envoy keeps its HTTP/2 connection to tollgate, and
//! connects with the new certificate when it next opens one). The CA file
//! is reloaded the same way, so a client CA can be rotated too.
//!
//! **A bad set never replaces a good one.** A key that does not match its
//! certificate, an unreadable or empty file: the last good configuration
//! keeps serving, and the problem is logged (naming the file and the
//! reason) and counted in `tollgate_tls_reloads_total{listener,
//! result="error"}`. Because the certificate and the key are two files
//! read one after the other, a writer that replaces them one at a time
//! can be caught in between; a failing set is therefore reported only
//! when the same contents fail on two looks in a row, so a rotation in
//! progress never raises a false alarm.

use std::future::Future;
use std::time::Duration;

use super::material::{Material, TlsError};
use super::{Leaf, ServerTls};

/// How often the files are read.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// What one look at the files found.
#[derive(Debug)]
pub enum Look {
    /// The files hold what is serving.
    Unchanged,
    /// A new configuration is serving.
    Applied(Leaf),
    /// The files changed but cannot be served; seen for the first time
    /// (wait for the next look before reporting).
    Failing(TlsError),
    /// The same failing contents again: report it.
    Rejected(TlsError),
    /// Already reported; nothing new.
    StillRejected,
}

/// The watcher's memory between looks.
#[derive(Debug, Default)]
pub struct Watch {
    /// Digest of failing contents seen on the last look.
    failing: Option<[u8; 32]>,
    /// Digest of failing contents already reported.
    reported: Option<[u8; 32]>,
}

impl ServerTls {
    /// Reads the files once and swaps the configuration if they changed
    /// and work. Blocking (file reads): run it off the async workers.
    pub fn look(&self, watch: &mut Watch) -> Look {
        let material = match Material::read(&self.settings.files) {
            Ok(material) => material,
            Err(error) => return self.failed(watch, digest_of_error(&error), error),
        };
        if material.digest == self.serving.load().digest {
            watch.failing = None;
            watch.reported = None;
            return Look::Unchanged;
        }
        match material.build(&self.settings) {
            Ok(serving) => {
                let leaf = serving.leaf.clone();
                self.swap(serving);
                watch.failing = None;
                watch.reported = None;
                Look::Applied(leaf)
            }
            Err(error) => self.failed(watch, material.digest, error),
        }
    }

    fn failed(&self, watch: &mut Watch, digest: [u8; 32], error: TlsError) -> Look {
        if watch.reported == Some(digest) {
            return Look::StillRejected;
        }
        if watch.failing == Some(digest) {
            watch.reported = Some(digest);
            watch.failing = None;
            Look::Rejected(error)
        } else {
            watch.failing = Some(digest);
            Look::Failing(error)
        }
    }

    /// Looks at the files every `interval` until `shutdown` completes,
    /// logging and counting what changed (see the module docs).
    pub async fn watch(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let role = self.role();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; the files were just loaded.
        ticker.tick().await;
        tokio::pin!(shutdown);
        let mut state = Some(Watch::default());
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticker.tick() => {}
            }
            let tls = self.clone();
            let mut watch = state.take().unwrap_or_default();
            let looked = tokio::task::spawn_blocking(move || {
                let look = tls.look(&mut watch);
                (watch, look)
            })
            .await;
            let look = match looked {
                Ok((watch, look)) => {
                    state = Some(watch);
                    look
                }
                Err(error) => {
                    tracing::error!(listener = role.label(), %error, "TLS file reader task failed");
                    continue;
                }
            };
            match look {
                Look::Unchanged | Look::Failing(..) | Look::StillRejected => {}
                Look::Applied(leaf) => {
                    leaf.warn_if_not_current(role);
                    leaf.record_expiry(role);
                    metrics::counter!(
                        super::RELOADS_TOTAL,
                        "listener" => role.label(),
                        "result" => "success"
                    )
                    .increment(1);
                    tracing::info!(
                        listener = role.label(),
                        serial = %leaf.serial,
                        not_after = ?leaf.not_after.map(|t| t.to_string()),
                        "TLS certificate reloaded"
                    );
                }
                Look::Rejected(error) => {
                    metrics::counter!(
                        super::RELOADS_TOTAL,
                        "listener" => role.label(),
                        "result" => "error"
                    )
                    .increment(1);
                    tracing::error!(
                        listener = role.label(),
                        error = %error,
                        serving_serial = %self.serving().leaf.serial,
                        "TLS reload failed; the last good certificate keeps serving"
                    );
                }
            }
        }
        tracing::debug!(listener = role.label(), "TLS file watcher stopped");
    }
}

/// A read error as a digest: the same error on every look is one problem.
fn digest_of_error(error: &TlsError) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"read error\0");
    hasher.update(error.to_string().as_bytes());
    hasher.finalize().into()
}
