//! Two regions in one process, each a directory and two volume servers:
//! ids from each region's own range, reads of one region's blobs through
//! the other's origin and gRPC (whole, range, ETag/304, signed URL), the
//! other region down (503 / UNAVAILABLE for its blobs, its own still
//! served), a volume server of the wrong region refused, the regions as
//! each directory sees them.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hayloft::cluster::Cluster;
use hayloft_proto::regions::{RegionConfig, RegionsConfig};
use hayloft_storage::BlobId;

use crate::support::*;

const SECRET: &[u8] = b"one-key-ring-per-deployment-0123456789";

/// The deployment's `[regions]`: `a` number 0 and `b` number 1, each with
/// its directory address once known.
fn table(a: &str, b: &str) -> RegionsConfig {
    let region = |number, addr: &str| RegionConfig {
        number: Some(number),
        directory: if addr.is_empty() {
            Vec::new()
        } else {
            vec![addr.to_owned()]
        },
    };
    [
        ("a".to_owned(), region(0, a)),
        ("b".to_owned(), region(1, b)),
    ]
    .into_iter()
    .collect()
}

/// Region `a` and region `b`, two volume servers each, every server and
/// directory told of the other region; collection `private` is signed in
/// both, with one key ring.
struct TwoRegions {
    a: Started,
    b: Started,
    _keys: tempfile::TempDir,
}

async fn two_regions() -> TwoRegions {
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("k1"), SECRET).unwrap();
    let keyring = keys.path().join("keys.toml");
    std::fs::write(
        &keyring,
        "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n",
    )
    .unwrap();
    // Each region's directory address, known once it is bound.
    let addrs: Arc<[OnceLock<String>; 2]> = Arc::new([OnceLock::new(), OnceLock::new()]);
    let region = |name: &'static str| {
        let (addrs, keyring) = (Arc::clone(&addrs), keyring.clone());
        Cluster::builder()
            .volume_servers(0)
            .directory(move |config| {
                config.region = name.into();
                config.regions = table("", "");
                config.regions.retain(|n, _| n == name);
                config.collections.insert(
                    "private".into(),
                    serde_json::from_value(serde_json::json!({ "access": "signed" })).unwrap(),
                );
            })
            .volume(move |_, config| {
                config.region = name.into();
                let [a, b] = &*addrs;
                config.regions = table(a.get().unwrap(), b.get().unwrap());
                config.keyring = Some(keyring.clone());
            })
    };
    let mut a = start(region("a")).await;
    addrs[0].set(a.cluster.directory_addr()).unwrap();
    let mut b = start(region("b")).await;
    addrs[1].set(b.cluster.directory_addr()).unwrap();
    let (a_addr, b_addr) = (a.cluster.directory_addr(), b.cluster.directory_addr());
    for started in [&mut a, &mut b] {
        let (a_addr, b_addr) = (a_addr.clone(), b_addr.clone());
        started
            .cluster
            .restart_directory_with(move |config| config.regions = table(&a_addr, &b_addr))
            .await
            .unwrap();
        for _ in 0..2 {
            started.cluster.add_volume_server().await.unwrap();
        }
        assert!(started.cluster.volume_servers_alive(2).await);
    }
    TwoRegions { a, b, _keys: keys }
}

fn blob(id: &str) -> BlobId {
    id.parse().unwrap()
}

