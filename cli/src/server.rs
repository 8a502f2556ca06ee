//! `hayloft server` as a library call: a directory, a volume server and the
//! tiering worker in this process, with the process's `/metrics` and the
//! operator page.
//!
//! [`start`] binds every port (each may be `127.0.0.1:0`: the servers are
//! told and report the addresses they got) and hands back a [`Running`]
//! server with its [`Addresses`]; [`run`] is `start` and then waiting. Tests
//! start a whole single-node hayloft this way, without a process:
//!
//! ```no_run
//! # async fn example() -> Result<(), hayloft::server::Error> {
//! let data = std::path::Path::new("/tmp/hayloft-example");
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = hayloft::server::start(
//!     hayloft::server::Embedded::on_any_port(data),
//!     async move {
//!         let _ = stopped.await;
//!     },
//! )
//! .await?;
//! let directory = running.addresses.directory; // where clients connect
//! # let _ = directory;
//! let _ = stop.send(());
//! running.stopped().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Stop order: the tiering worker first (moves run on in the volume server
//! and resume after a restart), then the volume server (its volumes synced
//! while the directory still answers), then the directory, then `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hayloft_directory::{Directory, DirectoryConfig};
use hayloft_tiering::Policy;
use hayloft_volume::{VolumeServer, VolumeServerConfig};
use tokio::sync::oneshot;

use crate::metrics::{MetricsEndpoint, MetricsError, PageSource};

/// Why the embedded server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metrics endpoint (and operator page) could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The directory could not start.
    #[error("starting the directory")]
    StartDirectory(#[source] hayloft_directory::Error),
    /// The volume server could not start.
    #[error("starting the volume server")]
    StartVolume(#[source] hayloft_volume::StartError),
    /// The directory failed while serving.
    #[error("directory")]
    Directory(#[source] hayloft_directory::Error),
    /// The volume server failed while serving.
    #[error("volume server")]
    Volume(#[source] hayloft_volume::StartError),
    /// The directory stopped before it was asked to.
    #[error("directory stopped unexpectedly")]
    DirectoryStopped,
    /// The volume server stopped before it was asked to.
    #[error("volume server stopped unexpectedly")]
    VolumeStopped,
    /// A server's task panicked or was cancelled.
    #[error("a server task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Where the embedded server listens. Any port may be 0: [`Running`] tells
/// which one was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The directory's gRPC address (where clients connect). Default
    /// `127.0.0.1:9330`.
    pub directory: SocketAddr,
    /// The volume server's gRPC address. Default `127.0.0.1:9331`.
    pub grpc: SocketAddr,
    /// The HTTP origin's address. Default `127.0.0.1:9380`.
    pub http: SocketAddr,
    /// Prometheus `/metrics` and the operator page. Default
    /// `127.0.0.1:9390`; none in [`Running::addresses`] if not served.
    pub metrics: Option<SocketAddr>,
}

impl Default for Addresses {
    fn default() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Addresses {
            directory: local(9330),
            grpc: local(9331),
            http: local(9380),
            metrics: Some(local(9390)),
        }
    }
}

impl Addresses {
    /// Every address `127.0.0.1:0`: the kernel picks free ports (tests).
    pub fn any_port() -> Addresses {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Addresses {
            directory: any,
            grpc: any,
            http: any,
            metrics: Some(any),
        }
    }
}

/// Everything the embedded server runs with.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The directory's config (its `metrics_listen` is the process's).
    pub directory: DirectoryConfig,
    /// The volume server's config (its `directory` is set to the embedded
    /// directory's bound address at start).
    pub volume: VolumeServerConfig,
    /// The tiering worker's lifecycle policy.
    pub policy: Policy,
    /// Time between tiering rounds. Default `10m`.
    pub tier_interval: Duration,
}

impl Embedded {
    /// The zero-configuration layout: one node with its data under
    /// `data_dir` (`directory/`, `hot/`, `warm/`, and `cold/`, the cold tier
    /// as a local directory), listening on `addresses`, the built-in policy.
    pub fn new(data_dir: &Path, addresses: Addresses) -> Embedded {
        // One process, one metrics endpoint (carried by the directory's config).
        let directory = DirectoryConfig {
            listen: addresses.directory,
            data_dir: data_dir.join("directory"),
            metrics_listen: addresses.metrics,
            ..DirectoryConfig::default()
        };
        let volume = VolumeServerConfig {
            server_id: "local".into(),
            grpc_listen: addresses.grpc,
            http_listen: addresses.http,
            directory: addresses.directory.to_string(),
            hot_dirs: vec![data_dir.join("hot")],
            warm_dirs: vec![data_dir.join("warm")],
            metrics_listen: None,
            // The cold tier of the embedded default is a local directory
            // behind the same interface as S3, so nothing else needs
            // installing.
            cold: Some(hayloft_tiering::ObjectStoreConfig::Local {
                path: data_dir.join("cold"),
            }),
            ..VolumeServerConfig::default()
        };
        Embedded {
            directory,
            volume,
            policy: crate::tier::default_policy(),
            tier_interval: Duration::from_secs(600),
        }
    }

    /// [`Embedded::new`] with every address on `127.0.0.1:0`.
    pub fn on_any_port(data_dir: &Path) -> Embedded {
        Embedded::new(data_dir, Addresses::any_port())
    }

    /// Where everything is stored: the parent of the directory's data.
    fn data_dir(&self) -> PathBuf {
        self.directory
            .data_dir
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default()
    }
}

/// An embedded server with every port bound, serving until its shutdown
/// future completes.
pub struct Running {
    /// The addresses it got (never port 0).
    pub addresses: Addresses,
    /// Where everything is stored.
    pub data_dir: PathBuf,
    /// The HTTP origin speaks HTTPS.
    pub origin_https: bool,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Waits until the server has stopped (its shutdown future completed and
    /// everything stopped in order, volumes synced), or failed.
    pub async fn stopped(self) -> Result<(), Error> {
        self.task.await?
    }
}

/// Starts the directory, the volume server and the tiering worker and the
/// metrics endpoint, each on its address (port 0: any free port), and
/// serves until `shutdown` completes.
pub async fn start(
    config: Embedded,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, Error> {
    let data_dir = config.data_dir();
    let Embedded {
        directory: directory_config,
        volume: mut volume_config,
        policy,
        tier_interval,
    } = config;
    // Dropping the sender stops the endpoint too (a start that fails below).
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    let metrics = match directory_config.metrics_listen {
        Some(addr) => {
            crate::metrics::check_listen(addr, &directory_config)?;
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            Some(crate::metrics::serve(addr, stopped).await?)
        }
        None => None,
    };
    let require_token = directory_config.require_tokens;
    let directory = Directory::bind(directory_config)
        .await
        .map_err(Error::StartDirectory)?;
    if let Some(metrics) = &metrics {
        metrics.serve_page(PageSource {
            directory: directory.local_addr().to_string(),
            credential: directory.credential(),
            require_token,
        });
    }
    // The address the directory got, not the one configured (port 0).
    volume_config.directory = directory.local_addr().to_string();
    let origin_https = volume_config.tls.as_ref().is_some_and(|tls| tls.origin);
    let volume = match VolumeServer::bind(volume_config).await {
        Ok(volume) => volume,
        Err(e) => {
            // Close the directory's database and Raft node before saying so.
            let _ = directory.serve(std::future::ready(())).await;
            return Err(Error::StartVolume(e));
        }
    };
    let addresses = Addresses {
        directory: directory.local_addr(),
        grpc: volume.grpc_addr(),
        http: volume.http_addr(),
        metrics: metrics.as_ref().map(|m| m.addr),
    };
    let task = tokio::spawn(serve(
        directory,
        volume,
        policy,
        tier_interval,
        shutdown,
        (stop_metrics, metrics),
    ));
    Ok(Running {
        addresses,
        data_dir,
        origin_https,
        task,
    })
}

/// [`start`], then wait until it has stopped.
pub async fn run(
    config: Embedded,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    start(config, shutdown).await?.stopped().await
}

/// Serves the bound servers until `shutdown`, then stops them in order.
async fn serve(
    directory: Directory,
    volume: VolumeServer,
    policy: Policy,
    tier_interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    (stop_metrics, metrics): (oneshot::Sender<()>, Option<MetricsEndpoint>),
) -> Result<(), Error> {
    let (stop_volume, volume_stopped) = oneshot::channel::<()>();
    let (stop_directory, directory_stopped) = oneshot::channel::<()>();
    let mut volume_task = tokio::spawn(volume.serve(async {
        let _ = volume_stopped.await;
    }));
    let directory_addr = directory.local_addr().to_string();
    let worker_credential = directory.credential();
    let directory_workers = directory.workers();
    let mut directory_task = tokio::spawn(directory.serve(async {
        let _ = directory_stopped.await;
    }));
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    // The worker calls with the directory's own credential (a cluster
    // token when the server has a key ring), not HAYLOFT_TOKEN; it is
    // listed in status with the directory's background jobs.
    let mut worker =
        hayloft_proto::background::Runner::with_registry(worker_stopped, directory_workers);
    worker.spawn(
        hayloft_tiering::worker::TieringWorker::new(directory_addr, policy, tier_interval)
            .with_credential(worker_credential),
    );
    let mut volume_ended = None;
    let mut directory_ended = None;
    tokio::select! {
        _ = shutdown => {}
        result = &mut volume_task => volume_ended = Some(result),
        result = &mut directory_task => directory_ended = Some(result),
    }
    let volume_early = volume_ended.is_some();
    let directory_early = directory_ended.is_some();
    // The worker stops first (moves run on in the volume server and resume
    // after a restart); then the volume server, so its volumes are synced
    // while the directory still answers. One that stopped early still has
    // the others stopped after it.
    let _ = stop_worker.send(true);
    worker.join().await;
    let _ = stop_volume.send(());
    let volume_result = match volume_ended {
        Some(result) => result,
        None => volume_task.await,
    };
    let _ = stop_directory.send(());
    let directory_result = match directory_ended {
        Some(result) => result,
        None => directory_task.await,
    };
    let _ = stop_metrics.send(());
    if let Some(metrics) = metrics {
        metrics.stopped().await;
    }
    volume_result?.map_err(Error::Volume)?;
    directory_result?.map_err(Error::Directory)?;
    if volume_early {
        return Err(Error::VolumeStopped);
    }
    if directory_early {
        return Err(Error::DirectoryStopped);
    }
    Ok(())
}
