//! The directory rebuilds lost shards by itself: a volume encoded 3+2 on
//! six servers by `EncodeVolume`, a holder stopped past `repair_after` ->
//! its shard rebuilt on the sixth server (digest as encoded), the layout
//! changed, the returned holder's orphan shard dropped; then two more
//! original holders stopped -> every blob still reads byte-identical. A
//! live holder whose disk was wiped has its shard rebuilt elsewhere from
//! its own report. A rebuild under way when the directory restarts is
//! resumed by it on the same target.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_proto::directory_client::DirectoryClient;
use hayloft_proto::{EncodeVolumeRequest, ErasureLayout, StatusResponse, VolumeRecord};
use hayloft_storage::erasure::{CHUNK_LEN, EcVolume};
use hayloft_storage::{BlobId, VolumeId};

use crate::erasure::{ec_dir, http_get};
use crate::support::*;

/// Six servers with 1 MiB volumes; the directory replaces a lost shard
/// after `repair_after` and rebuilds at `repair_rate` bytes a second.
async fn six_servers(repair_after: Duration, repair_rate: u64) -> Started {
    start(
        Cluster::builder()
            .volume_servers(6)
            .directory(move |config| {
                config.repair_after = repair_after;
                config.repair_rate = ByteSize(repair_rate);
            })
            .volume(|_, config| config.max_volume_size = ByteSize::mib(1)),
    )
    .await
}

/// A sealed volume encoded 3+2 by the directory: the volume, its blobs,
/// its layout.
async fn encoded_volume(started: &Started) -> (u32, Vec<(BlobId, Bytes)>, ErasureLayout) {
    let (volume, blobs) = fill_until_sealed(started).await;
    let mut directory =
        DirectoryClient::connect(format!("http://{}", started.cluster.directory_addr()))
            .await
            .unwrap();
    let mut stream = directory
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
    let layout = last.unwrap().layout.unwrap();
    assert_eq!(layout.holders.len(), 5);
    (volume, blobs, layout)
}

fn volume_record(status: &StatusResponse, volume: u32) -> VolumeRecord {
    status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))
        .cloned()
        .unwrap()
}

/// The holder of each shard, as the directory's status has it now.
async fn holders_now(started: &Started, volume: u32) -> Option<Vec<String>> {
    let status = started.client.status().await.ok()?;
    let erasure = volume_record(&status, volume).erasure?;
    Some(erasure.holders.into_iter().map(|h| h.server_id).collect())
}

