//! Erasure-coded volumes at the command line: `hayloft tier ec` (seal a
//! writable volume, then the directory's `EncodeVolume`, with its plan and
//! progress), and how `hayloft status` shows a volume's layout and the
//! cluster's effective replication factor.

use std::io::IsTerminal;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;
use hayloft_proto::{
    Directories, EncodePlan, EncodeVolumeRequest, ErasureLayout, SealVolumeRequest,
    SealVolumeResponse, StatusResponse, VolumeRecord,
};
use hayloft_storage::erasure::Code;
use indicatif::{ProgressBar, ProgressStyle};

/// `hayloft tier ec`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct EcArgs {
    /// The volumes to encode, one after the other.
    #[arg(required = true, value_name = "VOLUME")]
    pub volumes: Vec<u32>,
    /// The code, `K+M` (K data shards, M parity shards on K+M distinct
    /// servers; any M may be lost). Default: the directory's `ec_code`, or
    /// the volume's collection's.
    #[arg(long, value_name = "K+M")]
    pub code: Option<Code>,
    /// Largest block of a shard, e.g. "64MiB" (a multiple of 64 KiB).
    /// Default: the volume server's (1 GiB, less for small volumes).
    #[arg(long, value_name = "BYTES")]
    pub max_block: Option<ByteSize>,
    /// Read rate limit on the encoded copy per second, e.g. "100MiB".
    /// Default: unlimited.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub rate: Option<ByteSize>,
    /// Print each volume's plan (holders, zones, warnings, bytes); change
    /// nothing (a writable volume is not sealed).
    #[arg(long)]
    pub dry_run: bool,
}

/// What `hayloft tier ec` did with one volume.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// The volume.
    pub volume: u32,
    /// Sealed by this command (it was writable): the directory's answer.
    pub sealed: Option<SealVolumeResponse>,
    /// The directory's plan.
    pub plan: EncodePlan,
    /// The layout committed (not for a dry run).
    pub layout: Option<ErasureLayout>,
    /// Copies removed.
    pub removed: Vec<String>,
    /// Copies left to be removed when their servers return.
    pub left: Vec<String>,
}

/// `hayloft tier ec`: encodes each volume in turn, going on past one that
/// fails; fails at the end if any did.
pub async fn tier_ec(directory: &str, args: EcArgs) -> anyhow::Result<()> {
    // A seal waits for the copies' writes in flight and for their reports
    // (up to three pulses), longer than the default ten seconds a call.
    let directories = Directories::new(directory)?
        .with_credential(crate::commands::credential()?)?
        .with_call_timeout(std::time::Duration::from_secs(60))?;
    let outcomes = encode_volumes(&directories, &args).await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(volume, outcome)| outcome.as_ref().err().map(|_| volume.to_string()))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} volume(s) not encoded: {}",
            failed.len(),
            outcomes.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Encodes (or plans, with `--dry-run`) each of `args.volumes` in turn,
/// printing as it goes; a volume that fails is reported and the next one
/// goes on.
pub async fn encode_volumes(
    directories: &Directories,
    args: &EcArgs,
) -> Vec<(u32, anyhow::Result<Encoded>)> {
    let mut outcomes = Vec::new();
    for &volume in &args.volumes {
        let outcome = encode_one(directories, args, volume).await;
        if let Err(e) = &outcome {
            println!("volume {volume}: FAILED: {e:#}");
        }
        outcomes.push((volume, outcome));
    }
    outcomes
}

