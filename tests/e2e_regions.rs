//! End-to-end regions with real processes: two `hayloft server`s, each a
//! region told of the other by flags. An upload in one reads back from the
//! other's origin (counted as `source="region"` in its `/metrics`),
//! `hayloft status --json` lists both regions, and a bad `--replicate-to`
//! stops a directory naming the flag.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use hayloft_client::UploadOptions;
use support::regions::*;
use support::{content, eventually, secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_as_two_regions_read_each_others_blobs() {
    let root = tempfile::tempdir().unwrap();
    let (ports_a, ports_b) = (ports(), ports());
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
    let (in_a, data_a) = upload_seeded(&client_of(&a.directory).await, 1, 20_000).await;
    let (in_b, _) = upload_seeded(&client_of(&b.directory).await, 2, 20_000).await;
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
            &addr(),
            "--data-dir",
            &root.path().join("d").display().to_string(),
            "--metrics-listen",
            &addr(),
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

/// Region a replicates to region b. Blobs uploaded and deleted in a reach
/// b (its own copy: they read from b with a killed); b killed while a
/// uploads and deletes more, then restarted, catches up from its position;
/// nothing deleted comes back, and a applies nothing of its own from b's
/// log (no loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_ships_its_blobs_and_deletes_and_a_killed_target_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let (ports_a, ports_b) = (ports(), ports());
    let a = region_a(root.path(), &ports_a, &ports_b);
    let b = region_b(root.path(), &ports_a, &ports_b, "b", &[]);
    let client = client_of(&a.directory).await;
    let upload = async |seed: u64| {
        upload_seeded(&client, seed, 1_000 + (seed as usize * 977) % 30_000).await
    };
    let mut live = Vec::new();
    for seed in 0..40 {
        live.push(upload(seed).await);
    }
    let mut deleted = Vec::new();
    for _ in 0..10 {
        let (id, _) = live.remove(0);
        client.delete(&id).await.unwrap();
        deleted.push(id);
    }
    shipped(root.path(), &b, &["a"], 30.0, 10.0).await;

    // b down while a goes on: more blobs, more deletes (also of blobs b has).
    b.server.kill();
    for seed in 100..120 {
        live.push(upload(seed).await);
    }
    for _ in 0..5 {
        let (id, _) = live.remove(0);
        client.delete(&id).await.unwrap();
        deleted.push(id);
    }
    let b = region_b(root.path(), &ports_a, &ports_b, "b-again", &[]);
    shipped(root.path(), &b, &["a"], 20.0, 5.0).await;
    // b's status shows how far it is behind a: caught up, and what it
    // cost; a's shows how far b is behind a's logs, as b's directory
    // answers its probe: nothing left.
    caught_up_in_status(&b.directory, "a", "lag").await;
    caught_up_in_status(&a.directory, "b", "behind").await;
    // a's operator page, in a real browser, shows both regions: b
    // reachable and caught up with a; and b's shows a with what b fetched.
    let png = root.path().join("page-a.png");
    let dom = support::browse(&format!("http://{}/", a.metrics), &png);
    let b_row = [r#"class="region""#, r#"data-region="b""#];
    assert_eq!(
        support::attribute(&dom, &b_row, "data-reachable").as_deref(),
        Some("true"),
        "{dom}"
    );
    assert_eq!(
        support::attribute(&dom, &b_row, "data-behind-entries").as_deref(),
        Some("0")
    );
    let dom = support::browse(&format!("http://{}/", b.metrics), &png);
    let a_row = [r#"class="region""#, r#"data-region="a""#];
    assert_eq!(
        support::attribute(&dom, &a_row, "data-lag-entries").as_deref(),
        Some("0"),
        "{dom}"
    );
    assert!(
        support::attribute(&dom, &a_row, "data-shipped-bytes")
            .and_then(|b| b.parse::<u64>().ok())
            .is_some_and(|b| b > 0)
    );
    // A volume b keeps stays in a's local tiers: a move to cold by hand
    // is refused (the plan leaves it out too: tiering's unit tests).
    let volume = live[0]
        .0
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume();
    let moved = std::process::Command::new(support::BIN)
        .args([
            "tier",
            "move",
            "--volume",
            &volume.0.to_string(),
            "--to",
            "cold",
            "--bucket",
            "archive",
            "--directory",
            &a.directory,
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&moved.stderr);
    assert!(
        !moved.status.success() && said.contains("kept by other regions"),
        "{said}"
    );
    // a follows b's log too (for deletes made in b) and takes nothing of
    // what came from itself.
    let text = metrics_of(&a).await;
    for name in ["needles", "tombstones"] {
        let series = format!("hayloft_region_shipped_{name}_total{{from=\"b\"}}");
        assert_eq!(metric(&text, &series).unwrap_or(0.0), 0.0, "{series}");
    }

    // With a gone, b answers every blob from its own copy.
    a.server.kill();
    reads_all_from(&b, &live, &deleted).await;
}

/// Three regions: a and b replicate to each other and to c; c replicates
/// nowhere. Each blob reaches each region that keeps it once (no loop:
/// b takes nothing from c's copies of a's volumes, which it has from a);
/// a delete made in b of a's blob reaches a and c; c's blobs never leave c
/// (no volume file of c's on a's or b's disks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_ship_each_blob_once_per_region_and_keep_what_stays_home() {
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<[String; 4]> = (0..3).map(|_| ports()).collect();
    let names = ["a", "b", "c"];
    let table = |me: usize| {
        (0..3)
            .filter(|i| *i != me)
            .map(|i| format!("{}:{i}={}", names[i], ports[i][0]))
            .collect::<Vec<_>>()
            .join(";")
    };
    let targets: [&[&str]; 3] = [&["--replicate-to", "b,c"], &["--replicate-to", "a,c"], &[]];
    let regions: Vec<Region> = (0..3)
        .map(|i| {
            start_with(
                root.path(),
                names[i],
                &format!("{}:{i}", names[i]),
                &table(i),
                ports[i].clone(),
                targets[i],
                names[i],
            )
        })
        .collect();
    let mut blobs: Vec<Vec<(String, Bytes)>> = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let client = client_of(&region.directory).await;
        let mut mine = Vec::new();
        for seed in 0..12 {
            mine.push(
                upload_seeded(&client, 1000 * i as u64 + seed, 5_000 + seed as usize * 311).await,
            );
        }
        blobs.push(mine);
    }
    // a's blobs in b and c, b's in a and c, once each.
    shipped(root.path(), &regions[0], &["b", "c"], 12.0, 0.0).await;
    shipped(root.path(), &regions[1], &["a", "c"], 12.0, 0.0).await;
    shipped(root.path(), &regions[2], &["a", "b"], 24.0, 0.0).await;
    // A delete in b of one of a's blobs: applied in b at once, then in a
    // (a follows b's log) and c.
    let (gone, _) = blobs[0].remove(0);
    client_of(&regions[1].directory)
        .await
        .delete(&gone)
        .await
        .unwrap();
    for region in &regions {
        eventually(secs(60), "the delete everywhere", async || {
            let read = reqwest::get(format!("http://{}/{gone}", region.http))
                .await
                .map_err(|e| e.to_string())?;
            if read.status() == 404 {
                Ok(())
            } else {
                Err(format!("{}: {}", region.http, read.status()))
            }
        })
        .await;
    }
    shipped(root.path(), &regions[0], &["b", "c"], 12.0, 1.0).await;
    shipped(root.path(), &regions[2], &["a", "b"], 24.0, 1.0).await;
    for (i, region) in regions.iter().enumerate() {
        let text = metrics_of(region).await;
        let total = |name: &str, from: &str| {
            metric(
                &text,
                &format!("hayloft_region_shipped_{name}_total{{from=\"{from}\"}}"),
            )
            .unwrap_or(0.0)
        };
        let fetched: f64 = names.iter().map(|from| total("needles", from)).sum();
        // Each region fetched exactly the blobs of the regions replicating
        // to it, each once.
        let expected = match i {
            0 => 12.0,
            1 => 12.0,
            _ => 24.0,
        };
        assert_eq!(fetched, expected, "region {}:\n{text}", names[i]);
    }
    // c's blobs stayed in c: no volume of c's numbers on a's or b's disks.
    let c_volume = blobs[2][0]
        .0
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume();
    assert_eq!(c_volume.region().0, 2);
    for name in ["a", "b"] {
        let found = walk(&root.path().join(name))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{c_volume}.")))
            })
            .collect::<Vec<_>>();
        assert!(found.is_empty(), "c's volume on {name}'s disks: {found:?}");
    }
    // And every blob still reads from every region.
    for region in &regions {
        for mine in &blobs {
            for (id, data) in mine {
                let read = reqwest::get(format!("http://{}/{id}", region.http))
                    .await
                    .unwrap();
                assert_eq!(read.status(), 200, "{id} from {}", region.http);
                assert_eq!(&read.bytes().await.unwrap(), data);
            }
        }
    }
}

