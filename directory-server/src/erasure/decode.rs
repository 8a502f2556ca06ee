//! `DecodeVolume` on the leader: an erasure-coded volume turned back into
//! a replicated sealed volume. The steps, and what a failure at each
//! leaves, are in ARCHITECTURE.md ("Decoding an erasure-coded volume"):
//!
//! 1. **plan**: the copies placed as any volume's (replication factor,
//!    zones then racks); a dry run ends here.
//! 2. **build** on each target (`EcDecode` BUILD): the data file restored
//!    from the shards, checked against the manifest's digests, staged with
//!    the deletes of the journals of the holders reached; not served.
//! 3. **fence**: every live holder refuses client deletes (`EcFence`, one
//!    token). A delete is acknowledged only once *every* holder journaled
//!    it, so from the first fence on none is acknowledged any more.
//! 4. **journals** on each target (`EcDecode` JOURNALS): every fenced
//!    holder's journal read again and applied. Each target must have read
//!    every fenced holder's journal.
//! 5. **check**: at least one holder answers that the fence of step 3 is
//!    still in place (fences live in memory: a holder that restarted lost
//!    its). That holder refused every delete since step 3, so no delete
//!    was acknowledged after the journals were read; every delete
//!    acknowledged before is in its journal (a delete is acknowledged only
//!    once every holder has it), which every target read. Hence no
//!    acknowledged delete is missing from the copies, even with holders
//!    down.
//! 6. **commit** `ErasureDecoded`: the layout leaves the row, the targets
//!    become the replica set.
//! 7. **activate** each staged copy (`EcDecode` ACTIVATE); a target that
//!    misses it serves its copy when a heartbeat answer names it a replica.
//! 8. **drop** the shards (`EcDrop`), only once every copy is served; a
//!    holder down keeps its shards (an orphan, see [`orphan_note`]).
//!
//! A failure before step 6 removes the staged copies and lifts the fences
//! (best effort): the volume stays erasure-coded as it was.
//!
//! **To the cold tier** (`DecodeVolume` with a `cold_bucket`; ARCHITECTURE.md,
//! "Erasure-coded volumes to the cold tier"), the same steps with one data
//! file for all the targets: step 2 builds it on the first target only,
//! which uploads it as one object (`EcDecode` UPLOAD: multipart, verified by
//! length and ETag, exactly as a replicated volume's move to cold) and keeps
//! it as a staged cold copy; step 4 applies the journals to that cold copy
//! (its `.tomb`); after step 5 every other target stages a cold copy of the
//! same object from it (`EcDecode` SHARE_COLD, the object checked again);
//! step 6 commits `ErasureToCold` (the volume cold, the targets its cold
//! copies); 7 and 8 as above. A rollback's ABORT also deletes the object.

use std::collections::HashSet;
use std::sync::Arc;

use hayloft_proto::{
    DecodePlan, DecodeStep, DecodeVolumeProgress, DecodeVolumeRequest, EcDecodeProgress,
    EcDecodeRequest, EcDropRequest, EcFenceRequest, ServerLocation,
};
use hayloft_storage::VolumeId;
use rand::Rng;
use tokio::sync::mpsc;
use tonic::Status;

use super::encode::{EncodingGuard, end_job};
use crate::cluster::{Cluster, DecodeSource};
use crate::db::RepairJobRow;
use crate::error::{Error, Result};
use crate::repair::volume_client;

pub(super) type Progress = mpsc::Sender<Result<DecodeVolumeProgress, Status>>;

/// What a planned decode does.
#[derive(Debug, Clone)]
pub struct PlannedDecode {
    /// The volume as the map has it, and the copies placed.
    pub source: DecodeSource,
    /// What the plan is, as the caller sees it.
    pub plan: DecodePlan,
    /// To the cold tier instead of local copies (see the module's doc).
    pub cold: Option<ColdTarget>,
}

