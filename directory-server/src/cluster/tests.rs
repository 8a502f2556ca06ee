//! The cluster map on a one-node group: ids, snapshots, repair jobs,
//! revocations, and the registration window.

use std::sync::Arc;

use super::*;
use hayloft_proto::VolumeStatus;

/// The cluster over the database in `dir`, leading a one-node group
/// without Raft ([`solo::Solo`]).
async fn cluster(dir: &std::path::Path) -> Arc<Cluster> {
    let db = Arc::new(Db::open(dir).unwrap());
    let cluster = Arc::new(Cluster::load(db, DirectoryConfig::default(), 1).unwrap());
    solo::Solo::start(&cluster);
    cluster.leader_check().unwrap();
    cluster
}

/// A one-node Raft group over the database in `dir`, leading.
async fn raft_cluster(dir: &std::path::Path) -> (Arc<Cluster>, crate::consensus::Raft) {
    let db = Arc::new(Db::open(dir).unwrap());
    let cluster = Arc::new(Cluster::load(Arc::clone(&db), DirectoryConfig::default(), 1).unwrap());
    let peers = BTreeMap::from([(1, "127.0.0.1:1".to_owned())]);
    let raft = crate::consensus::start(
        &cluster,
        &db,
        1,
        &peers,
        false,
        crate::Timing::default(),
        hayloft_proto::Credential::none(),
    )
    .await
    .unwrap();
    raft.wait(Some(std::time::Duration::from_secs(10)))
        .state(openraft::ServerState::Leader, "leader")
        .await
        .unwrap();
    cluster.leader_check().unwrap();
    (cluster, raft)
}

/// A snapshot of `cluster` installed on a new node (id 2) with its own
/// database: the database's directory, the database, the node.
fn installed_elsewhere(cluster: &Cluster) -> (tempfile::TempDir, Arc<Db>, Cluster) {
    let (data, position) = cluster.snapshot().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path()).unwrap());
    let copy = Cluster::load(Arc::clone(&db), DirectoryConfig::default(), 2).unwrap();
    copy.install(&data, position).unwrap();
    (dir, db, copy)
}

fn heartbeat(volumes: Vec<VolumeStatus>) -> HeartbeatRequest {
    heartbeat_of("vs0", volumes)
}

fn heartbeat_of(server: &str, volumes: Vec<VolumeStatus>) -> HeartbeatRequest {
    HeartbeatRequest {
        server: Some(ServerLocation {
            server_id: server.into(),
            grpc_addr: format!("127.0.0.1:1{server}"),
            http_addr: format!("127.0.0.1:2{server}"),
            ..ServerLocation::default()
        }),
        volumes,
        free_hot_bytes: 1 << 40,
        free_warm_bytes: 1 << 40,
        keyring_problem: String::new(),
        workers: Vec::new(),
        erasure_shards: Vec::new(),
        erasure_reported: true,
        region: String::new(),
        region_lags: Vec::new(),
    }
}

#[tokio::test]
async fn unknown_volumes_are_adopted_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let unknown = VolumeStatus {
        volume_id: 7,
        tier: Tier::Hot as i32,
        file_bytes: 64,
        max_bytes: 1 << 30,
        ..VolumeStatus::default()
    };
    cluster.heartbeat(heartbeat(vec![unknown])).await.unwrap();
    let status = cluster.status();
    assert_eq!(status.volumes.len(), 1);
    assert_eq!(status.volumes[0].state, VolumeState::Sealed as i32);
    // Readable (it has a location) but never handed out.
    assert_eq!(
        cluster.lookup(&[VolumeId(7)], &[]).unwrap()[0]
            .locations
            .len(),
        1
    );
    assert!(cluster.assign("", 1).await.unwrap().is_none());
}

