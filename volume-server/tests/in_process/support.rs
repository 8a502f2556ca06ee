//! What the in-process tests share: a cluster with a client, waiting for a
//! state, direct gRPC calls to one server.

// Shared with the client's in-process tests (client/tests/in_process):
// each binary uses part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft::cluster::{Cluster, ClusterBuilder};
use hayloft_client::{Client, UploadOptions, Uploaded};
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{StatusResponse, VolumeRecord};
use tonic::transport::Channel;

/// A started cluster, its client, and the folder its data lives in (removed
/// when this is dropped).
pub struct Started {
    pub cluster: Cluster,
    pub client: Client,
    pub _dir: tempfile::TempDir,
}

/// Starts `builder`'s cluster in a temp folder, waits until every volume
/// server is alive in the directory, and connects a client.
pub async fn start(builder: ClusterBuilder) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let cluster = builder.start(dir.path()).await.unwrap();
    assert!(
        cluster.volume_servers_alive(cluster.volume_count()).await,
        "volume servers did not register"
    );
    let client = Client::connect(&cluster.directory_addr()).await.unwrap();
    Started {
        cluster,
        client,
        _dir: dir,
    }
}

/// Calls `check` every 50 ms until it returns something, and returns it;
/// fails naming `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deterministic bytes: `len` of them from `seed`.
pub fn content(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn options(content_type: &str) -> UploadOptions {
    UploadOptions {
        content_type: content_type.into(),
        ..UploadOptions::default()
    }
}

/// Uploads `count` blobs of `len` bytes (seeds from `seed`).
pub async fn upload_many(
    client: &Client,
    count: usize,
    len: usize,
    seed: u64,
) -> Vec<(Uploaded, Bytes)> {
    let mut uploaded = Vec::new();
    for i in 0..count {
        let data = content(seed + i as u64, len);
        let blob = client
            .upload(data.clone(), &options("application/octet-stream"))
            .await
            .unwrap();
        uploaded.push((blob, data));
    }
    uploaded
}

pub async fn volume_client(addr: &str) -> VolumeClient<Channel> {
    VolumeClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
}

/// A whole blob read over gRPC from the server at `addr` alone.
pub async fn read_from(addr: &str, blob_id: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut client = volume_client(addr).await;
    let mut stream = client
        .read(hayloft_proto::ReadRequest {
            blob_id: blob_id.to_owned(),
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        data.extend_from_slice(&message.chunk);
    }
    Ok(data)
}

/// The directory's record of the volume of `blob_id`.
pub fn record<'a>(status: &'a StatusResponse, blob_id: &str) -> &'a VolumeRecord {
    let volume = blob_id
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .0;
    status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))
        .unwrap_or_else(|| panic!("volume {volume} not in the status"))
}

/// The gRPC addresses of every copy of `blob_id`'s volume.
pub fn copies(status: &StatusResponse, blob_id: &str) -> Vec<String> {
    record(status, blob_id)
        .replicas
        .iter()
        .map(|r| r.location.clone().unwrap().grpc_addr)
        .collect()
}

/// Assigns `count` ids in one volume straight from the directory: the blob
/// ids and every copy, primary first.
pub async fn assign(
    cluster: &Cluster,
    count: u32,
) -> (Vec<String>, Vec<hayloft_proto::ServerLocation>) {
    let mut directory = hayloft_proto::directory_client::DirectoryClient::connect(format!(
        "http://{}",
        cluster.directory_addr()
    ))
    .await
    .unwrap();
    let assigned = directory
        .assign(hayloft_proto::AssignRequest {
            count,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids = assigned.blobs.iter().map(|b| b.blob_id.clone()).collect();
    (ids, assigned.locations)
}

/// The messages of a `Write` of `data` under `header` (chunked).
pub fn write_messages(
    header: hayloft_proto::WriteHeader,
    data: &[u8],
) -> Vec<hayloft_proto::WriteRequest> {
    use hayloft_proto::write_request::Part;
    let mut messages = vec![hayloft_proto::WriteRequest {
        part: Some(Part::Header(header)),
    }];
    for chunk in data.chunks(hayloft_proto::CHUNK_BYTES) {
        messages.push(hayloft_proto::WriteRequest {
            part: Some(Part::Chunk(Bytes::copy_from_slice(chunk))),
        });
    }
    messages
}

/// A write header for `blob_id` of `size` bytes.
pub fn header(blob_id: &str, size: u64) -> hayloft_proto::WriteHeader {
    hayloft_proto::WriteHeader {
        blob_id: blob_id.to_owned(),
        size,
        content_type: "application/octet-stream".into(),
        ..Default::default()
    }
}

/// The index of the cluster's volume server `vs<i>`.
pub fn server_index(server_id: &str) -> usize {
    server_id.trim_start_matches("vs").parse().unwrap()
}

/// Fills a volume (of 1 MiB, as the test's cluster sets) until it seals
/// itself: blobs of 90 KiB and more, so that needles cross 64 KiB block
/// ends. Returns the volume and the blobs written.
pub async fn fill_until_sealed(started: &Started) -> (u32, Vec<(hayloft_storage::BlobId, Bytes)>) {
    use futures::stream;
    let (ids, locations) = assign(&started.cluster, 16).await;
    let mut client = volume_client(&locations[0].grpc_addr).await;
    let mut written = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let data = content(i as u64, 90_000 + i * 7_001);
        match client
            .write(stream::iter(write_messages(
                header(id, data.len() as u64),
                &data,
            )))
            .await
        {
            Ok(_) => written.push((id.parse::<hayloft_storage::BlobId>().unwrap(), data)),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => break,
            Err(status) => panic!("write failed: {status:?}"),
        }
    }
    let volume = written[0].0.volume().0;
    wait_sealed(started, volume).await;
    (volume, written)
}

/// Waits until `volume` is sealed as its server reports it, and in the
/// directory's state.
pub async fn wait_sealed(started: &Started, volume: u32) {
    let client = &started.client;
    eventually(Duration::from_secs(20), "the volume sealed", || async {
        let status = client.status().await.ok()?;
        let record = status
            .volumes
            .iter()
            .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))?;
        let sealed = record.state == hayloft_proto::VolumeState::Sealed as i32;
        (sealed && record.status.as_ref()?.sealed).then_some(())
    })
    .await;
}
