//! Calls to a directory group that find its leader.
//!
//! Only the group's leader answers directory calls. Another node answers
//! UNAVAILABLE with the `hayloft-not-leader` metadata, and the leader's
//! address in `hayloft-leader` if it knows one. [`Directories::call`] sends a
//! call to the node it believes leads; on such an answer it retries at the
//! named leader, and on a node it cannot reach (or none named) at the next
//! address of the list, backing off, for up to [`Directories::patience`]:
//! an election costs the caller a delay, not an error.
//!
//! The addresses given are a seed list: a leader named that is not on it
//! joins it, and a node that names no leader is asked for the group's
//! members (`Node`), which join it too. A node added to the group after the
//! caller started (`hayloft directory add-node`) is found that way, even
//! once every address given has left the group.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::auth::{AuthChannel, Credential};
use crate::directory_client::DirectoryClient;

/// Asks the directory node at `addr` (host:port) who it is (`Node`): its
/// id, role, term, leader and members. Err describes why it did not answer
/// within `timeout` (connection refused, a status, the time spent).
pub async fn ask_node(
    addr: &str,
    timeout: Duration,
    credential: &Credential,
) -> Result<crate::NodeStatus, String> {
    let asked = async {
        let channel = credential
            .endpoint(addr)
            .map_err(|e| e.message().to_owned())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut client = DirectoryClient::new(credential.channel(channel));
        client
            .node(crate::NodeRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| e.message().to_owned())
    };
    tokio::time::timeout(timeout, asked)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

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
    addrs: Arc<Mutex<Vec<String>>>,
    current: Arc<Mutex<Current>>,
    patience: Duration,
    call_timeout: Duration,
    credential: Credential,
}

struct Current {
    addr: String,
    client: DirectoryClient<AuthChannel>,
}

fn connect(
    addr: &str,
    timeout: Duration,
    credential: &Credential,
) -> Result<DirectoryClient<AuthChannel>, Status> {
    let endpoint = credential
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(2))
        // A hung node (stopped, partitioned) is left for the next.
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(
        DirectoryClient::new(credential.channel(endpoint.connect_lazy()))
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES),
    )
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
            connect(addr, CALL_TIMEOUT, &Credential::none())?;
        }
        Ok(Directories {
            current: Arc::new(Mutex::new(Current {
                client: connect(&first, CALL_TIMEOUT, &Credential::none())?,
                addr: first,
            })),
            addrs: Arc::new(Mutex::new(addrs)),
            patience: DEFAULT_PATIENCE,
            call_timeout: CALL_TIMEOUT,
            credential: Credential::none(),
        })
    }

    /// The same group, sending `credential` with every call.
    pub fn with_credential(mut self, credential: Credential) -> Result<Directories, Status> {
        self.credential = credential;
        {
            let mut current = self.current.lock().expect("not poisoned");
            current.client = connect(&current.addr, self.call_timeout, &self.credential)?;
        }
        Ok(self)
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
            current.client = connect(&current.addr, timeout, &self.credential)?;
        }
        Ok(self)
    }

    /// How long a call keeps looking for a leader.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// The addresses known: those given, and members learnt since.
    pub fn addrs(&self) -> Vec<String> {
        self.addrs.lock().expect("not poisoned").clone()
    }

    /// Adds `addr` to the known addresses; true if it was new.
    fn learn(&self, addr: &str) -> bool {
        let mut addrs = self.addrs.lock().expect("not poisoned");
        let new = !addrs.iter().any(|a| a == addr);
        if new {
            addrs.push(addr.to_owned());
        }
        new
    }

    /// Asks the node behind `client` (which answered, but named no leader)
    /// for the group's members, and learns their addresses. Answers the
    /// first new one: a node added since, likely the one to ask next.
    async fn learn_members(&self, mut client: DirectoryClient<AuthChannel>) -> Option<String> {
        let asked = client.node(crate::NodeRequest {});
        let node = match tokio::time::timeout(Duration::from_secs(2), asked).await {
            Ok(Ok(node)) => node.into_inner(),
            _ => return None,
        };
        let mut first = None;
        for member in &node.members {
            if let Some((_, addr)) = member.split_once('=')
                && self.learn(addr)
            {
                first.get_or_insert_with(|| addr.to_owned());
            }
        }
        first
    }

    /// A client of the node believed to lead (for calls that must not be
    /// retried; most should go through [`Directories::call`]).
    pub fn client(&self) -> DirectoryClient<AuthChannel> {
        self.current.lock().expect("not poisoned").client.clone()
    }

    /// Runs `call` against the leader: see the module docs. The last
    /// refusal is returned once `patience` is spent. `call` may run more
    /// than once, so it must be safe to repeat (directory calls are: an id
    /// handed out twice is never handed out again, just lost).
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(DirectoryClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        // Pauses between the addresses of an election or an unreachable node.
        let mut pauses = backon::BackoffBuilder::build(crate::retry::doubling(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ));
        loop {
            let (addr, client) = {
                let current = self.current.lock().expect("not poisoned");
                (current.addr.clone(), current.client.clone())
            };
            let status = match call(client.clone()).await {
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
            if let Some(refusal) = crate::tls_refusal(&status) {
                return Err(Status::failed_precondition(format!("{addr}: {refusal}")));
            }
            // Where to go next: the leader named, or (an election, or this
            // node unreachable) the next address after a pause. Switched
            // even when giving up, so the next call starts there.
            // A node naming itself leads no more (it was removed).
            let hint = hint.filter(|h| *h != addr);
            let learnt = if not_leader && hint.is_none() {
                self.learn_members(client).await
            } else {
                None
            };
            let (next, pause) = match hint.or(learnt) {
                Some(leader) => {
                    self.learn(&leader);
                    (leader, false)
                }
                None => {
                    let addrs = self.addrs.lock().expect("not poisoned");
                    let at = addrs.iter().position(|a| *a == addr);
                    let index = at.map_or(0, |i| (i + 1) % addrs.len());
                    (addrs[index].clone(), true)
                }
            };
            if next != addr {
                let mut current = self.current.lock().expect("not poisoned");
                if current.addr == addr {
                    current.client = connect(&next, self.call_timeout, &self.credential)?;
                    current.addr = next;
                }
            }
            if started.elapsed() >= self.patience {
                return Err(status);
            }
            if pause {
                // Never runs out (no limit on attempts): `patience` ends it.
                let wait = pauses.next().unwrap_or(Duration::from_millis(500));
                tokio::time::sleep(wait).await;
            }
        }
    }
}
