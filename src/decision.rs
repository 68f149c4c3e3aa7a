//! What the decision core answers: allow (with headers for the upstream and
//! the client) or deny (with a stable reason), plus the identity it
//! established and a step-by-step trace for `tollgate check` and logs.
//! Transport-neutral: the gRPC adapter turns it into a `CheckResponse`.

use serde::Serialize;

use crate::reason::{Challenge, Reason};

/// The result of deciding on one request.
#[derive(Clone, Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub identity: Identity,
    /// In `dryRun` mode: the denial that enforcement would have answered.
    pub dry_run_denial: Option<Deny>,
    /// What each stage decided, in order; empty unless
    /// `pipeline::Settings::trace` is on (`tollgate check` turns it on, the
    /// server does not).
    pub trace: Vec<Step>,
}

/// Allow or deny.
#[derive(Clone, Debug)]
pub enum Verdict {
    Allow(Allow),
    Deny(Deny),
}

/// Who and what a request was found to be; filled as stages pass.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Identity {
    /// `namespace/name` of the matched policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The user's subject (`sub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user token's issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The client's address as the trusted origin gives it (for the audit
    /// log; not part of the identity a decision reports).
    #[serde(skip)]
    pub client: Option<std::net::IpAddr>,
}

/// An allowed request's effects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    /// Headers set on the upstream request, overwriting any the client sent.
    pub set_upstream: Vec<(String, String)>,
    /// Request headers removed before the request goes upstream. Never a
    /// name that is also in `set_upstream` (Envoy removes after it adds).
    pub remove_upstream: Vec<String>,
    /// Headers added to the response to the client (RateLimit…).
    pub response_headers: Vec<(String, String)>,
    /// Whether the answer carries dynamic metadata for Envoy's access logs
    /// (the policy's `response.dynamicMetadata: always`). Denials, and
    /// allows with a dry-run denial, always carry it.
    pub metadata: bool,
}

/// A denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deny {
    pub reason: Reason,
    /// A precise, client-safe explanation (never key material or tokens).
    pub detail: String,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, RateLimit…).
    pub headers: Vec<(String, String)>,
    /// The reason shown to the client when the policy hides attestation
    /// details (`response.discloseReasons: false`); logs keep `reason`.
    pub disclosed_as: Option<Reason>,
}

impl Deny {
    /// A denial for `reason` with `detail`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            headers: Vec::new(),
            disclosed_as: None,
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The reason the client sees.
    pub fn public_reason(&self) -> Reason {
        self.disclosed_as.unwrap_or(self.reason)
    }

    /// The detail the client sees.
    pub fn public_detail(&self) -> &str {
        if self.disclosed_as.is_some() {
            "the app could not be authenticated"
        } else {
            &self.detail
        }
    }

    /// The RFC 9457 problem document sent as the denied response's body.
    pub fn problem_json(&self) -> String {
        let reason = self.public_reason();
        let problem = Problem {
            type_: format!("https://tollgate.dev/problems/{}", reason.code()),
            title: reason.title(),
            status: reason.http_status(),
            detail: self.public_detail(),
            reason: reason.code(),
        };
        serde_json::to_string(&problem).unwrap_or_else(|_| {
            format!(
                r#"{{"status":{},"reason":"{}"}}"#,
                reason.http_status(),
                reason.code()
            )
        })
    }

    /// Every response header of the denial: the reason header, the
    /// challenge (on 401) and the extra headers.
    pub fn response_headers(&self, challenge_params: &ChallengeParams) -> Vec<(String, String)> {
        let reason = self.public_reason();
        let mut headers = vec![
            (
                "content-type".to_owned(),
                "application/problem+json".to_owned(),
            ),
            ("x-tollgate-reason".to_owned(), reason.code().to_owned()),
        ];
        let has_challenge = self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("www-authenticate"));
        if let Some(challenge) = reason.challenge()
            && !has_challenge
            && reason.http_status() == 401
        {
            headers.push((
                "www-authenticate".to_owned(),
                challenge_params.render(challenge, reason),
            ));
        }
        headers.extend(self.headers.iter().cloned());
        headers
    }
}

/// What a policy tells clients in challenges.
#[derive(Clone, Debug, Default)]
pub struct ChallengeParams {
    /// The app credential header the `App` challenge names.
    pub app_header: Option<String>,
    /// DPoP algorithms for the `DPoP` challenge's `algs`.
    pub dpop_algs: Vec<String>,
}

impl ChallengeParams {
    /// Renders the `WWW-Authenticate` value for a 401.
    pub fn render(&self, challenge: Challenge, reason: Reason) -> String {
        match challenge {
            // RFC 6750 §3.1: no error attribute when no token was sent.
            Challenge::Bearer if reason == Reason::UserTokenMissing => {
                r#"Bearer realm="tollgate""#.to_owned()
            }
            Challenge::Bearer => r#"Bearer realm="tollgate", error="invalid_token""#.to_owned(),
            Challenge::Dpop => {
                let algs = if self.dpop_algs.is_empty() {
                    "ES256 EdDSA".to_owned()
                } else {
                    self.dpop_algs.join(" ")
                };
                if reason == Reason::DpopProofMissing {
                    format!(r#"DPoP algs="{algs}""#)
                } else {
                    format!(r#"DPoP error="invalid_dpop_proof", algs="{algs}""#)
                }
            }
            Challenge::App => {
                let header = self.app_header.as_deref().unwrap_or("x-api-key");
                format!(r#"App realm="tollgate", header="{header}""#)
            }
            Challenge::Signature => r#"Signature realm="tollgate""#.to_owned(),
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    reason: &'a str,
}

/// One stage's note in the trace.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Step {
    pub stage: &'static str,
    pub outcome: StepOutcome,
    pub note: String,
}

/// How a stage ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Pass,
    Skip,
    Deny,
}

impl Decision {
    /// True when the request may proceed.
    pub fn is_allow(&self) -> bool {
        matches!(self.verdict, Verdict::Allow(_))
    }

    /// The denial, if denied.
    pub fn denial(&self) -> Option<&Deny> {
        match &self.verdict {
            Verdict::Deny(deny) => Some(deny),
            Verdict::Allow(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_body_carries_reason_and_status() {
        let deny = Deny::new(Reason::NoPolicy, "no policy serves host example.org");
        let body: serde_json::Value = serde_json::from_str(&deny.problem_json()).unwrap();
        assert_eq!(body["reason"], "no_policy");
        assert_eq!(body["status"], 403);
        assert_eq!(body["title"], "No policy for this request");
        assert_eq!(body["detail"], "no policy serves host example.org");
        assert_eq!(body["type"], "https://tollgate.dev/problems/no_policy");
    }

    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let deny = Deny::new(Reason::UserTokenMissing, "no token");
        let headers = deny.response_headers(&ChallengeParams::default());
        let challenge = headers
            .iter()
            .find(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| v.as_str());
        assert_eq!(challenge, Some(r#"Bearer realm="tollgate""#));
    }

    #[test]
    fn hidden_attestation_reason_is_generic_for_clients() {
        let mut deny = Deny::new(Reason::TokenBindingMismatch, "pay claim differs");
        deny.disclosed_as = Some(Reason::AttestationInvalid);
        let body: serde_json::Value = serde_json::from_str(&deny.problem_json()).unwrap();
        assert_eq!(body["reason"], "attestation_invalid");
        assert!(!deny.problem_json().contains("pay claim"));
    }
}
