//! `ReencodeVolume` against five real volume servers: an erasure-coded 3+2
//! volume with many blobs deleted is encoded again without them; every
//! live blob reads byte-identical (whole, Range, same ETag) over HTTP from
//! every server and over gRPC from every holder, the deleted ones stay 404
//! (one deleted while the re-encode ran too), the shards shrink on disk
//! and the old generation and the staged files are gone; decoded after,
//! the deleted stay deleted. A holder lost mid-way leaves the old
//! generation serving, nothing staged, no fence; run again, it succeeds.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hayloft::cluster::Cluster;
use hayloft_proto::{ReencodeVolumeProgress, ReencodeVolumeRequest};
use hayloft_storage::BlobId;
use hayloft_storage::erasure::EcManifest;
use tonic::Code;

use crate::erasure::{delete, ec_dir, http_get};
use crate::erasure_decode::{
    decode, directory, encoded_volume, every_blob_reads_right, five_servers, holds_copy,
    holds_shards, record, staged,
};
use crate::support::*;

/// Runs `ReencodeVolume` to its end, calling `during` with each message
/// as it comes: every message, or the error.
async fn reencode(
    cluster: &Cluster,
    volume: u32,
    (dry_run, rate): (bool, u64),
    mut during: impl AsyncFnMut(&ReencodeVolumeProgress),
) -> Result<Vec<ReencodeVolumeProgress>, tonic::Status> {
    let mut stream = directory(cluster)
        .await
        .reencode_volume(ReencodeVolumeRequest {
            volume_id: volume,
            dry_run,
            rate,
        })
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        during(&message).await;
        messages.push(message);
    }
    Ok(messages)
}

/// The shard files of `volume` on every server, with their sizes.
fn shard_files(cluster: &Cluster, volume: u32) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    for server in 0..cluster.volume_count() {
        for entry in std::fs::read_dir(ec_dir(cluster, server))
            .unwrap()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let shard = name
                .strip_prefix(&format!("{volume}.ec"))
                .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_digit()));
            if shard {
                files.push((entry.path(), entry.metadata().unwrap().len()));
            }
        }
    }
    files.sort();
    files
}

/// True if anything of a re-encode of `volume` is staged on `server`.
fn reencode_staged(cluster: &Cluster, server: usize, volume: u32) -> bool {
    let staging = ec_dir(cluster, server).join("reencoding");
    std::fs::read_dir(staging).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{volume}."))
        })
    })
}

fn manifest(cluster: &Cluster, server: usize, volume: u32) -> EcManifest {
    let path = ec_dir(cluster, server).join(format!("{volume}.ecm"));
    EcManifest::decode(&std::fs::read(&path).unwrap(), &path).unwrap()
}

