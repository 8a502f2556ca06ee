//! Writes: a client's blob to its id's primary copy, forwarded to the
//! other copies, acknowledged once every copy is durable.
//!
//! Why one file of ~610 lines: one streamed write is one protocol (id check,
//! grant, streaming to the primary, forwarding to the copies, the durable
//! acknowledgement), read top to bottom; the batch and ordered answers are
//! already in `answers.rs`.

#[allow(unused_imports)]
use super::*;

/// Blobs up to this size are gathered in memory and written with one
/// `pwrite`; larger ones are streamed to the volume chunk by chunk.
pub(super) const SMALL_BLOB: u64 = 1 << 20;

/// The volume a write goes to, with the blob's id claimed there.
pub(super) struct Place {
    pub(super) volume: Arc<hayloft_storage::Volume>,
    pub(super) claim: Claim,
}

/// Chunks of a streamed write received but not yet written (1 MiB each
/// from hayloft's clients): enough for the next chunks to be decoded while
/// one is written, few enough to bound a slow disk's backlog per upload.
pub(super) const STREAM_QUEUE_CHUNKS: usize = 4;

/// Writes a whole small blob and waits until it is durable, without a thread
/// per write: see [`write_whole_then`]. The outer error is the write's task
/// failing (a panic), the inner one the store's.
pub(super) async fn write_whole(
    place: Place,
    blob: BlobId,
    data: impl AsRef<[u8]> + Send + 'static,
    meta: NeedleMeta,
) -> Result<Result<WriteReceipt, Error>, Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    write_whole_then(place, blob, data, meta, move |outcome| {
        let _ = tx.send(outcome);
    });
    rx.await
        .map_err(|_| Status::internal("the storage task failed"))
}

/// Writes a whole small blob and calls `done` with the outcome once it is
/// durable (or failed), without a task or a thread per write: the `pwrite`
/// into the page cache runs here (cheap for blobs this small), and `done` is
/// called by the group commit that makes the write durable, for every write
/// it covers at once; one blocking-pool task runs each group commit. Falls
/// back to a blocking write when the volume holds writers back (a
/// compaction's swap, a move's last copy) or, with durability `never`, when
/// its periodic sync is due (the blocking write runs it).
///
/// `done` may run under the volume's sync lock: it must only hand the news
/// on (send on a channel), never call into the volume. It is dropped
/// without being called only if a storage task panics.
pub(super) fn write_whole_then(
    place: Place,
    blob: BlobId,
    data: impl AsRef<[u8]> + Send + 'static,
    meta: NeedleMeta,
    done: impl FnOnce(Result<WriteReceipt, Error>) + Send + 'static,
) {
    let Place { volume, claim } = place;
    let write = NeedleWrite {
        id: blob.needle,
        cookie: blob.cookie,
        data: data.as_ref(),
        meta,
    };
    match volume.try_write_queued(claim, &write) {
        Ok(Queued::Queued(queued)) => when_durable(volume, queued, Box::new(done)),
        Ok(Queued::WouldWait(claim)) => {
            let meta = write.meta;
            tokio::task::spawn_blocking(move || {
                done(volume.write_claimed(
                    claim,
                    &NeedleWrite {
                        id: blob.needle,
                        cookie: blob.cookie,
                        data: data.as_ref(),
                        meta,
                    },
                ))
            });
        }
        Err(e) => done(Err(e)),
    }
}

