//! What the planner decides: an [`Action`] per volume and copy, and the
//! [`Plan`] they make with the bytes per billing key before and after.
//! Plain data, shared by the planner ([`crate::policy`]), the replicated
//! moves ([`crate::replicas`]) and whoever carries a plan out (the worker,
//! `hayloft tier`).

use std::collections::BTreeMap;

use hayloft_storage::Tier;

/// What the planner decided for one volume.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Move the volume.
    Move {
        /// The volume.
        volume: u32,
        /// Its server's id.
        server: String,
        /// From.
        from: Tier,
        /// To.
        to: Tier,
        /// For cold: bucket, prefix and class.
        bucket: String,
        /// Key prefix.
        prefix: String,
        /// Storage class.
        storage_class: String,
        /// Bytes to move.
        bytes: u64,
        /// The rule that decided it.
        rule: String,
        /// To cold without an upload: share the object of the cold copy on
        /// this server (a replicated volume's follower; "" = upload).
        share_cold_from: String,
        /// From cold: keep the object (another copy still reads it).
        keep_object: bool,
    },
    /// Take one copy of a replicated volume out of its replica set, then
    /// delete it (the cold copies of a volume brought back from cold).
    Drop {
        /// The volume.
        volume: u32,
        /// The server whose copy goes.
        server: String,
        /// For a cold copy: keep the object (another copy reads it).
        keep_object: bool,
        /// Why.
        rule: String,
    },
    /// Delete a copy of the volume (every copy: the whole volume).
    Delete {
        /// The volume.
        volume: u32,
        /// Its server's id.
        server: String,
        /// Bytes freed.
        bytes: u64,
        /// Why.
        rule: String,
        /// For a cold copy: keep the object (another copy is deleted after).
        keep_object: bool,
        /// The last copy: the directory forgets the volume after it.
        forget: bool,
    },
    /// Erasure-code the volume (the directory's `EncodeVolume`: it places
    /// the shards, and removes the copies once they are recorded).
    Encode {
        /// The volume.
        volume: u32,
        /// The code, `K+M` ("" = the directory's `ec_code`).
        code: String,
        /// Bytes of the data file encoded.
        bytes: u64,
        /// The rule that decided it.
        rule: String,
    },
    /// Move an erasure-coded volume to the cold tier (the directory's
    /// `DecodeVolume` with a cold bucket: the data file rebuilt from the
    /// shards on one server, uploaded as one object, the volume's copies
    /// cold copies of it, the shards dropped once that is committed).
    EcToCold {
        /// The volume.
        volume: u32,
        /// Where the object goes.
        bucket: String,
        /// Key prefix.
        prefix: String,
        /// Storage class.
        storage_class: String,
        /// Bytes of the data file uploaded.
        bytes: u64,
        /// The rule that decided it.
        rule: String,
    },
    /// Re-encode an erasure-coded volume without its deleted needles (the
    /// directory's `ReencodeVolume`).
    Reencode {
        /// The volume.
        volume: u32,
        /// Bytes deleted since its encode, and of its data file now.
        deleted_bytes: u64,
        /// Bytes of its data file now.
        logical_bytes: u64,
        /// The rule that decided it.
        rule: String,
    },
}

impl Action {
    /// The volume it acts on.
    pub fn volume(&self) -> u32 {
        match self {
            Action::Move { volume, .. }
            | Action::Drop { volume, .. }
            | Action::Delete { volume, .. }
            | Action::Encode { volume, .. }
            | Action::EcToCold { volume, .. }
            | Action::Reencode { volume, .. } => *volume,
        }
    }

    /// The server it runs on ("" for an encode: the directory runs it).
    pub fn server(&self) -> &str {
        match self {
            Action::Move { server, .. }
            | Action::Drop { server, .. }
            | Action::Delete { server, .. } => server,
            Action::Encode { .. } | Action::EcToCold { .. } | Action::Reencode { .. } => "",
        }
    }
}

/// A plan: actions, and bytes per billing key before and after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// What to do.
    pub actions: Vec<Action>,
    /// Bytes per tier / storage class now.
    pub before: BTreeMap<String, u64>,
    /// Bytes per tier / storage class once the plan has run.
    pub after: BTreeMap<String, u64>,
}
