//! What the access-control tests share: a key ring with known secrets,
//! plain HTTP reads, and waiting for an origin to guard a collection.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;

use super::{eventually, secs, try_eventually};

pub const K1: &[u8] = b"k1-secret-k1-secret-k1-secret-k1-secret";
pub const K2: &[u8] = b"k2-secret-k2-secret-k2-secret-k2-secret";

/// Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Writes the key ring `keys.toml` in `dir`: k1 (signing) and, if
/// `with_k2`, k2.
pub fn write_keyring(dir: &std::path::Path, with_k2: bool) -> std::path::PathBuf {
    std::fs::write(dir.join("k1"), K1).unwrap();
    std::fs::write(dir.join("k2"), K2).unwrap();
    let mut text = "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n".to_owned();
    if with_k2 {
        text += "[[keys]]\nid = \"k2\"\nsecret_file = \"k2\"\n";
    }
    let path = dir.join("keys.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A plain GET.
pub async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap()
}

/// Waits until an unsigned GET of `url` is refused (403): the origin heard
/// of the signed collections in a heartbeat's answer.
pub async fn wait_refused(url: &str) {
    eventually(
        secs(10),
        "an unsigned private read refused",
        async || match get(url).await.status() {
            StatusCode::FORBIDDEN => Ok(()),
            status => Err(status),
        },
    )
    .await;
}

/// The lines of the audit log at `path`, once one satisfies `last` (or
/// after 15 s: the caller's assertions then say what is missing).
pub async fn audit_lines(
    path: &std::path::Path,
    last: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    try_eventually(secs(15), async || {
        let lines = read();
        lines.iter().any(&last).then_some(lines)
    })
    .await
    .unwrap_or_else(|_| read())
}

/// A `hayloft server` started from a config file: the addresses at the top
/// (every port free, metrics included), then `sections`; `flags` after
/// `--config`.
pub struct Embedded {
    pub server: super::Proc,
    /// The directory's address.
    pub addr: String,
    pub http: u16,
    pub metrics: u16,
}

impl Embedded {
    pub fn start(dir: &std::path::Path, sections: &str, flags: &[&str]) -> Embedded {
        let port = super::free_port;
        let (directory, grpc, http, metrics) = (port(), port(), port(), port());
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{data}\"\n\
                 directory_listen = \"127.0.0.1:{directory}\"\n\
                 grpc_listen = \"127.0.0.1:{grpc}\"\n\
                 http_listen = \"127.0.0.1:{http}\"\n\
                 metrics_listen = \"127.0.0.1:{metrics}\"\n{sections}",
                data = dir.join("data").display(),
            ),
        )
        .unwrap();
        let mut args = vec![
            "server".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        Embedded {
            server: super::spawn(&args, &dir.join("server.log")),
            addr: format!("127.0.0.1:{directory}"),
            http,
            metrics,
        }
    }
}

/// A client of the embedded server at `addr`, once it answers.
pub async fn connect_when_up(addr: &str) -> hayloft_client::Client {
    eventually(secs(30), "the server to answer", async || {
        hayloft_client::Client::connect(addr).await
    })
    .await
}
