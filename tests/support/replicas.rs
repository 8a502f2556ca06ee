//! What the replication and healing tests share: reading and writing one
//! copy directly, and waiting for the directory to say a volume is whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use hayloft_client::{Client, UploadOptions};
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{ReadRequest, ReplicaHealth, StatusResponse, VolumeHealth, VolumeRecord};
use hayloft_storage::BlobId;

use super::{Cluster, content, eventually, secs};

pub fn record<'a>(status: &'a StatusResponse, blob_id: &str) -> &'a VolumeRecord {
    let volume = blob_id.parse::<BlobId>().unwrap().volume().0;
    status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))
        .expect("volume in the directory")
}

pub fn replica_ids(record: &VolumeRecord) -> Vec<String> {
    record
        .replicas
        .iter()
        .map(|r| r.location.clone().unwrap().server_id)
        .collect()
}

/// Reads a blob over gRPC from one particular server (no failover).
pub async fn read_from(addr: &str, blob_id: &str) -> Result<Vec<u8>, tonic::Status> {
    read_range_from(addr, blob_id, 0, 0).await
}

/// Reads `length` bytes (0: to the end) of a blob from `offset`, over gRPC
/// from one particular server (no failover).
pub async fn read_range_from(
    addr: &str,
    blob_id: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut client = VolumeClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES);
    let mut stream = client
        .read(ReadRequest {
            blob_id: blob_id.to_owned(),
            offset,
            length,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        data.extend_from_slice(&message.chunk);
    }
    Ok(data)
}

/// The volumes server `index` holds on disk (`ListVolumes`); `None` while it
/// does not answer.
pub async fn volumes_on(cluster: &Cluster, index: usize) -> Option<Vec<u32>> {
    let mut client = VolumeClient::connect(format!("http://{}", cluster.grpc_addr(index)))
        .await
        .ok()?;
    let list = client
        .list_volumes(hayloft_proto::ListVolumesRequest {})
        .await
        .ok()?;
    Some(
        list.into_inner()
            .volumes
            .iter()
            .map(|v| v.volume_id)
            .collect(),
    )
}

/// Every blob reads back byte for byte from every healthy copy.
pub async fn assert_on_every_copy(cluster: &Cluster, acked: &[(String, u64, usize)]) {
    let status = cluster.client().await.status().await.unwrap();
    for (blob_id, seed, len) in acked {
        let record = record(&status, blob_id);
        for replica in &record.replicas {
            let location = replica.location.clone().unwrap();
            let data = read_from(&location.grpc_addr, blob_id)
                .await
                .unwrap_or_else(|e| panic!("{blob_id} on {}: {e}", location.server_id));
            assert_eq!(
                data,
                content(*seed, *len),
                "{blob_id} differs on {}",
                location.server_id
            );
        }
    }
}

/// Waits until every volume is healthy and every blob reads back from
/// every copy (a restarted server's copies are healthy to the directory
/// only once its next heartbeat says so).
pub async fn wait_on_every_copy(cluster: &Cluster, acked: &[(String, u64, usize)]) {
    eventually(secs(60), "every copy of every blob", async || {
        let status = wait_healthy(cluster, 3).await;
        let mut missing = Vec::new();
        for (blob_id, seed, len) in acked {
            for replica in &record(&status, blob_id).replicas {
                let location = replica.location.clone().unwrap();
                match read_from(&location.grpc_addr, blob_id).await {
                    Ok(data) if data == content(*seed, *len) => {}
                    other => missing.push((blob_id.clone(), location.server_id, other.err())),
                }
            }
        }
        match missing.len() {
            0 => Ok(()),
            n => Err(format!(
                "{n} copies missing, e.g. {:?}",
                &missing[..n.min(3)]
            )),
        }
    })
    .await;
}

/// Asks the directory for its status until `found` finds in it what the
/// caller waits for; fails with `what` and the last status after `within`.
pub async fn until_status<T>(
    client: &Client,
    within: Duration,
    what: &str,
    mut found: impl FnMut(&StatusResponse) -> Option<T>,
) -> T {
    eventually(within, what, async || {
        let status = client.status().await.unwrap();
        found(&status).ok_or(status)
    })
    .await
}
/// Waits until every volume has `copies` healthy copies.
pub async fn wait_healthy(cluster: &Cluster, copies: usize) -> StatusResponse {
    let client = cluster.client().await;
    until_status(
        &client,
        Duration::from_secs(30),
        "volumes did not become healthy",
        |status| {
            status
                .volumes
                .iter()
                .all(|v| {
                    v.health == VolumeHealth::Ok as i32
                        && v.replicas
                            .iter()
                            .filter(|r| r.health == ReplicaHealth::Ok as i32)
                            .count()
                            == copies
                })
                .then(|| status.clone())
        },
    )
    .await
}

/// Assigns `count` ids in one volume: the blob ids and every copy, primary first.
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
            ..hayloft_proto::AssignRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    (
        assigned.blobs.into_iter().map(|b| b.blob_id).collect(),
        assigned.locations,
    )
}

/// Writes one blob to its id's primary copy, which forwards it to the
/// others, as the client library does.
pub async fn write_to_primary(
    locations: &[hayloft_proto::ServerLocation],
    blob_id: &str,
    data: Vec<u8>,
) -> Result<(), tonic::Status> {
    write_at(primary_of(locations, blob_id), locations, blob_id, data).await
}

/// The copy that orders writes of `blob_id` (a client's write goes there).
pub fn primary_of<'l>(
    locations: &'l [hayloft_proto::ServerLocation],
    blob_id: &str,
) -> &'l hayloft_proto::ServerLocation {
    let needle = blob_id.parse::<hayloft_storage::BlobId>().unwrap().needle.0;
    &locations[hayloft_proto::primary_index(needle, locations).unwrap()]
}

/// Writes one blob as a client would, to the copy `at`, naming `locations`.
pub async fn write_at(
    at: &hayloft_proto::ServerLocation,
    locations: &[hayloft_proto::ServerLocation],
    blob_id: &str,
    data: Vec<u8>,
) -> Result<(), tonic::Status> {
    use hayloft_proto::write_request::Part;
    use hayloft_proto::{WriteHeader, WriteRequest};
    let mut volume = VolumeClient::connect(format!("http://{}", at.grpc_addr))
        .await
        .unwrap();
    let messages = vec![
        WriteRequest {
            part: Some(Part::Header(WriteHeader {
                blob_id: blob_id.to_owned(),
                size: data.len() as u64,
                replicas: locations.to_vec(),
                ..WriteHeader::default()
            })),
        },
        WriteRequest {
            part: Some(Part::Chunk(Bytes::from(data))),
        },
    ];
    volume
        .write(futures::stream::iter(messages))
        .await
        .map(|_| ())
}

/// Uploads `count` blobs of up to 8 KiB from `tasks` tasks through the
/// client library: (blob id, seed, length) of each.
pub async fn upload_many(
    client: &Arc<Client>,
    count: u64,
    tasks: u64,
) -> Vec<(String, u64, usize)> {
    let acked: Arc<std::sync::Mutex<Vec<(String, u64, usize)>>> = Arc::default();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let client = Arc::clone(client);
        let acked = Arc::clone(&acked);
        handles.push(tokio::spawn(async move {
            for seed in (task..count).step_by(tasks as usize) {
                let len = 1 + (seed as usize * 997) % 8192;
                let uploaded = client
                    .upload(Bytes::from(content(seed, len)), &UploadOptions::default())
                    .await
                    .unwrap();
                acked.lock().unwrap().push((uploaded.blob_id, seed, len));
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}
