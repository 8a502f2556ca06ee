//! End-to-end erasure coding with real processes: the directory killed
//! (failpoints that abort it) at each step of an encode and a decode where
//! a dead leader used to leave the work half done. The next start finds
//! the job in its state and finishes it or rolls it back and runs it again
//! (ARCHITECTURE.md, "Encodes and decodes survive their leader"): no blob
//! is lost, no delete comes back, no fence stays. The same for a move of
//! an erasure-coded volume to the cold tier (a real moto as S3), killed
//! between its upload and its commit, and after its commit.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use hayloft_client::{Client, UploadOptions};
use support::{Cluster, Failpoint, S3Server, content, eventually, hayloft, secs, try_eventually};

/// Three servers in three zones, two copies of each volume, the code
/// 2+1; the directory honours the failpoint `failpoint`.
async fn cluster(failpoint: &Failpoint) -> Cluster {
    Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(2)
        .directory_args(["--ec-code", "2+1", "--repair-after", "2s"])
        .directory_env("HAYLOFT_FAILPOINT", &failpoint.env())
        .volume_args(["--max-volume-size", "4MiB"])
        .start()
        .await
}

/// Six blobs in one volume: the volume and the blobs.
async fn blobs(client: &Client) -> (u32, Vec<(String, Vec<u8>)>) {
    let mut blobs = Vec::new();
    for seed in 0..6 {
        let data = content(seed, 50_000 + seed as usize * 7_000);
        let uploaded = client
            .upload(Bytes::from(data.clone()), &UploadOptions::default())
            .await
            .unwrap();
        blobs.push((uploaded.blob_id, data));
    }
    let volume = |id: &str| id.parse::<hayloft_storage::BlobId>().unwrap().volume().0;
    let first = volume(&blobs[0].0);
    blobs.retain(|(id, _)| volume(id) == first);
    assert!(blobs.len() >= 3, "the blobs spread over too many volumes");
    (first, blobs)
}

/// The volume as `status --json` shows it.
fn volume_json(cluster: &Cluster, volume: u32) -> serde_json::Value {
    let (ok, out) = hayloft(cluster, &["status", "--json"]);
    if !ok {
        return serde_json::Value::Null;
    }
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == volume)
        .cloned()
        .unwrap_or_default()
}

/// Waits until the volume is erasure-coded (`erasure`) or replicated,
/// with no job open on it and, if erasure-coded, no copy left (in the
/// map nor on disk).
async fn settles_as(cluster: &Cluster, volume: u32, erasure: bool) -> serde_json::Value {
    let settled = eventually(secs(90), "the volume to settle", async || {
        let v = volume_json(cluster, volume);
        let kind = if erasure { "erasure" } else { "replicated" };
        let copies = v["replicas"].as_array().map_or(99, Vec::len);
        let done = v["layout"]["kind"] == kind
            && v["repair_kind"] == ""
            && v["health"] == "ok"
            && if erasure { copies == 0 } else { copies == 2 };
        if done { Ok(v) } else { Err(v) }
    })
    .await;
    if erasure {
        // The copies are deleted too (a decode waits for that).
        let dat = format!("{volume}.dat");
        eventually(secs(60), "the copies' files to be deleted", async || {
            let left = files(cluster, &dat);
            if left.is_empty() { Ok(()) } else { Err(left) }
        })
        .await;
    }
    settled
}

/// The files named `name` in any volume server's data folder.
fn files(cluster: &Cluster, name: &str) -> Vec<std::path::PathBuf> {
    (0..cluster.volume_count())
        .flat_map(|i| walk(&cluster.volume_dir(i)))
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect()
}

