//! The write path of a volume: claim, reserve, pwrite, enqueue (the group
//! commit that makes writes durable is in `commit.rs`).
//!
//! See the lock notes in the parent module. The protocol, step by step, is in
//! ARCHITECTURE.md ("Writing (group commit)").

use std::sync::Arc;

use super::{
    Claim, Durability, Files, NEVER_SYNC_EVERY, NeedleWrite, SyncState, Volume, WriteReceipt,
    WriterState, unix_now,
};
use crate::error::{Error, Result};
use crate::format::chunks::ChunkHasher;
use crate::format::{self, IndexEntry, MAX_DATA_LEN, NEEDLE_HEADER_LEN, NeedleHeader, NeedleMeta};
use crate::types::{Cookie, NeedleId};
impl Volume {
    /// Writes a whole blob and returns once it is durable (per the volume's
    /// [`Durability`]). The record is encoded in memory and written with one
    /// `pwrite`; use [`Volume::begin_write`] for blobs too big for memory.
    ///
    /// A blob id is written once: see [`Volume::claim`] for what a second
    /// write of an id gets.
    pub fn write(&self, write: &NeedleWrite<'_>) -> Result<WriteReceipt> {
        let claim = self.claim(write.id)?;
        self.write_claimed(claim, write)
    }

    /// [`Volume::write`] under a claim taken before (by a primary, before it
    /// forwards the write to the other copies).
    pub fn write_claimed(&self, claim: Claim, write: &NeedleWrite<'_>) -> Result<WriteReceipt> {
        check_claim(&claim, write.id)?;
        if claim.is_retry() {
            return self.exact_retry(write.id, write.cookie, write.data, &write.meta);
        }
        let record = encode_write(write, self.format_version)?;
        self.append_record(write.id, &record.0, false, Some(claim))
            .map(|(offset, record_len)| WriteReceipt {
                offset,
                record_len,
                checksum: record.1,
            })
    }

    /// Writes a whole blob into the page cache without waiting for it to
    /// become durable: the caller then waits with [`Volume::when_durable`],
    /// so that a thread is needed per group commit rather than per write.
    /// Never blocks on a lock held across I/O: `Ok(None)` when the write
    /// would have to wait (a compaction or a move holds writers back) or,
    /// with [`Durability::Never`], when the periodic sync is due (every
    /// [`NEVER_SYNC_EVERY`] writes); use [`Volume::write_claimed`] then, with
    /// the claim given back, which runs it. An exact retry is answered at
    /// once (its sequence number is 0: durable already).
    pub fn try_write_queued(&self, claim: Claim, write: &NeedleWrite<'_>) -> Result<Queued> {
        check_claim(&claim, write.id)?;
        if claim.is_retry() {
            let receipt = self.exact_retry(write.id, write.cookie, write.data, &write.meta)?;
            return Ok(Queued::Queued(QueuedWrite { receipt, seq: 0 }));
        }
        if self.config.durability == Durability::Never
            && self.writer.lock().pending.len() >= NEVER_SYNC_EVERY
        {
            return Ok(Queued::WouldWait(claim));
        }
        let (record, checksum) = encode_write(write, self.format_version)?;
        let mut claim = Some(claim);
        let Some((offset, record_len, seq)) =
            self.append_queued(write.id, &record, false, false, &mut claim)?
        else {
            let claim = claim.ok_or(Error::Busy(self.id))?;
            return Ok(Queued::WouldWait(claim));
        };
        Ok(Queued::Queued(QueuedWrite {
            receipt: WriteReceipt {
                offset,
                record_len,
                checksum,
            },
            seq,
        }))
    }

    /// Deletes a needle by appending a tombstone; returns once durable.
    pub fn delete(&self, id: NeedleId, cookie: Cookie) -> Result<()> {
        self.find(id, cookie)?;
        self.append_tombstone(id, cookie)
    }

    /// Appends a tombstone record for `id` and waits until it is durable.
    pub(super) fn append_tombstone(&self, id: NeedleId, cookie: Cookie) -> Result<()> {
        let meta = NeedleMeta {
            last_modified: unix_now(),
            ..NeedleMeta::default()
        };
        let mut record = Vec::new();
        let flags = format::record_flags(self.format_version, true);
        format::encode_needle(&mut record, flags, id, cookie, &[], &meta)
            .map_err(|_| Error::InvalidNeedle("tombstone"))?;
        self.append_record(id, &record, true, None).map(|_| ())
    }

