//! One shape for background work: every loop a server runs beside its
//! requests (compaction, anti-entropy, heartbeats, repair, ...) is a
//! [`Worker`] driven by a [`Runner`], which stops it on shutdown and keeps
//! its [`WorkerInfo`] in a [`Registry`] that `hayloft status` lists.
//!
//! A worker does its work in steps. After each step it says what comes next
//! ([`Step`]): more at once (`Busy`), nothing until its next run or until it
//! is woken (`Idle`), or nothing ever again (`Done`). A failed step returns
//! [`Failed`]: the runner records the error (last error, errors in a row)
//! and carries on as the failure says (by default: wait for the next run, so
//! a worker's interval is also its retry delay).
//!
//! - A worker logs its own errors, with the context it knows (volume ids,
//!   servers); the runner only records them, at `debug` in the log.
//! - A step is never cut short: on shutdown the runner lets the running
//!   step finish, starts none after it, and cuts waits short. Long work is
//!   split into steps (a volume a step) so that shutdown comes soon.
//! - A cursor that must survive a restart is the worker's to persist (the
//!   tier moves' job files, the directory's repair jobs); an in-memory
//!   cursor (the next volume of a pass) is shown as its progress.
//! - I/O-heavy steps keep under a byte rate with
//!   [`hayloft_storage::Throttle`]; calls to other services that fail
//!   transiently are retried with [`crate::retry::doubling`].
//!
//! This lives in `hayloft-proto` because it is the lowest crate that every
//! server and the tiering worker depend on and that has tokio (the storage
//! engine below it has no async runtime), and because a [`WorkerInfo`]
//! travels in heartbeats and status answers as [`crate::WorkerStatus`].

mod runner;

use std::future::Future;
use std::time::Duration;

pub use runner::{Registry, Runner};

/// What a worker does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More work is pending: the next step runs at once.
    Busy,
    /// Nothing to do: wait for work ([`Worker::wait_for_work`]), at most
    /// [`Worker::interval`].
    Idle,
    /// Finished for good: the runner drops the worker (it stays listed).
    Done,
}

/// A failed step: what went wrong, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The error, as shown in status.
    pub error: String,
    /// What comes next; [`Step::Idle`] unless said otherwise.
    pub then: Step,
}

impl Failed {
    /// A failure after which the worker waits for its next run.
    pub fn new(error: impl std::fmt::Display) -> Failed {
        Failed {
            error: error.to_string(),
            then: Step::Idle,
        }
    }

    /// The same failure, followed by `then` (e.g. [`Step::Busy`]: one
    /// volume of a pass failed, the others go on).
    #[must_use]
    pub fn then(self, then: Step) -> Failed {
        Failed { then, ..self }
    }
}

/// A background job: see the module docs.
pub trait Worker: Send + 'static {
    /// What it does, as listed ("compaction", "anti-entropy", ...).
    fn name(&self) -> String;

    /// Where it is, in its own words (the volume it is on, how far through
    /// a pass), read after every step; empty by default.
    fn progress(&self) -> String {
        String::new()
    }

    /// Whether the first step runs at once (true) or after a first wait
    /// for work (false, the default: most jobs start one interval after
    /// the server).
    fn starts_busy(&self) -> bool {
        false
    }

    /// The longest an idle worker waits before its next step (`None`:
    /// until [`Worker::wait_for_work`] returns by itself). Read before
    /// every wait, so it may change (a heartbeat that failed comes back
    /// sooner); shown in status as the next run.
    fn interval(&self) -> Option<Duration>;

    /// Does one step of work; see [`Step`] and [`Failed`]. Runs to the end
    /// even when the server is shutting down.
    fn work(&mut self) -> impl Future<Output = Result<Step, Failed>> + Send;

    /// Waits for work. The default sleeps [`Worker::interval`]; a worker
    /// that can be woken early (a heartbeat asked for at once) overrides it
    /// and returns sooner. Cut short on shutdown.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send {
        let interval = self.interval();
        async move {
            match interval {
                Some(interval) => tokio::time::sleep(interval).await,
                None => std::future::pending().await,
            }
        }
    }
}

/// What a worker is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// In a step.
    Busy,
    /// Waiting for work or for its next run.
    Idle,
    /// Waiting after a failed step.
    Failing,
    /// Finished for good, or stopped by shutdown.
    Done,
}

impl State {
    /// Its name in status: "busy", "idle", "failing", "done".
    pub fn as_str(self) -> &'static str {
        match self {
            State::Busy => "busy",
            State::Idle => "idle",
            State::Failing => "failing",
            State::Done => "done",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A worker as its runner last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// [`Worker::name`].
    pub name: String,
    /// What it is doing now.
    pub state: State,
    /// [`Worker::progress`] after its last step.
    pub progress: String,
    /// Steps done (failed ones included).
    pub steps: u64,
    /// Failed steps, in all and in a row now.
    pub errors: u64,
    /// Failed steps in a row (0 after a step that did not fail).
    pub consecutive_errors: u32,
    /// The last failure, and when (Unix seconds).
    pub last_error: Option<(String, u64)>,
    /// Unix seconds of its next run at the latest, while it waits.
    pub next_run_at: Option<u64>,
}

impl WorkerInfo {
    fn new(name: String) -> WorkerInfo {
        WorkerInfo {
            name,
            state: State::Idle,
            progress: String::new(),
            steps: 0,
            errors: 0,
            consecutive_errors: 0,
            last_error: None,
            next_run_at: None,
        }
    }
}

impl From<&WorkerInfo> for crate::WorkerStatus {
    fn from(info: &WorkerInfo) -> crate::WorkerStatus {
        let (last_error, last_error_at) = info.last_error.clone().unwrap_or_default();
        crate::WorkerStatus {
            name: info.name.clone(),
            state: info.state.as_str().to_owned(),
            progress: info.progress.clone(),
            steps: info.steps,
            errors: info.errors,
            consecutive_errors: info.consecutive_errors,
            last_error,
            last_error_at,
            next_run_at: info.next_run_at.unwrap_or(0),
        }
    }
}