/// Where a move to cold puts the volume's object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdTarget {
    /// The bucket.
    pub bucket: String,
    /// The key prefix.
    pub prefix: String,
    /// The storage class (`STANDARD` if the request named none).
    pub storage_class: String,
}

/// Checks the volume and places its copies (nothing changes).
pub fn plan(cluster: &Cluster, request: &DecodeVolumeRequest) -> Result<PlannedDecode> {
    let cold = (!request.cold_bucket.is_empty()).then(|| ColdTarget {
        bucket: request.cold_bucket.clone(),
        prefix: request.cold_prefix.clone(),
        storage_class: if request.cold_storage_class.is_empty() {
            "STANDARD".to_owned()
        } else {
            request.cold_storage_class.clone()
        },
    });
    if request.cold_bucket.is_empty()
        && !(request.cold_prefix.is_empty() && request.cold_storage_class.is_empty())
    {
        return Err(Error::NotDecodable {
            volume: VolumeId(request.volume_id),
            why: "a move to cold needs a bucket".into(),
        });
    }
    let source = cluster.decode_source(VolumeId(request.volume_id))?;
    let plan = DecodePlan {
        volume_id: request.volume_id,
        code: source.layout.code.clone(),
        holders: source.holders.iter().map(|(l, _)| l.clone()).collect(),
        holders_down: source
            .holders
            .iter()
            .filter(|(_, alive)| !alive)
            .map(|(l, _)| l.server_id.clone())
            .collect(),
        targets: source.targets.clone(),
        warnings: source.warnings.clone(),
        logical_bytes: source.layout.data_len,
        cold_bucket: cold.as_ref().map(|c| c.bucket.clone()).unwrap_or_default(),
        cold_storage_class: cold
            .as_ref()
            .map(|c| c.storage_class.clone())
            .unwrap_or_default(),
    };
    Ok(PlannedDecode { source, plan, cold })
}

/// The note left for a holder whose shards could not be dropped: the
/// volume is replicated now, so its shards are an orphan. Dropping
/// orphans when their holder returns is not built yet: the hook is the
/// holder's heartbeat (it reports no shards; the directory would compare
/// the `.ecm` files a holder keeps with the layouts it records and send
/// `EcDrop` for those of a replicated volume, after merging the orphan's
/// journal into the copies).
pub fn orphan_note(volume: VolumeId, holder: &str) -> String {
    format!(
        "{holder}: shards of volume {volume} left (holder down); drop them with EcDrop when it returns"
    )
}

/// Rolls back a decode a dead leader left uncommitted (`job`): the staged
/// copies on its targets removed, the fences of its token lifted on every
/// holder of the layout (best effort: a holder that restarted has no fence
/// left, a target down keeps a staged copy that is never served).
pub async fn roll_back_job(
    cluster: &Cluster,
    job: &RepairJobRow,
    credential: &hayloft_proto::Credential,
) {
    let volume = job.volume_id();
    let Some(layout) = cluster.erasure_layout(volume) else {
        return;
    };
    let known = |id: &String| cluster.server_location(id);
    let source = DecodeSource {
        volume_id: volume,
        holders: layout
            .holders
            .iter()
            .filter_map(known)
            .map(|location| (location, true))
            .collect(),
        targets: job.servers.iter().filter_map(known).collect(),
        layout,
        warnings: Vec::new(),
    };
    let (progress, _) = mpsc::channel(1);
    let run = Decode {
        cluster,
        source: &source,
        credential,
        progress: &progress,
        holders: source
            .holders
            .iter()
            .map(|(l, _)| l.grpc_addr.clone())
            .collect(),
        rate: job.rate,
        code: String::new(),
        max_block: 0,
        cold: None,
    };
    if job.kind == super::jobs::TO_COLD_KIND {
        tracing::info!(volume = volume.0, targets = ?job.servers,
            "rolling back a move to cold a dead leader left before its commit");
    } else {
        tracing::info!(volume = volume.0, targets = ?job.servers,
            "rolling back a decode a dead leader left before its commit");
    }
    run.roll_back(Some(job.fence_token).filter(|t| *t != 0))
        .await;
}

