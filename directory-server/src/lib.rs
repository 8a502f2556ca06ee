//! The directory server: the map from needle ids to volumes to volume servers.
//!
//! # Layout
//!
//! - [`DirectoryConfig`]: the daemon's configuration (TOML, with defaults);
//!   `collections` its per-collection settings ([`CollectionConfig`]).
//! - [`Directory`]: binds the gRPC port, then serves until shutdown.
//! - `replicated`: the replicated state, the commands that change it and
//!   its apply function over a RocksDB write batch (no Raft types).
//! - `cluster`: the in-memory cluster map (that state plus the leader's
//!   soft state) and the allocators; reaches the group through its
//!   `Consensus` trait.
//! - `consensus`: the directory group (openraft) behind that trait: every
//!   change to the map is committed through the Raft log before it is acted
//!   on.
//! - `db`: the persistence in RocksDB (schema in the module docs).
//! - `service`: the `hayloft.v1.Directory` gRPC service.
//! - [`placement`]: which servers hold a volume's copies.
//! - [`erasure`]: erasure-coded volumes: shards placed, encoded, rebuilt.
//! - [`repair`]: brings degraded volumes back to all their copies.
//! - `seal`: a writable volume sealed by hand (`SealVolume`).
//! - `history`: records the capacity history.
//!
//! Background jobs (the repair loop, shard rebuilds, the capacity history) are
//! `hayloft_proto::background` workers, listed by `hayloft status`.
//!
//! Dependencies between them go one way: `replicated` <- `cluster` <-
//! `consensus` <- `service`.
//!
//! Needle ids are `volume id << 32 | sequence`: each volume owns a range, so
//! a bare needle id resolves to its volume. Sequences are reserved in blocks
//! committed through the Raft log before any id in the block is handed out,
//! each block starting past every block committed before it, so no id is
//! handed out twice across crashes, restarts and changes of leader.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

mod cluster;
mod collections;
mod consensus;
pub mod db;
pub mod erasure;
mod error;
mod history;
pub mod placement;
pub mod repair;
mod replicated;
mod seal;
mod service;
mod shipping;

pub use cluster::{Cluster, NEEDLE_BLOCK};
pub use collections::CollectionConfig;
pub use consensus::Timing;
pub use error::{Error, Result};
pub use service::{DirectoryService, MAX_ASSIGN_COUNT};

