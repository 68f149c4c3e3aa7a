//! Plans and their limits (rates and calendar quotas). SEAM: filled in by
//! the quota work; until then a plan with limits is refused at load.

use crate::policy::types::ApiPolicySpec;

/// The compiled plans of one policy.
#[derive(Debug, Default)]
pub struct Plans {
    names: Vec<String>,
}

impl Plans {
    /// Compiles a policy's plans. Refuses limits until the quota stage exists.
    pub fn compile(spec: &ApiPolicySpec) -> Result<Self, String> {
        let plans = &spec.plans;
        for plan in plans {
            if !plan.limits.is_empty() {
                return Err(format!(
                    "plans[{}].limits: quotas are not available in this build",
                    plan.name
                ));
            }
        }
        Ok(Self {
            names: plans.iter().map(|p| p.name.clone()).collect(),
        })
    }

    /// True when a plan of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}
