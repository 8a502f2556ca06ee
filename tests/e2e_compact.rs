//! End-to-end compaction: on demand through the CLI (dry run, progress,
//! summary) and automatically past the garbage threshold.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use hayloft_client::{Client, UploadOptions};
use hayloft_proto::ListVolumesRequest;
use hayloft_proto::volume_client::VolumeClient;
use reqwest::StatusCode;
use support::{Cluster, content, eventually, hayloft, secs};

async fn fill_and_delete(
    client: &Client,
    count: u64,
    keep_every: u64,
) -> (Vec<(String, u64)>, Vec<String>) {
    let mut kept = Vec::new();
    let mut deleted = Vec::new();
    for seed in 0..count {
        let uploaded = client
            .upload(Bytes::from(content(seed, 4096)), &UploadOptions::default())
            .await
            .unwrap();
        if seed % keep_every == 0 {
            kept.push((uploaded.blob_id, seed));
        } else {
            client.delete(&uploaded.blob_id).await.unwrap();
            deleted.push(uploaded.blob_id);
        }
    }
    (kept, deleted)
}

async fn garbage_on(cluster: &Cluster) -> (u64, u64) {
    let mut volume = VolumeClient::connect(format!("http://{}", cluster.grpc_addr(0)))
        .await
        .unwrap();
    let volumes = volume
        .list_volumes(ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes;
    (
        volumes.iter().map(|v| v.garbage_bytes).sum(),
        volumes.iter().map(|v| v.file_bytes).sum(),
    )
}

async fn check_reads(cluster: &Cluster, kept: &[(String, u64)], deleted: &[String]) {
    let http = reqwest::Client::new();
    for (blob_id, seed) in kept {
        let response = http
            .get(format!("{}/{blob_id}", cluster.http_base(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{blob_id}");
        assert_eq!(
            &response.bytes().await.unwrap()[..],
            &content(*seed, 4096)[..]
        );
    }
    for blob_id in deleted {
        let response = http
            .get(format!("{}/{blob_id}", cluster.http_base(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{blob_id} came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_on_demand_with_dry_run_and_summary() {
    let cluster = Cluster::builder()
        .volumes(1)
        .volume_args(["--compaction-threshold", "0"])
        .start()
        .await;
    let client = cluster.client().await;
    let (kept, deleted) = fill_and_delete(&client, 300, 4).await;
    let (garbage, file_bytes) = garbage_on(&cluster).await;
    assert!(garbage > file_bytes / 2, "{garbage} of {file_bytes}");

    let (ok, out) = hayloft(
        &cluster,
        &["compact", "--all", "--min-garbage", "0.3", "--dry-run"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("reclaimable") && out.contains("would reclaim"),
        "{out}"
    );
    assert_eq!(
        garbage_on(&cluster).await,
        (garbage, file_bytes),
        "a dry run changed something"
    );

    let (ok, out) = hayloft(&cluster, &["compact", "--all", "--min-garbage", "0.3"]);
    assert!(ok, "{out}");
    assert!(out.contains("reclaimed"), "{out}");
    let (garbage_after, file_after) = garbage_on(&cluster).await;
    assert_eq!(garbage_after, 0);
    assert!(file_after < file_bytes / 2, "{file_after} of {file_bytes}");
    check_reads(&cluster, &kept, &deleted).await;

    // Naming a volume that does not exist is a clear error.
    let (ok, out) = hayloft(&cluster, &["compact", "--volume", "999"]);
    assert!(!ok);
    assert!(out.contains("volume 999"), "{out}");
    // Uploads work after the swap.
    let after = client
        .upload(Bytes::from_static(b"after"), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        &client.download(&after.blob_id).await.unwrap().1[..],
        b"after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_past_the_threshold_is_compacted_automatically() {
    let cluster = Cluster::builder()
        .volumes(1)
        .volume_args([
            "--compaction-threshold",
            "0.3",
            "--compaction-check-interval",
            "500ms",
            "--compaction-min-garbage",
            "0",
        ])
        .start()
        .await;
    let client = cluster.client().await;
    let (kept, deleted) = fill_and_delete(&client, 400, 3).await;
    // Two thirds were deleted: without compaction the garbage ratio stays
    // near 0.66. The scheduler brings every volume back under the threshold
    // (new deletes after a compaction may leave a little garbage).
    let uploaded_bytes = 400 * 4096;
    eventually(secs(30), "every volume compacted", async || {
        let (garbage, file_bytes) = garbage_on(&cluster).await;
        ((garbage as f64) < 0.3 * file_bytes as f64 && file_bytes < uploaded_bytes * 6 / 10)
            .then_some(())
            .ok_or(format!("{garbage} bytes of garbage in {file_bytes}"))
    })
    .await;
    check_reads(&cluster, &kept, &deleted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_progress_of_a_running_compaction() {
    // 1 MiB/s over ~4 MiB of live needles: the copy takes seconds.
    let cluster = Cluster::builder()
        .volumes(1)
        .volume_args(["--compaction-threshold", "0", "--compaction-rate", "1MiB"])
        .start()
        .await;
    let client = cluster.client().await;
    let kept = support::upload_half_deleted(&client, 512, 16 << 10).await;
    let mut compact =
        support::hayloft_in_background(&cluster, &["compact", "--all", "--min-garbage", "0.1"]);
    // `hayloft status` shows it, from the server's heartbeats.
    let line = eventually(secs(30), "a compaction in progress shown", async || {
        let (ok, out) = hayloft(&cluster, &["status"]);
        assert!(ok, "{out}");
        if let Some(line) = out
            .lines()
            .find(|l| l.contains("compact") && l.contains('%'))
        {
            return Ok(line.to_owned());
        }
        assert!(
            compact.child.try_wait().unwrap().is_none(),
            "the compaction ended before status showed it: {out}"
        );
        Err(out)
    })
    .await;
    let percent: u32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("compact"))
        .and_then(|w| w.trim_end_matches('%').trim().parse().ok())
        .unwrap_or_else(|| {
            // "compact 12%" may be split in two words.
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "compact").unwrap();
            words[at + 1].trim_end_matches('%').parse().unwrap()
        });
    assert!(percent < 100, "{line}");
    assert!(
        tokio::task::spawn_blocking(move || compact.child.wait().unwrap())
            .await
            .unwrap()
            .success()
    );
    // Done: the next heartbeat (one pulse) says so.
    eventually(
        secs(10),
        "status to stop showing the compaction",
        async || {
            let (ok, out) = hayloft(&cluster, &["status"]);
            (ok && !out.contains("compact")).then_some(()).ok_or(out)
        },
    )
    .await;
    for blob_id in &kept {
        client.download(blob_id).await.unwrap();
    }
}
