//! What an object's status should say: the `Accepted` and `Ready`
//! conditions and the facts, computed from the catalog's report of the
//! object. Pure, so every reason is unit-tested without an API server.
//!
//! | condition | `True` | `False` reasons |
//! |---|---|---|
//! | `Accepted` | `Valid`: the latest generation compiles | `Invalid` (names the field), `SecretNotFound` (names Secret, key and label) |
//! | `Ready` | `Valid`: servers serve exactly the latest generation | the `Accepted` reason when it is `False` (the message says whether a previous generation keeps serving), `Conflicted` (names the older object), `PolicyNotFound`, `PlanNotFound` |
//!
//! `lastTransitionTime` changes only when a condition's `status` does, so
//! an unchanged verdict produces an identical status and no write.

use serde_json::Value;

use crate::compile_context::FieldError;
use crate::policy::catalog::{Kind, ObjectReport, ObjectState};
use crate::policy::types::{AppRegistrationStatus, Condition, EffectivePlan, PolicyStatus};

/// Longest condition message: enough for a few field errors; more would
/// flood `kubectl describe` (the logs keep every detail).
pub const MAX_MESSAGE: usize = 1024;

/// A verdict: whether and why, for one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The desired status of an object, as JSON for the status subresource.
pub fn desired(
    report: &ObjectReport,
    generation: Option<i64>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let previous_conditions: Vec<Condition> = previous
        .and_then(|status| status.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let (accepted, ready) = verdicts(report);
    let conditions = vec![
        condition("Accepted", &accepted, generation, &previous_conditions, now),
        condition("Ready", &ready, generation, &previous_conditions, now),
    ];
    let status = match report.object.kind {
        Kind::AppRegistration => serde_json::to_value(AppRegistrationStatus {
            observed_generation: generation,
            conditions,
            plans: report
                .plans
                .iter()
                .map(|(policy, plan)| EffectivePlan {
                    policy: policy
                        .as_str()
                        .split_once('/')
                        .map_or(policy.as_str(), |(_, name)| name)
                        .to_owned(),
                    plan: plan.clone(),
                })
                .collect(),
        }),
        _ => serde_json::to_value(PolicyStatus {
            observed_generation: generation,
            conditions,
            hosts: report.hosts.clone(),
            accepted_apps: (report.state != ObjectState::NotServing)
                .then_some(report.accepted_apps as i64),
        }),
    };
    status.unwrap_or(Value::Null)
}

/// `Accepted` and `Ready` for one object.
pub fn verdicts(report: &ObjectReport) -> (Verdict, Verdict) {
    if !report.errors.is_empty() {
        let reason = if report.missing_secrets.is_empty() {
            "Invalid"
        } else {
            "SecretNotFound"
        };
        let errors = join(&report.errors);
        let serving = match (report.state, report.serving_generation) {
            (ObjectState::ServingPrevious, Some(g)) => format!("generation {g} keeps serving"),
            (ObjectState::ServingPrevious, None) => "the previous version keeps serving".to_owned(),
            _ => "not served".to_owned(),
        };
        let accepted = Verdict {
            ok: false,
            reason,
            message: bound(errors.clone()),
        };
        let ready = Verdict {
            ok: false,
            reason,
            message: bound(format!("{serving}: {errors}")),
        };
        return (accepted, ready);
    }
    let accepted = Verdict {
        ok: true,
        reason: "Valid",
        message: "the spec compiles".to_owned(),
    };
    (accepted, ready(report))
}

/// `Ready` of an object whose latest generation compiles.
fn ready(report: &ObjectReport) -> Verdict {
    if !report.conflicts.is_empty() {
        let conflicts: Vec<FieldError> = report.conflicts.iter().map(|c| c.error.clone()).collect();
        let served = match report.object.kind {
            Kind::ApiPolicy if !report.hosts.is_empty() => {
                format!("served for {}; ", report.hosts.join(", "))
            }
            _ => "not served: ".to_owned(),
        };
        return Verdict {
            ok: false,
            reason: "Conflicted",
            message: bound(format!("{served}{}", join(&conflicts))),
        };
    }
    let missing_policy: Vec<FieldError> = report
        .warnings
        .iter()
        .filter(|w| w.field.starts_with("spec.policies"))
        .cloned()
        .collect();
    if !missing_policy.is_empty() {
        return Verdict {
            ok: false,
            reason: "PolicyNotFound",
            message: bound(join(&missing_policy)),
        };
    }
    let missing_plan: Vec<FieldError> = report
        .warnings
        .iter()
        .filter(|w| w.field == "spec.plan")
        .cloned()
        .collect();
    if !missing_plan.is_empty() {
        return Verdict {
            ok: false,
            reason: "PlanNotFound",
            message: bound(format!(
                "{}; those policies apply their defaultPlan",
                join(&missing_plan)
            )),
        };
    }
    let message = match report.object.kind {
        Kind::ApiPolicy => format!(
            "served for {} host(s), accepting {} app(s)",
            report.hosts.len(),
            report.accepted_apps
        ),
        _ => format!("served by {} policy(ies)", report.plans.len()),
    };
    Verdict {
        ok: true,
        reason: "Valid",
        message,
    }
}

fn condition(
    type_: &str,
    verdict: &Verdict,
    generation: Option<i64>,
    previous: &[Condition],
    now: &str,
) -> Condition {
    let status = if verdict.ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(now.to_owned()));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.to_owned(),
        message: verdict.message.clone(),
        last_transition_time,
        observed_generation: generation,
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Cuts `message` to [`MAX_MESSAGE`] bytes on a character boundary,
/// saying how much was left out.
pub fn bound(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut cut = MAX_MESSAGE - 40;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} … ({} more bytes)", &message[..cut], message.len() - cut)
}

/// The `Ready` condition of a status, if any: (status, reason).
pub fn ready_of(status: Option<&Value>) -> Option<(String, String)> {
    let conditions = status?.get("conditions")?.as_array()?;
    let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
    Some((
        ready["status"].as_str()?.to_owned(),
        ready["reason"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[cfg(test)]
mod tests;
