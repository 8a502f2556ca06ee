//! The directory's in-memory view of the cluster: the Raft state machine
//! (backed by [`Db`]) plus the leader's soft state.
//!
//! One `parking_lot::Mutex` guards it: every operation is a few map lookups;
//! no `.await` happens while it is held. A change to replicated state is
//! decided by the leader under the lock, proposed as a [`Command`] after
//! releasing it, and made by [`Cluster::apply`] on every node once
//! committed. Soft state (heartbeat times, free space, volume stats, what
//! each server reported) changes on the leader alone, and is set afresh when
//! a node becomes leader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hayloft_proto::{
    AssignedBlob, HeartbeatRequest, Replica, ReplicaHealth, ServerLocation, ServerStatus,
    StatusResponse, Tier, VolumeHealth, VolumeLocation, VolumeRecord, VolumeReplicas, VolumeState,
    VolumeStatus,
};
use hayloft_storage::types::needle_in;
use hayloft_storage::{BlobId, Cookie, VolumeId};
use openraft::{BasicNode, EntryPayload, LogId, StoredMembership};
use parking_lot::Mutex;
use prost::Message;
use rand::Rng;
use rocksdb::WriteBatch;

use crate::DirectoryConfig;
use crate::consensus::{Applied, Command, Raft, TypeConfig};
use crate::db::{self, Db, RepairJobRow, ServerRow, VolumeRow};
use crate::error::{Error, Result};
use crate::placement::{self, Candidate};

/// Needle ids are reserved through the Raft log this many at a time, so
/// allocation costs one commit per block rather than per upload.
pub const NEEDLE_BLOCK: u64 = 100_000;

/// Largest sequence number in a volume (needle ids are `volume << 32 | seq`).
const MAX_SEQ: u64 = u32::MAX as u64;

/// How long after its creation a copy a heartbeat leaves out is still
/// taken as present (the heartbeat may have been sent before it existed).
pub const JUST_CREATED_SECS: u64 = 15;

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct VolumeEntry {
    row: VolumeRow,
    /// Soft: sequence numbers this node reserved and has not handed out
    /// yet. Nobody else ever hands them out (each reservation starts at the
    /// committed high-water mark), so a leader may use them in any term;
    /// lost on a restart, never reused.
    block: std::ops::Range<u64>,
}

