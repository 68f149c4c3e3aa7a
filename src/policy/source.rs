//! Policy sources: where documents come from and how the served snapshot
//! follows them.
//!
//! - [`file`] — policy files, polled for changes;
//! - [`kubernetes`] — the `ApiPolicy`/`AppRegistration` custom resources
//!   and labelled Secrets, watched through the API server;
//! - [`report`] — what both tell operators when an object is rejected,
//!   conflicted or fixed (log lines once per change, metrics).
//!
//! Both feed a [`super::catalog::Catalog`], so both isolate objects the
//! same way: a broken object keeps its last good version serving and
//! touches nothing else.

pub mod file;
pub mod kubernetes;
pub mod report;

pub use file::{DEFAULT_INTERVAL, FileSource, PolicyError, load_initial, watch_files};
