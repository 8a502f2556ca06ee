//! The chunk checksums of format 2: one CRC-32 per 64 KiB of a blob, so that
//! a part of it is verified on the bytes read for it alone. Pure, no I/O.

/// Length of a checksummed chunk of data (the last one may be shorter).
pub const CHUNK_LEN: u64 = 64 << 10;

/// The CRC of each chunk of `data`.
pub fn chunk_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(CHUNK_LEN as usize)
        .map(crc32fast::hash)
        .collect()
}

/// Chunk CRCs of data that arrives in pieces of any length (a streamed write).
#[derive(Debug, Clone, Default)]
pub struct ChunkHasher {
    current: crc32fast::Hasher,
    filled: u64,
    crcs: Vec<u32>,
}

impl ChunkHasher {
    /// Hashes the next bytes of the data.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (CHUNK_LEN - self.filled) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.current.update(now);
            self.filled += now.len() as u64;
            if self.filled == CHUNK_LEN {
                let done = std::mem::take(&mut self.current);
                self.crcs.push(done.finalize());
                self.filled = 0;
            }
            bytes = rest;
        }
    }

    /// The CRCs of every chunk hashed.
    pub fn finish(mut self) -> Vec<u32> {
        if self.filled > 0 {
            self.crcs.push(self.current.finalize());
        }
        self.crcs
    }
}

/// The bytes of data to read so that bytes `start..end` of a blob of
/// `data_len` bytes can be verified: from the start of the chunk holding
/// `start` to the end of the chunk holding `end - 1` (or the data's end).
/// `None` for an empty or out-of-bounds span.
pub fn covering(start: u64, end: u64, data_len: u64) -> Option<(u64, u64)> {
    if start >= end || end > data_len {
        return None;
    }
    let first = start / CHUNK_LEN * CHUNK_LEN;
    let last = end
        .div_ceil(CHUNK_LEN)
        .saturating_mul(CHUNK_LEN)
        .min(data_len);
    Some((first, last))
}

/// Checks `data`, which starts at byte `at` of the blob (a multiple of
/// [`CHUNK_LEN`]) and ends at a chunk's end or the blob's, against the
/// encoded chunk CRCs `crcs` (4 bytes each, for the whole blob). Returns
/// the index of the first chunk that does not match.
pub fn verify(data: &[u8], at: u64, crcs: &[u8]) -> Result<(), u64> {
    let first = at / CHUNK_LEN;
    for (i, chunk) in data.chunks(CHUNK_LEN as usize).enumerate() {
        let index = first + i as u64;
        let pos = index as usize * 4;
        let Some(stored) = crcs.get(pos..pos + 4) else {
            return Err(index);
        };
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(stored);
        if crc32fast::hash(chunk) != u32::from_le_bytes(bytes) {
            return Err(index);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: u64 = CHUNK_LEN;

    #[test]
    fn covering_widens_to_whole_chunks_and_stops_at_the_data() {
        assert_eq!(covering(0, 1, 10), Some((0, 10)));
        assert_eq!(covering(5, 6, 3 * K), Some((0, K)));
        assert_eq!(covering(K, 2 * K, 3 * K), Some((K, 2 * K)));
        assert_eq!(covering(K - 1, K + 1, 3 * K), Some((0, 2 * K)));
        assert_eq!(
            covering(2 * K + 5, 2 * K + 9, 2 * K + 9),
            Some((2 * K, 2 * K + 9))
        );
        // 1 MiB from an unaligned start reads one chunk more.
        assert_eq!(covering(100, 100 + 16 * K, 1024 * K), Some((0, 17 * K)));
        assert_eq!(covering(3, 3, 10), None);
        assert_eq!(covering(4, 3, 10), None);
        assert_eq!(covering(0, 11, 10), None);
    }

    fn encoded(crcs: &[u32]) -> Vec<u8> {
        crcs.iter().flat_map(|c| c.to_le_bytes()).collect()
    }

    proptest! {
        #[test]
        fn streamed_chunk_crcs_match_whole(
            len in 0usize..(3 * K as usize + 100),
            cuts in proptest::collection::vec(1usize..100_000, 0..8),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut hasher = ChunkHasher::default();
            let mut rest = &data[..];
            for cut in cuts {
                let (now, later) = rest.split_at(cut.min(rest.len()));
                hasher.update(now);
                rest = later;
            }
            hasher.update(rest);
            prop_assert_eq!(hasher.finish(), chunk_crcs(&data));
        }

        #[test]
        fn a_flipped_bit_in_a_covered_span_is_found(
            len in 1usize..(3 * K as usize),
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
            bit in any::<prop::sample::Index>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let crcs = encoded(&chunk_crcs(&data));
            let (x, y) = (a.index(len) as u64, b.index(len) as u64);
            let (start, end) = (x.min(y), x.max(y) + 1);
            let (first, last) = covering(start, end, len as u64).unwrap();
            let span = &data[first as usize..last as usize];
            prop_assert!(verify(span, first, &crcs).is_ok());
            let mut bad = span.to_vec();
            let bit = bit.index(bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify(&bad, first, &crcs).is_err());
            // Missing CRCs never pass.
            prop_assert!(verify(span, first, &crcs[..(first / K) as usize * 4]).is_err());
        }
    }
}