    /// Deletes a needle whatever its cookie (a move back from cold replays
    /// the deletes made while the volume was cold).
    pub fn delete_replayed(&self, id: NeedleId) -> Result<()> {
        let offset = self
            .state
            .read()
            .index
            .get(id)
            .ok_or(Error::NeedleNotFound {
                volume: self.id,
                needle: id,
            })?;
        let files = std::sync::Arc::clone(&self.state.read().files);
        let cookie = self.header_at(&files.map, offset, id)?.cookie;
        self.delete(id, cookie)
    }

    /// Appends a record and waits until it is durable. A needle's write
    /// holds its id's `claim` (none for a tombstone).
    pub(super) fn append_record(
        &self,
        id: NeedleId,
        record: &[u8],
        tombstone: bool,
        claim: Option<Claim>,
    ) -> Result<(u64, u64)> {
        let mut claim = claim;
        let (offset, len, seq) = self
            .append_queued(id, record, tombstone, true, &mut claim)?
            .ok_or(Error::Busy(self.id))?;
        self.wait_durable(seq)?;
        Ok((offset, len))
    }

    /// Writes `record` at the end of the data file and queues it for the
    /// next group commit; returns its offset, length and sequence number.
    /// `None` if writers are held back and `wait` is false (`claim` is left
    /// where it was; once the record is queued, the queue holds it).
    pub(super) fn append_queued(
        &self,
        id: NeedleId,
        record: &[u8],
        tombstone: bool,
        wait: bool,
        claim: &mut Option<Claim>,
    ) -> Result<Option<(u64, u64, u64)>> {
        let len = record.len() as u64;
        let copy = claim.as_ref().is_some_and(Claim::is_copy);
        let Some((offset, files)) = self.reserve(len, false, tombstone, tombstone, copy, wait)?
        else {
            return Ok(None);
        };
        if let Err(e) = files.data.write_at(record, offset) {
            self.abandon(&files, offset, len, false);
            return Err(e);
        }
        files.map.extend_readable(offset + len);
        let seq = self.enqueue(
            IndexEntry {
                needle_id: id,
                offset,
                record_len: len,
                tombstone,
            },
            false,
            claim.take(),
        );
        Ok(Some((offset, len, seq)))
    }

    /// Starts a streamed write of a blob of `data_len` bytes: reserves its
    /// place in the data file and writes the header. Feed the data with
    /// [`NeedleWriter::write`], then call [`NeedleWriter::finish`]. Dropping
    /// the writer before `finish` abandons the write (its bytes become garbage).
    pub fn begin_write(
        self: &Arc<Self>,
        id: NeedleId,
        cookie: Cookie,
        data_len: u64,
        meta: NeedleMeta,
    ) -> Result<NeedleWriter> {
        let claim = self.claim(id)?;
        self.begin_write_inner(claim, cookie, data_len, meta, false)
    }

    /// [`Volume::begin_write`] under a claim taken before. If the id is live
    /// here, the writer checks the blob against the stored one instead of
    /// writing it: [`NeedleWriter::finish`] answers with the stored needle's
    /// receipt if every byte matched (an exact retry), and a chunk that
    /// differs is refused ([`Error::NeedleExists`]).
    pub fn begin_write_claimed(
        self: &Arc<Self>,
        claim: Claim,
        cookie: Cookie,
        data_len: u64,
        meta: NeedleMeta,
    ) -> Result<NeedleWriter> {
        self.begin_write_inner(claim, cookie, data_len, meta, false)
    }

