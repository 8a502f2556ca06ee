//! Per-collection settings (`[collections.<name>]` in the directory's
//! config) and what the directory reads from them.

use serde::{Deserialize, Serialize};

use crate::DirectoryConfig;

/// Settings of one collection (`[collections.<name>]` in the config).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectionConfig {
    /// Copies of each of its volumes. Default: the directory's `replication`.
    pub replication: Option<usize>,
    /// The erasure code `EncodeVolume` uses for its volumes when the
    /// request names none, `K+M`. Default: the directory's `ec_code`.
    pub ec_code: Option<String>,
    /// Who may read its blobs over HTTP: `public` (anyone with the blob
    /// id, the default) or `signed` (only with a signed URL; the volume
    /// servers need a key ring).
    pub access: hayloft_access::Access,
}

impl DirectoryConfig {
    /// The collections whose access mode is `signed`, by the names their
    /// volumes store (`[collections.default]` is the empty name).
    pub fn signed_collections(&self) -> Vec<String> {
        self.collections
            .iter()
            .filter(|(_, c)| c.access == hayloft_access::Access::Signed)
            .map(|(name, _)| hayloft_access::stored_collection(name).to_owned())
            .collect()
    }

    /// Copies a new volume of `collection` (its stored name: "" is
    /// `[collections.default]`) gets (at least 1).
    pub fn replication_for(&self, collection: &str) -> usize {
        self.collections
            .get(hayloft_access::collection_name(collection))
            .and_then(|c| c.replication)
            .unwrap_or(self.replication)
            .max(1)
    }
}
