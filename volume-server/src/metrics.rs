//! The volume server's Prometheus metrics (through the `metrics` facade; the
//! process installs the exporter and serves `/metrics`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hayloft_volume_requests_total` | counter | `op`, `status` |
//! | `hayloft_volume_request_duration_seconds` | histogram | `op` |
//! | `hayloft_volume_bytes_in_total` / `_bytes_out_total` | counter | `protocol` |
//! | `hayloft_volumes` | gauge | `tier`, `state` (`paused`: its disk is at its free-space reserve) |
//! | `hayloft_volume_used_bytes` / `_garbage_bytes` / `_live_bytes` | gauge | `tier` |
//! | `hayloft_disk_free_bytes`, `hayloft_disk_reserved_bytes` (the free-space reserve) | gauge | `tier` |
//! | `hayloft_index_memory_bytes`, `hayloft_needles` | gauge | |
//! | `hayloft_compactions_running`, `hayloft_compaction_copied_bytes`, `hayloft_compaction_total_bytes` | gauge | |
//! | `hayloft_compaction_reclaimed_bytes_total`, `hayloft_compactions_total` | counter | `result` (on the latter) |
//! | `hayloft_volume_reads_total` | counter | `source`: `memory` (page cache), `disk`, `remote` (another copy), `region` (a copy in another region), `cold` (object store) |
//! | `hayloft_volume_read_duration_seconds` | histogram | `source` (request start to answer) |
//! | `hayloft_volume_disk_read_bytes_total` | counter | bytes reads from disk read from volume files |
//! | `hayloft_volume_disk_reads_in_flight`, `hayloft_volume_disk_reads_waiting` | gauge | reads on the disk-read pool, and waiting for a place |
//! | `hayloft_volume_disk_reads_refused_total` | counter | reads refused at the pool's bound (503 / RESOURCE_EXHAUSTED) |
//! | `hayloft_process_storage_read_bytes_total` | counter | bytes the process made the kernel fetch from storage (`/proc/self/io` `read_bytes`: readahead and page faults included), every pulse |

use std::collections::BTreeMap;
use std::time::Instant;

use hayloft_storage::Tier;

/// Creates, at 0, the counters alerts watch for failures
/// (`deploy/prometheus/alerts.yml`): an `increase()` over a series that
/// first appears at 1 would miss the first failure.
pub fn register_failure_counters() {
    // The key ring loaded at start (a stale one is set to 1 by its reload).
    metrics::gauge!(hayloft_access::STALE_METRIC).set(0.0);
    update_process_io();
    for result in ["ok", "error"] {
        metrics::counter!("hayloft_compactions_total", "result" => result).absolute(0);
        for target in [Tier::Hot, Tier::Warm, Tier::Cold] {
            metrics::counter!("hayloft_tier_moves_total",
                "target" => target.as_str(), "result" => result)
            .absolute(0);
        }
    }
}

