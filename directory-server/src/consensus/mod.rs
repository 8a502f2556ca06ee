//! The directory group's consensus: openraft over the directory's RocksDB
//! and its gRPC port.
//!
//! Every change to what must survive a failover (server registrations,
//! volumes with their replica sets, states and tiers, needle-id block and
//! volume-id reservations, capacity history) is a [`Command`] appended to
//! the Raft log and applied, once committed, by every node's state machine
//! ([`crate::replicated`], through `Cluster::apply`). Load figures from
//! heartbeats stay soft state on the leader. This module owns what is
//! openraft's: log ids, membership, terms; the state machine sees the log
//! position only as opaque bytes ([`crate::replicated::Position`]).
//!
//! - `group`: the cluster's [`Consensus`](crate::cluster::Consensus) trait
//!   over a Raft node (propose, confirm leadership, who leads).
//! - `store`: the log store and the state machine (openraft's storage-v2
//!   traits) in RocksDB column families.
//! - `membership`: adding and removing nodes.
//! - `network`: Raft messages over tonic, client and server.

// openraft's traits return its own error types, which are large by design.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

mod group;
pub(crate) mod membership;
pub(crate) mod network;
pub(crate) mod store;

pub(crate) use crate::replicated::{Applied, Command};
pub use network::RaftService;

openraft::declare_raft_types!(
    /// openraft's types for the directory group: node ids are `u64`, a node
    /// is its gRPC address, log entries carry [`Command`]s.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A running Raft node of the directory group.
pub type Raft = openraft::Raft<TypeConfig>;

/// Timing of the group.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears nothing for a random time in
    /// `election..2*election` starts an election.
    pub election: Duration,
    /// A snapshot is taken (and the log before it purged) every this many
    /// entries.
    pub snapshot_every: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(250),
            election: Duration::from_millis(1000),
            snapshot_every: 5_000,
        }
    }
}

/// openraft's configuration for the directory group.
pub(crate) fn config(timing: Timing) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let election = timing.election.as_millis() as u64;
    let config = openraft::Config {
        cluster_name: "hayloft-directory".into(),
        heartbeat_interval: timing.heartbeat.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // A snapshot every few thousand entries; the log behind it is
        // purged, keeping a fifth of that for followers a little behind
        // (further behind, they get the snapshot).
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: timing.snapshot_every / 5,
        purge_batch_size: (timing.snapshot_every / 5).max(1),
        install_snapshot_timeout: 10_000,
        // A chunk's JSON stays well under the gRPC message limit.
        snapshot_max_chunk_size: 1 << 20,
        ..openraft::Config::default()
    };
    config.validate().map(Arc::new)
}

/// Starts this node's Raft over `cluster` (its state machine) and the
/// database's log, and hands it to the cluster. `peers` is every node of the
/// group with its gRPC address, this one included.
///
/// A group is initialised once, by its lowest node id, on that node's first
/// start (an empty log and no vote), unless it was told to `join` an
/// existing group or one of its peers already belongs to one (it was wiped
/// or replaced): such a node waits to be added. A database written before
/// Raft is taken over as it is. In a group of several, that state then goes to the others
/// as a snapshot: the first leader snapshots and purges its log at once.
pub(crate) async fn start(
    cluster: &Arc<crate::Cluster>,
    db: &crate::db::Db,
    node_id: u64,
    peers: &std::collections::BTreeMap<u64, String>,
    join: bool,
    timing: Timing,
    credential: hayloft_proto::Credential,
) -> crate::Result<Raft> {
    use crate::Error;
    let config = config(timing).map_err(|e| Error::Config(format!("raft timing: {e}")))?;
    let takeover = db.has_state()? && store::position(&cluster.position())?.0.is_none();
    let raft = Raft::new(
        node_id,
        config,
        network::Network {
            credential: credential.clone(),
        },
        store::LogStore::new(db.handle()),
        store::StateMachine::new(Arc::clone(cluster), db.handle()),
    )
    .await
    .map_err(|e| Error::Consensus {
        doing: "cannot start the directory's Raft node",
        reason: e.to_string(),
    })?;
    cluster.set_consensus(Arc::new(group::Group::new(raft.clone(), node_id)));
    let initialized = raft.is_initialized().await.map_err(|e| Error::Consensus {
        doing: "cannot read the node's Raft state",
        reason: e.to_string(),
    })?;
    let first = peers.keys().next() == Some(&node_id);
    let in_a_group = if !initialized && first && !join && peers.len() > 1 {
        membership::peers_in_a_group(node_id, peers, &credential).await
    } else {
        None
    };
    if let Some((peer, addr)) = &in_a_group {
        tracing::warn!(
            node = node_id,
            peer,
            addr,
            "a peer already belongs to a group: this empty node does not initialise one, \
             and waits to be added (hayloft directory add-node)"
        );
    }
    if initialized
        && let Some(own) = peers.get(&node_id)
        && stale_own_address(&raft.metrics().borrow(), node_id, own).is_some()
    {
        tokio::spawn(readdress_alone(raft.clone(), node_id, own.clone()));
    }
    if !initialized && first && !join && in_a_group.is_none() {
        let members: std::collections::BTreeMap<u64, openraft::BasicNode> = peers
            .iter()
            .map(|(id, addr)| (*id, openraft::BasicNode::new(addr)))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(
                node = node_id,
                nodes = peers.len(),
                takeover,
                "directory group initialised"
            ),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => {
                return Err(Error::Consensus {
                    doing: "cannot initialise the directory group",
                    reason: e.to_string(),
                });
            }
        }
        if takeover && peers.len() > 1 {
            tokio::spawn(hand_over_takeover(raft.clone()));
        }
    }
    Ok(raft)
}

