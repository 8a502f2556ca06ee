//! The leader's side of shipping between regions (ARCHITECTURE.md,
//! "Shipping between regions"), a background worker: every pulse it asks
//! each region that this region's collections replicate to to keep copies
//! of the volumes it does not keep yet (`AdoptVolumes`, idempotent). That
//! region places and creates the copies; their follower then pulls the
//! volume's needles and tombstones from the copies here. Nothing here
//! waits for another region: an upload never does.

use std::sync::Arc;
use std::time::Duration;

use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_proto::{AdoptVolumesRequest, Directories};

use crate::cluster::Cluster;

/// Volumes asked of one region in one call.
const BATCH: usize = 256;

/// How long one region's directory may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker (see the module's doc).
pub struct Adopter {
    cluster: Arc<Cluster>,
    /// Each other region's name and directory group.
    regions: Vec<(String, Directories)>,
    pulse: Duration,
    progress: String,
}

impl Adopter {
    /// Asks the other regions of `cluster`'s configuration, with
    /// `credential` (one key ring per deployment), every `pulse`.
    ///
    /// # Errors
    /// A malformed directory address of another region.
    pub fn new(
        cluster: Arc<Cluster>,
        credential: &hayloft_proto::Credential,
        pulse: Duration,
    ) -> Result<Adopter, tonic::Status> {
        let regions = cluster
            .regions()
            .others
            .iter()
            .map(|region| {
                Ok((
                    region.name.clone(),
                    Directories::new(&region.directory.join(","))?
                        .with_credential(credential.clone())?
                        .with_call_timeout(CALL_TIMEOUT)?
                        .with_patience(CALL_TIMEOUT),
                ))
            })
            .collect::<Result<_, tonic::Status>>()?;
        Ok(Adopter {
            cluster,
            regions,
            pulse,
            progress: String::new(),
        })
    }
}

impl Worker for Adopter {
    fn name(&self) -> String {
        "region-adopt".into()
    }

    fn progress(&self) -> String {
        self.progress.clone()
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.pulse)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        if self.regions.is_empty() || !self.cluster.is_leader() {
            return Ok(Step::Idle);
        }
        let local = self.cluster.regions().local.name.clone();
        let mut failures = Vec::new();
        let mut pending = 0;
        for (region, directory) in &self.regions {
            let wanted = self.cluster.to_adopt(region);
            if wanted.is_empty() {
                continue;
            }
            pending += wanted.len();
            for batch in wanted.chunks(BATCH) {
                let request = AdoptVolumesRequest {
                    region: local.clone(),
                    volumes: batch.to_vec(),
                };
                let answer = directory
                    .call(|mut client| {
                        let request = request.clone();
                        async move { client.adopt_volumes(request).await }
                    })
                    .await;
                match answer {
                    Ok(answer) => {
                        // Shown in the job's last error (`hayloft status`):
                        // the operator's cue (e.g. too few servers there).
                        for problem in &answer.problems {
                            tracing::warn!(region = %region, %problem,
                                "a region could not keep copies of a volume yet");
                            failures.push(format!("{region}: {problem}"));
                        }
                        self.cluster
                            .adopted_by(region, answer.volumes.iter().map(|v| v.volume_id));
                    }
                    Err(status) => {
                        tracing::warn!(region = %region, error = %status.message(),
                            "a region's directory did not answer AdoptVolumes");
                        failures.push(format!("{region}: {}", status.message()));
                        break;
                    }
                }
            }
        }
        self.progress = if pending == 0 {
            String::new()
        } else {
            format!("{pending} volume copies asked of other regions")
        };
        if failures.is_empty() {
            Ok(Step::Idle)
        } else {
            Err(Failed::new(failures.join("; ")))
        }
    }
}
