//! `hayloft tier`: plan, run and watch tier moves; restore cold volumes;
//! run the tiering worker as its own daemon.
//!
//! Why one file of ~680 lines: `hayloft tier` has seven subcommands sharing one
//! argument set and one plan printer; most of the length is their `clap`
//! documentation (the `--help` text).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use clap::{Args, Subcommand};
use hayloft_proto::{MoveJobStatus, StatusResponse};
use hayloft_storage::Tier;
use hayloft_tiering::{Action, Plan, Policy};
use hayloft_tiering::{replicas, worker};

/// `hayloft tier`'s arguments.
#[derive(Args)]
pub struct TierArgs {
    #[command(subcommand)]
    command: TierCommand,
    /// The directory's gRPC address.
    #[arg(
        long,
        global = true,
        env = "HAYLOFT_DIRECTORY",
        default_value = hayloft_proto::DEFAULT_DIRECTORY
    )]
    directory: String,
}

#[derive(Subcommand)]
enum TierCommand {
    /// Dry run: which volumes would move where, bytes and monthly cost per
    /// tier before and after.
    Plan(PolicyArgs),
    /// Plan, start the moves, and follow them to the end.
    Run(PolicyArgs),
    /// Move jobs on every volume server, and bytes per tier.
    Status,
    /// Bring a cold volume back to a local disk (restoring it from an
    /// archive class first).
    Restore {
        /// The volume.
        #[arg(long)]
        volume: u32,
        /// Where to: warm or hot.
        #[arg(long, default_value = "warm")]
        to: Tier,
        /// Return once started instead of following the move.
        #[arg(long)]
        no_wait: bool,
    },
    /// Move one volume now, whatever the policy says. An erasure-coded
    /// volume moves to cold as one object (the directory rebuilds its data
    /// file from the shards on one server, uploads it, makes its copies
    /// cold copies of it, then drops the shards).
    Move {
        /// The volume.
        #[arg(long)]
        volume: u32,
        /// hot, warm or cold.
        #[arg(long)]
        to: Tier,
        /// For cold: the bucket.
        #[arg(long, default_value = "")]
        bucket: String,
        /// For cold: the key prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// For cold: the storage class.
        #[arg(long, default_value = "STANDARD")]
        storage_class: String,
        /// Copy rate limit per second, e.g. "100MiB" (default: the server's).
        #[arg(long)]
        rate: Option<ByteSize>,
        /// Return once started instead of following the move.
        #[arg(long)]
        no_wait: bool,
    },
    /// Compact a cold volume: bring it back, compact it, send it back to
    /// the same bucket and storage class.
    Compact {
        /// The volume.
        #[arg(long)]
        volume: u32,
    },
    /// Erasure-code volumes by hand: seal each (if writable), print the
    /// plan (holders, zones, warnings, bytes), encode with progress, and
    /// say what the copies became. Goes on past a volume that fails;
    /// exits non-zero if any did.
    Ec(crate::erasure::EcArgs),
    /// Turn erasure-coded volumes back into replicated volumes (plan first;
    /// `--dry-run`: the plan only).
    Decode(crate::decode::DecodeArgs),
    /// Re-encode erasure-coded volumes without their deleted needles, so
    /// their space comes back (plan first; `--dry-run`: the plan only).
    Reencode(crate::reencode::ReencodeArgs),
    /// The tiering worker as a daemon: plans and runs by the policy every interval.
    Worker {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Time between rounds.
        #[arg(long, default_value = "5m")]
        interval: humantime_serde::re::humantime::Duration,
    },
}

