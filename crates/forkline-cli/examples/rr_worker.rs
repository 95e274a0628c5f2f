//! A worker built on the forkline library, for `forkline run --mode round-robin`:
//!
//! ```sh
//! cargo build --example rr_worker
//! forkline run -w 2 -l 127.0.0.1:3000 --mode round-robin -- target/debug/examples/rr_worker
//! ```
//!
//! It connects to the primary over the IPC channel, listens on the addresses the primary names
//! in `FORKLINE_LISTEN` (the `--listen` addresses, comma-separated) — the primary accepts and
//! hands each connection over — and answers every connection with `worker ID PID`.

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = forkline::worker::connect()?;
    let addresses = std::env::var("FORKLINE_LISTEN")
        .map_err(|_| "FORKLINE_LISTEN is not set: run me under `forkline run --listen ADDR`")?;
    let address = addresses
        .split(',')
        .next()
        .filter(|a| !a.is_empty())
        .ok_or("FORKLINE_LISTEN is empty")?;
    let listener = worker.listen(address)?;
    println!(
        "worker {} listening on {} ({})",
        worker.id(),
        listener.local_addr(),
        listener.mode().as_str()
    );
    // Ends when the primary asks this worker to disconnect.
    for conn in listener.incoming() {
        // The blocking API hands connections over in blocking mode.
        let mut conn = conn?;
        let _ = writeln!(conn, "worker {} {}", worker.id(), std::process::id());
    }
    Ok(())
}
