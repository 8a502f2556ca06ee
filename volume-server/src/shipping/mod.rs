//! Shipping between regions, the follower's side (ARCHITECTURE.md,
//! "Shipping between regions").
//!
//! A volume kept by several regions has, in each region, one copy that
//! follows the other regions' copies (the directory names it in its
//! heartbeat answers) and copies that follow it. Following a copy is
//! reading its log ([`hayloft_storage::Volume::read_log`], through
//! `ReadLog`) from a durable position on, in order:
//!
//! 1. ask the copy for the entries from the position (at most
//!    [`BATCH`]); an answer from another log than the position names (a
//!    compaction rewrote it, or another copy answers) starts the position
//!    again at 0 of that log;
//! 2. apply each entry here: a tombstone is written (a deleted needle is
//!    never taken back); a needle live or deleted here already is skipped,
//!    any other is fetched (`FetchNeedles`, a batch a round trip, a few
//!    batches at once; checksum checked at both ends) and written, byte for
//!    byte the same record;
//! 3. only then the position moves past them, written to `<id>.follow`
//!    (atomically, fsynced): it never runs ahead of what this copy holds
//!    durably, and a crash at any step applies the same entries again,
//!    which changes nothing the second time.
//!
//! Fetches from other regions are paced at `ship_rate` (all volumes
//! together; unlimited by default).
//!
//! There are no loops: a record applied where it is already changes
//! nothing and so adds nothing to any log, and a needle is fetched only by
//! a copy that lacks it, so a needle crosses to each region once. Uploads
//! never wait for any of this.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hayloft_proto::background::{Failed, Step, Worker};
use hayloft_proto::{ReadLogRequest, ServerLocation};
use hayloft_storage::{Cookie, NeedleId, Store, Volume, VolumeId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::blocking::blocking;
use crate::proxy::{RemoteMiss, RemoteReader};
use crate::replicate::Replication;

mod fetch;

/// Log entries asked for at once (the most `ReadLog` answers).
pub const BATCH: u32 = 4096;

/// Most needles one `FetchNeedles` asks for.
const PART_NEEDLES: usize = 1024;

/// Most bytes one `FetchNeedles` asks for (a needle larger is a part
/// alone).
const PART_BYTES: u64 = 32 << 20;

/// `FetchNeedles` calls in flight for one volume.
const PARTS_IN_FLIGHT: usize = 4;

/// Volumes followed at once.
const VOLUMES_IN_FLIGHT: usize = 16;

/// How long a copy may take to answer `ReadLog`.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a follower is in one source's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The log (`ReadLogResponse.log_id`) the position is in.
    pub log: String,
    /// Entries of it applied here.
    pub entries: u64,
}

/// The positions of one volume's copy here, by source (a region's name, or
/// `server:<id>` for a copy in this region).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Positions {
    sources: HashMap<String, Position>,
}

fn positions_path(volume: &Volume) -> PathBuf {
    volume.dir().join(format!("{}.follow", volume.id()))
}

fn load(volume: &Volume) -> Positions {
    let path = positions_path(volume);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Starting again from 0 fetches nothing this copy holds.
            tracing::warn!(path = %path.display(), error = %e,
                "unreadable follow positions; following from the start");
            Positions::default()
        }),
        Err(_) => Positions::default(),
    }
}

fn store(volume: &Volume, positions: &Positions) -> Result<(), Status> {
    let bytes = serde_json::to_vec(positions).map_err(|e| Status::internal(e.to_string()))?;
    hayloft_storage::write_atomically(&positions_path(volume), &bytes)
        .map_err(|e| Status::internal(format!("writing the follow position: {e}")))
}

/// How far one volume's copy here is behind one source.
#[derive(Debug, Clone, Default)]
pub struct Lag {
    /// Entries of the source's log not applied here.
    pub entries: u64,
    /// Since when it has been behind (none: caught up).
    pub behind_since: Option<Instant>,
}

/// What one batch of a source's log did.
#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    needles: u64,
    tombstones: u64,
    bytes: u64,
    /// Entries still to apply after the pass.
    behind: u64,
}

/// How far the copies here are behind their sources, shared by the
/// follower and the heartbeat (which reports it to the directory).
#[derive(Default)]
pub struct Lags {
    /// (volume, source) -> lag. Held only to read or update, never across
    /// an `.await`.
    by_volume: Mutex<HashMap<(u32, String), Lag>>,
    /// Source region -> bytes fetched from it since start.
    shipped_bytes: Mutex<HashMap<String, u64>>,
}

