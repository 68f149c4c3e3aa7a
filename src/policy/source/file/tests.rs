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

fn start(paths: Vec<PathBuf>, shared: SharedSnapshot) -> Watcher {
    let (tx, outcomes) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(watch(
        paths,
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
    assert_eq!(load_initial(&[path]).unwrap().version, 1);
}

#[tokio::test]
async fn valid_changes_swap_and_invalid_ones_keep_the_last_good_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bikes.yaml");
    write(&path, &policy("a.example"));
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(
        load_initial(std::slice::from_ref(&path)).unwrap(),
    ));
    // The files are unchanged since load_initial: nothing is recompiled
    // (the next change below becomes version 2, not 3).
    let mut watcher = start(vec![path.clone()], Arc::clone(&shared));

    write(&path, &policy("b.example").replace("hosts:", "hostz:"));
    let Outcome::Rejected { error } = watcher.next().await else {
        panic!("an invalid file must be rejected")
    };
    assert!(error.contains("spec.hostz: unknown field"), "{error}");
    assert!(
        serves(&shared, "a.example"),
        "the last good snapshot keeps serving"
    );
    assert_eq!(shared.load().version, 1);

    write(&path, &policy("b.example"));
    assert_eq!(watcher.next().await, Outcome::Applied { version: 2 });
    assert!(serves(&shared, "b.example"));
    assert!(!serves(&shared, "a.example"));

    // A deleted file is an error reported once; the snapshot stays.
    std::fs::remove_file(&path).unwrap();
    let Outcome::Rejected { error } = watcher.next().await else {
        panic!("a missing file must be rejected")
    };
    assert!(error.contains("cannot open"), "{error}");
    assert!(serves(&shared, "b.example"));
    write(&path, &policy("c.example"));
    assert_eq!(watcher.next().await, Outcome::Applied { version: 3 });
    assert!(serves(&shared, "c.example"));
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

    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(
        load_initial(std::slice::from_ref(&path)).unwrap(),
    ));
    assert!(serves(&shared, "one.example"));
    let mut watcher = start(vec![path], Arc::clone(&shared));

    symlink("..2024_01_02", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    assert_eq!(watcher.next().await, Outcome::Applied { version: 2 });
    assert!(serves(&shared, "two.example"));
    watcher.stop().await;
}

#[tokio::test]
async fn a_change_between_start_up_and_the_watcher_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bikes.yaml");
    write(&path, &policy("a.example"));
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(
        load_initial(std::slice::from_ref(&path)).unwrap(),
    ));
    write(&path, &policy("b.example"));
    let mut watcher = start(vec![path], Arc::clone(&shared));
    assert_eq!(watcher.next().await, Outcome::Applied { version: 2 });
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
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(
        load_initial(&[a.clone(), b.clone()]).unwrap(),
    ));
    assert_eq!(shared.load().policies.len(), 2);
    let mut watcher = start(vec![a.clone(), b.clone()], Arc::clone(&shared));
    // A duplicate across files rejects the candidate as a whole.
    write(&b, &policy("b.example"));
    let Outcome::Rejected { error } = watcher.next().await else {
        panic!("a duplicate must be rejected")
    };
    assert!(error.contains("duplicate ApiPolicy"), "{error}");
    assert_eq!(shared.load().policies.len(), 2);
    watcher.stop().await;
}

#[tokio::test]
async fn watch_files_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bikes.yaml");
    write(&path, &policy("a.example"));
    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(
        load_initial(std::slice::from_ref(&path)).unwrap(),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(watch_files(vec![path], shared, INTERVAL, async {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("did not stop")
        .unwrap();
}
