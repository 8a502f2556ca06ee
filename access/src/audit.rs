//! The audit log: one JSON line per access worth keeping, in a file with
//! size-based rotation.
//!
//! What is written (see README, "Audit log", for every field): every gRPC
//! call of a client (writes, each blob of a batch, deletes, admin calls,
//! `Assign`, `SignUrl`, token revocations), every refused request (bad or
//! missing token or signature, missing scope, over a rate limit), and
//! reads as `reads` says: `signed` (the default) logs HTTP reads of signed
//! collections and gRPC reads made with a token, `all` every read, `none`
//! no read. The servers' own calls to each other are logged only when
//! refused.
//!
//! Lines go to a buffer in memory; a thread of its own writes the buffer
//! out and `fdatasync`s it at least once a second, so a crash (of the
//! process or the machine) loses at most the last second. If the file
//! cannot be written the lines wait, up to [`MAX_BUFFERED`] bytes, then
//! are dropped and counted (`hayloft_audit_dropped_total`): a full disk
//! never stops the data path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

/// Which reads are logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditReads {
    /// None (writes, deletes, admin calls and refusals still are).
    None,
    /// HTTP reads of signed collections, gRPC reads made with a token.
    #[default]
    Signed,
    /// Every read.
    All,
}

/// The `[audit]` section of a server's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The log file; none (the default): no audit log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Rotate once the file is this large. Default `100MiB`.
    pub max_size: bytesize::ByteSize,
    /// Rotated files kept (`<path>.1` is the newest). Default 10.
    pub keep: u32,
    /// Which reads are logged. Default `signed`.
    pub reads: AuditReads,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            max_size: bytesize::ByteSize::mib(100),
            keep: 10,
            reads: AuditReads::Signed,
        }
    }
}

/// One audited access. Empty fields are left out of the line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// When it ended, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The server that logged it (`volume:<id>`, `directory:<node>`).
    pub server: String,
    /// The request's `x-request-id`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// Who: the token's subject, `key:<key id>` for a signed URL, or empty
    /// (anonymous).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The token's id (`jti`), what `hayloft token revoke` takes.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token_id: String,
    /// The client's address (behind trusted proxies, the one they name).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// `grpc` or `http`.
    pub protocol: &'static str,
    /// The gRPC method (`Write`, `Assign`...) or HTTP method (`GET`, `HEAD`).
    pub op: String,
    /// The blob.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub blob: String,
    /// Its collection.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub collection: String,
    /// What an admin call acted on (the token id a revocation names...).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The `Range` asked for.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub range: String,
    /// The gRPC code name (`OK`, `PERMISSION_DENIED`...) or HTTP status.
    pub status: String,
    /// Why it was refused, for refusals.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Bytes of blob data written or sent.
    pub bytes: u64,
    /// How long it took, in microseconds.
    pub micros: u64,
}

/// Lines waiting beyond this many bytes are dropped (and counted).
pub const MAX_BUFFERED: usize = 64 << 20;

/// Lines are written at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// An open audit log.
pub struct AuditLog {
    server: String,
    reads: AuditReads,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Bytes kept waiting at most ([`MAX_BUFFERED`]).
    max_buffered: usize,
    /// Lines dropped, and failed writes, since the log was opened.
    dropped: AtomicU64,
    write_errors: AtomicU64,
}

