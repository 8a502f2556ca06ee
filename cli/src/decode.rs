//! `hayloft tier decode VOLUME...`: erasure-coded volumes turned back into
//! replicated volumes (the directory's `DecodeVolume`), one after the
//! other, with the plan first (`--dry-run`: only the plan) and progress.
//! [`to_cold`]: `hayloft tier move --to cold` of an erasure-coded volume
//! (`DecodeVolume` with a cold bucket: one object, cold copies of it).

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;
use hayloft_proto::{DecodePlan, DecodeVolumeProgress, DecodeVolumeRequest};

/// `hayloft tier decode` arguments.
#[derive(Args)]
pub struct DecodeArgs {
    /// The volumes to decode.
    #[arg(required = true)]
    volumes: Vec<u32>,
    /// Show where the copies would go; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Bytes a second each new copy restores, e.g. "100MiB" (default:
    /// unlimited).
    #[arg(long)]
    rate: Option<ByteSize>,
}

fn print_plan(plan: &DecodePlan) {
    let targets: Vec<&str> = plan.targets.iter().map(|t| t.server_id.as_str()).collect();
    let holders: Vec<&str> = plan.holders.iter().map(|h| h.server_id.as_str()).collect();
    if !plan.cold_bucket.is_empty() {
        println!(
            "volume {}: EC {} on {} -> cold: one object in s3://{} ({}, {}) uploaded from {}; cold copies on {}",
            plan.volume_id,
            plan.code,
            holders.join(","),
            plan.cold_bucket,
            plan.cold_storage_class,
            ByteSize::b(plan.logical_bytes),
            targets.first().copied().unwrap_or("?"),
            targets.join(","),
        );
    } else {
        println!(
            "volume {}: EC {} on {} -> {} copies on {} ({})",
            plan.volume_id,
            plan.code,
            holders.join(","),
            targets.len(),
            targets.join(","),
            ByteSize::b(plan.logical_bytes),
        );
    }
    if !plan.holders_down.is_empty() {
        println!(
            "  holders down (their shards restored from parity, dropped when they return): {}",
            plan.holders_down.join(",")
        );
    }
    for warning in &plan.warnings {
        println!("  warning: {warning}");
    }
}

fn print_progress(volume: u32, message: &DecodeVolumeProgress) {
    if !message.cold_object.is_empty() {
        println!(
            "volume {volume}: cold: one object s3://{}, {} live needles, {} deleted; cold copies on {}; shards dropped on {}{}",
            message.cold_object,
            message.needles,
            message.deleted,
            message.replicas.join(","),
            if message.dropped.is_empty() {
                "none".to_owned()
            } else {
                message.dropped.join(",")
            },
            if message.left.is_empty() {
                String::new()
            } else {
                format!("; left on {} (down)", message.left.join(","))
            }
        );
    } else if !message.replicas.is_empty() {
        println!(
            "volume {volume}: decoded: {} live needles, {} deleted; copies on {}; shards dropped on {}{}",
            message.needles,
            message.deleted,
            message.replicas.join(","),
            if message.dropped.is_empty() {
                "none".to_owned()
            } else {
                message.dropped.join(",")
            },
            if message.left.is_empty() {
                String::new()
            } else {
                format!("; left on {} (down)", message.left.join(","))
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
        println!("volume {volume}: {}", message.step);
    }
}

/// Decodes each volume in turn; fails at the first that fails.
pub async fn decode(directory: &str, args: DecodeArgs) -> anyhow::Result<()> {
    for volume in args.volumes {
        let request = DecodeVolumeRequest {
            volume_id: volume,
            dry_run: args.dry_run,
            rate: args.rate.map_or(0, |r| r.as_u64()),
            ..DecodeVolumeRequest::default()
        };
        run(directory, request).await?;
    }
    Ok(())
}

/// Moves the erasure-coded `volume` to the cold tier (`hayloft tier move
/// --to cold`): the data file rebuilt from the shards on one server and
/// uploaded as one object into `bucket` (under `prefix`, class
/// `storage_class`), the volume's copies cold copies of it, then the
/// shards dropped. Prints the plan, the progress and the outcome.
pub async fn to_cold(
    directory: &str,
    volume: u32,
    (bucket, prefix, storage_class): (&str, &str, &str),
    rate: u64,
) -> anyhow::Result<()> {
    if bucket.is_empty() {
        anyhow::bail!("a move to cold needs --bucket");
    }
    run(
        directory,
        DecodeVolumeRequest {
            volume_id: volume,
            dry_run: false,
            rate,
            cold_bucket: bucket.to_owned(),
            cold_prefix: prefix.to_owned(),
            cold_storage_class: storage_class.to_owned(),
        },
    )
    .await
}

/// Runs one `DecodeVolume`, printing its messages.
async fn run(directory: &str, request: DecodeVolumeRequest) -> anyhow::Result<()> {
    let directories = hayloft_proto::Directories::new(directory)?
        .with_credential(crate::commands::credential()?)?;
    let volume = request.volume_id;
    let mut stream = directories
        .call(|mut directory| {
            let request = request.clone();
            async move { directory.decode_volume(request).await }
        })
        .await
        .with_context(|| format!("decoding volume {volume}"))?;
    while let Some(message) = stream
        .message()
        .await
        .with_context(|| format!("decoding volume {volume}"))?
    {
        if let Some(plan) = &message.plan {
            print_plan(plan);
        }
        print_progress(volume, &message);
    }
    Ok(())
}
