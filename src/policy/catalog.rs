//! The policy catalog: every object a source knows — `ApiPolicy`,
//! `AppRegistration`, `v1 Secret` — each compiled **on its own** and kept
//! at its last good version, and assembled into the [`Snapshot`] the
//! request path reads.
//!
//! Why per object: one team's broken update, or a Secret that disappears,
//! must not stop another team's policy from loading — nor a reload that
//! disables a compromised app. So:
//!
//! - an object whose new version does not compile keeps serving its
//!   previous compiled version (if it had one) and is reported;
//! - a deleted object stops serving;
//! - a Secret change recompiles exactly the objects that read it (the
//!   compile context records every lookup, found or not, so an object
//!   waiting for a missing Secret compiles once it appears);
//! - claims two objects cannot share go to the older one, by [`Age`]:
//!   hosts between policies, app ids and credentials between
//!   registrations. The same inputs give the same snapshot on every
//!   replica and after restarts.
//!
//! The catalog knows no source: the file watcher and the Kubernetes
//! watcher both feed it [`Catalog::upsert`] / [`Catalog::remove`] /
//! [`Catalog::reject`], then call [`Catalog::assemble`], which returns the
//! snapshot and a [`Report`] of every object (for logs, metrics and the
//! operator's status conditions).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use super::document::{Document, LoadedDocument, Origin};
use super::hosts::HostIndex;
use super::snapshot::{CompiledPolicy, PolicyId, Snapshot};
use super::types::{ApiPolicy, AppRegistration};
use crate::authn::registry::{AppIndex, CompiledApp};
use crate::compile_context::{CompileContext, FieldError, SecretRead, Secrets};

/// The kinds of object the catalog holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ApiPolicy,
    AppRegistration,
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApiPolicy => "ApiPolicy",
            Kind::AppRegistration => "AppRegistration",
            Kind::Secret => "Secret",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The reference of a document.
    pub fn of(document: &Document) -> Self {
        let kind = match document {
            Document::ApiPolicy(_) => Kind::ApiPolicy,
            Document::AppRegistration(_) => Kind::AppRegistration,
            Document::Secret(_) => Kind::Secret,
        };
        Self::new(kind, document.namespace(), document.name())
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// How old an object is; the older wins a contested claim. Cluster
/// objects carry their `creationTimestamp` (ties broken by
/// namespace/name); file documents their position (file order, then
/// document order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    pub position: u64,
}

impl Age {
    /// The age of `document` found at `position` of its source.
    pub fn of(document: &Document, position: u64) -> Self {
        let meta = match document {
            Document::ApiPolicy(p) => &p.metadata,
            Document::AppRegistration(a) => &a.metadata,
            Document::Secret(s) => &s.metadata,
        };
        Self {
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            position,
        }
    }
}

/// Whether an object is being served, and which version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectState {
    /// Its latest version is compiled and served.
    Serving,
    /// Its latest version does not compile; the previous one is served.
    ServingPrevious,
    /// Nothing of it is served (it never compiled, or an older object
    /// holds what it claims).
    NotServing,
}

impl ObjectState {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectState::Serving => "serving",
            ObjectState::ServingPrevious => "serving_previous",
            ObjectState::NotServing => "not_serving",
        }
    }
}

/// Something an older object holds that this one also claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub error: FieldError,
    /// The older object that keeps the claim.
    pub holder: ObjectRef,
}

