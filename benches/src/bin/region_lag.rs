//! Sustained uploads into one region and, per blob, how long until another
//! region's copy holds it durably: the replication lag as a distribution,
//! not a gauge.
//!
//! ```text
//! region-lag --directory A_DIR --seconds S --concurrency C --size BYTES
//!            [--rate PER_SECOND] [--watch B_GRPC] [--drain SECONDS]
//! ```
//!
//! `C` tasks upload `BYTES`-byte blobs through the client into the region
//! at `A_DIR` for `S` seconds (at most `PER_SECOND` uploads a second all
//! together, if given), noting when each upload was acknowledged. With
//! `--watch`, the copy at `B_GRPC` (a volume server of the target region) is
//! asked for its log (`ReadLog`, the entries it made durable, in order)
//! every 20 ms, from where it was last time, and each needle's lag is the
//! time from its acknowledgement in A to the poll that first saw it in B
//! (so at most 20 ms late). After the uploads, it waits up to `--drain`
//! seconds (default 120) for the rest.
//!
//! Prints a human summary, then one line of `key=value` pairs for scripts:
//! `uploads`, `uploads_per_s`, `mib_per_s`, `failed`, and with `--watch`
//! `seen`, `lag_p50_ms`, `lag_p99_ms`, `lag_p9999_ms`, `lag_max_ms`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft_client::{Client, UploadOptions};
use hayloft_proto::ReadLogRequest;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_storage::BlobId;
use parking_lot::Mutex;
use rand::RngCore;

struct Args {
    directory: String,
    seconds: u64,
    concurrency: usize,
    size: usize,
    rate: Option<f64>,
    watch: Option<String>,
    drain: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: region-lag --directory ADDR --seconds S --concurrency C --size BYTES \
         [--rate PER_S] [--watch GRPC_ADDR] [--drain S]"
    );
    std::process::exit(2);
}

fn parse() -> Args {
    let mut args = Args {
        directory: String::new(),
        seconds: 30,
        concurrency: 16,
        size: 4096,
        rate: None,
        watch: None,
        drain: 120,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--directory" => args.directory = value.clone(),
            "--seconds" => args.seconds = number(),
            "--concurrency" => args.concurrency = number() as usize,
            "--size" => args.size = number() as usize,
            "--rate" => args.rate = Some(number() as f64),
            "--watch" => args.watch = Some(value.clone()),
            "--drain" => args.drain = number(),
            _ => usage(),
        }
    }
    if args.directory.is_empty() {
        usage();
    }
    args
}

/// Acknowledged uploads: needle id -> when.
type Acked = Arc<Mutex<HashMap<u64, Instant>>>;

async fn upload(client: Arc<Client>, args: Arc<Args>, acked: Acked, failed: Arc<Mutex<u64>>) {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let per_task = args
        .rate
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let mut next = Instant::now();
    let mut data = vec![0u8; args.size];
    while Instant::now() < deadline {
        if let Some(every) = per_task {
            tokio::time::sleep_until(next.into()).await;
            next += every;
        }
        rand::rng().fill_bytes(&mut data);
        match client
            .upload(Bytes::copy_from_slice(&data), &UploadOptions::default())
            .await
        {
            Ok(uploaded) => {
                let now = Instant::now();
                if let Ok(blob) = uploaded.blob_id.parse::<BlobId>() {
                    acked.lock().insert(blob.needle.0, now);
                }
            }
            Err(e) => {
                *failed.lock() += 1;
                eprintln!("upload failed: {e}");
            }
        }
    }
}

/// Polls the copy at `addr` for the volumes of `acked` until `stop`,
/// noting in `seen` when each needle was first seen there.
async fn watch(addr: String, acked: Acked, seen: Acked, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut positions: HashMap<u32, (String, u64)> = HashMap::new();
    let mut client = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if client.is_none() {
            client = VolumeClient::connect(format!("http://{addr}")).await.ok();
        }
        let Some(copy) = client.as_mut() else {
            continue;
        };
        let volumes: std::collections::BTreeSet<u32> = acked
            .lock()
            .keys()
            .map(|n| hayloft_storage::types::volume_of(hayloft_storage::NeedleId(*n)).0)
            .collect();
        for volume in volumes {
            loop {
                let (log, from) = positions.get(&volume).cloned().unwrap_or_default();
                let answer = match copy
                    .read_log(ReadLogRequest {
                        volume_id: volume,
                        from,
                        max: 4096,
                    })
                    .await
                {
                    Ok(answer) => answer.into_inner(),
                    Err(_) => break,
                };
                let now = Instant::now();
                if answer.log_id != log && !log.is_empty() {
                    positions.insert(volume, (answer.log_id, 0));
                    continue;
                }
                let count = answer.entries.len() as u64;
                {
                    let mut seen = seen.lock();
                    for entry in answer.entries.iter().filter(|e| !e.deleted) {
                        seen.entry(entry.needle_id).or_insert(now);
                    }
                }
                positions.insert(volume, (answer.log_id, from + count));
                if count == 0 || from + count >= answer.total {
                    break;
                }
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse());
    let client = Arc::new(
        Client::connect(&args.directory)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", args.directory)),
    );
    let acked: Acked = Arc::default();
    let failed = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Acked = Arc::default();
    let watcher = args.watch.clone().map(|addr| {
        tokio::spawn(watch(
            addr,
            Arc::clone(&acked),
            Arc::clone(&seen),
            Arc::clone(&stop),
        ))
    });
    let started = Instant::now();
    let uploaders: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(upload(
                Arc::clone(&client),
                Arc::clone(&args),
                Arc::clone(&acked),
                Arc::clone(&failed),
            ))
        })
        .collect();
    for task in uploaders {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let uploads = acked.lock().len();
    let failed = *failed.lock();
    let per_s = uploads as f64 / elapsed;
    let mib_per_s = per_s * args.size as f64 / (1024.0 * 1024.0);
    println!(
        "{uploads} uploads of {} bytes in {elapsed:.1} s: {per_s:.0}/s, {mib_per_s:.1} MiB/s, {failed} failed",
        args.size
    );
    let mut summary = format!(
        "uploads={uploads} uploads_per_s={per_s:.1} mib_per_s={mib_per_s:.2} failed={failed}"
    );
    if let Some(watcher) = watcher {
        // The rest ships meanwhile: wait for it (or the drain to pass).
        let drain_until = Instant::now() + Duration::from_secs(args.drain);
        while Instant::now() < drain_until {
            let all_seen = {
                let seen = seen.lock();
                acked.lock().keys().all(|n| seen.contains_key(n))
            };
            if all_seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = watcher.await;
        let seen = seen.lock();
        let acked = acked.lock();
        let mut lags: Vec<f64> = acked
            .iter()
            .filter_map(|(needle, at)| {
                let seen = seen.get(needle)?;
                Some(seen.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        let (p50, p99, p9999, max) = (
            percentile(&lags, 50.0),
            percentile(&lags, 99.0),
            percentile(&lags, 99.99),
            lags.last().copied().unwrap_or(f64::NAN),
        );
        println!(
            "{} of {} seen in the target; lag p50 {p50:.0} ms, p99 {p99:.0} ms, p99.99 {p9999:.0} ms, max {max:.0} ms",
            lags.len(),
            acked.len()
        );
        summary.push_str(&format!(
            " seen={} lag_p50_ms={p50:.0} lag_p99_ms={p99:.0} lag_p9999_ms={p9999:.0} lag_max_ms={max:.0}",
            lags.len()
        ));
    }
    println!("{summary}");
}
