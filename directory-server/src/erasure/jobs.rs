//! Encodes and decodes as jobs in the replicated state, so that a new
//! leader (or this node after a restart) finishes what a dead one started.
//!
//! `EncodeVolume` and `DecodeVolume` commit a job (`RepairStarted` with the
//! kind [`ENCODE_KIND`] or [`DECODE_KIND`], carrying what is needed to run
//! it again: code, block, rate; for a decode the fence token and the
//! targets) before their first step, and end it (`RepairEnded`) once they
//! finished or rolled back. While it is open no repair, rebuild, orphan
//! drop or leftover-copy removal touches the volume. A leader that finds
//! an open job it is not running ([`resume`]):
//!
//! - **encode**, layout committed: ends it (the copies are then taken out
//!   as leftovers, with their deletes handed to the holders);
//! - **encode**, not committed: runs the encode again from the start (the
//!   copies were never touched; shards an attempt left are written over,
//!   or dropped as orphans once the job ends);
//! - **decode**, committed: ends it (targets activate from their heartbeat
//!   answers, the holders' shards go as orphans once the copies are whole);
//! - **decode**, not committed: rolls it back (staged copies removed, the
//!   fences of its token lifted) and runs it again with a new token;
//! - **to-cold** (an erasure-coded volume moved to the cold tier,
//!   [`super::decode`]), committed: ends it (the targets serve their cold
//!   copies from their heartbeat answers, the shards go as orphans);
//!   not committed: rolls it back as a decode (the targets delete the
//!   object with their staged cold copies) and runs it again;
//! - **reencode** ([`super::reencode`]), the layout it read still recorded
//!   (not committed): rolls it back (every holder's staged generation
//!   dropped, the target's staged copy removed, the fences lifted) and runs
//!   it again; another layout recorded (committed): swaps every live holder
//!   to it (`EcSwap`, idempotent) and ends it.
//!
//! Steps and failures: ARCHITECTURE.md, "Encodes and decodes survive their
//! leader".

use std::sync::Arc;

use hayloft_proto::{DecodeVolumeRequest, EncodeVolumeRequest};
use hayloft_storage::VolumeId;

use super::encode::Encoding;
use crate::cluster::Cluster;
use crate::db::RepairJobRow;
use crate::repair::RepairSettings;

/// The kind of an encode's job.
pub const ENCODE_KIND: &str = "encode";
/// The kind of a decode's job.
pub const DECODE_KIND: &str = "decode";
/// The kind of a move to cold's job (an erasure-coded volume uploaded as
/// one object, its targets cold copies of it: [`super::decode`]).
pub const TO_COLD_KIND: &str = "to-cold";
/// The kind of a re-encode's job (an erasure-coded volume encoded again
/// without its deleted needles: [`super::reencode`]).
pub const REENCODE_KIND: &str = "reencode";

/// True for the jobs the erasure-coding code runs and resumes (the repair
/// loop leaves them alone).
pub fn is_erasure_job(kind: &str) -> bool {
    kind == ENCODE_KIND
        || kind == DECODE_KIND
        || kind == TO_COLD_KIND
        || kind == REENCODE_KIND
        || kind == super::rebuild::REBUILD_KIND
}

/// What a leader does with an open encode or decode job it is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResume {
    /// Its result is committed: end the job.
    End,
    /// An encode not committed: run it again.
    Encode,
    /// A decode not committed: roll it back, then run it again.
    Decode,
    /// A move to cold not committed: roll it back (the object deleted
    /// with the staged cold copies), then run it again.
    ToCold,
    /// A re-encode not committed: roll it back (the staged generations
    /// dropped, the fences lifted), then run it again.
    Reencode,
    /// A re-encode committed: swap the holders that missed it, then end.
    Swap,
}

/// Decides from the volume as the map has it (`erasure_coded`: whether it
/// has a layout; `None`: the volume is gone, which ends the job).
pub fn decide(job: &RepairJobRow, erasure_coded: Option<bool>) -> JobResume {
    match (job.kind.as_str(), erasure_coded) {
        (ENCODE_KIND, Some(false)) => JobResume::Encode,
        (DECODE_KIND, Some(true)) => JobResume::Decode,
        (TO_COLD_KIND, Some(true)) => JobResume::ToCold,
        _ => JobResume::End,
    }
}

/// Decides a re-encode's job from the layout recorded now (`None`: the
/// volume is gone or no longer erasure-coded, which ends it): the layout
/// the job read still recorded means nothing was committed.
pub fn decide_reencode(
    job: &RepairJobRow,
    recorded: Option<&hayloft_proto::ErasureLayout>,
) -> JobResume {
    use prost::Message;
    let read = (!job.layout.is_empty())
        .then(|| hayloft_proto::ErasureLayout::decode(job.layout.as_slice()).ok())
        .flatten();
    match recorded {
        None => JobResume::End,
        Some(recorded) if read.as_ref() == Some(recorded) => JobResume::Reencode,
        Some(_) if read.is_none() => JobResume::End,
        Some(_) => JobResume::Swap,
    }
}

