//! Many small blobs in one `WriteBatch` stream per server.

#[allow(unused_imports)]
use crate::prelude::*;

/// Largest blob [`Client::upload_batch`] sends in a batch (the server's
/// limit for `WriteBatch`); larger ones are uploaded alone.
pub const BATCH_BLOB_MAX: u64 = 64 << 10;

impl Client {
    /// Uploads many blobs: those of at most [`BATCH_BLOB_MAX`] bytes go in
    /// one `WriteBatch` stream per primary server (each acknowledged once
    /// durable on every copy; their writes share group commits), larger ones
    /// one by one. A blob refused for a reason worth retrying (a copy down,
    /// the volume full, the stream cut off) is uploaded again with a
    /// fresh id, in a new batch (up to 4 rounds). With several regions, the
    /// ids come from the first region whose directory answers, and a blob
    /// still refused after the rounds is uploaded alone (which fails over
    /// to the next region). Answers come back in the order of `blobs`.
    pub async fn upload_batch(&self, blobs: Vec<(Bytes, UploadOptions)>) -> Vec<Result<Uploaded>> {
        let mut results: Vec<Option<Result<Uploaded>>> = blobs.iter().map(|_| None).collect();
        let (mut pending, alone): (Vec<usize>, Vec<usize>) =
            (0..blobs.len()).partition(|&i| blobs[i].0.len() as u64 <= BATCH_BLOB_MAX);
        let mut pauses = upload_pauses().peekable();
        // Set once no directory handed out an id in some round: the blobs
        // that got that error are not tried alone after the rounds.
        let mut ever_unassigned = false;
        let mut attempt = 0;
        while !pending.is_empty() {
            if attempt > 0 {
                // Blobs are left pending only while a pause is left.
                let Some(pause) = pauses.next() else { break };
                tokio::time::sleep(pause).await;
            }
            // Whether a blob refused now is tried again in another round.
            let another_round = pauses.peek().is_some();
            // Fresh ids for every blob of this round, grouped by primary.
            let mut by_server: HashMap<String, Vec<(usize, Slot, WriteBatchRequest)>> =
                HashMap::new();
            let mut unassigned = None;
            for &i in &pending {
                let (data, options) = &blobs[i];
                if let Some(error) = &unassigned {
                    // The directory had no id for the blob before: it has
                    // none for these either (it was waited for already).
                    results[i] = Some(Err(copy_error(error)));
                    continue;
                }
                let request_id = options
                    .request_id
                    .clone()
                    .unwrap_or_else(hayloft_proto::new_request_id);
                match self.take_id(&options.collection, &request_id).await {
                    Ok(slot) => {
                        let request = WriteBatchRequest {
                            seq: i as u64,
                            header: Some(write_header(&slot, data.len() as u64, options)),
                            data: data.clone(),
                        };
                        by_server
                            .entry(slot.locations[0].grpc_addr.clone())
                            .or_default()
                            .push((i, slot, request));
                    }
                    Err(error) => {
                        results[i] = Some(Err(copy_error(&error)));
                        unassigned = Some(error);
                        ever_unassigned = true;
                    }
                }
            }
            let batches = by_server
                .into_iter()
                .map(|(addr, items)| self.send_batch(addr, items));
            pending.clear();
            for answers in futures::future::join_all(batches).await {
                for (i, answer) in answers {
                    match answer {
                        Err(error) if retry_upload(&error) && another_round => {
                            tracing::warn!(%error, attempt, "batched upload failed; retrying with a new id");
                            pending.push(i);
                        }
                        answer => results[i] = Some(answer),
                    }
                }
            }
            attempt += 1;
        }
        // With several regions, a blob still refused for a reason worth
        // retrying (its region's servers down while its directory still
        // hands out ids there) is uploaded alone: that upload moves on to
        // the next region once every attempt in one failed.
        if self.multi_region() && !ever_unassigned {
            for (i, result) in results.iter_mut().enumerate() {
                if let Some(Err(error)) = result
                    && retry_upload(error)
                {
                    let (data, options) = &blobs[i];
                    *result = Some(self.upload(data.clone(), options).await);
                }
            }
        }
        for i in alone {
            let (data, options) = &blobs[i];
            results[i] = Some(self.upload(data.clone(), options).await);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::NoLocation(0))))
            .collect()
    }

    /// One `WriteBatch` stream to `addr`: every item's answer, by index. A
    /// blob with no answer (the stream broke) is `Unavailable`.
    pub(crate) async fn send_batch(
        &self,
        addr: String,
        items: Vec<(usize, Slot, WriteBatchRequest)>,
    ) -> Vec<(usize, Result<Uploaded>)> {
        let mut waiting: HashMap<u64, (usize, Slot)> = HashMap::new();
        let mut requests = Vec::with_capacity(items.len());
        for (i, slot, request) in items {
            waiting.insert(request.seq, (i, slot));
            requests.push(request);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        let request_id = hayloft_proto::new_request_id();
        let outcome = async {
            let mut client = self.volume_client(&addr)?;
            let mut responses = client
                .write_batch(hayloft_proto::with_request_id(
                    stream::iter(requests),
                    &request_id,
                ))
                .await?
                .into_inner();
            while let Some(response) = responses.message().await? {
                let Some((i, slot)) = waiting.remove(&response.seq) else {
                    continue;
                };
                let answer = match response.written {
                    Some(written) if response.code == 0 => Ok(Uploaded {
                        url: format!("{}/{}", slot.locations[0].origin_url(), written.blob_id),
                        blob_id: written.blob_id,
                        size: written.size,
                        etag: written.etag,
                        request_id: request_id.clone(),
                        region: self.regions[slot.region].name.clone(),
                    }),
                    _ => {
                        let error = Error::Status(tonic::Status::new(
                            Code::from_i32(response.code),
                            response.message,
                        ));
                        if retry_upload(&error) {
                            self.forget_reserved(
                                slot.region,
                                &slot.collection,
                                slot.blob.volume_id,
                            )
                            .await;
                        }
                        Err(error)
                    }
                };
                answers.push((i, answer));
            }
            Ok::<_, Error>(())
        }
        .await;
        let broke = outcome.err();
        for (_, (i, slot)) in waiting {
            self.forget_reserved(slot.region, &slot.collection, slot.blob.volume_id)
                .await;
            answers.push((
                i,
                Err(Error::Status(tonic::Status::unavailable(format!(
                    "the batch stream to {addr} ended without an answer for this blob{}",
                    broke.as_ref().map_or(String::new(), |e| format!(": {e}"))
                )))),
            ));
        }
        answers
    }
}
