//! The Reed-Solomon codec (`reed-solomon-simd`, chosen by the benchmark in
//! BENCHMARKS.md) behind two calls: the parity of a stripe, and the shards a
//! stripe lost, restored from any `k` others.
//!
//! Slices are the same range of every shard's body; their length is a
//! multiple of [`CODEC_UNIT`] (the codec mixes bytes inside each 64-byte
//! unit, so a range is only decodable on its own when it starts and ends on
//! a unit boundary; callers widen with [`super::Piece::widened`]).

use std::collections::BTreeMap;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::layout::{CODEC_UNIT, Code};

/// Why a stripe could not be encoded or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer than `k` shards of the stripe were given.
    #[error("{have} of the {need} shards needed to rebuild the stripe")]
    TooFewShards {
        /// Distinct shards given.
        have: usize,
        /// The code's `k`.
        need: usize,
    },
    /// Slices of different lengths, an odd length, or a shard outside the
    /// code: a caller bug, reported rather than panicking.
    #[error("bad stripe: {0}")]
    BadStripe(String),
}

fn check_len(len: usize) -> Result<(), CodecError> {
    if len == 0 || !(len as u64).is_multiple_of(CODEC_UNIT) {
        return Err(CodecError::BadStripe(format!(
            "slice length {len} is not a positive multiple of {CODEC_UNIT}"
        )));
    }
    Ok(())
}