/// Runs a planned decode to its end, sending progress to `progress` (a
/// caller that goes away does not stop it). The last message names the
/// replicas and the holders dropped and left, or is the error.
pub async fn run(
    cluster: Arc<Cluster>,
    planned: PlannedDecode,
    rate: u64,
    credential: hayloft_proto::Credential,
    progress: Progress,
    _guard: EncodingGuard,
) {
    let volume = planned.source.volume_id;
    let answer = match decode(&cluster, &planned, rate, &credential, &progress).await {
        Ok(last) => Ok(last),
        Err(error) => {
            tracing::warn!(volume = volume.0, %error, "decode failed; the volume stays erasure-coded");
            Err(Status::from(error))
        }
    };
    let _ = progress.send(answer).await;
}

/// The steps of a decode on the leader (see the module's doc); a
/// re-encode (`super::reencode`) runs some of them too.
pub(super) struct Decode<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) source: &'a DecodeSource,
    pub(super) credential: &'a hayloft_proto::Credential,
    pub(super) progress: &'a Progress,
    /// The holders' addresses, shard by shard ("" for one down).
    pub(super) holders: Vec<String>,
    pub(super) rate: u64,
    /// A re-encode's code and largest block (REENCODE step); "" and 0
    /// otherwise.
    pub(super) code: String,
    pub(super) max_block: u64,
    /// A move to cold's object (UPLOAD step); `None` otherwise.
    pub(super) cold: Option<ColdTarget>,
}

