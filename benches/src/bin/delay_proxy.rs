//! A TCP proxy that delays every byte by a fixed one-way time and, if asked,
//! carries at most a given rate: a link between two regions on one machine
//! (`tc netem` is not in this kernel).
//!
//! ```text
//! delay-proxy --delay-ms 50 [--rate-mbit 100] LISTEN=TARGET [LISTEN=TARGET...]
//! ```
//!
//! Each direction of each connection is delayed `--delay-ms` (a round trip
//! through the proxy takes twice that, plus the loopback's own). With
//! `--rate-mbit`, each direction of the link (all connections of all
//! listeners together, as one cable) serialises its bytes at that rate, and
//! the delay counts from when a chunk has gone "onto the wire". Memory is
//! bounded: each direction of a connection holds at most `QUEUED` chunks of
//! at most `CHUNK` bytes in flight; the sender waits when they are taken.
//!
//! Used by `benches/regions.sh`. Prints one line per listener and then
//! nothing until it is killed.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The most one read takes from a socket.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction of a connection.
const QUEUED: usize = 256;

/// One direction of the link: when it is free to take the next byte.
struct Wire {
    /// Bytes per second (`None`: unlimited).
    rate: Option<f64>,
    free_at: Mutex<Instant>,
}

impl Wire {
    /// When a chunk of `len` bytes sent now has gone onto the wire.
    fn send(&self, len: usize) -> Instant {
        let now = Instant::now();
        let Some(rate) = self.rate else {
            return now;
        };
        let mut free_at = self.free_at.lock();
        let start = (*free_at).max(now);
        *free_at = start + Duration::from_secs_f64(len as f64 / rate);
        *free_at
    }
}

struct Link {
    delay: Duration,
    /// Towards the target, and back.
    out: Wire,
    back: Wire,
}

/// Copies `from` to `to`, each chunk written `delay` after it went onto
/// `wire`; the write side is shut when `from` ends.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Arc<Link>, outward: bool) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(QUEUED);
    let reader = async move {
        loop {
            let mut buffer = vec![0u8; CHUNK];
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buffer.truncate(n);
            let wire = if outward { &link.out } else { &link.back };
            let due = wire.send(n) + link.delay;
            if tx.send((due, buffer)).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

async fn serve(listener: TcpListener, target: String, link: Arc<Link>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        let link = Arc::clone(&link);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pump(client_read, server_write, Arc::clone(&link), true),
                pump(server_read, client_write, link, false),
            );
        });
    }
}

fn usage() -> ! {
    eprintln!("usage: delay-proxy --delay-ms MS [--rate-mbit MBIT] LISTEN=TARGET...");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let mut delay_ms = None;
    let mut rate = None;
    let mut routes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--delay-ms" => delay_ms = args.next().and_then(|v| v.parse::<u64>().ok()),
            "--rate-mbit" => {
                rate = Some(
                    args.next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or_else(|| usage())
                        * 1e6
                        / 8.0,
                );
            }
            route => match route.split_once('=') {
                Some((listen, target)) => routes.push((listen.to_owned(), target.to_owned())),
                None => usage(),
            },
        }
    }
    let Some(delay_ms) = delay_ms else { usage() };
    if routes.is_empty() {
        usage();
    }
    let wire = || Wire {
        rate,
        free_at: Mutex::new(Instant::now()),
    };
    let link = Arc::new(Link {
        delay: Duration::from_millis(delay_ms),
        out: wire(),
        back: wire(),
    });
    let mut tasks = Vec::new();
    for (listen, target) in routes {
        let listener = match TcpListener::bind(&listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("delay-proxy: cannot listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        println!("delay-proxy: {listen} -> {target}, {delay_ms} ms each way");
        tasks.push(tokio::spawn(serve(listener, target, Arc::clone(&link))));
    }
    for task in tasks {
        let _ = task.await;
    }
}