/// Configuration of a directory server. Every field has a default, so an
/// empty file (or none) works.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// gRPC listen address. Default `127.0.0.1:9330`.
    pub listen: SocketAddr,
    /// Where the RocksDB database lives. Default `./data/directory`.
    pub data_dir: PathBuf,
    /// How often volume servers send heartbeats. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub pulse: Duration,
    /// A volume server is dead (no new ids go to it) after this long without a
    /// heartbeat. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// Keep at least this many writable volumes per collection, creating
    /// more ahead of need. Default 2.
    pub min_writable_volumes: usize,
    /// A volume stops taking new ids once its data file reaches this
    /// fraction of its maximum size. Default 0.95.
    pub volume_full_ratio: f64,
    /// Where to serve Prometheus `/metrics`. Default `127.0.0.1:9339`.
    pub metrics_listen: Option<SocketAddr>,
    /// How often to record bytes per tier in the history (for growth and
    /// forecasts in `hayloft status --capacity`). Default `10m`.
    #[serde(with = "humantime_serde")]
    pub history_interval: Duration,
    /// How long history is kept. Default `35d`.
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
    /// Copies of every volume, each on a different volume server, spread
    /// over zones then racks. Default 1 (`hayloft server` is one node).
    pub replication: usize,
    /// Per-collection settings, `[collections.<name>]`: `replication`
    /// overrides the default for that collection's new volumes, `ec_code`
    /// the erasure code of its volumes.
    pub collections: std::collections::BTreeMap<String, CollectionConfig>,
    /// A copy whose server has sent no heartbeat for this long is made
    /// again on another server. Stale or missing copies on live servers
    /// catch up at once. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub repair_after: Duration,
    /// Repairs copying to one server at once. Default 2.
    pub max_repairs_per_server: usize,
    /// Copy rate of each repair (0 = the volume server's `repair_rate`).
    /// Default 0.
    pub repair_rate: bytesize::ByteSize,
    /// This node's id in the directory group. Default 1.
    pub node_id: u64,
    /// Every node of the directory group, this one included, as
    /// `id=host:port` (their gRPC addresses). Empty (the default): a group
    /// of this node alone.
    pub peers: Vec<String>,
    /// This node joins a group that already exists: it never initialises
    /// one, and waits to be added (`hayloft directory add-node`). For a new
    /// or replacement node. Default false.
    pub join: bool,
    /// How often the group's leader tells the others it is alive.
    /// Default `250ms`.
    #[serde(with = "humantime_serde")]
    pub raft_heartbeat: Duration,
    /// A node that hears from no leader for this long (randomised up to
    /// twice as long) starts an election. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub election_timeout: Duration,
    /// A snapshot of the map is taken, and the Raft log before it purged,
    /// every this many log entries. Default 5000.
    pub raft_snapshot_every: u64,
    /// Each lookup first confirms with a majority of the group that this
    /// node still leads, and waits until it has applied every entry
    /// committed before (a read index): no lookup misses a change a newer
    /// leader committed. Costs a round trip to the other nodes per lookup,
    /// and lookups fail (UNAVAILABLE) while no majority answers. Default
    /// false: a leader cut off from the others answers from its map until
    /// it learns of a newer term.
    pub linearizable_lookups: bool,
    /// The key ring: verifies tokens and signs write grants (see README,
    /// "Tokens"), and signs the directory's own calls to volume servers
    /// and to the other nodes. Default: none.
    pub keyring: Option<PathBuf>,
    /// Every gRPC call must carry a token signed by a key of `keyring`;
    /// `Assign` then hands out a write grant with each id. Default false.
    pub require_tokens: bool,
    /// A token or grant still works this long after its expiry (clocks
    /// disagree). Default `60s`.
    #[serde(with = "humantime_serde")]
    pub token_clock_skew: Duration,
    /// How long a write grant from `Assign` works. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub write_grant_ttl: Duration,
    /// Serve gRPC on a non-loopback address without `require_tokens`
    /// (refused otherwise; logged at every start). Default false.
    pub insecure: bool,
    /// The longest lifetime `SignUrl` signs a URL for (volume servers
    /// refuse longer ones with their own setting of the same name).
    /// Default `24h`.
    #[serde(with = "humantime_serde")]
    pub signed_url_max_lifetime: Duration,
    /// Rate limits on gRPC calls per caller, by operation and collection
    /// (`[limits.grpc]`; see README, "Rate limits"). Default: none.
    pub limits: hayloft_access::limits::LimitsConfig,
    /// The audit log: a JSON line per Assign, SignUrl, admin call and
    /// refusal (see README, "Audit log"). Default: none.
    pub audit: hayloft_access::audit::AuditConfig,
    /// TLS for gRPC, and for this node's calls to volume servers and the
    /// other nodes (see README, "TLS"; `origin` does not apply). Default:
    /// none (plain TCP).
    pub tls: Option<hayloft_access::tls::TlsConfig>,
    /// The erasure code `EncodeVolume` uses when the request names none,
    /// `K+M` (`K` data shards, `M` parity shards: any `M` may be lost).
    /// Default `10+4`.
    pub ec_code: String,
    /// The region this directory group serves (see README, "Regions"):
    /// its volume servers must be configured with the same, and it
    /// allocates volume ids from its region number's range. Default
    /// `default`.
    pub region: String,
    /// `[regions.<name>]`: every region of the deployment, with its
    /// `number` and (for the others) its directory group's addresses.
    /// Default: none (one region).
    pub regions: hayloft_proto::regions::RegionsConfig,
    /// The regions every collection's blobs are replicated to, unless its
    /// `[collections.<name>] replicate_to` says otherwise. Checked at
    /// start (each must be another region of `regions`); nothing is
    /// shipped yet (README, "Regions"). Default: none.
    pub replicate_to: Vec<String>,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            listen: default_listen(),
            data_dir: PathBuf::from("data/directory"),
            pulse: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            min_writable_volumes: 2,
            volume_full_ratio: 0.95,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9339))),
            history_interval: Duration::from_secs(600),
            history_retention: Duration::from_secs(35 * 86_400),
            replication: 1,
            collections: std::collections::BTreeMap::new(),
            repair_after: Duration::from_secs(600),
            max_repairs_per_server: 2,
            repair_rate: bytesize::ByteSize(0),
            node_id: 1,
            peers: Vec::new(),
            join: false,
            raft_heartbeat: Duration::from_millis(250),
            election_timeout: Duration::from_millis(1000),
            raft_snapshot_every: 5_000,
            linearizable_lookups: false,
            keyring: None,
            require_tokens: false,
            token_clock_skew: Duration::from_secs(60),
            write_grant_ttl: Duration::from_secs(60),
            insecure: false,
            signed_url_max_lifetime: Duration::from_secs(24 * 3600),
            limits: hayloft_access::limits::LimitsConfig::default(),
            audit: hayloft_access::audit::AuditConfig::default(),
            tls: None,
            ec_code: default_ec_code(),
            region: hayloft_proto::regions::default_region(),
            regions: hayloft_proto::regions::RegionsConfig::new(),
            replicate_to: Vec::new(),
        }
    }
}

