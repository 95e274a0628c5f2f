//! Messages both ways between the primary and its workers.
//!
//! The primary greets each worker as it comes online; each worker answers with its id and pid
//! and a count of the messages it has seen. When every worker has answered, the primary shuts
//! the cluster down gracefully.
//!
//! Usage: `cargo run --example messaging -- [WORKERS]` (default 2).

use std::collections::BTreeSet;

use forkline::{role, Cluster, Event, Role};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    text: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    id: usize,
    pid: u32,
    seen: usize,
    text: String,
}

fn main() -> forkline::Result<()> {
    match role() {
        Role::Primary => {
            let workers: usize = std::env::args()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(2);
            let mut answered = BTreeSet::new();
            let shutdown = Cluster::builder().workers(workers).run_blocking(
                move |cluster, event| match event {
                    Event::Online { worker } => {
                        let hello = Greeting {
                            text: format!("hello worker {}", worker.id()),
                        };
                        if let Err(e) = worker.send(&hello) {
                            eprintln!("[primary] send failed: {e}");
                        }
                    }
                    Event::Message { worker, payload } => {
                        println!("[primary] worker {} says {payload}", worker.id());
                        answered.insert(worker.id());
                        if answered.len() == workers {
                            println!("[primary] every worker answered; shutting down");
                            cluster.shutdown();
                        }
                    }
                    Event::Exit { worker, code, .. } => {
                        println!("[primary] worker {} exited with {code:?}", worker.id());
                    }
                    _ => {}
                },
            )?;
            std::process::exit(shutdown.exit_code());
        }
        Role::Worker(id) => {
            let worker = forkline::worker::connect()?;
            let mut messages = worker.messages().expect("first call");
            let mut seen = 0;
            // Ends when the primary asks this worker to disconnect.
            while let Some(payload) = messages.blocking_recv() {
                seen += 1;
                let greeting: Greeting = forkline::worker::decode(payload)?;
                worker.send(&Answer {
                    id,
                    pid: std::process::id(),
                    seen,
                    text: format!("got {:?}", greeting.text),
                })?;
            }
            Ok(())
        }
    }
}
