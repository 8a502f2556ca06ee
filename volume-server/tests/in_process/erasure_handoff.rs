//! A copy replaced by shards hands its deletes to the holders before its
//! files go (`DeleteVolume` with `erasure_holders`): a delete the copy took
//! after the encode cut the shards is not lost with the copy, and a copy
//! that cannot reach every holder is kept and goes on taking deletes.

use hayloft_proto::DeleteVolumeRequest;
use hayloft_storage::BlobId;
use hayloft_storage::erasure::EcVolume;
use tonic::Code;

use crate::erasure::{delete, ec_dir, encode, holders, http_get, one_mib_volumes, sealed_volume};
use crate::support::*;

/// Asks the server at `addr` to delete its copy of `volume`, handing its
/// deletes to `holders` first.
async fn replace_copy(addr: &str, volume: u32, holders: Vec<String>) -> Result<(), tonic::Status> {
    volume_client(addr)
        .await
        .delete_volume(DeleteVolumeRequest {
            volume_id: volume,
            erasure_holders: holders,
            ..Default::default()
        })
        .await
        .map(drop)
}

/// The HTTP status of `blob` from server `server`.
async fn status_of(started: &Started, server: usize, blob: BlobId) -> reqwest::StatusCode {
    http_get(&started.cluster, server, blob, None)
        .await
        .status()
}

/// True if the holder on `server` has journaled `blob` deleted (read back
/// from its files).
fn journaled(started: &Started, server: usize, volume: u32, blob: BlobId) -> bool {
    let ec = EcVolume::open(
        &ec_dir(&started.cluster, server),
        hayloft_storage::VolumeId(volume),
    )
    .unwrap();
    ec.locate(blob.needle)
        .err()
        .is_some_and(|e| e.is_not_found())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_the_copy_took_after_encoding_reaches_every_holder_before_the_copy_goes() {
    let mut started = one_mib_volumes().await;
    let (volume, blobs) = sealed_volume(&mut started, 3).await;
    encode(&started, volume, "2+1").await;
    let copy = started.cluster.volume(0).unwrap().grpc_addr();
    // Server 0 still has the copy: a delete there lands in the copy only,
    // and the shards, cut before it, still serve the blob.
    let (deleted, _) = blobs[0];
    delete(&copy, deleted).await.unwrap();
    assert_eq!(
        status_of(&started, 0, deleted).await,
        reqwest::StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&started, 1, deleted).await,
        reqwest::StatusCode::OK,
        "the holders did not have the delete yet"
    );

    replace_copy(&copy, volume, holders(&started.cluster))
        .await
        .unwrap();
    // The copy is gone; every holder has the tombstone, in its files.
    assert!(
        !started
            .cluster
            .volume_dir(0)
            .join("hot")
            .join(format!("{volume}.dat"))
            .exists()
    );
    for server in 0..3 {
        assert_eq!(
            status_of(&started, server, deleted).await,
            reqwest::StatusCode::NOT_FOUND,
            "from {server}"
        );
        assert!(
            journaled(&started, server, volume, deleted),
            "holder {server}"
        );
    }
    // Every other blob still reads, from the shards, byte for byte.
    for (blob, data) in &blobs[1..] {
        let response = http_get(&started.cluster, 0, *blob, None).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{blob}");
        assert!(response.bytes().await.unwrap() == data, "wrong bytes");
    }
    // Asked again (a retry after a lost answer): no copy here any more,
    // and the shards are untouched.
    let again = replace_copy(&copy, volume, holders(&started.cluster))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
    let (blob, data) = &blobs[1];
    let response = http_get(&started.cluster, 2, *blob, None).await;
    assert!(response.bytes().await.unwrap() == data, "wrong bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_deletes_cannot_reach_every_holder_is_kept_and_takes_deletes_again() {
    let mut started = one_mib_volumes().await;
    let (volume, blobs) = sealed_volume(&mut started, 3).await;
    encode(&started, volume, "2+1").await;
    let copy = started.cluster.volume(0).unwrap().grpc_addr();
    let (first, _) = blobs[0];
    delete(&copy, first).await.unwrap();
    let all = holders(&started.cluster);
    started.cluster.stop_volume(2).await.unwrap();

    let refused = replace_copy(&copy, volume, all).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("the copy is kept"),
        "{refused:?}"
    );
    // The copy is still here, and not stuck: it serves and takes deletes.
    let (second, _) = blobs[1];
    delete(&copy, second).await.unwrap();
    let (kept, data) = &blobs[2];
    let response = http_get(&started.cluster, 0, *kept, None).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(response.bytes().await.unwrap() == data, "wrong bytes");

    // The holder back (on a new port): the next attempt hands both
    // deletes over, and only then is the copy gone.
    started.cluster.start_volume(2).await.unwrap();
    assert!(started.cluster.volume_servers_alive(3).await);
    replace_copy(&copy, volume, holders(&started.cluster))
        .await
        .unwrap();
    for server in 0..3 {
        for blob in [first, second] {
            assert_eq!(
                status_of(&started, server, blob).await,
                reqwest::StatusCode::NOT_FOUND,
                "{blob} from {server}"
            );
            assert!(journaled(&started, server, volume, blob), "holder {server}");
        }
    }
    let response = http_get(&started.cluster, 1, *kept, None).await;
    assert!(response.bytes().await.unwrap() == data, "wrong bytes");
}
