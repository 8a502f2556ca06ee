//! The streaming encoder of the erasure-coded warm tier (issue 33) over a
//! real data file: how fast one core turns a sealed volume into `k + m`
//! shards, against reading the same file (the encoder's own ceiling: it
//! reads every byte once), in one run.
//!
//! Phases, each timed, best of `--rounds`:
//! - **read**: the file read front to back in 1 MiB reads (the bytes the
//!   encoder reads);
//! - **encode**: `Encoder::next_stripe` over the whole file: the reads, the
//!   parity (reed-solomon-simd), a CRC-32 of every 64 KiB chunk of every
//!   shard and the shard digests; nothing written;
//! - **encode + write**: `encode_to_dir`: the same, every shard written to
//!   a file beside the data and fsynced (what a holder-local encode costs);
//! - **write alone**: as many bytes as the shards take, written and fsynced
//!   with no encoding (the disk's share of the phase above).
//!
//! The data file is written once and read from the page cache in every
//! phase (it is smaller than memory): the figures are CPU figures, not
//! disk figures. One thread: GiB/s per core.
//!
//! `HAYLOFT_BENCH_DIR=/disk/under/test cargo run --bin ec-encode -- [--mib 1024]
//! [--code 10+4] [--rounds 3]`

use std::io::{Read, Write};
use std::time::Duration;

use hayloft_benches::best_of;
use hayloft_storage::erasure::{Code, Encoder, Layout, MAX_BLOCK_LEN, encode_to_dir};
use hayloft_storage::{Throttle, VolumeId};
use rand::RngCore;

struct Args {
    mib: u64,
    code: Code,
    rounds: usize,
}

fn args() -> Args {
    let mut args = Args {
        mib: 1024,
        code: Code::DEFAULT,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--mib" if value.parse::<u64>().is_ok() => args.mib = value.parse().unwrap_or(1024),
            "--code" if value.parse::<Code>().is_ok() => {
                args.code = value.parse().unwrap_or(Code::DEFAULT)
            }
            "--rounds" if value.parse::<usize>().is_ok() => {
                args.rounds = value.parse().unwrap_or(3)
            }
            _ => {
                eprintln!("usage: ec-encode [--mib 1024] [--code 10+4] [--rounds 3]");
                std::process::exit(2);
            }
        }
    }
    args
}

fn gib_per_sec(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / took.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let dir = hayloft_benches::bench_dir();
    let data = dir.path().join("1.dat");
    let len = args.mib << 20;
    {
        let mut file = std::fs::File::create(&data)?;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..args.mib {
            rand::rng().fill_bytes(&mut block);
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let layout = Layout::plan(args.code, len, MAX_BLOCK_LEN);
    let read = best_of(args.rounds, || {
        let mut file = std::fs::File::open(&data).expect("open");
        let mut buffer = vec![0u8; 1 << 20];
        while file.read(&mut buffer).expect("read") > 0 {}
    });
    let encode = best_of(args.rounds, || {
        let mut encoder = Encoder::open(&data, layout).expect("open");
        while encoder.next_stripe().expect("stripe").is_some() {}
        let _ = encoder.digests();
    });
    let shards = dir.path().join("shards");
    let written = best_of(args.rounds, || {
        let _ = std::fs::remove_dir_all(&shards);
        std::fs::create_dir_all(&shards).expect("mkdir");
        encode_to_dir(&data, VolumeId(1), layout, &shards, &mut Throttle::new(0)).expect("encode");
    });
    // The disk's share of the last phase: the same bytes the shards take,
    // written in 1 MiB writes and fsynced, without any encoding.
    let stored = len / u64::from(args.code.data) * args.code.shards() as u64;
    let plain = best_of(args.rounds, || {
        let path = dir.path().join("plain");
        let mut file = std::fs::File::create(&path).expect("create");
        let block = vec![7u8; 1 << 20];
        for _ in 0..stored >> 20 {
            file.write_all(&block).expect("write");
        }
        file.sync_all().expect("fsync");
        drop(file);
        std::fs::remove_file(&path).expect("remove");
    });
    println!(
        "RS({}) over a {} MiB data file (in the page cache), one thread, best of {}:",
        args.code, args.mib, args.rounds
    );
    println!("| phase | GiB/s of data | vs reading the file |");
    println!("|---|---:|---:|");
    let base = gib_per_sec(len, read);
    for (phase, took) in [
        ("read, 1 MiB reads", read),
        ("encode (parity, chunk CRCs, digests)", encode),
        ("encode + write every shard, fsynced", written),
        ("write the shards' bytes, fsynced, no encode", plain),
    ] {
        let rate = gib_per_sec(len, took);
        println!("| {phase} | {rate:.2} | {:.2}x |", rate / base);
    }
    Ok(())
}
