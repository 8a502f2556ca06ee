//! Handing out needle ids: which volume takes a write, and creating new
//! volumes where placement says.

use super::*;

impl Cluster {
    pub(super) fn writable(
        &self,
        inner: &Inner,
        row: &VolumeRow,
        collection: &str,
        count: u64,
    ) -> bool {
        row.collection == collection
            && row.state == VolumeState::Writable as i32
            && (inner.blocks.get(&row.volume_id()).map_or(0, |b| b.end - b.start) >= count
                || row.needle_high_water.max(1) + count <= MAX_SEQ + 1)
            && self.volume_health(inner, row) == VolumeHealth::Ok
            && !Self::moving(inner, row.volume_id())
            && row.status.as_ref().is_none_or(|s| {
                !s.sealed
                    && (s.file_bytes as f64) < s.max_bytes as f64 * self.config.volume_full_ratio
            })
            // No copy on a disk at its free-space reserve.
            && !row.replicas.iter().any(|id| {
                inner
                    .reported
                    .get(id)
                    .and_then(|v| v.get(&row.volume_id()))
                    .is_some_and(|s| !s.paused.is_empty())
            })
    }

    /// Number of writable volumes in a collection.
    pub fn writable_count(&self, collection: &str) -> usize {
        let inner = self.inner.lock();
        inner
            .state
            .volumes
            .values()
            .filter(|e| self.writable(&inner, e, collection, 1))
            .count()
    }

    /// Hands out `count` blob ids in a writable volume of `collection`, or
    /// `None` if there is no such volume. Ids come from a block this node
    /// reserved through the Raft log; a new block is committed before any id
    /// in it is handed out.
    pub async fn assign(
        &self,
        collection: &str,
        count: u32,
    ) -> Result<Option<(Vec<AssignedBlob>, Vec<ServerLocation>)>> {
        let count = u64::from(count);
        for _ in 0..3 {
            let (volume_id, locations) = {
                let mut inner = self.inner.lock();
                let Some((volume_id, locations)) = self.pick_volume(&mut inner, collection, count)
                else {
                    return Ok(None);
                };
                if !inner.state.volumes.contains_key(&volume_id) {
                    return Err(Error::Corrupt("volume vanished"));
                }
                let block = inner.blocks.entry(volume_id).or_default();
                if block.end - block.start >= count {
                    let first = block.start;
                    block.start += count;
                    return Ok(Some((blobs(volume_id, first, count), locations)));
                }
                (volume_id, locations)
            };
            let reserved = self
                .propose(Command::ReserveNeedles {
                    volume_id: volume_id.0,
                    count: count + NEEDLE_BLOCK,
                    at_least: count,
                })
                .await?;
            match reserved {
                Applied::Needles { first, end } => {
                    let mut inner = self.inner.lock();
                    if inner.state.volumes.contains_key(&volume_id) {
                        // Keep whichever block has more left (the other's
                        // ids are never handed out).
                        let rest = first + count..end;
                        let block = inner.blocks.entry(volume_id).or_default();
                        if rest.end - rest.start > block.end - block.start {
                            *block = rest;
                        }
                    }
                    return Ok(Some((blobs(volume_id, first, count), locations)));
                }
                Applied::Refused(reason) => {
                    tracing::debug!(volume = volume_id.0, %reason, "needle reservation refused");
                }
                other => return Err(Error::UnexpectedAnswer(format!("{other:?}"))),
            }
        }
        Ok(None)
    }

    /// Picks a writable volume of `collection` with room for `count` ids,
    /// and every copy's location, the primary of this write first:
    /// primaries take turns, so forwarding work is shared by the copies.
    pub(super) fn pick_volume(
        &self,
        inner: &mut Inner,
        collection: &str,
        count: u64,
    ) -> Option<(VolumeId, Vec<ServerLocation>)> {
        let candidates: Vec<VolumeId> = inner
            .state
            .volumes
            .values()
            .filter(|e| self.writable(inner, e, collection, count))
            .map(|e| e.volume_id())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        inner.round_robin = inner.round_robin.wrapping_add(1);
        let volume_id = candidates[inner.round_robin % candidates.len()];
        let mut locations: Vec<ServerLocation> = inner.state.volumes[&volume_id]
            .replicas
            .iter()
            .filter_map(|id| inner.state.servers.get(id)?.location.clone())
            .collect();
        if !locations.is_empty() {
            let turn = inner.round_robin / candidates.len() % locations.len();
            locations.rotate_left(turn);
        }
        Some((volume_id, locations))
    }

