//! The client commands: `put`, `get`, `rm`, `status`.
//!
//! Why one file of ~720 lines: `put`, `get`, `rm` and `status` share the
//! connection arguments and the status printer; most of the length is
//! `--help` text and the human/JSON status output.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;
use hayloft_client::{Client, UploadOptions};
use hayloft_proto::{ReplicaHealth, Tier, VolumeHealth, VolumeState};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;

/// Where the client commands find the cluster.
#[derive(Args)]
pub struct Connection {
    /// The directory's gRPC address.
    #[arg(long, env = "HAYLOFT_DIRECTORY", default_value = hayloft_proto::DEFAULT_DIRECTORY)]
    pub directory: String,
}

impl Connection {
    /// A client of the directory, with the credential of the environment.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect_with(&self.directory, credential()?)
            .await
            .with_context(|| format!("connecting to the directory at {}", self.directory))
    }

    /// The directory group, with the credential of the environment.
    pub fn directories(&self) -> anyhow::Result<hayloft_proto::Directories> {
        Ok(hayloft_proto::Directories::new(&self.directory)?.with_credential(credential()?)?)
    }
}

/// Where `put`, `get` and `rm` find the deployment: one region's
/// directory (`--directory`), or several regions in order (`--regions`).
#[derive(Args)]
pub struct DataConnection {
    #[command(flatten)]
    connection: Connection,
    /// The regions to use, the local one first, each with its directory
    /// group: `NAME=ADDR[,ADDR...][;NAME=...]` (the syntax of the servers'
    /// `--regions`, listing every region, in the order to fail over).
    /// Uploads go to the first region whose directory answers (the id is
    /// that region's), reads to the first region holding the blob; a
    /// region that fails is skipped for 30 s. When given, `--directory`
    /// is not used.
    #[arg(long, env = "HAYLOFT_CLIENT_REGIONS", value_name = "NAME=ADDR,...;...", value_parser = client_regions)]
    regions: Option<ClientRegions>,
}

/// `--regions` of the client commands, parsed.
#[derive(Debug, Clone)]
pub struct ClientRegions(pub Vec<hayloft_client::RegionDirectory>);

fn client_regions(text: &str) -> Result<ClientRegions, hayloft_client::Error> {
    hayloft_client::parse_regions(text).map(ClientRegions)
}

impl DataConnection {
    /// A client of the regions given, or of the directory.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let Some(ClientRegions(regions)) = &self.regions else {
            return self.connection.client().await;
        };
        let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        Client::connect_regions(regions.clone(), credential()?)
            .await
            .with_context(|| format!("connecting to the regions {}", names.join(", ")))
    }
}

/// What client commands present: the token in `HAYLOFT_TOKEN`, TLS with
/// the CA in `HAYLOFT_TLS_CA` and the client certificate in
/// `HAYLOFT_TLS_CERT` / `HAYLOFT_TLS_KEY` (each if set).
pub fn credential() -> anyhow::Result<hayloft_proto::Credential> {
    hayloft_proto::Credential::from_env().map_err(|e| anyhow::anyhow!("{}", e.message()))
}

/// `hayloft put`'s arguments.
#[derive(Args)]
pub struct PutArgs {
    /// Files to upload.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also print each blob's HTTP URL.
    #[arg(long)]
    url: bool,
    /// Collection to write into.
    #[arg(long, default_value = "")]
    collection: String,
    /// Content type (default: guessed from the file name).
    #[arg(long)]
    content_type: Option<String>,
    /// Expire the blobs after this long, e.g. "30d".
    #[arg(long)]
    ttl: Option<humantime_serde::re::humantime::Duration>,
    #[command(flatten)]
    connection: DataConnection,
}

/// Files `put` reads into memory and sends in one `upload_batch` at most.
const PUT_BATCH_FILES: usize = 256;

