//! A directory (one process, or a group of nodes) and volume servers, each a
//! separate `hayloft` process: started with [`Cluster::builder`], then
//! driven with verbs (`kill_volume`, `pause_volume`, `restart_volume`, ...).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hayloft_client::Client;

use super::eventually::{secs, try_eventually};
use super::{Proc, free_port, log_tails, spawn_with_env};

mod builder;
mod group;

pub use builder::ClusterBuilder;

/// Ports of one volume server.
#[derive(Clone, Copy)]
pub struct VolumePorts {
    pub grpc: u16,
    pub http: u16,
    pub metrics: u16,
}

impl VolumePorts {
    fn free() -> VolumePorts {
        VolumePorts {
            grpc: free_port(),
            http: free_port(),
            metrics: free_port(),
        }
    }
}

/// What a test's clients present to a cluster that asks.
#[derive(Default)]
pub struct Access {
    /// A bearer token.
    pub token: Option<String>,
    /// TLS (a CA, a client certificate).
    pub credential: hayloft_proto::Credential,
    /// Environment of the `hayloft` commands run by [`super::hayloft`].
    pub env: Vec<(String, String)>,
}

/// One node of a directory group.
struct GroupNode {
    port: u16,
    metrics: u16,
    proc: Option<Proc>,
    /// Started with `--join` (added to the running group, not one of the
    /// nodes that formed it).
    join: bool,
}

/// One volume server: its ports, its process while it runs, and its own
/// arguments (zone, rack, certificates) after the cluster's.
struct VolumeServer {
    ports: VolumePorts,
    proc: Option<Proc>,
    args: Vec<String>,
}

