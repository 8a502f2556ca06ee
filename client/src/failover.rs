//! A call made in the first region that can serve it (see
//! [`crate::regions`] for the order and the skipping).
//!
//! Each kind of call says why a region could not serve it: a region
//! *down* (its directory unreachable, or unable to take an upload after
//! every attempt) is skipped for a while; a region that answered but
//! holds nothing for the call (a volume it does not know, a blob it lacks)
//! is only passed over for this call; any other answer (a bad argument, a
//! denied token) is the call's answer. When no region serves the call, the
//! error names each region and why ([`Error::Regions`]).

#[allow(unused_imports)]
use crate::prelude::*;

/// Why one region did not serve a call.
pub(crate) enum Miss {
    /// The region is unreachable or cannot do it now: skipped for a while.
    Down(Error),
    /// The region answered, but holds nothing for this call.
    NotHere(Error),
    /// The answer to the call: no other region is asked.
    Answer(Error),
}

impl Miss {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Miss::Down(e) | Miss::NotHere(e) | Miss::Answer(e) => e,
        }
    }

    /// A failed directory call: down if the region did not answer (no
    /// connection, no leader, no answer in time, UNAVAILABLE), else the
    /// answer.
    pub(crate) fn directory(error: Error) -> Miss {
        if unreachable(&error) {
            Miss::Down(error)
        } else {
            Miss::Answer(error)
        }
    }
}

/// True for a failure that says a region (or a server) did not answer,
/// or cannot serve now: no connection, UNAVAILABLE, no answer in time.
pub(crate) fn unreachable(error: &Error) -> bool {
    matches!(error, Error::Connect { .. })
        || matches!(
            error.code(),
            Some(Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
        )
}

/// One region that did not serve a call, and why.
#[derive(Debug)]
pub struct RegionFailure {
    /// The region's name.
    pub region: String,
    /// What went wrong there.
    pub error: Error,
    /// Whether the region was unreachable (or could not take the call
    /// now), as opposed to having answered.
    pub unreachable: bool,
}

/// One region of a client: its directory group, and what the client
/// learnt there (volume locations, reserved ids).
pub(crate) struct RegionState {
    pub(crate) name: String,
    pub(crate) directory: hayloft_proto::Directories,
    pub(crate) locations: Mutex<HashMap<u32, Vec<ServerLocation>>>,
    /// Reserved ids per collection. A `tokio` mutex: the uploader that
    /// finds none left makes the one `Assign` the others wait for.
    pub(crate) reserved: tokio::sync::Mutex<HashMap<String, Reservation>>,
}

impl RegionState {
    pub(crate) fn new(name: String, directory: hayloft_proto::Directories) -> RegionState {
        RegionState {
            name,
            directory,
            locations: Mutex::new(HashMap::new()),
            reserved: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

/// How long the quick check of a region that failed lately waits for one
/// of its directory nodes to accept a connection.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

impl Client {
    /// Whether the client has several regions to fail over between.
    pub(crate) fn multi_region(&self) -> bool {
        self.regions.len() > 1
    }

    /// How long an `Assign` answered UNAVAILABLE (a cluster still
    /// starting: no volume server registered yet) is asked again: for
    /// [`STARTUP_WAIT`] with one region; not at all with several (the
    /// region cannot take uploads now: the next one is asked).
    pub(crate) fn startup_wait(&self) -> Duration {
        if self.multi_region() {
            Duration::ZERO
        } else {
            STARTUP_WAIT
        }
    }

    /// Runs `call` (given a region's index) in the first region that
    /// serves it: see the module docs. With one region, `call` runs once
    /// and its error is returned as it is.
    pub(crate) async fn in_regions<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, Miss>>,
    {
        if !self.multi_region() {
            return call(0).await.map_err(Miss::into_error);
        }
        let turns = self.router.lock().plan(Instant::now());
        let mut failures = Vec::new();
        for turn in turns {
            let region = &self.regions[turn.index];
            if turn.check_first
                && let Err(error) = self.check_region(region).await
            {
                self.router.lock().failed(turn.index, Instant::now());
                tracing::debug!(region = %region.name, %error, "region still unreachable; skipped");
                failures.push(RegionFailure {
                    region: region.name.clone(),
                    error,
                    unreachable: true,
                });
                continue;
            }
            let (error, down) = match call(turn.index).await {
                Ok(answer) => {
                    self.router.lock().answered(turn.index);
                    return Ok(answer);
                }
                Err(Miss::Answer(error)) => {
                    self.router.lock().answered(turn.index);
                    return Err(error);
                }
                Err(Miss::NotHere(error)) => {
                    self.router.lock().answered(turn.index);
                    (error, false)
                }
                Err(Miss::Down(error)) => {
                    self.router.lock().failed(turn.index, Instant::now());
                    tracing::warn!(
                        region = %region.name,
                        %error,
                        skipped_for = ?self.failover.skip_for,
                        "region failed; the next one is used"
                    );
                    (error, true)
                }
            };
            failures.push(RegionFailure {
                region: region.name.clone(),
                error,
                unreachable: down,
            });
        }
        Err(Error::Regions(failures))
    }

    /// Whether one of `region`'s directory nodes accepts a connection
    /// within [`CHECK_TIMEOUT`]: a region that failed lately is checked
    /// so before a call waits [`crate::Failover::patience`] for it.
    pub(crate) async fn check_region(&self, region: &RegionState) -> Result<()> {
        let mut last = None;
        for addr in region.directory.addrs() {
            let endpoint = endpoint(&self.credential, &addr)?.connect_timeout(CHECK_TIMEOUT);
            match tokio::time::timeout(CHECK_TIMEOUT, endpoint.connect()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(source)) => last = Some(Error::Connect { addr, source }),
                Err(_) => {
                    last = Some(Error::Status(tonic::Status::unavailable(format!(
                        "{addr}: no connection within {CHECK_TIMEOUT:?}"
                    ))))
                }
            }
        }
        Err(last.unwrap_or(Error::NoLocation(0)))
    }
}

/// The message of [`Error::Regions`]: each region and why.
pub(crate) fn describe(failures: &[RegionFailure]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|f| {
            let kind = if f.unreachable {
                "unreachable"
            } else {
                "answered"
            };
            format!("region {} ({kind}): {}", f.region, f.error)
        })
        .collect();
    format!("no region could serve the call: {}", each.join("; "))
}