fn default_ec_code() -> String {
    "10+4".into()
}

/// Parses `id=host:port` peers into a map; empty means this node alone at
/// `own`.
pub fn parse_peers(
    peers: &[String],
    node_id: u64,
    own: SocketAddr,
) -> Result<std::collections::BTreeMap<u64, String>> {
    let mut map = std::collections::BTreeMap::new();
    for peer in peers
        .iter()
        .flat_map(|p| p.split(','))
        .filter(|p| !p.is_empty())
    {
        let (id, addr) = peer
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("peer {peer:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("peer {peer:?}: {id:?} is not a node id")))?;
        if map.insert(id, addr.trim().to_owned()).is_some() {
            return Err(Error::Config(format!("node id {id} is listed twice")));
        }
    }
    if map.is_empty() {
        map.insert(node_id, own.to_string());
    } else if !map.contains_key(&node_id) {
        return Err(Error::Config(format!(
            "this node's id {node_id} is not among the peers {peers:?}"
        )));
    }
    Ok(map)
}

fn default_listen() -> SocketAddr {
    hayloft_proto::default_addr(hayloft_proto::DEFAULT_DIRECTORY)
}

/// A directory server bound to its port, ready to serve.
pub struct Directory {
    cluster: Arc<Cluster>,
    raft: consensus::Raft,
    listener: TcpListener,
    config: DirectoryConfig,
    keyring: Option<Arc<hayloft_access::SharedKeyring>>,
    /// What this node presents to volume servers and the other nodes, and
    /// the token gate in front of its services.
    auth: hayloft_access::grpc::ServerAuth,
    limits: Option<Arc<hayloft_access::limits::RateLimits>>,
    audit: Option<Arc<hayloft_access::audit::AuditLog>>,
    tls: Option<Arc<hayloft_access::tls::ServerTls>>,
    /// Its background jobs, listed by `hayloft status`.
    workers: hayloft_proto::background::Registry,
    /// The database, to know when every task has let go of it.
    db: std::sync::Weak<db::Db>,
}

/// How long [`Directory::serve`] waits, once stopped, for the tasks that
/// still hold the database (openraft's state machine worker ends a moment
/// after its core) to let go of it.
const DB_RELEASE_WAIT: Duration = Duration::from_secs(10);

impl Directory {
    /// Opens the database, binds the listen address and starts the node's
    /// Raft (initialising the group on its first start, see
    /// `consensus::start`).
    pub async fn bind(config: DirectoryConfig) -> Result<Directory> {
        let tls = (config.tls.as_ref())
            .map(hayloft_access::tls::ServerTls::load)
            .transpose()
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
        // A bad code stops the start, naming its setting.
        erasure::EcCodes::from_config(&config)?;
        // So do bad regions and replication targets.
        config.resolve_regions()?;
        if config.collections.contains_key("") {
            return Err(Error::Config(
                "[collections.\"\"]: the default collection is called `default` \
                 ([collections.default])"
                    .into(),
            ));
        }
        if let Some(refusal) = hayloft_access::insecure_listen(
            config.listen,
            config.require_tokens,
            tls.as_ref().is_some_and(|tls| tls.requires_client_certs()),
            config.insecure,
        ) {
            return Err(Error::Insecure(refusal));
        }
        let keyring = match &config.keyring {
            Some(path) => Some(
                hayloft_access::SharedKeyring::load(path)
                    .map_err(|e| Error::Config(format!("key ring: {e}")))?,
            ),
            None if config.require_tokens => {
                return Err(Error::Config(
                    "require_tokens needs a key ring (keyring = \"/path/to/keyring.toml\")".into(),
                ));
            }
            None => None,
        };
        if config.limits.http.is_some() || !config.limits.trusted_proxies.is_empty() {
            return Err(Error::Config(
                "limits: a directory has no HTTP origin; set limits.http and \
                 limits.trusted_proxies on volume servers"
                    .into(),
            ));
        }
        let limits = hayloft_access::limits::RateLimits::new(&config.limits)
            .map_err(|e| Error::Config(format!("limits: {e}")))?;
        let audit = hayloft_access::audit::AuditLog::open(
            &config.audit,
            &format!("directory:{}", config.node_id),
        )
        .map_err(|e| Error::Config(format!("audit log: {e}")))?;
        let db = {
            let path = config.data_dir.clone();
            tokio::task::spawn_blocking(move || db::Db::open(&path)).await??
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Io(PathBuf::from(config.listen.to_string()), e))?;
        let own = listener.local_addr().unwrap_or(config.listen);
        let peers = parse_peers(&config.peers, config.node_id, own)?;
        let db = Arc::new(db);
        let cluster = Arc::new(Cluster::load(
            Arc::clone(&db),
            config.clone(),
            config.node_id,
        )?);
        let auth = hayloft_access::grpc::ServerAuth::new(
            keyring.as_ref(),
            &format!("directory:{}", config.node_id),
            config.require_tokens,
            config.token_clock_skew,
            service::needs,
            cluster.revocations(),
        );
        let auth = match &tls {
            Some(tls) => hayloft_access::grpc::ServerAuth {
                credential: tls.credential(auth.credential),
                gate: auth.gate,
            },
            None => auth,
        };
        let timing = Timing {
            heartbeat: config.raft_heartbeat,
            election: config.election_timeout,
            snapshot_every: config.raft_snapshot_every,
        };
        let raft = consensus::start(
            &cluster,
            &db,
            config.node_id,
            &peers,
            config.join,
            timing,
            auth.credential.clone(),
        )
        .await?;
        Ok(Directory {
            cluster,
            raft,
            listener,
            config,
            keyring,
            auth,
            limits,
            audit,
            tls,
            workers: hayloft_proto::background::Registry::default(),
            db: Arc::downgrade(&db),
        })
    }

    /// The registry `hayloft status` lists this node's background jobs
    /// from: a runner beside the directory (the tiering worker of `hayloft
    /// server`) lists its workers here too.
    pub fn workers(&self) -> hayloft_proto::background::Registry {
        self.workers.clone()
    }

    /// What this node presents to volume servers and the other nodes (its
    /// cluster token when it has a key ring).
    pub fn credential(&self) -> hayloft_proto::Credential {
        self.auth.credential.clone()
    }

    /// The address it listens on (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` completes, then drains requests and flushes
    /// the database.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        // At 0 from the start, key ring or not (alerts watch it).
        metrics::gauge!(hayloft_access::STALE_METRIC).set(0.0);
        let repairs = Arc::new(repair::Repairs::default());
        let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
        let mut workers =
            hayloft_proto::background::Runner::with_registry(workers_stop, self.workers.clone());
        let ec_codes = erasure::EcCodes::from_config(&self.config)?;
        let settings = repair::RepairSettings {
            repair_after: self.config.repair_after,
            max_per_server: self.config.max_repairs_per_server.max(1),
            bytes_per_sec: self.config.repair_rate.as_u64(),
            credential: self.auth.credential.clone(),
        };
        let service = DirectoryService::new(
            Arc::clone(&self.cluster),
            Arc::clone(&repairs),
            settings.clone(),
            self.config.pulse.as_secs().max(1) as u32,
            self.config.min_writable_volumes,
        )
        .with_signed_collections(self.config.signed_collections())
        .with_grants(
            self.keyring.clone().filter(|_| self.config.require_tokens),
            self.config.write_grant_ttl,
        )
        .with_url_signing(self.keyring.clone(), self.config.signed_url_max_lifetime)
        .with_raft(self.raft.clone())
        .with_ec_codes(ec_codes)
        .with_workers(workers.registry());
        let forgetting = self.limits.as_ref().map(|limits| limits.spawn_forgetting());
        let tls_watch = self
            .tls
            .clone()
            .map(|tls| tokio::spawn(hayloft_access::reload::watch(tls, std::future::pending())));
        let keyring_watch = self.keyring.clone().map(|keyring| {
            tokio::spawn(hayloft_access::watch_keyring(
                keyring,
                std::future::pending(),
            ))
        });
        tracing::info!(addr = %self.local_addr(), node = self.config.node_id, "directory serving");
        // Counters alerts watch exist from the start (at 0): an `increase()`
        // over a series that appears at 1 would miss the first failure.
        for result in ["ok", "failed"] {
            metrics::counter!("hayloft_directory_repairs_total", "result" => result).absolute(0);
        }
        let raft_metrics = tokio::spawn(consensus::publish_metrics(
            self.raft.clone(),
            Arc::clone(&self.cluster),
        ));
        workers.spawn(history::CapacityHistory {
            cluster: Arc::clone(&self.cluster),
            interval: self.config.history_interval.max(Duration::from_secs(1)),
            retention: self.config.history_retention,
        });
        workers.spawn(repair::RepairWorker::new(
            Arc::clone(&self.cluster),
            repairs,
            settings.clone(),
            self.config.pulse.max(Duration::from_millis(200)),
        ));
        workers.spawn(erasure::shard_worker::ShardWorker::new(
            Arc::clone(&self.cluster),
            service.encoding(),
            settings,
            self.config.pulse.max(Duration::from_millis(200)),
        ));
        workers.spawn(
            shipping::Adopter::new(
                Arc::clone(&self.cluster),
                &self.auth.credential,
                self.config.pulse.max(Duration::from_millis(200)),
            )
            .map_err(|e| Error::Config(e.message().to_owned()))?,
        );
        let served = tonic::transport::Server::builder()
            .layer(
                hayloft_access::grpc::GateLayer::new(self.auth.gate.clone())
                    .with_limits(self.limits.clone(), service::needs)
                    .with_audit(self.audit.clone(), service::needs),
            )
            .add_service(
                hayloft_proto::directory_server::DirectoryServer::new(service)
                    .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES),
            )
            .add_service(
                hayloft_proto::raft_server::RaftServer::new(consensus::RaftService::new(
                    self.raft.clone(),
                ))
                .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                hayloft_access::tls::incoming(self.listener, self.tls.clone()),
                shutdown,
            )
            .await;
        // Aborted tasks are dropped when the runtime next polls them: wait
        // for that, as the metrics task holds the cluster (and so the
        // database's lock, which a restart in the same process needs).
        raft_metrics.abort();
        let _ = raft_metrics.await;
        if let Some(task) = forgetting {
            task.abort();
        }
        if let Some(audit) = &self.audit {
            audit.close();
        }
        if let Some(watch) = tls_watch {
            watch.abort();
        }
        if let Some(watch) = keyring_watch {
            watch.abort();
        }
        let _ = stop_workers.send(true);
        workers.join().await;
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "the directory's Raft node did not stop cleanly");
        }
        served?;
        self.cluster.flush()?;
        // When this returns the database is closed (its lock released), so
        // that the same process can open it again (a restart in place, or
        // a failed start that is retried).
        let Directory {
            cluster,
            raft,
            config,
            keyring,
            auth,
            limits,
            audit,
            tls,
            workers,
            db,
            ..
        } = self;
        drop((
            cluster, raft, config, keyring, auth, limits, audit, tls, workers,
        ));
        db::wait_closed(&db, DB_RELEASE_WAIT).await;
        tracing::info!("directory stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_say_why() {
        let own: SocketAddr = "127.0.0.1:9330".parse().unwrap();
        let alone = parse_peers(&[], 1, own).unwrap();
        assert_eq!(
            alone.into_iter().collect::<Vec<_>>(),
            [(1, own.to_string())]
        );
        let peers = vec!["1=a:1, 2=b:2".to_owned(), "3=c:3".to_owned()];
        let group = parse_peers(&peers, 2, own).unwrap();
        assert_eq!(group.len(), 3);
        assert_eq!(group[&2], "b:2");
        let error = |peers: &[&str], id| {
            let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
            parse_peers(&peers, id, own).unwrap_err().to_string()
        };
        assert!(error(&["1=a:1,2=b:2"], 3).contains("not among the peers"));
        assert!(error(&["1=a:1,1=b:2"], 1).contains("listed twice"));
        assert!(error(&["a:1"], 1).contains("not id=host:port"));
        assert!(error(&["x=a:1"], 1).contains("not a node id"));
    }
}
