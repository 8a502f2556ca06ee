//! Repair bookkeeping: repair jobs, results, copies leaving and joining a
//! replica set, and extra copies.

use super::*;

impl Cluster {
    /// Repairs started (by this leader or an earlier one) and not ended,
    /// by volume id.
    pub fn repair_jobs(&self) -> Vec<RepairJobRow> {
        self.inner
            .lock()
            .state
            .repair_jobs
            .values()
            .cloned()
            .collect()
    }

    /// The repair job of `volume_id`, if one was started and not ended.
    pub fn repair_job(&self, volume_id: VolumeId) -> Option<RepairJobRow> {
        self.inner.lock().state.repair_jobs.get(&volume_id).cloned()
    }

    /// Commits the start of a repair (stamped with this leader's term)
    /// before it runs: a leader elected later resumes it.
    pub async fn start_repair(&self, mut job: RepairJobRow) -> Result<()> {
        job.term = self.inner.lock().led_term;
        match self
            .propose(Command::RepairStarted {
                job: job.encode_to_vec(),
            })
            .await?
        {
            Applied::Refused(reason) => Err(Error::Refused(reason)),
            _ => Ok(()),
        }
    }

    /// Commits the end of the repair of `volume_id` on `target` (after its
    /// result, if any, was committed).
    pub async fn end_repair(&self, volume_id: VolumeId, target: &str) -> Result<()> {
        self.propose(Command::RepairEnded {
            volume_id: volume_id.0,
            target: target.to_owned(),
        })
        .await?;
        Ok(())
    }

    /// How far the copy on `target` is: its live bytes over those of the
    /// fullest other local copy, as heartbeats last reported them (0..1);
    /// for a shard rebuild running on this node, its bytes written over
    /// the shard's.
    pub fn repair_progress(&self, volume_id: VolumeId, target: &str) -> f64 {
        let inner = self.inner.lock();
        // A shard rebuild: its bytes written over the shard's.
        if let Some(progress) = Self::shard_rebuild_progress(&inner, volume_id) {
            return progress;
        }
        let live = |server: &str| {
            inner
                .reported
                .get(server)
                .and_then(|v| v.get(&volume_id))
                .filter(|s| s.tier != Tier::Cold as i32)
                .map(|s| s.live_bytes)
        };
        let Some(entry) = inner.state.volumes.get(&volume_id) else {
            return 0.0;
        };
        let full = entry
            .replicas
            .iter()
            .filter(|s| *s != target)
            .filter_map(|s| live(s))
            .max()
            .unwrap_or(0);
        if full == 0 {
            return 0.0;
        }
        (live(target).unwrap_or(0) as f64 / full as f64).min(1.0)
    }

    /// A stale or missing copy has caught up with the others (verified).
    pub async fn caught_up(&self, volume_id: VolumeId, server_id: &str) -> Result<()> {
        let stale = self
            .inner
            .lock()
            .state
            .volumes
            .get(&volume_id)
            .map(|e| e.stale.iter().any(|s| s == server_id));
        match stale {
            None => return Ok(()),
            Some(true) => {
                self.propose(Command::CaughtUp {
                    volume_id: volume_id.0,
                    server_id: server_id.to_owned(),
                })
                .await?;
            }
            Some(false) => {}
        }
        self.inner
            .lock()
            .reported
            .entry(server_id.to_owned())
            .or_default()
            .entry(volume_id)
            .or_insert_with(|| VolumeStatus {
                volume_id: volume_id.0,
                ..VolumeStatus::default()
            });
        Ok(())
    }

    /// A new copy on `target` (verified) replaces the copy on `lost`, or
    /// joins the copies (`lost` is `None`: the volume had too few).
    pub async fn replaced(
        &self,
        volume_id: VolumeId,
        lost: Option<&str>,
        target: &str,
    ) -> Result<()> {
        let _change = self.changes.lock().await;
        let known = self
            .inner
            .lock()
            .state
            .volumes
            .get(&volume_id)
            .map(|e| e.replicas.iter().any(|s| s == target));
        if known != Some(false) {
            return Ok(());
        }
        self.propose(Command::Replaced {
            volume_id: volume_id.0,
            lost: lost.map(str::to_owned),
            target: target.to_owned(),
        })
        .await?;
        let mut inner = self.inner.lock();
        inner
            .reported
            .entry(target.to_owned())
            .or_default()
            .entry(volume_id)
            .or_insert_with(|| VolumeStatus {
                volume_id: volume_id.0,
                ..VolumeStatus::default()
            });
        // The lost server's copy, if it comes back, is an extra copy now.
        if let Some(lost) = lost {
            inner.extras.insert((volume_id, lost.to_owned()));
        }
        Ok(())
    }

