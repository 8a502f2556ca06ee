//! Running storage work off the async threads: [`blocking`] puts a closure
//! on tokio's blocking pool and answers a panic in it as INTERNAL.

use tonic::Status;

/// Runs `f` on tokio's blocking pool; a panic in it answers INTERNAL.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(task_failed)
}

/// A storage task that panicked (or was cancelled), as the caller's answer.
pub(crate) fn task_failed(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("storage task failed: {error}"))
}
