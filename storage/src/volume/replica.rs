//! What the copies of a replicated volume compare and exchange.
//!
//! Copies hold the same needles, not the same bytes: each appends in its own
//! order and compacts on its own. So they compare needle *states*: for each
//! needle id, live (with its cookie and length) or deleted. A deleted state
//! always wins: needle ids are never handed out twice, so a tombstone for an
//! id is final, and a copy that has one never takes the needle back.
//!
//! - [`Volume::range_digests`]: one order-independent hash per range of
//!   2^bits needle ids, so copies find the ranges they disagree on cheaply.
//! - [`Volume::needle_states`]: the states in one range, to compare in detail.
//! - [`Volume::read_for_copy`], [`Volume::begin_copy`]: a needle read from
//!   one copy (checksum verified, expiry ignored) and written into another,
//!   byte for byte the same record (so the same checksum and ETag).
//! - [`Volume::delete_copied`]: a tombstone from another copy, written even
//!   if this copy never had the needle.

use std::sync::Arc;

use super::{Needle, NeedleWriter, Volume};
use crate::error::{Error, Result};
use crate::format::{NEEDLE_HEADER_LEN, NeedleHeader, NeedleMeta};
use crate::mapped::MappedFile;
use crate::types::{Cookie, NeedleId};

/// One needle as copies compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedleState {
    /// The needle.
    pub id: NeedleId,
    /// Its cookie.
    pub cookie: Cookie,
    /// Length of its data (0 when deleted).
    pub data_len: u64,
    /// True if a tombstone for it is stored.
    pub deleted: bool,
}

/// The needles of one range of ids, summarised (which are live, which
/// deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeDigest {
    /// First id of the range (a multiple of the range size).
    pub start: NeedleId,
    /// Needles (live or deleted) in it.
    pub count: u64,
    /// Sum of a 64-bit mix of each needle's id and deleted flag: equal sets
    /// give equal digests whatever order they were written in.
    pub hash: u64,
}

impl NeedleState {
    /// The 64-bit mix of this state summed into a [`RangeDigest`].
    pub fn mix(&self) -> u64 {
        let mut x = self.id.0 ^ u64::from(self.cookie.0).rotate_left(32);
        x ^= self.data_len.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if self.deleted {
            x = !x;
        }
        // splitmix64's finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
}

fn header(map: &MappedFile, offset: u64) -> Option<NeedleHeader> {
    NeedleHeader::decode(map.slice(offset, NEEDLE_HEADER_LEN as u64)?).ok()
}

impl Volume {
    /// The state of every needle with `from <= id < to`, sorted by id. A
    /// record whose header cannot be read is left out (as if missing here, so
    /// that it is fetched again from a good copy).
    pub fn needle_states(&self, from: NeedleId, to: NeedleId) -> Vec<NeedleState> {
        let (live, deleted, files) = {
            let state = self.state.read();
            let live: Vec<(NeedleId, u64)> = state.index.range(from, to).collect();
            let deleted: Vec<(NeedleId, u64)> = state
                .deleted
                .iter()
                .filter(|(id, _)| (from..to).contains(*id))
                .map(|(id, offset)| (*id, *offset))
                .collect();
            (live, deleted, Arc::clone(&state.files))
        };
        let mut states: Vec<NeedleState> = deleted
            .into_iter()
            .filter_map(|(id, offset)| {
                let header = header(&files.map, offset)?;
                (header.needle_id == id).then_some(NeedleState {
                    id,
                    cookie: header.cookie,
                    data_len: 0,
                    deleted: true,
                })
            })
            .collect();
        let deleted_ids: std::collections::HashSet<NeedleId> =
            states.iter().map(|s| s.id).collect();
        states.extend(live.into_iter().filter_map(|(id, offset)| {
            if deleted_ids.contains(&id) {
                return None;
            }
            let header = header(&files.map, offset)?;
            (header.needle_id == id).then_some(NeedleState {
                id,
                cookie: header.cookie,
                data_len: u64::from(header.data_len),
                deleted: false,
            })
        }));
        states.sort_unstable_by_key(|s| s.id);
        states
    }