/// Open encode and decode jobs no task here runs (`encoding` names those
/// that do): ended, or run again on a task of their own. Answers what
/// failed, one line each.
pub async fn resume(
    cluster: &Arc<Cluster>,
    encoding: &Arc<Encoding>,
    settings: &RepairSettings,
) -> Vec<String> {
    let mut failures = Vec::new();
    for job in cluster.repair_jobs() {
        if !(job.kind == ENCODE_KIND
            || job.kind == DECODE_KIND
            || job.kind == TO_COLD_KIND
            || job.kind == REENCODE_KIND)
            || encoding.contains(job.volume_id())
        {
            continue;
        }
        let volume = job.volume_id();
        let recorded = cluster.erasure_layout(volume);
        let decided = if job.kind == REENCODE_KIND {
            decide_reencode(&job, recorded.as_ref())
        } else {
            decide(&job, cluster.is_erasure_coded(volume))
        };
        tracing::info!(volume = volume.0, kind = %job.kind, started_at = job.started_at,
            term = job.term, ?decided, "an encode or decode started before this leader");
        let outcome = match decided {
            JobResume::End => cluster
                .end_repair(volume, &job.target)
                .await
                .map_err(|e| e.to_string()),
            JobResume::Encode => encode_again(cluster, encoding, settings, &job),
            JobResume::Decode | JobResume::ToCold => {
                super::decode::roll_back_job(cluster, &job, &settings.credential).await;
                decode_again(cluster, encoding, settings, &job).await
            }
            JobResume::Reencode => {
                super::reencode::roll_back_job(cluster, &job, &settings.credential).await;
                reencode_again(cluster, encoding, settings, &job).await
            }
            JobResume::Swap => match &recorded {
                Some(layout) => {
                    super::reencode::finish_job(cluster, &job, layout, &settings.credential).await
                }
                None => Ok(()),
            },
        };
        if let Err(error) = outcome {
            failures.push(format!(
                "volume {volume}: the {} started before this leader: {error}",
                job.kind
            ));
        }
    }
    failures
}

/// Plans the encode again with the job's code, block and rate, and runs it
/// (its first step commits a job again, over this one). A plan refused now
/// ends the job: nothing was committed, the copies are whole.
fn encode_again(
    cluster: &Arc<Cluster>,
    encoding: &Arc<Encoding>,
    settings: &RepairSettings,
    job: &RepairJobRow,
) -> Result<(), String> {
    let request = EncodeVolumeRequest {
        volume_id: job.volume_id,
        code: job.code.clone(),
        max_block: job.max_block,
        rate: job.rate,
        dry_run: false,
    };
    let code = job
        .code
        .parse()
        .map_err(|e: hayloft_storage::erasure::CodeError| e.to_string())?;
    let planned = match super::encode::plan(cluster, &request, code) {
        Ok(planned) => planned,
        Err(error) => {
            end_refused(cluster, job, &error.to_string());
            return Err(format!("not run again: {error}"));
        }
    };
    let guard = encoding
        .start(VolumeId(job.volume_id))
        .map_err(|e| e.to_string())?;
    let (progress, _) = tokio::sync::mpsc::channel(1);
    tokio::spawn(super::encode::run(
        Arc::clone(cluster),
        planned,
        job.rate,
        settings.credential.clone(),
        progress,
        guard,
    ));
    Ok(())
}

/// Plans the decode (or the move to cold, with the job's bucket, prefix
/// and class) again (new targets, new token) and runs it.
async fn decode_again(
    cluster: &Arc<Cluster>,
    encoding: &Arc<Encoding>,
    settings: &RepairSettings,
    job: &RepairJobRow,
) -> Result<(), String> {
    let request = DecodeVolumeRequest {
        volume_id: job.volume_id,
        rate: job.rate,
        dry_run: false,
        cold_bucket: job.bucket.clone(),
        cold_prefix: job.prefix.clone(),
        cold_storage_class: job.storage_class.clone(),
    };
    // The rolled-back job must end first: a decode is refused while
    // another job holds the volume.
    cluster
        .end_repair(job.volume_id(), &job.target)
        .await
        .map_err(|e| e.to_string())?;
    let planned = super::decode::plan(cluster, &request)
        .map_err(|error| format!("rolled back, not run again: {error}"))?;
    let guard = encoding
        .start(VolumeId(job.volume_id))
        .map_err(|e| e.to_string())?;
    let (progress, _) = tokio::sync::mpsc::channel(1);
    tokio::spawn(super::decode::run(
        Arc::clone(cluster),
        planned,
        job.rate,
        settings.credential.clone(),
        progress,
        guard,
    ));
    Ok(())
}

