//! The regions of a deployment as every daemon is told them: its own
//! region's name (`--region`, `region`), the other regions' numbers and
//! directory groups (`--regions`, `[regions]`), and the regions
//! collections replicate to (`--replicate-to`, `replicate_to`), checked
//! once at start-up into a [`Regions`] that routes any volume id to the
//! region that allocated it (see `hayloft_storage::region` for the id
//! layout).
//!
//! The flags' syntax:
//!
//! - `--region NAME[:NUMBER]`, e.g. `eu` or `eu:1`.
//! - `--regions NAME[:NUMBER]=ADDR[,ADDR...][;NAME...]`, e.g.
//!   `us:2=10.1.0.1:9330,10.1.0.2:9330;ap:3=10.2.0.1:9330`.
//! - `--replicate-to NAME[,NAME...]`.
//!
//! A region without a number is number 0 if it is named `default`, or if
//! it is the only region; otherwise it is an error: ids could collide.

use std::collections::BTreeMap;

use hayloft_storage::{RegionNumber, VolumeId};
use serde::{Deserialize, Serialize};

/// The name of the region a daemon is in unless told otherwise.
pub const DEFAULT_REGION: &str = "default";

/// The default of `region` in configuration.
pub fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}

/// One region as configured, `[regions.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionConfig {
    /// Its number, the high bits of every volume id it allocates (0-255,
    /// distinct per region). Default: 0 for `default` (and for the only
    /// region of a deployment); required otherwise.
    pub number: Option<u8>,
    /// Every node of its directory group, as `host:port` (gRPC). Required
    /// for the other regions; ignored for a daemon's own region (its own
    /// directory is configured as before). Default: none.
    pub directory: Vec<String>,
}

/// `[regions]`: every region of the deployment by name (the same table can
/// be given to every region's daemons: each skips its own entry but for
/// its number).
pub type RegionsConfig = BTreeMap<String, RegionConfig>;

/// A region setting that cannot be used, named after the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionsError {
    /// A region name that is empty or has characters other than letters,
    /// digits, `-`, `_` and `.`.
    #[error(
        "{setting}: {name:?} is not a region name (letters, digits, '-', '_', '.'; 1-63 of them)"
    )]
    BadName {
        /// The flag or key.
        setting: String,
        /// The name as given.
        name: String,
    },
    /// A flag that does not parse.
    #[error("{setting}: cannot parse {text:?}: {why}")]
    BadSyntax {
        /// The flag or key.
        setting: String,
        /// The part that does not parse.
        text: String,
        /// What was expected.
        why: &'static str,
    },
    /// A region without a number where more than one region is known.
    #[error(
        "region {name:?} has no number: give each region its own, as `[regions.{name}] number = N` or `{name}:N` in --region/--regions"
    )]
    NoNumber {
        /// The region.
        name: String,
    },
    /// Two regions with one number: their volume ids would collide.
    #[error("regions {first:?} and {second:?} both have number {number}: volume ids would collide")]
    DuplicateNumber {
        /// One region.
        first: String,
        /// The other.
        second: String,
        /// Their number.
        number: u8,
    },
    /// Another region without a directory address.
    #[error(
        "region {name:?} has no directory address (--regions {name}=HOST:PORT, or `[regions.{name}] directory`)"
    )]
    NoDirectory {
        /// The region.
        name: String,
    },
    /// A replication target that is not another known region.
    #[error("{setting} names region {name:?}, which is {why} (other regions: {known})")]
    BadTarget {
        /// The flag or key (`--replicate-to`, `collections.photos.replicate_to`).
        setting: String,
        /// The name given.
        name: String,
        /// "not configured in --regions / [regions]" or "this region".
        why: &'static str,
        /// The other regions, comma-separated ("none" for none).
        known: String,
    },
}

