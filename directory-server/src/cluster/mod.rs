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
//!
//! The rooms, each an `impl Cluster` over the same state: `assign` (ids and
//! new volumes), `erasure` (erasure-coded volumes), `decode` (their decode back to copies), `heartbeat`, `health` (each copy's and volume's), `repairs`
//! (repair jobs, replica sets, extra copies), `revoke` (revoked tokens), `shards`
//! (shards as servers report them: rebuilds, orphans), `seal` (a volume
//! sealed by hand),
//! `report` (status, capacity, gauges), `group` (proposing through Raft,
//! leadership, the state machine's entry points). The replicated state and
//! its apply function are in [`crate::replicated`], free of Raft; the
//! cluster reaches the group through the [`Consensus`] trait (openraft in
//! `consensus/`, or [`solo`] in unit tests).

mod assign;
mod decode;
mod erasure;
mod group;
mod health;
mod heartbeat;
mod repairs;
mod report;
mod revoke;
mod seal;
mod shards;
mod shipping;
#[cfg(test)]
pub(crate) mod solo;
#[cfg(test)]
mod tests;

pub use decode::DecodeSource;
pub use erasure::{EncodeSource, stored_bytes};
pub use group::{Consensus, Leadership};
pub use seal::SealStart;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use hayloft_proto::{
    AssignedBlob, HeartbeatRequest, Replica, ReplicaHealth, ServerLocation, ServerStatus,
    StatusResponse, Tier, VolumeHealth, VolumeLocation, VolumeRecord, VolumeReplicas, VolumeState,
    VolumeStatus,
};
use hayloft_storage::types::{needle_in, volume_of};
use hayloft_storage::{BlobId, Cookie, NeedleId, VolumeId};
use parking_lot::Mutex;
use prost::Message;
use rand::Rng;
use rocksdb::WriteBatch;

use crate::DirectoryConfig;
use crate::db::{self, Db, RepairJobRow, ServerRow, VolumeRow};
use crate::error::{Error, Result};
use crate::placement::{self, Candidate};
use crate::replicated::{Applied, Command, MAX_SEQ, Position, Replicated};

/// Needle ids are reserved through the Raft log this many at a time, so
/// allocation costs one commit per block rather than per upload.
pub const NEEDLE_BLOCK: u64 = 100_000;

/// How long after its creation a copy a heartbeat leaves out is still
/// taken as present (the heartbeat may have been sent before it existed).
pub const JUST_CREATED_SECS: u64 = 15;

pub(crate) use hayloft_storage::unix_now;

struct Inner {
    /// The replicated state (the same on every node of the group).
    state: Replicated,
    /// Soft: needle sequence numbers of each volume this node reserved and
    /// has not handed out yet. Nobody else ever hands them out (each
    /// reservation starts at the committed high-water mark), so a leader
    /// may use them in any term; lost on a restart, never reused.
    blocks: HashMap<VolumeId, std::ops::Range<u64>>,
    /// Soft state: the volumes each server reported in its last heartbeat
    /// (or was just asked to create). Rebuilt from heartbeats after a
    /// restart; until a server's first one, its copies count as present.
    reported: HashMap<String, HashMap<VolumeId, VolumeStatus>>,
    /// Soft state: copies reported by servers outside their volume's replica
    /// set (left behind by a repair): removed once the volume is healthy.
    extras: HashSet<(VolumeId, String)>,
    /// Soft state: volume ids whose creation failed (their copies are being
    /// deleted; a heartbeat that still reports one is not an adoption).
    abandoned: HashSet<VolumeId>,
    /// Soft state: servers that could not be reached to create a volume,
    /// left out of placement until their next heartbeat.
    suspects: HashSet<String>,
    /// Soft state: why the last volume creation of a collection failed
    /// (Unix seconds, reason), cleared by the next success.
    problems: BTreeMap<String, (u64, String)>,
    /// Volume ids reserved by [`Cluster::plan_new_volume`] whose creation is
    /// in flight: heartbeats may report them before they are registered.
    creating: HashSet<VolumeId>,
    round_robin: usize,
    /// Soft state: the shards each server reported, and what follows.
    shards: shards::ShardState,
    /// The term whose leadership the soft state was set up for.
    led_term: u64,
    /// Unix seconds when this node's soft state was set up for `led_term`.
    led_at: u64,
    /// Soft state: (volume, region) pairs whose region answered that it
    /// keeps copies of the volume, since this node leads (`AdoptVolumes`).
    adopted: HashSet<(VolumeId, String)>,
    /// Soft state: each server's lag behind other regions, from its last
    /// heartbeat.
    region_lags: HashMap<String, Vec<hayloft_proto::RegionLag>>,
    /// Soft state: bytes fetched from each other region, cumulative (see
    /// `CapacitySample.shipped_bytes`); `None` until taken from the last
    /// sample since this node leads.
    shipped: Option<HashMap<String, u64>>,
    /// Soft state: each (server, region)'s `shipped_bytes` at its last
    /// heartbeat, since this node leads.
    shipped_seen: HashMap<(String, String), u64>,
}

