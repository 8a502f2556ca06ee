//! Compaction on a volume server: the periodic trigger (garbage ratio past a
//! threshold; a background [`CompactionWorker`]) and the operators' `Compact` call, both over
//! [`hayloft_storage::Volume::compact`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_proto::{CompactProgress, CompactRequest};
use hayloft_storage::{CompactOptions, Store, Volume, VolumeId, VolumeStats};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::grpc_status;

/// When and how fast volumes are compacted.
#[derive(Debug, Clone, Copy)]
pub struct CompactionSettings {
    /// Compact automatically once garbage / file size reaches this (0 = never).
    pub threshold: f64,
    /// How often to check.
    pub interval: Duration,
    /// Copy rate limit in bytes a second (0 = unlimited).
    pub bytes_per_sec: u64,
    /// Never bother for less garbage than this.
    pub min_garbage_bytes: u64,
}

/// Garbage bytes over data file bytes.
pub fn garbage_ratio(stats: &VolumeStats) -> f64 {
    if stats.file_bytes == 0 {
        0.0
    } else {
        stats.garbage_bytes as f64 / stats.file_bytes as f64
    }
}

fn options(bytes_per_sec: u64) -> CompactOptions {
    CompactOptions {
        bytes_per_sec: (bytes_per_sec > 0).then_some(bytes_per_sec),
        ..CompactOptions::default()
    }
}

async fn compact_one(
    volume: Arc<Volume>,
    bytes_per_sec: u64,
) -> Result<hayloft_storage::CompactReport, String> {
    let result = tokio::task::spawn_blocking(move || volume.compact(&options(bytes_per_sec)))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    crate::metrics::compaction_finished(&result);
    result
}

/// The periodic trigger as a background worker: every `interval`, it
/// lists the volumes past the threshold and compacts them one a step.
/// Not run at all with a threshold of 0 (see [`CompactionWorker::enabled`]).
pub struct CompactionWorker {
    store: Arc<Store>,
    settings: CompactionSettings,
    /// The volumes of this pass still to compact.
    due: VecDeque<Arc<Volume>>,
    /// How many the pass found.
    pass: usize,
    /// The volume of the last step.
    last: Option<VolumeId>,
}

impl CompactionWorker {
    /// The trigger over `store`.
    pub fn new(store: Arc<Store>, settings: CompactionSettings) -> Self {
        CompactionWorker {
            store,
            settings,
            due: VecDeque::new(),
            pass: 0,
            last: None,
        }
    }

    /// False with a threshold of 0: compaction only when asked.
    pub fn enabled(&self) -> bool {
        self.settings.threshold > 0.0
    }

    fn find_due(&self) -> VecDeque<Arc<Volume>> {
        self.store
            .volumes()
            .into_iter()
            .filter(|v| {
                let stats = v.stats();
                stats.garbage_bytes >= self.settings.min_garbage_bytes
                    && garbage_ratio(&stats) >= self.settings.threshold
                    && !v.is_compacting()
            })
            .collect()
    }
}

impl Worker for CompactionWorker {
    fn name(&self) -> String {
        "compaction".into()
    }

    fn progress(&self) -> String {
        match self.last {
            Some(id) => format!(
                "volume {id} ({} of {})",
                self.pass - self.due.len(),
                self.pass
            ),
            None => String::new(),
        }
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.settings.interval)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        if self.due.is_empty() {
            self.due = self.find_due();
            self.pass = self.due.len();
        }
        let Some(volume) = self.due.pop_front() else {
            return Ok(Step::Idle);
        };
        let id = volume.id();
        self.last = Some(id);
        let then = if self.due.is_empty() {
            Step::Idle
        } else {
            Step::Busy
        };
        tracing::info!(volume = %id, "garbage past threshold: compacting");
        match compact_one(volume, self.settings.bytes_per_sec).await {
            Ok(report) => {
                tracing::info!(volume = %id, reclaimed = report.reclaimed(), "automatic compaction done");
                Ok(then)
            }
            Err(error) => {
                tracing::warn!(volume = %id, %error, "automatic compaction failed");
                Err(Failed::new(format!("volume {id}: {error}")).then(then))
            }
        }
    }
}

/// The `Compact` call: picks the volumes, then compacts them one after
/// another, streaming progress every 200 ms and a last message per volume.
pub fn compact_stream(
    store: Arc<Store>,
    request: CompactRequest,
    default_rate: u64,
) -> Result<ReceiverStream<Result<CompactProgress, Status>>, Status> {
    let volumes: Vec<Arc<Volume>> = if request.all {
        store
            .volumes()
            .into_iter()
            .filter(|v| {
                garbage_ratio(&v.stats()) >= request.min_garbage_ratio
                    && v.stats().garbage_bytes > 0
            })
            .collect()
    } else {
        request
            .volume_ids
            .iter()
            .map(|id| {
                store
                    .volume(VolumeId(*id))
                    .map_err(|e| grpc_status(&e, None))
            })
            .collect::<Result<_, _>>()?
    };
    let rate = if request.bytes_per_sec > 0 {
        request.bytes_per_sec
    } else {
        default_rate
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        for volume in volumes {
            let stats = volume.stats();
            let base = CompactProgress {
                volume_id: stats.id.0,
                total_bytes: stats.live_bytes,
                bytes_before: stats.file_bytes,
                ..CompactProgress::default()
            };
            if request.dry_run {
                let estimate = CompactProgress {
                    done: true,
                    bytes_after: stats.file_bytes.saturating_sub(stats.garbage_bytes),
                    ..base
                };
                if tx.send(Ok(estimate)).await.is_err() {
                    return;
                }
                continue;
            }
            let task = tokio::spawn(compact_one(Arc::clone(&volume), rate));
            tokio::pin!(task);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut task => break outcome.map_err(|e| e.to_string()).and_then(|r| r),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        let (copied, total) = volume.compaction_progress().unwrap_or((0, base.total_bytes));
                        let progress = CompactProgress { copied_bytes: copied, total_bytes: total, ..base.clone() };
                        // A client that went away does not stop the compaction.
                        let _ = tx.send(Ok(progress)).await;
                    }
                }
            };
            let last = match outcome {
                Ok(report) => CompactProgress {
                    copied_bytes: base.total_bytes,
                    done: true,
                    bytes_after: report.bytes_after,
                    ..base
                },
                Err(error) => CompactProgress {
                    done: true,
                    bytes_after: base.bytes_before,
                    error,
                    ..base
                },
            };
            let _ = tx.send(Ok(last)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}
