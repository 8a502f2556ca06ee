//! The directory's in-memory view of the cluster, backed by [`Db`].
//!
//! One `parking_lot::Mutex` guards it: every operation is a few map lookups
//! plus, rarely, one RocksDB write (a needle high-water mark every
//! [`NEEDLE_BLOCK`] ids, a new volume). No `.await` happens while it is held.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use hayloft_proto::{
    AssignedBlob, HeartbeatRequest, Replica, ReplicaHealth, ServerLocation, ServerStatus,
    StatusResponse, Tier, VolumeHealth, VolumeLocation, VolumeRecord, VolumeReplicas, VolumeState,
    VolumeStatus,
};
use hayloft_storage::types::needle_in;
use hayloft_storage::{BlobId, Cookie, VolumeId};
use parking_lot::Mutex;
use rand::Rng;

use crate::DirectoryConfig;
use crate::db::{Db, ServerRow, VolumeRow};
use crate::error::{Error, Result};
use crate::placement::{self, Candidate};

/// Needle ids are reserved in the database this many at a time, so
/// allocation costs one synced write per block rather than per upload.
pub const NEEDLE_BLOCK: u64 = 100_000;

/// Largest sequence number in a volume (needle ids are `volume << 32 | seq`).
const MAX_SEQ: u64 = u32::MAX as u64;

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct VolumeEntry {
    row: VolumeRow,
    /// Next sequence number to hand out (from `needle_high_water` at start).
    next_seq: u64,
}

struct Inner {
    servers: HashMap<String, ServerRow>,
    /// Soft state: the volumes each server reported in its last heartbeat
    /// (or was just asked to create). Rebuilt from heartbeats after a
    /// restart; until a server's first one, its copies count as present.
    reported: HashMap<String, HashMap<u32, VolumeStatus>>,
    /// Soft state: copies reported by servers outside their volume's replica
    /// set (left behind by a repair): removed once the volume is healthy.
    extras: HashSet<(u32, String)>,
    /// Soft state: volume ids whose creation failed (their copies are being
    /// deleted; a heartbeat that still reports one is not an adoption).
    abandoned: HashSet<u32>,
    /// Soft state: servers that could not be reached to create a volume,
    /// left out of placement until their next heartbeat.
    suspects: HashSet<String>,
    /// Soft state: why the last volume creation of a collection failed
    /// (Unix seconds, reason), cleared by the next success.
    problems: BTreeMap<String, (u64, String)>,
    /// Volume ids reserved by [`Cluster::plan_new_volume`] whose creation is
    /// in flight: heartbeats may report them before they are registered.
    creating: HashSet<u32>,
    volumes: BTreeMap<u32, VolumeEntry>,
    next_volume_id: u32,
    round_robin: usize,
}

/// A degraded volume as repair sees it.
#[derive(Debug, Clone)]
pub struct RepairView {
    /// The volume.
    pub volume_id: u32,
    /// Its collection.
    pub collection: String,
    /// Its tier.
    pub tier: Tier,
    /// Copies it should have.
    pub desired: usize,
    /// Every copy.
    pub replicas: Vec<RepairReplica>,
}

/// One copy of a degraded volume.
#[derive(Debug, Clone)]
pub struct RepairReplica {
    /// Where it is.
    pub location: ServerLocation,
    /// How it is.
    pub health: ReplicaHealth,
    /// Seconds since its server's last heartbeat.
    pub down_for: u64,
    /// Its tier and state as its server last reported them (unspecified
    /// before the first report).
    pub tier: Tier,
    /// Its state.
    pub state: VolumeState,
}

/// A zone or rack name as placement sees it ("" is "default").
pub(crate) fn site(name: &str) -> String {
    if name.is_empty() {
        "default".to_owned()
    } else {
        name.to_owned()
    }
}

/// The cluster map.
pub struct Cluster {
    db: Db,
    config: DirectoryConfig,
    inner: Mutex<Inner>,
}

/// A volume to create: its id, and the servers to create its copies on.
pub struct NewVolume {
    /// The id reserved for it.
    pub volume_id: u32,
    /// Where to create its copies, in placement order.
    pub servers: Vec<ServerLocation>,
}

