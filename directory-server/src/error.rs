//! The directory's error type and its mapping to gRPC codes.
//!
//! Each variant carries what it is about (a volume, a server, a node, how
//! long was waited) rather than a sentence built where it happened; the
//! message is made here, and [`Error::code`] decides the gRPC code in one
//! place.

use std::path::PathBuf;
use std::time::Duration;

use hayloft_storage::VolumeId;

/// What can go wrong in the directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB failed.
    #[error("directory database: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored record could not be decoded.
    #[error("directory database is corrupt: {0}")]
    Corrupt(&'static str),
    /// File system error.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The gRPC server could not start.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A blocking task failed to run.
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),

    /// The configuration cannot work (checked at start): which setting,
    /// and why.
    #[error("{0}")]
    Config(String),
    /// The configuration would expose the cluster (listening beyond
    /// loopback without tokens or client certificates).
    #[error("{0}")]
    Insecure(String),

    /// A heartbeat that names no server.
    #[error("heartbeat without {0}")]
    BadHeartbeat(&'static str),
    /// A volume server configured for another region than this directory
    /// group serves: it is not registered.
    #[error(
        "volume server {server:?} is configured for region {server_region:?}, but this directory serves region {region:?}: \
         start it with --region {region} (or point it at region {server_region:?}'s directory)"
    )]
    WrongRegion {
        /// The server.
        server: String,
        /// Its region.
        server_region: String,
        /// This directory's region.
        region: String,
    },
    /// A blob or needle id that does not parse.
    #[error("malformed blob or needle id {0:?}")]
    MalformedId(String),
    /// A volume the map does not hold.
    #[error("volume {0} not found")]
    VolumeNotFound(VolumeId),
    /// A volume with no copy on that server.
    #[error("volume {volume} has no copy on {server}")]
    NoCopy {
        /// The volume.
        volume: VolumeId,
        /// The server named.
        server: String,
    },
    /// Taking the copy away would leave the volume without a healthy one.
    #[error("volume {0} would have no healthy copy left")]
    LastHealthyCopy(VolumeId),
    /// A volume that cannot be erasure-coded now, and why.
    #[error("volume {volume} cannot be erasure-coded: {why}")]
    NotEncodable {
        /// The volume.
        volume: VolumeId,
        /// Why not (not sealed, cold, too few servers...).
        why: String,
    },
    /// A volume that cannot be sealed by hand, and why.
    #[error("volume {volume} cannot be sealed: {why}")]
    NotSealable {
        /// The volume.
        volume: VolumeId,
        /// Why not (cold, moving, no live copy).
        why: String,
    },
    /// A copy's server refused or failed to seal its copy: the volume takes
    /// no new ids (the directory records it sealed), and sealing again
    /// finishes the job.
    #[error("sealing the copy of volume {volume} on {server} failed: {reason}")]
    SealFailed {
        /// The volume.
        volume: VolumeId,
        /// The copy's server.
        server: String,
        /// What it said.
        reason: String,
        /// The code it answered with.
        code: tonic::Code,
    },
    /// The copies are sealed but have not all reported it within `waited`.
    #[error(
        "volume {volume} is sealed on its copies, but {waiting} did not report it within {waited:?}; ask again"
    )]
    SealNotReported {
        /// The volume.
        volume: VolumeId,
        /// The servers that have not reported it (`vs1, vs2`).
        waiting: String,
        /// How long was waited.
        waited: Duration,
    },
    /// An erasure code that does not parse or is out of range.
    #[error("{0}")]
    BadCode(String),
    /// The volume server encoding a volume failed: the volume stays
    /// replicated (its holders were told to drop what they got).
    #[error("encoding volume {volume} on {server} failed: {reason}")]
    EncodeFailed {
        /// The volume.
        volume: VolumeId,
        /// The server whose copy was encoded.
        server: String,
        /// What it said.
        reason: String,
        /// The code it answered with.
        code: tonic::Code,
    },
    /// A volume that cannot be re-encoded now, and why.
    #[error("volume {volume} cannot be re-encoded: {why}")]
    NotReencodable {
        /// The volume.
        volume: VolumeId,
        /// Why not (not erasure-coded, a holder down, being repaired...).
        why: String,
    },
    /// A step of a re-encode failed: the volume stays erasure-coded as it
    /// was (the staged generation dropped, the fences lifted, best effort).
    #[error("re-encoding volume {volume} failed at {step} on {server}: {reason}")]
    ReencodeFailed {
        /// The volume.
        volume: VolumeId,
        /// The step (`build`, `reencode`, `fence`, `journals`, `commit`).
        step: String,
        /// The server that failed it ("" for the directory itself).
        server: String,
        /// What it said.
        reason: String,
        /// The code it answered with.
        code: tonic::Code,
    },
    /// A volume that cannot be decoded now, and why.
    #[error("volume {volume} cannot be decoded: {why}")]
    NotDecodable {
        /// The volume.
        volume: VolumeId,
        /// Why not (not erasure-coded, being repaired, too few servers...).
        why: String,
    },
    /// A step of a decode failed: the volume stays erasure-coded (the
    /// staged copies were removed and the fences lifted, best effort).
    #[error("decoding volume {volume} failed at {step} on {server}: {reason}")]
    DecodeFailed {
        /// The volume.
        volume: VolumeId,
        /// The step (`build`, `fence`, `journals`, `commit`).
        step: &'static str,
        /// The server that failed it ("" for the directory itself).
        server: String,
        /// What it said.
        reason: String,
        /// The code it answered with.
        code: tonic::Code,
    },
    /// No volume of the collection can be created now (too few live
    /// servers, volume ids exhausted): why, as status shows it.
    #[error("{0}")]
    CannotCreate(String),
    /// A change the leader proposed was refused when applied: the state
    /// changed since the leader looked.
    #[error("{0}")]
    Refused(String),
    /// A change the leader proposed may or may not have been committed
    /// (leadership lost while proposing it): the next leader finds out.
    #[error("its commit is in doubt: {0}")]
    CommitUnknown(String),
    /// A volume server could not be reached to create a volume's copy.
    #[error("volume server {server} unreachable: {reason}")]
    ServerUnreachable {
        /// The server.
        server: String,
        /// What the connection said.
        reason: String,
    },
    /// A volume server refused to create a volume's copy.
    #[error("volume server {server} could not create volume {volume}: {reason}")]
    CreateRefused {
        /// The server.
        server: String,
        /// The volume.
        volume: VolumeId,
        /// What it answered.
        reason: String,
    },
    /// A volume server did not answer a creation in time.
    #[error("volume server {server} did not create the volume within {waited:?}")]
    CreateTimedOut {
        /// The server.
        server: String,
        /// How long it was given.
        waited: Duration,
    },

    /// This node does not lead the directory group: ask the leader.
    #[error("{}", not_leader(*.leader, .addr.as_deref()))]
    NotLeader {
        /// The leader's node id, if one is known.
        leader: Option<u64>,
        /// The leader's gRPC address, if known.
        addr: Option<String>,
    },
    /// The node's consensus is not running (starting or stopped).
    #[error("the directory's Raft node is not running")]
    NotRunning,
    /// No majority confirmed this node's leadership in time.
    #[error("no majority of the directory group confirmed this node's leadership within {0:?}")]
    NoMajority(Duration),
    /// The consensus layer failed while doing something.
    #[error("{doing}: {reason}")]
    Consensus {
        /// What the node was doing ("the directory group could not commit
        /// a change"...).
        doing: &'static str,
        /// What openraft said.
        reason: String,
    },
    /// An answer from the state machine that the caller cannot have asked
    /// for (as `Debug` shows it).
    #[error("unexpected: {0}")]
    UnexpectedAnswer(String),

    /// A node to add without an id or an address.
    #[error("a node to add needs an id above 0 and an address")]
    NodeWithoutAddress,
    /// A node id that is a member at another address.
    #[error(
        "node {id} is already a member at {known}; remove it first to give the id another address"
    )]
    MemberElsewhere {
        /// The node id.
        id: u64,
        /// Where it is a member.
        known: String,
    },
    /// A node added as a learner that did not catch up in time.
    #[error(
        "node {id} at {addr} was added as a learner but has not caught up within {waited:?}; \
         it keeps receiving the log: add it again to make it a voter, or remove it"
    )]
    LearnerBehind {
        /// The node id.
        id: u64,
        /// Its address.
        addr: String,
        /// How long it was given.
        waited: Duration,
    },
    /// A node the group does not have.
    #[error("node {0} in the directory group not found")]
    NodeNotFound(u64),
    /// Removing the node would leave the group without a voter.
    #[error("node {0} is the group's only voter; add another node first")]
    OnlyVoter(u64),
    /// The node to add does not answer.
    #[error(
        "the node to add does not answer at {addr} ({reason}); start it first with \
         `hayloft directory --node-id {id} --listen {addr} --join`"
    )]
    NodeSilent {
        /// The node id.
        id: u64,
        /// Its address.
        addr: String,
        /// What the call said.
        reason: String,
    },
    /// Another node answers at the address given.
    #[error("the node at {addr} is node {found}, not node {id}")]
    WrongNode {
        /// The node id asked for.
        id: u64,
        /// The address.
        addr: String,
        /// The node id that answered.
        found: u64,
    },
    /// The node to add belongs to a group already.
    #[error(
        "node {id} at {addr} already belongs to a group ({members}); only an empty node \
         started with --join can be added"
    )]
    NodeInAGroup {
        /// The node id.
        id: u64,
        /// Its address.
        addr: String,
        /// The members it knows.
        members: String,
    },
    /// openraft refused a membership change now (another is under way).
    #[error("the membership cannot change now: {0}")]
    MembershipBusy(String),
}

