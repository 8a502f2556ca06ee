//! The cluster's [`Consensus`] over a Raft node: proposals are
//! `client_write`s, leadership is a read index, and who leads comes from
//! the node's metrics.

// openraft's errors are large by design.
#![allow(clippy::result_large_err)]

use futures::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};

use super::{Applied, Command, Raft};
use crate::cluster::{Consensus, Leadership};
use crate::{Error, Result};

/// A running Raft node of the directory group, as the cluster uses it.
pub(crate) struct Group {
    raft: Raft,
    node_id: u64,
}

impl Group {
    pub(crate) fn new(raft: Raft, node_id: u64) -> Group {
        Group { raft, node_id }
    }

    /// The leader a refusal names, never this node itself (a node removed
    /// from the group may still name itself).
    fn not_leader(&self, forward: ForwardToLeader<u64, openraft::BasicNode>) -> Error {
        let other = forward.leader_id.filter(|id| *id != self.node_id);
        Error::NotLeader {
            leader: other,
            addr: forward
                .leader_node
                .filter(|_| other.is_some())
                .map(|n| n.addr),
        }
    }
}

impl Consensus for Group {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Applied>> {
        Box::pin(async move {
            match self.raft.client_write(command).await {
                Ok(response) => Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    Err(Error::NotLeader {
                        leader: forward.leader_id,
                        addr: forward.leader_node.map(|n| n.addr),
                    })
                }
                Err(e) => Err(Error::Consensus {
                    doing: "the directory group could not commit a change",
                    reason: e.to_string(),
                }),
            }
        })
    }

    fn confirm_leadership(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    Err(self.not_leader(forward))
                }
                Err(e) => Err(Error::Consensus {
                    doing: "this node could not confirm that it leads",
                    reason: e.to_string(),
                }),
            }
        })
    }

    fn leader(&self) -> Leadership {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let other = metrics.current_leader.filter(|id| *id != self.node_id);
        let other_addr = other.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        Leadership {
            term: metrics.current_term,
            leading: metrics.state.is_leader() && metrics.current_leader == Some(self.node_id),
            other,
            other_addr,
        }
    }

    fn node_status(&self) -> hayloft_proto::NodeStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let index = |id: Option<openraft::LogId<u64>>| id.map_or(0, |id| id.index);
        let membership = m.membership_config.membership();
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
            members: membership
                .nodes()
                .map(|(id, node)| format!("{id}={}", node.addr))
                .collect(),
            learners: membership
                .learner_ids()
                .filter_map(|id| {
                    let node = membership.get_node(&id)?;
                    Some(format!("{id}={}", node.addr))
                })
                .collect(),
        }
    }
}
