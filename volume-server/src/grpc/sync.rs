//! The RPCs anti-entropy and repair use: digests, needle lists, fetches,
//! and syncing a copy from the others.

#[allow(unused_imports)]
use super::*;

use futures::StreamExt;
use hayloft_proto::FetchNeedlesResponse;
use hayloft_storage::Cookie;

/// The stream `FetchNeedles` answers.
pub(super) type FetchNeedlesStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<FetchNeedlesResponse, Status>> + Send + 'static>,
>;

/// Most needles one `FetchNeedles` may ask for.
const MAX_FETCH_NEEDLES: usize = 4096;

/// Needles `FetchNeedles` reads in one blocking call (one hand-off to a
/// blocking thread per group, not per needle: for small needles the
/// hand-off cost more than the read).
const FETCH_GROUP: usize = 32;

/// Groups `FetchNeedles` reads ahead of the one being sent.
const FETCH_READ_AHEAD: usize = 2;

impl VolumeService {
    pub(super) async fn needle_digests_inner(
        &self,
        request: Request<NeedleDigestsRequest>,
    ) -> Result<Response<NeedleDigestsResponse>, Status> {
        let request = request.into_inner();
        let volume = self
            .store
            .volume(VolumeId(request.volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        let bits = request.range_bits.clamp(4, 40);
        let ranges = blocking(move || volume.range_digests(bits))
            .await?
            .into_iter()
            .map(|d| RangeDigest {
                start: d.start.0,
                count: d.count,
                hash: d.hash,
            })
            .collect();
        Ok(Response::new(NeedleDigestsResponse { ranges }))
    }

    pub(super) async fn list_needles_inner(
        &self,
        request: Request<ListNeedlesRequest>,
    ) -> Result<Response<ListNeedlesResponse>, Status> {
        let request = request.into_inner();
        if request.to < request.from || request.to - request.from > 1 << 20 {
            return Err(Status::invalid_argument(
                "list at most 2^20 needle ids at a time",
            ));
        }
        let volume = self
            .store
            .volume(VolumeId(request.volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        let (from, to) = (NeedleId(request.from), NeedleId(request.to));
        let needles = blocking(move || volume.needle_states(from, to))
            .await?
            .into_iter()
            .map(|s| NeedleEntry {
                needle_id: s.id.0,
                cookie: s.cookie.0,
                size: s.data_len,
                deleted: s.deleted,
            })
            .collect();
        Ok(Response::new(ListNeedlesResponse { needles }))
    }

    /// `ReadLog`: this copy's log of a volume from an entry on, for a
    /// follower (ARCHITECTURE.md, "Shipping between regions").
    pub(super) async fn read_log_inner(
        &self,
        request: Request<hayloft_proto::ReadLogRequest>,
    ) -> Result<Response<hayloft_proto::ReadLogResponse>, Status> {
        let request = request.into_inner();
        let volume = self
            .store
            .volume(VolumeId(request.volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        let max = match request.max {
            0 => crate::shipping::BATCH as usize,
            max => max as usize,
        };
        let log = match blocking(move || volume.read_log(request.from, max)).await? {
            Ok(log) => log,
            // A compaction swapped the index meanwhile: the caller asks again.
            Err(hayloft_storage::Error::Corrupt { .. }) => {
                return Err(Status::unavailable(format!(
                    "the log of volume {} changed while it was read; ask again",
                    request.volume_id
                )));
            }
            Err(e) => return Err(grpc_status(&e, None)),
        };
        Ok(Response::new(hayloft_proto::ReadLogResponse {
            entries: log
                .entries
                .into_iter()
                .map(|e| hayloft_proto::LogEntry {
                    needle_id: e.id.0,
                    cookie: e.cookie.0,
                    deleted: e.deleted,
                    size: e.data_len,
                })
                .collect(),
            total: log.total,
            log_id: log.log_id.to_string(),
        }))
    }

    pub(super) async fn fetch_needle_inner(
        &self,
        request: Request<FetchNeedleRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let blob = parse_blob_id(&request.get_ref().blob_id)?;
        let volume = self
            .store
            .volume(blob.volume())
            .map_err(|e| grpc_status(&e, Some(blob)))?;
        let needle = blocking(move || volume.read_for_copy(blob.needle, blob.cookie))
            .await?
            .map_err(|e| grpc_status(&e, Some(blob)))?;
        let info = blob_info(blob, &needle);
        Ok(Response::new(read_stream(info, needle.data)))
    }

    /// `FetchNeedles`: the needles asked for, in order, each its record's
    /// metadata then its bytes, a few read ahead (order kept); one that
    /// cannot be served is named `missing` with why, and the rest go on.
    pub(super) async fn fetch_needles_inner(
        &self,
        request: Request<hayloft_proto::FetchNeedlesRequest>,
    ) -> Result<Response<FetchNeedlesStream>, Status> {
        let request = request.into_inner();
        if request.needles.len() > MAX_FETCH_NEEDLES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_FETCH_NEEDLES} needles a FetchNeedles"
            )));
        }
        let volume = self
            .store
            .volume(VolumeId(request.volume_id))
            .map_err(|e| grpc_status(&e, None))?;
        let groups: Vec<Vec<_>> = request
            .needles
            .chunks(FETCH_GROUP)
            .map(<[_]>::to_vec)
            .collect();
        let stream = futures::stream::iter(groups)
            .map(move |group| {
                let volume = Arc::clone(&volume);
                async move {
                    let read = blocking(move || {
                        group
                            .into_iter()
                            .map(|wanted| {
                                let blob = BlobId {
                                    needle: NeedleId(wanted.needle_id),
                                    cookie: Cookie(wanted.cookie),
                                };
                                (blob, volume.read_for_copy(blob.needle, blob.cookie))
                            })
                            .collect::<Vec<_>>()
                    })
                    .await;
                    let messages: Vec<Result<FetchNeedlesResponse, Status>> = match read {
                        Ok(reads) => reads
                            .into_iter()
                            .flat_map(|(blob, read)| fetched_messages(blob, read))
                            .collect(),
                        Err(status) => vec![Err(status)],
                    };
                    futures::stream::iter(messages)
                }
            })
            .buffered(FETCH_READ_AHEAD)
            .flatten();
        Ok(Response::new(Box::pin(stream)))
    }

    pub(super) async fn sync_volume_inner(
        &self,
        request: Request<SyncVolumeRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let request = request.into_inner();
        if request.volume_id == 0 {
            return Err(Status::invalid_argument("volume id 0 is reserved"));
        }
        let id = VolumeId(request.volume_id);
        if self.store.volume(id).is_err() {
            // A new copy (repair) or a replaced disk: start from empty.
            let tier = match ProtoTier::try_from(request.tier) {
                Ok(ProtoTier::Warm) => Tier::Warm,
                _ => Tier::Hot,
            };
            let store = Arc::clone(&self.store);
            let collection = request.collection.clone();
            match blocking(move || store.create_volume(id, tier, &collection)).await? {
                Ok(_) | Err(Error::VolumeExists(_)) => {}
                Err(e) => return Err(grpc_status(&e, None)),
            }
            tracing::info!(volume = %id, "empty copy created for a sync");
            self.heartbeat_now.notify_one();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let anti_entropy = Arc::clone(&self.anti_entropy);
        let heartbeat_now = Arc::clone(&self.heartbeat_now);
        // The sync goes on if the caller goes away: it is idempotent, and
        // whatever it copied stays.
        tokio::spawn(async move {
            let result = anti_entropy
                .sync(
                    request.volume_id,
                    &request.sources,
                    request.bytes_per_sec,
                    true,
                    Some(&tx),
                )
                .await;
            heartbeat_now.notify_one();
            let last = match result {
                Ok(report) => report,
                Err(status) => SyncProgress {
                    done: true,
                    error: status.message().to_owned(),
                    ..SyncProgress::default()
                },
            };
            let _ = tx.send(Ok(last)).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// The messages of one needle of a `FetchNeedles` answer: its info and
/// data in chunks, or why it is `missing`.
fn fetched_messages(
    blob: BlobId,
    read: hayloft_storage::Result<hayloft_storage::Needle>,
) -> Vec<Result<FetchNeedlesResponse, Status>> {
    match read {
        Ok(needle) => {
            let mut info = Some(blob_info(blob, &needle));
            let data = needle.data;
            let chunk_len = hayloft_proto::CHUNK_BYTES;
            (0..data.len().div_ceil(chunk_len).max(1))
                .map(|i| {
                    let start = i * chunk_len;
                    let stop = (start + chunk_len).min(data.len());
                    Ok(FetchNeedlesResponse {
                        info: info.take(),
                        chunk: data.slice(start..stop),
                        missing: String::new(),
                    })
                })
                .collect()
        }
        Err(e) => vec![Ok(FetchNeedlesResponse {
            missing: grpc_status(&e, Some(blob)).message().to_owned(),
            ..Default::default()
        })],
    }
}
