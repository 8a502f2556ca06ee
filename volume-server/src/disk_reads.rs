//! Reads of local blobs, HTTP and gRPC alike: from the page cache at once,
//! or from disk on a bounded pool of blocking reads, so that no event-loop
//! thread (nor tokio worker) waits for the disk and a hot read never queues
//! behind a cold one (invariant 11).
//!
//! A read first asks the storage engine for a [`ReadPlan`]: if the record's
//! pages are all resident (`mincore`), the needle comes back at once, zero
//! copy. Otherwise the read is admitted to the pool:
//!
//! - at most `in_flight` reads run at once, each a `pread` of one record on
//!   a thread of the runtime's blocking pool (64 by default: the disk gives
//!   2.6 times more 64 KiB reads at 64 in flight than at 1);
//! - up to `queued` more wait for a place, in order (a semaphore);
//! - past that, a read is refused at once ([`ReadError::Busy`]): HTTP 503
//!   with `Retry-After: 1`, gRPC `RESOURCE_EXHAUSTED`, so that a client (or
//!   the CDN) tries another copy rather than waiting for a timeout.
//!
//! Memory stays bounded whatever the load: a waiting read holds only its
//! plan (a few words); a running one at most one record of up to
//! [`hayloft_storage::BUFFERED_READ_MAX`] (512 KiB) or a 1 MiB chunk of a
//! longer one. With the defaults that is at most 64 MiB of read buffers.
//! A read whose requester went away still finishes (a blocking read cannot
//! be cancelled) and holds its place until done, so the bound holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hayloft_storage::{
    Cookie, DiskRead, Error, FromDisk, Hint, Needle, NeedleId, NeedleInfo, NeedlePart, Part,
    ReadPlan, Volume,
};
use tokio::sync::Semaphore;

/// Where a read's bytes came from, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The page cache (through the map).
    Memory,
    /// The disk (the pool).
    Disk,
    /// Another server's copy (proxied).
    Remote,
    /// The object store (a cold volume).
    Cold,
    /// The shards of an erasure-coded volume (here or on their holders).
    Shards,
    /// An erasure-coded volume's needle restored from other shards (its
    /// own shard lost, unreachable or corrupt).
    Restored,
    /// A copy in another region (proxied; its volume was allocated there).
    Region,
}

impl Source {
    /// Every source, in the order of [`Source::index`].
    pub const ALL: [Source; 7] = [
        Source::Memory,
        Source::Disk,
        Source::Remote,
        Source::Cold,
        Source::Shards,
        Source::Restored,
        Source::Region,
    ];

    /// The `source` label.
    pub fn name(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Disk => "disk",
            Source::Remote => "remote",
            Source::Cold => "cold",
            Source::Shards => "shards",
            Source::Restored => "restored",
            Source::Region => "region",
        }
    }

    /// Position in [`Source::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a local read gave no needle.
#[derive(Debug)]
pub enum ReadError {
    /// The pool and its queue are full: try again shortly, or elsewhere.
    Busy,
    /// What the storage engine said (not found, corrupt, an I/O error...).
    Storage(Error),
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Storage(e)
    }
}

/// How many reads from disk run at once, and how many more may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReadLimits {
    /// Reads from disk running at once (at least 1).
    pub in_flight: usize,
    /// Reads waiting for a place; past this they are refused.
    pub queued: usize,
}

impl Default for DiskReadLimits {
    fn default() -> Self {
        DiskReadLimits {
            in_flight: 64,
            queued: 1024,
        }
    }
}

/// The bounded pool of reads from disk, shared by the HTTP threads and gRPC.
#[derive(Debug)]
pub struct DiskReads {
    limits: DiskReadLimits,
    places: Arc<Semaphore>,
    /// Reads admitted: running or waiting for a place.
    admitted: Arc<AtomicUsize>,
    /// The runtime whose blocking pool runs the reads.
    runtime: tokio::runtime::Handle,
    metrics: DiskMetrics,
}