/// `hayloft put`: uploads files, printing one blob id per file.
pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let client = args.connection.client().await?;
    let options = |file: &PathBuf| UploadOptions {
        content_type: args.content_type.clone().unwrap_or_else(|| {
            mime_guess::from_path(file)
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_owned()
        }),
        file_name: file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        collection: args.collection.clone(),
        ttl: args.ttl.map(Duration::from),
        request_id: None,
    };
    let bar = if args.files.len() > 1 && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(args.files.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} files {elapsed}") {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let print = |file: &PathBuf, result: hayloft_client::Result<hayloft_client::Uploaded>| {
        bar.inc(1);
        match result {
            Ok(uploaded) => {
                bar.suspend(|| {
                    if args.url {
                        println!("{}\t{}", uploaded.blob_id, uploaded.url);
                    } else {
                        println!("{}", uploaded.blob_id);
                    }
                });
                true
            }
            Err(e) => {
                bar.suspend(|| eprintln!("error: uploading {}: {e}", file.display()));
                false
            }
        }
    };
    // Small files go in batches (one stream per server, shared fsyncs);
    // large ones stream alone. Ids print in the order of the arguments.
    let mut failed = 0usize;
    for files in args.files.chunks(PUT_BATCH_FILES) {
        let mut small = Vec::new();
        let mut kinds = Vec::with_capacity(files.len());
        for file in files {
            let len = tokio::fs::metadata(file)
                .await
                .with_context(|| format!("reading {}", file.display()))?
                .len();
            if files.len() > 1 && len <= hayloft_client::BATCH_BLOB_MAX {
                let data = tokio::fs::read(file)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?;
                small.push((bytes::Bytes::from(data), options(file)));
                kinds.push(true);
            } else {
                kinds.push(false);
            }
        }
        let mut batched = client.upload_batch(small).await.into_iter();
        for (file, in_batch) in files.iter().zip(kinds) {
            let result = if in_batch {
                batched
                    .next()
                    .unwrap_or(Err(hayloft_client::Error::NoLocation(0)))
            } else {
                client.upload_file(file, &options(file)).await
            };
            if !print(file, result) {
                failed += 1;
            }
        }
    }
    bar.finish_and_clear();
    if failed > 0 {
        anyhow::bail!("{failed} of {} files were not uploaded", args.files.len());
    }
    Ok(())
}

/// `hayloft get`'s arguments.
#[derive(Args)]
pub struct GetArgs {
    /// The blob id.
    id: String,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    connection: DataConnection,
}

/// `hayloft get`: downloads a blob to stdout or a file.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = args.connection.client().await?;
    match &args.output {
        Some(path) => {
            // Write to a temp name and rename, so a failed download leaves no
            // partial file under the requested name.
            let tmp = path.with_extension("hayloft-partial");
            let mut file = tokio::fs::File::create(&tmp).await?;
            let result = client.download_to(&args.id, &mut file).await;
            match result {
                Ok(_) => {
                    file.sync_all().await?;
                    tokio::fs::rename(&tmp, path).await?;
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e).with_context(|| format!("downloading {}", args.id));
                }
            }
        }
        None => {
            let mut stdout = tokio::io::stdout();
            client
                .download_to(&args.id, &mut stdout)
                .await
                .with_context(|| format!("downloading {}", args.id))?;
            stdout.flush().await?;
        }
    }
    Ok(())
}

/// `hayloft rm`'s arguments.
#[derive(Args)]
pub struct RmArgs {
    /// Blob ids to delete.
    #[arg(required = true)]
    ids: Vec<String>,
    #[command(flatten)]
    connection: DataConnection,
}

/// `hayloft rm`: deletes blobs.
pub async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let client = args.connection.client().await?;
    for id in &args.ids {
        client
            .delete(id)
            .await
            .with_context(|| format!("deleting {id}"))?;
    }
    Ok(())
}

/// `hayloft status`'s arguments.
#[derive(Args)]
pub struct StatusArgs {
    /// Bytes per tier, growth over the last day and week, when each tier
    /// fills at that rate, and the monthly cost per tier.
    #[arg(long)]
    capacity: bool,
    /// With --capacity: the policy whose [prices] ($ per GB-month) to use
    /// (default: the built-in policy's).
    #[arg(long, env = "HAYLOFT_TIER_POLICY")]
    policy: Option<PathBuf>,
    /// Print JSON (servers and volumes with every copy; with --capacity,
    /// the capacity report).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

fn tier_name(tier: i32) -> &'static str {
    Tier::storage(tier).map_or("?", |tier| tier.as_str())
}

