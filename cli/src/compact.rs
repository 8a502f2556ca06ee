//! `hayloft compact`: find the volumes (through the directory), ask their
//! servers to compact them, and show progress and a summary.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;
use hayloft_proto::CompactRequest;
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::Connection;

/// `hayloft compact`'s arguments.
#[derive(Args)]
pub struct CompactArgs {
    /// A volume to compact (repeat for several).
    #[arg(long = "volume", value_name = "ID", required_unless_present = "all")]
    volumes: Vec<u32>,
    /// Every volume whose garbage ratio is at least --min-garbage.
    #[arg(long, conflicts_with = "volumes")]
    all: bool,
    /// Garbage bytes / data file bytes, with --all.
    #[arg(long, default_value_t = 0.3)]
    min_garbage: f64,
    /// Show what would be reclaimed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Copy rate limit per second, e.g. "200MiB" (default: the server's).
    #[arg(long)]
    rate: Option<ByteSize>,
    #[command(flatten)]
    connection: Connection,
}

/// `hayloft compact`: compacts volumes while they keep serving.
pub async fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let client = args.connection.client().await?;
    let status = client.status().await?;
    let servers: BTreeMap<String, String> = status
        .servers
        .iter()
        .filter_map(|s| {
            s.location
                .as_ref()
                .map(|l| (l.server_id.clone(), l.grpc_addr.clone()))
        })
        .collect();
    // Which server to ask for which volumes.
    let mut plan: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    if args.all {
        for server in status.servers.iter().filter(|s| s.alive) {
            if let Some(location) = &server.location {
                plan.entry(location.server_id.clone()).or_default();
            }
        }
    } else {
        for id in &args.volumes {
            let record = status
                .volumes
                .iter()
                .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == *id))
                .with_context(|| format!("volume {id} is not in the directory"))?;
            // Compaction runs per copy: every copy of a replicated volume.
            let holders: Vec<String> = if record.replicas.is_empty() {
                vec![record.server_id.clone()]
            } else {
                record
                    .replicas
                    .iter()
                    .filter_map(|r| r.location.as_ref().map(|l| l.server_id.clone()))
                    .collect()
            };
            for holder in holders {
                plan.entry(holder).or_default().push(*id);
            }
        }
    }
    let interactive = std::io::stderr().is_terminal();
    let (mut before_total, mut after_total, mut failures) = (0u64, 0u64, 0usize);
    for (server_id, volume_ids) in plan {
        let addr = servers
            .get(&server_id)
            .with_context(|| format!("server {server_id} is not in the directory"))?;
        let mut volume_client = hayloft_proto::Credential::volume_client(addr)
            .await
            .with_context(|| format!("connecting to volume server {server_id} at {addr}"))?;
        let mut stream = volume_client
            .compact(CompactRequest {
                volume_ids,
                all: args.all,
                min_garbage_ratio: args.min_garbage,
                dry_run: args.dry_run,
                bytes_per_sec: args.rate.map_or(0, |r| r.as_u64()),
            })
            .await
            .with_context(|| format!("compacting on {server_id}"))?
            .into_inner();
        let mut bar: Option<(u32, ProgressBar)> = None;
        while let Some(progress) = stream.message().await? {
            if interactive && !args.dry_run && !progress.done {
                let fresh = bar.as_ref().is_none_or(|(id, _)| *id != progress.volume_id);
                if fresh {
                    let new_bar = ProgressBar::new(progress.total_bytes.max(1));
                    new_bar.set_style(
                        ProgressStyle::with_template(
                            "volume {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    new_bar.set_message(progress.volume_id.to_string());
                    bar = Some((progress.volume_id, new_bar));
                }
                if let Some((_, bar)) = &bar {
                    bar.set_position(progress.copied_bytes);
                }
                continue;
            }
            if !progress.done {
                continue;
            }
            if let Some((_, bar)) = bar.take() {
                bar.finish_and_clear();
            }
            if !progress.error.is_empty() {
                failures += 1;
                println!(
                    "volume {:>6} on {server_id}: FAILED: {}",
                    progress.volume_id, progress.error
                );
                continue;
            }
            before_total += progress.bytes_before;
            after_total += progress.bytes_after;
            println!(
                "volume {:>6} on {server_id}: {} -> {} ({} {})",
                progress.volume_id,
                ByteSize(progress.bytes_before),
                ByteSize(progress.bytes_after),
                ByteSize(progress.bytes_before.saturating_sub(progress.bytes_after)),
                if args.dry_run {
                    "reclaimable"
                } else {
                    "reclaimed"
                },
            );
        }
    }
    println!(
        "{} {} in all",
        if args.dry_run {
            "would reclaim"
        } else {
            "reclaimed"
        },
        ByteSize(before_total.saturating_sub(after_total))
    );
    if failures > 0 {
        anyhow::bail!("{failures} volume(s) could not be compacted");
    }
    Ok(())
}
