//! Test fixture for the integration tests: a primary driven by stdin commands that prints every
//! event as a JSON line, and workers whose behaviour (serve, crash, ignore disconnect, write
//! garbage on the IPC socket, ...) is chosen by environment variables.
//!
//! Primary settings: `TB_WORKERS`, `TB_RESTART` (always|on-failure|never), `TB_GRACE_MS`,
//! `TB_MIN_UPTIME_MS`, `TB_BACKOFF_MS`, `TB_BACKOFF_MAX_MS`, `TB_MODE`, `TB_BALANCE`, `TB_CREDIT_WINDOW`,
//! `TB_COALESCE_ALWAYS` (coalesce without the governor), `TB_EXEC`, `TB_UID`,
//! `TB_READY` (online|listen), `TB_ARGS` (worker arguments separated by \x1f), `TB_PLAIN`
//! (workers do not speak the protocol), `TB_PREBIND` (a TCP listener bound up front),
//! `TB_MAX_REQUESTS`, `TB_NOTIFY` (serve NOTIFY_SOCKET, readiness by READY=1) and
//! `TB_WATCHDOG_MS`, `TB_HANDOFF_TIMEOUT_MS`, `TB_CONTROL` (a control socket path), `TB_METRICS` (a metrics address), `TB_READYZ_ALL`
//! (`/readyz` wants every slot's worker ready), `TB_SUBREAPER`, `TB_NOFILE` (the open-file limit of the primary and its
//! workers), `TB_CWD` (the workers' directory), `TB_SETTLE_MS`, `TB_READY_TIMEOUT_MS`, `TB_SEND_ON_FORK` (a JSON message
//! sent to every worker from its `fork` event, before its handshake) and `TB_SHUTDOWN_AT_START`
//! (shut down right after start, before any worker is online), `TB_MIGRATION`
//! (auto|bpf|sysctl|off: reuseport queue migration; `status` replies say what was chosen, and
//! in steer mode how connections are steered).
//! Worker settings: `TB_BEHAVIOR` (or `TB_BEHAVIOR_<id>`),
//! `TB_LISTEN`, `TB_KIND` (tcp|unix|udp), `TB_DELAY_MS` (or `TB_DELAY_MS_<id>`), `TB_HOLD`
//! (or `TB_HOLD_<id>`: answer only after the client sends a byte), `TB_EXTRA_LISTEN(_<id>)`
//! (more addresses, comma-separated, listened on and held until exit), and a "bad build":
//! `TB_BAD_IF` names a file; while it exists, new workers do `TB_BAD` (`crash`: exit 3 at
//! once; `die-later`: come online and listen, then exit 4 after 300 ms).
//!
//! Commands on stdin: `send ID JSON`, `fork`, `fork-send JSON` (fork, send at once, and reply
//! with the handle's state), `fork-disconnect` and `fork-kill` (disconnect or SIGKILL the new
//! worker before its process exists), `kill ID SIGNUM`, `disconnect ID`, `scale N`, `reload`,
//! `shutdown`, `status`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use forkline::{
    role, Backoff, Balance, Cluster, Event, Mode, Readiness, RestartPolicy, Role, WorkerStdio,
};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn env_ms(name: &str) -> Option<Duration> {
    env(name)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn main() {
    match role() {
        Role::Primary => primary(),
        Role::Worker(id) => worker(id),
    }
}

fn emit(start: Instant, mut value: Value) {
    value["ms"] = json!(start.elapsed().as_millis() as u64);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

#[tokio::main]
async fn primary() {
    let start = Instant::now();

    if let Some(limit) = env("TB_NOFILE").and_then(|n| n.parse::<u64>().ok()) {
        // The primary's open-file limit, inherited by its workers.
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, hard)
            .expect("setrlimit");
    }
    let mut builder = Cluster::builder().stdio(WorkerStdio::Inherit);
    if let Some(n) = env("TB_WORKERS") {
        builder = builder.workers(n.parse().expect("TB_WORKERS"));
    }
    builder = builder.restart(match env("TB_RESTART").as_deref() {
        Some("never") => RestartPolicy::Never,
        Some("on-failure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    });
    if let Some(grace) = env_ms("TB_GRACE_MS") {
        builder = builder.graceful_timeout(grace);
    }
    let mut backoff = Backoff::default();
    if let Some(d) = env_ms("TB_MIN_UPTIME_MS") {
        backoff.min_uptime = d;
    }
    if let Some(d) = env_ms("TB_BACKOFF_MS") {
        backoff.initial = d;
    }
    if let Some(d) = env_ms("TB_BACKOFF_MAX_MS") {
        backoff.max = d;
    }
    builder = builder.backoff(backoff);
    if let Some(mode) = env("TB_MODE") {
        builder = builder.mode(mode.parse::<Mode>().expect("TB_MODE"));
    }
    if let Some(balance) = env("TB_BALANCE") {
        builder = builder.balance(balance.parse::<Balance>().expect("TB_BALANCE"));
    }
    if let Some(n) = env("TB_CREDIT_WINDOW") {
        builder = builder.credit_window(n.parse().expect("TB_CREDIT_WINDOW"));
    }
    if let Some(n) = env("TB_ACCEPT_THREADS") {
        builder = builder.accept_threads(n.parse().expect("TB_ACCEPT_THREADS"));
    }
    if env("TB_COALESCE_ALWAYS").is_some() {
        builder = builder.accept_coalesce_always(true);
    }
    if let Some(exec) = env("TB_EXEC") {
        builder = builder.exec(exec);
    }
    if let Some(args) = env("TB_ARGS") {
        builder = builder.args(args.split('\u{1f}').map(str::to_string));
    }
    if env("TB_PLAIN").is_some() {
        builder = builder.expect_protocol(false);
    }
    if let Some(address) = env("TB_PREBIND") {
        builder = builder.listen(forkline::ListenSpec::tcp(address));
    }
    if let Some(mode) = env("TB_UNIX_MODE") {
        builder = builder.unix_socket_mode(u32::from_str_radix(&mode, 8).expect("TB_UNIX_MODE"));
    }
    if let Some(n) = env("TB_MAX_REQUESTS") {
        builder = builder.max_requests(n.parse().expect("TB_MAX_REQUESTS"), 0);
    }
    if env("TB_NOTIFY").is_some() {
        builder = builder
            .notify_socket(true)
            .readiness(Readiness::Notify, Duration::from_secs(10));
        if let Some(timeout) = env_ms("TB_WATCHDOG_MS") {
            builder = builder.worker_timeout(timeout);
        }
    }
    if env("TB_SUBREAPER").is_some() {
        builder = builder.subreaper(true);
    }
    if let Some(address) = env("TB_METRICS") {
        builder = builder.metrics(address);
    }
    if env("TB_READYZ_ALL").is_some() {
        builder = builder.readyz_requires_all(true);
    }
    if let Some(path) = env("TB_CONTROL") {
        builder = builder.control_socket(path);
    }
    if let Some(cwd) = env("TB_CWD") {
        builder = builder.cwd(cwd);
    }
    if let Some(uid) = env("TB_UID") {
        builder = builder.uid(uid.parse().expect("TB_UID"));
    }
    if env("TB_READY").as_deref() == Some("listen") {
        builder = builder.readiness(Readiness::Listen, Duration::from_secs(10));
    }
    if let Some(timeout) = env_ms("TB_READY_TIMEOUT_MS") {
        let readiness = builder.options().readiness;
        builder = builder.readiness(readiness, timeout);
    }
    if let Some(timeout) = env_ms("TB_HANDOFF_TIMEOUT_MS") {
        builder = builder.handoff_timeout(timeout);
    }
    if let Some(settle) = env_ms("TB_SETTLE_MS") {
        builder = builder.settle_time(settle);
    }
    if let Some(migration) = env("TB_MIGRATION") {
        builder = builder
            .reuseport_migration(forkline::Migration::parse(&migration).expect("TB_MIGRATION"));
    }
    let cluster = match builder.start().await {
        Ok(cluster) => cluster,
        Err(e) => {
            emit(start, json!({"event": "error", "error": e.to_string()}));
            std::process::exit(2);
        }
    };
    if env("TB_SHUTDOWN_AT_START").is_some() {
        cluster.shutdown();
    }
    let send_on_fork: Option<Value> =
        env("TB_SEND_ON_FORK").map(|v| serde_json::from_str(&v).expect("TB_SEND_ON_FORK"));
    let commands = cluster.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim().to_string();
            if line == "reload" {
                // A reload takes a while: other commands (status) are answered meanwhile.
                let commands = commands.clone();
                tokio::spawn(async move { command(&commands, start, &line).await });
            } else {
                command(&commands, start, &line).await;
            }
        }
    });
    let shutdown = cluster
        .run(|_, event| {
            if let (Event::Fork { worker }, Some(message)) = (event, &send_on_fork) {
                let sent = worker.send(message).err().map(|e| e.to_string());
                emit(
                    start,
                    json!({"event": "sent-on-fork", "id": worker.id(), "error": sent}),
                );
            }
            emit(start, describe(event))
        })
        .await;
    emit(
        start,
        json!({"event": "stopped", "clean": shutdown.clean, "killed": shutdown.killed}),
    );
    std::process::exit(shutdown.exit_code());
}

async fn command(cluster: &Cluster, start: Instant, line: &str) {
    let mut parts = line.splitn(3, ' ');
    let verb = parts.next().unwrap_or_default();
    let result: Result<Value, String> = match verb {
        "send" => {
            let id: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let payload: Value =
                serde_json::from_str(parts.next().unwrap_or("null")).unwrap_or(Value::Null);
            match cluster.worker(id) {
                Some(w) => w
                    .send(&payload)
                    .map(|_| json!({}))
                    .map_err(|e| e.to_string()),
                None => Err(format!("no worker {id}")),
            }
        }
        "fork" => cluster
            .fork()
            .map(|w| json!({"id": w.id()}))
            .map_err(|e| e.to_string()),
        "fork-send" => {
            let payload: Value = serde_json::from_str(&line["fork-send ".len().min(line.len())..])
                .unwrap_or(Value::Null);
            match cluster.fork() {
                Ok(w) => {
                    let connected = w.is_connected();
                    let dead = w.is_dead();
                    w.send(&payload)
                        .map(|_| json!({"id": w.id(), "connected": connected, "dead": dead}))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        "fork-disconnect" => cluster
            .fork()
            .map(|w| {
                w.disconnect();
                json!({"id": w.id(), "pid": w.pid()})
            })
            .map_err(|e| e.to_string()),
        "fork-kill" => cluster
            .fork()
            .and_then(|w| {
                w.kill(nix::sys::signal::Signal::SIGKILL)?;
                Ok(json!({"id": w.id(), "pid": w.pid()}))
            })
            .map_err(|e| e.to_string()),
        "kill" => {
            let id: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let sig: i32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(9);
            let signal = nix::sys::signal::Signal::try_from(sig).expect("signal number");
            match cluster.worker(id) {
                Some(w) => w.kill(signal).map(|_| json!({})).map_err(|e| e.to_string()),
                None => Err(format!("no worker {id}")),
            }
        }
        "disconnect" => {
            let id: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            match cluster.worker(id) {
                Some(w) => {
                    w.disconnect();
                    Ok(json!({}))
                }
                None => Err(format!("no worker {id}")),
            }
        }
        "scale" => {
            let n: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(1);
            cluster
                .scale(n)
                .map(|_| json!({}))
                .map_err(|e| e.to_string())
        }
        "reload" => cluster
            .reload()
            .await
            .map(|_| json!({}))
            .map_err(|e| e.to_string()),
        "shutdown" => {
            cluster.shutdown();
            Ok(json!({}))
        }
        "status" => Ok(json!({
            "slots": serde_json::to_value(cluster.status()).unwrap(),
            "notify_rejected": cluster.notify_messages_rejected(),
            "migration": cluster.reuseport_migration(),
            "steering": cluster.steering(),
        })),
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Ok(mut value) => {
            value["event"] = json!("reply");
            value["command"] = json!(verb);
            emit(start, value);
        }
        Err(error) => emit(
            start,
            json!({"event": "reply", "command": verb, "error": error}),
        ),
    }
}

fn describe(event: &Event) -> Value {
    let mut value = json!({"event": event.name()});
    match event {
        Event::Fork { worker }
        | Event::Online { worker }
        | Event::Ready { worker }
        | Event::Disconnect { worker } => {
            value["id"] = json!(worker.id());
            value["pid"] = json!(worker.pid());
        }
        Event::Listening { worker, address } => {
            value["id"] = json!(worker.id());
            value["pid"] = json!(worker.pid());
            value["address"] = json!(address);
        }
        Event::Exit {
            worker,
            code,
            signal,
            exited_after_disconnect,
            reason,
        } => {
            value["id"] = json!(worker.id());
            value["pid"] = json!(worker.pid());
            value["code"] = json!(code);
            value["signal"] = json!(signal);
            value["exited_after_disconnect"] = json!(exited_after_disconnect);
            value["reason"] = json!(reason.name());
        }
        Event::Message { worker, payload } => {
            value["id"] = json!(worker.id());
            value["pid"] = json!(worker.pid());
            value["payload"] = payload.clone();
        }
        Event::Restarting {
            slot: id,
            delay,
            failures,
            crash_loop,
        } => {
            value["id"] = json!(id);
            value["delay_ms"] = json!(delay.as_millis() as u64);
            value["failures"] = json!(failures);
            value["crash_loop"] = json!(crash_loop);
        }
        Event::GaveUp { slot: id, failures } => {
            value["id"] = json!(id);
            value["failures"] = json!(failures);
        }
        Event::ReplaceFailed {
            slot: id,
            purpose,
            reason,
        } => {
            value["id"] = json!(id);
            value["purpose"] = json!(purpose.name());
            value["reason"] = json!(reason.to_string());
        }
        Event::WorkerError { worker, error } => {
            value["id"] = json!(worker.id());
            value["pid"] = json!(worker.pid());
            value["error"] = json!(error);
        }
        Event::UpgradeStarted { pid } | Event::Upgraded { pid } => value["pid"] = json!(pid),
        Event::ReloadStarted => {}
        Event::ReloadFinished { ok } => value["ok"] = json!(ok),
        Event::UpgradeFailed { reason } => value["reason"] = json!(reason),
        _ => {}
    }
    value
}

fn worker(id: usize) {
    let mut behavior = slot_env("TB_BEHAVIOR", id).unwrap_or_else(|| "echo".into());
    if env("TB_BAD_IF").is_some_and(|marker| std::path::Path::new(&marker).exists()) {
        behavior = env("TB_BAD").unwrap_or_else(|| "crash".into());
    }
    match behavior.as_str() {
        "crash" => std::process::exit(3),
        "empty-packet" | "oversize-packet" => {
            // Framing errors, sent raw: the primary must kill and replace this worker.
            let fd: i32 = env("FORKLINE_IPC_FD").unwrap().parse().unwrap();
            let size = if behavior == "empty-packet" {
                0
            } else {
                70 * 1024
            };
            let _ =
                nix::sys::socket::send(fd, &vec![b'{'; size], nix::sys::socket::MsgFlags::empty());
            std::thread::sleep(Duration::from_secs(60));
        }
        "fuzz" => fuzz(),
        "garbage" => {
            // Not JSON, not hello: the primary must kill and replace this worker.
            let fd: i32 = env("FORKLINE_IPC_FD").unwrap().parse().unwrap();
            let _ = nix::sys::socket::send(
                fd,
                b"\x00\x01 this is not json",
                nix::sys::socket::MsgFlags::empty(),
            );
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => {}
    }
    let worker = forkline::worker::connect().expect("connect to primary");
    if behavior == "ignore-disconnect" {
        std::thread::sleep(Duration::from_secs(600));
    }
    // More listeners, held but never accepted on, until the worker exits.
    let extra: Vec<forkline::worker::TcpListener> = slot_env("TB_EXTRA_LISTEN", id)
        .map(|list| {
            list.split(',')
                .map(|address| worker.listen(address).expect("extra listen"))
                .collect()
        })
        .unwrap_or_default();
    if !extra.is_empty() {
        let _ = worker.send(&json!({"extra_listening": extra.len()}));
    }
    // "listen-then-drop": listens but never accepts, and drops the listener when told to.
    let mut held = None;
    let server = match (env("TB_LISTEN"), behavior.as_str()) {
        (Some(address), "listen-then-drop") => {
            let listener = worker.listen(&address).expect("listen");
            let _ = worker.send(&json!({"listening": listener.local_addr().to_string()}));
            held = Some(listener);
            None
        }
        (Some(address), _) => {
            let worker = worker.clone();
            Some(std::thread::spawn(move || serve(worker, id, &address)))
        }
        (None, _) => None,
    };
    if behavior == "die-later" {
        std::thread::sleep(Duration::from_millis(300));
        std::process::exit(4);
    }
    let mut messages = worker.messages().expect("messages");
    while let Some(payload) = messages.blocking_recv() {
        match payload.get("cmd").and_then(Value::as_str) {
            Some("exit") => {
                let code = payload.get("code").and_then(Value::as_i64).unwrap_or(0);
                std::process::exit(code as i32);
            }
            Some("oversize") => {
                let big = "x".repeat(100 * 1024);
                let error = worker
                    .send(&json!({ "big": big }))
                    .err()
                    .map(|e| e.to_string());
                worker
                    .send(&json!({"oversize_error": error}))
                    .expect("small send");
            }
            Some("disconnect") => worker.disconnect(),
            Some("drop") => {
                held = None;
                worker.send(&json!({"dropped": true})).expect("send");
            }
            Some("bye") => {
                // Last words, then disconnect and exit at once: every one must arrive.
                let n = payload.get("n").and_then(Value::as_u64).unwrap_or(1);
                for i in 0..n {
                    worker.send(&json!({"bye": i})).expect("send");
                }
                worker.disconnect();
                std::process::exit(0);
            }
            _ => worker
                .send(&json!({"echo": payload, "id": id, "pid": std::process::id()}))
                .expect("send"),
        }
    }
    drop(held);
    if let Some(server) = server {
        let _ = server.join();
    }
}

/// Tells the primary why `listen` failed: the error, its `io::ErrorKind` and OS error number.
fn report_listen_error(worker: &forkline::Worker, e: &forkline::Error) {
    let (kind, errno) = match e {
        forkline::Error::Listen { source, .. } => {
            (format!("{:?}", source.kind()), source.raw_os_error())
        }
        _ => (String::new(), None),
    };
    let _ = worker.send(&json!({"listen_error": e.to_string(), "kind": kind, "errno": errno}));
}

/// The fuzz cases a "fuzz" worker picks from, by its seed.
const FUZZ_CASES: usize = 20;

/// A worker that speaks the protocol badly on purpose: one of `FUZZ_CASES` kinds of hostile or
/// malformed input, chosen and filled from `TB_FUZZ_SEED` plus its pid (printed, to replay),
/// sent raw on the IPC socket; then it exits by itself if the primary did not kill it.
fn fuzz() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fd: i32 = env("FORKLINE_IPC_FD").unwrap().parse().unwrap();
    let base: u64 = env("TB_FUZZ_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let seed = base ^ (u64::from(std::process::id()) << 17);
    let mut rng = seed.max(1);
    let mut next = move || {
        // xorshift64: reproducible from the seed, no dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let case = (next() % FUZZ_CASES as u64) as usize;
    eprintln!(
        "fuzz worker {}: seed {seed} case {case}",
        std::process::id()
    );
    let send = |bytes: &[u8], fds: &[i32]| {
        let iov = [std::io::IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        let _ = sendmsg::<UnixAddr>(fd, &iov, cmsgs, MsgFlags::empty(), None);
    };
    let hello = format!(
        r#"{{"type":"hello","version":1,"pid":{}}}"#,
        std::process::id()
    );
    let random: Vec<u8> = (0..1 + next() % 300).map(|_| next() as u8).collect();
    let address = format!("127.0.{}.{}:{}", next() % 256, next() % 256, next() % 65536);
    match case {
        0 => send(b"", &[]),
        1 => send(&vec![b'{'; 70 * 1024], &[]),
        2 => send(&random, &[]),
        3 => send(br#"{"type":"nope"}"#, &[]),
        4 => send(b"[1,2,3]", &[]),
        5 => send(br#"{"type":"hello","version":99,"pid":1}"#, &[]),
        6 => send(br#"{"type":"message","data":1}"#, &[]),
        case => {
            send(hello.as_bytes(), &[]);
            match case {
                7 => send(hello.as_bytes(), &[]),
                8 => send(
                    format!(r#"{{"type":"listen","req":1,"kind":"tcp","address":{}}}"#, json!(String::from_utf8_lossy(&random))).as_bytes(),
                    &[],
                ),
                9 => {
                    for req in 0..20 {
                        let address = format!("127.0.0.{}:0", 2 + req);
                        send(
                            format!(r#"{{"type":"listen","req":{req},"kind":"tcp","address":"{address}"}}"#).as_bytes(),
                            &[],
                        );
                    }
                    send(&random, &[]);
                }
                10 => send(format!(r#"{{"type":"ack","seqs":[{},{}]}}"#, next(), next()).as_bytes(), &[]),
                11 => send(br#"{"type":"returned","listener":0,"seqs":[1,2]}"#, &[]),
                12 => {
                    let (read, _write) = nix::unistd::pipe().unwrap();
                    use std::os::fd::AsRawFd;
                    send(br#"{"type":"returned","listener":0,"seqs":[1]}"#, &[read.as_raw_fd()]);
                }
                13 => send(br#"{"type":"message","data":1}"#, &[0]),
                14 => send(format!(r#"{{"type":"load","open":{}}}"#, next()).as_bytes(), &[]),
                15 => send(br#"{"type":"mess"#, &[]),
                16 => send(
                    format!(r#"{{"type":"message","data":{}1{}}}"#, "[".repeat(200), "]".repeat(200)).as_bytes(),
                    &[],
                ),
                17 => send(
                    format!(r#"{{"type":"message","data":"{}"}}"#, "x".repeat(60 * 1024)).as_bytes(),
                    &[],
                ),
                18 => {
                    send(br#"{"type":"disconnecting"}"#, &[]);
                    send(&random, &[]);
                }
                _ => send(
                    format!(r#"{{"type":"listen","req":1,"kind":"udp","address":"{address}","mode":"reuseport"}}"#).as_bytes(),
                    &[],
                ),
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    std::process::exit(5);
}

/// A worker setting: `NAME_<id>` if set, else `NAME`.
fn slot_env(name: &str, id: usize) -> Option<String> {
    env(&format!("{name}_{id}")).or_else(|| env(name))
}

fn serve(worker: forkline::Worker, id: usize, address: &str) {
    let delay = slot_env("TB_DELAY_MS", id)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    let hold = slot_env("TB_HOLD", id).is_some();
    let reply = format!("worker {id} {}\n", std::process::id());
    match env("TB_KIND").as_deref() {
        Some("unix") => {
            let listener = match worker.listen_unix(address) {
                Ok(listener) => listener,
                Err(e) => return report_listen_error(&worker, &e),
            };
            let _ = worker.send(&json!({"listening": listener.path()}));
            let mut in_flight = Vec::new();
            while let Ok(Some(mut conn)) = listener.accept() {
                let reply = reply.clone();
                in_flight.push(std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = conn.write_all(reply.as_bytes());
                }));
                in_flight.retain(|t| !t.is_finished());
            }
            in_flight.into_iter().for_each(|t| {
                let _ = t.join();
            });
        }
        Some("udp") => {
            let socket = worker.bind_udp(address).expect("bind udp");
            let mut buf = [0u8; 1500];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(reply.as_bytes(), peer);
            }
        }
        _ => {
            let listener = match worker.listen(address) {
                Ok(listener) => listener,
                Err(e) => return report_listen_error(&worker, &e),
            };
            let _ = worker.send(&json!({"listening": listener.local_addr().to_string(), "mode": listener.mode().as_str()}));
            let mut in_flight = Vec::new();
            while let Ok(Some((mut conn, _))) = listener.accept() {
                let reply = reply.clone();
                in_flight.retain(|t: &std::thread::JoinHandle<()>| !t.is_finished());
                in_flight.push(std::thread::spawn(move || {
                    // "hold" clients: keep the connection until the client sends something.
                    if hold {
                        let mut buf = [0u8; 1];
                        let _ = conn.read(&mut buf);
                    } else {
                        std::thread::sleep(delay);
                    }
                    let _ = conn.write_all(reply.as_bytes());
                }));
            }
            // Disconnected: finish what was accepted.
            in_flight.into_iter().for_each(|t| {
                let _ = t.join();
            });
        }
    }
}
