//! openraft's log store and state machine over the directory's RocksDB.
//!
//! The log is the `raft_log` column family (key: entry index, u64
//! big-endian; value: JSON entry); vote, commit index, purge mark and the
//! last snapshot are in `raft_meta`. The state machine is the
//! [`Cluster`]: it applies entries to its map and to the default column
//! family (see [`crate::db`] and [`crate::replicated`]), with their log id
//! and membership as an opaque [`Position`] in the same batch.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Applied, TypeConfig};
use crate::Cluster;
use crate::db::{LOG_CF, META_CF, synced};
use crate::replicated::Position;

type StorageResult<T> = Result<T, StorageError<u64>>;

/// The last applied log id and the membership it left.
pub(crate) type AppliedState = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
const SNAPSHOT_META: &[u8] = b"snapshot_meta";
const SNAPSHOT_DATA: &[u8] = b"snapshot_data";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read(AnyError::new(&e)).into()
}

fn write_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn log_read_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn log_write_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn machine_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

/// The Raft log, vote and commit index.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> LogStore {
        LogStore { db }
    }

    fn log(&self) -> &ColumnFamily {
        self.db
            .cf_handle(LOG_CF)
            .expect("opened with the raft_log family")
    }

    fn meta(&self) -> &ColumnFamily {
        self.db
            .cf_handle(META_CF)
            .expect("opened with the raft_meta family")
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let Some(bytes) = self.db.get_cf(self.meta(), key).map_err(read_error)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(read_error)
    }

    fn put<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(write_error)?;
        let options = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.db
            .put_cf_opt(self.meta(), key, bytes, &options)
            .map_err(write_error)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let from = index_key(start);
        for item in self
            .db
            .iterator_cf(self.log(), IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(log_read_error)?;
            let index =
                u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                    log_read_error(std::io::Error::other("a log key is not 8 bytes"))
                })?);
            if !range.contains(&index) {
                break;
            }
            entries.push(serde_json::from_slice(&value).map_err(log_read_error)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self.get(LAST_PURGED)?;
        let last = match self.db.iterator_cf(self.log(), IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item.map_err(log_read_error)?;
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(&value).map_err(log_read_error)?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put(VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.put(COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.get::<Option<LogId<u64>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let value = serde_json::to_vec(&entry).map_err(log_write_error)?;
            batch.put_cf(self.log(), index_key(entry.log_id.index), value);
        }
        // Synced: an entry is acknowledged to the leader (and counted
        // towards a commit) only once it is on disk.
        let written = self.db.write_opt(batch, &synced());
        callback.log_io_completed(
            written
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        written.map_err(log_write_error)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.log(), index_key(log_id.index), index_key(u64::MAX));
        self.db.write_opt(batch, &synced()).map_err(log_write_error)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.put(LAST_PURGED, &log_id, true)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.log(), index_key(0), index_key(log_id.index + 1));
        self.db.write(batch).map_err(log_write_error)
    }
}

/// The state machine's position as openraft sees it: the last applied log
/// id and the membership it left (decoded from the opaque [`Position`]; an
/// empty one, from a database written before Raft, is none).
pub(crate) fn position(position: &Position) -> crate::Result<AppliedState> {
    let applied = match position.applied.as_slice() {
        [] => None,
        bytes => serde_json::from_slice(bytes)
            .map_err(|_| crate::Error::Corrupt("undecodable last applied log id"))?,
    };
    let membership = match position.membership.as_slice() {
        [] => StoredMembership::default(),
        bytes => serde_json::from_slice(bytes)
            .map_err(|_| crate::Error::Corrupt("undecodable Raft membership"))?,
    };
    Ok((applied, membership))
}

/// The opaque [`Position`] of `applied` and `membership`.
fn encode_position(
    applied: LogId<u64>,
    membership: &StoredMembership<u64, BasicNode>,
) -> StorageResult<Position> {
    Ok(Position {
        applied: serde_json::to_vec(&Some(applied)).map_err(machine_error)?,
        membership: serde_json::to_vec(membership).map_err(machine_error)?,
    })
}

/// The state machine: the cluster map.
pub(crate) struct StateMachine {
    cluster: Arc<Cluster>,
    log: LogStore,
    /// The membership as of the last entry applied (read from the state at
    /// first use; a membership entry or a snapshot changes it).
    membership: Option<StoredMembership<u64, BasicNode>>,
}

impl StateMachine {
    pub(crate) fn new(cluster: Arc<Cluster>, db: Arc<DB>) -> StateMachine {
        StateMachine {
            cluster,
            log: LogStore::new(db),
            membership: None,
        }
    }

    /// The cluster's position, decoded.
    fn applied_position(&self) -> StorageResult<AppliedState> {
        position(&self.cluster.position()).map_err(read_error)
    }

    /// Applies one committed entry to the cluster.
    fn apply_entry(&mut self, entry: Entry<TypeConfig>) -> StorageResult<Applied> {
        let membership = match self.membership.take() {
            Some(membership) => membership,
            None => self.applied_position()?.1,
        };
        let (command, membership) = match entry.payload {
            EntryPayload::Blank => (None, membership),
            EntryPayload::Normal(command) => (Some(command), membership),
            EntryPayload::Membership(changed) => {
                (None, StoredMembership::new(Some(entry.log_id), changed))
            }
        };
        let position = encode_position(entry.log_id, &membership)?;
        let applied = self
            .cluster
            .apply(command, position)
            .map_err(machine_error)?;
        self.membership = Some(membership);
        Ok(applied)
    }

    fn store_snapshot(
        &self,
        meta: &SnapshotMeta<u64, BasicNode>,
        data: &[u8],
    ) -> StorageResult<()> {
        let meta_bytes = serde_json::to_vec(meta).map_err(write_error)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.log.meta(), SNAPSHOT_META, meta_bytes);
        batch.put_cf(self.log.meta(), SNAPSHOT_DATA, data);
        self.log.db.write(batch).map_err(write_error)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, at) = self.cluster.snapshot().map_err(machine_error)?;
        let (last_log_id, last_membership) = position(&at).map_err(machine_error)?;
        let meta = SnapshotMeta {
            snapshot_id: match last_log_id {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term,
                    id.index,
                    crate::cluster::unix_now()
                ),
                None => format!("empty-{}", crate::cluster::unix_now()),
            },
            last_log_id,
            last_membership,
        };
        self.store_snapshot(&meta, &data)?;
        tracing::info!(index = ?meta.last_log_id.map(|id| id.index), bytes = data.len(),
            "directory snapshot taken");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StorageResult<AppliedState> {
        self.applied_position()
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        entries
            .into_iter()
            .map(|entry| self.apply_entry(entry))
            .collect()
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            cluster: Arc::clone(&self.cluster),
            log: self.log.clone(),
            membership: None,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let at = Position {
            applied: serde_json::to_vec(&meta.last_log_id).map_err(machine_error)?,
            membership: serde_json::to_vec(&meta.last_membership).map_err(machine_error)?,
        };
        self.cluster.install(&data, at).map_err(machine_error)?;
        self.membership = Some(meta.last_membership.clone());
        self.store_snapshot(meta, &data)?;
        tracing::info!(index = ?meta.last_log_id.map(|id| id.index), bytes = data.len(),
            "directory snapshot installed from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(meta) = self
            .log
            .get::<SnapshotMeta<u64, BasicNode>>(SNAPSHOT_META)?
        else {
            return Ok(None);
        };
        let data = self
            .log
            .db
            .get_cf(self.log.meta(), SNAPSHOT_DATA)
            .map_err(read_error)?
            .unwrap_or_default();
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
