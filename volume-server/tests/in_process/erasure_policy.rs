//! The tiering worker erasure-codes by its policy: a sealed volume moved
//! to warm by one rule is encoded by an `[[encode]]` rule through the
//! directory's `EncodeVolume`, its copy removed, every blob read back from
//! the shards; from then on the worker leaves it alone.

use std::time::Duration;

use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_tiering::Policy;
use hayloft_tiering::plan::Action;

use crate::erasure::http_get;
use crate::support::*;

const POLICY: &str = r#"
    min_observation = "0s"

    [[rule]]
    name = "to-warm"
    from = "hot"
    target = "warm"

    [[encode]]
    name = "shards"
    code = "3+2"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiering_worker_encodes_a_warm_sealed_volume_by_its_encode_rule_then_leaves_it_alone() {
    let started = start(
        Cluster::builder()
            .volume_servers(5)
            .volume(|_, config| config.max_volume_size = ByteSize::mib(1)),
    )
    .await;
    let (volume, blobs) = fill_until_sealed(&started).await;
    let policy = Policy::parse(POLICY).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(hayloft_tiering::worker::run(
        started.cluster.directory_addr(),
        policy.clone(),
        Duration::from_millis(200),
        async {
            let _ = stopped.await;
        },
    ));
    let client = &started.client;
    let layout = eventually(
        Duration::from_secs(60),
        "the volume erasure-coded",
        || async {
            let status = client.status().await.ok()?;
            let record = status
                .volumes
                .iter()
                .find(|v| v.erasure.as_ref().is_some_and(|e| e.volume_id == volume))?;
            // Its copy removed too.
            record.replicas.is_empty().then(|| record.erasure.clone())?
        },
    )
    .await;
    let _ = stop.send(());
    worker.await.unwrap();
    assert_eq!(layout.code, "3+2");
    assert_eq!(layout.holders.len(), 5);
    for (blob, data) in &blobs {
        let response = http_get(&started.cluster, 4, *blob, None).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{blob}");
        assert!(response.bytes().await.unwrap() == data, "wrong bytes");
    }
    // The next plan has nothing for it (and nothing else is sealed).
    let (plan, _) = hayloft_tiering::worker::plan_now(&started.cluster.directory_addr(), &policy)
        .await
        .unwrap();
    assert!(
        !plan.actions.iter().any(|a| a.volume() == volume),
        "{:?}",
        plan.actions
    );
    assert!(
        plan.actions
            .iter()
            .all(|a| !matches!(a, Action::Encode { .. })),
        "{:?}",
        plan.actions
    );
}
