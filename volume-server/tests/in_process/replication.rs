//! Replicated writes and deletes, a copy down, anti-entropy.

use std::time::Duration;

use hayloft::cluster::Cluster;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_write_reaches_every_copy_byte_for_byte() {
    let started = start(Cluster::builder().volume_servers(3).replication(3)).await;
    let uploaded = upload_many(&started.client, 20, 3000, 1).await;
    let status = started.client.status().await.unwrap();
    for (blob, data) in &uploaded {
        let copies = copies(&status, &blob.blob_id);
        assert_eq!(copies.len(), 3, "{}", blob.blob_id);
        for addr in copies {
            let read = read_from(&addr, &blob.blob_id).await.unwrap();
            assert_eq!(read, &data[..], "{} on {addr}", blob.blob_id);
        }
    }
    // A blob over one chunk is forwarded chunk by chunk.
    let large = content(99, 3 * hayloft_proto::CHUNK_BYTES + 17);
    let blob = started
        .client
        .upload(large.clone(), &options("video/mp4"))
        .await
        .unwrap();
    let status = started.client.status().await.unwrap();
    for addr in copies(&status, &blob.blob_id) {
        assert_eq!(read_from(&addr, &blob.blob_id).await.unwrap(), &large[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_reaches_every_copy() {
    let started = start(Cluster::builder().volume_servers(2).replication(2)).await;
    let uploaded = upload_many(&started.client, 4, 100, 10).await;
    let (deleted, kept) = uploaded.split_at(2);
    for (blob, _) in deleted {
        started.client.delete(&blob.blob_id).await.unwrap();
    }
    let status = started.client.status().await.unwrap();
    for (blob, _) in deleted {
        for addr in copies(&status, &blob.blob_id) {
            let error = read_from(&addr, &blob.blob_id).await.unwrap_err();
            assert_eq!(error.code(), Code::NotFound, "{} on {addr}", blob.blob_id);
        }
    }
    for (blob, data) in kept {
        for addr in copies(&status, &blob.blob_id) {
            assert_eq!(read_from(&addr, &blob.blob_id).await.unwrap(), &data[..]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_a_copy_down_is_refused_unavailable_and_not_kept_as_acknowledged() {
    let mut started = start(
        Cluster::builder()
            .volume_servers(2)
            .replication(2)
            .volume(|_, config| config.replica_timeout = Duration::from_secs(2)),
    )
    .await;
    let (ids, locations) = assign(&started.cluster, 1).await;
    let primary = &locations[hayloft_proto::primary_index(
        ids[0].parse::<hayloft_storage::BlobId>().unwrap().needle.0,
        &locations,
    )
    .unwrap()];
    let other = locations
        .iter()
        .position(|l| l.server_id != primary.server_id)
        .unwrap();
    let down = server_index(&locations[other].server_id);
    started.cluster.stop_volume(down).await.unwrap();

    let data = content(7, 1000);
    let mut header = header(&ids[0], data.len() as u64);
    header.replicas = locations.clone();
    let mut client = volume_client(&primary.grpc_addr).await;
    let error = client
        .write(futures::stream::iter(write_messages(header, &data)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_fills_a_copy_that_missed_writes_and_deletes() {
    let started = start(
        Cluster::builder()
            .volume_servers(2)
            .replication(2)
            .volume(|_, config| config.anti_entropy_interval = Duration::from_millis(500)),
    )
    .await;
    // Blobs both copies hold, then one of them deleted on the first copy
    // alone, and new blobs written to the first copy alone (as a primary's
    // forwarded write that never reached the other copy).
    let shared = upload_many(&started.client, 3, 500, 20).await;
    let (ids, locations) = assign(&started.cluster, 4).await;
    let (holder, missing) = (&locations[0].grpc_addr, &locations[1].grpc_addr);
    let mut client = volume_client(holder).await;
    let mut written = Vec::new();
    for (i, blob_id) in ids.iter().enumerate() {
        let data = content(30 + i as u64, 700);
        let mut header = header(blob_id, data.len() as u64);
        header.forwarded = true;
        client
            .write(futures::stream::iter(write_messages(header, &data)))
            .await
            .unwrap();
        assert_eq!(
            read_from(missing, blob_id).await.unwrap_err().code(),
            Code::NotFound
        );
        written.push((blob_id.clone(), data));
    }
    let status = started.client.status().await.unwrap();
    let (gone, _) = &shared[0];
    let gone_copies = copies(&status, &gone.blob_id);
    let mut first = volume_client(&gone_copies[0]).await;
    first
        .delete(hayloft_proto::DeleteRequest {
            blob_id: gone.blob_id.clone(),
            forwarded: true,
            verified: true,
        })
        .await
        .unwrap();

    for (blob_id, data) in &written {
        eventually(
            Duration::from_secs(30),
            "anti-entropy copies the missed write",
            || async { (read_from(missing, blob_id).await.ok()? == data[..]).then_some(()) },
        )
        .await;
    }
    eventually(
        Duration::from_secs(30),
        "anti-entropy copies the missed delete",
        || async {
            let error = read_from(&gone_copies[1], &gone.blob_id).await.err()?;
            (error.code() == Code::NotFound).then_some(())
        },
    )
    .await;
    for (blob, data) in &shared[1..] {
        for addr in copies(&status, &blob.blob_id) {
            assert_eq!(read_from(&addr, &blob.blob_id).await.unwrap(), &data[..]);
        }
    }
}