/// The lifecycle policy a tier command plans with.
#[derive(Args)]
pub struct PolicyArgs {
    /// The lifecycle policy (TOML; see README). Default: the built-in policy.
    #[arg(long, env = "HAYLOFT_TIER_POLICY")]
    policy: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

/// The policy of the embedded server when none is given: aged, quiet
/// volumes go to the warm disk after a week and to the cold store after 90
/// days; busy cold volumes come back.
pub const DEFAULT_POLICY: &str = r#"
min_observation = "1d"

[prices]
hot = 0.10
warm = 0.03
STANDARD = 0.023
STANDARD_IA = 0.0125
GLACIER_IR = 0.004
GLACIER = 0.0036
DEEP_ARCHIVE = 0.00099

[[rule]]
name = "aged-to-warm"
from = "hot"
min_age = "7d"
max_reads_per_day = 1000
target = "warm"

[[rule]]
name = "quiet-to-cold"
from = "warm"
min_age = "90d"
max_reads_per_day = 10
target = "cold"
bucket = "hayloft-cold"
storage_class = "STANDARD"

[[promote]]
name = "busy-again"
from = "cold"
min_reads_per_day = 1000
target = "warm"
"#;

/// The built-in policy ([`DEFAULT_POLICY`]), parsed.
pub fn default_policy() -> Policy {
    // A constant, parsed by a test (`daemons::tests`): never fails.
    Policy::parse(DEFAULT_POLICY).expect("the built-in policy parses")
}

/// Loads a policy file, or the built-in policy.
pub fn load_policy(path: Option<&Path>) -> anyhow::Result<Policy> {
    let text = match path {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => DEFAULT_POLICY.to_owned(),
    };
    Policy::parse(&text).with_context(|| match path {
        Some(path) => format!("parsing {}", path.display()),
        None => "the built-in policy".into(),
    })
}

impl TierArgs {
    /// Whether this runs as a daemon (the worker) rather than a command.
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, TierCommand::Worker { .. })
    }
}

/// Runs a `hayloft tier` command.
pub async fn tier(args: TierArgs) -> anyhow::Result<()> {
    let directory = args.directory;
    match args.command {
        TierCommand::Plan(p) => {
            let policy = load_policy(p.policy.as_deref())?;
            let (plan, _) = worker::plan_now(&directory, &policy).await?;
            print_plan(&policy, &plan, p.json);
            Ok(())
        }
        TierCommand::Run(p) => {
            let policy = load_policy(p.policy.as_deref())?;
            let (plan, status) = worker::plan_now(&directory, &policy).await?;
            print_plan(&policy, &plan, p.json);
            let outcomes = worker::execute(&directory, &policy, &plan, &status).await;
            let mut moving = Vec::new();
            let mut failed = 0;
            for outcome in outcomes {
                match (&outcome.action, &outcome.result) {
                    (Action::Move { volume, .. }, Ok(())) => moving.push(*volume),
                    (Action::Delete { volume, server, .. }, Ok(())) => {
                        println!("volume {volume} on {server}: deleted")
                    }
                    (Action::Drop { volume, server, .. }, Ok(())) => {
                        println!("volume {volume} on {server}: copy dropped")
                    }
                    (Action::Encode { volume, .. }, Ok(())) => {
                        println!("volume {volume}: erasure coding started by the directory")
                    }
                    (Action::Reencode { volume, .. }, Ok(())) => {
                        println!("volume {volume}: re-encode started by the directory")
                    }
                    (Action::EcToCold { volume, .. }, Ok(())) => {
                        println!("volume {volume}: move to cold started by the directory")
                    }
                    (action, Err(e)) => {
                        failed += 1;
                        eprintln!("{}: refused: {e}", describe(action));
                    }
                }
            }
            let failed_moves = follow(&directory, &moving).await?;
            if failed + failed_moves > 0 {
                anyhow::bail!("{} action(s) failed", failed + failed_moves);
            }
            Ok(())
        }
        TierCommand::Status => {
            let status = worker::cluster_status(&directory).await?;
            print_tiers(&status);
            let jobs = worker::jobs(&directory).await?;
            println!();
            println!(
                "{:>6} {:<12} {:<5} {:<5} {:<16} {:>12} {:>12} {:>8}  ERROR",
                "VOLUME", "SERVER", "FROM", "TO", "STEP", "DONE", "TOTAL", "RETRIES"
            );
            for (server, job) in jobs {
                print_job(&server, &job);
            }
            Ok(())
        }
        TierCommand::Restore {
            volume,
            to,
            no_wait,
        } => {
            if to == Tier::Cold {
                anyhow::bail!("restore brings a volume to warm or hot");
            }
            move_one(&directory, volume, to, "", "", "", 0, no_wait).await
        }
        TierCommand::Move {
            volume,
            to,
            bucket,
            prefix,
            storage_class,
            rate,
            no_wait,
        } => {
            move_one(
                &directory,
                volume,
                to,
                &bucket,
                &prefix,
                &storage_class,
                rate.map_or(0, |r| r.as_u64()),
                no_wait,
            )
            .await
        }
        TierCommand::Compact { volume } => compact_cold(&directory, volume).await,
        TierCommand::Ec(args) => crate::erasure::tier_ec(&directory, args).await,
        TierCommand::Decode(decode) => crate::decode::decode(&directory, decode).await,
        TierCommand::Reencode(args) => crate::reencode::reencode(&directory, args).await,
        TierCommand::Worker { policy, interval } => {
            let policy = load_policy(policy.policy.as_deref())?;
            println!("tiering worker: directory {directory}, every {interval}");
            worker::run(
                directory,
                policy,
                interval.into(),
                crate::daemons::shutdown_signal(),
            )
            .await;
            Ok(())
        }
    }
}

