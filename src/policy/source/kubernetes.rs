//! The Kubernetes policy source (`tollgate serve --kubernetes`): watches
//! `ApiPolicy` and `AppRegistration` (in all namespaces, or in each
//! `--namespace`) and the Secrets carrying the secret label, and keeps the
//! served snapshot in step with them.
//!
//! - **Same reader, same compile.** Custom resources are watched as
//!   untyped JSON and read by the policy-file reader
//!   ([`document::read_object`]), so an object the API server accepted but
//!   tollgate cannot read is an error of *that* object naming its field —
//!   never a failed list that would stall every policy. Then the
//!   [`Catalog`] compiles each object on its own and keeps it at its last
//!   good version; a deleted object stops serving.
//! - **Only labelled Secrets.** The Secret watch carries a label selector
//!   (default `tollgate.dev/secret=true`): tollgate never reads the other
//!   Secrets of a namespace. A reference to a Secret without the label is
//!   reported as not found, and the message says the label is needed.
//! - **Readiness after the first full sync.** Nothing is served (and
//!   `/readyz` says what it waits for) until every watch has listed its
//!   objects once and the result is compiled.
//! - **Outages.** While the API server is unreachable the last snapshot
//!   keeps serving; each watch retries with exponential backoff (0.5 s to
//!   10 s) and, when it reconnects, re-lists: objects deleted meanwhile
//!   stop serving then. A new snapshot is published only between re-lists,
//!   never half way through one.
//! - **Coalescing.** Events that arrive together are applied as one batch
//!   and published as one snapshot.
//!
//! Metrics besides those of [`super::report`]:
//! `tollgate_kubernetes_watch_errors_total{kind}` (each error restarts
//! the watch after its backoff).

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt as _};
use futures_util::{FutureExt as _, Stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt as _};
use serde_json::Value;

use super::report::Reporter;
use crate::compile_context::FieldError;
use crate::policy::catalog::{Age, Catalog, Kind, ObjectRef, Report};
use crate::policy::document::{self, Document, LoadedDocument, Origin};
use crate::policy::snapshot::{SharedSnapshot, Snapshot};
use crate::policy::types::{ApiPolicy, AppRegistration};
use crate::server::Readiness;

/// The default label selector of the Secrets tollgate reads.
pub const DEFAULT_SECRET_LABEL: &str = "tollgate.dev/secret=true";

/// Longest wait between reconnection attempts of a watch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// First wait after a watch error.
const MIN_BACKOFF: Duration = Duration::from_millis(500);

/// What to watch.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Label selector of the Secrets to read (`key=value` or `key`).
    pub secret_label: String,
    /// Work out each app's plan per policy for the report (the operator
    /// writes them into status; a server has no use for them, and with
    /// many apps and policies they are most of the report).
    pub app_plans: bool,
}

/// One watch: a kind in one namespace, or in all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Scope {
    kind: Kind,
    namespace: Option<String>,
}

impl Scope {
    fn contains(&self, object: &ObjectRef) -> bool {
        object.kind == self.kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == object.namespace)
    }

    fn describe(&self) -> String {
        let kind = match self.kind {
            Kind::ApiPolicy => "ApiPolicies",
            Kind::AppRegistration => "AppRegistrations",
            Kind::Secret => "Secrets",
        };
        match &self.namespace {
            Some(ns) => format!("{kind} in namespace {ns}"),
            None => format!("{kind} in all namespaces"),
        }
    }
}

/// An event of one of the watches, tagged with the watch.
enum Change {
    Object(Event<Read>),
    Failed(String),
}

/// An object as read from the API server.
struct Read {
    object: ObjectRef,
    outcome: LoadedOrRejected,
    /// Custom resources: what the operator needs to know of them.
    observed: Option<Observed>,
}

enum LoadedOrRejected {
    Loaded(Box<LoadedDocument>),
    /// The API server holds it but tollgate cannot read it.
    Rejected(FieldError),
}

/// A custom resource as the API server holds it: identity, generation
/// and the status it carries (the operator compares its own verdict with
/// it and writes only what changed).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub uid: String,
    pub generation: Option<i64>,
    pub status: Option<Value>,
}

/// What became known of the custom resources in one batch: an object
/// as observed, or `None` for one that is gone.
pub type Observations = Vec<(ObjectRef, Option<Observed>)>;

/// A client from `kubeconfig`, else the usual places (`KUBECONFIG`,
/// `~/.kube/config`, the in-cluster ServiceAccount).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("cannot use the kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!(
                "no Kubernetes configuration found (in-cluster, KUBECONFIG or ~/.kube/config): {e}"
            )
        })?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

