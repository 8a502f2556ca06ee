//! The volume server: the storage engine over gRPC, the HTTP origin for the
//! CDN, and heartbeats to the directory.
//!
//! # Layout
//!
//! - [`VolumeServerConfig`]: the daemon's configuration (TOML, with defaults).
//! - [`VolumeServer`]: opens the store, binds both ports, serves until shutdown.
//! - [`grpc`]: the `hayloft.v1.Volume` service (streamed writes and reads).
//! - [`http`]: `GET`/`HEAD /<blob id>` with ranges and conditional requests.
//! - `heartbeat`: reports volumes, free space and background jobs to the
//!   directory.
//! - `space`: measures each disk against its free-space reserve.
//! - [`replicate`]: forwards writes and deletes to the other copies.
//! - [`proxy`]: HTTP reads of blobs held by other servers.
//! - [`viewer`] (a room of `http`): such a read checked for its viewer
//!   before it is proxied, and passed on vouching for the viewer's address.
//! - [`antientropy`]: copies pull missing needles and tombstones from each
//!   other (also the repair of a new or wiped copy), and scrub.
//! - `error`: storage errors as gRPC codes and HTTP statuses, in one place.
//! - [`access`]: the HTTP origin's access checks (signed URLs, key ring).
//! - [`disk_reads`]: local reads from the page cache or, bounded, from disk.
//! - [`compaction`]: the periodic trigger and the operators' `Compact`.
//! - [`tier`]: moving a volume between hot, warm and cold.
//! - [`erasure`]: encoding a sealed copy into shards on their holders.
//! - [`reads`]: read counts per volume, for the lifecycle policy.
//! - [`status`]: volume stats in their wire form.
//! - [`metrics`]: the server's Prometheus metrics.
//! - `blocking`: storage work on tokio's blocking pool.
//!
//! Why one file of ~780 lines: about half of it is `VolumeServerConfig`,
//! every key documented where it is declared (the configuration reference
//! operators read); the composition of the server is the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use hayloft_storage::{Durability, Location, Store, StoreConfig, Tier, VolumeConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub mod access;
pub mod antientropy;
mod blocking;
pub mod compaction;
pub mod disk_reads;
pub mod erasure;
pub mod error;
pub mod grpc;
mod heartbeat;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod reads;
mod region;
pub mod replicate;
pub mod shipping;
mod space;
pub mod status;
pub mod tier;
pub use http::viewer;

/// When writes are acknowledged, as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// After an fsync shared by concurrent writers (group commit).
    Always,
    /// After the next periodic fsync (`batch_interval`).
    Batched,
    /// At once; fsync later (a machine crash may lose recent writes).
    Never,
}

