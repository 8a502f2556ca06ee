//! Identifier newtypes and small value types shared across the engine.

use std::fmt;
use std::str::FromStr;

/// A volume's id, unique in a cluster (assigned by the directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId(pub u32);

/// A needle's id: 64 bits, unique in a cluster, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeedleId(pub u64);

/// A random secret stored with each needle; a read must present it, so that
/// needle ids (which are dense) cannot be used to enumerate blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cookie(pub u32);

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NeedleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::Display for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The storage tier a volume lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Fast local disk (SSD): new and frequently read volumes.
    Hot,
    /// Slower local disk (HDD): aged volumes.
    Warm,
    /// Object storage (S3 and its archive classes); the index stays local.
    Cold,
}

impl Tier {
    /// The lower-case name used in configuration and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error parsing a [`Tier`] name.
#[derive(Debug, thiserror::Error)]
#[error("unknown tier {0:?} (expected hot, warm or cold)")]
pub struct ParseTierError(String);

impl FromStr for Tier {
    type Err = ParseTierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hot" => Ok(Tier::Hot),
            "warm" => Ok(Tier::Warm),
            "cold" => Ok(Tier::Cold),
            other => Err(ParseTierError(other.to_string())),
        }
    }
}
