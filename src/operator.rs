//! `tollgate operator`: tells users, in `kubectl get` and `kubectl
//! describe`, whether each `ApiPolicy` and `AppRegistration` is accepted
//! and served, and why not.
//!
//! - [`status`] — the conditions and facts a report calls for (pure);
//! - [`reconcile`] — compares them with the object's status, writes by
//!   server-side apply under one field manager, records events on `Ready`
//!   transitions;
//! - [`queue`] — which objects need it, with per-object backoff;
//! - [`lease`] — leader election: one replica writes.
//!
//! The operator watches exactly what the servers watch, through the same
//! [`ClusterWatch`] and the same catalog, so its verdict is the servers'
//! verdict: a Secret change recompiles the objects that read it, an app
//! change re-relates it to its policies, and every object whose report
//! changed is reconciled. Events that arrive together are applied as one
//! batch, so a flood of updates is coalesced. Standby replicas watch too,
//! and reconcile everything the moment they lead. The data plane never
//! depends on the operator: servers watch the custom resources themselves.

pub mod lease;
pub mod queue;
pub mod reconcile;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::policy::catalog::{ObjectRef, ObjectReport, Report};
use crate::policy::source::kubernetes::{self, ClusterWatch, Observed, Published};
use crate::server::Readiness;
use lease::LeaseSettings;
use queue::Queue;
use reconcile::{Context, Outcome};

/// Most reconciles run between two looks at the watches, so events keep
/// flowing while thousands of statuses are written.
const BATCH: usize = 256;

/// What the operator watches and how it elects its leader.
#[derive(Clone, Debug)]
pub struct Settings {
    pub watch: kubernetes::Settings,
    pub lease: LeaseSettings,
}

/// Runs until `shutdown` completes: watches, elects, reconciles; on the
/// way out stops writing and releases the lease.
pub async fn run(
    client: Client,
    settings: Settings,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) {
    let (leader_tx, mut leader) = watch::channel(false);
    let (stop_lease, lease_stop) = tokio::sync::oneshot::channel::<()>();
    let lease = tokio::spawn(lease::run(
        client.clone(),
        settings.lease.clone(),
        leader_tx,
        async {
            let _ = lease_stop.await;
        },
    ));
    let ctx = Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: reconcile::FIELD_MANAGER.to_owned(),
                instance: Some(settings.lease.identity.clone()),
            },
        ),
    };
    let mut watch = ClusterWatch::new(&client, &settings.watch);
    readiness.set_waiting(watch.waiting_for());
    // The watch runs in its own task and hands over whole batches:
    // `ClusterWatch::next` must not be cancelled half way (a batch taken
    // from the streams would be lost), and the loop below selects.
    let (batches, mut batch_rx) = tokio::sync::mpsc::channel(1);
    let watching = tokio::spawn(async move {
        while let Some(batch) = watch.next().await {
            if batches.send(batch).await.is_err() {
                break;
            }
        }
    });
    let mut state = State::default();
    tokio::pin!(shutdown);
    loop {
        let wake = state
            .queue
            .next_due()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            () = &mut shutdown => break,
            batch = batch_rx.recv() => {
                let Some((published, observations)) = batch else { break };
                state.observe(observations);
                match published {
                    Published::Snapshot { report, .. } => {
                        if state.report.is_none() {
                            readiness.set_snapshot_loaded();
                        }
                        state.take_report(report);
                    }
                    Published::Waiting(waiting) => readiness.set_waiting(waiting),
                    Published::Nothing => {}
                }
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    break;
                }
                if *leader.borrow_and_update() {
                    // A new leader checks everything once.
                    state.mark_all();
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
        if *leader.borrow() {
            state.reconcile_due(&ctx, &leader).await;
        }
    }
    watching.abort();
    let _ = stop_lease.send(());
    let _ = lease.await;
    tracing::info!("operator stopped");
}

/// What the operator knows between iterations.
#[derive(Default)]
struct State {
    /// The latest report of every object (shared: reconciles read it
    /// while a new one may arrive).
    report: Option<Arc<Report>>,
    /// Custom resources as the API server holds them.
    observed: HashMap<ObjectRef, Observed>,
    queue: Queue,
}

impl State {
    fn observe(&mut self, observations: kubernetes::Observations) {
        for (object, observed) in observations {
            match observed {
                Some(observed) => {
                    let changed = self.observed.get(&object) != Some(&observed);
                    self.observed.insert(object.clone(), observed);
                    if changed {
                        self.queue.mark(object);
                    }
                }
                None => {
                    self.observed.remove(&object);
                    self.queue.forget(&object);
                }
            }
        }
    }

    /// Takes a new report; objects whose report changed need a reconcile.
    fn take_report(&mut self, report: Report) {
        let before: HashMap<&ObjectRef, &ObjectReport> = self
            .report
            .iter()
            .flat_map(|r| r.objects.iter().map(|o| (&o.object, o)))
            .collect();
        let changed: Vec<ObjectRef> = report
            .objects
            .iter()
            .filter(|o| before.get(&o.object) != Some(o))
            .map(|o| o.object.clone())
            .collect();
        for object in changed {
            self.queue.mark(object);
        }
        self.report = Some(Arc::new(report));
    }

    fn mark_all(&mut self) {
        let objects: Vec<ObjectRef> = self.observed.keys().cloned().collect();
        for object in objects {
            self.queue.mark(object);
        }
    }

    /// Reconciles the objects that are due, at most [`BATCH`], while this
    /// replica leads.
    async fn reconcile_due(&mut self, ctx: &Context, leader: &watch::Receiver<bool>) {
        let Some(report) = self.report.clone() else {
            return;
        };
        let mut due = self.queue.take_due(Instant::now());
        if due.len() > BATCH {
            for object in due.split_off(BATCH) {
                self.queue.mark(object);
            }
        }
        for object in due {
            if !*leader.borrow() {
                // Lost the lease half way: write nothing more.
                self.queue.mark(object);
                continue;
            }
            let (Some(object_report), Some(observed)) =
                (report.get(&object), self.observed.get(&object))
            else {
                continue;
            };
            match reconcile::reconcile(object_report, observed, ctx).await {
                Ok((outcome, held)) => {
                    self.queue.succeeded(&object);
                    if outcome == Outcome::Written
                        && let Some(observed) = self.observed.get_mut(&object)
                    {
                        observed.status = held;
                    }
                }
                Err(error) => {
                    self.queue.failed(object, error.to_string(), Instant::now());
                }
            }
        }
    }
}
