//! Stage 4: the first route of the policy matching the method and path.

use crate::policy::snapshot::{CompiledPolicy, Route};
use crate::request::RequestContext;

pub(super) fn select<'a>(
    policy: &'a CompiledPolicy,
    request: &RequestContext,
) -> Option<&'a Route> {
    policy
        .routes
        .iter()
        .find(|route| route.matches(&request.method, &request.path))
}
