//! The operator page's regions section: each region's reachability,
//! this region's lag behind it, its lag behind this one and the bytes
//! fetched from it, as `hayloft status` shows them.

use maud::{Markup, html};
use serde_json::Value;

use super::{bytes, str_of, u64_of};

/// "N entries, Ts" or "caught up" for a lag of `regions --json`; "-" for
/// none.
fn lag_text(lag: &Value) -> String {
    if lag.is_null() {
        return "-".to_owned();
    }
    match u64_of(lag, "entries") {
        0 => "caught up".to_owned(),
        n => format!(
            "{n} entries, {:.0} s",
            lag["seconds"].as_f64().unwrap_or(0.0)
        ),
    }
}

/// The regions (as `hayloft status` shows them): shown when there are
/// several, or this one is not `default`.
pub(super) fn section(status: &Value) -> Markup {
    let regions = status["regions"].as_array().cloned().unwrap_or_default();
    let single = regions.len() <= 1
        && regions
            .iter()
            .all(|r| str_of(r, "name") == hayloft_proto::regions::DEFAULT_REGION);
    if single {
        return html! {};
    }
    let entries = |lag: &Value| (!lag.is_null()).then(|| u64_of(lag, "entries"));
    html! {
        section id="regions" data-count=(regions.len()) {
            h2 { "Regions" }
            table {
                thead { tr { th { "region" } th.num { "number" } th { "reachable" }
                    th { "replicates to" } th { "lag here" } th { "behind us" }
                    th.num { "shipped here" } } }
                tbody {
                    @for region in &regions {
                        @let local = region["local"].as_bool().unwrap_or(false);
                        @let reachable = region["reachable"].as_bool().unwrap_or(false);
                        @let (lag, behind) = (&region["lag"], &region["behind"]);
                        tr.region data-region=(str_of(region, "name")) data-local=(local)
                            data-reachable=(reachable)
                            data-lag-entries=[entries(lag)]
                            data-behind-entries=[entries(behind)]
                            data-shipped-bytes=[(!lag.is_null()).then(|| u64_of(lag, "shipped_bytes"))] {
                            td { (str_of(region, "name")) @if local { " (this one)" } }
                            td.num { (u64_of(region, "number")) }
                            td class=(if local || reachable { "ok" } else { "problem" }) {
                                (if local { "-" } else if reachable { "yes" } else { "NO" })
                            }
                            td { (region["replicate_to"].as_array().into_iter().flatten()
                                .filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
                            td { (lag_text(lag)) }
                            td { (lag_text(behind)) }
                            td.num { @if lag.is_null() { "-" } @else { (bytes(u64_of(lag, "shipped_bytes"))) } }
                        }
                        @if let Some(error) = region["error"].as_str() {
                            tr { td.problem colspan="7" { (str_of(region, "name")) ": " (error) } }
                        }
                    }
                }
            }
        }
    }
}