impl Lags {
    /// Each other region's lag, summed over volumes, for the heartbeat.
    pub fn by_region(&self) -> Vec<hayloft_proto::RegionLag> {
        let shipped = self.shipped_bytes.lock().clone();
        let mut by: HashMap<String, hayloft_proto::RegionLag> = HashMap::new();
        for ((_, source), lag) in self.by_volume.lock().iter() {
            if source.starts_with("server:") {
                continue;
            }
            let entry = by
                .entry(source.clone())
                .or_insert_with(|| hayloft_proto::RegionLag {
                    region: source.clone(),
                    shipped_bytes: shipped.get(source).copied().unwrap_or(0),
                    ..Default::default()
                });
            entry.entries += lag.entries;
            let seconds = lag.behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
            entry.seconds = entry.seconds.max(seconds);
        }
        let mut lags: Vec<_> = by.into_values().collect();
        lags.sort_by(|a, b| a.region.cmp(&b.region));
        lags
    }
}

/// Follows other copies' logs for the volumes the directory says.
pub struct Follower {
    store: Arc<Store>,
    replication: Arc<Replication>,
    remote: Arc<RemoteReader>,
    interval: Duration,
    lags: Arc<Lags>,
    /// `ship_rate`, over every volume followed. Held only to count bytes,
    /// never across an `.await`.
    throttle: Mutex<hayloft_storage::Throttle>,
}

impl Follower {
    /// A follower of the copies `replication` names, finding other
    /// regions' copies through `remote`, passing every `interval`.
    pub fn new(
        store: Arc<Store>,
        replication: Arc<Replication>,
        remote: Arc<RemoteReader>,
        interval: Duration,
        lags: Arc<Lags>,
        ship_rate: u64,
    ) -> Self {
        // The series alerts and the dashboard watch exist from the start.
        metrics::gauge!("hayloft_region_lag_seconds", "from" => "local").set(0.0);
        metrics::gauge!("hayloft_region_lag_entries", "from" => "local").set(0.0);
        for name in [
            "hayloft_region_shipped_bytes_total",
            "hayloft_region_ship_failures_total",
        ] {
            metrics::counter!(name, "from" => "local").absolute(0);
        }
        Follower {
            store,
            replication,
            remote,
            interval,
            lags,
            throttle: Mutex::new(hayloft_storage::Throttle::new(ship_rate)),
        }
    }

    /// Each source's lag, summed over volumes: (source, entries behind,
    /// seconds behind at most).
    pub fn lag_by_source(&self) -> Vec<(String, u64, f64)> {
        let mut by: HashMap<String, (u64, f64)> = HashMap::new();
        for ((_, source), lag) in self.lags.by_volume.lock().iter() {
            let entry = by.entry(source.clone()).or_default();
            entry.0 += lag.entries;
            let seconds = lag.behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
            entry.1 = entry.1.max(seconds);
        }
        let mut lags: Vec<_> = by.into_iter().map(|(s, (e, t))| (s, e, t)).collect();
        lags.sort_by(|a, b| a.0.cmp(&b.0));
        lags
    }

    /// One pass: every followed volume, every source, until caught up
    /// (or a source fails). Returns the failures.
    async fn pass(&self) -> Vec<String> {
        let mut failures = Vec::new();
        // Tests: a follower that falls behind (while the failpoint's file
        // exists), as one whose source region is far away or down.
        if hayloft_storage::failpoint::active("follow-paused") {
            return failures;
        }
        let follows = self.replication.follows();
        let followed: std::collections::HashSet<u32> = follows.iter().map(|f| f.0).collect();
        self.lags
            .by_volume
            .lock()
            .retain(|(v, _), _| followed.contains(v));
        // Volumes at once (a region away, a pass is round trips); the
        // sources of one volume one after the other (they share its
        // positions file).
        let mut passes = futures::stream::iter(follows.into_iter().map(
            |(volume_id, regions, server)| async move {
                let mut failures = Vec::new();
                let Ok(volume) = self.store.volume(VolumeId(volume_id)) else {
                    return failures;
                };
                let mut sources: Vec<(String, Source)> = regions
                    .into_iter()
                    .map(|r| (r.clone(), Source::Region(r)))
                    .collect();
                if let Some(server) = server {
                    sources.push((format!("server:{}", server.server_id), Source::Copy(server)));
                }
                for (key, source) in sources {
                    if let Err(status) = self.follow(&volume, &key, &source).await {
                        if let Source::Region(region) = &source {
                            self.remote.forget_copies_in(region, volume_id);
                        }
                        metrics::counter!("hayloft_region_ship_failures_total", "from" => label_of(&key))
                            .increment(1);
                        tracing::warn!(volume = volume_id, source = %key,
                            error = %status.message(), "following a copy's log failed");
                        let mut lags = self.lags.by_volume.lock();
                        let lag = lags.entry((volume_id, key.clone())).or_default();
                        lag.behind_since.get_or_insert_with(Instant::now);
                        failures.push(format!(
                            "volume {volume_id} from {key}: {}",
                            status.message()
                        ));
                    }
                }
                failures
            },
        ))
        .buffer_unordered(VOLUMES_IN_FLIGHT);
        while let Some(failed) = passes.next().await {
            failures.extend(failed);
        }
        drop(passes);
        self.publish();
        failures
    }

