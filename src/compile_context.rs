//! What the section compilers read while turning a document into its
//! runtime form: the document's namespace and the Secrets it may
//! reference. Shared by `policy::compile` (which drives the compile) and
//! `authn` (whose issuers, attestation keys and app registrations read
//! Secrets), so neither imports the other for it.
//!
//! Every Secret lookup is recorded ([`SecretRead`]): the policy catalog
//! uses the record to recompile exactly the objects a changed Secret
//! affects, and the operator to tell a missing Secret (`SecretNotFound`)
//! from an invalid field.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

/// Secret values loaded from `v1 Secret` documents (or the cluster):
/// (namespace, name) → key → bytes. `Debug` shows the keys, never the
/// values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    pub map: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    /// Appended to "not found" messages: how Secrets reach tollgate (the
    /// Kubernetes source reads only labelled Secrets and says so).
    pub missing_hint: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|((namespace, name), values)| {
                (
                    format!("{namespace}/{name}"),
                    values.keys().collect::<Vec<_>>(),
                )
            }))
            .finish()
    }
}

impl Secrets {
    /// The value of `key` in Secret `namespace/name`, or an error naming
    /// what is missing (never the value).
    pub fn get(&self, namespace: &str, name: &str, key: &str) -> Result<&[u8], String> {
        self.lookup(namespace, name, key).map_err(|miss| {
            let hint = self
                .missing_hint
                .as_deref()
                .map(|hint| format!(" ({hint})"))
                .unwrap_or_default();
            match miss {
                SecretLookup::NoSecret => {
                    format!("Secret {namespace}/{name} (key {key:?}) not found{hint}")
                }
                _ => format!("Secret {namespace}/{name} has no key {key:?}"),
            }
        })
    }

    fn lookup(&self, namespace: &str, name: &str, key: &str) -> Result<&[u8], SecretLookup> {
        let secret = self
            .map
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or(SecretLookup::NoSecret)?;
        secret
            .get(key)
            .map(Vec::as_slice)
            .ok_or(SecretLookup::NoKey)
    }
}

/// How one Secret lookup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretLookup {
    Found,
    /// No Secret of that name (or not one tollgate can read).
    NoSecret,
    /// The Secret exists but lacks the key.
    NoKey,
}

/// One Secret lookup made while compiling a document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretRead {
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub lookup: SecretLookup,
}

impl SecretRead {
    /// True when the lookup found no value.
    pub fn missed(&self) -> bool {
        self.lookup != SecretLookup::Found
    }
}

/// What a section compiler (user, app, plans, registrations) may read.
#[derive(Debug)]
pub struct CompileContext<'a> {
    /// Namespace of the document being compiled (Secret references are
    /// resolved in it).
    pub namespace: &'a str,
    secrets: &'a Secrets,
    reads: RefCell<Vec<SecretRead>>,
}

impl<'a> CompileContext<'a> {
    /// A context for one document of `namespace`.
    pub fn new(namespace: &'a str, secrets: &'a Secrets) -> Self {
        Self {
            namespace,
            secrets,
            reads: RefCell::new(Vec::new()),
        }
    }

    /// The value of `key` in the Secret `name` of this document's
    /// namespace, recording the lookup. The error names the Secret and the
    /// key, never a value.
    pub fn secret(&self, name: &str, key: &str) -> Result<&'a [u8], String> {
        let lookup = match self.secrets.lookup(self.namespace, name, key) {
            Ok(_) => SecretLookup::Found,
            Err(miss) => miss,
        };
        self.reads.borrow_mut().push(SecretRead {
            namespace: self.namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
            lookup,
        });
        self.secrets.get(self.namespace, name, key)
    }

    /// Every Secret lookup made so far, sorted, without repeats.
    pub fn into_reads(self) -> Vec<SecretRead> {
        let mut reads = self.reads.into_inner();
        reads.sort();
        reads.dedup();
        reads
    }
}

/// One problem in one field of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path inside the document, e.g. `spec.routes[0].cost`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        let mut map = BTreeMap::new();
        map.insert(
            ("n".to_owned(), "s".to_owned()),
            BTreeMap::from([("k".to_owned(), b"v".to_vec())]),
        );
        Secrets {
            map,
            missing_hint: Some("is it labelled?".to_owned()),
        }
    }

    #[test]
    fn lookups_are_recorded_found_or_not() {
        let secrets = secrets();
        let ctx = CompileContext::new("n", &secrets);
        assert_eq!(ctx.secret("s", "k"), Ok(&b"v"[..]));
        assert_eq!(
            ctx.secret("s", "x"),
            Err("Secret n/s has no key \"x\"".to_owned())
        );
        assert_eq!(
            ctx.secret("gone", "k"),
            Err("Secret n/gone (key \"k\") not found (is it labelled?)".to_owned())
        );
        // A repeated lookup is recorded once.
        let _ = ctx.secret("s", "k");
        let reads = ctx.into_reads();
        let outcomes: Vec<_> = reads
            .iter()
            .map(|r| (r.name.as_str(), r.key.as_str(), r.lookup))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("gone", "k", SecretLookup::NoSecret),
                ("s", "k", SecretLookup::Found),
                ("s", "x", SecretLookup::NoKey),
            ]
        );
        assert!(reads[0].missed() && !reads[1].missed());
    }

    #[test]
    fn debug_never_shows_values() {
        let text = format!("{:?}", secrets());
        assert!(text.contains("n/s") && text.contains("\"k\""));
        assert!(!text.contains("\"v\""));
    }
}
