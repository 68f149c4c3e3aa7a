//! The policy API: the `ApiPolicy` and `AppRegistration` custom resources
//! (group `tollgate.dev`, version `v1alpha1`) and the `v1 Secret` documents a
//! policy file may hold.
//!
//! These types are both the CRDs (`tollgate crds` prints them) and the policy
//! file format, so what runs locally with `--policy-file` is what `kubectl
//! apply` installs. Every struct denies unknown fields: a typo in a policy is an
//! error naming the field, never a silently ignored setting. The schema is
//! documented for users in `docs/policy.md`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::DurationStr;

/// Which requests a policy covers, which credentials they need and which plans
/// apply.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ApiPolicy",
    doc = "Which requests an API serves (hosts, routes), which credentials they need (user token, app key and attestation) and which plans and limits apply. Schema: docs/policy.md.",
    namespaced,
    status = "PolicyStatus",
    shortname = "apipol",
    shortname = "tgpol",
    category = "tollgate",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".status.hosts"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Apps","type":"integer","jsonPath":".status.acceptedApps"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiPolicySpec {
    /// Hosts (`:authority` without port) this policy serves: exact names or
    /// `*.` wildcards. Case-insensitive; the most specific match wins.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `enforce` (default) or `dryRun`: decide, log and count, but allow.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub transport: TransportSpec,
    /// User authentication (OAuth 2.0 / OIDC access tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserSpec>,
    /// App identification and authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppSpec>,
    #[serde(default)]
    pub replay: ReplaySpec,
    /// The plan of requests whose app has none (or of anonymous requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_plan: Option<String>,
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
    /// Route refinements; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub response: ResponseSpec,
    /// What to do when the store (Redis) fails for quotas: `deny` (default,
    /// 503 `store_unavailable`) or `allow` (quotas skipped, counted).
    #[serde(default)]
    pub on_store_error: StoreErrorAction,
    /// Quota leases: `auto` (default) lets a replica reserve slices of the
    /// limits it serves often and admit from them without a store call;
    /// `off` checks every request in the store (docs/store.md).
    #[serde(default)]
    pub leases: LeaseMode,
}

/// Whether a policy's limits may be leased (`spec.leases`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum LeaseMode {
    /// Limits hot on a replica are admitted from leased slices; the rest
    /// request by request.
    #[default]
    Auto,
    /// Every request is checked in the store.
    Off,
}

/// Whether a policy's decisions are enforced.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

/// What a store failure does to a request.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StoreErrorAction {
    #[default]
    Deny,
    Allow,
}

/// A three-way requirement used by several checks.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Requirement {
    Disabled,
    #[default]
    Optional,
    Required,
}

/// Transport-level checks on the external request.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransportSpec {
    /// Deny plain-HTTP requests (`https_required`). Default true.
    #[serde(default = "default_true")]
    pub require_https: bool,
    /// Client addresses allowed (CIDR); empty means any.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Client addresses denied (CIDR); checked before `allowCidrs`.
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
}

impl Default for TransportSpec {
    fn default() -> Self {
        Self {
            require_https: true,
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// User authentication.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    /// A request without a user token is denied (`user_token_missing`).
    #[serde(default = "default_true")]
    pub required: bool,
    pub issuers: Vec<IssuerSpec>,
    /// DPoP (RFC 9449) proof of possession.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<DpopSpec>,
    /// RFC 8705 certificate-bound tokens (`cnf.x5t#S256`).
    #[serde(default)]
    pub certificate_binding: Requirement,
    /// Require the RFC 9068 `typ: at+jwt` header so ID tokens are refused.
    #[serde(default)]
    pub require_access_token_type: bool,
}

/// One trusted token issuer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSpec {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; a token passes when any of its audiences is listed.
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks: KeySource,
    /// Accepted algorithms. `none` is never accepted; HS* only with a Secret key.
    #[serde(default = "default_user_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<DurationStr>,
}

fn default_user_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}

/// Where verification keys come from. Exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySource {
    /// Fetch `{issuer}/.well-known/openid-configuration` and use its `jwks_uri`.
    #[serde(default)]
    pub discovery: bool,
    /// A JWKS URL (HTTPS; plain HTTP only for loopback addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// A JWKS document given inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub inline: Option<serde_json::Value>,
    /// A key (HMAC secret or JWKS) held in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// How the Secret's value is encoded: `raw` (default), `base64` or `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<KeyEncoding>,
    /// With `discovery` or `uri`: the longest the fetched keys are used
    /// before they are fetched again, so a key the IdP removed stops
    /// verifying within it. `Cache-Control: max-age` may shorten it, never
    /// lengthen it. Default 1h; 1m to 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cache_age: Option<DurationStr>,
}