impl VolumeEntry {
    fn new(row: VolumeRow) -> VolumeEntry {
        VolumeEntry { row, block: 0..0 }
    }
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
    /// Repairs started and not ended, by volume (replicated).
    repair_jobs: BTreeMap<u32, RepairJobRow>,
    /// Revoked token ids and when each may be forgotten (replicated).
    revoked: BTreeMap<String, u64>,
    next_volume_id: u32,
    round_robin: usize,
    /// The last Raft entry applied, and the membership it left.
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    /// The term whose leadership the soft state was set up for.
    led_term: u64,
    /// Unix seconds when this node's soft state was set up for `led_term`.
    led_at: u64,
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
    /// True if every copy it should have is healthy.
    pub healthy: bool,
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

/// A snapshot's bytes, last log id and membership.
pub(crate) type SnapshotParts = (
    Vec<u8>,
    Option<LogId<u64>>,
    StoredMembership<u64, BasicNode>,
);

/// The problem status names for a server (`who`) holding a stale key ring.
pub fn stale_ring_problem(who: &str, why: &str) -> String {
    format!(
        "{who}: its key ring did not reload ({why}); it keeps the previous keys, so a key \
         removed from the file still verifies there (fix the file, or use `hayloft keyring remove`)"
    )
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
    db: std::sync::Arc<Db>,
    config: DirectoryConfig,
    inner: Mutex<Inner>,
    /// This node's id in the directory group.
    node_id: u64,
    /// The Raft node (set once it is started).
    raft: std::sync::OnceLock<Raft>,
    /// Serialises changes that are checked against the state before being
    /// proposed (a copy leaving or joining a replica set).
    changes: tokio::sync::Mutex<()>,
    /// The revoked token ids, for the token gate (kept equal to
    /// `inner.revoked`).
    revocations: std::sync::Arc<hayloft_access::grpc::Revoked>,
}

/// A volume to create: its id, and the servers to create its copies on.
pub struct NewVolume {
    /// The id reserved for it.
    pub volume_id: u32,
    /// Where to create its copies, in placement order.
    pub servers: Vec<ServerLocation>,
}

impl Cluster {
    /// Loads the cluster from the database; `node_id` is this node's id in
    /// the directory group.
    pub fn load(db: std::sync::Arc<Db>, config: DirectoryConfig, node_id: u64) -> Result<Cluster> {
        let snapshot = db.load()?;
        let inner = Inner::from_snapshot(snapshot)?;
        let revocations = std::sync::Arc::new(hayloft_access::grpc::Revoked::default());
        revocations.set(inner.revoked.keys().cloned());
        Ok(Cluster {
            db,
            config,
            revocations,
            inner: Mutex::new(inner),
            node_id,
            raft: std::sync::OnceLock::new(),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn alive(&self, server: &ServerRow) -> bool {
        now_unix().saturating_sub(server.last_heartbeat) <= self.config.dead_after.as_secs()
    }

    fn writable(&self, inner: &Inner, entry: &VolumeEntry, collection: &str, count: u64) -> bool {
        let row = &entry.row;
        row.collection == collection
            && row.state == VolumeState::Writable as i32
            && (entry.block.end - entry.block.start >= count
                || row.needle_high_water.max(1) + count <= MAX_SEQ + 1)
            && self.volume_health(inner, row) == VolumeHealth::Ok
            && !Self::moving(inner, row.id)
            && row.status.as_ref().is_none_or(|s| {
                !s.sealed
                    && (s.file_bytes as f64) < s.max_bytes as f64 * self.config.volume_full_ratio
            })
            // No copy on a disk at its free-space reserve.
            && !row.replicas.iter().any(|id| {
                inner
                    .reported
                    .get(id)
                    .and_then(|v| v.get(&row.id))
                    .is_some_and(|s| !s.paused.is_empty())
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
                let entry = inner
                    .volumes
                    .get_mut(&volume_id)
                    .ok_or(Error::Corrupt("volume vanished"))?;
                if entry.block.end - entry.block.start >= count {
                    let first = entry.block.start;
                    entry.block.start += count;
                    return Ok(Some((blobs(volume_id, first, count), locations)));
                }
                (volume_id, locations)
            };
            let reserved = self
                .propose(Command::ReserveNeedles {
                    volume_id,
                    count: count + NEEDLE_BLOCK,
                    at_least: count,
                })
                .await?;
            match reserved {
                Applied::Needles { first, end } => {
                    let mut inner = self.inner.lock();
                    if let Some(entry) = inner.volumes.get_mut(&volume_id) {
                        // Keep whichever block has more left (the other's
                        // ids are never handed out).
                        let rest = first + count..end;
                        if rest.end - rest.start > entry.block.end - entry.block.start {
                            entry.block = rest;
                        }
                    }
                    return Ok(Some((blobs(volume_id, first, count), locations)));
                }
                Applied::Refused(reason) => {
                    tracing::debug!(volume = volume_id, %reason, "needle reservation refused");
                }
                other => return Err(Error::Unexpected(format!("{other:?}"))),
            }
        }
        Ok(None)
    }

    /// Picks a writable volume of `collection` with room for `count` ids,
    /// and every copy's location, the primary of this write first:
    /// primaries take turns, so forwarding work is shared by the copies.
    fn pick_volume(
        &self,
        inner: &mut Inner,
        collection: &str,
        count: u64,
    ) -> Option<(u32, Vec<ServerLocation>)> {
        let candidates: Vec<u32> = inner
            .volumes
            .values()
            .filter(|e| self.writable(inner, e, collection, count))
            .map(|e| e.row.id)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        inner.round_robin = inner.round_robin.wrapping_add(1);
        let volume_id = candidates[inner.round_robin % candidates.len()];
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
        Some((volume_id, locations))
    }

    /// Copies a new volume of `collection` gets.
    pub fn replication_for(&self, collection: &str) -> usize {
        self.config.replication_for(collection)
    }

    /// Reserves a volume id and places its copies: distinct live servers,
    /// spread over zones, then racks, then the most free space on `tier`.
    /// With too few live servers nothing is reserved and the error says why
    /// (also shown by `status` until a creation succeeds).
    pub async fn plan_new_volume(&self, tier: Tier, collection: &str) -> Result<NewVolume> {
        let servers = self.place_new_volume(tier, collection)?;
        let volume_id = match self.propose(Command::AllocateVolumeId).await? {
            Applied::VolumeId(id) => id,
            Applied::Refused(reason) => return Err(Error::Unavailable(reason)),
            other => return Err(Error::Unexpected(format!("{other:?}"))),
        };
        self.inner.lock().creating.insert(volume_id);
        Ok(NewVolume { volume_id, servers })
    }

    fn place_new_volume(&self, tier: Tier, collection: &str) -> Result<Vec<ServerLocation>> {
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
        Ok(chosen
            .iter()
            .filter_map(|id| inner.servers.get(id)?.location.clone())
            .collect())
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
                    volume_id,
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
            // Registered a moment ago, its copies not yet recorded as
            // reported (`register_volume` records them right after the
            // Raft entry applies): a heartbeat answered in between must not
            // call the new volume degraded, or its first writes are refused.
            && !inner.creating.contains(&row.id)
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
    /// volumes. Answers with the copies of each volume it holds. A new
    /// server or address, a volume's new state or tier, copies that missed a
    /// forward and volumes nobody knew are committed through the Raft log;
    /// the rest (liveness, free space, stats) is the leader's soft state.
    pub async fn heartbeat(&self, request: HeartbeatRequest) -> Result<Vec<VolumeReplicas>> {
        let location = request
            .server
            .ok_or_else(|| Error::InvalidArgument("heartbeat without server".into()))?;
        if location.server_id.is_empty() {
            return Err(Error::InvalidArgument("heartbeat without server id".into()));
        }
        let server_id = location.server_id.clone();
        let registered = self
            .inner
            .lock()
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
            if let Some(server) = inner.servers.get_mut(&server_id) {
                server.last_heartbeat = now_unix();
                server.free_hot_bytes = request.free_hot_bytes;
                server.free_warm_bytes = request.free_warm_bytes;
                server.keyring_problem = request.keyring_problem.clone();
            }
            let mut reported = HashMap::new();
            for status in request.volumes {
                if inner.creating.contains(&status.volume_id)
                    || inner.abandoned.contains(&status.volume_id)
                {
                    // Reported between its creation and its registration, or
                    // a copy of a creation that failed (being deleted).
                    continue;
                }
                reported.insert(status.volume_id, status.clone());
                let Some(entry) = inner.volumes.get_mut(&status.volume_id) else {
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
                        created_at: now_unix(),
                        status: None,
                        replicas: vec![server_id.clone()],
                        replication: 1,
                        stale: Vec::new(),
                    };
                    commands.push(Command::AdoptVolume {
                        row: row.encode_to_vec(),
                    });
                    continue;
                };
                let row = &mut entry.row;
                if !row.replicas.contains(&server_id) {
                    // A copy the directory did not place here (left behind by
                    // a repair, or copied in by hand): not served, not
                    // counted, and deleted once the volume has all its copies
                    // again.
                    if inner.extras.insert((status.volume_id, server_id.clone())) {
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
                        volume_id: row.id,
                        state,
                        tier: status.tier,
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
            let now = now_unix();
            if let Some(previous) = inner.reported.get(&server_id) {
                for (id, status) in previous {
                    let just_created = inner.volumes.get(id).is_some_and(|e| {
                        e.row.replicas.contains(&server_id)
                            && now.saturating_sub(e.row.created_at) <= JUST_CREATED_SECS
                    });
                    if just_created && !reported.contains_key(id) {
                        reported.insert(*id, status.clone());
                    }
                }
            }
            inner.reported.insert(server_id.clone(), reported);
            inner.suspects.remove(&server_id);
        }
        for command in commands {
            self.propose(command).await?;
        }
        let inner = &*self.inner.lock();
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
                // Also while a copy moves (to spread them over more zones):
                // the volume takes no writes until the new copy has it all.
                degraded: self.volume_health(inner, &e.row) != VolumeHealth::Ok
                    || Self::moving(inner, e.row.id),
                sealed: e.row.state != VolumeState::Writable as i32,
            })
            .collect())
    }

    /// True while a copy of `volume_id` moves to another server (a `move`
    /// repair job is open): the volume takes no new writes meanwhile.
    fn moving(inner: &Inner, volume_id: u32) -> bool {
        inner
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

    /// Every volume as repair sees it (`all`), or only the degraded ones.
    pub fn volume_views(&self, all: bool) -> Vec<RepairView> {
        let inner = self.inner.lock();
        let now = now_unix();
        inner
            .volumes
            .values()
            .filter(|e| all || self.volume_health(&inner, &e.row) != VolumeHealth::Ok)
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
                    healthy: self.volume_health(&inner, &e.row) == VolumeHealth::Ok,
                    replicas,
                }
            })
            .collect()
    }