/// Every blob reads byte for byte through the client and from every
/// server's origin; every deleted one is gone everywhere.
async fn every_blob_reads(
    cluster: &Cluster,
    client: &Client,
    blobs: &[(String, Vec<u8>)],
    deleted: &[String],
) {
    let http = reqwest::Client::new();
    for (id, data) in blobs {
        if deleted.contains(id) {
            assert!(client.download(id).await.is_err(), "{id} came back");
        } else {
            let read = match client.download(id).await {
                Ok((_, read)) => read,
                // What the servers logged of it, to tell why.
                Err(error) => panic!("{id}: {error}\n{}", logged(cluster, id)),
            };
            assert_eq!(&read[..], &data[..], "{id}");
        }
        for server in 0..cluster.volume_count() {
            let answer = http
                .get(format!("{}/{id}", cluster.http_base(server)))
                .send()
                .await
                .unwrap();
            if deleted.contains(id) {
                assert_eq!(answer.status(), 404, "{id} from vs{server}");
            } else {
                assert_eq!(answer.status(), 200, "{id} from vs{server}");
                assert_eq!(&answer.bytes().await.unwrap()[..], &data[..]);
            }
        }
    }
}

/// Stops the directory and starts it again, then waits until every
/// server has told it its free space (a directory just started knows none,
/// and places nothing until it does).
async fn restarted(cluster: &mut Cluster) {
    cluster.stop_directory();
    cluster.start_directory();
    eventually(secs(30), "every server's free space", async || {
        let (ok, out) = hayloft(cluster, &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let servers = json["servers"].as_array().cloned().unwrap_or_default();
        ok && servers.len() == 3
            && servers
                .iter()
                .all(|s| s["alive"] == true && s["free_warm_bytes"].as_u64() > Some(0))
    })
    .await;
}

/// The lines of every process's log that name `what`.
fn logged(cluster: &Cluster, what: &str) -> String {
    let mut names = vec!["directory.log".to_owned()];
    names.extend((0..cluster.volume_count()).map(|i| format!("vs{i}.log")));
    names
        .iter()
        .flat_map(|name| {
            cluster
                .log(name)
                .lines()
                .filter(|line| line.contains(what))
                .map(|line| format!("{name}: {line}\n"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The command runs into the armed failpoint: the directory aborts, the
/// command fails; the directory starts again, disarmed.
async fn killed_then_restarted(
    cluster: &mut Cluster,
    failpoint: &Failpoint,
    args: &[&str],
) -> String {
    let aborted = || cluster.log("directory.log").matches("aborting").count();
    let before = aborted();
    failpoint.arm();
    let (ok, out) = hayloft(cluster, args);
    assert!(!ok, "the directory was to die: {out}");
    failpoint.disarm();
    assert_eq!(
        aborted(),
        before + 1,
        "{out}\n{}",
        hayloft(cluster, &["status", "--json"]).1
    );
    cluster.start_directory();
    out
}

/// An encode whose directory dies after every shard is written and
/// installed, before the layout's commit: the next start runs it again to
/// the end and removes the copies. Then a decode whose directory dies with
/// the holders' deletes fenced and the copies staged, before its commit:
/// the next start lifts the fences, rolls back and decodes again; a delete
/// made before stays deleted, and deletes work after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodes_and_decodes_killed_before_their_commit_are_run_again() {
    let failpoint = Failpoint::new("encode-before-commit");
    let mut cluster = cluster(&failpoint).await;
    let client = cluster.client().await;
    let (volume, blobs) = blobs(&client).await;
    let id = volume.to_string();

    killed_then_restarted(
        &mut cluster,
        &failpoint,
        &["tier", "ec", &id, "--max-block", "64KiB"],
    )
    .await;
    let encoded = settles_as(&cluster, volume, true).await;
    assert_eq!(encoded["layout"]["code"], "2+1", "{encoded}");
    every_blob_reads(&cluster, &client, &blobs, &[]).await;
    let log = cluster.log("directory.log");
    assert!(
        log.contains("an encode or decode started before this leader"),
        "{log}"
    );

    // The decode: one blob deleted while erasure-coded, then the crash.
    let deleted = blobs[0].0.clone();
    client.delete(&deleted).await.unwrap();
    let failpoint = Failpoint::new("decode-before-commit");
    cluster.set_directory_env(&[("HAYLOFT_FAILPOINT", &failpoint.env())]);
    restarted(&mut cluster).await;
    killed_then_restarted(&mut cluster, &failpoint, &["tier", "decode", &id]).await;
    settles_as(&cluster, volume, false).await;
    every_blob_reads(&cluster, &client, &blobs, std::slice::from_ref(&deleted)).await;
    // No fence stayed: deletes go through.
    client.delete(&blobs[1].0).await.unwrap();
    every_blob_reads(&cluster, &client, &blobs, &[deleted, blobs[1].0.clone()]).await;
    let log = cluster.log("directory.log");
    assert!(
        log.contains("rolling back a decode a dead leader left before its commit"),
        "{log}"
    );
}

/// An encode whose directory dies right after the layout's commit: the
/// next start ends the job and takes the copies out. A decode whose
/// directory dies right after its commit: the copies are served, the
/// shards dropped, the job ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodes_and_decodes_killed_after_their_commit_are_finished() {
    let failpoint = Failpoint::new("encode-after-commit");
    let mut cluster = cluster(&failpoint).await;
    let client = cluster.client().await;
    let (volume, blobs) = blobs(&client).await;
    let id = volume.to_string();

    killed_then_restarted(
        &mut cluster,
        &failpoint,
        &["tier", "ec", &id, "--max-block", "64KiB"],
    )
    .await;
    settles_as(&cluster, volume, true).await;
    every_blob_reads(&cluster, &client, &blobs, &[]).await;

    let deleted = blobs[0].0.clone();
    client.delete(&deleted).await.unwrap();
    let failpoint = Failpoint::new("decode-after-commit");
    cluster.set_directory_env(&[("HAYLOFT_FAILPOINT", &failpoint.env())]);
    restarted(&mut cluster).await;
    killed_then_restarted(&mut cluster, &failpoint, &["tier", "decode", &id]).await;
    settles_as(&cluster, volume, false).await;
    every_blob_reads(&cluster, &client, &blobs, std::slice::from_ref(&deleted)).await;
    // The shards went (orphans of a replicated volume): no `.ecm` is left.
    eventually(secs(60), "the shards to be dropped", async || {
        let left = files(&cluster, &format!("{volume}.ecm"));
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
}

/// The files of `volume` in any volume server's `reencoding/` folder.
fn staged_generation(cluster: &Cluster, volume: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("{volume}.");
    (0..cluster.volume_count())
        .flat_map(|i| walk(&cluster.volume_dir(i)))
        .filter(|p| {
            p.to_string_lossy().contains("reencoding")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect()
}

/// Waits until the volume is erasure-coded with a data file shorter than
/// `than` bytes (re-encoded), no job open, and no staged generation left.
async fn settles_reencoded(cluster: &Cluster, volume: u32, than: u64) -> u64 {
    let len = eventually(secs(90), "the volume to settle re-encoded", async || {
        let v = volume_json(cluster, volume);
        let len = v["layout"]["data_len"].as_u64().unwrap_or(u64::MAX);
        let done = v["layout"]["kind"] == "erasure"
            && v["repair_kind"] == ""
            && v["health"] == "ok"
            && len < than;
        if done { Ok(len) } else { Err(v) }
    })
    .await;
    eventually(secs(30), "no staged generation left", async || {
        let left = staged_generation(cluster, volume);
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    len
}

/// A re-encode whose directory dies with the new generation staged on
/// every holder and the holders fenced, before `ErasureReencoded`: the
/// next start drops the staged generations, lifts the fences and runs it
/// again to the end. Then one whose directory dies right after the commit:
/// the next start swaps every holder to the new generation and ends the
/// job. Each time the deleted blobs stay deleted, the space comes back,
/// every blob reads, and deletes work after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencodes_killed_before_and_after_their_commit_are_rolled_back_or_finished() {
    let failpoint = Failpoint::new("reencode-before-commit");
    let mut cluster = cluster(&failpoint).await;
    let client = cluster.client().await;
    let (volume, blobs) = blobs(&client).await;
    let id = volume.to_string();
    let (ok, out) = hayloft(&cluster, &["tier", "ec", &id, "--max-block", "64KiB"]);
    assert!(ok, "{out}");
    let encoded = settles_as(&cluster, volume, true).await;
    let before = encoded["layout"]["data_len"].as_u64().unwrap();
    let mut deleted = vec![blobs[0].0.clone()];
    client.delete(&blobs[0].0).await.unwrap();

    killed_then_restarted(&mut cluster, &failpoint, &["tier", "reencode", &id]).await;
    let once = settles_reencoded(&cluster, volume, before).await;
    every_blob_reads(&cluster, &client, &blobs, &deleted).await;
    let log = cluster.log("directory.log");
    assert!(
        log.contains("rolling back a re-encode a dead leader left before its commit"),
        "{log}"
    );
    // No fence stayed: deletes go through.
    client.delete(&blobs[1].0).await.unwrap();
    deleted.push(blobs[1].0.clone());
    every_blob_reads(&cluster, &client, &blobs, &deleted).await;

    let failpoint = Failpoint::new("reencode-after-commit");
    cluster.set_directory_env(&[("HAYLOFT_FAILPOINT", &failpoint.env())]);
    restarted(&mut cluster).await;
    killed_then_restarted(&mut cluster, &failpoint, &["tier", "reencode", &id]).await;
    settles_reencoded(&cluster, volume, once).await;
    every_blob_reads(&cluster, &client, &blobs, &deleted).await;
    let log = cluster.log("directory.log");
    assert!(
        log.contains("finishing a re-encode a dead leader committed"),
        "{log}"
    );
    // The new generation is unfenced: deletes go through.
    client.delete(&blobs[2].0).await.unwrap();
    deleted.push(blobs[2].0.clone());
    every_blob_reads(&cluster, &client, &blobs, &deleted).await;
}

/// Three servers as [`cluster`] whose cold tier is `s3` (bucket
/// [`COLD_BUCKET`]); the directory honours `failpoint`.
async fn cold_cluster(failpoint: &Failpoint, s3: &S3Server, dir: &std::path::Path) -> Cluster {
    let config = dir.join("volume.toml");
    std::fs::write(&config, s3.volume_config("")).unwrap();
    Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(2)
        .directory_args(["--ec-code", "2+1", "--repair-after", "2s"])
        .directory_env("HAYLOFT_FAILPOINT", &failpoint.env())
        .volume_args([
            "--max-volume-size",
            "4MiB",
            "--config",
            config.to_str().unwrap(),
        ])
        .start()
        .await
}

const COLD_BUCKET: &str = "cold";

/// The keys of the objects in `bucket`.
async fn keys(s3: &S3Server, bucket: &str) -> Vec<String> {
    let body = reqwest::get(format!("{}/{bucket}", s3.endpoint()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

/// Waits until the volume is cold with two healthy cold copies and no job
/// open on it, and no shard of it is left on any server.
async fn settles_cold(cluster: &Cluster, volume: u32) -> serde_json::Value {
    let settled = eventually(secs(90), "the volume to settle cold", async || {
        let v = volume_json(cluster, volume);
        let copies = v["replicas"].as_array().map_or(99, Vec::len);
        let done = v["tier"] == "cold"
            && v["layout"]["kind"] == "replicated"
            && v["repair_kind"] == ""
            && v["health"] == "ok"
            && copies == 2;
        if done { Ok(v) } else { Err(v) }
    })
    .await;
    eventually(secs(60), "the shards to be dropped", async || {
        let mut left = files(cluster, &format!("{volume}.ecm"));
        left.extend(files(cluster, &format!("{volume}.ec00")));
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;
    settled
}

/// A cluster whose erasure-coded volume's move to cold was killed.
struct KilledMove {
    cluster: Cluster,
    client: Client,
    s3: S3Server,
    _dir: tempfile::TempDir,
    blobs: Vec<(String, Vec<u8>)>,
    deleted: String,
    volume: u32,
}

/// An erasure-coded volume (2+1) of six blobs, one of them deleted while
/// erasure-coded, on a cluster whose cold tier is a fresh moto; the move
/// to cold is then killed at `failpoint` and the directory restarted.
async fn ec_volume_moved_to_cold_through(failpoint: &str) -> KilledMove {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path()).await;
    s3.create_bucket(COLD_BUCKET).await;
    let failpoint = Failpoint::new(failpoint);
    let mut cluster = cold_cluster(&failpoint, &s3, dir.path()).await;
    let client = cluster.client().await;
    let (volume, blobs) = blobs(&client).await;
    let id = volume.to_string();
    let (ok, out) = hayloft(&cluster, &["tier", "ec", &id, "--max-block", "64KiB"]);
    assert!(ok, "{out}");
    settles_as(&cluster, volume, true).await;
    let deleted = blobs[0].0.clone();
    client.delete(&deleted).await.unwrap();
    killed_then_restarted(
        &mut cluster,
        &failpoint,
        &[
            "tier",
            "move",
            "--volume",
            &id,
            "--to",
            "cold",
            "--bucket",
            COLD_BUCKET,
            "--prefix",
            "ec/",
        ],
    )
    .await;
    KilledMove {
        cluster,
        client,
        s3,
        _dir: dir,
        blobs,
        deleted,
        volume,
    }
}

/// A move of an erasure-coded volume to cold whose directory dies after
/// the object is uploaded and verified and every cold copy staged, before
/// `ErasureToCold`: the next start rolls it back (the object deleted, the
/// staged copies removed, the fences lifted) and runs it again to the end.
/// One object is left, every blob reads, the deleted one stays deleted, no
/// shard is left, and deletes work after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_cold_killed_between_its_upload_and_its_commit_is_run_again() {
    let KilledMove {
        cluster,
        client,
        s3,
        _dir,
        blobs,
        deleted,
        volume,
    } = ec_volume_moved_to_cold_through("to-cold-before-commit").await;
    let settled = settles_cold(&cluster, volume).await;
    assert_eq!(settled["layout"]["copies"], 2, "{settled}");
    let log = cluster.log("directory.log");
    assert!(
        log.contains("rolling back a move to cold a dead leader left before its commit"),
        "{log}"
    );
    // The rolled-back attempt's object went; the new one is the volume.
    let objects = keys(&s3, COLD_BUCKET).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    every_blob_reads(&cluster, &client, &blobs, std::slice::from_ref(&deleted)).await;
    for staged in ["dat", "cold", "cidx"] {
        let left: Vec<_> = files(&cluster, &format!("{volume}.{staged}"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("decoding"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // No fence stayed: deletes go through (to the cold copies).
    client.delete(&blobs[1].0).await.unwrap();
    every_blob_reads(&cluster, &client, &blobs, &[deleted, blobs[1].0.clone()]).await;
}

/// A move to cold whose directory dies right after `ErasureToCold`: the
/// next start ends the job; the cold copies are served from their
/// heartbeat answers, the shards dropped as orphans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_cold_killed_after_its_commit_is_finished() {
    let KilledMove {
        cluster,
        client,
        s3,
        _dir,
        blobs,
        deleted,
        volume,
    } = ec_volume_moved_to_cold_through("to-cold-after-commit").await;
    settles_cold(&cluster, volume).await;
    assert_eq!(keys(&s3, COLD_BUCKET).await.len(), 1);
    every_blob_reads(&cluster, &client, &blobs, std::slice::from_ref(&deleted)).await;
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// A whole blob read over gRPC from the volume server at `addr` alone.
async fn read_from(addr: &str, blob_id: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut client = hayloft_proto::volume_client::VolumeClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES);
    let mut stream = client
        .read(hayloft_proto::ReadRequest {
            blob_id: blob_id.to_owned(),
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        data.extend_from_slice(&message.chunk);
    }
    Ok(data)
}

/// What reading a blob from one server gave.
#[derive(Debug, PartialEq)]
enum Read {
    Right,
    Unavailable,
}

/// Reads `blob` over HTTP and gRPC from volume server `server`: the right
/// bytes, or 503 and UNAVAILABLE together; anything else fails the test.
/// A server that holds no shard proxies HTTP; over gRPC it answers
/// NOT_FOUND marked "not here" (the client asks the directory again), so
/// its gRPC answer is the bytes or that.
async fn read_one(cluster: &Cluster, server: usize, blob: &str, data: &[u8]) -> Read {
    let answer = reqwest::get(format!("{}/{blob}", cluster.http_base(server)))
        .await
        .unwrap();
    let grpc = match read_from(&cluster.grpc_addr(server), blob).await {
        Err(status)
            if status.code() == tonic::Code::NotFound
                && status
                    .metadata()
                    .contains_key(hayloft_proto::VOLUME_NOT_HERE) =>
        {
            if answer.status() == 200 {
                Ok(data.to_vec())
            } else {
                Err(tonic::Status::unavailable("not here, and HTTP said 503"))
            }
        }
        other => other,
    };
    match answer.status().as_u16() {
        200 => {
            assert!(
                answer.bytes().await.unwrap() == data,
                "{blob} from vs{server}: wrong bytes"
            );
            assert!(
                grpc.unwrap() == data,
                "{blob} from vs{server} over gRPC: wrong bytes"
            );
            Read::Right
        }
        503 => {
            let status = grpc.unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::Unavailable,
                "{blob} from vs{server}: {status:?}"
            );
            Read::Unavailable
        }
        other => panic!("{blob} from vs{server}: HTTP {other}"),
    }
}

/// RS(10,4) on fifteen real servers in seven zones (one spare for the
/// rebuild): encoded while a reader reads every blob (no read fails, none
/// is wrong); four holders killed (the first four data shards'): every
/// blob reads byte for byte over HTTP and gRPC from every live server; a
/// fifth killed: the blobs of the lost shards answer 503 / UNAVAILABLE,
/// never other bytes. All back; one holder's disk wiped: its shard is
/// rebuilt on the spare, and with four other holders killed every blob
/// still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rs_10_4_on_fifteen_servers_reads_through_four_lost_holders_and_rebuilds_a_wiped_one() {
    let zones = [
        "a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f", "g", "g", "h",
    ];
    let mut cluster = Cluster::builder()
        .zones(&zones)
        .replication(2)
        // Holders killed below are not replaced while down (they would be,
        // after `repair_after`, on the spare, and five down would then lose
        // nothing); the wiped holder's shard is rebuilt all the same, as it
        // reports the shard missing for five pulses.
        .directory_args(["--ec-code", "10+4", "--repair-after", "10m"])
        .volume_args(["--max-volume-size", "8MiB"])
        .start()
        .await;
    let client = cluster.client().await;
    let mut blobs = Vec::new();
    for seed in 0..40u64 {
        let data = content(seed, 1_000 + (seed as usize * 37_001) % 150_000);
        let uploaded = client
            .upload(Bytes::from(data.clone()), &UploadOptions::default())
            .await
            .unwrap();
        blobs.push((uploaded.blob_id, data));
    }
    let volume_of = |id: &str| id.parse::<hayloft_storage::BlobId>().unwrap().volume().0;
    let volume = volume_of(&blobs[0].0);
    blobs.retain(|(id, _)| volume_of(id) == volume);
    assert!(
        blobs.len() >= 10,
        "{} blobs in volume {volume}",
        blobs.len()
    );
    let blobs = std::sync::Arc::new(blobs);

    // The encode, under reads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (blobs, stop) = (blobs.clone(), stop.clone());
        let client = cluster.client().await;
        tokio::spawn(async move {
            let (mut reads, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (id, data) in blobs.iter() {
                    match client.download(id).await {
                        Ok((_, read)) => assert!(read[..] == data[..], "{id}: wrong bytes"),
                        Err(error) => failed.push(format!("{id}: {error}")),
                    }
                    reads += 1;
                }
            }
            (reads, failed)
        })
    };
    let id = volume.to_string();
    let (ok, out) = hayloft(&cluster, &["tier", "ec", &id, "--max-block", "64KiB"]);
    assert!(ok, "{out}");
    let encoded = settles_as(&cluster, volume, true).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, failed) = reader.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {reads} reads failed: {failed:?}",
        failed.len()
    );
    let holders: Vec<usize> = encoded["layout"]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h.as_str()
                .unwrap()
                .trim_start_matches("vs")
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(holders.len(), 14, "{encoded}");
    let spare = (0..zones.len()).find(|i| !holders.contains(i)).unwrap();
    let mut zones_used: std::collections::HashMap<&str, usize> = Default::default();
    for h in &holders {
        *zones_used.entry(zones[*h]).or_default() += 1;
    }
    assert!(zones_used.values().all(|n| *n <= 4), "{zones_used:?}");

    // Four holders down: every blob, every live server, both protocols.
    for h in &holders[..4] {
        cluster.kill_volume(*h);
    }
    let live = |down: &[usize]| {
        (0..zones.len())
            .filter(|i| !down.contains(i))
            .collect::<Vec<_>>()
    };
    for server in live(&holders[..4]) {
        for (blob, data) in blobs.iter() {
            assert_eq!(
                read_one(&cluster, server, blob, data).await,
                Read::Right,
                "{blob} from vs{server}"
            );
        }
    }
    // A fifth: the blobs of the five lost data shards cannot be restored.
    cluster.kill_volume(holders[4]);
    let mut unavailable = 0;
    for (blob, data) in blobs.iter() {
        if read_one(&cluster, holders[5], blob, data).await == Read::Unavailable {
            unavailable += 1;
        }
    }
    assert!(
        unavailable > 0,
        "with five of fourteen shards down some blob must be lost: holders {holders:?}, {}\n{}",
        volume_json(&cluster, volume),
        logged(&cluster, &blobs[0].0)
    );

    // All back; one holder wiped: rebuilt on the spare.
    for h in &holders[..5] {
        cluster.restart_volume(*h).await;
    }
    let wiped = holders[7];
    cluster.stop_volume(wiped);
    std::fs::remove_dir_all(cluster.volume_dir(wiped)).unwrap();
    cluster.restart_volume(wiped).await;
    let spare_id = format!("vs{spare}");
    let rebuilt = try_eventually(secs(120), async || {
        let v = volume_json(&cluster, volume);
        let now = v["layout"]["holders"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let done = now.get(7).is_some_and(|h| *h == spare_id.as_str()) && v["repair_kind"] == "";
        if done { Ok(()) } else { Err(v) }
    })
    .await;
    if let Err(last) = rebuilt {
        panic!(
            "the wiped holder's shard was not rebuilt on vs{spare}: {last}\n{}",
            logged(&cluster, "rebuil")
        );
    }
    let others: Vec<usize> = holders
        .iter()
        .copied()
        .filter(|h| *h != wiped)
        .take(4)
        .collect();
    for h in &others {
        cluster.kill_volume(*h);
    }
    for (blob, data) in blobs.iter() {
        let (_, read) = client.download(blob).await.unwrap();
        assert_eq!(&read[..], &data[..], "{blob}");
        assert_eq!(
            read_one(&cluster, spare, blob, data).await,
            Read::Right,
            "{blob} from the spare"
        );
    }
}
