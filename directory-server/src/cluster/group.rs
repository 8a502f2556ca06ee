//! The directory group as the cluster sees it: the [`Consensus`] trait it
//! proposes through, leadership, and the entry points the consensus layer
//! calls to apply committed entries, take and install snapshots.

use futures::future::BoxFuture;

use super::*;

/// How long a read index may wait for a majority.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

/// Leadership as this node's consensus sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The current term.
    pub term: u64,
    /// This node leads in `term`.
    pub leading: bool,
    /// Another node this one takes for the leader (never itself: a leader
    /// removed from the group steps down and may still remember leading).
    pub other: Option<u64>,
    /// That node's address, if known.
    pub other_addr: Option<String>,
}

/// What the cluster needs of the directory group's consensus: openraft
/// implements it in `consensus/`; a one-node implementation (`solo`) lets
/// the cluster's unit tests run without starting Raft.
pub trait Consensus: Send + Sync {
    /// Commits `command` through the log and answers what applying it
    /// answered, once this node applied it. Only the leader can; elsewhere
    /// [`Error::NotLeader`] names the leader, if known.
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Applied>>;
    /// Confirms with a majority of the group that this node still leads,
    /// and waits until it has applied every entry committed before (a read
    /// index).
    fn confirm_leadership(&self) -> BoxFuture<'_, Result<()>>;
    /// Leadership as of now, without asking anyone.
    fn leader(&self) -> Leadership;
    /// This node's view of the group, for `hayloft status`.
    fn node_status(&self) -> hayloft_proto::NodeStatus;
}

impl Cluster {
    /// Hands the cluster its consensus (once, at start).
    pub(crate) fn set_consensus(&self, consensus: std::sync::Arc<dyn Consensus>) {
        let _ = self.consensus.set(consensus);
    }

    /// This node's consensus.
    fn consensus(&self) -> Result<&dyn Consensus> {
        self.consensus
            .get()
            .map(|c| c.as_ref())
            .ok_or(Error::NotRunning)
    }

    /// Commits `command` through the Raft log and answers what applying it
    /// answered. Only the leader can; elsewhere the error names the leader.
    pub(crate) async fn propose(&self, command: Command) -> Result<Applied> {
        let consensus = self.consensus()?;
        let started = std::time::Instant::now();
        let applied = consensus.propose(command).await?;
        metrics::histogram!("hayloft_directory_raft_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(applied)
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
        let consensus = self.consensus()?;
        let started = std::time::Instant::now();
        let confirmed =
            tokio::time::timeout(READ_INDEX_TIMEOUT, consensus.confirm_leadership()).await;
        metrics::histogram!("hayloft_directory_read_index_seconds")
            .record(started.elapsed().as_secs_f64());
        confirmed.unwrap_or(Err(Error::NoMajority(READ_INDEX_TIMEOUT)))
    }

    /// Ok if this node leads the directory group (setting up its soft state
    /// the first time in a term); otherwise the error names the leader, if
    /// one is known.
    pub fn leader_check(&self) -> Result<()> {
        let leadership = self.consensus()?.leader();
        if !leadership.leading {
            return Err(Error::NotLeader {
                leader: leadership.other,
                addr: leadership.other_addr,
            });
        }
        let mut inner = self.inner.lock();
        if inner.led_term != leadership.term {
            Self::lead(&mut inner, leadership.term);
        }
        Ok(())
    }

    /// This node's view of the directory group.
    pub fn node_status(&self) -> hayloft_proto::NodeStatus {
        match self.consensus.get() {
            Some(consensus) => consensus.node_status(),
            None => hayloft_proto::NodeStatus {
                node_id: self.node_id,
                role: "shutdown".into(),
                ..Default::default()
            },
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
    pub(super) fn lead(inner: &mut Inner, term: u64) {
        let now = unix_now();
        for server in inner.state.servers.values_mut() {
            server.last_heartbeat = server.last_heartbeat.max(now);
        }
        inner.reported.clear();
        inner.extras.clear();
        inner.suspects.clear();
        inner.problems.clear();
        inner.adopted.clear();
        inner.shipped = None;
        inner.shipped_seen.clear();
        Self::forget_shards(inner);
        inner.led_term = term;
        inner.led_at = now;
        tracing::info!(term, "this directory node leads the group");
    }

    /// The consensus position the state reflects (read at start).
    pub(crate) fn position(&self) -> Position {
        self.inner.lock().state.position.clone()
    }

    /// Applies a committed log entry at `position`: its command, if any,
    /// to the map and, in one batch with the position, to the database.
    /// Deterministic: every node applies the same entries to the same state
    /// with the same result.
    pub(crate) fn apply(&self, command: Option<Command>, position: Position) -> Result<Applied> {
        let revokes = matches!(command, Some(Command::RevokeToken { .. }));
        let mut inner = self.inner.lock();
        let mut batch = WriteBatch::default();
        let applied = inner.state.apply(&mut batch, command, position)?;
        if revokes {
            self.revocations.set(inner.state.revoked.keys().cloned());
        }
        self.db.write(batch)?;
        Ok(applied)
    }

    /// The state machine as a snapshot: its bytes and the position they
    /// reflect, both as of one moment.
    pub(crate) fn snapshot(&self) -> Result<(Vec<u8>, Position)> {
        let inner = self.inner.lock();
        let snapshot = inner.state.to_snapshot(self.db.samples(0)?);
        Ok((snapshot.encode_to_vec(), inner.state.position.clone()))
    }

    /// Replaces the state machine with a snapshot from the leader, taken
    /// at `position`.
    pub(crate) fn install(&self, data: &[u8], position: Position) -> Result<()> {
        let mut snapshot = db::Snapshot::decode(data)
            .map_err(|_| Error::Corrupt("undecodable snapshot from the leader"))?;
        snapshot.applied = position.applied;
        snapshot.membership = position.membership;
        let mut inner = self.inner.lock();
        self.db.replace(&snapshot)?;
        inner.state = Replicated::from_snapshot(snapshot);
        inner.blocks.clear();
        self.revocations.set(inner.state.revoked.keys().cloned());
        Ok(())
    }
}