/// The `m` parity slices of `k` equal-length data slices.
pub fn parity(code: Code, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, CodecError> {
    let k = usize::from(code.data);
    if data.len() != k {
        return Err(CodecError::BadStripe(format!(
            "{} data slices for a {code} code",
            data.len()
        )));
    }
    let len = data[0].len();
    check_len(len)?;
    let bad = |e: reed_solomon_simd::Error| CodecError::BadStripe(e.to_string());
    let mut encoder = ReedSolomonEncoder::new(k, usize::from(code.parity), len).map_err(bad)?;
    for slice in data {
        encoder.add_original_shard(slice).map_err(bad)?;
    }
    let result = encoder.encode().map_err(bad)?;
    Ok(result.recovery_iter().map(<[u8]>::to_vec).collect())
}

/// Restores the slices of shards `wanted` from `have`, slices of the same
/// range of other shards (at least `k` distinct ones; more are ignored).
/// Returns the wanted slices in the order asked.
pub fn restore(
    code: Code,
    have: &BTreeMap<u8, &[u8]>,
    wanted: &[u8],
) -> Result<Vec<Vec<u8>>, CodecError> {
    let k = usize::from(code.data);
    let shards = code.shards();
    if let Some(bad) = wanted
        .iter()
        .chain(have.keys())
        .find(|&&s| usize::from(s) >= shards)
    {
        return Err(CodecError::BadStripe(format!(
            "shard {bad} of a {code} code"
        )));
    }
    if have.len() < k {
        return Err(CodecError::TooFewShards {
            have: have.len(),
            need: k,
        });
    }
    let len = have.values().next().map_or(0, |s| s.len());
    check_len(len)?;
    if have.values().any(|s| s.len() != len) {
        return Err(CodecError::BadStripe("slices of different lengths".into()));
    }
    let bad = |e: reed_solomon_simd::Error| CodecError::BadStripe(e.to_string());
    // The data slices: given, or decoded from k of the given.
    let mut data: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let missing_data = (0..code.data).any(|s| !have.contains_key(&s));
    if missing_data {
        let mut decoder = ReedSolomonDecoder::new(k, usize::from(code.parity), len).map_err(bad)?;
        for (&shard, slice) in have.iter().take(k) {
            if code.is_data(shard) {
                decoder
                    .add_original_shard(usize::from(shard), slice)
                    .map_err(bad)?;
            } else {
                decoder
                    .add_recovery_shard(usize::from(shard - code.data), slice)
                    .map_err(bad)?;
            }
        }
        let result = decoder.decode().map_err(bad)?;
        for (index, slice) in result.restored_original_iter() {
            data.insert(index as u8, slice.to_vec());
        }
    }
    let slice_of = |shard: u8| -> Option<&[u8]> {
        have.get(&shard)
            .copied()
            .or_else(|| data.get(&shard).map(Vec::as_slice))
    };
    let mut parities: Option<Vec<Vec<u8>>> = None;
    let mut out = Vec::with_capacity(wanted.len());
    for &shard in wanted {
        if let Some(slice) = slice_of(shard) {
            out.push(slice.to_vec());
            continue;
        }
        if code.is_data(shard) {
            // Only the first k given shards were decoded from; a data shard
            // is restored then whenever it was missing.
            return Err(CodecError::BadStripe(format!(
                "data shard {shard} not restored"
            )));
        }
        if parities.is_none() {
            let all: Option<Vec<&[u8]>> = (0..code.data).map(slice_of).collect();
            let all = all.ok_or_else(|| CodecError::BadStripe("data not restored".into()))?;
            parities = Some(parity(code, &all)?);
        }
        let index = usize::from(shard - code.data);
        out.push(
            parities
                .as_ref()
                .map(|p| p[index].clone())
                .unwrap_or_default(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn stripe(code: Code, len: usize, seed: u8) -> Vec<Vec<u8>> {
        let mut shards: Vec<Vec<u8>> = (0..code.data)
            .map(|s| {
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(s.wrapping_mul(7)) ^ seed)
                    .collect()
            })
            .collect();
        let data: Vec<&[u8]> = shards.iter().map(Vec::as_slice).collect();
        let parity = parity(code, &data).unwrap();
        shards.extend(parity);
        shards
    }

    #[test]
    fn too_few_shards_is_a_clear_error() {
        let code = Code::new(4, 2).unwrap();
        let shards = stripe(code, 128, 1);
        let have: BTreeMap<u8, &[u8]> = [
            (0, &shards[0][..]),
            (5, &shards[5][..]),
            (2, &shards[2][..]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            restore(code, &have, &[1]).unwrap_err(),
            CodecError::TooFewShards { have: 3, need: 4 }
        );
    }

    #[test]
    fn a_lost_parity_shard_is_encoded_again() {
        let code = Code::new(3, 2).unwrap();
        let shards = stripe(code, 256, 9);
        let have: BTreeMap<u8, &[u8]> = [1u8, 2, 3]
            .into_iter()
            .map(|s| (s, &shards[usize::from(s)][..]))
            .collect();
        let restored = restore(code, &have, &[4, 0]).unwrap();
        assert_eq!(restored[0], shards[4]);
        assert_eq!(restored[1], shards[0]);
    }

    #[test]
    fn unaligned_slices_are_refused() {
        let code = Code::new(2, 1).unwrap();
        let a = vec![0u8; 100];
        assert!(matches!(
            parity(code, &[&a, &a]),
            Err(CodecError::BadStripe(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Encode, lose any `m` or fewer shards, decode: the original bytes,
        /// also for a sub-range of the stripe cut on codec units.
        #[test]
        fn any_m_lost_shards_come_back(
            k in 1u8..12,
            m in 1u8..5,
            units in 1usize..40,
            lost_seed in any::<u64>(),
            seed in any::<u8>(),
            cut in 0usize..40,
        ) {
            let code = Code::new(k, m).unwrap();
            let len = units * CODEC_UNIT as usize;
            let shards = stripe(code, len, seed);
            let n = code.shards();
            // Choose up to m distinct lost shards from the seed.
            let mut order: Vec<u8> = (0..n as u8).collect();
            let mut s = lost_seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let lost_count = (lost_seed % (u64::from(m) + 1)) as usize;
            let (lost, kept) = order.split_at(lost_count);
            // A sub-range on unit boundaries decodes on its own.
            let from = (cut % units) * CODEC_UNIT as usize;
            let have: BTreeMap<u8, &[u8]> = kept
                .iter()
                .map(|&s| (s, &shards[usize::from(s)][from..]))
                .collect();
            let restored = restore(code, &have, lost).unwrap();
            for (slice, &shard) in restored.iter().zip(lost) {
                prop_assert_eq!(slice, &shards[usize::from(shard)][from..].to_vec());
            }
        }
    }
}
