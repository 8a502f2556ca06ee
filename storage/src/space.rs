//! The free-space reserve of each disk.
//!
//! A disk that fills to the last byte paints its server into a corner: a
//! compaction needs room for the live bytes of the volume it rewrites, so
//! the space of deleted blobs could never be reclaimed. So every location
//! keeps a reserve free: the larger of [`Reserve::bytes`], [`Reserve::percent`]
//! of the disk and what compacting the location's largest volume takes.
//! Below it, the location's volumes take no new blobs (the volume server
//! reports them paused and the directory assigns elsewhere); tombstones
//! (deletes) and compactions may dip into it. Writes resume by themselves
//! once [`DiskSpace::refresh`] finds the space back (a compaction finished,
//! a volume moved away, an operator freed space).
//!
//! Between two refreshes, every record a write appends is taken from the
//! headroom (free bytes at the last refresh minus the reserve), so a burst
//! of writes cannot run past the reserve before the next refresh notices.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::file::disk_space;

/// A disk counts as low once its headroom is below this: its volumes are
/// reported paused (smaller writes could still fit, but the directory should
/// send new blobs elsewhere before they are refused).
pub const LOW_WATER: u64 = 1 << 20;

/// How much of each disk is kept free.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reserve {
    /// At least this many bytes.
    pub bytes: u64,
    /// At least this percentage of the disk's size (0 to 100).
    pub percent: f64,
}

impl Reserve {
    /// No reserve beyond what compaction needs.
    pub const NONE: Reserve = Reserve {
        bytes: 0,
        percent: 0.0,
    };

    /// The reserve on a disk of `total` bytes whose largest compaction needs
    /// `compaction` bytes.
    pub fn on(&self, total: u64, compaction: u64) -> u64 {
        let percent = (total as f64 * self.percent.clamp(0.0, 100.0) / 100.0) as u64;
        self.bytes.max(percent).max(compaction)
    }
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve::NONE
    }
}

/// One location's free space as last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceReport {
    /// Bytes free at the last refresh.
    pub free: u64,
    /// Bytes the reserve keeps free.
    pub reserved: u64,
    /// Bytes new blobs may still take (free minus reserved, minus what was
    /// written since the last refresh).
    pub headroom: u64,
}

impl SpaceReport {
    /// Below [`LOW_WATER`]: new blobs should go elsewhere.
    pub fn is_low(&self) -> bool {
        self.headroom < LOW_WATER
    }
}

/// The reserve of one location and the headroom left above it.
#[derive(Debug)]
pub struct DiskSpace {
    path: PathBuf,
    reserve: Reserve,
    /// Free bytes minus the reserve at the last refresh, minus every record
    /// appended since (negative once a refresh finds the disk below it).
    headroom: AtomicI64,
    free: AtomicU64,
    reserved: AtomicU64,
    /// What compacting the location's largest volume takes, as last told.
    compaction: AtomicU64,
}

impl DiskSpace {
    /// The reserve of the location `path`; measured at once.
    pub(crate) fn new(path: &Path, reserve: Reserve) -> Result<DiskSpace> {
        let space = DiskSpace {
            path: path.to_owned(),
            reserve,
            headroom: AtomicI64::new(0),
            free: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            compaction: AtomicU64::new(0),
        };
        space.refresh()?;
        Ok(space)
    }

    /// The location.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets what compacting the location's largest volume takes (the
    /// reserve covers it from the next [`DiskSpace::refresh`]).
    pub(crate) fn set_compaction(&self, bytes: u64) {
        self.compaction.store(bytes, Ordering::Relaxed);
    }

    /// Measures the disk again.
    pub fn refresh(&self) -> Result<SpaceReport> {
        let (free, total) = disk_space(&self.path)?;
        let reserved = self
            .reserve
            .on(total, self.compaction.load(Ordering::Relaxed));
        self.free.store(free, Ordering::Relaxed);
        self.reserved.store(reserved, Ordering::Relaxed);
        let headroom = i128::from(free) - i128::from(reserved);
        self.headroom.store(
            headroom.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            Ordering::Relaxed,
        );
        Ok(self.report())
    }

    /// The figures of the last refresh, less what was written since.
    pub fn report(&self) -> SpaceReport {
        SpaceReport {
            free: self.free.load(Ordering::Relaxed),
            reserved: self.reserved.load(Ordering::Relaxed),
            headroom: self.headroom.load(Ordering::Relaxed).max(0) as u64,
        }
    }

    /// Takes `len` bytes of headroom for a record about to be appended, or
    /// refuses: the write would eat into the reserve.
    pub(crate) fn take(&self, len: u64) -> Result<()> {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        match self
            .headroom
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left >= len).then(|| left - len)
            }) {
            Ok(_) => Ok(()),
            Err(_) => {
                let report = self.report();
                Err(Error::LowSpace {
                    path: self.path.clone(),
                    free: report.free,
                    reserved: report.reserved,
                })
            }
        }
    }

    /// Takes `len` bytes that may come out of the reserve (a tombstone).
    pub(crate) fn take_from_reserve(&self, len: u64) {
        self.headroom
            .fetch_sub(i64::try_from(len).unwrap_or(i64::MAX), Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_the_largest_of_bytes_percent_and_compaction() {
        let reserve = Reserve {
            bytes: 1 << 30,
            percent: 1.0,
        };
        assert_eq!(reserve.on(10 << 30, 0), 1 << 30);
        assert_eq!(reserve.on(1000 << 30, 0), 10 << 30);
        assert_eq!(reserve.on(10 << 30, 3 << 30), 3 << 30);
        assert_eq!(Reserve::NONE.on(1 << 40, 5), 5);
        // A percentage out of range is taken at its bound.
        let all = Reserve {
            bytes: 0,
            percent: 250.0,
        };
        assert_eq!(all.on(100, 0), 100);
    }

    #[test]
    fn writes_take_headroom_until_the_reserve_and_deletes_go_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let (free, _) = disk_space(dir.path()).unwrap();
        // Keep all but 10 KiB of what is free now.
        let space = DiskSpace::new(
            dir.path(),
            Reserve {
                bytes: free.saturating_sub(10 << 10),
                percent: 0.0,
            },
        )
        .unwrap();
        let headroom = space.report().headroom;
        assert!(headroom <= 10 << 10 && headroom > 0, "{headroom}");
        assert!(space.report().is_low());
        space.take(headroom).unwrap();
        let err = space.take(1).unwrap_err();
        assert!(matches!(err, Error::LowSpace { .. }), "{err}");
        assert!(err.to_string().contains("free-space reserve"), "{err}");
        // A tombstone still goes in, and a refresh measures afresh.
        space.take_from_reserve(100);
        assert_eq!(space.report().headroom, 0);
        let measured = space.refresh().unwrap();
        assert_eq!(measured.reserved, free.saturating_sub(10 << 10));
        // The reserve covers the largest compaction.
        space.set_compaction(u64::MAX / 2);
        assert_eq!(space.refresh().unwrap().reserved, u64::MAX / 2);
        assert!(space.take(1).is_err());
        // With no reserve, the same disk has room.
        let roomy = DiskSpace::new(dir.path(), Reserve::NONE).unwrap();
        assert!(!roomy.report().is_low());
        roomy.take(4096).unwrap();
    }
}
