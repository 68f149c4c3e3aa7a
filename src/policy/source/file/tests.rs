//! Watcher tests with real files and short real intervals. Every wait is
//! bounded; nothing asserts how long a reload took.

use std::path::Path;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::policy::snapshot::PolicyId;

const INTERVAL: Duration = Duration::from_millis(20);
/// Upper bound for any single wait (generous for a loaded CI machine).
const WAIT: Duration = Duration::from_secs(20);

fn policy(host: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{ name: bikes, namespace: mobility }}\nspec:\n  hosts: [{host}]\n"
    )
}

fn serves(shared: &SharedSnapshot, host: &str) -> bool {
    shared.load().hosts.lookup(host) == Some(&PolicyId::new("mobility", "bikes"))
}

/// Writes through a temporary file and a rename, as editors and
/// `kubectl cp` do, so the watcher never reads half a file.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Watcher {
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Loads `paths` (strictly) as the server does at start-up.
fn load(paths: &[PathBuf]) -> (SharedSnapshot, FileSource) {
    let (snapshot, source) = load_initial(paths).unwrap();
    (Arc::new(ArcSwap::from_pointee(snapshot)), source)
}

fn start(source: FileSource, shared: SharedSnapshot) -> Watcher {
    let (tx, outcomes) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(watch(
        source,
        shared,
        INTERVAL,
        async {
            let _ = stopped.await;
        },
        move |o| {
            let _ = tx.send(o.clone());
        },
    ));
    Watcher {
        outcomes,
        stop,
        task,
    }
}

impl Watcher {
    async fn next(&mut self) -> Outcome {
        tokio::time::timeout(WAIT, self.outcomes.recv())
            .await
            .expect("the watcher reported nothing in time")
            .expect("the watcher stopped")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the watcher did not stop")
            .unwrap();
    }
}

#[test]
fn load_initial_reports_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bikes.yaml");
    std::fs::write(
        &path,
        policy("api.bikes.example").replace("hosts:", "hostz:"),
    )
    .unwrap();
    let error = load_initial(std::slice::from_ref(&path))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "{}: document 1 (ApiPolicy mobility/bikes): spec.hostz: unknown field",
            path.display()
        )),
        "{error}"
    );
    std::fs::write(&path, policy("API.bikes.example")).unwrap();
    let error = load_initial(std::slice::from_ref(&path))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("document 1 (ApiPolicy mobility/bikes): spec.hosts[0]"),
        "{error}"
    );
    std::fs::write(&path, policy("api.bikes.example")).unwrap();
    assert_eq!(load_initial(&[path]).unwrap().0.version, 1);
}

#[tokio::test]
async fn valid_changes_swap_and_invalid_ones_keep_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bikes.yaml");
    write(&path, &policy("a.example"));
    let (shared, source) = load(std::slice::from_ref(&path));
    // The files are unchanged since load_initial: nothing is recompiled
    // (the next change below becomes version 2, not 3).
    let mut watcher = start(source, Arc::clone(&shared));

    write(&path, &policy("b.example").replace("hosts:", "hostz:"));
    let outcome = watcher.next().await;
    assert_eq!(outcome.version, 2);
    assert!(
        outcome
            .problems
            .iter()
            .any(|p| p.contains("spec.hostz: unknown field")),
        "{outcome:?}"
    );
    assert!(
        serves(&shared, "a.example"),
        "the object's last good version keeps serving"
    );

    write(&path, &policy("b.example"));
    assert_eq!(
        watcher.next().await,
        Outcome {
            version: 3,
            problems: vec![]
        }
    );
    assert!(serves(&shared, "b.example"));
    assert!(!serves(&shared, "a.example"));

    // A deleted file is an error reported once; nothing of it is removed.
    std::fs::remove_file(&path).unwrap();
    let outcome = watcher.next().await;
    assert!(outcome.problems[0].contains("cannot open"), "{outcome:?}");
    assert!(serves(&shared, "b.example"));
    write(&path, &policy("c.example"));
    assert_eq!(watcher.next().await.problems, Vec::<String>::new());
    assert!(serves(&shared, "c.example"));
    watcher.stop().await;
}

