//! The volume state file `<id>.meta`: small, rewritten whole and atomically.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::write_atomically;

/// Version of the meta file layout written by this build.
pub const META_VERSION: u32 = 1;

/// A volume's mutable state, kept out of the append-only data file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// Layout version; older versions are migrated on load.
    pub version: u32,
    /// The collection the volume belongs to (empty = default).
    #[serde(default)]
    pub collection: String,
    /// True once the volume is read-only.
    #[serde(default)]
    pub sealed: bool,
    /// When the volume was sealed, Unix seconds.
    #[serde(default)]
    pub sealed_at: Option<u64>,
}

impl VolumeMeta {
    /// A fresh, writable volume's state.
    pub fn new(collection: &str) -> Self {
        VolumeMeta {
            version: META_VERSION,
            collection: collection.to_owned(),
            sealed: false,
            sealed_at: None,
        }
    }

    /// Loads the meta file, or `None` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        Self::decode(text.as_bytes(), path).map(Some)
    }

    /// Decodes a meta file's bytes (`path` names them in errors).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("unreadable volume state: {e}"),
        })?;
        let meta: VolumeMeta = toml::from_str(text).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("unreadable volume state: {e}"),
        })?;
        if meta.version > META_VERSION {
            return Err(Error::BadFile {
                path: path.to_owned(),
                reason: format!(
                    "volume state version {} is newer than this build ({META_VERSION})",
                    meta.version
                ),
            });
        }
        // Version 1 is the first; later versions add their migrations here.
        Ok(meta)
    }

    /// Writes the meta file atomically.
    pub fn store(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("cannot encode volume state: {e}"),
        })?;
        write_atomically(path, text.as_bytes())
    }
}