/// `Some(the stored address)` if this node is its group's only member and
/// the membership records it at another address than `own`.
fn stale_own_address(
    metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>,
    node_id: u64,
    own: &str,
) -> Option<Option<String>> {
    let membership = metrics.membership_config.membership();
    let alone = membership.voter_ids().eq([node_id]) && membership.learner_ids().next().is_none();
    let stored = membership.get_node(&node_id).map(|n| n.addr.clone());
    (alone && stored.as_deref() != Some(own)).then_some(stored)
}

/// A group of one whose node now listens on another address (port 0, or a
/// changed `--listen`) records the new one once it leads, so status and
/// joining nodes do not see the old address. Only for a group of this node
/// alone: there, replacing its own entry cannot split anything; in a larger
/// group an address changes by removing and adding the node.
async fn readdress_alone(raft: Raft, node_id: u64, own: String) {
    let leading = raft
        .wait(None)
        .metrics(
            |m| m.state.is_leader() && m.current_leader == Some(node_id),
            "leader",
        )
        .await;
    let Ok(metrics) = leading else {
        return;
    };
    // Checked again as leader: the membership may have changed since.
    let Some(stored) = stale_own_address(&metrics, node_id, &own) else {
        return;
    };
    let nodes = std::collections::BTreeMap::from([(node_id, openraft::BasicNode::new(&own))]);
    match raft
        .change_membership(openraft::ChangeMembers::SetNodes(nodes), false)
        .await
    {
        Ok(_) => tracing::info!(node = node_id, old = ?stored, new = %own,
            "this node's address in the group updated"),
        Err(error) => tracing::warn!(node = node_id, %error,
            "cannot record this node's new address in the group"),
    }
}

/// Once leader, snapshots the state taken over from a database written
/// before Raft and purges the log, so the other nodes start from the
/// snapshot (the log alone does not hold that state).
async fn hand_over_takeover(raft: Raft) {
    let leading = raft
        .wait(None)
        .metrics(
            |m| m.state.is_leader() && m.last_applied.is_some(),
            "leader",
        )
        .await;
    if leading.is_err() || raft.trigger().snapshot().await.is_err() {
        return;
    }
    if let Ok(metrics) = raft
        .wait(None)
        .metrics(|m| m.snapshot.is_some(), "snapshot taken")
        .await
        && let Some(snapshot) = metrics.snapshot
        && raft.trigger().purge_log(snapshot.index).await.is_ok()
    {
        tracing::info!(
            index = snapshot.index,
            "state taken over from the pre-Raft database goes to the other nodes as a snapshot"
        );
    }
}

/// Publishes the node's Raft state as metrics until the node stops:
/// `hayloft_directory_raft_term`, `_leader` (1 on the leader),
/// `_last_log_index`, `_last_applied`, `_apply_lag` (entries in the log not
/// yet applied), `_snapshot_index`, `_purged_index`, and
/// `hayloft_directory_raft_leader_changes_total`, and
/// `hayloft_directory_map_volumes` (volumes in this node's copy of the map).
/// The cluster gauges (servers alive, volumes by health...) come from the
/// leader alone: the others hear no heartbeats.
pub(crate) async fn publish_metrics(raft: Raft, cluster: Arc<crate::Cluster>) {
    let mut watch = raft.metrics();
    let mut leader = None;
    loop {
        {
            let m = watch.borrow_and_update();
            let index = |id: Option<openraft::LogId<u64>>| id.map_or(0, |id| id.index) as f64;
            metrics::gauge!("hayloft_directory_raft_term").set(m.current_term as f64);
            metrics::gauge!("hayloft_directory_raft_leader").set(if m.state.is_leader() {
                1.0
            } else {
                0.0
            });
            let last_log = m.last_log_index.unwrap_or(0) as f64;
            metrics::gauge!("hayloft_directory_raft_last_log_index").set(last_log);
            metrics::gauge!("hayloft_directory_raft_last_applied").set(index(m.last_applied));
            metrics::gauge!("hayloft_directory_raft_apply_lag")
                .set((last_log - index(m.last_applied)).max(0.0));
            metrics::gauge!("hayloft_directory_raft_snapshot_index").set(index(m.snapshot));
            metrics::gauge!("hayloft_directory_raft_purged_index").set(index(m.purged));
            if m.current_leader != leader {
                if m.current_leader.is_some() {
                    metrics::counter!("hayloft_directory_raft_leader_changes_total").increment(1);
                    tracing::info!(leader = ?m.current_leader, term = m.current_term,
                        "directory group leader");
                }
                leader = m.current_leader;
            }
        }
        metrics::gauge!("hayloft_directory_map_volumes").set(cluster.volume_count() as f64);
        if watch.changed().await.is_err() {
            return;
        }
    }
}
