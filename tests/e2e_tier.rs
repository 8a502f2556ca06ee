//! End-to-end tiering against a real S3-compatible server (moto, started by
//! the test on loopback): every move direction with reads checked during
//! and after, the Glacier restore flow, promotion by policy, expiry, and the
//! faults (S3 down mid-upload, a crash at each job step, a checksum
//! mismatch, a volume server starting with S3 down).
//!
//! Why one file of ~1090 lines: its 11 scenarios share one moto server and
//! the move/restore helpers at its top; each checks reads during and after a
//! move, in every direction.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hayloft_client::{Client, UploadOptions};
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{ListMovesRequest, MoveJobStatus, ReadRequest, Tier as ProtoTier};
use hayloft_tiering::object::{ObjectError, ObjectStore, ObjectStoreConfig};
use reqwest::StatusCode;
use support::{Cluster, S3Server, content, eventually, eventually_blocking, hayloft, secs};

const BUCKET: &str = "cold";

/// A cluster of one volume server whose cold tier is a fresh moto.
struct Setup {
    cluster: Cluster,
    s3: S3Server,
    _config_dir: tempfile::TempDir,
}

async fn setup(extra_config: &str, env: &[(&str, &str)]) -> Setup {
    let config_dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(config_dir.path()).await;
    s3.create_bucket(BUCKET).await;
    let config = config_dir.path().join("volume.toml");
    std::fs::write(&config, s3.volume_config(extra_config)).unwrap();
    let mut cluster = Cluster::builder()
        .volumes(1)
        .volume_args(["--config", config.to_str().unwrap()]);
    for (key, value) in env {
        cluster = cluster.volume_env(key, value);
    }
    let cluster = cluster.start().await;
    Setup {
        cluster,
        s3,
        _config_dir: config_dir,
    }
}

struct Blob {
    id: String,
    seed: u64,
    len: usize,
}

/// Uploads `count` blobs of `len` bytes.
async fn upload(
    client: &Client,
    first_seed: u64,
    count: u64,
    len: usize,
    collection: &str,
) -> Vec<Blob> {
    let options = UploadOptions {
        collection: collection.into(),
        ..UploadOptions::default()
    };
    let mut blobs = Vec::new();
    for seed in first_seed..first_seed + count {
        let uploaded = client
            .upload(Bytes::from(content(seed, len)), &options)
            .await
            .unwrap();
        blobs.push(Blob {
            id: uploaded.blob_id,
            seed,
            len,
        });
    }
    blobs
}

/// The volumes holding the `uploaded` blobs, once heartbeats have reported
/// them all (needle counts reach the directory with the next pulse, not with
/// the upload).
async fn volumes_with_data(client: &Client, uploaded: usize) -> Vec<u32> {
    let what = format!("heartbeats to report {uploaded} needles");
    eventually(secs(30), &what, async || {
        let status = client.status().await.unwrap();
        let reported: Vec<_> = status
            .volumes
            .iter()
            .filter_map(|v| v.status.as_ref())
            .filter(|s| s.needles > 0)
            .collect();
        let needles = reported.iter().map(|s| s.needles).sum::<u64>();
        (needles >= uploaded as u64)
            .then(|| reported.iter().map(|s| s.volume_id).collect())
            .ok_or(needles)
    })
    .await
}

fn volume_of(blob_id: &str) -> u32 {
    blob_id
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .0
}

async fn get(base: &str, blob: &Blob) -> (StatusCode, Bytes) {
    let response = reqwest::get(format!("{base}/{}", blob.id)).await.unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap_or_default())
}

async fn check_all(base: &str, blobs: &[Blob]) {
    for blob in blobs {
        let (status, body) = get(base, blob).await;
        assert_eq!(status, StatusCode::OK, "blob {}", blob.id);
        assert_eq!(
            &body[..],
            &content(blob.seed, blob.len)[..],
            "blob {}",
            blob.id
        );
    }
}

/// Reads every blob over HTTP in a loop until stopped; counts failures.
struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

