//! hayloft's storage engine: append-only volumes of needles with O(1) reads.
//!
//! No networking here; the volume server wraps this crate.
//!
//! # Layout
//!
//! - [`format`]: the on-disk format (superblock, needle records, index
//!   entries) as pure encode/decode functions, with byte tables.
//! - [`index`]: the in-memory needle index, about 6 bytes a needle
//!   (record offset and length).
//! - [`volume`]: one volume: group-committed appends, zero-copy mmap reads
//!   of resident records, one `pread` a record from disk,
//!   tombstone deletes, seal, scrub.
//! - [`recovery`] (a room of `volume`): what opening a volume does after a
//!   crash.
//! - [`store`]: all volumes of a server across its hot and warm disks.
//! - [`moves`]: tier moves as persisted jobs, settled on open.
//! - [`space`]: the free-space reserve of each disk.
//! - [`throttle`]: the one byte-rate limit of every background copy.
//! - `file`, `mapped`, [`meta`]: file I/O, the memory map, the volume state file.
//! - [`cold`]: a volume whose data file is an object in the cold store (its
//!   index stays local); [`moves`]: tier moves that survive a crash.
//! - [`erasure`]: a sealed volume as `k` data and `m` parity shards: the
//!   stripe layout, the codec, shard files, encoding, the holder's view.
//! - [`sealed`]: the index and delete journal of a sealed data file held
//!   elsewhere (cold object or shards), shared by `cold` and `erasure`.
//! - [`space`]: each disk's free-space reserve.
//! - [`region`]: the volume id layout that tells which region allocated an id.
//! - [`types`]: ids, cookies, tiers, and the one wall clock (`unix_now`).
//! - [`error`]: the typed errors; [`failpoint`]: faults injected by tests.
//!
//! The invariants this crate keeps (see ARCHITECTURE.md): an acknowledged
//! write is never lost or read back wrong; every record carries checksums
//! that recovery, scrub and verifying reads check; files are append-only.

pub mod cold;
pub mod erasure;
pub mod error;
pub mod failpoint;
mod file;
pub mod format;
pub mod index;
mod mapped;
pub mod meta;
pub mod moves;
pub mod region;
pub mod sealed;
pub mod space;
pub mod store;
pub mod throttle;
pub mod types;
pub mod volume;

pub use cold::{ColdManifest, ColdVolume};
pub use error::{Error, Result};
pub use file::{Access, advise, available_space, open_for, write_atomically};
pub use format::NeedleMeta;
pub use moves::MoveJob;
pub use region::RegionNumber;
pub use space::{DiskSpace, Reserve, SpaceReport};
pub use store::{Handle, Location, Store, StoreConfig, release_free_heap};
pub use throttle::Throttle;
pub use types::{BlobId, Cookie, NeedleId, Tier, VolumeId, unix_now};
pub use volume::recovery;
pub use volume::recovery::RecoveryReport;
pub use volume::{
    BUFFERED_READ_MAX, COMPACTION_MARGIN, Claim, CompactOptions, CompactReport, DiskRead,
    Durability, FromDisk, HEAD_BYTES, HEAD_RECORD_MAX, Hint, LogEntry, MAX_LOG_ENTRIES, Needle,
    NeedleInfo, NeedlePart, NeedleState, NeedleWrite, NeedleWriter, Part, Queued, QueuedWrite,
    RANGE_RECORD_MAX, RangeDigest, ReadPlan, ScrubReport, Shape, SyncDuty, Volume, VolumeConfig,
    VolumeLog, VolumeStats, Waiter, Wake, WriteReceipt, shape,
};