    /// [`Volume::begin_write_claimed`]; `copied` (a needle copied from
    /// another copy of the volume) is allowed into a sealed volume.
    pub(super) fn begin_write_inner(
        self: &Arc<Self>,
        claim: Claim,
        cookie: Cookie,
        data_len: u64,
        meta: NeedleMeta,
        copied: bool,
    ) -> Result<NeedleWriter> {
        let id = claim.id();
        check_data_len(data_len)?;
        meta.validate()
            .map_err(|_| Error::InvalidNeedle("metadata too long"))?;
        let header = NeedleHeader {
            flags: format::record_flags(self.format_version, false),
            metadata_len: meta.encoded_len() as u16,
            needle_id: id,
            cookie,
            data_len: data_len as u32,
        };
        // A copied needle may replace a live one whose record fails its
        // checksum (scrub heals bit rot from another copy); anything else
        // of a live id is a retry.
        if claim.is_retry() && !(copied && self.stored_is_corrupt(id)) {
            let receipt = self.retry_target(id, cookie, data_len, &meta)?;
            return Ok(NeedleWriter {
                volume: Arc::clone(self),
                files: Arc::clone(&self.state.read().files),
                header,
                meta,
                offset: receipt.offset,
                written: 0,
                written_back: 0,
                hasher: header.record_crc_start(),
                chunks: None,
                finished: false,
                claim: Some(claim),
                retry_of: Some(receipt),
            });
        }
        let record_len = header.record_len();
        let (offset, files) = self
            .reserve(record_len, true, copied, false, claim.is_copy(), true)?
            .ok_or(Error::Busy(self.id))?;
        let header_bytes = header.encode();
        if let Err(e) = files.data.write_at(&header_bytes, offset) {
            self.abandon(&files, offset, record_len, true);
            return Err(e);
        }
        let hasher = header.record_crc_start();
        let chunks = header.has_chunk_crcs().then(ChunkHasher::default);
        Ok(NeedleWriter {
            volume: Arc::clone(self),
            files,
            header,
            meta,
            offset,
            written: 0,
            written_back: offset,
            hasher,
            chunks,
            finished: false,
            claim: Some(claim),
            retry_of: None,
        })
    }

    /// Reserves `len` bytes at the end of the data file, and returns the
    /// files to write them to. Waits while a compaction swaps files or a move
    /// makes its final copy, or answers `None` then if not `wait`. A sealed
    /// volume takes only tombstones and needles copied from another copy
    /// (`even_if_sealed`). A tombstone may take its bytes out of the disk's
    /// free-space reserve; any other record is refused (`LowSpace`) when the
    /// disk is at its reserve.
    #[allow(clippy::fn_params_excessive_bools)]
    pub(super) fn reserve(
        &self,
        len: u64,
        streamed: bool,
        even_if_sealed: bool,
        tombstone: bool,
        copy: bool,
        wait: bool,
    ) -> Result<Option<(u64, Arc<Files>)>> {
        if self.sync.lock().poisoned {
            return Err(Error::Poisoned(self.id));
        }
        let mut writer = self.writer.lock();
        while !writer.retired && (writer.paused || (streamed && writer.streams_paused)) {
            if !wait {
                return Ok(None);
            }
            self.writer_changed.wait(&mut writer);
        }
        if writer.retired {
            return Err(Error::Moved(self.id));
        }
        if writer.sealed && !even_if_sealed {
            return Err(Error::Sealed(self.id));
        }
        let files = Arc::clone(&self.state.read().files);
        // A copy's records (a needle or tombstone another copy holds, a
        // write forwarded by the primary) may use the catch-up room past
        // the maximum; a new write may not.
        let limit = if even_if_sealed || copy {
            super::catch_up_limit(self.config.max_size)
        } else {
            self.config.max_size
        };
        let limit = limit.min(files.map.capacity());
        if writer.end + len > limit {
            // The limit that refused it: the catch-up room's for a copy.
            return Err(Error::VolumeFull {
                volume: self.id,
                needed: len,
                max_size: limit,
            });
        }
        if let Some(space) = self.space.get() {
            if tombstone {
                space.take_from_reserve(len);
            } else {
                space.take(len)?;
            }
        }
        let offset = writer.end;
        writer.end += len;
        if copy && !tombstone && writer.end > self.config.max_size && !writer.sealed {
            // A copy's record past the maximum for new writes, in the
            // catch-up room: this copy is full. It is sealed now (in memory;
            // the server makes it durable when it refuses the next write),
            // so the volume stops taking writes (the directory hears it
            // with the next heartbeat and tells every copy) while every copy
            // still has room to take what the others hold.
            writer.sealed = true;
        }
        writer.in_flight += 1;
        if streamed {
            writer.streams_in_flight += 1;
        }
        Ok(Some((offset, files)))
    }