/// Download, compact, re-upload: a cold volume without its garbage.
async fn compact_cold(directory: &str, volume: u32) -> anyhow::Result<()> {
    let status = worker::cluster_status(directory).await?;
    let (record, addr) = find_volume(&status, volume)?;
    let stats = record.status.clone().unwrap_or_default();
    if stats.tier != hayloft_proto::Tier::Cold as i32 {
        anyhow::bail!("volume {volume} is not cold");
    }
    let (bucket, key) = stats
        .cold_object
        .split_once('/')
        .context("the volume's object is unknown")?;
    let prefix = key.rfind('/').map_or("", |i| &key[..=i]);
    let before = stats.file_bytes;
    move_one(directory, volume, Tier::Warm, "", "", "", 0, false).await?;
    let mut client = hayloft_proto::Credential::volume_client(&addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut stream = client
        .compact(hayloft_proto::CompactRequest {
            volume_ids: vec![volume],
            ..hayloft_proto::CompactRequest::default()
        })
        .await?
        .into_inner();
    let mut after = before;
    while let Some(progress) = stream.message().await? {
        if !progress.error.is_empty() {
            anyhow::bail!("compacting volume {volume}: {}", progress.error);
        }
        if progress.done {
            after = progress.bytes_after;
        }
    }
    println!(
        "volume {volume}: compacted {} -> {}",
        ByteSize(before),
        ByteSize(after)
    );
    move_one(
        directory,
        volume,
        Tier::Cold,
        bucket,
        prefix,
        &stats.storage_class,
        0,
        false,
    )
    .await
}

fn find_volume(
    status: &StatusResponse,
    volume: u32,
) -> anyhow::Result<(hayloft_proto::VolumeRecord, String)> {
    let record = status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))
        .with_context(|| format!("volume {volume} is not in the directory"))?;
    let addr = status
        .servers
        .iter()
        .filter_map(|s| s.location.as_ref())
        .find(|l| l.server_id == record.server_id)
        .map(|l| l.grpc_addr.clone())
        .with_context(|| format!("server of volume {volume} unknown"))?;
    Ok((record.clone(), addr))
}

#[allow(clippy::too_many_arguments)]
async fn move_one(
    directory: &str,
    volume: u32,
    to: Tier,
    bucket: &str,
    prefix: &str,
    storage_class: &str,
    rate: u64,
    no_wait: bool,
) -> anyhow::Result<()> {
    let status = worker::cluster_status(directory).await?;
    if status
        .volumes
        .iter()
        .any(|v| v.erasure.as_ref().is_some_and(|e| e.volume_id == volume))
    {
        // An erasure-coded volume goes to cold as one object, through the
        // directory (it runs the move as a job, to its end).
        if to != Tier::Cold {
            anyhow::bail!(
                "volume {volume} is erasure-coded: `hayloft tier decode {volume}` makes it replicated (warm) again"
            );
        }
        return crate::decode::to_cold(directory, volume, (bucket, prefix, storage_class), rate)
            .await;
    }
    let (record, addr) = find_volume(&status, volume)?;
    if replicas::is_replicated(&record) {
        let target = replicas::Target {
            tier: to,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            storage_class: storage_class.to_owned(),
            rule: "operator".into(),
        };
        return move_replicated(directory, volume, &target, rate, no_wait).await;
    }
    worker::start_move(&addr, volume, to, bucket, prefix, storage_class, rate).await?;
    println!("volume {volume}: moving to {to}");
    if !no_wait && follow(directory, &[volume]).await? > 0 {
        anyhow::bail!("move of volume {volume} failed");
    }
    Ok(())
}

