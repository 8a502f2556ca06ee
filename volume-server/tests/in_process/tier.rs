//! Tiering to S3 in process: a volume server whose cold tier is a real
//! moto on loopback, moved by the tiering worker (`hayloft_tiering::worker`,
//! as `hayloft server` runs it) or by `MoveVolume` as `hayloft tier move`
//! sends it; reads served from the cold object; the way back to warm and
//! hot; deletes made while cold; S3 gone.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_client::{Client, Uploaded};
use hayloft_proto::{MoveVolumeRequest, ReadRequest, Tier, VolumeState};
use hayloft_tiering::Policy;
use reqwest::StatusCode;

use crate::s3::Moto;
use crate::support::*;

const BUCKET: &str = "cold";

/// One volume server whose cold tier is `s3` (5 MiB parts, restores
/// polled often, a one-minute read window so that a few reads make a
/// volume busy), one writable volume at a time.
fn cold_cluster(s3: &Moto) -> hayloft::cluster::ClusterBuilder {
    let cold = s3.cold_tier();
    Cluster::builder()
        .directory(|directory| directory.min_writable_volumes = 1)
        .volume(move |_, config| {
            config.cold = Some(cold.clone());
            config.tier_part_size = ByteSize::mib(5);
            config.restore_poll = Duration::from_millis(200);
            config.restore_retry_after = Duration::from_secs(2);
            config.read_window = Duration::from_secs(60);
        })
}

fn volume_of(blob_id: &str) -> u32 {
    blob_id
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .0
}

/// The volumes holding `blobs`.
fn volumes(blobs: &[(Uploaded, Bytes)]) -> BTreeSet<u32> {
    blobs.iter().map(|(b, _)| volume_of(&b.blob_id)).collect()
}

/// Waits until the directory reports `volume` on `tier` and no longer
/// moving, as its server's heartbeat tells it.
async fn wait_tier(client: &Client, volume: u32, tier: Tier) {
    let what = format!("volume {volume} on {tier:?}");
    eventually(Duration::from_secs(30), &what, || async {
        let status = client.status().await.ok()?;
        let record = status
            .volumes
            .iter()
            .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))?;
        (record.status.as_ref()?.tier == tier as i32 && record.state != VolumeState::Moving as i32)
            .then_some(())
    })
    .await;
}

/// Asks the volume server at `addr` to move `volume` to `target` (cold:
/// into [`BUCKET`] under `t/`), as `hayloft tier move` does; the move runs
/// on in the background there.
async fn move_volume(addr: &str, volume: u32, target: Tier) {
    let cold = target == Tier::Cold;
    volume_client(addr)
        .await
        .move_volume(MoveVolumeRequest {
            volume_id: volume,
            target: target as i32,
            bucket: if cold { BUCKET.into() } else { String::new() },
            prefix: if cold { "t/".into() } else { String::new() },
            ..MoveVolumeRequest::default()
        })
        .await
        .unwrap();
}

/// Seals `volumes` by moving them to warm (a move seals a volume).
async fn seal(started: &Started, volumes: &BTreeSet<u32>) {
    let addr = started.cluster.volume(0).unwrap().grpc_addr();
    for &volume in volumes {
        move_volume(&addr, volume, Tier::Warm).await;
        wait_tier(&started.client, volume, Tier::Warm).await;
    }
}

/// Runs the tiering worker by `policy` (a round every 200 ms) until every
/// one of `volumes` is on `tier`.
async fn run_worker_until(started: &Started, policy: &str, volumes: &BTreeSet<u32>, tier: Tier) {
    let policy = Policy::parse(policy).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(hayloft_tiering::worker::run(
        started.cluster.directory_addr(),
        policy,
        Duration::from_millis(200),
        async {
            let _ = stopped.await;
        },
    ));
    for &volume in volumes {
        wait_tier(&started.client, volume, tier).await;
    }
    let _ = stop.send(());
    worker.await.unwrap();
}

/// The files of `volume` in the server's folder, as `tier/name`.
fn volume_files(started: &Started, volume: u32) -> Vec<String> {
    let mut files = Vec::new();
    for tier in ["hot", "warm"] {
        let dir = started.cluster.volume_dir(0).join(tier);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.split('.').next() == Some(volume.to_string().as_str()) {
                files.push(format!("{tier}/{name}"));
            }
        }
    }
    files.sort();
    files
}

/// Every blob reads back whole from the server's HTTP origin.
async fn check_reads(started: &Started, blobs: &[(Uploaded, Bytes)]) {
    let base = started.cluster.volume(0).unwrap().http_base();
    for (blob, data) in blobs {
        let response = reqwest::get(format!("{base}/{}", blob.blob_id))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{}", blob.blob_id);
        assert_eq!(&response.bytes().await.unwrap(), data, "{}", blob.blob_id);
    }
}

async fn http_status(started: &Started, blob_id: &str) -> StatusCode {
    let base = started.cluster.volume(0).unwrap().http_base();
    reqwest::get(format!("{base}/{blob_id}"))
        .await
        .unwrap()
        .status()
}

