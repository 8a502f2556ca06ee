//! A cluster in one process: a directory and any number of volume servers,
//! each bound on `127.0.0.1:0`, each with its data in a folder of its own
//! under one root. What the in-process tests of the volume server and the
//! client start (no binary, no port claims), with short pulses so that
//! servers register and are found dead quickly.
//!
//! ```no_run
//! # async fn example(root: &std::path::Path) -> Result<(), hayloft::cluster::Error> {
//! let mut cluster = hayloft::cluster::Cluster::builder()
//!     .volume_servers(3)
//!     .replication(3)
//!     .start(root)
//!     .await?;
//! let directory = cluster.directory_addr(); // for `hayloft_client::Client::connect`
//! # let _ = directory;
//! cluster.stop_volume(2).await?; // a clean stop; `start_volume(2)` brings it back
//! cluster.stop().await?;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use hayloft_directory::{Directory, DirectoryConfig};
use hayloft_volume::{VolumeServer, VolumeServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why a cluster could not start, or a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory failed to start or while serving.
    #[error("directory")]
    Directory(#[source] hayloft_directory::Error),
    /// Volume server `index` failed to start or while serving.
    #[error("volume server {index}")]
    Volume {
        /// Which one.
        index: usize,
        /// Why.
        #[source]
        source: hayloft_volume::StartError,
    },
    /// Volume server `index` is not running (never started, or stopped).
    #[error("volume server {0} is not running")]
    NotRunning(usize),
    /// A server's task panicked or was cancelled.
    #[error("a server task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Changes a volume server's config before it starts: its index and the
/// config (server id, data folders and addresses already set).
type VolumeSetup = Arc<dyn Fn(usize, &mut VolumeServerConfig) + Send + Sync>;

/// How to start a [`Cluster`].
pub struct ClusterBuilder {
    volume_servers: usize,
    directory: DirectoryConfig,
    volume: VolumeSetup,
}

impl ClusterBuilder {
    /// Volume servers to start (`vs0`, `vs1`, ...). Default 1.
    pub fn volume_servers(mut self, count: usize) -> Self {
        self.volume_servers = count;
        self
    }

    /// Copies of every volume. Default 1.
    pub fn replication(mut self, copies: usize) -> Self {
        self.directory.replication = copies;
        self
    }

    /// Changes the directory's config (its address and data folder are set
    /// by the cluster).
    pub fn directory(mut self, change: impl FnOnce(&mut DirectoryConfig)) -> Self {
        change(&mut self.directory);
        self
    }

    /// Changes each volume server's config (`change(index, config)`), at
    /// its first start and every restart.
    pub fn volume(
        mut self,
        change: impl Fn(usize, &mut VolumeServerConfig) + Send + Sync + 'static,
    ) -> Self {
        self.volume = Arc::new(change);
        self
    }

    /// Starts the directory, then every volume server, under `root`.
    /// Returns once each is serving; they register with the directory at
    /// their first heartbeat (see [`Cluster::volume_servers_alive`]).
    pub async fn start(self, root: &Path) -> Result<Cluster, Error> {
        let mut directory_config = self.directory;
        directory_config.listen = any_port();
        directory_config.data_dir = root.join("directory");
        directory_config.metrics_listen = None;
        let (directory_addr, running) = serve_directory(directory_config.clone()).await?;
        // A restart binds the same address (the volume servers know it).
        directory_config.listen = directory_addr;
        let mut cluster = Cluster {
            root: root.to_owned(),
            directory_addr,
            directory_config,
            directory: Some(running),
            volumes: (0..self.volume_servers).map(|_| None).collect(),
            volume_setup: self.volume,
        };
        for index in 0..self.volume_servers {
            cluster.start_volume(index).await?;
        }
        Ok(cluster)
    }
}

/// A running volume server of a [`Cluster`].
pub struct VolumeNode {
    /// Its id (`vs<index>`).
    pub server_id: String,
    /// Its bound gRPC address.
    pub grpc: SocketAddr,
    /// Its bound HTTP origin address.
    pub http: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), hayloft_volume::StartError>>,
}

impl VolumeNode {
    /// The gRPC address as clients write it.
    pub fn grpc_addr(&self) -> String {
        self.grpc.to_string()
    }

    /// The origin's base URL, `http://host:port`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Whether it has stopped by itself (a start-up refusal, a failure);
    /// [`Cluster::stop_volume`] then returns why.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// A directory and volume servers serving in this process until
/// [`Cluster::stop`] (or until dropped: the servers' tasks then stop with
/// the runtime, unsynced, like a crash of the process).
pub struct Cluster {
    root: PathBuf,
    directory_addr: SocketAddr,
    /// The directory's config, its address bound (for a restart).
    directory_config: DirectoryConfig,
    directory: Option<RunningDirectory>,
    volumes: Vec<Option<VolumeNode>>,
    volume_setup: VolumeSetup,
}

/// A directory serving: its stop signal and its task.
type RunningDirectory = (
    oneshot::Sender<()>,
    JoinHandle<hayloft_directory::Result<()>>,
);

/// Binds and serves a directory on a task of its own.
async fn serve_directory(config: DirectoryConfig) -> Result<(SocketAddr, RunningDirectory), Error> {
    let directory = Directory::bind(config).await.map_err(Error::Directory)?;
    let addr = directory.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(directory.serve(async {
        let _ = stopped.await;
    }));
    Ok((addr, (stop, task)))
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Cluster {
    /// A builder with the defaults of in-process tests: one volume server,
    /// one copy, heartbeats every 200 ms, a server dead after 3 s of
    /// silence, 64 MiB volumes, no free-space reserve to speak of, one HTTP
    /// thread a server, no metrics endpoint.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            volume_servers: 1,
            directory: DirectoryConfig {
                pulse: Duration::from_millis(200),
                dead_after: Duration::from_secs(3),
                history_interval: Duration::from_secs(1),
                ..DirectoryConfig::default()
            },
            volume: Arc::new(|_, _| {}),
        }
    }

    /// The directory's gRPC address.
    pub fn directory_addr(&self) -> String {
        self.directory_addr.to_string()
    }

    /// Volume server `index`, if it is running.
    pub fn volume(&self, index: usize) -> Option<&VolumeNode> {
        self.volumes.get(index).and_then(Option::as_ref)
    }

    /// How many volume servers the cluster has (running or not).
    pub fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    /// Volume server `index`'s data folder (`hot/` and `warm/` inside).
    pub fn volume_dir(&self, index: usize) -> PathBuf {
        self.root.join(format!("vs{index}"))
    }

    /// Adds a volume server (the next index) and starts it.
    pub async fn add_volume_server(&mut self) -> Result<usize, Error> {
        self.volumes.push(None);
        let index = self.volumes.len() - 1;
        self.start_volume(index).await?;
        Ok(index)
    }

    /// Starts volume server `index` on fresh ports (0), with its id and
    /// data folder: a restart keeps every volume it had. A running one is
    /// left as it is.
    pub async fn start_volume(&mut self, index: usize) -> Result<(), Error> {
        if self.volume(index).is_some() {
            return Ok(());
        }
        let dir = self.volume_dir(index);
        let mut config = VolumeServerConfig {
            server_id: format!("vs{index}"),
            grpc_listen: any_port(),
            http_listen: any_port(),
            directory: self.directory_addr(),
            hot_dirs: vec![dir.join("hot")],
            warm_dirs: vec![dir.join("warm")],
            metrics_listen: None,
            pulse: Duration::from_millis(200),
            max_volume_size: ByteSize::mib(64),
            min_free_space: ByteSize::mib(1),
            min_free_percent: 0.0,
            http_threads: 1,
            ..VolumeServerConfig::default()
        };
        (self.volume_setup)(index, &mut config);
        let server_id = config.server_id.clone();
        let server = VolumeServer::bind(config)
            .await
            .map_err(|source| Error::Volume { index, source })?;
        let (grpc, http) = (server.grpc_addr(), server.http_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        if let Some(slot) = self.volumes.get_mut(index) {
            *slot = Some(VolumeNode {
                server_id,
                grpc,
                http,
                stop,
                task,
            });
        }
        Ok(())
    }

    /// Stops volume server `index` cleanly: requests drained, volumes
    /// synced and closed. Its data stays for [`Cluster::start_volume`].
    pub async fn stop_volume(&mut self, index: usize) -> Result<(), Error> {
        let node = self
            .volumes
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(Error::NotRunning(index))?;
        let _ = node.stop.send(());
        node.task
            .await?
            .map_err(|source| Error::Volume { index, source })
    }

    /// Stops volume server `index` at once, as a crash would: its task is
    /// aborted (nothing drained or closed; what it acknowledged is durable).
    pub async fn abort_volume(&mut self, index: usize) -> Result<(), Error> {
        let node = self
            .volumes
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(Error::NotRunning(index))?;
        node.task.abort();
        let _ = node.task.await;
        Ok(())
    }

    /// Asks the directory's status until `count` volume servers are alive
    /// in it (or 30 s passed: false).
    pub async fn volume_servers_alive(&self, count: usize) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let Ok(directory) = hayloft_proto::Directories::new(&self.directory_addr()) else {
            return false;
        };
        while tokio::time::Instant::now() < deadline {
            let status =
                directory
                    .call(|mut client| async move {
                        client.status(hayloft_proto::StatusRequest {}).await
                    })
                    .await;
            if let Ok(status) = status
                && status.servers.iter().filter(|s| s.alive).count() >= count
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Stops the directory cleanly, changes its config with `change` (its
    /// address and data folder stay), and starts it again.
    pub async fn restart_directory_with(
        &mut self,
        change: impl FnOnce(&mut DirectoryConfig),
    ) -> Result<(), Error> {
        change(&mut self.directory_config);
        self.restart_directory().await
    }

    /// Stops the directory cleanly and starts it again on the same address
    /// and database (volume servers carry on and find it again).
    pub async fn restart_directory(&mut self) -> Result<(), Error> {
        if let Some((stop, task)) = self.directory.take() {
            let _ = stop.send(());
            task.await?.map_err(Error::Directory)?;
        }
        let (_, running) = serve_directory(self.directory_config.clone()).await?;
        self.directory = Some(running);
        Ok(())
    }

    /// Stops every volume server, then the directory (the order of
    /// `hayloft server`).
    pub async fn stop(mut self) -> Result<(), Error> {
        let mut first_error = None;
        for index in 0..self.volumes.len() {
            if self.volume(index).is_some()
                && let Err(e) = self.stop_volume(index).await
            {
                first_error.get_or_insert(e);
            }
        }
        if let Some((stop, task)) = self.directory.take() {
            let _ = stop.send(());
            if let Err(e) = task.await?.map_err(Error::Directory) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
