//! The runner: one tokio task per worker, a shared stop signal, and the
//! registry of their statuses.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Failed, State, Step, Worker, WorkerInfo};
use crate::unix_now;

/// Every worker of a runner as last seen, in the order they were spawned.
/// Cheap to clone; shared by the runner and whoever reports it (the
/// heartbeat, the status call).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Held only to copy in or out, never across an `.await`: a std mutex.
    workers: Arc<Mutex<Vec<WorkerInfo>>>,
}

impl Registry {
    /// Every worker's status now.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.lock().clone()
    }

    /// Every worker's status in its wire form.
    pub fn statuses(&self) -> Vec<crate::WorkerStatus> {
        self.lock().iter().map(crate::WorkerStatus::from).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WorkerInfo>> {
        // A panic while copying a status leaves nothing half-written.
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, name: String) -> usize {
        let mut workers = self.lock();
        workers.push(WorkerInfo::new(name));
        workers.len() - 1
    }

    fn update(&self, slot: usize, f: impl FnOnce(&mut WorkerInfo)) {
        if let Some(info) = self.lock().get_mut(slot) {
            f(info);
        }
    }
}

/// Runs workers until a stop signal: see the module docs.
#[derive(Debug)]
pub struct Runner {
    stop: watch::Receiver<bool>,
    registry: Registry,
    tasks: Vec<JoinHandle<()>>,
}

impl Runner {
    /// A runner whose workers stop once `stop` turns true (or its sender
    /// is dropped).
    pub fn new(stop: watch::Receiver<bool>) -> Runner {
        Runner::with_registry(stop, Registry::default())
    }

    /// A runner that lists its workers in `registry`, beside those of
    /// other runners listing there (the tiering worker of `hayloft server`
    /// beside the directory's own).
    pub fn with_registry(stop: watch::Receiver<bool>, registry: Registry) -> Runner {
        Runner {
            stop,
            registry,
            tasks: Vec::new(),
        }
    }

    /// The statuses of this runner's workers (a handle that stays current).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Runs `worker` on a task of its own, listed in the registry.
    pub fn spawn<W: Worker>(&mut self, worker: W) {
        let slot = self.registry.add(worker.name());
        let task = tokio::spawn(drive(
            worker,
            self.registry.clone(),
            slot,
            self.stop.clone(),
        ));
        self.tasks.push(task);
    }

    /// Waits until every worker has ended: after the stop signal, each
    /// ends once its running step does (see the module docs).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "background worker panicked");
            }
        }
    }
}

