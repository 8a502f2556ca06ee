//! End-to-end faults: a volume server killed mid-upload, bad input of every
//! kind, and the CLI.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use hayloft_client::UploadOptions;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::write_request::Part;
use hayloft_proto::{ReadRequest, StatRequest, WriteBatchRequest, WriteHeader, WriteRequest};
use hayloft_storage::BlobId;
use parking_lot_free::Acked;
use reqwest::StatusCode;
use support::{Cluster, Failpoint, content, eventually, hayloft, secs, server_index, server_of};
use tonic::Code;

mod parking_lot_free {
    /// Acknowledged uploads, shared between uploader tasks.
    pub type Acked = std::sync::Arc<std::sync::Mutex<Vec<(String, u64, usize)>>>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_uploads_loses_no_acknowledged_blob() {
    let mut cluster = Cluster::builder().volumes(1).start().await;
    let acked = uploads_cut_by_a_kill(&mut cluster, 16, 4).await;
    every_blob_reads_back_after_a_restart(&mut cluster, &acked).await;
    // And the server takes new uploads after recovery.
    cluster.wait_alive(1).await;
    let client = cluster.client().await;
    let uploaded = client
        .upload(Bytes::from_static(b"after"), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        &client.download(&uploaded.blob_id).await.unwrap().1[..],
        b"after"
    );
}

/// `durability = "never"` acknowledges a small write once it is in the page
/// cache, without a thread or an fsync: a crash of the process (not of the
/// machine) must still lose nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_never_durable_server_killed_mid_upload_keeps_every_acknowledged_blob() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("volume.toml");
    std::fs::write(&config, "durability = \"never\"\n").unwrap();
    let mut cluster = Cluster::builder()
        .volumes(1)
        .volume_args(["--config", config.to_str().unwrap()])
        .start()
        .await;
    let acked = uploads_cut_by_a_kill(&mut cluster, 16, 0).await;
    every_blob_reads_back_after_a_restart(&mut cluster, &acked).await;
}

/// Uploads from `single` tasks (one blob of up to 50 KB a call), one task
/// of streamed 2-5 MiB blobs and `batched` tasks (batches of 32) until more
/// than 50 uploads, a streamed one among them, are acknowledged, then
/// SIGKILLs volume server 0 mid-stream;
/// returns the acknowledged uploads (blob id, content seed, length).
async fn uploads_cut_by_a_kill(
    cluster: &mut Cluster,
    single: u64,
    batched: u64,
) -> Vec<(String, u64, usize)> {
    let client = Arc::new(cluster.client().await);
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut uploaders = Vec::new();
    // Uploads one blob a call, each of `len_of(seed)` bytes, until stopped.
    let uploader = |first_seed: u64, len_of: fn(u64) -> usize| {
        let client = Arc::clone(&client);
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut seed = first_seed;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seed += 1;
                let len = len_of(seed);
                let data = Bytes::from(content(seed, len));
                if let Ok(uploaded) = client.upload(data, &UploadOptions::default()).await {
                    acked.lock().unwrap().push((uploaded.blob_id, seed, len));
                }
            }
        })
    };
    for worker in 0..single {
        uploaders.push(uploader(worker << 32, |seed| {
            100 + (seed as usize % 50_000)
        }));
    }
    // And one uploader of blobs of 2-5 MiB, streamed in chunks (their
    // writeback started as they arrive): a kill lands in the middle of one.
    uploaders.push(uploader((single + batched) << 32, |seed| {
        (2 << 20) + (seed as usize * 770_001) % (3 << 20)
    }));
    // Batched uploads beside them: a batch cut off by the crash must have
    // acknowledged only blobs that are durable.
    for worker in single..single + batched {
        let client = Arc::clone(&client);
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        uploaders.push(tokio::spawn(async move {
            let mut seed = worker << 32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let blobs: Vec<_> = (0..32)
                    .map(|_| {
                        seed += 1;
                        let len = 100 + (seed as usize % 50_000);
                        (seed, len)
                    })
                    .collect();
                let results = client
                    .upload_batch(
                        blobs
                            .iter()
                            .map(|&(seed, len)| {
                                (Bytes::from(content(seed, len)), UploadOptions::default())
                            })
                            .collect(),
                    )
                    .await;
                for ((seed, len), result) in blobs.into_iter().zip(results) {
                    if let Ok(uploaded) = result {
                        acked.lock().unwrap().push((uploaded.blob_id, seed, len));
                    }
                }
            }
        }));
    }
    // Let uploads run, then crash the volume server mid-stream.
    eventually(
        secs(60),
        "50 uploads, a streamed one among them",
        async || {
            let acked = acked.lock().unwrap();
            let streamed = acked.iter().any(|&(_, _, len)| len >= 2 << 20);
            (acked.len() > 50 && streamed)
                .then_some(())
                .ok_or(acked.len())
        },
    )
    .await;
    cluster.kill_volume(0);
    // Time, not a state: uploads in flight meet the dead server for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for uploader in uploaders {
        uploader.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} uploads before the kill",
        acked.len()
    );
    assert!(
        acked.iter().any(|&(_, _, len)| len >= 2 << 20),
        "no streamed upload was acknowledged before the kill"
    );
    acked
}

