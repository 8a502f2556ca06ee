//! `hayloft repair`: what the directory would repair now, or repair it now
//! (without waiting for `repair_after`) and follow until every volume has
//! all its copies.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hayloft_proto::{RepairRequest, RepairResponse, VolumeHealth};
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::Connection;

/// `hayloft repair` arguments.
#[derive(Args)]
pub struct RepairArgs {
    /// Say what would be repaired; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start the repairs and return without waiting for them.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this long, e.g. "1h".
    #[arg(long, default_value = "1h")]
    timeout: humantime_serde::re::humantime::Duration,
    #[command(flatten)]
    connection: Connection,
}

fn print_plan(plan: &RepairResponse) {
    for repair in &plan.repairs {
        let what = if repair.adds {
            format!("new copy on {} (the volume has too few)", repair.target)
        } else if repair.replaces.is_empty() {
            format!("catch up the copy on {}", repair.target)
        } else {
            format!(
                "new copy on {} in place of the one on {}",
                repair.target, repair.replaces
            )
        };
        let from = if repair.sources.is_empty() {
            String::new()
        } else {
            format!(", from {}", repair.sources.join(","))
        };
        let running = if repair.running {
            let started = std::time::UNIX_EPOCH + std::time::Duration::from_secs(repair.started_at);
            format!(
                " (running since {})",
                humantime_serde::re::humantime::format_rfc3339_seconds(started)
            )
        } else {
            String::new()
        };
        println!("volume {:>6}: {what}{from}{running}", repair.volume_id);
    }
    for volume in &plan.stuck {
        println!("volume {volume:>6}: no healthy copy to copy from; waiting for one to return");
    }
}

/// `hayloft repair`: repairs degraded volumes now (or says what it would do).
pub async fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let addr = &args.connection.directory;
    let directory =
        hayloft_proto::Directories::new(addr)?.with_credential(crate::commands::credential()?)?;
    let dry_run = args.dry_run;
    let plan = directory
        .call(|mut directory| async move { directory.repair(RepairRequest { dry_run }).await })
        .await
        .with_context(|| format!("asking the directory at {addr} for repairs"))?;
    print_plan(&plan);
    if args.dry_run {
        println!(
            "{} degraded volumes; would repair {} now",
            plan.degraded,
            plan.repairs.iter().filter(|r| !r.running).count()
        );
        return Ok(());
    }
    if plan.degraded == 0 {
        println!("every volume has all its copies");
        return Ok(());
    }
    if args.no_wait {
        println!("repairs started");
        return Ok(());
    }
    let client = args.connection.client().await?;
    let started = Instant::now();
    let total = u64::from(plan.degraded);
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} volumes whole {elapsed}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let stuck = plan.stuck.len() as u64;
    loop {
        let status = client.status().await?;
        let degraded = status
            .volumes
            .iter()
            .filter(|v| v.health != VolumeHealth::Ok as i32)
            .count() as u64;
        bar.set_position(total.saturating_sub(degraded));
        if degraded <= stuck {
            bar.finish_and_clear();
            println!(
                "repaired {} volumes in {:.1} s; {degraded} still degraded",
                total.saturating_sub(degraded),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from(args.timeout),
            "{degraded} volumes still degraded after {}",
            args.timeout
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
