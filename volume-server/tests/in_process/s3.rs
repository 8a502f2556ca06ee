//! A real S3-compatible server (moto) on a loopback port, for the cold
//! tier: the tests start one each, and it is killed when dropped. moto keeps
//! everything in memory, so a stopped one has lost every object.
//!
//! Installed by `scripts/setup.sh` under `.ci/venv`, or wherever
//! `HAYLOFT_MOTO_VENV` says (as the e2e tests' `tests/support/s3.rs`).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use hayloft_tiering::object::ObjectStoreConfig;

use crate::support::eventually;

/// A moto server, killed when dropped.
pub struct Moto {
    port: u16,
    child: Option<Child>,
    /// Its log (moto.log) lives here.
    _dir: tempfile::TempDir,
}

fn moto_bin() -> PathBuf {
    if let Some(venv) = std::env::var_os("HAYLOFT_MOTO_VENV") {
        return PathBuf::from(venv).join("bin/moto_server");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/venv/bin/moto_server")
}

/// A port free on 127.0.0.1 now (moto binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    pub async fn start() -> Moto {
        let bin = moto_bin();
        assert!(
            bin.exists(),
            "{} missing: run `bash scripts/setup.sh`, or set HAYLOFT_MOTO_VENV",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let moto = Moto {
            port,
            child: Some(child),
            _dir: dir,
        };
        let url = format!("{}/moto-api/", moto.endpoint());
        eventually(Duration::from_secs(30), "moto to answer", || async {
            let response = reqwest::get(&url).await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        moto
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto checks no signature).
    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// The keys of the objects in `bucket`.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::get(format!("{}/{bucket}", self.endpoint()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// A volume server's cold tier on this server.
    pub fn cold_tier(&self) -> ObjectStoreConfig {
        ObjectStoreConfig::S3 {
            endpoint: Some(self.endpoint()),
            region: "us-east-1".into(),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            force_path_style: true,
            timeout: Duration::from_secs(5),
        }
    }

    /// Kills the server (SIGKILL): S3 is unreachable, and everything it
    /// held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
