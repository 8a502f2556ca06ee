//! A volume server serves one region: at start it asks its directory group
//! which region it serves (`Regions`) and stops, naming both, if that is
//! not its own. The directory refuses such a server's heartbeats too
//! (FAILED_PRECONDITION), so it is never registered even if this check
//! does not get an answer first.

use std::time::Duration;

use hayloft_proto::RegionsRequest;

/// Asks the directory group at `directory` which region it serves, until
/// it answers (every `pulse`): `Some(why)` if it serves another region
/// than `region`, `None` if the same (or a directory of an earlier
/// release that knows no regions: its heartbeats decide).
pub(crate) async fn other_region(
    directory: &str,
    credential: hayloft_proto::Credential,
    region: &str,
    pulse: Duration,
) -> Option<String> {
    let directories = hayloft_proto::Directories::new(directory)
        .and_then(|d| d.with_credential(credential))
        .ok()?
        .with_patience(pulse.min(Duration::from_secs(5)));
    loop {
        let answer = directories
            .call(|mut client| async move { client.regions(RegionsRequest { probe: false }).await })
            .await;
        match answer {
            Ok(answer) => {
                let theirs = answer.regions.into_iter().find(|r| r.local)?;
                return (theirs.name != region).then(|| {
                    format!(
                        "this volume server is configured for region {region:?}, but its directory \
                         ({directory}) serves region {:?}: start it with --region {} or point it at \
                         region {region:?}'s directory",
                        theirs.name, theirs.name
                    )
                });
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => return None,
            Err(status) => {
                tracing::debug!(error = %status.message(), "asking the directory for its region");
                tokio::time::sleep(pulse).await;
            }
        }
    }
}