fn start_reader(base: String, blobs: Vec<(String, u64, usize)>) -> Reader {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let (s, r, f) = (Arc::clone(&stop), Arc::clone(&reads), Arc::clone(&failures));
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut errors = Vec::new();
        while !s.load(Ordering::Relaxed) {
            for (id, seed, len) in &blobs {
                let ok = match client.get(format!("{base}/{id}")).send().await {
                    Ok(response) if response.status() == StatusCode::OK => response
                        .bytes()
                        .await
                        .is_ok_and(|b| b[..] == content(*seed, *len)[..]),
                    Ok(response) => {
                        errors.push(format!("{id}: {}", response.status()));
                        false
                    }
                    Err(e) => {
                        errors.push(format!("{id}: {e}"));
                        false
                    }
                };
                r.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    f.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        errors
    });
    Reader {
        stop,
        reads,
        failures,
        task,
    }
}

impl Reader {
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        assert_eq!(self.failures.load(Ordering::Relaxed), errors.len() as u64);
        (self.reads.load(Ordering::Relaxed), errors)
    }
}

fn readable(blobs: &[Blob]) -> Vec<(String, u64, usize)> {
    blobs
        .iter()
        .map(|b| (b.id.clone(), b.seed, b.len))
        .collect()
}

async fn tier_of(client: &Client, volume: u32) -> (i32, String) {
    let status = client.status().await.unwrap();
    let s = status
        .volumes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .find(|s| s.volume_id == volume)
        .unwrap();
    (s.tier, s.storage_class.clone())
}

/// Waits until the directory reports `volume` on `tier`.
async fn wait_tier(client: &Client, volume: u32, tier: ProtoTier) {
    let what = format!("volume {volume} on {tier:?}");
    eventually(secs(20), &what, async || {
        let now = tier_of(client, volume).await.0;
        (now == tier as i32).then_some(()).ok_or(now)
    })
    .await;
}