/// Why a volume takes no new blobs for now (a copy's disk is at its
/// free-space reserve), if it does not.
fn paused(volume: &hayloft_proto::VolumeRecord) -> Option<&str> {
    volume
        .replicas
        .iter()
        .filter_map(|r| r.status.as_ref())
        .map(|s| s.paused.as_str())
        .chain(volume.status.as_ref().map(|s| s.paused.as_str()))
        .find(|why| !why.is_empty())
}

/// A volume's state as shown: `paused` for a writable volume whose disk is
/// at its free-space reserve.
fn shown_state(volume: &hayloft_proto::VolumeRecord) -> &'static str {
    if volume.state == VolumeState::Writable as i32 && paused(volume).is_some() {
        "paused"
    } else {
        state_name(volume.state)
    }
}

fn state_name(state: i32) -> &'static str {
    match VolumeState::try_from(state) {
        Ok(VolumeState::Writable) => "writable",
        Ok(VolumeState::Sealed) => "sealed",
        Ok(VolumeState::Moving) => "moving",
        Ok(VolumeState::Cold) => "cold",
        Ok(VolumeState::Restoring) => "restoring",
        _ => "?",
    }
}

/// How far back `status --capacity` (and the operator page) reads the
/// capacity history: a week for the weekly growth, and a day to spare.
pub const CAPACITY_HISTORY: std::time::Duration = std::time::Duration::from_secs(8 * 86_400);

/// `hayloft status`: the cluster's servers and volumes (and capacity).
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    if args.capacity {
        let policy = crate::tier::load_policy(args.policy.as_deref())?;
        let directory = args.connection.directories()?;
        let since = hayloft_storage::volume::unix_now().saturating_sub(CAPACITY_HISTORY.as_secs());
        let samples = directory
            .call(|mut directory| async move {
                directory
                    .capacity(hayloft_proto::CapacityRequest { since })
                    .await
            })
            .await
            .with_context(|| {
                format!(
                    "asking the directory at {} for the capacity history",
                    args.connection.directory
                )
            })?
            .samples;
        let report = crate::capacity::report(&samples, &policy);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            crate::capacity::print(&report);
        }
        return Ok(());
    }
    let client = args.connection.client().await?;
    let status = client.status().await?;
    let nodes = directory_nodes(&args.connection.directory).await;
    let regions = crate::regions::fetch(&args.connection.directories()?)
        .await
        .with_context(|| {
            format!(
                "asking the directory at {} for the regions",
                args.connection.directory
            )
        })?;
    if args.json {
        let mut json = status_json(&status);
        json["directory_nodes"] = nodes_json(&nodes);
        json["regions"] = crate::regions::json(&regions);
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    print_nodes(&nodes);
    crate::regions::print(&regions);
    for problem in &status.problems {
        println!("PROBLEM: {problem}");
    }
    if status.below_spread > 0 {
        println!(
            "SPREAD: {} volume(s) span fewer zones or racks than the live servers allow; their copies move back one at a time",
            status.below_spread
        );
    }
    println!("SERVERS");
    println!(
        "{:<16} {:<10} {:<10} {:<22} {:<22} {:<6} {:>12} {:>12}",
        "ID", "ZONE", "RACK", "GRPC", "HTTP", "ALIVE", "FREE HOT", "FREE WARM"
    );
    for server in &status.servers {
        let location = server.location.clone().unwrap_or_default();
        println!(
            "{:<16} {:<10} {:<10} {:<22} {:<22} {:<6} {:>12} {:>12}",
            location.server_id,
            site(&location.zone),
            site(&location.rack),
            location.grpc_addr,
            location.http_addr,
            if server.alive { "yes" } else { "NO" },
            ByteSize(server.free_hot_bytes).to_string(),
            ByteSize(server.free_warm_bytes).to_string(),
        );
    }
    println!();
    println!("VOLUMES");
    println!(
        "{:>6} {:<12} {:<5} {:<12} {:<10} {:<13} {:<9} {:<24} {:>9} {:>11} {:>11} {:>8} {:>10}",
        "ID",
        "COLLECTION",
        "TIER",
        "CLASS",
        "STATE",
        "HEALTH",
        "LAYOUT",
        "REPLICAS",
        "NEEDLES",
        "SIZE",
        "GARBAGE",
        "GARBAGE%",
        "READS/DAY"
    );
    for volume in &status.volumes {
        let stats = volume.status.clone().unwrap_or_default();
        let ratio = if stats.file_bytes > 0 {
            100.0 * stats.garbage_bytes as f64 / stats.file_bytes as f64
        } else {
            0.0
        };
        println!(
            "{:>6} {:<12} {:<5} {:<12} {:<10} {:<13} {:<9} {:<24} {:>9} {:>11} {:>11} {:>7.1}% {:>10.0}",
            stats.volume_id,
            hayloft_access::collection_name(&stats.collection),
            tier_name(stats.tier),
            if stats.storage_class.is_empty() {
                "-"
            } else {
                &stats.storage_class
            },
            &if stats.compacting {
                format!(
                    "compact{:>2}%",
                    (100 * stats.compaction_copied_bytes / stats.compaction_total_bytes.max(1))
                        .min(99)
                )
            } else {
                shown_state(volume).to_owned()
            },
            &if volume.repairing {
                let percent = (volume.repair_progress * 100.0).floor().min(99.0) as u32;
                match volume.repair_kind.as_str() {
                    "rebuild-shard" => format!("rebuild s{} {percent}%", volume.repair_shard),
                    // Erasure coding, or back to copies (their progress is
                    // the command's, not the map's).
                    "encode" => "encoding".to_owned(),
                    "decode" => "decoding".to_owned(),
                    _ => format!("repairing {percent}%"),
                }
            } else {
                health_name(volume.health).to_owned()
            },
            crate::erasure::layout_text(volume),
            replicas_text(volume),
            stats.needles,
            ByteSize(stats.file_bytes).to_string(),
            ByteSize(stats.garbage_bytes).to_string(),
            ratio,
            stats.reads_per_day,
        );
    }
    let degraded = status
        .volumes
        .iter()
        .filter(|v| v.health != VolumeHealth::Ok as i32)
        .count();
    println!();
    println!(
        "{} volumes, {degraded} under-replicated (replication {})",
        status.volumes.len(),
        status.replication.max(1)
    );
    crate::erasure::print_factor(&status);
    print_jobs(&status);
    Ok(())
}