/// How a secret key's bytes are encoded in the Secret.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KeyEncoding {
    /// The Secret value is the key itself.
    Raw,
    /// The Secret value is base64 of the key (Approov's default).
    Base64,
    /// The Secret value is a JWKS document.
    Jwks,
}

/// A key of a Secret in the same namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// DPoP settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpopSpec {
    /// `disabled`, `optional` (enforced when the token has `cnf.jkt`) or `required`.
    #[serde(default)]
    pub mode: Requirement,
    /// Accepted proof algorithms (asymmetric only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// How old (or how far in the future) a proof's `iat` may be. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationStr>,
}

/// App identification and authentication.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// A request from no identified app is denied (`app_credential_missing`).
    #[serde(default = "default_true")]
    pub required: bool,
    #[serde(default)]
    pub identify: IdentifySpec,
    /// Approov-style app attestation token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationSpec>,
    /// RFC 9421 HTTP Message Signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureSpec>,
}

/// How the calling app is identified. Several may be set; all that are
/// present must agree.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentifySpec {
    /// An API key in a request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeySpec>,
    /// A claim of the attestation token holding the app id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_claim: Option<String>,
    /// The client certificate (SPIFFE ID / URI SAN or SHA-256 fingerprint).
    #[serde(default)]
    pub client_certificate: bool,
    /// The `keyid` of an RFC 9421 signature.
    #[serde(default)]
    pub signature_key_id: bool,
}

/// Where the API key is read from.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Header name (case-insensitive). Default `x-api-key`.
    #[serde(default = "default_api_key_header")]
    pub header: String,
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

/// Approov-style app attestation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationSpec {
    /// A request without the token is denied (`attestation_missing`).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Header carrying the token. Default `approov-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Verification keys (several at once for rotation).
    pub keys: KeySource,
    /// Accepted algorithms. Default `[HS256]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// How far in the future `exp` may be. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<DurationStr>,
    /// Required `iss`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values, when set: the token passes when any of its
    /// audiences is listed, so a token minted for another API cannot pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Required JOSE `typ` header (e.g. `approov+jwt`), when set; compared
    /// case-insensitively, with or without `application/` (RFC 7515
    /// §4.1.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Binding of the app token to other request headers (the `pay` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<BindingSpec>,
    /// The token's `jti` may be used once.
    #[serde(default)]
    pub single_use: bool,
    /// Clock skew tolerated on `exp`. Default 0s (Approov tokens are short-lived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<DurationStr>,
}

/// Token binding: a claim holding base64(SHA-256(concatenated header values)).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingSpec {
    /// Claim name. Default `pay`.
    #[serde(default = "default_binding_claim")]
    pub claim: String,
    /// Headers whose values are hashed, in order. Default `[authorization]`.
    #[serde(default = "default_binding_headers")]
    pub headers: Vec<String>,
    /// A token without the claim is denied (`token_binding_mismatch`).
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_binding_claim() -> String {
    "pay".to_owned()
}

fn default_binding_headers() -> Vec<String> {
    vec!["authorization".to_owned()]
}

/// RFC 9421 HTTP Message Signatures.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureSpec {
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// Components every signature must cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// Maximum age of `created`. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationStr>,
    /// Require a `nonce` parameter (remembered to refuse replays).
    #[serde(default)]
    pub require_nonce: bool,
}

/// Replay protection settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplaySpec {
    /// How long nonces and DPoP `jti`s are remembered. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationStr>,
    /// What a store failure does to replay checks; `deny` by default even
    /// when quotas fail open.
    #[serde(default)]
    pub on_store_error: StoreErrorAction,
}

/// A named plan: the limits an app on it gets.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSpec {
    pub name: String,
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
}

/// One limit of a plan: a rate or a calendar quota.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSpec {
    pub name: String,
    /// Whose requests are counted together.
    #[serde(default)]
    pub key: LimitKey,
    /// A smooth rate (GCRA). Exactly one of `rate` and `quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// A calendar cap. Exactly one of `rate` and `quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
}

/// The subject a limit counts.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LimitKey {
    #[default]
    App,
    User,
    AppUser,
    Device,
    Ip,
}

/// A smooth rate: `requests` per `period`, `burst` at once.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateSpec {
    pub requests: u64,
    pub period: DurationStr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A calendar quota: `requests` per window, reset at the window boundary.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    pub requests: u64,
    pub reset: QuotaWindow,
    /// IANA time zone of the window boundaries. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Calendar windows.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum QuotaWindow {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

