//! Identifier newtypes and small value types shared across the engine.

use std::fmt;
use std::str::FromStr;

/// A volume's id, unique in a cluster (assigned by the directory).
/// Serialised as its bare `u32` (`serde(transparent)`), as raw ids were.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
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

/// A volume id as a 64-bit seed (placement hashes it).
impl From<VolumeId> for u64 {
    fn from(id: VolumeId) -> u64 {
        u64::from(id.0)
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

/// A blob's public id: its needle id and cookie, written as the needle id in
/// lower-case hex followed by the cookie as exactly 8 hex digits
/// (`"70000002a" + "1b2c3d4e"` = `"70000002a1b2c3d4e"`): short and URL-safe.
///
/// The directory allocates needle ids as `volume id << 32 | sequence`, so the
/// volume is the needle id's top 32 bits and a bare needle id resolves to its
/// volume without a lookup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobId {
    /// The needle.
    pub needle: NeedleId,
    /// Its cookie.
    pub cookie: Cookie,
}

impl BlobId {
    /// The volume holding the blob.
    pub fn volume(&self) -> VolumeId {
        volume_of(self.needle)
    }
}

/// The volume a needle id was allocated from (its top 32 bits).
pub fn volume_of(needle: NeedleId) -> VolumeId {
    VolumeId((needle.0 >> 32) as u32)
}

/// The needle id with sequence number `seq` in `volume`.
pub fn needle_in(volume: VolumeId, seq: u32) -> NeedleId {
    NeedleId(u64::from(volume.0) << 32 | u64::from(seq))
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}{:08x}", self.needle.0, self.cookie.0)
    }
}

/// Error parsing a [`BlobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed blob id {0:?}: expected 9 to 24 hex digits (needle id, then an 8-digit cookie)")]
pub struct ParseBlobIdError(pub String);

impl FromStr for BlobId {
    type Err = ParseBlobIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseBlobIdError(s.chars().take(64).collect());
        if !(9..=24).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let (needle, cookie) = s.split_at(s.len() - 8);
        Ok(BlobId {
            needle: NeedleId(u64::from_str_radix(needle, 16).map_err(|_| bad())?),
            cookie: Cookie(u32::from_str_radix(cookie, 16).map_err(|_| bad())?),
        })
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it): the one
/// clock every hayloft crate reads wall time through (re-exported by
/// `hayloft_proto` for the crates above it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn blob_ids_round_trip(needle in any::<u64>(), cookie in any::<u32>()) {
            let id = BlobId { needle: NeedleId(needle), cookie: Cookie(cookie) };
            let text = id.to_string();
            prop_assert!(text.len() <= 24);
            prop_assert_eq!(text.parse::<BlobId>(), Ok(id));
        }
    }

    #[test]
    fn malformed_blob_ids_are_rejected() {
        for bad in [
            "",
            "12345678",
            "xyz123456789",
            "1234567890abcdef1234567890",
            "12345678-9",
            "../etc/passwd",
        ] {
            assert!(bad.parse::<BlobId>().is_err(), "{bad}");
        }
        let id: BlobId = "70000002a1b2c3d4e".parse().unwrap();
        assert_eq!(id.volume(), VolumeId(7));
        assert_eq!(id.needle, needle_in(VolumeId(7), 0x2a));
        assert_eq!(id.cookie, Cookie(0x1b2c3d4e));
    }
}
