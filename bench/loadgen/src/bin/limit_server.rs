//! `limit-server ADDR DELAY_MS`: the seed example's handler with nothing around it — no
//! primary, no IPC, no dispatch. Run N of these on one port (each binds with SO_REUSEPORT) and
//! the kernel spreads connections; what they serve is "the physical limit" the cluster modes
//! are compared against. With ADDR `fd` it serves the socket passed at fd 3 (`LISTEN_FDS`), so
//! that `forkline run --mode shared|reuseport|steer -- limit-server fd 0` runs the very same
//! handler behind each of those modes (`bench/scaling.sh`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use forkline_loadgen::response::format_response;

/// Same listen backlog as Node's `net.Server`.
const BACKLOG: i32 = 511;

/// The seed handler on its own SO_REUSEPORT socket, on a single-threaded tokio runtime.
#[derive(Debug, Parser)]
#[command(name = "limit-server", version)]
struct Args {
    /// Address to listen on. `-` means `127.0.0.1:$PORT` (for `forkline run --mode proxy`);
    /// `fd`, the listening socket passed at fd 3 (`LISTEN_FDS`, systemd's convention).
    addr: String,

    /// Milliseconds to wait after a connection arrives before answering (0: answer at once).
    delay_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let listener = if args.addr == "fd" {
        match passed_listener() {
            Ok(l) => l,
            Err(msg) => {
                eprintln!("limit-server: {msg}");
                return ExitCode::from(2);
            }
        }
    } else {
        let addr = match resolve_addr(&args.addr) {
            Ok(addr) => addr,
            Err(msg) => {
                eprintln!("limit-server: {msg}");
                return ExitCode::from(2);
            }
        };
        match bind_reuseport(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("limit-server: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| args.addr.clone(), |a| a.to_string());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("limit-server: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid = std::process::id();
    // One write, so the lines of several servers sharing a log file do not interleave.
    let banner = format!("limit-server: worker-{pid} listening on {addr}\n");
    let _ = std::io::stderr().write_all(banner.as_bytes());
    let response: &'static [u8] = format_response(pid).into_bytes().leak();
    let delay = Duration::from_millis(args.delay_ms);
    match runtime.block_on(serve(listener, delay, response)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limit-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    if text == "-" {
        let port = std::env::var("PORT").map_err(|_| "ADDR is `-` but PORT is not set")?;
        let port: u16 = port.parse().map_err(|_| format!("bad PORT {port:?}"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| format!("bad address {text:?}"))
}

/// The TCP listener passed at fd 3 (`LISTEN_FDS`), non-blocking for tokio.
fn passed_listener() -> Result<StdListener, String> {
    let mut fds = listenfd::ListenFd::from_env();
    let listener = fds
        .take_tcp_listener(0)
        .map_err(|e| format!("fd 3: {e}"))?
        .ok_or("ADDR is `fd` but no socket was passed (LISTEN_FDS)")?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("fd 3: {e}"))?;
    Ok(listener)
}

/// A listening socket that shares its port with every other SO_REUSEPORT socket on it.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

async fn serve(
    listener: StdListener,
    delay: Duration,
    response: &'static [u8],
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, delay, response));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("limit-server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection: wait, write the line, close (drop sends FIN), like Node's `socket.end(msg)`.
async fn handle(mut stream: TcpStream, delay: Duration, response: &'static [u8]) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // The client may have given up already; nothing to do about it but close.
    let _ = stream.write_all(response).await;
}
