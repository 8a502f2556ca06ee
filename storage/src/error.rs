//! The storage engine's one error type.

use std::io;
use std::path::PathBuf;

use crate::types::{NeedleId, VolumeId};

/// Everything that can go wrong in the storage engine, with the context an
/// operator needs to act on it.
///
/// Servers map these to protocol codes in one place each: not-found cases
/// (including [`Error::WrongCookie`], so ids cannot be probed) become
/// NotFound / 404, corruption becomes DataLoss / 500, full volumes become
/// ResourceExhausted / 507.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The volume is not on this store.
    #[error("volume {0} not found")]
    VolumeNotFound(VolumeId),

    /// A volume with this id already exists on this store.
    #[error("volume {0} already exists")]
    VolumeExists(VolumeId),

    /// The needle is not in the volume (never written, or deleted).
    #[error("needle {needle} not found in volume {volume}")]
    NeedleNotFound {
        /// Volume searched.
        volume: VolumeId,
        /// Needle asked for.
        needle: NeedleId,
    },

    /// The needle exists but the cookie presented does not match the stored one.
    #[error("needle {needle} in volume {volume}: cookie mismatch")]
    WrongCookie {
        /// Volume searched.
        volume: VolumeId,
        /// Needle asked for.
        needle: NeedleId,
    },

    /// The needle was deleted: its id is never written again.
    #[error("needle {needle} in volume {volume} was deleted; its id is not reused")]
    NeedleDeleted {
        /// Volume holding the tombstone.
        volume: VolumeId,
        /// The deleted needle.
        needle: NeedleId,
    },

    /// The needle id is taken: a blob id is written once (invariant 10).
    /// A second write of a live id with other bytes, another cookie or other
    /// metadata is refused; an exact retry is answered as the first write.
    #[error(
        "blob id {needle} in volume {volume} is already written with other bytes; a blob id is written once"
    )]
    NeedleExists {
        /// Volume holding the needle.
        volume: VolumeId,
        /// The needle asked to be written again.
        needle: NeedleId,
    },

    /// Another write of the same needle id is in progress here: one of the
    /// two will be refused, so this one is, now (retry to learn the outcome:
    /// an exact retry of a write that succeeded is answered as it was).
    #[error("a write of needle {needle} in volume {volume} is in progress; retry later")]
    WriteInProgress {
        /// Volume being written.
        volume: VolumeId,
        /// The needle being written.
        needle: NeedleId,
    },

    /// The needle exists but its expiry time has passed.
    #[error("needle {needle} in volume {volume} expired")]
    Expired {
        /// Volume searched.
        volume: VolumeId,
        /// Needle asked for.
        needle: NeedleId,
    },

    /// Appending would push the volume past its maximum size.
    #[error("volume {volume} is full: {needed} more bytes would exceed the {max_size}-byte limit")]
    VolumeFull {
        /// The full volume.
        volume: VolumeId,
        /// Size of the record that did not fit.
        needed: u64,
        /// The volume's configured maximum size.
        max_size: u64,
    },

    /// The volume is sealed (read-only); writes and deletes go elsewhere.
    #[error("volume {0} is sealed (read-only)")]
    Sealed(VolumeId),

    /// A previous fsync of this volume failed; the kernel may have dropped dirty
    /// pages, so the volume refuses further writes until it is reopened and recovered.
    #[error("volume {0} failed an earlier fsync and is read-only until reopened")]
    Poisoned(VolumeId),

    /// The volume is already compacting, or writers could not be paused for
    /// a compaction's swap in time (the compaction rolled back; retry later).
    #[error("volume {0} is busy: a compaction is running or could not pause writers")]
    Busy(VolumeId),

    /// The volume was moved to another disk or tier while the operation
    /// waited; look the volume up again and retry.
    #[error("volume {0} moved; look it up again")]
    Moved(VolumeId),

    /// The volume's data is in the cold tier (object storage): its needles
    /// are read with a ranged GET by the server, not from a local file.
    #[error("volume {0} is in cold storage")]
    Cold(VolumeId),

    /// The blob or its metadata does not fit the needle format.
    #[error("invalid needle: {0}")]
    InvalidNeedle(&'static str),

    /// A streamed write delivered a different number of bytes than it declared.
    #[error("needle {needle}: declared {declared} bytes, received {received}")]
    LengthMismatch {
        /// The needle being written.
        needle: NeedleId,
        /// Length announced at the start of the write.
        declared: u64,
        /// Bytes actually delivered.
        received: u64,
    },

    /// Stored bytes failed validation (bad magic, checksum, or header mismatch).
    #[error("corrupt data in volume {volume} at offset {offset}: {reason}")]
    Corrupt {
        /// Volume holding the bad bytes.
        volume: VolumeId,
        /// Byte offset of the bad record in the data file.
        offset: u64,
        /// What failed.
        reason: &'static str,
    },

    /// A file could not be used as a volume (bad superblock, wrong version, ...).
    #[error("{path}: {reason}")]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Not enough free space on the disk for the operation.
    #[error("not enough space on {path}: need {needed} bytes, {available} available")]
    NoSpace {
        /// Directory whose file system is too full.
        path: PathBuf,
        /// Bytes the operation needs.
        needed: u64,
        /// Bytes available.
        available: u64,
    },

    /// A write would eat into the disk's free-space reserve (kept for
    /// deletes and compaction); it clears once space is freed.
    #[error(
        "{path} is at its free-space reserve ({free} bytes free, {reserved} kept for deletes and compaction): new blobs go elsewhere until space is freed"
    )]
    LowSpace {
        /// The location.
        path: PathBuf,
        /// Bytes free at the last measurement.
        free: u64,
        /// Bytes the reserve keeps free.
        reserved: u64,
    },

    /// Two copies of a volume disagree in a way the operation cannot
    /// settle (anti-entropy must bring them together first).
    #[error("copies disagree: {0}")]
    Diverged(String),

    /// Too few of an erasure-coded volume's shards are readable to give the
    /// bytes asked for (more than `m` shards lost or unreachable). Never
    /// answered with other bytes.
    #[error("not enough shards: {0}")]
    Unavailable(String),

    /// An operating-system I/O error, with the file it concerned.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file the operation concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerned.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True for the cases a reader should see as "no such blob": missing,
    /// deleted, expired, or a wrong cookie (so ids cannot be probed).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::VolumeNotFound(_)
                | Error::NeedleNotFound { .. }
                | Error::WrongCookie { .. }
                | Error::Expired { .. }
        )
    }

    /// True when stored bytes failed validation.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
