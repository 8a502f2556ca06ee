//! An erasure-coded volume moved to the cold tier (`DecodeVolume` with a
//! cold bucket, as `hayloft tier move --to cold` and the tiering worker's
//! cold rules ask it) on five servers whose cold tier is a real moto: the
//! data file rebuilt from the shards on one server and uploaded as one
//! object, the volume's two copies cold copies of it, the shards dropped.
//! Every live blob reads byte-identical over HTTP (whole, ranged, same
//! ETag) from every server and over gRPC from the cold copies; every blob
//! deleted while erasure-coded stays deleted; deletes after the move go to
//! the cold copies. A move that fails after its data file is built leaves
//! nothing staged, no fence, the volume erasure-coded, and runs again.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_proto::{DecodeVolumeProgress, DecodeVolumeRequest, Tier, VolumeState};
use tonic::Code;

use crate::erasure::{delete, ec_dir, http_get};
use crate::erasure_decode::{
    directory, encoded_volume, every_blob_reads_right, holds_shards, record, server_ids,
};
use crate::s3::Moto;
use crate::support::*;

const BUCKET: &str = "cold";

/// Five servers whose volumes seal at 1 MiB, two copies a volume, whose
/// cold tier is `s3`.
async fn five_cold_servers(s3: &Moto) -> Started {
    let cold = s3.cold_tier();
    start(
        Cluster::builder()
            .volume_servers(5)
            .replication(2)
            .volume(move |_, config| {
                config.max_volume_size = ByteSize::mib(1);
                config.cold = Some(cold.clone());
                config.tier_part_size = ByteSize::mib(5);
            }),
    )
    .await
}

