//! Watches each disk's free space against its reserve (see
//! `hayloft_storage::space`): measured every [`CHECK_EVERY`], so writes
//! resume by themselves once space comes back; a disk going below its
//! reserve, or back above it, is logged and reported to the directory at
//! once (its volumes are reported paused meanwhile). The same worker hands
//! the allocator's free heap back to the system every ten seconds.

use std::sync::Arc;
use std::time::Duration;

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_storage::{SpaceReport, Store, Tier};

/// How often free space is measured.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Every this many measurements, the allocator's free heap goes back to
/// the system (see `hayloft_storage::release_free_heap`).
const TRIM_EVERY: u32 = 10;

/// Bytes new blobs may take on the disks of `tier` (free space above the
/// reserve), as last measured; a file system holding several locations of
/// the tier counts once, and one at its reserve (low) not at all, so the
/// directory places no new volume there.
pub(crate) fn headroom(store: &Store, tier: Tier) -> u64 {
    per_tier(store, tier, |r| if r.is_low() { 0 } else { r.headroom })
}

/// Free bytes on the disks of `tier`, as last measured.
pub(crate) fn free(store: &Store, tier: Tier) -> u64 {
    per_tier(store, tier, |r| r.free)
}

/// Bytes the reserve keeps free on the disks of `tier`.
pub(crate) fn reserved(store: &Store, tier: Tier) -> u64 {
    per_tier(store, tier, |r| r.reserved)
}

fn per_tier(store: &Store, tier: Tier, figure: impl Fn(&SpaceReport) -> u64) -> u64 {
    store.tier_space(tier).iter().map(figure).sum()
}

/// Measures free space every [`CHECK_EVERY`], as a background worker, and
/// wakes the heartbeat when a disk goes below its reserve or comes back.
pub(crate) struct SpaceWatch {
    store: Arc<Store>,
    heartbeat_now: Arc<tokio::sync::Notify>,
    /// Each location was below its reserve at the last measurement.
    low: Vec<bool>,
    /// Measurements so far.
    tick: u32,
}

impl SpaceWatch {
    /// Starts from the measurement the store was opened with, warning of
    /// the disks below their reserve already.
    pub(crate) fn new(store: Arc<Store>, heartbeat_now: Arc<tokio::sync::Notify>) -> Self {
        let start = store.space();
        let low: Vec<bool> = start.iter().map(SpaceReport::is_low).collect();
        for (location, report) in store.locations().iter().zip(start) {
            if report.is_low() {
                tracing::warn!(path = %location.path.display(), free = report.free,
                    reserved = report.reserved, "disk at its free-space reserve: its volumes take no new blobs");
            }
        }
        SpaceWatch {
            store,
            heartbeat_now,
            low,
            tick: 0,
        }
    }
}

impl Worker for SpaceWatch {
    fn name(&self) -> String {
        "free-space".into()
    }

    fn progress(&self) -> String {
        let low = self.low.iter().filter(|low| **low).count();
        if low == 0 {
            String::new()
        } else {
            format!("{low} disk(s) at their reserve")
        }
    }

    fn interval(&self) -> Option<Duration> {
        Some(CHECK_EVERY)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        let measured = {
            let store = Arc::clone(&self.store);
            tokio::task::spawn_blocking(move || {
                if tick.is_multiple_of(TRIM_EVERY) {
                    hayloft_storage::release_free_heap();
                }
                store.refresh_space()
            })
            .await
        };
        let reports = match measured {
            Ok(Ok(reports)) => reports,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot measure free space");
                return Err(Failed::new(format!("cannot measure free space: {error}")));
            }
            Err(error) => return Err(Failed::new(format!("cannot measure free space: {error}"))),
        };
        let mut changed = false;
        for ((location, report), was_low) in self
            .store
            .locations()
            .iter()
            .zip(&reports)
            .zip(self.low.iter_mut())
        {
            if report.is_low() == *was_low {
                continue;
            }
            *was_low = report.is_low();
            changed = true;
            if report.is_low() {
                tracing::warn!(path = %location.path.display(), free = report.free,
                    reserved = report.reserved,
                    "disk at its free-space reserve: its volumes take no new blobs (deletes and compaction go on)");
            } else {
                tracing::info!(path = %location.path.display(), free = report.free,
                    reserved = report.reserved, "disk above its free-space reserve again: writes resume");
            }
        }
        if changed {
            self.heartbeat_now.notify_one();
        }
        Ok(Step::Idle)
    }
}
