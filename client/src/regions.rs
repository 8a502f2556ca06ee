//! The regions a client uses, in order, and which of them to try first.
//!
//! A client of several regions ([`Client::connect_regions`]) is given them
//! local first, each as its directory group's addresses. Every call goes
//! to the first region that can serve it; a region that could not (its
//! directory unreachable, or unable to take an upload) is *skipped* for
//! [`Failover::skip_for`]: calls go to the others first, and to it only
//! as a last resort, after a quick check that one of its directory nodes
//! accepts a connection. Once that time is up, the first call to come
//! tries it again in its place (one call, not all of them: the others keep
//! skipping it until that one succeeds), so a region that is back takes
//! its uploads again within `skip_for`.
//!
//! [`Router`] is that bookkeeping, pure (times are passed in), so that
//! the order is tested without a network.

#[allow(unused_imports)]
use crate::prelude::*;

/// One region a client uses: its name (for errors and logs) and its
/// directory group's gRPC addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDirectory {
    /// The region's name.
    pub name: String,
    /// Every node of its directory group (`host:port`), or a seed of them.
    pub directory: Vec<String>,
}

/// Parses an ordered region list, `NAME=ADDR[,ADDR...][;NAME=...]`, the
/// syntax of the servers' `--regions` (a `NAME:NUMBER` is taken; the
/// number is not used by clients): the local region first, then the
/// others in the order to fail over to them.
///
/// # Errors
/// A part without `=` or without an address, a bad name, a region named
/// twice, or no region at all.
pub fn parse_regions(text: &str) -> Result<Vec<RegionDirectory>> {
    let mut regions: Vec<RegionDirectory> = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        // One part at a time through the servers' parser: the same names,
        // numbers and addresses are taken, and the order is kept.
        let parsed = hayloft_proto::regions::parse_regions_flag(part).map_err(|e| {
            Error::InvalidArgument(e.to_string().replacen("--regions", "regions", 1))
        })?;
        for (name, region) in parsed {
            if regions.iter().any(|r| r.name == name) {
                return Err(Error::InvalidArgument(format!(
                    "regions: region {name:?} is named twice"
                )));
            }
            regions.push(RegionDirectory {
                name,
                directory: region.directory,
            });
        }
    }
    if regions.is_empty() {
        return Err(Error::InvalidArgument(
            "regions: no region given (NAME=HOST:PORT[,HOST:PORT...][;NAME=...])".into(),
        ));
    }
    Ok(regions)
}

/// How a client of several regions fails over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// How long one region's directory group may take to answer a call
    /// (finding its leader through an election included) before the call
    /// goes to the next region. Default 5 s: a leader election (1-2 s by
    /// default) does not move calls to another region, a dead one costs
    /// the first call after its death this long.
    pub patience: Duration,
    /// How long a region that failed is skipped. Default 30 s.
    pub skip_for: Duration,
}

impl Default for Failover {
    fn default() -> Failover {
        Failover {
            patience: Duration::from_secs(5),
            skip_for: Duration::from_secs(30),
        }
    }
}

/// One region in a call's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Turn {
    /// The region's index in the client's list.
    pub(crate) index: usize,
    /// A region that failed lately: check first, cheaply, that one of its
    /// directory nodes accepts a connection.
    pub(crate) check_first: bool,
}

/// Which regions failed lately, and until when they are skipped.
#[derive(Debug)]
pub(crate) struct Router {
    skip_until: Vec<Option<Instant>>,
    skip_for: Duration,
}

impl Router {
    pub(crate) fn new(regions: usize, skip_for: Duration) -> Router {
        Router {
            skip_until: vec![None; regions],
            skip_for,
        }
    }

    /// The order in which a call made at `now` tries the regions: those
    /// that did not fail lately, in the client's order, then those
    /// skipped, in the client's order. A region whose skip is over goes
    /// back to its place, checked first; it is skipped `skip_for` longer
    /// for every other call meanwhile, so one call tries it, not every call.
    pub(crate) fn plan(&mut self, now: Instant) -> Vec<Turn> {
        let mut first = Vec::with_capacity(self.skip_until.len());
        let mut last = Vec::new();
        for (index, until) in self.skip_until.iter_mut().enumerate() {
            match *until {
                None => first.push(Turn {
                    index,
                    check_first: false,
                }),
                Some(time) if now >= time => {
                    *until = Some(now + self.skip_for);
                    first.push(Turn {
                        index,
                        check_first: true,
                    });
                }
                Some(_) => last.push(Turn {
                    index,
                    check_first: true,
                }),
            }
        }
        first.extend(last);
        first
    }

