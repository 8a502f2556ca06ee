//! `Client::upload_batch`.

use bytes::Bytes;
use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_client::UploadOptions;

use crate::support::*;

fn batch(count: usize, len: impl Fn(usize) -> usize, seed: u64) -> Vec<(Bytes, UploadOptions)> {
    (0..count)
        .map(|i| (content(seed + i as u64, len(i)), options("image/png")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_in_order_and_every_blob_reads_back() {
    let started = start(Cluster::builder().volume_servers(2)).await;
    let blobs = batch(100, |i| 1 + i * 600, 1);
    let results = started.client.upload_batch(blobs.clone()).await;
    assert_eq!(results.len(), blobs.len());
    let mut ids = std::collections::HashSet::new();
    for ((data, _), result) in blobs.iter().zip(results) {
        let uploaded = result.unwrap();
        assert_eq!(uploaded.size, data.len() as u64);
        assert!(ids.insert(uploaded.blob_id.clone()));
        let (info, read) = started.client.download(&uploaded.blob_id).await.unwrap();
        assert_eq!(&read, data);
        assert_eq!(info.etag, uploaded.etag);
        assert_eq!(info.content_type, "image/png");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_uploads_blobs_over_the_batch_limit_alone() {
    let started = start(Cluster::builder()).await;
    let limit = hayloft_client::BATCH_BLOB_MAX as usize;
    let blobs = batch(6, |i| if i % 2 == 0 { 100 } else { limit + i * 1000 }, 10);
    let results = started.client.upload_batch(blobs.clone()).await;
    for ((data, _), result) in blobs.iter().zip(results) {
        let uploaded = result.unwrap();
        assert_eq!(
            &started.client.download(&uploaded.blob_id).await.unwrap().1,
            data
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reaches_every_copy() {
    let started = start(Cluster::builder().volume_servers(2).replication(2)).await;
    let blobs = batch(20, |i| 100 + i, 30);
    let results = started.client.upload_batch(blobs.clone()).await;
    let status = started.client.status().await.unwrap();
    for ((data, _), result) in blobs.iter().zip(results) {
        let blob_id = result.unwrap().blob_id;
        let copies = copies(&status, &blob_id);
        assert_eq!(copies.len(), 2);
        for addr in copies {
            assert_eq!(read_from(&addr, &blob_id).await.unwrap(), &data[..]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_refused_by_a_volume_that_filled_mid_batch_are_retried_elsewhere() {
    let started =
        start(Cluster::builder().volume(|_, config| config.max_volume_size = ByteSize::mib(1)))
            .await;
    // 40 x 60 KiB = 2.3 MiB into 1 MiB volumes.
    let blobs = batch(40, |_| 60 * 1024, 50);
    let results = started.client.upload_batch(blobs.clone()).await;
    let mut volumes = std::collections::BTreeSet::new();
    for ((data, _), result) in blobs.iter().zip(results) {
        let uploaded = result.unwrap();
        volumes.insert(
            uploaded
                .blob_id
                .parse::<hayloft_storage::BlobId>()
                .unwrap()
                .volume(),
        );
        assert_eq!(
            &started.client.download(&uploaded.blob_id).await.unwrap().1,
            data
        );
    }
    assert!(volumes.len() >= 3, "{volumes:?}");
}