    /// The revoked token ids, as the gate checks them.
    pub fn revocations(&self) -> std::sync::Arc<hayloft_access::grpc::Revoked> {
        std::sync::Arc::clone(&self.revocations)
    }

    /// The revoked token ids (told to volume servers with heartbeat
    /// answers).
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.inner.lock().revoked.keys().cloned().collect()
    }

    /// Revokes the token `token_id` until `expires_at` (Unix seconds):
    /// every server refuses it from the moment it hears (directory nodes
    /// at once, volume servers at their next heartbeat).
    pub async fn revoke_token(&self, token_id: &str, expires_at: u64) -> Result<()> {
        self.propose(Command::RevokeToken {
            token_id: token_id.to_owned(),
            expires_at,
            now: now_unix(),
        })
        .await?;
        Ok(())
    }

    /// Repairs started (by this leader or an earlier one) and not ended,
    /// by volume id.
    pub fn repair_jobs(&self) -> Vec<RepairJobRow> {
        self.inner.lock().repair_jobs.values().cloned().collect()
    }

    /// The repair job of `volume_id`, if one was started and not ended.
    pub fn repair_job(&self, volume_id: u32) -> Option<RepairJobRow> {
        self.inner.lock().repair_jobs.get(&volume_id).cloned()
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
            Applied::Refused(reason) => Err(Error::FailedPrecondition(reason)),
            _ => Ok(()),
        }
    }

    /// Commits the end of the repair of `volume_id` on `target` (after its
    /// result, if any, was committed).
    pub async fn end_repair(&self, volume_id: u32, target: &str) -> Result<()> {
        self.propose(Command::RepairEnded {
            volume_id,
            target: target.to_owned(),
        })
        .await?;
        Ok(())
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
    pub async fn caught_up(&self, volume_id: u32, server_id: &str) -> Result<()> {
        let stale = self
            .inner
            .lock()
            .volumes
            .get(&volume_id)
            .map(|e| e.row.stale.iter().any(|s| s == server_id));
        match stale {
            None => return Ok(()),
            Some(true) => {
                self.propose(Command::CaughtUp {
                    volume_id,
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
                volume_id,
                ..VolumeStatus::default()
            });
        Ok(())
    }

    /// A new copy on `target` (verified) replaces the copy on `lost`, or
    /// joins the copies (`lost` is `None`: the volume had too few).
    pub async fn replaced(&self, volume_id: u32, lost: Option<&str>, target: &str) -> Result<()> {
        let _change = self.changes.lock().await;
        let known = self
            .inner
            .lock()
            .volumes
            .get(&volume_id)
            .map(|e| e.row.replicas.iter().any(|s| s == target));
        if known != Some(false) {
            return Ok(());
        }
        self.propose(Command::Replaced {
            volume_id,
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
    pub async fn remove_replica(&self, volume_id: u32, server_id: &str) -> Result<()> {
        let _change = self.changes.lock().await;
        {
            let inner = self.inner.lock();
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
                .any(|s| self.replica_health(&inner, row, s) == ReplicaHealth::Ok);
            if !others_healthy {
                return Err(Error::FailedPrecondition(format!(
                    "volume {volume_id} would have no healthy copy left"
                )));
            }
        }
        self.propose(Command::RemoveReplica {
            volume_id,
            server_id: server_id.to_owned(),
        })
        .await?;
        self.inner
            .lock()
            .extras
            .insert((volume_id, server_id.to_owned()));
        tracing::info!(volume = volume_id, server = %server_id, "copy taken out of the replica set");
        Ok(())
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
            && now_unix().saturating_sub(inner.led_at) > self.config.dead_after.as_secs()
    }

    /// Copies outside their volume's replica set whose volume has all its
    /// copies healthy: safe to delete (none before the leader has
    /// [settled](Self::settled), nor the target of an open repair job).
    /// With each, whether its cold object must be kept (a copy in the
    /// replica set is cold on it).
    pub fn removable_extras(&self) -> Vec<(u32, ServerLocation, bool)> {
        if !self.settled() {
            return Vec::new();
        }
        let inner = self.inner.lock();
        inner
            .extras
            .iter()
            .filter_map(|(volume, server)| {
                let (location, keep_object) = self.removable(&inner, *volume, server)?;
                Some((*volume, location, keep_object))
            })
            .collect()
    }

    /// True if the extra copy of `volume_id` on `server_id` may still be
    /// deleted now: checked again right before each deletion, as the
    /// volume may have turned degraded since the list was made (a copy
    /// whose volume lost another copy meanwhile is kept).
    pub fn still_removable(&self, volume_id: u32, server_id: &str) -> bool {
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
    fn removable(
        &self,
        inner: &Inner,
        volume: u32,
        server: &str,
    ) -> Option<(ServerLocation, bool)> {
        if inner
            .repair_jobs
            .get(&volume)
            .is_some_and(|job| job.target == server)
        {
            return None;
        }
        let row = &inner.volumes.get(&volume)?.row;
        if row.replicas.iter().any(|s| s == server)
            || self.volume_health(inner, row) != VolumeHealth::Ok
            || !inner
                .reported
                .get(server)
                .is_some_and(|v| v.contains_key(&volume))
        {
            return None;
        }
        let location = inner.servers.get(server)?.location.clone()?;
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
    pub fn extra_removed(&self, volume_id: u32, server_id: &str) {
        let mut inner = self.inner.lock();
        inner.extras.remove(&(volume_id, server_id.to_owned()));
        if let Some(volumes) = inner.reported.get_mut(server_id) {
            volumes.remove(&volume_id);
        }
    }

    /// Drops a volume that was deleted (retention) from the map. Its id is
    /// never reused: the next volume id is kept separately.
    pub async fn forget_volume(&self, volume_id: u32) -> Result<bool> {
        let known = self.inner.lock().volumes.contains_key(&volume_id);
        self.propose(Command::ForgetVolume { volume_id }).await?;
        Ok(known)
    }

    /// This node's id in the directory group.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The collection of a volume, if the directory knows it.
    pub fn volume_collection(&self, volume_id: u32) -> Option<String> {
        let inner = self.inner.lock();
        inner
            .volumes
            .get(&volume_id)
            .map(|entry| entry.row.collection.clone())
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
                    collection: Some(entry.row.collection.clone()),
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
                keyring_problem: s.keyring_problem.clone(),
            })
            .collect();
        servers.sort_by(|a, b| {
            let id = |s: &ServerStatus| s.location.as_ref().map(|l| l.server_id.clone());
            id(a).cmp(&id(b))
        });
        let volumes: Vec<VolumeRecord> = inner
            .volumes
            .values()
            .map(|e| (e, inner.repair_jobs.get(&e.row.id)))
            .map(|(e, job)| VolumeRecord {
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
                repairing: job.is_some(),
                // Filled in by the service (from heartbeats).
                repair_progress: 0.0,
                repair_target: job.map(|j| j.target.clone()).unwrap_or_default(),
                repair_started_at: job.map_or(0, |j| j.started_at),
            })
            .collect();
        // A problem older than a few pulses was about servers that may have
        // come since; the next creation attempt says again if not.
        let recent = now_unix().saturating_sub(self.config.dead_after.as_secs() * 4);
        let mut problems: Vec<String> = inner
            .problems
            .values()
            .filter(|(at, _)| *at >= recent)
            .map(|(_, reason)| reason.clone())
            .collect();
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
        StatusResponse {
            servers,
            volumes,
            problems,
            replication: self.config.replication.max(1) as u32,
            // Filled in by the service (it knows the planner).
            below_spread: 0,
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
        self.inner.lock().volumes.len()
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

    /// Hands the cluster its Raft node (once, at start).
    pub(crate) fn set_raft(&self, raft: Raft) {
        let _ = self.raft.set(raft);
    }

    /// This node's Raft.
    pub(crate) fn raft(&self) -> Result<&Raft> {
        self.raft
            .get()
            .ok_or_else(|| Error::Unavailable("the directory's Raft node is not running".into()))
    }

    /// Commits `command` through the Raft log and answers what applying it
    /// answered. Only the leader can; elsewhere the error names the leader.
    pub(crate) async fn propose(&self, command: Command) -> Result<Applied> {
        let raft = self.raft()?;
        let started = std::time::Instant::now();
        match raft.client_write(command).await {
            Ok(response) => {
                metrics::histogram!("hayloft_directory_raft_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(response.data)
            }
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(forward),
            )) => Err(Error::NotLeader {
                leader: forward.leader_id,
                addr: forward.leader_node.map(|n| n.addr),
            }),
            Err(e) => Err(Error::Unavailable(format!(
                "the directory group could not commit a change: {e}"
            ))),
        }
    }

    /// True if lookups must be linearizable (see [`Cluster::confirm_leadership`]).
    pub fn linearizable_lookups(&self) -> bool {
        self.config.linearizable_lookups
    }

    /// Confirms with a majority of the group that this node still leads,
    /// and waits until it has applied every entry committed before (a read
    /// index, `linearizable_lookups`); UNAVAILABLE if no majority answers
    /// within 2 s.
    pub async fn confirm_leadership(&self) -> Result<()> {
        let raft = self.raft()?;
        let started = std::time::Instant::now();
        let confirmed = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            raft.ensure_linearizable(),
        )
        .await;
        metrics::histogram!("hayloft_directory_read_index_seconds")
            .record(started.elapsed().as_secs_f64());
        match confirmed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(forward),
            ))) => Err(Error::NotLeader {
                leader: forward.leader_id.filter(|id| *id != self.node_id),
                addr: forward
                    .leader_node
                    .filter(|_| forward.leader_id != Some(self.node_id))
                    .map(|n| n.addr),
            }),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "this node could not confirm that it leads: {e}"
            ))),
            Err(_) => Err(Error::Unavailable(
                "no majority of the directory group confirmed this node's leadership within 2s"
                    .into(),
            )),
        }
    }

    /// Ok if this node leads the directory group (setting up its soft state
    /// the first time in a term); otherwise the error names the leader, if
    /// one is known.
    pub fn leader_check(&self) -> Result<()> {
        let raft = self.raft()?;
        let (term, leader, addr) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            // Not itself: a leader removed from the group steps down and
            // may still remember leading.
            let other = metrics.current_leader.filter(|id| *id != self.node_id);
            let addr = other.and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            });
            let leading = metrics.state.is_leader();
            (
                metrics.current_term,
                metrics.current_leader.filter(|_| leading),
                (other, addr),
            )
        };
        if leader != Some(self.node_id) {
            let (leader, addr) = addr;
            return Err(Error::NotLeader { leader, addr });
        }
        let mut inner = self.inner.lock();
        if inner.led_term != term {
            Self::lead(&mut inner, term);
        }
        Ok(())
    }

    /// This node's view of the directory group.
    pub fn node_status(&self) -> hayloft_proto::NodeStatus {
        let Some(raft) = self.raft.get() else {
            return hayloft_proto::NodeStatus {
                node_id: self.node_id,
                role: "shutdown".into(),
                ..Default::default()
            };
        };
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let index = |id: Option<LogId<u64>>| id.map_or(0, |id| id.index);
        hayloft_proto::NodeStatus {
            node_id: self.node_id,
            role: match m.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Shutdown => "shutdown",
            }
            .into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: index(m.last_applied),
            snapshot_index: index(m.snapshot),
            members: m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| format!("{id}={}", node.addr))
                .collect(),
            learners: m
                .membership_config
                .membership()
                .learner_ids()
                .filter_map(|id| {
                    let node = m.membership_config.membership().get_node(&id)?;
                    Some(format!("{id}={}", node.addr))
                })
                .collect(),
        }
    }

    /// Whether this node leads the directory group now.
    pub fn is_leader(&self) -> bool {
        self.leader_check().is_ok()
    }

    /// Sets up the soft state of a new leader: it has heard from no server
    /// yet, so each gets `dead_after` from now to send a heartbeat before it
    /// counts as down (and its repair clock starts again), and every copy
    /// counts as present until its server reports.
    fn lead(inner: &mut Inner, term: u64) {
        let now = now_unix();
        for server in inner.servers.values_mut() {
            server.last_heartbeat = server.last_heartbeat.max(now);
        }
        inner.reported.clear();
        inner.extras.clear();
        inner.suspects.clear();
        inner.problems.clear();
        inner.led_term = term;
        inner.led_at = now;
        tracing::info!(term, "this directory node leads the group");
    }

    /// The last applied log id and membership (openraft asks at start).
    pub(crate) fn applied_state(&self) -> (Option<LogId<u64>>, StoredMembership<u64, BasicNode>) {
        let inner = self.inner.lock();
        (inner.applied, inner.membership.clone())
    }

    /// Applies a committed log entry: to the map and, in one batch with its
    /// log id, to the database. Deterministic: every node applies the same
    /// entries to the same state with the same result.
    pub(crate) fn apply(
        &self,
        log_id: LogId<u64>,
        payload: EntryPayload<TypeConfig>,
    ) -> Result<Applied> {
        let mut inner = self.inner.lock();
        let mut batch = WriteBatch::default();
        let applied = match payload {
            EntryPayload::Blank => Applied::Done,
            EntryPayload::Membership(membership) => {
                inner.membership = StoredMembership::new(Some(log_id), membership);
                Applied::Done
            }
            EntryPayload::Normal(command) => {
                let revokes = matches!(command, Command::RevokeToken { .. });
                let applied = apply_command(&mut inner, &mut batch, command)?;
                if revokes {
                    self.revocations.set(inner.revoked.keys().cloned());
                }
                applied
            }
        };
        inner.applied = Some(log_id);
        db::put_applied(
            &mut batch,
            &json(&inner.applied)?,
            &json(&inner.membership)?,
        );
        self.db.write(batch)?;
        Ok(applied)
    }

    /// The state machine as a snapshot: its bytes, last log id and
    /// membership, all as of one moment.
    pub(crate) fn snapshot(&self) -> Result<SnapshotParts> {
        let inner = self.inner.lock();
        let snapshot = db::Snapshot {
            next_volume_id: inner.next_volume_id,
            volumes: inner.volumes.values().map(|e| e.row.clone()).collect(),
            servers: inner.servers.values().cloned().collect(),
            history: self.db.samples(0)?,
            applied: json(&inner.applied)?,
            membership: json(&inner.membership)?,
            repair_jobs: inner.repair_jobs.values().cloned().collect(),
            revoked: inner
                .revoked
                .iter()
                .map(|(token_id, expires_at)| db::RevokedToken {
                    token_id: token_id.clone(),
                    expires_at: *expires_at,
                })
                .collect(),
        };
        Ok((
            snapshot.encode_to_vec(),
            inner.applied,
            inner.membership.clone(),
        ))
    }

    /// Replaces the state machine with a snapshot from the leader.
    pub(crate) fn install(
        &self,
        data: &[u8],
        applied: Option<LogId<u64>>,
        membership: StoredMembership<u64, BasicNode>,
    ) -> Result<()> {
        let mut snapshot = db::Snapshot::decode(data)
            .map_err(|_| Error::Corrupt("undecodable snapshot from the leader"))?;
        snapshot.applied = json(&applied)?;
        snapshot.membership = json(&membership)?;
        let mut inner = self.inner.lock();
        self.db.replace(&snapshot)?;
        let fresh = Inner::from_snapshot(snapshot)?;
        inner.volumes = fresh.volumes;
        inner.servers = fresh.servers;
        inner.next_volume_id = fresh.next_volume_id;
        inner.repair_jobs = fresh.repair_jobs;
        inner.revoked = fresh.revoked;
        self.revocations.set(inner.revoked.keys().cloned());
        inner.applied = fresh.applied;
        inner.membership = fresh.membership;
        Ok(())
    }

    /// Flushes the database (on shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()
    }
}