/// What the catalog knows of one policy or registration after
/// [`Catalog::assemble`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectReport {
    pub object: ObjectRef,
    /// How messages name it (file and document, or kind and name).
    pub describe: String,
    /// `metadata.generation` of the latest version seen.
    pub generation: Option<i64>,
    /// `metadata.generation` of the version being served.
    pub serving_generation: Option<i64>,
    pub state: ObjectState,
    /// Why the latest version is not served (empty when it is).
    pub errors: Vec<FieldError>,
    /// Secret lookups of the latest version that found nothing.
    pub missing_secrets: Vec<SecretRead>,
    /// Claims lost to older objects: hosts (policies; the policy is still
    /// served for its other hosts) or the whole registration (apps).
    pub conflicts: Vec<Conflict>,
    /// Problems that do not stop serving: an app naming a policy or a
    /// plan that does not exist.
    pub warnings: Vec<FieldError>,
    /// Policies: the hosts it serves, sorted.
    pub hosts: Vec<String>,
    /// Policies: how many served registrations it accepts.
    pub accepted_apps: usize,
    /// Apps: the plan each served policy that accepts it applies, sorted
    /// by policy (`None`: the policy has no plans); only from a catalog
    /// [`Catalog::with_app_plans`].
    pub plans: Vec<(PolicyId, Option<String>)>,
}

impl ObjectReport {
    fn new(object: ObjectRef, describe: String) -> Self {
        Self {
            object,
            describe,
            generation: None,
            serving_generation: None,
            state: ObjectState::NotServing,
            errors: Vec::new(),
            missing_secrets: Vec::new(),
            conflicts: Vec::new(),
            warnings: Vec::new(),
            hosts: Vec::new(),
            accepted_apps: 0,
            plans: Vec::new(),
        }
    }

    /// Every problem, one per line, each prefixed with the object:
    /// errors first, then conflicts, then warnings.
    pub fn problems(&self) -> Vec<String> {
        let errors = self.errors.iter();
        let conflicts = self.conflicts.iter().map(|c| &c.error);
        errors
            .chain(conflicts)
            .chain(self.warnings.iter())
            .map(|e| format!("{}: {e}", self.describe))
            .collect()
    }
}

/// Every policy and registration, sorted by [`ObjectRef`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub objects: Vec<ObjectReport>,
}

impl Report {
    /// The report of `object`, if the catalog holds it.
    pub fn get(&self, object: &ObjectRef) -> Option<&ObjectReport> {
        self.objects
            .binary_search_by(|r| r.object.cmp(object))
            .ok()
            .map(|i| &self.objects[i])
    }

    /// Objects by kind and state, for the `tollgate_policy_objects` gauge.
    pub fn counts(&self) -> BTreeMap<(Kind, ObjectState), usize> {
        let mut counts = BTreeMap::new();
        for kind in [Kind::ApiPolicy, Kind::AppRegistration] {
            for state in [
                ObjectState::Serving,
                ObjectState::ServingPrevious,
                ObjectState::NotServing,
            ] {
                counts.insert((kind, state), 0);
            }
        }
        for object in &self.objects {
            *counts
                .entry((object.object.kind, object.state))
                .or_default() += 1;
        }
        counts
    }
}

/// A compiled policy and the hosts it claims.
#[derive(Debug)]
struct PolicyBuild {
    policy: Arc<CompiledPolicy>,
    hosts: Vec<String>,
}

/// What the catalog keeps of one policy or registration.
#[derive(Debug)]
struct Slot<Spec, Compiled> {
    describe: String,
    origin: Origin,
    age: Age,
    /// The latest version seen; `None` when it could not even be read.
    latest: Option<Arc<Spec>>,
    generation: Option<i64>,
    /// Why the latest version does not compile (empty: it does).
    errors: Vec<FieldError>,
    /// Secret lookups the latest compile made.
    reads: Vec<SecretRead>,
    /// The last good version and its generation.
    serving: Option<(Arc<Compiled>, Option<i64>)>,
}

impl<Spec, Compiled> Slot<Spec, Compiled> {
    fn empty(describe: String, origin: Origin, age: Age) -> Self {
        Self {
            describe,
            origin,
            age,
            latest: None,
            generation: None,
            errors: Vec::new(),
            reads: Vec::new(),
            serving: None,
        }
    }

    /// The Secrets (namespace, name) the latest compile read.
    fn secrets_read(&self) -> BTreeSet<(String, String)> {
        self.reads
            .iter()
            .map(|r| (r.namespace.clone(), r.name.clone()))
            .collect()
    }

