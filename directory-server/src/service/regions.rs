//! The body of the directory's `Regions` RPC: the deployment's regions as
//! this directory is configured with them, and, when asked, whether each
//! other region's directory group answers, as the region configured.

use std::time::Duration;

use hayloft_proto::regions::Region;
use hayloft_proto::{
    AdoptVolumesRequest, AdoptVolumesResponse, RegionStatus, RegionsRequest, RegionsResponse,
};
use hayloft_storage::VolumeId;
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
            lag: None,
            behind: None,
        };
        let local_name = &local.name;
        let credential = self.repair_settings.credential.clone();
        let lags = self.cluster.region_lags();
        let others = regions.others.iter().map(|region| {
            let credential = credential.clone();
            let lag = lags.get(&region.name).cloned();
            async move {
                let mut status = RegionStatus {
                    name: region.name.clone(),
                    number: u32::from(region.number.0),
                    directory: region.directory.clone(),
                    lag,
                    ..RegionStatus::default()
                };
                if probe {
                    match ask(region, local_name, credential).await {
                        Ok(behind) => {
                            status.reachable = true;
                            status.behind = behind;
                        }
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
/// is the name and number configured here; answers how far its copies are
/// behind the logs of `me` (this region), if any copy there follows them.
async fn ask(
    region: &Region,
    me: &str,
    credential: hayloft_proto::Credential,
) -> Result<Option<hayloft_proto::RegionLag>, ProbeFailed> {
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
    let behind = answer
        .regions
        .iter()
        .find(|r| !r.local && r.name == me)
        .and_then(|r| r.lag.clone());
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
    Ok(behind)
}

impl DirectoryService {
    /// `AdoptVolumes`: keeps copies here of another region's volumes (see
    /// ARCHITECTURE.md, "Shipping between regions"). A volume known here
    /// already is answered as it is; a new one is placed like a new volume
    /// of its collection, created on its servers and recorded sealed (its
    /// ids are the other region's to hand out) with the regions that keep
    /// it. One creation at a time (with `Assign`'s).
    pub(super) async fn adopt_volumes_inner(
        &self,
        request: Request<AdoptVolumesRequest>,
    ) -> Result<Response<AdoptVolumesResponse>, Status> {
        self.cluster.leader_check().map_err(Status::from)?;
        let request = request.into_inner();
        let regions = self.cluster.regions();
        if !regions.others.iter().any(|r| r.name == request.region) {
            return Err(Status::failed_precondition(format!(
                "region {:?} is not configured in region {:?}",
                request.region, regions.local.name
            )));
        }
        let mut answer = AdoptVolumesResponse::default();
        for adopt in request.volumes {
            let volume = VolumeId(adopt.volume_id);
            if volume.region() == regions.local.number {
                answer.problems.push(format!(
                    "volume {volume} is region {:?}'s own",
                    regions.local.name
                ));
                continue;
            }
            if !adopt.regions.contains(&regions.local.name) {
                answer.problems.push(format!(
                    "volume {volume} is not to be kept in region {:?}",
                    regions.local.name
                ));
                continue;
            }
            let _creating = self.grow.lock().await;
            if let Some(known) = self.cluster.replicas_of(volume) {
                answer.volumes.push(known);
                continue;
            }
            let placed = match self
                .cluster
                .place_new_volume(hayloft_proto::Tier::Hot, &adopt.collection)
            {
                Ok(placed) => placed,
                Err(e) => {
                    answer.problems.push(format!("volume {volume}: {e}"));
                    continue;
                }
            };
            let servers: Vec<String> = placed.iter().map(|s| s.server_id.clone()).collect();
            tracing::info!(volume = volume.0, from = %request.region, servers = ?servers,
                collection = %adopt.collection, "adopting another region's volume");
            self.cluster.adopting(volume);
            if let Err((e, unreachable)) = super::create::create_copies(
                &placed,
                volume,
                &adopt.collection,
                hayloft_proto::Tier::Hot,
                &self.repair_settings.credential,
            )
            .await
            {
                self.cluster.adoption_failed(volume, &unreachable);
                answer.problems.push(format!("volume {volume}: {e}"));
                continue;
            }
            if let Err(e) = self.cluster.register_adopted(&adopt, &servers).await {
                self.cluster.adoption_failed(volume, &[]);
                return Err(Status::from(e));
            }
            if let Some(known) = self.cluster.replicas_of(volume) {
                answer.volumes.push(known);
            }
        }
        Ok(Response::new(answer))
    }
}
