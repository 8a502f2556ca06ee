//! `DecodeVolume` against five real volume servers: an erasure-coded 3+2
//! volume turned back into a replicated volume of two copies, every live
//! blob byte-identical over HTTP and gRPC from the new copies, every
//! deleted blob still 404, the shards gone; with a holder down (its shard
//! restored from parity, its shards left); a decode that cannot restore
//! the data leaves the volume erasure-coded and readable, and runs again;
//! deletes fenced during the final step are refused, not lost.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_proto::directory_client::DirectoryClient;
use hayloft_proto::{
    DecodeVolumeProgress, DecodeVolumeRequest, EcFenceRequest, EncodeVolumeRequest,
    ListVolumesRequest, StatusResponse, VolumeRecord,
};
use hayloft_storage::BlobId;
use hayloft_storage::erasure::{CHUNK_LEN, EcVolume};
use tonic::Code;
use tonic::transport::Channel;

use crate::erasure::{delete, ec_dir, http_get};
use crate::support::*;

pub(crate) async fn directory(cluster: &Cluster) -> DirectoryClient<Channel> {
    DirectoryClient::connect(format!("http://{}", cluster.directory_addr()))
        .await
        .unwrap()
}

/// Five servers whose volumes seal at 1 MiB, two copies a volume.
pub(crate) async fn five_servers() -> Started {
    start(
        Cluster::builder()
            .volume_servers(5)
            .replication(2)
            .volume(|_, config| config.max_volume_size = ByteSize::mib(1)),
    )
    .await
}

/// Fills a 1 MiB volume of two copies until it seals itself (each blob
/// sent to the copy that orders its id); returns it and its blobs.
async fn fill_two_copies(started: &Started) -> (u32, Vec<(BlobId, Bytes)>) {
    use futures::stream;
    let (ids, locations) = assign(&started.cluster, 16).await;
    let mut written = Vec::new();
    'blobs: for (i, id) in ids.iter().enumerate() {
        let data = content(i as u64, 90_000 + i * 7_001);
        for location in &locations {
            let sent = volume_client(&location.grpc_addr)
                .await
                .write(stream::iter(write_messages(
                    header(id, data.len() as u64),
                    &data,
                )))
                .await;
            match sent {
                Ok(_) => {
                    written.push((id.parse::<BlobId>().unwrap(), data));
                    continue 'blobs;
                }
                Err(status) if status.code() == Code::ResourceExhausted => break 'blobs,
                Err(status) if status.code() == Code::FailedPrecondition => continue,
                Err(status) => panic!("write failed: {status:?}"),
            }
        }
        panic!("no copy took blob {id}");
    }
    let volume = written[0].0.volume().0;
    wait_sealed(started, volume).await;
    (volume, written)
}

