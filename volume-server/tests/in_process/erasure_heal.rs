//! Erasure-coded volumes heal: a wiped holder rebuilds its shard, a holder
//! that missed a delete catches up from the others' journals, scrub mends
//! a rotten chunk.

use std::time::Duration;

use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_storage::erasure::{CHUNK_LEN, EcVolume};
use tonic::Code;

use crate::erasure::{delete, ec_dir, encode, http_get, one_mib_volumes, sealed_volume};
use crate::support::*;

/// Removes every file of erasure-coded volume `volume` on server `server`
/// (a wiped disk).
fn wipe(cluster: &Cluster, server: usize, volume: u32) {
    let dir = ec_dir(cluster, server);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with(&format!("{volume}.ec")) {
            std::fs::remove_file(path).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_holder_rebuilds_its_shard_and_blobs_read_with_m_others_down() {
    let mut started = one_mib_volumes().await;
    let (volume, blobs) = sealed_volume(&mut started, 5).await;
    let manifest = encode(&started, volume, "3+2").await;
    started.cluster.stop_volume(2).await.unwrap();
    wipe(&started.cluster, 2, volume);
    started.cluster.start_volume(2).await.unwrap();
    let rebuilder = started.cluster.volume(2).unwrap().grpc_addr();
    let source = started.cluster.volume(3).unwrap().grpc_addr();
    let mut progress = volume_client(&rebuilder)
        .await
        .ec_rebuild(hayloft_proto::EcRebuildRequest {
            volume_id: volume,
            shard: 2,
            source,
            rate: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(step) = progress.message().await.unwrap() {
        last = Some((step.done, step.total));
    }
    let (done, total) = last.unwrap();
    assert_eq!(done, total);
    // The shard is back, byte for byte as encoded.
    let ec = EcVolume::open(
        &ec_dir(&started.cluster, 2),
        hayloft_storage::VolumeId(volume),
    )
    .unwrap();
    assert_eq!(ec.held(), vec![2]);
    assert_eq!(ec.shard(2).unwrap().digest(), manifest.digests[2]);
    // Two other holders down: every blob reads from the rebuilt one.
    started.cluster.stop_volume(0).await.unwrap();
    started.cluster.stop_volume(1).await.unwrap();
    for (blob, data) in &blobs {
        let response = http_get(&started.cluster, 2, *blob, None).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{blob}");
        assert!(response.bytes().await.unwrap() == data, "wrong bytes");
    }
    // A second rebuild of a shard held: nothing to do.
    let mut again = volume_client(&rebuilder)
        .await
        .ec_rebuild(hayloft_proto::EcRebuildRequest {
            volume_id: volume,
            shard: 2,
            source: String::new(),
            rate: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_missed_a_delete_catches_up_from_the_others_journals() {
    let mut started = start(Cluster::builder().volume_servers(1).volume(|_, config| {
        config.max_volume_size = ByteSize::mib(1);
        config.anti_entropy_interval = Duration::from_millis(300);
    }))
    .await;
    let (volume, blobs) = sealed_volume(&mut started, 3).await;
    encode(&started, volume, "2+1").await;
    started.cluster.stop_volume(1).await.unwrap();
    let (blob, _) = &blobs[3];
    let addr = started.cluster.volume(2).unwrap().grpc_addr();
    let refused = delete(&addr, *blob).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Server 1 comes back without the delete, and pulls it from the others.
    started.cluster.start_volume(1).await.unwrap();
    let dir = ec_dir(&started.cluster, 1);
    eventually(
        Duration::from_secs(20),
        "the delete reached server 1",
        || async {
            let journal = std::fs::read(dir.join(format!("{volume}.ecj"))).ok()?;
            hayloft_storage::sealed::parse_tombs(&journal)
                .contains(&blob.needle)
                .then_some(())
        },
    )
    .await;
    let response = http_get(&started.cluster, 1, *blob, None).await;
    assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
    let (other, data) = &blobs[4];
    let response = http_get(&started.cluster, 1, *other, None).await;
    assert!(response.bytes().await.unwrap() == data, "wrong bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_mends_a_flipped_byte_in_a_shard_from_the_other_shards() {
    let mut started = start(Cluster::builder().volume_servers(1).volume(|_, config| {
        config.max_volume_size = ByteSize::mib(1);
        config.scrub_interval = Duration::from_millis(300);
    }))
    .await;
    let (volume, blobs) = sealed_volume(&mut started, 3).await;
    let manifest = encode(&started, volume, "2+1").await;
    let path = hayloft_storage::erasure::shard_path(
        &ec_dir(&started.cluster, 1),
        hayloft_storage::VolumeId(volume),
        1,
    );
    // A byte flipped on disk in the second chunk of shard 1's body.
    let at = hayloft_storage::erasure::shard::SHARD_HEADER_LEN + CHUNK_LEN + 123;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    }
    let shard = hayloft_storage::erasure::ShardFile::open(&path).unwrap();
    let bad = shard.scrub(&mut hayloft_storage::Throttle::new(0)).unwrap();
    assert!(bad == vec![1] || bad.is_empty(), "{bad:?}");
    eventually(
        Duration::from_secs(20),
        "scrub mended the chunk",
        || async {
            let shard = hayloft_storage::erasure::ShardFile::open(&path).ok()?;
            shard
                .scrub(&mut hayloft_storage::Throttle::new(0))
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(shard.digest(), manifest.digests[1]);
    for (blob, data) in &blobs {
        let response = http_get(&started.cluster, 1, *blob, None).await;
        assert!(response.bytes().await.unwrap() == data, "wrong bytes");
    }
}
