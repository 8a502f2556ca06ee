//! `ReencodeVolume` on the leader: an erasure-coded volume encoded again
//! without its deleted needles, so their space comes back. The steps, and
//! what a failure at each leaves, are in ARCHITECTURE.md ("Re-encoding an
//! erasure-coded volume without its deleted needles"):
//!
//! 1. **plan**: every holder alive (each takes the new generation); one
//!    target with room for the data file, a holder if one has room; a dry
//!    run ends here.
//! 2. **build** on the target (`EcDecode` BUILD, as a decode's): the data
//!    file restored from the shards and staged with the journals' deletes.
//! 3. **reencode** on the target (`EcDecode` REENCODE): the staged copy
//!    compacted and encoded under the same code onto the same holders as
//!    the next generation, staged beside the one served.
//! 4. **fence** every holder's client deletes (`EcFence`, one token).
//! 5. **journals**: every holder's journal read (after its fence) and the
//!    union journaled in every holder's staged generation (`EcDelete` with
//!    `staged`); every holder must take it.
//! 6. **check**: a holder kept its fence from 4 to now (as a decode's).
//! 7. **commit** `ErasureReencoded`, refused unless the recorded layout is
//!    still the one read at 1.
//! 8. **swap** on every holder (`EcSwap`: the new generation served, the
//!    old one's files gone; the new one is unfenced); then the target's
//!    staged copy removed.
//!
//! A failure before 7 drops the staged generation on every holder and the
//! target's staged copy and lifts the fences (best effort): the volume
//! stays as it was, served all along by its old generation.
//!
//! A re-encode is a job (kind `reencode`, [`super::jobs`]) committed
//! before step 2 with its target, fence token and the layout it read, and
//! ended once swapped or rolled back: a leader that dies leaves it to the
//! next, which rolls back one not committed ([`roll_back_job`]) and runs it
//! again, and swaps the holders of one committed ([`finish_job`]).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use hayloft_proto::{
    DecodeStep, DecodeVolumeProgress, EcDeleteRequest, EcDropRequest, EcJournalRequest,
    EcSwapRequest, ErasureLayout, ReencodePlan, ReencodeVolumeProgress, ReencodeVolumeRequest,
};
use hayloft_storage::VolumeId;
use hayloft_storage::erasure::EcManifest;
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tonic::Status;

use super::decode::Decode;
use super::encode::{EncodingGuard, end_job};
use crate::cluster::{Cluster, DecodeSource, stored_bytes};
use crate::db::RepairJobRow;
use crate::error::{Error, Result};
use crate::repair::volume_client;

type Progress = mpsc::Sender<Result<ReencodeVolumeProgress, Status>>;

/// What a planned re-encode does.
#[derive(Debug, Clone)]
pub struct PlannedReencode {
    /// The volume as the map has it, and the target (`targets[0]`).
    pub source: DecodeSource,
    /// What the plan is, as the caller sees it.
    pub plan: ReencodePlan,
}

/// Checks the volume and picks its target (nothing changes).
pub fn plan(cluster: &Cluster, request: &ReencodeVolumeRequest) -> Result<PlannedReencode> {
    let volume = VolumeId(request.volume_id);
    let source = cluster.reencode_source(volume)?;
    let plan = ReencodePlan {
        volume_id: request.volume_id,
        code: source.layout.code.clone(),
        holders: source.holders.iter().map(|(l, _)| l.clone()).collect(),
        target: source.targets.first().cloned(),
        logical_bytes: source.layout.data_len,
        stored_bytes: stored_bytes(&source.layout),
        deleted_bytes: cluster.deleted_bytes(volume),
    };
    Ok(PlannedReencode { source, plan })
}

/// Runs a planned re-encode to its end, sending progress to `progress` (a
/// caller that goes away does not stop it). The last message has the
/// bytes before and after, or is the error.
pub async fn run(
    cluster: Arc<Cluster>,
    planned: PlannedReencode,
    rate: u64,
    credential: hayloft_proto::Credential,
    progress: Progress,
    _guard: EncodingGuard,
) {
    let volume = planned.source.volume_id;
    let answer = match reencode(&cluster, &planned, rate, &credential, &progress).await {
        Ok(last) => Ok(last),
        Err(error) => {
            tracing::warn!(volume = volume.0, %error,
                "re-encode failed; the volume stays as it was");
            Err(Status::from(reencoded_error(error, volume)))
        }
    };
    let _ = progress.send(answer).await;
}

/// A decode step's error said as a re-encode's.
fn reencoded_error(error: Error, volume: VolumeId) -> Error {
    match error {
        Error::DecodeFailed {
            step,
            server,
            reason,
            code,
            ..
        } => Error::ReencodeFailed {
            volume,
            step: step.into(),
            server,
            reason,
            code,
        },
        e => e,
    }
}

