//! One byte-rate limit for every background copy: compaction, scrub, tier
//! moves and anti-entropy pulls all keep their I/O at or under a configured
//! rate so that foreground reads and writes keep their latency.
//!
//! The limit is an average since the job started, not a token bucket: after
//! `n` bytes in total the job may have run for no less than
//! `n / bytes_per_sec` seconds, and [`Throttle::delay_for`] says how much of
//! that is still to wait. A job that stalls (a slow disk, a slow peer, or
//! nothing to do: a throttle can live as long as the server) keeps at most
//! [`MAX_CREDIT`] of the rate it did not use: after an hour idle it moves a
//! second's worth at full speed, then at the rate, not an hour's worth.
//!
//! This crate has no async runtime: blocking code calls
//! [`Throttle::block_for`], async code sleeps [`Throttle::delay_for`] on its
//! own timer (`tokio::time::sleep(throttle.delay_for(n)).await`).

use std::time::{Duration, Instant};

/// The most unused time a throttle keeps: what a job that fell behind its
/// rate may then move at full speed.
pub const MAX_CREDIT: Duration = Duration::from_secs(1);

const NANOS_PER_SEC: u128 = 1_000_000_000;

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
        if self.bytes_per_sec != 0 {
            // Behind the rate by more than the credit kept: as if it had
            // moved just that much less.
            let floor = elapsed.saturating_sub(MAX_CREDIT).as_nanos()
                * u128::from(self.bytes_per_sec)
                / NANOS_PER_SEC;
            self.moved = self.moved.max(u64::try_from(floor).unwrap_or(u64::MAX));
        }
        self.moved = self.moved.saturating_add(n);
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let due = u128::from(self.moved) * NANOS_PER_SEC / u128::from(self.bytes_per_sec);
        let due = Duration::from_nanos(u64::try_from(due).unwrap_or(u64::MAX));
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
        // A stall lets the job catch up at full speed, by a second's worth
        // at most: 1000 bytes at 1.9 s (due then), 1000 more wait 1 s.
        assert_eq!(
            throttle.delay_at(1000, Duration::from_millis(1900)),
            Duration::ZERO
        );
        assert_eq!(
            throttle.delay_at(1000, Duration::from_millis(1900)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn an_idle_hour_is_not_an_hours_worth_at_full_speed() {
        let mut throttle = Throttle::new(1000);
        // Idle for an hour, then 10,000 bytes: a second's worth at once,
        // the other 9 s at the rate.
        assert_eq!(
            throttle.delay_at(10_000, Duration::from_secs(3600)),
            Duration::from_secs(9)
        );
        // Unlimited keeps no account.
        let mut unlimited = Throttle::new(0);
        assert_eq!(
            unlimited.delay_at(1 << 40, Duration::from_secs(3600)),
            Duration::ZERO
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
