//! Streams of independent requests (`WriteBatch`, `Replicate`), each
//! answered as it finishes, with a bound on those in flight.

#[allow(unused_imports)]
use super::*;

/// Largest blob a `WriteBatch` takes (larger ones go through `Write`): the
/// size whose copies travel whole over the replication links.
pub const BATCH_BLOB_MAX: u64 = LINKED_FORWARD_MAX;

/// Requests of one `WriteBatch` or `Replicate` stream written at once (and
/// answers queued).
pub(super) const STREAM_IN_FLIGHT: usize = 256;

/// Serves a stream of independent requests (`Replicate`, `WriteBatch`):
/// `handle` gets each with the [`Reply`] it owes and must not wait (it spawns
/// or hands the reply on), so that the requests' writes share group commits;
/// each is answered as it finishes. At most [`STREAM_IN_FLIGHT`] requests are
/// in flight or answered and not yet sent: past that the stream is not read,
/// and HTTP/2 flow control holds the sender back. A stream that breaks off
/// ends the loop; requests in flight still finish (durable), though their
/// answers may not reach the sender, which treats them as not stored. The
/// stream ends with the server (the sender opens a new one when it needs
/// one).
pub(super) fn answer_each<Resp, F>(
    mut incoming: Streaming<Resp::Request>,
    mut stop: Option<tokio::sync::watch::Receiver<bool>>,
    mut handle: F,
) -> Answers<Resp>
where
    Resp: StreamAnswer,
    F: FnMut(Resp::Request, Reply<Resp>) + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                break;
            };
            let message = tokio::select! {
                message = incoming.message() => message,
                () = stopped(&mut stop) => break,
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "request stream broke off");
                    break;
                }
            };
            let seq = Resp::seq_of(&message);
            handle(
                message,
                Reply {
                    seq,
                    owed: Some((tx.clone(), permit)),
                },
            );
        }
    });
    Answers { rx }
}

/// An answer on a request stream ([`answer_each`]).
pub(super) trait StreamAnswer: Send + 'static {
    /// The request this answers.
    type Request: Send + 'static;
    /// The request's sequence number, which its answer repeats.
    fn seq_of(request: &Self::Request) -> u64;
    /// The answer refusing request `seq` with `status`.
    fn refused(seq: u64, status: &Status) -> Self;
}

impl StreamAnswer for ReplicateResponse {
    type Request = ReplicateRequest;
    fn seq_of(request: &ReplicateRequest) -> u64 {
        request.seq
    }
    fn refused(seq: u64, status: &Status) -> Self {
        ReplicateResponse {
            seq,
            code: status.code() as i32,
            message: status.message().to_owned(),
        }
    }
}

impl StreamAnswer for WriteBatchResponse {
    type Request = WriteBatchRequest;
    fn seq_of(request: &WriteBatchRequest) -> u64 {
        request.seq
    }
    fn refused(seq: u64, status: &Status) -> Self {
        WriteBatchResponse {
            seq,
            code: status.code() as i32,
            message: status.message().to_owned(),
            written: None,
        }
    }
}

/// The answer owed to one request of a stream. Sending it frees the
/// request's place among those in flight once the answer is sent on; dropped
/// unsent (a task that panicked), it answers INTERNAL, so the sender does
/// not wait for its timeout.
pub(super) struct Reply<Resp: StreamAnswer> {
    pub(super) seq: u64,
    pub(super) owed: Option<(Queue<Resp>, tokio::sync::OwnedSemaphorePermit)>,
}

/// Where a stream's answers wait to be sent, each holding its request's
/// place among those in flight.
pub(super) type Queue<Resp> =
    tokio::sync::mpsc::UnboundedSender<(Resp, tokio::sync::OwnedSemaphorePermit)>;

impl<Resp: StreamAnswer> Reply<Resp> {
    /// Answers the request. Never blocks: may run under a volume's sync lock.
    pub(super) fn send(mut self, answer: Resp) {
        if let Some((queue, permit)) = self.owed.take() {
            let _ = queue.send((answer, permit));
        }
    }
}

