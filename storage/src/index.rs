//! The in-memory needle index: needle id -> record offset and length, in
//! about 6 bytes a needle.
//!
//! The directory hands out needle ids in dense ranges owned by one volume, so
//! a volume's ids are mostly consecutive. The index keeps those in a plain
//! vector of 32-bit offsets (in 8-byte units) indexed by `id - base`, with 0
//! meaning "absent" (offset 0 is the superblock, so no record lives there).
//! Ids that do not fit the dense window (below its base, or far past its end)
//! go to a hash map, so the index is correct for any 64-bit id and only the
//! memory cost changes.
//!
//! Beside each offset the index keeps the record's length (in 8-byte units,
//! 16 bits: records up to [`MAX_KNOWN_LEN`]), so that a read from disk is one
//! read of the whole record, as in Haystack, rather than one for the header
//! and one for the rest. Longer records are marked "unknown" and their
//! header, which holds the lengths, is read first.

use std::collections::HashMap;

use crate::format::ALIGNMENT;
use crate::types::NeedleId;

/// Slack allowed past the end of the dense window before an id spills to the
/// sparse map: a fixed amount plus half the window, so that holes left by
/// abandoned uploads cost little while the vector stays at least 2/3 full.
const DENSE_FIXED_SLACK: u64 = 4096;

/// The longest record whose length the index keeps (16 bits of 8-byte
/// units: 512 KiB - 8).
pub const MAX_KNOWN_LEN: u64 = u16::MAX as u64 * ALIGNMENT;

/// Needle id -> record offset (and length, when short enough).
#[derive(Debug, Default)]
pub struct NeedleIndex {
    base: u64,
    dense: Vec<u32>,
    /// Record lengths in 8-byte units, beside `dense` (0: unknown). Two
    /// vectors rather than one of pairs: a `(u32, u16)` pads to 8 bytes.
    dense_lens: Vec<u16>,
    sparse: HashMap<u64, (u32, u16)>,
    len: usize,
}

/// A record length as the index keeps it: 8-byte units, 0 if too long.
fn len_units(record_len: u64) -> u16 {
    u16::try_from(record_len / ALIGNMENT).unwrap_or(0)
}