/// A sealed volume encoded 3+2 in 64 KiB blocks (its copies removed);
/// returns it and its blobs.
pub(crate) async fn encoded_volume(started: &Started) -> (u32, Vec<(BlobId, Bytes)>) {
    let (volume, blobs) = fill_two_copies(started).await;
    let mut stream = directory(&started.cluster)
        .await
        .encode_volume(EncodeVolumeRequest {
            volume_id: volume,
            code: "3+2".into(),
            dry_run: false,
            max_block: CHUNK_LEN,
            rate: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.unwrap() {
        last = Some(message);
    }
    assert!(last.unwrap().layout.is_some(), "encoded");
    (volume, blobs)
}

/// Runs `DecodeVolume` to its end: every message, or the error.
pub(crate) async fn decode(
    cluster: &Cluster,
    volume: u32,
    dry_run: bool,
) -> Result<Vec<DecodeVolumeProgress>, tonic::Status> {
    let mut stream = directory(cluster)
        .await
        .decode_volume(DecodeVolumeRequest {
            volume_id: volume,
            dry_run,
            rate: 0,
            ..DecodeVolumeRequest::default()
        })
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

pub(crate) fn record(status: &StatusResponse, id: u32) -> VolumeRecord {
    status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == id))
        .unwrap()
        .clone()
}

pub(crate) fn server_ids(locations: &[hayloft_proto::ServerLocation]) -> Vec<String> {
    locations.iter().map(|l| l.server_id.clone()).collect()
}

/// Every live blob reads byte-identical over HTTP from every server in
/// `servers` and over gRPC from each of `copies`; every deleted blob is
/// 404 / NOT_FOUND on each.
pub(crate) async fn every_blob_reads_right(
    cluster: &Cluster,
    blobs: &[(BlobId, Bytes)],
    deleted: &HashSet<BlobId>,
    servers: &[usize],
    copies: &[usize],
) {
    for (blob, data) in blobs {
        for &server in servers {
            let response = http_get(cluster, server, *blob, None).await;
            if deleted.contains(blob) {
                assert_eq!(
                    response.status(),
                    404,
                    "deleted {blob} from server {server}"
                );
            } else {
                assert_eq!(response.status(), 200, "{blob} from server {server}");
                assert!(
                    response.bytes().await.unwrap() == data,
                    "wrong bytes of {blob} over HTTP from server {server}"
                );
            }
        }
        for &copy in copies {
            let addr = cluster.volume(copy).unwrap().grpc_addr();
            match read_from(&addr, &blob.to_string()).await {
                Ok(read) => {
                    assert!(!deleted.contains(blob), "deleted {blob} read from {copy}");
                    assert!(
                        read == data[..],
                        "wrong bytes of {blob} over gRPC from {copy}"
                    );
                }
                Err(status) => {
                    assert!(deleted.contains(blob), "{blob} from {copy}: {status:?}");
                    assert_eq!(status.code(), Code::NotFound, "{status:?}");
                }
            }
        }
    }
}

/// True if server `server` holds a copy of `volume` (served, sealed).
pub(crate) async fn holds_copy(cluster: &Cluster, server: usize, volume: u32) -> bool {
    let addr = cluster.volume(server).unwrap().grpc_addr();
    volume_client(&addr)
        .await
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .volumes
        .iter()
        .any(|v| v.volume_id == volume && v.sealed)
}

pub(crate) fn holds_shards(cluster: &Cluster, server: usize, volume: u32) -> bool {
    EcVolume::exists(&ec_dir(cluster, server), hayloft_storage::VolumeId(volume))
}

pub(crate) fn staged(cluster: &Cluster, server: usize, volume: u32) -> bool {
    ec_dir(cluster, server)
        .join("decoding")
        .join(format!("{volume}.dat"))
        .exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_coded_volume_is_decoded_to_two_copies_and_its_deletes_stay_deleted() {
    let started = five_servers().await;
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

    // A dry run: the plan only (two copies on live servers), nothing changes.
    let messages = decode(cluster, volume, true).await.unwrap();
    assert_eq!(messages.len(), 1);
    let plan = messages[0].plan.clone().unwrap();
    assert_eq!(plan.code, "3+2");
    assert_eq!(plan.holders.len(), 5);
    assert!(plan.holders_down.is_empty());
    let targets = server_ids(&plan.targets);
    assert_eq!(targets.iter().collect::<BTreeSet<_>>().len(), 2, "{plan:?}");
    assert_eq!(plan.warnings.len(), 1, "one zone for two copies: {plan:?}");
    let status = started.client.status().await.unwrap();
    assert!(record(&status, volume).erasure.is_some());
    for server in 0..5 {
        assert!(!staged(cluster, server, volume));
        assert!(!holds_copy(cluster, server, volume).await);
    }

    // The decode: plan, progress, then the replicas and the shards dropped.
    let messages = decode(cluster, volume, false).await.unwrap();
    let steps: Vec<&str> = messages.iter().map(|m| m.step.as_str()).collect();
    for step in ["plan", "build", "fence", "commit", "done"] {
        assert!(steps.contains(&step), "{step} missing from {steps:?}");
    }
    let built = messages
        .iter()
        .rfind(|m| m.step == "build" && m.total > 0)
        .unwrap();
    assert_eq!(built.done, built.total);
    let last = messages.last().unwrap();
    assert_eq!(last.replicas, targets);
    assert_eq!(last.dropped.len(), 5, "{last:?}");
    assert!(last.left.is_empty());
    assert_eq!(last.deleted, deleted.len() as u64);
    assert_eq!(last.needles, (blobs.len() - deleted.len()) as u64);

    // The directory: replicated, two copies, healthy; no layout.
    let status = eventually(Duration::from_secs(10), "two healthy copies", || async {
        let status = started.client.status().await.ok()?;
        let record = record(&status, volume);
        (record.health == hayloft_proto::VolumeHealth::Ok as i32 && record.replicas.len() == 2)
            .then_some(record)
    })
    .await;
    assert!(status.erasure.is_none());
    let copies: Vec<usize> = targets.iter().map(|t| server_index(t)).collect();
    for server in 0..5 {
        assert!(!holds_shards(cluster, server, volume), "shards on {server}");
        assert!(!staged(cluster, server, volume));
        assert_eq!(
            holds_copy(cluster, server, volume).await,
            copies.contains(&server),
            "copy on {server}"
        );
    }
    every_blob_reads_right(cluster, &blobs, &deleted, &[0, 1, 2, 3, 4], &copies).await;

    // Decoded once: a second decode is refused.
    let refused = decode(cluster, volume, false).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("not erasure-coded"),
        "{refused:?}"
    );
    // A delete now goes to the copies, as for any volume.
    let (blob, _) = blobs.iter().find(|(b, _)| !deleted.contains(b)).unwrap();
    let at = cluster.volume(copies[0]).unwrap().grpc_addr();
    delete(&at, *blob).await.unwrap();
    for &copy in &copies {
        let status = read_from(
            &cluster.volume(copy).unwrap().grpc_addr(),
            &blob.to_string(),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_with_a_holder_down_restores_its_shard_and_leaves_it_its_shards() {
    let mut started = five_servers().await;
    let (volume, blobs) = encoded_volume(&started).await;
    let deleted: HashSet<BlobId> = [blobs[1].0, blobs[4].0].into();
    for blob in &deleted {
        let at = started.cluster.volume(2).unwrap().grpc_addr();
        delete(&at, *blob).await.unwrap();
    }
    // Server 3 holds a shard (every server does) and goes down.
    started.cluster.stop_volume(3).await.unwrap();
    let cluster = &started.cluster;
    let plan = eventually(Duration::from_secs(15), "the holder seen down", || async {
        let messages = decode(cluster, volume, true).await.ok()?;
        let plan = messages[0].plan.clone()?;
        (plan.holders_down == ["vs3"]).then_some(plan)
    })
    .await;
    assert!(!server_ids(&plan.targets).contains(&"vs3".to_owned()));

    let messages = decode(cluster, volume, false).await.unwrap();
    let last = messages.last().unwrap();
    assert_eq!(last.left, ["vs3"], "{last:?}");
    assert_eq!(last.dropped.len(), 4);
    assert_eq!(last.deleted, 2);
    let copies: Vec<usize> = last.replicas.iter().map(|t| server_index(t)).collect();
    assert_eq!(copies.len(), 2);
    for server in [0, 1, 2, 4] {
        assert!(!holds_shards(cluster, server, volume), "shards on {server}");
    }
    every_blob_reads_right(cluster, &blobs, &deleted, &[0, 1, 2, 4], &copies).await;

    // The holder returns: its shards are an orphan the directory no
    // longer routes to; the copies serve.
    started.cluster.start_volume(3).await.unwrap();
    assert!(holds_shards(&started.cluster, 3, volume));
    let status = started.client.status().await.unwrap();
    assert!(record(&status, volume).erasure.is_none());
    every_blob_reads_right(&started.cluster, &blobs, &deleted, &[0, 4], &copies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_decode_leaves_the_volume_erasure_coded_and_fenced_deletes_are_refused() {
    let mut started = five_servers().await;
    let (volume, blobs) = encoded_volume(&started).await;
    let mut deleted: HashSet<BlobId> = [blobs[0].0].into();
    let holder = started.cluster.volume(1).unwrap().grpc_addr();
    delete(&holder, blobs[0].0).await.unwrap();

    // A fenced holder refuses deletes (UNAVAILABLE: not acknowledged, to
    // retry), and journals nothing; unfenced, the retry goes through.
    let fence = |release: bool| EcFenceRequest {
        volume_id: volume,
        token: 7,
        release,
    };
    let mut client = volume_client(&holder).await;
    assert!(
        !client
            .ec_fence(fence(false))
            .await
            .unwrap()
            .into_inner()
            .held
    );
    let refused = delete(&holder, blobs[2].0).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("being decoded"), "{refused:?}");
    // Fenced at one holder, a delete reaching another is not acknowledged
    // either (every holder must journal it): the client retries it.
    let other = started.cluster.volume(2).unwrap().grpc_addr();
    let refused = delete(&other, blobs[3].0).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        client
            .ec_fence(fence(false))
            .await
            .unwrap()
            .into_inner()
            .held
    );
    assert!(
        client
            .ec_fence(fence(true))
            .await
            .unwrap()
            .into_inner()
            .held
    );
    delete(&holder, blobs[2].0).await.unwrap();
    deleted.insert(blobs[2].0);
    // The refused one was journaled at holder 2 (and spreads to the
    // others by their journal pulls): read as the pulls go, so left out
    // of the reads until the decode, whose union of journals has it.
    let partly: Vec<(BlobId, Bytes)> = blobs
        .iter()
        .filter(|(b, _)| *b != blobs[3].0)
        .cloned()
        .collect();

    // Three of five holders down: the data cannot be restored; the decode
    // fails at its build, and nothing of it is left.
    for server in [2, 3, 4] {
        started.cluster.stop_volume(server).await.unwrap();
    }
    let cluster = &started.cluster;
    let failed = eventually(
        Duration::from_secs(15),
        "a decode on the two left",
        || async {
            match decode(cluster, volume, false).await {
                Err(status) if status.message().contains("build") => Some(status),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        matches!(failed.code(), Code::Unavailable | Code::DataLoss),
        "{failed:?}"
    );
    for server in [0, 1] {
        assert!(
            !staged(cluster, server, volume),
            "staged copy left on {server}"
        );
        assert!(!holds_copy(cluster, server, volume).await);
        assert!(holds_shards(cluster, server, volume));
    }
    for server in [2, 3, 4] {
        started.cluster.start_volume(server).await.unwrap();
    }
    assert!(started.cluster.volume_servers_alive(5).await);
    let cluster = &started.cluster;
    let status = started.client.status().await.unwrap();
    assert!(record(&status, volume).erasure.is_some());
    // The restarted holders listen on new ports: reads reach them once
    // the heartbeat answers have told every server of every holder (each
    // server learns on its own heartbeat: all five are waited for, over
    // HTTP and gRPC, or a read can still find 2 of the 3 shards it needs).
    eventually(
        Duration::from_secs(20),
        "holders reachable again",
        || async {
            for (blob, _) in partly.iter().filter(|(b, _)| !deleted.contains(b)) {
                for server in 0..5 {
                    if http_get(cluster, server, *blob, None).await.status() != 200 {
                        return None;
                    }
                    let addr = cluster.volume(server).unwrap().grpc_addr();
                    read_from(&addr, &blob.to_string()).await.ok()?;
                }
            }
            Some(())
        },
    )
    .await;
    // Still erasure-coded and whole: every blob reads from the shards,
    // the deleted ones stay deleted; no fence is left.
    every_blob_reads_right(cluster, &partly, &deleted, &[0, 2, 4], &[1, 3]).await;
    let (blob, _) = blobs.iter().find(|(b, _)| !deleted.contains(b)).unwrap();
    delete(&holder, *blob).await.unwrap();
    deleted.insert(*blob);

    // Run again, with every holder back, it decodes.
    let messages = eventually(Duration::from_secs(15), "the decode", || async {
        decode(cluster, volume, false).await.ok()
    })
    .await;
    let last = messages.last().unwrap();
    deleted.insert(blobs[3].0);
    assert_eq!(last.deleted, deleted.len() as u64, "{last:?}");
    let copies: Vec<usize> = last.replicas.iter().map(|t| server_index(t)).collect();
    every_blob_reads_right(cluster, &blobs, &deleted, &[0, 1, 2, 3, 4], &copies).await;
}