/// Configuration of a volume server. Every field has a default, so an empty
/// file (or none) works.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeServerConfig {
    /// Stable id the directory knows this server by. Default: the advertised
    /// gRPC address.
    pub server_id: String,
    /// Zone this server stands in: copies of a volume are spread over
    /// zones first. Default `default`.
    pub zone: String,
    /// Rack within the zone: copies are spread over racks next. Default
    /// `default`.
    pub rack: String,
    /// A copy that takes no data or gives no answer for this long fails a
    /// replicated write (the client retries elsewhere) and is reported
    /// stale. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub replica_timeout: Duration,
    /// Copy rate of anti-entropy and repair (its own budget, apart from
    /// compaction's; 0 = unlimited). Default `64MiB` (a second).
    pub repair_rate: ByteSize,
    /// Bytes a second this server fetches from other regions' copies of
    /// the volumes it follows (egress of the other regions; 0 =
    /// unlimited, as fast as the link). Default `0B`.
    pub ship_rate: ByteSize,
    /// How often each copy compares itself with the other copies of its
    /// volumes and pulls what it lacks (0 = never). Default `10m`.
    #[serde(with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
    /// How often each replicated volume is scrubbed (every needle
    /// checksummed; a bad one copied again from another copy). Default `1d`.
    #[serde(with = "humantime_serde")]
    pub scrub_interval: Duration,
    /// Blobs up to this size are checksummed on every read (HTTP and gRPC):
    /// a corrupt one is read from another copy or refused, never served.
    /// Larger blobs (and range reads of them) are checked by scrub. Default
    /// `16MiB`.
    pub verify_reads_up_to: ByteSize,
    /// Reads from disk (blobs not in the page cache) running at once, each
    /// on a blocking thread, while the event loops serve the rest. Default
    /// 64 (the disk's queue is used; memory stays under 64 x 1 MiB).
    pub disk_reads_in_flight: usize,
    /// Reads from disk that may wait for a place; past this a read is
    /// refused at once (HTTP 503 + `Retry-After: 1`, gRPC
    /// RESOURCE_EXHAUSTED) rather than queued until clients time out.
    /// Default 1024.
    pub disk_reads_queued: usize,
    /// HTTP reads of blobs this server holds no copy of: `proxy` (fetch
    /// from a copy, streamed), `redirect` (307 to a copy) or `off` (404).
    /// Default `proxy`.
    pub remote_reads: proxy::RemoteReads,
    /// gRPC listen address. Default `127.0.0.1:9331`.
    pub grpc_listen: SocketAddr,
    /// HTTP origin listen address. Default `127.0.0.1:9380`.
    pub http_listen: SocketAddr,
    /// gRPC address to advertise to the directory, if not the bound one.
    pub public_grpc_addr: Option<String>,
    /// HTTP address to advertise to the directory, if not the bound one.
    pub public_http_addr: Option<String>,
    /// The directory's gRPC address, or every node of a directory group,
    /// comma-separated (calls follow the leader). Default `127.0.0.1:9330`.
    pub directory: String,
    /// Directories for hot (SSD) volumes. Default `["data/hot"]`.
    pub hot_dirs: Vec<PathBuf>,
    /// Directories for warm (HDD) volumes. Default `["data/warm"]`.
    pub warm_dirs: Vec<PathBuf>,
    /// Largest size of a volume's data file (at most 32 GiB). Default `30GiB`.
    pub max_volume_size: ByteSize,
    /// Free space each disk keeps: the larger of this and
    /// `min_free_percent` of the disk, and never less than compacting the
    /// disk's largest volume takes. Below it, the disk's volumes take no new
    /// blobs (the directory assigns elsewhere); deletes and compaction go
    /// on, and writes resume once space is freed. Default `1GiB`.
    pub min_free_space: ByteSize,
    /// See `min_free_space`. Default 1 (%).
    pub min_free_percent: f64,
    /// When writes are acknowledged. Default `always`.
    pub durability: DurabilityMode,
    /// fsync interval with `durability = "batched"`. Default `2ms`.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Largest blob accepted. Default `4GiB` (the format's limit is 4 GiB - 1).
    pub max_upload_size: ByteSize,
    /// `Cache-Control: public, max-age=...` for blobs. Default `365d`.
    #[serde(with = "humantime_serde")]
    pub cache_max_age: Duration,
    /// Threads serving HTTP reads, each with its own event loop (0 = one per
    /// core). Default 0.
    pub http_threads: usize,
    /// Heartbeat interval (the directory may ask for another). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub pulse: Duration,
    /// Compact a volume automatically once garbage / data file size reaches
    /// this (0 = only on demand). Default 0.3.
    pub compaction_threshold: f64,
    /// How often to check for volumes past the threshold. Default `1m`.
    #[serde(with = "humantime_serde")]
    pub compaction_check_interval: Duration,
    /// Compaction copy rate limit, so foreground latency holds (0 =
    /// unlimited). Default `64MiB` (a second).
    pub compaction_rate: ByteSize,
    /// Skip volumes with less garbage than this. Default `1MiB`.
    pub compaction_min_garbage: ByteSize,
    /// Where to serve Prometheus `/metrics` (not on the CDN-facing port).
    /// Default `127.0.0.1:9389`.
    pub metrics_listen: Option<SocketAddr>,
    /// The cold tier (`type = "s3"` or `type = "local"`). Default: none
    /// (moves to cold are refused).
    pub cold: Option<hayloft_tiering::object::ObjectStoreConfig>,
    /// Part size of uploads to the cold tier (5 MiB to 5 GiB). Default `16MiB`.
    pub tier_part_size: ByteSize,
    /// Copy rate limit of tier moves (0 = unlimited). Default `64MiB` (a second).
    pub tier_rate: ByteSize,
    /// `Retry-After` answered for reads of archived (GLACIER, DEEP_ARCHIVE)
    /// volumes while they are restored. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub restore_retry_after: Duration,
    /// Days a restored copy of an archived object stays readable. Default 1.
    pub restore_days: i32,
    /// How often a move waiting for a restore checks on it. Default `1m`.
    #[serde(with = "humantime_serde")]
    pub restore_poll: Duration,
    /// Window of the reads-per-day statistics the policy uses. Default `7d`.
    #[serde(with = "humantime_serde")]
    pub read_window: Duration,
    /// The key ring that verifies signed URLs (see README, "Signed URLs").
    /// Reloaded on SIGHUP and when it changes. Default: none (blobs of
    /// signed collections are refused to everyone).
    pub keyring: Option<PathBuf>,
    /// A signed URL expiring further ahead than this is refused. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub signed_url_max_lifetime: Duration,
    /// A signed URL still works this long after its expiry (clocks
    /// disagree). Default `60s`.
    #[serde(with = "humantime_serde")]
    pub signed_url_clock_skew: Duration,
    /// Every gRPC call must carry a token signed by a key of `keyring`
    /// (see README, "Tokens"); the clock-skew allowance is
    /// `signed_url_clock_skew`. Default `false`.
    pub require_tokens: bool,
    /// Serve gRPC on a non-loopback address without `require_tokens`
    /// (refused otherwise; logged at every start). The HTTP origin may face
    /// the world either way. Default false.
    pub insecure: bool,
    /// Rate limits: HTTP requests per client address (`X-Forwarded-For`
    /// believed from `trusted_proxies` only), gRPC calls per caller by
    /// operation and collection (see README, "Rate limits"). Default: none.
    pub limits: hayloft_access::limits::LimitsConfig,
    /// The audit log: a JSON line per write, delete, admin call and
    /// refusal, and reads as `reads` says (see README, "Audit log").
    /// Default: none.
    pub audit: hayloft_access::audit::AuditConfig,
    /// TLS for gRPC and the HTTP origin, and for this server's calls to the
    /// others (see README, "TLS"). Default: none (plain TCP).
    pub tls: Option<hayloft_access::tls::TlsConfig>,
    /// The region this server is in: its directory must serve the same
    /// (a directory of another region refuses it, and the server stops).
    /// Default `default`.
    pub region: String,
    /// `[regions.<name>]`: the deployment's regions, each with its
    /// `number` and (for the others) its directory group: reads of their
    /// volumes (HTTP and gRPC) are served from their copies there (see
    /// README, "Regions"). Default: none (one region).
    pub regions: hayloft_proto::regions::RegionsConfig,
}

