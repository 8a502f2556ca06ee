//! End-to-end: signed URLs for a `signed` collection, checked by a real
//! volume server's HTTP origin with a key ring reloaded on SIGHUP.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hayloft_access::signed_url::sign;
use hayloft_client::UploadOptions;
use reqwest::{StatusCode, header};
use support::{Cluster, hayloft};

const K1: &[u8] = b"k1-secret-k1-secret-k1-secret-k1-secret";
const K2: &[u8] = b"k2-secret-k2-secret-k2-secret-k2-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Writes the key ring: k1 (signing) and, if `with_k2`, k2.
fn write_keyring(dir: &std::path::Path, with_k2: bool) -> std::path::PathBuf {
    std::fs::write(dir.join("k1"), K1).unwrap();
    std::fs::write(dir.join("k2"), K2).unwrap();
    let mut text = "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\"\n".to_owned();
    if with_k2 {
        text += "[[keys]]\nid = \"k2\"\nsecret_file = \"k2\"\n";
    }
    let path = dir.join("keys.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_urls_open_private_blobs_and_nothing_else() {
    let keys = tempfile::tempdir().unwrap();
    let ring = write_keyring(keys.path(), true);
    let config = keys.path().join("directory.toml");
    std::fs::write(&config, "[collections.private]\naccess = \"signed\"\n").unwrap();
    let cluster = Cluster::start_replicated(
        &["a"],
        1,
        &["--config", config.to_str().unwrap()],
        &["--keyring", ring.to_str().unwrap()],
    )
    .await;
    let client = cluster.client().await;
    let private = UploadOptions {
        collection: "private".into(),
        ..UploadOptions::default()
    };
    let secret = client
        .upload(Bytes::from_static(b"private bytes"), &private)
        .await
        .unwrap();
    let other = client
        .upload(Bytes::from_static(b"other private bytes"), &private)
        .await
        .unwrap();
    let public = client
        .upload(
            Bytes::from_static(b"public bytes"),
            &UploadOptions::default(),
        )
        .await
        .unwrap();
    let origin = secret.url.rsplit_once('/').unwrap().0.to_owned();
    let path = format!("/{}", secret.blob_id);

    // Unsigned: refused once the server has heard which collections are
    // signed (its first heartbeat's answer); the public blob needs nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&secret.url).await.status() != StatusCode::FORBIDDEN {
        assert!(
            Instant::now() < deadline,
            "an unsigned private read was served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let public_read = get(&public.url).await;
    assert_eq!(public_read.status(), StatusCode::OK);
    let public_cache_control = public_read.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(public_read.bytes().await.unwrap().as_ref(), b"public bytes");

    // `hayloft sign` (the origin found through the directory): 200, 206,
    // 304, HEAD; tagged for purges.
    let (ok, out) = hayloft(
        &cluster,
        &[
            "sign",
            &secret.blob_id,
            "--ttl",
            "10m",
            "--keyring",
            ring.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let url = out.trim().to_owned();
    assert!(url.starts_with(&format!("{origin}{path}?e=")), "{url}");
    let read = get(&url).await;
    assert_eq!(read.status(), StatusCode::OK);
    // No shared cache keeps it past the URL's expiry (10 minutes).
    let cache_control = read.headers()[header::CACHE_CONTROL].to_str().unwrap();
    let max_age: u64 = cache_control
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("{cache_control}"))
        .parse()
        .unwrap();
    assert!((500..=600).contains(&max_age), "{cache_control}");
    assert!(
        public_cache_control.starts_with("public"),
        "{public_cache_control}"
    );
    let etag = read.headers()[header::ETAG].to_str().unwrap().to_owned();
    let keys_header = read.headers()["surrogate-key"].to_str().unwrap().to_owned();
    assert!(
        keys_header.contains(&format!("blob-{}", secret.blob_id)),
        "{keys_header}"
    );
    assert!(keys_header.contains("collection-private"), "{keys_header}");
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"private bytes");
    let http = reqwest::Client::new();
    let range = http
        .get(&url)
        .header(header::RANGE, "bytes=0-6")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.bytes().await.unwrap().as_ref(), b"private");
    let cached = http
        .get(&url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        http.head(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Conditional and ranged requests need the signature too.
    let unsigned = http
        .get(&secret.url)
        .header(header::RANGE, "bytes=0-6")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        http.head(&secret.url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // Forged, truncated, another blob's, expired, too long-lived, an
    // unknown key: refused, and a refusal never says whether the blob
    // exists.
    let query = url.split_once('?').unwrap().1.to_owned();
    let mut forged = url.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let expired = sign(K1, "k1", &path, now() - 3600, None);
    let forever = sign(K1, "k1", &path, now() + 3 * 86_400, None);
    let unknown = sign(K1, "k9", &path, now() + 600, None);
    let missing_blob = format!("{}ffffff", &secret.blob_id[..secret.blob_id.len() - 6]);
    let refused = [
        (forged, StatusCode::FORBIDDEN),
        (url[..url.len() - 5].to_owned(), StatusCode::FORBIDDEN),
        (format!("{}?{query}", other.url), StatusCode::FORBIDDEN),
        (format!("{origin}{path}?{expired}"), StatusCode::GONE),
        (format!("{origin}{path}?{forever}"), StatusCode::FORBIDDEN),
        (format!("{origin}{path}?{unknown}"), StatusCode::FORBIDDEN),
        (
            format!("{origin}/{missing_blob}?{query}"),
            StatusCode::FORBIDDEN,
        ),
    ];
    let mut bodies = Vec::new();
    for (url, status) in &refused {
        let response = get(url).await;
        assert_eq!(response.status(), *status, "{url}");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        bodies.push(response.text().await.unwrap());
    }
    assert_eq!(
        bodies[2], bodies[6],
        "a missing blob is refused like an existing one"
    );
    let signed_missing = sign(K1, "k1", &format!("/{missing_blob}"), now() + 600, None);
    assert_eq!(
        get(&format!("{origin}/{missing_blob}?{signed_missing}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Keys rotate without a restart: a URL signed with k2 works until k2
    // leaves the ring; SIGHUP (or the file's change) and it is revoked.
    let by_k2 = format!(
        "{origin}{path}?{}",
        sign(K2, "k2", &path, now() + 600, None)
    );
    assert_eq!(get(&by_k2).await.status(), StatusCode::OK);
    write_keyring(keys.path(), false);
    let pid = cluster.volumes[0].as_ref().unwrap().pid();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&by_k2).await.status() != StatusCode::FORBIDDEN {
        assert!(Instant::now() < deadline, "a removed key still opens URLs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&url).await.status(), StatusCode::OK, "k1 still signs");
}