/// Calls `done` once the queued write is durable (or the volume poisoned),
/// running the group commit on the blocking pool if nobody else is.
pub(super) fn when_durable(
    volume: Arc<hayloft_storage::Volume>,
    queued: QueuedWrite,
    done: Box<dyn FnOnce(Result<WriteReceipt, Error>) + Send>,
) {
    let runtime = tokio::runtime::Handle::current();
    let (id, again) = (volume.id(), Arc::clone(&volume));
    let waiter = Box::new(move |wake| match wake {
        Wake::Durable => done(Ok(queued.receipt)),
        Wake::Poisoned => done(Err(Error::Poisoned(id))),
        // Nobody syncs now: register again, off the sync lock.
        Wake::Lead => {
            runtime.spawn(async move { when_durable(again, queued, done) });
        }
    });
    if let Some(duty) = volume.when_durable(queued.seq, waiter) {
        // Writes that are ready to run now (requests already received) go
        // first and join this group commit: it starts once they have.
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            tokio::task::spawn_blocking(move || duty.run());
        });
    }
}

/// The metadata a write header gives its needle, checked.
pub(super) fn meta_of(header: &WriteHeader) -> Result<NeedleMeta, Status> {
    let meta = NeedleMeta {
        content_type: header.content_type.clone(),
        file_name: header.file_name.clone(),
        last_modified: header.last_modified,
        expires_at: (header.expires_at != 0).then_some(header.expires_at),
    };
    meta.validate()
        .map_err(|_| Status::invalid_argument("content type or file name too long"))?;
    Ok(meta)
}

/// The whole blob of a small write: `size` bytes, one chunk kept as is.
pub(super) async fn gather(
    stream: &mut Streaming<WriteRequest>,
    size: u64,
) -> Result<Bytes, Status> {
    let mut first: Option<Bytes> = None;
    let mut rest = Vec::new();
    let mut len = 0u64;
    while let Some(chunk) = next_chunk(stream).await? {
        len += chunk.len() as u64;
        if len > size {
            return Err(too_long(size));
        }
        match &first {
            None => first = Some(chunk),
            Some(_) => rest.push(chunk),
        }
    }
    if len != size {
        return Err(truncated(len, size));
    }
    let first = first.unwrap_or_default();
    if rest.is_empty() {
        return Ok(first);
    }
    let mut all = Vec::with_capacity(size as usize);
    all.extend_from_slice(&first);
    for chunk in rest {
        all.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(all))
}

pub(super) async fn next_chunk(
    stream: &mut Streaming<WriteRequest>,
) -> Result<Option<Bytes>, Status> {
    match stream.message().await? {
        None => Ok(None),
        Some(WriteRequest {
            part: Some(Part::Chunk(chunk)),
        }) => Ok(Some(chunk)),
        Some(_) => Err(Status::invalid_argument(
            "only the first message may carry a header",
        )),
    }
}

pub(super) fn too_long(size: u64) -> Status {
    Status::invalid_argument(format!("more bytes than the {size} declared in the header"))
}

pub(super) fn truncated(received: u64, size: u64) -> Status {
    Status::invalid_argument(format!(
        "truncated upload: the stream ended after {received} of {size} bytes; nothing was stored"
    ))
}

impl VolumeService {
    /// Acknowledges a write only if every forwarded copy confirmed it; a
    /// copy that did not is reported stale and the write fails UNAVAILABLE
    /// (the client retries with a fresh id on another volume).
    pub(super) async fn settle(
        &self,
        blob: BlobId,
        local: impl Future<Output = Result<hayloft_storage::WriteReceipt, Status>>,
        forward: Forward,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        if forward.is_empty() {
            return local.await;
        }
        let started = Instant::now();
        let (receipt, failures) = tokio::join!(local, forward.finish());
        metrics::replication_wait(started.elapsed());
        self.settled(blob, receipt, &failures)
    }