/// One broken document keeps only its own object at its last good
/// version: in the same reload, a fix to another app (disabling a
/// compromised one) and a new policy still go live.
#[tokio::test]
async fn a_broken_document_does_not_block_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.yaml");
    let app = |disabled: bool| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\nmetadata: {{ name: ios, namespace: mobility }}\nspec: {{ appId: ios, disabled: {disabled} }}\n"
        )
    };
    let other = |host: &str| policy(host).replace("name: bikes", "name: trains");
    write(
        &path,
        &format!(
            "{}---\n{}---\n{}",
            policy("a.example"),
            app(false),
            other("t.example")
        ),
    );
    let (shared, source) = load(std::slice::from_ref(&path));
    let mut watcher = start(source, Arc::clone(&shared));

    // bikes breaks, the app is disabled, trains moves to a new host.
    write(
        &path,
        &format!(
            "{}---\n{}---\n{}",
            policy("b.example").replace("hosts:", "hostz:"),
            app(true),
            other("u.example")
        ),
    );
    let outcome = watcher.next().await;
    assert_eq!(
        outcome.problems.len(),
        2,
        "the read error, then the object's: {outcome:?}"
    );
    let snapshot = shared.load();
    assert!(
        serves(&shared, "a.example"),
        "bikes keeps its last good version"
    );
    assert_eq!(
        snapshot.hosts.lookup("u.example"),
        Some(&PolicyId::new("mobility", "trains"))
    );
    assert!(
        snapshot
            .apps
            .iter()
            .any(|a| a.app_id == "ios" && a.disabled)
    );

    // An unparsable file deletes nothing.
    write(&path, "{ not: [yaml");
    let outcome = watcher.next().await;
    assert!(outcome.problems[0].contains("invalid YAML"), "{outcome:?}");
    assert!(serves(&shared, "a.example"));
    assert_eq!(shared.load().apps.len(), 1);

    // Removing a document stops serving its object.
    write(&path, &app(true));
    watcher.next().await;
    assert!(!serves(&shared, "a.example"));
    assert!(shared.load().hosts.lookup("u.example").is_none());
    watcher.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swaps_are_seen() {
    use std::os::unix::fs::symlink;
    // The kubelet's layout: file → ..data/file, ..data → a timestamped dir,
    // updated by renaming a new ..data link over the old one. The file's
    // own path and size stay the same here; only the content differs.
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..2024_01_01");
    let v2 = dir.path().join("..2024_01_02");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v1.join("policy.yaml"), policy("one.example")).unwrap();
    std::fs::write(v2.join("policy.yaml"), policy("two.example")).unwrap();
    symlink("..2024_01_01", dir.path().join("..data")).unwrap();
    let path = dir.path().join("policy.yaml");
    symlink("..data/policy.yaml", &path).unwrap();

    let (shared, source) = load(std::slice::from_ref(&path));
    assert!(serves(&shared, "one.example"));
    let mut watcher = start(source, Arc::clone(&shared));

    symlink("..2024_01_02", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    assert_eq!(watcher.next().await.version, 2);
    assert!(serves(&shared, "two.example"));
    watcher.stop().await;
}

#[tokio::test]
async fn a_change_between_start_up_and_the_watcher_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bikes.yaml");
    write(&path, &policy("a.example"));
    let (shared, source) = load(std::slice::from_ref(&path));
    write(&path, &policy("b.example"));
    let mut watcher = start(source, Arc::clone(&shared));
    assert_eq!(watcher.next().await.version, 2);
    assert!(serves(&shared, "b.example"));
    watcher.stop().await;
}

#[tokio::test]
async fn several_files_are_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    write(&a, &policy("a.example"));
    write(
        &b,
        &policy("b.example").replace("name: bikes", "name: trikes"),
    );
    let (shared, source) = load(&[a.clone(), b.clone()]);
    assert_eq!(shared.load().policies.len(), 2);
    let mut watcher = start(source, Arc::clone(&shared));
    // trikes renamed to a name a.yaml already defines: the duplicate is
    // ignored and reported, and nothing of b.yaml is removed for it.
    write(&b, &policy("b.example"));
    let outcome = watcher.next().await;
    assert!(
        outcome.problems[0].contains("duplicate ApiPolicy"),
        "{outcome:?}"
    );
    assert_eq!(shared.load().policies.len(), 2);
    assert!(serves(&shared, "a.example"));
    watcher.stop().await;
}

#[tokio::test]
async fn watch_files_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bikes.yaml");
    write(&path, &policy("a.example"));
    let (shared, source) = load(std::slice::from_ref(&path));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(watch_files(source, shared, INTERVAL, async {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("did not stop")
        .unwrap();
}
