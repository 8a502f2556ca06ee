//! `EncodeVolume` on the leader: plan where the shards go, have a live
//! copy's server encode them onto their holders (`EcEncode`), commit the
//! layout through Raft, and only then remove the copies. The steps and
//! what a failure at each leaves are in ARCHITECTURE.md ("Erasure-coded
//! volumes: encoding").

use std::collections::HashSet;
use std::sync::Arc;

use hayloft_proto::{
    DeleteVolumeRequest, EcDropRequest, EcEncodeRequest, EncodePlan, EncodeVolumeProgress,
    EncodeVolumeRequest, ErasureLayout, ServerLocation,
};
use hayloft_storage::VolumeId;
use hayloft_storage::erasure::{Code, EcManifest, Layout};
use tokio::sync::mpsc;
use tonic::Status;

use super::placement::place_shards;
use crate::cluster::{Cluster, EncodeSource, unix_now};
use crate::db::RepairJobRow;
use crate::error::{Error, Result};
use crate::repair::volume_client;

/// Largest block of a shard when the request names none (the volume
/// server's own default).
const DEFAULT_MAX_BLOCK: u64 = hayloft_storage::erasure::MAX_BLOCK_LEN;

/// What a planned encode does.
#[derive(Debug, Clone)]
pub struct PlannedEncode {
    /// Where it starts from.
    pub source: EncodeSource,
    /// The code.
    pub code: Code,
    /// Largest block asked for.
    pub max_block: u64,
    /// The holder of each shard, shard by shard.
    pub holders: Vec<ServerLocation>,
    /// What the plan is, as the caller sees it.
    pub plan: EncodePlan,
}

/// Volumes being encoded by this node: a second encode of one is refused
/// while the first runs.
#[derive(Debug, Default)]
pub struct Encoding(parking_lot::Mutex<HashSet<VolumeId>>);

/// Holds a volume in [`Encoding`] until dropped.
pub struct EncodingGuard {
    encoding: Arc<Encoding>,
    volume: VolumeId,
}

impl Encoding {
    /// True while this node encodes `volume`.
    pub fn contains(&self, volume: VolumeId) -> bool {
        self.0.lock().contains(&volume)
    }

    /// Marks `volume` as being encoded, or refuses if it already is.
    pub fn start(self: &Arc<Self>, volume: VolumeId) -> Result<EncodingGuard> {
        if !self.0.lock().insert(volume) {
            return Err(Error::NotEncodable {
                volume,
                why: "an encode of it is under way".into(),
            });
        }
        Ok(EncodingGuard {
            encoding: Arc::clone(self),
            volume,
        })
    }
}

impl Drop for EncodingGuard {
    fn drop(&mut self) {
        self.encoding.0.lock().remove(&self.volume);
    }
}

/// Checks the volume and places its shards (nothing changes).
pub fn plan(
    cluster: &Cluster,
    request: &EncodeVolumeRequest,
    default_code: Code,
) -> Result<PlannedEncode> {
    let code = if request.code.is_empty() {
        default_code
    } else {
        request
            .code
            .parse::<Code>()
            .map_err(|e| Error::BadCode(e.to_string()))?
    };
    let volume_id = VolumeId(request.volume_id);
    let source = cluster.encode_source(volume_id, request.dry_run)?;
    let max_block = if request.max_block == 0 {
        DEFAULT_MAX_BLOCK
    } else {
        request.max_block
    };
    let layout = Layout::plan(code, source.data_len, max_block);
    let shard_plan = place_shards(
        &source.candidates,
        code,
        layout.body_len(),
        u64::from(volume_id.0),
    )
    .map_err(|e| Error::NotEncodable {
        volume: volume_id,
        why: e.to_string(),
    })?;
    let holders: Vec<ServerLocation> = shard_plan
        .holders
        .iter()
        .map(|id| {
            cluster
                .server_location(id)
                .ok_or_else(|| Error::UnexpectedAnswer(format!("placed on unknown server {id}")))
        })
        .collect::<Result<_>>()?;
    let plan = EncodePlan {
        volume_id: volume_id.0,
        code: code.to_string(),
        source: Some(source.source.clone()),
        holders: holders.clone(),
        warnings: writable_warning(&source)
            .into_iter()
            .chain(shard_plan.warnings)
            .collect(),
        copies: source
            .copies
            .iter()
            .map(|(l, _)| l.server_id.clone())
            .collect(),
        logical_bytes: source.data_len,
        stored_bytes: layout.stored_len(),
    };
    Ok(PlannedEncode {
        source,
        code,
        max_block,
        holders,
        plan,
    })
}

