//! Uploads next to their ceilings, in one run on one machine:
//!
//! - 4 KiB uploads/s through the client library (`Client::upload`: ids
//!   reserved ahead, one `Write` call per blob, durable when answered) and raw
//!   `Volume.Write` calls with ids assigned in bulk beforehand, vs the same
//!   `Write` messages to a bare tonic server that accepts them and does
//!   nothing, in a process of its own as hayloft's server is (the gRPC
//!   ceiling here; the same server inside this process is printed too);
//! - 64 MiB uploads (through the client: assign + streamed write, fsynced) vs
//!   `dd if=/dev/zero bs=1M count=64 conv=fdatasync` on the same disk.
//!
//! `upload-ceiling --directory ADDR --data-dir DIR [--seconds 5] [--concurrency 32]
//! [--large-rounds 3]` (`--seconds 0`: the 64 MiB comparison only)
//! against a running `hayloft server` whose data is in DIR (`benches/compare.sh`
//! runs it).

#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::volume_server::{Volume, VolumeServer};
use hayloft_proto::write_request::Part;
use hayloft_proto::*;
use tonic::{Request, Response, Status, Streaming};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Accepts writes and does nothing else.
struct Null;

#[tonic::async_trait]
impl Volume for Null {
    type ReadStream = Stream<ReadResponse>;
    type CompactStream = Stream<CompactProgress>;
    type FetchNeedleStream = Stream<ReadResponse>;
    type FetchNeedlesStream = Stream<hayloft_proto::FetchNeedlesResponse>;
    type SyncVolumeStream = Stream<SyncProgress>;
    type EcEncodeStream = Stream<hayloft_proto::EcEncodeProgress>;
    type EcRebuildStream = Stream<hayloft_proto::EcRebuildProgress>;
    type EcDecodeStream = Stream<hayloft_proto::EcDecodeProgress>;

