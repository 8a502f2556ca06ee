//! Streamed files, ranges, stats, deletes, expiry and collections.

use std::time::Duration;

use hayloft::cluster::Cluster;
use hayloft_client::UploadOptions;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_streams_up_in_chunks_and_ranges_of_it_stream_back() {
    let started = start(Cluster::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("movie.bin");
    let data = content(1, 3 * hayloft_proto::CHUNK_BYTES + 333);
    std::fs::write(&path, &data).unwrap();
    let uploaded = started
        .client
        .upload_file(&path, &options("video/mp4"))
        .await
        .unwrap();
    assert_eq!(uploaded.size, data.len() as u64);
    let mut whole = Vec::new();
    let info = started
        .client
        .download_to(&uploaded.blob_id, &mut whole)
        .await
        .unwrap();
    assert_eq!(whole, &data[..]);
    assert_eq!(info.etag, uploaded.etag);
    let start_at = hayloft_proto::CHUNK_BYTES as u64 * 2 - 7;
    let mut range = Vec::new();
    started
        .client
        .download_range_to(&uploaded.blob_id, start_at, 100, &mut range)
        .await
        .unwrap();
    assert_eq!(range, &data[start_at as usize..start_at as usize + 100]);
    // A file that cannot be read fails locally, before any id is spent on it.
    let error = started
        .client
        .upload_file(&dir.path().join("missing"), &options("video/mp4"))
        .await
        .unwrap_err();
    assert!(matches!(error, hayloft_client::Error::Io(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_says_what_was_stored_and_a_deleted_blob_is_not_found_anywhere() {
    let started = start(Cluster::builder()).await;
    let uploaded = started
        .client
        .upload(
            content(2, 4321),
            &UploadOptions {
                content_type: "text/csv".into(),
                file_name: "report.csv".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    let info = started.client.stat(&uploaded.blob_id).await.unwrap();
    assert_eq!(info.size, 4321);
    assert_eq!(info.content_type, "text/csv");
    assert_eq!(info.file_name, "report.csv");
    assert_eq!(info.etag, uploaded.etag);
    assert_eq!(info.expires_at, 0);
    started.client.delete(&uploaded.blob_id).await.unwrap();
    for error in [
        started.client.stat(&uploaded.blob_id).await.unwrap_err(),
        started
            .client
            .download(&uploaded.blob_id)
            .await
            .unwrap_err(),
        started.client.delete(&uploaded.blob_id).await.unwrap_err(),
    ] {
        assert_eq!(error.code(), Some(Code::NotFound), "{error}");
    }
    let malformed = started.client.stat("not-an-id").await.unwrap_err();
    assert!(
        matches!(malformed, hayloft_client::Error::BlobId(_)),
        "{malformed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_a_ttl_expires_that_long_after_its_write() {
    let started = start(Cluster::builder()).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let uploaded = started
        .client
        .upload(
            content(3, 10),
            &UploadOptions {
                ttl: Some(Duration::from_secs(3600)),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    let info = started.client.stat(&uploaded.blob_id).await.unwrap();
    assert!(
        info.expires_at >= before + 3600 && info.expires_at <= before + 3600 + 60,
        "expires at {}, written at about {before}",
        info.expires_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_to_a_collection_land_in_that_collections_volumes() {
    let started = start(Cluster::builder()).await;
    let photo = started
        .client
        .upload(
            content(4, 10),
            &UploadOptions {
                collection: "photos".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    let other = upload_many(&started.client, 1, 10, 5).await;
    let status = started.client.status().await.unwrap();
    let photos = record(&status, &photo.blob_id).status.clone().unwrap();
    assert_eq!(photos.collection, "photos");
    let default = record(&status, &other[0].0.blob_id).status.clone().unwrap();
    assert_ne!(default.volume_id, photos.volume_id);
    assert_ne!(default.collection, "photos");
}