/// Watches until `shutdown` completes, swapping `shared` as objects
/// change; `readiness` turns ready after the first full sync.
pub async fn run(
    client: Client,
    settings: Settings,
    shared: SharedSnapshot,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) {
    let mut watch = ClusterWatch::new(&client, &settings);
    readiness.set_waiting(watch.waiting_for());
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => break,
            batch = watch.next() => batch,
        };
        let Some((published, _)) = batch else { break };
        match published {
            Published::Snapshot { snapshot, .. } => {
                let first = shared.load().version == 0;
                shared.store(Arc::new(*snapshot));
                if first {
                    readiness.set_snapshot_loaded();
                }
            }
            Published::Waiting(waiting) => readiness.set_waiting(waiting),
            Published::Nothing => {}
        }
    }
    tracing::debug!("Kubernetes policy watcher stopped");
}

/// The watches of the Kubernetes source and the catalog they feed; the
/// server and the operator drive it with [`ClusterWatch::next`].
pub struct ClusterWatch {
    state: Arc<Mutex<State>>,
    changes: stream::SelectAll<BoxStream<'static, (usize, Change)>>,
}

impl ClusterWatch {
    /// Starts every watch `settings` asks for.
    pub fn new(client: &Client, settings: &Settings) -> Self {
        let hint = format!(
            "tollgate reads only Secrets labelled {}: is the label missing?",
            settings.secret_label
        );
        let (scopes, streams) = watches(client, settings);
        let state = State {
            catalog: Catalog::new(Some(hint)).with_app_plans(settings.app_plans),
            reporter: Reporter::default(),
            scopes,
            never_synced: (0..streams.len()).collect(),
            listing: vec![None; streams.len()],
            errors_before_sync: Vec::new(),
            observations: Vec::new(),
            dirty: false,
            version: 0,
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            changes: stream::select_all(streams),
        }
    }

    /// What the first sync still waits for.
    pub fn waiting_for(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting_for()
    }

    /// Waits for the next events, applies them with everything already
    /// waiting (a flood of updates is applied and published once), and
    /// returns what that publishes and what was observed. `None` when
    /// every watch ended (they do not, short of a bug).
    ///
    /// Not cancel-safe: a batch taken from the watches is lost if the
    /// future is dropped before it returns. Await it to completion (or
    /// drop the whole watch).
    pub async fn next(&mut self) -> Option<(Published, Observations)> {
        let first = self.changes.next().await?;
        let mut batch = vec![first];
        while batch.len() < 10_000 {
            match self.changes.next().now_or_never() {
                Some(Some(change)) => batch.push(change),
                _ => break,
            }
        }
        let applying = Arc::clone(&self.state);
        // Compiling thousands of objects takes a while: off the runtime.
        let applied = tokio::task::spawn_blocking(move || {
            let mut state = applying.lock().unwrap_or_else(|e| e.into_inner());
            for (scope, change) in batch {
                state.apply(scope, change);
            }
            let published = state.publish();
            (published, std::mem::take(&mut state.observations))
        })
        .await;
        match applied {
            Ok(applied) => Some(applied),
            Err(error) => {
                tracing::error!(%error, "policy compile task failed");
                Some((Published::Nothing, Vec::new()))
            }
        }
    }
}

/// Every watch (three kinds in each namespace, or in all), each tagged
/// with its index in the returned scopes.
fn watches(
    client: &Client,
    settings: &Settings,
) -> (Vec<Scope>, Vec<BoxStream<'static, (usize, Change)>>) {
    let namespaces: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut scopes = Vec::new();
    let mut streams = Vec::new();
    for namespace in namespaces {
        for kind in [Kind::ApiPolicy, Kind::AppRegistration, Kind::Secret] {
            let scope = Scope {
                kind,
                namespace: namespace.clone(),
            };
            let index = scopes.len();
            let changes = watch_scope(client.clone(), &scope, &settings.secret_label);
            streams.push(changes.map(move |change| (index, change)).boxed());
            scopes.push(scope);
        }
    }
    (scopes, streams)
}

/// What a batch led to.
pub enum Published {
    /// A new snapshot to serve, and the report of every object.
    Snapshot {
        snapshot: Box<Snapshot>,
        report: Report,
    },
    /// Not synced yet: what readiness waits for.
    Waiting(String),
    /// Nothing to publish (nothing changed, or a re-list is under way).
    Nothing,
}