/// Plans the re-encode again (new token) and runs it.
async fn reencode_again(
    cluster: &Arc<Cluster>,
    encoding: &Arc<Encoding>,
    settings: &RepairSettings,
    job: &RepairJobRow,
) -> Result<(), String> {
    let request = hayloft_proto::ReencodeVolumeRequest {
        volume_id: job.volume_id,
        rate: job.rate,
        dry_run: false,
    };
    // The rolled-back job must end first: a re-encode is refused while
    // another job holds the volume.
    cluster
        .end_repair(job.volume_id(), &job.target)
        .await
        .map_err(|e| e.to_string())?;
    let planned = super::reencode::plan(cluster, &request)
        .map_err(|error| format!("rolled back, not run again: {error}"))?;
    let guard = encoding
        .start(VolumeId(job.volume_id))
        .map_err(|e| e.to_string())?;
    let (progress, _) = tokio::sync::mpsc::channel(1);
    tokio::spawn(super::reencode::run(
        Arc::clone(cluster),
        planned,
        job.rate,
        settings.credential.clone(),
        progress,
        guard,
    ));
    Ok(())
}

/// Ends a job whose encode cannot be planned again (logged; the next
/// round tries again if it could not end).
fn end_refused(cluster: &Arc<Cluster>, job: &RepairJobRow, why: &str) {
    tracing::warn!(volume = job.volume_id, %why, "an encode started before this leader is not run again; its copies are whole");
    let (cluster, volume, target) = (Arc::clone(cluster), job.volume_id(), job.target.clone());
    tokio::spawn(async move {
        if let Err(error) = cluster.end_repair(volume, &target).await {
            tracing::warn!(volume = volume.0, %error, "could not end the encode's job");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: &str) -> RepairJobRow {
        RepairJobRow {
            volume_id: 3,
            target: "vs1".into(),
            kind: kind.into(),
            ..RepairJobRow::default()
        }
    }

    #[test]
    fn a_committed_result_ends_the_job_and_an_uncommitted_one_runs_again() {
        assert_eq!(decide(&job(ENCODE_KIND), Some(true)), JobResume::End);
        assert_eq!(decide(&job(ENCODE_KIND), Some(false)), JobResume::Encode);
        assert_eq!(decide(&job(DECODE_KIND), Some(false)), JobResume::End);
        assert_eq!(decide(&job(DECODE_KIND), Some(true)), JobResume::Decode);
        assert_eq!(decide(&job(ENCODE_KIND), None), JobResume::End);
        assert_eq!(decide(&job(DECODE_KIND), None), JobResume::End);
        assert_eq!(decide(&job(TO_COLD_KIND), Some(true)), JobResume::ToCold);
        assert_eq!(decide(&job(TO_COLD_KIND), Some(false)), JobResume::End);
        assert_eq!(decide(&job(TO_COLD_KIND), None), JobResume::End);
    }

    #[test]
    fn a_reencode_is_rolled_back_while_its_layout_is_recorded_and_swapped_once_committed() {
        use prost::Message;
        let layout = |digest: u32| hayloft_proto::ErasureLayout {
            code: "2+1".into(),
            data_len: 1000,
            block_len: 65_536,
            holders: vec!["a".into(), "b".into(), "c".into()],
            digests: vec![digest; 3],
            encoded_at: u64::from(digest),
        };
        let reencode = RepairJobRow {
            layout: layout(1).encode_to_vec(),
            ..job(REENCODE_KIND)
        };
        assert_eq!(
            decide_reencode(&reencode, Some(&layout(1))),
            JobResume::Reencode
        );
        assert_eq!(
            decide_reencode(&reencode, Some(&layout(2))),
            JobResume::Swap
        );
        assert_eq!(decide_reencode(&reencode, None), JobResume::End);
        // A job without the layout it read (cannot be told apart): ended.
        assert_eq!(
            decide_reencode(&job(REENCODE_KIND), Some(&layout(2))),
            JobResume::End
        );
    }

    #[test]
    fn the_repair_loop_leaves_erasure_jobs_alone() {
        for kind in [
            ENCODE_KIND,
            DECODE_KIND,
            TO_COLD_KIND,
            REENCODE_KIND,
            super::super::rebuild::REBUILD_KIND,
        ] {
            assert!(is_erasure_job(kind), "{kind}");
        }
        for kind in ["catch-up", "replace", "add", "move", "replace-cold"] {
            assert!(!is_erasure_job(kind), "{kind}");
        }
    }
}
