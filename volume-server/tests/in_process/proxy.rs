//! HTTP reads of blobs a server holds no copy of: proxied from a holder
//! (the default), redirected, or refused.

use hayloft::cluster::Cluster;
use hayloft_volume::proxy::RemoteReads;

use crate::support::*;

/// A two-server cluster without replication, a blob on one of them, and
/// the origin of the holder and of the other server.
async fn blob_on_one_of_two(mode: RemoteReads) -> (Started, String, String, String, bytes::Bytes) {
    let started = start(
        Cluster::builder()
            .volume_servers(2)
            .volume(move |_, config| config.remote_reads = mode),
    )
    .await;
    let data = content(5, 70_000);
    let blob = started
        .client
        .upload(data.clone(), &options("image/png"))
        .await
        .unwrap();
    let status = started.client.status().await.unwrap();
    let holder = record(&status, &blob.blob_id).replicas[0]
        .location
        .clone()
        .unwrap()
        .server_id;
    let holder = started.cluster.volume(server_index(&holder)).unwrap();
    let other = started
        .cluster
        .volume(1 - server_index(&holder.server_id))
        .unwrap();
    let (holder, other) = (holder.http_base(), other.http_base());
    (started, blob.blob_id, holder, other, data)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_server_without_the_volume_is_proxied_from_a_holder() {
    let (_started, blob_id, holder, other, data) = blob_on_one_of_two(RemoteReads::Proxy).await;
    let http = no_redirects();
    let direct = http
        .get(format!("{holder}/{blob_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    let etag = direct.headers()["etag"].clone();
    let proxied = http.get(format!("{other}/{blob_id}")).send().await.unwrap();
    assert_eq!(proxied.status(), 200);
    assert_eq!(proxied.headers()["etag"], etag);
    assert_eq!(proxied.headers()["content-type"], "image/png");
    assert_eq!(proxied.bytes().await.unwrap(), data);
    // Ranges and preconditions pass through.
    let ranged = http
        .get(format!("{other}/{blob_id}"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap(), data.slice(100..200));
    let unchanged = http
        .get(format!("{other}/{blob_id}"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_read_of_a_missing_or_deleted_blob_is_404() {
    let (started, blob_id, _holder, other, _) = blob_on_one_of_two(RemoteReads::Proxy).await;
    let http = no_redirects();
    // Same volume, another needle: the holder has no such blob.
    let mut wrong = blob_id.parse::<hayloft_storage::BlobId>().unwrap();
    wrong.needle.0 += 1000;
    let missing = http.get(format!("{other}/{wrong}")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // A volume nobody has.
    let nowhere = http
        .get(format!("{other}/{}", "ffff00000001deadbeef"))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);
    started.client.delete(&blob_id).await.unwrap();
    let deleted = http.get(format!("{other}/{blob_id}")).send().await.unwrap();
    assert_eq!(deleted.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_remote_reads_redirect_a_server_sends_the_reader_to_a_holder() {
    let (_started, blob_id, holder, other, data) = blob_on_one_of_two(RemoteReads::Redirect).await;
    let answer = no_redirects()
        .get(format!("{other}/{blob_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 307);
    let location = answer.headers()["location"].to_str().unwrap();
    assert_eq!(location, format!("{holder}/{blob_id}"));
    // Followed, the redirect gives the blob.
    let followed = reqwest::get(format!("{other}/{blob_id}")).await.unwrap();
    assert_eq!(followed.bytes().await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_remote_reads_off_a_server_answers_404_for_what_it_does_not_hold() {
    let (_started, blob_id, holder, other, _) = blob_on_one_of_two(RemoteReads::Off).await;
    let http = no_redirects();
    assert_eq!(
        http.get(format!("{other}/{blob_id}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.get(format!("{holder}/{blob_id}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
