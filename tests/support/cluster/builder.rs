//! [`ClusterBuilder`]: what a cluster is made of, before it starts.

use std::path::Path;

use super::{Access, Cluster, GroupNode, VolumePorts, VolumeServer, strings};
use crate::support::free_port;

/// What is done to a volume server's data directory before it starts.
type Prepare<'p> = Box<dyn FnMut(&Path) + 'p>;

impl Cluster {
    /// A cluster of nothing yet: name its parts, then `start()` it.
    pub fn builder<'p>() -> ClusterBuilder<'p> {
        ClusterBuilder {
            volumes: 0,
            zones: Vec::new(),
            replication: None,
            group: 0,
            directory_args: Vec::new(),
            directory_env: Vec::new(),
            volume_args: Vec::new(),
            volume_args_each: Vec::new(),
            volume_env: Vec::new(),
            access: Access::default(),
            prepare: None,
        }
    }
}

/// What a cluster is made of, before it starts: see [`Cluster::builder`].
#[must_use]
pub struct ClusterBuilder<'p> {
    volumes: usize,
    zones: Vec<String>,
    replication: Option<usize>,
    group: usize,
    directory_args: Vec<String>,
    directory_env: Vec<(String, String)>,
    volume_args: Vec<String>,
    volume_args_each: Vec<Vec<String>>,
    volume_env: Vec<(String, String)>,
    access: Access,
    prepare: Option<Prepare<'p>>,
}

impl<'p> ClusterBuilder<'p> {
    /// `count` volume servers with no zone or rack (the default: none).
    pub fn volumes(mut self, count: usize) -> Self {
        self.volumes = count;
        self
    }

    /// One volume server per entry of `zones`, in that zone, each on its own
    /// rack (instead of [`ClusterBuilder::volumes`]).
    pub fn zones(mut self, zones: &[&str]) -> Self {
        self.zones = strings(zones);
        self
    }

    /// The directory places `copies` copies of each volume
    /// (`--replication`).
    pub fn replication(mut self, copies: usize) -> Self {
        self.replication = Some(copies);
        self
    }

    /// A directory group of `nodes` nodes (each a process with its own data
    /// directory) instead of one directory process.
    pub fn group(mut self, nodes: usize) -> Self {
        self.group = nodes;
        self
    }

    /// Extra arguments of the directory (or of every group node).
    pub fn directory_args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.directory_args.extend(strings(args));
        self
    }

    /// An environment variable of the directory's processes (failpoints).
    pub fn directory_env(mut self, key: &str, value: &str) -> Self {
        self.directory_env.push((key.into(), value.into()));
        self
    }

    /// Extra arguments of every volume server.
    pub fn volume_args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.volume_args.extend(strings(args));
        self
    }

    /// Extra arguments of each volume server, in order (their
    /// certificates), after [`ClusterBuilder::volume_args`].
    pub fn volume_args_each(mut self, args: impl IntoIterator<Item = Vec<String>>) -> Self {
        self.volume_args_each = args.into_iter().collect();
        self
    }

    /// An environment variable of the volume servers (failpoints).
    pub fn volume_env(mut self, key: &str, value: &str) -> Self {
        self.volume_env.push((key.into(), value.into()));
        self
    }

    /// The cluster requires tokens: the test's clients send `token`.
    pub fn token(mut self, token: &str) -> Self {
        self.access.token = Some(token.to_owned());
        self
    }

    /// What the test's clients present (TLS, a token).
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Calls `prepare` with each volume server's data directory (created)
    /// before that server starts: to put a small file system there, say.
    pub fn prepare(mut self, prepare: impl FnMut(&Path) + 'p) -> Self {
        self.prepare = Some(Box::new(prepare));
        self
    }

    /// Starts the directory and every volume server, and waits until the
    /// directory sees them all alive.
    pub async fn start(mut self) -> Cluster {
        let count = if self.zones.is_empty() {
            self.volumes
        } else {
            assert_eq!(self.volumes, 0, "either volumes(n) or zones(..)");
            self.zones.len()
        };
        let mut directory_args = Vec::new();
        if let Some(copies) = self.replication {
            directory_args.extend(["--replication".to_owned(), copies.to_string()]);
        }
        directory_args.extend(std::mem::take(&mut self.directory_args));
        let volumes = (0..count)
            .map(|i| {
                let mut args = self.volume_args_each.get(i).cloned().unwrap_or_default();
                if let Some(zone) = self.zones.get(i) {
                    args.extend([
                        "--zone".into(),
                        zone.clone(),
                        "--rack".into(),
                        format!("r{i}"),
                    ]);
                }
                VolumeServer {
                    ports: VolumePorts::free(),
                    proc: None,
                    args,
                }
            })
            .collect();
        let mut cluster = Cluster {
            root: tempfile::Builder::new()
                .prefix("hayloft-e2e")
                .disable_cleanup(std::env::var_os("HAYLOFT_KEEP_TEST_DIRS").is_some())
                .tempdir()
                .expect("temp dir"),
            directory_port: free_port(),
            directory_metrics_port: free_port(),
            directory: None,
            volumes,
            volume_args: self.volume_args,
            volume_env: self.volume_env,
            directory_args,
            directory_env: self.directory_env,
            group: (0..self.group)
                .map(|_| GroupNode {
                    port: free_port(),
                    metrics: free_port(),
                    proc: None,
                    join: false,
                })
                .collect(),
            access: self.access,
        };
        cluster.start_directory();
        for i in 0..count {
            if let Some(prepare) = &mut self.prepare {
                let dir = cluster.volume_dir(i);
                std::fs::create_dir_all(&dir).unwrap();
                prepare(&dir);
            }
            cluster.start_volume(i);
        }
        cluster.wait_alive(count).await;
        cluster
    }
}