impl Cluster {
    /// Loads the cluster from the database.
    pub fn load(db: Db, config: DirectoryConfig) -> Result<Cluster> {
        let snapshot = db.load()?;
        let volumes = snapshot
            .volumes
            .into_iter()
            .map(|mut row| {
                row.migrate();
                let entry = VolumeEntry {
                    next_seq: row.needle_high_water.max(1),
                    row,
                };
                (entry.row.id, entry)
            })
            .collect();
        let servers = snapshot
            .servers
            .into_iter()
            .filter_map(|row| Some((row.location.as_ref()?.server_id.clone(), row)))
            .collect();
        Ok(Cluster {
            db,
            config,
            inner: Mutex::new(Inner {
                servers,
                reported: HashMap::new(),
                extras: HashSet::new(),
                abandoned: HashSet::new(),
                suspects: HashSet::new(),
                problems: BTreeMap::new(),
                creating: HashSet::new(),
                volumes,
                next_volume_id: snapshot.next_volume_id.max(1),
                round_robin: 0,
            }),
        })
    }

    fn alive(&self, server: &ServerRow) -> bool {
        now_unix().saturating_sub(server.last_heartbeat) <= self.config.dead_after.as_secs()
    }

    fn writable(&self, inner: &Inner, entry: &VolumeEntry, collection: &str, count: u64) -> bool {
        let row = &entry.row;
        row.collection == collection
            && row.state == VolumeState::Writable as i32
            && entry.next_seq + count <= MAX_SEQ
            && self.volume_health(inner, row) == VolumeHealth::Ok
            && row.status.as_ref().is_none_or(|s| {
                !s.sealed
                    && (s.file_bytes as f64) < s.max_bytes as f64 * self.config.volume_full_ratio
            })
    }

    /// Number of writable volumes in a collection.
    pub fn writable_count(&self, collection: &str) -> usize {
        let inner = self.inner.lock();
        inner
            .volumes
            .values()
            .filter(|e| self.writable(&inner, e, collection, 1))
            .count()
    }

    /// Hands out `count` blob ids in a writable volume of `collection`, or
    /// `None` if there is no such volume.
    pub fn assign(
        &self,
        collection: &str,
        count: u32,
    ) -> Result<Option<(Vec<AssignedBlob>, Vec<ServerLocation>)>> {
        let count = u64::from(count);
        let mut inner = self.inner.lock();
        let candidates: Vec<u32> = inner
            .volumes
            .values()
            .filter(|e| self.writable(&inner, e, collection, count))
            .map(|e| e.row.id)
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        inner.round_robin = inner.round_robin.wrapping_add(1);
        let volume_id = candidates[inner.round_robin % candidates.len()];
        // Every copy, the primary of this write first: primaries take turns,
        // so forwarding work is shared by the copies.
        let mut locations: Vec<ServerLocation> = inner.volumes[&volume_id]
            .row
            .replicas
            .iter()
            .filter_map(|id| inner.servers.get(id)?.location.clone())
            .collect();
        if !locations.is_empty() {
            let turn = inner.round_robin / candidates.len() % locations.len();
            locations.rotate_left(turn);
        }
        let entry = inner
            .volumes
            .get_mut(&volume_id)
            .ok_or(Error::Corrupt("volume vanished"))?;
        let first = entry.next_seq;
        if first + count > entry.row.needle_high_water {
            // Persist the new mark before handing out any id below it: after
            // a crash, allocation resumes above every id ever handed out.
            let mut row = entry.row.clone();
            row.needle_high_water = (first + count + NEEDLE_BLOCK).min(MAX_SEQ + 1);
            self.db.put_volume(&row, true)?;
            entry.row = row;
        }
        entry.next_seq += count;
        let mut rng = rand::rng();
        let blobs = (first..first + count)
            .map(|seq| {
                let needle = needle_in(VolumeId(volume_id), seq as u32);
                let cookie = Cookie(rng.random());
                AssignedBlob {
                    blob_id: BlobId { needle, cookie }.to_string(),
                    volume_id,
                    needle_id: needle.0,
                    cookie: cookie.0,
                }
            })
            .collect();
        Ok(Some((blobs, locations)))
    }

    /// Copies a new volume of `collection` gets.
    pub fn replication_for(&self, collection: &str) -> usize {
        self.config.replication_for(collection)
    }

