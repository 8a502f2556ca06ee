//! Heartbeats: a volume server says it is alive and what it holds; the
//! answer tells it its volumes' copies and whether they take writes.

use super::*;

impl Cluster {
    /// Applies a heartbeat: the server is alive, at this address, with these
    /// volumes. Answers with the copies of each volume it holds. A new
    /// server or address, a volume's new state or tier, copies that missed a
    /// forward and volumes nobody knew are committed through the Raft log;
    /// the rest (liveness, free space, stats) is the leader's soft state.
    pub async fn heartbeat(&self, request: HeartbeatRequest) -> Result<Vec<VolumeReplicas>> {
        let location = request
            .server
            .ok_or_else(|| Error::BadHeartbeat("server"))?;
        if location.server_id.is_empty() {
            return Err(Error::BadHeartbeat("server id"));
        }
        let server_id = location.server_id.clone();
        if !request.region_lags.is_empty() {
            let mut inner = self.inner.lock();
            Self::count_shipped(&mut inner, &server_id, &request.region_lags);
            inner
                .region_lags
                .insert(server_id.clone(), request.region_lags.clone());
        } else {
            self.inner.lock().region_lags.remove(&server_id);
        }
        let server_region = match request.region.as_str() {
            "" => hayloft_proto::regions::DEFAULT_REGION,
            named => named,
        };
        if server_region != self.regions.local.name {
            return Err(Error::WrongRegion {
                server: server_id,
                server_region: server_region.to_owned(),
                region: self.regions.local.name.clone(),
            });
        }
        let registered = self
            .inner
            .lock()
            .state
            .servers
            .get(&server_id)
            .and_then(|s| s.location.clone());
        if registered.as_ref() != Some(&location) {
            self.propose(Command::RegisterServer {
                location: location.encode_to_vec(),
            })
            .await?;
        }
        let mut commands = Vec::new();
        {
            let mut inner = self.inner.lock();
            let inner = &mut *inner;
            if let Some(server) = inner.state.servers.get_mut(&server_id) {
                server.last_heartbeat = unix_now();
                server.free_hot_bytes = request.free_hot_bytes;
                server.free_warm_bytes = request.free_warm_bytes;
                server.keyring_problem = request.keyring_problem.clone();
            }
            let mut reported = HashMap::new();
            for status in request.volumes {
                let volume_id = VolumeId(status.volume_id);
                if inner.creating.contains(&volume_id) || inner.abandoned.contains(&volume_id) {
                    // Reported between its creation and its registration, or
                    // a copy of a creation that failed (being deleted).
                    continue;
                }
                reported.insert(volume_id, status.clone());
                let Some(row) = inner.state.volumes.get_mut(&volume_id) else {
                    // A volume the directory has no record of (copied in by
                    // an operator, or created before the database was lost).
                    // Which of its needle ids were handed out is unknown, so
                    // it is served read-only and never takes new ids.
                    tracing::warn!(volume = status.volume_id, server = %server_id,
                        "adopting unknown volume as sealed");
                    let row = VolumeRow {
                        id: status.volume_id,
                        collection: status.collection.clone(),
                        tier: status.tier,
                        state: VolumeState::Sealed as i32,
                        server_id: server_id.clone(),
                        needle_high_water: MAX_SEQ + 1,
                        created_at: unix_now(),
                        status: None,
                        replicas: vec![server_id.clone()],
                        replication: 1,
                        stale: Vec::new(),
                        erasure: None,
                        regions: Vec::new(),
                    };
                    commands.push(Command::AdoptVolume {
                        row: row.encode_to_vec(),
                    });
                    continue;
                };
                if !row.replicas.contains(&server_id) {
                    // A copy the directory did not place here (left behind by
                    // a repair, or copied in by hand): not served, not
                    // counted, and deleted once the volume has all its copies
                    // again.
                    if inner.extras.insert((volume_id, server_id.clone())) {
                        tracing::warn!(volume = status.volume_id, server = %server_id,
                            "server reports a copy outside the volume's replica set");
                    }
                    continue;
                }
                // Copies a forward from this server failed to reach: they
                // missed a write or a delete.
                let stale: Vec<String> = status
                    .failed_replicas
                    .iter()
                    .filter(|failed| row.replicas.contains(failed) && !row.stale.contains(failed))
                    .cloned()
                    .collect();
                for failed in &stale {
                    tracing::warn!(volume = row.id, replica = %failed, reporter = %server_id,
                        "copy missed a forwarded write or delete; marked stale");
                }
                let state = reported_state(row.state, &status);
                if state != row.state || status.tier != row.tier || !stale.is_empty() {
                    commands.push(Command::VolumeReported {
                        volume_id: volume_id.0,
                        state: VolumeState::try_from(state).unwrap_or_default(),
                        tier: Tier::try_from(status.tier).unwrap_or_default(),
                        stale,
                    });
                }
                let mut status = status;
                status.failed_replicas.clear();
                row.status = Some(status);
            }
            // A heartbeat taken before a volume was created here may be
            // answered after its registration: it does not make the new copy
            // missing (which would mark the volume degraded, refusing writes
            // until the next pulse). Later heartbeats do.
            let now = unix_now();
            if let Some(previous) = inner.reported.get(&server_id) {
                for (id, status) in previous {
                    let just_created = inner.state.volumes.get(id).is_some_and(|e| {
                        e.replicas.contains(&server_id)
                            && now.saturating_sub(e.created_at) <= JUST_CREATED_SECS
                    });
                    if just_created && !reported.contains_key(id) {
                        reported.insert(*id, status.clone());
                    }
                }
            }
            inner.reported.insert(server_id.clone(), reported);
            if request.erasure_reported {
                Self::record_shards(inner, &server_id, request.erasure_shards, now);
            }
            inner.suspects.remove(&server_id);
        }
        for command in commands {
            self.propose(command).await?;
        }
        let inner = &*self.inner.lock();
        Ok(inner
            .state
            .volumes
            .values()
            .filter(|e| e.replicas.contains(&server_id))
            .map(|e| {
                let (follow_regions, follow_server) = self.follow_for(inner, e, &server_id);
                VolumeReplicas {
                    volume_id: e.id,
                    locations: e
                        .replicas
                        .iter()
                        .filter_map(|id| inner.state.servers.get(id)?.location.clone())
                        .collect(),
                    // Also while a copy moves (to spread them over more zones):
                    // the volume takes no writes until the new copy has it all.
                    degraded: self.volume_health(inner, e) != VolumeHealth::Ok
                        || Self::moving(inner, e.volume_id()),
                    sealed: e.state != VolumeState::Writable as i32,
                    follow_regions,
                    follow_server,
                }
            })
            .collect())
    }
}

impl Cluster {
    /// Every erasure-coded volume `server_id` holds a shard of, with the
    /// holder of each shard (told in its heartbeat's answer: any holder
    /// serves any needle, reading the other shards from their holders).
    pub fn erasure_for(&self, server_id: &str) -> Vec<hayloft_proto::ErasureHolders> {
        Self::erasure_held_by(&self.inner.lock(), server_id)
    }
}

/// A volume's state after its server's report: moving, cold or restoring as
/// reported; sealed once it is sealed (a writable volume, or one back from a
/// move); otherwise as it was.
pub(super) fn reported_state(current: i32, status: &VolumeStatus) -> i32 {
    match VolumeState::try_from(status.state).unwrap_or_default() {
        reported @ (VolumeState::Moving | VolumeState::Cold | VolumeState::Restoring) => {
            reported as i32
        }
        _ if status.sealed => VolumeState::Sealed as i32,
        _ => current,
    }
}
