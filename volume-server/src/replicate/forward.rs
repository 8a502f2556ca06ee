//! Forwarding: the primary's write, small write (over a kept `Replicate`
//! link) and delete sent on to the other copies, and what failed.

#[allow(unused_imports)]
use super::*;

impl Replication {
    /// Opens a forwarded `Write` to each of `targets`.
    pub fn forward_write(
        &self,
        header: &WriteHeader,
        targets: &[ServerLocation],
        request_id: &str,
    ) -> Forward {
        let header = WriteHeader {
            replicas: Vec::new(),
            forwarded: true,
            ..header.clone()
        };
        let copies = targets
            .iter()
            .map(|target| {
                let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
                let first = WriteRequest {
                    part: Some(Part::Header(header.clone())),
                };
                // Room for FORWARD_QUEUE messages: the header always fits.
                let queued = tx.try_send(first).is_ok();
                let client = self.client(target);
                let request = hayloft_proto::with_request_id(ReceiverStream::new(rx), request_id);
                let reply = tokio::spawn(async move {
                    if !queued {
                        return Err(Status::internal("could not queue the header"));
                    }
                    Ok(client?.write(request).await?.into_inner())
                });
                Copy {
                    server_id: target.server_id.clone(),
                    tx: Some(tx),
                    reply: Some(reply),
                    failed: None,
                }
            })
            .collect();
        Forward {
            copies,
            timeout: self.timeout,
        }
    }