impl Inner {
    /// `state` with no soft state yet.
    fn new(state: Replicated) -> Inner {
        Inner {
            state,
            blocks: HashMap::new(),
            reported: HashMap::new(),
            extras: HashSet::new(),
            abandoned: HashSet::new(),
            suspects: HashSet::new(),
            problems: BTreeMap::new(),
            creating: HashSet::new(),
            round_robin: 0,
            shards: shards::ShardState::default(),
            led_term: 0,
            led_at: 0,
            adopted: HashSet::new(),
            region_lags: HashMap::new(),
            shipped: None,
            shipped_seen: HashMap::new(),
        }
    }
}

/// A degraded volume as repair sees it.
#[derive(Debug, Clone)]
pub struct RepairView {
    /// The volume.
    pub volume_id: VolumeId,
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
    /// The directory group's consensus (set once it is started).
    consensus: std::sync::OnceLock<std::sync::Arc<dyn Consensus>>,
    /// Serialises changes that are checked against the state before being
    /// proposed (a copy leaving or joining a replica set).
    changes: tokio::sync::Mutex<()>,
    /// The revoked token ids, for the token gate (kept equal to
    /// `inner.state.revoked`).
    revocations: std::sync::Arc<hayloft_access::grpc::Revoked>,
    /// The deployment's regions as configured (checked at load): this
    /// group's region number decides the range of its volume ids.
    regions: hayloft_proto::regions::Regions,
}

/// A volume to create: its id, and the servers to create its copies on.
pub struct NewVolume {
    /// The id reserved for it.
    pub volume_id: VolumeId,
    /// Where to create its copies, in placement order.
    pub servers: Vec<ServerLocation>,
}
impl Cluster {
    /// Loads the cluster from the database; `node_id` is this node's id in
    /// the directory group.
    pub fn load(db: std::sync::Arc<Db>, config: DirectoryConfig, node_id: u64) -> Result<Cluster> {
        let regions = config.resolve_regions()?;
        let inner = Inner::new(Replicated::from_snapshot(db.load()?));
        let revocations = std::sync::Arc::new(hayloft_access::grpc::Revoked::default());
        revocations.set(inner.state.revoked.keys().cloned());
        Ok(Cluster {
            db,
            config,
            revocations,
            inner: Mutex::new(inner),
            node_id,
            consensus: std::sync::OnceLock::new(),
            changes: tokio::sync::Mutex::new(()),
            regions,
        })
    }

    /// The deployment's regions as this directory knows them.
    pub fn regions(&self) -> &hayloft_proto::regions::Regions {
        &self.regions
    }

    /// The regions collections replicate to unless their own
    /// `replicate_to` says otherwise.
    pub fn replicate_to(&self) -> &[String] {
        &self.config.replicate_to
    }

    /// This node's id in the directory group.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Flushes the database (on shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()
    }
}