async fn encode_one(
    directories: &Directories,
    args: &EcArgs,
    volume: u32,
) -> anyhow::Result<Encoded> {
    let mut encoded = Encoded {
        volume,
        ..Encoded::default()
    };
    if !args.dry_run {
        let sealed = directories
            .call(|mut directory| async move {
                directory
                    .seal_volume(SealVolumeRequest { volume_id: volume })
                    .await
            })
            .await
            .with_context(|| format!("sealing volume {volume}"))?;
        if !sealed.already_sealed {
            println!(
                "volume {volume}: sealed (copies on {}{})",
                sealed.sealed.join(","),
                if sealed.left.is_empty() {
                    String::new()
                } else {
                    format!("; {} down, told when back", sealed.left.join(","))
                }
            );
            encoded.sealed = Some(sealed);
        }
    }
    let request = EncodeVolumeRequest {
        volume_id: volume,
        code: args.code.map(|c| c.to_string()).unwrap_or_default(),
        dry_run: args.dry_run,
        max_block: args.max_block.map_or(0, |b| b.as_u64()),
        rate: args.rate.map_or(0, |r| r.as_u64()),
    };
    let mut stream = directories
        .call(|mut directory| {
            let request = request.clone();
            async move { directory.encode_volume(request).await }
        })
        .await
        .with_context(|| format!("encoding volume {volume}"))?;
    let mut progress = Progress::new(volume, args.dry_run);
    while let Some(message) = stream
        .message()
        .await
        .with_context(|| format!("encoding volume {volume}"))?
    {
        if let Some(plan) = message.plan {
            print_plan(&plan, args.dry_run);
            encoded.plan = plan;
        }
        if let Some(layout) = message.layout {
            progress.finish();
            encoded.layout = Some(layout);
            encoded.removed = message.removed;
            encoded.left = message.left;
        } else if message.total > 0 {
            progress.show(message.done, message.total);
        }
    }
    progress.finish();
    if args.dry_run {
        return Ok(encoded);
    }
    let layout = encoded
        .layout
        .as_ref()
        .with_context(|| format!("volume {volume}: the encode ended without a layout"))?;
    println!(
        "volume {volume}: EC {} on {}; copies removed: {}; left for later: {}",
        layout.code,
        layout.holders.join(","),
        list_or_none(&encoded.removed),
        list_or_none(&encoded.left),
    );
    Ok(encoded)
}

fn list_or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(",")
    }
}

/// The plan, shard by shard, with its warnings and bytes (of the data file
/// as its server last reported it).
fn print_plan(plan: &EncodePlan, dry_run: bool) {
    let source = plan.source.as_ref().map_or("?", |s| s.server_id.as_str());
    println!(
        "volume {}: {}EC {} from the copy on {source}: {} of data -> {} in shards ({})",
        plan.volume_id,
        if dry_run { "would encode as " } else { "" },
        plan.code,
        ByteSize(plan.logical_bytes),
        ByteSize(plan.stored_bytes),
        factor(plan.stored_bytes, plan.logical_bytes)
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.2}x")),
    );
    for (shard, holder) in plan.holders.iter().enumerate() {
        println!(
            "  shard {shard:>2} -> {:<16} zone {:<10} rack {}",
            holder.server_id,
            crate::commands::site(&holder.zone),
            crate::commands::site(&holder.rack),
        );
    }
    for warning in &plan.warnings {
        println!("  WARNING: {warning}");
    }
    println!(
        "  copies to remove once the layout is recorded: {}",
        list_or_none(&plan.copies)
    );
}

/// An encode's progress: a bar on a terminal, else a line at every
/// quarter.
struct Progress {
    volume: u32,
    bar: Option<ProgressBar>,
    quarter: u64,
    quiet: bool,
}

impl Progress {
    fn new(volume: u32, quiet: bool) -> Progress {
        Progress {
            volume,
            bar: None,
            quarter: 0,
            quiet,
        }
    }

