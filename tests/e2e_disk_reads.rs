//! Reads from disk, with real `hayloft` processes: a volume's pages are
//! evicted from the page cache (`POSIX_FADV_DONTNEED` from the test, once
//! writes stopped), then cold reads (whole and ranged, HTTP and gRPC) are
//! held on the disk-read pool by a failpoint while a hot blob keeps
//! answering, the pool's bound refuses the excess with 503 / RESOURCE_EXHAUSTED,
//! the held reads return the right bytes once let go, and a byte flipped on
//! disk is refused, never served; a read the disk fails is answered with an
//! error (500 / INTERNAL), the server goes on, and the blob reads again once
//! the disk does.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hayloft_client::UploadOptions;
use support::{Cluster, Failpoint, content, eventually, secs};
use tonic::Code;

const BLOB: usize = 64 * 1024;

/// The sum of a metric's series (all labels, or those containing `labels`)
/// on volume server 0's `/metrics`.
async fn metric(cluster: &Cluster, name: &str, labels: &str) -> f64 {
    let url = format!(
        "http://127.0.0.1:{}/metrics",
        cluster.volume_ports(0).metrics
    );
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The data files of volume server 0.
fn data_files(cluster: &Cluster) -> Vec<PathBuf> {
    std::fs::read_dir(cluster.volume_dir(0).join("hot"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect()
}

/// Drops a file's pages from the page cache (after syncing them: only
/// clean pages go). Pages the server maps (the hot blob it read through
/// its map) stay.
fn evict(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: a plain syscall on a descriptor this function owns.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

async fn grpc_read(
    cluster: &Cluster,
    blob_id: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    support::replicas::read_range_from(&cluster.grpc_addr(0), blob_id, offset, length).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_reads_come_from_disk_right_while_a_hot_blob_keeps_answering() {
    let hold = Failpoint::new("disk-read-hold");
    let env = hold.env();
    let cluster = Cluster::builder()
        .volumes(1)
        .volume_args(["--disk-reads-in-flight", "2", "--disk-reads-queued", "1"])
        .volume_env("HAYLOFT_FAILPOINT", &env)
        .start()
        .await;
    let client = cluster.client().await;
    // The hot blob first (the lowest id of its volume), then the cold ones.
    let mut blobs = Vec::new();
    for seed in 0..8u64 {
        let data = content(seed, BLOB);
        let uploaded = client
            .upload(Bytes::from(data.clone()), &UploadOptions::default())
            .await
            .unwrap();
        blobs.push((uploaded.blob_id, data));
    }
    let http = reqwest::Client::new();
    let url = |id: &str| format!("{}/{id}", cluster.http_base(0));
    let (hot_id, hot) = blobs[0].clone();
    let response = http.get(url(&hot_id)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), hot.as_slice());

    // Writes stopped: evict every volume's pages.
    for path in data_files(&cluster) {
        evict(&path);
    }
    let disk_reads_before = metric(&cluster, "hayloft_volume_reads_total", "source=\"disk\"").await;

    // Cold reads held on the pool: two run (whole), one waits (a range).
    hold.arm();
    let get = |id: String, range: Option<&'static str>| {
        let (http, url) = (http.clone(), url(&id));
        tokio::spawn(async move {
            let mut request = http.get(url);
            if let Some(range) = range {
                request = request.header("range", range);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.bytes().await.unwrap())
        })
    };
    let held = [
        get(blobs[1].0.clone(), None),
        get(blobs[2].0.clone(), None),
        get(blobs[3].0.clone(), Some("bytes=1000-40999")),
    ];
    eventually(secs(30), "2 reads running, 1 waiting", async || {
        let running = metric(&cluster, "hayloft_volume_disk_reads_in_flight", "").await;
        let waiting = metric(&cluster, "hayloft_volume_disk_reads_waiting", "").await;
        (running == 2.0 && waiting == 1.0)
            .then_some(())
            .ok_or(format!("{running} running, {waiting} waiting"))
    })
    .await;

    // The pool and its queue are full: more cold reads are refused at once.
    let refused = http.get(url(&blobs[4].0)).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let refused = grpc_read(&cluster, &blobs[4].0, 0, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");

    // The hot blob answers meanwhile, over HTTP and gRPC, from memory.
    for _ in 0..3 {
        let response = http.get(url(&hot_id)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap().as_ref(), hot.as_slice());
    }
    assert_eq!(grpc_read(&cluster, &hot_id, 0, 0).await.unwrap(), hot);
    assert!(
        held.iter().all(|read| !read.is_finished()),
        "a held read answered"
    );

    // Let go: the held reads answer with the right bytes.
    hold.disarm();
    let [first, second, ranged] = held;
    assert_eq!(first.await.unwrap(), (200, Bytes::from(blobs[1].1.clone())));
    assert_eq!(
        second.await.unwrap(),
        (200, Bytes::from(blobs[2].1.clone()))
    );
    assert_eq!(
        ranged.await.unwrap(),
        (206, Bytes::copy_from_slice(&blobs[3].1[1000..41_000]))
    );
    // More cold reads, gRPC (whole and a range) and HTTP.
    assert_eq!(
        grpc_read(&cluster, &blobs[4].0, 0, 0).await.unwrap(),
        blobs[4].1
    );
    assert_eq!(
        grpc_read(&cluster, &blobs[5].0, 5000, 100).await.unwrap(),
        &blobs[5].1[5000..5100]
    );
    let response = http.get(url(&blobs[6].0)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        blobs[6].1.as_slice()
    );

    // Six reads came from disk, each about one blob's bytes. (The HTTP
    // threads publish their counts every 100 ms.)
    eventually(secs(30), "six reads counted from disk", async || {
        let disk_reads = metric(&cluster, "hayloft_volume_reads_total", "source=\"disk\"").await;
        let counted = disk_reads - disk_reads_before;
        (counted == 6.0).then_some(()).ok_or(counted)
    })
    .await;
    let bytes = metric(&cluster, "hayloft_volume_disk_read_bytes_total", "").await;
    assert!(
        bytes >= 6.0 * BLOB as f64 && bytes <= 6.0 * (BLOB as f64 + 512.0),
        "{bytes} bytes read from disk for six reads"
    );
    assert!(metric(&cluster, "hayloft_volume_reads_total", "source=\"memory\"").await >= 5.0);
    assert_eq!(
        metric(&cluster, "hayloft_volume_disk_reads_refused_total", "").await,
        2.0
    );

    // A byte flipped on disk in a blob not read since the eviction:
    // refused over HTTP and gRPC, never served.
    let (corrupt_id, corrupt) = &blobs[7];
    let mut flipped = false;
    for path in data_files(&cluster) {
        let bytes = std::fs::read(&path).unwrap();
        let Some(at) = bytes.windows(64).position(|w| w == &corrupt[..64]) else {
            continue;
        };
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let middle = (at + BLOB / 2) as u64;
        file.write_all_at(&[bytes[at + BLOB / 2] ^ 0x20], middle)
            .unwrap();
        drop(file);
        evict(&path);
        flipped = true;
    }
    assert!(flipped, "the blob's bytes are in no data file");
    let response = http.get(url(corrupt_id)).send().await.unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    assert!(status.is_server_error(), "{status}");
    assert_ne!(body.as_ref(), corrupt.as_slice());
    assert!(body.len() < 100, "{} bytes served", body.len());
    let refused = grpc_read(&cluster, corrupt_id, 0, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_the_disk_fails_is_an_error_and_the_server_goes_on() {
    let failing = Failpoint::new("disk-read");
    let cluster = Cluster::builder()
        .volumes(1)
        .volume_env("HAYLOFT_FAILPOINT", &failing.env())
        .start()
        .await;
    let client = cluster.client().await;
    let mut blobs = Vec::new();
    for seed in 0..3u64 {
        let data = content(100 + seed, BLOB);
        let uploaded = client
            .upload(Bytes::from(data.clone()), &UploadOptions::default())
            .await
            .unwrap();
        blobs.push((uploaded.blob_id, data));
    }
    let http = reqwest::Client::new();
    let url = |id: &str| format!("{}/{id}", cluster.http_base(0));
    // The hot blob is read once, through the server's map: it stays
    // resident when the rest is evicted.
    let (hot_id, hot) = blobs[0].clone();
    let response = http.get(url(&hot_id)).send().await.unwrap();
    assert_eq!(response.bytes().await.unwrap().as_ref(), hot.as_slice());
    for path in data_files(&cluster) {
        evict(&path);
    }

    failing.arm();
    let (cold_id, cold) = blobs[1].clone();
    let response = http.get(url(&cold_id)).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("hayloft") || body.contains("error"),
        "{body}"
    );
    let error = grpc_read(&cluster, &cold_id, 0, 0).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal, "{error}");
    let ranged = http
        .get(url(&blobs[2].0))
        .header("range", "bytes=10-99")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 500);
    // Reads from memory go on while the disk fails.
    let response = http.get(url(&hot_id)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), hot.as_slice());

    // The disk reads again: so does every blob, with the right bytes (the
    // failure left nothing behind: no poisoned volume, no cached error).
    failing.disarm();
    let response = http.get(url(&cold_id)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), cold.as_slice());
    assert_eq!(
        grpc_read(&cluster, &blobs[2].0, 0, 0).await.unwrap(),
        blobs[2].1
    );
    let response = client
        .upload(Bytes::from(content(200, 1000)), &UploadOptions::default())
        .await;
    assert!(response.is_ok(), "{response:?}");
}

/// Where `data` (a blob's bytes, at least 64 long) starts in a data file of
/// volume server 0: the file and the offset of its first byte.
fn find_blob(cluster: &Cluster, data: &[u8]) -> (PathBuf, u64) {
    for path in data_files(cluster) {
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(64).position(|w| w == &data[..64]) {
            return (path, at as u64);
        }
    }
    panic!("the blob's bytes are in no data file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_reads_no_data_and_a_range_of_a_large_blob_reads_about_the_range() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    const LARGE: usize = 16 << 20;
    const MIB: u64 = 1 << 20;
    let small = content(300, BLOB);
    let large = content(301, LARGE);
    let mut ids = Vec::new();
    for data in [&small, &large] {
        let uploaded = client
            .upload(Bytes::from(data.clone()), &UploadOptions::default())
            .await
            .unwrap();
        ids.push(uploaded.blob_id);
    }
    let (small_id, large_id) = (ids[0].clone(), ids[1].clone());
    let http = reqwest::Client::new();
    let url = |id: &str| format!("{}/{id}", cluster.http_base(0));
    let evict_all = || {
        for path in data_files(&cluster) {
            evict(&path);
        }
    };
    let bytes_read = async || metric(&cluster, "hayloft_volume_disk_read_bytes_total", "").await;
    evict_all();

    // HEAD: the length, ETag and dates of the blob, from its header and
    // tail alone (metadata, CRCs: 4 bytes of chunk CRC per 64 KiB of blob):
    // about a kilobyte read from disk at most here, not the blob.
    let mut heads = Vec::new();
    for (id, len) in [(&small_id, BLOB), (&large_id, LARGE)] {
        let before = bytes_read().await;
        let response = http.head(url(id)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-length"],
            len.to_string().as_str()
        );
        let read = bytes_read().await - before;
        let most = 200.0 + len as f64 / 16_384.0;
        assert!(
            read > 0.0 && read <= most,
            "{read} bytes read for a HEAD of {len}"
        );
        heads.push(response.headers().clone());
    }
    let stat = client.stat(&large_id).await.unwrap();
    assert_eq!(stat.size, LARGE as u64);
    assert_eq!(stat.etag, heads[1]["etag"].to_str().unwrap());
    let validators = ["etag", "last-modified", "content-type", "cache-control"];
    // The same validators as a GET's, which reads and verifies the data.
    // (Not of the large blob whole: served through the server's map, its
    // pages would stay in the page cache.)
    let response = http.get(url(&small_id)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    for name in validators {
        assert_eq!(response.headers()[name], heads[0][name], "{name}");
    }
    assert_eq!(response.bytes().await.unwrap().as_ref(), small.as_slice());

    // A 1 MiB range of the 16 MiB blob: about 1 MiB read from disk.
    evict_all();
    let (start, end) = (5 * MIB + 1000, 6 * MIB + 1000);
    let before = bytes_read().await;
    let response = http
        .get(url(&large_id))
        .header("range", format!("bytes={start}-{}", end - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    for name in validators {
        assert_eq!(response.headers()[name], heads[1][name], "{name}");
    }
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &large[start as usize..end as usize]
    );
    let read = bytes_read().await - before;
    assert!(
        read >= MIB as f64 && read <= (MIB + 2 * 65_536 + 4096) as f64,
        "{read} bytes read for a 1 MiB range"
    );
    // The same over gRPC.
    evict_all();
    let before = bytes_read().await;
    assert_eq!(
        grpc_read(&cluster, &large_id, 9 * MIB, MIB).await.unwrap(),
        &large[9 * MIB as usize..10 * MIB as usize]
    );
    let read = bytes_read().await - before;
    assert!(
        read >= MIB as f64 && read <= (MIB + 4096) as f64,
        "{read} bytes read for a 1 MiB gRPC read"
    );

    // A byte flipped on disk: a range holding it is refused, over HTTP and
    // gRPC; so is the whole blob; a range of good chunks is served, right.
    let (path, at) = find_blob(&cluster, &large);
    let bad = 12 * MIB + 777;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at + bad).unwrap();
    file.write_all_at(&[byte[0] ^ 0x08], at + bad).unwrap();
    drop(file);
    evict(&path);
    for range in [
        format!("bytes={}-{}", bad - 10, bad + 10),
        format!("bytes={}-{}", 11 * MIB, 13 * MIB),
        format!("bytes={}-", 12 * MIB),
    ] {
        let response = http
            .get(url(&large_id))
            .header("range", &range)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        assert!(status.is_server_error(), "{range}: {status}");
        assert!(body.len() < 100, "{range}: {} bytes served", body.len());
    }
    let response = http.get(url(&large_id)).send().await.unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    assert!(response.bytes().await.unwrap().len() < 100);
    let refused = grpc_read(&cluster, &large_id, 12 * MIB, 1000)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused}");
    let response = http
        .get(url(&large_id))
        .header("range", format!("bytes={}-{}", 2 * MIB, 3 * MIB - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &large[2 * MIB as usize..3 * MIB as usize]
    );
}
