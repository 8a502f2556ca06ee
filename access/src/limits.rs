//! Rate limits: GCRA (the `governor` crate), one bucket per caller and
//! limit.
//!
//! - HTTP origin: requests per client address. The client is the peer of
//!   the TCP connection, unless that peer is a trusted proxy
//!   (`trusted_proxies`): then `X-Forwarded-For` is read from the right,
//!   skipping trusted proxies, and the first address that is not one is
//!   the client. A header sent by anyone else is ignored, so a client
//!   cannot pick its own bucket.
//! - gRPC: calls per caller (the token's subject; without tokens, the
//!   peer's address), per operation and collection: `write:*` counts every
//!   write, `write:photos` only writes into `photos`; both apply where both
//!   are set. `admin` counts admin calls. The servers' own calls (scope
//!   `cluster`) are never limited. Each server counts the calls it gets.
//!
//! Over a limit: HTTP 429 with `Retry-After` (seconds), gRPC
//! RESOURCE_EXHAUSTED with `retry-after-ms` metadata and the wait in the
//! message; both counted in `hayloft_rate_limited_total{limit}`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::token::{Op, Scope};

/// One limit: a steady rate (`per_second` or `per_minute`) and the burst
/// allowed above it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests per second, sustained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u32>,
    /// Requests per minute, sustained (instead of `per_second`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    /// Requests allowed at once after a quiet spell (default: the rate's
    /// number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Limit {
    fn quota(&self, name: &str) -> Result<Quota, String> {
        let positive = |n: u32, what: &str| {
            NonZeroU32::new(n).ok_or_else(|| format!("limit {name:?}: {what} must be at least 1"))
        };
        let (quota, rate) = match (self.per_second, self.per_minute) {
            (Some(n), None) => {
                let rate = positive(n, "per_second")?;
                (Quota::per_second(rate), rate)
            }
            (None, Some(n)) => {
                let rate = positive(n, "per_minute")?;
                (Quota::per_minute(rate), rate)
            }
            _ => {
                return Err(format!(
                    "limit {name:?}: give per_second or per_minute (one of them)"
                ));
            }
        };
        let burst = match self.burst {
            None => rate,
            Some(burst) => positive(burst, "burst")?,
        };
        Ok(quota.allow_burst(burst))
    }
}

/// The `[limits]` section of a server's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// HTTP origin: requests per client address. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Limit>,
    /// Proxies (CDN edges, load balancers) whose `X-Forwarded-For` is
    /// believed, as networks. Default: none (the TCP peer is the client).
    pub trusted_proxies: Vec<IpNet>,
    /// gRPC: calls per caller, by scope-like name (`write:*`,
    /// `write:photos`, `read:*`, `delete:*`, `sign:*`, `admin`).
    pub grpc: BTreeMap<String, Limit>,
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The limit's name (`http`, `write:*`...).
    pub limit: String,
    /// When a retry can succeed.
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }

    /// RESOURCE_EXHAUSTED with the wait in the message and in the
    /// `retry-after-ms` metadata.
    pub fn status(&self) -> tonic::Status {
        let millis = self.retry_after.as_millis().max(1);
        let mut status = tonic::Status::resource_exhausted(format!(
            "rate limit {} exceeded: retry in {millis} ms",
            self.limit
        ));
        if let Ok(value) = millis.to_string().parse() {
            status.metadata_mut().insert(RETRY_AFTER_MS, value);
        }
        status
    }
}

/// The gRPC metadata key of the wait before a retry, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

struct GrpcLimit {
    name: String,
    scope: Scope,
    buckets: DefaultKeyedRateLimiter<Arc<str>>,
}

