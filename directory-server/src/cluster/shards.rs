//! Shards of erasure-coded volumes as the servers report them (the
//! leader's soft state, set afresh by every heartbeat), and what is
//! decided from them: shards to rebuild ([`Cluster::shard_views`]), a
//! rebuilt shard's new holder committed ([`Cluster::shard_moved`]), orphan
//! shards to drop ([`Cluster::orphan_shards`]) and copies left behind by
//! an encode ([`Cluster::leftover_copies`]).

use hayloft_proto::ErasureShards;

use super::*;
use crate::erasure::rebuild::{REBUILD_KIND, ShardHolder, ShardView};

/// What the leader knows of shards from heartbeats. Cleared when a node
/// starts to lead (rebuilt from the next heartbeats).
#[derive(Debug, Default)]
pub(super) struct ShardState {
    /// Server -> volume -> the shards it reported in its last heartbeat.
    reported: HashMap<String, HashMap<VolumeId, ErasureShards>>,
    /// (volume, shard) -> Unix seconds since its live holder has reported
    /// it neither held nor whole.
    bad_since: HashMap<(VolumeId, u32), u64>,
    /// (volume, server) -> Unix seconds since the server has reported
    /// files of the volume while holding no shard of it in the layout.
    orphan_since: HashMap<(VolumeId, String), u64>,
    /// Volume -> (bytes done, bytes in all) of its rebuild running here.
    progress: HashMap<VolumeId, (u64, u64)>,
    /// Volume -> why its last rebuilds failed, in a row (for status).
    failing: BTreeMap<VolumeId, (u32, String)>,
}

impl Cluster {
    /// Bytes of the needles deleted from erasure-coded volume `volume`
    /// since its encode, as its holders last reported them (0 if unknown).
    pub fn deleted_bytes(&self, volume: VolumeId) -> u64 {
        let inner = self.inner.lock();
        inner
            .state
            .volumes
            .get(&volume)
            .map_or(0, |row| Self::erasure_deleted_bytes(&inner, row))
    }

