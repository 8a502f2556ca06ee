//! The HTTP origin: headers, ranges, preconditions, and the 404s that all
//! look alike.

use hayloft::cluster::Cluster;
use hayloft_client::UploadOptions;
use reqwest::StatusCode;

use crate::support::*;

/// One server, one blob of `len` bytes named `video.mp4`: its URL, bytes
/// and the started cluster.
async fn one_blob(len: usize) -> (Started, String, bytes::Bytes) {
    let started = start(Cluster::builder()).await;
    let data = content(3, len);
    let blob = started
        .client
        .upload(
            data.clone(),
            &UploadOptions {
                content_type: "video/mp4".into(),
                file_name: "video.mp4".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    (started, blob.url, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_served_immutable_with_its_type_name_etag_and_length() {
    let (started, url, data) = one_blob(100_000).await;
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "video/mp4");
    assert_eq!(headers["content-length"], data.len().to_string().as_str());
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        headers["content-disposition"],
        "inline; filename=\"video.mp4\"; filename*=UTF-8''video.mp4"
    );
    assert!(headers.contains_key("last-modified"));
    assert_eq!(response.bytes().await.unwrap(), data);
    // The ETag is the one the upload and a stat answered.
    let blob_id = url.rsplit('/').next().unwrap();
    let info = started.client.stat(blob_id).await.unwrap();
    assert_eq!(headers["etag"].to_str().unwrap(), info.etag);
    // HEAD: the same headers, no body.
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["etag"], headers["etag"]);
    assert_eq!(
        head.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_answer_206_with_content_range_and_unsatisfiable_ones_416() {
    let len = 2 * hayloft_proto::CHUNK_BYTES + 5;
    let (_started, url, data) = one_blob(len).await;
    let http = reqwest::Client::new();
    let get = |range: String| {
        let request = http.get(&url).header("range", range);
        async move { request.send().await.unwrap() }
    };
    // Across a chunk boundary.
    let ranged = get("bytes=1048570-1048585".into()).await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        format!("bytes 1048570-1048585/{len}")
    );
    assert_eq!(ranged.bytes().await.unwrap(), data.slice(1048570..=1048585));
    let suffix = get("bytes=-10".into()).await;
    assert_eq!(suffix.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(suffix.bytes().await.unwrap(), data.slice(len - 10..));
    let open = get(format!("bytes={}-", len - 3)).await;
    assert_eq!(open.bytes().await.unwrap(), data.slice(len - 3..));
    let unsatisfiable = get(format!("bytes={len}-")).await;
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        unsatisfiable.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{len}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions_answer_304_and_412_and_a_stale_if_range_the_whole_blob() {
    let (_started, url, data) = one_blob(5000).await;
    let http = reqwest::Client::new();
    let full = http.get(&url).send().await.unwrap();
    let etag = full.headers()["etag"].clone();
    let last_modified = full.headers()["last-modified"].clone();
    let with = |name: &'static str, value: reqwest::header::HeaderValue| {
        let request = http.get(&url).header(name, value);
        async move { request.send().await.unwrap() }
    };
    let not_modified = with("if-none-match", etag.clone()).await;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], etag);
    assert!(not_modified.bytes().await.unwrap().is_empty());
    let since = with("if-modified-since", last_modified).await;
    assert_eq!(since.status(), StatusCode::NOT_MODIFIED);
    let other = with("if-none-match", "\"other\"".parse().unwrap()).await;
    assert_eq!(other.status(), StatusCode::OK);
    let failed = with("if-match", "\"other\"".parse().unwrap()).await;
    assert_eq!(failed.status(), StatusCode::PRECONDITION_FAILED);
    let matched = with("if-match", etag.clone()).await;
    assert_eq!(matched.status(), StatusCode::OK);
    // A Range under an If-Range that no longer matches: the whole blob.
    let stale = http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.unwrap(), data);
    let fresh = http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(fresh.bytes().await.unwrap(), data.slice(0..10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_deleted_and_wrong_cookie_blobs_all_answer_404_and_bad_requests_say_why() {
    let (started, url, _) = one_blob(300).await;
    let (base, blob_id) = url.rsplit_once('/').unwrap();
    let http = reqwest::Client::new();
    let status_of = |path: String| {
        let request = http.get(format!("{base}/{path}"));
        async move { request.send().await.unwrap().status() }
    };
    let mut wrong_cookie = blob_id.parse::<hayloft_storage::BlobId>().unwrap();
    wrong_cookie.cookie.0 ^= 1;
    assert_eq!(
        status_of(wrong_cookie.to_string()).await,
        StatusCode::NOT_FOUND
    );
    let mut missing = blob_id.parse::<hayloft_storage::BlobId>().unwrap();
    missing.needle.0 += 1;
    assert_eq!(status_of(missing.to_string()).await, StatusCode::NOT_FOUND);
    assert_eq!(
        status_of("not-a-blob-id".into()).await,
        StatusCode::BAD_REQUEST
    );
    let post = http.post(&url).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    started.client.delete(blob_id).await.unwrap();
    assert_eq!(status_of(blob_id.to_owned()).await, StatusCode::NOT_FOUND);
}
