//! `hayloft server` in process ([`hayloft::server`]): every port 0, the
//! addresses it reports used end to end, a clean stop and a restart.

#![allow(clippy::unwrap_used)]

// The e2e tests' wait for a state; this binary uses only part of it.
#[allow(dead_code)]
#[path = "../../tests/support/eventually.rs"]
mod eventually;

use std::time::Duration;

use bytes::Bytes;
use hayloft::server::{Addresses, Embedded, Error, Running};
use hayloft_client::{Client, UploadOptions};

use eventually::{eventually, secs};

/// Starts an embedded server on port 0 under `dir`, and the sender that stops it.
async fn start(dir: &std::path::Path) -> (Running, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = hayloft::server::start(Embedded::on_any_port(dir), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    (running, stop)
}

fn no_port_zero(addresses: &Addresses) {
    let metrics = addresses.metrics.unwrap();
    for addr in [addresses.directory, addresses.grpc, addresses.http, metrics] {
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addresses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_server_on_port_zero_serves_on_the_ports_it_reports_and_stops_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (running, stop) = start(dir.path()).await;
    let addresses = running.addresses;
    no_port_zero(&addresses);

    let client = Client::connect(&addresses.directory.to_string())
        .await
        .unwrap();
    let uploaded = client
        .upload(
            Bytes::from_static(b"hello, hayloft"),
            &UploadOptions {
                content_type: "text/plain".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    // The volume server registered with the address it got, not `:0`: the
    // client's URL and the directory's status name the bound ports.
    assert_eq!(
        uploaded.url,
        format!("http://{}/{}", addresses.http, uploaded.blob_id)
    );
    let status = client.status().await.unwrap();
    let server = status.servers[0].location.clone().unwrap();
    assert_eq!(server.server_id, "local");
    assert_eq!(server.grpc_addr, addresses.grpc.to_string());
    assert_eq!(server.http_addr, addresses.http.to_string());

    let http = reqwest::Client::new();
    let body = http.get(&uploaded.url).send().await.unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(&body.bytes().await.unwrap()[..], b"hello, hayloft");

    // /metrics and the operator page on the metrics address.
    let metrics = addresses.metrics.unwrap();
    let scraped = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("hayloft_"));
    let page = http.get(format!("http://{metrics}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("<html") && page.contains("local"), "{page}");

    stop.send(()).unwrap();
    running.stopped().await.unwrap();
    // Everything stopped: no port answers any more.
    for (role, addr) in [
        ("directory", addresses.directory),
        ("volume gRPC", addresses.grpc),
        ("origin", addresses.http),
        ("metrics", metrics),
    ] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{role} {addr} still answers"
        );
    }

    // A restart on other ports keeps the blob; the directory learns the
    // volume server's new addresses.
    let (running, stop) = start(dir.path()).await;
    let client = Client::connect(&running.addresses.directory.to_string())
        .await
        .unwrap();
    // The directory still names the old ports until the first heartbeat.
    let grpc = running.addresses.grpc.to_string();
    eventually(
        secs(30),
        "the directory names the volume server's new gRPC address",
        async || {
            let status = client.status().await.unwrap();
            let location = status.servers[0].location.clone().unwrap();
            if location.grpc_addr == grpc {
                Ok(())
            } else {
                Err(status)
            }
        },
    )
    .await;
    let (_, bytes) = client.download(&uploaded.blob_id).await.unwrap();
    assert_eq!(&bytes[..], b"hello, hayloft");
    // The directory, a group of one, records its own new address too (not
    // the first start's, which no longer answers).
    let own = format!("1={}", running.addresses.directory);
    let mut node = hayloft_proto::directory_client::DirectoryClient::connect(format!(
        "http://{}",
        running.addresses.directory
    ))
    .await
    .unwrap();
    eventually(
        secs(30),
        "the directory records its own new address as the group's one member",
        async || {
            let status = node
                .node(hayloft_proto::NodeRequest {})
                .await
                .unwrap()
                .into_inner();
            if status.members == [own.clone()] {
                Ok(())
            } else {
                Err(status)
            }
        },
    )
    .await;
    let url = format!("http://{}/{}", running.addresses.http, uploaded.blob_id);
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(&again.bytes().await.unwrap()[..], b"hello, hayloft");
    drop(stop); // dropping the sender is a shutdown too
    running.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_bind_says_which_part_failed_and_leaves_its_data_reusable() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = Embedded::on_any_port(dir.path());
    config.volume.http_listen = taken.local_addr().unwrap();
    let error = match hayloft::server::start(config, std::future::pending()).await {
        Err(error) => error,
        Ok(_) => panic!("started on a port already bound"),
    };
    assert!(matches!(error, Error::StartVolume(_)), "{error:?}");
    // The directory that had started was closed: its database opens again.
    let (running, stop) = start(dir.path()).await;
    no_port_zero(&running.addresses);
    drop(stop);
    tokio::time::timeout(Duration::from_secs(60), running.stopped())
        .await
        .unwrap()
        .unwrap();
}
