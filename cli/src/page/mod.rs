//! The operator page: one server-rendered HTML page (inline SVG chart, no
//! script, no build step) on the directory's metrics address, `GET /`.
//!
//! It shows what `hayloft status --json` and `hayloft status --capacity
//! --json` say, built from the same functions, so the page and the CLI never
//! disagree: servers (alive, zone, free space), volumes by tier and state and
//! their health, work in progress (compactions, tier moves, repairs) with its
//! progress, problems, and capacity per tier over time with the growth
//! forecast and the days until each local tier is full; with several
//! regions, each region's reachability and replication lag both ways.
//! Every figure also sits in a `data-*` attribute, for tests and scrapers.
//! The page reloads itself every 30 seconds.

pub mod access;
mod regions;

use std::collections::BTreeMap;

use bytesize::ByteSize;
use hayloft_proto::CapacitySample;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use crate::capacity::{CapacityReport, TierCapacity};

/// Volume states in the order the page lists them.
const STATES: [&str; 6] = [
    "writable",
    "paused",
    "sealed",
    "moving",
    "cold",
    "restoring",
];

/// Chart size in SVG units, and its margins (left: room for the labels).
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 30.0;
const LEFT: f64 = 80.0;

/// Colours of the chart's series.
fn colour(tier: &str) -> &'static str {
    match tier {
        "hot" => "#d9480f",
        "warm" => "#e8a200",
        "STANDARD" => "#1971c2",
        "GLACIER" | "GLACIER_IR" => "#0c8599",
        "DEEP_ARCHIVE" => "#5f3dc4",
        _ => "#495057",
    }
}

fn bytes(n: u64) -> String {
    ByteSize(n).to_string()
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

fn u64_of(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_default()
}

/// Volume counts by `(tier, state)`, from `status --json`.
pub fn volume_counts(status: &Value) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for volume in status["volumes"].as_array().into_iter().flatten() {
        let key = (
            str_of(volume, "tier").to_owned(),
            str_of(volume, "state").to_owned(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// The whole page, from `status --json` and the capacity report and
/// history behind `status --capacity --json`.
pub fn render(
    status: &Value,
    capacity: &CapacityReport,
    samples: &[CapacitySample],
    now: u64,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("hayloft", 30))
            body data-generated-at=(now) {
                h1 { "hayloft" }
                p.sub { "Cluster status, " (format_time(now)) " UTC. Reloads every 30 s. Same figures as "
                    code { "hayloft status --json" } " and " code { "hayloft status --capacity --json" } "." }
                (problems(status))
                (regions::section(status))
                (servers(status))
                (volumes(status))
                (work(status))
                (capacity_section(capacity, samples))
            }
        }
    }
}

/// Asks the directory for its status and capacity history, presenting
/// `credential`, and renders the page (or, if it cannot be asked, a page
/// saying why). The directory's refusal of the credential is the page's:
/// 401 for none or an invalid one, 403 for one without `admin`.
pub async fn serve(
    directory: &str,
    credential: hayloft_proto::Credential,
) -> (axum::http::StatusCode, axum::response::Html<String>) {
    use axum::http::StatusCode;
    let page = match gather(directory, credential).await {
        Ok((status, samples, regions)) => match crate::tier::load_policy(None) {
            // The built-in policy's prices (its parsing is tested).
            Ok(policy) => {
                let report = crate::capacity::report(&samples, &policy);
                let now = hayloft_storage::volume::unix_now();
                let mut json = crate::commands::status_json(&status);
                json["regions"] = crate::regions::json(&regions);
                render(&json, &report, &samples, now)
            }
            Err(e) => unavailable(&format!("{e:#}")),
        },
        Err(refused) if refused.code() == tonic::Code::Unauthenticated => {
            return (StatusCode::UNAUTHORIZED, access::asks(refused.message()));
        }
        Err(refused) if refused.code() == tonic::Code::PermissionDenied => {
            return (StatusCode::FORBIDDEN, access::asks(refused.message()));
        }
        Err(e) => unavailable(e.message()),
    };
    (StatusCode::OK, axum::response::Html(page.into_string()))
}

/// What the page shows, as the directory answers.
type Gathered = (
    hayloft_proto::StatusResponse,
    Vec<CapacitySample>,
    Vec<hayloft_proto::RegionStatus>,
);

/// The directory's status, the capacity history of the last
/// [`crate::commands::CAPACITY_HISTORY`] (what `status --capacity` reads)
/// and the regions, each other one probed (what `status` shows).
async fn gather(
    directory: &str,
    credential: hayloft_proto::Credential,
) -> Result<Gathered, tonic::Status> {
    let directory =
        hayloft_proto::Directories::new(directory).and_then(|d| d.with_credential(credential))?;
    let status = directory
        .call(|mut d| async move { d.status(hayloft_proto::StatusRequest {}).await })
        .await?;
    let since = hayloft_storage::volume::unix_now()
        .saturating_sub(crate::commands::CAPACITY_HISTORY.as_secs());
    let samples = directory
        .call(|mut d| async move { d.capacity(hayloft_proto::CapacityRequest { since }).await })
        .await?
        .samples;
    let regions = crate::regions::fetch(&directory).await?;
    Ok((status, samples, regions))
}

/// The page when the directory cannot be asked.
pub fn unavailable(reason: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("hayloft: directory unavailable", 5))
            body {
                h1 { "hayloft" }
                p.problem id="unavailable" { "The directory did not answer: " (reason) }
            }
        }
    }
}

