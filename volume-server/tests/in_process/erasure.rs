//! Erasure coding across real volume servers: a sealed copy encoded into
//! shards on five servers over gRPC, every blob read back from the shards
//! and restored with two shards lost; a shard that arrives wrong is never
//! kept.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use bytesize::ByteSize;
use futures::stream;
use hayloft::cluster::Cluster;
use hayloft_proto::{EcEncodeRequest, EcReadShardRequest, EcWriteShardRequest};
use hayloft_storage::BlobId;
use hayloft_storage::erasure::{CHUNK_LEN, EcManifest, EcVolume, restore_piece};
use tonic::Code;

use crate::support::*;

/// One volume server whose volumes seal at 1 MiB (more are added by
/// [`sealed_volume`]).
pub(crate) async fn one_mib_volumes() -> Started {
    start(
        Cluster::builder()
            .volume_servers(1)
            .volume(|_, config| config.max_volume_size = ByteSize::mib(1)),
    )
    .await
}

/// Fills a 1 MiB volume on server 0 (the only one at first) until it seals
/// itself, then starts servers up to `servers` in all; returns the blobs
/// written.
pub(crate) async fn sealed_volume(
    started: &mut Started,
    servers: usize,
) -> (u32, Vec<(BlobId, Bytes)>) {
    assert_eq!(
        started.cluster.volume_count(),
        1,
        "the copy goes to server 0"
    );
    let (volume, written) = fill_until_sealed(started).await;
    while started.cluster.volume_count() < servers {
        started.cluster.add_volume_server().await.unwrap();
    }
    assert!(started.cluster.volume_servers_alive(servers).await);
    (volume, written)
}

pub(crate) fn holders(cluster: &Cluster) -> Vec<String> {
    (0..cluster.volume_count())
        .map(|i| cluster.volume(i).unwrap().grpc_addr())
        .collect()
}

/// Reads `len` bytes of shard `shard` from its holder.
pub(crate) async fn read_shard(
    addr: &str,
    volume: u32,
    shard: u8,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    volume_client(addr)
        .await
        .ec_read_shard(EcReadShardRequest {
            volume_id: volume,
            shard: u32::from(shard),
            offset,
            length: len,
            verified: false,
        })
        .await
        .unwrap()
        .into_inner()
        .data
        .to_vec()
}

/// Reads a blob from the shards over gRPC, restoring the pieces of shards
/// in `lost` from the others.
pub(crate) async fn read_blob(
    ec: &EcVolume,
    holders: &[String],
    blob: BlobId,
    lost: &[u8],
) -> hayloft_storage::Result<Bytes> {
    let volume = ec.id().0;
    let located = ec.locate(blob.needle)?;
    let mut record = Vec::new();
    for piece in located.pieces {
        if !lost.contains(&piece.shard) {
            let addr = &holders[usize::from(piece.shard)];
            record.extend(read_shard(addr, volume, piece.shard, piece.offset, piece.len).await);
            continue;
        }
        let range = piece.widened();
        let mut have = BTreeMap::new();
        for (shard, addr) in holders.iter().enumerate() {
            let shard = shard as u8;
            if !lost.contains(&shard) {
                let bytes = read_shard(addr, volume, shard, range.start, range.end - range.start);
                have.insert(shard, bytes.await);
            }
        }
        record.extend(restore_piece(ec.layout(), piece, &have)?);
    }
    Ok(ec
        .decode(blob.needle, blob.cookie, Bytes::from(record))?
        .data)
}

