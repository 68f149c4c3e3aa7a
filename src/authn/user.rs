//! User authentication (OAuth 2.0 / OIDC access tokens). SEAM: filled in by
//! the user-authentication work; until then a policy with `spec.user` is
//! refused at load with a clear error, so it can never be served without
//! its checks.

use crate::decision::Deny;
use crate::origin::Origin;
use crate::policy::compile::CompileContext;
use crate::policy::types::UserSpec;
use crate::request::RequestContext;

/// Compiled `spec.user`.
#[derive(Debug)]
pub struct UserPolicy {
    _private: (),
}

/// An authenticated user.
#[derive(Clone, Debug)]
pub struct UserIdentity {
    pub issuer: String,
    pub subject: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl UserPolicy {
    /// Compiles `spec.user`.
    pub fn compile(_spec: &UserSpec, _ctx: &CompileContext<'_>) -> Result<Self, String> {
        Err("user authentication (spec.user) is not available in this build".to_owned())
    }

    /// Authenticates the user of `request`; `Ok(None)` when no token was
    /// sent and none is required.
    pub async fn authenticate(
        &self,
        _request: &RequestContext,
        _origin: &Origin,
        _now: std::time::Duration,
    ) -> Result<Option<UserIdentity>, Deny> {
        Ok(None)
    }
}
