//! Heartbeats: a volume server registers with the addresses it bound, its
//! volumes appear in the directory's status, a silent one is found dead and
//! a restarted one is found again on its new ports.

use std::time::Duration;

use hayloft::cluster::Cluster;
use hayloft_proto::StatusResponse;

use crate::support::*;

fn server<'a>(status: &'a StatusResponse, id: &str) -> Option<&'a hayloft_proto::ServerStatus> {
    status
        .servers
        .iter()
        .find(|s| s.location.as_ref().is_some_and(|l| l.server_id == id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_server_registers_with_its_bound_addresses_and_reports_its_volumes() {
    let started = start(Cluster::builder().volume_servers(2)).await;
    let status = started.client.status().await.unwrap();
    for i in 0..2 {
        let node = started.cluster.volume(i).unwrap();
        let reported = server(&status, &node.server_id).unwrap();
        let location = reported.location.as_ref().unwrap();
        assert!(reported.alive);
        assert_eq!(location.grpc_addr, node.grpc_addr());
        assert_eq!(location.http_addr, node.http.to_string());
        assert!(reported.free_hot_bytes > 0);
    }
    let uploaded = upload_many(&started.client, 5, 1000, 1).await;
    // The volumes written reach the status with their needles at a pulse.
    let client = &started.client;
    eventually(Duration::from_secs(20), "needles reported", || async {
        let status = client.status().await.ok()?;
        let reported: u64 = status
            .volumes
            .iter()
            .filter_map(|v| v.status.as_ref())
            .map(|s| s.needles)
            .sum();
        (reported == uploaded.len() as u64).then_some(())
    })
    .await;
    let status = client.status().await.unwrap();
    let record = record(&status, &uploaded[0].0.blob_id);
    let volume = record.status.as_ref().unwrap();
    assert!(!volume.sealed);
    assert_eq!(record.replicas.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_found_dead_and_a_restarted_one_alive_on_its_new_ports() {
    let mut started = start(Cluster::builder().volume_servers(2)).await;
    let uploaded = upload_many(&started.client, 6, 1000, 1).await;
    started.cluster.stop_volume(1).await.unwrap();
    let client = &started.client;
    eventually(Duration::from_secs(30), "vs1 reported dead", || async {
        let status = client.status().await.ok()?;
        (!server(&status, "vs1")?.alive).then_some(())
    })
    .await;
    started.cluster.start_volume(1).await.unwrap();
    let node = started.cluster.volume(1).unwrap();
    let grpc = node.grpc_addr();
    eventually(
        Duration::from_secs(30),
        "vs1 alive again on its new port",
        || async {
            let status = client.status().await.ok()?;
            let found = server(&status, "vs1")?;
            (found.alive && found.location.as_ref()?.grpc_addr == grpc).then_some(())
        },
    )
    .await;
    // Its blobs are found there again (the client looks the volume up anew).
    for (blob, data) in &uploaded {
        let (_, read) = client.download(&blob.blob_id).await.unwrap();
        assert_eq!(read, data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_server_stops_is_reported_down_and_healthy_again_once_it_is_back() {
    use hayloft_proto::{ReplicaHealth, VolumeHealth};
    let mut started = start(Cluster::builder().volume_servers(2).replication(2)).await;
    let uploaded = upload_many(&started.client, 3, 100, 1).await;
    let blob_id = uploaded[0].0.blob_id.clone();
    let health = |status: &StatusResponse| {
        let record = record(status, &blob_id);
        let copy = record
            .replicas
            .iter()
            .find(|r| r.location.as_ref().is_some_and(|l| l.server_id == "vs1"))
            .map(|r| r.health);
        (record.health, copy)
    };
    let status = started.client.status().await.unwrap();
    assert_eq!(
        health(&status),
        (VolumeHealth::Ok as i32, Some(ReplicaHealth::Ok as i32))
    );
    started.cluster.stop_volume(1).await.unwrap();
    let client = &started.client;
    eventually(
        Duration::from_secs(30),
        "vs1's copy reported down",
        || async {
            let status = client.status().await.ok()?;
            (health(&status)
                == (
                    VolumeHealth::Degraded as i32,
                    Some(ReplicaHealth::Down as i32),
                ))
                .then_some(())
        },
    )
    .await;
    // Reads avoid the copy that is down.
    for (blob, data) in &uploaded {
        assert_eq!(&client.download(&blob.blob_id).await.unwrap().1, data);
    }
    started.cluster.start_volume(1).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "vs1's copy healthy again",
        || async {
            let status = client.status().await.ok()?;
            (health(&status) == (VolumeHealth::Ok as i32, Some(ReplicaHealth::Ok as i32)))
                .then_some(())
        },
    )
    .await;
}
