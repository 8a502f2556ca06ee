//! Regions (ARCHITECTURE.md, "Shipping between regions"): which regions
//! keep copies of a volume, which copy here follows the other regions'
//! logs of it, and the copies this region keeps of other regions' volumes.

use super::*;

impl Cluster {
    /// Every region keeping copies of `row`, its creator first, or none if
    /// it stays in this region: an adopted volume's recorded regions; for
    /// this region's own, this region and its collection's `replicate_to`.
    pub(super) fn volume_regions(&self, row: &VolumeRow) -> Vec<String> {
        if !row.regions.is_empty() {
            return row.regions.clone();
        }
        if row.volume_id().region() != self.regions.local.number || row.erasure.is_some() {
            return Vec::new();
        }
        let targets = self.config.replicate_to_for(&row.collection);
        if targets.is_empty() {
            return Vec::new();
        }
        std::iter::once(self.regions.local.name.clone())
            .chain(targets.iter().cloned())
            .collect()
    }

    /// The copy of `row` that follows the other regions' logs: the first
    /// in placement order on a live server and not stale.
    fn follower<'a>(&self, inner: &'a Inner, row: &'a VolumeRow) -> Option<&'a str> {
        row.replicas
            .iter()
            .find(|id| {
                !row.stale.contains(id)
                    && inner
                        .state
                        .servers
                        .get(*id)
                        .is_some_and(|server| self.alive(server))
            })
            .map(String::as_str)
    }

    /// What the copy of `row` on `server_id` follows: the other regions
    /// (the follower), or the follower's copy (the others); nothing for a
    /// volume that stays in this region.
    pub(super) fn follow_for(
        &self,
        inner: &Inner,
        row: &VolumeRow,
        server_id: &str,
    ) -> (Vec<String>, Option<ServerLocation>) {
        let regions = self.volume_regions(row);
        if regions.is_empty() {
            return (Vec::new(), None);
        }
        match self.follower(inner, row) {
            Some(follower) if follower == server_id => (
                regions
                    .into_iter()
                    .filter(|r| *r != self.regions.local.name)
                    .collect(),
                None,
            ),
            Some(follower) => (
                Vec::new(),
                inner
                    .state
                    .servers
                    .get(follower)
                    .and_then(|s| s.location.clone()),
            ),
            None => (Vec::new(), None),
        }
    }

    /// How far this region's copies are behind each other region, summed
    /// over the live servers' last reports.
    pub fn region_lags(&self) -> HashMap<String, hayloft_proto::RegionLag> {
        let inner = self.inner.lock();
        let mut by: HashMap<String, hayloft_proto::RegionLag> = HashMap::new();
        for (server, lags) in &inner.region_lags {
            if !inner
                .state
                .servers
                .get(server)
                .is_some_and(|s| self.alive(s))
            {
                continue;
            }
            for lag in lags {
                let entry =
                    by.entry(lag.region.clone())
                        .or_insert_with(|| hayloft_proto::RegionLag {
                            region: lag.region.clone(),
                            ..Default::default()
                        });
                entry.entries += lag.entries;
                entry.seconds = entry.seconds.max(lag.seconds);
                entry.shipped_bytes += lag.shipped_bytes;
            }
        }
        by
    }

    /// Adds what `server` fetched from each other region since its last
    /// heartbeat to the cumulative count (`CapacitySample.shipped_bytes`):
    /// a counter that went back (the server restarted) counts from 0; a
    /// server's first report since this node leads only sets its mark.
    pub(super) fn count_shipped(
        inner: &mut Inner,
        server: &str,
        lags: &[hayloft_proto::RegionLag],
    ) {
        for lag in lags {
            let key = (server.to_owned(), lag.region.clone());
            let Some(last) = inner.shipped_seen.insert(key, lag.shipped_bytes) else {
                continue;
            };
            let delta = if lag.shipped_bytes >= last {
                lag.shipped_bytes - last
            } else {
                lag.shipped_bytes
            };
            if let Some(shipped) = inner.shipped.as_mut() {
                *shipped.entry(lag.region.clone()).or_default() += delta;
            } else {
                // Not loaded from the last sample yet: keep the mark where
                // it was, so the bytes are counted once it is.
                inner
                    .shipped_seen
                    .insert((server.to_owned(), lag.region.clone()), last);
            }
        }
    }