/// The source a job's volume has now: its recorded layout's holders (all
/// taken as alive: a call to one that is down fails and is logged) and
/// the job's target.
fn job_source(
    cluster: &Cluster,
    job: &RepairJobRow,
    layout: hayloft_proto::ErasureLayout,
) -> DecodeSource {
    let known = |id: &String| cluster.server_location(id);
    DecodeSource {
        volume_id: job.volume_id(),
        holders: layout
            .holders
            .iter()
            .filter_map(known)
            .map(|location| (location, true))
            .collect(),
        targets: job.servers.iter().filter_map(known).collect(),
        layout,
        warnings: Vec::new(),
    }
}

/// Rolls back a re-encode a dead leader left uncommitted (`job`): every
/// holder's staged generation dropped, the target's staged copy removed,
/// the fences of its token lifted (best effort: a holder down keeps its
/// staged generation, which is never served and goes with the next
/// re-encode or drop there).
pub async fn roll_back_job(
    cluster: &Cluster,
    job: &RepairJobRow,
    credential: &hayloft_proto::Credential,
) {
    let Some(layout) = cluster.erasure_layout(job.volume_id()) else {
        return;
    };
    let source = job_source(cluster, job, layout);
    let (progress, _) = mpsc::channel(1);
    let run = job_run(&source, cluster, credential, &progress, job.rate);
    tracing::info!(volume = job.volume_id, target = %job.target,
        "rolling back a re-encode a dead leader left before its commit");
    roll_back(&run, Some(job.fence_token).filter(|t| *t != 0)).await;
}

/// Finishes a re-encode a dead leader committed (`job`; `layout` the one
/// recorded, its new generation): `EcSwap` on every holder (idempotent:
/// a holder swapped already answers so), the target's staged copy
/// removed, the job ended. A live holder whose swap fails keeps the job
/// open (the next round tries again); a holder down keeps its old
/// generation (see ARCHITECTURE.md).
pub async fn finish_job(
    cluster: &Cluster,
    job: &RepairJobRow,
    layout: &hayloft_proto::ErasureLayout,
    credential: &hayloft_proto::Credential,
) -> std::result::Result<(), String> {
    let source = job_source(cluster, job, layout.clone());
    let (progress, _) = mpsc::channel(1);
    let run = job_run(&source, cluster, credential, &progress, job.rate);
    tracing::info!(
        volume = job.volume_id,
        "finishing a re-encode a dead leader committed"
    );
    let (_, left) = swap(&run, &layout.digests).await;
    let failed: Vec<&String> = left
        .iter()
        .filter(|holder| cluster.server_alive(holder))
        .collect();
    if !failed.is_empty() {
        return Err(format!("holders {failed:?} not swapped yet"));
    }
    clean_target(&run).await;
    end_job(cluster, job).await;
    Ok(())
}

/// The steps' runner for a job's volume (its holders' addresses as the map
/// has them).
fn job_run<'a>(
    source: &'a DecodeSource,
    cluster: &'a Cluster,
    credential: &'a hayloft_proto::Credential,
    progress: &'a super::decode::Progress,
    rate: u64,
) -> Decode<'a> {
    Decode {
        cluster,
        source,
        credential,
        progress,
        holders: source
            .holders
            .iter()
            .map(|(l, _)| l.grpc_addr.clone())
            .collect(),
        rate,
        code: source.layout.code.clone(),
        max_block: source.layout.block_len,
        cold: None,
    }
}

/// Step 8's `EcSwap` on every holder: those swapped (or swapped already),
/// and those left.
async fn swap(run: &Decode<'_>, digests: &[u32]) -> (Vec<String>, Vec<String>) {
    let volume = run.source.volume_id;
    let (mut swapped, mut left) = (Vec::new(), Vec::new());
    for (holder, _) in distinct(run.source) {
        run.say("swap", &holder.server_id).await;
        let answer = async {
            volume_client(&holder, run.credential)
                .await
                .map_err(Status::unavailable)?
                .ec_swap(EcSwapRequest {
                    volume_id: volume.0,
                    digests: digests.to_vec(),
                })
                .await
        }
        .await;
        match answer {
            Ok(_) => swapped.push(holder.server_id.clone()),
            Err(status) => {
                tracing::warn!(volume = volume.0, holder = %holder.server_id, %status,
                    "new generation not served there yet");
                left.push(holder.server_id.clone());
            }
        }
    }
    (swapped, left)
}

