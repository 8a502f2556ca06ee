//! One place that maps storage errors to gRPC codes and HTTP statuses.

use hayloft_storage::{BlobId, Error};
use http::StatusCode;

use crate::tier::{ColdReadError, MoveError};

/// Seconds a client is told to wait before retrying a read the object
/// store could not answer (unreachable or failing), over HTTP
/// (`Retry-After`) and gRPC (`retry-after` metadata) alike.
pub const COLD_UNREACHABLE_RETRY_SECS: u64 = 30;

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
            // The volume is not here at all: marked, so that a client whose
            // cached location went stale asks the directory again.
            (Error::VolumeNotFound(v), Some(blob)) => {
                let mut status = Status::not_found(format!(
                    "blob {blob} not found: volume {v} is not on this server"
                ));
                if let Ok(value) = v.0.to_string().parse() {
                    status
                        .metadata_mut()
                        .insert(hayloft_proto::VOLUME_NOT_HERE, value);
                }
                status
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
        // A volume gone cold takes no writes, as a sealed one: the client
        // takes a new id elsewhere.
        Error::Sealed(_) | Error::Cold(_) | Error::NeedleDeleted { .. } | Error::Diverged(_) => {
            Status::failed_precondition(error.to_string())
        }
        Error::Poisoned(_) | Error::Unavailable(_) => Status::unavailable(error.to_string()),
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
        Error::Poisoned(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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

/// Seconds to wait before retrying a failed cold read, if retrying may
/// help: the restore's wait for an archived object, a fixed wait for an
/// unreachable store, none for a storage error (not found, corrupt...).
/// HTTP and gRPC both answer with this.
pub fn cold_retry_after(error: &ColdReadError) -> Option<u64> {
    match error {
        ColdReadError::Storage(_) => None,
        ColdReadError::Archived(after) => Some(after.as_secs().max(1)),
        ColdReadError::Unavailable(_) => Some(COLD_UNREACHABLE_RETRY_SECS),
    }
}

/// The gRPC status of a failed cold read of `blob`: archived and
/// unreachable are UNAVAILABLE with a `retry-after` (seconds, as
/// [`cold_retry_after`]); a storage error as [`grpc_status`].
pub fn cold_grpc_status(error: &ColdReadError, blob: BlobId) -> tonic::Status {
    let mut status = match error {
        ColdReadError::Storage(e) => return grpc_status(e, Some(blob)),
        ColdReadError::Archived(after) => tonic::Status::unavailable(format!(
            "blob {blob} is archived; a restore is under way, retry after {} s",
            after.as_secs()
        )),
        ColdReadError::Unavailable(reason) => {
            tonic::Status::unavailable(format!("cold storage unreachable: {reason}"))
        }
    };
    if let Some(after) = cold_retry_after(error)
        && let Ok(value) = after.to_string().parse()
    {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// The HTTP answer to a failed cold read: status, body and `Retry-After`
/// seconds (as [`cold_retry_after`]). Every "no such blob" is 404.
pub fn cold_http(error: &ColdReadError) -> (StatusCode, &'static str, Option<u64>) {
    let body = match error {
        ColdReadError::Storage(e) if e.is_not_found() => {
            return (StatusCode::NOT_FOUND, "not found\n", None);
        }
        ColdReadError::Storage(e) => return (http_status(e), "error reading blob\n", None),
        ColdReadError::Archived(_) => "blob is archived; a restore is under way\n",
        ColdReadError::Unavailable(_) => "cold storage unreachable\n",
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        body,
        cold_retry_after(error),
    )
}

/// The gRPC status of a tier move that failed or was refused.
pub fn move_status(error: MoveError) -> tonic::Status {
    use tonic::Status;
    match error {
        MoveError::Storage(e) => grpc_status(&e, None),
        MoveError::Invalid(reason) => Status::failed_precondition(reason),
        MoveError::Object(e) => Status::unavailable(e.to_string()),
        MoveError::Mismatch(reason) => Status::data_loss(reason),
    }
}

/// The strong entity tag of a blob (quoted), from its record checksum and size.
pub fn etag(checksum: u32, size: u64) -> String {
    format!("\"{checksum:08x}{size:x}\"")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_failed_cold_read_gets_the_same_wait_over_http_and_grpc() {
        let blob = BlobId {
            needle: hayloft_storage::NeedleId(1 << 32 | 1),
            cookie: hayloft_storage::Cookie(0xabcdef01),
        };
        for error in [
            ColdReadError::Archived(Duration::from_secs(3600)),
            ColdReadError::Archived(Duration::from_millis(10)),
            ColdReadError::Unavailable("connection refused".into()),
            ColdReadError::Storage(Error::VolumeNotFound(hayloft_storage::VolumeId(1))),
        ] {
            let grpc = cold_grpc_status(&error, blob);
            let grpc_wait = grpc
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let (http, _, http_wait) = cold_http(&error);
            assert_eq!(grpc_wait, http_wait, "{error:?}");
            assert_eq!(grpc_wait, cold_retry_after(&error));
            if let ColdReadError::Storage(_) = error {
                assert_eq!(http, StatusCode::NOT_FOUND);
                assert_eq!(grpc.code(), tonic::Code::NotFound);
                assert_eq!(http_wait, None);
            } else {
                assert_eq!(http, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(grpc.code(), tonic::Code::Unavailable);
                assert!(http_wait.is_some_and(|s| s >= 1), "{error:?}");
            }
        }
    }
}
