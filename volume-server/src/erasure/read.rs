//! Reads of erasure-coded volumes held here: a needle's pieces from the
//! shards held here, or from their holders (`EcReadShard`), and a piece
//! whose shard is lost, unreachable or corrupt restored from `k` others.
//!
//! Any holder serves any needle of the volume (every holder has the
//! volume's index and delete journal). A healthy read is one read of one
//! shard; a degraded one reads the piece's range, widened to 64-byte
//! units, from the other shards in parallel and uses the first `k` that
//! answer. The needle's checksum is verified on the bytes put together,
//! before any byte is served; bytes that fail it are restored once more
//! from other shards, never served.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hayloft_proto::{EcReadShardRequest, ServerLocation};
use hayloft_storage::erasure::{EcVolume, Piece, restore_piece};
use hayloft_storage::{BlobId, Error, Needle};

use crate::blocking::blocking;
use crate::replicate::Replication;

/// How long a holder has to answer a piece before the piece is restored
/// from the other shards instead.
pub const PIECE_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads from the shards of erasure-coded volumes, at the holders each
/// volume names (`EcVolume::holders`: from `EcInstall`, then from the
/// directory).
pub struct ErasureReads {
    /// Connections to the other holders (none: shards held here only).
    replication: Option<Arc<Replication>>,
}

impl std::fmt::Debug for ErasureReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureReads")
            .field("remote", &self.replication.is_some())
            .finish_non_exhaustive()
    }
}

/// Where a read's bytes came from, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Every piece from a shard held here.
    Here,
    /// Some piece from another holder, none restored.
    Holders,
    /// Some piece restored from other shards.
    Restored,
}

impl ErasureReads {
    /// Reads with peers reached through `replication`'s connections.
    pub fn new(replication: Arc<Replication>) -> Self {
        ErasureReads {
            replication: Some(replication),
        }
    }

    /// Reads from the shards held here only.
    pub fn local() -> Self {
        ErasureReads { replication: None }
    }

    /// Records the holders of `volume`'s shards (gRPC addresses, shard by
    /// shard), kept with the volume across restarts.
    pub fn set_holders(&self, volume: &EcVolume, holders: Vec<String>) {
        if let Err(error) = volume.set_holders(holders) {
            tracing::warn!(volume = %volume.id(), %error, "cannot record the holders");
        }
    }

    /// The holders of `volume`'s shards, shard by shard (empty if unknown).
    pub fn holders_of(&self, volume: &EcVolume) -> Vec<String> {
        volume.holders()
    }

    fn holder(&self, volume: &EcVolume, shard: u8) -> Option<String> {
        volume
            .holders()
            .get(usize::from(shard))
            .cloned()
            .filter(|addr| !addr.is_empty())
    }

    /// Reads a whole needle of `volume`, verified.
    pub async fn read(
        &self,
        volume: &Arc<EcVolume>,
        blob: BlobId,
    ) -> Result<(Needle, Served), Error> {
        let located = volume.locate(blob.needle)?;
        let mut pieces = Vec::with_capacity(located.pieces.len());
        let mut served = Served::Here;
        for &piece in &located.pieces {
            let (bytes, from) = self.piece(volume, piece).await?;
            served = served.max_of(from);
            pieces.push(bytes);
        }
        // Most needles are one piece: used as read, not copied.
        let record = if pieces.len() == 1 {
            pieces.swap_remove(0)
        } else {
            pieces.concat()
        };
        match volume.decode(blob.needle, blob.cookie, Bytes::from(record)) {
            Err(Error::Corrupt { .. }) => {
                // A shard gave wrong bytes: restore every piece from the
                // other shards (each piece's own shard left out).
                tracing::warn!(volume = %volume.id(), needle = %blob.needle,
                    "needle failed its checksum; restoring it from other shards");
                let mut record = Vec::new();
                for &piece in &located.pieces {
                    record.extend(self.restore(volume, piece).await?);
                }
                let needle = volume.decode(blob.needle, blob.cookie, Bytes::from(record))?;
                Ok((needle, Served::Restored))
            }
            other => other.map(|needle| (needle, served)),
        }
    }

