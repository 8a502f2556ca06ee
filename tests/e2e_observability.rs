//! End-to-end observability: metrics that move with requests, a request id
//! followed through both servers' JSON logs, and the capacity report.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use hayloft_client::UploadOptions;
use support::{Cluster, content, eventually, hayloft, secs};

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_requests_are_made() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let volume_port = cluster.volume_ports(0).metrics;
    let uploaded = client
        .upload(Bytes::from(content(1, 10_000)), &UploadOptions::default())
        .await
        .unwrap();
    let before = scrape(volume_port).await;
    for _ in 0..3 {
        client.download(&uploaded.blob_id).await.unwrap();
        let body = reqwest::get(format!("{}/{}", cluster.http_base(0), uploaded.blob_id))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len(), 10_000);
    }
    reqwest::get(format!("{}/{}", cluster.http_base(0), "0000000100000000"))
        .await
        .unwrap();
    let reads = r#"hayloft_volume_requests_total{op="grpc_read",status="OK"}"#;
    let gets = r#"hayloft_volume_requests_total{op="http_get",status="200"}"#;
    let not_found = r#"hayloft_volume_requests_total{op="http_get",status="404"}"#;
    let out = r#"hayloft_volume_bytes_out_total{protocol="http"}"#;
    // A pulse updates the gauges; a request is counted once its response
    // has gone out, which may be a moment after the client has it all.
    let after = eventually(
        secs(10),
        "the requests counted, a pulse to update the gauges",
        async || {
            let after = scrape(volume_port).await;
            (sample(&after, reads) - sample(&before, reads) >= 3.0
                && sample(&after, gets) - sample(&before, gets) >= 3.0
                && sample(&after, out) - sample(&before, out) >= 30_000.0
                && sample(&after, not_found) >= 1.0
                && sample(&after, "hayloft_needles") >= 1.0
                && sample(&after, "hayloft_index_memory_bytes") > 0.0
                && sample(&after, r#"hayloft_disk_free_bytes{tier="hot"}"#) > 0.0
                && sample(&after, r#"hayloft_volumes{tier="hot",state="writable"}"#) >= 1.0)
                .then_some(after)
        },
    )
    .await;
    assert_eq!(
        sample(&after, reads) - sample(&before, reads),
        3.0,
        "{after}"
    );
    assert_eq!(sample(&after, gets) - sample(&before, gets), 3.0);
    assert!(sample(&after, not_found) >= 1.0);
    assert_eq!(sample(&after, out) - sample(&before, out), 30_000.0);
    assert!(sample(&after, r#"hayloft_volume_bytes_in_total{protocol="grpc"}"#) >= 10_000.0);
    assert!(after.contains("hayloft_volume_request_duration_seconds_bucket"));
    assert!(sample(&after, "hayloft_needles") >= 1.0);
    assert!(sample(&after, "hayloft_index_memory_bytes") > 0.0);
    assert!(sample(&after, r#"hayloft_disk_free_bytes{tier="hot"}"#) > 0.0);
    assert!(sample(&after, r#"hayloft_volumes{tier="hot",state="writable"}"#) >= 1.0);

    let directory = scrape(cluster.directory_metrics_port()).await;
    assert!(
        sample(
            &directory,
            r#"hayloft_directory_requests_total{op="assign",status="OK"}"#
        ) >= 1.0
    );
    assert!(sample(&directory, "hayloft_directory_ids_assigned_total") >= 1.0);
    assert_eq!(
        sample(&directory, r#"hayloft_directory_servers{alive="true"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_an_upload_from_directory_to_volume_server() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let options = UploadOptions {
        request_id: Some("e2e-trace-0042".into()),
        ..UploadOptions::default()
    };
    let uploaded = client
        .upload(Bytes::from_static(b"traced"), &options)
        .await
        .unwrap();
    assert_eq!(uploaded.request_id, "e2e-trace-0042");
    // HTTP reads carry (and echo) the header too.
    let response = reqwest::Client::new()
        .get(format!("{}/{}", cluster.http_base(0), uploaded.blob_id))
        .header("x-request-id", "e2e-trace-0043")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "e2e-trace-0043");
    let logged = |name: &str, id: &str| {
        let log = cluster.log(name);
        log.lines()
            .filter(|line| line.contains(id))
            .all(|line| line.starts_with('{'))
            && log.contains(&format!("\"request_id\":\"{id}\""))
    };
    eventually(
        secs(10),
        "request ids in both servers' JSON logs",
        async || {
            (logged("directory.log", "e2e-trace-0042")
                && logged("vs0.log", "e2e-trace-0042")
                && logged("vs0.log", "e2e-trace-0043"))
            .then_some(())
            .ok_or_else(|| format!("see {}", cluster.root().display()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_shows_bytes_growth_forecast_and_cost_per_tier() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let options = UploadOptions::default();
    client
        .upload(Bytes::from(content(1, 100_000)), &options)
        .await
        .unwrap();
    // The directory records a sample a second (--history-interval 1s):
    // wait for two seconds of them.
    let capacity = || {
        let (ok, out) = hayloft(&cluster, &["status", "--capacity", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    eventually(secs(15), "two seconds of capacity history", async || {
        let report = capacity();
        (report["history_seconds"].as_u64().unwrap() >= 2)
            .then_some(())
            .ok_or(report)
    })
    .await;
    for seed in 2..12 {
        client
            .upload(Bytes::from(content(seed, 100_000)), &options)
            .await
            .unwrap();
    }
    // Wait for a heartbeat to carry the new sizes into the history.
    let hot = |report: &serde_json::Value| {
        report["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tier"] == "hot")
            .cloned()
    };
    let report = eventually(secs(15), "the new sizes in the report", async || {
        let report = capacity();
        hot(&report)
            .is_some_and(|hot| {
                hot["used_bytes"].as_u64().unwrap() >= 1_100_000
                    && hot["growth_per_day"].as_f64().unwrap() > 0.0
            })
            .then_some(report.clone())
            .ok_or(report)
    })
    .await;
    assert!(report["history_seconds"].as_u64().unwrap() >= 2, "{report}");
    let hot = report["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "hot")
        .unwrap();
    assert!(hot["used_bytes"].as_u64().unwrap() >= 1_100_000, "{hot}");
    assert!(hot["growth_per_day"].as_f64().unwrap() > 0.0, "{hot}");
    assert!(hot["free_bytes"].as_u64().unwrap() > 0, "{hot}");
    assert!(hot["full_in_days"].as_f64().unwrap() > 0.0, "{hot}");
    // The built-in policy prices hot storage.
    assert!(hot["monthly_cost"].as_f64().unwrap() > 0.0, "{hot}");
    let (ok, table) = hayloft(&cluster, &["status", "--capacity"]);
    assert!(
        ok && table.contains("GROWTH/DAY") && table.contains("days"),
        "{table}"
    );
}
