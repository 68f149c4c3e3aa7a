//! Host → policy index: exact names first, then the most specific `*.`
//! wildcard. A host claimed by two policies stays with the older one.

use std::collections::HashMap;

use super::snapshot::PolicyId;

/// Which policy serves which host.
#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<String, PolicyId>,
    /// Wildcard suffix (`.bikes.example` for `*.bikes.example`) → policy.
    wildcard: HashMap<String, PolicyId>,
}

/// A host two policies claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConflict {
    pub host: String,
    /// The policy that keeps the host (the older one).
    pub kept: PolicyId,
    /// The policy that is not served for it.
    pub refused: PolicyId,
}

impl HostIndex {
    /// Claims `host` (lower-cased; `*.suffix` for a wildcard) for `policy`.
    /// Policies must be inserted oldest first: a host already claimed stays
    /// with its first owner and the conflict is returned.
    pub fn claim(&mut self, host: &str, policy: &PolicyId) -> Result<(), HostConflict> {
        let host = host.to_ascii_lowercase();
        let (map, key) = match host.strip_prefix('*') {
            Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
            None => (&mut self.exact, host.clone()),
        };
        match map.get(&key) {
            Some(owner) if owner != policy => Err(HostConflict {
                host,
                kept: owner.clone(),
                refused: policy.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                map.insert(key, policy.clone());
                Ok(())
            }
        }
    }

    /// The policy serving `host` (lower-case, no port): exact, then the
    /// longest matching wildcard suffix. `*.example` matches `a.example`
    /// and `a.b.example`, never `example` itself.
    pub fn lookup(&self, host: &str) -> Option<&PolicyId> {
        if let Some(policy) = self.exact.get(host) {
            return Some(policy);
        }
        // Try suffixes from the longest (most specific) to the shortest.
        let mut search = host;
        while let Some(dot) = search.find('.') {
            let suffix = &search[dot..];
            if let Some(policy) = self.wildcard.get(suffix) {
                return Some(policy);
            }
            search = &search[dot + 1..];
        }
        None
    }

    /// Number of claimed hosts.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// True when no host is claimed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PolicyId {
        PolicyId(s.into())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_wildcard_wins() {
        let mut index = HostIndex::default();
        index.claim("*.example", &id("ns/broad")).unwrap();
        index.claim("*.bikes.example", &id("ns/bikes")).unwrap();
        index.claim("api.bikes.example", &id("ns/api")).unwrap();
        assert_eq!(index.lookup("api.bikes.example"), Some(&id("ns/api")));
        assert_eq!(index.lookup("x.bikes.example"), Some(&id("ns/bikes")));
        assert_eq!(index.lookup("a.b.bikes.example"), Some(&id("ns/bikes")));
        assert_eq!(index.lookup("other.example"), Some(&id("ns/broad")));
        assert_eq!(index.lookup("example"), None);
        assert_eq!(index.lookup("bikes.example"), Some(&id("ns/broad")));
    }

    #[test]
    fn older_policy_keeps_a_contested_host() {
        let mut index = HostIndex::default();
        index.claim("API.example", &id("ns/old")).unwrap();
        let conflict = index.claim("api.example", &id("ns/new")).unwrap_err();
        assert_eq!(conflict.kept, id("ns/old"));
        assert_eq!(conflict.refused, id("ns/new"));
        assert_eq!(index.lookup("api.example"), Some(&id("ns/old")));
    }
}
