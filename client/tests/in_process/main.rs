//! The client against servers in process ([`hayloft::cluster`] on port 0):
//!
//! - `reserve`: ids reserved in blocks, per client; a full volume moves
//!   the client to another.
//! - `failover`: a server stopped under the client: uploads go elsewhere,
//!   downloads to another copy or to the server's new address, and a clear
//!   error when nothing is left.
//! - `batch`: `upload_batch`, small and large blobs, copies, a volume that
//!   fills mid-batch.
//! - `blobs`: streamed files, ranges, stat, delete, expiry, collections.
//! - `regions`: a client of two regions: an upload moves on to the next
//!   region when every attempt fails, not when it is refused.

#![allow(clippy::unwrap_used)]

mod batch;
mod blobs;
mod failover;
mod regions;
mod reserve;
// The volume server's in-process test helpers, shared.
#[path = "../../../volume-server/tests/in_process/support.rs"]
mod support;
