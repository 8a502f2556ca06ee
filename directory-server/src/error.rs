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
    /// A blocking task failed to run.
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Result with the directory [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match &error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(error.to_string()),
            Error::Unavailable(_) => tonic::Status::unavailable(error.to_string()),
            Error::NotFound(_) => tonic::Status::not_found(error.to_string()),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(error.to_string()),
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