impl Inner {
    fn from_snapshot(snapshot: db::Snapshot) -> Result<Inner> {
        let volumes = snapshot
            .volumes
            .into_iter()
            .map(|mut row| {
                row.migrate();
                (row.id, VolumeEntry::new(row))
            })
            .collect();
        let servers = snapshot
            .servers
            .into_iter()
            .filter_map(|row| Some((row.location.as_ref()?.server_id.clone(), row)))
            .collect();
        let applied = match snapshot.applied.as_slice() {
            [] => None,
            bytes => serde_json::from_slice(bytes)
                .map_err(|_| Error::Corrupt("undecodable last applied log id"))?,
        };
        let membership = match snapshot.membership.as_slice() {
            [] => StoredMembership::default(),
            bytes => serde_json::from_slice(bytes)
                .map_err(|_| Error::Corrupt("undecodable Raft membership"))?,
        };
        Ok(Inner {
            servers,
            reported: HashMap::new(),
            extras: HashSet::new(),
            abandoned: HashSet::new(),
            suspects: HashSet::new(),
            problems: BTreeMap::new(),
            creating: HashSet::new(),
            volumes,
            repair_jobs: snapshot
                .repair_jobs
                .into_iter()
                .map(|job| (job.volume_id, job))
                .collect(),
            revoked: snapshot
                .revoked
                .into_iter()
                .map(|r| (r.token_id, r.expires_at))
                .collect(),
            next_volume_id: snapshot.next_volume_id.max(1),
            round_robin: 0,
            applied,
            membership,
            led_term: 0,
            led_at: 0,
        })
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Unexpected(e.to_string()))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|_| Error::Corrupt("undecodable record in a Raft entry"))
}

