//! Tier-move throughput and cold read latency, each against its baseline
//! on the same machine and the same S3 server in one run:
//!
//! - a move to cold (read, MD5, multipart upload, verify, switch) vs a
//!   plain multipart upload of the same bytes with the same part size;
//! - a cold read (one ranged GET + checksum) vs a warm read (map slice).
//!
//! `cargo run --release -p hayloft-benches --bin tier -- [MiB] [ENDPOINT]`
//! starts moto from `.ci/venv` (installed by `scripts/setup.sh`) unless an
//! endpoint of a running S3-compatible server is given (bucket `bench`,
//! credentials `test`/`test`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft_proto::{MoveVolumeRequest, Tier as ProtoTier};
use hayloft_storage::volume::volume_paths;
use hayloft_storage::{
    Cookie, Location, NeedleId, NeedleMeta, Store, StoreConfig, Tier, VolumeConfig, VolumeId,
};
use hayloft_tiering::object::{ObjectStore, ObjectStoreConfig, md5_of};
use hayloft_volume::reads::ReadStats;
use hayloft_volume::tier::{TierSettings, Tiering};
use rand::Rng;

const PART: u64 = 16 << 20;
const BLOB: usize = 4096;
const V: VolumeId = VolumeId(1);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(256, |a| a.parse().unwrap());
    let endpoint = args.next();
    let _moto = match &endpoint {
        Some(_) => None,
        None => Some(start_moto().await),
    };
    let endpoint = endpoint.unwrap_or_else(|| "http://127.0.0.1:29999".into());
    reqwest::Client::new()
        .put(format!("{endpoint}/bench"))
        .send()
        .await
        .unwrap();
    let objects = ObjectStore::connect(&ObjectStoreConfig::S3 {
        endpoint: Some(endpoint.clone()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        force_path_style: true,
        timeout: Duration::from_secs(60),
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(StoreConfig {
            locations: vec![Location {
                path: dir.path().join("warm"),
                tier: Tier::Warm,
            }],
            volume: VolumeConfig::default(),
            reserve: hayloft_storage::Reserve::NONE,
        })
        .unwrap(),
    );
    let volume = store.create_volume(V, Tier::Warm, "").unwrap();
    let count = (mib << 20) / (BLOB as u64 + 64);
    let blob = vec![7u8; BLOB];
    for i in 0..count {
        volume
            .write(&hayloft_storage::NeedleWrite {
                id: NeedleId(i),
                cookie: Cookie(1),
                data: &blob,
                meta: NeedleMeta::default(),
            })
            .unwrap();
    }
    volume.seal().unwrap();
    let len = volume.data_len();
    println!(
        "volume: {count} needles of {BLOB} bytes, {:.0} MiB",
        len as f64 / 1048576.0
    );

    // Warm reads.
    let mut rng = rand::rng();
    let mut warm = Vec::new();
    for _ in 0..2000 {
        let id = NeedleId(rng.random_range(0..count));
        let started = Instant::now();
        let needle = volume.read_verified(id, Cookie(1)).unwrap();
        std::hint::black_box(needle);
        warm.push(started.elapsed());
    }
    warm.sort();
    drop(volume);

    // Baseline: a plain multipart upload of the same bytes.
    let (dat, _, _) = volume_paths(&dir.path().join("warm"), V);
    let started = Instant::now();
    let upload = objects
        .create_upload("bench", "plain", "STANDARD")
        .await
        .unwrap();
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut n = 1;
    while offset < len {
        let part_len = PART.min(len - offset);
        let body = read_range(&dat, offset, part_len);
        std::hint::black_box(md5_of(&body));
        let etag = objects
            .upload_part("bench", "plain", &upload, n, body)
            .await
            .unwrap();
        parts.push((n, etag));
        offset += part_len;
        n += 1;
    }
    objects
        .complete_upload("bench", "plain", &upload, &parts)
        .await
        .unwrap();
    let plain = started.elapsed();

    // The move.
    let tiering = Tiering::new(
        Arc::clone(&store),
        Some(objects.clone()),
        TierSettings {
            part_size: PART,
            bytes_per_sec: 0,
            restore_retry_after: Duration::from_secs(1),
            restore_days: 1,
            restore_poll: Duration::from_secs(1),
            credential: hayloft_proto::Credential::none(),
        },
        Arc::new(ReadStats::new(Duration::from_secs(60))),
        Arc::new(tokio::sync::Notify::new()),
    );
    let started = Instant::now();
    tiering
        .start(MoveVolumeRequest {
            volume_id: V.0,
            target: ProtoTier::Cold as i32,
            bucket: "bench".into(),
            storage_class: "STANDARD".into(),
            ..MoveVolumeRequest::default()
        })
        .unwrap();
    loop {
        let jobs = tiering.list();
        if jobs.iter().all(|j| j.finished) {
            assert!(jobs[0].error.is_empty(), "{:?}", jobs[0]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let moved = started.elapsed();
    let mbps = |d: Duration| len as f64 / 1048576.0 / d.as_secs_f64();
    println!(
        "plain multipart upload: {:.2} s ({:.0} MiB/s)",
        plain.as_secs_f64(),
        mbps(plain)
    );
    println!(
        "move to cold:           {:.2} s ({:.0} MiB/s) = {:.2}x the plain upload",
        moved.as_secs_f64(),
        mbps(moved),
        plain.as_secs_f64() / moved.as_secs_f64()
    );

    // Cold reads.
    let cold_volume = store.cold_volume(V).unwrap();
    let mut cold = Vec::new();
    for _ in 0..500 {
        let id = NeedleId(rng.random_range(0..count));
        let started = Instant::now();
        let needle = tiering
            .read_cold(&cold_volume, id, Cookie(1))
            .await
            .ok()
            .unwrap();
        std::hint::black_box(needle);
        cold.push(started.elapsed());
    }
    cold.sort();
    // The same ranged GETs with the SDK alone: what the object store costs.
    let key = cold_volume.manifest().key.clone();
    let mut raw = Vec::new();
    for _ in 0..500 {
        let id = NeedleId(rng.random_range(0..count));
        let range = cold_volume.locate(id).unwrap();
        let started = Instant::now();
        let bytes = objects.get_range("bench", &key, range).await.unwrap();
        std::hint::black_box(bytes);
        raw.push(started.elapsed());
    }
    raw.sort();
    for (name, samples) in [
        ("warm read (map slice + CRC)", &warm),
        ("bare ranged GET (SDK only)", &raw),
        ("cold read (ranged GET + CRC)", &cold),
    ] {
        println!(
            "{name}: p50 {:?} p99 {:?}",
            percentile(samples, 0.5),
            percentile(samples, 0.99)
        );
    }
    println!(
        "cold / bare GET p50: {:.2}x",
        percentile(&cold, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64()
    );
    println!(
        "cold / warm p50: {:.0}x",
        percentile(&cold, 0.5).as_secs_f64() / percentile(&warm, 0.5).as_secs_f64()
    );
}

fn read_range(path: &std::path::Path, offset: u64, len: u64) -> Bytes {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).unwrap();
    Bytes::from(buf)
}

struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_moto() -> Moto {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/venv/bin/moto_server");
    let child = std::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", "29999"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", bin.display()));
    let moto = Moto(child);
    for _ in 0..300 {
        if reqwest::get("http://127.0.0.1:29999/moto-api/")
            .await
            .is_ok()
        {
            return moto;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto did not start");
}