    /// The cumulative bytes fetched from each other region, taken from the
    /// last capacity sample the first time since this node leads.
    pub(super) fn shipped_bytes(&self) -> HashMap<String, u64> {
        if let Some(shipped) = &self.inner.lock().shipped {
            return shipped.clone();
        }
        // Read without the lock; a heartbeat meanwhile keeps its mark.
        let last = self
            .db
            .samples(unix_now().saturating_sub(8 * 86_400))
            .ok()
            .and_then(|samples| samples.into_iter().last())
            .map(|sample| sample.shipped_bytes.into_iter().collect())
            .unwrap_or_default();
        self.inner.lock().shipped.get_or_insert(last).clone()
    }

    /// This region's volumes that `region` keeps copies of, with their
    /// collections and regions, for its `AdoptVolumes`: each until that
    /// region has answered for it once since this node leads.
    pub fn to_adopt(&self, region: &str) -> Vec<hayloft_proto::AdoptVolume> {
        let inner = self.inner.lock();
        inner
            .state
            .volumes
            .values()
            .filter(|row| row.regions.is_empty())
            .filter(|row| {
                !inner
                    .adopted
                    .contains(&(row.volume_id(), region.to_owned()))
            })
            .filter_map(|row| {
                let regions = self.volume_regions(row);
                regions
                    .iter()
                    .any(|r| r == region)
                    .then(|| hayloft_proto::AdoptVolume {
                        volume_id: row.id,
                        collection: row.collection.clone(),
                        regions,
                    })
            })
            .collect()
    }

    /// `region` answered that it keeps copies of `volumes`.
    pub fn adopted_by(&self, region: &str, volumes: impl IntoIterator<Item = u32>) {
        let mut inner = self.inner.lock();
        for volume in volumes {
            inner.adopted.insert((VolumeId(volume), region.to_owned()));
        }
    }

    /// The copies of `volume` as a heartbeat answer names them, if it is
    /// known here.
    pub fn replicas_of(&self, volume: VolumeId) -> Option<VolumeReplicas> {
        let inner = self.inner.lock();
        let row = inner.state.volumes.get(&volume)?;
        Some(VolumeReplicas {
            volume_id: row.id,
            locations: row
                .replicas
                .iter()
                .filter_map(|id| inner.state.servers.get(id)?.location.clone())
                .collect(),
            sealed: true,
            ..VolumeReplicas::default()
        })
    }

    /// Another region's volume is being adopted: its copies' reports are
    /// left alone until it is registered (as for a new volume), or a
    /// heartbeat sent in between would record it as an unknown volume,
    /// without its regions.
    pub fn adopting(&self, volume: VolumeId) {
        self.inner.lock().creating.insert(volume);
    }

    /// Adopting `volume` failed (its copies are deleted again): `unreachable`
    /// servers are left out of placement until they send a heartbeat.
    /// Unlike an abandoned new volume, its reports are taken again: it is
    /// asked for again next pulse.
    pub fn adoption_failed(&self, volume: VolumeId, unreachable: &[String]) {
        let mut inner = self.inner.lock();
        inner.creating.remove(&volume);
        inner.suspects.extend(unreachable.iter().cloned());
    }

    /// Records copies of another region's volume just created on
    /// `servers`: sealed (this region hands out none of its ids), with the
    /// regions that keep it.
    pub async fn register_adopted(
        &self,
        adopt: &hayloft_proto::AdoptVolume,
        servers: &[String],
    ) -> Result<()> {
        let row = VolumeRow {
            id: adopt.volume_id,
            collection: adopt.collection.clone(),
            tier: Tier::Hot as i32,
            state: VolumeState::Sealed as i32,
            server_id: servers.first().cloned().unwrap_or_default(),
            needle_high_water: MAX_SEQ + 1,
            created_at: unix_now(),
            status: None,
            replicas: servers.to_vec(),
            replication: servers.len() as u32,
            stale: Vec::new(),
            erasure: None,
            regions: adopt.regions.clone(),
        };
        self.propose(Command::CreateVolume {
            row: row.encode_to_vec(),
        })
        .await?;
        let mut inner = self.inner.lock();
        inner.creating.remove(&row.volume_id());
        for server in servers {
            inner.reported.entry(server.clone()).or_default().insert(
                row.volume_id(),
                VolumeStatus {
                    volume_id: row.id,
                    collection: row.collection.clone(),
                    tier: Tier::Hot as i32,
                    ..VolumeStatus::default()
                },
            );
        }
        Ok(())
    }
}