/// Applies one command (see [`Cluster::apply`]).
fn apply_command(inner: &mut Inner, batch: &mut WriteBatch, command: Command) -> Result<Applied> {
    let changed = |batch: &mut WriteBatch, entry: &VolumeEntry| {
        db::put_volume(batch, &entry.row);
        Applied::Done
    };
    Ok(match command {
        Command::RegisterServer { location } => {
            let location: ServerLocation = decode(&location)?;
            let server = inner.servers.entry(location.server_id.clone()).or_default();
            server.location = Some(location);
            db::put_server(batch, server);
            Applied::Done
        }
        Command::AllocateVolumeId => {
            let id = inner.next_volume_id;
            match id.checked_add(1) {
                Some(next) => {
                    inner.next_volume_id = next;
                    db::put_next_volume_id(batch, next);
                    Applied::VolumeId(id)
                }
                None => Applied::Refused("volume ids exhausted".into()),
            }
        }
        Command::CreateVolume { row } | Command::AdoptVolume { row } => {
            let mut row: VolumeRow = decode(&row)?;
            row.migrate();
            let entry = inner
                .volumes
                .entry(row.id)
                .or_insert_with(|| VolumeEntry::new(row));
            changed(batch, entry)
        }
        Command::ReserveNeedles {
            volume_id,
            count,
            at_least,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} is not in the map"
                )));
            };
            let first = entry.row.needle_high_water.max(1);
            let end = first.saturating_add(count).min(MAX_SEQ + 1);
            if end.saturating_sub(first) < at_least {
                return Ok(Applied::Refused(format!(
                    "volume {volume_id} has fewer than {at_least} needle ids left"
                )));
            }
            entry.row.needle_high_water = end;
            db::put_volume(batch, &entry.row);
            Applied::Needles { first, end }
        }
        Command::VolumeReported {
            volume_id,
            state,
            tier,
            stale,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            let row = &mut entry.row;
            row.state = state;
            row.tier = tier;
            for server in stale {
                if row.replicas.contains(&server) && !row.stale.contains(&server) {
                    row.stale.push(server);
                }
            }
            changed(batch, entry)
        }
        Command::CaughtUp {
            volume_id,
            server_id,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            entry.row.stale.retain(|s| *s != server_id);
            changed(batch, entry)
        }
        Command::Replaced {
            volume_id,
            lost,
            target,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            let row = &mut entry.row;
            if row.replicas.contains(&target) {
                return Ok(Applied::Done);
            }
            match row
                .replicas
                .iter_mut()
                .find(|s| Some(s.as_str()) == lost.as_deref())
            {
                Some(slot) => *slot = target.clone(),
                None => row.replicas.push(target.clone()),
            }
            row.stale
                .retain(|s| Some(s.as_str()) != lost.as_deref() && *s != target);
            if Some(row.server_id.as_str()) == lost.as_deref() {
                row.server_id = target;
            }
            changed(batch, entry)
        }
        Command::RemoveReplica {
            volume_id,
            server_id,
        } => {
            let Some(entry) = inner.volumes.get_mut(&volume_id) else {
                return Ok(Applied::Done);
            };
            let row = &mut entry.row;
            row.replicas.retain(|s| *s != server_id);
            row.stale.retain(|s| *s != server_id);
            if row.server_id == server_id {
                row.server_id = row.replicas.first().cloned().unwrap_or_default();
            }
            changed(batch, entry)
        }
        Command::ForgetVolume { volume_id } => {
            inner.volumes.remove(&volume_id);
            db::delete_volume(batch, volume_id);
            if inner.repair_jobs.remove(&volume_id).is_some() {
                db::delete_repair_job(batch, volume_id);
            }
            Applied::Done
        }
        Command::RepairStarted { job } => {
            let job: RepairJobRow = decode(&job)?;
            if !inner.volumes.contains_key(&job.volume_id) {
                return Ok(Applied::Refused(format!(
                    "volume {} is not in the map",
                    job.volume_id
                )));
            }
            db::put_repair_job(batch, &job);
            inner.repair_jobs.insert(job.volume_id, job);
            Applied::Done
        }
        Command::RepairEnded { volume_id, target } => {
            if inner
                .repair_jobs
                .get(&volume_id)
                .is_some_and(|job| job.target == target)
            {
                inner.repair_jobs.remove(&volume_id);
                db::delete_repair_job(batch, volume_id);
            }
            Applied::Done
        }
        Command::RevokeToken {
            token_id,
            expires_at,
            now,
        } => {
            let expired: Vec<String> = inner
                .revoked
                .iter()
                .filter(|(_, until)| **until < now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                inner.revoked.remove(&id);
                db::delete_revoked(batch, &id);
            }
            if expires_at >= now {
                db::put_revoked(
                    batch,
                    &db::RevokedToken {
                        token_id: token_id.clone(),
                        expires_at,
                    },
                );
                inner.revoked.insert(token_id, expires_at);
            }
            Applied::Done
        }
        Command::RecordCapacity { sample, keep_since } => {
            let sample: hayloft_proto::CapacitySample = decode(&sample)?;
            db::put_sample(batch, &sample, keep_since);
            Applied::Done
        }
    })
}

