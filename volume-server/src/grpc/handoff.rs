//! A copy replaced by an erasure-coded layout hands its deletes over to the
//! shard holders before its files go (`DeleteVolume` with
//! `erasure_holders`). The encode sent the holders the index as it was
//! when the shards were cut; a delete this copy took after that is only
//! here. So the copy stops taking deletes (the volume is paused: deletes
//! in flight finish, new ones wait and then fail over to the holders),
//! sends every tombstone it holds to every holder (`EcDelete`, batched, one
//! fsync a batch on each), and only once all of them have acknowledged are
//! its files deleted. If any holder cannot be reached, the copy resumes
//! and keeps its files: the directory retries later. The steps and what a
//! failure at each leaves are in ARCHITECTURE.md ("Erasure-coded volumes:
//! encoding", step 4).

#[allow(unused_imports)]
use super::*;

use std::time::Duration;

use hayloft_proto::EcDeleteRequest;

/// Tombstones sent in one `EcDelete` (8 bytes each: 512 KiB a message).
const HANDOFF_BATCH: usize = 64 * 1024;

/// How long the copy waits for the deletes and writes in flight to finish
/// before it gives up (and resumes) for this attempt.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

impl VolumeService {
    /// Sends one `EcDelete` to the holder at `addr`.
    pub(super) async fn send_ec_delete(
        &self,
        addr: &str,
        request: EcDeleteRequest,
    ) -> Result<(), Status> {
        let mut client = self.replication.client(&hayloft_proto::ServerLocation {
            server_id: addr.to_owned(),
            grpc_addr: addr.to_owned(),
            ..Default::default()
        })?;
        client.ec_delete(request).await.map(drop)
    }

    /// Pauses the copy of `id` held here and hands its tombstones to every
    /// holder of `holders`. On success the copy stays paused (the caller
    /// deletes it; a delete held by the pause then fails over); on failure
    /// it is resumed and the error names the holders not reached. A volume
    /// not held here as a copy has nothing to hand over.
    pub(super) async fn hand_over_deletes(
        &self,
        id: VolumeId,
        holders: &[String],
    ) -> Result<Option<Arc<hayloft_storage::Volume>>, Status> {
        let volume = match self.store.handle(id) {
            Ok(Handle::Local(volume)) => volume,
            Ok(Handle::Cold(_)) => {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is cold here: a cold copy is not replaced by shards"
                )));
            }
            Err(_) => return Ok(None),
        };
        let paused = Arc::clone(&volume);
        blocking(move || paused.pause(PAUSE_TIMEOUT))
            .await?
            .map_err(|e| {
                Status::unavailable(format!(
                    "volume {id}: could not stop its deletes to hand them over: {e}"
                ))
            })?;
        let tombstones: Vec<u64> = volume.deleted_ids().into_iter().map(|n| n.0).collect();
        let mut missed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for addr in holders
            .iter()
            .filter(|a| !a.is_empty() && seen.insert(a.as_str()))
        {
            for batch in tombstones.chunks(HANDOFF_BATCH) {
                let request = EcDeleteRequest {
                    volume_id: id.0,
                    needle_ids: batch.to_vec(),
                    ..Default::default()
                };
                if let Err(status) = self.send_ec_delete(addr, request).await {
                    tracing::warn!(volume = %id, holder = %addr, %status,
                        "tombstones not handed over to a shard holder");
                    missed.push(format!("{addr}: {}", status.message()));
                    break;
                }
            }
        }
        if !missed.is_empty() {
            volume.resume();
            return Err(Status::unavailable(format!(
                "volume {id}: its deletes did not reach every shard holder ({}); the copy is kept",
                missed.join("; ")
            )));
        }
        tracing::info!(volume = %id, tombstones = tombstones.len(), holders = seen.len(),
            "deletes handed over to the shard holders");
        Ok(Some(volume))
    }
}
