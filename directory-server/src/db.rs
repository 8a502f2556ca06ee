//! The directory's persistent state in RocksDB.
//!
//! # Schema
//!
//! Keys are prefixed with the schema version (`v1/`); values are protobuf
//! messages (prost), so fields can be added without a migration. A future
//! `v2/` layout would be written by a migration that reads `v1/` keys.
//!
//! | key | value | written |
//! |---|---|---|
//! | `v1/next_volume_id` | u32, little-endian | synced, before a volume id is used |
//! | `v1/volume/<id: u32 big-endian>` | [`VolumeRow`] (with its `ErasureLayout` once erasure-coded) | synced when the needle high-water mark, state, replica set, stale copies or layout change; unsynced for heartbeat stats |
//! | `v1/server/<server id>` | [`ServerRow`] | unsynced, on heartbeats |
//! | `v1/history/<unix secs: u64 big-endian>` | `CapacitySample` | unsynced, every `history_interval`; older than `history_retention` deleted |
//! | `v1/repair/<volume id: u32 big-endian>` | [`RepairJobRow`] | when the leader starts a repair; deleted when it ends |
//! | `v1/revoked/<token id>` | [`RevokedToken`] | when a token is revoked; deleted once it would have expired anyway |
//! | `v1/raft/applied` | JSON openraft `LogId` | with every applied entry, in the same batch |
//! | `v1/raft/membership` | JSON openraft `StoredMembership` | with every applied entry, in the same batch |
//!
//! Big-endian volume ids make a prefix scan return volumes in id order.
//!
//! Those keys (the default column family) are the Raft state machine: they
//! change only when a committed log entry is applied, in one unsynced
//! `WriteBatch` per entry that also records the entry's log id. The Raft log
//! lives beside them in the `raft_log` column family (key: index, u64
//! big-endian; value: JSON openraft `Entry`) and the node's vote, commit
//! index, purge mark and last snapshot in `raft_meta`; log appends and votes
//! are synced. All share one write-ahead log, so a crash loses at most a
//! suffix of unsynced applies, and the entries after the recorded log id are
//! applied again from the log.

use std::path::Path;
use std::sync::Arc;

use hayloft_proto::{ServerLocation, VolumeStatus};
use hayloft_storage::VolumeId;
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::error::{Error, Result};

const NEXT_VOLUME_ID: &[u8] = b"v1/next_volume_id";
const VOLUME_PREFIX: &[u8] = b"v1/volume/";
const SERVER_PREFIX: &[u8] = b"v1/server/";
const HISTORY_PREFIX: &[u8] = b"v1/history/";
const REPAIR_PREFIX: &[u8] = b"v1/repair/";
const REVOKED_PREFIX: &[u8] = b"v1/revoked/";
const APPLIED: &[u8] = b"v1/raft/applied";
const MEMBERSHIP: &[u8] = b"v1/raft/membership";

/// Column family of the Raft log.
pub const LOG_CF: &str = "raft_log";
/// Column family of the Raft vote, commit index, purge mark and snapshot.
pub const META_CF: &str = "raft_meta";

fn history_key(at: u64) -> Vec<u8> {
    let mut key = HISTORY_PREFIX.to_vec();
    key.extend_from_slice(&at.to_be_bytes());
    key
}