    /// Reserves a volume id and places its copies: distinct live servers,
    /// spread over zones, then racks, then the most free space on `tier`.
    /// With too few live servers nothing is reserved and the error says why
    /// (also shown by `status` until a creation succeeds).
    pub fn plan_new_volume(&self, tier: Tier, collection: &str) -> Result<NewVolume> {
        let copies = self.replication_for(collection);
        let mut inner = self.inner.lock();
        let candidates = self.candidates(&inner, tier);
        let chosen =
            match placement::place(&candidates, &[], copies, u64::from(inner.next_volume_id)) {
                Ok(chosen) => chosen,
                Err(e) => {
                    let reason = if inner.servers.values().any(|s| self.alive(s)) {
                        format!("cannot create a volume of collection {collection:?}: {e}")
                    } else {
                        "no volume server is alive".to_owned()
                    };
                    inner
                        .problems
                        .insert(collection.to_owned(), (now_unix(), reason.clone()));
                    return Err(Error::Unavailable(reason));
                }
            };
        let servers = chosen
            .iter()
            .filter_map(|id| inner.servers.get(id)?.location.clone())
            .collect();
        let volume_id = inner.next_volume_id;
        let next = volume_id
            .checked_add(1)
            .ok_or_else(|| Error::Unavailable("volume ids exhausted".into()))?;
        self.db.put_next_volume_id(next)?;
        inner.next_volume_id = next;
        inner.creating.insert(volume_id);
        Ok(NewVolume { volume_id, servers })
    }

    /// Live servers as placement candidates for a volume on `tier`.
    fn candidates(&self, inner: &Inner, tier: Tier) -> Vec<Candidate> {
        let mut copies: HashMap<&str, u64> = HashMap::new();
        for entry in inner.volumes.values() {
            for id in &entry.row.replicas {
                *copies.entry(id.as_str()).or_default() += 1;
            }
        }
        inner
            .servers
            .values()
            .filter(|s| self.alive(s))
            .filter_map(|s| {
                let location = s.location.as_ref()?;
                if inner.suspects.contains(&location.server_id) {
                    return None;
                }
                Some(Candidate {
                    server_id: location.server_id.clone(),
                    zone: site(&location.zone),
                    rack: site(&location.rack),
                    free_bytes: match tier {
                        Tier::Warm => s.free_warm_bytes,
                        _ => s.free_hot_bytes,
                    },
                    volumes: copies
                        .get(location.server_id.as_str())
                        .copied()
                        .unwrap_or(0),
                })
            })
            .collect()
    }

    /// Records a volume whose copies have just been created on `servers`.
    pub fn register_volume(
        &self,
        volume_id: u32,
        collection: &str,
        tier: Tier,
        servers: &[String],
    ) -> Result<()> {
        let row = VolumeRow {
            id: volume_id,
            collection: collection.to_owned(),
            tier: tier as i32,
            state: VolumeState::Writable as i32,
            server_id: servers.first().cloned().unwrap_or_default(),
            needle_high_water: 1,
            created_at: now_unix(),
            status: None,
            replicas: servers.to_vec(),
            replication: servers.len() as u32,
            stale: Vec::new(),
        };
        let mut inner = self.inner.lock();
        self.db.put_volume(&row, true)?;
        inner.creating.remove(&volume_id);
        inner.problems.remove(collection);
        for server in servers {
            // Created a moment ago: present until a heartbeat says otherwise.
            inner.reported.entry(server.clone()).or_default().insert(
                volume_id,
                VolumeStatus {
                    volume_id,
                    collection: collection.to_owned(),
                    tier: tier as i32,
                    ..VolumeStatus::default()
                },
            );
        }
        inner
            .volumes
            .insert(volume_id, VolumeEntry { row, next_seq: 1 });
        Ok(())
    }

    /// Forgets a volume id whose creation failed (the id is never reused);
    /// `unreachable` servers are left out of placement until they send a
    /// heartbeat again.
    pub fn abandon_volume(&self, volume_id: u32, unreachable: &[String]) {
        let mut inner = self.inner.lock();
        inner.creating.remove(&volume_id);
        inner.abandoned.insert(volume_id);
        inner.suspects.extend(unreachable.iter().cloned());
    }