#[tokio::test]
async fn a_volume_registered_a_moment_ago_is_not_called_degraded() {
    // The window in `register_volume` between the Raft entry applying
    // and its copies being recorded as reported: a heartbeat answered
    // there once called the new volume degraded (vs1's last report did
    // not list it), and the server refused the first writes to it.
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    for server in ["vs0", "vs1"] {
        cluster
            .heartbeat(heartbeat_of(server, vec![]))
            .await
            .unwrap();
    }
    let plan = cluster.plan_new_volume(Tier::Hot, "").await.unwrap();
    let servers = vec!["vs0".to_owned(), "vs1".to_owned()];
    let row = VolumeRow {
        id: plan.volume_id.0,
        tier: Tier::Hot as i32,
        state: VolumeState::Writable as i32,
        server_id: "vs0".into(),
        needle_high_water: 1,
        created_at: unix_now(),
        replicas: servers.clone(),
        replication: 2,
        ..VolumeRow::default()
    };
    cluster
        .propose(Command::CreateVolume {
            row: row.encode_to_vec(),
        })
        .await
        .unwrap();
    let answer = cluster
        .heartbeat(heartbeat_of("vs0", vec![]))
        .await
        .unwrap();
    let new = answer
        .iter()
        .find(|v| v.volume_id == plan.volume_id.0)
        .unwrap();
    assert!(!new.degraded, "{new:?}");
    // The registration completes (its entry applies again, unchanged):
    // still healthy.
    cluster
        .register_volume(plan.volume_id, "", Tier::Hot, &servers)
        .await
        .unwrap();
    let answer = cluster
        .heartbeat(heartbeat_of("vs1", vec![]))
        .await
        .unwrap();
    assert!(answer.iter().all(|v| !v.degraded), "{answer:?}");
}

#[tokio::test]
async fn ids_are_never_handed_out_twice_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let cluster = cluster(dir.path()).await;
        cluster.heartbeat(heartbeat(vec![])).await.unwrap();
        let volume = match cluster.status().volumes.first() {
            Some(v) => VolumeId(v.status.as_ref().unwrap().volume_id),
            None => {
                let plan = cluster.plan_new_volume(Tier::Hot, "").await.unwrap();
                cluster
                    .register_volume(plan.volume_id, "", Tier::Hot, &["vs0".to_owned()])
                    .await
                    .unwrap();
                plan.volume_id
            }
        };
        // A heartbeat that reports the volume keeps it writable.
        cluster
            .heartbeat(heartbeat(vec![VolumeStatus {
                volume_id: volume.0,
                tier: Tier::Hot as i32,
                file_bytes: 64,
                max_bytes: 1 << 30,
                ..VolumeStatus::default()
            }]))
            .await
            .unwrap();
        for _ in 0..50 {
            let (blobs, _) = cluster.assign("", 1000).await.unwrap().unwrap();
            for blob in blobs {
                assert!(
                    seen.insert(blob.needle_id),
                    "needle {} twice",
                    blob.needle_id
                );
            }
        }
        // The unused rest of the node's block is lost with it.
    }
    assert_eq!(seen.len(), 150_000);
}

#[tokio::test]
async fn a_snapshot_installed_elsewhere_holds_the_same_map() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    cluster.heartbeat(heartbeat(vec![])).await.unwrap();
    let plan = cluster.plan_new_volume(Tier::Hot, "photos").await.unwrap();
    cluster
        .register_volume(plan.volume_id, "photos", Tier::Hot, &["vs0".to_owned()])
        .await
        .unwrap();
    let (blobs, _) = cluster.assign("photos", 10).await.unwrap().unwrap();
    let (_, position) = cluster.snapshot().unwrap();

    let (_other, db, copy) = installed_elsewhere(&cluster);
    assert_eq!(copy.position(), position);
    let volumes = |c: &Cluster| {
        c.status()
            .volumes
            .iter()
            .map(|v| (v.replicas.len(), v.state, v.replication))
            .collect::<Vec<_>>()
    };
    assert_eq!(volumes(&copy), volumes(&cluster));
    // The high-water mark came along: the copy would reserve past every
    // id the first node handed out.
    let row = |c: &Cluster| c.inner.lock().state.volumes[&plan.volume_id].needle_high_water;
    assert_eq!(row(&copy), row(&cluster));
    assert!(
        blobs
            .iter()
            .all(|b| (b.needle_id & 0xffff_ffff) < row(&copy))
    );
    // And it survives a reopen of that database.
    drop(copy);
    let reopened = Cluster::load(db, DirectoryConfig::default(), 2).unwrap();
    assert_eq!(row(&reopened), row(&cluster));
    assert_eq!(reopened.position(), position);
}

