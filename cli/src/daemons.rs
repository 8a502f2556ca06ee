//! The server roles: `hayloft server`, `hayloft directory`, `hayloft volume`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use hayloft_directory::{Directory, DirectoryConfig};
use hayloft_volume::{VolumeServer, VolumeServerConfig};
use serde::de::DeserializeOwned;

/// Loads a TOML configuration file, or the defaults without one.
pub fn load_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Installs the Prometheus exporter for this process and serves `/metrics`
/// on `addr`; returns the bound address.
pub async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    use metrics_exporter_prometheus::PrometheusBuilder;
    // Latency buckets from 100 µs to 10 s.
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&buckets)
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let local = listener.local_addr()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(local)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining requests and syncing volumes");
}

/// The configurations of the embedded `hayloft server`.
pub fn embedded_configs(
    data_dir: &Path,
    directory_listen: SocketAddr,
    grpc_listen: SocketAddr,
    http_listen: SocketAddr,
    metrics_listen: SocketAddr,
) -> (DirectoryConfig, VolumeServerConfig) {
    // One process, one metrics endpoint (carried by the directory's config).
    let directory = DirectoryConfig {
        listen: directory_listen,
        data_dir: data_dir.join("directory"),
        metrics_listen: Some(metrics_listen),
        ..DirectoryConfig::default()
    };
    let volume = VolumeServerConfig {
        server_id: "local".into(),
        grpc_listen,
        http_listen,
        hot_dirs: vec![data_dir.join("hot")],
        warm_dirs: vec![data_dir.join("warm")],
        metrics_listen: None,
        // The cold tier of the embedded default is a local directory behind
        // the same interface as S3, so nothing else needs installing.
        cold: Some(hayloft_tiering::ObjectStoreConfig::Local {
            path: data_dir.join("cold"),
        }),
        ..VolumeServerConfig::default()
    };
    (directory, volume)
}

/// Runs the directory and a volume server in this process until a signal.
pub async fn server(
    (directory_config, mut volume_config): (DirectoryConfig, VolumeServerConfig),
    policy: hayloft_tiering::Policy,
    tier_interval: std::time::Duration,
) -> anyhow::Result<()> {
    let data_dir = directory_config
        .data_dir
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let metrics = match directory_config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr).await?),
        None => None,
    };
    let directory = Directory::bind(directory_config)
        .await
        .context("starting the directory")?;
    volume_config.directory = directory.local_addr().to_string();
    let volume = VolumeServer::bind(volume_config)
        .await
        .context("starting the volume server")?;
    println!("hayloft server: data in {}", data_dir.display());
    println!("  directory (gRPC)  {}", directory.local_addr());
    println!("  volume    (gRPC)  {}", volume.grpc_addr());
    println!(
        "  origin    (HTTP)  http://{}/<blob id>",
        volume.http_addr()
    );
    if let Some(metrics) = metrics {
        println!("  metrics   (HTTP)  http://{metrics}/metrics");
    }
    println!("try: hayloft put FILE --url; hayloft status");

    let (stop_volume, volume_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_directory, directory_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut volume_task = tokio::spawn(volume.serve(async {
        let _ = volume_stopped.await;
    }));
    let directory_addr = directory.local_addr().to_string();
    let mut directory_task = tokio::spawn(directory.serve(async {
        let _ = directory_stopped.await;
    }));
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(hayloft_tiering::worker::run(
        directory_addr,
        policy,
        tier_interval,
        async {
            let _ = worker_stopped.await;
        },
    ));
    tokio::select! {
        _ = shutdown_signal() => {}
        result = &mut volume_task => {
            result?.context("volume server")?;
            anyhow::bail!("volume server stopped unexpectedly");
        }
        result = &mut directory_task => {
            result?.context("directory")?;
            anyhow::bail!("directory stopped unexpectedly");
        }
    }
    // The worker stops first (moves run on in the volume server and resume
    // after a restart); then the volume server, so its volumes are synced
    // while the directory still answers.
    let _ = stop_worker.send(());
    let _ = worker.await;
    let _ = stop_volume.send(());
    volume_task.await?.context("volume server")?;
    let _ = stop_directory.send(());
    directory_task.await?.context("directory")?;
    Ok(())
}