/// A server's rate limiters.
pub struct RateLimits {
    http: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted: Vec<IpNet>,
    /// By operation; each with its `op:*` and per-collection limits.
    grpc: HashMap<Op, Vec<GrpcLimit>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("http", &self.http.is_some())
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// The limiters `config` asks for; `None` if it sets no limit and
    /// trusts no proxy (then nothing is counted at all).
    ///
    /// # Errors
    /// A limit of 0, or a gRPC limit whose name is not a scope.
    pub fn new(config: &LimitsConfig) -> Result<Option<Arc<RateLimits>>, String> {
        if config.http.is_none() && config.grpc.is_empty() && config.trusted_proxies.is_empty() {
            return Ok(None);
        }
        let http = match &config.http {
            Some(limit) => Some(DefaultKeyedRateLimiter::dashmap(limit.quota("http")?)),
            None => None,
        };
        let mut grpc: HashMap<Op, Vec<GrpcLimit>> = HashMap::new();
        for (name, limit) in &config.grpc {
            let scope: Scope = name
                .parse()
                .map_err(|e| format!("limits.grpc.{name:?}: {e}"))?;
            if scope.op() == Op::Cluster {
                return Err(
                    "limits.grpc: the servers' own calls (cluster) are never limited".into(),
                );
            }
            grpc.entry(scope.op()).or_default().push(GrpcLimit {
                name: name.clone(),
                scope,
                buckets: DefaultKeyedRateLimiter::dashmap(limit.quota(name)?),
            });
        }
        // Every limit's counter exists from the start, at 0.
        for name in config
            .http
            .iter()
            .map(|_| "http")
            .chain(config.grpc.keys().map(String::as_str))
        {
            metrics::counter!("hayloft_rate_limited_total", "limit" => name.to_owned())
                .increment(0);
        }
        Ok(Some(Arc::new(RateLimits {
            http,
            trusted: config.trusted_proxies.clone(),
            grpc,
            clock: DefaultClock::default(),
        })))
    }

    /// The client of an HTTP request from `peer` carrying
    /// `X-Forwarded-For: forwarded_for`: `peer` unless it is a trusted
    /// proxy, else the rightmost address of the header that is not a
    /// trusted proxy (or the leftmost one, if all are).
    pub fn client_of(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        client_of(&self.trusted, peer, forwarded_for)
    }

    /// Whether any proxy is trusted (else the peer is always the client).
    pub fn trusts_proxies(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// Counts an HTTP request of `client`.
    ///
    /// # Errors
    /// [`Limited`] over the `http` limit.
    pub fn check_http(&self, client: IpAddr) -> Result<(), Limited> {
        let Some(buckets) = &self.http else {
            return Ok(());
        };
        buckets
            .check_key(&client)
            .map_err(|not_until| self.limited("http", not_until.wait_time_from(self.clock.now())))
    }

    /// Whether a limit on `op` names a collection (a server then has to
    /// find the collection of a call before counting it).
    pub fn limits(&self, op: Op) -> bool {
        self.grpc.contains_key(&op)
    }

    /// Counts a gRPC call of `who` doing `op` on `collection` against each
    /// limit that covers it.
    ///
    /// # Errors
    /// [`Limited`] over a limit (the calls counted against the other limits
    /// stay counted).
    pub fn check_grpc(&self, who: &Arc<str>, op: Op, collection: &str) -> Result<(), Limited> {
        let Some(limits) = self.grpc.get(&op) else {
            return Ok(());
        };
        for limit in limits.iter().filter(|l| l.scope.allows(op, collection)) {
            if let Err(not_until) = limit.buckets.check_key(who) {
                return Err(self.limited(&limit.name, not_until.wait_time_from(self.clock.now())));
            }
        }
        Ok(())
    }

    fn limited(&self, name: &str, retry_after: Duration) -> Limited {
        metrics::counter!("hayloft_rate_limited_total", "limit" => name.to_owned()).increment(1);
        Limited {
            limit: name.to_owned(),
            retry_after,
        }
    }

    /// Drops the buckets of callers that have been quiet long enough to be
    /// full again (memory stays bounded by the callers of the last moments).
    pub fn forget_idle(&self) {
        if let Some(buckets) = &self.http {
            buckets.retain_recent();
            buckets.shrink_to_fit();
        }
        for limit in self.grpc.values().flatten() {
            limit.buckets.retain_recent();
            limit.buckets.shrink_to_fit();
        }
    }

    /// How many callers' buckets are kept now (HTTP and gRPC).
    pub fn tracked(&self) -> usize {
        self.http.as_ref().map_or(0, |b| b.len())
            + self
                .grpc
                .values()
                .flatten()
                .map(|l| l.buckets.len())
                .sum::<usize>()
    }

    /// Runs [`forget_idle`](Self::forget_idle) every minute, for the life
    /// of the returned task.
    pub fn spawn_forgetting(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let limits = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limits.forget_idle();
            }
        })
    }
}

