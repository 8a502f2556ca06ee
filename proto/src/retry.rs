//! One retry with backoff for calls that fail transiently, on the `backon`
//! crate: [`doubling`] gives the waits, `backon::Retryable` (or the
//! iterator of the built backoff, where a loop does more than retry) runs
//! the attempts. What is transient, and for how long to try, stays each
//! caller's: an object store that is unreachable is waited for, a
//! directory for `patience`, a starting cluster for ten seconds.

use std::time::Duration;

/// Waits that start at `first` and double up to `max`, with no limit on
/// the number of attempts (the caller decides when to give up) and no
/// jitter (these retries are few and far between).
pub fn doubling(first: Duration, max: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_never_run_out() {
        let waits: Vec<u64> = doubling(Duration::from_millis(200), Duration::from_secs(5))
            .build()
            .take(8)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(
            doubling(Duration::from_millis(1), Duration::from_millis(1))
                .build()
                .nth(10_000)
                .is_some()
        );
    }
}