#[tokio::test]
async fn repair_jobs_are_replicated_state_and_end_only_for_their_target() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    cluster.heartbeat(heartbeat(vec![])).await.unwrap();
    let plan = cluster.plan_new_volume(Tier::Hot, "photos").await.unwrap();
    let id = plan.volume_id;
    cluster
        .register_volume(id, "photos", Tier::Hot, &["vs0".to_owned()])
        .await
        .unwrap();
    let job = |volume_id: VolumeId, target: &str| RepairJobRow {
        volume_id: volume_id.0,
        target: target.into(),
        kind: "replace".into(),
        lost: "vs0".into(),
        started_at: 1_700_000_000,
        term: 0,
        shard: 0,
        ..RepairJobRow::default()
    };
    // No job for a volume the map does not hold.
    assert!(
        cluster
            .start_repair(job(VolumeId(id.0 + 1), "vs1"))
            .await
            .is_err()
    );
    cluster.start_repair(job(id, "vs1")).await.unwrap();
    let started = cluster.repair_job(id).unwrap();
    assert_eq!(started.target, "vs1");
    assert!(started.term >= 1, "stamped with the leader's term");
    let status = cluster.status();
    assert!(status.volumes[0].repairing);
    assert_eq!(status.volumes[0].repair_target, "vs1");
    assert_eq!(status.volumes[0].repair_started_at, 1_700_000_000);
    // Ending another target's job leaves this one.
    cluster.end_repair(id, "vs2").await.unwrap();
    assert!(cluster.repair_job(id).is_some());

    // A snapshot carries it, and a reopened database keeps it.
    let (_other, db, copy) = installed_elsewhere(&cluster);
    assert_eq!(copy.repair_jobs(), vec![started.clone()]);
    drop(copy);
    let reopened = Cluster::load(db, DirectoryConfig::default(), 2).unwrap();
    assert_eq!(reopened.repair_jobs(), vec![started]);

    cluster.end_repair(id, "vs1").await.unwrap();
    assert!(cluster.repair_jobs().is_empty());
    assert!(!cluster.status().volumes[0].repairing);
    // A forgotten volume's job goes with it.
    cluster.start_repair(job(id, "vs1")).await.unwrap();
    cluster.forget_volume(id).await.unwrap();
    assert!(cluster.repair_jobs().is_empty());
}

#[tokio::test]
async fn revoked_tokens_are_replicated_state_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let gate = cluster.revocations();
    let later = unix_now() + 3600;
    cluster.revoke_token("t1", later).await.unwrap();
    cluster.revoke_token("t2", later).await.unwrap();
    assert!(gate.contains("t1") && gate.contains("t2") && !gate.contains("t3"));
    assert_eq!(cluster.revoked_tokens(), vec!["t1", "t2"]);

    // A snapshot carries them to another node's gate, and a reopened
    // database keeps them.
    let (_other, db, copy) = installed_elsewhere(&cluster);
    assert!(copy.revocations().contains("t1") && copy.revocations().contains("t2"));
    drop(copy);
    let reopened = Cluster::load(db, DirectoryConfig::default(), 2).unwrap();
    assert!(reopened.revocations().contains("t2"));
    assert_eq!(reopened.revoked_tokens(), vec!["t1", "t2"]);

    // An entry past its expiry goes with the next revocation; one
    // already expired is not kept.
    cluster.revoke_token("old", unix_now() - 10).await.unwrap();
    assert!(!gate.contains("old"));
    cluster.revoke_token("soon", unix_now()).await.unwrap();
    assert!(gate.contains("soon"));
    // A revocation proposed after t1 and t2 have expired drops them.
    cluster
        .propose(Command::RevokeToken {
            token_id: "t3".into(),
            expires_at: later + 7200,
            now: later + 1,
        })
        .await
        .unwrap();
    assert_eq!(cluster.revoked_tokens(), vec!["t3"]);
    assert!(!gate.contains("t1") && gate.contains("t3"));
}