/// Small blobs, and one of 1.5 MiB (more than one gRPC chunk).
async fn upload_blobs(client: &Client) -> Vec<(Uploaded, Bytes)> {
    let mut blobs = upload_many(client, 20, 4096, 1).await;
    blobs.extend(upload_many(client, 1, 3 << 19, 100).await);
    blobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_moves_a_sealed_volume_to_cold_and_promotes_it_back_once_it_is_read() {
    let s3 = Moto::start().await;
    s3.create_bucket(BUCKET).await;
    let started = start(cold_cluster(&s3)).await;
    let blobs = upload_blobs(&started.client).await;
    let volumes = volumes(&blobs);
    seal(&started, &volumes).await;

    // Down to cold by a rule, as `hayloft server`'s worker runs it.
    let to_cold = "min_observation = \"0s\"\n[[rule]]\nname = \"old\"\nfrom = \"warm\"\n\
                   target = \"cold\"\nbucket = \"cold\"\nprefix = \"t/\"\n";
    run_worker_until(&started, to_cold, &volumes, Tier::Cold).await;
    // One object a volume; only the index, manifest and state stay local.
    let keys = s3.keys(BUCKET).await;
    assert_eq!(keys.len(), volumes.len(), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("t/")), "{keys:?}");
    for &volume in &volumes {
        let files = volume_files(&started, volume);
        assert!(files.iter().all(|f| !f.ends_with(".dat")), "{files:?}");
        assert!(files.iter().any(|f| f.ends_with(".cold")), "{files:?}");
    }

    // Reads come from the object: whole over HTTP, and a range over gRPC.
    check_reads(&started, &blobs).await;
    let (big, data) = blobs.last().unwrap();
    let addr = started.cluster.volume(0).unwrap().grpc_addr();
    let mut stream = volume_client(&addr)
        .await
        .read(ReadRequest {
            blob_id: big.blob_id.clone(),
            offset: 1000,
            length: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        got.extend_from_slice(&message.chunk);
    }
    assert_eq!(&got[..], &data[1000..6000]);
    let (_, read) = started.client.download(&big.blob_id).await.unwrap();
    assert_eq!(&read, data);

    // Those reads make the volumes busy (the read window is a minute):
    // promoted back to warm by the worker; the objects go.
    let busy = "min_observation = \"0s\"\n[[promote]]\nname = \"busy\"\nfrom = \"cold\"\n\
                min_reads_per_day = 100\ntarget = \"warm\"\n";
    run_worker_until(&started, busy, &volumes, Tier::Warm).await;
    for &volume in &volumes {
        let files = volume_files(&started, volume);
        assert!(files.contains(&format!("warm/{volume}.dat")), "{files:?}");
    }
    eventually(
        Duration::from_secs(10),
        "the cold objects deleted",
        || async { s3.keys(BUCKET).await.is_empty().then_some(()) },
    )
    .await;
    check_reads(&started, &blobs).await;

    // And on to hot.
    for &volume in &volumes {
        move_volume(&addr, volume, Tier::Hot).await;
        wait_tier(&started.client, volume, Tier::Hot).await;
    }
    check_reads(&started, &blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_made_while_a_volume_is_cold_hold_once_it_is_local_again() {
    let s3 = Moto::start().await;
    s3.create_bucket(BUCKET).await;
    let started = start(cold_cluster(&s3)).await;
    let mut blobs = upload_blobs(&started.client).await;
    let volumes = volumes(&blobs);
    seal(&started, &volumes).await;
    let addr = started.cluster.volume(0).unwrap().grpc_addr();
    for &volume in &volumes {
        move_volume(&addr, volume, Tier::Cold).await;
        wait_tier(&started.client, volume, Tier::Cold).await;
    }

    // A delete of a cold needle: a local tombstone (the object is not
    // rewritten); the others still read from the object.
    let (deleted, _) = blobs.remove(3);
    started.client.delete(&deleted.blob_id).await.unwrap();
    assert_eq!(
        http_status(&started, &deleted.blob_id).await,
        StatusCode::NOT_FOUND
    );
    check_reads(&started, &blobs).await;

    // Back to warm, as `hayloft tier restore` asks: the tombstone holds.
    for &volume in &volumes {
        move_volume(&addr, volume, Tier::Warm).await;
        wait_tier(&started.client, volume, Tier::Warm).await;
    }
    assert_eq!(
        http_status(&started, &deleted.blob_id).await,
        StatusCode::NOT_FOUND
    );
    assert!(started.client.download(&deleted.blob_id).await.is_err());
    check_reads(&started, &blobs).await;
    eventually(
        Duration::from_secs(10),
        "the cold objects deleted",
        || async { s3.keys(BUCKET).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_gone_cold_reads_answer_503_and_local_volumes_still_serve() {
    let mut s3 = Moto::start().await;
    s3.create_bucket(BUCKET).await;
    let started = start(cold_cluster(&s3)).await;
    let blobs = upload_blobs(&started.client).await;
    let volumes = volumes(&blobs);
    seal(&started, &volumes).await;
    let addr = started.cluster.volume(0).unwrap().grpc_addr();
    for &volume in &volumes {
        move_volume(&addr, volume, Tier::Cold).await;
        wait_tier(&started.client, volume, Tier::Cold).await;
    }
    check_reads(&started, &blobs[..2]).await;

    s3.stop();
    // New writes go to a new local volume (the cold ones are sealed). The
    // same client: it still holds ids reserved in a volume that is cold
    // now; a write there is refused FAILED_PRECONDITION, as on a sealed
    // volume, and the client takes new ids elsewhere.
    let local = upload_many(&started.client, 3, 1000, 500).await;
    assert!(volumes.is_disjoint(&self::volumes(&local)));
    check_reads(&started, &local).await;
    let (cold, _) = &blobs[0];
    let base = started.cluster.volume(0).unwrap().http_base();
    let response = reqwest::get(format!("{base}/{}", cold.blob_id))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let status = read_from(&addr, &cold.blob_id).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}
