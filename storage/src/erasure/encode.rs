//! Encoding a sealed data file into shards, one stripe at a time: `k` reads
//! of the data file (zeros past its end), `m` parity slices computed, the
//! `k + m` slices handed to whoever writes them (local shard files, or a
//! stream to the server that holds the shard).
//!
//! Memory is `(k + m)` times [`STEP_LEN`] (14 MiB for RS(10,4)), whatever
//! the volume's size.

use std::fs::File;
use std::path::Path;

use super::codec;
use super::layout::{CHUNK_LEN, Layout};
use super::shard::{BodyDigest, ShardWriter};
use crate::error::{Error, Result};
use crate::file::{Access, open_for, read_to_vec};
use crate::throttle::Throttle;
use crate::types::VolumeId;

/// Bytes of each shard's body produced per stripe step (a multiple of the
/// block length's unit, so a step never crosses a block's end).
pub const STEP_LEN: u64 = 16 * CHUNK_LEN;

/// The same range of every shard's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stripe {
    /// Offset in each shard's body.
    pub offset: u64,
    /// One slice per shard, data shards first.
    pub slices: Vec<Vec<u8>>,
}

/// Reads a sealed data file stripe by stripe and computes the parity.
#[derive(Debug)]
pub struct Encoder {
    layout: Layout,
    data: File,
    path: std::path::PathBuf,
    at: u64,
    digests: Vec<BodyDigest>,
}

impl Encoder {
    /// Starts encoding the data file at `data_path` under `layout` (whose
    /// `data_len` is the length to encode: the sealed file's length).
    pub fn open(data_path: &Path, layout: Layout) -> Result<Encoder> {
        let data = open_for(data_path, Access::Sequential)?;
        let len = data.metadata().map_err(|e| Error::io(data_path, e))?.len();
        if len < layout.data_len {
            return Err(Error::BadFile {
                path: data_path.to_owned(),
                reason: format!("data file is {len} bytes, the layout {}", layout.data_len),
            });
        }
        Ok(Encoder {
            layout,
            data,
            path: data_path.to_owned(),
            at: 0,
            digests: (0..layout.code.shards())
                .map(|_| BodyDigest::default())
                .collect(),
        })
    }

    /// The layout being encoded.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Body bytes of each shard done so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.at, self.layout.body_len())
    }

    /// The next stripe, or `None` when every shard's body is done.
    pub fn next_stripe(&mut self) -> Result<Option<Stripe>> {
        let body_len = self.layout.body_len();
        if self.at >= body_len {
            return Ok(None);
        }
        let block = self.layout.block_len;
        let len = STEP_LEN
            .min(block - self.at % block)
            .min(body_len - self.at);
        let mut slices = Vec::with_capacity(self.layout.code.shards());
        for shard in 0..self.layout.code.data {
            let range = self.layout.data_range(shard, self.at, len);
            let mut slice =
                read_to_vec(&self.data, (range.end - range.start) as usize, range.start)
                    .map_err(|e| Error::io(&self.path, e))?;
            slice.resize(len as usize, 0);
            slices.push(slice);
        }
        let data: Vec<&[u8]> = slices.iter().map(Vec::as_slice).collect();
        let parity = codec::parity(self.layout.code, &data).map_err(|e| Error::BadFile {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        slices.extend(parity);
        for (digest, slice) in self.digests.iter_mut().zip(&slices) {
            digest.update(slice);
        }
        let stripe = Stripe {
            offset: self.at,
            slices,
        };
        self.at += len;
        Ok(Some(stripe))
    }

    /// Every shard's digest, once every stripe was produced.
    pub fn digests(self) -> Vec<u32> {
        self.digests.into_iter().map(|d| d.finish().1).collect()
    }
}

/// Encodes the data file at `data_path` into all `k + m` shard files in
/// `dir`, each fsynced and checked against the encoder's digest, reading
/// through `throttle`. Returns the digests, shard by shard.
pub fn encode_to_dir(
    data_path: &Path,
    volume: VolumeId,
    layout: Layout,
    dir: &Path,
    throttle: &mut Throttle,
) -> Result<Vec<u32>> {
    let mut encoder = Encoder::open(data_path, layout)?;
    let mut writers = (0..layout.code.shards() as u8)
        .map(|shard| ShardWriter::create(dir, volume, shard, layout))
        .collect::<Result<Vec<_>>>()?;
    while let Some(stripe) = encoder.next_stripe()? {
        throttle.block_for(stripe.slices[0].len() as u64 * u64::from(layout.code.data));
        for (writer, slice) in writers.iter_mut().zip(&stripe.slices) {
            writer.append(slice)?;
        }
    }
    let digests = encoder.digests();
    for (writer, digest) in writers.into_iter().zip(&digests) {
        writer.finish(Some(*digest))?;
    }
    Ok(digests)
}
