//! Shards as servers report them: copies an encode left behind leave the
//! replica set under a new leader, orphan shards go only when they are not
//! the last of anything, and a holder's missing shard shows in the views.

use hayloft_proto::{ErasureLayout, ErasureShards};

use super::*;

fn layout(holders: &[&str]) -> ErasureLayout {
    ErasureLayout {
        code: "2+1".into(),
        data_len: 1 << 20,
        block_len: 1 << 16,
        holders: holders.iter().map(|s| s.to_string()).collect(),
        digests: vec![1, 2, 3],
        encoded_at: 1,
    }
}

fn copy_of(volume: VolumeId) -> VolumeStatus {
    VolumeStatus {
        volume_id: volume.0,
        tier: Tier::Warm as i32,
        sealed: true,
        file_bytes: 64,
        max_bytes: 1 << 30,
        ..VolumeStatus::default()
    }
}

/// A heartbeat of `server` reporting `copies` and, per volume, the
/// shards it holds.
async fn beat(
    cluster: &Cluster,
    server: &str,
    copies: Vec<VolumeStatus>,
    shards: &[(VolumeId, Vec<u32>)],
) {
    let mut request = heartbeat_of(server, copies);
    request.erasure_shards = shards
        .iter()
        .map(|(volume, held)| ErasureShards {
            volume_id: volume.0,
            held: held.clone(),
            damaged: Vec::new(),
            deleted_bytes: 0,
        })
        .collect();
    cluster.heartbeat(request).await.unwrap();
}

/// A volume with its copy on vs0, encoded 2+1 on vs1, vs2, vs3 (each
/// reporting its shard), vs4 alive and holding nothing.
async fn encoded(cluster: &Cluster) -> VolumeId {
    for server in ["vs0", "vs1", "vs2", "vs3", "vs4"] {
        beat(cluster, server, vec![], &[]).await;
    }
    let volume = cluster
        .plan_new_volume(Tier::Warm, "")
        .await
        .unwrap()
        .volume_id;
    cluster
        .register_volume(volume, "", Tier::Warm, &["vs0".to_owned()])
        .await
        .unwrap();
    beat(cluster, "vs0", vec![copy_of(volume)], &[]).await;
    cluster
        .erasure_encoded(volume, layout(&["vs1", "vs2", "vs3"]))
        .await
        .unwrap();
    for (shard, server) in ["vs1", "vs2", "vs3"].iter().enumerate() {
        beat(cluster, server, vec![], &[(volume, vec![shard as u32])]).await;
    }
    volume
}

#[tokio::test]
async fn copies_an_encode_left_leave_the_replica_set_under_a_new_leader_and_go_as_extras() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let volume = encoded(&cluster).await;
    // The leader that encoded dies before removing the copy: a new one
    // starts with no soft state, and hears from every server again.
    {
        let mut inner = cluster.inner.lock();
        let term = inner.led_term + 1;
        Cluster::lead(&mut inner, term);
    }
    beat(&cluster, "vs0", vec![copy_of(volume)], &[]).await;
    for (shard, server) in ["vs1", "vs2", "vs3"].iter().enumerate() {
        beat(&cluster, server, vec![], &[(volume, vec![shard as u32])]).await;
    }
    let nobody = |_: VolumeId| false;
    assert!(
        cluster.leftover_copies(&nobody).is_empty(),
        "not settled yet"
    );
    cluster.inner.lock().led_at = 0;
    assert_eq!(
        cluster.leftover_copies(&nobody),
        [(volume, "vs0".to_owned())]
    );
    // Not while this node encodes it (its encode removes its own), nor
    // while a holder is down (the copy may be needed).
    assert!(cluster.leftover_copies(&|v| v == volume).is_empty());
    cluster
        .inner
        .lock()
        .state
        .servers
        .get_mut("vs3")
        .unwrap()
        .last_heartbeat = 0;
    assert!(cluster.leftover_copies(&nobody).is_empty());
    beat(&cluster, "vs3", vec![], &[(volume, vec![2])]).await;
    // Out of the replica set, it is an extra the repair loop deletes.
    cluster.remove_replica(volume, "vs0").await.unwrap();
    assert!(cluster.leftover_copies(&nobody).is_empty());
    let listed = cluster.removable_extras();
    let extras: Vec<(VolumeId, String)> = listed
        .iter()
        .map(|e| (e.volume, e.location.server_id.clone()))
        .collect();
    assert_eq!(extras, [(volume, "vs0".to_owned())]);
    // Its deletes go to every holder before it is deleted.
    let layout = cluster.inner.lock().state.volumes[&volume]
        .erasure
        .clone()
        .unwrap();
    assert_eq!(listed[0].erasure_holders.len(), layout.holders.len());
    assert!(listed[0].erasure_holders.iter().all(|a| !a.is_empty()));
}