impl Default for VolumeServerConfig {
    fn default() -> Self {
        VolumeServerConfig {
            server_id: String::new(),
            zone: "default".into(),
            rack: "default".into(),
            replica_timeout: Duration::from_secs(10),
            remote_reads: proxy::RemoteReads::Proxy,
            region: hayloft_proto::regions::default_region(),
            regions: hayloft_proto::regions::RegionsConfig::new(),
            verify_reads_up_to: ByteSize::mib(16),
            disk_reads_in_flight: 64,
            disk_reads_queued: 1024,
            repair_rate: ByteSize::mib(64),
            ship_rate: ByteSize::b(0),
            anti_entropy_interval: Duration::from_secs(600),
            scrub_interval: Duration::from_secs(86_400),
            grpc_listen: hayloft_proto::default_addr(hayloft_proto::DEFAULT_VOLUME_GRPC),
            http_listen: hayloft_proto::default_addr(hayloft_proto::DEFAULT_VOLUME_HTTP),
            public_grpc_addr: None,
            public_http_addr: None,
            directory: hayloft_proto::DEFAULT_DIRECTORY.into(),
            hot_dirs: vec![PathBuf::from("data/hot")],
            warm_dirs: vec![PathBuf::from("data/warm")],
            max_volume_size: ByteSize::gib(30),
            min_free_space: ByteSize::gib(1),
            min_free_percent: 1.0,
            durability: DurabilityMode::Always,
            batch_interval: Duration::from_millis(2),
            max_upload_size: ByteSize::gib(4),
            cache_max_age: Duration::from_secs(365 * 24 * 3600),
            http_threads: 0,
            pulse: Duration::from_secs(5),
            compaction_threshold: 0.3,
            compaction_check_interval: Duration::from_secs(60),
            compaction_rate: ByteSize::mib(64),
            compaction_min_garbage: ByteSize::mib(1),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9389))),
            cold: None,
            tier_part_size: ByteSize::mib(16),
            tier_rate: ByteSize::mib(64),
            restore_retry_after: Duration::from_secs(3600),
            restore_days: 1,
            restore_poll: Duration::from_secs(60),
            read_window: Duration::from_secs(7 * 86_400),
            keyring: None,
            signed_url_max_lifetime: Duration::from_secs(24 * 3600),
            signed_url_clock_skew: Duration::from_secs(60),
            require_tokens: false,
            insecure: false,
            limits: hayloft_access::limits::LimitsConfig::default(),
            audit: hayloft_access::audit::AuditConfig::default(),
            tls: None,
        }
    }
}