impl Decode<'_> {
    pub(super) fn failed(&self, step: &'static str, server: &str, status: &Status) -> Error {
        Error::DecodeFailed {
            volume: self.source.volume_id,
            step,
            server: server.to_owned(),
            reason: status.message().to_owned(),
            code: status.code(),
        }
    }

    /// Runs decode step `step` on `target`, forwarding its progress;
    /// returns its last message.
    pub(super) async fn on_target(
        &self,
        target: &ServerLocation,
        step: DecodeStep,
        name: &'static str,
    ) -> Result<EcDecodeProgress> {
        let failed = |status: Status| self.failed(name, &target.server_id, &status);
        let mut client = volume_client(target, self.credential)
            .await
            .map_err(|reason| failed(Status::unavailable(reason)))?;
        let mut stream = client
            .ec_decode(EcDecodeRequest {
                volume_id: self.source.volume_id.0,
                holders: self.holders.clone(),
                rate: self.rate,
                step: step as i32,
                code: self.code.clone(),
                max_block: self.max_block,
                bucket: self
                    .cold
                    .as_ref()
                    .map(|c| c.bucket.clone())
                    .unwrap_or_default(),
                prefix: self
                    .cold
                    .as_ref()
                    .map(|c| c.prefix.clone())
                    .unwrap_or_default(),
                storage_class: self
                    .cold
                    .as_ref()
                    .map(|c| c.storage_class.clone())
                    .unwrap_or_default(),
                // SHARE_COLD: the first target uploaded.
                cold_from: self
                    .source
                    .targets
                    .first()
                    .map(|t| t.grpc_addr.clone())
                    .unwrap_or_default(),
            })
            .await
            .map_err(failed)?
            .into_inner();
        loop {
            let message =
                stream.message().await.map_err(failed)?.ok_or_else(|| {
                    failed(Status::unavailable("the step ended without an answer"))
                })?;
            if message.finished {
                return Ok(message);
            }
            let _ = self
                .progress
                .send(Ok(DecodeVolumeProgress {
                    step: name.into(),
                    server_id: target.server_id.clone(),
                    done: message.done,
                    total: message.total,
                    ..DecodeVolumeProgress::default()
                }))
                .await;
        }
    }

    pub(super) async fn say(&self, step: &str, server: &str) {
        let _ = self
            .progress
            .send(Ok(DecodeVolumeProgress {
                step: step.into(),
                server_id: server.into(),
                ..DecodeVolumeProgress::default()
            }))
            .await;
    }

    /// Fences (or with `release`, unfences) deletes on each live holder;
    /// answers the holders that answered, each with whether the fence of
    /// `token` was in place before.
    pub(super) async fn fence(&self, token: u64, release: bool) -> Vec<(ServerLocation, bool)> {
        let mut answered = Vec::new();
        let mut seen = HashSet::new();
        for (holder, alive) in &self.source.holders {
            if !alive || !seen.insert(holder.server_id.clone()) {
                continue;
            }
            let fenced = async {
                volume_client(holder, self.credential)
                    .await
                    .map_err(Status::unavailable)?
                    .ec_fence(EcFenceRequest {
                        volume_id: self.source.volume_id.0,
                        token,
                        release,
                    })
                    .await
                    .map(|r| r.into_inner().held)
            }
            .await;
            match fenced {
                Ok(held) => answered.push((holder.clone(), held)),
                Err(status) => tracing::warn!(volume = self.source.volume_id.0,
                    holder = %holder.server_id, %status, release, "holder not (un)fenced"),
            }
        }
        answered
    }

    /// Best effort after a failure before the commit: the staged copies
    /// removed, the fences lifted.
    async fn roll_back(&self, token: Option<u64>) {
        for target in &self.source.targets {
            if let Err(error) = self.on_target(target, DecodeStep::Abort, "abort").await {
                tracing::warn!(volume = self.source.volume_id.0, target = %target.server_id,
                    %error, "staged copy not removed (removed by the next decode there)");
            }
        }
        if let Some(token) = token {
            self.fence(token, true).await;
        }
    }

    /// Steps 2-5; answers the first copy's live needles and needles
    /// written as deleted (every copy holds the same), and for a move to
    /// cold the object (`bucket/key`).
    async fn prepare(&self, token: u64) -> Result<(EcDecodeProgress, String)> {
        if self.cold.is_some() {
            return self.prepare_cold(token).await;
        }
        let volume = self.source.volume_id;
        // Step 2.
        let mut deleted_at_build = Vec::new();
        for target in &self.source.targets {
            let built = self.on_target(target, DecodeStep::Build, "build").await?;
            tracing::info!(volume = volume.0, target = %target.server_id, needles = built.needles,
                deleted = built.deleted, restored = ?built.restored_shards, "copy built and staged");
            deleted_at_build.push(built.deleted);
        }
        let fenced = self.fence_all(token).await?;
        // Step 4.
        let mut last = EcDecodeProgress::default();
        for (i, target) in self.source.targets.iter().enumerate() {
            let applied = self
                .on_target(target, DecodeStep::Journals, "journals")
                .await?;
            self.read_every_fenced_journal(target, &applied, &fenced)?;
            if i == 0 {
                last = EcDecodeProgress {
                    deleted: applied.deleted + deleted_at_build[0],
                    ..applied
                };
            }
        }
        self.check_fence(token, &fenced).await?;
        Ok((last, String::new()))
    }

    /// Step 3: every live holder fenced; answers those that answered.
    async fn fence_all(&self, token: u64) -> Result<Vec<(ServerLocation, bool)>> {
        self.say("fence", "").await;
        let fenced = self.fence(token, false).await;
        if fenced.is_empty() {
            return Err(self.failed(
                "fence",
                "",
                &Status::unavailable("no holder could be fenced"),
            ));
        }
        Ok(fenced)
    }

    /// The journals `applied` on `target` must include every fenced
    /// holder's.
    fn read_every_fenced_journal(
        &self,
        target: &ServerLocation,
        applied: &EcDecodeProgress,
        fenced: &[(ServerLocation, bool)],
    ) -> Result<()> {
        let read: HashSet<&str> = applied.journals.iter().map(String::as_str).collect();
        match fenced
            .iter()
            .find(|(h, _)| !read.contains(h.grpc_addr.as_str()))
        {
            Some((missed, _)) => Err(self.failed(
                "journals",
                &target.server_id,
                &Status::unavailable(format!(
                    "the journal of fenced holder {} was not read",
                    missed.server_id
                )),
            )),
            None => Ok(()),
        }
    }

    /// A move to cold's steps 2-5 (see the module's doc): the data file
    /// built on the first target and uploaded there as one object (staged
    /// as a cold copy); the holders fenced; the journals applied to that
    /// cold copy; the fence checked; then every other target stages a cold
    /// copy of the same object from it.
    async fn prepare_cold(&self, token: u64) -> Result<(EcDecodeProgress, String)> {
        let volume = self.source.volume_id;
        let Some((lead, followers)) = self.source.targets.split_first() else {
            return Err(self.failed(
                "build",
                "",
                &Status::failed_precondition("no target placed"),
            ));
        };
        let built = self.on_target(lead, DecodeStep::Build, "build").await?;
        tracing::info!(volume = volume.0, target = %lead.server_id, needles = built.needles,
            deleted = built.deleted, restored = ?built.restored_shards,
            "data file built and staged for its move to cold");
        let uploaded = self.on_target(lead, DecodeStep::Upload, "upload").await?;
        let label = std::path::Path::new("<staged cold manifest>");
        let object = hayloft_storage::cold::ColdManifest::decode(&uploaded.cold_manifest, label)
            .map(|m| format!("{}/{}", m.bucket, m.key))
            .map_err(|e| {
                self.failed("upload", &lead.server_id, &Status::internal(e.to_string()))
            })?;
        tracing::info!(volume = volume.0, target = %lead.server_id, %object,
            "object uploaded, verified and staged as a cold copy");
        hayloft_storage::failpoint::abort_at("to-cold-after-upload");
        let fenced = self.fence_all(token).await?;
        self.say("journals", &lead.server_id).await;
        let applied = self
            .on_target(lead, DecodeStep::Journals, "journals")
            .await?;
        self.read_every_fenced_journal(lead, &applied, &fenced)?;
        self.check_fence(token, &fenced).await?;
        for follower in followers {
            self.say("share", &follower.server_id).await;
            self.on_target(follower, DecodeStep::ShareCold, "share")
                .await?;
        }
        let last = EcDecodeProgress {
            deleted: applied.deleted + built.deleted,
            ..applied
        };
        Ok((last, object))
    }

    /// Step 5: at least one fenced holder kept its fence all along.
    async fn check_fence(&self, token: u64, fenced: &[(ServerLocation, bool)]) -> Result<()> {
        let kept: Vec<String> = self
            .fence(token, false)
            .await
            .into_iter()
            .filter(|(h, held)| *held && fenced.iter().any(|(f, _)| f.server_id == h.server_id))
            .map(|(h, _)| h.server_id)
            .collect();
        if kept.is_empty() {
            return Err(self.failed(
                "fence",
                "",
                &Status::unavailable(
                    "no holder kept its fence until the journals were read (restarted?)",
                ),
            ));
        }
        Ok(())
    }
}

