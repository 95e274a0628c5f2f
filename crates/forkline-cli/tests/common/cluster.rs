//! What several tests ask of a running cluster and its workers: `forkline status --json`, the
//! metrics address it logged and a GET on it, and a small Python HTTP server to run as workers.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{forkline, run_to_end, Running};

/// `forkline status --json` of the cluster whose control socket is `control` (`Null` when it
/// does not answer).
pub fn status_json(control: &Path) -> Value {
    let mut command = forkline();
    command.args(["status", "--json", "--control"]).arg(control);
    let out = run_to_end(command, Duration::from_secs(60));
    serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
}

/// The `HOST:PORT` the cluster serves `/metrics` on, from its log line (it was started with
/// `--metrics 127.0.0.1:0`).
pub fn metrics_address(cluster: &Running) -> String {
    let logged = cluster
        .stderr
        .wait_for(Duration::from_secs(30), |l| {
            l.contains("metrics at /metrics")
        })
        .unwrap_or_else(|| panic!("no metrics address logged\n{}", cluster.output()));
    logged
        .rsplit_once("address=")
        .map(|(_, a)| a.trim().to_string())
        .expect("address=HOST:PORT")
}

/// `GET path` on `address` over HTTP/1.1: the status code and the whole response.
pub fn get_path(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
}

/// A Python HTTP/1.0 server (threaded) that knows nothing of forkline: `prelude` runs first,
/// each `GET` answers 200 with the Python expression `body` (a `str`, `self` the handler), and
/// `serve` starts it (`Server` and `Handler` are defined by then).
pub fn python_http_server(prelude: &str, body: &str, serve: &str) -> String {
    format!(
        r#"
import os, sys, socket, http.server, socketserver
{prelude}
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = ({body}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    request_queue_size = 128
    daemon_threads = True
{serve}
"#
    )
}
