//! Files a server re-reads without a restart (its key ring, its TLS
//! certificates): on SIGHUP, and when their modification times change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The files read last time with their modification times.
#[derive(Debug, Default)]
pub(crate) struct FileStamps(Vec<(PathBuf, Option<SystemTime>)>);

impl FileStamps {
    /// The stamps of `files` now.
    pub(crate) fn of(files: Vec<PathBuf>) -> FileStamps {
        FileStamps(
            files
                .into_iter()
                .map(|f| {
                    let modified = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
                    (f, modified)
                })
                .collect(),
        )
    }

    /// Whether a file changed (or appeared, or went) since the stamps.
    pub(crate) fn changed(&self) -> bool {
        self.0.iter().any(|(file, modified)| {
            std::fs::metadata(file).and_then(|m| m.modified()).ok() != *modified
        })
    }

    /// The same files, stamped now: after a reload that failed, the change
    /// is noticed again only when the files change again.
    pub(crate) fn restamp(&self) -> FileStamps {
        FileStamps::of(self.0.iter().map(|(f, _)| f.clone()).collect())
    }
}

/// Something a server reloads from files.
pub trait Reload: Send + Sync {
    /// What it is, for logs ("key ring", "TLS certificates").
    const WHAT: &'static str;
    /// The counter of reloads, labelled `result` = `ok` | `error`.
    const METRIC: &'static str;
    /// Whether its files changed since they were last read.
    fn changed(&self) -> bool;
    /// Reads its files again; on error what is in use stays. Ok describes
    /// what is now in use (for the log line).
    fn reload(&self) -> Result<String, String>;
}

/// How often [`watch`] looks at the files.
const POLL: Duration = Duration::from_secs(2);

/// Reloads `what` on SIGHUP and when its files change, until `stop`. A
/// reload that fails keeps what is in use, and says why.
pub async fn watch<R: Reload>(what: Arc<R>, stop: impl std::future::Future<Output = ()>) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(stop);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            _ = &mut stop => return,
            _ = hup => "SIGHUP",
            _ = tokio::time::sleep(POLL) => {
                if !what.changed() {
                    continue;
                }
                "its files changed"
            }
        };
        match what.reload() {
            Ok(now) => {
                metrics::counter!(R::METRIC, "result" => "ok").increment(1);
                tracing::info!(why, now, "{} reloaded", R::WHAT);
            }
            Err(error) => {
                metrics::counter!(R::METRIC, "result" => "error").increment(1);
                tracing::error!(why, %error, "{} not reloaded; what is in use stays", R::WHAT);
            }
        }
    }
}