/// A volume as the directory records it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeRow {
    /// The volume's id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Its collection.
    #[prost(string, tag = "2")]
    pub collection: String,
    /// `hayloft.v1.Tier`.
    #[prost(int32, tag = "3")]
    pub tier: i32,
    /// `hayloft.v1.VolumeState`.
    #[prost(int32, tag = "4")]
    pub state: i32,
    /// The volume server holding it.
    #[prost(string, tag = "5")]
    pub server_id: String,
    /// Every needle sequence number below this may have been handed out;
    /// allocation resumes here after a restart, so no id is handed out twice.
    #[prost(uint64, tag = "6")]
    pub needle_high_water: u64,
    /// Unix seconds.
    #[prost(uint64, tag = "7")]
    pub created_at: u64,
    /// The latest stats its server reported.
    #[prost(message, optional, tag = "8")]
    pub status: Option<VolumeStatus>,
    /// Servers holding its copies, in placement order. Rows written before
    /// replication have none: their one copy is on `server_id`.
    #[prost(string, repeated, tag = "9")]
    pub replicas: Vec<String>,
    /// Copies it should have (0 in rows written before replication: 1).
    #[prost(uint32, tag = "10")]
    pub replication: u32,
    /// Copies that missed a write or delete (a forward to them failed):
    /// stale until they have caught up.
    #[prost(string, repeated, tag = "11")]
    pub stale: Vec<String>,
    /// Set once the volume is erasure-coded: its code, lengths, the holder
    /// of each shard and each shard's digest. Its `replicas` are then
    /// copies left to remove (none once the encode has finished).
    #[prost(message, optional, tag = "12")]
    pub erasure: Option<hayloft_proto::ErasureLayout>,
    /// Set on a volume another region created and this one keeps copies
    /// of (`AdoptVolumes`): every region holding it, its creator first.
    /// Empty for this region's own volumes (their regions come from the
    /// collection's `replicate_to`).
    #[prost(string, repeated, tag = "20")]
    pub regions: Vec<String>,
}

impl VolumeRow {
    /// The volume's id.
    pub fn volume_id(&self) -> VolumeId {
        VolumeId(self.id)
    }

    /// True once the volume is erasure-coded.
    pub fn is_erasure_coded(&self) -> bool {
        self.erasure.is_some()
    }

    /// Upgrades a row written before replication (one copy, on `server_id`).
    pub fn migrate(&mut self) {
        if self.replicas.is_empty() && !self.server_id.is_empty() {
            self.replicas.push(self.server_id.clone());
        }
        if self.replication == 0 {
            self.replication = 1;
        }
    }
}

/// A volume server as the directory records it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerRow {
    /// Its id and addresses.
    #[prost(message, optional, tag = "1")]
    pub location: Option<ServerLocation>,
    /// Unix seconds of its last heartbeat.
    #[prost(uint64, tag = "2")]
    pub last_heartbeat: u64,
    /// Free bytes on its hot disks.
    #[prost(uint64, tag = "3")]
    pub free_hot_bytes: u64,
    /// Free bytes on its warm disks.
    #[prost(uint64, tag = "4")]
    pub free_warm_bytes: u64,
    /// Why its key ring did not reload (soft, from its last heartbeat).
    #[prost(string, tag = "5")]
    pub keyring_problem: String,
}

/// A revoked token: refused by every server until it would have expired.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RevokedToken {
    /// The token's id (`jti`).
    #[prost(string, tag = "1")]
    pub token_id: String,
    /// Unix seconds after which the entry may go (the token has expired).
    #[prost(uint64, tag = "2")]
    pub expires_at: u64,
}