    pub(super) fn release(&self, writer: &mut WriterState, streamed: bool) {
        writer.in_flight -= 1;
        if streamed {
            writer.streams_in_flight -= 1;
        }
        if writer.paused || writer.streams_paused {
            self.writer_changed.notify_all();
        }
    }

    /// Gives back a reservation whose write failed or was abandoned.
    ///
    /// If nothing was reserved after it, the file is cut back to where the
    /// reservation began, so no stale partial bytes (which may hold anything
    /// an uploader sent) stay behind for recovery to scan. Otherwise the range
    /// stays as a hole: its header, written first, lets recovery skip it whole.
    pub(super) fn abandon(&self, files: &Files, offset: u64, len: u64, streamed: bool) {
        let mut writer = self.writer.lock();
        if writer.end == offset + len && files.data.truncate(offset).is_ok() {
            writer.end = offset;
        } else {
            self.state.write().garbage_bytes += len;
        }
        self.release(&mut writer, streamed);
    }

    /// Queues a written record for the next sync; returns its sequence
    /// number. The record's `claim` goes with it: the group commit that
    /// applies the record frees the id (with durability `never`, applied at
    /// once, it is freed here).
    pub(super) fn enqueue(&self, entry: IndexEntry, streamed: bool, claim: Option<Claim>) -> u64 {
        let mut writer = self.writer.lock();
        writer.commit_seq += 1;
        writer.pending.push(entry);
        let applied = self.config.durability == Durability::Never;
        if applied {
            // Visible at once; the index file catches up at the next sync.
            self.state.write().apply(&entry);
        }
        self.release(&mut writer, streamed);
        let seq = writer.commit_seq;
        drop(writer);
        // (Not under `writer`: `claims` and `writer` are never held together.)
        match claim {
            Some(claim) if !applied => claim.hand_over(),
            _ => {}
        }
        seq
    }

    /// Gives up the sync role. Blocked writers learn it through the condvar;
    /// registered waiters still short of durable are told to register again
    /// ([`Wake::Lead`]), so one of them takes the role: nobody waits on a
    /// group commit that nobody runs.
    pub(super) fn release_sync_role(&self, sync: &mut SyncState) {
        sync.syncing = false;
        self.synced.notify_all();
        self.wake_waiters(sync, true);
    }
}

/// What [`Volume::try_write_queued`] did.
#[derive(Debug)]
pub enum Queued {
    /// Written, or answered as an exact retry.
    Queued(QueuedWrite),
    /// Not written: it would have had to wait. The claim comes back, for
    /// [`Volume::write_claimed`].
    WouldWait(Claim),
}

/// A whole-blob write in the page cache, not yet durable; see
/// [`Volume::try_write_queued`].
#[derive(Debug, Clone, Copy)]
pub struct QueuedWrite {
    /// Where the needle was written.
    pub receipt: WriteReceipt,
    /// Its group-commit sequence number, for [`Volume::when_durable`].
    pub seq: u64,
}

/// Encodes a whole-blob write as a needle record of a volume of format
/// `version`; returns it and its CRC.
fn encode_write(write: &NeedleWrite<'_>, version: u16) -> Result<(Vec<u8>, u32)> {
    check_data_len(write.data.len() as u64)?;
    write
        .meta
        .validate()
        .map_err(|_| Error::InvalidNeedle("metadata too long"))?;
    let mut record = Vec::new();
    let checksum = format::encode_needle(
        &mut record,
        format::record_flags(version, false),
        write.id,
        write.cookie,
        write.data,
        &write.meta,
    )
    .map_err(|_| Error::InvalidNeedle("does not fit the needle format"))?;
    Ok((record, checksum))
}

/// A streamed write in progress; see [`Volume::begin_write`].
pub struct NeedleWriter {
    volume: Arc<Volume>,
    files: Arc<Files>,
    header: NeedleHeader,
    meta: NeedleMeta,
    offset: u64,
    written: u64,
    /// Where the writeback started by [`NeedleWriter::write`] has reached
    /// (an offset in the data file).
    written_back: u64,
    /// The record CRC so far (header as the record CRC covers it, data).
    hasher: crc32fast::Hasher,
    /// The chunk CRCs so far (format 2).
    chunks: Option<ChunkHasher>,
    finished: bool,
    /// The id's claim, until the record is queued.
    claim: Option<Claim>,
    /// The stored needle this write is compared with, if its id was live
    /// here: nothing is written, each chunk is compared with the stored one.
    retry_of: Option<WriteReceipt>,
}

