//! Volume stats in their wire form.

use hayloft_proto::{Tier as ProtoTier, VolumeStatus};
use hayloft_storage::{ColdVolume, Handle, Volume};

use crate::tier::Tiering;

/// A volume's stats as reported to the directory and operators.
pub fn volume_status(volume: &Volume) -> VolumeStatus {
    let stats = volume.stats();
    let progress = volume.compaction_progress();
    let poisoned = volume.is_poisoned();
    VolumeStatus {
        fault: if poisoned {
            "an fsync failed: read-only until the volume server restarts".into()
        } else {
            String::new()
        },
        paused: if stats.sealed || poisoned {
            String::new()
        } else {
            volume.paused().unwrap_or_default()
        },
        volume_id: stats.id.0,
        collection: volume.collection().to_owned(),
        tier: ProtoTier::from(stats.tier) as i32,
        sealed: stats.sealed || poisoned,
        needles: stats.needles,
        live_bytes: stats.live_bytes,
        garbage_bytes: stats.garbage_bytes,
        file_bytes: stats.file_bytes,
        max_bytes: stats.max_size,
        index_memory_bytes: stats.index_memory_bytes,
        compacting: progress.is_some(),
        compaction_copied_bytes: progress.map_or(0, |p| p.0),
        compaction_total_bytes: progress.map_or(0, |p| p.1),
        sealed_at: volume.sealed_at().unwrap_or(0),
        // Scanning needle metadata is only worth it once nothing is added.
        expires_at: if stats.sealed {
            volume.expires_at().unwrap_or(0)
        } else {
            0
        },
        ..VolumeStatus::default()
    }
}

/// A cold volume's stats in wire form.
pub fn cold_status(volume: &ColdVolume) -> VolumeStatus {
    let stats = volume.stats();
    let manifest = volume.manifest();
    VolumeStatus {
        volume_id: stats.id.0,
        collection: volume.collection().to_owned(),
        tier: ProtoTier::Cold as i32,
        sealed: true,
        needles: stats.needles,
        live_bytes: stats.live_bytes,
        garbage_bytes: stats.garbage_bytes,
        file_bytes: stats.file_bytes,
        max_bytes: stats.max_size,
        index_memory_bytes: stats.index_memory_bytes,
        storage_class: manifest.storage_class.clone(),
        sealed_at: volume.sealed_at().unwrap_or(0),
        expires_at: manifest.expires_at.unwrap_or(0),
        cold_object: format!("{}/{}", manifest.bucket, manifest.key),
        ..VolumeStatus::default()
    }
}

/// Every volume of the store, local and cold, with read rates and move
/// states from `tiering`.
pub fn all_statuses(handles: &[Handle], tiering: &Tiering) -> Vec<VolumeStatus> {
    handles
        .iter()
        .map(|handle| {
            let (mut status, cold) = match handle {
                Handle::Local(v) => (volume_status(v), false),
                Handle::Cold(c) => (cold_status(c), true),
            };
            let id = hayloft_storage::VolumeId(status.volume_id);
            let (rate, seconds) = tiering.reads.rate(id);
            status.reads_per_day = rate;
            status.read_stats_seconds = seconds;
            status.state = tiering.volume_state(id, cold) as i32;
            status
        })
        .collect()
}
