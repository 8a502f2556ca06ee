//! Per-collection settings (`[collections.<name>]` in the directory's
//! config) and what the directory reads from them.

use serde::{Deserialize, Serialize};

use hayloft_proto::regions::Regions;

use crate::DirectoryConfig;
use crate::error::{Error, Result};

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
    /// The regions its blobs are replicated to (none: they stay in this
    /// region). Default: the directory's `replicate_to`. Checked at start;
    /// shipped asynchronously (ARCHITECTURE.md, "Shipping between regions").
    pub replicate_to: Option<Vec<String>>,
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

    /// The deployment's regions as this directory is told them, checked:
    /// names, numbers, the other regions' addresses, and every
    /// `replicate_to` (the directory's and each collection's) naming
    /// another known region.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting.
    pub fn resolve_regions(&self) -> Result<Regions> {
        let bad = |e: hayloft_proto::regions::RegionsError| Error::Config(e.to_string());
        let regions = Regions::resolve(&self.region, &self.regions).map_err(bad)?;
        regions
            .check_targets("replicate_to (--replicate-to)", &self.replicate_to)
            .map_err(bad)?;
        for (name, collection) in &self.collections {
            if let Some(targets) = &collection.replicate_to {
                regions
                    .check_targets(&format!("collections.{name}.replicate_to"), targets)
                    .map_err(bad)?;
            }
        }
        Ok(regions)
    }

    /// The regions `collection`'s blobs are to be replicated to (its
    /// stored name: "" is `[collections.default]`).
    pub fn replicate_to_for(&self, collection: &str) -> &[String] {
        self.collections
            .get(hayloft_access::collection_name(collection))
            .and_then(|c| c.replicate_to.as_deref())
            .unwrap_or(&self.replicate_to)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hayloft_proto::regions::RegionConfig;

    fn two_regions() -> DirectoryConfig {
        let mut config = DirectoryConfig {
            region: "eu".into(),
            ..DirectoryConfig::default()
        };
        config.regions.insert(
            "eu".into(),
            RegionConfig {
                number: Some(1),
                directory: Vec::new(),
            },
        );
        config.regions.insert(
            "us".into(),
            RegionConfig {
                number: Some(2),
                directory: vec!["10.1.0.1:9330".into()],
            },
        );
        config
    }

    #[test]
    fn the_default_config_is_region_zero_named_default() {
        let regions = DirectoryConfig::default().resolve_regions().unwrap();
        assert_eq!(regions, Regions::single());
    }

    #[test]
    fn replication_targets_must_be_other_regions() {
        let mut config = two_regions();
        config.replicate_to = vec!["us".into()];
        config.collections.insert(
            "private".into(),
            CollectionConfig {
                replicate_to: Some(Vec::new()),
                ..CollectionConfig::default()
            },
        );
        let regions = config.resolve_regions().unwrap();
        assert_eq!(regions.local.number.0, 1);
        assert_eq!(config.replicate_to_for("photos"), ["us".to_owned()]);
        assert!(config.replicate_to_for("private").is_empty());

        config.collections.insert(
            "photos".into(),
            CollectionConfig {
                replicate_to: Some(vec!["mars".into()]),
                ..CollectionConfig::default()
            },
        );
        let Err(Error::Config(why)) = config.resolve_regions() else {
            panic!("an unknown target was taken");
        };
        assert!(
            why.contains("collections.photos.replicate_to") && why.contains("mars"),
            "{why}"
        );

        let mut config = two_regions();
        config.replicate_to = vec!["eu".into()];
        let Err(Error::Config(why)) = config.resolve_regions() else {
            panic!("this region as a target was taken");
        };
        assert!(
            why.contains("--replicate-to") && why.contains("this region"),
            "{why}"
        );
    }
}