    fn state(&self) -> ObjectState {
        match (
            &self.serving,
            self.errors.is_empty() && self.latest.is_some(),
        ) {
            (Some(_), true) => ObjectState::Serving,
            (Some(_), false) => ObjectState::ServingPrevious,
            (None, _) => ObjectState::NotServing,
        }
    }

    fn report(&self, object: ObjectRef) -> ObjectReport {
        let mut report = ObjectReport::new(object, self.describe.clone());
        report.generation = self.generation;
        report.serving_generation = self.serving.as_ref().and_then(|(_, g)| *g);
        report.state = self.state();
        report.errors = self.errors.clone();
        report.missing_secrets = if self.errors.is_empty() {
            Vec::new()
        } else {
            self.reads.iter().filter(|r| r.missed()).cloned().collect()
        };
        report
    }
}

/// A document kind the catalog compiles on its own.
trait Compile: Sized {
    type Output;
    /// True when `other` has the same spec (metadata aside).
    fn same_spec(&self, other: &Self) -> bool;
    fn compile(
        &self,
        secrets: &Secrets,
    ) -> (Result<Self::Output, Vec<FieldError>>, Vec<SecretRead>);
    fn generation(&self) -> Option<i64>;
}

impl Compile for ApiPolicy {
    type Output = PolicyBuild;

    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }

    fn compile(
        &self,
        secrets: &Secrets,
    ) -> (Result<PolicyBuild, Vec<FieldError>>, Vec<SecretRead>) {
        let namespace = self.metadata.namespace.as_deref().unwrap_or("default");
        let ctx = CompileContext::new(namespace, secrets);
        let result = super::compile::compile_policy(self, &ctx).map(|policy| PolicyBuild {
            policy: Arc::new(policy),
            hosts: self.spec.hosts.clone(),
        });
        (result, ctx.into_reads())
    }

    fn generation(&self) -> Option<i64> {
        self.metadata.generation
    }
}

impl Compile for AppRegistration {
    type Output = CompiledApp;

    fn same_spec(&self, other: &Self) -> bool {
        self.spec == other.spec
    }

    fn compile(
        &self,
        secrets: &Secrets,
    ) -> (Result<CompiledApp, Vec<FieldError>>, Vec<SecretRead>) {
        let namespace = self.metadata.namespace.as_deref().unwrap_or("default");
        let ctx = CompileContext::new(namespace, secrets);
        let result = CompiledApp::compile(self, &ctx);
        (result, ctx.into_reads())
    }

    fn generation(&self) -> Option<i64> {
        self.metadata.generation
    }
}

/// An object's (namespace, name).
type Key = (String, String);

/// Objects by (namespace, name).
type Slots<S, C> = BTreeMap<Key, Slot<S, C>>;

/// Every object of a source; see the module docs.
#[derive(Debug, Default)]
pub struct Catalog {
    policies: Slots<ApiPolicy, PolicyBuild>,
    apps: Slots<AppRegistration, CompiledApp>,
    secrets: Secrets,
    secret_origins: BTreeMap<(String, String), Origin>,
    /// Which objects' latest compile read each Secret.
    readers: Readers,
    /// Whether reports list each app's plan per policy.
    app_plans: bool,
}

impl Catalog {
    /// An empty catalog; `missing_secret_hint` is appended to "Secret not
    /// found" messages (how Secrets reach tollgate from this source).
    pub fn new(missing_secret_hint: Option<String>) -> Self {
        Self {
            secrets: Secrets {
                map: BTreeMap::new(),
                missing_hint: missing_secret_hint,
            },
            ..Self::default()
        }
    }

    /// Reports list each app's effective plan per accepting policy
    /// ([`ObjectReport::plans`]; off by default): status needs them, a
    /// server does not, and they grow with apps × policies.
    pub fn with_app_plans(mut self, on: bool) -> Self {
        self.app_plans = on;
        self
    }