#[tokio::test]
async fn a_database_from_before_raft_is_taken_over_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    {
        // As a directory without Raft left it: rows, no log, no applied
        // log id.
        let db = Db::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        db::put_next_volume_id(&mut batch, VolumeId(8));
        db::put_volume(
            &mut batch,
            &VolumeRow {
                id: 7,
                collection: "old".into(),
                tier: Tier::Hot as i32,
                state: VolumeState::Writable as i32,
                server_id: "vs0".into(),
                needle_high_water: 500_000,
                created_at: 1,
                ..VolumeRow::default()
            },
        );
        db.write(batch).unwrap();
    }
    let (cluster, raft) = raft_cluster(dir.path()).await;
    cluster
        .heartbeat(heartbeat(vec![VolumeStatus {
            volume_id: 7,
            collection: "old".into(),
            tier: Tier::Hot as i32,
            file_bytes: 64,
            max_bytes: 1 << 30,
            ..VolumeStatus::default()
        }]))
        .await
        .unwrap();
    let (blobs, locations) = cluster.assign("old", 10).await.unwrap().unwrap();
    assert_eq!(locations[0].server_id, "vs0");
    for blob in blobs {
        assert_eq!(blob.volume_id, 7);
        assert!(blob.needle_id & 0xffff_ffff >= 500_000, "{blob:?}");
    }
    let plan = cluster.plan_new_volume(Tier::Hot, "new").await.unwrap();
    assert_eq!(plan.volume_id, VolumeId(8));
    raft.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_extra_copy_is_kept_if_its_volume_lost_a_copy_since_the_list_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let status = |id: VolumeId| VolumeStatus {
        volume_id: id.0,
        tier: Tier::Hot as i32,
        file_bytes: 64,
        max_bytes: 1 << 30,
        ..VolumeStatus::default()
    };
    for server in ["vs0", "vs1"] {
        cluster
            .heartbeat(heartbeat_of(server, vec![]))
            .await
            .unwrap();
    }
    let plan = cluster.plan_new_volume(Tier::Hot, "").await.unwrap();
    let volume = plan.volume_id;
    cluster
        .register_volume(volume, "", Tier::Hot, &["vs0".to_owned()])
        .await
        .unwrap();
    cluster
        .heartbeat(heartbeat_of("vs0", vec![status(volume)]))
        .await
        .unwrap();
    // vs1 holds a copy outside the replica set: an extra.
    cluster
        .heartbeat(heartbeat_of("vs1", vec![status(volume)]))
        .await
        .unwrap();
    // Settled long ago (as after `dead_after` of leadership).
    cluster.inner.lock().led_at = 0;
    let listed = cluster.removable_extras();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].erasure_holders.is_empty(), "{listed:?}");
    assert!(cluster.still_removable(volume, "vs1"));
    // Then vs0, its only copy, goes silent: the extra is kept after all.
    cluster
        .inner
        .lock()
        .state
        .servers
        .get_mut("vs0")
        .unwrap()
        .last_heartbeat = 0;
    assert!(!cluster.still_removable(volume, "vs1"));
    assert!(cluster.removable_extras().is_empty());
}

mod shards;

/// What a server reports it fetched from another region, counted up into
/// the capacity samples: across its restarts (its counter starts again at
/// 0) and a change of leader (the count goes on from the last sample;
/// nothing counted twice).
#[tokio::test]
async fn bytes_shipped_from_other_regions_are_counted_across_restarts_and_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _raft) = raft_cluster(dir.path()).await;
    let shipped = |bytes: u64| {
        let mut beat = heartbeat(Vec::new());
        beat.region_lags = vec![hayloft_proto::RegionLag {
            region: "eu".into(),
            shipped_bytes: bytes,
            ..Default::default()
        }];
        beat
    };
    let counted = |cluster: &Cluster| {
        cluster
            .capacity_sample()
            .shipped_bytes
            .get("eu")
            .copied()
            .unwrap_or(0)
    };
    // The first report only sets the mark.
    cluster.heartbeat(shipped(100)).await.unwrap();
    assert_eq!(counted(&cluster), 0);
    cluster.heartbeat(shipped(300)).await.unwrap();
    assert_eq!(counted(&cluster), 200);
    // The server restarted: its counter starts again.
    cluster.heartbeat(shipped(50)).await.unwrap();
    assert_eq!(counted(&cluster), 250);
    cluster
        .record_capacity(std::time::Duration::from_secs(86_400))
        .await
        .unwrap();
    // Another term: the count goes on from the last sample.
    {
        let mut inner = cluster.inner.lock();
        let term = inner.led_term + 1;
        Cluster::lead(&mut inner, term);
    }
    cluster.heartbeat(shipped(80)).await.unwrap();
    assert_eq!(counted(&cluster), 250);
    cluster.heartbeat(shipped(100)).await.unwrap();
    assert_eq!(counted(&cluster), 270);
}
