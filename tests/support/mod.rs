//! Starting and stopping real `hayloft` processes for end-to-end tests.
//!
//! Every test gets its own temp directory and its own ports (picked free on
//! 127.0.0.1), so tests run in parallel without sharing anything.
//!
//! # Layout
//! - this file: processes ([`Proc`]), free ports, failpoints, test content,
//!   the operator page in a headless browser ([`browse`]),
//!   the `hayloft` command;
//! - `cluster`: [`Cluster::builder`] and the cluster's verbs (`kill_volume`,
//!   `pause_volume`, `restart_volume`, `kill_node`, ...);
//! - `eventually`: waiting for a state ([`eventually`]), never for a time;
//! - `s3`: a real S3-compatible server (moto) for the cold tier;
//! - `replicas`, `access`, `regions`: what the replication, access and
//!   regions tests share.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of this

pub mod access;
mod cluster;
mod eventually;
pub mod regions;
pub mod replicas;
mod s3;

pub use cluster::{Access, Cluster, ClusterBuilder, VolumePorts};
pub use eventually::{
    POLL, eventually, eventually_blocking, secs, try_eventually, try_eventually_blocking,
};
pub use s3::S3Server;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process, which is not
        // reaped before `self` is dropped, so its pid is still its own.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// SIGTERM, then wait: the graceful path.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = eventually_blocking(secs(20), "the process to exit after SIGTERM", || {
            self.child.try_wait().ok().flatten()
        });
        assert!(
            status.success(),
            "process exited with {status} after SIGTERM"
        );
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

pub fn spawn_with_env(args: &[String], log: &Path, env: &[(String, String)]) -> Proc {
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
        .envs(cluster.client_env().iter().map(|(k, v)| (k, v)))
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
            .envs(cluster.client_env().iter().map(|(k, v)| (k, v)))
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

/// The operator page's DOM as a real headless browser (Debian's
/// `chromium`, installed by scripts/setup.sh) renders it; also saves a
/// screenshot to `png`.
pub fn browse(url: &str, png: &std::path::Path) -> String {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(args)
            .arg(url)
            .output()
            .expect("chromium is installed by scripts/setup.sh");
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    run(&[
        "--window-size=1000,1600",
        &format!("--screenshot={}", png.display()),
    ]);
    run(&["--dump-dom"])
}

/// The value of attribute `name` in the first element of `dom` whose tag
/// holds every one of `marks` (attribute values are unique enough here).
pub fn attribute(dom: &str, marks: &[&str], name: &str) -> Option<String> {
    dom.split('<')
        .find(|tag| marks.iter().all(|m| tag.contains(m)))
        .and_then(|tag| tag.split(&format!(" {name}=\"")).nth(1))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
}