/// A route refinement.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: RouteMatch,
    /// Units consumed from every limit. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// No credentials needed and no quota consumed.
    #[serde(default)]
    pub public: bool,
    /// Deny every request on this route (`rule_denied`).
    #[serde(default)]
    pub deny: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<RouteRequire>,
}

/// What a route matches. All given conditions must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact path (without the query string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix, matched on segment boundaries (`/v1` matches `/v1` and
    /// `/v1/x`, not `/v10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Methods (upper case); empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Per-route requirements on the user token.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRequire {
    /// Every listed scope must be in the token's `scope` (or `scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Each claim must hold one of the listed values.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
}

/// How allowed and denied responses are shaped.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseSpec {
    /// Headers added to the request sent upstream on allow; values are
    /// templates (`{user.sub}`, `{app.id}`, `{plan}`, `{policy}`,
    /// `{user.claims.NAME}`, `{device.id}`).
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
    /// Strip credentials (app token, API key, DPoP, signature headers) upstream.
    #[serde(default = "default_true")]
    pub remove_credentials: bool,
    /// Send RateLimit-Policy / RateLimit headers to the client.
    #[serde(default)]
    pub rate_limit_headers: bool,
    /// Tell clients the precise attestation failure. Default true.
    #[serde(default = "default_true")]
    pub disclose_reasons: bool,
    /// Which answers carry dynamic metadata (policy, route, app, plan,
    /// user…) for Envoy's access logs: `denials` (default: denials and
    /// dry-run denials) or `always` (allows too). Applying metadata costs
    /// Envoy CPU on every request (docs/performance.md), so allows carry
    /// it only when asked.
    #[serde(default)]
    pub dynamic_metadata: DynamicMetadata,
}

/// Which answers carry dynamic metadata (`response.dynamicMetadata`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DynamicMetadata {
    /// Denials, and allows of a `dryRun` policy that would have denied.
    #[default]
    Denials,
    /// Every answer, allows included.
    Always,
}

impl Default for ResponseSpec {
    fn default() -> Self {
        Self {
            upstream_headers: BTreeMap::new(),
            remove_credentials: true,
            rate_limit_headers: false,
            disclose_reasons: true,
            dynamic_metadata: DynamicMetadata::Denials,
        }
    }
}

/// Status of an `ApiPolicy`, written by the operator (`tollgate
/// operator`); docs/operator.md explains every condition.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec compiles) and `Ready` (it is what the servers
    /// serve).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The hosts this policy is served for (without those an older policy
    /// holds), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// How many served AppRegistrations this policy accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_apps: Option<i64>,
}

/// Status of an `AppRegistration`, written by the operator.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppRegistrationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` and `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The plan each policy that accepts this app applies to it, sorted by
    /// policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<EffectivePlan>,
}

/// The plan a policy applies to an app.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePlan {
    /// The policy's name (same namespace).
    pub policy: String,
    /// The plan; absent when the policy has no plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// A status condition (Kubernetes API conventions: one per `type`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted` or `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason: `Valid`, `Invalid`, `SecretNotFound`,
    /// `Conflicted`, `PolicyNotFound`, `PlanNotFound`, `ServingPrevious`.
    #[serde(default)]
    pub reason: String,
    /// What to fix, naming the field (bounded in length).
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One registered app (the API key holder).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "AppRegistration",
    doc = "One registered app (the API key holder): its id, plan, API key and client certificates. Schema: docs/policy.md.",
    namespaced,
    status = "AppRegistrationStatus",
    shortname = "appreg",
    shortname = "tgapp",
    category = "tollgate",
    printcolumn = r#"{"name":"App ID","type":"string","jsonPath":".spec.appId"}"#,
    printcolumn = r#"{"name":"Plan","type":"string","jsonPath":".spec.plan"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppRegistrationSpec {
    /// The app's stable id (sent upstream as `x-tollgate-app`).
    pub app_id: String,
    /// Plan name; else the policy's `defaultPlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// ApiPolicies (same namespace) that accept this app; empty means all.
    #[serde(default)]
    pub policies: Vec<String>,
    /// The API key (or its SHA-256 digest, `sha256:<hex>`) in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretValueRef>,
    /// HMAC key for RFC 9421 `hmac-sha256` signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SecretValueRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateSpec>,
    #[serde(default)]
    pub disabled: bool,
}

/// A reference to a Secret value.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretValueRef {
    pub secret_ref: SecretKeyRef,
}

/// Client certificates that identify the app.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificateSpec {
    #[serde(default)]
    pub spiffe_ids: Vec<String>,
    /// Hex SHA-256 fingerprints of the DER certificate.
    #[serde(default)]
    pub sha256_fingerprints: Vec<String>,
}
