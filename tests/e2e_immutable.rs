//! End-to-end: a blob id is written once (invariant 10), whatever path a
//! second write takes: a replayed write grant, a plain write token, a batch,
//! a write forwarded to a copy, two writers racing. An exact retry is
//! answered as the first write was. Real processes, a cluster that requires
//! tokens, two copies of every volume.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::write_request::Part;
use hayloft_proto::{
    AssignRequest, AssignedBlob, AuthChannel, CompactRequest, Credential, ListVolumesRequest,
    ReadRequest, ServerLocation, WriteBatchRequest, WriteHeader, WriteRequest,
};
use support::{Cluster, eventually, secs};
use tonic::Code;

/// Writes a key ring with one key.
fn write_keyring(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(dir.join("k1"), b"k1-secret-k1-secret-k1-secret-k1-secret").unwrap();
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n",
    )
    .unwrap();
    path
}

async fn volume_at(addr: &str, token: &str) -> VolumeClient<AuthChannel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    VolumeClient::new(Credential::bearer(token).unwrap().channel(channel))
        .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
}

/// A `Write` of `data` as `blob`, with `grant` (may be empty), naming
/// `replicas`; `forwarded` as a primary sends it to a copy.
fn write_messages(
    blob: &str,
    grant: &str,
    replicas: &[ServerLocation],
    forwarded: bool,
    data: &[u8],
) -> impl futures::Stream<Item = WriteRequest> + Send + 'static {
    let header = WriteHeader {
        blob_id: blob.to_owned(),
        size: data.len() as u64,
        grant: grant.to_owned(),
        replicas: replicas.to_vec(),
        forwarded,
        ..WriteHeader::default()
    };
    futures::stream::iter([
        WriteRequest {
            part: Some(Part::Header(header)),
        },
        WriteRequest {
            part: Some(Part::Chunk(Bytes::copy_from_slice(data))),
        },
    ])
}

/// Writes `data` as `blob` at `addr`: its ETag, or the refusal's code.
async fn write(
    addr: &str,
    token: &str,
    blob: &AssignedBlob,
    grant: &str,
    replicas: &[ServerLocation],
    data: &[u8],
) -> Result<String, tonic::Status> {
    volume_at(addr, token)
        .await
        .write(write_messages(&blob.blob_id, grant, replicas, false, data))
        .await
        .map(|r| r.into_inner().etag)
}

