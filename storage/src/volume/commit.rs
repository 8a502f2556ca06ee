//! The group commit: writes enqueued by many callers made durable by one
//! fsync, run by whichever caller (or queued duty) leads the round.
//!
//! See the lock notes in the parent module and ARCHITECTURE.md ("Writing
//! (group commit)").

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Durability, NEVER_SYNC_EVERY, SyncState, Volume};
use crate::error::{Error, Result};
use crate::format::INDEX_ENTRY_LEN;

impl Volume {
    /// How long a group-commit leader waits after the previous sync, so that
    /// more writes share the next one.
    pub(super) fn sync_interval(&self) -> Duration {
        match self.config.durability {
            Durability::Batched(interval) => interval,
            Durability::Always | Durability::Never => Duration::ZERO,
        }
    }

    /// Blocks until the write with sequence number `seq` is durable, leading
    /// a group commit if no other writer is.
    pub(super) fn wait_durable(&self, seq: u64) -> Result<()> {
        if self.config.durability == Durability::Never {
            if self.writer.lock().pending.len() >= NEVER_SYNC_EVERY {
                self.sync_now()?;
            }
            return Ok(());
        }
        let mut sync = self.sync.lock();
        loop {
            if sync.durable_seq >= seq {
                return Ok(());
            }
            if sync.poisoned {
                return Err(Error::Poisoned(self.id));
            }
            if sync.syncing {
                self.synced.wait(&mut sync);
                continue;
            }
            sync.syncing = true;
            self.sync_round(&mut sync);
            self.release_sync_role(&mut sync);
        }
    }

    /// Calls `waiter` once the write with sequence number `seq` (from
    /// [`Volume::try_write_queued`]) is durable, or an fsync failed, or it
    /// must register again ([`Wake::Lead`]). The waiter runs under the
    /// volume's sync lock: it must only hand the news on (send on a channel),
    /// never call into the volume.
    ///
    /// If nobody is running a group commit, the caller gets the sync role as
    /// a [`SyncDuty`] and must run it on a thread that may block.
    pub fn when_durable(self: &Arc<Self>, seq: u64, waiter: Waiter) -> Option<SyncDuty> {
        let mut sync = self.sync.lock();
        if sync.poisoned {
            waiter(Wake::Poisoned);
            return None;
        }
        if sync.durable_seq >= seq || self.config.durability == Durability::Never {
            waiter(Wake::Durable);
            return None;
        }
        sync.waiters.push((seq, waiter));
        if sync.syncing {
            return None;
        }
        sync.syncing = true;
        Some(SyncDuty {
            volume: Some(Arc::clone(self)),
        })
    }

    /// One group commit, by the holder of the sync role: waits out the
    /// durability interval, flushes the batch, then wakes whoever it made
    /// durable (or everybody, if the fsync failed).
    pub(super) fn sync_round(&self, sync: &mut parking_lot::MutexGuard<'_, SyncState>) {
        let due = sync.last_sync + self.sync_interval();
        let result = parking_lot::MutexGuard::unlocked(sync, || {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            self.flush_batch(true)
        });
        sync.last_sync = Instant::now();
        match result {
            Ok(target) => sync.durable_seq = sync.durable_seq.max(target),
            Err(e) => {
                tracing::error!(volume = %self.id, error = %e, "fsync failed; volume is now read-only");
                sync.poisoned = true;
            }
        }
        self.synced.notify_all();
        self.wake_waiters(sync, false);
    }

    /// Wakes the registered waiters that are durable (all of them if the
    /// volume is poisoned); with `lead`, also those that are not.
    pub(super) fn wake_waiters(&self, sync: &mut SyncState, lead: bool) {
        if sync.waiters.is_empty() {
            return;
        }
        let (durable, poisoned) = (sync.durable_seq, sync.poisoned);
        for (seq, waiter) in std::mem::take(&mut sync.waiters) {
            if poisoned {
                waiter(Wake::Poisoned);
            } else if seq <= durable {
                waiter(Wake::Durable);
            } else if lead {
                waiter(Wake::Lead);
            } else {
                sync.waiters.push((seq, waiter));
            }
        }
    }

