//! The tiering worker: reads the cluster from the directory, plans by the
//! policy, and asks volume servers to run the moves and deletions. The
//! moves themselves run (and persist, and resume) on the volume servers;
//! the worker holds no state, so any number of restarts are harmless.

use std::future::Future;
use std::time::Duration;

use hayloft_proto::Directories;
use hayloft_proto::background::{Failed, Runner, Step, Worker};
use hayloft_proto::volume_client::VolumeClient;
use hayloft_proto::{
    DeleteVolumeRequest, EncodeVolumeRequest, ForgetVolumeRequest, ListMovesRequest, MoveJobStatus,
    MoveVolumeRequest, RemoveReplicaRequest, StatusRequest, StatusResponse, Tier as ProtoTier,
};
use hayloft_storage::Tier;

use crate::plan::{Action, Plan};
use crate::policy::{Policy, plan};

/// What the worker could not do.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A server could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The server.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A server refused.
    #[error("{0}")]
    Refused(#[from] tonic::Status),
}

/// The outcome of one action.
#[derive(Debug)]
pub struct Outcome {
    /// The action.
    pub action: Action,
    /// Whether the server accepted it.
    pub result: Result<(), String>,
}

tokio::task_local! {
    /// The credential the worker's calls carry when it runs inside a server
    /// ([`TieringWorker::with_credential`]); elsewhere, what the environment says
    /// (`HAYLOFT_TOKEN`, `HAYLOFT_TLS_*`).
    static CREDENTIAL: hayloft_proto::Credential;
}

fn credential() -> Result<hayloft_proto::Credential, tonic::Status> {
    CREDENTIAL
        .try_with(Clone::clone)
        .or_else(|_| hayloft_proto::Credential::from_env())
}

/// The directory (a node, or a group's nodes comma-separated: calls follow
/// the leader).
fn connect_directory(addr: &str) -> Result<Directories, WorkerError> {
    Directories::new(addr)
        .and_then(|d| d.with_credential(credential()?))
        .map_err(|e| WorkerError::Unreachable {
            addr: addr.to_owned(),
            reason: e.message().to_owned(),
        })
}

async fn connect_volume(
    addr: &str,
) -> Result<VolumeClient<hayloft_proto::AuthChannel>, WorkerError> {
    let unreachable = |reason: String| WorkerError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let credential = credential().map_err(|e| unreachable(e.message().to_owned()))?;
    credential
        .endpoint(addr)
        .map_err(|e| unreachable(e.message().to_owned()))?
        .connect()
        .await
        .map(|channel| VolumeClient::new(credential.channel(channel)))
        .map_err(|e| unreachable(e.to_string()))
}

/// The directory's view of the cluster.
pub async fn cluster_status(directory: &str) -> Result<StatusResponse, WorkerError> {
    Ok(connect_directory(directory)?
        .call(|mut directory| async move { directory.status(StatusRequest {}).await })
        .await?)
}

/// Plans by the policy against the cluster as it is now.
pub async fn plan_now(
    directory: &str,
    policy: &Policy,
) -> Result<(Plan, StatusResponse), WorkerError> {
    let status = cluster_status(directory).await?;
    let now = hayloft_storage::volume::unix_now();
    Ok((plan(policy, &status.volumes, now), status))
}

fn server_addr(status: &StatusResponse, server_id: &str) -> Option<String> {
    status
        .servers
        .iter()
        .filter(|s| s.alive)
        .filter_map(|s| s.location.as_ref())
        .find(|l| l.server_id == server_id)
        .map(|l| l.grpc_addr.clone())
}

/// Asks a volume server to move a volume.
pub async fn start_move(
    addr: &str,
    volume: u32,
    to: Tier,
    bucket: &str,
    prefix: &str,
    storage_class: &str,
    bytes_per_sec: u64,
) -> Result<(), WorkerError> {
    send_move(
        addr,
        MoveVolumeRequest {
            volume_id: volume,
            target: ProtoTier::from(to) as i32,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            storage_class: storage_class.to_owned(),
            bytes_per_sec,
            ..MoveVolumeRequest::default()
        },
    )
    .await
}

async fn send_move(addr: &str, request: MoveVolumeRequest) -> Result<(), WorkerError> {
    connect_volume(addr).await?.move_volume(request).await?;
    Ok(())
}