/// Runs `DecodeVolume` to cold (storage class `class`, "" for the
/// default) to its end: every message, or the error.
async fn to_cold(
    cluster: &Cluster,
    volume: u32,
    class: &str,
) -> Result<Vec<DecodeVolumeProgress>, tonic::Status> {
    let mut stream = directory(cluster)
        .await
        .decode_volume(DecodeVolumeRequest {
            volume_id: volume,
            dry_run: false,
            rate: 0,
            cold_bucket: BUCKET.into(),
            cold_prefix: "ec/".into(),
            cold_storage_class: class.into(),
        })
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

/// Files of `volume` staged on `server` (a decode's or a move to cold's).
fn staged_files(cluster: &Cluster, server: usize, volume: u32) -> Vec<String> {
    let prefix = format!("{volume}.");
    std::fs::read_dir(ec_dir(cluster, server).join("decoding"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_coded_volume_goes_cold_as_one_object_and_its_deletes_stay_deleted() {
    let s3 = Moto::start().await;
    s3.create_bucket(BUCKET).await;
    let started = five_cold_servers(&s3).await;
    let cluster = &started.cluster;
    let (volume, blobs) = encoded_volume(&started).await;
    // Deletes on the erasure-coded volume, at different holders.
    let mut deleted = HashSet::new();
    for (i, (blob, _)) in blobs.iter().enumerate().filter(|(i, _)| i % 3 == 1) {
        let at = cluster.volume(i % 5).unwrap().grpc_addr();
        delete(&at, *blob).await.unwrap();
        deleted.insert(*blob);
    }
    assert!(deleted.len() >= 3);
    // The ETags the shards serve, to compare with the cold copies'.
    let (live, live_data) = blobs.iter().find(|(b, _)| !deleted.contains(b)).unwrap();
    let etag_before = http_get(cluster, 0, *live, None).await.headers()["etag"].clone();

    let messages = to_cold(cluster, volume, "").await.unwrap();
    let plan = messages[0].plan.clone().unwrap();
    assert_eq!(plan.cold_bucket, BUCKET);
    assert_eq!(plan.cold_storage_class, "STANDARD");
    let targets = server_ids(&plan.targets);
    assert_eq!(targets.iter().collect::<BTreeSet<_>>().len(), 2, "{plan:?}");
    let steps: Vec<&str> = messages.iter().map(|m| m.step.as_str()).collect();
    for step in [
        "plan", "build", "upload", "fence", "journals", "share", "commit", "done",
    ] {
        assert!(steps.contains(&step), "{step} missing from {steps:?}");
    }
    let last = messages.last().unwrap();
    assert_eq!(last.replicas, targets);
    assert_eq!(last.dropped.len(), 5, "{last:?}");
    assert!(last.left.is_empty());
    assert_eq!(last.needles, (blobs.len() - deleted.len()) as u64);
    assert!(last.cold_object.starts_with("cold/ec/"), "{last:?}");

    // One object in the bucket: the data file.
    let keys = s3.keys(BUCKET).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(format!("{BUCKET}/{}", keys[0]), last.cold_object);

    // The directory: cold, two cold copies, healthy; no layout.
    let status = eventually(
        Duration::from_secs(20),
        "two healthy cold copies",
        || async {
            let status = started.client.status().await.ok()?;
            let record = record(&status, volume);
            (record.health == hayloft_proto::VolumeHealth::Ok as i32
                && record.replicas.len() == 2
                && record.replicas.iter().all(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.tier == Tier::Cold as i32)
                }))
            .then_some(record)
        },
    )
    .await;
    assert!(status.erasure.is_none());
    assert_eq!(status.state, VolumeState::Cold as i32);
    assert_eq!(status.status.as_ref().unwrap().tier, Tier::Cold as i32);
    let copies: Vec<usize> = targets.iter().map(|t| server_index(t)).collect();
    for server in 0..5 {
        assert!(!holds_shards(cluster, server, volume), "shards on {server}");
        assert!(
            staged_files(cluster, server, volume).is_empty(),
            "staged on {server}: {:?}",
            staged_files(cluster, server, volume)
        );
        let files: Vec<String> = std::fs::read_dir(ec_dir(cluster, server))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{volume}.")))
            .collect();
        assert!(
            files
                .iter()
                .all(|f| !f.contains(".ec") && !f.ends_with(".dat")),
            "{server}: {files:?}"
        );
        assert_eq!(
            files.contains(&format!("{volume}.cold")),
            copies.contains(&server),
            "{server}: {files:?}"
        );
    }
    every_blob_reads_right(cluster, &blobs, &deleted, &[0, 1, 2, 3, 4], &copies).await;
    // Range and ETag as before the move.
    let whole = http_get(cluster, copies[0], *live, None).await;
    assert_eq!(whole.headers()["etag"], etag_before);
    let ranged = http_get(cluster, 3, *live, Some("bytes=100-4099")).await;
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.headers()["etag"], etag_before);
    assert!(ranged.bytes().await.unwrap() == live_data[100..4100]);

    // Not erasure-coded any more: a second move is refused.
    let refused = to_cold(cluster, volume, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // A delete now goes to the cold copies, as for any cold volume.
    let at = cluster.volume(copies[1]).unwrap().grpc_addr();
    delete(&at, *live).await.unwrap();
    for &copy in &copies {
        let status = read_from(
            &cluster.volume(copy).unwrap().grpc_addr(),
            &live.to_string(),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_cold_that_fails_after_its_build_leaves_the_volume_erasure_coded_and_runs_again()
{
    let s3 = Moto::start().await;
    s3.create_bucket(BUCKET).await;
    let started = five_cold_servers(&s3).await;
    let cluster = &started.cluster;
    let (volume, blobs) = encoded_volume(&started).await;
    let (gone, _) = blobs[1];
    delete(&cluster.volume(2).unwrap().grpc_addr(), gone)
        .await
        .unwrap();
    let deleted: HashSet<_> = [gone].into();

    // A class the store does not have: the upload fails once the data file
    // is built; it is removed, no fence stays, nothing is in the bucket.
    let failed = to_cold(cluster, volume, "NOPE").await.unwrap_err();
    assert!(failed.message().contains("upload"), "{failed:?}");
    assert!(failed.message().contains("storage class"), "{failed:?}");
    assert!(s3.keys(BUCKET).await.is_empty());
    let status = started.client.status().await.unwrap();
    assert!(record(&status, volume).erasure.is_some());
    assert!(record(&status, volume).repair_kind.is_empty());
    for server in 0..5 {
        assert!(holds_shards(cluster, server, volume), "shards on {server}");
        assert!(staged_files(cluster, server, volume).is_empty(), "{server}");
    }
    every_blob_reads_right(cluster, &blobs, &deleted, &[0, 4], &[]).await;
    // No fence stayed: a delete goes through.
    let (other, _) = blobs[2];
    delete(&cluster.volume(0).unwrap().grpc_addr(), other)
        .await
        .unwrap();
    let deleted: HashSet<_> = [gone, other].into();

    // Asked again with a class that exists, it runs to its end.
    let messages = to_cold(cluster, volume, "").await.unwrap();
    let last = messages.last().unwrap();
    assert_eq!(last.replicas.len(), 2);
    assert_eq!(s3.keys(BUCKET).await.len(), 1);
    let copies: Vec<usize> = last.replicas.iter().map(|t| server_index(t)).collect();
    eventually(
        Duration::from_secs(20),
        "the cold copies reported",
        || async {
            let status = started.client.status().await.ok()?;
            let record = record(&status, volume);
            (record.health == hayloft_proto::VolumeHealth::Ok as i32).then_some(())
        },
    )
    .await;
    every_blob_reads_right(cluster, &blobs, &deleted, &[0, 1, 2, 3, 4], &copies).await;
}