/// Encodes `volume` from server 0 onto every server with `code`, blocks
/// of 64 KiB; returns the manifest.
pub(crate) async fn encode(started: &Started, volume: u32, code: &str) -> EcManifest {
    let coordinator = started.cluster.volume(0).unwrap().grpc_addr();
    let mut progress = volume_client(&coordinator)
        .await
        .ec_encode(EcEncodeRequest {
            volume_id: volume,
            code: code.into(),
            max_block: CHUNK_LEN,
            holders: holders(&started.cluster),
            rate: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = progress.message().await.unwrap() {
        last = Some(message);
    }
    EcManifest::decode(&last.unwrap().manifest, "<test>".as_ref()).unwrap()
}

/// A blob over HTTP from server `server`, whole or a range.
pub(crate) async fn http_get(
    cluster: &Cluster,
    server: usize,
    blob: BlobId,
    range: Option<&str>,
) -> reqwest::Response {
    let base = cluster.volume(server).unwrap().http_base();
    let mut request = reqwest::Client::new().get(format!("{base}/{blob}"));
    if let Some(range) = range {
        request = request.header("range", range);
    }
    request.send().await.unwrap()
}

/// A client's delete of `blob` at the server at `addr`.
pub(crate) async fn delete(addr: &str, blob: BlobId) -> Result<(), tonic::Status> {
    volume_client(addr)
        .await
        .delete(hayloft_proto::DeleteRequest {
            blob_id: blob.to_string(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

pub(crate) fn ec_dir(cluster: &Cluster, server: usize) -> PathBuf {
    cluster.volume_dir(server).join("warm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_copy_encoded_on_five_servers_reads_back_with_two_shards_lost() {
    let mut started = one_mib_volumes().await;
    let (volume, blobs) = sealed_volume(&mut started, 5).await;
    let holders = holders(&started.cluster);
    let coordinator = &started.cluster.volume(0).unwrap().grpc_addr();
    let mut progress = volume_client(coordinator)
        .await
        .ec_encode(EcEncodeRequest {
            volume_id: volume,
            code: "3+2".into(),
            max_block: CHUNK_LEN,
            holders: holders.clone(),
            rate: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut steps = Vec::new();
    let mut last = None;
    while let Some(message) = progress.message().await.unwrap() {
        if message.manifest.is_empty() {
            steps.push((message.done, message.total));
        } else {
            last = Some(message);
        }
    }
    let manifest = EcManifest::decode(&last.unwrap().manifest, "<test>".as_ref()).unwrap();
    assert_eq!(manifest.code, "3+2");
    assert_eq!(manifest.digests.len(), 5);
    // Progress rose to the whole body.
    assert!(steps.windows(2).all(|w| w[0].0 < w[1].0), "{steps:?}");
    let (done, total) = *steps.last().unwrap();
    assert_eq!(done, total);

    // Every holder has the manifest, the index and its own shard.
    for (i, _) in holders.iter().enumerate() {
        let ec = EcVolume::open(
            &ec_dir(&started.cluster, i),
            hayloft_storage::VolumeId(volume),
        )
        .unwrap();
        assert_eq!(ec.held(), vec![i as u8]);
        assert_eq!(ec.manifest(), &manifest);
    }
    let ec = EcVolume::open(
        &ec_dir(&started.cluster, 3),
        hayloft_storage::VolumeId(volume),
    )
    .unwrap();
    assert!(ec.layout().rows() > 1, "blocks of 64 KiB give several rows");
    for (blob, data) in &blobs {
        assert_eq!(&read_blob(&ec, &holders, *blob, &[]).await.unwrap(), data);
        for lost in [[0u8, 1], [1, 2], [0, 4], [3, 4]] {
            let read = read_blob(&ec, &holders, *blob, &lost).await.unwrap();
            assert_eq!(&read, data, "blob {blob} with shards {lost:?} lost");
        }
    }
    // The replicated copy is untouched: it still serves.
    let (blob, data) = &blobs[0];
    assert_eq!(
        read_from(coordinator, &blob.to_string()).await.unwrap(),
        &data[..]
    );

    // A verified read comes back as whole checked chunks.
    let verified = volume_client(&holders[1])
        .await
        .ec_read_shard(EcReadShardRequest {
            volume_id: volume,
            shard: 1,
            offset: 100,
            length: 10,
            verified: true,
        })
        .await
        .unwrap()
        .into_inner()
        .data;
    assert_eq!(verified.len() as u64, CHUNK_LEN);
    assert_eq!(
        &verified[100..110],
        &read_shard(&holders[1], volume, 1, 100, 10).await[..]
    );
    // A shard not held there is NOT_FOUND; a range past the body OUT_OF_RANGE.
    let mut client = volume_client(&holders[1]).await;
    let missing = client
        .ec_read_shard(EcReadShardRequest {
            volume_id: volume,
            shard: 2,
            offset: 0,
            length: 10,
            verified: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let past = client
        .ec_read_shard(EcReadShardRequest {
            volume_id: volume,
            shard: 1,
            offset: ec.layout().body_len(),
            length: 10,
            verified: false,
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");

    // Dropping the volume removes every file of it on that holder.
    client
        .ec_drop(hayloft_proto::EcDropRequest {
            volume_id: volume,
            staged: false,
        })
        .await
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(ec_dir(&started.cluster, 1))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&format!("{volume}.ec")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_arrives_wrong_or_cut_short_is_never_kept() {
    let started = start(Cluster::builder().volume_servers(1)).await;
    let addr = started.cluster.volume(0).unwrap().grpc_addr();
    let mut client = volume_client(&addr).await;
    let first = EcWriteShardRequest {
        volume_id: 9,
        shard: 0,
        code: "2+1".into(),
        data_len: 1000,
        block_len: CHUNK_LEN,
        ..EcWriteShardRequest::default()
    };
    let body = EcWriteShardRequest {
        data: Bytes::from(vec![5u8; CHUNK_LEN as usize]),
        ..EcWriteShardRequest::default()
    };
    // A wrong digest: DATA_LOSS.
    let wrong = EcWriteShardRequest {
        digest: Some(1234),
        ..EcWriteShardRequest::default()
    };
    let status = client
        .ec_write_shard(stream::iter(vec![first.clone(), body.clone(), wrong]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    // Cut short (no digest): INVALID_ARGUMENT.
    let status = client
        .ec_write_shard(stream::iter(vec![first.clone(), body.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Longer than the body: INVALID_ARGUMENT.
    let status = client
        .ec_write_shard(stream::iter(vec![
            first.clone(),
            body.clone(),
            body.clone(),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A bad code: INVALID_ARGUMENT naming it.
    let bad_code = EcWriteShardRequest {
        code: "2+0".into(),
        ..first.clone()
    };
    let status = client
        .ec_write_shard(stream::iter(vec![bad_code]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("2+0"), "{status:?}");
    // Nothing of volume 9 is anywhere on the server.
    let mut files = Vec::new();
    for tier in ["hot", "warm"] {
        let dir = started.cluster.volume_dir(0).join(tier);
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()));
        }
    }
    assert!(!files.iter().any(|f| f.starts_with("9.ec")), "{files:?}");
    // Encoding a volume that is not here: NOT_FOUND.
    let mut progress = client
        .ec_encode(EcEncodeRequest {
            volume_id: 77,
            code: "1+1".into(),
            max_block: 0,
            holders: vec![addr.clone(), addr.clone()],
            rate: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let status = progress.message().await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_holder_serves_every_blob_over_http_and_grpc_with_two_holders_down() {
    let mut started = one_mib_volumes().await;
    let (volume, blobs) = sealed_volume(&mut started, 5).await;
    encode(&started, volume, "3+2").await;
    // Servers 1-4 hold shards only (server 0 also still has the copy).
    for server in 1..5 {
        let addr = started.cluster.volume(server).unwrap().grpc_addr();
        for (blob, data) in &blobs {
            let response = http_get(&started.cluster, server, *blob, None).await;
            assert_eq!(
                response.status(),
                reqwest::StatusCode::OK,
                "{blob} from {server}"
            );
            let etag = response.headers()["etag"].clone();
            assert!(response.bytes().await.unwrap() == data, "wrong bytes");
            let ranged = http_get(&started.cluster, server, *blob, Some("bytes=1000-70999")).await;
            assert_eq!(ranged.status(), reqwest::StatusCode::PARTIAL_CONTENT);
            assert!(
                ranged.bytes().await.unwrap()[..] == data[1000..71000],
                "wrong range"
            );
            // The same ETag as the copy gives: a CDN sees one blob.
            let copy = http_get(&started.cluster, 0, *blob, None).await;
            assert_eq!(copy.headers()["etag"], etag);
            assert_eq!(
                read_from(&addr, &blob.to_string()).await.unwrap(),
                &data[..]
            );
        }
    }
    // A wrong cookie is a plain 404, as for any blob.
    let (blob, _) = blobs[0];
    let wrong: BlobId = format!("{:x}{:08x}", blob.needle.0, blob.cookie.0 ^ 1)
        .parse()
        .unwrap();
    let response = http_get(&started.cluster, 2, wrong, None).await;
    assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);

    // Two holders down (shards 1 and 2): every blob still reads, restored.
    started.cluster.stop_volume(1).await.unwrap();
    started.cluster.stop_volume(2).await.unwrap();
    for server in [3, 4] {
        let addr = started.cluster.volume(server).unwrap().grpc_addr();
        for (blob, data) in &blobs {
            let response = http_get(&started.cluster, server, *blob, None).await;
            assert_eq!(
                response.status(),
                reqwest::StatusCode::OK,
                "{blob} from {server}"
            );
            assert!(response.bytes().await.unwrap() == data, "wrong bytes");
            assert_eq!(
                read_from(&addr, &blob.to_string()).await.unwrap(),
                &data[..]
            );
        }
    }
    // A delete is acknowledged only once every holder has it: with two
    // down it is refused UNAVAILABLE, for the client to retry.
    let (blob, data) = &blobs[1];
    let addr = started.cluster.volume(3).unwrap().grpc_addr();
    let refused = delete(&addr, *blob).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("retry the delete"),
        "{refused:?}"
    );
    // The holders it reached have it: they answer 404 at once.
    let response = http_get(&started.cluster, 4, *blob, None).await;
    assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
    let _ = data;
    // Three holders down (more than m): 503 and UNAVAILABLE, never bytes.
    started.cluster.stop_volume(0).await.unwrap();
    let (blob, _) = &blobs[2];
    let response = http_get(&started.cluster, 4, *blob, None).await;
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let addr = started.cluster.volume(4).unwrap().grpc_addr();
    let status = read_from(&addr, &blob.to_string()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_blob_of_an_erasure_coded_volume_is_gone_from_every_holder() {
    let mut started = one_mib_volumes().await;
    let (volume, blobs) = sealed_volume(&mut started, 3).await;
    encode(&started, volume, "2+1").await;
    let (blob, _) = &blobs[0];
    let addr = started.cluster.volume(2).unwrap().grpc_addr();
    delete(&addr, *blob).await.unwrap();
    for server in 1..3 {
        let response = http_get(&started.cluster, server, *blob, None).await;
        assert_eq!(
            response.status(),
            reqwest::StatusCode::NOT_FOUND,
            "from {server}"
        );
        let addr = started.cluster.volume(server).unwrap().grpc_addr();
        let status = read_from(&addr, &blob.to_string()).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    // Every holder journaled it: it stays deleted when read from the files.
    for server in 0..3 {
        let ec = EcVolume::open(
            &ec_dir(&started.cluster, server),
            hayloft_storage::VolumeId(volume),
        )
        .unwrap();
        assert!(
            ec.locate(blob.needle).unwrap_err().is_not_found(),
            "holder {server}"
        );
    }
    // The others still read.
    let (other, data) = &blobs[1];
    let response = http_get(&started.cluster, 1, *other, None).await;
    assert!(response.bytes().await.unwrap() == data, "wrong bytes");
}