/// The union of every holder's journal, read now (after their fence):
/// the needles, and the holders read.
async fn journals(run: &Decode<'_>) -> Result<(BTreeSet<u64>, Vec<String>)> {
    let volume = run.source.volume_id;
    let mut union = BTreeSet::new();
    let mut read = Vec::new();
    for (holder, _) in distinct(run.source) {
        let tombstones = async {
            volume_client(&holder, run.credential)
                .await
                .map_err(Status::unavailable)?
                .ec_journal(EcJournalRequest {
                    volume_id: volume.0,
                })
                .await
                .map(|r| r.into_inner().tombstones)
        }
        .await
        .map_err(|status| run.failed("journals", &holder.server_id, &status))?;
        union.extend(
            hayloft_storage::sealed::parse_tombs(&tombstones)
                .into_iter()
                .map(|n| n.0),
        );
        read.push(holder.server_id.clone());
    }
    Ok((union, read))
}

/// Each holder once, in shard order.
fn distinct(source: &DecodeSource) -> Vec<(hayloft_proto::ServerLocation, bool)> {
    let mut seen = HashSet::new();
    source
        .holders
        .iter()
        .filter(|(h, _)| seen.insert(h.server_id.clone()))
        .cloned()
        .collect()
}

/// Best effort after a failure before the commit: the staged generation
/// dropped on every holder, the target's staged copy removed, the fences
/// lifted.
async fn roll_back(run: &Decode<'_>, token: Option<u64>) {
    let volume = run.source.volume_id;
    for (holder, _) in distinct(run.source) {
        let dropped = async {
            volume_client(&holder, run.credential)
                .await
                .map_err(Status::unavailable)?
                .ec_drop(EcDropRequest {
                    volume_id: volume.0,
                    staged: true,
                })
                .await
        }
        .await;
        if let Err(status) = dropped {
            tracing::warn!(volume = volume.0, holder = %holder.server_id, %status,
                "staged generation not dropped (the next re-encode there replaces it)");
        }
    }
    clean_target(run).await;
    if let Some(token) = token {
        run.fence(token, true).await;
    }
}

/// The target's staged copy removed (best effort).
async fn clean_target(run: &Decode<'_>) {
    for target in &run.source.targets {
        if let Err(error) = run.on_target(target, DecodeStep::Abort, "clean").await {
            tracing::warn!(volume = run.source.volume_id.0, target = %target.server_id,
                %error, "staged copy not removed (removed by the next decode there)");
        }
    }
}

/// Steps 2-6; answers the new generation's manifest and live needles.
async fn prepare(run: &Decode<'_>, token: u64) -> Result<(EcManifest, u64)> {
    let volume = run.source.volume_id;
    let Some(target) = run.source.targets.first() else {
        return Err(Error::NotReencodable {
            volume,
            why: "no target".into(),
        });
    };
    // Step 2.
    let built = run.on_target(target, DecodeStep::Build, "build").await?;
    tracing::info!(volume = volume.0, target = %target.server_id, needles = built.needles,
        deleted = built.deleted, "data file rebuilt and staged for a re-encode");
    // Step 3.
    let encoded = run
        .on_target(target, DecodeStep::Reencode, "reencode")
        .await?;
    let manifest = EcManifest::decode(&encoded.manifest, std::path::Path::new("<new manifest>"))
        .map_err(|e| {
            run.failed(
                "reencode",
                &target.server_id,
                &Status::internal(e.to_string()),
            )
        })?;
    // Step 4.
    run.say("fence", "").await;
    let fenced = run.fence(token, false).await;
    if fenced.len() < distinct(run.source).len() {
        return Err(run.failed(
            "fence",
            "",
            &Status::unavailable("a holder could not be fenced"),
        ));
    }
    // Step 5.
    run.say("journals", "").await;
    let (deleted, _) = journals(run).await?;
    let needle_ids: Vec<u64> = deleted.into_iter().collect();
    for (holder, _) in distinct(run.source) {
        async {
            volume_client(&holder, run.credential)
                .await
                .map_err(Status::unavailable)?
                .ec_delete(EcDeleteRequest {
                    volume_id: volume.0,
                    needle_id: 0,
                    needle_ids: needle_ids.clone(),
                    staged: true,
                })
                .await
        }
        .await
        .map_err(|status| run.failed("journals", &holder.server_id, &status))?;
    }
    // Step 6.
    let kept = run
        .fence(token, false)
        .await
        .into_iter()
        .any(|(_, held)| held);
    if !kept {
        return Err(run.failed(
            "fence",
            "",
            &Status::unavailable(
                "no holder kept its fence until the journals were read (restarted?)",
            ),
        ));
    }
    Ok((manifest, encoded.needles))
}

