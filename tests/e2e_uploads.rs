//! End-to-end uploads: bad input of every kind refused with a clear error
//! and nothing lost, batches that answer each blob on its own (and keep
//! what they acknowledged when cut off), and full volumes that seal
//! themselves.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use futures::stream;
use hayloft_client::UploadOptions;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::write_request::Part;
use hayloft_proto::{ReadRequest, StatRequest, WriteBatchRequest, WriteHeader, WriteRequest};
use hayloft_storage::BlobId;
use reqwest::StatusCode;
use support::{Cluster, content};
use tonic::Code;

fn header(blob_id: &str, size: u64) -> WriteRequest {
    WriteRequest {
        part: Some(Part::Header(WriteHeader {
            blob_id: blob_id.into(),
            size,
            ..WriteHeader::default()
        })),
    }
}

fn chunk(bytes: &[u8]) -> WriteRequest {
    WriteRequest {
        part: Some(Part::Chunk(Bytes::copy_from_slice(bytes))),
    }
}

async fn raw_write(
    volume: &mut VolumeClient<tonic::transport::Channel>,
    messages: Vec<WriteRequest>,
) -> Code {
    match volume.write(stream::iter(messages)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// An id in `blob`'s volume past anything the directory handed out.
fn id_past(blob: BlobId, n: u64) -> String {
    BlobId {
        needle: hayloft_storage::NeedleId(blob.needle.0 + 50_000 + n),
        cookie: blob.cookie,
    }
    .to_string()
}

/// An id in a volume no server has.
fn in_unknown_volume(blob: BlobId) -> BlobId {
    BlobId {
        needle: hayloft_storage::types::needle_in(hayloft_storage::VolumeId(999), 1),
        cookie: blob.cookie,
    }
}

/// The server stores nothing under `blob_id`.
async fn assert_not_stored(volume: &mut VolumeClient<tonic::transport::Channel>, blob_id: &str) {
    let read = volume
        .read(ReadRequest {
            blob_id: blob_id.into(),
            offset: 0,
            length: 0,
        })
        .await;
    assert_eq!(
        read.err().map(|s| s.code()),
        Some(Code::NotFound),
        "blob {blob_id} must not exist"
    );
}

fn batched(seq: u64, blob_id: &str, size: u64, data: Vec<u8>) -> WriteBatchRequest {
    WriteBatchRequest {
        seq,
        header: Some(WriteHeader {
            blob_id: blob_id.into(),
            size,
            ..WriteHeader::default()
        }),
        data: data.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_refuses_bad_blobs_alone_and_a_cut_off_batch_keeps_what_it_acknowledged() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let kept = client
        .upload(Bytes::from(content(7, 5000)), &UploadOptions::default())
        .await
        .unwrap();
    let blob: BlobId = kept.blob_id.parse().unwrap();
    // Ids in the same volume past anything the directory handed out.
    let fresh = |n: u64| id_past(blob, n);
    let elsewhere = in_unknown_volume(blob);
    let mut volume = VolumeClient::connect(format!("http://{}", cluster.grpc_addr(0)))
        .await
        .unwrap();

    // Good blobs with bad ones between them: each answered on its own.
    let mut requests = Vec::new();
    for n in 0..10 {
        requests.push(batched(n, &fresh(n), 3000, content(n, 3000)));
    }
    let bad = [
        (
            100,
            batched(100, &fresh(100), 1000, vec![1; 500]),
            Code::InvalidArgument,
        ), // truncated
        (
            101,
            batched(101, &fresh(101), 10, vec![1; 11]),
            Code::InvalidArgument,
        ), // too long
        (
            102,
            batched(102, &fresh(102), 100 << 10, vec![1; 100 << 10]),
            Code::InvalidArgument,
        ), // too big for a batch
        (
            103,
            batched(103, "not-an-id", 1, vec![1]),
            Code::InvalidArgument,
        ),
        (
            104,
            batched(104, &elsewhere.to_string(), 1, vec![1]),
            Code::NotFound,
        ),
        (
            105,
            WriteBatchRequest {
                seq: 105,
                header: None,
                data: vec![1].into(),
            },
            Code::InvalidArgument,
        ),
    ];
    for (at, (_, request, _)) in bad.iter().enumerate() {
        requests.insert(at * 2 + 1, request.clone());
    }
    let mut responses = volume
        .write_batch(stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answers = std::collections::HashMap::new();
    while let Some(response) = responses.message().await.unwrap() {
        answers.insert(response.seq, response);
    }
    assert_eq!(answers.len(), 16, "every blob is answered");
    for n in 0..10 {
        let answer = &answers[&n];
        assert_eq!(answer.code, 0, "blob {n}: {}", answer.message);
        assert_eq!(answer.written.as_ref().unwrap().blob_id, fresh(n));
        assert_eq!(
            &client.download(&fresh(n)).await.unwrap().1[..],
            &content(n, 3000)[..]
        );
    }
    for (seq, _, code) in &bad {
        let answer = &answers[seq];
        assert_eq!(
            Code::from_i32(answer.code),
            *code,
            "blob {seq}: {}",
            answer.message
        );
        assert!(!answer.message.is_empty());
        assert!(answer.written.is_none());
    }
    assert!(
        answers[&100].message.contains("truncated"),
        "{}",
        answers[&100].message
    );
    for n in [100, 101, 102] {
        assert_not_stored(&mut volume, &fresh(n)).await;
    }

    // A batch cut off midway (the client goes away after a few answers):
    // every blob it acknowledged reads back; the others were stored whole or
    // not at all.
    let (tx, rx) = tokio::sync::mpsc::channel(512);
    for n in 200..400 {
        tx.send(batched(n, &fresh(n), 20_000, content(n, 20_000)))
            .await
            .unwrap();
    }
    let mut responses = volume
        .write_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 20 {
        let response = responses.message().await.unwrap().unwrap();
        assert_eq!(response.code, 0, "{}", response.message);
        acknowledged.push(response.seq);
    }
    drop(responses);
    drop(tx);
    for n in 200..400 {
        match client.download(&fresh(n)).await {
            Ok((_, data)) => assert_eq!(&data[..], &content(n, 20_000)[..], "blob {n}"),
            Err(e) => {
                assert!(
                    !acknowledged.contains(&n),
                    "acknowledged blob {n} lost: {e}"
                );
                assert_eq!(e.code(), Some(Code::NotFound), "blob {n}: {e}");
            }
        }
    }
    // The server goes on taking batches.
    let results = client
        .upload_batch(vec![
            (Bytes::from_static(b"after"), UploadOptions::default());
            3
        ])
        .await;
    for result in results {
        let uploaded = result.unwrap();
        assert_eq!(
            &client.download(&uploaded.blob_id).await.unwrap().1[..],
            b"after"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let cluster = Cluster::builder()
        .volumes(1)
        .volume_args(["--max-upload-size", "1MiB"])
        .start()
        .await;
    let client = cluster.client().await;
    let kept = client
        .upload(Bytes::from(content(7, 5000)), &UploadOptions::default())
        .await
        .unwrap();
    let blob: BlobId = kept.blob_id.parse().unwrap();
    let mut volume = VolumeClient::connect(format!("http://{}", cluster.grpc_addr(0)))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = cluster.http_base(0);

    // Malformed blob ids.
    for bad in [
        "",
        "xyz",
        "12345678",
        "0123456789abcdef0123456789",
        "../../etc/passwd",
    ] {
        let read = volume
            .read(ReadRequest {
                blob_id: bad.into(),
                offset: 0,
                length: 0,
            })
            .await;
        assert_eq!(
            read.err().map(|s| s.code()),
            Some(Code::InvalidArgument),
            "read {bad:?}"
        );
        let stat = volume
            .stat(StatRequest {
                blob_id: bad.into(),
            })
            .await;
        assert_eq!(
            stat.err().map(|s| s.code()),
            Some(Code::InvalidArgument),
            "stat {bad:?}"
        );
        assert_eq!(
            raw_write(&mut volume, vec![header(bad, 1), chunk(b"x")]).await,
            Code::InvalidArgument
        );
    }
    for bad in ["xyz", "12345678", "zzzzzzzzzzzz"] {
        let response = http.get(format!("{base}/{bad}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "GET /{bad}");
    }

    // A fresh id in the same volume (past anything the directory handed out).
    let fresh = |n: u64| id_past(blob, n);
    // No header, or a header after data.
    assert_eq!(
        raw_write(&mut volume, vec![chunk(b"data")]).await,
        Code::InvalidArgument
    );
    assert_eq!(
        raw_write(
            &mut volume,
            vec![header(&fresh(1), 4), chunk(b"da"), header(&fresh(1), 4)]
        )
        .await,
        Code::InvalidArgument
    );
    // Truncated streams, small and streamed-to-disk sizes alike: nothing stored.
    assert_eq!(
        raw_write(&mut volume, vec![header(&fresh(2), 1000), chunk(&[1; 500])]).await,
        Code::InvalidArgument
    );
    assert_eq!(
        raw_write(
            &mut volume,
            vec![header(&fresh(3), 1 << 20), chunk(&[1; 300_000])]
        )
        .await,
        Code::InvalidArgument
    );
    // More bytes than declared.
    assert_eq!(
        raw_write(&mut volume, vec![header(&fresh(4), 10), chunk(&[1; 11])]).await,
        Code::InvalidArgument
    );
    // Over the configured limit (1 MiB here).
    assert_eq!(
        raw_write(
            &mut volume,
            vec![header(&fresh(5), (1 << 20) + 1), chunk(&[0; 10])]
        )
        .await,
        Code::OutOfRange
    );
    for n in 1..=5 {
        assert_not_stored(&mut volume, &fresh(n)).await;
    }
    // Unknown volume.
    let elsewhere = in_unknown_volume(blob);
    assert_eq!(
        raw_write(
            &mut volume,
            vec![header(&elsewhere.to_string(), 1), chunk(b"x")]
        )
        .await,
        Code::NotFound
    );
    let read = volume
        .read(ReadRequest {
            blob_id: elsewhere.to_string(),
            offset: 0,
            length: 0,
        })
        .await;
    assert_eq!(read.err().map(|s| s.code()), Some(Code::NotFound));
    assert_eq!(
        http.get(format!("{base}/{elsewhere}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // A read range past the end.
    let read = volume
        .read(ReadRequest {
            blob_id: kept.blob_id.clone(),
            offset: 5001,
            length: 0,
        })
        .await;
    assert_eq!(read.err().map(|s| s.code()), Some(Code::OutOfRange));
    // The client reports an oversized file clearly.
    let too_big = client
        .upload(
            Bytes::from(vec![0u8; (1 << 20) + 1]),
            &UploadOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Some(Code::OutOfRange));

    // Nothing was lost, and the server still works.
    assert_eq!(
        &client.download(&kept.blob_id).await.unwrap().1[..],
        &content(7, 5000)[..]
    );
    let after = client
        .upload(Bytes::from_static(b"still fine"), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        &client.download(&after.blob_id).await.unwrap().1[..],
        b"still fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_volume_seals_itself_and_tells_the_directory_at_once() {
    // Heartbeats once a minute (and the directory patient for five): the
    // uploads below go on past full volumes only if the volume server tells
    // the directory the moment one fills.
    let cluster = Cluster::builder()
        .zones(&["a"])
        .replication(1)
        .directory_args(["--dead-after", "300s"])
        .volume_args(["--max-volume-size", "1MiB", "--pulse", "60s"])
        .start()
        .await;
    let client = cluster.client().await;
    let mut written = Vec::new();
    // 6 MB into volumes of 1 MiB: five or more fill and seal. Without the
    // report, the directory keeps handing out ids in a full volume and the
    // client's retries run out (checked: with the report taken away, an
    // upload fails within seconds).
    for seed in 0..30 {
        let data = content(seed, 200_000);
        let uploaded = client
            .upload(Bytes::from(data), &UploadOptions::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "upload {seed}: {e}\n{}",
                    support::log_tails(&cluster.log_dir())
                )
            });
        written.push((uploaded.blob_id, seed));
    }
    let status = client.status().await.unwrap();
    let sealed: Vec<_> = status
        .volumes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .filter(|v| v.sealed)
        .collect();
    assert!(sealed.len() >= 4, "{:?}", status.volumes);
    for volume in &sealed {
        assert!(
            volume.file_bytes <= 1 << 20,
            "volume {} grew past its size",
            volume.volume_id
        );
        assert!(volume.sealed_at > 0);
    }
    // Nothing acknowledged is lost.
    for (blob_id, seed) in &written {
        let (_, data) = client.download(blob_id).await.unwrap();
        assert!(data == content(*seed, 200_000), "{blob_id}");
    }
}
