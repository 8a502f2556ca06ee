//! What can go wrong in a client call, and which failures an upload retries.

#[allow(unused_imports)]
use crate::prelude::*;

/// What can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// A server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The blob id is malformed.
    #[error(transparent)]
    BlobId(#[from] hayloft_storage::types::ParseBlobIdError),
    /// The directory knows no server for the volume.
    #[error("no server holds volume {0}")]
    NoLocation(u32),
    /// An argument is unusable.
    #[error("{0}")]
    InvalidArgument(String),
    /// A client of several regions found none that could serve the call:
    /// each region, in the order tried, and why.
    #[error("{}", crate::failover::describe(.0))]
    Regions(Vec<crate::failover::RegionFailure>),
}

impl Error {
    /// The gRPC code, if the server answered.
    ///
    /// For [`Error::Regions`]: UNAVAILABLE if a region was unreachable
    /// (it may hold what was asked), else the first region's answer with a
    /// code (a blob no region has is NOT_FOUND).
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            Error::Regions(failures) if failures.iter().any(|f| f.unreachable) => {
                Some(Code::Unavailable)
            }
            Error::Regions(failures) => failures.iter().find_map(|f| f.error.code()),
            _ => None,
        }
    }
}

/// Result with the client [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The same failure for another blob (errors are not `Clone`).
pub(crate) fn copy_error(error: &Error) -> Error {
    match error {
        Error::Status(status) => Error::Status(tonic::Status::new(
            status.code(),
            status.message().to_owned(),
        )),
        other => Error::Status(tonic::Status::unavailable(other.to_string())),
    }
}

/// Should an upload try again with a new id on another volume? (Not when
/// a rate limit refused it: every volume would.)
pub(crate) fn retry_upload(error: &Error) -> bool {
    if let Error::Status(status) = error
        && status
            .metadata()
            .contains_key(hayloft_access::limits::RETRY_AFTER_MS)
    {
        return false;
    }
    matches!(
        error.code(),
        Some(
            Code::Unavailable
                | Code::ResourceExhausted
                | Code::FailedPrecondition
                | Code::NotFound
                | Code::Unknown
                | Code::Cancelled
        )
    ) || matches!(error, Error::Connect { .. })
}