#[tokio::test]
async fn orphan_shards_go_after_the_grace_but_never_the_last_copy_nor_during_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let volume = encoded(&cluster).await;
    // vs4 holds shard 0 too (a holder replaced while it was away).
    beat(&cluster, "vs4", vec![], &[(volume, vec![0])]).await;
    let nobody = |_: VolumeId| false;
    let listed = |c: &Cluster, grace: u64| -> Vec<(VolumeId, String)> {
        c.orphan_shards(Duration::from_secs(grace), &nobody)
            .into_iter()
            .map(|(v, l)| (v, l.server_id))
            .collect()
    };
    assert!(
        listed(&cluster, 0).is_empty(),
        "not before the leader settled"
    );
    cluster.inner.lock().led_at = 0;
    assert_eq!(listed(&cluster, 0), [(volume, "vs4".to_owned())]);
    assert!(listed(&cluster, 3600).is_empty(), "within the grace period");
    assert!(cluster.still_orphan(volume, "vs4"));
    assert!(
        !cluster.still_orphan(volume, "vs1"),
        "a holder is no orphan"
    );
    // Shard 0's holder lost it: vs4's is the last copy, and stays.
    beat(&cluster, "vs1", vec![], &[(volume, vec![])]).await;
    assert!(listed(&cluster, 0).is_empty());
    // ...and the views call that shard bad.
    let view = cluster
        .shard_views()
        .into_iter()
        .find(|v| v.volume_id == volume)
        .unwrap();
    assert!(view.holders[0].bad_for.is_some() && view.holders[1].healthy());
    assert_eq!(view.others, ["vs4"]);
    beat(&cluster, "vs1", vec![], &[(volume, vec![0])]).await;
    assert_eq!(listed(&cluster, 0).len(), 1);
    // Not while an encode or a repair/rebuild job of the volume is open.
    assert!(
        cluster
            .orphan_shards(Duration::ZERO, &|v| v == volume)
            .is_empty()
    );
    let job = RepairJobRow {
        volume_id: volume.0,
        target: "vs4".into(),
        kind: crate::erasure::rebuild::REBUILD_KIND.into(),
        lost: "vs1".into(),
        shard: 0,
        ..RepairJobRow::default()
    };
    cluster.start_repair(job).await.unwrap();
    assert!(listed(&cluster, 0).is_empty());
    assert!(!cluster.still_orphan(volume, "vs4"));
    cluster.end_repair(volume, "vs4").await.unwrap();
    // A volume the directory does not know: its shards may be all there
    // is of it, never dropped.
    beat(
        &cluster,
        "vs4",
        vec![],
        &[(volume, vec![0]), (VolumeId(999), vec![0])],
    )
    .await;
    assert_eq!(listed(&cluster, 0), [(volume, "vs4".to_owned())]);
    cluster.orphan_dropped(volume, "vs4");
    assert!(listed(&cluster, 0).is_empty());

    // A rebuilt shard moves in the layout: the new holder is no orphan,
    // and a move from a server that no longer holds it is refused.
    beat(&cluster, "vs4", vec![], &[(volume, vec![0])]).await;
    cluster.shard_moved(volume, 0, "vs1", "vs4").await.unwrap();
    assert!(listed(&cluster, 0).is_empty());
    assert!(cluster.shard_moved(volume, 0, "vs1", "vs0").await.is_err());
    let holders = |c: &Cluster| {
        let status = c.status();
        let record = status
            .volumes
            .iter()
            .find(|v| v.status.as_ref().unwrap().volume_id == volume.0)
            .cloned()
            .unwrap();
        record
            .erasure
            .unwrap()
            .holders
            .into_iter()
            .map(|h| h.server_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(holders(&cluster), ["vs4", "vs2", "vs3"]);
    // vs1 still reports its old shard 0: now it is the orphan, dropped
    // while vs4 holds shard 0 whole.
    beat(&cluster, "vs1", vec![], &[(volume, vec![0])]).await;
    assert_eq!(listed(&cluster, 0), [(volume, "vs1".to_owned())]);
}