    /// The open `Replicate` stream to `target`, opened if there is none.
    pub(super) fn link(&self, target: &ServerLocation) -> Result<Arc<Link>, Status> {
        let mut links = self.links.lock();
        if let Some(link) = links.get(&target.grpc_addr)
            && !link.closed.load(Ordering::SeqCst)
        {
            return Ok(Arc::clone(link));
        }
        let mut client = self.client(target)?;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let link = Arc::new(Link {
            tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let reader = Arc::clone(&link);
        let task = tokio::spawn(async move {
            let ended = async {
                let mut answers = client
                    .replicate(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                while let Some(answer) = answers.message().await? {
                    let waiter = reader.pending.lock().remove(&answer.seq);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(if answer.code == 0 {
                            Ok(())
                        } else {
                            Err(Status::new(Code::from(answer.code), answer.message))
                        });
                    }
                }
                Err::<(), Status>(Status::unavailable("the copy ended the stream"))
            }
            .await;
            if let Err(status) = ended {
                reader.close(&status);
            }
        });
        *link.task.lock() = Some(task);
        links.insert(target.grpc_addr.clone(), Arc::clone(&link));
        Ok(link)
    }

    /// Forwards a whole small blob to each of `targets` over their links,
    /// concurrently; returns the copies that did not make it durable within
    /// the timeout.
    pub async fn forward_small(
        &self,
        header: &WriteHeader,
        data: &Bytes,
        targets: &[ServerLocation],
        request_id: &str,
    ) -> Vec<ForwardFailure> {
        let header = WriteHeader {
            replicas: Vec::new(),
            forwarded: true,
            ..header.clone()
        };
        let sends = targets.iter().map(|target| {
            let header = header.clone();
            async move {
                let result = self
                    .send_linked(target, header, data.clone(), request_id)
                    .await;
                result.err().map(|status| ForwardFailure {
                    server_id: target.server_id.clone(),
                    reason: format!("{:?}: {}", status.code(), status.message()),
                })
            }
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    pub(super) async fn send_linked(
        &self,
        target: &ServerLocation,
        header: WriteHeader,
        data: Bytes,
        request_id: &str,
    ) -> Result<(), Status> {
        let link = self.link(target)?;
        let seq = link.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.pending.lock().insert(seq, tx);
        // `close` sets the flag before it fails what is pending: either it
        // sees this entry, or this sees the flag.
        if link.closed.load(Ordering::SeqCst) {
            link.pending.lock().remove(&seq);
            return Err(Status::unavailable("the stream to the copy closed"));
        }
        let message = ReplicateRequest {
            seq,
            header: Some(header),
            data,
            request_id: request_id.to_owned(),
        };
        let timeout = self.timeout;
        let sent = tokio::time::timeout(timeout, async {
            link.tx
                .send(message)
                .await
                .map_err(|_| Status::unavailable("the stream to the copy closed"))?;
            rx.await
                .map_err(|_| Status::unavailable("the stream to the copy closed"))?
        })
        .await;
        match sent {
            Ok(result) => result,
            Err(_) => {
                // A copy that does not answer in time is reported stale;
                // the link is reset so that what it still holds is dropped.
                let status = Status::deadline_exceeded(format!("no answer within {timeout:?}"));
                link.close(&status);
                Err(status)
            }
        }
    }

    /// Forwards a delete to the other copies of its volume; returns the
    /// copies that deleted it and the ones that could not be reached.
    /// `verified`: this server checked the cookie against its own copy.
    pub async fn forward_delete(
        &self,
        blob_id: &str,
        volume: u32,
        verified: bool,
        request_id: &str,
    ) -> (usize, Vec<ForwardFailure>) {
        let targets = self.others_of(volume);
        let calls = targets.iter().map(|target| {
            let client = self.client(target);
            let request = hayloft_proto::with_request_id(
                DeleteRequest {
                    blob_id: blob_id.to_owned(),
                    forwarded: true,
                    verified,
                },
                request_id,
            );
            let timeout = self.timeout;
            async move {
                let call = async { client?.delete(request).await };
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(_)) => Ok(true),
                    Ok(Err(status)) if status.code() == Code::NotFound => Ok(false),
                    Ok(Err(status)) => Err(ForwardFailure {
                        server_id: target.server_id.clone(),
                        reason: format!("{:?}: {}", status.code(), status.message()),
                    }),
                    Err(_) => Err(ForwardFailure {
                        server_id: target.server_id.clone(),
                        reason: format!("no answer within {timeout:?}"),
                    }),
                }
            }
        });
        let mut deleted = 0;
        let mut failures = Vec::new();
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(failure) => failures.push(failure),
            }
        }
        (deleted, failures)
    }
}

/// A `Replicate` stream to one copy: small forwarded writes in flight on
/// it, by sequence number.
pub(super) struct Link {
    tx: mpsc::Sender<ReplicateRequest>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<(), Status>>>>,
    next: AtomicU64,
    closed: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Link {
    /// Fails every write in flight and resets the stream; the next forward
    /// opens a new one.
    fn close(&self, status: &Status) {
        self.closed.store(true, Ordering::SeqCst);
        let pending: Vec<_> = self.pending.lock().drain().collect();
        for (_, waiter) in pending {
            let _ = waiter.send(Err(Status::new(status.code(), status.message().to_owned())));
        }
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

/// One forwarded copy of a write in flight.
pub(super) struct Copy {
    server_id: String,
    tx: Option<mpsc::Sender<WriteRequest>>,
    reply: Option<JoinHandle<Result<WriteResponse, Status>>>,
    failed: Option<String>,
}

/// The forwarded copies of one write. Dropped before [`Forward::finish`],
/// it cancels them: their streams are reset and they store nothing.
pub struct Forward {
    copies: Vec<Copy>,
    timeout: Duration,
}

impl Forward {
    /// True if there is nothing to forward to (replication 1).
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// Hands `chunk` to every copy still going, waiting at most the timeout
    /// for a copy's queue to have room.
    pub async fn send(&mut self, chunk: &Bytes) {
        let timeout = self.timeout;
        let sends = self
            .copies
            .iter_mut()
            .filter(|c| c.failed.is_none())
            .map(|copy| {
                let message = WriteRequest {
                    part: Some(Part::Chunk(chunk.clone())),
                };
                async move {
                    let Some(tx) = &copy.tx else { return };
                    match tokio::time::timeout(timeout, tx.send(message)).await {
                        Ok(Ok(())) => {}
                        // The call ended early: its reply says why.
                        Ok(Err(_)) => copy.tx = None,
                        Err(_) => copy.failed = Some(format!("took no data for {timeout:?}")),
                    }
                }
            });
        futures::future::join_all(sends).await;
    }

    /// Ends the streams and waits until every copy has answered (at most the
    /// timeout each); returns the copies that failed.
    pub async fn finish(mut self) -> Vec<ForwardFailure> {
        let timeout = self.timeout;
        for copy in &mut self.copies {
            copy.tx = None;
        }
        let waits = self.copies.iter_mut().map(|copy| async move {
            if let Some(reason) = copy.failed.take() {
                return Some(reason);
            }
            let reply = copy.reply.as_mut()?;
            let outcome = tokio::time::timeout(timeout, reply).await;
            copy.reply = None;
            match outcome {
                Ok(Ok(Ok(_))) => None,
                Ok(Ok(Err(status))) => Some(format!("{:?}: {}", status.code(), status.message())),
                Ok(Err(join)) => Some(format!("forward task failed: {join}")),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            }
        });
        let reasons = futures::future::join_all(waits).await;
        self.copies
            .iter()
            .zip(reasons)
            .filter_map(|(copy, reason)| {
                reason.map(|reason| ForwardFailure {
                    server_id: copy.server_id.clone(),
                    reason,
                })
            })
            .collect()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        for copy in &mut self.copies {
            if let Some(reply) = copy.reply.take() {
                reply.abort();
            }
        }
    }
}
