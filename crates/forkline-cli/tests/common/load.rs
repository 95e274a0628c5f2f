//! A small load generator for the tests: client threads each sending one request per
//! connection until told to stop, counting what was answered, what failed, and what hung (no
//! answer within the client's read timeout).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the clients saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Requests answered (200).
    pub ok: u64,
    /// Requests that failed (refused, reset, closed early, not 200).
    pub failed: u64,
    /// Requests that got no answer within the client's read timeout.
    pub hung: u64,
}

/// Client threads at work, and their counters.
pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `threads` clients, each calling `request(port)` in a loop: `Ok(true)` is an
    /// answer, `Ok(false)` or an error a failure, a read timeout (`WouldBlock`/`TimedOut`) a
    /// hang.
    pub fn start(port: u16, threads: usize, request: fn(u16) -> std::io::Result<bool>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let clients = (0..threads)
            .map(|_| {
                let (stop, counts) = (stop.clone(), counts.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let at = match request(port) {
                            Ok(true) => 0,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                2
                            }
                            _ => 1,
                        };
                        counts[at].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            clients,
        }
    }

    /// The counts so far.
    pub fn tally(&self) -> Tally {
        let [ok, failed, hung] = &*self.counts;
        Tally {
            ok: ok.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
            hung: hung.load(Ordering::Relaxed),
        }
    }

    /// Stops the clients, waits for each to finish its request, and gives the final counts.
    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for client in std::mem::take(&mut self.clients) {
            client.join().unwrap();
        }
        self.tally()
    }
}

/// `GET /` over HTTP/1.0 on a connection of its own; true for a 200.
pub fn get_ok(port: u16) -> std::io::Result<bool> {
    super::http_get(port).map(|r| r.status == 200)
}
