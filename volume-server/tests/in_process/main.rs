//! The volume server in process: directories and volume servers started by
//! [`hayloft::cluster`] on port 0, driven over gRPC and HTTP. One test
//! binary (one link) for every room:
//!
//! - `replication`: replicated writes and deletes reach every copy; a copy
//!   down fails the write; anti-entropy fills a copy that missed writes
//!   and deletes.
//! - `heartbeat`: servers register, report their volumes, are found dead
//!   and come back on new ports.
//! - `proxy`: HTTP reads on a server without the volume (proxy, redirect,
//!   off).
//! - `origin`: the HTTP origin's headers, ranges and preconditions.
//! - `grpc`: reads, writes, deletes, batches and their error codes.
//! - `erasure`: a sealed copy encoded into shards on five servers, read
//!   back with shards lost; shards that arrive wrong are never kept.
//! - `erasure_heal`: rebuild of a wiped holder, delete journals caught up,
//!   shard scrub.
//! - `erasure_policy`: the tiering worker encodes a warm sealed volume by
//!   its policy's encode rule, then leaves it alone.
//! - `erasure_handoff`: a copy replaced by shards hands its deletes to the
//!   holders before its files go, or is kept.
//! - `erasure_rebuild`: the directory rebuilds a lost holder's shard on
//!   another server, drops the orphan shard it comes back with, and
//!   resumes a rebuild across its own restart.
//! - `erasure_reencode`: `ReencodeVolume`: an erasure-coded volume encoded
//!   again without its deleted needles (space back, deletes kept, a delete
//!   during it kept), a failure mid-way leaving the old generation.
//! - `encode_volume`: the directory's `EncodeVolume` on five servers:
//!   plan, dry run, refusals, layout, copies removed, lookups, shards.
//! - `tier_ec`: `hayloft tier ec` seals a writable volume and encodes it;
//!   status shows its layout and the replication factor.
//! - `regions`: two regions: ids from each region's range, reads of the
//!   other region's blobs (HTTP and gRPC), the other region down, a server
//!   of the wrong region refused.
//! - `tier`: moves to a real S3 (moto on loopback, `s3`) by the tiering
//!   worker and by `MoveVolume`, reads from cold, the way back, S3 gone.

#![allow(clippy::unwrap_used)]

mod encode_volume;
mod erasure;
mod erasure_cold;
mod erasure_decode;
mod erasure_handoff;
mod erasure_heal;
mod erasure_policy;
mod erasure_rebuild;
mod erasure_reencode;
mod grpc;
mod heartbeat;
mod origin;
mod proxy;
mod regions;
mod replication;
mod s3;
mod support;
mod tier;
mod tier_ec;