/// Runs a directory server until a signal.
pub async fn directory(config: DirectoryConfig) -> anyhow::Result<()> {
    let metrics = config.metrics_listen;
    let directory = Directory::bind(config)
        .await
        .context("starting the directory")?;
    println!("directory listening on {}", directory.local_addr());
    if let Some(addr) = metrics {
        println!(
            "directory metrics on http://{}/metrics",
            serve_metrics(addr).await?
        );
    }
    directory.serve(shutdown_signal()).await?;
    Ok(())
}

/// Runs a volume server until a signal.
pub async fn volume(config: VolumeServerConfig) -> anyhow::Result<()> {
    let metrics = config.metrics_listen;
    let volume = VolumeServer::bind(config)
        .await
        .context("starting the volume server")?;
    println!("volume server gRPC listening on {}", volume.grpc_addr());
    println!("volume server HTTP listening on {}", volume.http_addr());
    if let Some(addr) = metrics {
        println!(
            "volume server metrics on http://{}/metrics",
            serve_metrics(addr).await?
        );
    }
    volume.serve(shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_parse_to_the_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let directory: DirectoryConfig =
            load_config(Some(&root.join("directory.example.toml"))).unwrap();
        let defaults = DirectoryConfig::default();
        assert_eq!(directory.listen, defaults.listen);
        assert_eq!(directory.dead_after, defaults.dead_after);
        assert_eq!(directory.repair_after, defaults.repair_after);
        assert_eq!(directory.node_id, defaults.node_id);
        assert_eq!(directory.election_timeout, defaults.election_timeout);
        assert_eq!(directory.raft_heartbeat, defaults.raft_heartbeat);
        assert_eq!(directory.raft_snapshot_every, defaults.raft_snapshot_every);
        assert_eq!(
            directory.linearizable_lookups,
            defaults.linearizable_lookups
        );
        // The cluster example keeps three copies, thumbnails two.
        assert_eq!(directory.replication_for("photos"), 3);
        assert_eq!(directory.replication_for("thumbnails"), 2);
        assert_eq!(directory.signed_collections(), ["private"]);
        let volume: VolumeServerConfig =
            load_config(Some(&root.join("volume.example.toml"))).unwrap();
        let defaults = VolumeServerConfig::default();
        assert_eq!(volume.max_volume_size, defaults.max_volume_size);
        assert_eq!(volume.cache_max_age, defaults.cache_max_age);
        assert_eq!(volume.hot_dirs, defaults.hot_dirs);
        assert_eq!(volume.read_window, defaults.read_window);
        assert_eq!(volume.zone, defaults.zone);
        assert_eq!(volume.scrub_interval, defaults.scrub_interval);
        assert_eq!(volume.verify_reads_up_to, defaults.verify_reads_up_to);
        assert!(volume.cold.is_some());
        assert_eq!(
            volume.signed_url_max_lifetime,
            defaults.signed_url_max_lifetime
        );
        assert_eq!(volume.signed_url_clock_skew, defaults.signed_url_clock_skew);

        let policy = std::fs::read_to_string(root.join("policy.example.toml")).unwrap();
        let policy = hayloft_tiering::Policy::parse(&policy).unwrap();
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(policy.promotions.len(), 1);
        assert_eq!(policy.expiries.len(), 1);
        // The built-in policy of `hayloft server` parses too.
        crate::tier::load_policy(None).unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_typo = 3\n").unwrap();
        let error = load_config::<DirectoryConfig>(Some(&path)).unwrap_err();
        assert!(format!("{error:#}").contains("listen_typo"), "{error:#}");
    }
}
