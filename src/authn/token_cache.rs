//! The verified-token cache: a repeat token costs a hash and a lookup
//! instead of a signature check.
//!
//! Entries are keyed by the SHA-256 of the token — for user tokens, of the
//! whole `Authorization` value, whose hash the attestation binding reuses
//! (the token itself is never stored), hold only the result of the signature check (which issuer, which
//! key) and the claims, and live no longer than the token. Everything that
//! depends on the request or on time is re-checked on every use by the
//! caller. Failures are never cached. A cache belongs to one compiled user
//! policy or attestation, so a policy change starts with an empty cache;
//! the caller drops an entry whose key has left its key set.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Most entries per policy.
pub const DEFAULT_CAPACITY: u64 = 10_000;
/// Longest an entry lives, whatever the token's `exp`.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// What a successful signature check established.
#[derive(Debug)]
pub struct Verified {
    /// Index of the issuer in the policy (0 for attestation tokens, whose
    /// policy has one key source).
    pub issuer: usize,
    /// Fingerprint of the key that verified the signature.
    pub key: [u8; 32],
    /// The header `typ`, for the RFC 9068 check.
    pub typ: Option<String>,
    /// Shared with every [`crate::authn::user::UserIdentity`] built from
    /// this entry, so a cache hit copies no claims.
    pub claims: Arc<Map<String, Value>>,
    /// How long the entry may live (until the token's `exp`, bounded).
    pub ttl: Duration,
    /// The store's digest of the user (`keys::user_digest` of issuer and
    /// `sub`), computed once per verified user token rather than on every
    /// request; `None` for attestation tokens and tokens without a `sub`.
    pub subject_digest: Option<Arc<str>>,
}

/// The SHA-256 of a token (for user tokens, of the whole `Authorization`
/// value that carries it): the cache key.
pub type TokenDigest = [u8; 32];

/// Hashes a token (or the header value carrying it) for lookup.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

struct PerEntryTtl;

impl moka::Expiry<TokenDigest, Arc<Verified>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Arc<Verified>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl.min(MAX_TTL))
    }
}

/// A bounded cache of verified tokens. Its keys are SHA-256 digests, so
/// the table's hasher need not resist chosen keys (nobody can choose a
/// digest): foldhash, not std's SipHash.
#[derive(Clone)]
pub struct TokenCache {
    inner: moka::sync::Cache<TokenDigest, Arc<Verified>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.entry_count())
            .finish()
    }
}

impl TokenCache {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: u64) -> Self {
        Self {
            inner: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntryTtl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// The entry for `digest`, if cached.
    pub fn get(&self, digest: &TokenDigest) -> Option<Arc<Verified>> {
        self.inner.get(digest)
    }

    /// Remembers a successful verification.
    pub fn insert(&self, digest: TokenDigest, verified: Arc<Verified>) {
        if !verified.ttl.is_zero() {
            self.inner.insert(digest, verified);
        }
    }

    /// Drops an entry (its key left the key set).
    pub fn remove(&self, digest: &TokenDigest) {
        self.inner.invalidate(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(ttl: Duration) -> Arc<Verified> {
        Arc::new(Verified {
            issuer: 0,
            key: [1; 32],
            typ: None,
            claims: Arc::default(),
            ttl,
            subject_digest: None,
        })
    }

    #[test]
    fn stores_by_digest_and_forgets() {
        let cache = TokenCache::new(10);
        let d = digest("a.b.c");
        assert_ne!(d, digest("a.b.d"));
        cache.insert(d, verified(Duration::from_secs(60)));
        assert!(cache.get(&d).is_some());
        cache.remove(&d);
        assert!(cache.get(&d).is_none());
        cache.insert(d, verified(Duration::ZERO));
        assert!(
            cache.get(&d).is_none(),
            "an already expired token is not cached"
        );
    }
}