/// True once the runner is told to stop.
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // Err: the sender is gone, which stops the runner too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The life of one worker: wait, step, record, until done or stopped.
async fn drive<W: Worker>(
    mut worker: W,
    registry: Registry,
    slot: usize,
    mut stop: watch::Receiver<bool>,
) {
    let name = worker.name();
    let mut next = if worker.starts_busy() {
        Step::Busy
    } else {
        Step::Idle
    };
    loop {
        if stopping(&stop) {
            break;
        }
        match next {
            Step::Done => break,
            Step::Busy => {}
            Step::Idle => {
                let interval = worker.interval();
                registry.update(slot, |info| {
                    info.state = if info.consecutive_errors > 0 {
                        State::Failing
                    } else {
                        State::Idle
                    };
                    info.next_run_at = interval.map(|i| unix_now() + i.as_secs().max(1));
                });
                tokio::select! {
                    () = worker.wait_for_work() => {}
                    () = stopped(&mut stop) => break,
                }
            }
        }
        registry.update(slot, |info| {
            info.state = State::Busy;
            info.next_run_at = None;
        });
        let result = worker.work().await;
        let progress = worker.progress();
        next = match result {
            Ok(step) => {
                registry.update(slot, |info| {
                    info.steps += 1;
                    info.consecutive_errors = 0;
                    info.progress = progress;
                });
                step
            }
            Err(Failed { error, then }) => {
                tracing::debug!(worker = %name, %error, "background step failed");
                let at = unix_now();
                registry.update(slot, |info| {
                    info.steps += 1;
                    info.errors += 1;
                    info.consecutive_errors = info.consecutive_errors.saturating_add(1);
                    info.last_error = Some((error, at));
                    info.progress = progress;
                });
                then
            }
        };
    }
    registry.update(slot, |info| {
        info.state = State::Done;
        info.next_run_at = None;
    });
    tracing::debug!(worker = %name, "background worker ended");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// How long tests wait for a state at most.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// Counts its steps; fails the steps listed; done after `last`.
    struct Counter {
        steps: Arc<AtomicU32>,
        fail: Vec<u32>,
        last: Option<u32>,
        busy: bool,
        interval: Option<Duration>,
    }

    impl Counter {
        fn new(steps: &Arc<AtomicU32>) -> Counter {
            Counter {
                steps: Arc::clone(steps),
                fail: Vec::new(),
                last: None,
                busy: true,
                interval: Some(Duration::from_millis(5)),
            }
        }
    }

    impl Worker for Counter {
        fn name(&self) -> String {
            "counter".into()
        }
        fn progress(&self) -> String {
            format!("step {}", self.steps.load(Ordering::SeqCst))
        }
        fn starts_busy(&self) -> bool {
            self.busy
        }
        fn interval(&self) -> Option<Duration> {
            self.interval
        }
        async fn work(&mut self) -> Result<Step, Failed> {
            let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail.contains(&n) {
                return Err(Failed::new(format!("step {n} failed")));
            }
            if self.last == Some(n) {
                return Ok(Step::Done);
            }
            Ok(Step::Idle)
        }
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_worker_that_finishes_is_listed_as_done() {
        let (_stop_tx, stop) = watch::channel(false);
        let mut runner = Runner::new(stop);
        let steps = Arc::new(AtomicU32::new(0));
        runner.spawn(Counter {
            last: Some(3),
            ..Counter::new(&steps)
        });
        let registry = runner.registry();
        // It ends by itself: no stop signal needed.
        tokio::time::timeout(PATIENCE, runner.join()).await.unwrap();
        let info = &registry.list()[0];
        assert_eq!(info.name, "counter");
        assert_eq!(info.state, State::Done);
        assert_eq!(info.steps, 3);
        assert_eq!(info.progress, "step 3");
        assert_eq!(info.last_error, None);
        assert_eq!(steps.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failing_worker_is_listed_with_its_error_and_goes_on() {
        let (stop_tx, stop) = watch::channel(false);
        let mut runner = Runner::new(stop);
        let steps = Arc::new(AtomicU32::new(0));
        runner.spawn(Counter {
            fail: vec![1, 2],
            interval: Some(Duration::from_secs(3600)),
            ..Counter::new(&steps)
        });
        let registry = runner.registry();
        // Step 1 fails: it then waits for its next run, failing.
        eventually("the first failure", || {
            registry.list()[0].state == State::Failing
        })
        .await;
        let info = registry.list()[0].clone();
        assert_eq!(info.errors, 1);
        assert_eq!(info.consecutive_errors, 1);
        assert_eq!(info.last_error.as_ref().unwrap().0, "step 1 failed");
        assert!(info.next_run_at.unwrap() >= unix_now() + 3000);
        let wire = &registry.statuses()[0];
        assert_eq!(wire.state, "failing");
        assert_eq!(wire.last_error, "step 1 failed");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(PATIENCE, runner.join()).await.unwrap();
        assert_eq!(registry.list()[0].state, State::Done);
    }

    #[tokio::test]
    async fn errors_in_a_row_are_counted_until_a_step_succeeds() {
        let (stop_tx, stop) = watch::channel(false);
        let mut runner = Runner::new(stop);
        let steps = Arc::new(AtomicU32::new(0));
        // Fails twice, then succeeds; one step is Busy after a failure.
        struct Flaky(u32);
        impl Worker for Flaky {
            fn name(&self) -> String {
                "flaky".into()
            }
            fn starts_busy(&self) -> bool {
                true
            }
            fn interval(&self) -> Option<Duration> {
                Some(Duration::from_millis(1))
            }
            async fn work(&mut self) -> Result<Step, Failed> {
                self.0 += 1;
                match self.0 {
                    1 => Err(Failed::new("first").then(Step::Busy)),
                    2 => Err(Failed::new("second")),
                    _ => Ok(Step::Done),
                }
            }
        }
        runner.spawn(Flaky(0));
        runner.spawn(Counter {
            fail: vec![1],
            last: Some(2),
            ..Counter::new(&steps)
        });
        let registry = runner.registry();
        eventually("both done", || {
            registry.list().iter().all(|w| w.state == State::Done)
        })
        .await;
        let list = registry.list();
        assert_eq!(list[0].name, "flaky");
        assert_eq!((list[0].steps, list[0].errors), (3, 2));
        assert_eq!(list[0].consecutive_errors, 0);
        assert_eq!(list[0].last_error.as_ref().unwrap().0, "second");
        assert_eq!(list[1].name, "counter");
        assert_eq!((list[1].steps, list[1].errors), (2, 1));
        stop_tx.send(true).unwrap();
        runner.join().await;
    }

    #[tokio::test]
    async fn shutdown_stops_every_worker() {
        let (stop_tx, stop) = watch::channel(false);
        let mut runner = Runner::new(stop);
        let steps = Arc::new(AtomicU32::new(0));
        // One waits first, for an hour: never steps.
        runner.spawn(Counter {
            busy: false,
            interval: Some(Duration::from_secs(3600)),
            ..Counter::new(&steps)
        });
        // One waits only to be woken.
        runner.spawn(Counter {
            interval: None,
            ..Counter::new(&Arc::new(AtomicU32::new(0)))
        });
        // One steps every few milliseconds.
        let busy = Arc::new(AtomicU32::new(0));
        runner.spawn(Counter::new(&busy));
        let registry = runner.registry();
        eventually("the busy one to step", || busy.load(Ordering::SeqCst) > 3).await;
        assert_eq!(steps.load(Ordering::SeqCst), 0);
        assert_eq!(registry.list().len(), 3);
        assert_eq!(registry.list()[1].next_run_at, None);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(PATIENCE, runner.join()).await.unwrap();
        assert!(registry.list().iter().all(|w| w.state == State::Done));
        let after = busy.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(busy.load(Ordering::SeqCst), after, "stepped after the stop");
    }

    #[tokio::test]
    async fn runners_can_share_a_registry() {
        let (stop_tx, stop) = watch::channel(false);
        let mut first = Runner::new(stop.clone());
        let mut second = Runner::with_registry(stop, first.registry());
        first.spawn(Counter::new(&Arc::new(AtomicU32::new(0))));
        second.spawn(Counter::new(&Arc::new(AtomicU32::new(0))));
        assert_eq!(first.registry().list().len(), 2);
        stop_tx.send(true).unwrap();
        first.join().await;
        second.join().await;
    }

    #[tokio::test]
    async fn a_dropped_stop_sender_stops_too() {
        let (stop_tx, stop) = watch::channel(false);
        let mut runner = Runner::new(stop);
        runner.spawn(Counter {
            busy: false,
            interval: Some(Duration::from_secs(3600)),
            ..Counter::new(&Arc::new(AtomicU32::new(0)))
        });
        drop(stop_tx);
        tokio::time::timeout(PATIENCE, runner.join()).await.unwrap();
    }
}
