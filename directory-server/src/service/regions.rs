//! The body of the directory's `Regions` RPC: the deployment's regions as
//! this directory is configured with them, and, when asked, whether each
//! other region's directory group answers, as the region configured.

use std::time::Duration;

use hayloft_proto::regions::Region;
use hayloft_proto::{RegionStatus, RegionsRequest, RegionsResponse};
use tonic::{Request, Response, Status};

use super::DirectoryService;

/// How long one other region's directory group may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl DirectoryService {
    /// The regions, this one first; with `probe`, each other region's
    /// directory group asked (concurrently) for its own region.
    pub(super) async fn regions_inner(
        &self,
        request: Request<RegionsRequest>,
    ) -> Result<Response<RegionsResponse>, Status> {
        let probe = request.get_ref().probe;
        let regions = self.cluster.regions();
        let local = RegionStatus {
            name: regions.local.name.clone(),
            number: u32::from(regions.local.number.0),
            directory: Vec::new(),
            local: true,
            reachable: true,
            error: String::new(),
            replicate_to: self.cluster.replicate_to().to_vec(),
        };
        let credential = self.repair_settings.credential.clone();
        let others = regions.others.iter().map(|region| {
            let credential = credential.clone();
            async move {
                let mut status = RegionStatus {
                    name: region.name.clone(),
                    number: u32::from(region.number.0),
                    directory: region.directory.clone(),
                    ..RegionStatus::default()
                };
                if probe {
                    match ask(region, credential).await {
                        Ok(()) => status.reachable = true,
                        Err(why) => {
                            status.reachable = why.answered;
                            status.error = why.error;
                        }
                    }
                }
                status
            }
        });
        let others = futures::future::join_all(others).await;
        Ok(Response::new(RegionsResponse {
            regions: std::iter::once(local).chain(others).collect(),
        }))
    }
}

/// Why a probe of another region failed.
struct ProbeFailed {
    /// Its directory answered (as another region than configured).
    answered: bool,
    error: String,
}

/// Asks `region`'s directory group for its own region, and checks that it
/// is the name and number configured here.
async fn ask(region: &Region, credential: hayloft_proto::Credential) -> Result<(), ProbeFailed> {
    let unreachable = |error: String| ProbeFailed {
        answered: false,
        error,
    };
    let directories = hayloft_proto::Directories::new(&region.directory.join(","))
        .and_then(|d| d.with_credential(credential))
        .and_then(|d| d.with_call_timeout(PROBE_TIMEOUT))
        .map_err(|s| unreachable(s.message().to_owned()))?
        .with_patience(PROBE_TIMEOUT);
    let answer = tokio::time::timeout(
        PROBE_TIMEOUT * 2,
        directories.call(|mut client| async move {
            client.regions(RegionsRequest { probe: false }).await
        }),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {:?}", PROBE_TIMEOUT * 2)))?
    .map_err(|s| unreachable(s.message().to_owned()))?;
    let Some(theirs) = answer.regions.into_iter().find(|r| r.local) else {
        return Err(ProbeFailed {
            answered: true,
            error: "its directory named no region of its own".into(),
        });
    };
    if theirs.name != region.name || theirs.number != u32::from(region.number.0) {
        return Err(ProbeFailed {
            answered: true,
            error: format!(
                "its directory serves region {:?} number {}, not {:?} number {} as configured here",
                theirs.name, theirs.number, region.name, region.number
            ),
        });
    }
    Ok(())
}
