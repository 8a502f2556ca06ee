//! End-to-end healing: copies that fell behind become whole or are
//! replaced, and copies keep their spread over zones (real `hayloft`
//! processes, servers stopped, filled and brought back).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hayloft_proto::{VolumeHealth, VolumeRecord};
use support::replicas::{
    assert_on_every_copy, assign, primary_of, replica_ids, until_status, upload_many, volumes_on,
    wait_on_every_copy, write_at,
};
use support::{Cluster, Failpoint, content, eventually, hayloft, secs};
use tonic::Code;

/// Flags for volume servers whose copies heal quickly.
const FAST_HEALING: [&str; 4] = ["--anti-entropy-interval", "1s", "--scrub-interval", "1s"];

fn zones_of(volume: &VolumeRecord) -> BTreeSet<String> {
    volume
        .replicas
        .iter()
        .map(|r| r.location.clone().unwrap().zone)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_that_cannot_catch_up_is_replaced_elsewhere_and_removed() {
    // Every sync into a copy on vs0-vs2 fails (a failpoint; the field saw a
    // full volume refuse it): a stale copy there can never catch up.
    let failpoint = Failpoint::new("sync-copy");
    let mut cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .directory_args(["--repair-after", "2s"])
        .volume_args(["--replica-timeout", "2s"])
        .volume_env("HAYLOFT_FAILPOINT", &failpoint.env())
        .start()
        .await;
    failpoint.arm();
    let (ids, locations) = assign(&cluster, 64).await;
    assert_eq!(locations.len(), 3);
    // Ids whose primary is not vs2, so vs2's copy comes as a forward.
    let mut ids = ids
        .into_iter()
        .filter(|id| primary_of(&locations, id).server_id != "vs2");
    let mut acked = Vec::new();
    for seed in 0..5 {
        let id = ids.next().unwrap();
        let data = content(seed, 20_000);
        write_at(primary_of(&locations, &id), &locations, &id, data)
            .await
            .unwrap();
        acked.push((id, seed, 20_000));
    }
    // vs2 hangs through one write: it misses it and is reported stale.
    cluster.pause_volume(2);
    let missed = ids.next().unwrap();
    let err = write_at(
        primary_of(&locations, &missed),
        &locations,
        &missed,
        content(99, 20_000),
    )
    .await
    .unwrap_err();
    cluster.resume_volume(2);
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let volume = missed
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .0;
    let client = cluster.client().await;
    // Each catch-up fails, further and further apart, and status says why.
    until_status(
        &client,
        Duration::from_secs(30),
        "the failing catch-up is not a problem in status",
        |status| {
            status
                .problems
                .iter()
                .any(|p| p.contains(&format!("volume {volume}: repair on vs2 failed")))
                .then_some(())
        },
    )
    .await;
    // A server for the copy to go to (zone c, as the copy it replaces),
    // where syncs work.
    cluster.set_volume_env(&[]);
    let spare = cluster.add_volume_server("c", &[]).await;
    assert_eq!(spare, 3);
    let status = until_status(
        &client,
        Duration::from_secs(60),
        "the copy that cannot catch up was not replaced",
        |status| {
            let record = status
                .volumes
                .iter()
                .find(|v| v.status.as_ref().unwrap().volume_id == volume)?;
            let mut copies = replica_ids(record);
            copies.sort();
            (record.health == VolumeHealth::Ok as i32 && copies == ["vs0", "vs1", "vs3"])
                .then(|| status.clone())
        },
    )
    .await;
    let record = status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().unwrap().volume_id == volume)
        .unwrap();
    assert_eq!(zones_of(record).len(), 3, "{record:?}");
    assert_on_every_copy(&cluster, &acked).await;
    // The copy left on vs2 is an extra now: removed.
    eventually(secs(30), "the stale copy removed", async || {
        !volumes_on(&cluster, 2).await.unwrap().contains(&volume)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_paused_near_the_end_of_a_volume_catches_up_and_every_copy_ends_whole() {
    // vs2's volumes are smaller than the others' (its copy fills first), and
    // vs2 hangs through one write near the end: it misses it, turns stale,
    // and once resumed takes what the others hold (a copy's own records may
    // use the catch-up room past the maximum). The volume then fills to
    // vs2's limit, and every copy holds every blob.
    let cluster = Cluster::builder()
        .zones(&["a", "b", "c"])
        .replication(3)
        .volume_args(["--replica-timeout", "2s"])
        .volume_args(FAST_HEALING)
        .volume_args_each(
            ["4MiB", "4MiB", "1MiB"].map(|size| vec!["--max-volume-size".to_owned(), size.into()]),
        )
        .start()
        .await;
    let (ids, locations) = assign(&cluster, 64).await;
    let mut ids = ids.into_iter();
    let mut acked = Vec::new();
    let write = |id: String, seed: u64| {
        let locations = locations.clone();
        async move {
            let data = content(seed, 60_000);
            let written = write_at(primary_of(&locations, &id), &locations, &id, data).await;
            (id, seed, written)
        }
    };
    for seed in 0..12 {
        let (id, seed, written) = write(ids.next().unwrap(), seed).await;
        written.unwrap();
        acked.push((id, seed, 60_000));
    }
    // One write while vs2 hangs (to a primary other than vs2).
    let missed = ids
        .by_ref()
        .find(|id| primary_of(&locations, id).server_id != "vs2")
        .unwrap();
    cluster.pause_volume(2);
    let (missed, seed, written) = write(missed, 100).await;
    cluster.resume_volume(2);
    assert_eq!(written.unwrap_err().code(), Code::Unavailable);
    // Not acknowledged, but on vs0 and vs1: it spreads to vs2 as well.
    acked.push((missed, seed, 60_000));
    wait_on_every_copy(&cluster, &acked).await;
    // The volume takes writes again, until vs2's copy is full and seals it.
    // (Its servers hear it is whole with their next heartbeat; until then
    // they refuse writes as to a degraded volume.)
    let mut refused = 0;
    for (seed, id) in (200..).zip(ids) {
        let written = eventually(
            secs(30),
            "writes no longer refused as degraded",
            async || match write(id.clone(), seed).await.2 {
                Err(e) if e.message().contains("degraded") => Err(e),
                written => Ok(written),
            },
        )
        .await;
        match written {
            Ok(()) => acked.push((id, seed, 60_000)),
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0, "the volume never filled");
    assert!(acked.len() > 16, "{} blobs", acked.len());
    wait_on_every_copy(&cluster, &acked).await;
    assert_on_every_copy(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_return_to_a_zone_whose_only_server_comes_back() {
    // Zone c has one server. It is away past repair-after: its copies are
    // made again in zones a and b (the best there is then). Back, its old
    // copies are extras (removed), and one copy of each volume moves back
    // to it, one volume at a time: every volume spans three zones again.
    let mut cluster = Cluster::builder()
        .zones(&["a", "a", "b", "b", "c"])
        .replication(3)
        .directory_args(["--repair-after", "2s"])
        .volume_args(FAST_HEALING)
        .start()
        .await;
    let client = Arc::new(cluster.client().await);
    let acked = upload_many(&client, 120, 4).await;
    let all_in_three_zones = |status: &hayloft_proto::StatusResponse| {
        status.volumes.iter().all(|v| {
            v.health == VolumeHealth::Ok as i32 && v.replicas.len() == 3 && zones_of(v).len() == 3
        })
    };
    let status = until_status(&client, Duration::from_secs(30), "not spread", |s| {
        all_in_three_zones(s).then(|| s.clone())
    })
    .await;
    let volumes = status.volumes.len();
    assert!(volumes >= 2, "{status:?}");
    assert_eq!(status.below_spread, 0);

    cluster.kill_volume(4);
    let status = until_status(
        &client,
        Duration::from_secs(60),
        "copies were not made again in the other zones",
        |status| {
            status
                .volumes
                .iter()
                .all(|v| {
                    v.health == VolumeHealth::Ok as i32
                        && !replica_ids(v).contains(&"vs4".to_owned())
                })
                .then(|| status.clone())
        },
    )
    .await;
    // Two zones are all there is now: nothing is below what the live
    // servers allow.
    assert_eq!(status.below_spread, 0, "{status:?}");

    cluster.start_volume(4);
    let status = until_status(
        &client,
        Duration::from_secs(120),
        "copies did not return to zone c",
        |status| (all_in_three_zones(status) && status.below_spread == 0).then(|| status.clone()),
    )
    .await;
    assert_eq!(status.volumes.len(), volumes);
    let (ok, text) = hayloft(&cluster, &["status"]);
    assert!(ok, "{text}");
    assert!(!text.contains("SPREAD:"), "{text}");
    // Every blob on every copy, and no copy left outside its volume's set.
    wait_on_every_copy(&cluster, &acked).await;
    assert_on_every_copy(&cluster, &acked).await;
    eventually(
        secs(30),
        "no copy left outside its volume's set",
        async || {
            let status = client.status().await.unwrap();
            let mut extras = Vec::new();
            for server in 0..5 {
                let id = format!("vs{server}");
                for volume in volumes_on(&cluster, server).await.unwrap() {
                    let record = status
                        .volumes
                        .iter()
                        .find(|v| v.status.as_ref().unwrap().volume_id == volume)
                        .unwrap();
                    if !replica_ids(record).contains(&id) {
                        extras.push((volume, id.clone()));
                    }
                }
            }
            extras.is_empty().then_some(()).ok_or(extras)
        },
    )
    .await;
}
