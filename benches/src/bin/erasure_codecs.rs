//! Reed-Solomon codecs for the erasure-coded warm tier (issue 33), measured
//! side by side before one is chosen: `reed-solomon-simd` (Leopard-RS,
//! GF(2^16), SIMD chosen at run time) and `reed-solomon-erasure` (GF(2^8),
//! pure Rust as built here).
//!
//! For RS(k, m) (default 10+4) and each shard size it measures, best of
//! `--rounds`:
//! - encode: k data shards in, m parity shards out (GiB/s of data);
//! - rebuild: m data shards lost, rebuilt from the k left (GiB/s of the
//!   stripe's data);
//! - a needle's range: the bytes `offset..offset+len` of one lost shard
//!   rebuilt from the same range of k others (what a degraded read does),
//!   checked equal to the original: the codec must allow it, and for which
//!   alignment.
//!
//! `cargo run --bin erasure-codecs -- [--k 10] [--m 4] [--rounds 5]`

use std::time::Duration;

use hayloft_benches::best_of;
use rand::RngCore;

struct Args {
    k: usize,
    m: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut args = Args {
        k: 10,
        m: 4,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--k", Some(v)) => args.k = v,
            ("--m", Some(v)) => args.m = v,
            ("--rounds", Some(v)) => args.rounds = v,
            _ => {
                eprintln!("usage: erasure-codecs [--k 10] [--m 4] [--rounds 5]");
                std::process::exit(2);
            }
        }
    }
    args
}

fn gib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / took.as_secs_f64().max(1e-9)
}

fn shards(k: usize, size: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rng();
    (0..k)
        .map(|_| {
            let mut shard = vec![0u8; size];
            rng.fill_bytes(&mut shard);
            shard
        })
        .collect()
}

/// reed-solomon-simd: (encode, rebuild, range rebuilt equal).
fn simd(
    args: &Args,
    data: &[Vec<u8>],
    range: std::ops::Range<usize>,
) -> (Duration, Duration, bool) {
    let (k, m) = (args.k, args.m);
    let encode = best_of(args.rounds, || {
        reed_solomon_simd::encode(k, m, data).expect("encode");
    });
    let parity = reed_solomon_simd::encode(k, m, data).expect("encode");
    // The first m data shards are lost; the rest and every parity shard
    // rebuild them.
    let rebuild = best_of(args.rounds, || {
        let kept = data.iter().enumerate().skip(m);
        let restored =
            reed_solomon_simd::decode(k, m, kept, parity.iter().enumerate()).expect("decode");
        assert_eq!(restored.len(), m);
    });
    let slice = |s: &Vec<u8>| s[range.clone()].to_vec();
    let kept = data.iter().enumerate().skip(m).map(|(i, s)| (i, slice(s)));
    let recovery = parity.iter().enumerate().map(|(i, s)| (i, slice(s)));
    let equal = reed_solomon_simd::decode(k, m, kept, recovery)
        .ok()
        .and_then(|restored| restored.get(&0).cloned())
        .is_some_and(|restored| restored == data[0][range.clone()]);
    (encode, rebuild, equal)
}

/// reed-solomon-erasure: (encode, rebuild, range rebuilt equal).
fn erasure(
    args: &Args,
    data: &[Vec<u8>],
    range: std::ops::Range<usize>,
) -> (Duration, Duration, bool) {
    use reed_solomon_erasure::galois_8::ReedSolomon;
    let (k, m) = (args.k, args.m);
    let codec = ReedSolomon::new(k, m).expect("codec");
    let size = data[0].len();
    let stripe = |data: &[Vec<u8>]| {
        let mut all: Vec<Vec<u8>> = data.to_vec();
        all.extend((0..m).map(|_| vec![0u8; size]));
        all
    };
    let mut all = stripe(data);
    let encode = best_of(args.rounds, || {
        codec.encode(&mut all).expect("encode");
    });
    let rebuild = best_of(args.rounds, || {
        let mut lost: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
        for shard in lost.iter_mut().take(m) {
            *shard = None;
        }
        codec.reconstruct_data(&mut lost).expect("reconstruct");
    });
    let mut ranged: Vec<Option<Vec<u8>>> = all
        .iter()
        .map(|s| Some(s[range.clone()].to_vec()))
        .collect();
    for shard in ranged.iter_mut().take(m) {
        *shard = None;
    }
    let equal = codec.reconstruct_data(&mut ranged).is_ok()
        && ranged[0].as_deref() == Some(&data[0][range.clone()]);
    (encode, rebuild, equal)
}

fn main() {
    let args = args();
    println!(
        "RS({}, {}), best of {} rounds; GiB/s of data (k shards)",
        args.k, args.m, args.rounds
    );
    println!(
        "| shard | codec | encode GiB/s | rebuild {} lost GiB/s | a needle's range rebuilt alone |",
        args.m
    );
    println!("|---:|---|---:|---:|---|");
    for size in [64 << 10, 1 << 20, 16 << 20] {
        let data = shards(args.k, size);
        let bytes = args.k * size;
        // A needle's range inside the shard: not aligned to anything.
        let range = 4_097..4_097 + 10_001;
        for (name, (encode, rebuild, equal)) in [
            ("reed-solomon-simd", simd(&args, &data, range.clone())),
            ("reed-solomon-erasure", erasure(&args, &data, range.clone())),
        ] {
            println!(
                "| {} KiB | {name} | {:.2} | {:.2} | {} |",
                size >> 10,
                gib_per_s(bytes, encode),
                gib_per_s(bytes, rebuild),
                if equal {
                    "same bytes"
                } else {
                    "no (needs an aligned range)"
                }
            );
        }
    }
    // The alignment reed-solomon-simd needs for a range on its own.
    let data = shards(args.k, 1 << 20);
    for align in [2usize, 64, 128] {
        let range = align * 3..align * 3 + align * 100;
        let (_, _, equal) = simd(&Args { rounds: 1, ..args }, &data, range);
        println!("reed-solomon-simd, range aligned to {align} bytes rebuilt alone: {equal}");
    }
}