/// A repair the leader started: kept in the replicated state until it
/// ends, so that a new leader resumes it on the same target instead of
/// planning it afresh (perhaps elsewhere, leaving a half-made copy).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RepairJobRow {
    /// The volume repaired.
    #[prost(uint32, tag = "1")]
    pub volume_id: u32,
    /// The server whose copy is made whole (or made).
    #[prost(string, tag = "2")]
    pub target: String,
    /// What the repair does: `catch-up`, `replace`, `add`, `catch-up-cold`,
    /// `replace-cold`, `move`, `rebuild-shard` (a shard of an
    /// erasure-coded volume rebuilt on `target`), `encode` (the volume
    /// erasure-coded from the copy on `target`), `decode` (turned back
    /// into copies; `target` is the first of them), `to-cold` (an
    /// erasure-coded volume moved to the cold tier; `target` uploads) or
    /// `reencode` (re-encoded without its deleted needles; `target`
    /// rebuilds and compacts the data file).
    #[prost(string, tag = "3")]
    pub kind: String,
    /// For `replace` and `replace-cold`: the server whose copy is lost;
    /// for `rebuild-shard`, the holder whose shard is lost.
    #[prost(string, tag = "4")]
    pub lost: String,
    /// Unix seconds when the first leader started it.
    #[prost(uint64, tag = "5")]
    pub started_at: u64,
    /// The term of the leader that started it.
    #[prost(uint64, tag = "6")]
    pub term: u64,
    /// For `rebuild-shard`: the shard's index (rows written before have
    /// none: 0, and no other kind reads it).
    #[prost(uint32, tag = "7")]
    pub shard: u32,
    /// For `encode`: the code (`K+M`).
    #[prost(string, tag = "8")]
    pub code: String,
    /// For `encode`: the largest block asked for.
    #[prost(uint64, tag = "9")]
    pub max_block: u64,
    /// For `encode` and `decode`: bytes a second (0: unthrottled).
    #[prost(uint64, tag = "10")]
    pub rate: u64,
    /// For `decode`, `to-cold` and `reencode`: the token of the holders'
    /// delete fences, so that a new leader can lift them.
    #[prost(uint64, tag = "11")]
    pub fence_token: u64,
    /// For `encode`: the shard holders placed, shard by shard; for
    /// `decode` and `to-cold`: the servers the copies are built on.
    #[prost(string, repeated, tag = "12")]
    pub servers: Vec<String>,
    /// For `to-cold` (an erasure-coded volume moved to the cold tier): the
    /// bucket, key prefix and storage class of its object.
    #[prost(string, tag = "13")]
    pub bucket: String,
    /// For `to-cold`: the key prefix.
    #[prost(string, tag = "14")]
    pub prefix: String,
    /// For `to-cold`: the storage class.
    #[prost(string, tag = "15")]
    pub storage_class: String,
    /// For `reencode`: the layout it read (an encoded `ErasureLayout`, the
    /// generation it replaces): still recorded, nothing was committed.
    #[prost(bytes = "vec", tag = "16")]
    pub layout: Vec<u8>,
}

impl RepairJobRow {
    /// The id of the volume repaired.
    pub fn volume_id(&self) -> VolumeId {
        VolumeId(self.volume_id)
    }
}

/// Everything the directory persisted: its state machine.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// The next volume id to hand out.
    #[prost(uint32, tag = "1")]
    pub next_volume_id: u32,
    /// Every volume.
    #[prost(message, repeated, tag = "2")]
    pub volumes: Vec<VolumeRow>,
    /// Every server ever seen.
    #[prost(message, repeated, tag = "3")]
    pub servers: Vec<ServerRow>,
    /// The capacity history, oldest first.
    #[prost(message, repeated, tag = "4")]
    pub history: Vec<hayloft_proto::CapacitySample>,
    /// JSON of the last applied Raft log id (empty: none, e.g. a database
    /// written before Raft).
    #[prost(bytes = "vec", tag = "5")]
    pub applied: Vec<u8>,
    /// JSON of the last applied Raft membership (empty: none).
    #[prost(bytes = "vec", tag = "6")]
    pub membership: Vec<u8>,
    /// Repairs started and not ended.
    #[prost(message, repeated, tag = "7")]
    pub repair_jobs: Vec<RepairJobRow>,
    /// Revoked tokens.
    #[prost(message, repeated, tag = "8")]
    pub revoked: Vec<RevokedToken>,
}

/// Each column family's write buffer (memtable): flushed to an SST file past
/// this. Also the size (x 1.1) RocksDB preallocates for a write-ahead log.
/// Memtables are resident memory of the server: three column families at
/// 1 MiB each is room for thousands of Raft entries and volume updates
/// between flushes, which a directory's write rate makes rare anyway.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Waits, at most `within`, until no one holds `db` any more (RocksDB
/// releases its lock when the last handle drops), so that the same process
/// can open it again; says so if it is still held.
pub async fn wait_closed(db: &std::sync::Weak<Db>, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while db.strong_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if db.strong_count() > 0 {
        tracing::warn!("the directory's database is still held by a task after it stopped");
    }
}

/// The RocksDB database.
pub struct Db {
    db: Arc<DB>,
}

