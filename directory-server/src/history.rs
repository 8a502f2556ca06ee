//! The capacity history: every `interval`, the leader records a sample of
//! bytes per tier through the log (`hayloft capacity` reads it back).

use std::sync::Arc;
use std::time::Duration;

use hayloft_proto::background::{Failed, Step, Worker};

use crate::cluster::Cluster;

/// Records a capacity sample every `interval`, as a background worker,
/// keeping `retention` of history. Only the leader records.
pub(crate) struct CapacityHistory {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) interval: Duration,
    pub(crate) retention: Duration,
}

impl Worker for CapacityHistory {
    fn name(&self) -> String {
        "capacity-history".into()
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        // The leader records the history, through the log.
        if !self.cluster.is_leader() {
            return Ok(Step::Idle);
        }
        match self.cluster.record_capacity(self.retention).await {
            Ok(()) => Ok(Step::Idle),
            Err(error) => {
                tracing::warn!(%error, "cannot record capacity history");
                Err(Failed::new(format!(
                    "cannot record capacity history: {error}"
                )))
            }
        }
    }
}
