//! End-to-end faults: a volume server killed mid-upload or while the
//! cluster starts, a dead server, failing fsyncs and chunk writes
//! (failpoints), and a full disk.
//!
//! Why one file of ~640 lines: 7 fault-injection scenarios (SIGKILL under
//! uploads, failpoints, a full disk), each long because it checks every
//! acknowledged blob after the fault.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hayloft_client::UploadOptions;
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
