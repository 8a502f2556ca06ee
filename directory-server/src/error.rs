//! The directory's error type and its mapping to gRPC codes.

use std::path::PathBuf;

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
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No volume server can take the request now.
    #[error("{0}")]
    Unavailable(String),
    /// The volume or copy named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request would leave the cluster worse off than it is.
    #[error("{0}")]
    FailedPrecondition(String),
    /// This node does not lead the directory group: ask the leader.
    #[error("{}", not_leader(*.leader, .addr.as_deref()))]
    NotLeader {
        /// The leader's node id, if one is known.
        leader: Option<u64>,
        /// The leader's gRPC address, if known.
        addr: Option<String>,
    },
    /// The request was started but did not finish in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Something that cannot happen did.
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// A blocking task failed to run.
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match &error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(error.to_string()),
            Error::Unavailable(_) => tonic::Status::unavailable(error.to_string()),
            Error::NotLeader { addr, .. } => {
                let mut status = tonic::Status::unavailable(error.to_string());
                let metadata = status.metadata_mut();
                metadata.insert(
                    hayloft_proto::NOT_LEADER_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                if let Some(value) = addr.as_deref().and_then(|a| a.parse().ok()) {
                    metadata.insert(hayloft_proto::LEADER_METADATA, value);
                }
                status
            }
            Error::NotFound(_) => tonic::Status::not_found(error.to_string()),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(error.to_string()),
            Error::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(error.to_string()),
            Error::Corrupt(_) => {
                tracing::error!(%error, "directory corruption");
                tonic::Status::data_loss(error.to_string())
            }
            _ => {
                tracing::error!(%error, "directory internal error");
                tonic::Status::internal(error.to_string())
            }
        }
    }
}