    async fn ec_decode(
        &self,
        _: Request<hayloft_proto::EcDecodeRequest>,
    ) -> Result<Response<Self::EcDecodeStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_fence(
        &self,
        _: Request<hayloft_proto::EcFenceRequest>,
    ) -> Result<Response<hayloft_proto::EcFenceResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_swap(
        &self,
        _: Request<hayloft_proto::EcSwapRequest>,
    ) -> Result<Response<hayloft_proto::EcSwapResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn read_log(
        &self,
        _: Request<hayloft_proto::ReadLogRequest>,
    ) -> Result<Response<hayloft_proto::ReadLogResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn fetch_needles(
        &self,
        _: Request<hayloft_proto::FetchNeedlesRequest>,
    ) -> Result<Response<Self::FetchNeedlesStream>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn ec_files(
        &self,
        _: Request<hayloft_proto::EcFilesRequest>,
    ) -> Result<Response<hayloft_proto::EcInstallRequest>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_journal(
        &self,
        _: Request<hayloft_proto::EcJournalRequest>,
    ) -> Result<Response<hayloft_proto::EcJournalResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_rebuild(
        &self,
        _: Request<hayloft_proto::EcRebuildRequest>,
    ) -> Result<Response<Self::EcRebuildStream>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn ec_encode(
        &self,
        _: Request<hayloft_proto::EcEncodeRequest>,
    ) -> Result<Response<Self::EcEncodeStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_install(
        &self,
        _: Request<hayloft_proto::EcInstallRequest>,
    ) -> Result<Response<hayloft_proto::EcInstallResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_write_shard(
        &self,
        _: Request<Streaming<hayloft_proto::EcWriteShardRequest>>,
    ) -> Result<Response<hayloft_proto::EcWriteShardResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_read_shard(
        &self,
        _: Request<hayloft_proto::EcReadShardRequest>,
    ) -> Result<Response<hayloft_proto::EcReadShardResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_delete(
        &self,
        _: Request<hayloft_proto::EcDeleteRequest>,
    ) -> Result<Response<hayloft_proto::EcDeleteResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn ec_drop(
        &self,
        _: Request<hayloft_proto::EcDropRequest>,
    ) -> Result<Response<hayloft_proto::EcDropResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn seal_copy(
        &self,
        _: Request<hayloft_proto::SealCopyRequest>,
    ) -> Result<Response<hayloft_proto::SealCopyResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let (mut blob_id, mut size) = (String::new(), 0u64);
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(Part::Header(header)) => blob_id = header.blob_id,
                Some(Part::Chunk(chunk)) => size += chunk.len() as u64,
                None => {}
            }
        }
        Ok(Response::new(WriteResponse {
            blob_id,
            size,
            etag: String::new(),
        }))
    }
    async fn read(&self, _: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn stat(&self, _: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn create_volume(
        &self,
        _: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn list_volumes(
        &self,
        _: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn compact(
        &self,
        _: Request<CompactRequest>,
    ) -> Result<Response<Self::CompactStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn move_volume(
        &self,
        _: Request<MoveVolumeRequest>,
    ) -> Result<Response<MoveVolumeResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn list_moves(
        &self,
        _: Request<ListMovesRequest>,
    ) -> Result<Response<ListMovesResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn delete_volume(
        &self,
        _: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn needle_digests(
        &self,
        _: Request<NeedleDigestsRequest>,
    ) -> Result<Response<NeedleDigestsResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn list_needles(
        &self,
        _: Request<ListNeedlesRequest>,
    ) -> Result<Response<ListNeedlesResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn fetch_needle(
        &self,
        _: Request<FetchNeedleRequest>,
    ) -> Result<Response<Self::FetchNeedleStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn sync_volume(
        &self,
        _: Request<SyncVolumeRequest>,
    ) -> Result<Response<Self::SyncVolumeStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn cold_index(
        &self,
        _: Request<ColdIndexRequest>,
    ) -> Result<Response<ColdIndexResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    type WriteBatchStream = Stream<WriteBatchResponse>;
    async fn write_batch(
        &self,
        _: Request<Streaming<WriteBatchRequest>>,
    ) -> Result<Response<Self::WriteBatchStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    type ReplicateStream = Stream<ReplicateResponse>;
    async fn replicate(
        &self,
        _: Request<Streaming<ReplicateRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
}

const USAGE: &str = "usage: upload-ceiling --directory ADDR --data-dir DIR [--seconds 5] \
[--concurrency 32] [--large-rounds 3]   (--seconds 0: the 64 MiB comparison only)";

/// Prints `message` and the usage, and exits with status 2.
fn exit_with(message: &str) -> ! {
    eprintln!("upload-ceiling: {message}\n{USAGE}");
    std::process::exit(2)
}

/// Refuses flags this program does not know (and answers `--help`).
fn check_args() {
    const TAKE_VALUE: [&str; 5] = [
        "--directory",
        "--data-dir",
        "--seconds",
        "--concurrency",
        "--large-rounds",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if !TAKE_VALUE.contains(&flag.as_str()) {
            exit_with(&format!("unknown argument {flag:?}"));
        }
        if args.next().is_none() {
            exit_with(&format!("{flag} needs a value"));
        }
    }
}

/// The whole number given with `name`, or `default`.
fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match arg(name) {
        None => default,
        Some(value) => value
            .parse()
            .unwrap_or_else(|_| exit_with(&format!("{name} takes a whole number, not {value:?}"))),
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Requests/s since `started` and the p50/p99 latency of the requests the
/// `tasks` timed.
async fn rate(
    tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
    started: Instant,
) -> (f64, Duration, Duration) {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let p = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
    (all.len() as f64 / elapsed, p(0.5), p(0.99))
}

/// Sends 4 KiB writes from `concurrency` tasks for `seconds`; returns
/// writes/s and the p50/p99 latency.
async fn drive(
    addr: String,
    ids: Arc<Vec<String>>,
    seconds: u64,
    concurrency: usize,
) -> (f64, Duration, Duration) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let body = Bytes::from(vec![42u8; 4096]);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = VolumeClient::new(channel.clone());
        let (ids, next, body) = (Arc::clone(&ids), Arc::clone(&next), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let messages = vec![
                    WriteRequest {
                        part: Some(Part::Header(WriteHeader {
                            blob_id: id.clone(),
                            size: body.len() as u64,
                            ..WriteHeader::default()
                        })),
                    },
                    WriteRequest {
                        part: Some(Part::Chunk(body.clone())),
                    },
                ];
                let sent = Instant::now();
                client.write(tokio_stream::iter(messages)).await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    rate(tasks, started).await
}

/// Uploads 4 KiB blobs through the client library from `concurrency` tasks
/// for `seconds` (what an uploader gets: reserved ids, one call per blob);
/// returns uploads/s and the p50/p99 latency.
async fn drive_client(
    client: &Arc<hayloft_client::Client>,
    seconds: u64,
    concurrency: usize,
) -> (f64, Duration, Duration) {
    let body = Bytes::from(vec![42u8; 4096]);
    let options = hayloft_client::UploadOptions::default();
    // Warm up: the first reservation, connections.
    client.upload(body.clone(), &options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, body, options) = (Arc::clone(client), body.clone(), options.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                client.upload(body.clone(), &options).await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    rate(tasks, started).await
}

/// The 4 KiB phases: the bare server, raw writes, the client library.
async fn small(
    directory: &str,
    client: &Arc<hayloft_client::Client>,
    seconds: u64,
    concurrency: usize,
) {
    // The gRPC ceiling: a bare tonic server in a process of its own, as
    // hayloft's server is (its runtime's threads are not this process's);
    // and, for reference, the same server on this process's runtime, where
    // client and server tasks share threads and wake each other for free.
    let fake_ids: Arc<Vec<String>> =
        Arc::new((0..5_000_000).map(|i| format!("{i:x}00000000")).collect());
    let (_child, own_addr) = spawn_null_server().await;
    let (null_rps, null_p50, null_p99) =
        drive(own_addr, Arc::clone(&fake_ids), seconds, concurrency).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let in_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve_null(listener));
    let (in_rps, in_p50, in_p99) = drive(in_addr, fake_ids, seconds, concurrency).await;

    // hayloft: ids assigned in bulk, then the same writes.
    let mut dir =
        hayloft_proto::directory_client::DirectoryClient::connect(format!("http://{directory}"))
            .await
            .unwrap();
    let wanted = (null_rps as usize * seconds as usize).clamp(10_000, 2_000_000);
    let mut ids = Vec::with_capacity(wanted);
    let mut volume_addr = String::new();
    while ids.len() < wanted {
        let assigned = dir
            .assign(AssignRequest {
                count: 10_000,
                ..AssignRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        volume_addr = assigned.locations[0].grpc_addr.clone();
        ids.extend(assigned.blobs.into_iter().map(|b| b.blob_id));
    }
    let (rps, p50, p99) = drive(volume_addr, Arc::new(ids), seconds, concurrency).await;
    let (lib_rps, lib_p50, lib_p99) = drive_client(client, seconds, concurrency).await;
    println!("4 KiB writes, {concurrency} concurrent, {seconds} s:");
    println!(
        "  bare tonic server (ceiling):       {null_rps:>9.0}/s  p50 {null_p50:?}  p99 {null_p99:?}"
    );
    println!(
        "  bare tonic server in this process: {in_rps:>9.0}/s  p50 {in_p50:?}  p99 {in_p99:?}"
    );
    println!("  hayloft Volume.Write, ids before:  {rps:>9.0}/s  p50 {p50:?}  p99 {p99:?}");
    println!(
        "  hayloft client library upload:    {lib_rps:>9.0}/s  p50 {lib_p50:?}  p99 {lib_p99:?}"
    );
    println!(
        "  raw write / ceiling: {:.2}x   (against the in-process server: {:.2}x)",
        rps / null_rps,
        rps / in_rps
    );
    println!(
        "  client upload / ceiling: {:.2}x   (against the in-process server: {:.2}x)",
        lib_rps / null_rps,
        lib_rps / in_rps
    );
}

/// Serves [`Null`] on `listener` until the process ends.
async fn serve_null(listener: tokio::net::TcpListener) {
    tonic::transport::Server::builder()
        .add_service(VolumeServer::new(Null))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .unwrap();
}

/// Starts this program again as a bare server (`--null-server`); returns the
/// child (killed when dropped) and its address.
async fn spawn_null_server() -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("--null-server")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap();
    (child, line.trim().to_owned())
}

/// `--null-server`: prints the address it listens on, then serves until its
/// stdin closes (the parent ended, however it ended).
async fn null_server_main() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    tokio::spawn(serve_null(listener));
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--null-server") {
        return null_server_main().await;
    }
    check_args();
    let directory = arg("--directory").unwrap_or_else(|| hayloft_proto::DEFAULT_DIRECTORY.into());
    let data_dir = std::path::PathBuf::from(arg("--data-dir").unwrap_or_else(|| "data".into()));
    let seconds: u64 = number("--seconds", 5);
    let concurrency: usize = number("--concurrency", 32);
    let large_rounds: usize = number("--large-rounds", 3);
    let client = match hayloft_client::Client::connect(&directory).await {
        Ok(client) => Arc::new(client),
        Err(e) => exit_with(&format!(
            "cannot reach the directory at {directory} (start `hayloft server` first): {e}"
        )),
    };
    if seconds > 0 {
        small(&directory, &client, seconds, concurrency).await;
    }

    // 64 MiB: hayloft (assign + streamed write, fsynced) vs dd, taken in
    // turns (this machine's disk speed drifts), best of each. hayloft
    // appends new bytes, so dd writes a new file each round too (kept until
    // the end, as the volume keeps its bytes); dd overwriting one file again
    // and again (page-cache pages reused hot) is printed for reference.
    let blob = Bytes::from(vec![7u8; 64 << 20]);
    let dd = |target: &std::path::Path| {
        let started = Instant::now();
        let status = std::process::Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", target.display()),
                "bs=1M",
                "count=64",
                "conv=fdatasync",
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "dd into {} failed", target.display());
        started.elapsed()
    };
    let hot = data_dir.join("hot");
    let overwritten = hot.join("dd-overwrite.bin");
    let (mut best, mut dd_best, mut overwrite_best) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut written = Vec::new();
    for round in 0..large_rounds {
        // The overwrite first: the pages its truncation frees are its own
        // again, not hayloft's or the new file's.
        overwrite_best = overwrite_best.min(dd(&overwritten));
        let started = Instant::now();
        client
            .upload(blob.clone(), &hayloft_client::UploadOptions::default())
            .await
            .unwrap();
        best = best.min(started.elapsed());
        let target = hot.join(format!("dd-new-{round}.bin"));
        dd_best = dd_best.min(dd(&target));
        written.push(target);
    }
    for file in written.iter().chain([&overwritten]) {
        let _ = std::fs::remove_file(file);
    }
    let mibs = |d: Duration| 64.0 / d.as_secs_f64();
    println!("64 MiB, best of {large_rounds}:");
    println!(
        "  dd bs=1M conv=fdatasync, new file:        {:>7.0} MiB/s",
        mibs(dd_best)
    );
    println!(
        "  dd bs=1M conv=fdatasync, same file again: {:>7.0} MiB/s",
        mibs(overwrite_best)
    );
    println!(
        "  hayloft upload (gRPC):                    {:>7.0} MiB/s",
        mibs(best)
    );
    // The stricter of the two baselines.
    let dd_fastest = dd_best.min(overwrite_best);
    println!(
        "  hayloft / dd: {:.2}x   (against the faster dd; new file {:.2}x, same file {:.2}x)",
        dd_fastest.as_secs_f64() / best.as_secs_f64(),
        dd_best.as_secs_f64() / best.as_secs_f64(),
        overwrite_best.as_secs_f64() / best.as_secs_f64()
    );
}