    /// Region `index` failed at `now`: skipped until `now + skip_for`.
    pub(crate) fn failed(&mut self, index: usize, now: Instant) {
        if let Some(until) = self.skip_until.get_mut(index) {
            *until = Some(now + self.skip_for);
        }
    }

    /// Region `index` answered: no longer skipped.
    pub(crate) fn answered(&mut self, index: usize) {
        if let Some(until) = self.skip_until.get_mut(index) {
            *until = None;
        }
    }

    /// Whether region `index` is skipped at `now`.
    #[cfg(test)]
    fn skipped(&self, index: usize, now: Instant) -> bool {
        self.skip_until[index].is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn order(turns: &[Turn]) -> Vec<(usize, bool)> {
        turns.iter().map(|t| (t.index, t.check_first)).collect()
    }

    #[test]
    fn the_list_parses_in_order_with_the_servers_syntax() {
        let regions = parse_regions("eu=10.0.0.1:9330, 10.0.0.2:9330; us:2=10.1.0.1:9330").unwrap();
        assert_eq!(
            regions,
            [
                RegionDirectory {
                    name: "eu".into(),
                    directory: vec!["10.0.0.1:9330".into(), "10.0.0.2:9330".into()],
                },
                RegionDirectory {
                    name: "us".into(),
                    directory: vec!["10.1.0.1:9330".into()],
                },
            ]
        );
        // Not sorted by name: the order given is the order of failover.
        let names: Vec<String> = parse_regions("zz=a:1;aa=b:1")
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["zz", "aa"]);
    }

    #[test]
    fn a_bad_list_says_what_is_wrong() {
        for (text, says) in [
            ("", "no region given"),
            (" ; ", "no region given"),
            ("eu", "NAME=HOST:PORT"),
            ("eu=", "no directory address"),
            ("e u=a:1", "not a region name"),
            ("eu=a:1;eu=b:1", "named twice"),
            ("eu:999=a:1", "0-255"),
        ] {
            let error = parse_regions(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error} lacks {says:?}");
        }
    }

    #[test]
    fn regions_are_tried_in_order_while_none_failed() {
        let mut router = Router::new(3, Duration::from_secs(30));
        let now = Instant::now();
        assert_eq!(
            order(&router.plan(now)),
            [(0, false), (1, false), (2, false)]
        );
    }

    #[test]
    fn a_failed_region_is_tried_last_and_checked_until_its_time_is_up() {
        let skip = Duration::from_secs(30);
        let mut router = Router::new(3, skip);
        let t0 = Instant::now();
        router.failed(0, t0);
        // Skipped: the others first, the local one last (checked first).
        for later in [Duration::ZERO, Duration::from_secs(29)] {
            assert_eq!(
                order(&router.plan(t0 + later)),
                [(1, false), (2, false), (0, true)]
            );
        }
        // Time is up: the first call tries it in its place...
        let t30 = t0 + skip;
        assert_eq!(
            order(&router.plan(t30)),
            [(0, true), (1, false), (2, false)]
        );
        // ...and the calls meanwhile still skip it.
        assert_eq!(
            order(&router.plan(t30 + Duration::from_secs(1))),
            [(1, false), (2, false), (0, true)]
        );
        // It answered: back in its place for every call.
        router.answered(0);
        assert_eq!(
            order(&router.plan(t30 + Duration::from_secs(1))),
            [(0, false), (1, false), (2, false)]
        );
    }

    #[test]
    fn a_region_that_fails_again_is_skipped_again_from_then() {
        let skip = Duration::from_secs(30);
        let mut router = Router::new(2, skip);
        let t0 = Instant::now();
        router.failed(0, t0);
        let t30 = t0 + skip;
        assert_eq!(order(&router.plan(t30)), [(0, true), (1, false)]);
        let t31 = t30 + Duration::from_secs(1);
        router.failed(0, t31);
        assert!(router.skipped(0, t31 + skip - Duration::from_millis(1)));
        assert!(!router.skipped(0, t31 + skip));
    }

    #[test]
    fn when_every_region_failed_each_is_still_tried_in_order() {
        let mut router = Router::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        for index in [2, 0, 1] {
            router.failed(index, t0);
        }
        assert_eq!(
            order(&router.plan(t0 + Duration::from_secs(1))),
            [(0, true), (1, true), (2, true)]
        );
    }
}