fn check_name(setting: &str, name: &str) -> Result<(), RegionsError> {
    let good = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if good {
        Ok(())
    } else {
        Err(RegionsError::BadName {
            setting: setting.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// `NAME` or `NAME:NUMBER`.
fn name_and_number(setting: &str, text: &str) -> Result<(String, Option<u8>), RegionsError> {
    let text = text.trim();
    let (name, number) = match text.split_once(':') {
        Some((name, number)) => {
            let number = number
                .trim()
                .parse::<u8>()
                .map_err(|_| RegionsError::BadSyntax {
                    setting: setting.to_owned(),
                    text: text.to_owned(),
                    why: "the number after ':' must be 0-255",
                })?;
            (name.trim(), Some(number))
        }
        None => (text, None),
    };
    check_name(setting, name)?;
    Ok((name.to_owned(), number))
}

/// Parses `--region NAME[:NUMBER]`.
///
/// # Errors
/// A bad name or number.
pub fn parse_region_flag(text: &str) -> Result<(String, Option<u8>), RegionsError> {
    name_and_number("--region", text)
}

/// Parses `--regions NAME[:NUMBER]=ADDR[,ADDR...][;NAME...]`.
///
/// # Errors
/// A part without `=`, without an address, or with a bad name or number;
/// one region named twice.
pub fn parse_regions_flag(text: &str) -> Result<RegionsConfig, RegionsError> {
    let setting = "--regions";
    let mut regions = RegionsConfig::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, addrs)) = part.split_once('=') else {
            return Err(RegionsError::BadSyntax {
                setting: setting.into(),
                text: part.into(),
                why: "expected NAME=HOST:PORT[,HOST:PORT...]",
            });
        };
        let (name, number) = name_and_number(setting, key)?;
        let directory: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if directory.is_empty() {
            return Err(RegionsError::NoDirectory { name });
        }
        if regions.contains_key(&name) {
            return Err(RegionsError::BadSyntax {
                setting: setting.into(),
                text: part.into(),
                why: "this region is named twice",
            });
        }
        regions.insert(name, RegionConfig { number, directory });
    }
    Ok(regions)
}

/// Parses `--replicate-to NAME[,NAME...]` (names checked later, against
/// the regions, by [`Regions::check_targets`]).
///
/// # Errors
/// A bad name.
pub fn parse_replicate_to_flag(text: &str) -> Result<Vec<String>, RegionsError> {
    text.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| check_name("--replicate-to", name).map(|()| name.to_owned()))
        .collect()
}

/// `[regions]` with the flags' regions over it: a region named in both
/// takes the flag's addresses, and its number unless the flag gives none.
pub fn overlay(config: &mut RegionsConfig, flags: RegionsConfig) {
    for (name, flag) in flags {
        let entry = config.entry(name).or_default();
        entry.directory = flag.directory;
        entry.number = flag.number.or(entry.number);
    }
}

/// One region, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Its name.
    pub name: String,
    /// Its number (the high bits of its volume ids).
    pub number: RegionNumber,
    /// Its directory group's gRPC addresses (empty for the local region).
    pub directory: Vec<String>,
}

/// The deployment's regions as one daemon sees them: its own and the
/// others, names and numbers distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regions {
    /// The region this daemon is in.
    pub local: Region,
    /// The other regions, by name.
    pub others: Vec<Region>,
}

impl Regions {
    /// A deployment of one region, `default`, number 0: what a daemon is
    /// without any region setting.
    pub fn single() -> Regions {
        Regions {
            local: Region {
                name: DEFAULT_REGION.into(),
                number: RegionNumber::DEFAULT,
                directory: Vec::new(),
            },
            others: Vec::new(),
        }
    }

