//! The directory's `EncodeVolume` against five real volume servers: a
//! sealed volume re-stored as 3+2 shards on five distinct holders, its
//! copy removed only after the layout is committed, lookups answered with
//! the holders, every blob still in the shards; a dry run changes nothing;
//! an unsealed volume and too few servers are refused.

use std::collections::BTreeSet;

use bytes::Bytes;
use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_proto::directory_client::DirectoryClient;
use hayloft_proto::{
    EcReadShardRequest, EncodeVolumeProgress, EncodeVolumeRequest, ListVolumesRequest,
    LookupRequest, StatusRequest,
};
use hayloft_storage::BlobId;
use hayloft_storage::erasure::{CHUNK_LEN, EcVolume};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::*;

async fn directory(cluster: &Cluster) -> DirectoryClient<Channel> {
    DirectoryClient::connect(format!("http://{}", cluster.directory_addr()))
        .await
        .unwrap()
}

/// Fills a 1 MiB volume until it seals itself; returns it and its blobs.
async fn sealed_volume(started: &Started) -> (u32, Vec<(BlobId, Bytes)>) {
    fill_until_sealed(started).await
}

/// Runs `EncodeVolume` to its end: every message, or the error.
async fn encode(
    cluster: &Cluster,
    request: EncodeVolumeRequest,
) -> Result<Vec<EncodeVolumeProgress>, tonic::Status> {
    let mut stream = directory(cluster)
        .await
        .encode_volume(request)
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

fn request(volume: u32, code: &str, dry_run: bool) -> EncodeVolumeRequest {
    EncodeVolumeRequest {
        volume_id: volume,
        code: code.into(),
        dry_run,
        max_block: CHUNK_LEN,
        rate: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_volume_is_encoded_3_2_on_five_holders_and_its_copy_removed() {
    let started = start(
        Cluster::builder()
            .volume_servers(5)
            .volume(|_, config| config.max_volume_size = ByteSize::mib(1)),
    )
    .await;
    let cluster = &started.cluster;
    let (volume, blobs) = sealed_volume(&started).await;
    let status = started.client.status().await.unwrap();
    let record = |status: &hayloft_proto::StatusResponse, id: u32| {
        status
            .volumes
            .iter()
            .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == id))
            .unwrap()
            .clone()
    };
    let copy = record(&status, volume).replicas[0]
        .location
        .clone()
        .unwrap();

    // A writable volume is refused before anything happens.
    let writable = status
        .volumes
        .iter()
        .find(|v| v.state == hayloft_proto::VolumeState::Writable as i32)
        .map(|v| v.status.as_ref().unwrap().volume_id)
        .unwrap();
    let refused = encode(cluster, request(writable, "3+2", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("seal it first"), "{refused:?}");
    // Too few servers for the code: a clear error.
    let refused = encode(cluster, request(volume, "4+2", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("needs 6 distinct live volume servers with room for a shard"),
        "{refused:?}"
    );
    let refused = encode(cluster, request(volume, "3+x", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // A dry run: the plan only, nothing changes.
    let messages = encode(cluster, request(volume, "3+2", true)).await.unwrap();
    assert_eq!(messages.len(), 1);
    let plan = messages[0].plan.clone().unwrap();
    let planned: BTreeSet<String> = plan.holders.iter().map(|h| h.server_id.clone()).collect();
    assert_eq!(planned.len(), 5, "{plan:?}");
    assert_eq!(plan.copies, vec![copy.server_id.clone()]);
    assert_eq!(plan.source.as_ref().unwrap().server_id, copy.server_id);
    // Every server is in the default zone: more than 2 shards in it.
    assert_eq!(plan.warnings.len(), 1, "{plan:?}");
    assert!(plan.warnings[0].contains("zone default holds 5 of the 5 shards"));
    let after = started.client.status().await.unwrap();
    assert!(record(&after, volume).erasure.is_none());
    assert_eq!(record(&after, volume).replicas.len(), 1);

    // The encode: plan, progress, then the layout and the copy removed.
    let messages = encode(cluster, request(volume, "3+2", false))
        .await
        .unwrap();
    assert_eq!(messages[0].plan.as_ref().unwrap().holders, plan.holders);
    let last = messages.last().unwrap();
    let layout = last.layout.clone().unwrap();
    assert_eq!(layout.code, "3+2");
    assert_eq!(layout.digests.len(), 5);
    let holder_ids: Vec<String> = plan.holders.iter().map(|h| h.server_id.clone()).collect();
    assert_eq!(layout.holders, holder_ids);
    assert_eq!(last.removed, vec![copy.server_id.clone()]);
    assert!(last.left.is_empty());
    let progress: Vec<(u64, u64)> = messages[1..messages.len() - 1]
        .iter()
        .map(|m| (m.done, m.total))
        .collect();
    assert!(
        progress
            .last()
            .is_some_and(|(done, total)| done == total && *total > 0)
    );

    // Status: EC 3+2 on five distinct holders, no copy left, and the
    // effective replication factor of erasure-coded data near 5/3.
    let status = started.client.status().await.unwrap();
    let encoded = record(&status, volume);
    let erasure = encoded.erasure.clone().unwrap();
    assert_eq!(erasure.code, "3+2");
    let shown: BTreeSet<String> = erasure
        .holders
        .iter()
        .map(|h| h.server_id.clone())
        .collect();
    assert_eq!(shown.len(), 5);
    assert!(encoded.replicas.is_empty(), "{encoded:?}");
    assert_eq!(encoded.health, hayloft_proto::VolumeHealth::Ok as i32);
    let factor = status.erasure_stored_bytes as f64 / status.erasure_logical_bytes as f64;
    assert!((1.6..2.0).contains(&factor), "{factor}");
    // The copy is gone from its server.
    let listed = volume_client(&copy.grpc_addr)
        .await
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.volumes.iter().all(|v| v.volume_id != volume));

    // Lookup answers the holders: any of them serves any needle.
    let found = directory(cluster)
        .await
        .lookup(LookupRequest {
            volume_ids: vec![volume],
            blob_ids: vec![blobs[0].0.to_string()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.volumes.len(), 1);
    let location = &found.volumes[0];
    let looked_up: BTreeSet<String> = location
        .locations
        .iter()
        .map(|l| l.server_id.clone())
        .collect();
    assert_eq!(looked_up, shown);
    assert_eq!(location.erasure.as_ref().unwrap().holders, erasure.holders);

    // Every blob's bytes are in the shards, each read from its holder.
    let first_holder = (0..cluster.volume_count())
        .find(|i| cluster.volume(*i).unwrap().grpc_addr() == plan.holders[0].grpc_addr)
        .unwrap();
    let ec = EcVolume::open(
        &cluster.volume_dir(first_holder).join("warm"),
        hayloft_storage::VolumeId(volume),
    )
    .unwrap();
    for (blob, data) in &blobs {
        let located = ec.locate(blob.needle).unwrap();
        let mut record = Vec::new();
        for piece in located.pieces {
            let holder = &plan.holders[usize::from(piece.shard)].grpc_addr;
            let bytes = volume_client(holder)
                .await
                .ec_read_shard(EcReadShardRequest {
                    volume_id: volume,
                    shard: u32::from(piece.shard),
                    offset: piece.offset,
                    length: piece.len,
                    verified: false,
                })
                .await
                .unwrap()
                .into_inner()
                .data;
            record.extend_from_slice(&bytes);
        }
        let needle = ec
            .decode(blob.needle, blob.cookie, Bytes::from(record))
            .unwrap();
        assert_eq!(&needle.data, data, "blob {blob}");
    }

    // Encoded once: a second encode is refused, the layout stays.
    let refused = encode(cluster, request(volume, "3+2", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("erasure-coded already"));
    let status = directory(cluster)
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record(&status, volume).erasure.unwrap(), erasure);

    // With the copy gone, every server serves every blob from the shards,
    // over HTTP and gRPC, and knows where each shard is.
    for server in 0..cluster.volume_count() {
        let node = cluster.volume(server).unwrap();
        for (blob, data) in &blobs {
            let url = format!("{}/{blob}", node.http_base());
            let response = reqwest::get(&url).await.unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::OK, "{url}");
            assert!(
                response.bytes().await.unwrap() == data,
                "wrong bytes from {url}"
            );
            let read = read_from(&node.grpc_addr(), &blob.to_string())
                .await
                .unwrap();
            assert!(read == data[..], "wrong bytes over gRPC from {server}");
        }
    }
}