impl Db {
    /// Opens (or creates) the database in `path`, with the Raft column
    /// families (added to a database written before Raft).
    pub fn open(path: &Path) -> Result<Db> {
        std::fs::create_dir_all(path).map_err(|e| Error::Io(path.to_owned(), e))?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Flush a column family whose updates alone keep old write-ahead
        // logs alive (the Raft log's, once its entries are purged).
        options.set_max_total_wal_size(16 << 20);
        // Sized for what a directory holds (megabytes, not gigabytes), so
        // that it does not take a small disk's last space: RocksDB
        // preallocates each write-ahead log file at 1.1 x the write buffer
        // (64 MiB by default: a 70 MB file for a few KiB of entries), and
        // keeps up to 1,000 old info logs; the manifest is preallocated at 4 MiB.
        options.set_keep_log_file_num(3);
        options.set_max_log_file_size(4 << 20);
        options.set_max_manifest_file_size(16 << 20);
        options.set_manifest_preallocation_size(256 << 10);
        let families = ["default", LOG_CF, META_CF].map(|name| {
            let mut family = Options::default();
            family.set_write_buffer_size(WRITE_BUFFER_BYTES);
            ColumnFamilyDescriptor::new(name, family)
        });
        let db = DB::open_cf_descriptors(&options, path, families)?;
        Ok(Db { db: Arc::new(db) })
    }

    /// The database handle, shared with the Raft log store.
    pub fn handle(&self) -> Arc<DB> {
        Arc::clone(&self.db)
    }

    /// Writes a batch of state machine changes (unsynced: see the module
    /// docs).
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.db.write(batch)?;
        Ok(())
    }

    /// Replaces the whole state machine with `snapshot` (a snapshot sent by
    /// the leader), in one batch.
    pub fn replace(&self, snapshot: &Snapshot) -> Result<()> {
        let mut batch = WriteBatch::default();
        for prefix in [
            VOLUME_PREFIX,
            SERVER_PREFIX,
            HISTORY_PREFIX,
            REPAIR_PREFIX,
            REVOKED_PREFIX,
        ] {
            let mut end = prefix.to_vec();
            *end.last_mut().expect("prefixes end in '/'") += 1;
            batch.delete_range(prefix, end.as_slice());
        }
        batch.put(NEXT_VOLUME_ID, snapshot.next_volume_id.to_le_bytes());
        for row in &snapshot.volumes {
            put_volume(&mut batch, row);
        }
        for row in &snapshot.servers {
            put_server(&mut batch, row);
        }
        for sample in &snapshot.history {
            put_sample(&mut batch, sample, 0);
        }
        for job in &snapshot.repair_jobs {
            put_repair_job(&mut batch, job);
        }
        for revoked in &snapshot.revoked {
            put_revoked(&mut batch, revoked);
        }
        put_applied(&mut batch, &snapshot.applied, &snapshot.membership);
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Reads the state machine, all but the capacity history (read when
    /// asked for, by [`Db::samples`]).
    pub fn load(&self) -> Result<Snapshot> {
        let mut snapshot = Snapshot {
            next_volume_id: 1,
            ..Snapshot::default()
        };
        if let Some(bytes) = self.db.get(NEXT_VOLUME_ID)? {
            let raw: [u8; 4] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt("next_volume_id is not 4 bytes"))?;
            snapshot.next_volume_id = u32::from_le_bytes(raw);
        }
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item?;
            if key.starts_with(VOLUME_PREFIX) {
                snapshot.volumes.push(decode(&value)?);
            } else if key.starts_with(SERVER_PREFIX) {
                snapshot.servers.push(decode(&value)?);
            } else if key.starts_with(REPAIR_PREFIX) {
                snapshot.repair_jobs.push(decode(&value)?);
            } else if key.starts_with(REVOKED_PREFIX) {
                snapshot.revoked.push(decode(&value)?);
            } else if &*key == APPLIED {
                snapshot.applied = value.to_vec();
            } else if &*key == MEMBERSHIP {
                snapshot.membership = value.to_vec();
            }
        }
        Ok(snapshot)
    }

    /// Whether the database holds state written before it was a Raft state
    /// machine (taken over as it is when the node starts a group).
    pub fn has_state(&self) -> Result<bool> {
        Ok(self.db.get(NEXT_VOLUME_ID)?.is_some())
    }

    /// Capacity samples taken at or after `since`, oldest first.
    pub fn samples(&self, since: u64) -> Result<Vec<hayloft_proto::CapacitySample>> {
        let start = history_key(since);
        let mut samples = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, rocksdb::Direction::Forward))
        {
            let (key, value) = item?;
            if !key.starts_with(HISTORY_PREFIX) {
                break;
            }
            samples.push(decode(&value)?);
        }
        Ok(samples)
    }

    /// Flushes RocksDB's write-ahead log (on shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// Adds a volume row to `batch`.