async fn jobs(setup: &Setup) -> Vec<MoveJobStatus> {
    let mut client = VolumeClient::connect(format!("http://{}", setup.cluster.grpc_addr(0)))
        .await
        .unwrap();
    client
        .list_moves(ListMovesRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs
}

async fn objects(setup: &Setup) -> ObjectStore {
    ObjectStore::connect(&ObjectStoreConfig::S3 {
        endpoint: Some(setup.s3.endpoint()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        force_path_style: true,
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap()
}

/// Object keys in the bucket (moto lists without signatures).
async fn object_keys(setup: &Setup) -> Vec<String> {
    let body = reqwest::get(format!("{}/{BUCKET}", setup.s3.endpoint()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

fn volume_files(setup: &Setup, volume: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for tier in ["hot", "warm"] {
        let dir = setup.cluster.volume_dir(0).join(tier);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.split('.').next() == Some(&volume.to_string()) {
                files.push(PathBuf::from(tier).join(name));
            }
        }
    }
    files.sort();
    files
}

fn tier_cmd(setup: &Setup, args: &[&str]) -> String {
    let mut all = vec!["tier"];
    all.extend_from_slice(args);
    let (ok, out) = hayloft(&setup.cluster, &all);
    assert!(ok, "hayloft {all:?} failed:\n{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_move_hot_warm_cold_and_back_while_reads_go_on() {
    let setup = setup("", &[]).await;
    let client = setup.cluster.client().await;
    let mut blobs = upload(&client, 0, 60, 4096, "").await;
    blobs.extend(upload(&client, 1000, 3, 1 << 20, "").await);
    let volumes = volumes_with_data(&client, blobs.len()).await;
    assert!(!volumes.is_empty());
    let base = setup.cluster.http_base(0);
    let reader = start_reader(base.clone(), readable(&blobs));

    for &volume in &volumes {
        let v = volume.to_string();
        tier_cmd(&setup, &["move", "--volume", &v, "--to", "warm"]);
        wait_tier(&client, volume, ProtoTier::Warm).await;
        assert!(
            volume_files(&setup, volume)
                .iter()
                .all(|f| f.starts_with("warm"))
        );
    }
    check_all(&base, &blobs).await;

    for &volume in &volumes {
        let v = volume.to_string();
        let out = tier_cmd(
            &setup,
            &[
                "move", "--volume", &v, "--to", "cold", "--bucket", BUCKET, "--prefix", "t/",
            ],
        );
        assert!(out.contains("done"), "{out}");
        wait_tier(&client, volume, ProtoTier::Cold).await;
        // Only the manifest, index, tombstones and state stay local.
        let files = volume_files(&setup, volume);
        assert!(
            files.iter().all(|f| !f.to_string_lossy().ends_with(".dat")),
            "{files:?}"
        );
        assert!(
            files.iter().any(|f| f.to_string_lossy().ends_with(".cold")),
            "{files:?}"
        );
    }
    assert_eq!(object_keys(&setup).await.len(), volumes.len());
    check_all(&base, &blobs).await;
    let (reads, errors) = reader.finish().await;
    assert!(errors.is_empty(), "reads failed during moves: {errors:?}");
    assert!(reads > 0);

    // gRPC reads of cold needles, with a range.
    let mut volume_client = VolumeClient::connect(format!("http://{}", setup.cluster.grpc_addr(0)))
        .await
        .unwrap();
    let big = &blobs[blobs.len() - 1];
    let mut stream = volume_client
        .read(ReadRequest {
            blob_id: big.id.clone(),
            offset: 1000,
            length: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        got.extend_from_slice(&chunk.chunk);
    }
    assert_eq!(&got[..], &content(big.seed, big.len)[1000..6000]);

    // `hayloft status` shows the tier and class.
    let (ok, out) = hayloft(&setup.cluster, &["status"]);
    assert!(
        ok && out.contains("cold") && out.contains("STANDARD"),
        "{out}"
    );

    // Deletes of cold needles: tombstoned locally, kept through the way back.
    let deleted = blobs.remove(0);
    client.delete(&deleted.id).await.unwrap();
    assert_eq!(get(&base, &deleted).await.0, StatusCode::NOT_FOUND);
    // A wrong cookie cannot delete (the header is fetched to check it).
    let id = &blobs[0].id;
    let cookie = &id[id.len() - 8..];
    let wrong = format!(
        "{}{}",
        &id[..id.len() - 8],
        if cookie == "00000000" {
            "00000001"
        } else {
            "00000000"
        }
    );
    assert!(client.delete(&wrong).await.is_err());
    check_all(&base, &blobs[..1]).await;

    let reader = start_reader(base.clone(), readable(&blobs));
    for &volume in &volumes {
        let v = volume.to_string();
        tier_cmd(&setup, &["restore", "--volume", &v]);
        wait_tier(&client, volume, ProtoTier::Warm).await;
    }
    let (_, errors) = reader.finish().await;
    assert!(
        errors.is_empty(),
        "reads failed during restores: {errors:?}"
    );
    check_all(&base, &blobs).await;
    assert_eq!(get(&base, &deleted).await.0, StatusCode::NOT_FOUND);
    // The objects are gone once the volumes are local again.
    assert!(object_keys(&setup).await.is_empty());
    // And back to hot.
    let volume = volumes[0];
    tier_cmd(
        &setup,
        &["move", "--volume", &volume.to_string(), "--to", "hot"],
    );
    wait_tier(&client, volume, ProtoTier::Hot).await;
    check_all(&base, &blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn glacier_reads_answer_503_start_one_restore_then_work_and_promotion_brings_back() {
    let setup = setup("", &[]).await;
    let client = setup.cluster.client().await;
    let blobs = upload(&client, 0, 10, 2048, "").await;
    let volume = volume_of(&blobs[0].id);
    let ours: Vec<&Blob> = blobs
        .iter()
        .filter(|b| volume_of(&b.id) == volume)
        .collect();
    tier_cmd(
        &setup,
        &[
            "move",
            "--volume",
            &volume.to_string(),
            "--to",
            "cold",
            "--bucket",
            BUCKET,
            "--storage-class",
            "GLACIER",
        ],
    );
    wait_tier(&client, volume, ProtoTier::Cold).await;
    assert_eq!(tier_of(&client, volume).await.1, "GLACIER");

    let base = setup.cluster.http_base(0);
    let response = reqwest::get(format!("{base}/{}", ours[0].id))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
    // gRPC says UNAVAILABLE with the same hint (the restore may already be
    // done by now: moto restores in milliseconds).
    let mut volume_client = VolumeClient::connect(format!("http://{}", setup.cluster.grpc_addr(0)))
        .await
        .unwrap();
    if let Err(status) = volume_client
        .read(ReadRequest {
            blob_id: ours[1].id.clone(),
            ..ReadRequest::default()
        })
        .await
    {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
    }
    // Once restored, reads work.
    let body = eventually(secs(20), "the restore to complete", async || {
        let (status, body) = get(&base, ours[0]).await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        }
        (status == StatusCode::OK).then_some(body).ok_or(status)
    })
    .await;
    assert_eq!(&body[..], &content(ours[0].seed, ours[0].len)[..]);
    let metrics = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        setup.cluster.volume_ports(0).metrics
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains("hayloft_tier_restores_started_total 1\n"),
        "one restore only:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("restore"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Promotion: reads make the volume hot enough to come back to warm.
    for blob in &ours {
        get(&base, blob).await;
    }
    let policy = setup.cluster.root().join("policy.toml");
    std::fs::write(
        &policy,
        "min_observation = \"0s\"\n[[promote]]\nname = \"busy\"\nfrom = \"cold\"\nmin_reads_per_day = 100\ntarget = \"warm\"\n",
    )
    .unwrap();
    // Heartbeats carry the read rates: wait for one.
    let promoted = format!("volume {volume}: cold -> warm by busy");
    eventually(secs(10), "the plan to promote the volume", async || {
        let out = tier_cmd(&setup, &["plan", "--policy", policy.to_str().unwrap()]);
        out.contains(&promoted).then_some(()).ok_or(out)
    })
    .await;
    tier_cmd(&setup, &["run", "--policy", policy.to_str().unwrap()]);
    wait_tier(&client, volume, ProtoTier::Warm).await;
    for blob in &ours {
        let (status, body) = get(&base, blob).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], &content(blob.seed, blob.len)[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_whose_needles_all_expired_are_deleted() {
    let setup = setup("", &[]).await;
    let client = setup.cluster.client().await;
    let options = UploadOptions {
        collection: "tmp".into(),
        ttl: Some(Duration::from_secs(2)),
        ..UploadOptions::default()
    };
    let uploaded = client
        .upload(Bytes::from(content(1, 1000)), &options)
        .await
        .unwrap();
    let keep = upload(&client, 10, 5, 1000, "").await;
    let volume = volume_of(&uploaded.blob_id);
    // Sealing happens on the move to warm.
    tier_cmd(
        &setup,
        &["move", "--volume", &volume.to_string(), "--to", "warm"],
    );
    let empty_policy = setup.cluster.root().join("empty.toml");
    std::fs::write(&empty_policy, "").unwrap();
    let out = tier_cmd(
        &setup,
        &["plan", "--policy", empty_policy.to_str().unwrap()],
    );
    assert!(!out.contains("delete"), "nothing has expired yet:\n{out}");
    // Time, not a state: the needle's 2 s TTL runs out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = tier_cmd(&setup, &["run", "--policy", empty_policy.to_str().unwrap()]);
    assert!(
        out.contains(&format!("volume {volume}: delete (every needle expired)")),
        "{out}"
    );
    assert!(volume_files(&setup, volume).is_empty());
    let status = client.status().await.unwrap();
    assert!(
        status
            .volumes
            .iter()
            .all(|v| v.status.as_ref().unwrap().volume_id != volume)
    );
    // Heartbeats do not bring it back, and other volumes are untouched.
    // Time, not a state: a heartbeat or so that must not bring it back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = client.status().await.unwrap();
    assert!(
        status
            .volumes
            .iter()
            .all(|v| v.status.as_ref().unwrap().volume_id != volume)
    );
    check_all(&setup.cluster.http_base(0), &keep).await;
}

/// A volume of about 16 MiB (four 5 MiB parts) and the blobs in it.
async fn big_volume(client: &Client) -> (u32, Vec<Blob>) {
    let blobs = upload(client, 0, 4, 4 << 20, "big").await;
    let volume = volume_of(&blobs[0].id);
    let ours: Vec<Blob> = blobs
        .into_iter()
        .filter(|b| volume_of(&b.id) == volume)
        .collect();
    (volume, ours)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_down_mid_upload_the_job_retries_and_resumes_and_reads_go_on() {
    // Slow the upload so S3 can be stopped in the middle of it.
    let mut setup = setup("tier_rate = \"4MiB\"", &[]).await;
    let client = setup.cluster.client().await;
    let (volume, blobs) = big_volume(&client).await;
    let base = setup.cluster.http_base(0);
    tier_cmd(
        &setup,
        &[
            "move",
            "--volume",
            &volume.to_string(),
            "--to",
            "cold",
            "--bucket",
            BUCKET,
            "--no-wait",
        ],
    );
    eventually(secs(20), "the upload to start", async || {
        jobs(&setup).await.iter().any(|j| j.done_bytes > 0)
    })
    .await;
    setup.s3.stop();
    // The job retries; the volume stays readable from its source meanwhile.
    eventually(secs(60), "the job to retry", async || {
        let job = jobs(&setup)
            .await
            .into_iter()
            .find(|j| j.volume_id == volume)
            .unwrap();
        assert!(!job.finished, "{job:?}");
        (job.attempts > 0).then_some(()).ok_or(job)
    })
    .await;
    check_all(&base, &blobs).await;
    assert_eq!(tier_of(&client, volume).await.0, ProtoTier::Hot as i32);
    // S3 comes back empty (moto keeps nothing): the job starts a new upload.
    setup.s3.restart().await;
    setup.s3.create_bucket(BUCKET).await;
    let job = eventually(secs(60), "the job to finish", async || {
        let job = jobs(&setup)
            .await
            .into_iter()
            .find(|j| j.volume_id == volume)
            .unwrap();
        if job.finished { Ok(job) } else { Err(job) }
    })
    .await;
    assert!(job.error.is_empty(), "{job:?}");
    wait_tier(&client, volume, ProtoTier::Cold).await;
    check_all(&base, &blobs).await;
}

/// Crashes the volume server at a failpoint of a move to cold, restarts
/// it without, and checks the move resumes and completes.
async fn crash_and_resume(failpoint: &str) {
    let mut setup = setup("", &[("HAYLOFT_FAILPOINT", failpoint)]).await;
    let client = setup.cluster.client().await;
    let (volume, blobs) = big_volume(&client).await;
    let (ok, out) = hayloft(
        &setup.cluster,
        &[
            "tier",
            "move",
            "--volume",
            &volume.to_string(),
            "--to",
            "cold",
            "--bucket",
            BUCKET,
        ],
    );
    assert!(!ok, "the move cannot finish past {failpoint}:\n{out}");
    let mut proc = setup.cluster.take_volume(0);
    let what = format!("the server to crash at {failpoint}");
    eventually_blocking(secs(20), &what, || proc.exited());
    // The job file is there; the volume is still local.
    let files = volume_files(&setup, volume);
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".move")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".dat")),
        "{files:?}"
    );
    setup.cluster.set_volume_env(&[]);
    setup.cluster.restart_volume(0).await;
    let base = setup.cluster.http_base(0);
    check_all(&base, &blobs).await;
    wait_tier(&client, volume, ProtoTier::Cold).await;
    check_all(&base, &blobs).await;
    let files = volume_files(&setup, volume);
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".dat")
                && !f.to_string_lossy().ends_with(".move")),
        "{files:?}"
    );
    assert_eq!(object_keys(&setup).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_after_an_uploaded_part_resumes_the_upload() {
    crash_and_resume("tier-crash-after-part").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_after_verify_before_switch_resumes_the_move() {
    crash_and_resume("tier-crash-before-switch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checksum_mismatch_after_upload_keeps_the_source() {
    let setup = setup("", &[("HAYLOFT_FAILPOINT", "tier-corrupt-upload")]).await;
    let client = setup.cluster.client().await;
    let blobs = upload(&client, 0, 5, 3000, "").await;
    let volume = volume_of(&blobs[0].id);
    let (ok, out) = hayloft(
        &setup.cluster,
        &[
            "tier",
            "move",
            "--volume",
            &volume.to_string(),
            "--to",
            "cold",
            "--bucket",
            BUCKET,
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("checksum mismatch"), "{out}");
    assert_eq!(tier_of(&client, volume).await.0, ProtoTier::Hot as i32);
    assert!(
        object_keys(&setup).await.is_empty(),
        "the bad object is deleted"
    );
    let files = volume_files(&setup, volume);
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".dat")),
        "{files:?}"
    );
    assert!(
        !files.iter().any(|f| f.to_string_lossy().ends_with(".move")),
        "{files:?}"
    );
    check_all(&setup.cluster.http_base(0), &blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starting_with_s3_down_serves_local_volumes_and_fails_cold_reads_with_503() {
    let mut setup = setup("", &[]).await;
    let client = setup.cluster.client().await;
    let blobs = upload(&client, 0, 30, 2000, "").await;
    let cold_volume = volume_of(&blobs[0].id);
    tier_cmd(
        &setup,
        &[
            "move",
            "--volume",
            &cold_volume.to_string(),
            "--to",
            "cold",
            "--bucket",
            BUCKET,
        ],
    );
    setup.cluster.stop_volume(0);
    setup.s3.stop();
    setup.cluster.restart_volume(0).await;
    let base = setup.cluster.http_base(0);
    for blob in &blobs {
        let (status, body) = get(&base, blob).await;
        if volume_of(&blob.id) == cold_volume {
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "cold blob {}",
                blob.id
            );
        } else {
            assert_eq!(status, StatusCode::OK, "local blob {}", blob.id);
            assert_eq!(&body[..], &content(blob.seed, blob.len)[..]);
        }
    }
    // Nothing was downloaded: the cold volume has no data file.
    let files = volume_files(&setup, cold_volume);
    assert!(
        files.iter().all(|f| !f.to_string_lossy().contains(".dat")),
        "{files:?}"
    );
    // The object store is unknown to the server until asked; it is down.
    let objects = objects(&setup).await;
    assert!(matches!(
        objects.head(BUCKET, "x").await,
        Err(ObjectError::Unreachable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_volumes_compact_on_demand_download_compact_reupload() {
    let setup = setup("", &[]).await;
    let client = setup.cluster.client().await;
    let blobs = upload(&client, 0, 40, 8000, "").await;
    let volume = volume_of(&blobs[0].id);
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    for (i, blob) in blobs
        .into_iter()
        .filter(|b| volume_of(&b.id) == volume)
        .enumerate()
    {
        if i % 4 == 0 {
            kept.push(blob);
        } else {
            dropped.push(blob);
        }
    }
    tier_cmd(
        &setup,
        &[
            "move",
            "--volume",
            &volume.to_string(),
            "--to",
            "cold",
            "--bucket",
            BUCKET,
            "--prefix",
            "p/",
            "--storage-class",
            "STANDARD_IA",
        ],
    );
    for blob in &dropped {
        client.delete(&blob.id).await.unwrap();
    }
    let out = tier_cmd(&setup, &["compact", "--volume", &volume.to_string()]);
    assert!(out.contains("compacted"), "{out}");
    wait_tier(&client, volume, ProtoTier::Cold).await;
    assert_eq!(tier_of(&client, volume).await.1, "STANDARD_IA");
    let keys = object_keys(&setup).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("p/"), "{keys:?}");
    let base = setup.cluster.http_base(0);
    check_all(&base, &kept).await;
    for blob in &dropped {
        assert_eq!(get(&base, blob).await.0, StatusCode::NOT_FOUND);
    }
    let status = client.status().await.unwrap();
    let stats = status
        .volumes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .find(|s| s.volume_id == volume)
        .unwrap();
    assert_eq!(stats.garbage_bytes, 0, "{stats:?}");
}

/// Three volume servers in three zones, replication 3, one cold tier.
async fn replicated_setup() -> Setup {
    let config_dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(config_dir.path()).await;
    s3.create_bucket(BUCKET).await;
    let config = config_dir.path().join("volume.toml");
    std::fs::write(&config, s3.volume_config("")).unwrap();
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .volume_args(["--config", config.to_str().unwrap()])
        .start()
        .await;
    Setup {
        cluster,
        s3,
        _config_dir: config_dir,
    }
}

/// Each copy of `volume`: (server id, tier), in replica-set order, with the
/// volume's health.
async fn copies(client: &Client, volume: u32) -> (Vec<(String, i32)>, i32) {
    let status = client.status().await.unwrap();
    let record = status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))
        .unwrap();
    let copies = record
        .replicas
        .iter()
        .map(|r| {
            (
                r.location.clone().unwrap().server_id,
                r.status.as_ref().map_or(0, |s| s.tier),
            )
        })
        .collect();
    (copies, record.health)
}

/// Waits until `volume` is healthy (every copy ok); `what` names the wait.
async fn wait_healthy(client: &Client, volume: u32, what: &str) {
    eventually(secs(30), what, async || {
        let (copies, health) = copies(client, volume).await;
        (health == hayloft_proto::VolumeHealth::Ok as i32)
            .then_some(())
            .ok_or(copies)
    })
    .await;
}

/// Every blob reads back from every server (its own copy, or proxied), and
/// every deleted one answers 404 everywhere.
async fn check_everywhere(setup: &Setup, servers: &[usize], blobs: &[Blob], deleted: &[Blob]) {
    for &i in servers {
        let base = setup.cluster.http_base(i);
        check_all(&base, blobs).await;
        for blob in deleted {
            assert_eq!(
                get(&base, blob).await.0,
                StatusCode::NOT_FOUND,
                "deleted blob {} came back on vs{i}",
                blob.id
            );
        }
    }
}

/// The files of `volume` on server `i`, on any of its disks.
fn files_on(setup: &Setup, i: usize, volume: u32) -> Vec<String> {
    let mut files = Vec::new();
    for tier in ["hot", "warm"] {
        let dir = setup.cluster.volume_dir(i).join(tier);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.split('.').next() == Some(&volume.to_string()) {
                files.push(format!("{tier}/{name}"));
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_volumes_move_every_copy_share_one_cold_object_and_come_back() {
    let mut setup = replicated_setup().await;
    let client = setup.cluster.client().await;
    let uploaded = upload(&client, 0, 40, 3000, "").await;
    let volume = volume_of(&uploaded[0].id);
    let mut blobs: Vec<Blob> = uploaded
        .into_iter()
        .filter(|b| volume_of(&b.id) == volume)
        .collect();
    // Deleted before any move: they stay deleted through every step.
    let deleted: Vec<Blob> = blobs.drain(..2).collect();
    for blob in &deleted {
        client.delete(&blob.id).await.unwrap();
    }
    let v = volume.to_string();
    let all = [0, 1, 2];

    // hot -> warm: every copy moves.
    tier_cmd(&setup, &["move", "--volume", &v, "--to", "warm"]);
    let (warm, _) = copies(&client, volume).await;
    assert_eq!(warm.len(), 3, "{warm:?}");
    assert!(
        warm.iter().all(|(_, t)| *t == ProtoTier::Warm as i32),
        "{warm:?}"
    );
    check_everywhere(&setup, &all, &blobs, &deleted).await;

    // warm -> cold: one upload; the other copies share the object.
    tier_cmd(
        &setup,
        &["move", "--volume", &v, "--to", "cold", "--bucket", BUCKET],
    );
    let (cold, health) = copies(&client, volume).await;
    assert_eq!(cold.len(), 3, "every copy keeps the index: {cold:?}");
    assert!(
        cold.iter().all(|(_, t)| *t == ProtoTier::Cold as i32),
        "{cold:?}"
    );
    assert_eq!(health, hayloft_proto::VolumeHealth::Ok as i32);
    assert_eq!(
        object_keys(&setup).await.len(),
        1,
        "one object for every copy"
    );
    for i in all {
        let files = files_on(&setup, i, volume);
        assert!(
            files.iter().any(|f| f.ends_with(".cold"))
                && !files.iter().any(|f| f.ends_with(".dat")),
            "vs{i} keeps the index, not the data: {files:?}"
        );
    }
    check_everywhere(&setup, &all, &blobs, &deleted).await;

    // A server holding a cold copy stops: reads go on from the others,
    // through every live server, and a delete made meanwhile misses it.
    let lead = support::server_index(&cold[0].0);
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != lead).collect();
    setup.cluster.kill_volume(lead);
    check_everywhere(&setup, &others, &blobs, &deleted).await;
    let mut deleted = deleted;
    let gone = blobs.pop().unwrap();
    client.delete(&gone.id).await.unwrap();
    deleted.push(gone);
    check_everywhere(&setup, &others, &blobs, &deleted).await;
    // It comes back stale and catches up from the other cold copies.
    setup.cluster.start_volume(lead);
    wait_healthy(&client, volume, "the cold copy to catch up").await;
    // With the other copies down, the one that missed the delete serves
    // alone: the deleted blob stays deleted.
    for &i in &others {
        setup.cluster.kill_volume(i);
    }
    check_everywhere(&setup, &[lead], &blobs, &deleted).await;
    for &i in &others {
        setup.cluster.start_volume(i);
    }
    wait_healthy(&client, volume, "the cold copies to come back").await;

    // cold -> hot: the first copy downloads, the other cold copies are
    // dropped (the last with the object), and repair brings the volume back
    // to three copies.
    tier_cmd(&setup, &["restore", "--volume", &v, "--to", "hot"]);
    let (hot, health) = copies(&client, volume).await;
    assert_eq!(hot.len(), 3, "{hot:?}");
    assert!(
        hot.iter().all(|(_, t)| *t == ProtoTier::Hot as i32),
        "{hot:?}"
    );
    assert_eq!(health, hayloft_proto::VolumeHealth::Ok as i32);
    assert!(
        object_keys(&setup).await.is_empty(),
        "the object is deleted"
    );
    check_everywhere(&setup, &all, &blobs, &deleted).await;
    // Every server holds a local copy again, with every blob.
    for i in all {
        assert!(
            files_on(&setup, i, volume)
                .iter()
                .any(|f| f.ends_with(".dat")),
            "vs{i}: {:?}",
            files_on(&setup, i, volume)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_copy_lost_for_good_is_made_again_on_another_server() {
    let config_dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(config_dir.path()).await;
    s3.create_bucket(BUCKET).await;
    let config = config_dir.path().join("volume.toml");
    std::fs::write(&config, s3.volume_config("")).unwrap();
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c", "a"])
        .replication(3)
        .directory_args(["--repair-after", "2s"])
        .volume_args(["--config", config.to_str().unwrap()])
        .start()
        .await;
    let mut setup = Setup {
        cluster,
        s3,
        _config_dir: config_dir,
    };
    let client = setup.cluster.client().await;
    let uploaded = upload(&client, 0, 30, 2000, "").await;
    let volume = volume_of(&uploaded[0].id);
    let blobs: Vec<Blob> = uploaded
        .into_iter()
        .filter(|b| volume_of(&b.id) == volume)
        .collect();
    let v = volume.to_string();
    tier_cmd(
        &setup,
        &["move", "--volume", &v, "--to", "cold", "--bucket", BUCKET],
    );
    let (cold, _) = copies(&client, volume).await;
    assert_eq!(cold.len(), 3, "{cold:?}");
    let holders: Vec<String> = cold.iter().map(|(s, _)| s.clone()).collect();
    let lost = holders[1].clone();
    setup.cluster.kill_volume(support::server_index(&lost));
    // After repair_after, the fourth server gets a cold copy (the index of
    // the same object), verified against the object, in the lost one's place.
    let fresh = eventually(secs(60), "the lost cold copy replaced", async || {
        let (now, health) = copies(&client, volume).await;
        let whole = health == hayloft_proto::VolumeHealth::Ok as i32
            && now.len() == 3
            && now
                .iter()
                .all(|(s, t)| *s != lost && *t == ProtoTier::Cold as i32);
        if !whole {
            return Err(now);
        }
        Ok(now
            .into_iter()
            .map(|(s, _)| s)
            .find(|s| !holders.contains(s))
            .unwrap())
    })
    .await;
    let fresh = support::server_index(&fresh);
    let files = files_on(&setup, fresh, volume);
    assert!(
        files.iter().any(|f| f.ends_with(".cold")) && !files.iter().any(|f| f.ends_with(".dat")),
        "{files:?}"
    );
    // It serves every blob itself, from the one object.
    check_all(&setup.cluster.http_base(fresh), &blobs).await;
    assert_eq!(object_keys(&setup).await.len(), 1);
}
