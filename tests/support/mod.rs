//! Starting and stopping real `hayloft` processes for end-to-end tests.
//!
//! Every test gets its own temp directory and its own ports (picked free on
//! 127.0.0.1), so tests run in parallel without sharing anything.

#![allow(dead_code)] // each test binary uses a different part of this

pub mod access;
pub mod replicas;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hayloft_client::Client;
use hayloft_proto::StatusResponse;
use hayloft_storage::BlobId;

pub const BIN: &str = env!("CARGO_BIN_EXE_hayloft");

/// A free port on 127.0.0.1 for a server to bind later.
///
/// Picked below Linux's ephemeral range (32768 and up), so that neither
/// `bind(0)` nor the source port of some outgoing connection can take it
/// between this check and the server's bind. Tests run in parallel, each in
/// its own process, and a port is only free until its server binds it: so
/// each port is also claimed with a file created exclusively under the temp
/// directory, and no other test takes a port claimed in the last ten minutes.
pub fn free_port() -> u16 {
    use rand::Rng;
    let claims = std::env::temp_dir().join("hayloft-test-ports");
    let _ = std::fs::create_dir_all(&claims);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        let claim = claims.join(port.to_string());
        if let Ok(meta) = std::fs::metadata(&claim) {
            let age = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if age < Duration::from_secs(600) {
                continue;
            }
            let _ = std::fs::remove_file(&claim);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_err()
        {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// The last lines of every log in `dir`, for a failure message.
pub fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", path.display()));
            for line in &lines[lines.len().saturating_sub(8)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A child process, killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then wait: the graceful path.
    pub fn stop(mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "process exited with {status} after SIGTERM"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process did not stop within 20 s of SIGTERM");
    }

    /// SIGKILL: the crash path.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(args: &[String], log: &Path) -> Proc {
    spawn_with_env(args, log, &[])
}

fn spawn_with_env(args: &[String], log: &Path, env: &[(String, String)]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    // JSON logs with the per-request debug lines, as an operator tracing a
    // request would run them.
    let child = Command::new(BIN)
        .arg("--log-json")
        .args(args)
        .env(
            "RUST_LOG",
            "info,hayloft_volume=debug,hayloft_directory=debug",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start hayloft");
    Proc { child }
}

/// Ports of one volume server.
#[derive(Clone, Copy)]
pub struct VolumePorts {
    pub grpc: u16,
    pub http: u16,
    pub metrics: u16,
}

/// A directory and volume servers, each a separate `hayloft` process.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub directory_port: u16,
    pub directory_metrics_port: u16,
    pub directory: Option<Proc>,
    pub volume_ports: Vec<VolumePorts>,
    pub volumes: Vec<Option<Proc>>,
    pub volume_args: Vec<String>,
    /// Environment of volume server processes (failpoints).
    pub volume_env: Vec<(String, String)>,
    /// Extra arguments of the directory.
    pub directory_args: Vec<String>,
    /// Environment of directory group nodes (failpoints).
    pub directory_env: Vec<(String, String)>,
    /// Extra arguments of each volume server (zone, rack).
    pub volume_site_args: Vec<Vec<String>>,
    /// The nodes of a directory group (empty: one directory, `directory`).
    pub group: Vec<GroupNode>,
    /// The token the test's clients send (a cluster that requires them).
    pub token: Option<String>,
    /// What the test's clients present (TLS).
    pub credential: hayloft_proto::Credential,
    /// Environment of the `hayloft` commands run by [`hayloft`] (TLS).
    pub client_env: Vec<(String, String)>,
}

/// What a test's clients present to a cluster that asks.
#[derive(Default)]
pub struct Access {
    /// A bearer token.
    pub token: Option<String>,
    /// TLS (a CA, a client certificate).
    pub credential: hayloft_proto::Credential,
    /// Environment of the `hayloft` commands run by [`hayloft`].
    pub env: Vec<(String, String)>,
}

/// One node of a directory group.
pub struct GroupNode {
    pub port: u16,
    pub metrics: u16,
    pub proc: Option<Proc>,
    /// Started with `--join` (added to the running group, not one of the
    /// nodes that formed it).
    pub join: bool,
}

impl Cluster {
    /// Starts a directory and `volume_servers` volume servers, and waits
    /// until the directory sees them all alive.
    pub async fn start(volume_servers: usize, volume_args: &[&str]) -> Cluster {
        Cluster::start_with_env(volume_servers, volume_args, &[]).await
    }

    /// [`Cluster::start`] with environment variables for the volume servers.
    pub async fn start_with_env(
        volume_servers: usize,
        volume_args: &[&str],
        env: &[(&str, &str)],
    ) -> Cluster {
        let mut cluster = Cluster::new(volume_servers, volume_args, env);
        cluster.start_directory();
        for i in 0..volume_servers {
            cluster.start_volume(i);
        }
        cluster.wait_alive(volume_servers).await;
        cluster
    }

    /// [`Cluster::start`], calling `prepare` with each volume server's data
    /// directory (created) before that server starts: to put a small file
    /// system there, say.
    pub async fn start_prepared(
        volume_servers: usize,
        volume_args: &[&str],
        mut prepare: impl FnMut(&Path),
    ) -> Cluster {
        let mut cluster = Cluster::new(volume_servers, volume_args, &[]);
        cluster.start_directory();
        for i in 0..volume_servers {
            let dir = cluster.volume_dir(i);
            std::fs::create_dir_all(&dir).unwrap();
            prepare(&dir);
            cluster.start_volume(i);
        }
        cluster.wait_alive(volume_servers).await;
        cluster
    }

    /// A cluster with no server yet whose test clients present `access`.
    fn with_access(access: Access) -> Cluster {
        Cluster {
            token: access.token,
            credential: access.credential,
            client_env: access.env,
            ..Cluster::new(0, &[], &[])
        }
    }

    /// A cluster with ports and a temp dir, nothing started.
    fn new(volume_servers: usize, volume_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster {
            root: tempfile::Builder::new()
                .prefix("hayloft-e2e")
                .disable_cleanup(std::env::var_os("HAYLOFT_KEEP_TEST_DIRS").is_some())
                .tempdir()
                .expect("temp dir"),
            directory_port: free_port(),
            directory_metrics_port: free_port(),
            directory: None,
            volume_ports: (0..volume_servers)
                .map(|_| VolumePorts {
                    grpc: free_port(),
                    http: free_port(),
                    metrics: free_port(),
                })
                .collect(),
            volumes: (0..volume_servers).map(|_| None).collect(),
            volume_args: volume_args.iter().map(|s| s.to_string()).collect(),
            volume_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            directory_args: Vec::new(),
            directory_env: Vec::new(),
            volume_site_args: Vec::new(),
            group: Vec::new(),
            token: None,
            credential: hayloft_proto::Credential::none(),
            client_env: Vec::new(),
        }
    }

    /// A directory group of `nodes` nodes (each a process with its own
    /// data directory) with `directory_args`, and one volume server per
    /// entry of `zones`, each on its own rack; waits until all are alive.
    pub async fn start_group(
        nodes: usize,
        zones: &[&str],
        directory_args: &[&str],
        volume_args: &[&str],
    ) -> Cluster {
        Cluster::start_group_with(
            nodes,
            zones,
            directory_args.iter().map(|s| s.to_string()).collect(),
            vec![volume_args.iter().map(|s| s.to_string()).collect(); zones.len()],
            Access::default(),
        )
        .await
    }

    /// [`Cluster::start_group`] with arguments for each volume server
    /// (certificates) and what the test's clients present.
    pub async fn start_group_with(
        nodes: usize,
        zones: &[&str],
        directory_args: Vec<String>,
        volume_args: Vec<Vec<String>>,
        access: Access,
    ) -> Cluster {
        let mut cluster = Cluster::unstarted_group(nodes, directory_args, volume_args, access);
        cluster.start_directory();
        cluster.start_zoned_volumes(zones).await;
        cluster
    }

    /// [`Cluster::start_group_with`] with nothing started yet (set
    /// `directory_env`, then `start_directory` and `start_zoned_volumes`).
    pub fn unstarted_group(
        nodes: usize,
        directory_args: Vec<String>,
        volume_args: Vec<Vec<String>>,
        access: Access,
    ) -> Cluster {
        let mut cluster = Cluster::with_access(access);
        cluster.volume_site_args = volume_args;
        cluster.directory_args = directory_args;
        cluster.group = (0..nodes)
            .map(|_| GroupNode {
                port: free_port(),
                metrics: free_port(),
                proc: None,
                join: false,
            })
            .collect();
        cluster
    }

    /// Starts one volume server per entry of `zones` (in that zone, each on
    /// its own rack) and waits until the directory sees them all alive.
    pub async fn start_zoned_volumes(&mut self, zones: &[&str]) {
        for (i, zone) in zones.iter().enumerate() {
            self.volume_ports.push(VolumePorts {
                grpc: free_port(),
                http: free_port(),
                metrics: free_port(),
            });
            self.volumes.push(None);
            let site = [
                "--zone".into(),
                zone.to_string(),
                "--rack".into(),
                format!("r{i}"),
            ];
            match self.volume_site_args.get_mut(i) {
                Some(args) => args.extend(site),
                None => self.volume_site_args.push(site.into()),
            }
            self.start_volume(i);
        }
        self.wait_alive(zones.len()).await;
    }

    /// Starts one more volume server, in `zone` (its own rack), and waits
    /// until the directory sees it: its index.
    pub async fn add_volume_server(&mut self, zone: &str, args: &[&str]) -> usize {
        let i = self.volumes.len();
        self.volume_ports.push(VolumePorts {
            grpc: free_port(),
            http: free_port(),
            metrics: free_port(),
        });
        self.volumes.push(None);
        let mut site: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        site.extend([
            "--zone".into(),
            zone.into(),
            "--rack".into(),
            format!("r{i}"),
        ]);
        while self.volume_site_args.len() < i {
            self.volume_site_args.push(Vec::new());
        }
        self.volume_site_args.push(site);
        self.start_volume(i);
        self.wait_alive(i + 1).await;
        i
    }

    /// The address of directory group node `i` (node id `i + 1`).
    pub fn node_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.group[i].port)
    }

    /// The data directory of directory group node `i`.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("directory{}", i + 1))
    }

    /// Starts a new, empty directory node with `--join` (node id: its
    /// index + 1), to be added with `hayloft directory add-node`.
    pub fn start_joining_node(&mut self) -> usize {
        self.group.push(GroupNode {
            port: free_port(),
            metrics: free_port(),
            proc: None,
            join: true,
        });
        let i = self.group.len() - 1;
        self.start_directory_node(i);
        i
    }

    /// Waits until directory group node `i` answers `Node`.
    pub async fn node_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if hayloft_proto::ask_node(
                &self.node_addr(i),
                Duration::from_secs(2),
                &Default::default(),
            )
            .await
            .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "directory node {i} does not answer:\n{}",
                log_tails(&self.log_dir())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts directory group node `i` (again).
    pub fn start_directory_node(&mut self, i: usize) {
        let peers: Vec<String> = (0..self.group.len())
            .map(|n| format!("{}={}", n + 1, self.node_addr(n)))
            .collect();
        let args = [
            "directory".to_string(),
            "--listen".into(),
            self.node_addr(i),
            "--node-id".into(),
            (i + 1).to_string(),
            "--peers".into(),
            peers.join(","),
            "--data-dir".into(),
            self.node_dir(i).display().to_string(),
            "--pulse".into(),
            "1s".into(),
            "--dead-after".into(),
            "4s".into(),
            "--history-interval".into(),
            "1s".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", self.group[i].metrics),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(self.group[i].join.then(|| "--join".to_owned()))
            .chain(self.directory_args.iter().cloned())
            .collect();
        let log = self.root.path().join(format!("directory{}.log", i + 1));
        self.group[i].proc = Some(spawn_with_env(&args, &log, &self.directory_env));
    }

    /// What the test's clients present: the cluster's credential, and its
    /// token if it has one.
    pub fn client_credential(&self) -> hayloft_proto::Credential {
        match &self.token {
            Some(token) => self.credential.clone().with_token(token).unwrap(),
            None => self.credential.clone(),
        }
    }

    /// The index of the group node that leads now (the one that answers
    /// `Status`), waiting up to 30 s for an election.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        let credential = self.client_credential();
        loop {
            for i in 0..self.group.len() {
                if self.group[i].proc.is_none() {
                    continue;
                }
                let Ok(channel) = credential
                    .endpoint(&self.node_addr(i))
                    .unwrap()
                    .connect()
                    .await
                else {
                    continue;
                };
                let mut client = hayloft_proto::directory_client::DirectoryClient::new(
                    credential.channel(channel),
                );
                let answered = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.status(hayloft_proto::StatusRequest {}),
                )
                .await;
                if matches!(answered, Ok(Ok(_))) {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no directory node leads:\n{}",
                log_tails(&self.log_dir())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One value of a gauge on group node `i`'s `/metrics`.
    pub async fn node_metric(&self, i: usize, name: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.group[i].metrics);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Starts a directory with `--replication replication` and one volume
    /// server per entry of `zones` (in that zone, each on its own rack), and
    /// waits until all are alive.
    pub async fn start_replicated(
        zones: &[&str],
        replication: usize,
        directory_args: &[&str],
        volume_args: &[&str],
    ) -> Cluster {
        Cluster::start_replicated_with_env(zones, replication, directory_args, volume_args, &[])
            .await
    }

    /// [`Cluster::start_replicated`] with environment variables for the
    /// volume servers (failpoints).
    pub async fn start_replicated_with_env(
        zones: &[&str],
        replication: usize,
        directory_args: &[&str],
        volume_args: &[&str],
        env: &[(&str, &str)],
    ) -> Cluster {
        Cluster::start_replicated_as(zones, replication, directory_args, volume_args, env, None)
            .await
    }

    /// [`Cluster::start_replicated`] for a cluster that requires tokens:
    /// the test's clients send `token`.
    pub async fn start_replicated_with_token(
        zones: &[&str],
        replication: usize,
        directory_args: &[&str],
        volume_args: &[&str],
        token: &str,
    ) -> Cluster {
        Cluster::start_replicated_as(
            zones,
            replication,
            directory_args,
            volume_args,
            &[],
            Some(token.to_owned()),
        )
        .await
    }

    /// [`Cluster::start_replicated`] where the directory gets
    /// `directory_args`, volume server `i` `volume_args[i]` (their
    /// certificates), and the test's clients present `access`.
    pub async fn start_replicated_with(
        zones: &[&str],
        replication: usize,
        directory_args: Vec<String>,
        volume_args: Vec<Vec<String>>,
        access: Access,
    ) -> Cluster {
        let mut cluster = Cluster::with_access(access);
        cluster.directory_args = vec!["--replication".into(), replication.to_string()];
        cluster.directory_args.extend(directory_args);
        cluster.volume_site_args = volume_args;
        cluster.start_directory();
        cluster.start_zoned_volumes(zones).await;
        cluster
    }

    async fn start_replicated_as(
        zones: &[&str],
        replication: usize,
        directory_args: &[&str],
        volume_args: &[&str],
        env: &[(&str, &str)],
        token: Option<String>,
    ) -> Cluster {
        let mut cluster = Cluster::new(0, volume_args, env);
        cluster.token = token;
        cluster.directory_args = vec!["--replication".into(), replication.to_string()];
        cluster
            .directory_args
            .extend(directory_args.iter().map(|s| s.to_string()));
        cluster.start_directory();
        cluster.start_zoned_volumes(zones).await;
        cluster
    }

    pub fn log_dir(&self) -> PathBuf {
        self.root.path().to_owned()
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
        self.directory = Some(spawn(&args, &self.root.path().join("directory.log")));
    }

    pub fn start_volume(&mut self, i: usize) {
        let ports = self.volume_ports[i];
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
            self.root
                .path()
                .join(format!("vs{i}"))
                .display()
                .to_string(),
            "--pulse".into(),
            "1s".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", ports.metrics),
        ];
        args.extend(self.volume_args.iter().cloned());
        if let Some(site) = self.volume_site_args.get(i) {
            args.extend(site.iter().cloned());
        }
        self.volumes[i] = Some(spawn_with_env(
            &args,
            &self.root.path().join(format!("vs{i}.log")),
            &self.volume_env,
        ));
    }

    /// Volume server `i`'s data directory.
    pub fn volume_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("vs{i}"))
    }

    pub fn http_base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.volume_ports[i].http)
    }

    pub fn grpc_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.volume_ports[i].grpc)
    }

    /// Connects a client, retrying while the directory starts.
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect_with(&self.directory_addr(), self.credential.clone()).await {
                Ok(client) => {
                    return match &self.token {
                        Some(token) => client.with_token(token).expect("a usable token"),
                        None => client,
                    };
                }
                Err(e) if Instant::now() > deadline => panic!("directory not reachable: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until the directory reports `count` live volume servers.
    pub async fn wait_alive(&self, count: usize) {
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(status) = client.status().await
                && status.servers.iter().filter(|s| s.alive).count() >= count
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "volume servers did not register:\n{}",
                log_tails(&self.log_dir())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until volume server `i` accepts connections on its gRPC and
    /// HTTP ports.
    pub async fn wait_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.volume_ports[i].grpc, self.volume_ports[i].http] {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "volume server {i} did not come up"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A failpoint of the servers (`HAYLOFT_FAILPOINT=<name>@<trigger file>`)
/// that fires while its trigger file exists: start the server with
/// [`Failpoint::env`] in its environment, then [`Failpoint::arm`] and
/// [`Failpoint::disarm`] it.
pub struct Failpoint {
    dir: tempfile::TempDir,
    name: String,
}

impl Failpoint {
    /// The failpoint `name` (see `storage/src/failpoint.rs`), not armed.
    pub fn new(name: &str) -> Failpoint {
        Failpoint {
            dir: tempfile::tempdir().unwrap(),
            name: name.to_owned(),
        }
    }

    fn trigger(&self) -> PathBuf {
        self.dir.path().join(format!("fail-{}", self.name))
    }

    /// The value of `HAYLOFT_FAILPOINT` that makes a server honour it.
    pub fn env(&self) -> String {
        format!("{}@{}", self.name, self.trigger().display())
    }

    /// From now on the step fails.
    pub fn arm(&self) {
        std::fs::write(self.trigger(), b"").unwrap();
    }

    /// From now on the step works again.
    pub fn disarm(&self) {
        std::fs::remove_file(self.trigger()).unwrap();
    }
}

/// Deterministic pseudo-random content for a seed.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The id of the server holding a blob's volume, per the directory.
pub fn server_of(status: &StatusResponse, blob_id: &str) -> String {
    let volume = blob_id.parse::<BlobId>().expect("blob id").volume().0;
    status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == volume))
        .expect("volume in the directory")
        .server_id
        .clone()
}

/// The index of a test server id ("vs3" -> 3).
pub fn server_index(server_id: &str) -> usize {
    server_id
        .trim_start_matches("vs")
        .parse()
        .expect("test server id")
}

/// `hayloft token create` with the key ring `ring`: the token and its id.
pub fn mint_token(ring: &Path, scopes: &[&str]) -> (String, String) {
    let mut args = vec!["token", "create", "--keyring", ring.to_str().unwrap()];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stderr)
        .trim()
        .strip_prefix("token id ")
        .expect("the token's id on stderr")
        .to_owned();
    (String::from_utf8(out.stdout).unwrap().trim().to_owned(), id)
}

