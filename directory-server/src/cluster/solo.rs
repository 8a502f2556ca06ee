//! A one-node [`Consensus`] for the cluster's unit tests: this node always
//! leads (term 1), and a proposal is committed by applying it at once, at
//! the next index. No Raft, no network, no log: what the cluster does with
//! committed commands is tested on its own.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;

use super::*;

/// The one-node group.
pub(crate) struct Solo {
    cluster: Weak<Cluster>,
    /// The last index applied (held while applying, so entries apply in
    /// index order).
    index: Mutex<u64>,
}

impl Solo {
    /// Makes `cluster` the leader of a one-node group.
    pub(crate) fn start(cluster: &Arc<Cluster>) {
        cluster.set_consensus(Arc::new(Solo {
            cluster: Arc::downgrade(cluster),
            index: Mutex::new(0),
        }));
    }
}

impl Consensus for Solo {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Applied>> {
        Box::pin(async move {
            let cluster = self.cluster.upgrade().ok_or(Error::NotRunning)?;
            let mut index = self.index.lock();
            *index += 1;
            let position = Position {
                applied: index.to_string().into_bytes(),
                membership: b"solo".to_vec(),
            };
            cluster.apply(Some(command), position)
        })
    }

    fn confirm_leadership(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn leader(&self) -> Leadership {
        Leadership {
            term: 1,
            leading: true,
            other: None,
            other_addr: None,
        }
    }

    fn node_status(&self) -> hayloft_proto::NodeStatus {
        hayloft_proto::NodeStatus {
            node_id: self.cluster.upgrade().map_or(0, |c| c.node_id()),
            role: "leader".into(),
            term: 1,
            last_applied: *self.index.lock(),
            ..Default::default()
        }
    }
}
