//! Stage 2: which policy decides. The per-route context extension
//! `tollgate.dev/policy: <namespace>/<name>` is authoritative (the client
//! cannot choose it); the host is the fallback unless
//! `--require-policy-extension` turns host matching off.

use std::sync::Arc;

use super::Settings;
use crate::origin::Origin;
use crate::policy::snapshot::{CompiledPolicy, Snapshot};
use crate::request::RequestContext;

/// The context extension key naming a policy.
pub const POLICY_EXTENSION: &str = "tollgate.dev/policy";

/// No policy applies; the detail says why.
pub(super) struct NoPolicy(pub String);

pub(super) fn policy<'a>(
    snapshot: &'a Snapshot,
    request: &RequestContext,
    origin: &Origin,
    settings: &Settings,
) -> Result<&'a Arc<CompiledPolicy>, NoPolicy> {
    if let Some(id) = request.context_extensions.get(POLICY_EXTENSION) {
        return snapshot
            .policy(id)
            .ok_or_else(|| NoPolicy(format!("the route names policy {id}, which is not loaded")));
    }
    if settings.require_policy_extension {
        return Err(NoPolicy(format!(
            "the route has no {POLICY_EXTENSION} context extension and host matching is off"
        )));
    }
    snapshot
        .hosts
        .lookup(&origin.host)
        .and_then(|id| snapshot.policies.get(id))
        .ok_or_else(|| NoPolicy(format!("no policy serves host {:?}", origin.host)))
}