    /// Copies a new volume of `collection` gets.
    pub fn replication_for(&self, collection: &str) -> usize {
        self.config.replication_for(collection)
    }

    /// The command that takes this region's next volume id. Region 0
    /// proposes the command it always did (a group of nodes not yet
    /// upgraded applies it the same: the ids it allocates are region 0's
    /// until `0x00FF_FFFF`, refused here past that); the others propose
    /// one that takes ids from their own range (ARCHITECTURE.md, "Regions").
    fn allocate_volume_id(&self) -> Result<Command> {
        let number = self.regions.local.number;
        if number != hayloft_storage::RegionNumber::DEFAULT {
            return Ok(Command::AllocateRegionVolumeId { region: number.0 });
        }
        let next = self.inner.lock().state.next_volume_id.0;
        match number.allocate(next) {
            Some(_) => Ok(Command::AllocateVolumeId),
            None => Err(Error::CannotCreate(format!(
                "volume ids of region {:?} (number 0) are exhausted",
                self.regions.local.name
            ))),
        }
    }

    /// Reserves a volume id and places its copies: distinct live servers,
    /// spread over zones, then racks, then the most free space on `tier`.
    /// With too few live servers nothing is reserved and the error says why
    /// (also shown by `status` until a creation succeeds).
    pub async fn plan_new_volume(&self, tier: Tier, collection: &str) -> Result<NewVolume> {
        let servers = self.place_new_volume(tier, collection)?;
        let volume_id = match self.propose(self.allocate_volume_id()?).await? {
            Applied::VolumeId(id) => id,
            Applied::Refused(reason) => return Err(Error::CannotCreate(reason)),
            other => return Err(Error::UnexpectedAnswer(format!("{other:?}"))),
        };
        self.inner.lock().creating.insert(volume_id);
        Ok(NewVolume { volume_id, servers })
    }

    pub(crate) fn place_new_volume(
        &self,
        tier: Tier,
        collection: &str,
    ) -> Result<Vec<ServerLocation>> {
        let copies = self.replication_for(collection);
        let mut inner = self.inner.lock();
        let candidates = self.candidates(&inner, tier);
        let chosen = match placement::place(
            &candidates,
            &[],
            copies,
            u64::from(inner.state.next_volume_id),
        ) {
            Ok(chosen) => chosen,
            Err(e) => {
                let reason = if inner.state.servers.values().any(|s| self.alive(s)) {
                    format!("cannot create a volume of collection {collection:?}: {e}")
                } else {
                    "no volume server is alive".to_owned()
                };
                inner
                    .problems
                    .insert(collection.to_owned(), (unix_now(), reason.clone()));
                return Err(Error::CannotCreate(reason));
            }
        };
        Ok(chosen
            .iter()
            .filter_map(|id| inner.state.servers.get(id)?.location.clone())
            .collect())
    }

    /// Live servers as placement candidates for a volume on `tier`.
    pub(super) fn candidates(&self, inner: &Inner, tier: Tier) -> Vec<Candidate> {
        let mut copies: HashMap<&str, u64> = HashMap::new();
        for entry in inner.state.volumes.values() {
            let shards = entry.erasure.iter().flat_map(|l| &l.holders);
            for id in entry.replicas.iter().chain(shards) {
                *copies.entry(id.as_str()).or_default() += 1;
            }
        }
        inner
            .state
            .servers
            .values()
            .filter(|s| self.alive(s))
            .filter_map(|s| {
                let location = s.location.as_ref()?;
                if inner.suspects.contains(&location.server_id) {
                    return None;
                }
                let free_bytes = match tier {
                    Tier::Warm => s.free_warm_bytes,
                    _ => s.free_hot_bytes,
                };
                // No room above its free-space reserve: no new copies.
                if free_bytes == 0 {
                    return None;
                }
                Some(Candidate {
                    server_id: location.server_id.clone(),
                    zone: site(&location.zone),
                    rack: site(&location.rack),
                    free_bytes,
                    volumes: copies
                        .get(location.server_id.as_str())
                        .copied()
                        .unwrap_or(0),
                })
            })
            .collect()
    }

