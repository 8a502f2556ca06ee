//! Read counts per volume, for the lifecycle policy: reads a day over a
//! sliding window.
//!
//! Reads are counted in batches (the HTTP threads count locally and add
//! their counts every 100 ms; a gRPC read adds one). A
//! ticker snapshots every counter once per window / [`BUCKETS`]; the rate is
//! the reads since the oldest snapshot still in the window, over the time
//! since it. Counts start at zero when the server starts, and
//! `read_stats_seconds` says how much history stands behind a rate, so that
//! the policy does not demote a volume for a quiet hour after a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_storage::VolumeId;
use parking_lot::{Mutex, RwLock};

/// Snapshots kept per window.
pub const BUCKETS: u32 = 168;

/// Read counters of every volume.
#[derive(Debug)]
pub struct ReadStats {
    window: Duration,
    counters: RwLock<HashMap<VolumeId, Arc<AtomicU64>>>,
    snapshots: Mutex<VecDeque<(Instant, HashMap<VolumeId, u64>)>>,
}

impl ReadStats {
    /// Counters with rates over `window`.
    pub fn new(window: Duration) -> Self {
        let stats = ReadStats {
            window: window.max(Duration::from_secs(1)),
            counters: RwLock::new(HashMap::new()),
            snapshots: Mutex::new(VecDeque::new()),
        };
        stats
            .snapshots
            .lock()
            .push_back((Instant::now(), HashMap::new()));
        stats
    }

    /// Time between snapshots.
    pub fn tick(&self) -> Duration {
        self.window / BUCKETS
    }

    /// Counts one read of `volume`.
    pub fn record(&self, volume: VolumeId) {
        self.record_many(volume, 1);
    }

    /// Counts `reads` reads of `volume`.
    pub fn record_many(&self, volume: VolumeId, reads: u64) {
        if let Some(counter) = self.counters.read().get(&volume) {
            counter.fetch_add(reads, Ordering::Relaxed);
            return;
        }
        self.counters
            .write()
            .entry(volume)
            .or_default()
            .fetch_add(reads, Ordering::Relaxed);
    }

    /// Takes a snapshot and drops those older than the window.
    pub fn snapshot(&self) {
        let now = Instant::now();
        let counts = self
            .counters
            .read()
            .iter()
            .map(|(id, c)| (*id, c.load(Ordering::Relaxed)))
            .collect();
        let mut snapshots = self.snapshots.lock();
        snapshots.push_back((now, counts));
        while snapshots.len() > 1
            && snapshots
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            snapshots.pop_front();
        }
    }

    /// Reads a day of `volume`, and the seconds of history behind it.
    pub fn rate(&self, volume: VolumeId) -> (f64, u64) {
        let now_count = self
            .counters
            .read()
            .get(&volume)
            .map_or(0, |c| c.load(Ordering::Relaxed));
        let snapshots = self.snapshots.lock();
        let Some((since, counts)) = snapshots.front() else {
            return (0.0, 0);
        };
        let then = counts.get(&volume).copied().unwrap_or(0);
        let observed = since.elapsed();
        let seconds = observed.max(self.tick()).as_secs_f64();
        let rate = now_count.saturating_sub(then) as f64 * 86_400.0 / seconds;
        (rate, observed.as_secs())
    }
}

/// Snapshots the read counters every tick, as a background worker.
pub struct ReadWindow(pub Arc<ReadStats>);

impl Worker for ReadWindow {
    fn name(&self) -> String {
        "read-counts".into()
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.0.tick())
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        self.0.snapshot();
        Ok(Step::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_reads_in_the_window() {
        let stats = ReadStats::new(Duration::from_secs(3600));
        for _ in 0..10 {
            stats.record(VolumeId(1));
        }
        let (rate, _) = stats.rate(VolumeId(1));
        // 10 reads over at least one tick (3600 s / 168).
        let tick = 3600.0 / f64::from(BUCKETS);
        assert!(rate > 0.0 && rate <= 10.0 * 86_400.0 / tick + 1.0, "{rate}");
        assert_eq!(stats.rate(VolumeId(2)).0, 0.0);
        stats.snapshot();
        // Reads before the oldest snapshot still count while it is in the window.
        assert!(stats.rate(VolumeId(1)).0 > 0.0);
    }
}
