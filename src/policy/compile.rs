//! SEAM (policy work): compile documents into a snapshot.

use std::collections::BTreeMap;

/// Secret values by `namespace/name` → key → bytes, and anything else a
/// section's compile needs.
#[derive(Debug, Default)]
pub struct CompileContext<'a> {
    pub namespace: &'a str,
    pub secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
}