    /// Adds or replaces one object and compiles what it affects: the
    /// object itself (when its spec changed), or, for a Secret whose
    /// values changed, every object that read it.
    pub fn upsert(&mut self, loaded: LoadedDocument, age: Age) {
        let describe = loaded.describe();
        let key = (
            loaded.document.namespace().to_owned(),
            loaded.document.name().to_owned(),
        );
        let secrets = &self.secrets;
        match loaded.document {
            Document::ApiPolicy(policy) => {
                let slots = &mut self.policies;
                self.readers
                    .track(Kind::ApiPolicy, slots, &key.clone(), |slots| {
                        upsert_slot(slots, key, *policy, describe, loaded.origin, age, secrets);
                    });
            }
            Document::AppRegistration(app) => {
                let slots = &mut self.apps;
                self.readers
                    .track(Kind::AppRegistration, slots, &key.clone(), |slots| {
                        upsert_slot(slots, key, *app, describe, loaded.origin, age, secrets);
                    });
            }
            Document::Secret(secret) => {
                let values: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                self.secret_origins.insert(key.clone(), loaded.origin);
                if self.secrets.map.get(&key) != Some(&values) {
                    self.secrets.map.insert(key.clone(), values);
                    self.recompile_readers(&key);
                }
            }
        }
    }

    /// Records that the latest version of `object` could not be read (a
    /// file document that does not parse): its previous version keeps
    /// serving and `errors` are reported. Ignored for Secrets, whose
    /// previous values simply stay.
    pub fn reject(
        &mut self,
        object: &ObjectRef,
        describe: String,
        origin: Origin,
        errors: Vec<FieldError>,
    ) {
        let key = (object.namespace.clone(), object.name.clone());
        match object.kind {
            Kind::ApiPolicy => {
                let slots = &mut self.policies;
                self.readers
                    .track(Kind::ApiPolicy, slots, &key.clone(), |slots| {
                        reject_slot(slots, key, describe, origin, errors);
                    });
            }
            Kind::AppRegistration => {
                let slots = &mut self.apps;
                self.readers
                    .track(Kind::AppRegistration, slots, &key.clone(), |slots| {
                        reject_slot(slots, key, describe, origin, errors);
                    });
            }
            Kind::Secret => {}
        }
    }

    /// Removes an object; a removed Secret recompiles its readers (which
    /// then report it missing and keep their previous version serving).
    pub fn remove(&mut self, object: &ObjectRef) {
        let key = (object.namespace.clone(), object.name.clone());
        match object.kind {
            Kind::ApiPolicy => {
                let slots = &mut self.policies;
                self.readers.track(Kind::ApiPolicy, slots, &key, |slots| {
                    slots.remove(&key);
                });
            }
            Kind::AppRegistration => {
                let slots = &mut self.apps;
                self.readers
                    .track(Kind::AppRegistration, slots, &key, |slots| {
                        slots.remove(&key);
                    });
            }
            Kind::Secret => {
                self.secret_origins.remove(&key);
                if self.secrets.map.remove(&key).is_some() {
                    self.recompile_readers(&key);
                }
            }
        }
    }

    /// Every object held, with where it came from.
    pub fn objects(&self) -> Vec<(ObjectRef, &Origin)> {
        let mut out = Vec::new();
        for ((namespace, name), slot) in &self.policies {
            out.push((
                ObjectRef::new(Kind::ApiPolicy, namespace, name),
                &slot.origin,
            ));
        }
        for ((namespace, name), slot) in &self.apps {
            out.push((
                ObjectRef::new(Kind::AppRegistration, namespace, name),
                &slot.origin,
            ));
        }
        for ((namespace, name), origin) in &self.secret_origins {
            out.push((ObjectRef::new(Kind::Secret, namespace, name), origin));
        }
        out
    }

