//! `hayloft status --capacity`: bytes per tier, growth over the last day and
//! week from the directory's history, when each local tier fills at that
//! rate, and the monthly storage cost per tier.

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

/// The report; `history_seconds` is the span of history it is based on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CapacityReport {
    /// Seconds between the oldest and newest sample.
    pub history_seconds: u64,
    /// Per tier.
    pub tiers: Vec<TierCapacity>,
}

/// Growth of `key` per `period` seconds, from the oldest sample within
/// `period` of the newest one (scaled when the history is shorter).
fn growth(samples: &[CapacitySample], key: &str, period: u64) -> Option<f64> {
    let now = samples.last()?;
    let then = samples
        .iter()
        .find(|s| s.at + period >= now.at && s.at < now.at)?;
    let span = (now.at - then.at) as f64;
    let used = |s: &CapacitySample| s.used_bytes.get(key).copied().unwrap_or(0) as f64;
    Some((used(now) - used(then)) / span * period as f64)
}

/// Builds the report from the history (oldest first, the last sample being now).
pub fn report(samples: &[CapacitySample], policy: &Policy) -> CapacityReport {
    let Some(now) = samples.last() else {
        return CapacityReport {
            history_seconds: 0,
            tiers: Vec::new(),
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
    CapacityReport {
        history_seconds: now.at - samples[0].at,
        tiers,
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
