//! The store behind quotas, replay nonces and usage metering. SEAM: the
//! store work adds the Redis and in-memory implementations; the trait is the
//! one thing the pipeline knows.

/// A quota / nonce / usage store.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A short name for logs (`memory`, `redis`).
    fn kind(&self) -> &'static str;
}

/// The in-memory store: one replica only.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }
}
