//! Write-once needle ids (invariant 10): every write first *claims* its id.
//!
//! A claim is taken before a write reserves room, and before a primary
//! forwards the write to the other copies, so that two writes of one id never
//! both proceed on one copy:
//!
//! - an id with a tombstone is refused ([`Error::NeedleDeleted`]);
//! - an id claimed by a write still in progress is refused
//!   ([`Error::WriteInProgress`]: retry, and learn the first write's fate);
//! - an id that is live here makes the write an *exact retry* check: the
//!   write is answered with the stored needle's receipt, with nothing
//!   written, if it carries the same cookie, the same data and the same
//!   metadata (content type, file name, expiry; the last-modified time a
//!   server stamps is not compared), and refused ([`Error::NeedleExists`])
//!   otherwise;
//! - any other id is free: the claim is held until the write's index entry
//!   is applied (by the group commit that makes it durable), or until the
//!   write fails or is abandoned.
//!
//! Recognising a retry costs nothing on the common path (the index lookup a
//! write makes anyway, plus one `HashSet` insert and remove): only a write of
//! a live id reads the stored record, once, and compares bytes, not
//! checksums, so that no crafted collision passes for a retry.
//!
//! Locks: `claims` is taken before `state` (read), never while holding
//! `writer` or `sync`; the group commit releases handed-over claims after it
//! has applied their entries and dropped `state`.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Volume, WriteReceipt};
use crate::error::{Error, Result};
use crate::format::{NEEDLE_HEADER_LEN, NeedleMeta};
use crate::types::{Cookie, NeedleId};

/// The ids of a volume claimed by writes in progress.
pub(crate) type Claims = Arc<Mutex<HashSet<NeedleId>>>;

/// A needle id held for one write; see [`Volume::claim`]. Dropped, it frees
/// the id, unless the write was queued (then the group commit that applies
/// the write frees it).
#[must_use = "a claim is what lets a write proceed"]
pub struct Claim {
    claims: Claims,
    id: NeedleId,
    /// The id is live in the volume: the write must be an exact retry.
    live: bool,
    /// Still to be freed by this claim's drop.
    held: bool,
    /// For a copy's write (forwarded by the primary): it may use the
    /// volume's catch-up room ([`super::catch_up_limit`]).
    copy: bool,
}

impl Claim {
    /// The claimed id.
    pub fn id(&self) -> NeedleId {
        self.id
    }

    /// True if the id is already written here: the write is answered as an
    /// exact retry, or refused.
    pub fn is_retry(&self) -> bool {
        self.live
    }

    /// True for a claim taken with [`Volume::claim_for_copy`].
    pub fn is_copy(&self) -> bool {
        self.copy
    }

