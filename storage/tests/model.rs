//! Model-based test: random puts, deletes, reads, reopens and torn tails
//! against a `HashMap` of what must be readable.

#![allow(clippy::unwrap_used)] // test helpers may panic on setup failures

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use hayloft_storage::format::encode_needle;
use hayloft_storage::volume::volume_paths;
use hayloft_storage::{
    CompactOptions, Cookie, Durability, NeedleId, NeedleMeta, NeedleWrite, Tier, Volume,
    VolumeConfig, VolumeId,
};
use proptest::prelude::*;

const VID: VolumeId = VolumeId(3);

#[derive(Debug, Clone)]
enum Op {
    Put {
        id: u64,
        len: usize,
        seed: u8,
    },
    Delete {
        id: u64,
    },
    Read {
        id: u64,
    },
    Reopen,
    /// Append a prefix of a record (a write torn by a crash), then reopen.
    TornRecord {
        id: u64,
        keep: usize,
    },
    /// Append random bytes (a torn write of unknown content), then reopen.
    TornGarbage {
        bytes: Vec<u8>,
    },
    /// Compact the volume.
    Compact,
}

fn arb_op() -> impl Strategy<Value = Op> {
    // Ids mostly dense with a few far-off ones, as the directory allocates.
    let id = prop_oneof![9 => 1000u64..1040, 1 => any::<u64>()];
    prop_oneof![
        8 => (id.clone(), 0usize..3000, any::<u8>()).prop_map(|(id, len, seed)| Op::Put { id, len, seed }),
        3 => id.clone().prop_map(|id| Op::Delete { id }),
        4 => id.clone().prop_map(|id| Op::Read { id }),
        1 => Just(Op::Reopen),
        1 => (id, 0usize..200).prop_map(|(id, keep)| Op::TornRecord { id, keep }),
        1 => proptest::collection::vec(any::<u8>(), 1..100).prop_map(|bytes| Op::TornGarbage { bytes }),
        2 => Just(Op::Compact),
    ]
}

fn cookie(id: u64) -> Cookie {
    Cookie((id as u32).rotate_left(7) ^ 0x5eed)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect()
}

fn config() -> VolumeConfig {
    VolumeConfig {
        max_size: 256 << 20,
        durability: Durability::Always,
    }
}

fn append_to_data_file(dir: &Path, bytes: &[u8]) {
    let (dat, _, _) = volume_paths(dir, VID);
    let mut file = std::fs::OpenOptions::new().append(true).open(dat).unwrap();
    file.write_all(bytes).unwrap();
}

fn check_all(volume: &Volume, model: &HashMap<u64, Vec<u8>>) -> Result<(), TestCaseError> {
    prop_assert_eq!(volume.stats().needles as usize, model.len());
    for (id, expected) in model {
        let needle = volume.read_verified(NeedleId(*id), cookie(*id));
        prop_assert!(
            needle.is_ok(),
            "needle {} unreadable: {:?}",
            id,
            needle.err()
        );
        prop_assert_eq!(&needle.unwrap().data[..], &expected[..]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn volume_matches_model(ops in proptest::collection::vec(arb_op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = Volume::create(dir.path(), VID, Tier::Hot, "", config()).unwrap();
        let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
        // Deleted ids: never written again (the volume refuses them).
        let mut deleted = std::collections::HashSet::new();
        for op in ops {
            match op {
                Op::Put { id, len, seed } => {
                    let bytes = data(len, seed);
                    let written = volume.write(&NeedleWrite {
                        id: NeedleId(id),
                        cookie: cookie(id),
                        data: &bytes,
                        meta: NeedleMeta::default(),
                    });
                    if deleted.contains(&id) {
                        let refused = matches!(written, Err(hayloft_storage::Error::NeedleDeleted { .. }));
                        prop_assert!(refused, "a deleted id was written again");
                    } else if let Some(stored) = model.get(&id) {
                        // Written once: the same bytes again are an exact
                        // retry, other bytes are refused.
                        if *stored == bytes {
                            written.unwrap();
                        } else {
                            let refused = matches!(written, Err(hayloft_storage::Error::NeedleExists { .. }));
                            prop_assert!(refused, "a live id was written again with other bytes: {:?}", written);
                        }
                    } else {
                        written.unwrap();
                        model.insert(id, bytes);
                    }
                }
                Op::Delete { id } => {
                    let result = volume.delete(NeedleId(id), cookie(id));
                    prop_assert_eq!(result.is_ok(), model.remove(&id).is_some());
                    if result.is_ok() {
                        deleted.insert(id);
                    }
                }
                Op::Read { id } => {
                    match (volume.read(NeedleId(id), cookie(id)), model.get(&id)) {
                        (Ok(needle), Some(expected)) => prop_assert_eq!(&needle.data[..], &expected[..]),
                        (Err(e), None) => prop_assert!(e.is_not_found()),
                        (got, expected) => prop_assert!(false, "read {}: {:?} vs {:?}", id, got.map(|n| n.data.len()), expected.map(Vec::len)),
                    }
                }
                Op::Reopen => {
                    drop(volume);
                    volume = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap();
                    check_all(&volume, &model)?;
                }
                Op::TornRecord { id, keep } => {
                    drop(volume);
                    let mut record = Vec::new();
                    encode_needle(&mut record, 0, NeedleId(id), cookie(id), &data(300, 9), &NeedleMeta::default()).unwrap();
                    record.truncate(keep.min(record.len() - 1));
                    append_to_data_file(dir.path(), &record);
                    volume = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap();
                    check_all(&volume, &model)?;
                }
                Op::Compact => {
                    let before = volume.stats();
                    let report = volume.compact(&CompactOptions::default()).unwrap();
                    let after = volume.stats();
                    prop_assert_eq!(after.garbage_bytes, 0);
                    prop_assert_eq!(after.live_bytes, before.live_bytes);
                    prop_assert_eq!(report.bytes_after, after.file_bytes);
                    check_all(&volume, &model)?;
                }
                Op::TornGarbage { bytes } => {
                    drop(volume);
                    append_to_data_file(dir.path(), &bytes);
                    volume = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap();
                    check_all(&volume, &model)?;
                }
            }
        }
        drop(volume);
        let volume = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap();
        check_all(&volume, &model)?;
    }
}
