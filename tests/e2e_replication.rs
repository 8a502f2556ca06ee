//! End-to-end replication: real `hayloft` processes, one directory and
//! several volume servers in zones, killed and paused.
//!
//! Why one file of ~1180 lines: its 17 process scenarios share the uploader,
//! the acknowledged-blob ledger and the death/degraded waits at its top; each
//! scenario is long because it kills or pauses real servers and then checks
//! every acknowledged blob on every copy.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayloft_client::{Client, UploadOptions};
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{ReplicaHealth, VolumeHealth, VolumeRecord, VolumeState};
use support::replicas::{
    assert_on_every_copy, assign, read_from, record, replica_ids, until_status, upload_many,
    volumes_on, wait_healthy, wait_on_every_copy, write_to_primary,
};
use support::{Cluster, Failpoint, content, eventually, hayloft, secs, server_index};

/// Flags for volume servers whose copies heal quickly.
const FAST_HEALING: [&str; 4] = ["--anti-entropy-interval", "1s", "--scrub-interval", "1s"];
use tonic::Code;

/// Acknowledged uploads (blob id, seed, length), shared between tasks.
type Acked = Arc<std::sync::Mutex<Vec<(String, u64, usize)>>>;

/// The peak resident memory of a process (VmHWM), in bytes.
fn peak_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Uploads until `stop`, keeping what was acknowledged; every call must end
/// (acknowledged or failed) within `bound`.
fn upload_until(
    client: &Arc<Client>,
    stop: &Arc<AtomicBool>,
    acked: &Acked,
    workers: u64,
    bound: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|worker| {
            let (client, stop, acked) = (Arc::clone(client), Arc::clone(stop), Arc::clone(acked));
            tokio::spawn(async move {
                let mut seed = (worker + 1) << 32;
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    let len = 100 + (seed as usize % 20_000);
                    let started = Instant::now();
                    let result = client
                        .upload(Bytes::from(content(seed, len)), &UploadOptions::default())
                        .await;
                    assert!(
                        started.elapsed() < bound,
                        "an upload took {:?} (bound {bound:?})",
                        started.elapsed()
                    );
                    match result {
                        Ok(uploaded) => acked.lock().unwrap().push((uploaded.blob_id, seed, len)),
                        // A pause between attempts, not a wait for a state.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect()
}

/// Waits until `acked` holds at least `count` uploads (uploaders at work).
async fn uploads_under_way(acked: &Acked, count: usize) {
    eventually(
        secs(60),
        &format!("{count} acknowledged uploads"),
        async || {
            let done = acked.lock().unwrap().len();
            (done >= count).then_some(()).ok_or(done)
        },
    )
    .await;
}

/// Waits until the directory reports `server_id` dead (after dead_after,
/// 4 s here).
async fn noticed_dead(client: &Client, server_id: &str) {
    let what = format!("the directory to notice {server_id} dead");
    until_status(client, Duration::from_secs(30), &what, |status| {
        status
            .servers
            .iter()
            .any(|s| !s.alive && s.location.as_ref().unwrap().server_id == server_id)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_uploads_reach_every_copy_across_zones() {
    let cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let mut acked = upload_many(&client, 600, 12).await;
    // Batched small blobs: a WriteBatch stream per primary, each blob
    // forwarded to the copies.
    let batch: Vec<(u64, usize)> = (0..200u64)
        .map(|i| (3_000_000 + i, 1 + (i as usize * 331) % 60_000))
        .collect();
    let results = client
        .upload_batch(
            batch
                .iter()
                .map(|&(seed, len)| (Bytes::from(content(seed, len)), UploadOptions::default()))
                .collect(),
        )
        .await;
    for ((seed, len), result) in batch.into_iter().zip(results) {
        acked.push((result.unwrap().blob_id, seed, len));
    }
    // A few large blobs stream through the primary to the copies chunk by
    // chunk; one of 256 MiB, held in memory by no server.
    let big = 256 << 20;
    let uploaded = client
        .upload(
            Bytes::from(content(2_000_000, big)),
            &UploadOptions::default(),
        )
        .await
        .unwrap();
    acked.push((uploaded.blob_id, 2_000_000, big));
    for server in 0..4 {
        let peak = peak_rss_bytes(cluster.volume_pid(server));
        assert!(
            peak < 160 << 20,
            "vs{server} peaked at {} MiB for a 256 MiB replicated upload",
            peak >> 20
        );
    }
    for seed in 0..3u64 {
        let len = (5 << 20) + seed as usize * 77_777;
        let uploaded = client
            .upload(
                Bytes::from(content(1_000_000 + seed, len)),
                &UploadOptions::default(),
            )
            .await
            .unwrap();
        acked.push((uploaded.blob_id, 1_000_000 + seed, len));
    }

    let status = wait_healthy(&cluster, 3).await;
    let zone_of: HashMap<String, String> = status
        .servers
        .iter()
        .map(|s| {
            let l = s.location.clone().unwrap();
            (l.server_id, l.zone)
        })
        .collect();
    assert!(!status.volumes.is_empty());
    for volume in &status.volumes {
        let ids = replica_ids(volume);
        assert_eq!(ids.len(), 3, "three copies: {ids:?}");
        assert_eq!(
            ids.iter().collect::<BTreeSet<_>>().len(),
            3,
            "distinct servers: {ids:?}"
        );
        let zones: BTreeSet<_> = ids.iter().map(|id| &zone_of[id]).collect();
        assert_eq!(zones.len(), 2, "copies span both zones: {ids:?}");
        assert_eq!(volume.replication, 3);
    }
    assert_on_every_copy(&cluster, &acked).await;

    // Every server answers HTTP for every blob: from its disk, or through
    // a copy (each volume has one server without a copy here).
    let http = reqwest::Client::new();
    for (blob_id, seed, len) in acked.iter().step_by(37) {
        let expected = content(*seed, *len);
        for server in 0..4 {
            let url = format!("{}/{blob_id}", cluster.http_base(server));
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            let etag = response.headers()["etag"].clone();
            assert_eq!(
                response.bytes().await.unwrap().as_ref(),
                expected.as_slice(),
                "{url}"
            );
            let ranged = http
                .get(&url)
                .header("range", "bytes=0-0")
                .send()
                .await
                .unwrap();
            assert_eq!(ranged.status(), 206, "{url}");
            assert_eq!(ranged.bytes().await.unwrap().as_ref(), &expected[..1]);
            let cached = http
                .get(&url)
                .header("if-none-match", etag.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(cached.status(), 304, "same ETag on every copy: {url}");
        }
    }

    // The operator's view: replicas and health in the table and in JSON.
    let (ok, out) = hayloft(&cluster, &["status"]);
    assert!(ok, "{out}");
    assert!(out.contains("0 under-replicated (replication 3)"), "{out}");
    let (ok, out) = hayloft(&cluster, &["status", "--json"]);
    assert!(ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["under_replicated"], 0);
    let first = &json["volumes"][0]["replicas"];
    assert_eq!(first.as_array().unwrap().len(), 3, "{out}");
    assert_eq!(first[0]["health"], "ok");
    assert!(first[0]["zone"] == "a" || first[0]["zone"] == "b", "{out}");

    // Deletes reach every copy.
    for (blob_id, _, _) in acked.iter().take(20) {
        client.delete(blob_id).await.unwrap();
        let record = record(&status, blob_id);
        for replica in &record.replicas {
            let location = replica.location.clone().unwrap();
            let error = read_from(&location.grpc_addr, blob_id).await.unwrap_err();
            assert_eq!(
                error.code(),
                Code::NotFound,
                "{blob_id} on {}",
                location.server_id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_few_servers_for_the_copies_refuses_volume_creation() {
    let cluster = Cluster::builder()
        .zones(&["a", "b"])
        .replication(3)
        .start()
        .await;
    let client = cluster.client().await;
    let error = client
        .upload(Bytes::from_static(b"x"), &UploadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    assert!(
        error
            .to_string()
            .contains("replication 3 needs 3 live volume servers"),
        "{error}"
    );
    let status = client.status().await.unwrap();
    assert!(status.volumes.is_empty(), "no volume with fewer copies");
    let (_, out) = hayloft(&cluster, &["status"]);
    assert!(out.contains("PROBLEM: cannot create a volume"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_copy_during_uploads_loses_nothing() {
    let mut cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .volume_args(["--anti-entropy-interval", "1s"])
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let uploaders = upload_until(&client, &stop, &acked, 8, Duration::from_secs(30));
    uploads_under_way(&acked, 20).await;
    // Kill a server holding a copy of a volume being written.
    let victim = {
        let status = client.status().await.unwrap();
        let written = acked.lock().unwrap().last().unwrap().0.clone();
        replica_ids(record(&status, &written))[1].clone()
    };
    cluster.kill_volume(server_index(&victim));
    // Uploads go on (on volumes placed on the three survivors, once the
    // directory has noticed the death).
    noticed_dead(&client, &victim).await;
    let before = acked.lock().unwrap().len();
    uploads_under_way(&acked, before + 21).await;
    stop.store(true, Ordering::Relaxed);
    for uploader in uploaders {
        uploader.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > before + 20,
        "uploads went on after the kill: {} then {}",
        before,
        acked.len()
    );

    // Every acknowledged blob reads back, through the client's failover,
    // and from every surviving copy.
    let reader = cluster.client().await;
    let status = reader.status().await.unwrap();
    for (blob_id, seed, len) in &acked {
        let (_, data) = reader.download(blob_id).await.unwrap();
        assert_eq!(data.as_ref(), content(*seed, *len).as_slice(), "{blob_id}");
        for id in replica_ids(record(&status, blob_id)) {
            if id == victim {
                continue;
            }
            let data = read_from(&cluster.grpc_addr(server_index(&id)), blob_id)
                .await
                .unwrap_or_else(|e| panic!("{blob_id} on {id}: {e}"));
            assert_eq!(data, content(*seed, *len), "{blob_id} on {id}");
        }
    }
    // Over HTTP from every surviving server, copy or not (proxied).
    let http = reqwest::Client::new();
    for (blob_id, seed, len) in acked.iter().step_by(5) {
        for server in (0..4).filter(|i| *i != server_index(&victim)) {
            let url = format!("{}/{blob_id}", cluster.http_base(server));
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            // Purge tags, with the collection, from whichever server read it.
            let keys = response.headers()["surrogate-key"].to_str().unwrap();
            assert!(
                keys.contains(&format!("blob-{blob_id}")) && keys.contains("collection-default"),
                "{url}: {keys}"
            );
            assert_eq!(
                response.bytes().await.unwrap().as_ref(),
                content(*seed, *len).as_slice(),
                "{url}"
            );
        }
    }
    // The dead server's volumes are degraded (no writes), and say why.
    let degraded: Vec<_> = status
        .volumes
        .iter()
        .filter(|v| replica_ids(v).contains(&victim))
        .collect();
    assert!(!degraded.is_empty());
    for volume in degraded {
        assert_eq!(volume.health, VolumeHealth::Degraded as i32);
        let copy = volume
            .replicas
            .iter()
            .find(|r| r.location.as_ref().unwrap().server_id == victim)
            .unwrap();
        assert!(
            copy.health == ReplicaHealth::Down as i32 || copy.health == ReplicaHealth::Stale as i32,
            "{copy:?}"
        );
        assert_eq!(volume.state, VolumeState::Writable as i32);
    }

    // The server returns: its copies that missed writes catch up, and
    // every acknowledged blob is on three copies again.
    cluster.start_volume(server_index(&victim));
    wait_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_copy_fails_writes_within_the_deadline() {
    let cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .volume_args(["--replica-timeout", "2s", "--anti-entropy-interval", "1s"])
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    // Volumes exist and hold data on every server.
    let first = upload_many(&client, 40, 4).await;
    let acked: Acked = Arc::new(std::sync::Mutex::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let uploaders = upload_until(&client, &stop, &acked, 6, Duration::from_secs(40));
    uploads_under_way(&acked, 60).await;
    cluster.pause_volume(3);
    // The paused server is declared dead after 4 s; volumes are then placed
    // on the other three and writes go on: an uploader held by a write to
    // the hung copy is freed by --replica-timeout (2 s), so 21 more uploads
    // come well within 20 s (writes that blocked on the hung copy for good
    // would stall every uploader).
    noticed_dead(&client, "vs3").await;
    let before = acked.lock().unwrap().len();
    eventually(
        secs(20),
        "writes to go on elsewhere while a copy hangs",
        async || {
            let done = acked.lock().unwrap().len();
            (done > before + 20).then_some(()).ok_or(done)
        },
    )
    .await;
    let during = acked.lock().unwrap().len();
    cluster.resume_volume(3);
    stop.store(true, Ordering::Relaxed);
    for uploader in uploaders {
        uploader.await.unwrap();
    }
    assert!(
        during > before + 20,
        "writes succeeded elsewhere while a copy hung: {before} then {during}"
    );
    let acked = acked.lock().unwrap().clone();
    let reader = cluster.client().await;
    for (blob_id, seed, len) in &acked {
        let (_, data) = reader.download(blob_id).await.unwrap();
        assert_eq!(data.as_ref(), content(*seed, *len).as_slice(), "{blob_id}");
    }
    // Resumed, the paused server's copies catch up with what they missed.
    wait_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_server_is_refilled_from_the_other_copies() {
    let mut cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .volume_args(FAST_HEALING)
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let acked = upload_many(&client, 300, 8).await;
    wait_healthy(&cluster, 3).await;
    // A replaced disk: same server id, empty data directory.
    cluster.stop_volume(1);
    std::fs::remove_dir_all(cluster.volume_dir(1)).unwrap();
    cluster.start_volume(1);
    wait_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_server_is_replaced_and_its_copy_removed_when_it_returns() {
    let mut cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .directory_args(["--repair-after", "2s"])
        .volume_args(FAST_HEALING)
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let acked = upload_many(&client, 300, 8).await;
    let status = wait_healthy(&cluster, 3).await;
    let lost = replica_ids(record(&status, &acked[0].0))[0].clone();
    let held: Vec<u32> = status
        .volumes
        .iter()
        .filter(|v| replica_ids(v).contains(&lost))
        .map(|v| v.status.as_ref().unwrap().volume_id)
        .collect();
    let lost_index = server_index(&lost);
    cluster.kill_volume(lost_index);
    // After repair_after, each of its copies is made again on the one
    // server that had none, and verified.
    until_status(
        &client,
        Duration::from_secs(60),
        "copies were not replaced",
        |status| {
            status
                .volumes
                .iter()
                .all(|v| {
                    !replica_ids(v).contains(&lost)
                        && v.health == VolumeHealth::Ok as i32
                        && v.replicas.len() == 3
                })
                .then_some(())
        },
    )
    .await;
    assert_on_every_copy(&cluster, &acked).await;
    // Zones still spread.
    let status = client.status().await.unwrap();
    for volume in &status.volumes {
        let zones: BTreeSet<String> = volume
            .replicas
            .iter()
            .map(|r| r.location.clone().unwrap().zone)
            .collect();
        assert_eq!(zones.len(), 2, "{volume:?}");
    }
    // The lost server returns: its old copies are extra now, and go.
    cluster.start_volume(lost_index);
    eventually(secs(30), "the extra copies removed", async || {
        let on_disk = volumes_on(&cluster, lost_index).await;
        on_disk
            .as_ref()
            .is_some_and(|on_disk| !on_disk.iter().any(|id| held.contains(id)))
            .then_some(())
            .ok_or(on_disk)
    })
    .await;
    assert_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_deleted_while_a_copy_is_down_stay_deleted_everywhere() {
    let mut cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .volume_args(FAST_HEALING)
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let acked = upload_many(&client, 200, 8).await;
    wait_healthy(&cluster, 3).await;
    cluster.kill_volume(2);
    let (deleted, kept) = acked.split_at(60);
    for (blob_id, _, _) in deleted {
        client.delete(blob_id).await.unwrap();
    }
    cluster.start_volume(2);
    wait_on_every_copy(&cluster, kept).await;
    // Compaction on every copy, and anti-entropy rounds after it.
    for server in 0..3 {
        let mut volume_client =
            VolumeClient::connect(format!("http://{}", cluster.grpc_addr(server)))
                .await
                .unwrap();
        let mut progress = volume_client
            .compact(hayloft_proto::CompactRequest {
                all: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        while progress.message().await.unwrap().is_some() {}
    }
    // Time, not a state: anti-entropy rounds (1 s apart) that must bring
    // nothing back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let http = reqwest::Client::new();
    for (blob_id, _, _) in deleted {
        for server in 0..3 {
            let error = read_from(&cluster.grpc_addr(server), blob_id)
                .await
                .unwrap_err();
            assert_eq!(
                error.code(),
                Code::NotFound,
                "{blob_id} came back on vs{server}"
            );
            let url = format!("{}/{blob_id}", cluster.http_base(server));
            assert_eq!(http.get(&url).send().await.unwrap().status(), 404, "{url}");
        }
    }
    assert_on_every_copy(&cluster, kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_bytes_in_one_copy_are_never_served_and_are_healed() {
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .volume_args(FAST_HEALING)
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let acked = upload_many(&client, 120, 4).await;
    wait_healthy(&cluster, 3).await;
    // Flip bytes all through the data files of vs0's copies (past the
    // superblock): bit rot under a running server.
    let hot = cluster.volume_dir(0).join("hot");
    for entry in std::fs::read_dir(&hot).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "dat") {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let len = file.metadata().unwrap().len();
            let mut offset = 4096;
            while offset + 8 < len {
                let mut bytes = [0u8; 8];
                file.read_exact_at(&mut bytes, offset).unwrap();
                for b in &mut bytes {
                    *b ^= 0x5a;
                }
                file.write_all_at(&bytes, offset).unwrap();
                offset += 20_011;
            }
        }
    }
    // No read returns wrong bytes: HTTP from vs0 is served by another copy
    // when its own fails the checksum; gRPC says DATA_LOSS or is right.
    let http = reqwest::Client::new();
    for (blob_id, seed, len) in &acked {
        let expected = content(*seed, *len);
        let url = format!("{}/{blob_id}", cluster.http_base(0));
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            expected.as_slice(),
            "{url}"
        );
        match read_from(&cluster.grpc_addr(0), blob_id).await {
            Ok(data) => assert_eq!(data, expected, "{blob_id}: wrong bytes served"),
            Err(e) => assert!(
                matches!(e.code(), Code::DataLoss | Code::NotFound),
                "{blob_id}: {e}"
            ),
        }
    }
    // Scrub finds the bad records and copies them again from good copies.
    eventually(secs(60), "every blob readable on vs0 again", async || {
        let mut bad = 0;
        for (blob_id, seed, len) in &acked {
            match read_from(&cluster.grpc_addr(0), blob_id).await {
                Ok(data) => assert_eq!(data, content(*seed, *len)),
                Err(_) => bad += 1,
            }
        }
        (bad == 0)
            .then_some(())
            .ok_or_else(|| format!("{bad} blobs unreadable"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hayloft_repair_plans_then_repairs_without_waiting_for_repair_after() {
    let mut cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .directory_args(["--repair-after", "1h"])
        .volume_args(FAST_HEALING)
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let acked = upload_many(&client, 200, 8).await;
    let status = wait_healthy(&cluster, 3).await;
    let lost = replica_ids(record(&status, &acked[0].0))[0].clone();
    cluster.kill_volume(server_index(&lost));
    // Degraded once the directory notices (dead_after 4 s).
    eventually(secs(30), "the loss noticed", async || {
        let status = client.status().await.unwrap();
        status
            .volumes
            .iter()
            .any(|v| v.health != VolumeHealth::Ok as i32)
    })
    .await;
    let (ok, out) = hayloft(&cluster, &["repair", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("in place of the one on {lost}")),
        "{out}"
    );
    // Nothing ran: repair_after is an hour.
    assert!(
        client
            .status()
            .await
            .unwrap()
            .volumes
            .iter()
            .any(|v| replica_ids(v).contains(&lost))
    );
    let (ok, out) = hayloft(&cluster, &["repair"]);
    assert!(ok, "{out}");
    assert!(out.contains("repaired"), "{out}");
    let status = client.status().await.unwrap();
    for volume in &status.volumes {
        assert!(!replica_ids(volume).contains(&lost), "{volume:?}");
        assert_eq!(volume.health, VolumeHealth::Ok as i32);
    }
    assert_on_every_copy(&cluster, &acked).await;
}

/// Uploads `count` blobs of about 1 MiB, waits until every volume has its
/// 3 copies, then SIGKILLs the server holding the first blob's first copy
/// (for good). Answers the acknowledged blobs and the lost server's id.
async fn upload_then_lose_a_copy(
    cluster: &mut Cluster,
    client: &Client,
    count: u64,
) -> (Vec<(String, u64, usize)>, String) {
    let mut acked = Vec::new();
    for seed in 0..count {
        let len = (1 << 20) + seed as usize;
        let uploaded = client
            .upload(Bytes::from(content(seed, len)), &UploadOptions::default())
            .await
            .unwrap();
        acked.push((uploaded.blob_id, seed, len));
    }
    let status = wait_healthy(cluster, 3).await;
    let lost = replica_ids(record(&status, &acked[0].0))[0].clone();
    cluster.kill_volume(server_index(&lost));
    (acked, lost)
}

/// Four servers in two zones, replication 3, repairs after 1 s at
/// `repair_rate`: `blobs` blobs of 1 MiB uploaded, then a copy lost
/// ([`upload_then_lose_a_copy`]).
async fn repairing_after_a_loss(
    repair_rate: &str,
    blobs: u64,
) -> (Cluster, Arc<Client>, Vec<(String, u64, usize)>, String) {
    let mut cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .directory_args(["--repair-after", "1s"])
        .volume_args([
            "--anti-entropy-interval",
            "1s",
            "--repair-rate",
            repair_rate,
        ])
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let (acked, lost) = upload_then_lose_a_copy(&mut cluster, &client, blobs).await;
    (cluster, client, acked, lost)
}

/// Waits (30 s at most) until a volume's repair has copied something, and
/// returns that volume's record.
async fn repair_under_way(client: &Client) -> VolumeRecord {
    until_status(
        client,
        Duration::from_secs(30),
        "no repair under way",
        |status| {
            status
                .volumes
                .iter()
                .find(|v| v.repairing && v.repair_progress > 0.0)
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_resumes_after_its_target_and_the_directory_die() {
    let (mut cluster, client, acked, lost) = repairing_after_a_loss("2MiB", 24).await;
    // A repair starts (2 MiB/s: it takes seconds); kill its target mid-copy.
    let target = until_status(
        &client,
        Duration::from_secs(30),
        "no repair started",
        |status| {
            let holders = replica_ids(status.volumes.iter().find(|v| v.repairing)?);
            (0..4)
                .map(|i| format!("vs{i}"))
                .find(|id| !holders.contains(id))
        },
    )
    .await;
    // Its progress shows, from the target's heartbeats.
    let progress = until_status(
        &client,
        Duration::from_secs(15),
        "no repair progress",
        |status| {
            status
                .volumes
                .iter()
                .find(|v| v.repairing)
                .map(|v| v.repair_progress)
                .filter(|p| *p > 0.0)
        },
    )
    .await;
    assert!(progress < 1.0, "repair progress {progress}");
    let (ok, out) = hayloft(&cluster, &["status"]);
    assert!(
        ok && out.contains("repairing ") && out.contains('%'),
        "{out}"
    );
    cluster.kill_volume(server_index(&target));
    // And the directory, while the repair is being retried: once the
    // failure is recorded (the counter moves after the job has ended; the
    // log line comes before).
    let failed = r#"hayloft_directory_repairs_total{result="failed"}"#;
    let metrics = format!(
        "http://127.0.0.1:{}/metrics",
        cluster.directory_metrics_port()
    );
    eventually(
        secs(30),
        "the directory to record the repair's failure",
        async || {
            let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
            let count = text
                .lines()
                .find(|l| l.starts_with(failed))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())?;
            (count >= 1.0).then_some(())
        },
    )
    .await;
    cluster.kill_directory();
    cluster.start_volume(server_index(&target));
    cluster.start_directory();
    cluster.wait_alive(3).await;
    // Planned again after the restarts, the repair resumes on the same
    // target and every volume is whole without the lost server.
    let client = cluster.client().await;
    until_status(&client, Duration::from_secs(90), "not repaired", |status| {
        status
            .volumes
            .iter()
            .all(|v| !replica_ids(v).contains(&lost) && v.health == VolumeHealth::Ok as i32)
            .then_some(())
    })
    .await;
    wait_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_server_returning_mid_repair_leaves_three_copies_and_no_extra() {
    // One volume of 16 MiB, repaired at 1 MiB/s: the lost server is back
    // long before its replacement could be whole.
    let (mut cluster, client, acked, lost) = repairing_after_a_loss("1MiB", 16).await;
    let job = repair_under_way(&client).await;
    let (volume_id, target) = (job.status.unwrap().volume_id, job.repair_target);
    let on_target = volumes_on(&cluster, server_index(&target)).await.unwrap();
    assert!(on_target.contains(&volume_id), "{on_target:?}");

    // The lost server returns with its copy while the target holds half of
    // one. Whichever copy the directory keeps (the returned one caught up,
    // or the finished replacement), the volume ends with three healthy
    // copies on three servers, the job closed, and no copy left on the
    // fourth server.
    cluster.start_volume(server_index(&lost));
    let what = "settled after the lost server returned mid-repair";
    eventually(secs(90), what, async || {
        let status = client.status().await.unwrap();
        let volume = status
            .volumes
            .iter()
            .find(|v| v.status.as_ref().unwrap().volume_id == volume_id)
            .unwrap();
        let holders = replica_ids(volume);
        let settled = volume.health == VolumeHealth::Ok as i32
            && !volume.repairing
            && holders.len() == 3
            && holders.iter().collect::<BTreeSet<_>>().len() == 3;
        if settled {
            let outsider = (0..4)
                .find(|i| !holders.contains(&format!("vs{i}")))
                .unwrap();
            if volumes_on(&cluster, outsider)
                .await
                .is_some_and(|on_disk| !on_disk.contains(&volume_id))
            {
                return Ok(());
            }
        }
        Err(volume.clone())
    })
    .await;
    wait_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_in_flight_is_resumed_by_the_next_leader_on_the_same_target() {
    // A directory group of 3; one volume (3 copies over 4 servers) of
    // 16 MiB, repaired at 1 MiB/s: the repair outlasts an election.
    let mut cluster = Cluster::builder()
        .group(3)
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .directory_args(["--repair-after", "1s", "--min-writable-volumes", "1"])
        .volume_args(["--repair-rate", "1MiB"])
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let (acked, lost) = upload_then_lose_a_copy(&mut cluster, &client, 16).await;

    // The leader commits the repair job, then copies.
    let job = repair_under_way(&client).await;
    let (volume_id, target, started_at) = (
        job.status.unwrap().volume_id,
        job.repair_target,
        job.repair_started_at,
    );
    assert!(!target.is_empty() && target != lost && started_at > 0);

    // Its leader dies mid-copy. The next one holds the same job (not a new
    // plan: the same start), and finishes it on the same target.
    let leader = cluster.leader().await;
    cluster.kill_node(leader);
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    let status = client.status().await.unwrap();
    let volume = status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().unwrap().volume_id == volume_id)
        .unwrap();
    assert!(
        volume.repairing
            && volume.repair_target == target
            && volume.repair_started_at == started_at,
        "the new leader lost the repair job: {volume:?}"
    );
    let holders = eventually(secs(90), "the volume repaired", async || {
        let status = client.status().await.unwrap();
        let volume = status
            .volumes
            .iter()
            .find(|v| v.status.as_ref().unwrap().volume_id == volume_id)
            .unwrap();
        (!volume.repairing && volume.health == VolumeHealth::Ok as i32)
            .then(|| replica_ids(volume))
            .ok_or_else(|| format!("{volume:?}\n{}", support::log_tails(&cluster.log_dir())))
    })
    .await;
    assert!(
        holders.contains(&target) && !holders.contains(&lost),
        "repaired elsewhere than the job's target {target}: {holders:?}\n{}",
        support::log_tails(&cluster.log_dir())
    );
    let log = cluster.log(&format!("directory{}.log", next + 1));
    assert!(
        log.contains("resuming a repair started before this leader"),
        "the new leader did not resume the job:\n{log}"
    );
    wait_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_dying_between_a_repairs_result_and_its_end_leaves_the_next_to_end_it() {
    // A directory group of 3 whose nodes abort right after committing a
    // repair's result, before `RepairEnded` (while the trigger file exists).
    let failpoint = Failpoint::new("repair-before-ended");
    failpoint.arm();
    let mut cluster = Cluster::builder()
        .group(3)
        .zones(&["a", "a", "b", "b"])
        .replication(3)
        .directory_args(["--repair-after", "1s", "--min-writable-volumes", "1"])
        .directory_env("HAYLOFT_FAILPOINT", &failpoint.env())
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let (acked, lost) = upload_then_lose_a_copy(&mut cluster, &client, 4).await;

    // The leader repairs, records the new copy, and dies.
    let leader = support::eventually_blocking(secs(60), "a leader at the failpoint", || {
        (0..3).find(|&i| cluster.node_exited(i))
    });
    failpoint.disarm();
    cluster.kill_node(leader); // reaps it
    let log_of = |node: usize| cluster.log(&format!("directory{}.log", node + 1));
    let dead = log_of(leader);
    assert!(
        dead.contains("repair done, copy verified")
            && dead.contains("failpoint repair-before-ended: aborting"),
        "{dead}"
    );

    // The next leader finds the job open with the copy whole: it ends the
    // job and copies nothing again.
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    until_status(
        &client,
        Duration::from_secs(60),
        "the repair job was not ended",
        |status| {
            status
                .volumes
                .iter()
                .all(|v| {
                    let holders = replica_ids(v);
                    !v.repairing
                        && v.health == VolumeHealth::Ok as i32
                        && holders.len() == 3
                        && !holders.contains(&lost)
                })
                .then_some(())
        },
    )
    .await;
    let log = log_of(next);
    assert!(log.contains("repair job ended"), "{log}");
    assert!(
        !log.contains("repair started") && !log.contains("resuming a repair"),
        "the next leader repaired again:\n{log}"
    );
    wait_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_right_after_the_volume_is_created_reaches_every_copy() {
    // One writable volume and heartbeats every 30 s: nothing but
    // `CreateVolume` tells the copies of the new volume about each other.
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .directory_args([
            "--min-writable-volumes",
            "1",
            "--pulse",
            "30s",
            "--dead-after",
            "60s",
        ])
        .volume_args(["--pulse", "30s"])
        .start()
        .await;
    let client = cluster.client().await;
    // The first upload creates the volume; the delete follows at once,
    // before any heartbeat answer could have named the copies.
    let uploaded = client
        .upload(
            Bytes::from_static(b"short-lived"),
            &UploadOptions::default(),
        )
        .await
        .unwrap();
    client.delete(&uploaded.blob_id).await.unwrap();
    for server in 0..3 {
        let error = read_from(&cluster.grpc_addr(server), &uploaded.blob_id)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "still on vs{server}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_failed_on_its_primary_after_reaching_the_copies_ends_up_on_every_copy() {
    // Every primary fails its own write (a failpoint) after the copies have
    // made the needle durable: the client is told the write failed.
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .volume_args(FAST_HEALING)
        .volume_env("HAYLOFT_FAILPOINT", "primary-local-write")
        .start()
        .await;
    let (ids, locations) = assign(&cluster, 1).await;
    assert_eq!(locations.len(), 3);
    let data = content(42, 3000);
    let err = write_to_primary(&locations, &ids[0], data.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    // Unacknowledged, it is settled by spreading it: anti-entropy brings it
    // to the primary, and then it reads the same from every copy.
    eventually(secs(30), "the needle on every copy", async || {
        let mut reads = Vec::new();
        for location in &locations {
            reads.push(read_from(&location.grpc_addr, &ids[0]).await.ok());
        }
        reads
            .iter()
            .all(|r| r.as_deref() == Some(&data[..]))
            .then_some(())
            .ok_or_else(|| reads.iter().map(Option::is_some).collect::<Vec<_>>())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_whose_fsync_fails_answers_its_forwarded_write_with_an_error_and_turns_stale() {
    // vs2 fails every fsync while the failpoint is armed: the group commit
    // that covers a forwarded write answers it, on the `Replicate` link,
    // with the error instead of a durable OK.
    let failpoint = Failpoint::new("fsync");
    let mut cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .start()
        .await;
    cluster.stop_volume(2);
    cluster.set_volume_env(&[("HAYLOFT_FAILPOINT", &failpoint.env())]);
    // Up again: its ports answer (the directory may not have noticed the
    // restart, and creates the volume there at once).
    cluster.restart_volume(2).await;
    cluster.wait_alive(3).await;
    let (ids, mut locations) = assign(&cluster, 2).await;
    assert_eq!(locations.len(), 3);
    // A primary other than vs2, so vs2's copy comes over its link.
    locations.sort_by_key(|l| l.server_id == "vs2");
    let kept = content(7, 3000);
    write_to_primary(&locations, &ids[0], kept.clone())
        .await
        .unwrap();

    failpoint.arm();
    let err = write_to_primary(&locations, &ids[1], content(8, 3000))
        .await
        .unwrap_err();
    failpoint.disarm();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("vs2"), "{err:?}");

    // Reported: the volume is degraded with vs2's copy stale, and what was
    // acknowledged before reads from the healthy copies.
    let client = cluster.client().await;
    until_status(
        &client,
        Duration::from_secs(30),
        "vs2's copy not reported stale",
        |status| {
            let volume = record(status, &ids[0]);
            let copy = volume
                .replicas
                .iter()
                .find(|r| r.location.as_ref().unwrap().server_id == "vs2")?;
            (volume.health == VolumeHealth::Degraded as i32
                && copy.health == ReplicaHealth::Stale as i32)
                .then_some(())
        },
    )
    .await;
    for location in &locations[..2] {
        assert_eq!(
            read_from(&location.grpc_addr, &ids[0]).await.unwrap(),
            kept,
            "{}",
            location.server_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_directory_down_assigned_ids_are_still_written_to_every_copy() {
    let mut cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .start()
        .await;
    let (ids, locations) = assign(&cluster, 20).await;
    cluster.kill_directory();
    // The primary forwards to the copies the header names: no directory
    // is needed to write ids already handed out.
    for (seed, id) in ids.iter().enumerate() {
        write_to_primary(&locations, id, content(seed as u64, 2000 + seed))
            .await
            .unwrap();
    }
    for (seed, id) in ids.iter().enumerate() {
        for location in &locations {
            assert_eq!(
                read_from(&location.grpc_addr, id).await.unwrap(),
                content(seed as u64, 2000 + seed),
                "{id} on {}",
                location.server_id
            );
        }
    }
    // Back, the directory hears from every copy: healthy, every needle.
    cluster.start_directory();
    let client = cluster.client().await;
    until_status(
        &client,
        Duration::from_secs(30),
        "not every copy healthy with every needle",
        |status| {
            let record = record(status, &ids[0]);
            (record.health == VolumeHealth::Ok as i32
                && record
                    .replicas
                    .iter()
                    .all(|r| r.health == ReplicaHealth::Ok as i32 && r.needles == ids.len() as u64))
            .then_some(())
        },
    )
    .await;
}
