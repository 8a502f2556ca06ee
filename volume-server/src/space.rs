//! Watches each disk's free space against its reserve (see
//! `hayloft_storage::space`): measured every [`CHECK_EVERY`], so writes
//! resume by themselves once space comes back; a disk going below its
//! reserve, or back above it, is logged and reported to the directory at
//! once (its volumes are reported paused meanwhile). The same task hands
//! the allocator's free heap back to the system every ten seconds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

/// Measures free space every [`CHECK_EVERY`] until `stop` completes, and
/// wakes the heartbeat when a disk goes below its reserve or comes back.
pub(crate) async fn watch(
    store: Arc<Store>,
    heartbeat_now: Arc<tokio::sync::Notify>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let start = store.space();
    let mut low: Vec<bool> = start.iter().map(SpaceReport::is_low).collect();
    for (location, report) in store.locations().iter().zip(start) {
        if report.is_low() {
            tracing::warn!(path = %location.path.display(), free = report.free,
                reserved = report.reserved, "disk at its free-space reserve: its volumes take no new blobs");
        }
    }
    for tick in 1u32.. {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let measured = {
            let store = Arc::clone(&store);
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
                continue;
            }
            Err(_) => continue,
        };
        let mut changed = false;
        for ((location, report), was_low) in
            store.locations().iter().zip(&reports).zip(low.iter_mut())
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
            heartbeat_now.notify_one();
        }
    }
}
