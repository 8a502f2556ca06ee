//! End-to-end regions with real processes: two `hayloft server`s, each a
//! region told of the other by flags. An upload in one reads back from the
//! other's origin (counted as `source="region"` in its `/metrics`),
//! `hayloft status --json` lists both regions, and a bad `--replicate-to`
//! stops a directory naming the flag.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use hayloft_client::UploadOptions;
use support::{content, eventually, secs};

/// One region's `hayloft server`: its ports and process.
struct Region {
    directory: String,
    http: String,
    metrics: String,
    _server: support::Proc,
}

fn start(root: &std::path::Path, name: &str, me: &str, other: &str, ports: [String; 4]) -> Region {
    let [directory, grpc, http, metrics] = ports;
    let args: Vec<String> = [
        "server",
        "--data-dir",
        &root.join(name).display().to_string(),
        "--directory-listen",
        &directory,
        "--grpc-listen",
        &grpc,
        "--http-listen",
        &http,
        "--metrics-listen",
        &metrics,
        "--region",
        me,
        "--regions",
        other,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let server = support::spawn(&args, &root.join(format!("{name}.log")));
    Region {
        directory,
        http,
        metrics,
        _server: server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_as_two_regions_read_each_others_blobs() {
    let root = tempfile::tempdir().unwrap();
    let port = || format!("127.0.0.1:{}", support::free_port());
    let ports_a = [port(), port(), port(), port()];
    let ports_b = [port(), port(), port(), port()];
    let a = start(
        root.path(),
        "a",
        "a:0",
        &format!("b:1={}", ports_b[0]),
        ports_a.clone(),
    );
    let b = start(
        root.path(),
        "b",
        "b:1",
        &format!("a:0={}", ports_a[0]),
        ports_b,
    );
    let upload = |directory: String, seed: u64| async move {
        let client = hayloft_client::Client::connect(&directory).await.unwrap();
        let data = Bytes::from(content(seed, 20_000));
        let uploaded = eventually(secs(30), "an upload", async || {
            client
                .upload(data.clone(), &UploadOptions::default())
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        (uploaded.blob_id, data)
    };
    let (in_a, data_a) = upload(a.directory.clone(), 1).await;
    let (in_b, _) = upload(b.directory.clone(), 2).await;
    let volume = |id: &str| id.parse::<hayloft_storage::BlobId>().unwrap().volume();
    assert_eq!(volume(&in_a).region().0, 0, "{in_a}");
    assert_eq!(volume(&in_b).region().0, 1, "{in_b}");

    let read = reqwest::get(format!("http://{}/{in_a}", b.http))
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "{}", support::log_tails(root.path()));
    assert_eq!(read.bytes().await.unwrap(), data_a);
    // HTTP threads add their counts to the metrics every 100 ms.
    eventually(
        secs(10),
        "the read counted as source=\"region\"",
        async || {
            let metrics = reqwest::get(format!("http://{}/metrics", b.metrics))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            metrics.lines().any(|l| {
                l.starts_with("hayloft_volume_reads_total{source=\"region\"} ")
                    && !l.ends_with(" 0")
            })
        },
    )
    .await;

    let status = std::process::Command::new(support::BIN)
        .args(["status", "--json", "--directory", &b.directory])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let regions = json["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2, "{json}");
    assert_eq!(regions[0]["name"], "b");
    assert_eq!(regions[0]["number"], 1);
    assert_eq!(regions[0]["local"], true);
    assert_eq!(regions[1]["name"], "a");
    assert_eq!(regions[1]["reachable"], true, "{json}");
    assert_eq!(regions[1]["directory"][0], ports_a[0].as_str());
    assert!(regions[1]["lag"].is_null());
    // The keys that were there before are still there.
    assert!(json["servers"].is_array() && json["directory_nodes"].is_array());
}

#[test]
fn a_directory_told_to_replicate_to_an_unknown_region_does_not_start() {
    let root = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(support::BIN)
        .args([
            "directory",
            "--listen",
            &format!("127.0.0.1:{}", support::free_port()),
            "--data-dir",
            &root.path().join("d").display().to_string(),
            "--metrics-listen",
            &format!("127.0.0.1:{}", support::free_port()),
            "--region",
            "eu:1",
            "--regions",
            "us:2=127.0.0.1:9",
            "--replicate-to",
            "mars",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--replicate-to") && stderr.contains("\"mars\"") && stderr.contains("us"),
        "{stderr}"
    );
}