fn not_leader(leader: Option<u64>, addr: Option<&str>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => {
            format!("this directory node is not the leader; the leader is node {id} at {addr}")
        }
        (Some(id), None) => format!("this directory node is not the leader; node {id} is"),
        (None, _) => "the directory group has no leader yet (an election is under way)".into(),
    }
}

/// Result with the directory [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code this error is answered with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::Config(_)
            | Error::BadHeartbeat(_)
            | Error::MalformedId(_)
            | Error::NodeWithoutAddress
            | Error::BadCode(_) => Code::InvalidArgument,
            Error::EncodeFailed { code, .. }
            | Error::SealFailed { code, .. }
            | Error::DecodeFailed { code, .. }
            | Error::ReencodeFailed { code, .. } => *code,
            Error::CannotCreate(_)
            | Error::ServerUnreachable { .. }
            | Error::CreateRefused { .. }
            | Error::CreateTimedOut { .. }
            | Error::NotLeader { .. }
            | Error::NotRunning
            | Error::NoMajority(_)
            | Error::CommitUnknown(_)
            | Error::Consensus { .. } => Code::Unavailable,
            Error::VolumeNotFound(_) | Error::NoCopy { .. } | Error::NodeNotFound(_) => {
                Code::NotFound
            }
            Error::Insecure(_)
            | Error::LastHealthyCopy(_)
            | Error::NotEncodable { .. }
            | Error::NotSealable { .. }
            | Error::NotDecodable { .. }
            | Error::NotReencodable { .. }
            | Error::Refused(_)
            | Error::MemberElsewhere { .. }
            | Error::OnlyVoter(_)
            | Error::NodeSilent { .. }
            | Error::WrongNode { .. }
            | Error::WrongRegion { .. }
            | Error::NodeInAGroup { .. }
            | Error::MembershipBusy(_) => Code::FailedPrecondition,
            Error::LearnerBehind { .. } | Error::SealNotReported { .. } => Code::DeadlineExceeded,
            Error::Corrupt(_) => Code::DataLoss,
            Error::Db(_)
            | Error::Io(..)
            | Error::Transport(_)
            | Error::Task(_)
            | Error::UnexpectedAnswer(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        match code {
            tonic::Code::DataLoss => tracing::error!(%error, "directory corruption"),
            tonic::Code::Internal => tracing::error!(%error, "directory internal error"),
            _ => {}
        }
        let mut status = tonic::Status::new(code, error.to_string());
        if let Error::NotLeader { addr, .. } = &error {
            let metadata = status.metadata_mut();
            metadata.insert(
                hayloft_proto::NOT_LEADER_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            if let Some(value) = addr.as_deref().and_then(|a| a.parse().ok()) {
                metadata.insert(hayloft_proto::LEADER_METADATA, value);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_what_it_is_about_with_its_code() {
        let cases = [
            (
                Error::VolumeNotFound(VolumeId(7)),
                tonic::Code::NotFound,
                "volume 7 not found",
            ),
            (
                Error::NoCopy {
                    volume: VolumeId(7),
                    server: "vs1".into(),
                },
                tonic::Code::NotFound,
                "volume 7 has no copy on vs1",
            ),
            (
                Error::LastHealthyCopy(VolumeId(7)),
                tonic::Code::FailedPrecondition,
                "volume 7 would have no healthy copy left",
            ),
            (
                Error::NotEncodable {
                    volume: VolumeId(7),
                    why: "it is writable: seal it first".into(),
                },
                tonic::Code::FailedPrecondition,
                "volume 7 cannot be erasure-coded: it is writable: seal it first",
            ),
            (
                Error::NoMajority(Duration::from_secs(2)),
                tonic::Code::Unavailable,
                "within 2s",
            ),
            (
                Error::LearnerBehind {
                    id: 4,
                    addr: "h:1".into(),
                    waited: Duration::from_secs(30),
                },
                tonic::Code::DeadlineExceeded,
                "node 4 at h:1 was added as a learner but has not caught up within 30s",
            ),
            (
                Error::NotLeader {
                    leader: Some(2),
                    addr: Some("127.0.0.1:9330".into()),
                },
                tonic::Code::Unavailable,
                "the leader is node 2 at 127.0.0.1:9330",
            ),
        ];
        for (error, code, message) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(status.message().contains(message), "{}", status.message());
        }
        let status = tonic::Status::from(Error::NotLeader {
            leader: Some(2),
            addr: Some("127.0.0.1:9330".into()),
        });
        assert!(
            status
                .metadata()
                .contains_key(hayloft_proto::LEADER_METADATA)
        );
    }
}