/// The watcher's state between batches.
struct State {
    catalog: Catalog,
    reporter: Reporter,
    scopes: Vec<Scope>,
    /// Watches that have not completed a first list.
    never_synced: BTreeSet<usize>,
    /// Per watch: the objects seen since its current (re-)list began.
    listing: Vec<Option<HashSet<ObjectRef>>>,
    /// The last error of each watch that has not synced yet (readiness
    /// shows it: a missing permission is visible in `/readyz`).
    errors_before_sync: Vec<(usize, String)>,
    /// Custom resources observed since the last batch was returned.
    observations: Observations,
    /// Something changed since the last published snapshot.
    dirty: bool,
    version: u64,
}

impl State {
    fn apply(&mut self, index: usize, change: Change) {
        let scope = self.scopes[index].clone();
        let event = match change {
            Change::Failed(error) => {
                metrics::counter!("tollgate_kubernetes_watch_errors_total", "kind" => scope.kind.as_str())
                    .increment(1);
                tracing::error!(
                    watch = scope.describe(),
                    error,
                    "Kubernetes watch failed; retrying with backoff (the last snapshot keeps serving)"
                );
                if self.never_synced.contains(&index) {
                    self.errors_before_sync.retain(|(i, _)| *i != index);
                    self.errors_before_sync.push((index, error));
                }
                return;
            }
            Change::Object(event) => event,
        };
        match event {
            Event::Init => self.listing[index] = Some(HashSet::new()),
            Event::InitApply(read) => {
                if let Some(seen) = &mut self.listing[index] {
                    seen.insert(read.object.clone());
                }
                self.upsert(read);
            }
            Event::InitDone => {
                let seen = self.listing[index].take().unwrap_or_default();
                let gone: Vec<ObjectRef> = self
                    .catalog
                    .objects()
                    .into_iter()
                    .map(|(object, _)| object)
                    .filter(|object| scope.contains(object) && !seen.contains(object))
                    .collect();
                for object in gone {
                    self.catalog.remove(&object);
                    if object.kind != Kind::Secret {
                        self.observations.push((object, None));
                    }
                }
                if self.never_synced.remove(&index) {
                    tracing::info!(watch = scope.describe(), objects = seen.len(), "listed");
                    self.errors_before_sync.retain(|(i, _)| *i != index);
                }
                self.dirty = true;
            }
            Event::Apply(read) => self.upsert(read),
            Event::Delete(read) => {
                self.catalog.remove(&read.object);
                if read.observed.is_some() {
                    self.observations.push((read.object, None));
                }
                self.dirty = true;
            }
        }
    }

    fn upsert(&mut self, read: Read) {
        match read.outcome {
            LoadedOrRejected::Loaded(loaded) => {
                let age = Age::of(&loaded.document, 0);
                self.catalog.upsert(*loaded, age);
            }
            LoadedOrRejected::Rejected(error) => {
                let describe = read.object.to_string();
                self.catalog
                    .reject(&read.object, describe, Origin::Cluster, vec![error]);
            }
        }
        if let Some(observed) = read.observed {
            self.observations.push((read.object, Some(observed)));
        }
        self.dirty = true;
    }

    /// Assembles and reports a snapshot when every watch has synced, none
    /// is half way through a re-list, and something changed.
    fn publish(&mut self) -> Published {
        if !self.never_synced.is_empty() {
            return Published::Waiting(self.waiting_for());
        }
        if !self.dirty || self.listing.iter().any(Option::is_some) {
            return Published::Nothing;
        }
        self.dirty = false;
        self.version += 1;
        let (snapshot, report) = self.catalog.assemble(self.version);
        let problems = self.reporter.publish(&report, self.version);
        tracing::info!(
            version = self.version,
            policies = snapshot.policies.len(),
            apps = snapshot.apps.len(),
            problems,
            "policies updated from Kubernetes"
        );
        Published::Snapshot {
            snapshot: Box::new(snapshot),
            report,
        }
    }

    /// What the first sync waits for, with the last error of each watch.
    fn waiting_for(&self) -> String {
        let waiting: Vec<String> = self
            .never_synced
            .iter()
            .map(|&i| {
                let scope = self.scopes[i].describe();
                match self.errors_before_sync.iter().find(|(j, _)| *j == i) {
                    Some((_, error)) => format!("{scope} (last error: {error})"),
                    None => scope,
                }
            })
            .collect();
        format!("waiting for the first list of {}", waiting.join("; "))
    }
}

/// Watches one scope; every event is read into documents, every error
/// reported (the watch retries by itself after a backoff).
fn watch_scope(
    client: Client,
    scope: &Scope,
    secret_label: &str,
) -> impl Stream<Item = Change> + Send + 'static {
    let config = watcher::Config::default();
    match scope.kind {
        Kind::Secret => {
            let api: Api<Secret> = match &scope.namespace {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::all(client),
            };
            let config = config.labels(secret_label);
            changes(watcher::watcher(api, config), read_secret).boxed()
        }
        kind => {
            let resource = if kind == Kind::ApiPolicy {
                ApiResource::erase::<ApiPolicy>(&())
            } else {
                ApiResource::erase::<AppRegistration>(&())
            };
            let api: Api<DynamicObject> = match &scope.namespace {
                Some(ns) => Api::namespaced_with(client, ns, &resource),
                None => Api::all_with(client, &resource),
            };
            let read = move |object: DynamicObject| read_custom(kind, &resource, object);
            changes(watcher::watcher(api, config), read).boxed()
        }
    }
}

