//! Crash test: a child process writing with `fsync always` from several
//! threads is killed with SIGKILL at random moments, many rounds. After each
//! kill the volume is reopened: every needle whose write the child
//! acknowledged must read back byte-for-byte, and every needle the volume
//! returns at all must be intact.

#![allow(clippy::unwrap_used)] // test helpers may panic on setup failures

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hayloft_storage::{Cookie, Durability, NeedleId, Tier, Volume, VolumeConfig, VolumeId};
use rand::Rng;

/// Must match `content` in `src/bin/crash_writer.rs`.
fn content(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(2654435761) % 20_000) as usize + 1;
    (0..len)
        .map(|i| (id as usize).wrapping_add(i * 31) as u8)
        .collect()
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let rounds: u64 = std::env::var("HAYLOFT_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut acknowledged: HashSet<u64> = HashSet::new();
    let mut total_torn = 0;
    let mut total_skipped = 0;
    for round in 0..rounds {
        let first_id = 1 + round * 1_000_000;
        let mut child = Command::new(env!("CARGO_BIN_EXE_hayloft-crash-writer"))
            .arg(dir.path())
            .arg(first_id.to_string())
            .arg("4")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start crash writer");
        let stdout = child.stdout.take().unwrap();
        let (acks, acked_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for id in BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| line.parse::<u64>().ok())
            {
                let _ = acks.send(id);
            }
        });
        // Wait for the first acknowledgement (the child has opened the
        // volume and is writing), then a random moment more, so kills land
        // at every stage of a write.
        let first = acked_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer acknowledged nothing within a minute");
        std::thread::sleep(Duration::from_millis(rng.random_range(5..150)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "writer exited by itself: {status}");
        reader.join().unwrap();
        let acked: Vec<u64> = std::iter::once(first).chain(acked_rx.try_iter()).collect();
        acknowledged.extend(acked);

        let volume = Volume::open(
            dir.path(),
            VolumeId(1),
            Tier::Hot,
            VolumeConfig {
                max_size: 1 << 30,
                durability: Durability::Always,
            },
        )
        .expect("volume opens after SIGKILL");
        total_torn += volume.recovery_report().torn_tail_bytes;
        total_skipped += volume.recovery_report().skipped.len();
        // Every needle the volume returns is intact (written but not
        // acknowledged ones may or may not be there) ...
        let present: HashSet<u64> = volume.needle_ids().iter().map(|id| id.0).collect();
        for id in &present {
            let needle = volume
                .read_verified(NeedleId(*id), Cookie(*id as u32 ^ 0xabcd))
                .unwrap_or_else(|e| panic!("round {round}: needle {id} corrupt: {e}"));
            assert_eq!(
                needle.data,
                content(*id),
                "round {round}: needle {id} wrong"
            );
        }
        // ... and every acknowledged one is there.
        let lost: Vec<_> = acknowledged.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged needles lost: {lost:?}"
        );
    }
    assert!(acknowledged.len() > 100, "only {} acks", acknowledged.len());
    eprintln!(
        "{rounds} rounds, {} acknowledged needles, {total_torn} torn bytes cut, \
         {total_skipped} abandoned records skipped",
        acknowledged.len()
    );
}
