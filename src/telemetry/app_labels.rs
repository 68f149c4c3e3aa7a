//! Bounded `app` label values for per-app metrics.
//!
//! Ten thousand registered apps as label values would swamp Prometheus, so
//! per-app metrics are off unless asked for (`--metrics-app-labels N`), and
//! then only the first `N` distinct apps seen get their own series; every
//! later app shares `app="_other"`. Usage per app for billing comes from
//! `tollgate usage`, which has no such limit.

use std::collections::HashSet;
use std::sync::Mutex;

/// The label of apps past the limit.
pub const OTHER: &str = "_other";

/// Assigns label values to app ids, at most `limit` distinct ones.
#[derive(Debug)]
pub struct AppLabels {
    limit: usize,
    // A std Mutex is fine: held for one set lookup, never across an await.
    seen: Mutex<HashSet<String>>,
}

impl AppLabels {
    /// Labels for at most `limit` apps; `0` turns per-app metrics off.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Whether per-app metrics are on (`--metrics-app-labels` above 0).
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// The label for `app`, or `None` when per-app metrics are off.
    pub fn label(&self, app: &str) -> Option<String> {
        if self.limit == 0 {
            return None;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(app) {
            return Some(app.to_owned());
        }
        if seen.len() < self.limit {
            seen.insert(app.to_owned());
            return Some(app.to_owned());
        }
        Some(OTHER.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_bounded_when_on() {
        assert_eq!(AppLabels::new(0).label("a"), None);
        let labels = AppLabels::new(2);
        assert_eq!(labels.label("a").as_deref(), Some("a"));
        assert_eq!(labels.label("b").as_deref(), Some("b"));
        assert_eq!(labels.label("c").as_deref(), Some(OTHER));
        assert_eq!(
            labels.label("a").as_deref(),
            Some("a"),
            "seen apps keep their label"
        );
    }
}