    /// How one copy of `row` is doing.
    fn replica_health(&self, inner: &Inner, row: &VolumeRow, server_id: &str) -> ReplicaHealth {
        if !inner.servers.get(server_id).is_some_and(|s| self.alive(s)) {
            ReplicaHealth::Down
        } else if inner
            .reported
            .get(server_id)
            // No heartbeat since this directory started: the copy is taken
            // to be as it was (the next pulse says).
            .is_some_and(|volumes| !volumes.contains_key(&row.id))
        {
            ReplicaHealth::Missing
        } else if row.stale.iter().any(|s| s == server_id) {
            ReplicaHealth::Stale
        } else {
            ReplicaHealth::Ok
        }
    }

    /// Copies `row` should have.
    fn desired_copies(row: &VolumeRow) -> usize {
        row.replication.max(1) as usize
    }

    /// OK when every copy it should have is healthy.
    fn volume_health(&self, inner: &Inner, row: &VolumeRow) -> VolumeHealth {
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
    fn replicas(&self, inner: &Inner, row: &VolumeRow) -> Vec<Replica> {
        row.replicas
            .iter()
            .map(|id| Replica {
                location: Some(
                    inner
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
                    .and_then(|v| v.get(&row.id))
                    .map_or(0, |s| s.needles),
                status: inner.reported.get(id).and_then(|v| v.get(&row.id)).cloned(),
            })
            .collect()
    }

    /// Where to read `row` from: healthy copies; else stale ones and ones
    /// the last heartbeat left out (a stale copy may lack recent deletes, and
    /// a copy may be left out of one heartbeat in the middle of a tier move,
    /// so they are read only when nothing better is alive).
    fn read_locations(replicas: &[Replica]) -> Vec<ServerLocation> {
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

    /// Applies a heartbeat: the server is alive, at this address, with these
    /// volumes. Answers with the copies of each volume it holds.
    pub fn heartbeat(&self, request: HeartbeatRequest) -> Result<Vec<VolumeReplicas>> {
        let location = request
            .server
            .ok_or_else(|| Error::InvalidArgument("heartbeat without server".into()))?;
        if location.server_id.is_empty() {
            return Err(Error::InvalidArgument("heartbeat without server id".into()));
        }
        let server_id = location.server_id.clone();
        let server = ServerRow {
            location: Some(location.clone()),
            last_heartbeat: now_unix(),
            free_hot_bytes: request.free_hot_bytes,
            free_warm_bytes: request.free_warm_bytes,
        };
        let mut inner = self.inner.lock();
        let mut changed = Vec::new();
        let mut synced = false;
        let mut reported = HashMap::new();
        for status in request.volumes {
            if inner.creating.contains(&status.volume_id)
                || inner.abandoned.contains(&status.volume_id)
            {
                // Reported between its creation and its registration, or a
                // copy of a creation that failed (being deleted).
                continue;
            }
            reported.insert(status.volume_id, status.clone());
            let entry = inner.volumes.entry(status.volume_id).or_insert_with(|| {
                // A volume the directory has no record of (copied in by an
                // operator, or created before the database was lost). Which of
                // its needle ids were handed out is unknown, so it is served
                // read-only and never takes new ids.
                tracing::warn!(volume = status.volume_id, server = %server_id,
                    "adopting unknown volume as sealed");
                VolumeEntry {
                    row: VolumeRow {
                        id: status.volume_id,
                        collection: status.collection.clone(),
                        tier: status.tier,
                        state: VolumeState::Sealed as i32,
                        server_id: server_id.clone(),
                        needle_high_water: MAX_SEQ + 1,
                        created_at: now_unix(),
                        status: None,
                        replicas: vec![server_id.clone()],
                        replication: 1,
                        stale: Vec::new(),
                    },
                    next_seq: MAX_SEQ + 1,
                }
            });
            let row = &mut entry.row;
            if !row.replicas.contains(&server_id) {
                // A copy the directory did not place here (left behind by a
                // repair, or copied in by hand): not served, not counted, and
                // deleted once the volume has all its copies again.
                if inner.extras.insert((status.volume_id, server_id.clone())) {
                    tracing::warn!(volume = status.volume_id, server = %server_id,
                        "server reports a copy outside the volume's replica set");
                }
                continue;
            }
            // Copies a forward from this server failed to reach: they missed
            // a write or a delete.
            for failed in &status.failed_replicas {
                if row.replicas.contains(failed) && !row.stale.contains(failed) {
                    tracing::warn!(volume = row.id, replica = %failed, reporter = %server_id,
                        "copy missed a forwarded write or delete; marked stale");
                    row.stale.push(failed.clone());
                    synced = true;
                }
            }
            if status.sealed && row.state == VolumeState::Writable as i32 {
                row.state = VolumeState::Sealed as i32;
            }
            // Tier moves: the server says when a volume is moving, cold or
            // restoring; otherwise a sealed volume is just sealed.
            let reported_state = VolumeState::try_from(status.state).unwrap_or_default();
            match reported_state {
                VolumeState::Moving | VolumeState::Cold | VolumeState::Restoring => {
                    row.state = reported_state as i32;
                }
                _ if status.sealed && row.state != VolumeState::Writable as i32 => {
                    row.state = VolumeState::Sealed as i32;
                }
                _ => {}
            }
            row.tier = status.tier;
            let mut status = status;
            status.failed_replicas.clear();
            row.status = Some(status);
            changed.push(row.clone());
        }
        if synced {
            for row in &changed {
                self.db.put_volume(row, true)?;
            }
        }
        self.db.put_heartbeat(&server, &changed)?;
        inner.servers.insert(server_id.clone(), server);
        inner.reported.insert(server_id.clone(), reported);
        inner.suspects.remove(&server_id);
        let inner = &*inner;
        Ok(inner
            .volumes
            .values()
            .filter(|e| e.row.replicas.contains(&server_id))
            .map(|e| VolumeReplicas {
                volume_id: e.row.id,
                locations: e
                    .row
                    .replicas
                    .iter()
                    .filter_map(|id| inner.servers.get(id)?.location.clone())
                    .collect(),
                degraded: self.volume_health(inner, &e.row) != VolumeHealth::Ok,
            })
            .collect())
    }

    /// Degraded volumes with the health of each copy, for repair.
    pub fn degraded_volumes(&self) -> Vec<RepairView> {
        let inner = self.inner.lock();
        let now = now_unix();
        inner
            .volumes
            .values()
            .filter(|e| self.volume_health(&inner, &e.row) != VolumeHealth::Ok)
            .map(|e| {
                let replicas: Vec<RepairReplica> = self
                    .replicas(&inner, &e.row)
                    .into_iter()
                    .map(|r| {
                        let location = r.location.unwrap_or_default();
                        let down_for = inner
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
                    .unwrap_or_else(|| Tier::try_from(e.row.tier).unwrap_or(Tier::Hot));
                RepairView {
                    volume_id: e.row.id,
                    collection: e.row.collection.clone(),
                    tier,
                    desired: Self::desired_copies(&e.row),
                    replicas,
                }
            })
            .collect()
    }

    /// A server's addresses, as it last reported them.
    pub fn server_location(&self, server_id: &str) -> Option<ServerLocation> {
        self.inner.lock().servers.get(server_id)?.location.clone()
    }

    /// Live servers that could take a copy of a volume on `tier`.
    pub fn placement_candidates(&self, tier: Tier) -> Vec<Candidate> {
        let inner = self.inner.lock();
        self.candidates(&inner, tier)
    }

    /// How far the copy on `target` is: its live bytes over those of the
    /// fullest other local copy, as heartbeats last reported them (0..1).
    pub fn repair_progress(&self, volume_id: u32, target: &str) -> f64 {
        let inner = self.inner.lock();
        let live = |server: &str| {
            inner
                .reported
                .get(server)
                .and_then(|v| v.get(&volume_id))
                .filter(|s| s.tier != Tier::Cold as i32)
                .map(|s| s.live_bytes)
        };
        let Some(entry) = inner.volumes.get(&volume_id) else {
            return 0.0;
        };
        let full = entry
            .row
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
    pub fn caught_up(&self, volume_id: u32, server_id: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.volumes.get_mut(&volume_id) else {
            return Ok(());
        };
        if entry.row.stale.iter().any(|s| s == server_id) {
            entry.row.stale.retain(|s| s != server_id);
            self.db.put_volume(&entry.row, true)?;
        }
        inner
            .reported
            .entry(server_id.to_owned())
            .or_default()
            .entry(volume_id)
            .or_insert_with(|| VolumeStatus {
                volume_id,
                ..VolumeStatus::default()
            });
        Ok(())
    }

    /// A new copy on `target` (verified) replaces the copy on `lost`, or
    /// joins the copies (`lost` is `None`: the volume had too few).
    pub fn replaced(&self, volume_id: u32, lost: Option<&str>, target: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.volumes.get_mut(&volume_id) else {
            return Ok(());
        };
        let row = &mut entry.row;
        if row.replicas.iter().any(|s| s == target) {
            return Ok(());
        }
        match row.replicas.iter_mut().find(|s| Some(s.as_str()) == lost) {
            Some(slot) => *slot = target.to_owned(),
            None => row.replicas.push(target.to_owned()),
        }
        row.stale
            .retain(|s| Some(s.as_str()) != lost && s != target);
        if Some(row.server_id.as_str()) == lost {
            row.server_id = target.to_owned();
        }
        self.db.put_volume(row, true)?;
        inner
            .reported
            .entry(target.to_owned())
            .or_default()
            .entry(volume_id)
            .or_insert_with(|| VolumeStatus {
                volume_id,
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
    /// other healthy copy would be left.
    pub fn remove_replica(&self, volume_id: u32, server_id: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let Some(entry) = inner.volumes.get(&volume_id) else {
            return Err(Error::NotFound(format!("volume {volume_id}")));
        };
        let row = &entry.row;
        if !row.replicas.iter().any(|s| s == server_id) {
            return Err(Error::NotFound(format!(
                "volume {volume_id} has no copy on {server_id}"
            )));
        }
        let others_healthy = row
            .replicas
            .iter()
            .filter(|s| *s != server_id)
            .any(|s| self.replica_health(inner, row, s) == ReplicaHealth::Ok);
        if !others_healthy {
            return Err(Error::FailedPrecondition(format!(
                "volume {volume_id} would have no healthy copy left"
            )));
        }
        let Some(entry) = inner.volumes.get_mut(&volume_id) else {
            return Ok(());
        };
        let row = &mut entry.row;
        row.replicas.retain(|s| s != server_id);
        row.stale.retain(|s| s != server_id);
        if row.server_id == server_id {
            row.server_id = row.replicas.first().cloned().unwrap_or_default();
        }
        self.db.put_volume(row, true)?;
        inner.extras.insert((volume_id, server_id.to_owned()));
        tracing::info!(volume = volume_id, server = %server_id, "copy taken out of the replica set");
        Ok(())
    }

    /// Copies outside their volume's replica set whose volume has all its
    /// copies healthy: safe to delete. With each, whether its cold object
    /// must be kept (a copy in the replica set is cold on it).
    pub fn removable_extras(&self) -> Vec<(u32, ServerLocation, bool)> {
        let inner = self.inner.lock();
        inner
            .extras
            .iter()
            .filter(|(volume, server)| {
                inner.volumes.get(volume).is_some_and(|e| {
                    !e.row.replicas.contains(server)
                        && self.volume_health(&inner, &e.row) == VolumeHealth::Ok
                }) && inner
                    .reported
                    .get(server)
                    .is_some_and(|v| v.contains_key(volume))
            })
            .filter_map(|(volume, server)| {
                let location = inner.servers.get(server)?.location.clone()?;
                let row = &inner.volumes.get(volume)?.row;
                let keep_object = row.replicas.iter().any(|s| {
                    inner
                        .reported
                        .get(s)
                        .and_then(|v| v.get(volume))
                        .is_none_or(|status| status.tier == Tier::Cold as i32)
                });
                Some((*volume, location, keep_object))
            })
            .collect()
    }

    /// An extra copy was deleted.
    pub fn extra_removed(&self, volume_id: u32, server_id: &str) {
        let mut inner = self.inner.lock();
        inner.extras.remove(&(volume_id, server_id.to_owned()));
        if let Some(volumes) = inner.reported.get_mut(server_id) {
            volumes.remove(&volume_id);
        }
    }

    /// Drops a volume that was deleted (retention) from the map. Its id is
    /// never reused: the next volume id is persisted separately.
    pub fn forget_volume(&self, volume_id: u32) -> Result<bool> {
        let mut inner = self.inner.lock();
        let known = inner.volumes.remove(&volume_id).is_some();
        self.db.delete_volume(volume_id)?;
        Ok(known)
    }

    /// Where each volume lives, for volume ids and blob/needle ids.
    pub fn lookup(&self, volume_ids: &[u32], blob_ids: &[String]) -> Result<Vec<VolumeLocation>> {
        let mut wanted: Vec<u32> = volume_ids.to_vec();
        for id in blob_ids {
            let blob = match id.parse::<BlobId>() {
                Ok(blob) => blob.volume().0,
                Err(_) => u64::from_str_radix(id, 16)
                    .map(|needle| (needle >> 32) as u32)
                    .map_err(|_| {
                        Error::InvalidArgument(format!("malformed blob or needle id {id:?}"))
                    })?,
            };
            wanted.push(blob);
        }
        wanted.sort_unstable();
        wanted.dedup();
        let inner = self.inner.lock();
        Ok(wanted
            .into_iter()
            .filter_map(|id| inner.volumes.get(&id))
            .map(|entry| {
                let replicas = self.replicas(&inner, &entry.row);
                VolumeLocation {
                    volume_id: entry.row.id,
                    tier: entry.row.tier,
                    state: entry.row.state,
                    locations: Self::read_locations(&replicas),
                    health: self.volume_health(&inner, &entry.row) as i32,
                    replicas,
                }
            })
            .collect())
    }

    /// Everything, for operators.
    pub fn status(&self) -> StatusResponse {
        let inner = self.inner.lock();
        let mut servers: Vec<ServerStatus> = inner
            .servers
            .values()
            .map(|s| ServerStatus {
                location: s.location.clone(),
                alive: self.alive(s),
                last_heartbeat: s.last_heartbeat,
                free_hot_bytes: s.free_hot_bytes,
                free_warm_bytes: s.free_warm_bytes,
            })
            .collect();
        servers.sort_by(|a, b| {
            let id = |s: &ServerStatus| s.location.as_ref().map(|l| l.server_id.clone());
            id(a).cmp(&id(b))
        });
        let volumes = inner
            .volumes
            .values()
            .map(|e| VolumeRecord {
                status: Some(e.row.status.clone().unwrap_or_else(|| VolumeStatus {
                    volume_id: e.row.id,
                    collection: e.row.collection.clone(),
                    tier: e.row.tier,
                    ..VolumeStatus::default()
                })),
                state: e.row.state,
                server_id: e.row.server_id.clone(),
                replicas: self.replicas(&inner, &e.row),
                health: self.volume_health(&inner, &e.row) as i32,
                replication: e.row.replication,
                // Filled in by the service, which knows the repairs running.
                repairing: false,
                repair_progress: 0.0,
            })
            .collect();
        // A problem older than a few pulses was about servers that may have
        // come since; the next creation attempt says again if not.
        let recent = now_unix().saturating_sub(self.config.dead_after.as_secs() * 4);
        let problems = inner
            .problems
            .values()
            .filter(|(at, _)| *at >= recent)
            .map(|(_, reason)| reason.clone())
            .collect();
        StatusResponse {
            servers,
            volumes,
            problems,
            replication: self.config.replication.max(1) as u32,
        }
    }

    /// Bytes per tier (and per storage class in the cold tier) and free
    /// bytes per local tier, now.
    pub fn capacity_sample(&self) -> hayloft_proto::CapacitySample {
        let inner = self.inner.lock();
        let mut sample = hayloft_proto::CapacitySample {
            at: now_unix(),
            ..Default::default()
        };
        for tier in ["hot", "warm"] {
            sample.used_bytes.insert(tier.into(), 0);
        }
        for entry in inner.volumes.values() {
            let Some(status) = &entry.row.status else {
                continue;
            };
            // Local tiers hold one file per copy; a cold volume is one object.
            let copies = entry.row.replicas.len().max(1) as u64;
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
        for server in inner.servers.values().filter(|s| self.alive(s)) {
            *sample.free_bytes.entry("hot".into()).or_default() += server.free_hot_bytes;
            *sample.free_bytes.entry("warm".into()).or_default() += server.free_warm_bytes;
        }
        sample
    }

    /// Records a capacity sample in the history, keeping `retention` of it.
    pub fn record_capacity(&self, retention: std::time::Duration) -> Result<()> {
        let sample = self.capacity_sample();
        self.db
            .put_sample(&sample, sample.at.saturating_sub(retention.as_secs()))
    }

    /// The history since `since`, with a sample of now at the end.
    pub fn capacity(&self, since: u64) -> Result<Vec<hayloft_proto::CapacitySample>> {
        let mut samples = self.db.samples(since)?;
        samples.push(self.capacity_sample());
        Ok(samples)
    }

    /// Updates the cluster gauges: `hayloft_directory_servers{alive}`,
    /// `hayloft_directory_volumes{tier,state}`, `hayloft_directory_bytes{tier}`.
    pub fn update_gauges(&self) {
        let inner = self.inner.lock();
        let alive = inner.servers.values().filter(|s| self.alive(s)).count();
        metrics::gauge!("hayloft_directory_servers", "alive" => "true").set(alive as f64);
        metrics::gauge!("hayloft_directory_servers", "alive" => "false")
            .set((inner.servers.len() - alive) as f64);
        let mut volumes: HashMap<(i32, i32), u64> = HashMap::new();
        let mut bytes: HashMap<i32, u64> = HashMap::new();
        let mut degraded = 0u64;
        for entry in inner.volumes.values() {
            if self.volume_health(&inner, &entry.row) != VolumeHealth::Ok {
                degraded += 1;
            }
            *volumes
                .entry((entry.row.tier, entry.row.state))
                .or_default() += 1;
            *bytes.entry(entry.row.tier).or_default() +=
                entry.row.status.as_ref().map_or(0, |s| s.file_bytes);
        }
        metrics::gauge!("hayloft_directory_volumes_by_health", "health" => "ok")
            .set((inner.volumes.len() as u64 - degraded) as f64);
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

    /// Flushes the database (on shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hayloft_proto::VolumeStatus;

    fn cluster(dir: &std::path::Path) -> Cluster {
        let db = Db::open(dir).unwrap();
        Cluster::load(db, DirectoryConfig::default()).unwrap()
    }

    fn heartbeat(volumes: Vec<VolumeStatus>) -> HeartbeatRequest {
        HeartbeatRequest {
            server: Some(ServerLocation {
                server_id: "vs0".into(),
                grpc_addr: "127.0.0.1:1".into(),
                http_addr: "127.0.0.1:2".into(),
                ..ServerLocation::default()
            }),
            volumes,
            free_hot_bytes: 1 << 40,
            free_warm_bytes: 1 << 40,
        }
    }

    #[test]
    fn unknown_volumes_are_adopted_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = cluster(dir.path());
        let unknown = VolumeStatus {
            volume_id: 7,
            tier: Tier::Hot as i32,
            file_bytes: 64,
            max_bytes: 1 << 30,
            ..VolumeStatus::default()
        };
        cluster.heartbeat(heartbeat(vec![unknown])).unwrap();
        let status = cluster.status();
        assert_eq!(status.volumes.len(), 1);
        assert_eq!(status.volumes[0].state, VolumeState::Sealed as i32);
        // Readable (it has a location) but never handed out.
        assert_eq!(cluster.lookup(&[7], &[]).unwrap()[0].locations.len(), 1);
        assert!(cluster.assign("", 1).unwrap().is_none());
    }

    #[test]
    fn ids_are_never_handed_out_twice_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let cluster = cluster(dir.path());
            cluster.heartbeat(heartbeat(vec![])).unwrap();
            let volume = match cluster.status().volumes.first() {
                Some(v) => v.status.as_ref().unwrap().volume_id,
                None => {
                    let plan = cluster.plan_new_volume(Tier::Hot, "").unwrap();
                    cluster
                        .register_volume(plan.volume_id, "", Tier::Hot, &["vs0".to_owned()])
                        .unwrap();
                    plan.volume_id
                }
            };
            // A heartbeat that reports the volume keeps it writable.
            cluster
                .heartbeat(heartbeat(vec![VolumeStatus {
                    volume_id: volume,
                    tier: Tier::Hot as i32,
                    file_bytes: 64,
                    max_bytes: 1 << 30,
                    ..VolumeStatus::default()
                }]))
                .unwrap();
            for _ in 0..50 {
                let (blobs, _) = cluster.assign("", 1000).unwrap().unwrap();
                for blob in blobs {
                    assert!(
                        seen.insert(blob.needle_id),
                        "needle {} twice",
                        blob.needle_id
                    );
                }
            }
            // Dropped without any shutdown step: a crash, as far as the
            // allocator is concerned.
        }
        assert_eq!(seen.len(), 150_000);
    }
}
