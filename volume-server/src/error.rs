//! One place that maps storage errors to gRPC codes and HTTP statuses.

use hayloft_storage::{BlobId, Error};
use http::StatusCode;

/// True if the error is the operating system saying the disk is full.
fn is_disk_full(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.raw_os_error() == Some(28 /* ENOSPC */))
        || matches!(error, Error::NoSpace { .. })
}

/// The gRPC status for a storage error about `blob`. Every "no such blob"
/// case, a wrong cookie included, gives the same code and message, so ids
/// cannot be probed.
pub fn grpc_status(error: &Error, blob: Option<BlobId>) -> tonic::Status {
    use tonic::Status;
    if error.is_not_found() {
        return match (error, blob) {
            (Error::VolumeNotFound(v), None) => {
                Status::not_found(format!("volume {v} is not on this server"))
            }
            (_, Some(blob)) => Status::not_found(format!("blob {blob} not found")),
            (_, None) => Status::not_found("not found"),
        };
    }
    match error {
        Error::VolumeExists(_) | Error::NeedleExists { .. } => {
            Status::already_exists(error.to_string())
        }
        Error::WriteInProgress { .. } => Status::aborted(error.to_string()),
        Error::VolumeFull { .. } | Error::LowSpace { .. } => {
            Status::resource_exhausted(error.to_string())
        }
        _ if is_disk_full(error) => Status::resource_exhausted(format!("disk full: {error}")),
        Error::Sealed(_) | Error::NeedleDeleted { .. } | Error::Diverged(_) => {
            Status::failed_precondition(error.to_string())
        }
        Error::Poisoned(_) => Status::unavailable(error.to_string()),
        Error::Busy(_) => Status::aborted(error.to_string()),
        Error::InvalidNeedle(_) | Error::LengthMismatch { .. } => {
            Status::invalid_argument(error.to_string())
        }
        Error::Corrupt { .. } => {
            tracing::error!(%error, "serving corrupt needle refused");
            Status::data_loss(error.to_string())
        }
        _ => {
            tracing::error!(%error, "storage error");
            Status::internal(error.to_string())
        }
    }
}

/// The HTTP status for a storage error on a read.
pub fn http_status(error: &Error) -> StatusCode {
    if error.is_not_found() {
        return StatusCode::NOT_FOUND;
    }
    match error {
        Error::Poisoned(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Corrupt { .. } => {
            tracing::error!(%error, "serving corrupt needle refused");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => {
            tracing::error!(%error, "storage error on read");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The strong entity tag of a blob (quoted), from its record checksum and size.
pub fn etag(checksum: u32, size: u64) -> String {
    format!("\"{checksum:08x}{size:x}\"")
}
