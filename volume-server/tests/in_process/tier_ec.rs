//! `hayloft tier ec` in process (`hayloft::erasure::encode_volumes`) on
//! three servers with two copies of every volume: a writable volume is
//! planned by a dry run (nothing changes), then sealed on both copies and
//! encoded with the code of its collection; `status` (and `--json`) show
//! the layout, the holders and the effective replication factor; every blob
//! reads back; a volume that fails does not stop the others. `SealVolume`
//! alone: every copy sealed and reporting it, writes refused, a second seal
//! a no-op.

use std::collections::BTreeSet;

use bytes::Bytes;
use bytesize::ByteSize;
use futures::stream;
use hayloft::cluster::Cluster;
use hayloft::erasure::{EcArgs, encode_volumes};
use hayloft_proto::directory_client::DirectoryClient;
use hayloft_proto::{SealVolumeRequest, VolumeState};
use tonic::Code;

use crate::support::*;

fn args(volumes: Vec<u32>, dry_run: bool) -> EcArgs {
    EcArgs {
        volumes,
        // The collection's code (`[collections.default] ec_code`).
        code: None,
        max_block: Some(ByteSize::kib(64)),
        rate: None,
        dry_run,
    }
}

/// Writes `data` as `id` through the copy that orders its writes (the
/// others refuse it), which forwards it to the other copies.
async fn write_blob(
    copies: &[hayloft_proto::ServerLocation],
    id: &str,
    data: &[u8],
) -> Result<(), tonic::Status> {
    let blob = id.parse::<hayloft_storage::BlobId>().unwrap();
    let primary = hayloft_proto::primary_index(blob.needle.0, copies).unwrap();
    volume_client(&copies[primary].grpc_addr)
        .await
        .write(stream::iter(write_messages(
            header(id, data.len() as u64),
            data,
        )))
        .await
        .map(drop)
}