    /// Recompiles every object whose latest compile read `secret` (in
    /// [`ObjectRef`] order), found through the reader index: a Secret
    /// change costs its readers, not a scan of every object.
    fn recompile_readers(&mut self, secret: &(String, String)) {
        let secrets = &self.secrets;
        for (kind, key) in self.readers.of(secret) {
            match kind {
                Kind::ApiPolicy => {
                    let slots = &mut self.policies;
                    self.readers.track(kind, slots, &key, |slots| {
                        recompile(slots, &key, secrets);
                    });
                }
                Kind::AppRegistration => {
                    let slots = &mut self.apps;
                    self.readers.track(kind, slots, &key, |slots| {
                        recompile(slots, &key, secrets);
                    });
                }
                Kind::Secret => {}
            }
        }
    }

    /// The snapshot of everything serving, numbered `version`, and the
    /// report of every object.
    pub fn assemble(&self, version: u64) -> (Snapshot, Report) {
        let mut reports: BTreeMap<ObjectRef, ObjectReport> = BTreeMap::new();
        for (key, slot) in &self.policies {
            let object = ObjectRef::new(Kind::ApiPolicy, &key.0, &key.1);
            reports.insert(object.clone(), slot.report(object));
        }
        for (key, slot) in &self.apps {
            let object = ObjectRef::new(Kind::AppRegistration, &key.0, &key.1);
            reports.insert(object.clone(), slot.report(object));
        }
        let mut warnings = Vec::new();
        let (hosts, policies) = self.claim_hosts(&mut reports, &mut warnings);
        let apps = self.index_apps(&mut reports, &mut warnings);
        self.relate_apps_and_policies(&apps, &policies, &mut reports, &mut warnings);
        // What a default allow (no policy) strips: every name a policy sets.
        let mut upstream_header_names: Vec<String> = policies
            .values()
            .flat_map(|p| {
                p.response
                    .upstream_headers
                    .iter()
                    .map(|(name, _)| name.clone())
            })
            .collect();
        upstream_header_names.sort();
        upstream_header_names.dedup();
        let snapshot = Snapshot {
            upstream_header_names,
            policies,
            hosts,
            apps,
            version,
            warnings,
            source_digest: None,
        };
        let report = Report {
            objects: reports.into_values().collect(),
        };
        (snapshot, report)
    }

    /// Served policies, oldest first, claim their hosts; a host an older
    /// policy holds is a conflict of the newer one (it keeps its other
    /// hosts).
    fn claim_hosts(
        &self,
        reports: &mut BTreeMap<ObjectRef, ObjectReport>,
        warnings: &mut Vec<String>,
    ) -> (HostIndex, HashMap<PolicyId, Arc<CompiledPolicy>>) {
        let mut serving: Vec<_> = self
            .policies
            .iter()
            .filter_map(|(key, slot)| Some((slot.age, key, slot.serving.as_ref()?)))
            .collect();
        serving.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut hosts = HostIndex::default();
        let mut policies = HashMap::new();
        for (_, (namespace, name), (build, _)) in serving {
            let object = ObjectRef::new(Kind::ApiPolicy, namespace, name);
            let Some(report) = reports.get_mut(&object) else {
                continue;
            };
            for (i, host) in build.hosts.iter().enumerate() {
                match hosts.claim(host, &build.policy.id) {
                    Ok(()) => report.hosts.push(host.to_ascii_lowercase()),
                    Err(conflict) => {
                        let error = FieldError::new(
                            format!("spec.hosts[{i}]"),
                            format!(
                                "host {:?} is already served by the older ApiPolicy {}; this \
                                 policy is not served for it",
                                conflict.host, conflict.kept
                            ),
                        );
                        warnings.push(format!("{}: {error}", report.describe));
                        let (ns, name) = conflict.kept.as_str().split_once('/').unwrap_or_default();
                        report.conflicts.push(Conflict {
                            error,
                            holder: ObjectRef::new(Kind::ApiPolicy, ns, name),
                        });
                    }
                }
            }
            report.hosts.sort();
            policies.insert(build.policy.id.clone(), build.policy.clone());
        }
        (hosts, policies)
    }