/// Every background job of the cluster, with where it runs: the
/// directory node's own, then each server's (from its last heartbeat).
fn jobs(status: &hayloft_proto::StatusResponse) -> Vec<(String, &hayloft_proto::WorkerStatus)> {
    let own = status.workers.iter().map(|w| ("directory".to_owned(), w));
    let servers = status.servers.iter().flat_map(|s| {
        let id = s
            .location
            .as_ref()
            .map(|l| l.server_id.clone())
            .unwrap_or_default();
        s.workers.iter().map(move |w| (id.clone(), w))
    });
    own.chain(servers).collect()
}

/// The JOBS table of `hayloft status`: one line a background job, the
/// same columns for every kind.
fn print_jobs(status: &hayloft_proto::StatusResponse) {
    let jobs = jobs(status);
    if jobs.is_empty() {
        return;
    }
    let now = hayloft_proto::unix_now();
    println!();
    println!("JOBS");
    println!(
        "{:<16} {:<17} {:<8} {:<28} {:<9} ERROR",
        "WHERE", "JOB", "STATE", "PROGRESS", "NEXT RUN"
    );
    for (at, job) in jobs {
        let next = if job.next_run_at == 0 {
            "-".to_owned()
        } else {
            format!("in {}s", job.next_run_at.saturating_sub(now))
        };
        let error = if job.last_error.is_empty() {
            "-".to_owned()
        } else if job.consecutive_errors > 0 {
            format!("{} ({} in a row)", job.last_error, job.consecutive_errors)
        } else {
            format!(
                "{} ({}s ago)",
                job.last_error,
                now.saturating_sub(job.last_error_at)
            )
        };
        println!(
            "{:<16} {:<17} {:<8} {:<28} {:<9} {}",
            at,
            job.name,
            job.state,
            if job.progress.is_empty() {
                "-"
            } else {
                &job.progress
            },
            next,
            error
        );
    }
}