/// A dry run's word on a writable volume: the plan is of the data file as
/// its server last reported it, and the volume must be sealed first.
fn writable_warning(source: &EncodeSource) -> Option<String> {
    source.writable.then(|| {
        format!(
            "volume {} is writable: it must be sealed before it is encoded \
             (`hayloft tier ec` seals it; the plan is of its data file as last reported)",
            source.volume_id
        )
    })
}

/// The job committed before an encode's first step, so that a new leader
/// runs it again if this one dies before the commit (`super::jobs`).
fn job_of(planned: &PlannedEncode, rate: u64) -> RepairJobRow {
    RepairJobRow {
        volume_id: planned.source.volume_id.0,
        target: planned.source.source.server_id.clone(),
        kind: super::jobs::ENCODE_KIND.to_owned(),
        started_at: unix_now(),
        code: planned.code.to_string(),
        max_block: planned.max_block,
        rate,
        servers: planned
            .holders
            .iter()
            .map(|h| h.server_id.clone())
            .collect(),
        ..RepairJobRow::default()
    }
}

/// Runs a planned encode to its end, sending progress to `progress` (a
/// caller that went away does not stop it: the copies are removed once the
/// layout is committed whether anyone listens or not). The last message
/// is the layout and the copies removed, or the error.
///
/// The job is committed first and ended once the layout is committed (the
/// copies are then removed here, or as leftovers by any leader) or the
/// encode failed and its shards were dropped. A commit whose outcome is
/// unknown (leadership lost) leaves the job for the next leader to decide.
pub async fn run(
    cluster: Arc<Cluster>,
    planned: PlannedEncode,
    rate: u64,
    credential: hayloft_proto::Credential,
    progress: mpsc::Sender<Result<EncodeVolumeProgress, Status>>,
    _guard: EncodingGuard,
) {
    let volume = planned.source.volume_id;
    let job = job_of(&planned, rate);
    let outcome = match cluster.start_repair(job.clone()).await {
        Ok(()) => encode(&cluster, &planned, rate, &credential, &progress).await,
        Err(error) => Err(error),
    };
    let answer = match outcome {
        Ok(layout) => {
            hayloft_storage::failpoint::abort_at("encode-after-commit");
            end_job(&cluster, &job).await;
            tracing::info!(volume = volume.0, code = %planned.code, "volume erasure-coded; removing its copies");
            let holders: Vec<String> = planned
                .holders
                .iter()
                .map(|h| h.grpc_addr.clone())
                .collect();
            let (removed, left) =
                remove_copies(&cluster, &planned.source, &holders, &credential).await;
            Ok(EncodeVolumeProgress {
                layout: Some(layout),
                removed,
                left,
                ..EncodeVolumeProgress::default()
            })
        }
        Err(Error::CommitUnknown(error)) => {
            tracing::warn!(volume = volume.0, %error,
                "erasure coding: the layout's commit failed and may yet apply; the next leader decides (its job stays open)");
            Err(Status::unavailable(format!(
                "volume {volume}: the layout's commit failed ({error}); the leader that follows finishes or runs the encode again"
            )))
        }
        Err(error) => {
            tracing::warn!(volume = volume.0, %error, "erasure coding failed; the volume stays replicated");
            end_job(&cluster, &job).await;
            Err(Status::from(error))
        }
    };
    let _ = progress.send(answer).await;
}

/// Ends an encode's or decode's job (logged if it cannot: the next leader
/// ends it, as it finds the result committed or runs it again).
pub(super) async fn end_job(cluster: &Cluster, job: &RepairJobRow) {
    if let Err(error) = cluster.end_repair(job.volume_id(), &job.target).await {
        tracing::warn!(volume = job.volume_id, kind = %job.kind, %error,
            "could not end the job (the next leader will)");
    }
}