/// Records one request: its outcome and how long it took.
pub fn observe(op: &'static str, status: metrics::SharedString, started: Instant) {
    metrics::counter!("hayloft_volume_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("hayloft_volume_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// Records one gRPC request.
pub fn observe_grpc(op: &'static str, code: &str, started: Instant) {
    observe(op, metrics::SharedString::from(code.to_owned()), started);
}

/// The `status` label of an HTTP response, without allocating for the
/// statuses the origin sends.
pub fn http_status_label(status: u16) -> metrics::SharedString {
    let label = match status {
        200 => "200",
        206 => "206",
        304 => "304",
        400 => "400",
        404 => "404",
        405 => "405",
        412 => "412",
        416 => "416",
        500 => "500",
        503 => "503",
        _ => return metrics::SharedString::from(status.to_string()),
    };
    metrics::SharedString::const_str(label)
}

/// The gRPC code name of a result, for the `status` label.
pub fn grpc_code<T>(result: &Result<T, tonic::Status>) -> String {
    match result {
        Ok(_) => "OK".to_owned(),
        Err(status) => format!("{:?}", status.code()),
    }
}

/// Bytes received (uploads).
pub fn bytes_in(protocol: &'static str, bytes: u64) {
    metrics::counter!("hayloft_volume_bytes_in_total", "protocol" => protocol).increment(bytes);
}

/// Bytes sent (downloads).
pub fn bytes_out(protocol: &'static str, bytes: u64) {
    metrics::counter!("hayloft_volume_bytes_out_total", "protocol" => protocol).increment(bytes);
}

/// Updates the gauges that describe the store from the heartbeat just
/// built (every pulse), so the volumes and disks are read once, not twice.
pub fn update_store_gauges(beat: &hayloft_proto::HeartbeatRequest) {
    use hayloft_proto::Tier as ProtoTier;
    let tier_name = |tier: i32| ProtoTier::storage(tier).unwrap_or(Tier::Hot).as_str();
    let mut volumes: BTreeMap<(&'static str, &'static str), f64> = BTreeMap::new();
    let mut per_tier: BTreeMap<&'static str, (u64, u64, u64)> = BTreeMap::new();
    let (mut index, mut needles, mut compacting, mut copied, mut total) = (0, 0, 0, 0, 0);
    for status in &beat.volumes {
        let tier = tier_name(status.tier);
        let state = if status.compacting {
            "compacting"
        } else if status.state == hayloft_proto::VolumeState::Moving as i32 {
            "moving"
        } else if status.state == hayloft_proto::VolumeState::Restoring as i32 {
            "restoring"
        } else if status.sealed {
            "sealed"
        } else if !status.paused.is_empty() {
            "paused"
        } else {
            "writable"
        };
        *volumes.entry((tier, state)).or_default() += 1.0;
        let entry = per_tier.entry(tier).or_default();
        entry.0 += status.file_bytes;
        entry.1 += status.live_bytes;
        entry.2 += status.garbage_bytes;
        index += status.index_memory_bytes;
        needles += status.needles;
        if status.compacting {
            compacting += 1;
            copied += status.compaction_copied_bytes;
            total += status.compaction_total_bytes;
        }
    }
    for tier in [Tier::Hot, Tier::Warm, Tier::Cold] {
        for state in [
            "writable",
            "paused",
            "sealed",
            "compacting",
            "moving",
            "restoring",
        ] {
            let count = volumes.get(&(tier.as_str(), state)).copied().unwrap_or(0.0);
            metrics::gauge!("hayloft_volumes", "tier" => tier.as_str(), "state" => state)
                .set(count);
        }
        let (used, live, garbage) = per_tier.get(tier.as_str()).copied().unwrap_or_default();
        metrics::gauge!("hayloft_volume_used_bytes", "tier" => tier.as_str()).set(used as f64);
        metrics::gauge!("hayloft_volume_live_bytes", "tier" => tier.as_str()).set(live as f64);
        metrics::gauge!("hayloft_volume_garbage_bytes", "tier" => tier.as_str())
            .set(garbage as f64);
    }
    metrics::gauge!("hayloft_index_memory_bytes").set(index as f64);
    metrics::gauge!("hayloft_needles").set(needles as f64);
    metrics::gauge!("hayloft_compactions_running").set(compacting as f64);
    metrics::gauge!("hayloft_compaction_copied_bytes").set(copied as f64);
    metrics::gauge!("hayloft_compaction_total_bytes").set(total as f64);
}

/// Free space and the reserve per local tier, as last measured, and the
/// process's reads from storage.
pub fn update_disk_gauges(store: &hayloft_storage::Store) {
    update_process_io();
    for tier in [Tier::Hot, Tier::Warm] {
        metrics::gauge!("hayloft_disk_free_bytes", "tier" => tier.as_str())
            .set(crate::space::free(store, tier) as f64);
        metrics::gauge!("hayloft_disk_reserved_bytes", "tier" => tier.as_str())
            .set(crate::space::reserved(store, tier) as f64);
    }
}

/// Bytes this process made the kernel fetch from storage so far
/// (`read_bytes` of `/proc/self/io`: reads from disk, readahead and page
/// faults of the volume maps included; page-cache hits not), as
/// `hayloft_process_storage_read_bytes_total`. Compared with the reads
/// served, it says how many bytes the disk read per read.
pub fn update_process_io() {
    let Ok(io) = std::fs::read_to_string("/proc/self/io") else {
        return;
    };
    if let Some(bytes) = io
        .lines()
        .find_map(|line| line.strip_prefix("read_bytes:"))
        .and_then(|value| value.trim().parse::<u64>().ok())
    {
        metrics::counter!("hayloft_process_storage_read_bytes_total").absolute(bytes);
    }
}

/// Records a finished compaction.
pub fn compaction_finished(result: &Result<hayloft_storage::CompactReport, String>) {
    match result {
        Ok(report) => {
            metrics::counter!("hayloft_compactions_total", "result" => "ok").increment(1);
            metrics::counter!("hayloft_compaction_reclaimed_bytes_total")
                .increment(report.reclaimed());
        }
        Err(_) => metrics::counter!("hayloft_compactions_total", "result" => "error").increment(1),
    }
}

/// How long a replicated write waited, after its last byte, for its own
/// copy and every forwarded one (`hayloft_volume_replication_wait_seconds`).
pub fn replication_wait(waited: std::time::Duration) {
    ::metrics::histogram!("hayloft_volume_replication_wait_seconds").record(waited.as_secs_f64());
}