    /// Counts what one batch of `key`'s log applied to `volume_id` and
    /// how far behind it leaves the copy, as it goes (a long catch-up
    /// shows in the metrics and the heartbeat while it runs).
    fn record(&self, volume_id: u32, key: &str, batch: &Applied) {
        let from = label_of(key);
        metrics::counter!("hayloft_region_shipped_needles_total", "from" => from.clone())
            .increment(batch.needles);
        metrics::counter!("hayloft_region_shipped_tombstones_total", "from" => from.clone())
            .increment(batch.tombstones);
        metrics::counter!("hayloft_region_shipped_bytes_total", "from" => from)
            .increment(batch.bytes);
        *self
            .lags
            .shipped_bytes
            .lock()
            .entry(key.to_owned())
            .or_default() += batch.bytes;
        {
            let mut lags = self.lags.by_volume.lock();
            let lag = lags.entry((volume_id, key.to_owned())).or_default();
            lag.entries = batch.behind;
            lag.behind_since = match (batch.behind, lag.behind_since) {
                (0, _) => None,
                (_, Some(since)) => Some(since),
                (_, None) => Some(Instant::now()),
            };
        }
        self.publish();
    }

    /// Sets the lag gauges.
    fn publish(&self) {
        for (source, entries, seconds) in self.lag_by_source() {
            let from = label_of(&source);
            metrics::gauge!("hayloft_region_lag_entries", "from" => from.clone())
                .set(entries as f64);
            metrics::gauge!("hayloft_region_lag_seconds", "from" => from).set(seconds);
        }
    }

    /// The copies to read `source`'s log from, first the one the position
    /// was taken from.
    async fn copies(&self, volume: u32, source: &Source) -> Result<Vec<ServerLocation>, Status> {
        match source {
            Source::Copy(server) => Ok(vec![server.clone()]),
            Source::Region(region) => match self.remote.copies_in(region, volume).await {
                Ok(copies) => Ok(copies),
                Err(RemoteMiss::Unknown) => Err(Status::not_found(format!(
                    "region {region} keeps no copy of volume {volume} yet"
                ))),
                Err(RemoteMiss::Unreachable) => Err(Status::unavailable(format!(
                    "the directory of region {region} does not answer"
                ))),
            },
        }
    }

