//! A server stopped under the client.

use std::time::Duration;

use hayloft::cluster::Cluster;
use hayloft_storage::BlobId;
use tonic::Code;

use crate::support::*;

fn volume_of(blob_id: &str) -> u32 {
    blob_id.parse::<BlobId>().unwrap().volume().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_reserved_server_stopped_goes_to_another_server() {
    let mut started = start(Cluster::builder().volume_servers(2)).await;
    let first = upload_many(&started.client, 1, 100, 1).await;
    let status = started.client.status().await.unwrap();
    let holder = record(&status, &first[0].0.blob_id).replicas[0]
        .location
        .clone()
        .unwrap()
        .server_id;
    // The client still holds ids reserved in the stopped server's volume.
    started
        .cluster
        .stop_volume(server_index(&holder))
        .await
        .unwrap();
    let client = &started.client;
    let holder_ref = &holder;
    eventually(
        Duration::from_secs(30),
        "the server reported dead",
        || async {
            let status = client.status().await.ok()?;
            status
                .servers
                .iter()
                .any(|s| {
                    !s.alive
                        && s.location
                            .as_ref()
                            .is_some_and(|l| &l.server_id == holder_ref)
                })
                .then_some(())
        },
    )
    .await;
    let moved = upload_many(client, 3, 100, 2).await;
    let status = client.status().await.unwrap();
    for (blob, data) in &moved {
        assert_ne!(volume_of(&blob.blob_id), volume_of(&first[0].0.blob_id));
        let copy = record(&status, &blob.blob_id).replicas[0]
            .location
            .clone()
            .unwrap();
        assert_ne!(&copy.server_id, &holder);
        assert_eq!(&client.download(&blob.blob_id).await.unwrap().1, data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_server_left_an_upload_fails_with_an_error_worth_retrying_later() {
    let mut started = start(Cluster::builder()).await;
    upload_many(&started.client, 1, 100, 1).await;
    started.cluster.stop_volume(0).await.unwrap();
    let error = started
        .client
        .upload(content(2, 100), &options("text/plain"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    // It says it retried, and where it last tried.
    let message = error.to_string();
    assert!(
        message.contains("upload failed 4 times") && message.contains("server vs0"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_finds_its_blob_again_after_the_server_came_back_on_new_ports() {
    let mut started = start(Cluster::builder()).await;
    let uploaded = upload_many(&started.client, 2, 5000, 1).await;
    let (blob, data) = &uploaded[0];
    // Cached location.
    assert_eq!(
        &started.client.download(&blob.blob_id).await.unwrap().1,
        data
    );
    started.cluster.stop_volume(0).await.unwrap();
    started.cluster.start_volume(0).await.unwrap();
    let grpc = started.cluster.volume(0).unwrap().grpc_addr();
    let client = &started.client;
    eventually(
        Duration::from_secs(30),
        "the new address registered",
        || async {
            let status = client.status().await.ok()?;
            (status.servers[0].location.as_ref()?.grpc_addr == grpc).then_some(())
        },
    )
    .await;
    // The cached address refuses connections: the client looks it up again.
    assert_eq!(&client.download(&blob.blob_id).await.unwrap().1, data);
    assert_eq!(
        client.stat(&uploaded[1].0.blob_id).await.unwrap().size,
        5000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stats_and_deletes_go_to_the_other_copy_when_one_is_down() {
    let mut started = start(Cluster::builder().volume_servers(2).replication(2)).await;
    let uploaded = upload_many(&started.client, 4, 3000, 1).await;
    for (blob, _) in &uploaded {
        started.client.stat(&blob.blob_id).await.unwrap();
    }
    started.cluster.stop_volume(0).await.unwrap();
    for (blob, data) in &uploaded {
        assert_eq!(
            &started.client.download(&blob.blob_id).await.unwrap().1,
            data
        );
        assert_eq!(started.client.stat(&blob.blob_id).await.unwrap().size, 3000);
    }
}