    /// Bytes of the needles deleted since `row`'s encode: the most any of
    /// its holders reported (their journals converge), 0 if none did.
    pub(super) fn erasure_deleted_bytes(inner: &Inner, row: &VolumeRow) -> u64 {
        let Some(layout) = &row.erasure else {
            return 0;
        };
        layout
            .holders
            .iter()
            .filter_map(|h| inner.shards.reported.get(h)?.get(&row.volume_id()))
            .map(|r| r.deleted_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Records the shards `server_id` reported in a heartbeat (`now`: Unix
    /// seconds): which of its shards in the layouts it lacks, and which
    /// volumes it holds files of without being a holder.
    pub(super) fn record_shards(
        inner: &mut Inner,
        server_id: &str,
        reports: Vec<ErasureShards>,
        now: u64,
    ) {
        let reports: HashMap<VolumeId, ErasureShards> = reports
            .into_iter()
            .map(|r| (VolumeId(r.volume_id), r))
            .collect();
        let shards = &mut inner.shards;
        for row in inner.state.volumes.values() {
            let Some(layout) = &row.erasure else {
                continue;
            };
            for (shard, holder) in layout.holders.iter().enumerate() {
                if holder != server_id {
                    continue;
                }
                let key = (row.volume_id(), shard as u32);
                let held = reports
                    .get(&row.volume_id())
                    .is_some_and(|r| r.held.contains(&(shard as u32)));
                if held {
                    shards.bad_since.remove(&key);
                } else {
                    shards.bad_since.entry(key).or_insert(now);
                }
            }
        }
        shards
            .orphan_since
            .retain(|(volume, server), _| server != server_id || reports.contains_key(volume));
        for volume in reports.keys() {
            let holder = inner
                .state
                .volumes
                .get(volume)
                .and_then(|row| row.erasure.as_ref())
                .is_some_and(|l| l.holders.iter().any(|h| h == server_id));
            let key = (*volume, server_id.to_owned());
            if holder {
                shards.orphan_since.remove(&key);
            } else {
                shards.orphan_since.entry(key).or_insert(now);
            }
        }
        shards.reported.insert(server_id.to_owned(), reports);
    }

    /// Forgets the shard reports (a node starting to lead).
    pub(super) fn forget_shards(inner: &mut Inner) {
        inner.shards = ShardState::default();
    }

    /// Every erasure-coded volume as rebuilds see it: each shard's holder,
    /// down or not, its shard reported bad or not, and the servers holding
    /// orphan files of it.
    pub fn shard_views(&self) -> Vec<ShardView> {
        let inner = self.inner.lock();
        let now = unix_now();
        let mut views = Vec::new();
        for row in inner.state.volumes.values() {
            let Some(layout) = &row.erasure else {
                continue;
            };
            let Ok(code) = layout.code.parse::<hayloft_storage::erasure::Code>() else {
                continue;
            };
            let holders = layout
                .holders
                .iter()
                .enumerate()
                .map(|(shard, id)| {
                    let server = inner.state.servers.get(id);
                    let alive = server.is_some_and(|s| self.alive(s));
                    ShardHolder {
                        location: server.and_then(|s| s.location.clone()).unwrap_or_else(|| {
                            ServerLocation {
                                server_id: id.clone(),
                                ..ServerLocation::default()
                            }
                        }),
                        down_for: (!alive).then(|| {
                            server.map_or(u64::MAX, |s| now.saturating_sub(s.last_heartbeat))
                        }),
                        bad_for: alive
                            .then(|| {
                                inner
                                    .shards
                                    .bad_since
                                    .get(&(row.volume_id(), shard as u32))
                                    .map(|since| now.saturating_sub(*since))
                            })
                            .flatten(),
                    }
                })
                .collect();
            let others = inner
                .shards
                .orphan_since
                .keys()
                .filter(|(volume, _)| *volume == row.volume_id())
                .map(|(_, server)| server.clone())
                .collect();
            views.push(ShardView {
                volume_id: row.volume_id(),
                code,
                shard_bytes: super::stored_bytes(layout) / code.shards().max(1) as u64,
                holders,
                others,
            });
        }
        views
    }

    /// Commits that shard `shard` of `volume_id` was rebuilt on `to` (its
    /// digest checked there) in place of `from`'s: from now on heartbeat
    /// answers name `to` as its holder.
    pub async fn shard_moved(
        &self,
        volume_id: VolumeId,
        shard: u32,
        from: &str,
        to: &str,
    ) -> Result<()> {
        match self
            .propose(Command::ShardMoved {
                volume_id: volume_id.0,
                shard,
                from: from.to_owned(),
                to: to.to_owned(),
            })
            .await?
        {
            Applied::Refused(reason) => Err(Error::Refused(reason)),
            _ => {
                let mut inner = self.inner.lock();
                inner.shards.bad_since.remove(&(volume_id, shard));
                // The target reported the volume's files before it held
                // the shard: it is a holder now, not an orphan.
                inner
                    .shards
                    .orphan_since
                    .remove(&(volume_id, to.to_owned()));
                Ok(())
            }
        }
    }

    /// Records how far the rebuild of `volume_id` running here is.
    pub fn shard_progress(&self, volume_id: VolumeId, done: u64, total: u64) {
        self.inner
            .lock()
            .shards
            .progress
            .insert(volume_id, (done, total));
    }

    /// Records how a rebuild of `volume_id` ended (a failure is listed in
    /// status until the next success).
    pub fn shard_rebuild_ended(
        &self,
        volume_id: VolumeId,
        result: &std::result::Result<(), String>,
    ) {
        let mut inner = self.inner.lock();
        inner.shards.progress.remove(&volume_id);
        match result {
            Ok(()) => {
                inner.shards.failing.remove(&volume_id);
            }
            Err(error) => {
                let entry = inner.shards.failing.entry(volume_id).or_default();
                entry.0 += 1;
                entry.1.clone_from(error);
            }
        }
    }

    /// Rebuild progress of `volume_id` (0..1), if one runs on this node.
    pub(super) fn shard_rebuild_progress(inner: &Inner, volume_id: VolumeId) -> Option<f64> {
        let (done, total) = inner.shards.progress.get(&volume_id)?;
        Some((*done as f64 / (*total).max(1) as f64).min(1.0))
    }

    /// One line per volume whose shard rebuilds keep failing, for status.
    pub(super) fn shard_problems(inner: &Inner) -> Vec<String> {
        inner
            .shards
            .failing
            .iter()
            .map(|(volume, (count, error))| {
                format!("volume {volume}: shard rebuild failed {count} time(s) in a row: {error}")
            })
            .collect()
    }

    /// Servers holding files of an erasure-coded volume (or of a volume's
    /// failed encode) with no shard of it in the layout, for `grace` or
    /// longer, that may be dropped now: none before the leader has
    /// settled; none of a volume with an open repair or rebuild job or
    /// being encoded (`encoding`); none of a volume the directory does not
    /// know (they may be all there is of it); for a replicated volume, only
    /// while a healthy copy of it exists; for an erasure-coded one, only if
    /// every shard the server holds is held, whole, by its holder in the
    /// layout (never the last copy of a shard).
    pub fn orphan_shards(
        &self,
        grace: Duration,
        encoding: &dyn Fn(VolumeId) -> bool,
    ) -> Vec<(VolumeId, ServerLocation)> {
        if !self.settled() {
            return Vec::new();
        }
        let inner = self.inner.lock();
        let now = unix_now();
        inner
            .shards
            .orphan_since
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= grace.as_secs())
            .filter(|((volume, server), _)| {
                !encoding(*volume) && self.droppable(&inner, *volume, server)
            })
            .filter_map(|((volume, server), _)| {
                let location = inner.state.servers.get(server)?.location.clone()?;
                Some((*volume, location))
            })
            .collect()
    }

    /// True if the orphan files of `volume` on `server` may still go (the
    /// rules of [`Cluster::orphan_shards`], checked again right before).
    pub fn still_orphan(&self, volume: VolumeId, server: &str) -> bool {
        let inner = self.inner.lock();
        inner
            .shards
            .orphan_since
            .contains_key(&(volume, server.to_owned()))
            && self.droppable(&inner, volume, server)
    }

    fn droppable(&self, inner: &Inner, volume: VolumeId, server: &str) -> bool {
        if inner.state.repair_jobs.contains_key(&volume) {
            return false;
        }
        let Some(row) = inner.state.volumes.get(&volume) else {
            return false;
        };
        let Some(layout) = &row.erasure else {
            return row
                .replicas
                .iter()
                .any(|id| self.replica_health(inner, row, id) == ReplicaHealth::Ok);
        };
        if layout.holders.iter().any(|h| h == server) {
            return false;
        }
        let Some(report) = inner
            .shards
            .reported
            .get(server)
            .and_then(|r| r.get(&volume))
        else {
            return false;
        };
        report.held.iter().all(|shard| {
            layout.holders.get(*shard as usize).is_some_and(|holder| {
                inner
                    .state
                    .servers
                    .get(holder)
                    .is_some_and(|s| self.alive(s))
                    && inner
                        .shards
                        .reported
                        .get(holder)
                        .and_then(|r| r.get(&volume))
                        .is_some_and(|r| r.held.contains(shard))
            })
        })
    }

    /// The orphan files of `volume` on `server` were dropped.
    pub fn orphan_dropped(&self, volume: VolumeId, server: &str) {
        let mut inner = self.inner.lock();
        inner
            .shards
            .orphan_since
            .remove(&(volume, server.to_owned()));
        if let Some(reports) = inner.shards.reported.get_mut(server) {
            reports.remove(&volume);
        }
    }

    /// Copies still in the replica set of an erasure-coded volume whose
    /// holders are all alive (an encode whose leader died before removing
    /// them, or whose removal failed): they are to leave the set and be
    /// deleted as extra copies. None before the leader has settled, nor
    /// of a volume `encoding` (this node's encode removes its own), nor of
    /// one with an open job (a rebuild, or whatever else holds it).
    pub fn leftover_copies(&self, encoding: &dyn Fn(VolumeId) -> bool) -> Vec<(VolumeId, String)> {
        if !self.settled() {
            return Vec::new();
        }
        let inner = self.inner.lock();
        inner
            .state
            .volumes
            .values()
            .filter(|row| row.is_erasure_coded() && !encoding(row.volume_id()))
            .filter(|row| !inner.state.repair_jobs.contains_key(&row.volume_id()))
            .filter(|row| self.volume_health(&inner, row) == VolumeHealth::Ok)
            .flat_map(|row| row.replicas.iter().map(|s| (row.volume_id(), s.clone())))
            .collect()
    }

    /// The open rebuild jobs (an earlier leader's too).
    pub fn rebuild_jobs(&self) -> Vec<RepairJobRow> {
        self.inner
            .lock()
            .state
            .repair_jobs
            .values()
            .filter(|job| job.kind == REBUILD_KIND)
            .cloned()
            .collect()
    }
}