impl Shared {
    fn dropped(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        metrics::counter!("hayloft_audit_dropped_total").increment(lines);
    }
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    closing: bool,
    /// Bytes handed to the writer but not yet on disk.
    writing: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("server", &self.server)
            .field("reads", &self.reads)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (appends to) the log `config` names for `server`; `None`
    /// without a path.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(config: &AuditConfig, server: &str) -> std::io::Result<Option<Arc<AuditLog>>> {
        AuditLog::open_buffering(config, server, MAX_BUFFERED)
    }

    /// [`AuditLog::open`], keeping at most `max_buffered` bytes waiting.
    fn open_buffering(
        config: &AuditConfig,
        server: &str,
        max_buffered: usize,
    ) -> std::io::Result<Option<Arc<AuditLog>>> {
        let Some(path) = &config.path else {
            return Ok(None);
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        metrics::counter!("hayloft_audit_dropped_total").increment(0);
        metrics::counter!("hayloft_audit_write_errors_total").increment(0);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            max_buffered,
            dropped: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        });
        let writer = Writer {
            path: path.clone(),
            file,
            max_size: config.max_size.as_u64().max(4096),
            keep: config.keep,
            shared: Arc::clone(&shared),
        };
        let thread = std::thread::Builder::new()
            .name("hayloft-audit".into())
            .spawn(move || writer.run())?;
        Ok(Some(Arc::new(AuditLog {
            server: server.to_owned(),
            reads: config.reads,
            shared,
            writer: Mutex::new(Some(thread)),
        })))
    }

    /// Which reads are logged.
    pub fn reads(&self) -> AuditReads {
        self.reads
    }

    /// Lines dropped since the log was opened (as `hayloft_audit_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes that failed since the log was opened (as
    /// `hayloft_audit_write_errors_total`).
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    /// Appends `event` (its `time` and `server` are filled in here).
    pub fn record(&self, mut event: Event) {
        event.time =
            humantime_serde::re::humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        event.server.clone_from(&self.server);
        let mut line = match serde_json::to_vec(&event) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "an audit event could not be serialized");
                return;
            }
        };
        line.push(b'\n');
        let mut pending = self.shared.pending.lock();
        if pending.lines.len() + line.len() > self.shared.max_buffered {
            drop(pending);
            self.shared.dropped(1);
            return;
        }
        pending.lines.extend_from_slice(&line);
    }

    /// Writes out what is buffered and waits until it is on disk.
    pub fn flush(&self) {
        let mut pending = self.shared.pending.lock();
        self.shared.wake.notify_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while (!pending.lines.is_empty() || pending.writing) && Instant::now() < deadline {
            self.shared
                .wake
                .wait_for(&mut pending, Duration::from_millis(50));
        }
    }

    /// Writes out what is buffered and stops the writer.
    pub fn close(&self) {
        self.shared.pending.lock().closing = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.writer.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

struct Writer {
    path: PathBuf,
    file: std::fs::File,
    max_size: u64,
    keep: u32,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self) {
        let mut failing = false;
        loop {
            let (lines, closing) = {
                let mut pending = self.shared.pending.lock();
                if pending.lines.is_empty() && !pending.closing {
                    self.shared.wake.wait_for(&mut pending, FLUSH_EVERY);
                }
                pending.writing = !pending.lines.is_empty();
                (std::mem::take(&mut pending.lines), pending.closing)
            };
            if !lines.is_empty() {
                match self.write(&lines) {
                    Ok(()) => failing = false,
                    Err(e) => {
                        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("hayloft_audit_write_errors_total").increment(1);
                        if !failing {
                            tracing::error!(path = %self.path.display(), error = %e,
                                "cannot write the audit log; lines wait in memory");
                        }
                        failing = true;
                        // Back in front of what came since, if it fits.
                        let mut pending = self.shared.pending.lock();
                        if lines.len() + pending.lines.len() <= self.shared.max_buffered {
                            let newer = std::mem::replace(&mut pending.lines, lines);
                            pending.lines.extend_from_slice(&newer);
                        } else {
                            drop(pending);
                            let dropped = lines.iter().filter(|&&b| b == b'\n').count();
                            self.shared.dropped(dropped as u64);
                        }
                    }
                }
            }
            {
                let mut pending = self.shared.pending.lock();
                pending.writing = false;
                self.shared.wake.notify_all();
                if closing && (pending.lines.is_empty() || failing) {
                    return;
                }
            }
            if failing {
                std::thread::sleep(FLUSH_EVERY);
            }
        }
    }

    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.file.write_all(lines)?;
        self.file.sync_data()?;
        if self.file.metadata()?.len() >= self.max_size {
            self.rotate()?;
        }
        Ok(())
    }

    /// `<path>` becomes `<path>.1`, `.1` becomes `.2`..., the oldest beyond
    /// `keep` goes.
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_append(&self.path)?;
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: &str) -> Event {
        Event {
            protocol: "grpc",
            op: op.to_owned(),
            status: "OK".into(),
            ..Event::default()
        }
    }

    #[test]
    fn lines_reach_the_file_within_a_second_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.log");
        let config = AuditConfig {
            path: Some(path.clone()),
            max_size: bytesize::ByteSize::kib(4),
            keep: 2,
            reads: AuditReads::All,
        };
        let log = AuditLog::open(&config, "volume:test").unwrap().unwrap();
        log.record(Event {
            subject: "alice".into(),
            blob: "1000000001deadbeef".into(),
            bytes: 7,
            ..event("Write")
        });
        // Without a flush: on disk within a second (and a bit).
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.is_empty() || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["server"], "volume:test");
        assert_eq!(line["subject"], "alice");
        assert_eq!(line["op"], "Write");
        assert_eq!(line["bytes"], 7);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        assert!(line.get("range").is_none(), "empty fields are left out");
        // Past 4 KiB the file rotates; two old files are kept.
        for n in 0..300 {
            log.record(event("Delete"));
            if n % 10 == 0 {
                log.flush();
            }
        }
        log.flush();
        log.close();
        let numbered = |n: u32| dir.path().join(format!("audit/audit.log.{n}"));
        assert!(numbered(1).exists() && numbered(2).exists());
        assert!(!numbered(3).exists());
        for file in [path.clone(), numbered(1), numbered(2)] {
            let text = std::fs::read_to_string(&file).unwrap();
            // Rotated after the write that crossed 4 KiB (ten lines at most).
            assert!(text.len() <= 4096 + 2000, "{}", file.display());
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
    }

    #[test]
    fn a_disk_that_refuses_writes_costs_lines_beyond_the_buffer_and_never_a_wait() {
        // /dev/full opens, and every write to it fails with ENOSPC: a full
        // disk (root ignores permissions, so an unwritable file would not).
        let config = AuditConfig {
            path: Some(PathBuf::from("/dev/full")),
            ..AuditConfig::default()
        };
        let log = AuditLog::open_buffering(&config, "volume:test", 2048)
            .unwrap()
            .unwrap();
        log.record(event("Write"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.write_errors() == 0 {
            assert!(
                Instant::now() < deadline,
                "the failed write was not counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // What waits, once the writer has put back what it failed to write
        // (it then pauses a second before trying again).
        let waiting = || loop {
            let pending = log.shared.pending.lock();
            if !pending.writing {
                return String::from_utf8_lossy(&pending.lines).into_owned();
            }
            drop(pending);
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(waiting().contains("\"Write\""), "the failed line is kept");
        // Each record returns at once; what fits waits, the rest is counted.
        for _ in 0..100 {
            log.record(event("Delete"));
        }
        let kept = waiting();
        let dropped = log.dropped();
        assert!(kept.len() <= 2048, "{kept}");
        assert!(dropped > 50, "{dropped}");
        // Every line is either waiting or counted, none lost silently.
        assert_eq!(kept.lines().count() as u64 + dropped, 101, "{kept}");
        log.close();
    }

    #[test]
    fn no_path_no_log() {
        assert!(
            AuditLog::open(&AuditConfig::default(), "x")
                .unwrap()
                .is_none()
        );
    }
}
