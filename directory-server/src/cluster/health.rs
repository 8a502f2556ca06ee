//! How each copy and each volume is doing, as the leader sees it.

use super::*;

impl Cluster {
    pub(super) fn alive(&self, server: &ServerRow) -> bool {
        unix_now().saturating_sub(server.last_heartbeat) <= self.config.dead_after.as_secs()
    }

    /// How one copy of `row` is doing.
    pub(super) fn replica_health(
        &self,
        inner: &Inner,
        row: &VolumeRow,
        server_id: &str,
    ) -> ReplicaHealth {
        if !inner
            .state
            .servers
            .get(server_id)
            .is_some_and(|s| self.alive(s))
        {
            ReplicaHealth::Down
        } else if inner
            .reported
            .get(server_id)
            // No heartbeat since this directory started: the copy is taken
            // to be as it was (the next pulse says).
            .is_some_and(|volumes| !volumes.contains_key(&row.volume_id()))
            // Registered a moment ago, its copies not yet recorded as
            // reported (`register_volume` records them right after the
            // Raft entry applies): a heartbeat answered in between must not
            // call the new volume degraded, or its first writes are refused.
            && !inner.creating.contains(&row.volume_id())
        {
            ReplicaHealth::Missing
        } else if row.stale.iter().any(|s| s == server_id) {
            ReplicaHealth::Stale
        } else {
            ReplicaHealth::Ok
        }
    }

    /// Copies `row` should have (none once it is erasure-coded: the
    /// copies it still has are on their way out).
    pub(super) fn desired_copies(row: &VolumeRow) -> usize {
        if row.is_erasure_coded() {
            return 0;
        }
        row.replication.max(1) as usize
    }

    /// OK when every copy it should have is healthy; for an erasure-coded
    /// volume, when every shard holder's server is alive (copies not yet
    /// removed do not count).
    pub(super) fn volume_health(&self, inner: &Inner, row: &VolumeRow) -> VolumeHealth {
        if row.is_erasure_coded() {
            let down = self
                .holder_replicas(inner, row)
                .iter()
                .any(|r| r.health != ReplicaHealth::Ok as i32);
            return if down {
                VolumeHealth::Degraded
            } else {
                VolumeHealth::Ok
            };
        }
        let healthy = row
            .replicas
            .iter()
            .filter(|id| self.replica_health(inner, row, id) == ReplicaHealth::Ok)
            .count();
        if healthy >= row.replicas.len().max(Self::desired_copies(row)) {
            VolumeHealth::Ok
        } else {
            VolumeHealth::Degraded
        }
    }

    /// Every copy of `row` with its health, in placement order.
    pub(super) fn replicas(&self, inner: &Inner, row: &VolumeRow) -> Vec<Replica> {
        row.replicas
            .iter()
            .map(|id| Replica {
                location: Some(
                    inner
                        .state
                        .servers
                        .get(id)
                        .and_then(|s| s.location.clone())
                        .unwrap_or_else(|| ServerLocation {
                            server_id: id.clone(),
                            ..ServerLocation::default()
                        }),
                ),
                health: self.replica_health(inner, row, id) as i32,
                needles: inner
                    .reported
                    .get(id)
                    .and_then(|v| v.get(&row.volume_id()))
                    .map_or(0, |s| s.needles),
                status: inner
                    .reported
                    .get(id)
                    .and_then(|v| v.get(&row.volume_id()))
                    .cloned(),
            })
            .collect()
    }

    /// Where to read `row` from: healthy copies; else stale ones and ones
    /// the last heartbeat left out (a stale copy may lack recent deletes, and
    /// a copy may be left out of one heartbeat in the middle of a tier move,
    /// so they are read only when nothing better is alive).
    pub(super) fn read_locations(replicas: &[Replica]) -> Vec<ServerLocation> {
        let pick = |wanted: &[ReplicaHealth]| {
            replicas
                .iter()
                .filter(|r| wanted.iter().any(|h| r.health == *h as i32))
                .filter_map(|r| r.location.clone())
                .collect::<Vec<_>>()
        };
        let healthy = pick(&[ReplicaHealth::Ok]);
        if healthy.is_empty() {
            pick(&[ReplicaHealth::Stale, ReplicaHealth::Missing])
        } else {
            healthy
        }
    }

