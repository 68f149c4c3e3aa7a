//! SEAM (policy work): compile documents into a snapshot. The types below
//! are the contract the section compilers (user, app, plans) use.

use std::collections::BTreeMap;

/// Secret values loaded from `v1 Secret` documents (or the cluster):
/// (namespace, name) → key → bytes.
#[derive(Debug, Default)]
pub struct Secrets {
    pub map: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

impl Secrets {
    /// The value of `key` in Secret `namespace/name`, or an error naming
    /// what is missing (never the value).
    pub fn get(&self, namespace: &str, name: &str, key: &str) -> Result<&[u8], String> {
        let secret = self
            .map
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
        secret
            .get(key)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))
    }
}

/// What a section compiler (user, app, plans) may read.
#[derive(Debug)]
pub struct CompileContext<'a> {
    /// Namespace of the document being compiled (Secret references are
    /// resolved in it).
    pub namespace: &'a str,
    pub secrets: &'a Secrets,
}