/// Maps a watch's events through `read` and its errors to messages, with
/// backoff between retries.
fn changes<K, S>(
    watch: S,
    read: impl Fn(K) -> Read + Send + 'static,
) -> impl Stream<Item = Change> + Send
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    K: Send,
{
    watch
        .backoff(WatchBackoff::default())
        .map(move |item| match item {
            Ok(event) => Change::Object(map_event(event, &read)),
            Err(error) => Change::Failed(describe_error(&error)),
        })
}

fn map_event<K, T>(event: Event<K>, read: impl Fn(K) -> T) -> Event<T> {
    match event {
        Event::Apply(object) => Event::Apply(read(object)),
        Event::Delete(object) => Event::Delete(read(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(read(object)),
        Event::InitDone => Event::InitDone,
    }
}

/// A watch error as one line; a refused permission says which.
fn describe_error(error: &watcher::Error) -> String {
    let api = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(status) => Some((status.code, status.message.clone())),
            _ => None,
        },
        watcher::Error::WatchError(status) => Some((status.code, status.message.clone())),
        watcher::Error::NoResourceVersion => None,
    };
    match api {
        Some((403, message)) => format!(
            "permission denied: {message} (tollgate serve --kubernetes needs list and watch \
             on apipolicies and appregistrations in group tollgate.dev and on secrets: \
             deploy/rbac/server.yaml, docs/kubernetes.md)"
        ),
        Some((404, message)) => format!(
            "not found: {message} (are the tollgate CRDs installed? kubectl apply -f \
             deploy/crds/tollgate.dev.yaml)"
        ),
        _ => error.to_string(),
    }
}

/// A labelled Secret as a document.
fn read_secret(secret: Secret) -> Read {
    let object = ObjectRef::new(
        Kind::Secret,
        secret.metadata.namespace.as_deref().unwrap_or("default"),
        secret.metadata.name.as_deref().unwrap_or_default(),
    );
    let document = Document::Secret(Box::new(Secret {
        metadata: kube::api::ObjectMeta {
            managed_fields: None,
            ..secret.metadata
        },
        ..secret
    }));
    Read {
        object,
        outcome: LoadedOrRejected::Loaded(Box::new(LoadedDocument {
            origin: Origin::Cluster,
            document,
        })),
        observed: None,
    }
}

/// A custom resource read by the policy-file reader.
fn read_custom(kind: Kind, resource: &ApiResource, object: DynamicObject) -> Read {
    let object_ref = ObjectRef::new(
        kind,
        object.namespace().as_deref().unwrap_or("default"),
        &object.name_any(),
    );
    let observed = Some(Observed {
        uid: object.metadata.uid.clone().unwrap_or_default(),
        generation: object.metadata.generation,
        status: object.data.get("status").cloned(),
    });
    let outcome = match serde_json::to_value(&object) {
        Ok(mut value) => {
            if let Value::Object(map) = &mut value {
                // List items come without apiVersion and kind; the watch
                // knows them.
                map.insert(
                    "apiVersion".to_owned(),
                    Value::from(resource.api_version.clone()),
                );
                map.insert("kind".to_owned(), Value::from(resource.kind.clone()));
                if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                    meta.remove("managedFields");
                }
            }
            match document::read_object(value) {
                Ok(document) => LoadedOrRejected::Loaded(Box::new(LoadedDocument {
                    origin: Origin::Cluster,
                    document,
                })),
                Err((_, field, message)) => LoadedOrRejected::Rejected(FieldError::new(
                    field.unwrap_or_else(|| "spec".to_owned()),
                    message,
                )),
            }
        }
        Err(error) => LoadedOrRejected::Rejected(FieldError::new(
            "metadata",
            format!("cannot be read: {error}"),
        )),
    };
    Read {
        object: object_ref,
        outcome,
        observed,
    }
}

/// Exponential backoff between watch retries, with jitter, reset by the
/// first event after a success.
#[derive(Debug)]
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: MIN_BACKOFF }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        // Up to a quarter more, so replicas do not retry in lockstep.
        let jitter = rand::random::<f64>() * 0.25;
        Some(current.mul_f64(1.0 + jitter))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }
}
