//! `hayloft status --capacity`: bytes per tier, growth over the last day and
//! week from the directory's history, when each local tier fills at that
//! rate, and the monthly storage cost per tier; with several regions, the
//! bytes shipped in from each (their egress), per day, and its monthly cost
//! at the policy's `egress` price ($ per GB).

use std::collections::{BTreeMap, BTreeSet};

use bytesize::ByteSize;
use hayloft_proto::CapacitySample;
use hayloft_tiering::Policy;

const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

/// One tier (or cold storage class) of the capacity report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TierCapacity {
    /// `hot`, `warm`, or a storage class.
    pub tier: String,
    /// Bytes used now.
    pub used_bytes: u64,
    /// Bytes free now (local tiers).
    pub free_bytes: Option<u64>,
    /// Growth per day, from the last day of history (extrapolated from a
    /// shorter history if that is all there is).
    pub growth_per_day: Option<f64>,
    /// Growth per week, from the last week of history (likewise).
    pub growth_per_week: Option<f64>,
    /// Days until the free space is used up at the daily rate.
    pub full_in_days: Option<f64>,
    /// Monthly cost at the policy's price.
    pub monthly_cost: Option<f64>,
}

/// Bytes this region's copies fetched from another region: that region's
/// egress, what replication between regions costs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Shipped {
    /// The other region.
    pub region: String,
    /// Bytes fetched from it so far (as the directory counted them).
    pub total_bytes: u64,
    /// Bytes a day, from the last day of history (extrapolated from a
    /// shorter one).
    pub per_day: Option<f64>,
    /// A month (30 days) at that rate, at the policy's `egress` price ($
    /// per GB).
    pub monthly_cost: Option<f64>,
}

/// The report; `history_seconds` is the span of history it is based on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CapacityReport {
    /// Seconds between the oldest and newest sample.
    pub history_seconds: u64,
    /// Per tier.
    pub tiers: Vec<TierCapacity>,
    /// Per other region this one keeps copies from (none for a region
    /// alone).
    pub shipped: Vec<Shipped>,
}

/// Growth of `key` per `period` seconds, from the oldest sample within
/// `period` of the newest one (scaled when the history is shorter).
fn growth(samples: &[CapacitySample], key: &str, period: u64) -> Option<f64> {
    growth_of(samples, period, |s| s.used_bytes.get(key).copied())
}

/// Growth of the figure `of` takes from a sample per `period` seconds, as
/// [`growth`].
fn growth_of(
    samples: &[CapacitySample],
    period: u64,
    of: impl Fn(&CapacitySample) -> Option<u64>,
) -> Option<f64> {
    let now = samples.last()?;
    let then = samples
        .iter()
        .find(|s| s.at + period >= now.at && s.at < now.at)?;
    let span = (now.at - then.at) as f64;
    let value = |s: &CapacitySample| of(s).unwrap_or(0) as f64;
    Some((value(now) - value(then)) / span * period as f64)
}

/// Builds the report from the history (oldest first, the last sample being now).
pub fn report(samples: &[CapacitySample], policy: &Policy) -> CapacityReport {
    let Some(now) = samples.last() else {
        return CapacityReport {
            history_seconds: 0,
            tiers: Vec::new(),
            shipped: Vec::new(),
        };
    };
    let keys: BTreeSet<&String> = samples.iter().flat_map(|s| s.used_bytes.keys()).collect();
    let tiers = keys
        .into_iter()
        .map(|key| {
            let used = now.used_bytes.get(key).copied().unwrap_or(0);
            let free = now.free_bytes.get(key).copied();
            let per_day = growth(samples, key, DAY);
            let full_in_days = match (free, per_day) {
                (Some(free), Some(rate)) if rate > 0.0 => Some(free as f64 / rate),
                _ => None,
            };
            TierCapacity {
                tier: key.clone(),
                used_bytes: used,
                free_bytes: free,
                growth_per_day: per_day,
                growth_per_week: growth(samples, key, WEEK),
                full_in_days,
                monthly_cost: policy.price(key).map(|p| used as f64 / 1e9 * p),
            }
        })
        .collect();
    let regions: BTreeSet<&String> = samples
        .iter()
        .flat_map(|s| s.shipped_bytes.keys())
        .collect();
    let shipped = regions
        .into_iter()
        .map(|region| {
            let per_day = growth_of(samples, DAY, |s| s.shipped_bytes.get(region).copied())
                .map(|rate| rate.max(0.0));
            Shipped {
                region: region.clone(),
                total_bytes: now.shipped_bytes.get(region).copied().unwrap_or(0),
                per_day,
                monthly_cost: per_day
                    .zip(policy.price("egress"))
                    .map(|(rate, price)| rate * 30.0 / 1e9 * price),
            }
        })
        .collect();
    CapacityReport {
        history_seconds: now.at - samples[0].at,
        tiers,
        shipped,
    }
}

fn signed_bytes(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 0.0 => format!("-{}", ByteSize(-v as u64)),
        Some(v) => format!("+{}", ByteSize(v as u64)),
    }
}

