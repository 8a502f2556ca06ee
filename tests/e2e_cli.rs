//! End-to-end: the `hayloft` command against a running cluster (put, get,
//! rm, status, bench).

#![allow(clippy::unwrap_used)]

mod support;

use support::{Cluster, content, eventually, hayloft, secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_get_rm_status() {
    let cluster = Cluster::builder().volumes(1).start().await;
    let dir = cluster.root();
    let photo = dir.join("cat photo.jpg");
    std::fs::write(&photo, content(1, 100_000)).unwrap();
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, b"remember the milk\n").unwrap();

    let (ok, put) = hayloft(
        &cluster,
        &[
            "put",
            photo.to_str().unwrap(),
            notes.to_str().unwrap(),
            "--url",
        ],
    );
    assert!(ok, "{put}");
    let lines: Vec<String> = put
        .lines()
        .filter(|l| l.contains('\t'))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2);
    let (photo_id, photo_url) = lines[0].split_once('\t').unwrap();
    let (notes_id, _) = lines[1].split_once('\t').unwrap();

    let out = dir.join("back.jpg");
    assert!(hayloft(&cluster, &["get", photo_id, "-o", out.to_str().unwrap()]).0);
    assert_eq!(std::fs::read(&out).unwrap(), content(1, 100_000));
    let (ok, stdout) = hayloft(&cluster, &["get", notes_id]);
    assert!(ok);
    assert!(stdout.starts_with("remember the milk\n"), "{stdout}");

    let response = reqwest::get(photo_url).await.unwrap();
    assert_eq!(response.headers()["content-type"], "image/jpeg");

    // A heartbeat tells the directory of the volume and its state.
    let (ok, status) = eventually(secs(10), "status to list vs0 writable", async || {
        let (ok, status) = hayloft(&cluster, &["status"]);
        (ok && status.contains("vs0") && status.contains("writable"))
            .then(|| (ok, status.clone()))
            .ok_or(status)
    })
    .await;
    assert!(ok, "{status}");
    assert!(status.contains("vs0"), "{status}");
    assert!(status.contains("writable"), "{status}");

    // Every background job is listed, the same way: the directory node's
    // own and each server's, from its heartbeat.
    assert!(status.contains("JOBS"), "{status}");
    let (ok, json) = eventually(secs(10), "status --json to list the jobs", async || {
        let (ok, json) = hayloft(&cluster, &["status", "--json"]);
        (ok && json.contains("\"heartbeat\""))
            .then(|| (ok, json.clone()))
            .ok_or(json)
    })
    .await;
    assert!(ok, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let jobs: Vec<(String, String, String)> = json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            let text = |key: &str| job[key].as_str().unwrap().to_owned();
            (text("where"), text("name"), text("state"))
        })
        .collect();
    for (at, name) in [
        ("directory", "repair"),
        ("directory", "capacity-history"),
        ("vs0", "heartbeat"),
        ("vs0", "free-space"),
        ("vs0", "read-counts"),
    ] {
        let job = jobs.iter().find(|(w, n, _)| w == at && n == name);
        let (_, _, state) = job.unwrap_or_else(|| panic!("{at} {name} not in {jobs:?}"));
        assert!(
            ["busy", "idle"].contains(&state.as_str()),
            "{at} {name}: {state}"
        );
    }

    assert!(hayloft(&cluster, &["rm", notes_id]).0);
    let (ok, missing) = hayloft(&cluster, &["get", notes_id]);
    assert!(!ok);
    assert!(missing.contains("not found"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_bench_runs_every_phase() {
    let cluster = Cluster::builder().volumes(1).start().await;
    // A smoke test: figures are not asserted, only that every phase ran
    // requests without errors and the JSON is well formed.
    let (ok, out) = hayloft(
        &cluster,
        &[
            "bench",
            "--duration",
            "700ms",
            "--concurrency",
            "4",
            "--sizes",
            "4KiB,1MiB",
            "--batch",
            "8",
            "--json",
        ],
    );
    assert!(ok, "{out}");
    let json = &out[out.find('[').unwrap()..=out.rfind(']').unwrap()];
    let phases: Vec<std::collections::HashMap<String, serde_json::Value>> =
        serde_json::from_str(json).unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "upload 4.0 KiB",
            "upload 1.0 MiB",
            "upload 4.0 KiB in batches of 8",
            "http read (uniform)",
            "http read (zipf)",
            "mixed 90% read / 10% upload"
        ]
    );
    for phase in &phases {
        assert!(phase["requests"].as_u64().unwrap() > 0, "{phase:?}");
        assert_eq!(phase["errors"].as_u64().unwrap(), 0, "{phase:?}");
        assert!(phase["p99_ms"].as_f64().unwrap() >= phase["p50_ms"].as_f64().unwrap());
    }
}