/// The ETag of `blob` from `server`, and a range of it checked.
async fn etag_and_range(cluster: &Cluster, server: usize, blob: BlobId, data: &Bytes) -> String {
    let response = http_get(cluster, server, blob, Some("bytes=100-4099")).await;
    assert_eq!(response.status(), 206, "{blob} range from server {server}");
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        response.bytes().await.unwrap() == data[100..4100],
        "range of {blob}"
    );
    etag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reencode_gives_the_deleted_space_back_and_keeps_every_delete() {
    let started = five_servers().await;
    let cluster = &started.cluster;
    let (volume, blobs) = encoded_volume(&started).await;
    let old = manifest(cluster, 0, volume);
    let before = shard_files(cluster, volume);
    assert_eq!(before.len(), 5, "{before:?}");
    // Two blobs of three deleted, at different holders.
    let mut deleted = HashSet::new();
    for (i, (blob, _)) in blobs.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        let at = cluster.volume(i % 5).unwrap().grpc_addr();
        delete(&at, *blob).await.unwrap();
        deleted.insert(*blob);
    }
    let live: Vec<&(BlobId, Bytes)> = blobs.iter().filter(|(b, _)| !deleted.contains(b)).collect();
    assert!(live.len() >= 3, "{} live", live.len());
    let mut etags = Vec::new();
    for (blob, data) in &live {
        etags.push(etag_and_range(cluster, 0, *blob, data).await);
    }
    // The holders report the deleted bytes; status shows them.
    let deleted_bytes = eventually(
        Duration::from_secs(10),
        "deleted bytes reported",
        || async {
            let status = started.client.status().await.ok()?;
            let bytes = record(&status, volume).deleted_bytes;
            (bytes > 0).then_some(bytes)
        },
    )
    .await;

    // A dry run: the plan only.
    let messages = reencode(cluster, volume, (true, 0), async |_| {})
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    let plan = messages[0].plan.clone().unwrap();
    assert_eq!((plan.code.as_str(), plan.holders.len()), ("3+2", 5));
    assert_eq!(plan.logical_bytes, old.data_len);
    assert_eq!(plan.deleted_bytes, deleted_bytes);
    assert!(plan.target.is_some());
    assert_eq!(manifest(cluster, 0, volume), old);

    // The re-encode, throttled; a blob deleted while its new generation
    // is being written (after the data file was rebuilt, before the
    // fence) must stay deleted.
    let (late, _) = live[0];
    let at = cluster.volume(3).unwrap().grpc_addr();
    let mut late_done = false;
    let messages = reencode(cluster, volume, (false, 512 << 10), async |m| {
        if m.step == "reencode" && m.total > 0 && !late_done {
            delete(&at, *late).await.unwrap();
            late_done = true;
        }
    })
    .await
    .unwrap();
    assert!(late_done, "no reencode progress seen");
    deleted.insert(*late);
    let steps: Vec<&str> = messages.iter().map(|m| m.step.as_str()).collect();
    for step in [
        "plan", "build", "reencode", "fence", "journals", "commit", "swap", "done",
    ] {
        assert!(steps.contains(&step), "{step} missing from {steps:?}");
    }
    let last = messages.last().unwrap();
    assert_eq!(last.swapped.len(), 5, "{last:?}");
    assert!(last.left.is_empty());
    assert_eq!(last.logical_before, old.data_len);
    assert!(last.logical_after < old.data_len / 2, "{last:?}");
    assert!(last.stored_after < last.stored_before, "{last:?}");

    // Space back: the same five shard files, each smaller; the old
    // generation's gone (every holder's manifest is the new one), nothing
    // staged anywhere.
    let after = shard_files(cluster, volume);
    assert_eq!(after.len(), 5, "{after:?}");
    for ((path, old_len), (new_path, new_len)) in before.iter().zip(&after) {
        assert_eq!(path, new_path);
        assert!(new_len < old_len, "{path:?}: {old_len} -> {new_len}");
    }
    for server in 0..5 {
        let new = manifest(cluster, server, volume);
        assert_eq!(new.data_len, last.logical_after);
        assert!(new.digests.iter().zip(&old.digests).all(|(a, b)| a != b));
        assert!(
            !reencode_staged(cluster, server, volume),
            "staged on {server}"
        );
        assert!(
            !staged(cluster, server, volume),
            "decoded copy left on {server}"
        );
    }
    let status = started.client.status().await.unwrap();
    let layout = record(&status, volume).erasure.unwrap();
    assert_eq!(layout.holders.len(), 5);

    // Every live blob byte-identical over HTTP from every server and gRPC
    // from every holder, Range and ETag as before; deleted ones 404.
    every_blob_reads_right(
        cluster,
        &blobs,
        &deleted,
        &[0, 1, 2, 3, 4],
        &[0, 1, 2, 3, 4],
    )
    .await;
    for ((blob, data), etag) in live.iter().zip(&etags).skip(1) {
        for server in 0..5 {
            assert_eq!(&etag_and_range(cluster, server, *blob, data).await, etag);
        }
    }
    // Deletes work on the new generation (no fence left).
    let (blob, _) = live[1];
    delete(&cluster.volume(2).unwrap().grpc_addr(), *blob)
        .await
        .unwrap();
    deleted.insert(*blob);

    // Decoded after: the deleted stay deleted.
    let messages = decode(cluster, volume, false).await.unwrap();
    let last = messages.last().unwrap();
    assert_eq!(
        last.needles,
        (blobs.len() - deleted.len()) as u64,
        "{last:?}"
    );
    let copies: Vec<usize> = last.replicas.iter().map(|t| server_index(t)).collect();
    for server in 0..5 {
        assert!(!holds_shards(cluster, server, volume));
        assert_eq!(
            holds_copy(cluster, server, volume).await,
            copies.contains(&server)
        );
    }
    every_blob_reads_right(cluster, &blobs, &deleted, &[0, 1, 2, 3, 4], &copies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reencode_that_fails_mid_way_leaves_the_old_generation_serving() {
    let mut started = five_servers().await;
    let (volume, blobs) = encoded_volume(&started).await;
    let old = manifest(&started.cluster, 0, volume);
    let before = shard_files(&started.cluster, volume);
    let mut deleted = HashSet::new();
    for (blob, _) in blobs.iter().step_by(2) {
        delete(&started.cluster.volume(1).unwrap().grpc_addr(), *blob)
            .await
            .unwrap();
        deleted.insert(*blob);
    }
    let cluster = &started.cluster;
    let plan = reencode(cluster, volume, (true, 0), async |_| {})
        .await
        .unwrap()[0]
        .plan
        .clone()
        .unwrap();
    let target = server_index(&plan.target.unwrap().server_id);
    let refusing = (target + 1) % 5;
    // A holder (not the target) cannot stage the new generation: its
    // staging folder's name is taken by a file (a disk that refuses it).
    let obstacle = ec_dir(cluster, refusing).join("reencoding");
    std::fs::write(&obstacle, b"in the way").unwrap();

    let failed = reencode(cluster, volume, (false, 0), async |_| {})
        .await
        .unwrap_err();
    assert!(failed.message().contains("reencode"), "{failed:?}");
    // Rolled back: the old generation on every holder, nothing staged,
    // the target's rebuilt copy gone, no fence (a delete goes through).
    assert_eq!(shard_files(cluster, volume), before);
    for server in 0..5 {
        assert_eq!(manifest(cluster, server, volume), old);
        assert!(
            !reencode_staged(cluster, server, volume),
            "staged on {server}"
        );
        assert!(
            !staged(cluster, server, volume),
            "decoded copy left on {server}"
        );
        assert!(!holds_copy(cluster, server, volume).await);
    }
    let status = started.client.status().await.unwrap();
    assert_eq!(record(&status, volume).logical_bytes, old.data_len);
    every_blob_reads_right(
        cluster,
        &blobs,
        &deleted,
        &[0, 1, 2, 3, 4],
        &[0, 1, 2, 3, 4],
    )
    .await;
    let (blob, _) = blobs.iter().find(|(b, _)| !deleted.contains(b)).unwrap();
    delete(&cluster.volume(4).unwrap().grpc_addr(), *blob)
        .await
        .unwrap();
    deleted.insert(*blob);

    // The obstacle gone, it runs again and succeeds.
    std::fs::remove_file(&obstacle).unwrap();
    let messages = reencode(cluster, volume, (false, 0), async |_| {})
        .await
        .unwrap();
    let last = messages.last().unwrap();
    assert_eq!(last.swapped.len(), 5, "{last:?}");
    assert_eq!(
        last.needles,
        (blobs.len() - deleted.len()) as u64,
        "{last:?}"
    );
    every_blob_reads_right(
        cluster,
        &blobs,
        &deleted,
        &[0, 1, 2, 3, 4],
        &[0, 1, 2, 3, 4],
    )
    .await;

    // A holder down: refused before anything is done (every holder takes
    // the new generation).
    started.cluster.stop_volume(refusing).await.unwrap();
    let cluster = &started.cluster;
    let refused = eventually(Duration::from_secs(15), "the holder seen down", || async {
        reencode(cluster, volume, (true, 0), async |_| {})
            .await
            .err()
            .filter(|s| s.code() == Code::FailedPrecondition)
    })
    .await;
    assert!(refused.message().contains("down"), "{refused:?}");
}