/// Moves every copy of a replicated volume, step by step (see
/// `hayloft_tiering::replicas`), until they are all on `target.tier` and the
/// volume has its copies; `no_wait` takes only the first step.
async fn move_replicated(
    directory: &str,
    volume: u32,
    target: &replicas::Target,
    rate: u64,
    no_wait: bool,
) -> anyhow::Result<()> {
    let mut waiting = String::new();
    loop {
        let status = worker::cluster_status(directory).await?;
        let (record, _) = find_volume(&status, volume)?;
        if replicas::settled(&record, target.tier) {
            println!("volume {volume}: every copy is {}", target.tier);
            return Ok(());
        }
        let steps = match replicas::blocked(&record) {
            Some(why) => {
                if why != waiting {
                    println!("volume {volume}: waiting: {why}");
                    waiting = why;
                }
                Vec::new()
            }
            None => {
                let follow = replicas::lead_target(&record)
                    .map(|t| replicas::steps(&record, &t))
                    .unwrap_or_default();
                if follow.is_empty() {
                    replicas::steps(&record, target)
                } else {
                    follow
                }
            }
        };
        if steps.is_empty() && waiting.is_empty() {
            waiting = "the directory to re-create copies (hayloft repair --dry-run)".into();
            println!("volume {volume}: waiting for {waiting}");
        }
        let mut moving = false;
        for step in &steps {
            waiting.clear();
            println!("{}", describe(step));
            worker::run_action(directory, &status, step, rate)
                .await
                .with_context(|| describe(step))?;
            moving |= matches!(step, Action::Move { .. });
        }
        if no_wait && !steps.is_empty() {
            return Ok(());
        }
        if moving && follow(directory, &[volume]).await? > 0 {
            anyhow::bail!("move of volume {volume} failed");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints the jobs of `volumes` until they finish; returns how many failed.
async fn follow(directory: &str, volumes: &[u32]) -> anyhow::Result<usize> {
    if volumes.is_empty() {
        return Ok(0);
    }
    let mut last: BTreeMap<u32, String> = BTreeMap::new();
    let mut unseen = 0;
    loop {
        let jobs = worker::jobs(directory).await?;
        let mut running = 0;
        let mut failed = 0;
        let seen = jobs
            .iter()
            .filter(|(_, j)| volumes.contains(&j.volume_id))
            .count();
        // A server that stops answering (or restarted and forgot) leaves
        // its jobs unknown: that is not success.
        unseen = if seen < volumes.len() { unseen + 1 } else { 0 };
        if unseen >= 10 {
            anyhow::bail!("lost track of the moves: their server stopped answering");
        }
        for (server, job) in jobs.iter().filter(|(_, j)| volumes.contains(&j.volume_id)) {
            let line = format!(
                "volume {}: {} {}/{}{}",
                job.volume_id,
                job.step,
                ByteSize(job.done_bytes),
                ByteSize(job.total_bytes),
                if job.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", job.error)
                }
            );
            if last.get(&job.volume_id) != Some(&line) {
                println!("{line}  [{server}]");
                last.insert(job.volume_id, line);
            }
            if !job.finished {
                running += 1;
            } else if !job.error.is_empty() {
                failed += 1;
            }
        }
        if running == 0 && unseen == 0 {
            return Ok(failed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Move {
            volume,
            server,
            from,
            to,
            storage_class,
            bucket,
            rule,
            share_cold_from,
            ..
        } => {
            if !share_cold_from.is_empty() {
                format!(
                    "volume {volume}: {from} -> cold, sharing the object of the copy on {share_cold_from}, by {rule} (on {server})"
                )
            } else if *to == Tier::Cold {
                format!(
                    "volume {volume}: {from} -> cold ({storage_class}, s3://{bucket}) by {rule} (on {server})"
                )
            } else {
                format!("volume {volume}: {from} -> {to} by {rule} (on {server})")
            }
        }
        Action::Drop {
            volume,
            server,
            rule,
            ..
        } => format!("volume {volume}: copy dropped by {rule} (on {server})"),
        Action::Delete {
            volume,
            server,
            rule,
            ..
        } => format!("volume {volume}: delete ({rule}) (on {server})"),
        Action::Encode {
            volume, code, rule, ..
        } => {
            let code = if code.is_empty() {
                "the directory's code"
            } else {
                code
            };
            format!("volume {volume}: erasure-code ({code}) by {rule}")
        }
        Action::Reencode {
            volume,
            deleted_bytes,
            logical_bytes,
            rule,
        } => format!(
            "volume {volume}: re-encode without {} deleted of {} by {rule}",
            bytesize::ByteSize::b(*deleted_bytes),
            bytesize::ByteSize::b(*logical_bytes)
        ),
        Action::EcToCold {
            volume,
            bucket,
            storage_class,
            rule,
            ..
        } => format!(
            "volume {volume}: erasure-coded -> cold ({storage_class}, s3://{bucket}, one object) by {rule}"
        ),
    }
}

fn print_plan(policy: &Policy, plan: &Plan, json: bool) {
    let before_cost = policy.monthly_cost(&plan.before);
    let after_cost = policy.monthly_cost(&plan.after);
    if json {
        let actions: Vec<_> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::Move {
                    volume,
                    server,
                    from,
                    to,
                    storage_class,
                    bucket,
                    bytes,
                    rule,
                    share_cold_from,
                    ..
                } => serde_json::json!({"volume": volume, "server": server, "action": "move",
                    "from": from.as_str(), "to": to.as_str(), "storage_class": storage_class,
                    "bucket": bucket, "bytes": bytes, "rule": rule,
                    "share_cold_from": share_cold_from}),
                Action::Drop {
                    volume,
                    server,
                    rule,
                    ..
                } => serde_json::json!({"volume": volume, "server": server,
                    "action": "drop", "rule": rule}),
                Action::Delete {
                    volume,
                    server,
                    bytes,
                    rule,
                    ..
                } => serde_json::json!({"volume": volume, "server": server,
                    "action": "delete", "bytes": bytes, "rule": rule}),
                Action::Encode {
                    volume,
                    code,
                    bytes,
                    rule,
                } => serde_json::json!({"volume": volume, "action": "encode",
                    "code": code, "bytes": bytes, "rule": rule}),
                Action::Reencode {
                    volume,
                    deleted_bytes,
                    logical_bytes,
                    rule,
                } => serde_json::json!({"volume": volume, "action": "reencode",
                    "deleted_bytes": deleted_bytes, "bytes": logical_bytes, "rule": rule}),
                Action::EcToCold {
                    volume,
                    bucket,
                    storage_class,
                    bytes,
                    rule,
                    ..
                } => serde_json::json!({"volume": volume, "action": "ec-to-cold",
                    "from": "warm", "to": "cold", "storage_class": storage_class,
                    "bucket": bucket, "bytes": bytes, "rule": rule}),
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "actions": actions,
                "bytes_before": plan.before, "bytes_after": plan.after,
                "monthly_cost_before": before_cost, "monthly_cost_after": after_cost,
            })
        );
        return;
    }
    if plan.actions.is_empty() {
        println!("nothing to move");
    }
    for action in &plan.actions {
        println!("{}", describe(action));
    }
    println!();
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>12}",
        "TIER/CLASS", "BYTES NOW", "BYTES AFTER", "$/MONTH NOW", "$/MONTH AFTER"
    );
    let keys: std::collections::BTreeSet<_> = plan.before.keys().chain(plan.after.keys()).collect();
    let money = |m: &BTreeMap<String, f64>, k: &str| {
        m.get(k)
            .map_or("no price".to_owned(), |v| format!("{v:.4}"))
    };
    for key in keys {
        println!(
            "{:<14} {:>12} {:>12} {:>12} {:>12}",
            key,
            ByteSize(plan.before.get(key).copied().unwrap_or(0)).to_string(),
            ByteSize(plan.after.get(key).copied().unwrap_or(0)).to_string(),
            money(&before_cost, key),
            money(&after_cost, key),
        );
    }
    println!(
        "{:<14} {:>12} {:>12} {:>12.4} {:>12.4}",
        "total",
        "",
        "",
        before_cost.values().sum::<f64>(),
        after_cost.values().sum::<f64>()
    );
}

