//! Volume stats in their wire form.

use hayloft_proto::{Tier as ProtoTier, VolumeStatus};
use hayloft_storage::{Tier, Volume};

/// The wire tier for a storage tier.
pub fn proto_tier(tier: Tier) -> ProtoTier {
    match tier {
        Tier::Hot => ProtoTier::Hot,
        Tier::Warm => ProtoTier::Warm,
        Tier::Cold => ProtoTier::Cold,
    }
}

/// A volume's stats as reported to the directory and operators.
pub fn volume_status(volume: &Volume) -> VolumeStatus {
    let stats = volume.stats();
    let progress = volume.compaction_progress();
    VolumeStatus {
        volume_id: stats.id.0,
        collection: volume.collection(),
        tier: proto_tier(stats.tier) as i32,
        sealed: stats.sealed,
        needles: stats.needles,
        live_bytes: stats.live_bytes,
        garbage_bytes: stats.garbage_bytes,
        file_bytes: stats.file_bytes,
        max_bytes: stats.max_size,
        index_memory_bytes: stats.index_memory_bytes,
        compacting: progress.is_some(),
        compaction_copied_bytes: progress.map_or(0, |p| p.0),
        compaction_total_bytes: progress.map_or(0, |p| p.1),
    }
}