/// `count` blob ids from sequence `first` of a volume, with fresh cookies.
fn blobs(volume_id: u32, first: u64, count: u64) -> Vec<AssignedBlob> {
    let mut rng = rand::rng();
    (first..first + count)
        .map(|seq| {
            let needle = needle_in(VolumeId(volume_id), seq as u32);
            let cookie = Cookie(rng.random());
            AssignedBlob {
                blob_id: BlobId { needle, cookie }.to_string(),
                volume_id,
                needle_id: needle.0,
                cookie: cookie.0,
                grant: String::new(),
            }
        })
        .collect()
}

/// A volume's state after its server's report: moving, cold or restoring as
/// reported; sealed once it is sealed (a writable volume, or one back from a
/// move); otherwise as it was.
fn reported_state(current: i32, status: &VolumeStatus) -> i32 {
    match VolumeState::try_from(status.state).unwrap_or_default() {
        reported @ (VolumeState::Moving | VolumeState::Cold | VolumeState::Restoring) => {
            reported as i32
        }
        _ if status.sealed => VolumeState::Sealed as i32,
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use hayloft_proto::VolumeStatus;

    /// A one-node group over the database in `dir`, leading.
    async fn cluster(dir: &std::path::Path) -> (Arc<Cluster>, Raft) {
        let db = Arc::new(Db::open(dir).unwrap());
        let cluster =
            Arc::new(Cluster::load(Arc::clone(&db), DirectoryConfig::default(), 1).unwrap());
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
        let (data, applied, membership) = cluster.snapshot().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let copy = Cluster::load(Arc::clone(&db), DirectoryConfig::default(), 2).unwrap();
        copy.install(&data, applied, membership).unwrap();
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
        }
    }

    #[tokio::test]
    async fn unknown_volumes_are_adopted_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, raft) = cluster(dir.path()).await;
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
        assert_eq!(cluster.lookup(&[7], &[]).unwrap()[0].locations.len(), 1);
        assert!(cluster.assign("", 1).await.unwrap().is_none());
        raft.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_volume_registered_a_moment_ago_is_not_called_degraded() {
        // The window in `register_volume` between the Raft entry applying
        // and its copies being recorded as reported: a heartbeat answered
        // there once called the new volume degraded (vs1's last report did
        // not list it), and the server refused the first writes to it.
        let dir = tempfile::tempdir().unwrap();
        let (cluster, raft) = cluster(dir.path()).await;
        for server in ["vs0", "vs1"] {
            cluster
                .heartbeat(heartbeat_of(server, vec![]))
                .await
                .unwrap();
        }
        let plan = cluster.plan_new_volume(Tier::Hot, "").await.unwrap();
        let servers = vec!["vs0".to_owned(), "vs1".to_owned()];
        let row = VolumeRow {
            id: plan.volume_id,
            tier: Tier::Hot as i32,
            state: VolumeState::Writable as i32,
            server_id: "vs0".into(),
            needle_high_water: 1,
            created_at: now_unix(),
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
            .find(|v| v.volume_id == plan.volume_id)
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
        raft.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn ids_are_never_handed_out_twice_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let (cluster, raft) = cluster(dir.path()).await;
            cluster.heartbeat(heartbeat(vec![])).await.unwrap();
            let volume = match cluster.status().volumes.first() {
                Some(v) => v.status.as_ref().unwrap().volume_id,
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
                    volume_id: volume,
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
            raft.shutdown().await.unwrap();
        }
        assert_eq!(seen.len(), 150_000);
    }

    #[tokio::test]
    async fn a_snapshot_installed_elsewhere_holds_the_same_map() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, raft) = cluster(dir.path()).await;
        cluster.heartbeat(heartbeat(vec![])).await.unwrap();
        let plan = cluster.plan_new_volume(Tier::Hot, "photos").await.unwrap();
        cluster
            .register_volume(plan.volume_id, "photos", Tier::Hot, &["vs0".to_owned()])
            .await
            .unwrap();
        let (blobs, _) = cluster.assign("photos", 10).await.unwrap().unwrap();
        let (_, applied, membership) = cluster.snapshot().unwrap();
        raft.shutdown().await.unwrap();

        let (_other, db, copy) = installed_elsewhere(&cluster);
        assert_eq!(copy.applied_state(), (applied, membership));
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
        let row = |c: &Cluster| {
            c.inner.lock().volumes[&plan.volume_id]
                .row
                .needle_high_water
        };
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
        assert_eq!(reopened.applied_state().0, applied);
    }

    #[tokio::test]
    async fn repair_jobs_are_replicated_state_and_end_only_for_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, raft) = cluster(dir.path()).await;
        cluster.heartbeat(heartbeat(vec![])).await.unwrap();
        let plan = cluster.plan_new_volume(Tier::Hot, "photos").await.unwrap();
        let id = plan.volume_id;
        cluster
            .register_volume(id, "photos", Tier::Hot, &["vs0".to_owned()])
            .await
            .unwrap();
        let job = |volume_id: u32, target: &str| RepairJobRow {
            volume_id,
            target: target.into(),
            kind: "replace".into(),
            lost: "vs0".into(),
            started_at: 1_700_000_000,
            term: 0,
        };
        // No job for a volume the map does not hold.
        assert!(cluster.start_repair(job(id + 1, "vs1")).await.is_err());
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
        raft.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn revoked_tokens_are_replicated_state_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, raft) = cluster(dir.path()).await;
        let gate = cluster.revocations();
        let later = now_unix() + 3600;
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
        cluster.revoke_token("old", now_unix() - 10).await.unwrap();
        assert!(!gate.contains("old"));
        cluster.revoke_token("soon", now_unix()).await.unwrap();
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
        raft.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_database_from_before_raft_is_taken_over_with_nothing_lost() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As a directory without Raft left it: rows, no log, no applied
            // log id.
            let db = Db::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            db::put_next_volume_id(&mut batch, 8);
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
        let (cluster, raft) = cluster(dir.path()).await;
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
        assert_eq!(plan.volume_id, 8);
        raft.shutdown().await.unwrap();
    }
}