/// Restarts volume server 0 and reads every blob of `acked` back over HTTP,
/// byte for byte.
async fn every_blob_reads_back_after_a_restart(
    cluster: &mut Cluster,
    acked: &[(String, u64, usize)],
) {
    cluster.restart_volume(0).await;
    let http = reqwest::Client::new();
    for (blob_id, seed, len) in acked {
        let response = http
            .get(format!("{}/{blob_id}", cluster.http_base(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "acknowledged blob {blob_id} lost"
        );
        assert_eq!(
            &response.bytes().await.unwrap()[..],
            &content(*seed, *len)[..]
        );
    }
}

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

/// `hayloft put FILE` started in the background against the cluster.
fn put_in_background(cluster: &Cluster, file: &std::path::Path) -> std::process::Child {
    std::process::Command::new(support::BIN)
        .args(["put", file.to_str().unwrap()])
        .env("HAYLOFT_DIRECTORY", cluster.directory_addr())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_waits_for_a_cluster_still_starting_and_errors_read_one_line_per_cause() {
    let mut cluster = Cluster::builder().volumes(1).start().await;
    let file = cluster.root().join("early.txt");
    std::fs::write(&file, b"early bird\n").unwrap();

    // The directory is not up yet: the put waits for it.
    cluster.stop_directory();
    let put = put_in_background(&cluster, &file);
    // Time, not a state: the put tries (and waits) while nothing answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.start_directory();
    let output = tokio::task::spawn_blocking(move || put.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // No volume server has registered yet (Assign answers UNAVAILABLE): the
    // put waits for one.
    cluster.kill_volume(0);
    let client = cluster.client().await;
    eventually(secs(15), "the directory to see vs0 dead", async || {
        let status = client.status().await.unwrap();
        status.servers.iter().all(|s| !s.alive)
    })
    .await;
    let put = put_in_background(&cluster, &file);
    // Time, not a state: the put tries (and waits) while no server is alive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.start_volume(0);
    let output = tokio::task::spawn_blocking(move || put.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let blob_id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(
        &client.download(&blob_id).await.unwrap().1[..],
        b"early bird\n"
    );

    // Errors: one line per cause, no backtrace, whatever RUST_BACKTRACE says.
    for args in [
        vec!["get", "not-a-blob-id"],
        vec!["status", "--directory", "127.0.0.1:1"],
    ] {
        let output = std::process::Command::new(support::BIN)
            .args(&args)
            .env("HAYLOFT_DIRECTORY", cluster.directory_addr())
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            lines[1..].iter().all(|l| l.starts_with("  caused by: ")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("acktrace"), "{args:?}: {stderr}");
    }
    let output = std::process::Command::new(support::BIN)
        .args(["get", "not-a-blob-id", "--verbose"])
        .env("HAYLOFT_DIRECTORY", cluster.directory_addr())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("error: "));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_get_rm_status() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let dir = cluster.root();
    let photo = dir.join("cat photo.jpg");
    std::fs::write(&photo, content(1, 100_000)).unwrap();
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, b"remember the milk\n").unwrap();

    let (ok, put) = hayloft(
        &cluster,
        &[
            "put",
            photo.to_str().unwrap(),
            notes.to_str().unwrap(),
            "--url",
        ],
    );
    assert!(ok, "{put}");
    let lines: Vec<String> = put
        .lines()
        .filter(|l| l.contains('\t'))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2);
    let (photo_id, photo_url) = lines[0].split_once('\t').unwrap();
    let (notes_id, _) = lines[1].split_once('\t').unwrap();

    let out = dir.join("back.jpg");
    assert!(hayloft(&cluster, &["get", photo_id, "-o", out.to_str().unwrap()]).0);
    assert_eq!(std::fs::read(&out).unwrap(), content(1, 100_000));
    let (ok, stdout) = hayloft(&cluster, &["get", notes_id]);
    assert!(ok);
    assert!(stdout.starts_with("remember the milk\n"), "{stdout}");

    let response = reqwest::get(photo_url).await.unwrap();
    assert_eq!(response.headers()["content-type"], "image/jpeg");

    // A heartbeat tells the directory of the volume and its state.
    let (ok, status) = eventually(secs(10), "status to list vs0 writable", async || {
        let (ok, status) = hayloft(&cluster, &["status"]);
        (ok && status.contains("vs0") && status.contains("writable"))
            .then(|| (ok, status.clone()))
            .ok_or(status)
    })
    .await;
    assert!(ok, "{status}");
    assert!(status.contains("vs0"), "{status}");
    assert!(status.contains("writable"), "{status}");

    assert!(hayloft(&cluster, &["rm", notes_id]).0);
    let (ok, missing) = hayloft(&cluster, &["get", notes_id]);
    assert!(!ok);
    assert!(missing.contains("not found"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_volume_server_gets_no_new_uploads() {
    let mut cluster = Cluster::builder().volumes(2).start().await;
    let client = cluster.client().await;
    let first = client
        .upload(Bytes::from_static(b"first"), &UploadOptions::default())
        .await
        .unwrap();
    let holder = server_of(&client.status().await.unwrap(), &first.blob_id);
    cluster.kill_volume(server_index(&holder));

    // Within the dead-server timeout (4 s here) the directory notices...
    eventually(secs(15), "the server marked dead", async || {
        let status = client.status().await.unwrap();
        let server = status
            .servers
            .iter()
            .find(|s| s.location.as_ref().unwrap().server_id == holder)
            .unwrap();
        !server.alive
    })
    .await;
    // ... and uploads go to the live server, on new volumes if need be.
    for n in 0..20u64 {
        let data = Bytes::from(content(n, 1000));
        let uploaded = client
            .upload(data.clone(), &UploadOptions::default())
            .await
            .unwrap();
        let status = client.status().await.unwrap();
        assert_ne!(server_of(&status, &uploaded.blob_id), holder);
        assert_eq!(client.download(&uploaded.blob_id).await.unwrap().1, data);
    }
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_requests_are_made() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let volume_port = cluster.volume_ports(0).metrics;
    let uploaded = client
        .upload(Bytes::from(content(1, 10_000)), &UploadOptions::default())
        .await
        .unwrap();
    let before = scrape(volume_port).await;
    for _ in 0..3 {
        client.download(&uploaded.blob_id).await.unwrap();
        reqwest::get(format!("{}/{}", cluster.http_base(0), uploaded.blob_id))
            .await
            .unwrap();
    }
    reqwest::get(format!("{}/{}", cluster.http_base(0), "0000000100000000"))
        .await
        .unwrap();
    // A pulse updates the gauges.
    let after = eventually(secs(10), "a pulse to update the gauges", async || {
        let after = scrape(volume_port).await;
        (sample(&after, "hayloft_needles") >= 1.0
            && sample(&after, "hayloft_index_memory_bytes") > 0.0
            && sample(&after, r#"hayloft_disk_free_bytes{tier="hot"}"#) > 0.0
            && sample(&after, r#"hayloft_volumes{tier="hot",state="writable"}"#) >= 1.0)
            .then_some(after)
    })
    .await;
    let reads = r#"hayloft_volume_requests_total{op="grpc_read",status="OK"}"#;
    assert_eq!(
        sample(&after, reads) - sample(&before, reads),
        3.0,
        "{after}"
    );
    let gets = r#"hayloft_volume_requests_total{op="http_get",status="200"}"#;
    assert_eq!(sample(&after, gets) - sample(&before, gets), 3.0);
    assert!(
        sample(
            &after,
            r#"hayloft_volume_requests_total{op="http_get",status="404"}"#
        ) >= 1.0
    );
    let out = r#"hayloft_volume_bytes_out_total{protocol="http"}"#;
    assert_eq!(sample(&after, out) - sample(&before, out), 30_000.0);
    assert!(sample(&after, r#"hayloft_volume_bytes_in_total{protocol="grpc"}"#) >= 10_000.0);
    assert!(after.contains("hayloft_volume_request_duration_seconds_bucket"));
    assert!(sample(&after, "hayloft_needles") >= 1.0);
    assert!(sample(&after, "hayloft_index_memory_bytes") > 0.0);
    assert!(sample(&after, r#"hayloft_disk_free_bytes{tier="hot"}"#) > 0.0);
    assert!(sample(&after, r#"hayloft_volumes{tier="hot",state="writable"}"#) >= 1.0);

    let directory = scrape(cluster.directory_metrics_port()).await;
    assert!(
        sample(
            &directory,
            r#"hayloft_directory_requests_total{op="assign",status="OK"}"#
        ) >= 1.0
    );
    assert!(sample(&directory, "hayloft_directory_ids_assigned_total") >= 1.0);
    assert_eq!(
        sample(&directory, r#"hayloft_directory_servers{alive="true"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_an_upload_from_directory_to_volume_server() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let options = UploadOptions {
        request_id: Some("e2e-trace-0042".into()),
        ..UploadOptions::default()
    };
    let uploaded = client
        .upload(Bytes::from_static(b"traced"), &options)
        .await
        .unwrap();
    assert_eq!(uploaded.request_id, "e2e-trace-0042");
    // HTTP reads carry (and echo) the header too.
    let response = reqwest::Client::new()
        .get(format!("{}/{}", cluster.http_base(0), uploaded.blob_id))
        .header("x-request-id", "e2e-trace-0043")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "e2e-trace-0043");
    let logged = |name: &str, id: &str| {
        let log = cluster.log(name);
        log.lines()
            .filter(|line| line.contains(id))
            .all(|line| line.starts_with('{'))
            && log.contains(&format!("\"request_id\":\"{id}\""))
    };
    eventually(
        secs(10),
        "request ids in both servers' JSON logs",
        async || {
            (logged("directory.log", "e2e-trace-0042")
                && logged("vs0.log", "e2e-trace-0042")
                && logged("vs0.log", "e2e-trace-0043"))
            .then_some(())
            .ok_or_else(|| format!("see {}", cluster.root().display()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_bench_runs_every_phase() {
    let cluster = Cluster::builder().volumes(1).start().await;
    // A smoke test: figures are not asserted, only that every phase ran
    // requests without errors and the JSON is well formed.
    let (ok, out) = hayloft(
        &cluster,
        &[
            "bench",
            "--duration",
            "700ms",
            "--concurrency",
            "4",
            "--sizes",
            "4KiB,1MiB",
            "--batch",
            "8",
            "--json",
        ],
    );
    assert!(ok, "{out}");
    let json = &out[out.find('[').unwrap()..=out.rfind(']').unwrap()];
    let phases: Vec<std::collections::HashMap<String, serde_json::Value>> =
        serde_json::from_str(json).unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "upload 4.0 KiB",
            "upload 1.0 MiB",
            "upload 4.0 KiB in batches of 8",
            "http read (uniform)",
            "http read (zipf)",
            "mixed 90% read / 10% upload"
        ]
    );
    for phase in &phases {
        assert!(phase["requests"].as_u64().unwrap() > 0, "{phase:?}");
        assert_eq!(phase["errors"].as_u64().unwrap(), 0, "{phase:?}");
        assert!(phase["p99_ms"].as_f64().unwrap() >= phase["p50_ms"].as_f64().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_shows_bytes_growth_forecast_and_cost_per_tier() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let options = UploadOptions::default();
    client
        .upload(Bytes::from(content(1, 100_000)), &options)
        .await
        .unwrap();
    // The directory records a sample a second (--history-interval 1s):
    // wait for two seconds of them.
    let capacity = || {
        let (ok, out) = hayloft(&cluster, &["status", "--capacity", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    eventually(secs(15), "two seconds of capacity history", async || {
        let report = capacity();
        (report["history_seconds"].as_u64().unwrap() >= 2)
            .then_some(())
            .ok_or(report)
    })
    .await;
    for seed in 2..12 {
        client
            .upload(Bytes::from(content(seed, 100_000)), &options)
            .await
            .unwrap();
    }
    // Wait for a heartbeat to carry the new sizes into the history.
    let hot = |report: &serde_json::Value| {
        report["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tier"] == "hot")
            .cloned()
    };
    let report = eventually(secs(15), "the new sizes in the report", async || {
        let report = capacity();
        hot(&report)
            .is_some_and(|hot| {
                hot["used_bytes"].as_u64().unwrap() >= 1_100_000
                    && hot["growth_per_day"].as_f64().unwrap() > 0.0
            })
            .then_some(report.clone())
            .ok_or(report)
    })
    .await;
    assert!(report["history_seconds"].as_u64().unwrap() >= 2, "{report}");
    let hot = report["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "hot")
        .unwrap();
    assert!(hot["used_bytes"].as_u64().unwrap() >= 1_100_000, "{hot}");
    assert!(hot["growth_per_day"].as_f64().unwrap() > 0.0, "{hot}");
    assert!(hot["free_bytes"].as_u64().unwrap() > 0, "{hot}");
    assert!(hot["full_in_days"].as_f64().unwrap() > 0.0, "{hot}");
    // The built-in policy prices hot storage.
    assert!(hot["monthly_cost"].as_f64().unwrap() > 0.0, "{hot}");
    let (ok, table) = hayloft(&cluster, &["status", "--capacity"]);
    assert!(
        ok && table.contains("GROWTH/DAY") && table.contains("days"),
        "{table}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fsync_failure_turns_the_volume_read_only_until_a_restart() {
    // Every fsync of the volume server fails while the failpoint is armed.
    let failpoint = Failpoint::new("fsync");
    let mut cluster = Cluster::builder()
        .volumes(1)
        .volume_env("HAYLOFT_FAILPOINT", &failpoint.env())
        .start()
        .await;
    let client = cluster.client().await;
    let upload = |seed: u64| {
        let client = &client;
        async move {
            client
                .upload(
                    Bytes::from(content(seed, 10_000)),
                    &UploadOptions::default(),
                )
                .await
        }
    };
    let first = upload(1).await.unwrap();

    // The disk fails an fsync: the upload is refused, never acknowledged.
    failpoint.arm();
    let refused = upload(2).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused}");
    failpoint.disarm();

    // The volumes it happened to are read-only and say why; writes go to
    // others; reads go on.
    let faulty = |status: &hayloft_proto::StatusResponse| -> Vec<u32> {
        status
            .volumes
            .iter()
            .flat_map(|v| &v.replicas)
            .filter_map(|r| r.status.as_ref())
            .filter(|s| !s.fault.is_empty())
            .map(|s| {
                assert!(s.sealed, "a faulty volume takes no writes");
                s.volume_id
            })
            .collect()
    };
    let (status, broken) = eventually(secs(30), "a volume to report its fault", async || {
        let status = client.status().await.unwrap();
        let broken = faulty(&status);
        (!broken.is_empty()).then_some((status, broken))
    })
    .await;
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.contains("an fsync failed")),
        "{:?}",
        status.problems
    );
    let after = upload(3).await.unwrap();
    let volume_of = |id: &str| id.parse::<BlobId>().unwrap().volume().0;
    assert!(
        !broken.contains(&volume_of(&after.blob_id)),
        "written to a faulty volume"
    );
    assert_eq!(
        client.download(&first.blob_id).await.unwrap().1,
        content(1, 10_000)
    );

    // A restart opens the volumes again (recovery settles what reached the
    // disk): no fault, writable, everything acknowledged still there.
    cluster.kill_volume(0);
    cluster.start_volume(0);
    eventually(
        secs(30),
        "the restarted server to report its volumes writable",
        async || {
            let status = client.status().await.unwrap();
            faulty(&status).is_empty()
                && status
                    .volumes
                    .iter()
                    .flat_map(|v| &v.replicas)
                    .filter_map(|r| r.status.as_ref())
                    .filter(|s| broken.contains(&s.volume_id))
                    .all(|s| !s.sealed)
        },
    )
    .await;
    assert_eq!(
        client.download(&first.blob_id).await.unwrap().1,
        content(1, 10_000)
    );
    assert_eq!(
        client.download(&after.blob_id).await.unwrap().1,
        content(3, 10_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_write_that_fails_mid_upload_refuses_it_and_keeps_nothing_of_it() {
    // Every data-chunk write of a streamed upload fails while the failpoint
    // is armed (a disk that returns EIO), after the needle's header has been
    // written and while the client is still sending.
    let failpoint = Failpoint::new("chunk-write");
    let mut cluster = Cluster::builder()
        .volumes(1)
        .volume_env("HAYLOFT_FAILPOINT", &failpoint.env())
        .start()
        .await;
    let client = cluster.client().await;
    const LARGE: usize = 9 << 20;
    let upload = |seed: u64, len: usize| {
        let client = &client;
        async move {
            client
                .upload(Bytes::from(content(seed, len)), &UploadOptions::default())
                .await
        }
    };
    let small = upload(1, 10_000).await.unwrap();

    failpoint.arm();
    let refused = upload(2, LARGE).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Internal), "{refused}");
    assert!(
        refused.to_string().contains("failpoint chunk-write"),
        "the error names what failed: {refused}"
    );
    failpoint.disarm();

    // The volume takes writes again at once (a failed write is not a failed
    // fsync: nothing acknowledged is in doubt), and reads go on.
    let large = upload(3, LARGE).await.unwrap();
    assert_eq!(
        client.download(&large.blob_id).await.unwrap().1,
        content(3, LARGE)
    );
    // After a restart (recovery scans past the abandoned record, or finds
    // it cut off), both acknowledged blobs are there.
    cluster.kill_volume(0);
    cluster.restart_volume(0).await;
    for (blob, seed, len) in [(&small, 1, 10_000), (&large, 3, LARGE)] {
        assert_eq!(
            client.download(&blob.blob_id).await.unwrap().1,
            content(seed, len)
        );
    }
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "this test fills a small file system of its own: it mounts a tmpfs, which needs root \
             (CI runs as root)"
        );
        Tmpfs(path.to_owned())
    }

    /// Bytes free, as `df` sees them.
    fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_keeps_its_reserve_takes_deletes_compacts_and_writes_again() {
    const MIB: u64 = 1 << 20;
    // A 32 MiB disk keeping 6 MiB free, with 4 MiB volumes: the reserve also
    // covers compacting a full volume (4 MiB and a 1 MiB margin).
    let mut disks = Vec::new();
    let cluster = Cluster::builder()
        .volumes(1)
        .volume_args([
            "--max-volume-size",
            "4MiB",
            "--min-free-space",
            "6MiB",
            "--min-free-percent",
            "0",
        ])
        .prepare(|dir| disks.push(Tmpfs::mount(&dir.join("hot"), "32m")))
        .start()
        .await;
    let disk = &disks[0];
    let client = cluster.client().await;

    // Fill it: uploads go on until the disk is at its reserve, then fail
    // with a clear reason.
    let mut written = Vec::new();
    let refused = loop {
        let seed = written.len() as u64;
        assert!(seed < 200, "32 MiB took 40 MB of uploads");
        match client
            .upload(
                Bytes::from(content(seed, 200_000)),
                &UploadOptions::default(),
            )
            .await
        {
            Ok(uploaded) => written.push((uploaded.blob_id, seed)),
            Err(e) => break e,
        }
    };
    assert!(
        written.len() >= 80,
        "only {} uploads went in",
        written.len()
    );
    assert!(
        matches!(
            refused.code(),
            Some(Code::Unavailable | Code::ResourceExhausted)
        ),
        "{refused}"
    );
    let reason = refused.to_string();
    assert!(
        reason.contains("room") || reason.contains("free-space reserve"),
        "{reason}"
    );
    // The reserve is still there, and the directory knows the disk is out
    // of room (the server reports nothing free above its reserve).
    assert!(disk.free() >= 5 * MIB, "{} bytes left", disk.free());
    let status = client.status().await.unwrap();
    assert_eq!(status.servers[0].free_hot_bytes, 0, "{:?}", status.servers);
    let (ok, out) = hayloft(&cluster, &["status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("free-space reserve") || out.contains("room"),
        "{out}"
    );

    // Nothing acknowledged is lost.
    for (blob_id, seed) in &written {
        let (_, data) = client.download(blob_id).await.unwrap();
        assert!(data == content(*seed, 200_000), "{blob_id}");
    }

    // Deletes still work on the full disk: four blobs in five go, but the
    // first volume keeps all but one, so that its compaction needs nearly
    // its whole size (which the reserve kept free).
    let volume_of = |blob_id: &str| blob_id.parse::<BlobId>().unwrap().volume();
    let first_volume = volume_of(&written[0].0);
    let mut kept = Vec::new();
    let mut deleted = Vec::new();
    let mut spared_first = false;
    for (i, (blob_id, seed)) in written.iter().enumerate() {
        let in_first = volume_of(blob_id) == first_volume;
        let delete = if in_first {
            !std::mem::replace(&mut spared_first, true)
        } else {
            i % 5 != 0
        };
        if delete {
            client.delete(blob_id).await.unwrap();
            deleted.push(blob_id.clone());
        } else {
            kept.push((blob_id.clone(), *seed));
        }
    }

    // Compaction runs on the full disk, the nearly full volume included.
    let (ok, out) = hayloft(&cluster, &["compact", "--all", "--min-garbage", "0.01"]);
    assert!(ok, "{out}\n{}", support::log_tails(&cluster.log_dir()));
    assert!(!out.contains("failed"), "{out}");

    // With the space back, writes resume by themselves.
    let fresh = eventually(secs(30), "writes to resume", async || {
        match client
            .upload(
                Bytes::from(content(999, 200_000)),
                &UploadOptions::default(),
            )
            .await
        {
            Ok(uploaded) => Ok(uploaded.blob_id),
            Err(e) => Err(format!("{e} ({} bytes free)", disk.free())),
        }
    })
    .await;
    let (_, data) = client.download(&fresh).await.unwrap();
    assert!(data == content(999, 200_000));
    for (blob_id, seed) in &kept {
        let (_, data) = client.download(blob_id).await.unwrap();
        assert!(data == content(*seed, 200_000), "{blob_id}");
    }
    for blob_id in &deleted {
        let gone = client.download(blob_id).await.unwrap_err();
        assert_eq!(gone.code(), Some(Code::NotFound), "{blob_id}: {gone}");
    }
    drop(client);
    drop(cluster);
}
