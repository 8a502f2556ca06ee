//! Calls to a directory group that find its leader.
//!
//! Only the group's leader answers directory calls. Another node answers
//! UNAVAILABLE with the `hayloft-not-leader` metadata, and the leader's
//! address in `hayloft-leader` if it knows one. [`Directories::call`] sends a
//! call to the node it believes leads; on such an answer it retries at the
//! named leader, and on a node it cannot reach (or none named) at the next
//! address of the list, backing off, for up to [`Directories::patience`]:
//! an election costs the caller a delay, not an error.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::directory_client::DirectoryClient;

/// Metadata key naming the leader's address in a follower's refusal.
pub const LEADER_METADATA: &str = "hayloft-leader";

/// Metadata key marking a refusal by a node that does not lead.
pub const NOT_LEADER_METADATA: &str = "hayloft-not-leader";

/// How long [`Directories::call`] keeps looking for a leader by default:
/// several elections (each 1-2 s by default, more when votes split) and a
/// restart of the whole group.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

/// Longest one call to one node may take (an `Assign` that creates a volume
/// waits for its servers up to 5 s).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The nodes of a directory group, and the one believed to lead.
#[derive(Clone)]
pub struct Directories {
    addrs: Arc<Vec<String>>,
    current: Arc<Mutex<Current>>,
    patience: Duration,
    call_timeout: Duration,
}

struct Current {
    addr: String,
    client: DirectoryClient<Channel>,
}

fn connect(addr: &str, timeout: Duration) -> Result<DirectoryClient<Channel>, Status> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("bad directory address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        // A hung node (stopped, partitioned) is left for the next.
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(DirectoryClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES))
}

impl Directories {
    /// The group at `addrs`: "host:port" or several, comma-separated.
    /// Connects lazily, at the first call.
    pub fn new(addrs: &str) -> Result<Directories, Status> {
        let addrs: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let first = addrs
            .first()
            .ok_or_else(|| Status::invalid_argument("no directory address given"))?
            .clone();
        for addr in &addrs[1..] {
            connect(addr, CALL_TIMEOUT)?;
        }
        Ok(Directories {
            current: Arc::new(Mutex::new(Current {
                client: connect(&first, CALL_TIMEOUT)?,
                addr: first,
            })),
            addrs: Arc::new(addrs),
            patience: DEFAULT_PATIENCE,
            call_timeout: CALL_TIMEOUT,
        })
    }

    /// The same group, looking for a leader for up to `patience` per call.
    pub fn with_patience(mut self, patience: Duration) -> Directories {
        self.patience = patience;
        self
    }

    /// The same group, leaving a node that has not answered one call
    /// within `timeout` for the next (default [`CALL_TIMEOUT`]).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Result<Directories, Status> {
        self.call_timeout = timeout;
        {
            let mut current = self.current.lock().expect("not poisoned");
            current.client = connect(&current.addr, timeout)?;
        }
        Ok(self)
    }

    /// How long a call keeps looking for a leader.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// The addresses given.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// A client of the node believed to lead (for calls that must not be
    /// retried; most should go through [`Directories::call`]).
    pub fn client(&self) -> DirectoryClient<Channel> {
        self.current.lock().expect("not poisoned").client.clone()
    }

    /// Runs `call` against the leader: see the module docs. The last
    /// refusal is returned once `patience` is spent. `call` may run more
    /// than once, so it must be safe to repeat (directory calls are: an id
    /// handed out twice is never handed out again, just lost).
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(DirectoryClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let (addr, client) = {
                let current = self.current.lock().expect("not poisoned");
                (current.addr.clone(), current.client.clone())
            };
            let status = match call(client).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let hint = status
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let not_leader = status.metadata().get(NOT_LEADER_METADATA).is_some();
            // A status with a source was made by this side's transport (no
            // connection, reset mid-call, no answer in time), not answered
            // by a node.
            let unreachable = std::error::Error::source(&status).is_some()
                || matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
                || (status.code() == Code::Unavailable && status.message().contains("transport"));
            if !not_leader && !unreachable {
                return Err(status);
            }
            // Where to go next: the leader named, or (an election, or this
            // node unreachable) the next address after a pause. Switched
            // even when giving up, so the next call starts there.
            let (next, pause) = match hint.filter(|h| *h != addr) {
                Some(leader) => (leader, false),
                None => {
                    let at = self.addrs.iter().position(|a| *a == addr);
                    let index = at.map_or(0, |i| (i + 1) % self.addrs.len());
                    (self.addrs[index].clone(), true)
                }
            };
            if next != addr {
                let mut current = self.current.lock().expect("not poisoned");
                if current.addr == addr {
                    current.client = connect(&next, self.call_timeout)?;
                    current.addr = next;
                }
            }
            if started.elapsed() >= self.patience {
                return Err(status);
            }
            if pause {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}
