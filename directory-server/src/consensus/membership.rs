//! Online membership changes of the directory group: a node joins as a
//! learner, catches up (from the log, or a snapshot when the log it needs
//! was purged), then becomes a voter; a node leaves through openraft's
//! joint consensus, the leader included.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use super::Raft;
use crate::{Error, Result};

/// How long a node being added may take to answer `Node`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The group's membership as this node sees it: voters and learners,
/// "id=addr".
pub fn membership(raft: &Raft) -> hayloft_proto::Membership {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let mut answer = hayloft_proto::Membership::default();
    for (id, node) in membership.nodes() {
        let member = format!("{id}={}", node.addr);
        if voters.contains(id) {
            answer.voters.push(member);
        } else {
            answer.learners.push(member);
        }
    }
    answer
}

/// Adds node `id` at `addr` to the group: probes it (it must answer `Node`
/// as `id` and belong to no other group), adds it as a learner, waits up to
/// `catch_up` for its log to reach the leader's, then makes it a voter.
/// Adding a member again with the same address is a no-op.
pub async fn add_node(
    raft: &Raft,
    id: u64,
    addr: &str,
    catch_up: Duration,
    credential: &hayloft_proto::Credential,
) -> Result<hayloft_proto::Membership> {
    if addr.trim().is_empty() || id == 0 {
        return Err(Error::NodeWithoutAddress);
    }
    let (known, is_voter) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let known = membership.get_node(&id).map(|n| n.addr.clone());
        (known, membership.voter_ids().any(|v| v == id))
    };
    match known.as_deref() {
        Some(known) if known != addr => {
            return Err(Error::MemberElsewhere {
                id,
                known: known.to_owned(),
            });
        }
        Some(_) if is_voter => return Ok(membership(raft)),
        _ => {}
    }
    probe(id, addr, known.is_some(), credential).await?;
    let added = raft
        .add_learner(id, BasicNode::new(addr), false)
        .await
        .map_err(write_error)?;
    let target = added.log_id;
    let caught_up = raft
        .wait(Some(catch_up))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .is_some_and(|matched| matched.as_ref() >= Some(&target))
            },
            "the new node catches up",
        )
        .await;
    if caught_up.is_err() {
        return Err(Error::LearnerBehind {
            id,
            addr: addr.to_owned(),
            waited: catch_up,
        });
    }
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(write_error)?;
    tracing::info!(node = id, addr, "node added to the directory group");
    Ok(membership(raft))
}

/// Removes node `id` from the group (as a voter and a learner). The
/// leader may remove itself: it keeps leading until the change commits,
/// then steps down and another node is elected.
pub async fn remove_node(raft: &Raft, id: u64) -> Result<hayloft_proto::Membership> {
    let (voters, member) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        (voters, membership.get_node(&id).is_some())
    };
    if !member {
        return Err(Error::NodeNotFound(id));
    }
    if voters.len() == 1 && voters.contains(&id) {
        return Err(Error::OnlyVoter(id));
    }
    let change = if voters.contains(&id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.change_membership(change, false)
        .await
        .map_err(write_error)?;
    tracing::info!(node = id, "node removed from the directory group");
    Ok(membership(raft))
}

/// Asks the node at `addr` who it is: it must answer as `id`, and belong
/// to no group unless it is already a `member` of this one (a node of
/// another group would be torn between two leaders).
async fn probe(
    id: u64,
    addr: &str,
    member: bool,
    credential: &hayloft_proto::Credential,
) -> Result<()> {
    let status = hayloft_proto::ask_node(addr, PROBE_TIMEOUT, credential)
        .await
        .map_err(|e| Error::NodeSilent {
            id,
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    if status.node_id != id {
        return Err(Error::WrongNode {
            id,
            addr: addr.to_owned(),
            found: status.node_id,
        });
    }
    if !member && !status.members.is_empty() {
        return Err(Error::NodeInAGroup {
            id,
            addr: addr.to_owned(),
            members: status.members.join(","),
        });
    }
    Ok(())
}

/// openraft's refusal of a membership change, as the directory's error.
fn write_error(error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Error {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => Error::NotLeader {
            leader: forward.leader_id,
            addr: forward.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::MembershipBusy(e.to_string())
        }
        e => Error::Consensus {
            doing: "the directory group could not change",
            reason: e.to_string(),
        },
    }
}

/// The first of `peers` (other than this node) that already belongs to a
/// group, if any answers within a second: a node that finds one must not
/// initialise a group of its own (it was wiped or replaced, and waits to
/// be added back).
pub(crate) async fn peers_in_a_group(
    node_id: u64,
    peers: &BTreeMap<u64, String>,
    credential: &hayloft_proto::Credential,
) -> Option<(u64, String)> {
    for (id, addr) in peers.iter().filter(|(id, _)| **id != node_id) {
        if let Ok(status) = hayloft_proto::ask_node(addr, Duration::from_secs(1), credential).await
            && !status.members.is_empty()
        {
            return Some((*id, addr.clone()));
        }
    }
    None
}
