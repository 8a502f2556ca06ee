//! End-to-end: a directory and two volume servers as separate processes,
//! driven with the Rust client (gRPC) and reqwest (HTTP).
//!
//! Why one file of ~830 lines: the 6 first-contact scenarios (client, HTTP
//! origin, CLI, operator page in a headless browser) each drive a whole
//! cluster through many steps.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use hayloft_client::{Client, UploadOptions};
use hayloft_storage::BlobId;
use reqwest::StatusCode;
use reqwest::header;
use support::{Cluster, attribute, browse, content, eventually, secs, server_index, server_of};

fn options(name: &str) -> UploadOptions {
    UploadOptions {
        content_type: "image/png".into(),
        file_name: name.into(),
        ..UploadOptions::default()
    }
}

/// Which volume server's HTTP port serves a blob (from the directory).
async fn http_url(cluster: &Cluster, client: &Client, blob_id: &str) -> String {
    let status = client.status().await.unwrap();
    let index = server_index(&server_of(&status, blob_id));
    format!("{}/{blob_id}", cluster.http_base(index))
}

async fn upload_many(
    client: &Arc<Client>,
    count: u64,
    seed_base: u64,
) -> Vec<(String, u64, usize)> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..count {
        let client = Arc::clone(client);
        let semaphore = Arc::clone(&semaphore);
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            let seed = seed_base + i;
            let len = 1 + (seed as usize * 7919) % 8192;
            let uploaded = client
                .upload(
                    Bytes::from(content(seed, len)),
                    &options(&format!("{seed}.png")),
                )
                .await
                .unwrap();
            (uploaded.blob_id, seed, len)
        }));
    }
    let mut blobs = Vec::new();
    for task in tasks {
        blobs.push(task.await.unwrap());
    }
    blobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_read_over_grpc_and_http_then_delete() {
    let cluster = Cluster::builder().volumes(2).start().await;
    let client = Arc::new(cluster.client().await);

    let small = upload_many(&client, 2000, 0).await;
    let mut large = Vec::new();
    for (seed, len) in [
        (1_000_001u64, 3 << 20),
        (1_000_002, 17 << 20 | 12345),
        (1_000_003, 40 << 20),
    ] {
        let uploaded = client
            .upload(Bytes::from(content(seed, len)), &options("video.mp4"))
            .await
            .unwrap();
        large.push((uploaded.blob_id, seed, len));
    }
    let ids: HashSet<_> = small
        .iter()
        .chain(&large)
        .map(|(id, _, _)| id.clone())
        .collect();
    assert_eq!(ids.len(), 2003, "blob ids must be unique");

    // Every blob reads back over gRPC and over HTTP.
    let http = reqwest::Client::new();
    cluster.wait_alive(2).await;
    for (blob_id, seed, len) in small.iter().chain(&large) {
        let (info, bytes) = client.download(blob_id).await.unwrap();
        assert_eq!(info.size as usize, *len);
        assert_eq!(
            &bytes[..],
            &content(*seed, *len)[..],
            "gRPC read of {blob_id}"
        );
        let url = http_url(&cluster, &client, blob_id).await;
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "image/png");
        assert_eq!(
            response.headers()[header::ETAG].to_str().unwrap(),
            info.etag
        );
        assert_eq!(
            &response.bytes().await.unwrap()[..],
            &content(*seed, *len)[..],
            "HTTP read of {blob_id}"
        );
    }

    // HTTP semantics on one large blob.
    let (blob_id, seed, len) = &large[1];
    let expected = content(*seed, *len);
    let url = http_url(&cluster, &client, blob_id).await;
    let full = http.get(&url).send().await.unwrap();
    let etag = full.headers()[header::ETAG].clone();
    let last_modified = full.headers()[header::LAST_MODIFIED].clone();
    assert_eq!(full.headers()[header::ACCEPT_RANGES], "bytes");
    assert_eq!(
        full.headers()[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        full.headers()[header::CONTENT_DISPOSITION],
        "inline; filename=\"video.mp4\"; filename*=UTF-8''video.mp4"
    );

    // Range across a chunk boundary.
    let ranged = http
        .get(&url)
        .header(header::RANGE, "bytes=1048570-1048585")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()[header::CONTENT_RANGE].to_str().unwrap(),
        format!("bytes 1048570-1048585/{len}")
    );
    assert_eq!(
        &ranged.bytes().await.unwrap()[..],
        &expected[1048570..=1048585]
    );
    let suffix = http
        .get(&url)
        .header(header::RANGE, "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(&suffix.bytes().await.unwrap()[..], &expected[len - 10..]);
    let unsatisfiable = http
        .get(&url)
        .header(header::RANGE, format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        unsatisfiable.headers()[header::CONTENT_RANGE]
            .to_str()
            .unwrap(),
        format!("bytes */{len}")
    );

    // Conditional requests.
    let not_modified = http
        .get(&url)
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert!(not_modified.bytes().await.unwrap().is_empty());
    let not_modified = http
        .get(&url)
        .header(header::IF_MODIFIED_SINCE, last_modified.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    let changed = http
        .get(&url)
        .header(header::IF_NONE_MATCH, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let stale_range = http
        .get(&url)
        .header(header::RANGE, "bytes=0-9")
        .header(header::IF_RANGE, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        stale_range.status(),
        StatusCode::OK,
        "If-Range mismatch serves the whole blob"
    );
    let fresh_range = http
        .get(&url)
        .header(header::RANGE, "bytes=0-9")
        .header(header::IF_RANGE, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(fresh_range.status(), StatusCode::PARTIAL_CONTENT);
    let failed = http
        .get(&url)
        .header(header::IF_MATCH, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::PRECONDITION_FAILED);

    // HEAD: headers, no body.
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH].to_str().unwrap(),
        len.to_string()
    );
    assert!(head.bytes().await.unwrap().is_empty());
    // The file-name form of the URL.
    let named = http
        .get(format!("{url}/video.mp4"))
        .header(header::RANGE, "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(&named.bytes().await.unwrap()[..], &expected[..4]);

    // A wrong cookie is exactly a missing blob.
    let blob: BlobId = blob_id.parse().unwrap();
    let wrong = BlobId {
        cookie: hayloft_storage::Cookie(blob.cookie.0 ^ 1),
        ..blob
    };
    let wrong_url = url.replace(blob_id, &wrong.to_string());
    let missing = BlobId {
        needle: hayloft_storage::NeedleId(blob.needle.0 + 1_000_000),
        ..blob
    };
    let missing_url = url.replace(blob_id, &missing.to_string());
    let wrong_response = http.get(&wrong_url).send().await.unwrap();
    let missing_response = http.get(&missing_url).send().await.unwrap();
    assert_eq!(wrong_response.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing_response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        wrong_response.bytes().await.unwrap(),
        missing_response.bytes().await.unwrap()
    );
    let grpc_wrong = client.download(&wrong.to_string()).await.unwrap_err();
    assert_eq!(grpc_wrong.code(), Some(tonic::Code::NotFound));

    // Bad requests get their own statuses.
    let base = cluster.http_base(0);
    let status_of = |response: reqwest::Response| response.status();
    assert_eq!(
        status_of(
            http.get(format!("{base}/not-a-blob-id"))
                .send()
                .await
                .unwrap()
        ),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status_of(http.get(format!("{base}/")).send().await.unwrap()),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(http.get(format!("{url}/a/b")).send().await.unwrap()),
        StatusCode::NOT_FOUND
    );
    let post = http.post(&url).body("x").send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");

    // Deletes are visible at once, over both protocols.
    for (blob_id, _, _) in small.iter().take(50) {
        let url = http_url(&cluster, &client, blob_id).await;
        client.delete(blob_id).await.unwrap();
        assert_eq!(
            http.get(&url).send().await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            client.stat(blob_id).await.unwrap_err().code(),
            Some(tonic::Code::NotFound)
        );
    }
    // The others are untouched.
    for (blob_id, seed, len) in small.iter().skip(50).take(50) {
        assert_eq!(
            &client.download(blob_id).await.unwrap().1[..],
            &content(*seed, *len)[..]
        );
    }

    // A command whose reader goes away (`hayloft status | head`) ends
    // quietly: killed by SIGPIPE like any Unix tool, no panic, no backtrace.
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--capacity"],
    ] {
        let mut child = std::process::Command::new(support::BIN)
            .args(args)
            .env("HAYLOFT_DIRECTORY", cluster.directory_addr())
            .env("RUST_BACKTRACE", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader leaves before the first line is written.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_keep_everything_and_never_reuse_an_id() {
    let mut cluster = Cluster::builder().volumes(2).start().await;
    let client = Arc::new(cluster.client().await);
    let before = upload_many(&client, 300, 10_000).await;
    drop(client);

    // Graceful restart of everything.
    cluster.stop_directory();
    cluster.stop_volume(0);
    cluster.stop_volume(1);
    cluster.start_directory();
    cluster.start_volume(0);
    cluster.start_volume(1);
    cluster.wait_alive(2).await;
    let client = Arc::new(cluster.client().await);
    for (blob_id, seed, len) in &before {
        assert_eq!(
            &client.download(blob_id).await.unwrap().1[..],
            &content(*seed, *len)[..]
        );
    }
    let after_restart = upload_many(&client, 300, 20_000).await;
    // A client that keeps the ids it reserved (its one upload reserved
    // RESERVE_IDS) through the crash below and uses them afterwards: nobody
    // else may get them.
    let keeper = Arc::new(cluster.client().await);
    let mut kept = upload_many(&keeper, 1, 40_000).await;

    // A directory crash (SIGKILL) must not make it hand out an id twice.
    cluster.kill_directory();
    cluster.start_directory();
    cluster.wait_alive(2).await;
    let client = Arc::new(cluster.client().await);
    let after_crash = upload_many(&client, 300, 30_000).await;
    kept.extend(upload_many(&keeper, 20, 41_000).await);

    let everything: Vec<_> = before
        .iter()
        .chain(&after_restart)
        .chain(&after_crash)
        .chain(&kept)
        .collect();
    let mut needles = HashSet::new();
    for (blob_id, _, _) in &everything {
        let needle = blob_id.parse::<BlobId>().unwrap().needle;
        assert!(
            needles.insert(needle),
            "needle id {needle} handed out twice"
        );
    }
    // The keeper really wrote ids it had reserved before the crash.
    let first_kept = kept[0].0.parse::<BlobId>().unwrap().needle.0;
    let reserved_before = first_kept..first_kept + u64::from(hayloft_client::RESERVE_IDS);
    assert!(
        kept[1..].iter().all(|(blob_id, _, _)| reserved_before
            .contains(&blob_id.parse::<BlobId>().unwrap().needle.0)),
        "the keeper did not go on with its reservation"
    );
    for (blob_id, seed, len) in everything {
        assert_eq!(
            &client.download(blob_id).await.unwrap().1[..],
            &content(*seed, *len)[..]
        );
    }
}

/// Peak anonymous (heap) memory of a process, sampled until `done`.
async fn sample_rss_anon(pid: i32, done: Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut peak = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = status.lines().find(|l| l.starts_with("RssAnon:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(kib * 1024);
        }
        // The sampling interval, not a wait for a state.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_gib_blob_streams_both_ways_in_bounded_memory() {
    use std::io::Write;
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let size: u64 = 1 << 30;
    let source = cluster.root().join("big.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&source).unwrap());
        for block in 0..size >> 20 {
            file.write_all(&content(block, 1 << 20)).unwrap();
        }
    }
    let pid = cluster.volume_pid(0);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_rss_anon(pid, Arc::clone(&done)));
    let uploaded = client
        .upload_file(&source, &options("big.bin"))
        .await
        .unwrap();
    assert_eq!(uploaded.size, size);

    // Download over gRPC into a file, and compare block by block.
    let target = cluster.root().join("back.bin");
    let mut out = tokio::fs::File::create(&target).await.unwrap();
    let info = client
        .download_to(&uploaded.blob_id, &mut out)
        .await
        .unwrap();
    drop(out);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    assert_eq!(info.size, size);
    let mut back = std::fs::File::open(&target).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for n in 0..size >> 20 {
        std::io::Read::read_exact(&mut back, &mut block).unwrap();
        assert!(block == content(n, 1 << 20), "block {n} differs");
    }
    assert!(
        peak < 256 << 20,
        "volume server heap peaked at {} MiB while moving 1 GiB",
        peak >> 20
    );

    // And a range at the far end over HTTP.
    let url = format!("{}/{}", cluster.http_base(0), uploaded.blob_id);
    let tail = reqwest::Client::new()
        .get(&url)
        .header(header::RANGE, "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        &tail.bytes().await.unwrap()[..],
        &content((size >> 20) - 1, 1 << 20)[(1 << 20) - 100..]
    );
}

/// The metric names (`hayloft_...`) a file of `deploy/` refers to.
fn metric_names(path: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path),
    )
    .unwrap();
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("hayloft_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Runs promtool (Debian's `prometheus` package, installed by
/// scripts/setup.sh) in `deploy/prometheus`.
fn promtool(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("promtool")
        .args(args)
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus"))
        .output()
        .expect("promtool is installed by scripts/setup.sh");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_rules_and_the_dashboard_name_only_metrics_a_live_cluster_exports() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok, "{out}");
    // The Grafana dashboard: JSON whose every panel queries something.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/hayloft.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].as_str().is_some()),
            "{panel}"
        );
    }

    // A live cluster, after an upload and a read (request metrics exist
    // once a request was served; failure counters from the start).
    let cluster = Cluster::builder().volumes(1).start().await;
    let client = cluster.client().await;
    let uploaded = client
        .upload(Bytes::from_static(b"scrape me"), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        reqwest::get(&uploaded.url).await.unwrap().status(),
        StatusCode::OK
    );
    let mut scraped = String::new();
    for port in [
        cluster.directory_metrics_port(),
        cluster.volume_ports(0).metrics,
    ] {
        let url = format!("http://127.0.0.1:{port}/metrics");
        scraped += &reqwest::get(url).await.unwrap().text().await.unwrap();
    }
    let exported: std::collections::BTreeSet<&str> = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/hayloft.json",
    ] {
        let missing: Vec<String> = metric_names(file)
            .into_iter()
            .filter(|name| !exported.contains(name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics no server exports: {missing:?}"
        );
    }
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = tempfile::tempdir().unwrap();
    for role in ["directory", "volume"] {
        let name = format!("hayloft-{role}.service");
        // The binary this build made stands where the unit expects it.
        let unit = std::fs::read_to_string(deploy.join(&name))
            .unwrap()
            .replace("/usr/local/bin/hayloft", env!("CARGO_BIN_EXE_hayloft"));
        assert!(unit.contains(&format!(" {role} --config /etc/hayloft/{role}.toml")));
        let path = dir.path().join(&name);
        std::fs::write(&path, unit).unwrap();
        let verify = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian's systemd) is installed by scripts/setup.sh");
        let said = String::from_utf8_lossy(&verify.stderr).into_owned()
            + &String::from_utf8_lossy(&verify.stdout);
        // Unknown keys are only warned about: any word from it is a fault.
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
        // Exposure 2.0 or less on systemd's 0-10 scale ("OK").
        let security = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            security.status.success(),
            "{name} is exposed more than 2.0:\n{}",
            String::from_utf8_lossy(&security.stdout)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_page_shows_in_a_browser_what_the_cli_says() {
    // Slow compactions, so one can be seen running; servers given two
    // minutes before they count as dead, so they can be paused below.
    let cluster = Cluster::builder()
        .zones(&["a", "b"])
        .replication(1)
        .directory_args(["--dead-after", "120s"])
        .volume_args(["--compaction-threshold", "0", "--compaction-rate", "512KiB"])
        .start()
        .await;
    let client = cluster.client().await;
    let page_url = format!("http://127.0.0.1:{}/", cluster.directory_metrics_port());
    support::upload_half_deleted(&client, 256, 16 << 10).await;

    // A compaction under way is on the page with its progress.
    let mut compact =
        support::hayloft_in_background(&cluster, &["compact", "--all", "--min-garbage", "0.1"]);
    let http = reqwest::Client::new();
    let percent = eventually(secs(30), "a compaction shown running", async || {
        let page = http
            .get(&page_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let shown = attribute(&page, &[r#"data-kind="compaction""#], "data-percent");
        assert!(
            shown.is_some() || compact.child.try_wait().unwrap().is_none(),
            "the compaction ended before the page showed it: {page}"
        );
        shown.ok_or(page)
    })
    .await;
    assert!(percent.parse::<u32>().unwrap() < 100, "{percent}");
    assert!(compact.child.wait().unwrap().success());
    // A heartbeat after the compaction, and two capacity samples (a second
    // apart) after it; then the volume servers are paused so that nothing
    // changes between the page and the CLI.
    eventually(secs(10), "a heartbeat after the compaction", async || {
        let (ok, out) = support::hayloft(&cluster, &["status"]);
        (ok && !out.contains("compact")).then_some(()).ok_or(out)
    })
    .await;
    let history = || {
        let (ok, out) = support::hayloft(&cluster, &["status", "--capacity", "--json"]);
        assert!(ok, "{out}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        report["history_seconds"].as_u64().unwrap()
    };
    let since = history();
    eventually(secs(10), "two capacity samples after it", async || {
        let now = history();
        (now >= since + 2).then_some(()).ok_or(now)
    })
    .await;
    cluster.pause_volume(0);
    cluster.pause_volume(1);

    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("page.png");
    let dom = browse(&page_url, &png);
    let (ok, status) = support::hayloft(&cluster, &["status", "--json"]);
    assert!(ok, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let (ok, capacity) = support::hayloft(&cluster, &["status", "--capacity", "--json"]);
    assert!(ok, "{capacity}");
    let capacity: serde_json::Value = serde_json::from_str(&capacity).unwrap();
    cluster.resume_volume(0);
    cluster.resume_volume(1);

    // It rendered, with its chart.
    assert!(dom.contains("<h1>hayloft</h1>"), "{dom}");
    assert!(dom.contains(r#"<svg id="capacity-chart""#), "{dom}");
    assert!(
        dom.contains(r#"<polyline class="used" data-tier="hot""#),
        "{dom}"
    );
    assert!(dom.contains(r#"class="forecast" data-tier="hot""#), "{dom}");
    let shot = std::fs::metadata(&png).unwrap().len();
    assert!(shot > 10_000, "a {shot}-byte screenshot");

    // Servers: alive, zone, free space, as `status --json` says.
    let servers = status["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    for server in servers {
        let id = server["id"].as_str().unwrap();
        let mark = format!(r#"data-server="{id}""#);
        for (attr, key) in [
            ("data-free-hot", "free_hot_bytes"),
            ("data-free-warm", "free_warm_bytes"),
        ] {
            assert_eq!(
                attribute(&dom, &[&mark], attr).unwrap(),
                server[key].as_u64().unwrap().to_string(),
                "{id} {key}"
            );
        }
        assert_eq!(attribute(&dom, &[&mark], "data-alive").unwrap(), "true");
    }
    // Volumes by tier and state.
    let volumes = status["volumes"].as_array().unwrap();
    assert!(!volumes.is_empty());
    for tier in ["hot", "warm", "cold"] {
        for state in [
            "writable",
            "paused",
            "sealed",
            "moving",
            "cold",
            "restoring",
        ] {
            let expected = volumes
                .iter()
                .filter(|v| v["tier"] == tier && v["state"] == state)
                .count();
            let shown = attribute(
                &dom,
                &[
                    &format!(r#"data-tier="{tier}""#),
                    &format!(r#"data-state="{state}""#),
                ],
                "data-count",
            );
            assert_eq!(
                shown.map_or(0, |n| n.parse().unwrap()),
                expected,
                "{tier}/{state}"
            );
        }
    }
    assert_eq!(
        attribute(&dom, &[r#"id="volumes""#], "data-total").unwrap(),
        volumes.len().to_string()
    );
    assert_eq!(
        attribute(&dom, &[r#"id="problems""#], "data-count").unwrap(),
        status["problems"].as_array().unwrap().len().to_string()
    );
    // Capacity per tier: used and free bytes exactly; the days until full
    // as well as two readings a second apart can agree (the growth rate is
    // measured over the whole history, which grows by a sample a second).
    for tier in capacity["tiers"].as_array().unwrap() {
        let name = tier["tier"].as_str().unwrap();
        let mark = format!(r#"tr class="tier" data-tier="{name}""#);
        let mark = mark.as_str();
        assert_eq!(
            attribute(&dom, &[mark], "data-used").unwrap(),
            tier["used_bytes"].as_u64().unwrap().to_string(),
            "{name}"
        );
        if let Some(free) = tier["free_bytes"].as_u64() {
            assert_eq!(
                attribute(&dom, &[mark], "data-free").unwrap(),
                free.to_string(),
                "{name}"
            );
        }
        if let Some(days) = tier["full_in_days"].as_f64() {
            let shown: f64 = attribute(&dom, &[mark], "data-full-in-days")
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                (shown - days).abs() <= days * 0.5 + 0.1,
                "{name}: page {shown} days, CLI {days}"
            );
        }
    }
}