    /// A digest of each non-empty range of `2^bits` needle ids, sorted.
    ///
    /// Computed from memory alone (the index and the tombstones), never
    /// from the data file, so comparing copies costs no disk reads. It
    /// covers which needles are live and which deleted: a needle id is only
    /// ever written by one upload, so two copies holding it live hold the
    /// same needle (its bytes are scrub's concern). The read lock is held
    /// for one pass over the index (tens of milliseconds for ten million
    /// needles); writers wait for it only to publish a batch.
    pub fn range_digests(&self, bits: u32) -> Vec<RangeDigest> {
        let bits = bits.min(63);
        let mut digests: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
        let mut add = |id: NeedleId, deleted: bool| {
            let digest = digests.entry(id.0 >> bits << bits).or_default();
            digest.0 += 1;
            digest.1 = digest.1.wrapping_add(
                NeedleState {
                    id,
                    cookie: Cookie(0),
                    data_len: 0,
                    deleted,
                }
                .mix(),
            );
        };
        let state = self.state.read();
        for (id, _) in state.index.iter() {
            if !state.deleted.contains_key(&id) {
                add(id, false);
            }
        }
        for id in state.deleted.keys() {
            add(*id, true);
        }
        drop(state);
        digests
            .into_iter()
            .map(|(start, (count, hash))| RangeDigest {
                start: NeedleId(start),
                count,
                hash,
            })
            .collect()
    }

    /// Reads a live needle to copy it to another copy of the volume: its
    /// record checksum is verified, its expiry is not looked at.
    pub fn read_for_copy(&self, id: NeedleId, cookie: Cookie) -> Result<Needle> {
        let (offset, files, header) = self.find(id, cookie)?;
        let decoded = self.verify_record(&files.map, offset)?;
        let meta = decoded.meta.clone();
        let checksum = decoded.checksum;
        let data = crate::mapped::mapped_bytes(
            &files.map,
            offset + NEEDLE_HEADER_LEN as u64,
            u64::from(header.data_len),
        )
        .ok_or_else(|| self.corrupt(offset, "record past end of file"))?;
        Ok(Needle {
            id,
            data,
            meta,
            checksum,
        })
    }

    /// Starts writing a needle copied from another copy of the volume. Unlike
    /// [`Volume::begin_write`] it works on a sealed volume (a copy catching up
    /// with a full one). Like it, it refuses a needle deleted here, and a
    /// needle live here is compared, not written again.
    pub fn begin_copy(
        self: &Arc<Self>,
        id: NeedleId,
        cookie: Cookie,
        data_len: u64,
        meta: NeedleMeta,
    ) -> Result<NeedleWriter> {
        let claim = self.claim_for_copy(id)?;
        self.begin_write_inner(claim, cookie, data_len, meta, true)
    }

    /// Stores a tombstone for `id` copied from another copy of the volume,
    /// whether or not this copy has the needle (it must never take it back).
    /// Returns false if it was deleted here already. A live needle here with
    /// another cookie is a different needle: refused as a wrong cookie.
    pub fn delete_copied(&self, id: NeedleId, cookie: Cookie) -> Result<bool> {
        // Claimed, so that no write of the id lands between the check and
        // the tombstone (its entry would follow the tombstone's and make
        // the needle live again).
        let _claim = match self.claim(id) {
            Ok(claim) => claim,
            Err(Error::NeedleDeleted { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        match self.find(id, cookie) {
            Ok(_) | Err(Error::NeedleNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.append_tombstone(id, cookie)?;
        Ok(true)
    }

    /// True if a tombstone for `id` is stored.
    pub fn is_deleted(&self, id: NeedleId) -> bool {
        self.state.read().deleted.contains_key(&id)
    }

    /// Every needle with a tombstone stored here, in id order.
    pub fn deleted_ids(&self) -> Vec<NeedleId> {
        let mut ids: Vec<NeedleId> = self.state.read().deleted.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}
