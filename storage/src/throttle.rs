//! One byte-rate limit for every background copy: compaction, scrub, tier
//! moves and anti-entropy pulls all keep their I/O at or under a configured
//! rate so that foreground reads and writes keep their latency.
//!
//! The limit is an average since the job started, not a token bucket: after
//! `n` bytes in total the job may have run for no less than
//! `n / bytes_per_sec` seconds, and [`Throttle::delay_for`] says how much of
//! that is still to wait. A job that stalls (a slow disk, a slow peer) may
//! then catch up at full speed until it is back on its average; none of the
//! callers minds, and it keeps the arithmetic to one division.
//!
//! This crate has no async runtime: blocking code calls
//! [`Throttle::block_for`], async code sleeps [`Throttle::delay_for`] on its
//! own timer (`tokio::time::sleep(throttle.delay_for(n)).await`).

use std::time::{Duration, Instant};

/// A byte-rate limit shared by the copies of one job.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// The limit; 0 = none.
    bytes_per_sec: u64,
    started: Instant,
    /// Bytes moved since `started`.
    moved: u64,
}

impl Throttle {
    /// At most `bytes_per_sec` on average (0 = unlimited), from now on.
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            bytes_per_sec,
            started: Instant::now(),
            moved: 0,
        }
    }

    /// The limit in bytes a second (0 = unlimited).
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Counts `n` more bytes moved and says how long to wait before moving
    /// any more (zero when on or under the rate, or unlimited).
    pub fn delay_for(&mut self, n: u64) -> Duration {
        self.delay_at(n, self.started.elapsed())
    }

    /// [`Throttle::delay_for`], sleeping the calling thread for the delay:
    /// for blocking code (compaction, scrub), never on an async executor.
    pub fn block_for(&mut self, n: u64) {
        let delay = self.delay_for(n);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    /// The delay after `n` more bytes with `elapsed` since the start.
    fn delay_at(&mut self, n: u64, elapsed: Duration) -> Duration {
        self.moved = self.moved.saturating_add(n);
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let due = Duration::from_secs_f64(self.moved as f64 / self.bytes_per_sec as f64);
        due.saturating_sub(elapsed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let mut throttle = Throttle::new(0);
        assert_eq!(throttle.delay_at(u64::MAX, Duration::ZERO), Duration::ZERO);
        assert_eq!(throttle.delay_at(1 << 40, Duration::ZERO), Duration::ZERO);
        assert_eq!(throttle.bytes_per_sec(), 0);
    }

    #[test]
    fn waits_until_the_average_is_back_on_the_rate() {
        let mut throttle = Throttle::new(1000);
        // 500 bytes at once: due at 0.5 s.
        assert_eq!(
            throttle.delay_at(500, Duration::ZERO),
            Duration::from_millis(500)
        );
        // 500 more after 0.2 s: 1000 bytes are due at 1 s.
        assert_eq!(
            throttle.delay_at(500, Duration::from_millis(200)),
            Duration::from_millis(800)
        );
    }

    #[test]
    fn under_the_rate_does_not_wait() {
        let mut throttle = Throttle::new(1000);
        assert_eq!(
            throttle.delay_at(100, Duration::from_secs(1)),
            Duration::ZERO
        );
        // A stall lets the job catch up at full speed.
        assert_eq!(
            throttle.delay_at(1900, Duration::from_secs(2)),
            Duration::ZERO
        );
        assert_eq!(
            throttle.delay_at(1000, Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn block_for_sleeps_the_delay() {
        let mut throttle = Throttle::new(10_000);
        let started = Instant::now();
        throttle.block_for(500);
        assert!(
            started.elapsed() >= Duration::from_millis(45),
            "{:?}",
            started.elapsed()
        );
    }
}
