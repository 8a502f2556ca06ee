//! The region flags of `hayloft directory`, `volume` and `server`
//! (`--region`, `--regions`, `--replicate-to`), put over the config
//! files' `region`, `[regions]` and `replicate_to`. Their syntax and checks
//! are `hayloft_proto::regions`'s; the daemons check the result at start.

use clap::Args;
use hayloft_proto::regions::{self, RegionsConfig, RegionsError};

/// `--region NAME[:NUMBER]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionFlag {
    /// The region's name.
    pub name: String,
    /// Its number, if given.
    pub number: Option<u8>,
}

/// `--regions`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionsFlag(pub RegionsConfig);

/// `--replicate-to`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetsFlag(pub Vec<String>);

fn region(text: &str) -> Result<RegionFlag, RegionsError> {
    regions::parse_region_flag(text).map(|(name, number)| RegionFlag { name, number })
}

fn other_regions(text: &str) -> Result<RegionsFlag, RegionsError> {
    regions::parse_regions_flag(text).map(RegionsFlag)
}

fn targets(text: &str) -> Result<TargetsFlag, RegionsError> {
    regions::parse_replicate_to_flag(text).map(TargetsFlag)
}

/// `--region` and `--regions`: what every server role takes.
#[derive(Args, Debug, Default, Clone)]
pub struct RegionArgs {
    /// The region this server is in, `NAME[:NUMBER]` (default "default",
    /// number 0; its number is the high bits of the volume ids it
    /// allocates).
    #[arg(long, env = "HAYLOFT_REGION", value_name = "NAME[:NUMBER]", value_parser = region)]
    pub region: Option<RegionFlag>,
    /// The other regions' directory groups,
    /// `NAME[:NUMBER]=ADDR[,ADDR...][;NAME...]` (numbers may come from
    /// `[regions]` in the config file instead).
    #[arg(long, env = "HAYLOFT_REGIONS", value_name = "NAME=ADDR,...;...", value_parser = other_regions)]
    pub regions: Option<RegionsFlag>,
}

/// `--replicate-to`: what the roles with a directory take.
#[derive(Args, Debug, Default, Clone)]
pub struct ReplicateToArgs {
    /// The regions every collection's blobs are replicated to,
    /// asynchronously, unless the collection's `replicate_to` says
    /// otherwise (checked at start; see README "Regions").
    #[arg(long, env = "HAYLOFT_REPLICATE_TO", value_name = "NAME[,NAME...]", value_parser = targets)]
    pub replicate_to: Option<TargetsFlag>,
}

impl RegionArgs {
    /// Puts the flags over a config's `region` and `[regions]`.
    pub fn apply(&self, region: &mut String, table: &mut RegionsConfig) {
        if let Some(flag) = &self.region {
            region.clone_from(&flag.name);
            if let Some(number) = flag.number {
                table.entry(flag.name.clone()).or_default().number = Some(number);
            }
        }
        if let Some(RegionsFlag(others)) = &self.regions {
            regions::overlay(table, others.clone());
        }
    }
}

impl ReplicateToArgs {
    /// Puts the flag over a config's `replicate_to`.
    pub fn apply(&self, replicate_to: &mut Vec<String>) {
        if let Some(TargetsFlag(targets)) = &self.replicate_to {
            replicate_to.clone_from(targets);
        }
    }
}

/// The regions as the directory at `directories` knows them, each other
/// region's directory group probed (`Regions`); empty from a directory of
/// an earlier release (it knows no regions).
///
/// # Errors
/// The directory does not answer.
pub async fn fetch(
    directories: &hayloft_proto::Directories,
) -> Result<Vec<hayloft_proto::RegionStatus>, tonic::Status> {
    let answer = directories
        .call(|mut directory| async move {
            directory
                .regions(hayloft_proto::RegionsRequest { probe: true })
                .await
        })
        .await;
    match answer {
        Ok(answer) => Ok(answer.regions),
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(Vec::new()),
        Err(status) => Err(status),
    }
}

