//! `SealVolume` on the leader: a writable volume sealed by hand, so that it
//! can be erasure-coded (`hayloft tier ec` seals first). The steps and what
//! a failure at each leaves are in ARCHITECTURE.md ("Sealing a volume by
//! hand").

use std::time::{Duration, Instant};

use futures::future::join_all;
use hayloft_proto::{SealCopyRequest, SealVolumeResponse};
use hayloft_storage::VolumeId;

use crate::cluster::{Cluster, SealStart};
use crate::error::{Error, Result};
use crate::repair::volume_client;

/// How often the wait for the copies' reports looks at the map.
const REPORT_POLL: Duration = Duration::from_millis(50);

/// Seals `volume`:
///
/// 1. Check (under the map's lock): known, not cold, moving or restoring,
///    a copy on a live server. Sealed in the map with every live copy
///    reporting it sealed: done, nothing changes.
/// 2. Commit the volume sealed through Raft (if the map has it writable):
///    from here no id is handed out in it, and every heartbeat answer tells
///    its copies it is sealed.
/// 3. `SealCopy` on every live copy at once: each refuses new writes,
///    lets those in flight end, seals durably, and heartbeats.
/// 4. Wait (up to `patience`) until every live copy has reported the
///    volume sealed, so that an encode asked for next finds a sealed copy.
pub async fn seal_volume(
    cluster: &Cluster,
    volume: VolumeId,
    credential: &hayloft_proto::Credential,
    patience: Duration,
) -> Result<SealVolumeResponse> {
    let (commit, live, down) = match cluster.seal_start(volume)? {
        SealStart::AlreadySealed => {
            return Ok(SealVolumeResponse {
                already_sealed: true,
                ..SealVolumeResponse::default()
            });
        }
        SealStart::Seal { commit, live, down } => (commit, live, down),
    };
    if let Some(tier) = commit {
        cluster.commit_sealed(volume, tier).await?;
        tracing::info!(
            volume = volume.0,
            "volume sealed in the map; sealing its copies"
        );
    }
    let sealed = join_all(live.iter().map(|copy| async move {
        let failed = |reason: String, code: tonic::Code| Error::SealFailed {
            volume,
            server: copy.server_id.clone(),
            reason,
            code,
        };
        let mut client = volume_client(copy, credential)
            .await
            .map_err(|reason| failed(reason, tonic::Code::Unavailable))?;
        client
            .seal_copy(SealCopyRequest {
                volume_id: volume.0,
            })
            .await
            .map_err(|s| failed(s.message().to_owned(), s.code()))?;
        Ok::<_, Error>(copy.server_id.clone())
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<String>>>()?;
    let started = Instant::now();
    loop {
        let waiting = cluster.seal_unreported(volume, &sealed);
        if waiting.is_empty() {
            break;
        }
        if started.elapsed() >= patience {
            return Err(Error::SealNotReported {
                volume,
                waiting: waiting.join(", "),
                waited: patience,
            });
        }
        tokio::time::sleep(REPORT_POLL).await;
    }
    tracing::info!(volume = volume.0, copies = ?sealed, down = ?down, "volume sealed by hand");
    Ok(SealVolumeResponse {
        already_sealed: false,
        sealed,
        left: down,
    })
}
