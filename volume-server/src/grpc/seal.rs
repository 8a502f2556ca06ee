//! `SealCopy`: the directory's `SealVolume` makes each copy of a writable
//! volume read-only by hand (before an erasure-coded encode, which reads a
//! sealed copy). ARCHITECTURE.md, "Sealing a volume by hand".

#[allow(unused_imports)]
use super::*;

use hayloft_proto::{SealCopyRequest, SealCopyResponse, VolumeState};

/// How long a seal waits for the writes in flight on the copy to end.
const SEAL_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl VolumeService {
    /// Seals the copy of a volume held here:
    ///
    /// 1. New writes from clients are refused at once (as after a heartbeat
    ///    answer that says the volume is sealed).
    /// 2. The copy's writes in flight end (held new ones wait, up to
    ///    [`SEAL_DRAIN_TIMEOUT`]; ABORTED past it, nothing changed but 1).
    /// 3. `Volume::seal`: refuse every new record, sync, store `sealed` in
    ///    `<id>.meta` (temp, fsync, rename, fsync the directory).
    /// 4. The held writes go on and are refused as for any sealed volume;
    ///    the heartbeat is sent at once, reporting the copy sealed.
    pub(super) async fn seal_copy_inner(
        &self,
        request: Request<SealCopyRequest>,
    ) -> Result<Response<SealCopyResponse>, Status> {
        let id = VolumeId(request.into_inner().volume_id);
        let handle = self.store.handle(id).map_err(|e| grpc_status(&e, None))?;
        let volume = match handle {
            Handle::Local(volume) => volume,
            Handle::Cold(_) => {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is in the cold tier here: sealed already, nothing to seal"
                )));
            }
        };
        if self.tiering.volume_state(id, false) == VolumeState::Moving {
            return Err(Status::failed_precondition(format!(
                "volume {id} is moving between tiers here (a move seals it itself)"
            )));
        }
        if let Some(sealed_at) = volume.sealed_at() {
            return Ok(Response::new(SealCopyResponse {
                already_sealed: true,
                sealed_at,
                data_len: volume.data_len(),
            }));
        }
        self.replication.seal(id.0);
        let sealing = Arc::clone(&volume);
        blocking(move || -> Result<(), Error> {
            sealing.pause(SEAL_DRAIN_TIMEOUT)?;
            let sealed = sealing.seal();
            sealing.resume();
            sealed
        })
        .await?
        .map_err(|e| grpc_status(&e, None))?;
        tracing::info!(volume = %id, "copy sealed by hand");
        self.heartbeat_now.notify_one();
        Ok(Response::new(SealCopyResponse {
            already_sealed: false,
            sealed_at: volume.sealed_at().unwrap_or_else(unix_now),
            data_len: volume.data_len(),
        }))
    }
}
