//! `loadgen`: the seed workload's client. C threads connect, read to EOF, count which worker
//! answered, and repeat for D seconds (or N requests); then a summary, optionally as JSON.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use forkline_loadgen::client::{ClientOptions, SourceAddrs};
use forkline_loadgen::driver::{self, LoadConfig};
use forkline_loadgen::duration::parse_duration;
use forkline_loadgen::report::Report;

/// Connection-per-request TCP load generator for `Request handled by worker-PID` servers.
///
/// Exits 0 when at least one response was read, 1 otherwise (so scripts can use a one-request
/// run as a readiness probe).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Server address; loopback only (127.0.0.0/8 or ::1).
    #[arg(long, default_value = "127.0.0.1:8989")]
    addr: SocketAddr,

    /// Concurrent clients (threads), each with one connection in flight.
    #[arg(short, long, default_value_t = 32)]
    concurrency: usize,

    /// How long to run, e.g. 10s, 500ms, 1m.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Stop after this many requests in total (the duration still bounds the run).
    #[arg(short = 'n', long)]
    requests: Option<u64>,

    /// Per-operation timeout: for connect, and for each read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,

    /// Expected number of workers: ones that never answered count as zero in the CV.
    #[arg(long)]
    workers: Option<usize>,

    /// Source address of each connection (see README: avoids TIME_WAIT tuple reuse).
    #[arg(long, value_enum, default_value_t = SourceAddrs::Random)]
    source_ips: SourceAddrs,

    /// Close each connection with SO_LINGER 0 (RST). Off by default; see README.
    #[arg(long)]
    linger0: bool,

    /// Print one JSON object line instead of the human summary.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        eprintln!(
            "loadgen: refusing to load {}: only loopback targets are allowed",
            args.addr
        );
        return ExitCode::from(2);
    }
    let config = LoadConfig {
        client: ClientOptions {
            addr: args.addr,
            timeout: args.timeout,
            source: args.source_ips,
            linger0: args.linger0,
        },
        concurrency: args.concurrency.max(1),
        duration: args.duration,
        max_requests: args.requests,
    };
    let totals = driver::run(&config);
    let report = Report::new(
        args.addr.to_string(),
        config.concurrency,
        totals,
        args.workers,
    );
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if report.total > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