impl VolumeServerConfig {
    fn store_config(&self) -> StoreConfig {
        let locations = self
            .hot_dirs
            .iter()
            .map(|path| Location {
                path: path.clone(),
                tier: Tier::Hot,
            })
            .chain(self.warm_dirs.iter().map(|path| Location {
                path: path.clone(),
                tier: Tier::Warm,
            }))
            .collect();
        StoreConfig {
            locations,
            volume: VolumeConfig {
                max_size: self.max_volume_size.as_u64(),
                durability: match self.durability {
                    DurabilityMode::Always => Durability::Always,
                    DurabilityMode::Batched => Durability::Batched(self.batch_interval),
                    DurabilityMode::Never => Durability::Never,
                },
            },
            reserve: hayloft_storage::Reserve {
                bytes: self.min_free_space.as_u64(),
                percent: self.min_free_percent,
            },
        }
    }
}

/// Why a volume server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("opening volumes: {0}")]
    Store(#[from] hayloft_storage::Error),
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    /// The cold store configuration is unusable.
    #[error("cold store: {0}")]
    Cold(std::io::Error),
    /// The directory address list is unusable.
    #[error("directory addresses: {}", .0.message())]
    Directory(tonic::Status),
    /// The key ring for signed URLs is unusable.
    #[error("key ring: {0}")]
    Keyring(#[from] hayloft_access::KeyringError),
    /// A public gRPC address without tokens, and no `insecure`.
    #[error("{0}")]
    Insecure(String),
    /// Tokens are required but there is no key ring to check them with.
    #[error("require_tokens needs a key ring (keyring = \"/path/to/keyring.toml\")")]
    TokensWithoutKeyring,
    /// A rate limit is unusable.
    #[error("limits: {0}")]
    Limits(String),
    /// The audit log cannot be opened.
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    /// The TLS certificates are unusable.
    #[error("tls: {0}")]
    Tls(#[from] hayloft_access::tls::TlsError),
    /// A setting is out of its range.
    #[error("{0}")]
    Config(String),
    /// The directory serves another region than this server's.
    #[error("{0}")]
    WrongRegion(String),
}

/// A volume server with its store open and its ports bound.
pub struct VolumeServer {
    config: VolumeServerConfig,
    store: Arc<Store>,
    objects: Option<hayloft_tiering::object::ObjectStore>,
    grpc: TcpListener,
    http: TcpListener,
    keyring: Option<Arc<hayloft_access::SharedKeyring>>,
    limits: Option<Arc<hayloft_access::limits::RateLimits>>,
    tls: Option<Arc<hayloft_access::tls::ServerTls>>,
    /// The deployment's regions (checked at bind).
    regions: hayloft_proto::regions::Regions,
}

impl VolumeServer {
    /// Opens (and recovers) every volume, then binds both ports.
    pub async fn bind(config: VolumeServerConfig) -> Result<VolumeServer, StartError> {
        if !(0.0..=100.0).contains(&config.min_free_percent) {
            return Err(StartError::Config(format!(
                "min_free_percent must be between 0 and 100, not {}",
                config.min_free_percent
            )));
        }
        let regions = hayloft_proto::regions::Regions::resolve(&config.region, &config.regions)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let store_config = config.store_config();
        let store = tokio::task::spawn_blocking(move || Store::open(store_config))
            .await
            .map_err(|e| StartError::Http(std::io::Error::other(e)))??;
        for failed in store.failed_volumes() {
            tracing::error!(volume = %failed.id, path = %failed.path.display(), error = %failed.error,
                "volume not served");
        }
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let keyring = match &config.keyring {
            Some(path) => Some(hayloft_access::SharedKeyring::load(path)?),
            None => None,
        };
        if config.require_tokens && keyring.is_none() {
            return Err(StartError::TokensWithoutKeyring);
        }
        let limits =
            hayloft_access::limits::RateLimits::new(&config.limits).map_err(StartError::Limits)?;
        let tls = (config.tls.as_ref())
            .map(hayloft_access::tls::ServerTls::load)
            .transpose()?;
        if let Some(refusal) = hayloft_access::insecure_listen(
            config.grpc_listen,
            config.require_tokens,
            tls.as_ref().is_some_and(|tls| tls.requires_client_certs()),
            config.insecure,
        ) {
            return Err(StartError::Insecure(refusal));
        }
        let grpc = bind(config.grpc_listen).await?;
        let http = bind(config.http_listen).await?;
        // Connecting makes no request: a cold store that is down fails cold
        // reads and moves, nothing else.
        let objects = match &config.cold {
            Some(cold) => Some(
                hayloft_tiering::object::ObjectStore::connect(cold)
                    .await
                    .map_err(StartError::Cold)?,
            ),
            None => None,
        };
        Ok(VolumeServer {
            regions,
            config,
            store: Arc::new(store),
            objects,
            grpc,
            http,
            keyring,
            limits,
            tls,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_listen)
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_listen)
    }

    /// The store (for tests and the embedded server).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Serves gRPC and HTTP and sends heartbeats until `shutdown` completes;
    /// then drains requests and syncs every volume.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        crate::metrics::register_failure_counters();
        let advertised = hayloft_proto::ServerLocation {
            server_id: String::new(),
            grpc_addr: self
                .config
                .public_grpc_addr
                .clone()
                .unwrap_or_else(|| self.grpc_addr().to_string()),
            http_addr: self
                .config
                .public_http_addr
                .clone()
                .unwrap_or_else(|| self.http_addr().to_string()),
            zone: self.config.zone.clone(),
            rack: self.config.rack.clone(),
            http_tls: self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.origin_acceptor().is_some()),
        };
        let advertised = hayloft_proto::ServerLocation {
            server_id: if self.config.server_id.is_empty() {
                advertised.grpc_addr.clone()
            } else {
                self.config.server_id.clone()
            },
            ..advertised
        };
        let audit = hayloft_access::audit::AuditLog::open(
            &self.config.audit,
            &format!("volume:{}", advertised.server_id),
        )
        .map_err(StartError::Audit)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let http_stop = stop_rx.clone();
        let mut workers = hayloft_proto::background::Runner::new(stop_rx.clone());
        let wait_stop = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let heartbeat_now = Arc::new(tokio::sync::Notify::new());
        let access = Arc::new(access::OriginAccess::new(
            self.keyring.clone(),
            hayloft_access::UrlPolicy {
                max_lifetime: self.config.signed_url_max_lifetime,
                clock_skew: self.config.signed_url_clock_skew,
            },
            self.config
                .hot_dirs
                .first()
                .map(|dir| dir.join("signed-collections.json")),
        ));
        if let Some(keyring) = &self.keyring {
            tokio::spawn(hayloft_access::watch_keyring(
                Arc::clone(keyring),
                wait_stop(),
            ));
        }
        let revoked_file = self
            .config
            .hot_dirs
            .first()
            .map(|dir| dir.join("revoked-tokens.json"));
        let revoked = Arc::new(hayloft_access::grpc::Revoked::default());
        if let Some(path) = &revoked_file {
            revoked.set(heartbeat::load_revoked(path));
        }
        let hayloft_access::grpc::ServerAuth { credential, gate } =
            hayloft_access::grpc::ServerAuth::new(
                self.keyring.as_ref(),
                &format!("volume:{}", advertised.server_id),
                self.config.require_tokens,
                self.config.signed_url_clock_skew,
                grpc::needs,
                Arc::clone(&revoked),
            );
        let credential = match &self.tls {
            Some(tls) => {
                tokio::spawn(hayloft_access::reload::watch(Arc::clone(tls), wait_stop()));
                tls.credential(credential)
            }
            None => credential,
        };
        let reads = Arc::new(reads::ReadStats::new(self.config.read_window));
        workers.spawn(reads::ReadWindow(Arc::clone(&reads)));
        workers.spawn(space::SpaceWatch::new(
            Arc::clone(&self.store),
            Arc::clone(&heartbeat_now),
        ));
        let tiering = tier::Tiering::new(
            Arc::clone(&self.store),
            self.objects.clone(),
            tier::TierSettings {
                part_size: self.config.tier_part_size.as_u64().max(1 << 20),
                bytes_per_sec: self.config.tier_rate.as_u64(),
                restore_retry_after: self.config.restore_retry_after,
                restore_days: self.config.restore_days,
                restore_poll: self.config.restore_poll,
                credential: credential.clone(),
            },
            reads,
            Arc::clone(&heartbeat_now),
        );
        tiering.resume_pending();
        let replication = Arc::new(replicate::Replication::new(
            advertised.server_id.clone(),
            self.config.replica_timeout.max(Duration::from_millis(100)),
            Arc::clone(&heartbeat_now),
            credential.clone(),
        ));
        let lags = Arc::new(shipping::Lags::default());
        workers.spawn(heartbeat::HeartbeatWorker::new(
            heartbeat::Heartbeat {
                store: Arc::clone(&self.store),
                tiering: Arc::clone(&tiering),
                replication: Arc::clone(&replication),
                directory: self.config.directory.clone(),
                server: advertised.clone(),
                pulse: self.config.pulse,
                now: Arc::clone(&heartbeat_now),
                access: Arc::clone(&access),
                credential: credential.clone(),
                revoked,
                revoked_file,
                region: self.regions.local.name.clone(),
                lags: Arc::clone(&lags),
            },
            workers.registry(),
        ));

        let anti_entropy = Arc::new(antientropy::AntiEntropy::new(
            Arc::clone(&self.store),
            Arc::clone(&replication),
            self.config.repair_rate.as_u64(),
        ));
        let anti_entropy_worker = antientropy::AntiEntropyWorker::new(
            Arc::clone(&anti_entropy),
            self.config.anti_entropy_interval,
            self.config.scrub_interval,
        );
        if anti_entropy_worker.enabled() {
            workers.spawn(anti_entropy_worker);
        }
        let disk_reads = Arc::new(disk_reads::DiskReads::new(
            disk_reads::DiskReadLimits {
                in_flight: self.config.disk_reads_in_flight,
                queued: self.config.disk_reads_queued,
            },
            tokio::runtime::Handle::current(),
        ));
        let remote = Arc::new(
            proxy::RemoteReader::new(
                self.config.remote_reads,
                advertised.server_id.clone(),
                &self.config.directory,
                credential.clone(),
                self.tls.clone(),
            )
            .and_then(|remote| remote.with_regions(self.regions.clone(), &credential))
            .map_err(StartError::Directory)?,
        );
        workers.spawn(shipping::Follower::new(
            Arc::clone(&self.store),
            Arc::clone(&replication),
            Arc::clone(&remote),
            self.config
                .pulse
                .clamp(Duration::from_millis(100), Duration::from_millis(500)),
            lags,
            self.config.ship_rate.as_u64(),
        ));
        let service = grpc::VolumeService::new(
            Arc::clone(&self.store),
            grpc::ServiceLimits {
                max_upload_bytes: self
                    .config
                    .max_upload_size
                    .as_u64()
                    .min(hayloft_storage::format::MAX_DATA_LEN),
                compaction_rate: self.config.compaction_rate.as_u64(),
                verify_up_to: self.config.verify_reads_up_to.as_u64(),
            },
            heartbeat_now,
            Arc::clone(&tiering),
            Arc::clone(&replication),
            anti_entropy,
            Arc::clone(&disk_reads),
        )
        .with_stop(http_stop.clone())
        .with_grants(self.keyring.clone().filter(|_| gate.is_some()))
        .with_remote(Arc::clone(&remote));
        let erasure_reads = service.erasure_reads();
        workers.spawn(erasure::JournalSync::new(
            Arc::clone(&self.store),
            Arc::clone(&replication),
            Arc::clone(&erasure_reads),
            self.config
                .anti_entropy_interval
                .max(Duration::from_secs(1)),
        ));
        workers.spawn(erasure::ShardScrub::new(
            Arc::clone(&self.store),
            Arc::clone(&erasure_reads),
            self.config.scrub_interval.max(Duration::from_millis(100)),
            self.config.repair_rate.as_u64(),
        ));
        let compaction = compaction::CompactionWorker::new(
            Arc::clone(&self.store),
            compaction::CompactionSettings {
                threshold: self.config.compaction_threshold,
                interval: self.config.compaction_check_interval,
                bytes_per_sec: self.config.compaction_rate.as_u64(),
                min_garbage_bytes: self.config.compaction_min_garbage.as_u64(),
            },
        );
        if compaction.enabled() {
            workers.spawn(compaction);
        }
        let grpc_server = tonic::transport::Server::builder()
            .initial_stream_window_size(hayloft_proto::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(hayloft_proto::CONNECTION_WINDOW_BYTES)
            .max_frame_size(hayloft_proto::MAX_FRAME_BYTES)
            .layer(
                hayloft_access::grpc::GateLayer::new(gate)
                    .with_limits(self.limits.clone(), grpc::needs)
                    .with_audit(audit.clone(), grpc::needs),
            )
            .add_service(
                hayloft_proto::volume_server::VolumeServer::new(service)
                    .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                hayloft_access::tls::incoming(self.grpc, self.tls.clone()),
                wait_stop(),
            );
        let http_state = Arc::new(
            http::HttpState::new(
                Arc::clone(&self.store),
                Arc::clone(&tiering),
                self.config.cache_max_age,
            )
            .with_remote(remote)
            .with_erasure(erasure_reads)
            .with_disk_reads(disk_reads)
            .with_verified_reads(self.config.verify_reads_up_to.as_u64())
            .with_access(access)
            .with_limits(self.limits.clone())
            .with_audit(audit.clone())
            .with_tls(self.tls.clone()),
        );
        let forgetting = self.limits.as_ref().map(|limits| limits.spawn_forgetting());
        let http_server = http::serve(self.http, http_state, self.config.http_threads, http_stop);
        tracing::info!(server = %advertised.server_id, grpc = %advertised.grpc_addr,
            http = %advertised.http_addr, "volume server serving");

        // A directory of another region: stop, and say why.
        let stop_tx = Arc::new(stop_tx);
        let wrong_region = Arc::new(std::sync::OnceLock::new());
        let region_check = {
            let (stop_tx, wrong_region) = (Arc::clone(&stop_tx), Arc::clone(&wrong_region));
            let (directory, region) = (
                self.config.directory.clone(),
                self.regions.local.name.clone(),
            );
            let pulse = self.config.pulse.max(Duration::from_millis(100));
            tokio::spawn(async move {
                if let Some(why) =
                    region::other_region(&directory, credential, &region, pulse).await
                {
                    tracing::error!("{why}");
                    let _ = wrong_region.set(why);
                    let _ = stop_tx.send(true);
                }
            })
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let (grpc_result, http_result) = tokio::join!(grpc_server, http_server);
        region_check.abort();
        workers.join().await;
        if let Some(task) = forgetting {
            task.abort();
        }
        if let Some(audit) = &audit {
            audit.close();
        }
        let store = Arc::clone(&self.store);
        let closed = tokio::task::spawn_blocking(move || store.close()).await;
        grpc_result?;
        http_result.map_err(StartError::Http)?;
        match closed {
            Ok(result) => result?,
            Err(e) => return Err(StartError::Http(std::io::Error::other(e))),
        }
        if let Some(why) = wrong_region.get() {
            return Err(StartError::WrongRegion(why.clone()));
        }
        tracing::info!("volume server stopped; volumes synced");
        Ok(())
    }
}
