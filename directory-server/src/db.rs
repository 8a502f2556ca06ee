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
//! | `v1/volume/<id: u32 big-endian>` | [`VolumeRow`] | synced when the needle high-water mark, state, replica set or stale copies change; unsynced for heartbeat stats |
//! | `v1/server/<server id>` | [`ServerRow`] | unsynced, on heartbeats |
//! | `v1/history/<unix secs: u64 big-endian>` | `CapacitySample` | unsynced, every `history_interval`; older than `history_retention` deleted |
//!
//! Big-endian volume ids make a prefix scan return volumes in id order.

use std::path::Path;

use hayloft_proto::{ServerLocation, VolumeStatus};
use rocksdb::{DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::error::{Error, Result};

const NEXT_VOLUME_ID: &[u8] = b"v1/next_volume_id";
const VOLUME_PREFIX: &[u8] = b"v1/volume/";
const SERVER_PREFIX: &[u8] = b"v1/server/";
const HISTORY_PREFIX: &[u8] = b"v1/history/";

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
}

impl VolumeRow {
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
}

/// Everything the directory persisted.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The next volume id to hand out.
    pub next_volume_id: u32,
    /// Every volume.
    pub volumes: Vec<VolumeRow>,
    /// Every server ever seen.
    pub servers: Vec<ServerRow>,
}

/// The RocksDB database.
pub struct Db {
    db: DB,
}

impl Db {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Db> {
        std::fs::create_dir_all(path).map_err(|e| Error::Io(path.to_owned(), e))?;
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path)?;
        Ok(Db { db })
    }

    /// Reads everything.
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
            }
        }
        Ok(snapshot)
    }

    /// Durably records that volume ids below `next` may be in use.
    pub fn put_next_volume_id(&self, next: u32) -> Result<()> {
        self.db
            .put_opt(NEXT_VOLUME_ID, next.to_le_bytes(), &synced())?;
        Ok(())
    }

    /// Writes a volume row; `sync` makes it durable before returning.
    pub fn put_volume(&self, row: &VolumeRow, sync: bool) -> Result<()> {
        let options = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.db.put_opt(
            volume_key(row.id),
            prost::Message::encode_to_vec(row),
            &options,
        )?;
        Ok(())
    }

    /// Records a capacity sample and drops those taken before `keep_since`.
    pub fn put_sample(
        &self,
        sample: &hayloft_proto::CapacitySample,
        keep_since: u64,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(
            history_key(sample.at),
            prost::Message::encode_to_vec(sample),
        );
        batch.delete_range(history_key(0), history_key(keep_since));
        self.db.write(batch)?;
        Ok(())
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

    /// Deletes a volume row, durably.
    pub fn delete_volume(&self, id: u32) -> Result<()> {
        self.db.delete_opt(volume_key(id), &synced())?;
        Ok(())
    }

    /// Writes a server row and volume stats in one batch (not synced: the
    /// next heartbeat refreshes them).
    pub fn put_heartbeat(&self, server: &ServerRow, volumes: &[VolumeRow]) -> Result<()> {
        let mut batch = WriteBatch::default();
        let id = server
            .location
            .as_ref()
            .map(|l| l.server_id.as_str())
            .unwrap_or_default();
        batch.put(
            [SERVER_PREFIX, id.as_bytes()].concat(),
            prost::Message::encode_to_vec(server),
        );
        for row in volumes {
            batch.put(volume_key(row.id), prost::Message::encode_to_vec(row));
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Flushes RocksDB's write-ahead log (on shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn volume_key(id: u32) -> Vec<u8> {
    [VOLUME_PREFIX, &id.to_be_bytes()].concat()
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|_| Error::Corrupt("undecodable record"))
}