    /// Served registrations, oldest first, claim their ids and
    /// credentials; one claiming what an older one holds is left out.
    fn index_apps(
        &self,
        reports: &mut BTreeMap<ObjectRef, ObjectReport>,
        warnings: &mut Vec<String>,
    ) -> AppIndex {
        let mut serving: Vec<_> = self
            .apps
            .iter()
            .filter_map(|(key, slot)| Some((slot.age, key, slot.serving.as_ref()?)))
            .collect();
        serving.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let (apps, conflicts) = AppIndex::build(serving.iter().map(|(_, _, (app, _))| &**app));
        for conflict in conflicts {
            let (namespace, name) = &conflict.refused;
            let object = ObjectRef::new(Kind::AppRegistration, namespace, name);
            if let Some(report) = reports.get_mut(&object) {
                // Left out of the index whole: nothing of it is served.
                report.state = ObjectState::NotServing;
                warnings.push(format!("{}: {}", report.describe, conflict.error));
                let (namespace, name) = &conflict.holder;
                report.conflicts.push(Conflict {
                    error: conflict.error,
                    holder: ObjectRef::new(Kind::AppRegistration, namespace, name),
                });
            }
        }
        apps
    }

    /// The facts and warnings that relate served registrations to served
    /// policies: how many apps each policy accepts, each app's plan per
    /// policy, and the policies or plans an app names that do not exist.
    fn relate_apps_and_policies(
        &self,
        apps: &AppIndex,
        policies: &HashMap<PolicyId, Arc<CompiledPolicy>>,
        reports: &mut BTreeMap<ObjectRef, ObjectReport>,
        warnings: &mut Vec<String>,
    ) {
        let mut by_namespace: BTreeMap<&str, Vec<&PolicyId>> = BTreeMap::new();
        for id in policies.keys() {
            let namespace = id.as_str().split_once('/').map_or("", |(ns, _)| ns);
            by_namespace.entry(namespace).or_default().push(id);
        }
        let mut accepted: HashMap<&PolicyId, usize> = HashMap::new();
        let mut app_warnings = Vec::new();
        for app in apps.iter() {
            let object = ObjectRef::new(Kind::AppRegistration, &app.namespace, &app.name);
            let Some(report) = reports.get_mut(&object) else {
                continue;
            };
            let mut found = BTreeSet::new();
            for (i, name) in app.policies.iter().enumerate() {
                let id = PolicyId::new(&app.namespace, name);
                if policies.contains_key(&id) {
                    found.insert(id);
                } else {
                    report.warnings.push(FieldError::new(
                        format!("spec.policies[{i}]"),
                        format!("no ApiPolicy {id}"),
                    ));
                }
            }
            let candidates = by_namespace.get(app.namespace.as_str());
            let accepting = candidates
                .into_iter()
                .flatten()
                .filter(|id| app.policies.is_empty() || found.contains(**id));
            for id in accepting {
                *accepted.entry(*id).or_default() += 1;
                let plans = &policies[*id].plans;
                if let Some(plan) = &app.plan
                    && plans.iter().next().is_some()
                    && !plans.contains(plan)
                {
                    report.warnings.push(FieldError::new(
                        "spec.plan",
                        format!("plan {plan:?} is not defined by ApiPolicy {id}"),
                    ));
                }
                if self.app_plans {
                    let effective = plans.resolve(app.plan.as_deref()).map(|p| p.name.clone());
                    report.plans.push(((*id).clone(), effective));
                }
            }
            report.plans.sort();
            report
                .warnings
                .sort_by(|a, b| (&a.field, &a.message).cmp(&(&b.field, &b.message)));
            app_warnings.extend(
                report
                    .warnings
                    .iter()
                    .map(|w| format!("{}: {w}", report.describe)),
            );
        }
        for (id, count) in accepted {
            let (ns, name) = id.as_str().split_once('/').unwrap_or_default();
            if let Some(report) = reports.get_mut(&ObjectRef::new(Kind::ApiPolicy, ns, name)) {
                report.accepted_apps = count;
            }
        }
        app_warnings.sort();
        warnings.extend(app_warnings);
    }
}

