//! Ids reserved ahead, a block per `Assign`.

use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_storage::BlobId;

use crate::support::*;

fn parsed(blob_id: &str) -> BlobId {
    blob_id.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_uploads_take_consecutive_ids_of_one_reserved_block() {
    let started = start(Cluster::builder()).await;
    // Fewer uploads than a block holds.
    let uploaded = upload_many(&started.client, 10, 100, 1).await;
    const { assert!(hayloft_client::RESERVE_IDS >= 10) };
    let ids: Vec<BlobId> = uploaded.iter().map(|(b, _)| parsed(&b.blob_id)).collect();
    for pair in ids.windows(2) {
        assert_eq!(pair[0].volume(), pair[1].volume(), "{ids:?}");
        assert_eq!(pair[1].needle.0, pair[0].needle.0 + 1, "{ids:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_reserve_blocks_of_their_own_and_never_share_an_id() {
    let started = start(Cluster::builder().volume_servers(2)).await;
    let other = hayloft_client::Client::connect(&started.cluster.directory_addr())
        .await
        .unwrap();
    let (first, second) = tokio::join!(
        upload_many(&started.client, 30, 50, 100),
        upload_many(&other, 30, 50, 200),
    );
    let mut seen = std::collections::HashSet::new();
    for (blob, data) in first.iter().chain(&second) {
        assert!(
            seen.insert(parsed(&blob.blob_id).needle),
            "{} twice",
            blob.blob_id
        );
        assert_eq!(
            &started.client.download(&blob.blob_id).await.unwrap().1,
            data
        );
    }
    // Each client's ids are one run: no id of the other's block in between.
    for uploads in [&first, &second] {
        let ids: Vec<BlobId> = uploads.iter().map(|(b, _)| parsed(&b.blob_id)).collect();
        for pair in ids.windows(2) {
            assert_eq!(pair[1].needle.0, pair[0].needle.0 + 1, "{ids:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_moves_the_client_to_another_volume() {
    let started =
        start(Cluster::builder().volume(|_, config| config.max_volume_size = ByteSize::mib(1)))
            .await;
    // 2.4 MiB through 1 MiB volumes: the reserved block's volume fills,
    // the write is refused, the client reserves a block elsewhere.
    let uploaded = upload_many(&started.client, 12, 200 * 1024, 1).await;
    let volumes: std::collections::BTreeSet<u32> = uploaded
        .iter()
        .map(|(b, _)| parsed(&b.blob_id).volume().0)
        .collect();
    assert!(volumes.len() >= 3, "{volumes:?}");
    for (blob, data) in &uploaded {
        assert_eq!(
            &started.client.download(&blob.blob_id).await.unwrap().1,
            data
        );
    }
    let status = started.client.status().await.unwrap();
    let first = record(&status, &uploaded[0].0.blob_id);
    assert!(first.status.as_ref().unwrap().sealed, "{first:?}");
}
