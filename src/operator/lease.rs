//! Leader election on a `coordination.k8s.io/v1` Lease, so exactly one
//! operator replica writes status and events.
//!
//! The loop, every `retry_period`:
//!
//! - **a candidate** reads the Lease. It takes it when nobody holds it,
//!   or when the record (holder, renew time) has not changed for the
//!   lease's duration *as measured by this replica's own clock* since it
//!   first saw that record — clocks of different nodes are never compared.
//!   Taking it is a `replace` carrying the `resourceVersion` read, so of
//!   two candidates only one succeeds (the other gets a 409);
//! - **the leader** renews (`renewTime` = now). If it cannot renew for
//!   `renew_deadline` (shorter than the lease duration), it stops leading
//!   *before* a candidate could consider the lease expired; if it finds
//!   another holder, it stops at once;
//! - **on shutdown** the leader stops writing first, then releases the
//!   Lease (no holder, duration 1 s), so a standby takes over at its next
//!   look instead of waiting out the duration.
//!
//! Leadership is published on a `watch` channel; the operator writes only
//! while it reads `true`.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the lease lives and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the lease is looked at.
    pub retry_period: Duration,
}

/// What the candidate last saw of someone else's lease.
struct Seen {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    since: Instant,
}

/// Runs the election until `shutdown` completes, publishing leadership on
/// `leader`; releases the lease on the way out when holding it.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut seen: Option<Seen> = None;
    let mut last_renewal: Option<Instant> = None;
    let mut ticker = tokio::time::interval(settings.retry_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let leading = *leader.borrow();
        if leading {
            match renew(&api, &settings).await {
                Ok(true) => last_renewal = Some(Instant::now()),
                Ok(false) => {
                    tracing::warn!(
                        lease = settings.name,
                        "another replica holds the lease; no longer leading"
                    );
                    set(&leader, false);
                }
                Err(error) => {
                    let since = last_renewal.map_or(Duration::MAX, |t| t.elapsed());
                    tracing::warn!(lease = settings.name, %error, "cannot renew the lease");
                    if since >= settings.renew_deadline {
                        tracing::error!(
                            lease = settings.name,
                            "lease not renewed within the renew deadline; no longer leading"
                        );
                        set(&leader, false);
                    }
                }
            }
        } else {
            match try_acquire(&api, &settings, &mut seen).await {
                Ok(true) => {
                    last_renewal = Some(Instant::now());
                    metrics::counter!("tollgate_operator_lease_acquisitions_total").increment(1);
                    tracing::info!(
                        lease = settings.name,
                        identity = settings.identity,
                        "leading"
                    );
                    set(&leader, true);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(lease = settings.name, %error, "cannot read or take the lease")
                }
            }
        }
    }
    if *leader.borrow() {
        set(&leader, false);
        match release(&api, &settings).await {
            Ok(()) => tracing::info!(lease = settings.name, "lease released"),
            Err(error) => {
                tracing::warn!(lease = settings.name, %error, "cannot release the lease; a standby takes over when it expires")
            }
        }
    }
}

fn set(leader: &watch::Sender<bool>, leading: bool) {
    metrics::gauge!("tollgate_operator_leader").set(if leading { 1.0 } else { 0.0 });
    leader.send_replace(leading);
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Takes the lease when it is free or expired (by this replica's clock).
async fn try_acquire(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    seen: &mut Option<Seen>,
) -> Result<bool, kube::Error> {
    let Some(current) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(held_spec(settings, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let free = holder.is_none() || holder.as_deref() == Some(settings.identity.as_str());
    let duration = spec
        .lease_duration_seconds
        .map_or(settings.duration, |s| Duration::from_secs(s.max(1) as u64));
    let changed = seen
        .as_ref()
        .is_none_or(|s| s.holder != holder || s.renew_time != spec.renew_time);
    if changed {
        *seen = Some(Seen {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            since: Instant::now(),
        });
    }
    let expired = seen.as_ref().is_some_and(|s| s.since.elapsed() >= duration);
    if !free && !expired {
        return Ok(false);
    }
    let mut taken = current.clone();
    taken.spec = Some(held_spec(settings, Some(&spec)));
    match api
        .replace(&settings.name, &PostParams::default(), &taken)
        .await
    {
        Ok(_) => {
            if let Some(previous) = holder.filter(|h| *h != settings.identity) {
                tracing::info!(previous, "took over an expired lease");
            }
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// The spec of a lease this replica takes.
fn held_spec(settings: &LeaseSettings, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let same_holder =
        previous.and_then(|p| p.holder_identity.as_deref()) == Some(&settings.identity);
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(seconds(settings.duration)),
        acquire_time: Some(now()),
        renew_time: Some(now()),
        lease_transitions: Some(if same_holder {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// Renews a lease this replica holds: `Ok(false)` when someone else holds
/// it now.
async fn renew(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let mut current = api.get(&settings.name).await?;
    let spec = current.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(false);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(seconds(settings.duration));
    match api
        .replace(&settings.name, &PostParams::default(), &current)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Changed under us: look again next period.
            Err(kube::Error::Api(status))
        }
        Err(error) => Err(error),
    }
}

/// Gives the lease up: no holder, a 1 s duration.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let mut current = api.get(&settings.name).await?;
    let spec = current.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&settings.name, &PostParams::default(), &current)
        .await
        .map(|_| ())
}