    /// The write was queued for the next group commit, which frees the id
    /// once the write is applied to the index.
    pub(super) fn hand_over(mut self) {
        self.held = false;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.held {
            self.claims.lock().remove(&self.id);
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("id", &self.id)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// Claims `id` for a write: refused if the id is deleted or being
    /// written; granted otherwise, noting whether it is live here (then the
    /// write can only be an exact retry). See the module doc.
    pub fn claim(&self, id: NeedleId) -> Result<Claim> {
        let mut claims = self.claims.lock();
        if claims.contains(&id) {
            return Err(Error::WriteInProgress {
                volume: self.id,
                needle: id,
            });
        }
        let live = {
            let state = self.state.read();
            if state.deleted.contains_key(&id) {
                return Err(Error::NeedleDeleted {
                    volume: self.id,
                    needle: id,
                });
            }
            state.index.get(id).is_some()
        };
        claims.insert(id);
        Ok(Claim {
            claims: Arc::clone(&self.claims),
            id,
            live,
            held: true,
            copy: false,
        })
    }

    /// [`Volume::claim`] for a write a copy takes from its volume's primary:
    /// the primary decides whether the volume is full, and a copy that
    /// holds the same needles in more bytes (its own abandoned uploads,
    /// another compaction) takes the write in its catch-up room
    /// ([`super::catch_up_limit`]) rather than refuse it and fall behind.
    pub fn claim_for_copy(&self, id: NeedleId) -> Result<Claim> {
        let mut claim = self.claim(id)?;
        claim.copy = true;
        Ok(claim)
    }

    /// Frees the ids of writes the group commit has just applied.
    pub(super) fn release_claims(&self, ids: impl Iterator<Item = NeedleId>) {
        let mut claims = self.claims.lock();
        for id in ids {
            claims.remove(&id);
        }
    }

    /// The stored needle `id` if a write of `data_len` bytes with `cookie`
    /// and `meta` may be a retry of it (the data is compared later):
    /// its offset and receipt. [`Error::NeedleExists`] if not.
    pub(super) fn retry_target(
        &self,
        id: NeedleId,
        cookie: Cookie,
        data_len: u64,
        meta: &NeedleMeta,
    ) -> Result<WriteReceipt> {
        let exists = Error::NeedleExists {
            volume: self.id,
            needle: id,
        };
        let (offset, files, header) = match self.find(id, cookie) {
            Ok(found) => found,
            Err(Error::WrongCookie { .. }) => return Err(exists),
            Err(Error::NeedleNotFound { .. }) if self.state.read().deleted.contains_key(&id) => {
                return Err(Error::NeedleDeleted {
                    volume: self.id,
                    needle: id,
                });
            }
            Err(Error::NeedleNotFound { .. }) => return Err(exists),
            Err(e) => return Err(e),
        };
        if u64::from(header.data_len) != data_len {
            return Err(exists);
        }
        let record = files
            .map
            .slice(offset, header.record_len())
            .ok_or_else(|| self.corrupt(offset, "record past end of file"))?;
        let crc_at = header.checksum_offset();
        let stored =
            NeedleMeta::decode(&record[NEEDLE_HEADER_LEN + header.data_len as usize..crc_at])
                .map_err(|_| self.corrupt(offset, "unreadable metadata"))?;
        if !same_meta(&stored, meta) {
            return Err(exists);
        }
        let mut checksum = [0u8; 4];
        checksum.copy_from_slice(&record[crc_at..crc_at + 4]);
        Ok(WriteReceipt {
            offset,
            record_len: header.record_len(),
            checksum: u32::from_le_bytes(checksum),
        })
    }

    /// True if live needle `id`'s stored record fails its checksum: the one
    /// case in which a needle copied from another copy replaces it.
    pub(super) fn stored_is_corrupt(&self, id: NeedleId) -> bool {
        let (offset, files) = {
            let state = self.state.read();
            (state.index.get(id), Arc::clone(&state.files))
        };
        offset.is_some_and(|offset| self.verify_record(&files.map, offset).is_err())
    }

    /// Compares `chunk` with the stored data of needle `id` from byte `at`
    /// of its data: [`Error::NeedleExists`] if they differ.
    pub(super) fn compare_stored(
        &self,
        id: NeedleId,
        cookie: Cookie,
        at: u64,
        chunk: &[u8],
    ) -> Result<()> {
        // Looked up again for every chunk: a compaction may have moved the
        // needle since the write began.
        let (offset, files, header) = self.find(id, cookie).map_err(|_| Error::NeedleExists {
            volume: self.id,
            needle: id,
        })?;
        let end = at + chunk.len() as u64;
        if end > u64::from(header.data_len) {
            return Err(Error::NeedleExists {
                volume: self.id,
                needle: id,
            });
        }
        let stored = files
            .map
            .slice(offset + NEEDLE_HEADER_LEN as u64 + at, chunk.len() as u64)
            .ok_or_else(|| self.corrupt(offset, "record past end of file"))?;
        if stored != chunk {
            return Err(Error::NeedleExists {
                volume: self.id,
                needle: id,
            });
        }
        Ok(())
    }

    /// Answers a whole-blob write of a live id: the stored needle's receipt
    /// if the write is an exact retry of it, else [`Error::NeedleExists`].
    pub(super) fn exact_retry(
        &self,
        id: NeedleId,
        cookie: Cookie,
        data: &[u8],
        meta: &NeedleMeta,
    ) -> Result<WriteReceipt> {
        let receipt = self.retry_target(id, cookie, data.len() as u64, meta)?;
        self.compare_stored(id, cookie, 0, data)?;
        Ok(receipt)
    }
}

/// Same metadata for a retry: everything but the last-modified time, which
/// the server stamps when the client leaves it out.
fn same_meta(stored: &NeedleMeta, new: &NeedleMeta) -> bool {
    stored.content_type == new.content_type
        && stored.file_name == new.file_name
        && stored.expires_at == new.expires_at
}