pub fn put_volume(batch: &mut WriteBatch, row: &VolumeRow) {
    batch.put(
        volume_key(row.volume_id()),
        prost::Message::encode_to_vec(row),
    );
}

/// Adds the deletion of a volume row to `batch`.
pub fn delete_volume(batch: &mut WriteBatch, id: VolumeId) {
    batch.delete(volume_key(id));
}

/// Adds a repair job to `batch` (replacing the volume's previous one).
pub fn put_repair_job(batch: &mut WriteBatch, job: &RepairJobRow) {
    batch.put(
        [REPAIR_PREFIX, &job.volume_id.to_be_bytes()].concat(),
        prost::Message::encode_to_vec(job),
    );
}

/// Adds a revoked token to `batch`.
pub fn put_revoked(batch: &mut WriteBatch, revoked: &RevokedToken) {
    batch.put(
        [REVOKED_PREFIX, revoked.token_id.as_bytes()].concat(),
        prost::Message::encode_to_vec(revoked),
    );
}

/// Adds the deletion of a revoked token's entry to `batch`.
pub fn delete_revoked(batch: &mut WriteBatch, token_id: &str) {
    batch.delete([REVOKED_PREFIX, token_id.as_bytes()].concat());
}

/// Adds the deletion of a volume's repair job to `batch`.
pub fn delete_repair_job(batch: &mut WriteBatch, volume_id: VolumeId) {
    batch.delete([REPAIR_PREFIX, &volume_id.0.to_be_bytes()].concat());
}

/// Adds a server row to `batch`.
pub fn put_server(batch: &mut WriteBatch, row: &ServerRow) {
    let id = row
        .location
        .as_ref()
        .map(|l| l.server_id.as_str())
        .unwrap_or_default();
    batch.put(
        [SERVER_PREFIX, id.as_bytes()].concat(),
        prost::Message::encode_to_vec(row),
    );
}

/// Adds the next volume id to `batch`.
pub fn put_next_volume_id(batch: &mut WriteBatch, next: VolumeId) {
    batch.put(NEXT_VOLUME_ID, next.0.to_le_bytes());
}

/// Adds a capacity sample to `batch`, dropping those taken before
/// `keep_since`.
pub fn put_sample(batch: &mut WriteBatch, sample: &hayloft_proto::CapacitySample, keep_since: u64) {
    batch.put(
        history_key(sample.at),
        prost::Message::encode_to_vec(sample),
    );
    if keep_since > 0 {
        batch.delete_range(history_key(0), history_key(keep_since));
    }
}

/// Adds the last applied log id and membership (JSON) to `batch`.
pub fn put_applied(batch: &mut WriteBatch, applied: &[u8], membership: &[u8]) {
    batch.put(APPLIED, applied);
    batch.put(MEMBERSHIP, membership);
}

pub(crate) fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn volume_key(id: VolumeId) -> Vec<u8> {
    [VOLUME_PREFIX, &id.0.to_be_bytes()].concat()
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|_| Error::Corrupt("undecodable record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes `dir`'s files take on disk (preallocated blocks included).
    fn allocated(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().blocks() * 512)
            .sum()
    }

    #[test]
    fn a_small_directory_takes_a_few_megabytes_of_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        put_next_volume_id(&mut batch, VolumeId(7));
        db.write(batch).unwrap();
        // With RocksDB's defaults: a 70 MB write-ahead log and a 4 MiB
        // manifest, preallocated, for a few bytes of state.
        let used = allocated(dir.path());
        assert!(used < 8 << 20, "{used} bytes on disk");
    }
}