/// Steps 2-8 (see the module's doc).
async fn decode(
    cluster: &Cluster,
    planned: &PlannedDecode,
    rate: u64,
    credential: &hayloft_proto::Credential,
    progress: &Progress,
) -> Result<DecodeVolumeProgress> {
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
            .map(|(l, alive)| {
                if *alive {
                    l.grpc_addr.clone()
                } else {
                    String::new()
                }
            })
            .collect(),
        rate,
        code: String::new(),
        max_block: 0,
        cold: planned.cold.clone(),
    };
    let to_cold = planned.cold.is_some();
    let token: u64 = rand::rng().random::<u64>().max(1);
    let replicas: Vec<String> = source.targets.iter().map(|t| t.server_id.clone()).collect();
    // The job first: a leader that dies from here on leaves it to the next
    // (`super::jobs`), which rolls back with this token and runs it again.
    let cold = planned.cold.clone().unwrap_or(ColdTarget {
        bucket: String::new(),
        prefix: String::new(),
        storage_class: String::new(),
    });
    let job = RepairJobRow {
        volume_id: volume.0,
        target: replicas.first().cloned().unwrap_or_default(),
        kind: if to_cold {
            super::jobs::TO_COLD_KIND
        } else {
            super::jobs::DECODE_KIND
        }
        .to_owned(),
        started_at: crate::cluster::unix_now(),
        rate,
        fence_token: token,
        servers: replicas.clone(),
        bucket: cold.bucket,
        prefix: cold.prefix,
        storage_class: cold.storage_class,
        ..RepairJobRow::default()
    };
    cluster.start_repair(job.clone()).await?;
    let (counts, object) = match run.prepare(token).await {
        Ok(prepared) => prepared,
        Err(error) => {
            run.roll_back(Some(token)).await;
            end_job(cluster, &job).await;
            return Err(error);
        }
    };
    hayloft_storage::failpoint::abort_at(if to_cold {
        "to-cold-before-commit"
    } else {
        "decode-before-commit"
    });
    // Step 6.
    run.say("commit", "").await;
    let committed = if to_cold {
        run.cluster
            .erasure_to_cold(volume, &source.layout, replicas.clone())
            .await
    } else {
        run.cluster
            .erasure_decoded(volume, &source.layout, replicas.clone())
            .await
    };
    match committed {
        Ok(()) => {}
        Err(error @ Error::Refused(_)) => {
            run.roll_back(Some(token)).await;
            end_job(cluster, &job).await;
            return Err(error);
        }
        // The entry may yet commit under another leader: the staged copies
        // stay (served once a heartbeat names them) and so do the fences;
        // the job stays open for the next leader to end or roll back.
        Err(error) => return Err(error),
    }
    if to_cold {
        tracing::info!(volume = volume.0, replicas = ?replicas, %object,
            "volume moved to cold: cold copies committed");
        hayloft_storage::failpoint::abort_at("to-cold-after-commit");
    } else {
        tracing::info!(volume = volume.0, replicas = ?replicas, "volume decoded: replica set committed");
        hayloft_storage::failpoint::abort_at("decode-after-commit");
    }
    // Step 7.
    let mut served = true;
    for target in &source.targets {
        if let Err(error) = run
            .on_target(target, DecodeStep::Activate, "activate")
            .await
        {
            served = false;
            tracing::warn!(volume = volume.0, target = %target.server_id, %error,
                "decoded copy not served yet (its heartbeat will)");
        }
    }
    // Step 8.
    let (mut dropped, mut left) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for (holder, alive) in &source.holders {
        if !seen.insert(holder.server_id.clone()) {
            continue;
        }
        if !served {
            left.push(holder.server_id.clone());
            continue;
        }
        let result = if *alive {
            async {
                volume_client(holder, credential)
                    .await?
                    .ec_drop(EcDropRequest {
                        volume_id: volume.0,
                        staged: false,
                    })
                    .await
                    .map_err(|s| s.message().to_owned())
            }
            .await
            .map(drop)
        } else {
            Err("its server is down".to_owned())
        };
        match result {
            Ok(()) => dropped.push(holder.server_id.clone()),
            Err(error) => {
                tracing::warn!(volume = volume.0, %error, "{}", orphan_note(volume, &holder.server_id));
                left.push(holder.server_id.clone());
            }
        }
    }
    end_job(cluster, &job).await;
    Ok(DecodeVolumeProgress {
        step: "done".into(),
        replicas,
        dropped,
        left,
        needles: counts.needles,
        deleted: counts.deleted,
        cold_object: object,
        ..DecodeVolumeProgress::default()
    })
}