async fn read(addr: &str, token: &str, blob_id: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = volume_at(addr, token)
        .await
        .read(ReadRequest {
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

/// Live needles of `volume` on the server at `addr`.
async fn needles(addr: &str, token: &str, volume: u32) -> u64 {
    volume_at(addr, token)
        .await
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .volumes
        .into_iter()
        .find(|v| v.volume_id == volume)
        .map(|v| v.needles)
        .unwrap_or(0)
}

/// The copy that orders writes of `blob`, and the other one.
fn primary_and_copy(
    blob: &AssignedBlob,
    locations: &[ServerLocation],
) -> (ServerLocation, ServerLocation) {
    let primary = hayloft_proto::primary_index(blob.needle_id, locations).unwrap();
    (locations[primary].clone(), locations[1 - primary].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_id_is_written_once_on_every_path_and_every_copy() {
    let keys = tempfile::tempdir().unwrap();
    let ring = write_keyring(keys.path());
    let auth = ["--keyring", ring.to_str().unwrap(), "--require-tokens"];
    let operator = support::mint_token(
        &ring,
        &["admin", "write:photos", "read:photos", "delete:photos"],
    )
    .0;
    let writer = support::mint_token(&ring, &["write:photos", "read:photos"]).0;
    let reader = support::mint_token(&ring, &["read:photos"]).0;
    let peer = support::mint_token(&ring, &["cluster"]).0;
    let mut cluster = Cluster::builder()
        .zones(&["a", "b"])
        .replication(2)
        .directory_args(auth)
        .volume_args(auth)
        .token(&operator)
        .start()
        .await;
    let assigned = hayloft_proto::Directories::new(&cluster.directory_addr())
        .unwrap()
        .with_credential(Credential::bearer(&writer).unwrap())
        .unwrap()
        .call(|mut d| async move {
            d.assign(AssignRequest {
                count: 40,
                collection: "photos".into(),
                ..AssignRequest::default()
            })
            .await
        })
        .await
        .unwrap();
    let locations = assigned.locations.clone();
    assert_eq!(locations.len(), 2);
    let volume = assigned.blobs[0].volume_id;
    let blob = &assigned.blobs[0];
    let (primary, copy) = primary_and_copy(blob, &locations);

    // A client's write goes to the id's primary copy; the other refuses it,
    // naming the primary.
    let elsewhere = write(
        &copy.grpc_addr,
        &reader,
        blob,
        &blob.grant,
        &locations,
        b"first",
    )
    .await
    .unwrap_err();
    assert_eq!(elsewhere.code(), Code::FailedPrecondition, "{elsewhere:?}");
    assert!(
        elsewhere.message().contains(&primary.server_id),
        "{elsewhere:?}"
    );
    // Written with its grant, by a caller that may only read.
    let etag = write(
        &primary.grpc_addr,
        &reader,
        blob,
        &blob.grant,
        &locations,
        b"first",
    )
    .await
    .unwrap();

    // 1. The grant replayed with other bytes: refused. The same bytes: the
    //    first write's answer (same ETag), nothing written.
    let replayed = write(
        &primary.grpc_addr,
        &reader,
        blob,
        &blob.grant,
        &locations,
        b"other",
    )
    .await
    .unwrap_err();
    assert_eq!(replayed.code(), Code::AlreadyExists, "{replayed:?}");
    let retried = write(
        &primary.grpc_addr,
        &reader,
        blob,
        &blob.grant,
        &locations,
        b"first",
    )
    .await
    .unwrap();
    assert_eq!(retried, etag);
    // 2. A plain write token, no grant: refused.
    let overwrite = write(&primary.grpc_addr, &writer, blob, "", &locations, b"other")
        .await
        .unwrap_err();
    assert_eq!(overwrite.code(), Code::AlreadyExists, "{overwrite:?}");
    // 3. Through a batch: refused, the batch's other blob written.
    let fresh = &assigned.blobs[1];
    let (fresh_primary, _) = primary_and_copy(fresh, &locations);
    let batch_at = if fresh_primary.server_id == primary.server_id {
        &assigned.blobs[1]
    } else {
        &assigned.blobs[2]
    };
    let batch = [(blob, &b"other"[..]), (batch_at, &b"batched"[..])]
        .into_iter()
        .enumerate()
        .map(|(seq, (b, data))| WriteBatchRequest {
            seq: seq as u64,
            header: Some(WriteHeader {
                blob_id: b.blob_id.clone(),
                size: data.len() as u64,
                replicas: locations.clone(),
                ..WriteHeader::default()
            }),
            data: Bytes::copy_from_slice(data),
        })
        .collect::<Vec<_>>();
    let mut answers = volume_at(&primary.grpc_addr, &writer)
        .await
        .write_batch(futures::stream::iter(batch))
        .await
        .unwrap()
        .into_inner();
    let mut codes = [None, None];
    while let Some(answer) = answers.message().await.unwrap() {
        codes[answer.seq as usize] = Some(Code::from_i32(answer.code));
    }
    assert_eq!(codes, [Some(Code::AlreadyExists), Some(Code::Ok)]);
    // 4. Forwarded to the copy, as a primary would (a cluster credential):
    //    the copy refuses it too.
    let forwarded = volume_at(&copy.grpc_addr, &peer)
        .await
        .write(write_messages(&blob.blob_id, "", &[], true, b"other"))
        .await
        .unwrap_err();
    assert_eq!(forwarded.code(), Code::AlreadyExists, "{forwarded:?}");

    // 5. Two writers racing for each of 20 fresh ids, one at each copy and
    //    one more at the primary: exactly one wins, and both copies serve
    //    its bytes.
    for (i, blob) in assigned.blobs[10..30].iter().enumerate() {
        let (primary, copy) = primary_and_copy(blob, &locations);
        let racers = [
            (primary.grpc_addr.clone(), format!("racer a {i}")),
            (primary.grpc_addr.clone(), format!("racer b {i}")),
            (copy.grpc_addr.clone(), format!("racer c {i}")),
        ];
        let outcomes = futures::future::join_all(
            racers
                .iter()
                .map(|(addr, data)| write(addr, &writer, blob, "", &locations, data.as_bytes())),
        )
        .await;
        let won: Vec<&String> = racers
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_ok())
            .map(|((_, data), _)| data)
            .collect();
        assert_eq!(won.len(), 1, "id {}: {outcomes:?}", blob.blob_id);
        for outcome in &outcomes {
            if let Err(status) = outcome {
                assert!(
                    matches!(
                        status.code(),
                        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition
                    ),
                    "{status:?}"
                );
            }
        }
        for location in &locations {
            let served = read(&location.grpc_addr, &reader, &blob.blob_id)
                .await
                .unwrap();
            assert_eq!(
                served,
                won[0].as_bytes(),
                "{} on {}",
                blob.blob_id,
                location.server_id
            );
        }
    }

    // Every copy holds one needle per id written (the retry wrote none).
    let written = 2 + 20;
    for location in &locations {
        assert_eq!(
            needles(&location.grpc_addr, &operator, volume).await,
            written
        );
    }

    // 6. After a restart and a compaction (a delete first, so that it has
    //    something to drop), every copy still serves the first bytes and
    //    refuses other ones.
    cluster
        .client()
        .await
        .delete(&assigned.blobs[10].blob_id)
        .await
        .unwrap();
    for i in 0..2 {
        cluster.stop_volume(i);
        cluster.restart_volume(i).await;
    }
    for location in &locations {
        let mut progress = volume_at(&location.grpc_addr, &operator)
            .await
            .compact(CompactRequest {
                volume_ids: vec![volume],
                ..CompactRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        while progress.message().await.unwrap().is_some() {}
        assert_eq!(
            read(&location.grpc_addr, &reader, &blob.blob_id)
                .await
                .unwrap(),
            b"first"
        );
    }
    // (Until the directory has heard from both copies again the volume is
    // degraded, and writes to it are refused UNAVAILABLE.)
    let again = eventually(
        secs(30),
        "writes no longer refused as degraded",
        async || {
            let again = write(&primary.grpc_addr, &writer, blob, "", &locations, b"other")
                .await
                .unwrap_err();
            if again.code() == Code::Unavailable {
                Err(again)
            } else {
                Ok(again)
            }
        },
    )
    .await;
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let retried = write(
        &primary.grpc_addr,
        &reader,
        blob,
        &blob.grant,
        &locations,
        b"first",
    )
    .await
    .unwrap();
    assert_eq!(retried, etag);
    let deleted = write(
        &primary_and_copy(&assigned.blobs[10], &locations)
            .0
            .grpc_addr,
        &writer,
        &assigned.blobs[10],
        "",
        &locations,
        b"racer a 0",
    )
    .await
    .unwrap_err();
    assert_eq!(deleted.code(), Code::FailedPrecondition, "{deleted:?}");
    for location in &locations {
        assert_eq!(
            read(&location.grpc_addr, &reader, &blob.blob_id)
                .await
                .unwrap(),
            b"first"
        );
        assert_eq!(
            needles(&location.grpc_addr, &operator, volume).await,
            written - 1
        );
    }
}
