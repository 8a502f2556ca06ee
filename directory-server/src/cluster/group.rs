//! The directory group: proposing through Raft, leadership, and the
//! state machine's entry points (apply, snapshot, install).

use super::*;

impl Cluster {
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
    pub(super) fn lead(inner: &mut Inner, term: u64) {
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
}