    /// Records a volume whose copies have just been created on `servers`
    /// (taken as present for [`JUST_CREATED_SECS`] even by a heartbeat that
    /// leaves them out: it may have been sent before the creation).
    pub async fn register_volume(
        &self,
        volume_id: VolumeId,
        collection: &str,
        tier: Tier,
        servers: &[String],
    ) -> Result<()> {
        let row = VolumeRow {
            id: volume_id.0,
            collection: collection.to_owned(),
            tier: tier as i32,
            state: VolumeState::Writable as i32,
            server_id: servers.first().cloned().unwrap_or_default(),
            needle_high_water: 1,
            created_at: unix_now(),
            status: None,
            replicas: servers.to_vec(),
            replication: servers.len() as u32,
            stale: Vec::new(),
            erasure: None,
            regions: Vec::new(),
        };
        self.propose(Command::CreateVolume {
            row: row.encode_to_vec(),
        })
        .await?;
        let mut inner = self.inner.lock();
        inner.creating.remove(&volume_id);
        inner.problems.remove(collection);
        for server in servers {
            // Created a moment ago: present until a heartbeat says otherwise.
            inner.reported.entry(server.clone()).or_default().insert(
                volume_id,
                VolumeStatus {
                    volume_id: volume_id.0,
                    collection: collection.to_owned(),
                    tier: tier as i32,
                    ..VolumeStatus::default()
                },
            );
        }
        Ok(())
    }

    /// Forgets a volume id whose creation failed (the id is never reused);
    /// `unreachable` servers are left out of placement until they send a
    /// heartbeat again.
    pub fn abandon_volume(&self, volume_id: VolumeId, unreachable: &[String]) {
        let mut inner = self.inner.lock();
        inner.creating.remove(&volume_id);
        inner.abandoned.insert(volume_id);
        inner.suspects.extend(unreachable.iter().cloned());
    }

    /// Live servers that could take a copy of a volume on `tier`.
    pub fn placement_candidates(&self, tier: Tier) -> Vec<Candidate> {
        let inner = self.inner.lock();
        self.candidates(&inner, tier)
    }

    /// The collection of a volume, if the directory knows it.
    pub fn volume_collection(&self, volume_id: VolumeId) -> Option<String> {
        let inner = self.inner.lock();
        inner
            .state
            .volumes
            .get(&volume_id)
            .map(|entry| entry.collection.clone())
    }

    /// Where each volume lives, for volume ids and blob/needle ids.
    pub fn lookup(
        &self,
        volume_ids: &[VolumeId],
        blob_ids: &[String],
    ) -> Result<Vec<VolumeLocation>> {
        let mut wanted: Vec<VolumeId> = volume_ids.to_vec();
        for id in blob_ids {
            let blob = match id.parse::<BlobId>() {
                Ok(blob) => blob.volume(),
                Err(_) => u64::from_str_radix(id, 16)
                    .map(|needle| volume_of(NeedleId(needle)))
                    .map_err(|_| Error::MalformedId(id.clone()))?,
            };
            wanted.push(blob);
        }
        wanted.sort_unstable();
        wanted.dedup();
        let inner = self.inner.lock();
        Ok(wanted
            .into_iter()
            .filter_map(|id| inner.state.volumes.get(&id))
            .map(|entry| {
                if let Some(erasure) = Self::erasure_holders(&inner, entry) {
                    // Any holder serves any needle: the live ones are
                    // where to read.
                    let replicas = self.holder_replicas(&inner, entry);
                    return VolumeLocation {
                        volume_id: entry.id,
                        tier: entry.tier,
                        state: entry.state,
                        locations: Self::read_locations(&replicas),
                        health: self.volume_health(&inner, entry) as i32,
                        replicas,
                        collection: Some(entry.collection.clone()),
                        erasure: Some(erasure),
                    };
                }
                let replicas = self.replicas(&inner, entry);
                VolumeLocation {
                    volume_id: entry.id,
                    tier: entry.tier,
                    state: entry.state,
                    locations: Self::read_locations(&replicas),
                    health: self.volume_health(&inner, entry) as i32,
                    replicas,
                    collection: Some(entry.collection.clone()),
                    erasure: None,
                }
            })
            .collect())
    }
}

/// `count` blob ids from sequence `first` of a volume, with fresh cookies.
pub(super) fn blobs(volume_id: VolumeId, first: u64, count: u64) -> Vec<AssignedBlob> {
    let mut rng = rand::rng();
    (first..first + count)
        .map(|seq| {
            let needle = needle_in(volume_id, seq as u32);
            let cookie = Cookie(rng.random());
            AssignedBlob {
                blob_id: BlobId { needle, cookie }.to_string(),
                volume_id: volume_id.0,
                needle_id: needle.0,
                cookie: cookie.0,
                grant: String::new(),
            }
        })
        .collect()
}
