//! `hayloft tier reencode VOLUME...`: erasure-coded volumes encoded again
//! without their deleted needles, so the space comes back (the
//! directory's `ReencodeVolume`), one after the other, with the plan first
//! (`--dry-run`: only the plan) and progress.

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;
use hayloft_proto::{ReencodePlan, ReencodeVolumeProgress, ReencodeVolumeRequest};

/// `hayloft tier reencode` arguments.
#[derive(Args)]
pub struct ReencodeArgs {
    /// The volumes to re-encode.
    #[arg(required = true)]
    volumes: Vec<u32>,
    /// Show what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Bytes a second the target restores and encodes, e.g. "100MiB"
    /// (default: unlimited).
    #[arg(long)]
    rate: Option<ByteSize>,
}

fn print_plan(plan: &ReencodePlan) {
    let holders: Vec<&str> = plan.holders.iter().map(|h| h.server_id.as_str()).collect();
    println!(
        "volume {}: EC {} on {}: {} encoded ({} of shards), {} deleted; rebuilt and compacted on {}",
        plan.volume_id,
        plan.code,
        holders.join(","),
        ByteSize::b(plan.logical_bytes),
        ByteSize::b(plan.stored_bytes),
        ByteSize::b(plan.deleted_bytes),
        plan.target.as_ref().map_or("?", |t| t.server_id.as_str()),
    );
}

fn print_progress(volume: u32, message: &ReencodeVolumeProgress) {
    if message.step == "done" {
        println!(
            "volume {volume}: re-encoded: {} live needles; data file {} -> {}, shards {} -> {}; swapped on {}{}",
            message.needles,
            ByteSize::b(message.logical_before),
            ByteSize::b(message.logical_after),
            ByteSize::b(message.stored_before),
            ByteSize::b(message.stored_after),
            message.swapped.join(","),
            if message.left.is_empty() {
                String::new()
            } else {
                format!("; not yet on {}", message.left.join(","))
            }
        );
    } else if message.total > 0 {
        println!(
            "volume {volume}: {} on {}: {} of {}",
            message.step,
            message.server_id,
            ByteSize::b(message.done),
            ByteSize::b(message.total)
        );
    } else if !message.step.is_empty() && message.plan.is_none() {
        if message.server_id.is_empty() {
            println!("volume {volume}: {}", message.step);
        } else {
            println!("volume {volume}: {} on {}", message.step, message.server_id);
        }
    }
}

/// Re-encodes each volume in turn; fails at the first that fails.
pub async fn reencode(directory: &str, args: ReencodeArgs) -> anyhow::Result<()> {
    let directories = hayloft_proto::Directories::new(directory)?
        .with_credential(crate::commands::credential()?)?;
    for volume in args.volumes {
        let request = ReencodeVolumeRequest {
            volume_id: volume,
            dry_run: args.dry_run,
            rate: args.rate.map_or(0, |r| r.as_u64()),
        };
        let mut stream = directories
            .call(|mut directory| async move { directory.reencode_volume(request).await })
            .await
            .with_context(|| format!("re-encoding volume {volume}"))?;
        while let Some(message) = stream
            .message()
            .await
            .with_context(|| format!("re-encoding volume {volume}"))?
        {
            if let Some(plan) = &message.plan {
                print_plan(plan);
            }
            print_progress(volume, &message);
        }
    }
    Ok(())
}