    /// Takes the copy on `server_id` out of the volume's replica set: reads
    /// stop going to it, and the copy left on the server is an extra (the
    /// caller deletes it; repair does if the caller cannot). Refused if no
    /// other healthy copy would be left, unless the volume is erasure-coded
    /// (its shards hold it: every copy goes).
    pub async fn remove_replica(&self, volume_id: VolumeId, server_id: &str) -> Result<()> {
        let _change = self.changes.lock().await;
        {
            let inner = self.inner.lock();
            let Some(row) = inner.state.volumes.get(&volume_id) else {
                return Err(Error::VolumeNotFound(volume_id));
            };
            if !row.replicas.iter().any(|s| s == server_id) {
                return Err(Error::NoCopy {
                    volume: volume_id,
                    server: server_id.to_owned(),
                });
            }
            let others_healthy = row
                .replicas
                .iter()
                .filter(|s| *s != server_id)
                .any(|s| self.replica_health(&inner, row, s) == ReplicaHealth::Ok);
            if !others_healthy && !row.is_erasure_coded() {
                return Err(Error::LastHealthyCopy(volume_id));
            }
        }
        self.propose(Command::RemoveReplica {
            volume_id: volume_id.0,
            server_id: server_id.to_owned(),
        })
        .await?;
        self.inner
            .lock()
            .extras
            .insert((volume_id, server_id.to_owned()));
        tracing::info!(volume = volume_id.0, server = %server_id, "copy taken out of the replica set");
        Ok(())
    }

    /// Copies outside their volume's replica set whose volume has all its
    /// copies healthy: safe to delete (none before the leader has
    /// [settled](Self::settled), nor the target of an open repair job).
    /// With each, whether its cold object must be kept (a copy in the
    /// replica set is cold on it), and the shard holders it hands its
    /// deletes to first if its volume is erasure-coded now.
    pub fn removable_extras(&self) -> Vec<ExtraCopy> {
        if !self.settled() {
            return Vec::new();
        }
        let inner = self.inner.lock();
        inner
            .extras
            .iter()
            .filter_map(|(volume, server)| {
                let (location, keep_object) = self.removable(&inner, *volume, server)?;
                let erasure_holders = inner
                    .state
                    .volumes
                    .get(volume)
                    .and_then(|row| row.erasure.as_ref())
                    .map(|layout| {
                        layout
                            .holders
                            .iter()
                            .map(|id| {
                                inner
                                    .state
                                    .servers
                                    .get(id)
                                    .and_then(|s| s.location.as_ref())
                                    .map(|l| l.grpc_addr.clone())
                                    .unwrap_or_default()
                            })
                            .collect::<Vec<_>>()
                    });
                // A holder whose address is not known yet: the copy waits
                // (its deletes must reach every holder).
                if erasure_holders
                    .as_ref()
                    .is_some_and(|h| h.iter().any(String::is_empty))
                {
                    return None;
                }
                Some(ExtraCopy {
                    volume: *volume,
                    location,
                    keep_object,
                    erasure_holders: erasure_holders.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// True if the extra copy of `volume_id` on `server_id` may still be
    /// deleted now: checked again right before each deletion, as the
    /// volume may have turned degraded since the list was made (a copy
    /// whose volume lost another copy meanwhile is kept).
    pub fn still_removable(&self, volume_id: VolumeId, server_id: &str) -> bool {
        if !self.settled() {
            return false;
        }
        let inner = self.inner.lock();
        inner.extras.contains(&(volume_id, server_id.to_owned()))
            && self.removable(&inner, volume_id, server_id).is_some()
    }

    /// The extra copy of `volume` on `server` may go (its volume has every
    /// copy it should, healthy, none of them this one, and no repair is
    /// copying to it): where it is, and whether its cold object is kept.
    pub(super) fn removable(
        &self,
        inner: &Inner,
        volume: VolumeId,
        server: &str,
    ) -> Option<(ServerLocation, bool)> {
        if inner
            .state
            .repair_jobs
            .get(&volume)
            .is_some_and(|job| job.target == server)
        {
            return None;
        }
        let row = &inner.state.volumes.get(&volume)?;
        if row.replicas.iter().any(|s| s == server)
            || self.volume_health(inner, row) != VolumeHealth::Ok
            || !inner
                .reported
                .get(server)
                .is_some_and(|v| v.contains_key(&volume))
        {
            return None;
        }
        let location = inner.state.servers.get(server)?.location.clone()?;
        let keep_object = row.replicas.iter().any(|s| {
            inner
                .reported
                .get(s)
                .and_then(|v| v.get(&volume))
                .is_none_or(|status| status.tier == Tier::Cold as i32)
        });
        Some((location, keep_object))
    }

    /// An extra copy was deleted.
    pub fn extra_removed(&self, volume_id: VolumeId, server_id: &str) {
        let mut inner = self.inner.lock();
        inner.extras.remove(&(volume_id, server_id.to_owned()));
        if let Some(volumes) = inner.reported.get_mut(server_id) {
            volumes.remove(&volume_id);
        }
    }

    /// Drops a volume that was deleted (retention) from the map. Its id is
    /// never reused: the next volume id is kept separately.
    pub async fn forget_volume(&self, volume_id: VolumeId) -> Result<bool> {
        let known = self.inner.lock().state.volumes.contains_key(&volume_id);
        self.propose(Command::ForgetVolume {
            volume_id: volume_id.0,
        })
        .await?;
        Ok(known)
    }
}

/// A copy outside its volume's replica set that may be deleted now.
#[derive(Debug, Clone)]
pub struct ExtraCopy {
    /// Its volume.
    pub volume: VolumeId,
    /// Its server.
    pub location: ServerLocation,
    /// A cold copy's object is kept (another copy reads it).
    pub keep_object: bool,
    /// The shard holders' gRPC addresses, if the volume is erasure-coded
    /// now: the copy hands them its deletes before going.
    pub erasure_holders: Vec<String>,
}