/// Runs the `hayloft` command against the cluster: (success, stdout + stderr).
pub fn hayloft(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN)
        .args(args)
        .env("HAYLOFT_DIRECTORY", cluster.directory_addr())
        .envs(cluster.client_env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run hayloft");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Starts the `hayloft` command against the cluster in the background
/// (its output discarded): a `compact` to watch while it runs, say. Killed
/// when dropped, if it is still running.
pub fn hayloft_in_background(cluster: &Cluster, args: &[&str]) -> Proc {
    Proc {
        child: Command::new(BIN)
            .args(args)
            .env("HAYLOFT_DIRECTORY", cluster.directory_addr())
            .envs(cluster.client_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run hayloft"),
    }
}

/// Uploads `count` blobs of `size` bytes and deletes every other one (the
/// odd seeds), leaving garbage for a compaction; returns the kept blob ids
/// (of the even seeds, in order).
pub async fn upload_half_deleted(client: &Client, count: u64, size: usize) -> Vec<String> {
    let mut kept = Vec::new();
    for seed in 0..count {
        let uploaded = client
            .upload(
                bytes::Bytes::from(content(seed, size)),
                &hayloft_client::UploadOptions::default(),
            )
            .await
            .unwrap();
        if seed % 2 == 0 {
            kept.push(uploaded.blob_id);
        } else {
            client.delete(&uploaded.blob_id).await.unwrap();
        }
    }
    kept
}

/// A real S3-compatible server (moto, installed by `scripts/setup.sh`) on a
/// loopback port, stopped when dropped. It keeps everything in memory: a
/// restart on the same port is an S3 that lost everything.
pub struct S3Server {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// Where `scripts/setup.sh` installs moto.
fn moto_bin() -> PathBuf {
    if let Some(venv) = std::env::var_os("HAYLOFT_MOTO_VENV") {
        return PathBuf::from(venv).join("bin/moto_server");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/venv/bin/moto_server")
}

impl S3Server {
    pub async fn start(log_dir: &Path) -> S3Server {
        let mut server = S3Server {
            port: free_port(),
            child: None,
            log: log_dir.join("moto.log"),
        };
        server.restart().await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        let bin = moto_bin();
        assert!(
            bin.exists(),
            "{} missing: run `bash scripts/setup.sh` (make test does)",
            bin.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("moto log");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start moto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/moto-api/", self.endpoint());
        loop {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(Instant::now() < deadline, "moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates a bucket (moto does not check signatures).
    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .expect("create bucket");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// A volume server configuration whose cold tier is this server.
    pub fn volume_config(&self, extra: &str) -> String {
        format!(
            "tier_part_size = \"5MiB\"\nrestore_retry_after = \"2s\"\nrestore_poll = \"200ms\"\n\
             read_window = \"1m\"\n{extra}\n[cold]\ntype = \"s3\"\nendpoint = \"{}\"\n\
             access_key_id = \"test\"\nsecret_access_key = \"test\"\ntimeout = \"5s\"\n",
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