    /// A piece: from the shard held here, else its holder, else restored.
    async fn piece(
        &self,
        volume: &Arc<EcVolume>,
        piece: Piece,
    ) -> Result<(Vec<u8>, Served), Error> {
        match self
            .read_shard(volume, piece.shard, piece.offset, piece.len)
            .await
        {
            Some((bytes, here)) => Ok((bytes, if here { Served::Here } else { Served::Holders })),
            None => Ok((self.restore(volume, piece).await?, Served::Restored)),
        }
    }

    /// `len` bytes of shard `shard` at `offset`, from here or its holder;
    /// `None` if neither answers in time. The flag: read here.
    async fn read_shard(
        &self,
        volume: &Arc<EcVolume>,
        shard: u8,
        offset: u64,
        len: u64,
    ) -> Option<(Vec<u8>, bool)> {
        if let Some(file) = volume.shard(shard) {
            // Cached bytes are read here, with no hand-off to a blocking
            // thread.
            if let Ok(Some(bytes)) = file.read_cached(offset, len) {
                return Some((bytes, true));
            }
            match blocking(move || file.read(offset, len)).await {
                Ok(Ok(bytes)) => return Some((bytes, true)),
                Ok(Err(error)) => {
                    tracing::warn!(volume = %volume.id(), shard, %error, "shard read failed");
                }
                Err(status) => tracing::warn!(%status, "shard read task failed"),
            }
        }
        let addr = self.holder(volume, shard)?;
        let mut client = self
            .replication
            .as_ref()?
            .client(&ServerLocation {
                server_id: addr.clone(),
                grpc_addr: addr.clone(),
                ..ServerLocation::default()
            })
            .ok()?;
        let request = EcReadShardRequest {
            volume_id: volume.id().0,
            shard: u32::from(shard),
            offset,
            length: len,
            verified: false,
        };
        match tokio::time::timeout(PIECE_TIMEOUT, client.ec_read_shard(request)).await {
            Ok(Ok(reply)) if reply.get_ref().data.len() as u64 == len => {
                Some((reply.into_inner().data.to_vec(), false))
            }
            Ok(Ok(_)) => {
                tracing::warn!(volume = %volume.id(), shard, %addr, "holder answered a short piece");
                None
            }
            Ok(Err(status)) => {
                tracing::warn!(volume = %volume.id(), shard, %addr, %status, "holder refused a piece");
                None
            }
            Err(_) => {
                tracing::warn!(volume = %volume.id(), shard, %addr, "holder did not answer in time");
                None
            }
        }
    }

    /// Restores `piece` from the same range of the other shards, read in
    /// parallel; the first `k` to answer are used.
    pub(crate) async fn restore(
        &self,
        volume: &Arc<EcVolume>,
        piece: Piece,
    ) -> Result<Vec<u8>, Error> {
        let layout = volume.layout();
        let range = piece.widened();
        let len = range.end - range.start;
        let k = usize::from(layout.code.data);
        let mut reads: FuturesUnordered<_> = (0..layout.code.shards() as u8)
            .filter(|&s| s != piece.shard)
            .map(|s| async move { (s, self.read_shard(volume, s, range.start, len).await) })
            .collect();
        let mut have = BTreeMap::new();
        while let Some((shard, bytes)) = reads.next().await {
            if let Some((bytes, _)) = bytes {
                have.insert(shard, bytes);
                if have.len() == k {
                    break;
                }
            }
        }
        drop(reads);
        restore_piece(layout, piece, &have)
    }
}

impl Served {
    /// The `source` label of the read metrics.
    pub fn source(self) -> crate::disk_reads::Source {
        match self {
            Served::Here | Served::Holders => crate::disk_reads::Source::Shards,
            Served::Restored => crate::disk_reads::Source::Restored,
        }
    }

    fn max_of(self, other: Served) -> Served {
        match (self, other) {
            (Served::Restored, _) | (_, Served::Restored) => Served::Restored,
            (Served::Holders, _) | (_, Served::Holders) => Served::Holders,
            _ => Served::Here,
        }
    }
}
