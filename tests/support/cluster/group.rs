//! The directory as a group of nodes: starting, killing and pausing them,
//! and asking which leads.

use std::path::PathBuf;
use std::time::Duration;

use super::{Cluster, GroupNode};
use crate::support::eventually::{secs, try_eventually};
use crate::support::{Proc, free_port, log_tails, spawn_with_env};

impl Cluster {
    /// How many nodes the directory group has.
    pub fn node_count(&self) -> usize {
        self.group.len()
    }

    /// The address of directory group node `i` (node id `i + 1`).
    pub fn node_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.group[i].port)
    }

    /// The data directory of directory group node `i`.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("directory{}", i + 1))
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

    /// SIGKILL to group node `i` (or reaps it, if it exited by itself).
    pub fn kill_node(&mut self, i: usize) {
        self.group[i]
            .proc
            .take()
            .unwrap_or_else(|| panic!("directory node {i} is not running"))
            .kill();
    }

    /// Sends `signal` to group node `i` (SIGSTOP, SIGCONT).
    pub fn signal_node(&self, i: usize, signal: i32) {
        let proc = self.group[i].proc.as_ref().expect("directory node running");
        proc.signal(signal);
    }

    /// SIGSTOP to group node `i`: alive, silent.
    pub fn pause_node(&self, i: usize) {
        self.signal_node(i, libc::SIGSTOP);
    }

    /// SIGCONT to a paused group node `i`.
    pub fn resume_node(&self, i: usize) {
        self.signal_node(i, libc::SIGCONT);
    }

    /// True once group node `i` has exited by itself.
    pub fn node_exited(&mut self, i: usize) -> bool {
        self.group[i].proc.as_mut().is_some_and(Proc::exited)
    }

    /// Waits until directory group node `i` answers `Node`.
    pub async fn node_up(&self, i: usize) {
        let addr = self.node_addr(i);
        try_eventually(secs(30), async || {
            hayloft_proto::ask_node(&addr, Duration::from_secs(2), &Default::default())
                .await
                .map(|_| ())
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "directory node {i} does not answer: {last}\n{}",
                log_tails(self.root())
            )
        });
    }

    /// The index of the group node that leads now (the one that answers
    /// `Status`), waiting up to 30 s for an election.
    pub async fn leader(&self) -> usize {
        let credential = self.client_credential();
        try_eventually(secs(30), async || {
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
                    return Some(i);
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("no directory node leads:\n{}", log_tails(self.root())))
    }

    /// One value of a gauge on group node `i`'s `/metrics`.
    pub async fn node_metric(&self, i: usize, name: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.group[i].metrics);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }
}