/// A streamed write asks the kernel to start writing its bytes back to the
/// disk each time this many more have been written (page-aligned), so the
/// disk works while the rest arrives and the fsync at the end has little
/// left to do, where otherwise it would write the whole blob after the last
/// byte came in.
const WRITEBACK_EVERY: u64 = 4 << 20;

/// The page size writeback ranges are rounded down to (a partial page at
/// the end is left to the next range, or to the fsync).
const PAGE: u64 = 4096;

impl NeedleWriter {
    /// Bytes of data received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends the next chunk of data.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let declared = self.header.data_len as u64;
        if self.written + chunk.len() as u64 > declared {
            return Err(Error::LengthMismatch {
                needle: self.header.needle_id,
                declared,
                received: self.written + chunk.len() as u64,
            });
        }
        if self.retry_of.is_some() {
            let (id, cookie) = (self.header.needle_id, self.header.cookie);
            self.volume
                .compare_stored(id, cookie, self.written, chunk)?;
            self.written += chunk.len() as u64;
            return Ok(());
        }
        let at = self.offset + NEEDLE_HEADER_LEN as u64 + self.written;
        crate::failpoint::fail_at("chunk-write")
            .map_err(|e| Error::io(self.files.data.path(), e))?;
        self.files.data.write_at(chunk, at)?;
        self.hasher.update(chunk);
        if let Some(chunks) = &mut self.chunks {
            chunks.update(chunk);
        }
        self.written += chunk.len() as u64;
        let end = (at + chunk.len() as u64) / PAGE * PAGE;
        if end >= self.written_back + WRITEBACK_EVERY {
            self.files
                .data
                .start_writeback(self.written_back, end - self.written_back);
            self.written_back = end;
        }
        Ok(())
    }

    /// Writes the metadata and checksum and returns once the needle is durable.
    pub fn finish(mut self) -> Result<WriteReceipt> {
        let declared = self.header.data_len as u64;
        if self.written != declared {
            return Err(Error::LengthMismatch {
                needle: self.header.needle_id,
                declared,
                received: self.written,
            });
        }
        if let Some(receipt) = self.retry_of {
            // Every byte matched the stored needle: answered as it was.
            self.finished = true;
            return Ok(receipt);
        }
        let record_len = self.header.record_len();
        let tail_at = NEEDLE_HEADER_LEN as u64 + declared;
        let mut tail = Vec::with_capacity((record_len - tail_at) as usize);
        let chunk_crcs = self.chunks.take().map(ChunkHasher::finish);
        let checksum = format::encode_tail(
            &mut tail,
            &self.header,
            &self.meta,
            self.hasher.clone(),
            chunk_crcs.as_deref().unwrap_or_default(),
        );
        let volume = Arc::clone(&self.volume);
        self.files.data.write_at(&tail, self.offset + tail_at)?;
        self.files.map.extend_readable(self.offset + record_len);
        self.finished = true;
        let seq = volume.enqueue(
            IndexEntry {
                needle_id: self.header.needle_id,
                offset: self.offset,
                record_len,
                tombstone: false,
            },
            true,
            self.claim.take(),
        );
        volume.wait_durable(seq)?;
        Ok(WriteReceipt {
            offset: self.offset,
            record_len,
            checksum,
        })
    }
}

impl Drop for NeedleWriter {
    fn drop(&mut self) {
        if !self.finished && self.retry_of.is_none() {
            self.volume
                .abandon(&self.files, self.offset, self.header.record_len(), true);
        }
    }
}

fn check_data_len(len: u64) -> Result<()> {
    if len > MAX_DATA_LEN {
        return Err(Error::InvalidNeedle("blob larger than 4 GiB - 1"));
    }
    Ok(())
}

/// A claim is for one id: writing another under it would let two writes of
/// that id through.
fn check_claim(claim: &Claim, id: NeedleId) -> Result<()> {
    if claim.id() != id {
        return Err(Error::InvalidNeedle(
            "written under the claim of another id",
        ));
    }
    Ok(())
}
