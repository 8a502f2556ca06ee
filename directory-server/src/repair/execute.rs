//! One repair, against the volume servers: copy, settle, verify.

use std::time::Duration;

use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{
    MoveVolumeRequest, NeedleDigestsRequest, ServerLocation, SyncVolumeRequest, Tier,
};

use hayloft_storage::VolumeId;

use super::{RepairKind, RepairPlan, RepairSettings};
use crate::cluster::{Cluster, unix_now};

/// Anti-entropy's range size, for comparing digests after a repair.
const RANGE_BITS: u32 = 12;

/// A sync that sends no progress for this long has failed.
const SYNC_SILENCE: Duration = Duration::from_secs(300);

/// How long a move waits for the copies' servers to hear that the volume
/// takes no writes.
const SETTLE_WRITES: Duration = Duration::from_secs(30);

/// A client of the volume server at `location`, connected within 10 s.
pub(crate) async fn client(
    location: &ServerLocation,
    credential: &hayloft_proto::Credential,
) -> Result<VolumeClient<hayloft_proto::AuthChannel>, String> {
    let endpoint = credential
        .endpoint(&location.grpc_addr)
        .map_err(|e| e.message().to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = tokio::time::timeout(Duration::from_secs(10), endpoint.connect())
        .await
        .map_err(|_| format!("{} did not answer", location.server_id))?
        .map_err(|e| format!("{} unreachable: {e}", location.server_id))?;
    Ok(VolumeClient::new(credential.channel(channel)))
}

/// Runs `SyncVolume` on `target` from `sources` to the end.
async fn sync(
    target: &ServerLocation,
    sources: &[ServerLocation],
    plan: &RepairPlan,
    settings: &RepairSettings,
) -> Result<(), String> {
    let mut client = client(target, &settings.credential).await?;
    let mut stream = client
        .sync_volume(SyncVolumeRequest {
            volume_id: plan.volume_id.0,
            collection: plan.collection.clone(),
            tier: plan.tier as i32,
            sources: sources.to_vec(),
            bytes_per_sec: settings.bytes_per_sec,
        })
        .await
        .map_err(|e| format!("{}: {}", target.server_id, e.message()))?
        .into_inner();
    loop {
        let message = tokio::time::timeout(SYNC_SILENCE, stream.message())
            .await
            .map_err(|_| format!("{} sent no progress for {SYNC_SILENCE:?}", target.server_id))?
            .map_err(|e| format!("{}: {}", target.server_id, e.message()))?;
        let Some(progress) = message else {
            return Err(format!("{} ended the sync early", target.server_id));
        };
        if progress.done {
            if !progress.error.is_empty() {
                return Err(format!("{}: {}", target.server_id, progress.error));
            }
            if !progress.unreachable.is_empty() {
                return Err(format!(
                    "sources unreachable from {}: {:?}",
                    target.server_id, progress.unreachable
                ));
            }
            return Ok(());
        }
    }
}

async fn digests(
    location: &ServerLocation,
    volume_id: VolumeId,
    credential: &hayloft_proto::Credential,
) -> Result<Vec<(u64, u64, u64)>, String> {
    let mut client = client(location, credential).await?;
    let ranges = client
        .needle_digests(NeedleDigestsRequest {
            volume_id: volume_id.0,
            range_bits: RANGE_BITS,
        })
        .await
        .map_err(|e| format!("{}: {}", location.server_id, e.message()))?
        .into_inner()
        .ranges;
    Ok(ranges
        .into_iter()
        .map(|r| (r.start, r.count, r.hash))
        .collect())
}

/// Has the cold copy on `to` take the tombstones of the one on `from`.
async fn merge_cold(
    to: &ServerLocation,
    from: &ServerLocation,
    volume_id: VolumeId,
    credential: &hayloft_proto::Credential,
) -> Result<(), String> {
    client(to, credential)
        .await?
        .move_volume(MoveVolumeRequest {
            volume_id: volume_id.0,
            target: Tier::Cold as i32,
            share_cold_from: from.grpc_addr.clone(),
            ..MoveVolumeRequest::default()
        })
        .await
        .map_err(|e| format!("{}: {}", to.server_id, e.message()))?;
    Ok(())
}

/// Runs one repair: copy, settle, verify.
pub(super) async fn execute(plan: &RepairPlan, settings: RepairSettings) -> Result<(), String> {
    let target = &plan.target;
    if plan.kind.is_cold() {
        // The first call installs the copy if the target has none; every
        // call merges tombstones, both ways.
        for source in &plan.sources {
            merge_cold(target, source, plan.volume_id, &settings.credential).await?;
            merge_cold(source, target, plan.volume_id, &settings.credential).await?;
        }
        return Ok(());
    }
    for _round in 0..3 {
        sync(target, &plan.sources, plan, &settings).await?;
        if plan.kind == RepairKind::CatchUp {
            // Whatever only the target has (a write that reached it but was
            // never acknowledged) spreads to the others.
            for source in &plan.sources {
                sync(source, std::slice::from_ref(target), plan, &settings).await?;
            }
        }
        let want = digests(target, plan.volume_id, &settings.credential).await?;
        let mut equal = true;
        for source in &plan.sources {
            if digests(source, plan.volume_id, &settings.credential).await? != want {
                equal = false;
            }
        }
        if equal {
            return Ok(());
        }
        tracing::info!(volume = plan.volume_id.0, target = %target.server_id,
            "copies still differ after a sync (deletes meanwhile); syncing again");
    }
    Err("copies still differ after three syncs".into())
}

/// Before a copy moves: waits until every copy's server has heard that the
/// volume takes no writes (a heartbeat answered after the move's job was
/// committed), so the copies hold still while the new one is filled and
/// compared. A write that started before is settled by the syncs and the
/// digest comparison; one that lands later still is on the old copies and
/// reaches the new one by anti-entropy.
pub(super) async fn settle_writes(cluster: &Cluster, plan: &RepairPlan) -> Result<(), String> {
    let servers: Vec<String> = plan.sources.iter().map(|s| s.server_id.clone()).collect();
    if cluster
        .heard_from_since(&servers, unix_now(), SETTLE_WRITES)
        .await
    {
        Ok(())
    } else {
        Err(format!(
            "the copies' servers did not all send a heartbeat within {SETTLE_WRITES:?}"
        ))
    }
}