    /// True while a copy of `volume_id` moves to another server (a `move`
    /// repair job is open): the volume takes no new writes meanwhile.
    pub(super) fn moving(inner: &Inner, volume_id: VolumeId) -> bool {
        inner
            .state
            .repair_jobs
            .get(&volume_id)
            .is_some_and(|job| job.kind == "move")
    }

    /// Waits until every server in `servers` has sent a heartbeat at least
    /// two seconds after `since` (Unix seconds): its answer told it what
    /// the directory knew at `since`. False after `within`.
    pub async fn heard_from_since(&self, servers: &[String], since: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let heard = {
                let inner = self.inner.lock();
                servers.iter().all(|id| {
                    inner
                        .state
                        .servers
                        .get(id)
                        .is_some_and(|s| s.last_heartbeat > since + 1)
                })
            };
            if heard {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Degraded volumes with the health of each copy, for repair.
    pub fn degraded_volumes(&self) -> Vec<RepairView> {
        self.volume_views(false)
    }

    /// Every replicated volume as repair sees it (`all`), or only the
    /// degraded ones. Erasure-coded volumes are not repaired by copying
    /// (their copies are leaving; lost shards are rebuilt by the shard
    /// worker, `erasure::shard_worker`), so they are left out.
    pub fn volume_views(&self, all: bool) -> Vec<RepairView> {
        let inner = self.inner.lock();
        let now = unix_now();
        inner
            .state
            .volumes
            .values()
            .filter(|e| !e.is_erasure_coded())
            .filter(|e| all || self.volume_health(&inner, e) != VolumeHealth::Ok)
            .map(|e| {
                let replicas: Vec<RepairReplica> = self
                    .replicas(&inner, e)
                    .into_iter()
                    .map(|r| {
                        let location = r.location.unwrap_or_default();
                        let down_for = inner
                            .state
                            .servers
                            .get(&location.server_id)
                            .map_or(u64::MAX, |s| now.saturating_sub(s.last_heartbeat));
                        let status = r.status.unwrap_or_default();
                        RepairReplica {
                            health: ReplicaHealth::try_from(r.health).unwrap_or_default(),
                            location,
                            down_for,
                            tier: Tier::try_from(status.tier).unwrap_or_default(),
                            state: VolumeState::try_from(status.state).unwrap_or_default(),
                        }
                    })
                    .collect();
                // The tier a new copy is made on: that of the local copies.
                let tier = replicas
                    .iter()
                    .map(|r| r.tier)
                    .find(|t| matches!(t, Tier::Hot | Tier::Warm))
                    .unwrap_or_else(|| Tier::try_from(e.tier).unwrap_or(Tier::Hot));
                RepairView {
                    volume_id: e.volume_id(),
                    collection: e.collection.clone(),
                    tier,
                    desired: Self::desired_copies(e),
                    healthy: self.volume_health(&inner, e) == VolumeHealth::Ok,
                    replicas,
                }
            })
            .collect()
    }

    /// True if the server `server_id` is known and alive.
    pub fn server_alive(&self, server_id: &str) -> bool {
        let inner = self.inner.lock();
        inner
            .state
            .servers
            .get(server_id)
            .is_some_and(|s| self.alive(s))
    }

    /// A server's addresses, as it last reported them.
    pub fn server_location(&self, server_id: &str) -> Option<ServerLocation> {
        self.inner
            .lock()
            .state
            .servers
            .get(server_id)?
            .location
            .clone()
    }

    /// True once this leader has led for `dead_after`: every live server
    /// has reported since, and a server that has not counts as down. Until
    /// then a copy of a silent server is taken to be present, so nothing is
    /// concluded from a volume looking whole.
    pub fn settled(&self) -> bool {
        let inner = self.inner.lock();
        // Strictly more than `dead_after`: until then a silent server still
        // counts as alive (see `alive`, and `lead` setting its heartbeat).
        inner.led_term != 0
            && unix_now().saturating_sub(inner.led_at) > self.config.dead_after.as_secs()
    }
}