fn upsert_slot<S: Compile>(
    slots: &mut Slots<S, S::Output>,
    key: (String, String),
    spec: S,
    describe: String,
    origin: Origin,
    age: Age,
    secrets: &Secrets,
) {
    let slot = slots
        .entry(key)
        .or_insert_with(|| Slot::empty(describe.clone(), origin.clone(), age));
    slot.describe = describe;
    slot.origin = origin;
    slot.age = age;
    slot.generation = spec.generation();
    if slot
        .latest
        .as_deref()
        .is_some_and(|latest| latest.same_spec(&spec))
    {
        // Unchanged (a re-list, a resync): the same spec and the same
        // Secrets compile the same; keep the compiled version and its
        // caches.
        return;
    }
    slot.latest = Some(Arc::new(spec));
    compile_slot(slot, secrets);
}

/// Compiles the slot's latest version; on success it becomes the serving
/// version, on failure the previous one stays.
fn compile_slot<S: Compile>(slot: &mut Slot<S, S::Output>, secrets: &Secrets) {
    let Some(latest) = slot.latest.clone() else {
        return;
    };
    let (result, reads) = latest.compile(secrets);
    slot.reads = reads;
    match result {
        Ok(compiled) => {
            slot.errors.clear();
            slot.serving = Some((Arc::new(compiled), latest.generation()));
        }
        Err(errors) => slot.errors = errors,
    }
}

fn recompile<S: Compile>(
    slots: &mut Slots<S, S::Output>,
    key: &(String, String),
    secrets: &Secrets,
) {
    if let Some(slot) = slots.get_mut(key) {
        compile_slot(slot, secrets);
    }
}

/// The objects that read each Secret: kept beside the slots so that a
/// Secret change finds its readers without looking at every object (with
/// thousands of apps and a Secret each, a start-up that scanned them all
/// per Secret was quadratic).
#[derive(Debug, Default)]
struct Readers {
    by_secret: HashMap<Key, BTreeSet<(Kind, Key)>>,
}

impl Readers {
    /// The readers of `secret`, in [`ObjectRef`] order.
    fn of(&self, secret: &Key) -> Vec<(Kind, Key)> {
        self.by_secret
            .get(secret)
            .map(|readers| readers.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Runs `change` on `slots`, then records which Secrets the object
    /// `kind` `key` reads now instead of before.
    fn track<S, C>(
        &mut self,
        kind: Kind,
        slots: &mut Slots<S, C>,
        key: &(String, String),
        change: impl FnOnce(&mut Slots<S, C>),
    ) {
        let before = slots.get(key).map(Slot::secrets_read).unwrap_or_default();
        change(slots);
        let after = slots.get(key).map(Slot::secrets_read).unwrap_or_default();
        if before == after {
            return;
        }
        for secret in before.difference(&after) {
            if let Some(readers) = self.by_secret.get_mut(secret) {
                readers.remove(&(kind, key.clone()));
                if readers.is_empty() {
                    self.by_secret.remove(secret);
                }
            }
        }
        for secret in after.difference(&before) {
            self.by_secret
                .entry(secret.clone())
                .or_default()
                .insert((kind, key.clone()));
        }
    }
}

fn reject_slot<S: Compile>(
    slots: &mut Slots<S, S::Output>,
    key: (String, String),
    describe: String,
    origin: Origin,
    errors: Vec<FieldError>,
) {
    let slot = slots
        .entry(key)
        .or_insert_with(|| Slot::empty(describe.clone(), origin.clone(), Age::default()));
    slot.describe = describe;
    slot.origin = origin;
    slot.latest = None;
    slot.reads.clear();
    slot.errors = errors;
}

#[cfg(test)]
mod tests;