    fn show(&mut self, done: u64, total: u64) {
        if self.quiet {
            return;
        }
        if std::io::stderr().is_terminal() {
            let volume = self.volume;
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "volume {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_message(volume.to_string());
                bar
            });
            bar.set_position(done);
            return;
        }
        let quarter = done.saturating_mul(4) / total.max(1);
        if quarter > self.quarter {
            self.quarter = quarter;
            println!(
                "volume {}: {} of {} of each shard written",
                self.volume,
                ByteSize(done),
                ByteSize(total)
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Bytes stored over logical bytes, if there are any.
pub fn factor(stored: u64, logical: u64) -> Option<f64> {
    (logical > 0).then(|| stored as f64 / logical as f64)
}

/// A volume's layout as `hayloft status` shows it: `3 copies`, `EC 10+4`.
pub fn layout_text(volume: &VolumeRecord) -> String {
    match &volume.erasure {
        Some(erasure) => format!("EC {}", erasure.code),
        None => {
            let copies = volume.replicas.len().max(1);
            format!("{copies} {}", if copies == 1 { "copy" } else { "copies" })
        }
    }
}

/// An erasure-coded volume's shard holders, shard by shard (`vs0,vs3,...`).
pub fn holders(volume: &VolumeRecord) -> Option<Vec<String>> {
    volume.erasure.as_ref().map(|e| {
        e.holders
            .iter()
            .map(|h| h.server_id.clone())
            .collect::<Vec<_>>()
    })
}

/// A volume's `layout` in `hayloft status --json`:
/// `{"kind":"replicated","copies":3}` or `{"kind":"erasure","code":"10+4",
/// "holders":[...],"data_len":...,"stored_bytes":...,"deleted_bytes":...}`
/// (`deleted_bytes`: deleted since the encode, what a re-encode gives back).
pub fn layout_json(volume: &VolumeRecord) -> serde_json::Value {
    match (&volume.erasure, holders(volume)) {
        (Some(erasure), Some(holders)) => serde_json::json!({
            "kind": "erasure",
            "code": erasure.code,
            "holders": holders,
            "data_len": volume.logical_bytes,
            "stored_bytes": volume.stored_bytes,
            "deleted_bytes": volume.deleted_bytes,
        }),
        _ => serde_json::json!({
            "kind": "replicated",
            "copies": volume.replicas.len().max(1),
        }),
    }
}

/// The cluster's effective replication factor (bytes stored / logical
/// bytes), overall and for erasure-coded data, for `status --json`.
pub fn factor_json(status: &StatusResponse) -> serde_json::Value {
    serde_json::json!({
        "factor": factor(status.stored_bytes, status.logical_bytes),
        "stored_bytes": status.stored_bytes,
        "logical_bytes": status.logical_bytes,
        "erasure": {
            "factor": factor(status.erasure_stored_bytes, status.erasure_logical_bytes),
            "stored_bytes": status.erasure_stored_bytes,
            "logical_bytes": status.erasure_logical_bytes,
        },
    })
}

/// The same, as the last lines of `hayloft status`.
pub fn print_factor(status: &StatusResponse) {
    let show = |stored: u64, logical: u64| match factor(stored, logical) {
        Some(f) => format!(
            "{f:.2} ({} stored / {} of data)",
            ByteSize(stored),
            ByteSize(logical)
        ),
        None => "- (no data)".into(),
    };
    println!(
        "effective replication factor: {}",
        show(status.stored_bytes, status.logical_bytes)
    );
    if status.erasure_logical_bytes > 0 {
        println!(
            "  erasure-coded volumes: {}",
            show(status.erasure_stored_bytes, status.erasure_logical_bytes)
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hayloft_proto::{ErasureHolders, Replica, ServerLocation};

    fn location(id: &str) -> ServerLocation {
        ServerLocation {
            server_id: id.into(),
            ..ServerLocation::default()
        }
    }

    #[test]
    fn layouts_read_as_copies_or_a_code_with_its_holders() {
        let replicated = VolumeRecord {
            replicas: ["vs0", "vs1", "vs2"]
                .iter()
                .map(|id| Replica {
                    location: Some(location(id)),
                    ..Replica::default()
                })
                .collect(),
            ..VolumeRecord::default()
        };
        assert_eq!(layout_text(&replicated), "3 copies");
        assert_eq!(
            layout_json(&replicated),
            serde_json::json!({"kind": "replicated", "copies": 3})
        );
        let encoded = VolumeRecord {
            erasure: Some(ErasureHolders {
                volume_id: 7,
                code: "2+1".into(),
                holders: vec![location("vs2"), location("vs0"), location("vs1")],
            }),
            stored_bytes: 3 << 16,
            logical_bytes: 100_000,
            deleted_bytes: 4_000,
            ..VolumeRecord::default()
        };
        assert_eq!(layout_text(&encoded), "EC 2+1");
        assert_eq!(
            layout_json(&encoded),
            serde_json::json!({"kind": "erasure", "code": "2+1",
                "holders": ["vs2", "vs0", "vs1"], "data_len": 100_000, "stored_bytes": 3 << 16,
                "deleted_bytes": 4_000})
        );
        assert_eq!(factor(150, 100), Some(1.5));
        assert_eq!(factor(150, 0), None);
    }
}