    /// Applies `source`'s log to `volume` from the position on, until
    /// caught up.
    async fn follow(&self, volume: &Arc<Volume>, key: &str, source: &Source) -> Result<(), Status> {
        let volume_id = volume.id().0;
        let mut positions = {
            let volume = Arc::clone(volume);
            blocking(move || load(&volume)).await?
        };
        let mut position = positions.sources.get(key).cloned().unwrap_or_default();
        let copies = self.copies(volume_id, source).await?;
        let mut last = None;
        for copy in &copies {
            let mut client = match source {
                Source::Region(_) => self.replication.far_client(copy)?,
                Source::Copy(_) => self.replication.client(copy)?,
            };
            loop {
                let answer = tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.read_log(ReadLogRequest {
                        volume_id,
                        from: position.entries,
                        max: BATCH,
                    }),
                )
                .await
                .map_err(|_| {
                    Status::unavailable(format!("{} did not answer ReadLog", copy.server_id))
                })
                .and_then(|r| r.map(tonic::Response::into_inner));
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(status) => {
                        last = Some(status);
                        break;
                    }
                };
                let log = format!("{}/{}", copy.grpc_addr, answer.log_id);
                if log != position.log || position.entries > answer.total {
                    // Another log: from its start (nothing held is fetched).
                    tracing::info!(volume = volume_id, source = %key, log = %log,
                        "following another log from its start");
                    position = Position { log, entries: 0 };
                    continue;
                }
                let count = answer.entries.len() as u64;
                let mut applied = Applied::default();
                for entry in answer.entries.iter().filter(|e| e.deleted) {
                    let (id, cookie) = (NeedleId(entry.needle_id), Cookie(entry.cookie));
                    let target = Arc::clone(volume);
                    match blocking(move || target.delete_copied(id, cookie)).await? {
                        Ok(true) => applied.tombstones += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(volume = volume_id, needle = %id, error = %e,
                                "a tombstone from another copy's log not applied");
                        }
                    }
                }
                // Fetched in parts of at most PART_NEEDLES needles and
                // PART_BYTES bytes, PARTS_IN_FLIGHT at once: one round trip
                // a part, several overlapping (a region away, round trips
                // are what a needle at a time waited for).
                // Parts: the needles to fetch and their bytes.
                let mut parts: Vec<(Vec<(NeedleId, Cookie)>, u64)> = Vec::new();
                for entry in answer.entries.iter().filter(|e| !e.deleted) {
                    let id = NeedleId(entry.needle_id);
                    if volume.holds(id) || volume.is_deleted(id) {
                        continue;
                    }
                    let full = parts.last().is_none_or(|(part, bytes)| {
                        part.len() >= PART_NEEDLES || bytes + entry.size > PART_BYTES
                    });
                    if full {
                        parts.push((Vec::new(), 0));
                    }
                    if let Some((part, bytes)) = parts.last_mut() {
                        part.push((id, Cookie(entry.cookie)));
                        *bytes += entry.size;
                    }
                }
                // Another region's egress is paced before each part is
                // asked for (its bytes are known from the log); copies in
                // this region follow as fast as anti-entropy would.
                let paced = matches!(source, Source::Region(_));
                let mut fetches = futures::stream::iter(parts.into_iter().map(|(part, bytes)| {
                    let mut client = client.clone();
                    let wait = if paced {
                        self.throttle.lock().delay_for(bytes)
                    } else {
                        Duration::ZERO
                    };
                    async move {
                        tokio::time::sleep(wait).await;
                        fetch::fetch_needles(volume, &mut client, copy, &part).await
                    }
                }))
                .buffer_unordered(PARTS_IN_FLIGHT);
                let mut failed = None;
                while let Some(fetched) = fetches.next().await {
                    match fetched {
                        Ok((needles, bytes)) => {
                            applied.needles += needles;
                            applied.bytes += bytes;
                        }
                        Err(status) => failed = Some(status),
                    }
                }
                drop(fetches);
                if let Some(status) = failed {
                    // The position stays: the batch is applied again
                    // (what was written is held, and not fetched again).
                    return Err(status);
                }
                if count > 0 {
                    // Tests: a crash between applying entries and writing
                    // the position past them.
                    hayloft_storage::failpoint::abort_at("follow-before-position");
                    position.entries += count;
                }
                // Written (and fsynced) only when it moved: an idle pass
                // over a caught-up volume touches no disk.
                if positions.sources.get(key) != Some(&position) {
                    positions.sources.insert(key.to_owned(), position.clone());
                    let volume = Arc::clone(volume);
                    let positions = positions.clone();
                    blocking(move || store(&volume, &positions)).await??;
                }
                applied.behind = answer.total.saturating_sub(position.entries);
                self.record(volume_id, key, &applied);
                if applied.behind == 0 || count == 0 {
                    return Ok(());
                }
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no copy to follow")))
    }
}

/// The `from` label of a source's series: its region, or `local` for a
/// copy in this region.
fn label_of(key: &str) -> String {
    if key.starts_with("server:") {
        "local".to_owned()
    } else {
        key.to_owned()
    }
}

/// Whose log a copy follows.
enum Source {
    /// The copies of another region (by name).
    Region(String),
    /// One copy in this region.
    Copy(ServerLocation),
}

impl Worker for Follower {
    fn name(&self) -> String {
        "region-follow".into()
    }

    fn progress(&self) -> String {
        let behind: u64 = self.lags.by_volume.lock().values().map(|l| l.entries).sum();
        if behind == 0 {
            String::new()
        } else {
            format!("{behind} log entries behind")
        }
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn work(&mut self) -> Result<Step, Failed> {
        let failures = self.pass().await;
        if failures.is_empty() {
            Ok(Step::Idle)
        } else {
            Err(Failed::new(failures.join("; ")))
        }
    }
}