/// Runs one action of a plan on its server (a `Move` only starts: it runs
/// on in the background there).
pub async fn run_action(
    directory: &str,
    status: &StatusResponse,
    action: &Action,
    bytes_per_sec: u64,
) -> Result<(), WorkerError> {
    let addr = |server: &str| {
        server_addr(status, server).ok_or_else(|| WorkerError::Unreachable {
            addr: server.to_owned(),
            reason: "server is not alive".into(),
        })
    };
    match action {
        Action::Move {
            volume,
            server,
            to,
            bucket,
            prefix,
            storage_class,
            share_cold_from,
            keep_object,
            ..
        } => {
            let share_cold_from = if share_cold_from.is_empty() {
                String::new()
            } else {
                addr(share_cold_from)?
            };
            send_move(
                &addr(server)?,
                MoveVolumeRequest {
                    volume_id: *volume,
                    target: ProtoTier::from(*to) as i32,
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    storage_class: storage_class.clone(),
                    bytes_per_sec,
                    share_cold_from,
                    keep_object: *keep_object,
                },
            )
            .await
        }
        Action::Drop {
            volume,
            server,
            keep_object,
            ..
        } => {
            // Out of the replica set first: reads stop going to the copy
            // before it is deleted. A copy that cannot be deleted now is an
            // extra copy, which the directory deletes later.
            let target = addr(server)?;
            let request = RemoveReplicaRequest {
                volume_id: *volume,
                server_id: server.clone(),
            };
            connect_directory(directory)?
                .call(|mut directory| {
                    let request = request.clone();
                    async move { directory.remove_replica(request).await }
                })
                .await?;
            connect_volume(&target)
                .await?
                .delete_volume(DeleteVolumeRequest {
                    volume_id: *volume,
                    keep_object: *keep_object,
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
        Action::Encode { volume, code, .. } => {
            start_encode(directory, *volume, code, bytes_per_sec).await
        }
        Action::Reencode { volume, .. } => start_reencode(directory, *volume, bytes_per_sec).await,
        Action::EcToCold {
            volume,
            bucket,
            prefix,
            storage_class,
            ..
        } => {
            start_ec_to_cold(
                directory,
                *volume,
                (bucket, prefix, storage_class),
                bytes_per_sec,
            )
            .await
        }
        Action::Delete {
            volume,
            server,
            keep_object,
            forget,
            ..
        } => {
            match connect_volume(&addr(server)?)
                .await?
                .delete_volume(DeleteVolumeRequest {
                    volume_id: *volume,
                    keep_object: *keep_object,
                    ..Default::default()
                })
                .await
            {
                // Deleted by an earlier round that failed later on.
                Err(e) if e.code() == tonic::Code::NotFound => {}
                other => {
                    other?;
                }
            }
            if *forget {
                let volume_id = *volume;
                connect_directory(directory)?
                    .call(|mut directory| async move {
                        directory
                            .forget_volume(ForgetVolumeRequest { volume_id })
                            .await
                    })
                    .await?;
            }
            Ok(())
        }
    }
}

/// Asks the directory to erasure-code `volume` and waits for its plan (the
/// encode then runs on at the directory, whether anyone listens or not;
/// a second request while it runs is refused, FAILED_PRECONDITION).
async fn start_encode(
    directory: &str,
    volume: u32,
    code: &str,
    rate: u64,
) -> Result<(), WorkerError> {
    let request = EncodeVolumeRequest {
        volume_id: volume,
        code: code.to_owned(),
        rate,
        ..EncodeVolumeRequest::default()
    };
    connect_directory(directory)?
        .call(|mut directory| {
            let request = request.clone();
            async move {
                let mut stream = directory.encode_volume(request).await?.into_inner();
                // The first message is the plan, sent once the checks pass.
                stream.message().await?;
                Ok(tonic::Response::new(()))
            }
        })
        .await?;
    Ok(())
}

/// Asks the directory to re-encode `volume` without its deleted needles
/// and waits for its plan (the re-encode runs on at the directory; a
/// second request while it runs is refused, FAILED_PRECONDITION).
async fn start_reencode(directory: &str, volume: u32, rate: u64) -> Result<(), WorkerError> {
    let request = hayloft_proto::ReencodeVolumeRequest {
        volume_id: volume,
        rate,
        dry_run: false,
    };
    connect_directory(directory)?
        .call(|mut directory| {
            async move {
                let mut stream = directory.reencode_volume(request).await?.into_inner();
                // The first message is the plan, sent once the checks pass.
                stream.message().await?;
                Ok(tonic::Response::new(()))
            }
        })
        .await?;
    Ok(())
}

/// Asks the directory to move the erasure-coded `volume` to the cold tier
/// (`DecodeVolume` with a cold bucket) and waits for its plan (the move
/// runs on at the directory, as a job a new leader finishes; a second
/// request while it runs is refused, FAILED_PRECONDITION).
pub async fn start_ec_to_cold(
    directory: &str,
    volume: u32,
    (bucket, prefix, storage_class): (&str, &str, &str),
    rate: u64,
) -> Result<(), WorkerError> {
    let request = hayloft_proto::DecodeVolumeRequest {
        volume_id: volume,
        rate,
        dry_run: false,
        cold_bucket: bucket.to_owned(),
        cold_prefix: prefix.to_owned(),
        cold_storage_class: storage_class.to_owned(),
    };
    connect_directory(directory)?
        .call(|mut directory| {
            let request = request.clone();
            async move {
                let mut stream = directory.decode_volume(request).await?.into_inner();
                // The first message is the plan, sent once the checks pass.
                stream.message().await?;
                Ok(tonic::Response::new(()))
            }
        })
        .await?;
    Ok(())
}

/// Runs a plan: starts its moves (at most the policy's `max_moves_per_run`)
/// and deletions. Moves run on in the background on their servers.
pub async fn execute(
    directory: &str,
    policy: &Policy,
    plan: &Plan,
    status: &StatusResponse,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut moves = 0;
    // Once an action of a volume fails, its later ones wait for the next
    // round (the last delete of a volume must not run after a failed one).
    let mut failed = std::collections::HashSet::new();
    for action in &plan.actions {
        if failed.contains(&action.volume()) {
            continue;
        }
        if let Action::Move { .. }
        | Action::Encode { .. }
        | Action::EcToCold { .. }
        | Action::Reencode { .. } = action
        {
            if moves >= policy.max_moves_per_run {
                continue;
            }
            moves += 1;
        }
        let result = run_action(directory, status, action, policy.bytes_per_sec.as_u64()).await;
        if result.is_err() {
            failed.insert(action.volume());
        }
        if let Err(e) = &result {
            tracing::warn!(?action, error = %e, "tiering action refused");
        } else {
            tracing::info!(?action, "tiering action started");
        }
        outcomes.push(Outcome {
            action: action.clone(),
            result: result.map_err(|e| e.to_string()),
        });
    }
    outcomes
}

/// Move jobs on every live volume server, with the server's id.
pub async fn jobs(directory: &str) -> Result<Vec<(String, MoveJobStatus)>, WorkerError> {
    let status = cluster_status(directory).await?;
    let mut all = Vec::new();
    for server in status.servers.iter().filter(|s| s.alive) {
        let Some(location) = &server.location else {
            continue;
        };
        match connect_volume(&location.grpc_addr).await {
            Ok(mut client) => match client.list_moves(ListMovesRequest {}).await {
                Ok(reply) => all.extend(
                    reply
                        .into_inner()
                        .jobs
                        .into_iter()
                        .map(|j| (location.server_id.clone(), j)),
                ),
                Err(e) => {
                    tracing::warn!(server = %location.server_id, error = %e, "cannot list moves")
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot list moves"),
        }
    }
    Ok(all)
}

/// The tiering worker as a background worker: plans and executes every
/// `interval`, the first round at once. A failed round is logged and
/// tried again at the next.
pub struct TieringWorker {
    directory: String,
    policy: Policy,
    interval: Duration,
    /// What its calls carry (none: what the environment says).
    credential: Option<hayloft_proto::Credential>,
    /// What the last round did.
    last: String,
}

impl TieringWorker {
    /// Rounds every `interval` against `directory` by `policy`.
    pub fn new(directory: String, policy: Policy, interval: Duration) -> Self {
        TieringWorker {
            directory,
            policy,
            interval,
            credential: None,
            last: String::new(),
        }
    }

    /// Every call carrying `credential` (a server's own: the worker of
    /// `hayloft server` in a cluster that requires tokens).
    #[must_use]
    pub fn with_credential(mut self, credential: hayloft_proto::Credential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// One round: plan, then start the actions; how many started.
    async fn round(&self) -> Result<usize, WorkerError> {
        let (plan, status) = plan_now(&self.directory, &self.policy).await?;
        if plan.actions.is_empty() {
            return Ok(0);
        }
        let outcomes = execute(&self.directory, &self.policy, &plan, &status).await;
        let started = outcomes.iter().filter(|o| o.result.is_ok()).count();
        metrics::counter!("hayloft_tier_actions_started_total").increment(started as u64);
        Ok(started)
    }
}

impl Worker for TieringWorker {
    fn name(&self) -> String {
        "tiering".into()
    }

    fn progress(&self) -> String {
        self.last.clone()
    }

    fn starts_busy(&self) -> bool {
        true
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        let result = match &self.credential {
            Some(credential) => CREDENTIAL.scope(credential.clone(), self.round()).await,
            None => self.round().await,
        };
        match result {
            Ok(started) => {
                self.last = format!("last round: {started} started");
                Ok(Step::Idle)
            }
            Err(error) => {
                tracing::warn!(%error, "tiering round failed; will retry");
                Err(Failed::new(error))
            }
        }
    }
}

/// Plans and executes every `interval` until `stop` completes (a round
/// under way when it does is finished first). Errors are logged and
/// retried at the next round.
pub async fn run(
    directory: String,
    policy: Policy,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    run_worker(TieringWorker::new(directory, policy, interval), stop).await;
}

/// Runs `worker` alone until `stop` completes.
async fn run_worker(worker: TieringWorker, stop: impl Future<Output = ()>) {
    // A runner of its own: `hayloft tier worker` runs nothing else.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut runner = Runner::new(stop_rx);
    runner.spawn(worker);
    stop.await;
    let _ = stop_tx.send(true);
    runner.join().await;
}