/// Every blob reads byte-identical over HTTP from server `from`, and over
/// gRPC too if it is a holder (`Read` is not proxied: clients look up).
async fn every_blob_reads(started: &Started, from: usize, blobs: &[(BlobId, Bytes)], grpc: bool) {
    let node = started.cluster.volume(from).unwrap();
    for (blob, data) in blobs {
        let response = http_get(&started.cluster, from, *blob, None).await;
        assert_eq!(
            response.status(),
            reqwest::StatusCode::OK,
            "{blob} from vs{from}"
        );
        assert!(
            response.bytes().await.unwrap() == data,
            "wrong bytes from vs{from}"
        );
        if grpc {
            let read = read_from(&node.grpc_addr(), &blob.to_string())
                .await
                .unwrap();
            assert!(read == data[..], "wrong bytes over gRPC from vs{from}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_holder_is_rebuilt_elsewhere_its_orphan_dropped_and_blobs_read_with_m_more_down() {
    let mut started = six_servers(Duration::from_secs(2), 0).await;
    let (volume, blobs, layout) = encoded_volume(&started).await;
    let spare = (0..6)
        .map(|i| format!("vs{i}"))
        .find(|id| !layout.holders.contains(id))
        .unwrap();
    let lost = server_index(&layout.holders[0]);

    // Shard 0's holder stops: past dead_after and repair_after, the
    // directory rebuilds shard 0 on the only server without a shard.
    started.cluster.stop_volume(lost).await.unwrap();
    let moved = eventually(
        Duration::from_secs(60),
        "shard 0 rebuilt and recorded",
        || async {
            let holders = holders_now(&started, volume).await?;
            (holders[0] != layout.holders[0]).then_some(holders)
        },
    )
    .await;
    assert_eq!(moved[0], spare, "the one server holding no shard");
    assert_eq!(moved[1..], layout.holders[1..], "the other shards stay");
    // The rebuilt shard is the shard as encoded.
    let rebuilt = EcVolume::open(
        &ec_dir(&started.cluster, server_index(&spare)),
        VolumeId(volume),
    )
    .unwrap();
    assert_eq!(rebuilt.held(), vec![0]);
    assert_eq!(rebuilt.shard(0).unwrap().digest(), layout.digests[0]);
    // The job ends; the volume is whole again.
    eventually(Duration::from_secs(20), "the rebuild job ended", || async {
        let record = volume_record(&started.client.status().await.ok()?, volume);
        (!record.repairing && record.health == hayloft_proto::VolumeHealth::Ok as i32).then_some(())
    })
    .await;

    // The lost holder comes back: its shard 0 is an orphan (the spare
    // holds it, whole), dropped after the grace period.
    let lost_dir = ec_dir(&started.cluster, lost);
    assert!(EcVolume::exists(&lost_dir, VolumeId(volume)));
    started.cluster.start_volume(lost).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the orphan shard dropped",
        || async { (!EcVolume::exists(&lost_dir, VolumeId(volume))).then_some(()) },
    )
    .await;
    assert_eq!(holders_now(&started, volume).await.unwrap(), moved);

    // Two more of the original holders stop (m = 2): every blob still
    // reads, from the rebuilt holder and from a server holding nothing.
    for holder in &layout.holders[1..3] {
        started
            .cluster
            .stop_volume(server_index(holder))
            .await
            .unwrap();
    }
    every_blob_reads(&started, server_index(&spare), &blobs, true).await;
    every_blob_reads(&started, lost, &blobs, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_way_when_the_directory_restarts_is_resumed_on_the_same_target() {
    // 64 KiB a second: a shard of six 64 KiB blocks takes about 6 s.
    let mut started = six_servers(Duration::from_secs(1), 64 * 1024).await;
    let (volume, blobs, layout) = encoded_volume(&started).await;
    let lost = server_index(&layout.holders[3]);
    started.cluster.stop_volume(lost).await.unwrap();
    let job = eventually(Duration::from_secs(60), "a rebuild job open", || async {
        let record = volume_record(&started.client.status().await.ok()?, volume);
        (record.repairing && record.repair_kind == "rebuild-shard").then_some(record)
    })
    .await;
    assert_eq!(job.repair_shard, 3);
    started.cluster.restart_directory().await.unwrap();
    // The restarted directory holds the same job (same target, same start)
    // and finishes it there.
    let client = hayloft_client::Client::connect(&started.cluster.directory_addr())
        .await
        .unwrap();
    let reopened = eventually(
        Duration::from_secs(30),
        "the restarted directory",
        || async { Some(volume_record(&client.status().await.ok()?, volume)) },
    )
    .await;
    assert!(
        reopened.repairing,
        "the job is replicated state: {reopened:?}"
    );
    assert_eq!(
        (reopened.repair_target.as_str(), reopened.repair_started_at),
        (job.repair_target.as_str(), job.repair_started_at)
    );
    let holders = eventually(
        Duration::from_secs(90),
        "shard 3 recorded on the target",
        || async {
            let status = client.status().await.ok()?;
            let record = volume_record(&status, volume);
            let holders: Vec<String> = record
                .erasure?
                .holders
                .into_iter()
                .map(|h| h.server_id)
                .collect();
            (holders[3] != layout.holders[3] && !record.repairing).then_some(holders)
        },
    )
    .await;
    assert_eq!(holders[3], job.repair_target, "resumed on the same target");
    // Two others down: the blobs read from the rebuilt holder.
    for holder in &layout.holders[0..2] {
        started
            .cluster
            .stop_volume(server_index(holder))
            .await
            .unwrap();
    }
    every_blob_reads(&started, server_index(&holders[3]), &blobs, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_whose_shard_is_gone_has_it_rebuilt_elsewhere() {
    // repair_after is long: only the holder's own report can start this.
    let mut started = six_servers(Duration::from_secs(3600), 0).await;
    let (volume, blobs, layout) = encoded_volume(&started).await;
    let wiped = server_index(&layout.holders[1]);
    // A disk wiped under a live server: it comes back holding nothing.
    started.cluster.stop_volume(wiped).await.unwrap();
    let dir = ec_dir(&started.cluster, wiped);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with(&format!("{volume}.ec")) {
            std::fs::remove_file(path).unwrap();
        }
    }
    started.cluster.start_volume(wiped).await.unwrap();
    let moved = eventually(
        Duration::from_secs(60),
        "shard 1 rebuilt elsewhere",
        || async {
            let holders = holders_now(&started, volume).await?;
            (holders[1] != layout.holders[1]).then_some(holders)
        },
    )
    .await;
    assert!(!layout.holders.contains(&moved[1]), "{moved:?}");
    every_blob_reads(&started, server_index(&moved[1]), &blobs, true).await;
}
