//! Round trips and corruption of every structure of the format.

use super::*;
use proptest::prelude::*;

fn arb_meta() -> impl Strategy<Value = NeedleMeta> {
    (
        "[a-z/+.-]{0,40}",
        "\\PC{0,60}",
        any::<u64>(),
        proptest::option::of(1u64..),
    )
        .prop_map(
            |(content_type, file_name, last_modified, expires_at)| NeedleMeta {
                content_type,
                file_name,
                last_modified,
                expires_at,
            },
        )
}

proptest! {
    #[test]
    fn needle_round_trips(
        id in any::<u64>(),
        cookie in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        meta in arb_meta(),
        version in FORMAT_VERSION_1..=FORMAT_VERSION,
    ) {
        let mut buf = Vec::new();
        let flags = record_flags(version, false);
        let crc = encode_needle(&mut buf, flags, NeedleId(id), Cookie(cookie), &data, &meta).unwrap();
        prop_assert_eq!(buf.len() as u64 % ALIGNMENT, 0);
        let chunked = version >= FORMAT_VERSION;
        prop_assert_eq!(buf.len() as u64, record_len(data.len() as u64, meta.encoded_len(), chunked));
        // The same blob has the same record CRC (ETag) in either format.
        let mut v1 = Vec::new();
        prop_assert_eq!(encode_needle(&mut v1, 0, NeedleId(id), Cookie(cookie), &data, &meta).unwrap(), crc);
        let decoded = decode_needle(&buf).unwrap();
        prop_assert!(decoded.chunks_match());
        let header = decoded.header;
        if chunked {
            let tail = decode_tail(&header, &buf[header.metadata_offset()..header.tail_end()]).unwrap();
            prop_assert_eq!(&tail.meta, &meta);
            prop_assert_eq!(tail.checksum, crc);
            prop_assert_eq!(tail.chunk_crcs.len() as u64, 4 * header.chunk_count());
        }
        prop_assert_eq!(decoded.header.needle_id, NeedleId(id));
        prop_assert_eq!(decoded.header.cookie, Cookie(cookie));
        prop_assert_eq!(decoded.data, &data[..]);
        prop_assert_eq!(&decoded.meta, &meta);
        prop_assert_eq!(decoded.checksum, crc);
        prop_assert!(!decoded.header.is_tombstone());
    }

    #[test]
    fn any_flipped_bit_is_detected(
        data in proptest::collection::vec(any::<u8>(), 1..500),
        bit in any::<prop::sample::Index>(),
        version in FORMAT_VERSION_1..=FORMAT_VERSION,
    ) {
        let mut buf = Vec::new();
        let meta = NeedleMeta { content_type: "image/png".into(), ..Default::default() };
        encode_needle(&mut buf, record_flags(version, false), NeedleId(7), Cookie(9), &data, &meta).unwrap();
        let header = NeedleHeader::decode(&buf).unwrap();
        // Flip a bit anywhere in the checksummed bytes or the checksums
        // themselves (format 2: the chunk CRCs and trailer CRC too).
        let covered = header.tail_end();
        let bit = bit.index(covered * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_needle(&buf).is_err());
        // A HEAD reads the header and the tail alone: a bit flipped in
        // the tail fails the trailer CRC.
        if version >= FORMAT_VERSION && bit / 8 >= header.metadata_offset() {
            let tail = &buf[header.metadata_offset()..header.tail_end()];
            prop_assert!(decode_tail(&header, tail).is_err());
        }
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_needle(&bytes);
        let _ = Superblock::decode(&bytes);
        let _ = IndexHeader::decode(&bytes);
        let mut with_magic = NEEDLE_MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = decode_needle(&with_magic);
    }

    #[test]
    fn index_entry_round_trips(id in any::<u64>(), off in 0u32.., len in 1u32..(1 << 31), tomb in any::<bool>()) {
        let entry = IndexEntry {
            needle_id: NeedleId(id),
            offset: off as u64 * ALIGNMENT,
            record_len: len as u64 * ALIGNMENT,
            tombstone: tomb,
        };
        let mut buf = Vec::new();
        entry.encode(&mut buf);
        prop_assert_eq!(buf.len(), INDEX_ENTRY_LEN);
        prop_assert_eq!(IndexEntry::decode(&buf), entry);
    }
}

#[test]
fn superblock_round_trips_and_detects_damage() {
    let sb = Superblock {
        volume_id: VolumeId(42),
        created_at: 1_700_000_000,
        version: FORMAT_VERSION,
    };
    let mut bytes = sb.encode();
    assert_eq!(Superblock::decode(&bytes), Ok(sb));
    // Version 1 volumes still open; an unknown version does not.
    for (version, ok) in [(FORMAT_VERSION_1, true), (FORMAT_VERSION + 1, false)] {
        let other = Superblock { version, ..sb };
        assert_eq!(Superblock::decode(&other.encode()).is_ok(), ok, "{version}");
    }
    bytes[9] ^= 0x10;
    assert_eq!(Superblock::decode(&bytes), Err(FormatError::BadChecksum));
    assert_eq!(
        Superblock::decode(&bytes[..10]),
        Err(FormatError::Truncated)
    );
}

#[test]
fn a_large_record_has_a_crc_per_chunk() {
    let data: Vec<u8> = (0..(2 * CHUNK_LEN as usize + 5)).map(|i| i as u8).collect();
    let mut buf = Vec::new();
    let flags = record_flags(FORMAT_VERSION, false);
    encode_needle(
        &mut buf,
        flags,
        NeedleId(1),
        Cookie(2),
        &data,
        &NeedleMeta::default(),
    )
    .unwrap();
    let decoded = decode_needle(&buf).unwrap();
    assert_eq!(decoded.header.chunk_count(), 3);
    assert_eq!(decoded.chunk_crcs.len(), 12);
    assert!(decoded.chunks_match());
    // A flipped data byte fails the record CRC and its chunk's CRC.
    buf[NEEDLE_HEADER_LEN + CHUNK_LEN as usize + 7] ^= 1;
    assert!(decode_needle(&buf).is_err());
    let header = NeedleHeader::decode(&buf).unwrap();
    let tail = decode_tail(&header, &buf[header.metadata_offset()..header.tail_end()]).unwrap();
    let second = &buf[NEEDLE_HEADER_LEN + CHUNK_LEN as usize..][..CHUNK_LEN as usize];
    assert_eq!(chunks::verify(second, CHUNK_LEN, tail.chunk_crcs), Err(1));
    let first = &buf[NEEDLE_HEADER_LEN..][..CHUNK_LEN as usize];
    assert_eq!(chunks::verify(first, 0, tail.chunk_crcs), Ok(()));
}

#[test]
fn truncated_record_is_reported_as_truncated() {
    let mut buf = Vec::new();
    encode_needle(
        &mut buf,
        FLAG_CHUNK_CRCS,
        NeedleId(1),
        Cookie(2),
        b"hello world",
        &NeedleMeta::default(),
    )
    .unwrap();
    for cut in 0..buf.len() {
        // Records are written whole, padding included: any prefix is torn.
        assert!(decode_needle(&buf[..cut]).is_err(), "cut at {cut}");
    }
}