fn volume_record(status: &hayloft_proto::StatusResponse, id: u32) -> hayloft_proto::VolumeRecord {
    status
        .volumes
        .iter()
        .find(|v| v.status.as_ref().is_some_and(|s| s.volume_id == id))
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_ec_seals_a_writable_volume_encodes_it_and_status_shows_the_layout() {
    let started = start(
        Cluster::builder()
            .volume_servers(3)
            .replication(2)
            .directory(|config| {
                // The default code needs 14 servers: the collection's is used.
                config
                    .collections
                    .entry("default".into())
                    .or_default()
                    .ec_code = Some("2+1".into());
            })
            .volume(|_, config| config.max_volume_size = ByteSize::mib(4)),
    )
    .await;
    let cluster = &started.cluster;
    let directories = hayloft_proto::Directories::new(&cluster.directory_addr()).unwrap();

    // Blobs in one writable volume, through its primary (forwarded to the
    // other copy); one kept for after the dry run.
    let (ids, locations) = assign(cluster, 7).await;
    assert_eq!(locations.len(), 2);
    let mut blobs: Vec<(String, Bytes)> = Vec::new();
    for (i, id) in ids[..6].iter().enumerate() {
        let data = content(100 + i as u64, 70_000 + i * 9_001);
        write_blob(&locations, id, &data).await.unwrap();
        blobs.push((id.clone(), data));
    }
    let volume = record(&started.client.status().await.unwrap(), &blobs[0].0)
        .status
        .as_ref()
        .unwrap()
        .volume_id;
    let before = volume_record(&started.client.status().await.unwrap(), volume);
    assert_eq!(before.state, VolumeState::Writable as i32);

    // A dry run: the plan (the collection's 2+1, a word that the volume is
    // writable), and nothing changes: still writable, no layout.
    let outcomes = encode_volumes(&directories, &args(vec![volume], true)).await;
    let planned = outcomes[0].1.as_ref().unwrap();
    assert_eq!(planned.plan.code, "2+1");
    assert!(planned.sealed.is_none() && planned.layout.is_none());
    let holders: BTreeSet<String> = planned
        .plan
        .holders
        .iter()
        .map(|h| h.server_id.clone())
        .collect();
    assert_eq!(holders.len(), 3, "{:?}", planned.plan);
    assert!(
        planned
            .plan
            .warnings
            .iter()
            .any(|w| w.contains("is writable")),
        "{:?}",
        planned.plan.warnings
    );
    let after_dry_run = volume_record(&started.client.status().await.unwrap(), volume);
    assert_eq!(after_dry_run.state, VolumeState::Writable as i32);
    assert!(after_dry_run.erasure.is_none());
    assert!(
        after_dry_run
            .replicas
            .iter()
            .all(|r| r.status.as_ref().is_some_and(|s| !s.sealed))
    );
    // A write still goes in.
    let data = content(200, 50_000);
    write_blob(&locations, &ids[6], &data).await.unwrap();
    blobs.push((ids[6].clone(), data));

    // For real, after a volume that does not exist: that one fails, this
    // one is sealed on both copies, then encoded.
    let outcomes = encode_volumes(&directories, &args(vec![4_000_000, volume], false)).await;
    let missing = outcomes[0].1.as_ref().unwrap_err();
    let status = missing.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::NotFound, "{missing:#}");
    let encoded = outcomes[1].1.as_ref().unwrap();
    let sealed = encoded.sealed.as_ref().unwrap();
    let copies: BTreeSet<String> = locations.iter().map(|l| l.server_id.clone()).collect();
    assert_eq!(
        sealed.sealed.iter().cloned().collect::<BTreeSet<_>>(),
        copies
    );
    assert!(sealed.left.is_empty());
    let layout = encoded.layout.as_ref().unwrap();
    assert_eq!(layout.code, "2+1");
    assert_eq!(layout.holders.len(), 3);
    assert_eq!(
        encoded.removed.iter().cloned().collect::<BTreeSet<_>>(),
        copies
    );

    // Status: the layout, its holders, the factor.
    let status = started.client.status().await.unwrap();
    let record = volume_record(&status, volume);
    assert_eq!(hayloft::erasure::layout_text(&record), "EC 2+1");
    assert_eq!(hayloft::erasure::holders(&record).unwrap(), layout.holders);
    assert_eq!(record.logical_bytes, layout.data_len);
    assert!(record.stored_bytes >= layout.data_len * 3 / 2);
    assert_eq!(status.erasure_logical_bytes, layout.data_len);
    let json = hayloft::commands::status_json(&status);
    let shown = json["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == volume)
        .unwrap();
    assert_eq!(shown["layout"]["kind"], "erasure");
    assert_eq!(shown["layout"]["code"], "2+1");
    assert_eq!(shown["layout"]["data_len"], layout.data_len);
    assert_eq!(
        shown["layout"]["holders"],
        serde_json::json!(layout.holders)
    );
    // Keys scripts rely on are still there.
    for key in ["id", "state", "health", "replicas", "needles", "file_bytes"] {
        assert!(shown.get(key).is_some(), "{key} missing: {shown}");
    }
    let ec_factor = json["replication_factor"]["erasure"]["factor"]
        .as_f64()
        .unwrap();
    assert!((1.5..2.0).contains(&ec_factor), "{json}");
    // Every other volume has two copies: the whole cluster is between.
    let overall = json["replication_factor"]["factor"].as_f64().unwrap();
    assert!(overall > ec_factor && overall <= 2.0, "{json}");
    let writable = status
        .volumes
        .iter()
        .find(|v| v.erasure.is_none() && v.stored_bytes > 0)
        .unwrap();
    assert_eq!(hayloft::erasure::layout_text(writable), "2 copies");
    assert_eq!(
        hayloft::erasure::layout_json(writable),
        serde_json::json!({"kind": "replicated", "copies": 2})
    );

    // Every blob reads back from the shards.
    for (id, data) in &blobs {
        let (_, read) = started.client.download(id).await.unwrap();
        assert_eq!(&read[..], &data[..], "{id}");
    }

    // Sealing it again: nothing to do.
    let mut directory = DirectoryClient::connect(format!("http://{}", cluster.directory_addr()))
        .await
        .unwrap();
    let seal = |volume_id: u32| SealVolumeRequest { volume_id };
    let again = directory
        .seal_volume(seal(volume))
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_sealed, "{again:?}");
    let unknown = directory.seal_volume(seal(4_000_000)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // `SealVolume` alone on another writable volume: both copies sealed and
    // reporting it, and an id assigned before the seal is refused after it.
    let (ids, locations) = assign(cluster, 3).await;
    let other = ids[0]
        .parse::<hayloft_storage::BlobId>()
        .unwrap()
        .volume()
        .0;
    assert_ne!(other, volume);
    write_blob(&locations, &ids[0], &content(400, 20_000))
        .await
        .unwrap();
    let sealed = directory
        .seal_volume(seal(other))
        .await
        .unwrap()
        .into_inner();
    assert!(!sealed.already_sealed, "{sealed:?}");
    assert_eq!(
        sealed.sealed.iter().cloned().collect::<BTreeSet<_>>(),
        locations.iter().map(|l| l.server_id.clone()).collect()
    );
    let record = volume_record(&started.client.status().await.unwrap(), other);
    assert_eq!(record.state, VolumeState::Sealed as i32);
    assert_eq!(record.replicas.len(), 2);
    for replica in &record.replicas {
        let status = replica.status.as_ref().unwrap();
        assert!(status.sealed && status.sealed_at > 0, "{replica:?}");
    }
    let refused = write_blob(&locations, &ids[1], &content(401, 20_000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("sealed"), "{refused:?}");
    let again = directory
        .seal_volume(seal(other))
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_sealed, "{again:?}");
}