    /// Checks `local` (the daemon's `region`) and `configured` (its
    /// `[regions]`, flags over it).
    ///
    /// # Errors
    /// A bad name, a region without a number among several, two regions
    /// with one number, another region without a directory address.
    pub fn resolve(local: &str, configured: &RegionsConfig) -> Result<Regions, RegionsError> {
        check_name("region", local)?;
        let several = configured.keys().any(|name| name != local);
        let number = |name: &str, given: Option<u8>| match given {
            Some(number) => Ok(RegionNumber(number)),
            None if name == DEFAULT_REGION || !several => Ok(RegionNumber::DEFAULT),
            None => Err(RegionsError::NoNumber {
                name: name.to_owned(),
            }),
        };
        let local = Region {
            name: local.to_owned(),
            number: number(local, configured.get(local).and_then(|r| r.number))?,
            directory: Vec::new(),
        };
        let mut others = Vec::new();
        for (name, region) in configured.iter().filter(|(name, _)| *name != &local.name) {
            check_name("[regions]", name)?;
            if region.directory.is_empty() {
                return Err(RegionsError::NoDirectory { name: name.clone() });
            }
            others.push(Region {
                name: name.clone(),
                number: number(name, region.number)?,
                directory: region.directory.clone(),
            });
        }
        let mut seen: BTreeMap<RegionNumber, &str> = BTreeMap::new();
        for region in std::iter::once(&local).chain(&others) {
            if let Some(first) = seen.insert(region.number, &region.name) {
                return Err(RegionsError::DuplicateNumber {
                    first: first.to_owned(),
                    second: region.name.clone(),
                    number: region.number.0,
                });
            }
        }
        Ok(Regions { local, others })
    }

