//! Which region a volume id belongs to: the id layout that lets every
//! region of a deployment allocate volume ids on its own, without two
//! regions ever handing out the same id, and lets any region route any id.
//!
//! A volume id is a `u32`:
//!
//! | bits  | what |
//! |-------|------|
//! | 31-24 | the region number (0-255) of the region whose directory allocated it |
//! | 23-0  | the volume's number within its region (1 to 16,777,215 in region 0, 0 to 16,777,215 elsewhere) |
//!
//! Region 0 (the `default` region) allocates `1..=0x00FF_FFFF`: exactly the
//! ids a single-region cluster has always allocated (from 1 up), so an
//! existing cluster keeps its ids when it becomes region 0. Volume id 0
//! is never used (it is the id of no volume). A blob id carries its volume
//! id, so a blob id tells which region created it.

use std::ops::RangeInclusive;

use crate::VolumeId;

/// How many of a volume id's high bits hold its region number.
pub const REGION_BITS: u32 = 8;

/// How many of a volume id's low bits number it within its region.
pub const REGION_VOLUME_BITS: u32 = 32 - REGION_BITS;

/// A region's number: the high bits of every volume id it allocates.
/// Configured per region (`[regions.<name>] number`), 0 for `default`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionNumber(pub u8);

impl RegionNumber {
    /// The region every single-region cluster is: number 0.
    pub const DEFAULT: RegionNumber = RegionNumber(0);

    /// The volume ids this region allocates, first to last.
    pub fn volume_ids(self) -> RangeInclusive<u32> {
        let base = u32::from(self.0) << REGION_VOLUME_BITS;
        let last = base | ((1 << REGION_VOLUME_BITS) - 1);
        // Volume id 0 is no volume: region 0 starts at 1.
        base.max(1)..=last
    }

    /// The volume id this region hands out when the group's counter is at
    /// `next`: `next` if it lies in the region's range, the range's first
    /// id if `next` is below it; `None` once the range is used up (or
    /// `next` is past it: ids a region with a higher number allocates).
    pub fn allocate(self, next: u32) -> Option<VolumeId> {
        let range = self.volume_ids();
        let id = next.max(*range.start());
        range.contains(&id).then_some(VolumeId(id))
    }
}

impl std::fmt::Display for RegionNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl VolumeId {
    /// The number of the region whose directory allocated this volume id.
    pub fn region(self) -> RegionNumber {
        // The shift leaves REGION_BITS (8) bits: the cast keeps them all.
        RegionNumber((self.0 >> REGION_VOLUME_BITS) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn region_zero_allocates_what_a_single_region_cluster_always_did() {
        let zero = RegionNumber::DEFAULT;
        assert_eq!(zero.volume_ids(), 1..=0x00FF_FFFF);
        // A fresh group (counter at 1) and one that allocated 41 volumes.
        assert_eq!(zero.allocate(1), Some(VolumeId(1)));
        assert_eq!(zero.allocate(42), Some(VolumeId(42)));
        assert_eq!(VolumeId(42).region(), zero);
        assert_eq!(zero.allocate(0x0100_0000), None);
    }

    #[test]
    fn another_region_starts_at_its_base_and_stops_at_its_end() {
        let three = RegionNumber(3);
        assert_eq!(three.volume_ids(), 0x0300_0000..=0x03FF_FFFF);
        assert_eq!(three.allocate(1), Some(VolumeId(0x0300_0000)));
        assert_eq!(three.allocate(0x0300_0005), Some(VolumeId(0x0300_0005)));
        assert_eq!(three.allocate(0x03FF_FFFF), Some(VolumeId(0x03FF_FFFF)));
        assert_eq!(three.allocate(0x0400_0000), None);
        assert_eq!(VolumeId(0x03AB_CDEF).region(), three);
        assert_eq!(RegionNumber(255).volume_ids(), 0xFF00_0000..=u32::MAX);
        assert_eq!(
            RegionNumber(255).allocate(u32::MAX),
            Some(VolumeId(u32::MAX))
        );
    }

    proptest! {
        /// Two regions with different numbers, each allocating from its
        /// own counter as its directory does (the id taken, then the
        /// counter one past it), never hand out the same id, and every id
        /// names the region that allocated it.
        #[test]
        fn two_regions_never_hand_out_the_same_id(
            a in any::<u8>(),
            b in any::<u8>(),
            start_a in any::<u32>(),
            start_b in any::<u32>(),
            count in 1usize..64,
        ) {
            prop_assume!(a != b);
            let mut taken = std::collections::HashMap::new();
            for (region, start) in [(RegionNumber(a), start_a), (RegionNumber(b), start_b)] {
                let mut next = start;
                for _ in 0..count {
                    let Some(id) = region.allocate(next) else { break };
                    prop_assert_eq!(id.region(), region);
                    prop_assert_ne!(id.0, 0);
                    let before = taken.insert(id, region);
                    prop_assert_eq!(before, None, "id {} handed out twice", id);
                    next = match id.0.checked_add(1) {
                        Some(next) => next,
                        None => break,
                    };
                }
            }
        }
    }
}