/// Steps 2-8 (see the module's doc).
async fn reencode(
    cluster: &Cluster,
    planned: &PlannedReencode,
    rate: u64,
    credential: &hayloft_proto::Credential,
    progress: &Progress,
) -> Result<ReencodeVolumeProgress> {
    let source = &planned.source;
    let volume = source.volume_id;
    // The decode's steps report as a decode does: said again as ours.
    let (decode_tx, mut decode_rx) = mpsc::channel::<Result<DecodeVolumeProgress, Status>>(16);
    let forward = progress.clone();
    let forwarding = tokio::spawn(async move {
        while let Some(Ok(step)) = decode_rx.recv().await {
            let _ = forward
                .send(Ok(ReencodeVolumeProgress {
                    step: step.step,
                    server_id: step.server_id,
                    done: step.done,
                    total: step.total,
                    ..ReencodeVolumeProgress::default()
                }))
                .await;
        }
    });
    let result = steps(cluster, planned, rate, credential, &decode_tx).await;
    drop(decode_tx);
    let _ = forwarding.await;
    let (new, needles, swapped, left) = result?;
    tracing::info!(
        volume = volume.0,
        before = source.layout.data_len,
        after = new.data_len,
        "volume re-encoded without its deleted needles"
    );
    Ok(ReencodeVolumeProgress {
        step: "done".into(),
        logical_before: source.layout.data_len,
        logical_after: new.data_len,
        stored_before: stored_bytes(&source.layout),
        stored_after: stored_bytes(&new),
        needles,
        swapped,
        left,
        ..ReencodeVolumeProgress::default()
    })
}

/// What a re-encode ends with: the new layout, live needles, the holders
/// swapped and those left.
type Finished = (ErasureLayout, u64, Vec<String>, Vec<String>);

async fn steps(
    cluster: &Cluster,
    planned: &PlannedReencode,
    rate: u64,
    credential: &hayloft_proto::Credential,
    progress: &super::decode::Progress,
) -> Result<Finished> {
    let source = &planned.source;
    let volume = source.volume_id;
    let run = Decode {
        cluster,
        source,
        credential,
        progress,
        holders: source
            .holders
            .iter()
            .map(|(l, _)| l.grpc_addr.clone())
            .collect(),
        rate,
        code: source.layout.code.clone(),
        max_block: source.layout.block_len,
        cold: None,
    };
    let token: u64 = rand::rng().random::<u64>().max(1);
    // The job first: a leader that dies from here on leaves it to the next
    // (`super::jobs`), which rolls back with this token (the recorded layout
    // still the one read) or swaps the holders (another one recorded).
    let job = RepairJobRow {
        volume_id: volume.0,
        target: source
            .targets
            .first()
            .map(|t| t.server_id.clone())
            .unwrap_or_default(),
        kind: super::jobs::REENCODE_KIND.to_owned(),
        started_at: crate::cluster::unix_now(),
        rate,
        fence_token: token,
        servers: source.targets.iter().map(|t| t.server_id.clone()).collect(),
        layout: source.layout.encode_to_vec(),
        ..RepairJobRow::default()
    };
    cluster.start_repair(job.clone()).await?;
    let (manifest, needles) = match prepare(&run, token).await {
        Ok(done) => done,
        Err(error) => {
            roll_back(&run, Some(token)).await;
            end_job(cluster, &job).await;
            return Err(error);
        }
    };
    hayloft_storage::failpoint::abort_at("reencode-before-commit");
    // Step 7.
    run.say("commit", "").await;
    let new = ErasureLayout {
        code: manifest.code.clone(),
        data_len: manifest.data_len,
        block_len: manifest.block_len,
        holders: source.layout.holders.clone(),
        digests: manifest.digests.clone(),
        encoded_at: manifest.encoded_at,
    };
    match cluster
        .erasure_reencoded(volume, &source.layout, &new)
        .await
    {
        Ok(()) => {}
        Err(error @ Error::Refused(_)) => {
            roll_back(&run, Some(token)).await;
            end_job(cluster, &job).await;
            return Err(error);
        }
        // The entry may yet commit under another leader: the staged
        // generations stay (see ARCHITECTURE.md), and so do the fences and
        // the job (the next leader rolls back or swaps).
        Err(error) => return Err(error),
    }
    hayloft_storage::failpoint::abort_at("reencode-after-commit");
    // Step 8.
    let (swapped, left) = swap(&run, &manifest.digests).await;
    run.say("clean", "").await;
    clean_target(&run).await;
    if left.iter().any(|holder| cluster.server_alive(holder)) {
        // A live holder not swapped keeps its fence (no delete is
        // acknowledged on the old generation) and the job stays open: the
        // next round swaps it (`super::jobs`).
        tracing::warn!(volume = volume.0, left = ?left,
            "holders still serve the old generation; the job stays open to swap them");
    } else {
        if !left.is_empty() {
            tracing::warn!(volume = volume.0, left = ?left,
                "holders down keep the old generation");
        }
        end_job(cluster, &job).await;
    }
    Ok((new, needles, swapped, left))
}
