//! The process's Prometheus `/metrics` endpoint, and (on a directory) the
//! operator page at `/` with its `/login` and `/logout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use hayloft_directory::DirectoryConfig;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus recorder could not be built or installed.
    #[error("installing the metrics recorder")]
    Recorder(#[source] BuildError),
    /// The address could not be bound.
    #[error("binding the metrics address {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address would show the cluster to anyone (see
    /// [`hayloft_access::insecure_metrics_listen`]).
    #[error("{0}")]
    Insecure(String),
}

pub use crate::page::access::PageSource;

/// Refuses to serve the metrics address `addr` of a directory with
/// `config` where it would show the cluster to anyone (see
/// [`hayloft_access::insecure_metrics_listen`]).
pub fn check_listen(addr: SocketAddr, config: &DirectoryConfig) -> Result<(), MetricsError> {
    match hayloft_access::insecure_metrics_listen(
        addr,
        config.require_tokens,
        config
            .tls
            .as_ref()
            .is_some_and(|tls| tls.require_client_certs),
        config.insecure,
    ) {
        Some(refusal) => Err(MetricsError::Insecure(refusal)),
        None => Ok(()),
    }
}

/// The metrics endpoint of this process, and (on a directory) the
/// operator page, served once its source is set.
pub struct MetricsEndpoint {
    /// The bound address.
    pub addr: SocketAddr,
    page: Arc<OnceLock<PageSource>>,
    served: tokio::task::JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Serves the operator page at `/` from `source` (a directory's).
    pub fn serve_page(&self, source: PageSource) {
        let _ = self.page.set(source);
    }

    /// Waits until the endpoint has stopped (its `stop` completed, its
    /// connections drained) and its port is closed.
    pub async fn stopped(self) {
        let _ = self.served.await;
    }
}

/// The process's Prometheus recorder: installed by the first endpoint, shared
/// by every later one (a process has one global recorder; a test may start
/// several servers in one process).
fn recorder() -> Result<PrometheusHandle, BuildError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    // Held only while installing, never across an await.
    static INSTALLING: Mutex<()> = Mutex::new(());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let _installing = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // Latency buckets from 100 µs to 10 s.
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&buckets)?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Installs the Prometheus exporter for this process (once) and serves
/// `/metrics` on `addr` (and `/`, the operator page, once
/// [`MetricsEndpoint::serve_page`] is called) until `stop` completes.
pub async fn serve(
    addr: SocketAddr,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<MetricsEndpoint, MetricsError> {
    let handle = recorder().map_err(MetricsError::Recorder)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
    let upkeep = handle.clone();
    let mut upkeep_stopped = stopped.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => upkeep.run_upkeep(),
                _ = upkeep_stopped.wait_for(|stop| *stop) => return,
            }
        }
    });
    let page: Arc<OnceLock<PageSource>> = Default::default();
    let source = Arc::clone(&page);
    let app = axum::Router::new()
        .route(
            "/login",
            axum::routing::post(
                |axum::Form(form): axum::Form<Vec<(String, String)>>| async move {
                    crate::page_access::login(&form)
                },
            ),
        )
        .route(
            "/logout",
            axum::routing::post(|| async { crate::page_access::logout() }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route(
            "/",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                use axum::response::IntoResponse;
                let source = source.get().cloned();
                async move {
                    match source {
                        Some(source) => crate::page_access::answer(&source, &headers).await,
                        None => (
                            axum::http::StatusCode::NOT_FOUND,
                            axum::response::Html(
                                "no operator page here: it is served by directories".to_owned(),
                            ),
                        )
                            .into_response(),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        stop.await;
        let _ = stopped_tx.send(true);
    });
    let mut server_stopped = stopped;
    let served = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = server_stopped.wait_for(|stop| *stop).await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(MetricsEndpoint {
        addr: local,
        page,
        served,
    })
}
