//! One object's reconcile: compare the status the catalog's verdict
//! calls for with the status the API server holds, write it by
//! server-side apply when they differ, and record an event when `Ready`
//! changes. Idempotent: a second run with the same inputs writes nothing.

use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::{Value, json};

use super::status;
use crate::policy::catalog::{Kind, ObjectReport};
use crate::policy::source::kubernetes::Observed;
use crate::policy::types::{ApiPolicy, AppRegistration};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "tollgate-operator";

/// What every reconcile uses.
pub struct Context {
    /// The API client (the operator's ServiceAccount).
    pub client: Client,
    /// Publishes `events.k8s.io` events as `tollgate-operator`.
    pub recorder: Recorder,
}

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The status already said it.
    Unchanged,
    /// The status was written.
    Written,
    /// The object is gone; nothing was written (never recreated).
    Gone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Written => "written",
            Outcome::Gone => "gone",
        }
    }
}

/// A failed reconcile (retried with backoff by the caller).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(String);

/// Brings `observed`'s status in line with `report`; returns what it did
/// and the status now held (for the caller's record).
pub async fn reconcile(
    report: &ObjectReport,
    observed: &Observed,
    ctx: &Context,
) -> Result<(Outcome, Option<Value>), ReconcileError> {
    let started = Instant::now();
    let kind = report.object.kind;
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let desired = status::desired(report, observed.generation, observed.status.as_ref(), &now);
    let result = if observed.status.as_ref() == Some(&desired) {
        Ok((Outcome::Unchanged, observed.status.clone()))
    } else {
        write(report, &desired, ctx).await.map(|outcome| {
            let held = (outcome == Outcome::Written).then(|| desired.clone());
            (outcome, held)
        })
    };
    if let Ok((Outcome::Written, _)) = &result {
        record_transition(report, observed, &desired, ctx).await;
    }
    let label = match &result {
        Ok((outcome, _)) => outcome.as_str(),
        Err(_) => "error",
    };
    metrics::counter!(
        "tollgate_operator_reconciles_total",
        "kind" => kind.as_str(),
        "result" => label,
    )
    .increment(1);
    metrics::histogram!("tollgate_operator_reconcile_duration_seconds", "kind" => kind.as_str())
        .record(started.elapsed().as_secs_f64());
    result
}

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::AppRegistration => ApiResource::erase::<AppRegistration>(&()),
        _ => ApiResource::erase::<ApiPolicy>(&()),
    }
}

/// Server-side applies `status` to the object's status subresource. A
/// missing object is `Gone`: the status subresource never creates one.
async fn write(
    report: &ObjectReport,
    status: &Value,
    ctx: &Context,
) -> Result<Outcome, ReconcileError> {
    let object = &report.object;
    let resource = resource(object.kind);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &object.namespace, &resource);
    let body = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": { "name": object.name, "namespace": object.namespace },
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&object.name, &params, &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(Outcome::Written),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Outcome::Gone),
        Err(error) => Err(ReconcileError(format!(
            "cannot write the status of {object}: {error}"
        ))),
    }
}

/// An event when `Ready` changed: Normal when the object became ready,
/// Warning when it turned not ready (invalid, conflicted…). Failing to
/// record one is logged, never retried: the status is what counts.
async fn record_transition(
    report: &ObjectReport,
    observed: &Observed,
    desired: &Value,
    ctx: &Context,
) {
    let before = status::ready_of(observed.status.as_ref());
    let Some((ready, reason)) = status::ready_of(Some(desired)) else {
        return;
    };
    if before.as_ref() == Some(&(ready.clone(), reason.clone())) {
        return;
    }
    let message = desired["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    let (type_, reason) = if ready == "True" {
        (EventType::Normal, "Ready".to_owned())
    } else {
        (EventType::Warning, reason)
    };
    let resource = resource(report.object.kind);
    let reference = ObjectReference {
        api_version: Some(resource.api_version.clone()),
        kind: Some(resource.kind.clone()),
        name: Some(report.object.name.clone()),
        namespace: Some(report.object.namespace.clone()),
        uid: Some(observed.uid.clone()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_,
        reason,
        note: Some(message),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(object = %report.object, %error, "cannot record an event");
    }
}