    /// Checks that every name in `targets` (the value of `setting`) is
    /// another known region.
    ///
    /// # Errors
    /// [`RegionsError::BadTarget`] naming `setting` and the region.
    pub fn check_targets(&self, setting: &str, targets: &[String]) -> Result<(), RegionsError> {
        for name in targets {
            check_name(setting, name)?;
            let why = if name == &self.local.name {
                "this region"
            } else if self.other(name).is_none() {
                "not configured in --regions / [regions]"
            } else {
                continue;
            };
            let known: Vec<&str> = self.others.iter().map(|r| r.name.as_str()).collect();
            return Err(RegionsError::BadTarget {
                setting: setting.to_owned(),
                name: name.clone(),
                why,
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        Ok(())
    }

    /// Another region by name.
    pub fn other(&self, name: &str) -> Option<&Region> {
        self.others.iter().find(|r| r.name == name)
    }

    /// The other region that allocated `volume`, or `None` if this region
    /// did (or a region not configured here: its number is unknown).
    pub fn owner_of(&self, volume: VolumeId) -> Option<&Region> {
        let number = volume.region();
        if number == self.local.number {
            return None;
        }
        self.others.iter().find(|r| r.number == number)
    }

    /// Whether this region allocated `volume`.
    pub fn is_local(&self, volume: VolumeId) -> bool {
        volume.region() == self.local.number
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(entries: &[(&str, Option<u8>, &[&str])]) -> RegionsConfig {
        entries
            .iter()
            .map(|(name, number, addrs)| {
                (
                    (*name).to_owned(),
                    RegionConfig {
                        number: *number,
                        directory: addrs.iter().map(|a| (*a).to_owned()).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_flags_parse() {
        assert_eq!(parse_region_flag("eu").unwrap(), ("eu".into(), None));
        assert_eq!(parse_region_flag("eu:1").unwrap(), ("eu".into(), Some(1)));
        let regions = parse_regions_flag("us:2=10.1.0.1:9330, 10.1.0.2:9330;ap=h:1").unwrap();
        assert_eq!(
            regions,
            config(&[
                ("ap", None, &["h:1"]),
                ("us", Some(2), &["10.1.0.1:9330", "10.1.0.2:9330"]),
            ])
        );
        assert_eq!(
            parse_replicate_to_flag("us, ap").unwrap(),
            vec!["us".to_owned(), "ap".to_owned()]
        );
        assert!(parse_regions_flag("").unwrap().is_empty());
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let cases = [
            (parse_region_flag("eu:300").unwrap_err(), "0-255"),
            (parse_region_flag("").unwrap_err(), "not a region name"),
            (parse_region_flag("e u").unwrap_err(), "not a region name"),
            (parse_regions_flag("us").unwrap_err(), "NAME=HOST:PORT"),
            (
                parse_regions_flag("us=").unwrap_err(),
                "no directory address",
            ),
            (
                parse_regions_flag("us=a:1;us=b:1").unwrap_err(),
                "named twice",
            ),
            (
                parse_replicate_to_flag("us,a/b").unwrap_err(),
                "--replicate-to",
            ),
        ];
        for (error, says) in cases {
            assert!(error.to_string().contains(says), "{error} lacks {says:?}");
        }
    }

    #[test]
    fn a_deployment_without_regions_is_region_zero() {
        let regions = Regions::resolve(DEFAULT_REGION, &RegionsConfig::new()).unwrap();
        assert_eq!(regions, Regions::single());
        // One region under another name, alone: number 0 too.
        let alone = Regions::resolve("eu", &RegionsConfig::new()).unwrap();
        assert_eq!(alone.local.number, RegionNumber(0));
        assert!(alone.is_local(VolumeId(7)));
    }

    #[test]
    fn regions_route_ids_by_number() {
        let table = config(&[
            ("eu", Some(1), &[]),
            ("us", Some(2), &["u:1"]),
            ("default", None, &["d:1"]),
        ]);
        let regions = Regions::resolve("eu", &table).unwrap();
        assert_eq!(regions.local.number, RegionNumber(1));
        assert!(regions.owner_of(VolumeId(0x0100_0003)).is_none());
        assert_eq!(regions.owner_of(VolumeId(0x0200_0001)).unwrap().name, "us");
        assert_eq!(regions.owner_of(VolumeId(5)).unwrap().name, "default");
        assert!(regions.owner_of(VolumeId(0x0900_0001)).is_none());
        regions
            .check_targets("--replicate-to", &["us".into()])
            .unwrap();
    }

    #[test]
    fn bad_regions_are_refused_naming_the_setting() {
        let missing = Regions::resolve("eu", &config(&[("us", Some(2), &["u:1"])])).unwrap_err();
        assert!(matches!(missing, RegionsError::NoNumber { ref name } if name == "eu"));
        let twice = Regions::resolve(
            "eu",
            &config(&[("eu", Some(2), &[]), ("us", Some(2), &["u:1"])]),
        )
        .unwrap_err();
        assert!(twice.to_string().contains("both have number 2"), "{twice}");
        let no_addr =
            Regions::resolve("eu", &config(&[("eu", Some(1), &[]), ("us", Some(2), &[])]))
                .unwrap_err();
        assert!(matches!(no_addr, RegionsError::NoDirectory { ref name } if name == "us"));
        let regions = Regions::resolve(
            "eu",
            &config(&[("eu", Some(1), &[]), ("us", Some(2), &["u:1"])]),
        )
        .unwrap();
        let unknown = regions
            .check_targets("collections.photos.replicate_to", &["ap".into()])
            .unwrap_err();
        let text = unknown.to_string();
        assert!(
            text.contains("collections.photos.replicate_to") && text.contains("\"ap\""),
            "{text}"
        );
        assert!(
            text.contains("not configured") && text.contains("us"),
            "{text}"
        );
        let own = regions
            .check_targets("--replicate-to", &["eu".into()])
            .unwrap_err();
        assert!(own.to_string().contains("this region"), "{own}");
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = config(&[("us", Some(2), &["old:1"]), ("ap", Some(3), &["a:1"])]);
        overlay(&mut file, parse_regions_flag("us=new:1").unwrap());
        assert_eq!(
            file["us"],
            RegionConfig {
                number: Some(2),
                directory: vec!["new:1".into()]
            }
        );
        assert_eq!(file["ap"].directory, vec!["a:1".to_owned()]);
    }
}
