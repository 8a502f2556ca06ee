//! Waiting for a state, never for a time: [`eventually`] polls a probe until
//! it holds, and fails with what was awaited and the last thing it saw.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often a probe is asked again.
pub const POLL: Duration = Duration::from_millis(100);

/// Seconds, for the timeouts of [`eventually`].
pub const fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// What a probe answers: `true`, `Some(value)` or `Ok(value)` once the state
/// it waits for holds; `false`, `None` or `Err(what it saw)` until then.
pub trait Probe {
    type Value;
    /// The value, or a description of what was observed instead.
    fn check(self) -> Result<Self::Value, String>;
}

impl Probe for bool {
    type Value = ();
    fn check(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Debug> Probe for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Asks `probe` every [`POLL`] until it holds, for up to `within`: its
/// value, or what it observed last once `within` has passed.
pub async fn try_eventually<P: Probe>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> P,
) -> Result<P::Value, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await.check() {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks `probe` every [`POLL`] until it holds, and returns its value; panics
/// with `what` and the last observation if it does not hold within `within`.
pub async fn eventually<P: Probe>(
    within: Duration,
    what: &str,
    probe: impl AsyncFnMut() -> P,
) -> P::Value {
    try_eventually(within, probe)
        .await
        .unwrap_or_else(|last| panic!("{what}: not within {within:?}; last seen: {last}"))
}

/// [`try_eventually`] for a probe that does not await (on a plain thread,
/// in a `Drop`, or where the probe must borrow something mutably).
pub fn try_eventually_blocking<P: Probe>(
    within: Duration,
    mut probe: impl FnMut() -> P,
) -> Result<P::Value, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().check() {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(POLL);
    }
}

/// [`eventually`] for a probe that does not await.
pub fn eventually_blocking<P: Probe>(
    within: Duration,
    what: &str,
    probe: impl FnMut() -> P,
) -> P::Value {
    try_eventually_blocking(within, probe)
        .unwrap_or_else(|last| panic!("{what}: not within {within:?}; last seen: {last}"))
}
