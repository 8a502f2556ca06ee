//! Needle ids reserved ahead from the directory, a block per `Assign`.

#[allow(unused_imports)]
use crate::prelude::*;

/// Ids one `Assign` reserves for the uploads that follow. Ids left unused
/// (the client stops, the volume fills) are simply never used: the
/// directory never hands an id out twice.
pub const RESERVE_IDS: u32 = 64;

/// Reserved ids older than this are dropped unused: their volume may have
/// filled, been sealed or lost a copy since.
pub const RESERVATION_MAX_AGE: Duration = Duration::from_secs(30);

/// Ids from one `Assign`, all in one volume, used one per upload.
pub(crate) struct Reservation {
    pub(crate) blobs: VecDeque<AssignedBlob>,
    /// The volume's copies as the directory listed them.
    pub(crate) locations: Vec<ServerLocation>,
    pub(crate) volume_id: u32,
    pub(crate) at: Instant,
}

/// One reserved id and where to write it.
pub(crate) struct Slot {
    /// The region that handed the id out (its index in the client's list).
    pub(crate) region: usize,
    pub(crate) collection: String,
    pub(crate) blob: AssignedBlob,
    /// Every copy of its volume, the primary for this upload first.
    pub(crate) locations: Vec<ServerLocation>,
}

impl Client {
    /// Takes a reserved id in `collection` in the first region whose
    /// directory hands one out (see [`Client::take_id_in`]).
    pub(crate) async fn take_id(&self, collection: &str, request_id: &str) -> Result<Slot> {
        self.in_regions(|region| async move {
            self.take_id_in(region, collection, request_id)
                .await
                .map_err(Miss::directory)
        })
        .await
    }

    /// Takes a reserved id in `collection` in `region`, reserving more at
    /// its directory when none is left (or they are too old).
    pub(crate) async fn take_id_in(
        &self,
        region: usize,
        collection: &str,
        request_id: &str,
    ) -> Result<Slot> {
        let directory = &self.regions[region].directory;
        let mut reserved = self.regions[region].reserved.lock().await;
        let fresh = reserved.get(collection).is_some_and(|r| {
            !r.blobs.is_empty() && !r.locations.is_empty() && r.at.elapsed() < RESERVATION_MAX_AGE
        });
        if !fresh {
            let assign = AssignRequest {
                count: RESERVE_IDS,
                collection: collection.to_owned(),
                tier: 0,
                ttl_seconds: 0,
            };
            // Right after the cluster starts no volume server may have
            // registered yet: wait for one (bounded).
            let assigned = while_starting(self.startup_wait(), || async {
                Ok(directory
                    .call(|mut directory| {
                        let assign = hayloft_proto::with_request_id(assign.clone(), request_id);
                        async move { directory.assign(assign).await }
                    })
                    .await?)
            })
            .await?;
            let volume_id = match assigned.blobs.first() {
                Some(blob) if !assigned.locations.is_empty() => blob.volume_id,
                _ => {
                    return Err(Error::Status(tonic::Status::internal(
                        "assign returned no id",
                    )));
                }
            };
            reserved.insert(
                collection.to_owned(),
                Reservation {
                    blobs: assigned.blobs.into(),
                    locations: assigned.locations,
                    volume_id,
                    at: Instant::now(),
                },
            );
        }
        let reservation = reserved.get_mut(collection).ok_or(Error::NoLocation(0))?;
        let blob = reservation
            .blobs
            .pop_front()
            .ok_or(Error::NoLocation(reservation.volume_id))?;
        // The copy that orders writes of this id goes first: a server takes
        // a client's write of an id only there. Consecutive ids have
        // consecutive primaries, so forwarding work is shared by the copies.
        let mut locations = reservation.locations.clone();
        let turn = hayloft_proto::primary_index(blob.needle_id, &locations).unwrap_or(0);
        locations.rotate_left(turn);
        Ok(Slot {
            region,
            collection: collection.to_owned(),
            blob,
            locations,
        })
    }

    /// Drops the ids reserved in `volume_id` of `region`: a write there
    /// failed in a way that says the volume takes no more (full, sealed, a
    /// copy down).
    pub(crate) async fn forget_reserved(&self, region: usize, collection: &str, volume_id: u32) {
        let mut reserved = self.regions[region].reserved.lock().await;
        if reserved
            .get(collection)
            .is_some_and(|r| r.volume_id == volume_id)
        {
            reserved.remove(collection);
        }
    }
}
