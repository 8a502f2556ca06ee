//! A real S3-compatible server (moto) for the cold tier's tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::eventually::{eventually, secs};
use super::free_port;

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
        let url = format!("{}/moto-api/", self.endpoint());
        eventually(secs(30), "moto to answer", async || {
            reqwest::get(&url).await?.error_for_status()
        })
        .await;
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
