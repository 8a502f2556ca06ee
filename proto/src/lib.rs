//! hayloft's gRPC API, package `hayloft.v1`, generated from the `.proto`
//! files beside this crate (documented field by field there).
//!
//! - `Directory`: `Assign`, `Lookup`, `Heartbeat`, `Status`.
//! - `Volume`: `Write` (client stream), `Read` (server stream), `Delete`,
//!   `Stat`, `CreateVolume`, `ListVolumes`.
//! - `Raft`: messages between the nodes of a directory group.
//! - [`Directories`]: calls to a directory group that find its leader.
//! - [`Credential`]: the token a client sends with every call.
//! - The seams shared by every crate above this one: the one conversion
//!   between the wire [`Tier`] and the storage tier, the wall clock
//!   ([`unix_now`]) and the default addresses ([`DEFAULT_DIRECTORY`]...).
//! - [`background`]: the one shape of every server's background jobs (a
//!   [`background::Worker`] trait, a runner, the registry `status` lists).
//! - [`retry`]: the one retry with backoff (on `backon`).
//! - [`regions`]: the deployment's regions as configured, checked, and
//!   the region that allocated any volume id.

/// Generated messages, clients and servers of `hayloft.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("hayloft.v1");
}

pub use v1::*;

pub use hayloft_storage::unix_now;

/// Where a directory listens unless told otherwise (and where every
/// client and server looks for one).
pub const DEFAULT_DIRECTORY: &str = "127.0.0.1:9330";
/// Where a volume server's gRPC port listens unless told otherwise.
pub const DEFAULT_VOLUME_GRPC: &str = "127.0.0.1:9331";
/// Where a volume server's HTTP origin listens unless told otherwise.
pub const DEFAULT_VOLUME_HTTP: &str = "127.0.0.1:9380";

/// One of the default addresses above, parsed.
pub fn default_addr(addr: &str) -> std::net::SocketAddr {
    addr.parse()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The wire tier of a storage tier: the one conversion between the two.
impl From<hayloft_storage::Tier> for Tier {
    fn from(tier: hayloft_storage::Tier) -> Tier {
        match tier {
            hayloft_storage::Tier::Hot => Tier::Hot,
            hayloft_storage::Tier::Warm => Tier::Warm,
            hayloft_storage::Tier::Cold => Tier::Cold,
        }
    }
}

/// The storage tier of a wire tier; `Unspecified` is none.
impl TryFrom<Tier> for hayloft_storage::Tier {
    type Error = UnspecifiedTier;

    fn try_from(tier: Tier) -> Result<hayloft_storage::Tier, UnspecifiedTier> {
        match tier {
            Tier::Hot => Ok(hayloft_storage::Tier::Hot),
            Tier::Warm => Ok(hayloft_storage::Tier::Warm),
            Tier::Cold => Ok(hayloft_storage::Tier::Cold),
            Tier::Unspecified => Err(UnspecifiedTier),
        }
    }
}

impl Tier {
    /// The storage tier of a wire value (`i32` in messages): `None` for
    /// unspecified or unknown values.
    pub fn storage(wire: i32) -> Option<hayloft_storage::Tier> {
        Tier::try_from(wire).ok()?.try_into().ok()
    }
}

/// A wire tier that names no storage tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnspecifiedTier;

impl std::fmt::Display for UnspecifiedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no tier given (hot, warm or cold)")
    }
}

impl std::error::Error for UnspecifiedTier {}

pub mod auth;
pub mod background;
pub mod regions;
pub mod retry;
pub use auth::{AuthChannel, Credential, tls_refusal};

mod directories;
pub use directories::{
    DEFAULT_PATIENCE, Directories, LEADER_METADATA, NOT_LEADER_METADATA, ask_node,
};

impl ServerLocation {
    /// The base URL of its HTTP origin: `http://host:port`, or `https://`
    /// when it serves HTTPS. A blob's URL is this, `/`, and its id.
    pub fn origin_url(&self) -> String {
        let scheme = if self.http_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }
}

