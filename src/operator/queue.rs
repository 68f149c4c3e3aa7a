//! Which objects need reconciling, and when a failed one may be retried.
//!
//! kube-runtime's controller has no per-object backoff yet, so the
//! operator keeps its own: an object whose status write fails waits 1 s,
//! then 2 s, 4 s … up to 5 minutes (with up to 25 % jitter) before its
//! next try, while other objects go on. Marking an object again (a new
//! event) does not cut its wait short: a flood of events for a failing
//! object is coalesced into its next try. Its failure is logged once per
//! distinct error, not once per try.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::catalog::ObjectRef;

/// First wait after a failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between tries.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A failing object's retry state.
#[derive(Debug)]
struct Retry {
    attempts: u32,
    due: Instant,
    last_error: String,
}

/// Dirty objects and their retry state.
#[derive(Debug, Default)]
pub struct Queue {
    dirty: BTreeSet<ObjectRef>,
    retries: HashMap<ObjectRef, Retry>,
}

impl Queue {
    /// `object` needs a reconcile (again).
    pub fn mark(&mut self, object: ObjectRef) {
        self.dirty.insert(object);
    }

    /// Forgets an object (deleted).
    pub fn forget(&mut self, object: &ObjectRef) {
        self.dirty.remove(object);
        self.retries.remove(object);
    }

    /// Takes the dirty objects whose retry (if any) is due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<ObjectRef> {
        let due: Vec<ObjectRef> = self
            .dirty
            .iter()
            .filter(|o| self.retries.get(*o).is_none_or(|r| r.due <= now))
            .cloned()
            .collect();
        for object in &due {
            self.dirty.remove(object);
        }
        due
    }

    /// The reconcile of `object` succeeded.
    pub fn succeeded(&mut self, object: &ObjectRef) {
        if let Some(retry) = self.retries.remove(object) {
            tracing::info!(%object, attempts = retry.attempts, "status written after earlier failures");
        }
    }

    /// The reconcile of `object` failed with `error`: it is marked again
    /// and waits. Returns the wait.
    pub fn failed(&mut self, object: ObjectRef, error: String, now: Instant) -> Duration {
        let retry = self.retries.entry(object.clone()).or_insert(Retry {
            attempts: 0,
            due: now,
            last_error: String::new(),
        });
        retry.attempts += 1;
        let exponent = retry.attempts.saturating_sub(1).min(16);
        let base = FIRST_RETRY.saturating_mul(1 << exponent).min(MAX_RETRY);
        let wait = base.mul_f64(1.0 + rand::random::<f64>() * 0.25);
        retry.due = now + wait;
        if retry.last_error != error {
            tracing::warn!(
                %object,
                attempts = retry.attempts,
                retry_in = ?wait,
                error,
                "status write failed; retrying with backoff"
            );
            retry.last_error = error;
        }
        self.dirty.insert(object);
        wait
    }

    /// When the next waiting object is due, if any is dirty.
    pub fn next_due(&self) -> Option<Instant> {
        self.dirty
            .iter()
            .filter_map(|o| self.retries.get(o).map(|r| r.due))
            .min()
    }

    /// True when some dirty object could run now.
    pub fn has_ready(&self, now: Instant) -> bool {
        self.dirty
            .iter()
            .any(|o| self.retries.get(o).is_none_or(|r| r.due <= now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::catalog::Kind;

    fn object(name: &str) -> ObjectRef {
        ObjectRef::new(Kind::ApiPolicy, "m", name)
    }

    #[test]
    fn failures_back_off_per_object_and_marks_do_not_cut_the_wait() {
        let now = Instant::now();
        let mut queue = Queue::default();
        queue.mark(object("a"));
        queue.mark(object("b"));
        assert_eq!(queue.take_due(now), [object("a"), object("b")]);

        let first = queue.failed(object("a"), "conflict".into(), now);
        assert!((FIRST_RETRY..=FIRST_RETRY.mul_f64(1.25)).contains(&first));
        queue.mark(object("a"));
        queue.mark(object("b"));
        // b goes on; a waits although marked again.
        assert_eq!(queue.take_due(now), [object("b")]);
        assert!(!queue.has_ready(now));
        assert_eq!(queue.next_due(), Some(now + first));
        assert_eq!(queue.take_due(now + first), [object("a")]);

        let second = queue.failed(object("a"), "conflict".into(), now);
        assert!(second >= FIRST_RETRY * 2, "{second:?}");
        for _ in 0..20 {
            queue.failed(object("a"), "conflict".into(), now);
        }
        let capped = queue.failed(object("a"), "conflict".into(), now);
        assert!(capped <= MAX_RETRY.mul_f64(1.25), "{capped:?}");

        queue.succeeded(&object("a"));
        queue.mark(object("a"));
        assert_eq!(
            queue.take_due(now),
            [object("a")],
            "success resets the wait"
        );
    }

    #[test]
    fn forgotten_objects_leave_the_queue() {
        let now = Instant::now();
        let mut queue = Queue::default();
        queue.failed(object("a"), "e".into(), now);
        queue.forget(&object("a"));
        assert!(queue.take_due(now + MAX_RETRY * 2).is_empty());
        assert_eq!(queue.next_due(), None);
    }
}