    /// Makes every enqueued write durable: fsync the data file, then append
    /// the batch's entries to the index file, then (if `apply`) publish them
    /// to readers. Only the group-commit leader or a caller holding
    /// `sync.syncing` runs this, so batches reach the index file in order.
    pub(super) fn flush_batch(&self, apply: bool) -> Result<u64> {
        let (target, batch) = {
            let mut writer = self.writer.lock();
            (writer.commit_seq, std::mem::take(&mut writer.pending))
        };
        if batch.is_empty() {
            return Ok(target);
        }
        // Data first: an index entry must never point at bytes that a power
        // cut could still lose. (Compaction swaps files only while it holds
        // the sync role, so these are the files the batch was written to.)
        let files = Arc::clone(&self.state.read().files);
        files.data.sync_data()?;
        {
            let mut buf = Vec::with_capacity(batch.len() * INDEX_ENTRY_LEN);
            for entry in &batch {
                entry.encode(&mut buf);
            }
            let mut index_file = self.index_file.lock();
            let at = index_file.end;
            index_file.file.write_at(&buf, at)?;
            index_file.end += buf.len() as u64;
        }
        if apply {
            {
                let mut state = self.state.write();
                for entry in &batch {
                    state.apply(entry);
                }
            }
            // Every needle record queued held its id's claim: applied, the
            // id is found in the index from now on.
            self.release_claims(
                batch
                    .iter()
                    .filter(|entry| !entry.tombstone)
                    .map(|entry| entry.needle_id),
            );
        }
        Ok(target)
    }

    /// Makes every write so far durable, whatever the durability mode.
    pub fn sync_now(&self) -> Result<()> {
        let mut sync = self.sync.lock();
        while sync.syncing {
            self.synced.wait(&mut sync);
        }
        if sync.poisoned {
            return Err(Error::Poisoned(self.id));
        }
        sync.syncing = true;
        let apply = self.config.durability != Durability::Never;
        let result = parking_lot::MutexGuard::unlocked(&mut sync, || {
            let target = self.flush_batch(apply)?;
            self.index_file.lock().file.sync_data()?;
            Ok(target)
        });
        let outcome = match result {
            Ok(target) => {
                sync.durable_seq = sync.durable_seq.max(target);
                Ok(())
            }
            Err(e) => {
                sync.poisoned = true;
                Err(e)
            }
        };
        self.release_sync_role(&mut sync);
        outcome
    }
}

/// What a [`Waiter`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The write is durable.
    Durable,
    /// An fsync failed: the write may be lost, and the volume takes no more
    /// writes until reopened ([`Error::Poisoned`]).
    Poisoned,
    /// Nobody runs a group commit any more: call [`Volume::when_durable`]
    /// again (and run the [`SyncDuty`] it may hand out).
    Lead,
}

/// Called once with the fate of a queued write; see [`Volume::when_durable`].
pub type Waiter = Box<dyn FnOnce(Wake) + Send>;

/// The group-commit role, handed out by [`Volume::when_durable`]: run it (on
/// a thread that may block) and it fsyncs until no registered waiter is
/// short of durable. Dropped without running, it gives the role back.
#[must_use = "a sync duty must be run, or writes wait for it"]
pub struct SyncDuty {
    volume: Option<Arc<Volume>>,
}

impl SyncDuty {
    /// Runs group commits until every registered waiter is woken. Blocks.
    pub fn run(mut self) {
        let Some(volume) = self.volume.clone() else {
            return;
        };
        let mut sync = volume.sync.lock();
        loop {
            volume.sync_round(&mut sync);
            let durable = sync.durable_seq;
            if sync.poisoned || !sync.waiters.iter().any(|(seq, _)| *seq > durable) {
                break;
            }
        }
        volume.release_sync_role(&mut sync);
        // Released: nothing left for `drop` (which gives the role back if
        // a round panicked).
        self.volume = None;
    }
}

impl Drop for SyncDuty {
    fn drop(&mut self) {
        if let Some(volume) = self.volume.take() {
            volume.release_sync_role(&mut volume.sync.lock());
        }
    }
}

impl std::fmt::Debug for SyncDuty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncDuty").finish_non_exhaustive()
    }
}