/// Steps 1-3: encode, check the manifest, commit the layout. An encode
/// that fails drops whatever the holders got; a commit that fails leaves
/// them (it may have committed: see ARCHITECTURE.md).
async fn encode(
    cluster: &Cluster,
    planned: &PlannedEncode,
    rate: u64,
    credential: &hayloft_proto::Credential,
    progress: &mpsc::Sender<Result<EncodeVolumeProgress, Status>>,
) -> Result<ErasureLayout> {
    let volume = planned.source.volume_id;
    let source = &planned.source.source;
    let failed = |reason: String, code: tonic::Code| Error::EncodeFailed {
        volume,
        server: source.server_id.clone(),
        reason,
        code,
    };
    let encoded = async {
        let mut client = volume_client(source, credential)
            .await
            .map_err(|reason| failed(reason, tonic::Code::Unavailable))?;
        let mut stream = client
            .ec_encode(EcEncodeRequest {
                volume_id: volume.0,
                code: planned.code.to_string(),
                max_block: planned.max_block,
                holders: planned
                    .holders
                    .iter()
                    .map(|h| h.grpc_addr.clone())
                    .collect(),
                rate,
            })
            .await
            .map_err(|s| failed(s.message().to_owned(), s.code()))?
            .into_inner();
        loop {
            let message = stream
                .message()
                .await
                .map_err(|s| failed(s.message().to_owned(), s.code()))?
                .ok_or_else(|| {
                    failed(
                        "the encode ended without a manifest".into(),
                        tonic::Code::Unavailable,
                    )
                })?;
            if !message.manifest.is_empty() {
                return EcManifest::decode(&message.manifest, "<EcEncode answer>".as_ref())
                    .map_err(|e| failed(e.to_string(), tonic::Code::Internal));
            }
            let _ = progress
                .send(Ok(EncodeVolumeProgress {
                    done: message.done,
                    total: message.total,
                    ..EncodeVolumeProgress::default()
                }))
                .await;
        }
    }
    .await;
    let manifest = match encoded {
        Ok(manifest) if manifest.digests.len() == planned.holders.len() => manifest,
        Ok(manifest) => {
            drop_shards(volume, &planned.holders, credential).await;
            return Err(failed(
                format!(
                    "the manifest names {} shards, not {}",
                    manifest.digests.len(),
                    planned.holders.len()
                ),
                tonic::Code::Internal,
            ));
        }
        Err(error) => {
            drop_shards(volume, &planned.holders, credential).await;
            return Err(error);
        }
    };
    let layout = ErasureLayout {
        code: manifest.code,
        data_len: manifest.data_len,
        block_len: manifest.block_len,
        holders: planned
            .holders
            .iter()
            .map(|h| h.server_id.clone())
            .collect(),
        digests: manifest.digests,
        encoded_at: if manifest.encoded_at == 0 {
            unix_now()
        } else {
            manifest.encoded_at
        },
    };
    hayloft_storage::failpoint::abort_at("encode-before-commit");
    match cluster.erasure_encoded(volume, layout.clone()).await {
        Ok(()) => Ok(layout),
        Err(error @ Error::Refused(_)) => Err(error),
        Err(error) => Err(Error::CommitUnknown(error.to_string())),
    }
}

/// Best effort after a failed encode: every holder drops what it got (a
/// holder that cannot be reached keeps shard files without a manifest,
/// which count for nothing and are written over by the next encode).
async fn drop_shards(
    volume: VolumeId,
    holders: &[ServerLocation],
    credential: &hayloft_proto::Credential,
) {
    let mut seen = HashSet::new();
    for holder in holders.iter().filter(|h| seen.insert(h.server_id.clone())) {
        let dropped = async {
            volume_client(holder, credential)
                .await?
                .ec_drop(EcDropRequest {
                    volume_id: volume.0,
                    staged: false,
                })
                .await
                .map_err(|s| s.message().to_owned())
        }
        .await;
        if let Err(error) = dropped {
            tracing::warn!(volume = volume.0, holder = %holder.server_id, %error,
                "could not drop the shards of a failed encode");
        }
    }
}

/// Step 4, after the commit: each copy on a live server hands its deletes
/// to the shard holders (`holders`, gRPC addresses) and is deleted there,
/// then leaves the replica set; a copy whose server is down (or whose
/// hand-over or deletion failed) leaves the set too, and is removed as an
/// extra copy, with the same hand-over, when its server reports it.
/// Answers the copies removed and those left for later.
async fn remove_copies(
    cluster: &Cluster,
    source: &EncodeSource,
    holders: &[String],
    credential: &hayloft_proto::Credential,
) -> (Vec<String>, Vec<String>) {
    let volume = source.volume_id;
    let (mut removed, mut left) = (Vec::new(), Vec::new());
    for (copy, alive) in &source.copies {
        let deleted = if *alive {
            async {
                volume_client(copy, credential)
                    .await?
                    .delete_volume(DeleteVolumeRequest {
                        volume_id: volume.0,
                        keep_object: false,
                        erasure_holders: holders.to_vec(),
                    })
                    .await
                    .map_err(|s| s.message().to_owned())
            }
            .await
            .map(drop)
        } else {
            Err("its server is down".to_owned())
        };
        if let Err(error) = &deleted {
            tracing::warn!(volume = volume.0, server = %copy.server_id, %error,
                "copy of an erasure-coded volume not deleted now; removed once its server reports it");
        }
        match cluster.remove_replica(volume, &copy.server_id).await {
            Ok(()) if deleted.is_ok() => {
                cluster.extra_removed(volume, &copy.server_id);
                removed.push(copy.server_id.clone());
            }
            Ok(()) => left.push(copy.server_id.clone()),
            Err(error) => {
                tracing::warn!(volume = volume.0, server = %copy.server_id, %error,
                    "copy of an erasure-coded volume could not leave its replica set");
                left.push(copy.server_id.clone());
            }
        }
    }
    (removed, left)
}