/// `regions` of `hayloft status --json`: one object a region, this one
/// first. `lag` (another region): how far this region's copies are behind
/// its logs (`entries`, `seconds`, `shipped_bytes`), null if no copy here
/// follows it; `behind`: how far its copies are behind this region's logs,
/// as its directory reports (the same fields), null if it did not answer
/// or no copy there follows this region.
pub fn json(regions: &[hayloft_proto::RegionStatus]) -> serde_json::Value {
    let lag = |lag: &Option<hayloft_proto::RegionLag>| {
        lag.as_ref().map(|lag| {
            serde_json::json!({
                "entries": lag.entries,
                "seconds": lag.seconds,
                "shipped_bytes": lag.shipped_bytes,
            })
        })
    };
    regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "number": r.number,
                "local": r.local,
                "directory": r.directory,
                "reachable": r.reachable,
                "error": (!r.error.is_empty()).then_some(&r.error),
                "replicate_to": r.replicate_to,
                "lag": lag(&r.lag),
                "behind": lag(&r.behind),
            })
        })
        .collect()
}

/// The REGIONS table of `hayloft status`, printed when the deployment has
/// more than one region or this one is not `default`.
pub fn print(regions: &[hayloft_proto::RegionStatus]) {
    let single = regions.len() <= 1
        && regions
            .iter()
            .all(|r| r.name == hayloft_proto::regions::DEFAULT_REGION);
    if single {
        return;
    }
    println!("REGIONS");
    println!(
        "{:<16} {:>6} {:<10} {:<8} {:<32} {:<20} BEHIND US",
        "NAME", "NUMBER", "REACHABLE", "", "DIRECTORY", "LAG"
    );
    let show = |lag: &Option<hayloft_proto::RegionLag>| match lag {
        Some(lag) if lag.entries == 0 => "caught up".to_owned(),
        Some(lag) => format!("{} entries, {:.0}s", lag.entries, lag.seconds),
        None => "-".to_owned(),
    };
    for region in regions {
        let reachable = match (region.local, region.reachable) {
            (true, _) => "local",
            (false, true) => "yes",
            (false, false) => "no",
        };
        let targets = if region.local && !region.replicate_to.is_empty() {
            format!("-> {}", region.replicate_to.join(","))
        } else {
            String::new()
        };
        let (lag, behind) = (show(&region.lag), show(&region.behind));
        println!(
            "{:<16} {:>6} {:<10} {:<8} {:<32} {lag:<20} {behind}",
            region.name,
            region.number,
            reachable,
            targets,
            if region.directory.is_empty() {
                "-".to_owned()
            } else {
                region.directory.join(",")
            }
        );
        if !region.error.is_empty() {
            println!("  {}: {}", region.name, region.error);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        regions: RegionArgs,
        #[command(flatten)]
        replicate_to: ReplicateToArgs,
    }

    #[test]
    fn the_flags_go_over_the_file() {
        let flags = Flags::try_parse_from([
            "x",
            "--region",
            "eu:1",
            "--regions",
            "us:2=10.1.0.1:9330,10.1.0.2:9330;ap=10.2.0.1:9330",
            "--replicate-to",
            "us,ap",
        ])
        .unwrap();
        let mut region = "default".to_owned();
        let mut table: RegionsConfig =
            toml::from_str("[ap]\nnumber = 3\ndirectory = [\"old:1\"]\n").unwrap();
        flags.regions.apply(&mut region, &mut table);
        let mut replicate_to = Vec::new();
        flags.replicate_to.apply(&mut replicate_to);
        assert_eq!(region, "eu");
        assert_eq!(table["eu"].number, Some(1));
        assert_eq!(table["us"].number, Some(2));
        assert_eq!(table["us"].directory, ["10.1.0.1:9330", "10.1.0.2:9330"]);
        assert_eq!(table["ap"].number, Some(3), "the file's number stays");
        assert_eq!(table["ap"].directory, ["10.2.0.1:9330"]);
        assert_eq!(replicate_to, ["us", "ap"]);
        let checked = regions::Regions::resolve(&region, &table).unwrap();
        checked
            .check_targets("--replicate-to", &replicate_to)
            .unwrap();
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        for (args, says) in [
            (vec!["x", "--region", "eu:999"], "0-255"),
            (vec!["x", "--regions", "us"], "NAME=HOST:PORT"),
            (vec!["x", "--replicate-to", "u s"], "not a region name"),
        ] {
            let Err(error) = Flags::try_parse_from(&args) else {
                panic!("{args:?} parsed");
            };
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