fn strings<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Vec<String> {
    args.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// A directory and volume servers, each a separate `hayloft` process, all
/// under one temp directory; every process is killed when dropped.
pub struct Cluster {
    root: tempfile::TempDir,
    directory_port: u16,
    directory_metrics_port: u16,
    directory: Option<Proc>,
    volumes: Vec<VolumeServer>,
    /// Arguments of every volume server.
    volume_args: Vec<String>,
    /// Environment of volume server processes (failpoints).
    volume_env: Vec<(String, String)>,
    directory_args: Vec<String>,
    /// Environment of the directory's processes (failpoints).
    directory_env: Vec<(String, String)>,
    /// The nodes of a directory group (empty: one directory, `directory`).
    group: Vec<GroupNode>,
    /// What the test's clients present.
    access: Access,
}

impl Cluster {
    /// The cluster's temp directory: data directories and logs.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Where the processes' logs are (`directory.log`, `vs0.log`, ...).
    pub fn log_dir(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    /// A log of the cluster ("vs0.log", "directory2.log"), as written so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.path().join(name)).unwrap_or_default()
    }

    /// The directory's address, or every group node's, comma-separated.
    pub fn directory_addr(&self) -> String {
        if self.group.is_empty() {
            format!("127.0.0.1:{}", self.directory_port)
        } else {
            (0..self.group.len())
                .map(|i| self.node_addr(i))
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    /// The port of the (single) directory's `/metrics`.
    pub fn directory_metrics_port(&self) -> u16 {
        self.directory_metrics_port
    }

    /// Environment of the `hayloft` commands run against the cluster.
    pub fn client_env(&self) -> &[(String, String)] {
        &self.access.env
    }

    /// Starts the directory (every group node) again.
    pub fn start_directory(&mut self) {
        if !self.group.is_empty() {
            for i in 0..self.group.len() {
                self.start_directory_node(i);
            }
            return;
        }
        let args = [
            "directory".to_string(),
            "--listen".into(),
            self.directory_addr(),
            "--data-dir".into(),
            self.root.path().join("directory").display().to_string(),
            "--pulse".into(),
            "1s".into(),
            "--dead-after".into(),
            "4s".into(),
            "--history-interval".into(),
            "1s".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", self.directory_metrics_port),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(self.directory_args.iter().cloned())
            .collect();
        self.directory = Some(spawn_with_env(
            &args,
            &self.root.path().join("directory.log"),
            &self.directory_env,
        ));
    }

    /// SIGTERM to the (single) directory, and waits until it exits cleanly.
    pub fn stop_directory(&mut self) {
        self.directory.take().expect("directory running").stop();
    }

    /// SIGKILL to the (single) directory.
    pub fn kill_directory(&mut self) {
        self.directory.take().expect("directory running").kill();
    }

    // --- volume servers

    /// How many volume servers the cluster has (running or not).
    pub fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    /// Volume server `i`'s ports.
    pub fn volume_ports(&self, i: usize) -> VolumePorts {
        self.volumes[i].ports
    }

    /// Volume server `i`'s data directory.
    pub fn volume_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("vs{i}"))
    }

    pub fn http_base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.volumes[i].ports.http)
    }

    pub fn grpc_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.volumes[i].ports.grpc)
    }

    /// Starts volume server `i` (again), without waiting for it.
    pub fn start_volume(&mut self, i: usize) {
        let ports = self.volumes[i].ports;
        let mut args = vec![
            "volume".to_string(),
            "--server-id".into(),
            format!("vs{i}"),
            "--grpc-listen".into(),
            format!("127.0.0.1:{}", ports.grpc),
            "--http-listen".into(),
            format!("127.0.0.1:{}", ports.http),
            "--directory".into(),
            self.directory_addr(),
            "--data-dir".into(),
            self.volume_dir(i).display().to_string(),
            "--pulse".into(),
            "1s".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", ports.metrics),
        ];
        args.extend(self.volume_args.iter().cloned());
        args.extend(self.volumes[i].args.iter().cloned());
        self.volumes[i].proc = Some(spawn_with_env(
            &args,
            &self.root.path().join(format!("vs{i}.log")),
            &self.volume_env,
        ));
    }

    /// Starts volume server `i` again and waits until its ports answer
    /// (the directory may not have heard from it yet).
    pub async fn restart_volume(&mut self, i: usize) {
        self.start_volume(i);
        self.wait_up(i).await;
    }

    /// SIGKILL to volume server `i`: the crash path.
    pub fn kill_volume(&mut self, i: usize) {
        self.take_volume(i).kill();
    }

    /// SIGTERM to volume server `i`, and waits until it exits cleanly.
    pub fn stop_volume(&mut self, i: usize) {
        self.take_volume(i).stop();
    }

    /// Volume server `i`'s process, no longer the cluster's to stop.
    pub fn take_volume(&mut self, i: usize) -> Proc {
        self.volumes[i]
            .proc
            .take()
            .unwrap_or_else(|| panic!("volume server {i} is not running"))
    }

    /// Volume server `i`'s process id.
    pub fn volume_pid(&self, i: usize) -> i32 {
        self.volumes[i]
            .proc
            .as_ref()
            .expect("volume server running")
            .pid()
    }

    /// SIGSTOP to volume server `i`: alive, silent.
    pub fn pause_volume(&self, i: usize) {
        self.signal_volume(i, libc::SIGSTOP);
    }

    /// SIGCONT to a paused volume server `i`.
    pub fn resume_volume(&self, i: usize) {
        self.signal_volume(i, libc::SIGCONT);
    }

    /// Sends `signal` to volume server `i` (SIGHUP: reload its key ring).
    pub fn signal_volume(&self, i: usize, signal: i32) {
        let proc = self.volumes[i]
            .proc
            .as_ref()
            .expect("volume server running");
        proc.signal(signal);
    }

    /// The environment of volume servers started from now on (failpoints).
    pub fn set_volume_env(&mut self, env: &[(&str, &str)]) {
        self.volume_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// The environment of directories started from now on (failpoints).
    pub fn set_directory_env(&mut self, env: &[(&str, &str)]) {
        self.directory_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    fn push_volume_server(&mut self, args: Vec<String>) -> usize {
        self.volumes.push(VolumeServer {
            ports: VolumePorts::free(),
            proc: None,
            args,
        });
        self.volumes.len() - 1
    }

    /// Starts one more volume server, in `zone` (its own rack), with `args`
    /// after the cluster's, and waits until the directory sees it: its index.
    pub async fn add_volume_server(&mut self, zone: &str, args: &[&str]) -> usize {
        let i = self.volumes.len();
        let mut site = strings(args);
        site.extend([
            "--zone".into(),
            zone.into(),
            "--rack".into(),
            format!("r{i}"),
        ]);
        self.push_volume_server(site);
        self.start_volume(i);
        self.wait_alive(i + 1).await;
        i
    }

    /// Starts one more volume server in `zone` with none of the cluster's
    /// volume arguments (no key ring, no certificate), without waiting for
    /// it: its index.
    pub fn start_bare_volume_server(&mut self, zone: &str) -> usize {
        let i = self.push_volume_server(vec!["--zone".into(), zone.into()]);
        let common = std::mem::take(&mut self.volume_args);
        self.start_volume(i);
        self.volume_args = common;
        i
    }

    /// Waits until volume server `i` accepts connections on its gRPC and
    /// HTTP ports.
    pub async fn wait_up(&self, i: usize) {
        let ports = self.volumes[i].ports;
        try_eventually(secs(30), async || {
            for port in [ports.grpc, ports.http] {
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "volume server {i} did not come up: {last}\n{}",
                log_tails(self.root())
            )
        });
    }

    // --- clients

    /// What the test's clients present: the cluster's credential, and its
    /// token if it has one.
    pub fn client_credential(&self) -> hayloft_proto::Credential {
        match &self.access.token {
            Some(token) => self.access.credential.clone().with_token(token).unwrap(),
            None => self.access.credential.clone(),
        }
    }

    /// Connects a client, retrying while the directory starts.
    pub async fn client(&self) -> Client {
        let addr = self.directory_addr();
        let client = try_eventually(secs(30), async || {
            Client::connect_with(&addr, self.access.credential.clone()).await
        })
        .await
        .unwrap_or_else(|last| panic!("directory not reachable: {last}"));
        match &self.access.token {
            Some(token) => client.with_token(token).expect("a usable token"),
            None => client,
        }
    }

    /// Waits until the directory reports `count` live volume servers.
    pub async fn wait_alive(&self, count: usize) {
        let client = self.client().await;
        try_eventually(secs(30), async || {
            let status = match client.status().await {
                Ok(status) => status,
                Err(e) => return Err(e.to_string()),
            };
            match status.servers.iter().filter(|s| s.alive).count() {
                alive if alive >= count => Ok(()),
                alive => Err(format!("{alive} of {count} alive")),
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "volume servers did not register: {last}\n{}",
                log_tails(self.root())
            )
        });
    }
}
