//! App identification and authentication. SEAM: filled in by the
//! app-authentication work; until then a policy with `spec.app` is refused
//! at load with a clear error.

use crate::decision::Deny;
use crate::origin::Origin;
use crate::policy::compile::CompileContext;
use crate::policy::types::AppSpec;
use crate::request::RequestContext;

use super::user::UserIdentity;

/// Compiled `spec.app`.
#[derive(Debug)]
pub struct AppPolicy {
    _private: (),
}

/// Registered apps, indexed for lookup by credential.
#[derive(Debug, Default)]
pub struct AppIndex {
    _private: (),
}

/// An identified (and, where configured, authenticated) app.
#[derive(Clone, Debug)]
pub struct AppIdentity {
    pub app_id: String,
    pub plan: Option<String>,
    pub device: Option<String>,
}

impl AppIndex {
    /// Indexes every `AppRegistration`, reading key material from
    /// `secrets`. Until app authentication exists there is nothing to index.
    pub fn compile(
        apps: &[crate::policy::types::AppRegistration],
        _secrets: &crate::policy::compile::Secrets,
    ) -> Result<Self, String> {
        let _ = apps;
        Ok(Self::default())
    }
}

impl AppPolicy {
    /// Compiles `spec.app`.
    pub fn compile(_spec: &AppSpec, _ctx: &CompileContext<'_>) -> Result<Self, String> {
        Err("app authentication (spec.app) is not available in this build".to_owned())
    }

    /// Identifies and authenticates the app of `request`.
    pub async fn authenticate(
        &self,
        _request: &RequestContext,
        _origin: &Origin,
        _user: Option<&UserIdentity>,
        _apps: &AppIndex,
        _now: std::time::Duration,
    ) -> Result<Option<AppIdentity>, Deny> {
        Ok(None)
    }
}
