//! `hayloft bench`: drives a running cluster and reports throughput and
//! latency: uploads over gRPC at several sizes, HTTP reads of the uploaded
//! blobs (uniform and Zipf-distributed), and a mixed read/write load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytesize::ByteSize;
use clap::Args;
use hayloft_client::UploadOptions;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;
use serde::Serialize;

use crate::commands::Connection;

/// `hayloft bench`'s arguments.
#[derive(Args)]
pub struct BenchArgs {
    /// How long each phase runs, e.g. "10s".
    #[arg(long, default_value = "10s")]
    duration: humantime_serde::re::humantime::Duration,
    /// Concurrent requests.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Upload sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4KiB,64KiB,1MiB,64MiB")]
    sizes: Vec<ByteSize>,
    /// Also upload the sizes up to 64 KiB in batches of this many blobs
    /// (`Client::upload_batch`, a `WriteBatch` stream per server), with one
    /// batch in flight per 8 of `--concurrency`. 0: no batched phase.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Skip the read and mixed phases.
    #[arg(long)]
    uploads_only: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

/// One phase's figures.
#[derive(Debug, Serialize)]
pub struct PhaseResult {
    phase: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    requests_per_sec: f64,
    mib_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

/// Latencies and counts gathered by the workers of a phase.
#[derive(Default)]
struct Recorder {
    latencies: parking_lot_free::Latencies,
    errors: AtomicU64,
    bytes: AtomicU64,
}

mod parking_lot_free {
    /// Latencies in microseconds, appended by many tasks.
    pub type Latencies = std::sync::Mutex<Vec<u32>>;
}

impl Recorder {
    fn ok(&self, started: Instant, bytes: u64) {
        let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if let Ok(mut latencies) = self.latencies.lock() {
            latencies.push(micros);
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn result(&self, phase: String, elapsed: Duration) -> PhaseResult {
        let mut latencies = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        latencies.sort_unstable();
        let at = |p: f64| {
            latencies
                .get(((latencies.len().saturating_sub(1)) as f64 * p) as usize)
                .map_or(0.0, |micros| *micros as f64 / 1000.0)
        };
        let seconds = elapsed.as_secs_f64().max(1e-9);
        PhaseResult {
            phase,
            requests: latencies.len() as u64,
            errors: self.errors.load(Ordering::Relaxed),
            seconds,
            requests_per_sec: latencies.len() as f64 / seconds,
            mib_per_sec: self.bytes.load(Ordering::Relaxed) as f64 / seconds / (1 << 20) as f64,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
        }
    }
}

/// One timed HTTP GET of a whole blob.
async fn http_get(http: &reqwest::Client, url: &str, recorder: &Recorder) {
    let started = Instant::now();
    match http.get(url).send().await {
        Ok(response) if response.status().is_success() => match response.bytes().await {
            Ok(body) => recorder.ok(started, body.len() as u64),
            Err(_) => recorder.error(),
        },
        _ => recorder.error(),
    }
}

/// Runs `work` on `concurrency` tasks until `duration` passes.
async fn run_phase<F, Fut>(concurrency: usize, duration: Duration, work: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (work, stop, counter) =
                (Arc::clone(&work), Arc::clone(&stop), Arc::clone(&counter));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    work(counter.fetch_add(1, Ordering::Relaxed)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    started.elapsed()
}

/// `hayloft bench`: loads a running cluster and reports what it measured.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let client = Arc::new(args.connection.client().await?);
    let duration: Duration = args.duration.into();
    let mut results = Vec::new();
    // Blobs of the smallest size, for the read phases: (url, size).
    let readable: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();

    for (i, size) in args.sizes.iter().enumerate() {
        let size = size.as_u64() as usize;
        // Big blobs: fewer at a time, so memory stays sane.
        let concurrency = if size >= 16 << 20 {
            args.concurrency.min(4)
        } else {
            args.concurrency
        };
        let recorder = Arc::new(Recorder::default());
        let data = Bytes::from(vec![0x5Au8; size]);
        let (client2, recorder2, readable2) = (
            Arc::clone(&client),
            Arc::clone(&recorder),
            Arc::clone(&readable),
        );
        let keep = i == 0;
        let elapsed = run_phase(concurrency, duration, move |_| {
            let (client, recorder, readable, data) = (
                Arc::clone(&client2),
                Arc::clone(&recorder2),
                Arc::clone(&readable2),
                data.clone(),
            );
            async move {
                let started = Instant::now();
                match client.upload(data, &UploadOptions::default()).await {
                    Ok(uploaded) => {
                        recorder.ok(started, uploaded.size);
                        if keep && let Ok(mut readable) = readable.lock() {
                            readable.push(uploaded.url);
                        }
                    }
                    Err(_) => recorder.error(),
                }
            }
        })
        .await;
        results.push(recorder.result(format!("upload {}", ByteSize(size as u64)), elapsed));
    }

    let batched_sizes = args
        .sizes
        .iter()
        .map(|s| s.as_u64())
        .filter(|&s| args.batch > 0 && s <= hayloft_client::BATCH_BLOB_MAX);
    for size in batched_sizes {
        let recorder = Arc::new(Recorder::default());
        let data = Bytes::from(vec![0x5Au8; size as usize]);
        let (client2, recorder2, batch) = (Arc::clone(&client), Arc::clone(&recorder), args.batch);
        let elapsed = run_phase(args.concurrency.div_ceil(8), duration, move |_| {
            let (client, recorder) = (Arc::clone(&client2), Arc::clone(&recorder2));
            let blobs = vec![(data.clone(), UploadOptions::default()); batch];
            async move {
                let started = Instant::now();
                for result in client.upload_batch(blobs).await {
                    match result {
                        Ok(uploaded) => recorder.ok(started, uploaded.size),
                        Err(_) => recorder.error(),
                    }
                }
            }
        })
        .await;
        results.push(recorder.result(
            format!("upload {} in batches of {batch}", ByteSize(size)),
            elapsed,
        ));
    }

    let urls: Arc<Vec<String>> = Arc::new(readable.lock().map(|r| r.clone()).unwrap_or_default());
    if !args.uploads_only && !urls.is_empty() {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .build()?;
        for distribution in ["uniform", "zipf"] {
            let recorder = Arc::new(Recorder::default());
            let zipf = rand_distr::Zipf::new(urls.len() as f64, 1.0)?;
            let (http2, urls2, recorder2) =
                (http.clone(), Arc::clone(&urls), Arc::clone(&recorder));
            let elapsed = run_phase(args.concurrency, duration, move |n| {
                let (http, urls, recorder) =
                    (http2.clone(), Arc::clone(&urls2), Arc::clone(&recorder2));
                let mut rng = rand::rngs::SmallRng::seed_from_u64(n);
                let index = if distribution == "zipf" {
                    (zipf.sample(&mut rng) as usize)
                        .saturating_sub(1)
                        .min(urls.len() - 1)
                } else {
                    rng.random_range(0..urls.len())
                };
                async move { http_get(&http, &urls[index], &recorder).await }
            })
            .await;
            results.push(recorder.result(format!("http read ({distribution})"), elapsed));
        }

        // Mixed: nine reads to one upload of the smallest size.
        let recorder = Arc::new(Recorder::default());
        let small = Bytes::from(vec![0xA5u8; args.sizes[0].as_u64() as usize]);
        let (http2, urls2, recorder2, client2) = (
            http.clone(),
            Arc::clone(&urls),
            Arc::clone(&recorder),
            Arc::clone(&client),
        );
        let elapsed = run_phase(args.concurrency, duration, move |n| {
            let (http, urls, recorder, client, small) = (
                http2.clone(),
                Arc::clone(&urls2),
                Arc::clone(&recorder2),
                Arc::clone(&client2),
                small.clone(),
            );
            let index = rand::rngs::SmallRng::seed_from_u64(n).random_range(0..urls.len());
            async move {
                let started = Instant::now();
                if n % 10 == 0 {
                    match client.upload(small, &UploadOptions::default()).await {
                        Ok(uploaded) => recorder.ok(started, uploaded.size),
                        Err(_) => recorder.error(),
                    }
                } else {
                    http_get(&http, &urls[index], &recorder).await;
                }
            }
        })
        .await;
        results.push(recorder.result("mixed 90% read / 10% upload".into(), elapsed));
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "{:<30} {:>9} {:>7} {:>11} {:>10} {:>9} {:>9} {:>9}",
            "PHASE", "REQUESTS", "ERRORS", "REQ/S", "MIB/S", "P50 MS", "P99 MS", "P99.9 MS"
        );
        for r in &results {
            println!(
                "{:<30} {:>9} {:>7} {:>11.0} {:>10.1} {:>9.3} {:>9.3} {:>9.3}",
                r.phase,
                r.requests,
                r.errors,
                r.requests_per_sec,
                r.mib_per_sec,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms
            );
        }
    }
    Ok(())
}
