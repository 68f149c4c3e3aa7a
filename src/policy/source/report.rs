//! What a policy source tells operators after each assembled snapshot:
//! one log line per object whose problems changed (never one per reload),
//! and the metrics of every object's state.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `tollgate_policy_objects` | gauge | `kind`, `state` | objects by kind and `serving` / `serving_previous` / `not_serving` |
//! | `tollgate_policy_compile_errors` | gauge | `kind`, `namespace`, `name` | errors of an object's latest version (0 once fixed; only objects that ever failed have a series) |
//! | `tollgate_policy_host_conflicts` | gauge | — | hosts claimed by a policy that an older one holds |
//! | `tollgate_policy_snapshot_version` | gauge | — | the version being served |

use std::collections::BTreeMap;

use crate::policy::catalog::{Kind, ObjectRef, ObjectReport, ObjectState, Report};

/// Remembers what was last said about each object.
#[derive(Debug, Default)]
pub struct Reporter {
    said: BTreeMap<ObjectRef, Vec<String>>,
}

impl Reporter {
    /// Logs what changed since the last report and sets the metrics.
    /// Returns the number of objects with problems.
    pub fn publish(&mut self, report: &Report, version: u64) -> usize {
        let mut with_problems = 0;
        let mut host_conflicts = 0;
        let mut seen = BTreeMap::new();
        for object in &report.objects {
            let problems = object.problems();
            if !problems.is_empty() {
                with_problems += 1;
            }
            if object.object.kind == Kind::ApiPolicy {
                host_conflicts += object.conflicts.len();
            }
            let before = self.said.get(&object.object);
            if before.map(Vec::as_slice).unwrap_or_default() != problems.as_slice() {
                log_change(object, &problems, before.is_some());
                set_error_gauge(object);
            }
            seen.insert(object.object.clone(), problems);
        }
        // Deleted objects: their error series drop to zero.
        for gone in self.said.keys().filter(|k| !seen.contains_key(*k)) {
            metrics::gauge!(
                "tollgate_policy_compile_errors",
                "kind" => gone.kind.as_str(),
                "namespace" => gone.namespace.clone(),
                "name" => gone.name.clone(),
            )
            .set(0.0);
        }
        self.said = seen;
        for ((kind, state), count) in report.counts() {
            metrics::gauge!(
                "tollgate_policy_objects",
                "kind" => kind.as_str(),
                "state" => state.as_str(),
            )
            .set(count as f64);
        }
        metrics::gauge!("tollgate_policy_host_conflicts").set(host_conflicts as f64);
        metrics::gauge!("tollgate_policy_snapshot_version").set(version as f64);
        with_problems
    }
}

fn set_error_gauge(object: &ObjectReport) {
    metrics::gauge!(
        "tollgate_policy_compile_errors",
        "kind" => object.object.kind.as_str(),
        "namespace" => object.object.namespace.clone(),
        "name" => object.object.name.clone(),
    )
    .set(object.errors.len() as f64);
}

/// One line per problem of an object whose problems changed; one line
/// when they are all gone.
fn log_change(object: &ObjectReport, problems: &[String], known: bool) {
    let state = object.state.as_str();
    if problems.is_empty() {
        if known {
            tracing::info!(object = %object.object, state, "policy object fixed: no problems left");
        }
        return;
    }
    for problem in problems {
        match object.state {
            ObjectState::ServingPrevious => tracing::error!(
                object = %object.object,
                state,
                problem = problem.as_str(),
                "policy object rejected; its previous version keeps serving"
            ),
            ObjectState::NotServing => tracing::error!(
                object = %object.object,
                state,
                problem = problem.as_str(),
                "policy object rejected; it is not served"
            ),
            ObjectState::Serving => tracing::warn!(
                object = %object.object,
                state,
                problem = problem.as_str(),
                "policy object warning"
            ),
        }
    }
}