/// A follower that crashes (a failpoint aborts it) after applying log
/// entries and before writing its position past them applies them again
/// when it is back: nothing is missed and nothing is written twice (its
/// own log has each needle once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_crashing_before_its_position_applies_the_entries_again_and_writes_nothing_twice()
 {
    let root = tempfile::tempdir().unwrap();
    let (ports_a, ports_b) = (ports(), ports());
    let a = region_a(root.path(), &ports_a, &ports_b);
    let failpoint = support::Failpoint::new("follow-before-position");
    failpoint.arm();
    let mut b = region_b(
        root.path(),
        &ports_a,
        &ports_b,
        "b",
        &[("HAYLOFT_FAILPOINT".to_owned(), failpoint.env())],
    );
    let client = client_of(&a.directory).await;
    let mut live = Vec::new();
    for seed in 0..30 {
        live.push(upload_seeded(&client, 500 + seed, 2_000 + seed as usize * 701).await);
    }
    eventually(secs(60), "b to crash at the failpoint", async || {
        if b.server.exited() {
            Ok(())
        } else {
            Err(support::log_tails(root.path()))
        }
    })
    .await;
    failpoint.disarm();
    let b = region_b(root.path(), &ports_a, &ports_b, "b-again", &[]);
    shipped(root.path(), &b, &["a"], 0.0, 0.0).await;
    let volume = live[0]
        .0
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume();
    let mut copy =
        hayloft_proto::volume_client::VolumeClient::connect(format!("http://{}", ports_b[1]))
            .await
            .unwrap();
    let log = copy
        .read_log(hayloft_proto::ReadLogRequest {
            volume_id: volume.0,
            from: 0,
            max: 4096,
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<u64> = log.entries.iter().map(|e| e.needle_id).collect();
    assert_eq!(log.total, 30, "b's log: {ids:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30, "each needle once in b's copy");
    a.server.kill();
    reads_all_from(&b, &live, &[]).await;
}

/// A delete made in the target region of a blob whose needle has not been
/// shipped there yet (its follower is held back by a failpoint) is made
/// in the region that created the blob: it is gone there at once, gone in
/// the target, and when the follower catches up, the target keeps the
/// tombstone, so the blob stays gone there with the creator killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_the_target_of_a_blob_not_shipped_yet_is_made_where_it_was_created() {
    let root = tempfile::tempdir().unwrap();
    let (ports_a, ports_b) = (ports(), ports());
    let a = region_a(root.path(), &ports_a, &ports_b);
    let paused = support::Failpoint::new("follow-paused");
    paused.arm();
    let b = region_b(
        root.path(),
        &ports_a,
        &ports_b,
        "b",
        &[("HAYLOFT_FAILPOINT".to_owned(), paused.env())],
    );
    let client_a = client_of(&a.directory).await;
    let mut live = Vec::new();
    for seed in 0..10 {
        live.push(upload_seeded(&client_a, 900 + seed, 3_000 + seed as usize * 313).await);
    }
    let volume = live[0]
        .0
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume();
    // b keeps a copy of the volume (adopted), still empty.
    eventually(secs(60), "b to keep a copy of a's volume", async || {
        let mut directory = hayloft_proto::directory_client::DirectoryClient::connect(format!(
            "http://{}",
            b.directory
        ))
        .await
        .map_err(|e| e.to_string())?;
        let answer = directory
            .lookup(hayloft_proto::LookupRequest {
                volume_ids: vec![volume.0],
                blob_ids: Vec::new(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let kept = answer
            .volumes
            .iter()
            .any(|v| v.locations.iter().any(|l| l.grpc_addr == ports_b[1]));
        if kept {
            Ok(())
        } else {
            Err(format!("{answer:?}\n{}", support::log_tails(root.path())))
        }
    })
    .await;
    let text = metrics_of(&b).await;
    let series = "hayloft_region_shipped_needles_total{from=\"a\"}";
    assert_eq!(metric(&text, series).unwrap_or(0.0), 0.0, "{series}");

    let (gone, _) = live.remove(0);
    let client_b = client_of(&b.directory).await;
    client_b.delete(&gone).await.unwrap();
    for region in [&a, &b] {
        let read = reqwest::get(format!("http://{}/{gone}", region.http))
            .await
            .unwrap();
        assert_eq!(read.status(), 404, "{gone} at {}", region.http);
    }

    paused.disarm();
    shipped(root.path(), &b, &["a"], 9.0, 1.0).await;
    a.server.kill();
    reads_all_from(&b, &live, &[gone]).await;
}

/// The region drill (README, "Regions: a drill"): regions a and b
/// replicate to each other; a client given both uploads and reads under
/// load. Region a is SIGKILLed mid-load: no upload or read of a shipped
/// blob fails (uploads go to b, reads of a's blobs come from b's copies),
/// and a delete of one of a's blobs is made in b. a returns, catches up
/// with everything b took meanwhile (blobs, and the delete of its own
/// blob), and with b killed, a serves it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_drill_stops_a_under_load_and_it_catches_up_when_it_returns() {
    let root = tempfile::tempdir().unwrap();
    let (ports_a, ports_b) = (ports(), ports());
    let start_a = |log: &str| {
        start_with(
            root.path(),
            "a",
            "a:0",
            &format!("b:1={}", ports_b[0]),
            ports_a.clone(),
            &["--replicate-to", "b"],
            log,
        )
    };
    let a = start_a("a");
    let b = start_with(
        root.path(),
        "b",
        "b:1",
        &format!("a:0={}", ports_a[0]),
        ports_b.clone(),
        &["--replicate-to", "a"],
        "b",
    );
    // Both directories answer before the client is made (it asks each
    // for its region).
    client_of(&a.directory).await;
    client_of(&b.directory).await;
    let list = vec![
        hayloft_client::RegionDirectory {
            name: "a".into(),
            directory: vec![a.directory.clone()],
        },
        hayloft_client::RegionDirectory {
            name: "b".into(),
            directory: vec![b.directory.clone()],
        },
    ];
    let client = std::sync::Arc::new(
        hayloft_client::Client::connect_regions(list, hayloft_proto::Credential::none())
            .await
            .unwrap()
            .with_failover(hayloft_client::Failover {
                skip_for: std::time::Duration::from_secs(2),
                ..hayloft_client::Failover::default()
            }),
    );
    let options = UploadOptions::default();
    let mut in_a = Vec::new();
    for seed in 0..30 {
        let data = Bytes::from(content(2_000 + seed, 4_000 + seed as usize * 211));
        let uploaded = client.upload(data.clone(), &options).await.unwrap();
        assert_eq!(uploaded.region, "a");
        in_a.push((uploaded.blob_id, data));
    }
    shipped(root.path(), &b, &["a"], 30.0, 0.0).await;

    // Under load: one task uploads, one reads a's (shipped) blobs; a is
    // killed in the middle.
    let uploads = {
        let client = std::sync::Arc::clone(&client);
        tokio::spawn(async move {
            let mut made = Vec::new();
            for seed in 0..40u64 {
                let data = Bytes::from(content(3_000 + seed, 3_000 + seed as usize * 97));
                let uploaded = client.upload(data.clone(), &UploadOptions::default()).await;
                made.push((uploaded.map_err(|e| e.to_string()), data));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            made
        })
    };
    let reads = {
        let client = client.clone();
        let in_a = in_a.clone();
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for round in 0..3 {
                for (id, data) in &in_a {
                    match client.download(id).await {
                        Ok((_, bytes)) if bytes == *data => {}
                        Ok(_) => failed.push(format!("round {round}: {id}: other bytes")),
                        Err(e) => failed.push(format!("round {round}: {id}: {e}")),
                    }
                }
            }
            failed
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    a.server.kill();
    let made = uploads.await.unwrap();
    let failed = reads.await.unwrap();
    assert!(failed.is_empty(), "reads that failed: {failed:?}");
    let mut in_b = Vec::new();
    for (uploaded, data) in made {
        let uploaded = uploaded.unwrap_or_else(|e| panic!("an upload failed: {e}"));
        if uploaded.region == "b" {
            in_b.push((uploaded.blob_id, data));
        } else {
            in_a.push((uploaded.blob_id, data));
        }
    }
    assert!(!in_b.is_empty(), "no upload went to b");
    // A delete, made in b, of one of a's blobs (b holds its needle).
    let (gone, _) = in_a.remove(0);
    client.delete(&gone).await.unwrap();

    // a returns and catches up with b: its blobs, and the delete.
    let a = start_a("a-again");
    shipped(root.path(), &a, &["b"], in_b.len() as f64, 1.0).await;
    b.server.kill();
    // a's blobs uploaded just before the kill and not shipped yet were in
    // a all along (its own disk): all of it reads from a.
    let mut all = in_a;
    all.extend(in_b);
    reads_all_from(&a, &all, &[gone]).await;
}

/// A target region with too few servers for its replication cannot keep
/// copies of a volume: `AdoptVolumes` answers why, the creator's
/// `region-adopt` job shows it as its last error, and nothing is made
/// there. Once a second server joins the target, the volume is adopted
/// and every blob shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_too_few_servers_adopts_once_it_has_them() {
    let root = tempfile::tempdir().unwrap();
    let (ports_a, ports_b) = (ports(), ports());
    let a = region_a(root.path(), &ports_a, &ports_b);
    let b = region_b_configured(
        root.path(),
        &ports_a,
        &ports_b,
        "[directory]\nreplication = 2\n",
    );
    let client = client_of(&a.directory).await;
    let mut live = Vec::new();
    for seed in 0..10 {
        live.push(upload_seeded(&client, 7_000 + seed, 2_000 + seed as usize * 509).await);
    }
    // a's adopter says why b keeps nothing yet.
    eventually(
        secs(60),
        "the adoption's problem in a's status",
        async || {
            let status = std::process::Command::new(support::BIN)
                .args(["status", "--json", "--directory", &a.directory])
                .output()
                .map_err(|e| e.to_string())?;
            let json: serde_json::Value =
                serde_json::from_slice(&status.stdout).map_err(|e| e.to_string())?;
            let adopt = json["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j["name"] == "region-adopt")
                .cloned()
                .unwrap_or_default();
            let error = adopt["last_error"].as_str().unwrap_or_default();
            if error.starts_with("b: ") {
                Ok(())
            } else {
                Err(format!("{adopt}\n{}", support::log_tails(root.path())))
            }
        },
    )
    .await;
    let volume = live[0]
        .0
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume();
    let files = walk(&root.path().join("b"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{volume}.")))
        })
        .collect::<Vec<_>>();
    assert!(files.is_empty(), "half-made copies in b: {files:?}");

    // A second server in b: the volume is adopted, its blobs shipped.
    let _second = support::spawn(
        &[
            "volume",
            "--data-dir",
            root.path().join("b2").to_str().unwrap(),
            "--server-id",
            "b2",
            "--grpc-listen",
            &addr(),
            "--http-listen",
            &addr(),
            "--metrics-listen",
            &addr(),
            "--directory",
            &b.directory,
            "--region",
            "b:1",
            "--regions",
            &format!("a:0={}", ports_a[0]),
        ]
        .map(str::to_owned),
        &root.path().join("b2.log"),
    );
    // Whichever of b's copies follows a, the other follows it: b's first
    // server's copy ends up with every needle.
    eventually(secs(60), "b's copy to hold every blob", async || {
        let mut copy =
            hayloft_proto::volume_client::VolumeClient::connect(format!("http://{}", ports_b[1]))
                .await
                .map_err(|e| e.to_string())?;
        let log = copy
            .read_log(hayloft_proto::ReadLogRequest {
                volume_id: volume.0,
                from: 0,
                max: 4096,
            })
            .await
            .map_err(|e| format!("{e}\n{}", support::log_tails(root.path())))?
            .into_inner();
        if log.total == 10 {
            Ok(())
        } else {
            Err(format!("{} of 10", log.total))
        }
    })
    .await;
    a.server.kill();
    reads_all_from(&b, &live, &[]).await;
}

/// b fetches from a at its `ship_rate` at most, and everything arrives:
/// once b follows a (a first blob shipped), 64 blobs of 16 KiB (1 MiB) at
/// 128 KiB/s take b at least 7 s (8 s, less at most a second's worth of
/// unused rate); unpaced, the same takes about a second here. A lower
/// bound only: a slow machine makes it slower, never faster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_fetches_from_another_region_at_its_ship_rate() {
    const BLOBS: u64 = 64;
    const SIZE: usize = 16 * 1024;
    const RATE: f64 = 128.0 * 1024.0;
    let root = tempfile::tempdir().unwrap();
    let (ports_a, ports_b) = (ports(), ports());
    let a = region_a(root.path(), &ports_a, &ports_b);
    let b = region_b_configured(
        root.path(),
        &ports_a,
        &ports_b,
        "[volume]\nship_rate = \"128KiB\"\n",
    );
    let client = client_of(&a.directory).await;
    let mut live = vec![upload_seeded(&client, 8_999, 100).await];
    shipped(root.path(), &b, &["a"], 1.0, 0.0).await;
    let started = std::time::Instant::now();
    for seed in 0..BLOBS {
        live.push(upload_seeded(&client, 9_000 + seed, SIZE).await);
    }
    shipped(root.path(), &b, &["a"], BLOBS as f64 + 1.0, 0.0).await;
    let took = started.elapsed().as_secs_f64();
    let bytes = (BLOBS as usize * SIZE) as f64;
    let fastest = bytes / RATE - 1.0;
    assert!(
        took >= fastest * 0.95,
        "{bytes} bytes shipped in {took:.2} s: faster than 128 KiB/s allows ({fastest:.2} s)"
    );
    let text = metrics_of(&b).await;
    let shipped_bytes = metric(&text, "hayloft_region_shipped_bytes_total{from=\"a\"}").unwrap();
    assert!(shipped_bytes >= bytes, "{shipped_bytes} of {bytes}");
    a.server.kill();
    reads_all_from(&b, &live, &[]).await;
}
