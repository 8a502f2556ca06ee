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

/// `hayloft tier ec` against real processes: three servers in three zones
/// and `--ec-code 2+1`; a dry run changes nothing, then a writable volume is
/// sealed and encoded; `status` and `status --json` show the layout and the
/// replication factor; every blob still reads; bad codes are refused with
/// the reason, by the command and by the directory at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tier_ec_seals_encodes_and_status_shows_the_layout() {
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .directory_args(["--ec-code", "2+1"])
        .volume_args(["--max-volume-size", "4MiB"])
        .start()
        .await;
    let client = cluster.client().await;
    let mut blobs = Vec::new();
    for seed in 0..6 {
        let data = content(seed, 60_000 + seed as usize * 5_000);
        let uploaded = client
            .upload(
                bytes::Bytes::from(data.clone()),
                &hayloft_client::UploadOptions::default(),
            )
            .await
            .unwrap();
        blobs.push((uploaded.blob_id, data));
    }
    let volume_of = |id: &str| id.parse::<hayloft_storage::BlobId>().unwrap().volume().0;
    let volume_id = volume_of(&blobs[0].0);
    let volume = volume_id.to_string();
    let state_of = |json: &serde_json::Value| {
        json["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == volume_id)
            .cloned()
            .unwrap()
    };
    let json = |cluster: &Cluster| {
        let (ok, out) = hayloft(cluster, &["status", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };

    // The dry run: the plan, with the code from --ec-code; nothing changes.
    let (ok, plan) = hayloft(
        &cluster,
        &["tier", "ec", &volume, "--dry-run", "--max-block", "64KiB"],
    );
    assert!(ok, "{plan}");
    assert!(plan.contains("would encode as EC 2+1"), "{plan}");
    for shard in ["shard  0 ->", "shard  1 ->", "shard  2 ->"] {
        assert!(plan.contains(shard), "{plan}");
    }
    assert!(plan.contains("is writable"), "{plan}");
    let before = state_of(&json(&cluster));
    assert_eq!(before["state"], "writable", "{before}");
    assert_eq!(before["layout"]["kind"], "replicated", "{before}");

    // A bad code: refused by the command, nothing changes.
    let (ok, refused) = hayloft(&cluster, &["tier", "ec", &volume, "--code", "3-2"]);
    assert!(!ok, "{refused}");
    assert!(refused.contains("invalid erasure code"), "{refused}");
    assert_eq!(state_of(&json(&cluster))["state"], "writable");

    // For real: sealed, then encoded.
    let (ok, out) = hayloft(&cluster, &["tier", "ec", &volume, "--max-block", "64KiB"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("volume {volume}: sealed")), "{out}");
    assert!(
        out.contains(&format!("volume {volume}: EC 2+1 on ")),
        "{out}"
    );

    let (ok, status) = hayloft(&cluster, &["status"]);
    assert!(ok, "{status}");
    assert!(status.contains("EC 2+1"), "{status}");
    assert!(
        status.contains("effective replication factor: "),
        "{status}"
    );
    assert!(status.contains("erasure-coded volumes: "), "{status}");
    let json = json(&cluster);
    let after = state_of(&json);
    assert_eq!(after["state"], "sealed", "{after}");
    assert_eq!(after["layout"]["kind"], "erasure", "{after}");
    assert_eq!(after["layout"]["code"], "2+1", "{after}");
    assert_eq!(after["layout"]["holders"].as_array().unwrap().len(), 3);
    assert!(after["layout"]["data_len"].as_u64().unwrap() > 0, "{after}");
    let factor = json["replication_factor"]["erasure"]["factor"]
        .as_f64()
        .unwrap();
    assert!((1.5..2.0).contains(&factor), "{json}");

    // Every blob reads back, over HTTP too.
    for (id, data) in &blobs {
        let (_, read) = client.download(id).await.unwrap();
        assert_eq!(&read[..], &data[..], "{id}");
    }

    // A bad code in the directory's config, or on its command line, stops
    // it at start-up with the setting's name.
    let config = cluster.root().join("bad-ec.toml");
    std::fs::write(&config, "[collections.photos]\nec_code = \"0+3\"\n").unwrap();
    let data_dir = cluster.root().join("bad-ec-data");
    let started = std::process::Command::new(support::BIN)
        .args(["directory", "--listen", "127.0.0.1:0", "--metrics-listen"])
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "{stderr}");
    assert!(
        stderr.contains("[collections.photos] ec_code: invalid erasure code \"0+3\""),
        "{stderr}"
    );
    let started = std::process::Command::new(support::BIN)
        .args(["directory", "--ec-code", "ten+four"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "{stderr}");
    assert!(stderr.contains("invalid erasure code"), "{stderr}");
}