/// The page's head: its title, its style, and a reload every `refresh`
/// seconds.
pub(crate) fn head(title: &str, refresh: u32) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta http-equiv="refresh" content=(refresh);
            title { (title) }
            style { (PreEscaped(STYLE)) }
        }
    }
}

fn problems(status: &Value) -> Markup {
    let problems: Vec<&str> = status["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    html! {
        section id="problems" data-count=(problems.len()) {
            @if problems.is_empty() {
                p.ok { "No problems." }
            } @else {
                h2 { "Problems" }
                ul {
                    @for problem in &problems { li.problem { (problem) } }
                }
            }
        }
    }
}

fn servers(status: &Value) -> Markup {
    let servers = status["servers"].as_array().cloned().unwrap_or_default();
    html! {
        section id="servers" {
            h2 { "Volume servers" }
            table {
                thead { tr { th { "id" } th { "zone" } th { "rack" } th { "alive" }
                    th.num { "free hot" } th.num { "free warm" } } }
                tbody {
                    @for server in &servers {
                        @let alive = server["alive"].as_bool().unwrap_or(false);
                        tr.server data-server=(str_of(server, "id")) data-alive=(alive)
                            data-free-hot=(u64_of(server, "free_hot_bytes"))
                            data-free-warm=(u64_of(server, "free_warm_bytes")) {
                            td { (str_of(server, "id")) }
                            td { (str_of(server, "zone")) }
                            td { (str_of(server, "rack")) }
                            td class=(if alive { "ok" } else { "problem" }) { (if alive { "yes" } else { "NO" }) }
                            td.num { (bytes(u64_of(server, "free_hot_bytes"))) }
                            td.num { (bytes(u64_of(server, "free_warm_bytes"))) }
                        }
                    }
                }
            }
        }
    }
}

fn volumes(status: &Value) -> Markup {
    let counts = volume_counts(status);
    let tiers: Vec<&str> = ["hot", "warm", "cold"]
        .into_iter()
        .filter(|t| counts.keys().any(|(tier, _)| tier == t))
        .collect();
    let mut health: BTreeMap<String, u64> = BTreeMap::new();
    for volume in status["volumes"].as_array().into_iter().flatten() {
        *health
            .entry(str_of(volume, "health").to_owned())
            .or_default() += 1;
    }
    html! {
        section id="volumes" data-total=(counts.values().sum::<u64>()) {
            h2 { "Volumes" }
            table {
                thead { tr { th { "tier" } @for state in STATES { th.num { (state) } } } }
                tbody {
                    @for tier in &tiers {
                        tr {
                            td { (tier) }
                            @for state in STATES {
                                @let n = counts.get(&((*tier).to_owned(), state.to_owned())).copied().unwrap_or(0);
                                td.num.count data-tier=(tier) data-state=(state) data-count=(n) { (n) }
                            }
                        }
                    }
                }
            }
            p {
                "Health: "
                @for (name, n) in &health {
                    span.health data-health=(name) data-count=(n)
                        class=(if name == "ok" { "ok" } else { "problem" }) { (n) " " (name) }
                    " "
                }
                "(replication " (u64_of(status, "replication")) ")"
            }
        }
    }
}

