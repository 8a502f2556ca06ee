//! The gRPC service of one server: reads, writes, deletes and batches, and
//! the codes of their refusals.

use std::time::Duration;

use bytesize::ByteSize;
use futures::stream;
use hayloft::cluster::Cluster;
use hayloft_proto::{DeleteRequest, ReadRequest, StatRequest, WriteBatchRequest};
use tonic::Code;

use crate::support::*;

/// One server with one copy, `count` ids assigned in one volume, and the
/// server's gRPC address.
async fn one_server_with_ids(count: u32) -> (Started, Vec<String>, String) {
    let started = start(Cluster::builder()).await;
    let (ids, locations) = assign(&started.cluster, count).await;
    let addr = locations[0].grpc_addr.clone();
    (started, ids, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blobs_and_volumes_are_not_found_and_malformed_ids_invalid_arguments() {
    let (started, _, addr) = one_server_with_ids(1).await;
    let uploaded = upload_many(&started.client, 1, 100, 1).await;
    let blob_id = &uploaded[0].0.blob_id;
    let mut wrong_cookie = blob_id.parse::<hayloft_storage::BlobId>().unwrap();
    wrong_cookie.cookie.0 ^= 0xff;
    let mut client = volume_client(&addr).await;
    for (id, code) in [
        (wrong_cookie.to_string(), Code::NotFound),
        ("ffff00000001deadbeef".to_owned(), Code::NotFound),
        ("zz".to_owned(), Code::InvalidArgument),
    ] {
        let read = read_from(&addr, &id).await.unwrap_err();
        assert_eq!(read.code(), code, "read {id}: {read:?}");
        let stat = client
            .stat(StatRequest {
                blob_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(stat.code(), code, "stat {id}: {stat:?}");
        let delete = client
            .delete(DeleteRequest {
                blob_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(delete.code(), code, "delete {id}: {delete:?}");
    }
    // A wrong cookie is as missing as a missing blob: same message shape,
    // and the blob itself is untouched.
    assert_eq!(read_from(&addr, blob_id).await.unwrap(), &uploaded[0].1[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_sends_less_or_more_than_it_declared_is_refused_and_nothing_is_stored() {
    let (_started, ids, addr) = one_server_with_ids(3).await;
    let mut client = volume_client(&addr).await;
    let data = content(1, 1000);
    let short = client
        .write(stream::iter(write_messages(header(&ids[0], 2000), &data)))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
    let long = client
        .write(stream::iter(write_messages(header(&ids[1], 10), &data)))
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument, "{long:?}");
    for id in &ids[..2] {
        assert_eq!(
            read_from(&addr, id).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    // The volume takes the next write as if nothing happened.
    client
        .write(stream::iter(write_messages(
            header(&ids[2], data.len() as u64),
            &data,
        )))
        .await
        .unwrap();
    assert_eq!(read_from(&addr, &ids[2]).await.unwrap(), &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_written_once_a_retry_is_answered_and_other_bytes_are_refused() {
    let (_started, ids, addr) = one_server_with_ids(1).await;
    let mut client = volume_client(&addr).await;
    let data = content(2, 500);
    let mut written = header(&ids[0], data.len() as u64);
    written.last_modified = 1_700_000_000;
    let first = client
        .write(stream::iter(write_messages(written.clone(), &data)))
        .await
        .unwrap()
        .into_inner();
    // The same write again (a client retrying after a lost answer): the
    // same answer.
    let again = client
        .write(stream::iter(write_messages(written, &data)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.etag, first.etag);
    assert_eq!(again.blob_id, first.blob_id);
    let other = content(3, 500);
    let refused = client
        .write(stream::iter(write_messages(
            header(&ids[0], other.len() as u64),
            &other,
        )))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert_eq!(read_from(&addr, &ids[0]).await.unwrap(), &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_and_stats_answer_what_was_written() {
    let (started, _, addr) = one_server_with_ids(1).await;
    let data = content(4, hayloft_proto::CHUNK_BYTES + 4096);
    let blob = started
        .client
        .upload(data.clone(), &options("text/plain"))
        .await
        .unwrap();
    let mut client = volume_client(&addr).await;
    let mut stream = client
        .read(ReadRequest {
            blob_id: blob.blob_id.clone(),
            offset: hayloft_proto::CHUNK_BYTES as u64 - 10,
            length: 20,
        })
        .await
        .unwrap()
        .into_inner();
    let mut read = Vec::new();
    let mut info = None;
    while let Some(message) = stream.message().await.unwrap() {
        info = info.or(message.info);
        read.extend_from_slice(&message.chunk);
    }
    let start = hayloft_proto::CHUNK_BYTES - 10;
    assert_eq!(read, &data[start..start + 20]);
    let info = info.unwrap();
    assert_eq!(info.size, data.len() as u64);
    let stat = client
        .stat(StatRequest {
            blob_id: blob.blob_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(stat.size, data.len() as u64);
    assert_eq!(stat.content_type, "text/plain");
    assert_eq!(stat.etag, blob.etag);
    assert_eq!(stat.etag, info.etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refuses_its_bad_blobs_alone_and_stores_the_others() {
    let (_started, ids, addr) = one_server_with_ids(5).await;
    let good = content(5, 2000);
    let big = content(6, 65 * 1024);
    let request = |seq: u64, id: &str, size: u64, data: &bytes::Bytes| WriteBatchRequest {
        seq,
        header: Some(header(id, size)),
        data: data.clone(),
    };
    let requests = vec![
        request(0, &ids[0], good.len() as u64, &good),
        request(1, &ids[1], good.len() as u64 + 1, &good),
        request(2, &ids[2], big.len() as u64, &big),
        request(3, "ffff00000001deadbeef", good.len() as u64, &good),
        request(4, &ids[4], good.len() as u64, &good),
    ];
    let mut client = volume_client(&addr).await;
    let mut answers = client
        .write_batch(stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut codes = std::collections::BTreeMap::new();
    while let Some(answer) = answers.message().await.unwrap() {
        codes.insert(answer.seq, Code::from_i32(answer.code));
    }
    assert_eq!(codes[&0], Code::Ok);
    assert_eq!(codes[&1], Code::InvalidArgument);
    assert_ne!(codes[&2], Code::Ok, "a blob over 64 KiB in a batch");
    assert_eq!(codes[&3], Code::NotFound);
    assert_eq!(codes[&4], Code::Ok);
    assert_eq!(read_from(&addr, &ids[0]).await.unwrap(), &good[..]);
    assert_eq!(read_from(&addr, &ids[4]).await.unwrap(), &good[..]);
    for id in &ids[1..3] {
        assert_eq!(
            read_from(&addr, id).await.unwrap_err().code(),
            Code::NotFound
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_refuses_writes_seals_itself_and_says_so_to_the_directory() {
    let started =
        start(Cluster::builder().volume(|_, config| config.max_volume_size = ByteSize::mib(1)))
            .await;
    let (ids, locations) = assign(&started.cluster, 16).await;
    let addr = &locations[0].grpc_addr;
    let mut client = volume_client(addr).await;
    let data = content(7, 200 * 1024);
    let mut refused = None;
    for id in &ids {
        match client
            .write(stream::iter(write_messages(
                header(id, data.len() as u64),
                &data,
            )))
            .await
        {
            Ok(_) => {}
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("a 1 MiB volume took 16 blobs of 200 KiB");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let volume = ids[0]
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .0;
    let client = &started.client;
    eventually(
        Duration::from_secs(20),
        "the volume reported sealed",
        || async {
            let status = client.status().await.ok()?;
            let record = status
                .volumes
                .iter()
                .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))?;
            record.status.as_ref()?.sealed.then_some(())
        },
    )
    .await;
    // Reads go on.
    assert_eq!(read_from(addr, &ids[0]).await.unwrap(), &data[..]);
}