fn print_tiers(status: &StatusResponse) {
    let mut bytes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for volume in &status.volumes {
        let Some(s) = &volume.status else { continue };
        let entry = bytes
            .entry(hayloft_tiering::policy::billing_key(s))
            .or_default();
        entry.0 += 1;
        entry.1 += s.file_bytes;
    }
    println!("{:<14} {:>8} {:>12}", "TIER/CLASS", "VOLUMES", "BYTES");
    for (key, (count, size)) in bytes {
        println!("{key:<14} {count:>8} {:>12}", ByteSize(size).to_string());
    }
}

fn print_job(server: &str, job: &MoveJobStatus) {
    let tier = |t: i32| match hayloft_proto::Tier::try_from(t) {
        Ok(hayloft_proto::Tier::Hot) => "hot",
        Ok(hayloft_proto::Tier::Warm) => "warm",
        Ok(hayloft_proto::Tier::Cold) => "cold",
        _ => "?",
    };
    println!(
        "{:>6} {:<12} {:<5} {:<5} {:<16} {:>12} {:>12} {:>8}  {}",
        job.volume_id,
        server,
        tier(job.from),
        tier(job.target),
        job.step,
        ByteSize(job.done_bytes).to_string(),
        ByteSize(job.total_bytes).to_string(),
        job.attempts,
        job.error
    );
}