impl NeedleIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index whose dense window is sized for ids `min ..= max` when
    /// they are dense enough (at least half of the range will be used), so a
    /// rebuild in any order stays at about 6 bytes a needle.
    pub fn for_range(min: NeedleId, max: NeedleId, count: usize) -> Self {
        let mut index = NeedleIndex::new();
        if let Some(span) = max.0.checked_sub(min.0)
            && span
                < (count as u64)
                    .saturating_mul(2)
                    .saturating_add(DENSE_FIXED_SLACK)
        {
            index.base = min.0;
            index.dense = vec![0; span as usize + 1];
            index.dense_lens = vec![0; span as usize + 1];
        }
        index
    }

    /// Number of needles in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the index holds no needle.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reserves room for `additional` more dense entries.
    pub fn reserve(&mut self, additional: usize) {
        self.dense.reserve_exact(additional);
        self.dense_lens.reserve_exact(additional);
    }

    /// Releases spare capacity (after a bulk load).
    pub fn shrink_to_fit(&mut self) {
        self.dense.shrink_to_fit();
        self.dense_lens.shrink_to_fit();
        self.sparse.shrink_to_fit();
    }

    /// Record offset of `id`, if present.
    #[inline]
    pub fn get(&self, id: NeedleId) -> Option<u64> {
        if let Some(slot) = self.dense_slot(id)
            && slot != 0
        {
            return Some(slot as u64 * ALIGNMENT);
        }
        // An id may sit in the sparse map even inside the dense window, if it
        // was inserted before the window grew over it.
        if self.sparse.is_empty() {
            return None;
        }
        self.sparse
            .get(&id.0)
            .map(|(slot, _)| *slot as u64 * ALIGNMENT)
    }

    /// Record offset of `id` and the record's length if the index knows it
    /// (records up to [`MAX_KNOWN_LEN`]).
    #[inline]
    pub fn get_record(&self, id: NeedleId) -> Option<(u64, Option<u64>)> {
        let known = |units: u16| (units != 0).then_some(units as u64 * ALIGNMENT);
        if let Some(rel) = id.0.checked_sub(self.base)
            && let Ok(rel) = usize::try_from(rel)
            && let Some(slot) = self.dense.get(rel).copied()
            && slot != 0
        {
            let units = self.dense_lens.get(rel).copied().unwrap_or(0);
            return Some((slot as u64 * ALIGNMENT, known(units)));
        }
        if self.sparse.is_empty() {
            return None;
        }
        self.sparse
            .get(&id.0)
            .map(|(slot, units)| (*slot as u64 * ALIGNMENT, known(*units)))
    }

    fn dense_slot(&self, id: NeedleId) -> Option<u32> {
        let rel = id.0.checked_sub(self.base)?;
        self.dense.get(usize::try_from(rel).ok()?).copied()
    }

    /// Maps `id` to the record at `offset` of `record_len` bytes,
    /// returning the previous offset.
    ///
    /// `offset` must be a non-zero multiple of 8 below 32 GiB
    /// ([`crate::format::MAX_VOLUME_SIZE`]); larger offsets are a caller bug.
    pub fn insert(&mut self, id: NeedleId, offset: u64, record_len: u64) -> Option<u64> {
        debug_assert!(offset > 0 && offset.is_multiple_of(ALIGNMENT));
        let slot = (offset / ALIGNMENT) as u32;
        let units = len_units(record_len);
        // The first id sets the dense window's base (unless `for_range` did).
        if self.dense.is_empty() && self.sparse.is_empty() {
            self.base = id.0;
        }
        let dense_len = self.dense.len() as u64;
        let previous = match id.0.checked_sub(self.base) {
            Some(rel) if rel < dense_len => {
                let previous = std::mem::replace(&mut self.dense[rel as usize], slot);
                self.dense_lens[rel as usize] = units;
                if previous != 0 {
                    previous
                } else {
                    self.sparse.remove(&id.0).map_or(0, |(slot, _)| slot)
                }
            }
            Some(rel) if rel - dense_len < DENSE_FIXED_SLACK + dense_len / 2 => {
                let needed = rel as usize + 1;
                if needed > self.dense.capacity() {
                    // Grow by a quarter, not the doubling `Vec` would do:
                    // the slack stays under a byte a needle while a volume
                    // fills (large blocks are remapped, not copied).
                    let target =
                        needed.max(self.dense.capacity() + self.dense.capacity() / 4 + 1024);
                    self.dense.reserve_exact(target - self.dense.len());
                    self.dense_lens
                        .reserve_exact(target - self.dense_lens.len());
                }
                self.dense.resize(rel as usize, 0);
                self.dense.push(slot);
                self.dense_lens.resize(rel as usize, 0);
                self.dense_lens.push(units);
                self.sparse.remove(&id.0).map_or(0, |(slot, _)| slot)
            }
            _ => self
                .sparse
                .insert(id.0, (slot, units))
                .map_or(0, |(slot, _)| slot),
        };
        if previous == 0 {
            self.len += 1;
            None
        } else {
            Some(previous as u64 * ALIGNMENT)
        }
    }

    /// Removes `id`, returning its offset.
    pub fn remove(&mut self, id: NeedleId) -> Option<u64> {
        let mut previous = 0;
        if let Some(rel) = id.0.checked_sub(self.base)
            && rel < self.dense.len() as u64
        {
            previous = std::mem::replace(&mut self.dense[rel as usize], 0);
            self.dense_lens[rel as usize] = 0;
        }
        if previous == 0 {
            previous = self.sparse.remove(&id.0).map_or(0, |(slot, _)| slot);
        }
        if previous == 0 {
            None
        } else {
            self.len -= 1;
            Some(previous as u64 * ALIGNMENT)
        }
    }

    /// Every (id, offset) in the index, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (NeedleId, u64)> + '_ {
        let dense = self
            .dense
            .iter()
            .enumerate()
            .filter(|(_, slot)| **slot != 0)
            .map(|(rel, slot)| (NeedleId(self.base + rel as u64), *slot as u64 * ALIGNMENT));
        let sparse = self
            .sparse
            .iter()
            .map(|(id, (slot, _))| (NeedleId(*id), *slot as u64 * ALIGNMENT));
        dense.chain(sparse)
    }

    /// Every (id, offset) with `from <= id < to`, in no particular order.
    /// Touches only that part of the dense window.
    pub fn range(
        &self,
        from: NeedleId,
        to: NeedleId,
    ) -> impl Iterator<Item = (NeedleId, u64)> + '_ {
        let end = self.base + self.dense.len() as u64;
        let lo = from.0.clamp(self.base, end);
        let hi = to.0.clamp(lo, end);
        let dense = self.dense[(lo - self.base) as usize..(hi - self.base) as usize]
            .iter()
            .enumerate()
            .filter(|(_, slot)| **slot != 0)
            .map(move |(rel, slot)| (NeedleId(lo + rel as u64), *slot as u64 * ALIGNMENT));
        let sparse = self
            .sparse
            .iter()
            .filter(move |(id, _)| (from.0..to.0).contains(*id))
            .map(|(id, (slot, _))| (NeedleId(*id), *slot as u64 * ALIGNMENT));
        dense.chain(sparse)
    }

    /// Heap bytes held by the index (capacity, not just length).
    pub fn memory_bytes(&self) -> usize {
        // A std HashMap (hashbrown) slot holds the key/value pair plus one
        // control byte; capacity() is the usable part of the buckets.
        let sparse_bucket = std::mem::size_of::<(u64, (u32, u16))>() + 1;
        self.dense.capacity() * std::mem::size_of::<u32>()
            + self.dense_lens.capacity() * std::mem::size_of::<u16>()
            + self.sparse.capacity() * sparse_bucket * 8 / 7
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dense_ids_cost_about_six_bytes() {
        let mut index = NeedleIndex::new();
        let n = 1_000_000u64;
        index.reserve(n as usize);
        for i in 0..n {
            index.insert(NeedleId(5_000_000 + i), (i + 1) * 8, 4176);
        }
        assert_eq!(index.len(), n as usize);
        let per_needle = index.memory_bytes() as f64 / n as f64;
        assert!(per_needle <= 6.5, "{per_needle} bytes per needle");
        assert_eq!(index.get(NeedleId(5_000_000)), Some(8));
        assert_eq!(index.get_record(NeedleId(5_000_000)), Some((8, Some(4176))));
        assert_eq!(index.get(NeedleId(4_999_999)), None);
    }

    #[test]
    fn grown_without_reserve_stays_under_ten_bytes() {
        let mut index = NeedleIndex::new();
        for i in 0..300_000u64 {
            // Every tenth id is skipped, as an abandoned upload would leave it.
            if i % 10 != 3 {
                index.insert(NeedleId(1 << 40 | i), (i + 1) * 8, 65_616);
            }
        }
        let per_needle = index.memory_bytes() as f64 / index.len() as f64;
        assert!(per_needle <= 10.0, "{per_needle} bytes per needle");
    }

    #[test]
    fn lengths_past_sixteen_bits_are_unknown() {
        let mut index = NeedleIndex::new();
        index.insert(NeedleId(7), 64, MAX_KNOWN_LEN);
        index.insert(NeedleId(8), 128, MAX_KNOWN_LEN + 8);
        index.insert(NeedleId(1 << 50), 256, 40);
        assert_eq!(
            index.get_record(NeedleId(7)),
            Some((64, Some(MAX_KNOWN_LEN)))
        );
        assert_eq!(index.get_record(NeedleId(8)), Some((128, None)));
        assert_eq!(index.get_record(NeedleId(1 << 50)), Some((256, Some(40))));
        index.remove(NeedleId(7));
        assert_eq!(index.get_record(NeedleId(7)), None);
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec(
            (any::<bool>(), prop_oneof![0u64..64, any::<u64>(), (1u64 << 63)..(1u64 << 63) + 10_000], 1u64..1000),
            0..400,
        )) {
            let mut index = NeedleIndex::new();
            let mut model = HashMap::new();
            for (insert, id, off) in ops {
                if insert {
                    prop_assert_eq!(index.insert(NeedleId(id), off * 8, off * 16), model.insert(id, off * 8));
                } else {
                    prop_assert_eq!(index.remove(NeedleId(id)), model.remove(&id));
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for (id, off) in &model {
                prop_assert_eq!(index.get(NeedleId(*id)), Some(*off));
                prop_assert_eq!(index.get_record(NeedleId(*id)), Some((*off, Some(*off * 2))));
            }
            let mut listed: Vec<_> = index.iter().map(|(id, off)| (id.0, off)).collect();
            listed.sort_unstable();
            let mut expected: Vec<_> = model.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(listed, expected);
        }
    }
}