/// A signed URL of `path` on `base`, valid for a minute.
fn signed(base: &str, blob_id: &str) -> String {
    let path = format!("/{blob_id}");
    let expires = hayloft_proto::unix_now() + 60;
    let query = hayloft_access::signed_url::sign(SECRET, "k1", &path, expires, None);
    format!("{base}{path}?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_region_allocates_its_own_ids_and_reads_the_others_blobs() {
    let TwoRegions { a, b, _keys } = two_regions().await;
    let in_a = content(1, 90_000);
    let from_a = a
        .client
        .upload(in_a.clone(), &options("image/png"))
        .await
        .unwrap();
    let in_b = content(2, 5_000);
    let from_b = b
        .client
        .upload(in_b.clone(), &options("text/plain"))
        .await
        .unwrap();
    // Region a is number 0: the ids a single-region cluster allocates.
    let (volume_a, volume_b) = (
        blob(&from_a.blob_id).volume(),
        blob(&from_b.blob_id).volume(),
    );
    assert_eq!(volume_a.region().0, 0, "{volume_a}");
    assert!(volume_a.0 >= 1 && volume_a.0 < 1 << 24, "{volume_a}");
    assert_eq!(volume_b.region().0, 1, "{volume_b}");
    assert_eq!(volume_b.0 >> 24, 1);

    let http = reqwest::Client::new();
    let direct = http
        .get(format!(
            "{}/{}",
            a.cluster.volume(0).unwrap().http_base(),
            from_a.blob_id
        ))
        .send()
        .await
        .unwrap();
    let etag = direct.headers()["etag"].clone();
    for server in 0..2 {
        // Every origin of b serves a's blob, and every origin of a b's.
        let b_origin = b.cluster.volume(server).unwrap().http_base();
        let whole = http
            .get(format!("{b_origin}/{}", from_a.blob_id))
            .send()
            .await
            .unwrap();
        assert_eq!(whole.status(), 200);
        assert_eq!(whole.headers()["etag"], etag);
        assert_eq!(whole.headers()["content-type"], "image/png");
        assert_eq!(whole.bytes().await.unwrap(), in_a);
        let a_origin = a.cluster.volume(server).unwrap().http_base();
        let back = http
            .get(format!("{a_origin}/{}", from_b.blob_id))
            .send()
            .await
            .unwrap();
        assert_eq!(back.status(), 200);
        assert_eq!(back.bytes().await.unwrap(), in_b);
    }
    let b_origin = b.cluster.volume(0).unwrap().http_base();
    let url = format!("{b_origin}/{}", from_a.blob_id);
    let ranged = http
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap(), in_a.slice(1000..2000));
    let unchanged = http
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304);
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        in_a.len().to_string().as_str()
    );
    // gRPC: whole, and a part.
    let b_grpc = b.cluster.volume(1).unwrap().grpc_addr();
    assert_eq!(read_from(&b_grpc, &from_a.blob_id).await.unwrap(), in_a);
    let mut client = volume_client(&b_grpc).await;
    let mut part = client
        .read(hayloft_proto::ReadRequest {
            blob_id: from_a.blob_id.clone(),
            offset: 10,
            length: 20,
        })
        .await
        .unwrap()
        .into_inner();
    let first = part.message().await.unwrap().unwrap();
    assert_eq!(first.info.unwrap().size, in_a.len() as u64);
    assert_eq!(first.chunk, in_a.slice(10..30));
    // A blob a does not have: NOT_FOUND from b, not UNAVAILABLE.
    let mut wrong = blob(&from_a.blob_id);
    wrong.needle.0 += 1000;
    let missing = read_from(&b_grpc, &wrong.to_string()).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let missing = http
        .get(format!("{b_origin}/{wrong}"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_verifies_the_same_in_every_region() {
    let TwoRegions { a, b, _keys } = two_regions().await;
    let data = content(3, 4_000);
    let private = a
        .client
        .upload(
            data.clone(),
            &hayloft_client::UploadOptions {
                collection: "private".into(),
                ..options("image/jpeg")
            },
        )
        .await
        .unwrap();
    let b_origin = b.cluster.volume(0).unwrap().http_base();
    let plain = format!("{b_origin}/{}", private.blob_id);
    // Once b's origins know the collection is signed, unsigned is refused.
    eventually(
        Duration::from_secs(10),
        "an unsigned read refused in b",
        || async { (reqwest::get(&plain).await.unwrap().status() == 403).then_some(()) },
    )
    .await;
    let good = reqwest::get(signed(&b_origin, &private.blob_id))
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    assert_eq!(good.bytes().await.unwrap(), data);
    let forged = signed(&b_origin, &private.blob_id).replace("&s=", "&s=x");
    assert_eq!(reqwest::get(forged).await.unwrap().status(), 403);
    let a_origin = a.cluster.volume(0).unwrap().http_base();
    let at_home = reqwest::get(signed(&a_origin, &private.blob_id))
        .await
        .unwrap();
    assert_eq!(at_home.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_region_a_down_b_answers_unavailable_for_its_blobs_and_serves_its_own() {
    let TwoRegions { a, b, _keys } = two_regions().await;
    let from_a = a
        .client
        .upload(content(4, 3_000), &options("image/png"))
        .await
        .unwrap();
    let own = content(5, 3_000);
    let from_b = b
        .client
        .upload(own.clone(), &options("image/png"))
        .await
        .unwrap();
    let b_origin = b.cluster.volume(0).unwrap().http_base();
    let b_grpc = b.cluster.volume(0).unwrap().grpc_addr();
    // Read once while a is up: its copies are cached in b.
    let url = format!("{b_origin}/{}", from_a.blob_id);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    let directory_b = hayloft_proto::Directories::new(&b.cluster.directory_addr()).unwrap();
    let probe = || async {
        directory_b
            .call(|mut c| async move {
                c.regions(hayloft_proto::RegionsRequest { probe: true })
                    .await
            })
            .await
            .unwrap()
            .regions
    };
    let regions = probe().await;
    assert_eq!(regions.len(), 2);
    assert!(regions[0].local && regions[0].name == "b" && regions[0].number == 1);
    assert!(
        regions[1].reachable && regions[1].name == "a",
        "{:?}",
        regions[1]
    );

    let Started { cluster, _dir, .. } = a;
    cluster.stop().await.unwrap();
    let down = reqwest::get(&url).await.unwrap();
    assert_eq!(down.status(), 503);
    let status = read_from(&b_grpc, &from_a.blob_id).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let served = reqwest::get(format!("{b_origin}/{}", from_b.blob_id))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap(), own);
    // Replication 1 over two servers: read from the one that holds it.
    let status = b.client.status().await.unwrap();
    let holder = &copies(&status, &from_b.blob_id)[0];
    assert_eq!(read_from(holder, &from_b.blob_id).await.unwrap(), own);
    let regions = probe().await;
    assert!(!regions[1].reachable, "{:?}", regions[1]);
    assert!(!regions[1].error.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_server_of_another_region_is_refused() {
    let mut b = start(
        Cluster::builder()
            .directory(|config| {
                config.region = "b".into();
                config.regions = table("", "");
                config.regions.get_mut("a").unwrap().directory = vec!["127.0.0.1:9".into()];
            })
            .volume(|index, config| {
                config.region = if index == 0 { "b" } else { "a" }.into();
            }),
    )
    .await;
    let index = b.cluster.add_volume_server().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the server of region a to stop",
        || async { b.cluster.volume(index).unwrap().is_finished().then_some(()) },
    )
    .await;
    let refused = b.cluster.stop_volume(index).await.unwrap_err();
    let why = anyhow_chain(&refused);
    assert!(
        why.contains("region \"a\"") && why.contains("serves region \"b\""),
        "{why}"
    );
    // Nor did the directory register it.
    let status = b.client.status().await.unwrap();
    assert!(
        status
            .servers
            .iter()
            .all(|s| s.location.as_ref().unwrap().server_id != format!("vs{index}"))
    );
}

/// An error and its causes, one line.
fn anyhow_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