#[derive(Debug)]
struct DiskMetrics {
    in_flight: metrics::Gauge,
    waiting: metrics::Gauge,
    refused: metrics::Counter,
    bytes: metrics::Counter,
}

impl DiskReads {
    /// A pool within `limits`, reading on the blocking pool of `runtime`.
    pub fn new(limits: DiskReadLimits, runtime: tokio::runtime::Handle) -> Self {
        let limits = DiskReadLimits {
            in_flight: limits.in_flight.max(1),
            ..limits
        };
        DiskReads {
            limits,
            places: Arc::new(Semaphore::new(limits.in_flight)),
            admitted: Arc::new(AtomicUsize::new(0)),
            runtime,
            metrics: DiskMetrics {
                in_flight: metrics::gauge!("hayloft_volume_disk_reads_in_flight"),
                waiting: metrics::gauge!("hayloft_volume_disk_reads_waiting"),
                refused: metrics::counter!("hayloft_volume_disk_reads_refused_total"),
                bytes: metrics::counter!("hayloft_volume_disk_read_bytes_total"),
            },
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> DiskReadLimits {
        self.limits
    }

    /// Reads needle `id` of `volume`: at once if its record is in the page
    /// cache, else from disk on the pool. Checksummed if the blob is at
    /// most `verify_up_to` bytes.
    pub async fn read(
        &self,
        volume: &Volume,
        id: NeedleId,
        cookie: Cookie,
        verify_up_to: u64,
    ) -> Result<(Needle, Source), ReadError> {
        match volume.plan_read(id, cookie, verify_up_to)? {
            ReadPlan::Resident(needle) => Ok((needle, Source::Memory)),
            ReadPlan::Disk(plan) => Ok((self.read_from_disk(plan).await?, Source::Disk)),
        }
    }

    /// Reads of needle `id` of `volume` what `want` asks for once its size,
    /// record CRC and metadata are known (see [`DiskRead::run_part`]): the
    /// whole needle at once if its record is in the page cache, else from
    /// disk on the pool, only what `want` asks for (no data for a HEAD, a
    /// range's chunks) where the volume's format allows.
    pub async fn read_part(
        &self,
        volume: &Volume,
        (id, cookie): (NeedleId, Cookie),
        verify_up_to: u64,
        hint: Hint,
        want: impl FnOnce(&NeedleInfo<'_>) -> Part + Send + 'static,
    ) -> Result<(NeedlePart, Source), ReadError> {
        match volume.plan_read(id, cookie, verify_up_to)? {
            ReadPlan::Resident(needle) => Ok((NeedlePart::whole(needle), Source::Memory)),
            ReadPlan::Disk(plan) => Ok((
                self.read_part_from_disk(plan, hint, want).await?,
                Source::Disk,
            )),
        }
    }

    /// Runs a planned read from disk on the pool.
    pub async fn read_from_disk(&self, plan: DiskRead) -> Result<Needle, ReadError> {
        let part = self
            .read_part_from_disk(plan, Hint::Whole, |_| Part::Whole)
            .await?;
        Ok(part.needle)
    }

    /// Runs a planned read from disk of what `want` asks for on the pool.
    pub async fn read_part_from_disk(
        &self,
        plan: DiskRead,
        hint: Hint,
        want: impl FnOnce(&NeedleInfo<'_>) -> Part + Send + 'static,
    ) -> Result<NeedlePart, ReadError> {
        let FromDisk { part, disk_bytes } = self.run(move || plan.run_part(hint, want)).await??;
        self.metrics.bytes.increment(disk_bytes);
        Ok(part)
    }

    /// Runs `read` on the pool once admitted and given a place; `Busy` at
    /// once if the pool and its queue are full.
    ///
    /// The place and the admission are held by the blocking read itself,
    /// not by this future: if the caller goes away, the read still counts
    /// until it ends, so the bound holds whatever clients do.
    async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let admitted = self.admit().ok_or(ReadError::Busy)?;
        let waiting = Counted::new(&self.metrics.waiting);
        let place = Arc::clone(&self.places).acquire_owned().await;
        drop(waiting);
        // The semaphore is never closed.
        let Ok(place) = place else {
            return Err(ReadError::Busy);
        };
        let running = Counted::new(&self.metrics.in_flight);
        let done = self
            .runtime
            .spawn_blocking(move || {
                let result = read();
                drop((place, running, admitted));
                result
            })
            .await;
        done.map_err(|e| {
            ReadError::Storage(Error::io("disk read", std::io::Error::other(e.to_string())))
        })
    }

    /// Counts a read in if the pool and its queue have room.
    fn admit(&self) -> Option<Admitted> {
        let room = self.limits.in_flight + self.limits.queued;
        let admitted = self
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < room).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Some(Admitted(Arc::clone(&self.admitted))),
            Err(_) => {
                self.metrics.refused.increment(1);
                None
            }
        }
    }

    /// Reads admitted now (running or waiting).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }
}

/// A read counted in [`DiskReads::admitted`] until dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One unit of a gauge, given back when dropped.
struct Counted(metrics::Gauge);

impl Counted {
    fn new(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Records how long a read took, by where its bytes came from.
pub fn observe_read(source: Source, started: Instant) {
    metrics::counter!("hayloft_volume_reads_total", "source" => source.name()).increment(1);
    metrics::histogram!("hayloft_volume_read_duration_seconds", "source" => source.name())
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsRawFd;
    use std::sync::Mutex;
    use std::sync::mpsc;

    use hayloft_storage::{NeedleMeta, NeedleWrite, Tier, VolumeConfig, VolumeId};

    use super::*;

    /// A pool of `in_flight` places and `queued` waiting room.
    fn pool(in_flight: usize, queued: usize) -> Arc<DiskReads> {
        Arc::new(DiskReads::new(
            DiskReadLimits { in_flight, queued },
            tokio::runtime::Handle::current(),
        ))
    }

    /// Blocking reads that start (saying so) and then wait to be released.
    struct Gate {
        started: tokio::sync::mpsc::UnboundedSender<usize>,
        release: Arc<Mutex<mpsc::Receiver<()>>>,
    }

    impl Gate {
        fn read(&self, i: usize) -> impl FnOnce() -> usize + Send + 'static {
            let (started, release) = (self.started.clone(), Arc::clone(&self.release));
            move || {
                started.send(i).unwrap();
                release.lock().unwrap().recv().unwrap();
                i
            }
        }
    }

    fn gate() -> (
        Gate,
        tokio::sync::mpsc::UnboundedReceiver<usize>,
        mpsc::Sender<()>,
    ) {
        let (started, started_rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release) = mpsc::channel();
        let gate = Gate {
            started,
            release: Arc::new(Mutex::new(release)),
        };
        (gate, started_rx, release_tx)
    }

    /// Waits (for a state, not a time) until `pool` has `n` reads admitted.
    async fn admitted(pool: &DiskReads, n: usize) {
        while pool.admitted() != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_bound_reads_wait_for_a_place_then_past_the_queue_are_refused() {
        let pool = pool(2, 1);
        let (gate, mut started, release) = gate();
        let reads: Vec<_> = (0..3)
            .map(|i| {
                let (pool, read) = (Arc::clone(&pool), gate.read(i));
                tokio::spawn(async move { pool.run(read).await })
            })
            .collect();
        // Two run; the third waits for a place (admitted, not started).
        let mut running = vec![started.recv().await.unwrap(), started.recv().await.unwrap()];
        admitted(&pool, 3).await;
        assert!(
            started.try_recv().is_err(),
            "a third read ran past the bound"
        );
        // The fourth finds no room: refused at once, never run.
        assert!(matches!(pool.run(|| 4).await, Err(ReadError::Busy)));
        assert_eq!(pool.admitted(), 3);
        // One place freed: the waiting read runs.
        release.send(()).unwrap();
        running.push(started.recv().await.unwrap());
        running.sort_unstable();
        assert_eq!(running, [0, 1, 2]);
        release.send(()).unwrap();
        release.send(()).unwrap();
        let mut done = Vec::new();
        for read in reads {
            done.push(read.await.unwrap().unwrap());
        }
        done.sort_unstable();
        assert_eq!(done, [0, 1, 2]);
        assert_eq!(pool.admitted(), 0);
        // Room again.
        assert_eq!(pool.run(|| 5).await.unwrap(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_caller_went_away_keeps_its_place_until_it_ends() {
        let pool = pool(1, 0);
        let (gate, mut started, release) = gate();
        let read = {
            let (pool, read) = (Arc::clone(&pool), gate.read(0));
            tokio::spawn(async move { pool.run(read).await })
        };
        started.recv().await.unwrap();
        read.abort();
        assert!(read.await.unwrap_err().is_cancelled());
        // Still running on its thread: still counted, still bounded.
        assert_eq!(pool.admitted(), 1);
        assert!(matches!(pool.run(|| 1).await, Err(ReadError::Busy)));
        release.send(()).unwrap();
        admitted(&pool, 0).await;
        assert_eq!(pool.run(|| 2).await.unwrap(), 2);
    }

    fn put(volume: &Volume, id: u64, len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + id as usize) as u8).collect();
        volume
            .write(&NeedleWrite {
                id: NeedleId(id),
                cookie: Cookie(id as u32),
                data: &data,
                meta: NeedleMeta::default(),
            })
            .unwrap();
        data
    }

    /// Drops the volume's pages from the page cache (clean: fsynced).
    fn evict(dir: &std::path::Path, id: VolumeId) {
        let file = std::fs::File::open(dir.join(format!("{id}.dat"))).unwrap();
        // SAFETY: a plain syscall on a descriptor this function owns.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resident_read_never_waits_for_a_full_pool() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume::create(
            dir.path(),
            VolumeId(9),
            Tier::Hot,
            "",
            VolumeConfig::default(),
        )
        .unwrap();
        let hot = put(&volume, 1, 65_536);
        let cold = put(&volume, 2, 65_536);
        evict(dir.path(), VolumeId(9));
        // Read the hot blob from disk once (on the pool): resident again.
        let (needle, source) = pool(1, 0)
            .read(&volume, NeedleId(1), Cookie(1), u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            (needle.data.as_ref(), source),
            (hot.as_slice(), Source::Disk)
        );
        // A pool whose one place is taken by a read that does not end.
        let pool = pool(1, 0);
        let (gate, mut started, release) = gate();
        let stuck = {
            let (pool, read) = (Arc::clone(&pool), gate.read(0));
            tokio::spawn(async move { pool.run(read).await })
        };
        started.recv().await.unwrap();
        // The hot blob answers from memory; the cold one is refused, not queued.
        let (needle, source) = pool
            .read(&volume, NeedleId(1), Cookie(1), u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            (needle.data.as_ref(), source),
            (hot.as_slice(), Source::Memory)
        );
        let refused = pool.read(&volume, NeedleId(2), Cookie(2), u64::MAX).await;
        assert!(matches!(refused, Err(ReadError::Busy)), "{refused:?}");
        release.send(()).unwrap();
        stuck.await.unwrap().unwrap();
        let (needle, source) = pool
            .read(&volume, NeedleId(2), Cookie(2), u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            (needle.data.as_ref(), source),
            (cold.as_slice(), Source::Disk)
        );
        // Not found is not a read from disk.
        let missing = pool.read(&volume, NeedleId(3), Cookie(3), u64::MAX).await;
        assert!(
            matches!(&missing, Err(ReadError::Storage(e)) if e.is_not_found()),
            "{missing:?}"
        );
    }
}