fn client_of(trusted: &[IpNet], peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage (or a port, or "unknown"): what a trusted proxy put
            // to its right is the best we know.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let of = |peer: &str, xff: Option<&str>| client_of(&trusted, ip(peer), xff);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(of("203.0.113.9", Some("198.51.100.1")), ip("203.0.113.9"));
        // Through a trusted proxy: the address it saw.
        assert_eq!(of("10.0.0.2", Some("198.51.100.1")), ip("198.51.100.1"));
        // A client cannot hide behind a forged first entry: the rightmost
        // untrusted address counts.
        assert_eq!(
            of("10.0.0.2", Some("1.2.3.4, 198.51.100.1, 10.0.0.7")),
            ip("198.51.100.1")
        );
        // Nothing usable: the proxy itself, or the last address before garbage.
        assert_eq!(of("10.0.0.2", None), ip("10.0.0.2"));
        assert_eq!(of("10.0.0.2", Some("unknown")), ip("10.0.0.2"));
        assert_eq!(of("10.0.0.2", Some("x, 198.51.100.1")), ip("198.51.100.1"));
        assert_eq!(of("10.0.0.2", Some("10.0.0.3")), ip("10.0.0.3"));
    }

    #[test]
    fn buckets_of_quiet_callers_are_forgotten() {
        // Full again 10 ms after a call.
        let config: LimitsConfig = toml::from_str("http = { per_second = 100 }\n").unwrap();
        let limits = RateLimits::new(&config).unwrap().unwrap();
        for n in 0..200u8 {
            limits.check_http(IpAddr::from([198, 51, 100, n])).unwrap();
        }
        assert_eq!(limits.tracked(), 200);
        std::thread::sleep(Duration::from_millis(50));
        limits.forget_idle();
        assert_eq!(limits.tracked(), 0, "memory is bounded by recent callers");
        // A forgotten caller starts again with a full bucket.
        limits.check_http(IpAddr::from([198, 51, 100, 7])).unwrap();
    }

    #[test]
    fn limits_count_per_caller_and_name_the_wait() {
        let config: LimitsConfig = toml::from_str(
            "http = { per_minute = 1, burst = 2 }\n\
             [grpc]\n\"write:*\" = { per_minute = 1, burst = 3 }\n\
             \"write:photos\" = { per_minute = 1 }\n",
        )
        .unwrap();
        let limits = RateLimits::new(&config).unwrap().unwrap();
        let a = ip("192.0.2.1");
        assert!(limits.check_http(a).is_ok() && limits.check_http(a).is_ok());
        let over = limits.check_http(a).unwrap_err();
        assert_eq!(over.limit, "http");
        assert!(over.retry_after > Duration::from_secs(50));
        assert!(over.retry_after <= Duration::from_secs(60));
        assert!((51..=60).contains(&over.retry_after_secs()));
        // Another client has its own bucket.
        assert!(limits.check_http(ip("192.0.2.2")).is_ok());

        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        // photos allows one, then its own limit refuses.
        assert!(limits.check_grpc(&alice, Op::Write, "photos").is_ok());
        let over = limits.check_grpc(&alice, Op::Write, "photos").unwrap_err();
        assert_eq!(over.limit, "write:photos");
        // Other collections count against write:* only: both photos writes
        // took one of its three (write:* is checked first), so one is left.
        assert!(limits.check_grpc(&alice, Op::Write, "videos").is_ok());
        assert_eq!(
            limits
                .check_grpc(&alice, Op::Write, "videos")
                .unwrap_err()
                .limit,
            "write:*"
        );
        assert!(limits.check_grpc(&bob, Op::Write, "videos").is_ok());
        // Reads have no limit.
        assert!((0..100).all(|_| limits.check_grpc(&alice, Op::Read, "photos").is_ok()));
        let status = over.status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.metadata().get(RETRY_AFTER_MS).is_some());
        assert!(
            status.message().contains("retry in"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn bad_limits_are_refused() {
        let bad = |text: &str| {
            let config: LimitsConfig = toml::from_str(text).unwrap();
            RateLimits::new(&config).unwrap_err()
        };
        assert!(bad("http = { per_second = 0 }").contains("per_second"));
        assert!(bad("http = { burst = 3 }").contains("one of them"));
        assert!(bad("http = { per_second = 1, per_minute = 1 }").contains("one of them"));
        assert!(bad("[grpc]\nwrite = { per_second = 1 }").contains("collection"));
        assert!(bad("[grpc]\ncluster = { per_second = 1 }").contains("never limited"));
        assert!(bad("[grpc]\n\"read:*\" = { per_second = 1, burst = 0 }").contains("burst"));
        assert!(RateLimits::new(&LimitsConfig::default()).unwrap().is_none());
    }
}