/// Prints the report as a table.
pub fn print(report: &CapacityReport) {
    println!(
        "CAPACITY (history: {})",
        humantime_serde::re::humantime::format_duration(std::time::Duration::from_secs(
            report.history_seconds
        ))
    );
    println!(
        "{:<14} {:>12} {:>12} {:>13} {:>13} {:>14} {:>10}",
        "TIER/CLASS", "USED", "FREE", "GROWTH/DAY", "GROWTH/WEEK", "FULL IN", "$/MONTH"
    );
    let mut total = 0.0;
    let mut priced = BTreeMap::new();
    for tier in &report.tiers {
        if let Some(cost) = tier.monthly_cost {
            total += cost;
            priced.insert(&tier.tier, cost);
        }
        println!(
            "{:<14} {:>12} {:>12} {:>13} {:>13} {:>14} {:>10}",
            tier.tier,
            ByteSize(tier.used_bytes).to_string(),
            tier.free_bytes
                .map_or("-".into(), |f| ByteSize(f).to_string()),
            signed_bytes(tier.growth_per_day),
            signed_bytes(tier.growth_per_week),
            match (tier.free_bytes, tier.full_in_days) {
                (None, _) => "-".to_owned(),
                (Some(_), None) => "not growing".to_owned(),
                (Some(_), Some(days)) => format!("{days:.1} days"),
            },
            tier.monthly_cost
                .map_or("no price".into(), |c| format!("{c:.2}")),
        );
    }
    println!("{:<14} {:>90.2}", "total $/month", total);
    if !report.shipped.is_empty() {
        println!();
        println!(
            "{:<14} {:>12} {:>13} {:>14} {:>10}",
            "SHIPPED FROM", "SO FAR", "PER DAY", "PER MONTH", "$/MONTH"
        );
        for shipped in &report.shipped {
            let per = |days: f64| {
                shipped
                    .per_day
                    .map_or("-".to_owned(), |r| ByteSize((r * days) as u64).to_string())
            };
            println!(
                "{:<14} {:>12} {:>13} {:>14} {:>10}",
                shipped.region,
                ByteSize(shipped.total_bytes).to_string(),
                per(1.0),
                per(30.0),
                shipped
                    .monthly_cost
                    .map_or("no price".into(), |c| format!("{c:.2}")),
            );
        }
        println!(
            "(bytes this region fetched from each other region: their egress, at the policy's egress price)"
        );
    }
    if report.history_seconds < DAY {
        println!("(less than a day of history: growth is extrapolated from what there is)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, hot: u64, glacier: u64, free_hot: u64) -> CapacitySample {
        CapacitySample {
            at,
            used_bytes: [("hot".to_owned(), hot), ("GLACIER".to_owned(), glacier)]
                .into_iter()
                .collect(),
            free_bytes: [("hot".to_owned(), free_hot)].into_iter().collect(),
            shipped_bytes: [("eu".to_owned(), at * 10)].into_iter().collect(),
        }
    }

    #[test]
    fn growth_forecast_and_cost() {
        let policy = Policy::parse("[prices]\nhot = 0.1\nGLACIER = 0.004\n").unwrap();
        // Ten days of history: hot grows 1 GB a day, glacier 7 GB a week.
        let samples: Vec<_> = (0..=10)
            .map(|d| {
                sample(
                    d * DAY,
                    d * 1_000_000_000,
                    d * 1_000_000_000,
                    100_000_000_000 - d * 1_000_000_000,
                )
            })
            .collect();
        let report = report(&samples, &policy);
        assert_eq!(report.history_seconds, 10 * DAY);
        let hot = report.tiers.iter().find(|t| t.tier == "hot").unwrap();
        assert!((hot.growth_per_day.unwrap() - 1e9).abs() < 1.0);
        assert!((hot.growth_per_week.unwrap() - 7e9).abs() < 1.0);
        assert!((hot.full_in_days.unwrap() - 90.0).abs() < 1e-6);
        assert!((hot.monthly_cost.unwrap() - 1.0).abs() < 1e-9);
        let glacier = report.tiers.iter().find(|t| t.tier == "GLACIER").unwrap();
        assert_eq!(glacier.free_bytes, None);
        assert_eq!(glacier.full_in_days, None);
        assert!((glacier.monthly_cost.unwrap() - 0.04).abs() < 1e-9);
        // 10 bytes a second from eu: 864,000 a day; no egress price.
        assert_eq!(report.shipped.len(), 1);
        let eu = &report.shipped[0];
        assert_eq!((eu.region.as_str(), eu.total_bytes), ("eu", 10 * DAY * 10));
        assert!((eu.per_day.unwrap() - 864_000.0).abs() < 1e-6);
        assert_eq!(eu.monthly_cost, None);
        let priced = Policy::parse("[prices]\negress = 0.02\n").unwrap();
        let cost = super::report(&samples, &priced).shipped[0]
            .monthly_cost
            .unwrap();
        assert!((cost - 864_000.0 * 30.0 / 1e9 * 0.02).abs() < 1e-12);
    }

    #[test]
    fn short_history_is_extrapolated_and_a_single_sample_has_no_growth() {
        let policy = Policy::default();
        let samples = vec![
            sample(1000, 0, 0, 10_000),
            sample(1000 + 3600, 100, 0, 9_900),
        ];
        let report = report(&samples, &policy);
        let hot = report.tiers.iter().find(|t| t.tier == "hot").unwrap();
        assert!((hot.growth_per_day.unwrap() - 2400.0).abs() < 1e-6);
        assert_eq!(hot.monthly_cost, None);
        let single = super::report(&samples[..1], &policy);
        assert_eq!(single.tiers[0].growth_per_day, None);
    }
}
