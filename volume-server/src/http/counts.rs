//! Request counters and latencies, counted per thread and published
//! every [`PUBLISH_INTERVAL`](super::PUBLISH_INTERVAL).

#[allow(unused_imports)]
use super::*;

/// Which metrics a request counts under.
#[derive(Clone, Copy)]
pub(super) enum Op {
    Get,
    Head,
    /// Any other method (answered 405).
    Other,
}

impl Op {
    pub(super) fn name(self) -> &'static str {
        match self {
            Op::Get => "http_get",
            Op::Head => "http_head",
            Op::Other => "http_other",
        }
    }
}

/// The origin's metric handles, registered once: recording a request is a
/// few atomic operations, not a registry lookup by labels.
#[derive(Clone)]
pub(super) struct HttpMetrics {
    pub(super) get: OpMetrics,
    pub(super) head: OpMetrics,
    pub(super) bytes_out: metrics::Counter,
    /// Reads and their durations by where the bytes came from (index:
    /// [`Source::index`]).
    pub(super) sources: [(metrics::Counter, metrics::Histogram); Source::ALL.len()],
}

/// The statuses the origin sends, with a counter each.
pub(super) const STATUSES: [u16; 10] = [200, 206, 304, 400, 404, 405, 412, 416, 500, 503];

#[derive(Clone)]
pub(super) struct OpMetrics {
    pub(super) duration: metrics::Histogram,
    pub(super) requests: [metrics::Counter; STATUSES.len()],
}

impl OpMetrics {
    pub(super) fn new(op: &'static str) -> Self {
        OpMetrics {
            duration: metrics::histogram!("hayloft_volume_request_duration_seconds", "op" => op),
            requests: STATUSES.map(|status| {
                metrics::counter!("hayloft_volume_requests_total", "op" => op,
                    "status" => crate::metrics::http_status_label(status))
            }),
        }
    }
}

impl HttpMetrics {
    pub(super) fn new() -> Self {
        HttpMetrics {
            get: OpMetrics::new(Op::Get.name()),
            head: OpMetrics::new(Op::Head.name()),
            bytes_out: metrics::counter!("hayloft_volume_bytes_out_total", "protocol" => "http"),
            sources: Source::ALL.map(|source| {
                (
                    metrics::counter!("hayloft_volume_reads_total", "source" => source.name()),
                    metrics::histogram!("hayloft_volume_read_duration_seconds",
                        "source" => source.name()),
                )
            }),
        }
    }
}

/// What one HTTP thread counted since it last published: plain integers in
/// the thread's own cache, so that a request touches no memory another core
/// writes. Published to the shared metrics and read statistics every
/// [`PUBLISH_INTERVAL`] (and when the thread stops).
#[derive(Default)]
pub(super) struct LocalCounts {
    /// Requests by op (GET, HEAD) and status (index in [`STATUSES`]).
    pub(super) requests: [[u64; STATUSES.len()]; 2],
    /// Request durations in seconds, by op.
    pub(super) durations: [Vec<f64>; 2],
    pub(super) bytes_out: u64,
    /// Durations of GETs and HEADs that read a blob, by where its bytes
    /// came from ([`Source::index`]).
    pub(super) by_source: [Vec<f64>; Source::ALL.len()],
    /// Reads by volume, for the lifecycle policy.
    pub(super) reads: std::collections::HashMap<hayloft_storage::VolumeId, u64>,
}

thread_local! {
    pub(super) static COUNTS: std::cell::RefCell<LocalCounts> = std::cell::RefCell::default();
}

/// Counts one finished request.
pub(super) fn observe(op: Op, response: &Response, source: Option<Source>, started: Instant) {
    let status = response.status().as_u16();
    let (i, index) = match (op, STATUSES.iter().position(|s| *s == status)) {
        (Op::Get, Some(index)) => (0, index),
        (Op::Head, Some(index)) => (1, index),
        // Rare: straight to the registry.
        _ => {
            crate::metrics::observe(
                op.name(),
                crate::metrics::http_status_label(status),
                started,
            );
            return;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    COUNTS.with_borrow_mut(|counts| {
        counts.requests[i][index] += 1;
        counts.durations[i].push(seconds);
        if let Some(source) = source {
            counts.by_source[source.index()].push(seconds);
        }
        // Blob bytes sent (error texts are not counted).
        if i == 0 && (status == 200 || status == 206) {
            counts.bytes_out += hyper::body::Body::size_hint(response.body()).lower();
        }
    });
}

impl HttpState {
    /// Adds this thread's counts to the shared metrics and read statistics.
    pub(super) fn publish(&self) {
        let counts = COUNTS.take();
        for (op, (requests, durations)) in [&self.metrics.get, &self.metrics.head]
            .into_iter()
            .zip(counts.requests.iter().zip(&counts.durations))
        {
            for (counter, n) in op.requests.iter().zip(requests) {
                if *n > 0 {
                    counter.increment(*n);
                }
            }
            for seconds in durations {
                op.duration.record(*seconds);
            }
        }
        if counts.bytes_out > 0 {
            self.metrics.bytes_out.increment(counts.bytes_out);
        }
        for ((reads, duration), seconds) in self.metrics.sources.iter().zip(&counts.by_source) {
            if !seconds.is_empty() {
                reads.increment(seconds.len() as u64);
            }
            for seconds in seconds {
                duration.record(*seconds);
            }
        }
        for (volume, reads) in counts.reads {
            self.tiering.reads.record_many(volume, reads);
        }
    }
}
