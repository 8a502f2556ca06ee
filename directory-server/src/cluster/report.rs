//! What the directory reports: status, capacity history, gauges.

use super::*;

/// Bytes `row` takes on disk and in the object store, and the bytes of its
/// data file: an erasure-coded volume's shard bodies (copies not yet removed
/// left out: they go in moments) and the encoded file's length; a cold
/// volume's one object; a local volume's copies (each as its server last
/// reported it; the fullest is the logical size).
fn footprint(inner: &Inner, row: &VolumeRow) -> (u64, u64) {
    if let Some(layout) = &row.erasure {
        return (super::stored_bytes(layout), layout.data_len);
    }
    let recorded = row.status.as_ref().map_or(0, |s| s.file_bytes);
    if row.tier == Tier::Cold as i32
        || row
            .status
            .as_ref()
            .is_some_and(|s| s.tier == Tier::Cold as i32)
    {
        return (recorded, recorded);
    }
    let copies: Vec<u64> = row
        .replicas
        .iter()
        .map(|id| {
            inner
                .reported
                .get(id)
                .and_then(|v| v.get(&row.volume_id()))
                .map_or(recorded, |s| s.file_bytes)
        })
        .collect();
    (
        copies.iter().sum(),
        copies.iter().copied().max().unwrap_or(recorded),
    )
}

impl Cluster {
    /// Everything, for operators.
    pub fn status(&self) -> StatusResponse {
        let inner = self.inner.lock();
        let mut servers: Vec<ServerStatus> = inner
            .state
            .servers
            .values()
            .map(|s| ServerStatus {
                location: s.location.clone(),
                alive: self.alive(s),
                last_heartbeat: s.last_heartbeat,
                free_hot_bytes: s.free_hot_bytes,
                free_warm_bytes: s.free_warm_bytes,
                keyring_problem: s.keyring_problem.clone(),
                // Filled in by the service (it keeps them from heartbeats).
                workers: Vec::new(),
            })
            .collect();
        servers.sort_by(|a, b| {
            let id = |s: &ServerStatus| s.location.as_ref().map(|l| l.server_id.clone());
            id(a).cmp(&id(b))
        });
        let volumes: Vec<VolumeRecord> = inner
            .state
            .volumes
            .values()
            .map(|e| (e, inner.state.repair_jobs.get(&e.volume_id())))
            .map(|(e, job)| VolumeRecord {
                status: Some(e.status.clone().unwrap_or_else(|| VolumeStatus {
                    volume_id: e.id,
                    collection: e.collection.clone(),
                    tier: e.tier,
                    ..VolumeStatus::default()
                })),
                state: e.state,
                server_id: e.server_id.clone(),
                replicas: self.replicas(&inner, e),
                health: self.volume_health(&inner, e) as i32,
                replication: e.replication,
                repairing: job.is_some(),
                // Filled in by the service (from heartbeats).
                repair_progress: 0.0,
                repair_target: job.map(|j| j.target.clone()).unwrap_or_default(),
                repair_started_at: job.map_or(0, |j| j.started_at),
                erasure: Self::erasure_holders(&inner, e),
                repair_kind: job.map(|j| j.kind.clone()).unwrap_or_default(),
                repair_shard: job.map_or(0, |j| j.shard),
                stored_bytes: footprint(&inner, e).0,
                logical_bytes: footprint(&inner, e).1,
                deleted_bytes: Self::erasure_deleted_bytes(&inner, e),
                regions: self.volume_regions(e),
            })
            .collect();
        let stored_bytes = volumes.iter().map(|v| v.stored_bytes).sum();
        let logical_bytes = volumes.iter().map(|v| v.logical_bytes).sum();
        // A problem older than a few pulses was about servers that may have
        // come since; the next creation attempt says again if not.
        let recent = unix_now().saturating_sub(self.config.dead_after.as_secs() * 4);
        let mut problems: Vec<String> = inner
            .problems
            .values()
            .filter(|(at, _)| *at >= recent)
            .map(|(_, reason)| reason.clone())
            .collect();
        problems.extend(Self::shard_problems(&inner));
        // Servers whose key ring did not reload: a key removed from the
        // file (a revocation) still verifies there.
        for server in servers
            .iter()
            .filter(|s| s.alive && !s.keyring_problem.is_empty())
        {
            let id = server
                .location
                .as_ref()
                .map_or("?", |l| l.server_id.as_str());
            problems.push(stale_ring_problem(
                &format!("server {id}"),
                &server.keyring_problem,
            ));
        }
        // Copies that refuse writes against their will (an fsync failed),
        // or for now (their disk is at its free-space reserve).
        for volume in &volumes {
            for replica in &volume.replicas {
                if let (Some(status), Some(location)) = (&replica.status, &replica.location) {
                    for why in [&status.fault, &status.paused] {
                        if !why.is_empty() {
                            problems.push(format!(
                                "volume {} on {}: {why}",
                                status.volume_id, location.server_id
                            ));
                        }
                    }
                }
            }
        }
        let (mut erasure_stored_bytes, mut erasure_logical_bytes) = (0, 0);
        for layout in inner
            .state
            .volumes
            .values()
            .filter_map(|e| e.erasure.as_ref())
        {
            erasure_stored_bytes += super::stored_bytes(layout);
            erasure_logical_bytes += layout.data_len;
        }
        StatusResponse {
            stored_bytes,
            logical_bytes,
            erasure_stored_bytes,
            erasure_logical_bytes,
            servers,
            volumes,
            problems,
            replication: self.config.replication.max(1) as u32,
            // Filled in by the service (it knows the planner).
            below_spread: 0,
            // Filled in by the service (it runs them).
            workers: Vec::new(),
        }
    }