    /// The outcome of a write from its own and its copies' outcomes.
    pub(super) fn settled(
        &self,
        blob: BlobId,
        receipt: Result<hayloft_storage::WriteReceipt, Status>,
        failures: &[crate::replicate::ForwardFailure],
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let receipt = receipt?;
        if failures.is_empty() {
            return Ok(receipt);
        }
        self.replication.record_failures(blob.volume().0, failures);
        Err(Status::unavailable(format!(
            "blob {blob} was not confirmed by every copy ({}); retry with a new id",
            failures
                .iter()
                .map(|f| format!("{}: {}", f.server_id, f.reason))
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }

    pub(super) fn failed(&self, error: Error, blob: Option<BlobId>) -> Status {
        // Full, or sealed by a copy's record past the maximum (made durable
        // here, idempotently).
        if let Error::VolumeFull { volume, .. } | Error::Sealed(volume) = error
            // A volume sealed durably before needs nothing more.
            && self
                .store
                .volume(volume)
                .is_ok_and(|v| v.sealed_at().is_none())
        {
            // Stop the directory handing out ids in it as soon as possible.
            let store = Arc::clone(&self.store);
            let notify = Arc::clone(&self.heartbeat_now);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.seal(volume) {
                    tracing::warn!(%volume, error = %e, "could not seal full volume");
                }
                notify.notify_one();
            });
        }
        if let Error::Poisoned(_) | Error::LowSpace { .. } = error {
            // Reported sealed (or paused) from now on: the directory assigns
            // elsewhere.
            self.heartbeat_now.notify_one();
        }
        grpc_status(&error, blob)
    }

    pub(super) async fn write_small(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        stream: &mut Streaming<WriteRequest>,
        mut forward: Forward,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        if forward.is_empty() {
            // One copy (or a copy's own write): a blob sent as one chunk is
            // written from the received buffer as it is.
            let data = gather(stream, header.size).await?;
            return write_whole(place, blob, data, meta)
                .await?
                .map_err(|e| self.failed(e, Some(blob)));
        }
        let mut data = Vec::with_capacity(header.size as usize);
        while let Some(chunk) = next_chunk(stream).await? {
            if data.len() as u64 + chunk.len() as u64 > header.size {
                return Err(too_long(header.size));
            }
            data.extend_from_slice(&chunk);
            forward.send(&chunk).await;
        }
        if data.len() as u64 != header.size {
            return Err(truncated(data.len() as u64, header.size));
        }
        // Tests: the primary's own write fails after the copies had it all.
        let fail = hayloft_storage::failpoint::active("primary-local-write");
        let local = async move {
            if fail {
                return Err(Status::internal("failpoint primary-local-write"));
            }
            write_whole(place, blob, data, meta)
                .await?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        self.settle(blob, local, forward).await
    }

    pub(super) async fn write_streamed(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        stream: &mut Streaming<WriteRequest>,
        mut forward: Forward,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let size = header.size;
        let Place { volume, claim } = place;
        let writer = blocking(move || volume.begin_write_claimed(claim, blob.cookie, size, meta))
            .await?
            .map_err(|e| self.failed(e, Some(blob)))?;
        // One blocking task writes the chunks as this task hands them over,
        // so the next chunk is received and decoded while the last one is
        // written (a queue of a few chunks between them).
        let (chunks, mut to_write) = tokio::sync::mpsc::channel::<Bytes>(STREAM_QUEUE_CHUNKS);
        let writing = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            while let Some(chunk) = to_write.blocking_recv() {
                writer.write(&chunk)?;
            }
            Ok::<_, Error>(writer)
        });
        // The writer comes back once every queued chunk is written, or with
        // the write's error (which is then the answer). Dropped unfinished
        // (the stream was refused or cut off, or this future was), it
        // abandons the record: its bytes become garbage, or are cut off if
        // last.
        let written = async move {
            writing
                .await
                .map_err(task_failed)?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        let mut received = 0u64;
        let refused = loop {
            let chunk = match next_chunk(stream).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break None,
                Err(status) => break Some(status),
            };
            received += chunk.len() as u64;
            if received > size {
                break Some(too_long(size));
            }
            // The copies get the chunk while this one writes it.
            let forwarded = chunk.clone();
            let (queued, ()) = tokio::join!(chunks.send(chunk), forward.send(&forwarded));
            if queued.is_err() {
                // The writer stopped on an error: it is the answer.
                break None;
            }
        };
        drop(chunks);
        let writer = written.await?;
        if let Some(status) = refused {
            return Err(status);
        }
        if writer.written() != size {
            return Err(truncated(writer.written(), size));
        }
        let local = async move {
            blocking(move || writer.finish())
                .await?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        self.settle(blob, local, forward).await
    }

    pub(super) async fn write_inner(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let request_id = hayloft_proto::request_id(request.metadata());
        let who = Who::of(request.extensions());
        let note = Note::of(request.extensions());
        let mut stream = request.into_inner();
        let mut header = match stream.message().await? {
            Some(WriteRequest {
                part: Some(Part::Header(header)),
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must carry the header",
                ));
            }
        };
        if let Some(note) = &note {
            note.blob(
                &header.blob_id,
                &self.collection_of(&header.blob_id),
                header.size,
            );
        }
        let (blob, place, meta, targets) = self.prepare_write(&mut header, &who)?;
        let receipt = if !targets.is_empty() && header.size <= LINKED_FORWARD_MAX {
            let data = gather(&mut stream, header.size).await?;
            self.write_linked(place, blob, &header, meta, data, &targets, &request_id)
                .await?
        } else {
            self.write_forwarding(
                place,
                blob,
                &header,
                meta,
                &mut stream,
                &targets,
                &request_id,
            )
            .await?
        };
        metrics::bytes_in("grpc", header.size);
        Ok(Response::new(WriteResponse {
            blob_id: blob.to_string(),
            size: header.size,
            etag: etag(receipt.checksum, header.size),
        }))
    }