impl<Resp: StreamAnswer> Drop for Reply<Resp> {
    fn drop(&mut self) {
        if let Some((queue, permit)) = self.owed.take() {
            let status = Status::internal("the write was abandoned (a storage task failed)");
            let _ = queue.send((Resp::refused(self.seq, &status), permit));
        }
    }
}

/// The answers of a request stream ([`answer_each`]), in order of
/// completion: those ready together go out together.
pub struct Answers<Resp> {
    pub(super) rx: tokio::sync::mpsc::UnboundedReceiver<(Resp, tokio::sync::OwnedSemaphorePermit)>,
}

impl<Resp> Stream for Answers<Resp> {
    type Item = Result<Resp, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        // The permit drops here: the request's place is free once its
        // answer is on its way.
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|answer| answer.map(|(answer, _permit)| Ok(answer)))
    }
}

/// Completes once `stop` is true (never without one).
pub(super) async fn stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

impl VolumeService {
    /// One blob of a `WriteBatch`: a whole small blob, written here and sent
    /// to the copies over their links.
    pub(super) async fn write_batched(
        &self,
        request: WriteBatchRequest,
        request_id: &str,
        who: &Who,
    ) -> Result<WriteResponse, Status> {
        let mut header = request
            .header
            .ok_or_else(|| Status::invalid_argument("a batched blob without a header"))?;
        if header.size > BATCH_BLOB_MAX {
            return Err(Status::invalid_argument(format!(
                "a batched blob is at most {BATCH_BLOB_MAX} bytes, this one declares {}; upload it with Write",
                header.size
            )));
        }
        if request.data.len() as u64 > header.size {
            return Err(too_long(header.size));
        }
        if (request.data.len() as u64) < header.size {
            return Err(truncated(request.data.len() as u64, header.size));
        }
        let (blob, place, meta, targets) = self.prepare_write(&mut header, who)?;
        let receipt = self
            .write_linked(
                place,
                blob,
                &header,
                meta,
                request.data,
                &targets,
                request_id,
            )
            .await?;
        metrics::bytes_in("grpc", header.size);
        Ok(WriteResponse {
            blob_id: blob.to_string(),
            size: header.size,
            etag: etag(receipt.checksum, header.size),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn owed(
        seq: u64,
        queue: &Queue<ReplicateResponse>,
        places: &Arc<tokio::sync::Semaphore>,
    ) -> Reply<ReplicateResponse> {
        Reply {
            seq,
            owed: Some((
                queue.clone(),
                Arc::clone(places)
                    .try_acquire_owned()
                    .expect("a free place"),
            )),
        }
    }

    #[tokio::test]
    async fn replies_go_out_in_order_of_completion_and_free_their_place_once_sent_on() {
        let (queue, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut answers = Answers { rx };
        let places = Arc::new(tokio::sync::Semaphore::new(2));
        let (first, second) = (owed(1, &queue, &places), owed(2, &queue, &places));
        assert_eq!(places.available_permits(), 0);
        second.send(ReplicateResponse {
            seq: 2,
            code: 0,
            message: String::new(),
        });
        // Answered but not yet sent on: its place is still taken.
        assert_eq!(places.available_permits(), 0);
        let answer = answers.next().await.unwrap().unwrap();
        assert_eq!((answer.seq, answer.code), (2, 0));
        assert_eq!(places.available_permits(), 1);
        // A reply dropped unsent (its task failed) answers INTERNAL rather
        // than leaving the sender to its timeout.
        drop(queue);
        drop(first);
        let answer = answers.next().await.unwrap().unwrap();
        assert_eq!(answer.seq, 1);
        assert_eq!(answer.code, tonic::Code::Internal as i32);
        assert!(answer.message.contains("abandoned"), "{}", answer.message);
        assert_eq!(places.available_permits(), 2);
    }
}