    /// Bytes per tier (and per storage class in the cold tier), free
    /// bytes per local tier, and bytes fetched from each other region so
    /// far, now.
    pub fn capacity_sample(&self) -> hayloft_proto::CapacitySample {
        let shipped_bytes = self.shipped_bytes().into_iter().collect();
        let inner = self.inner.lock();
        let mut sample = hayloft_proto::CapacitySample {
            at: unix_now(),
            shipped_bytes,
            ..Default::default()
        };
        for tier in ["hot", "warm"] {
            sample.used_bytes.insert(tier.into(), 0);
        }
        for entry in inner.state.volumes.values() {
            if let Some(layout) = &entry.erasure {
                // Shards live on the warm tier (copies not yet removed
                // are left out: they go in moments).
                *sample.used_bytes.entry("warm".into()).or_default() += super::stored_bytes(layout);
                continue;
            }
            let Some(status) = &entry.status else {
                continue;
            };
            // Local tiers hold one file per copy; a cold volume is one object.
            let copies = entry.replicas.len().max(1) as u64;
            let (key, bytes) = match Tier::try_from(status.tier) {
                Ok(Tier::Cold) if status.storage_class.is_empty() => {
                    ("STANDARD".to_owned(), status.file_bytes)
                }
                Ok(Tier::Cold) => (status.storage_class.clone(), status.file_bytes),
                Ok(Tier::Warm) => ("warm".to_owned(), status.file_bytes * copies),
                _ => ("hot".to_owned(), status.file_bytes * copies),
            };
            *sample.used_bytes.entry(key).or_default() += bytes;
        }
        for server in inner.state.servers.values().filter(|s| self.alive(s)) {
            *sample.free_bytes.entry("hot".into()).or_default() += server.free_hot_bytes;
            *sample.free_bytes.entry("warm".into()).or_default() += server.free_warm_bytes;
        }
        sample
    }

    /// Records a capacity sample in the history, keeping `retention` of it.
    pub async fn record_capacity(&self, retention: std::time::Duration) -> Result<()> {
        let sample = self.capacity_sample();
        self.propose(Command::RecordCapacity {
            keep_since: sample.at.saturating_sub(retention.as_secs()),
            sample: sample.encode_to_vec(),
        })
        .await
        .map(drop)
    }

    /// The history since `since`, with a sample of now at the end.
    pub fn capacity(&self, since: u64) -> Result<Vec<hayloft_proto::CapacitySample>> {
        let mut samples = self.db.samples(since)?;
        samples.push(self.capacity_sample());
        Ok(samples)
    }

    /// Volumes in this node's map.
    pub fn volume_count(&self) -> usize {
        self.inner.lock().state.volumes.len()
    }

    /// Updates the cluster gauges: `hayloft_directory_servers{alive}`,
    /// `hayloft_directory_volumes{tier,state}`, `hayloft_directory_bytes{tier}`.
    pub fn update_gauges(&self) {
        let inner = self.inner.lock();
        let alive = inner
            .state
            .servers
            .values()
            .filter(|s| self.alive(s))
            .count();
        metrics::gauge!("hayloft_directory_servers", "alive" => "true").set(alive as f64);
        metrics::gauge!("hayloft_directory_servers", "alive" => "false")
            .set((inner.state.servers.len() - alive) as f64);
        let mut volumes: HashMap<(i32, i32), u64> = HashMap::new();
        let mut bytes: HashMap<i32, u64> = HashMap::new();
        let mut degraded = 0u64;
        for entry in inner.state.volumes.values() {
            if self.volume_health(&inner, entry) != VolumeHealth::Ok {
                degraded += 1;
            }
            *volumes.entry((entry.tier, entry.state)).or_default() += 1;
            *bytes.entry(entry.tier).or_default() +=
                entry.status.as_ref().map_or(0, |s| s.file_bytes);
        }
        metrics::gauge!("hayloft_directory_volumes_by_health", "health" => "ok")
            .set((inner.state.volumes.len() as u64 - degraded) as f64);
        metrics::gauge!("hayloft_directory_volumes_by_health", "health" => "degraded")
            .set(degraded as f64);
        for tier in [Tier::Hot, Tier::Warm, Tier::Cold] {
            let name = tier
                .as_str_name()
                .trim_start_matches("TIER_")
                .to_ascii_lowercase();
            for state in [
                VolumeState::Writable,
                VolumeState::Sealed,
                VolumeState::Moving,
                VolumeState::Cold,
                VolumeState::Restoring,
            ] {
                let state_name = state
                    .as_str_name()
                    .trim_start_matches("VOLUME_STATE_")
                    .to_ascii_lowercase();
                let count = volumes
                    .get(&(tier as i32, state as i32))
                    .copied()
                    .unwrap_or(0);
                metrics::gauge!("hayloft_directory_volumes", "tier" => name.clone(), "state" => state_name)
                    .set(count as f64);
            }
            metrics::gauge!("hayloft_directory_bytes", "tier" => name)
                .set(bytes.get(&(tier as i32)).copied().unwrap_or(0) as f64);
        }
    }
}