/// Which copy of a volume is the primary for writes of needle `needle_id`:
/// the index in `copies` of the copy that orders them. Every write of one
/// id goes through one copy, which claims the id before it forwards the
/// write to the others, so two writes of one id never both land (blob ids
/// are written once) and the copies never disagree about its bytes. Ids
/// are spread over the copies (consecutive ids to consecutive copies, in
/// server-id order), so each copy leads a share of the writes. `None` for
/// no copies.
pub fn primary_index(needle_id: u64, copies: &[ServerLocation]) -> Option<usize> {
    if copies.is_empty() {
        return None;
    }
    let mut order: Vec<usize> = (0..copies.len()).collect();
    order.sort_by(|&a, &b| copies[a].server_id.cmp(&copies[b].server_id));
    order.dedup_by(|a, b| copies[*a].server_id == copies[*b].server_id);
    Some(order[(needle_id % order.len() as u64) as usize])
}

/// Largest message either service accepts or sends (chunks are smaller).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Size of the data chunks clients and servers stream.
pub const CHUNK_BYTES: usize = 1 << 20;

/// HTTP/2 flow-control window of one stream on gRPC servers and clients:
/// several chunks, so a sender keeps sending while the receiver writes the
/// chunk before (the default, 64 KiB or 1 MiB, is one chunk or less, and a
/// large upload stalls on every write). Measured with `upload-ceiling`:
/// 64 MiB uploads +56% (BENCHMARKS.md, "Uploads next to their ceilings").
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;

/// HTTP/2 flow-control window of a whole connection (many streams share it).
pub const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

/// Largest HTTP/2 frame a gRPC server or client takes: a chunk goes in a
/// few frames instead of 64 of the default 16 KiB.
pub const MAX_FRAME_BYTES: u32 = 256 << 10;

/// The gRPC metadata key and HTTP header that carries a request's id from
/// the client through the directory to the volume server, so that the logs
/// of one upload or read can be found on every server it touched.
pub const REQUEST_ID: &str = "x-request-id";

/// Metadata of a NOT_FOUND a volume server answers when it holds neither a
/// copy nor shards of the blob's volume (its value: the volume id). The
/// volume may have moved, been erasure-coded or decoded since the caller
/// looked it up: a client with a cached location asks the directory again
/// rather than taking the blob to be gone.
pub const VOLUME_NOT_HERE: &str = "hayloft-volume-not-here";

/// A fresh random request id (16 hex digits).
pub fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    format!("{:016x}", hasher.finish())
}

/// The request id in `metadata`, or a new one.
pub fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(new_request_id, str::to_owned)
}

/// The `x-request-id` among HTTP `headers` ("" if absent or not text), as
/// sent: for logs that record what the caller named, never a new one.
pub fn request_id_header(headers: &tonic::codegen::http::HeaderMap) -> &str {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// A request carrying `request_id` in `x-request-id`, so that every server
/// it reaches (and every copy a write is forwarded to) logs it under one id.
pub fn with_request_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = request_id.parse() {
        request.metadata_mut().insert(REQUEST_ID, value);
    }
    request
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_addresses_parse_and_tiers_convert_both_ways() {
        for addr in [DEFAULT_DIRECTORY, DEFAULT_VOLUME_GRPC, DEFAULT_VOLUME_HTTP] {
            assert_eq!(default_addr(addr).to_string(), addr);
        }
        for tier in [
            hayloft_storage::Tier::Hot,
            hayloft_storage::Tier::Warm,
            hayloft_storage::Tier::Cold,
        ] {
            assert_eq!(Tier::storage(Tier::from(tier) as i32), Some(tier));
        }
        assert_eq!(Tier::storage(Tier::Unspecified as i32), None);
        assert_eq!(Tier::storage(99), None);
    }

    use super::*;

    fn at(id: &str) -> ServerLocation {
        ServerLocation {
            server_id: id.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn the_primary_of_an_id_does_not_depend_on_the_order_copies_are_listed_in() {
        let one = [at("b"), at("a"), at("c")];
        let other = [at("c"), at("b"), at("a")];
        for id in 0..30u64 {
            let a = &one[primary_index(id, &one).unwrap()].server_id;
            let b = &other[primary_index(id, &other).unwrap()].server_id;
            assert_eq!(a, b, "needle {id}");
        }
        // Consecutive ids go to each copy in turn.
        let ids: Vec<&str> = (0..3u64)
            .map(|id| one[primary_index(id, &one).unwrap()].server_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(primary_index(7, &[]), None);
        // A copy listed twice counts once.
        let twice = [at("a"), at("b"), at("a")];
        let ids: Vec<&str> = (0..4u64)
            .map(|id| twice[primary_index(id, &twice).unwrap()].server_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "a", "b"]);
    }
}