    /// Checks a write's header and finds what it needs: the blob id, the
    /// volume with the id claimed there, the needle's metadata and the
    /// copies to forward to (none for a write forwarded by a primary, and
    /// none for a write of an id written here already: it is an exact retry,
    /// answered here, or refused before any copy sees it). Sets
    /// `last_modified` if unset. A client's write must come to the id's
    /// primary copy ([`hayloft_proto::primary_index`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn prepare_write(
        &self,
        header: &mut WriteHeader,
        who: &Who,
    ) -> Result<
        (
            BlobId,
            Place,
            NeedleMeta,
            Vec<hayloft_proto::ServerLocation>,
        ),
        Status,
    > {
        let blob = parse_blob_id(&header.blob_id)?;
        if header.size > self.max_upload_bytes {
            return Err(Status::out_of_range(format!(
                "blob of {} bytes is over this server's upload limit of {} bytes",
                header.size, self.max_upload_bytes
            )));
        }
        let volume = self
            .store
            .volume(blob.volume())
            .map_err(|e| grpc_status(&e, None))?;
        self.authorize_write(who, header, volume.collection())?;
        // One time for every copy (forwarded in the header), so that the
        // copies hold the same record bytes: same checksum, same ETag.
        if header.last_modified == 0 {
            header.last_modified = unix_now();
        }
        let meta = meta_of(header)?;
        // A write from a client goes to every copy; one forwarded by the
        // primary is written here only.
        let targets = if header.forwarded {
            Vec::new()
        } else {
            self.replication.check_writable(blob.volume().0)?;
            let copies = self
                .replication
                .copies(blob.volume().0, std::mem::take(&mut header.replicas));
            self.replication.check_primary(blob, &copies)?;
            // Counted once it would be written: a write this volume cannot
            // take (the client retries elsewhere) costs the caller nothing.
            hayloft_access::grpc::Quota::charge_to(
                who.quota.as_ref(),
                Op::Write,
                volume.collection(),
            )?;
            self.replication.others(copies)
        };
        // Claimed before any copy is sent the write: no other write of the
        // id proceeds here meanwhile, and so none reaches the copies.
        let claim = if header.forwarded {
            volume.claim_for_copy(blob.needle)
        } else {
            volume.claim(blob.needle)
        }
        .map_err(|e| grpc_status(&e, Some(blob)))?;
        let targets = if claim.is_retry() {
            Vec::new()
        } else {
            targets
        };
        Ok((blob, Place { volume, claim }, meta, targets))
    }

    /// A small write whose copies (if any) get the whole blob over their
    /// links.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_linked(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        data: Bytes,
        targets: &[hayloft_proto::ServerLocation],
        request_id: &str,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let local_data = data.clone();
        // Tests: the primary's own write fails after the copies had it all.
        let fail = !targets.is_empty() && hayloft_storage::failpoint::active("primary-local-write");
        let local = async move {
            if fail {
                return Err(Status::internal("failpoint primary-local-write"));
            }
            write_whole(place, blob, local_data, meta)
                .await?
                .map_err(|e| self.failed(e, Some(blob)))
        };
        if targets.is_empty() {
            return local.await;
        }
        let started = Instant::now();
        let (receipt, failures) = tokio::join!(
            local,
            self.replication
                .forward_small(header, &data, targets, request_id)
        );
        metrics::replication_wait(started.elapsed());
        self.settled(blob, receipt, &failures)
    }

    /// A write whose copies get a `Write` stream each, chunk by chunk.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_forwarding(
        &self,
        place: Place,
        blob: BlobId,
        header: &WriteHeader,
        meta: NeedleMeta,
        stream: &mut Streaming<WriteRequest>,
        targets: &[hayloft_proto::ServerLocation],
        request_id: &str,
    ) -> Result<hayloft_storage::WriteReceipt, Status> {
        let forward = self.replication.forward_write(header, targets, request_id);
        if header.size <= SMALL_BLOB {
            self.write_small(place, blob, header, meta, stream, forward)
                .await
        } else {
            self.write_streamed(place, blob, header, meta, stream, forward)
                .await
        }
    }

    /// A small write forwarded by a primary over a `Replicate` stream:
    /// written on the stream's task, answered by the group commit that makes
    /// it durable (with every other write it covers, in one message batch).
    pub(super) fn write_replicated(
        &self,
        request: ReplicateRequest,
        reply: Reply<ReplicateResponse>,
    ) {
        let (seq, request_id) = (request.seq, request.request_id);
        let answer = move |outcome: Result<(), Status>| {
            reply.send(match outcome {
                Ok(()) => ReplicateResponse {
                    seq,
                    code: 0,
                    message: String::new(),
                },
                Err(status) => {
                    tracing::warn!(request_id = %request_id, code = ?status.code(),
                        error = %status.message(), "replicated write failed");
                    ReplicateResponse::refused(seq, &status)
                }
            })
        };
        let checked = request
            .header
            .ok_or_else(|| Status::invalid_argument("a replicated write without a header"))
            .and_then(|header| {
                let blob = parse_blob_id(&header.blob_id)?;
                if request.data.len() as u64 != header.size || header.size > self.max_upload_bytes {
                    return Err(Status::invalid_argument(format!(
                        "replicated write of {} bytes declares {}",
                        request.data.len(),
                        header.size
                    )));
                }
                let volume = self
                    .store
                    .volume(blob.volume())
                    .map_err(|e| grpc_status(&e, None))?;
                let meta = meta_of(&header)?;
                let claim = volume
                    .claim_for_copy(blob.needle)
                    .map_err(|e| grpc_status(&e, Some(blob)))?;
                Ok((blob, Place { volume, claim }, meta))
            });
        let (blob, place, meta) = match checked {
            Ok(checked) => checked,
            Err(status) => return answer(Err(status)),
        };
        let (service, size) = (self.clone(), request.data.len() as u64);
        write_whole_then(place, blob, request.data, meta, move |written| {
            answer(match written {
                Ok(_) => {
                    metrics::bytes_in("grpc", size);
                    Ok(())
                }
                Err(e) => Err(service.failed(e, Some(blob))),
            })
        });
    }
}