/// A zone or rack as shown (`default` for none).
pub fn site(name: &str) -> &str {
    if name.is_empty() { "default" } else { name }
}

fn health_name(health: i32) -> &'static str {
    match VolumeHealth::try_from(health) {
        Ok(VolumeHealth::Ok) => "ok",
        Ok(VolumeHealth::Degraded) => "degraded",
        _ => "?",
    }
}

fn replica_health_name(health: i32) -> &'static str {
    match ReplicaHealth::try_from(health) {
        Ok(ReplicaHealth::Ok) => "ok",
        Ok(ReplicaHealth::Down) => "down",
        Ok(ReplicaHealth::Missing) => "missing",
        Ok(ReplicaHealth::Stale) => "stale",
        _ => "?",
    }
}

/// "vs0,vs1,vs2(down)": every copy, with the health of the unhealthy ones.
/// The copies of a volume (with their health if not ok), or the holders of
/// an erasure-coded volume's shards, shard by shard.
fn replicas_text(volume: &hayloft_proto::VolumeRecord) -> String {
    if let Some(holders) = crate::erasure::holders(volume) {
        return holders.join(",");
    }
    if volume.replicas.is_empty() {
        return volume.server_id.clone();
    }
    volume
        .replicas
        .iter()
        .map(|r| {
            let id = r
                .location
                .as_ref()
                .map(|l| l.server_id.as_str())
                .unwrap_or("?");
            match ReplicaHealth::try_from(r.health) {
                Ok(ReplicaHealth::Ok) => id.to_owned(),
                _ => format!("{id}({})", replica_health_name(r.health)),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Each directory node's view of the group (`Node`), asked of every
/// address given, in order, then of members they name that were not given
/// (a node added since); `None` for a node that does not answer.
async fn directory_nodes(addrs: &str) -> Vec<(String, Option<hayloft_proto::NodeStatus>)> {
    // A bad environment fails the status call that follows, with its reason.
    let credential = credential().unwrap_or_default();
    let mut nodes: Vec<(String, Option<hayloft_proto::NodeStatus>)> = Vec::new();
    let mut queue: std::collections::VecDeque<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    while let Some(addr) = queue.pop_front() {
        if nodes.iter().any(|(known, _)| *known == addr) {
            continue;
        }
        let answer = hayloft_proto::ask_node(&addr, std::time::Duration::from_secs(2), &credential)
            .await
            .ok();
        if let Some(node) = &answer {
            queue.extend(
                node.members
                    .iter()
                    .filter_map(|m| m.split_once('=').map(|(_, a)| a.to_owned())),
            );
        }
        nodes.push((addr, answer));
    }
    nodes
}

/// How far behind the leader's log a node is (0 for the leader, or when
/// no leader answered).
fn behind(
    nodes: &[(String, Option<hayloft_proto::NodeStatus>)],
    node: &hayloft_proto::NodeStatus,
) -> u64 {
    nodes
        .iter()
        .filter_map(|(_, n)| n.as_ref())
        .find(|n| n.role == "leader")
        .map_or(0, |leader| {
            leader.last_log_index.saturating_sub(node.last_applied)
        })
}

fn print_nodes(nodes: &[(String, Option<hayloft_proto::NodeStatus>)]) {
    println!("DIRECTORY NODES");
    println!(
        "{:<22} {:>4} {:<10} {:>6} {:>6} {:>9} {:>9} {:>6}",
        "ADDRESS", "ID", "ROLE", "TERM", "LEADER", "LAST LOG", "APPLIED", "LAG"
    );
    for (addr, node) in nodes {
        match node {
            Some(n) => println!(
                "{:<22} {:>4} {:<10} {:>6} {:>6} {:>9} {:>9} {:>6}",
                addr,
                n.node_id,
                n.role,
                n.term,
                if n.leader_id == 0 {
                    "-".to_owned()
                } else {
                    n.leader_id.to_string()
                },
                n.last_log_index,
                n.last_applied,
                behind(nodes, n),
            ),
            None => println!("{addr:<22} {:>4} UNREACHABLE", "-"),
        }
    }
    println!();
}

fn nodes_json(nodes: &[(String, Option<hayloft_proto::NodeStatus>)]) -> serde_json::Value {
    nodes
        .iter()
        .map(|(addr, node)| match node {
            Some(n) => serde_json::json!({
                "address": addr, "reachable": true, "id": n.node_id, "role": n.role,
                "term": n.term, "leader": n.leader_id, "last_log_index": n.last_log_index,
                "last_applied": n.last_applied, "snapshot_index": n.snapshot_index,
                "lag": behind(nodes, n), "members": n.members,
            }),
            None => serde_json::json!({ "address": addr, "reachable": false }),
        })
        .collect()
}

/// `hayloft status --json`: servers and volumes, every copy with its
/// server, zone, needle count and health.
/// `hayloft status --json` (the operator page shows the same figures).
pub fn status_json(status: &hayloft_proto::StatusResponse) -> serde_json::Value {
    let servers: Vec<_> = status
        .servers
        .iter()
        .map(|s| {
            let l = s.location.clone().unwrap_or_default();
            serde_json::json!({
                "id": l.server_id, "zone": site(&l.zone), "rack": site(&l.rack),
                "grpc": l.grpc_addr, "http": l.http_addr, "alive": s.alive,
                "last_heartbeat": s.last_heartbeat,
                "free_hot_bytes": s.free_hot_bytes, "free_warm_bytes": s.free_warm_bytes,
            })
        })
        .collect();
    let volumes: Vec<_> = status
        .volumes
        .iter()
        .map(|v| {
            let stats = v.status.clone().unwrap_or_default();
            let replicas: Vec<_> = v
                .replicas
                .iter()
                .map(|r| {
                    let l = r.location.clone().unwrap_or_default();
                    serde_json::json!({
                        "server": l.server_id, "zone": site(&l.zone), "rack": site(&l.rack),
                        "needles": r.needles, "health": replica_health_name(r.health),
                    })
                })
                .collect();
            serde_json::json!({
                "id": stats.volume_id, "collection": hayloft_access::collection_name(&stats.collection),
                "tier": tier_name(stats.tier), "state": shown_state(v),
                "paused": paused(v).unwrap_or_default(),
                "health": if v.repairing { "repairing" } else { health_name(v.health) },
                "repair_progress": v.repair_progress,
                "repair_target": v.repair_target,
                "repair_started_at": v.repair_started_at,
                "repair_kind": v.repair_kind,
                "repair_shard": v.repair_shard,
                "replication": v.replication,
                "replicas": replicas, "needles": stats.needles,
                "layout": crate::erasure::layout_json(v),
                "stored_bytes": v.stored_bytes, "logical_bytes": v.logical_bytes,
                "file_bytes": stats.file_bytes, "garbage_bytes": stats.garbage_bytes,
                "compacting": stats.compacting,
                "compaction_progress": if stats.compacting {
                    stats.compaction_copied_bytes as f64 / stats.compaction_total_bytes.max(1) as f64
                } else {
                    0.0
                },
            })
        })
        .collect();
    serde_json::json!({
        "replication": status.replication.max(1),
        "problems": status.problems,
        "under_replicated": status.volumes.iter().filter(|v| v.health != VolumeHealth::Ok as i32).count(),
        "below_spread": status.below_spread,
        "replication_factor": crate::erasure::factor_json(status),
        "servers": servers,
        "volumes": volumes,
        "jobs": jobs(status)
            .into_iter()
            .map(|(at, w)| serde_json::json!({
                "where": at, "name": w.name, "state": w.state, "progress": w.progress,
                "steps": w.steps, "errors": w.errors, "consecutive_errors": w.consecutive_errors,
                "last_error": w.last_error, "last_error_at": w.last_error_at,
                "next_run_at": w.next_run_at,
            }))
            .collect::<Vec<_>>(),
    })
}