fn work(status: &Value) -> Markup {
    let volumes = status["volumes"].as_array().cloned().unwrap_or_default();
    let compacting: Vec<&Value> = volumes
        .iter()
        .filter(|v| v["compacting"].as_bool() == Some(true))
        .collect();
    let moving: Vec<&Value> = volumes
        .iter()
        .filter(|v| matches!(str_of(v, "state"), "moving" | "restoring"))
        .collect();
    let repairing: Vec<&Value> = volumes
        .iter()
        .filter(|v| str_of(v, "health") == "repairing")
        .collect();
    let percent = |fraction: f64| (fraction * 100.0).floor().clamp(0.0, 99.0) as u64;
    html! {
        section id="work" data-running=(compacting.len() + moving.len() + repairing.len()) {
            h2 { "Work in progress" }
            @if compacting.is_empty() && moving.is_empty() && repairing.is_empty() {
                p { "Nothing running." }
            } @else {
                table {
                    thead { tr { th { "what" } th { "volume" } th { "progress" } } }
                    tbody {
                        @for v in &compacting {
                            @let p = percent(v["compaction_progress"].as_f64().unwrap_or(0.0));
                            tr.job data-kind="compaction" data-volume=(u64_of(v, "id")) data-percent=(p) {
                                td { "compaction" } td { (u64_of(v, "id")) } td { (progress_bar(p)) }
                            }
                        }
                        @for v in &moving {
                            tr.job data-kind="tier-move" data-volume=(u64_of(v, "id")) {
                                td { (str_of(v, "state")) " (" (str_of(v, "tier")) ")" }
                                td { (u64_of(v, "id")) }
                                td { "under way" }
                            }
                        }
                        @for v in &repairing {
                            @let p = percent(v["repair_progress"].as_f64().unwrap_or(0.0));
                            tr.job data-kind="repair" data-volume=(u64_of(v, "id")) data-percent=(p) {
                                td { "repair onto " (str_of(v, "repair_target")) }
                                td { (u64_of(v, "id")) }
                                td { (progress_bar(p)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn progress_bar(percent: u64) -> Markup {
    html! {
        svg.bar width="120" height="12" viewBox="0 0 100 10" {
            rect width="100" height="10" fill="#e9ecef" {}
            rect width=(percent) height="10" fill="#1971c2" {}
        }
        " " (percent) "%"
    }
}

fn capacity_section(report: &CapacityReport, samples: &[CapacitySample]) -> Markup {
    html! {
        section id="capacity" data-history-seconds=(report.history_seconds) {
            h2 { "Capacity" }
            (chart(report, samples))
            table {
                thead { tr { th { "tier / class" } th.num { "used" } th.num { "free" }
                    th.num { "growth / day" } th.num { "full in" } } }
                tbody {
                    @for tier in &report.tiers {
                        tr.tier data-tier=(tier.tier) data-used=(tier.used_bytes)
                            data-free=[tier.free_bytes]
                            data-full-in-days=[tier.full_in_days.map(|d| format!("{d:.1}"))] {
                            td { span.swatch style={ "background:" (colour(&tier.tier)) } {} " " (tier.tier) }
                            td.num { (bytes(tier.used_bytes)) }
                            td.num { (tier.free_bytes.map_or("-".to_owned(), bytes)) }
                            td.num { (tier.growth_per_day.map_or("-".to_owned(), signed_bytes)) }
                            td.num {
                                @match (tier.free_bytes, tier.full_in_days) {
                                    (None, _) => "-",
                                    (Some(_), None) => "not growing",
                                    (Some(_), Some(days)) => (format!("{days:.1} days")),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn signed_bytes(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", ByteSize(-v as u64))
    } else {
        format!("+{}", ByteSize(v as u64))
    }
}

/// Used bytes per tier over the history with a dot at now, the forecast at
/// the daily growth rate as a dashed line running on past now for half the
/// span shown, and each local tier's capacity (used and free now) as a
/// dotted line when it is within sight of the data (otherwise the legend
/// gives it: a fresh disk would flatten every other line).
fn chart(report: &CapacityReport, samples: &[CapacitySample]) -> Markup {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return html! { p id="no-history" { "No capacity history yet." } };
    };
    let start = first.at as f64;
    let now = last.at as f64;
    let ahead = ((now - start) / 2.0).max(3600.0);
    let end = now + ahead;
    let forecast = |tier: &TierCapacity| {
        tier.growth_per_day
            .map(|rate| (tier.used_bytes as f64 + rate * ahead / 86_400.0).max(0.0))
    };
    let data_top = report
        .tiers
        .iter()
        .flat_map(|t| [Some(t.used_bytes as f64), forecast(t)])
        .flatten()
        .chain(
            samples
                .iter()
                .flat_map(|s| s.used_bytes.values().map(|&v| v as f64)),
        )
        .fold(1.0_f64, f64::max);
    // Capacity lines (one per distinct value: tiers sharing a disk share one).
    let mut full: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for tier in &report.tiers {
        if let Some(free) = tier.free_bytes {
            full.entry(free + tier.used_bytes)
                .or_default()
                .push(&tier.tier);
        }
    }
    let in_sight = |bytes: u64| (bytes as f64) <= data_top * 4.0;
    let top = full
        .keys()
        .filter(|&&b| in_sight(b))
        .map(|&b| b as f64)
        .fold(data_top, f64::max)
        * 1.1;
    let (left, right) = (LEFT, WIDTH - MARGIN);
    let (high, low) = (MARGIN, HEIGHT - MARGIN);
    let x = |t: f64| left + (t - start) / (end - start).max(1.0) * (right - left);
    let y = |v: f64| low - v / top * (low - high);
    html! {
        svg id="capacity-chart" width=(WIDTH) height=(HEIGHT)
            viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label="capacity per tier over time" {
            rect x="0" y="0" width=(WIDTH) height=(HEIGHT) fill="#fff" {}
            line x1=(left) y1=(low) x2=(right) y2=(low) stroke="#868e96" {}
            line x1=(left) y1=(high) x2=(left) y2=(low) stroke="#868e96" {}
            text x=(left - 4.0) y=(high + 4.0) font-size="11" text-anchor="end" { (bytes(top as u64)) }
            text x=(left - 4.0) y=(low + 4.0) font-size="11" text-anchor="end" { "0" }
            line.now x1=(x(now)) y1=(high) x2=(x(now)) y2=(low) stroke="#adb5bd" stroke-dasharray="2 3" {}
            text x=(x(now) + 3.0) y=(high - 6.0) font-size="11" { "now" }
            text x=(left) y=(low + 16.0) font-size="11" { (format_time(first.at)) }
            text x=(right) y=(low + 16.0) font-size="11" text-anchor="end" { "+" (format_span(ahead)) }
            @for (bytes_full, tiers) in &full {
                @if in_sight(*bytes_full) {
                    line.full data-tier=(tiers.join(" ")) x1=(left) y1=(y(*bytes_full as f64))
                        x2=(right) y2=(y(*bytes_full as f64))
                        stroke=(colour(tiers[0])) stroke-dasharray="1 3" {}
                    text x=(right) y=(y(*bytes_full as f64) - 3.0) font-size="10" text-anchor="end"
                        fill=(colour(tiers[0])) { (tiers.join(", ")) " full" }
                }
            }
            @for tier in &report.tiers {
                @let points: Vec<String> = samples.iter()
                    .map(|s| format!("{:.1},{:.1}", x(s.at as f64), y(s.used_bytes.get(&tier.tier).copied().unwrap_or(0) as f64)))
                    .collect();
                polyline.used data-tier=(tier.tier) points=(points.join(" "))
                    fill="none" stroke=(colour(&tier.tier)) stroke-width="2" {}
                circle cx=(x(now)) cy=(y(tier.used_bytes as f64)) r="3" fill=(colour(&tier.tier)) {}
                @if let Some(value) = forecast(tier) {
                    line.forecast data-tier=(tier.tier)
                        x1=(x(now)) y1=(y(tier.used_bytes as f64)) x2=(x(end)) y2=(y(value))
                        stroke=(colour(&tier.tier)) stroke-width="2" stroke-dasharray="6 4" {}
                }
            }
        }
        p.legend {
            "Solid: used bytes; dashed: forecast at the last day's growth; dotted: a local tier's capacity (used + free above the reserve)."
            @for (bytes_full, tiers) in &full {
                @if !in_sight(*bytes_full) {
                    " " (tiers.join(", ")) " full at " (bytes(*bytes_full)) " (off the chart)."
                }
            }
        }
    }
}

/// A span of seconds as hours or days.
fn format_span(seconds: f64) -> String {
    if seconds >= 2.0 * 86_400.0 {
        format!("{:.0} d", seconds / 86_400.0)
    } else {
        format!("{:.0} h", (seconds / 3600.0).max(1.0))
    }
}

/// `YYYY-MM-DD HH:MM` of a Unix time, UTC.
fn format_time(unix: u64) -> String {
    let text = humantime_serde::re::humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix),
    )
    .to_string();
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212529; max-width: 980px; }
h1 { margin: 0 0 4px; } h2 { margin: 28px 0 8px; font-size: 17px; }
.sub { color: #868e96; margin: 0; }
table { border-collapse: collapse; } th, td { padding: 3px 12px 3px 0; text-align: left; }
th { border-bottom: 1px solid #dee2e6; font-weight: 600; } .num { text-align: right; }
.ok { color: #2b8a3e; } .problem { color: #c92a2a; font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; }
.legend { color: #868e96; font-size: 12px; }
";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(at: u64, hot: u64, free: u64) -> CapacitySample {
        CapacitySample {
            at,
            used_bytes: [("hot".to_owned(), hot)].into_iter().collect(),
            free_bytes: [("hot".to_owned(), free)].into_iter().collect(),
            ..CapacitySample::default()
        }
    }

    #[test]
    fn the_page_escapes_what_servers_report_and_draws_every_series() {
        let status = serde_json::json!({
            "replication": 1,
            "problems": ["volume 3 on <script>: disk at its reserve"],
            "servers": [{"id": "vs&1", "zone": "z", "rack": "r", "alive": true,
                "free_hot_bytes": 10, "free_warm_bytes": 0}],
            "volumes": [
                {"id": 1, "tier": "hot", "state": "writable", "health": "ok", "compacting": true,
                 "compaction_progress": 0.5},
                {"id": 2, "tier": "hot", "state": "paused", "health": "ok"},
                {"id": 3, "tier": "cold", "state": "cold", "health": "ok"},
            ],
            "regions": [
                {"name": "eu", "number": 1, "local": true, "reachable": true,
                 "replicate_to": ["<us>"], "lag": null, "behind": null},
                {"name": "<us>", "number": 2, "local": false, "reachable": false,
                 "error": "no answer", "replicate_to": [],
                 "lag": {"entries": 3, "seconds": 2.0, "shipped_bytes": 10}, "behind": null},
            ],
        });
        let report = CapacityReport {
            history_seconds: 7200,
            tiers: vec![TierCapacity {
                tier: "hot".into(),
                used_bytes: 2000,
                free_bytes: Some(8000),
                growth_per_day: Some(1000.0),
                growth_per_week: None,
                full_in_days: Some(8.0),
                monthly_cost: None,
            }],
            shipped: Vec::new(),
        };
        let samples = [sample(1000, 1000, 9000), sample(8200, 2000, 8000)];
        let page = render(&status, &report, &samples, 8200).into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains(r#"data-server="vs&amp;1""#));
        assert!(page.contains(r#"data-tier="hot" data-state="paused" data-count="1""#));
        assert!(page.contains(r#"data-kind="compaction" data-volume="1" data-percent="50""#));
        assert!(page.contains(r#"class="used" data-tier="hot""#));
        assert!(page.contains(r#"class="forecast" data-tier="hot""#));
        assert!(page.contains(r#"data-full-in-days="8.0""#));
        assert!(page.contains(
            r#"data-region="&lt;us&gt;" data-local="false" data-reachable="false" data-lag-entries="3" data-shipped-bytes="10""#
        ), "{page}");
        assert!(page.contains("3 entries, 2 s"));
        assert_eq!(format_time(8200), "1970-01-01 02:16");
    }

    #[test]
    fn without_history_the_page_says_so() {
        let status = serde_json::json!({"servers": [], "volumes": [], "problems": []});
        let report = CapacityReport {
            history_seconds: 0,
            tiers: Vec::new(),
            shipped: Vec::new(),
        };
        let page = render(&status, &report, &[], 0).into_string();
        assert!(page.contains("No capacity history yet."));
        assert!(page.contains("Nothing running."));
        assert!(unavailable("<x>").into_string().contains("&lt;x&gt;"));
    }
}
