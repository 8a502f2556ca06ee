//! A client of two regions in process, `a` (number 0) and `b` (number 1),
//! each a directory and one volume server: what makes an upload move on to
//! the next region, and what does not; a blob no region has.

use bytesize::ByteSize;
use hayloft::cluster::Cluster;
use hayloft_client::{Client, Error, Failover, RegionDirectory, UploadOptions};
use hayloft_proto::regions::{RegionConfig, RegionsConfig};
use hayloft_storage::BlobId;
use tonic::Code;

use crate::support::*;

/// Region `name` numbered `number`, alone (the client is what joins them);
/// its uploads at most `max_upload`.
async fn region(name: &'static str, number: u8, max_upload: ByteSize) -> Started {
    let table = move || -> RegionsConfig {
        [(
            name.to_owned(),
            RegionConfig {
                number: Some(number),
                directory: Vec::new(),
            },
        )]
        .into_iter()
        .collect()
    };
    start(
        Cluster::builder()
            .directory(move |config| {
                config.region = name.into();
                config.regions = table();
            })
            .volume(move |_, config| {
                config.region = name.into();
                config.regions = table();
                config.max_upload_size = max_upload;
            }),
    )
    .await
}

/// A client of `[a, b]`.
async fn both(a: &Started, b: &Started) -> Client {
    let list = [("a", a), ("b", b)]
        .into_iter()
        .map(|(name, region)| RegionDirectory {
            name: name.into(),
            directory: vec![region.cluster.directory_addr()],
        })
        .collect();
    Client::connect_regions(list, hayloft_proto::Credential::none())
        .await
        .unwrap()
        .with_failover(Failover::default())
}

fn region_of(blob_id: &str) -> u8 {
    blob_id.parse::<BlobId>().unwrap().volume().region().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_every_attempt_fails_in_the_first_region_is_made_in_the_next() {
    let mut a = region("a", 0, ByteSize::gib(1)).await;
    let b = region("b", 1, ByteSize::gib(1)).await;
    let client = both(&a, &b).await;
    let data = content(1, 10_000);
    let first = client
        .upload(data.clone(), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!((first.region.as_str(), region_of(&first.blob_id)), ("a", 0));
    // a's directory answers, its only volume server is gone: every
    // attempt there fails (ids on a dead server, or none at all). Stopped,
    // not aborted: an aborted server's open connections would still serve.
    a.cluster.stop_volume(0).await.unwrap();
    let moved = client
        .upload(data.clone(), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!((moved.region.as_str(), region_of(&moved.blob_id)), ("b", 1));
    assert_eq!(client.download(&moved.blob_id).await.unwrap().1, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_not_failed_over_and_a_blob_no_region_has_is_not_found() {
    // a takes uploads of up to 4 KiB, b of anything.
    let a = region("a", 0, ByteSize::kib(4)).await;
    let b = region("b", 1, ByteSize::gib(1)).await;
    let client = both(&a, &b).await;
    let big = client
        .upload(content(2, 8_000), &UploadOptions::default())
        .await
        .unwrap_err();
    // a's refusal is the answer: the blob is not uploaded to b instead.
    assert_eq!(big.code(), Some(Code::OutOfRange), "{big}");
    assert!(!matches!(big, Error::Regions(_)), "{big:?}");

    let small = client
        .upload(content(3, 1_000), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(small.region, "a");
    // The same id with another cookie: a has no such blob, b does not
    // know the volume; both answered, so NOT_FOUND.
    let blob: BlobId = small.blob_id.parse().unwrap();
    let cookie = small.blob_id.len() - 8;
    let wrong = format!(
        "{}{:08x}",
        &small.blob_id[..cookie],
        u32::from_str_radix(&small.blob_id[cookie..], 16).unwrap() ^ 1
    );
    assert_eq!(wrong.parse::<BlobId>().unwrap().volume(), blob.volume());
    let missing = client.download(&wrong).await.unwrap_err();
    let text = missing.to_string();
    assert_eq!(missing.code(), Some(Code::NotFound), "{text}");
    assert!(
        text.contains("region a (answered)") && text.contains("region b (answered)"),
        "{text}"
    );
    assert_eq!(
        client.download(&small.blob_id).await.unwrap().1,
        content(3, 1_000)
    );
}
