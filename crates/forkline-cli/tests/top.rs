//! `forkline top` in a real terminal: a private tmux server (120x40) runs it against a real
//! `forkline run` cluster of a small Python server, types keys with `send-keys` and reads the
//! screen with `capture-pane`. It checks the rows against `forkline status --json`, `+` and
//! `-`, a reload's status line, and that `q`, Ctrl-C, Esc and the cluster stopping all leave
//! with exit 0 and the terminal back (main screen, cooked mode, echo, cursor). Every wait has a
//! deadline; the tmux server and the cluster are killed whatever happens.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long anything may take to show.
const WAIT: Duration = Duration::from_secs(30);

/// A server on the shared socket (fd 3) that says who it is, ready (sd_notify) once it serves.
const SERVER: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket(fileno=3)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
while True:
    c, _ = s.accept()
    c.sendall(f"pid={os.getpid()}\n".encode())
    c.close()
"#;

/// A test's private world: its runtime directory (shared by the cluster, the clients and the
/// `top` in tmux) and the server program.
struct World {
    dir: TempDir,
    server: PathBuf,
}

impl World {
    fn new(tag: &str) -> World {
        require("python3");
        require("tmux");
        let dir = TempDir::new(&format!("top-{tag}"));
        let server = dir.write("server.py", SERVER);
        World { dir, server }
    }

    /// `forkline` with this world's XDG_RUNTIME_DIR.
    fn forkline(&self) -> Command {
        let mut command = forkline();
        command.env("XDG_RUNTIME_DIR", self.dir.path());
        command
    }

    /// Starts cluster `name` with two workers (a reload settles 1 s per slot, so it is seen
    /// running) and waits until both are ready.
    fn start(&self, name: &str) -> Running {
        let mut command = self.forkline();
        command.args(["run", "--name", name, "-w", "2"]);
        command.args(["--ready", "notify", "--settle-time", "1s"]);
        command.arg("-l").arg(format!("127.0.0.1:{}", free_port()));
        command.arg("--").arg("python3").arg(&self.server);
        let cluster = Running::spawn(command);
        let ready = until(WAIT, || {
            (self.try_status(name)?["ready"] == 2).then_some(())
        });
        assert!(ready.is_some(), "cluster not ready\n{}", cluster.output());
        cluster
    }

    /// Runs `forkline ARGS...` to its end.
    fn ctl(&self, args: &[&str]) -> Finished {
        let mut command = self.forkline();
        command.args(args);
        run_to_end(command, Duration::from_secs(60))
    }

    /// `forkline status NAME --json`, if it answers.
    fn try_status(&self, name: &str) -> Option<Value> {
        let out = self.ctl(&["status", name, "--json"]);
        (out.code == Some(0)).then(|| serde_json::from_str(&out.stdout).expect("JSON status"))
    }

    /// Waits until the status satisfies `check`; returns it.
    fn wait_status(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        until(WAIT, || self.try_status(name).filter(&check))
            .unwrap_or_else(|| panic!("{what}: last status {:?}", self.try_status(name)))
    }
}

/// The worker pids of a status, by slot.
fn pids(status: &Value) -> Vec<(u64, u64)> {
    status["workers"]
        .as_array()
        .expect("workers list")
        .iter()
        .filter_map(|w| Some((w["slot"].as_u64()?, w["pid"].as_u64()?)))
        .collect()
}

/// A private tmux server with one 120x40 window running `sh`, killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts the server; the shell gets XDG_RUNTIME_DIR `runtime_dir`.
    fn start(dir: &Path, runtime_dir: &Path) -> Tmux {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let env = format!("XDG_RUNTIME_DIR={}", runtime_dir.display());
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "40",
            "-e",
            &env,
            "sh",
        ]);
        tmux.run(&["set-option", "-g", "status", "off"]);
        tmux
    }

    /// Runs a tmux command against this server; it must succeed.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "top", "-l", "--", text]);
    }

    /// Presses a key by tmux's name for it (`Enter`, `C-c`, `Escape`).
    fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "top", key]);
    }

    /// Types a shell command line and runs it.
    fn shell(&self, line: &str) {
        self.type_text(line);
        self.press("Enter");
    }

    /// The visible screen.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// A pane variable: `alternate_on`, `cursor_flag`.
    fn var(&self, name: &str) -> String {
        self.run(&[
            "display-message",
            "-p",
            "-t",
            "top",
            &format!("#{{{name}}}"),
        ])
        .trim()
        .to_string()
    }

    /// Waits until the screen satisfies `check`; returns it.
    fn wait(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        until(WAIT, || Some(self.screen()).filter(|s| check(s)))
            .unwrap_or_else(|| panic!("{what}; the screen:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The worker rows on the screen: lines whose first two words are a slot and a pid.
fn rows(screen: &str) -> Vec<(u64, u64)> {
    screen
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let slot = words.next()?.parse().ok()?;
            let pid = words.next()?.parse().ok()?;
            Some((slot, pid))
        })
        .collect()
}

/// The shell line that runs top, then prints its exit code and the terminal's modes after it
/// (`stty=icanon,echo,` when it was put back; `-icanon` in raw mode).
fn top_line(name: &str, extra: &str) -> String {
    format!(
        "'{}' top {name}{extra}; echo \"top-exit=$?\"; printf 'stty=%s\\n' \"$(stty -a | \
         tr -s ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e -echo -e echo | tr '\\n' ,)\"",
        env!("CARGO_BIN_EXE_forkline")
    )
}

/// Lines that start with `prefix` (output, not the echoed command line).
fn lines_starting<'a>(screen: &'a str, prefix: &str) -> Vec<&'a str> {
    screen
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// Waits until top has exited `runs` times in this pane; checks each exit was 0 and left the
/// terminal as it was.
fn wait_exited(tmux: &Tmux, runs: usize) {
    let screen = tmux.wait(&format!("top exit #{runs}"), |s| {
        lines_starting(s, "stty=").len() >= runs
    });
    assert_eq!(
        lines_starting(&screen, "top-exit="),
        vec!["top-exit=0"; runs],
        "{screen}"
    );
    for modes in lines_starting(&screen, "stty=") {
        assert_eq!(
            modes, "stty=icanon,echo,",
            "terminal modes after top\n{screen}"
        );
    }
    assert_eq!(
        tmux.var("alternate_on"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(tmux.var("cursor_flag"), "1", "cursor left hidden");
}

/// Waits until top shows exactly the workers `expected` (slot, pid).
fn wait_rows(tmux: &Tmux, what: &str, expected: &[(u64, u64)]) -> String {
    let want: BTreeSet<(u64, u64)> = expected.iter().copied().collect();
    tmux.wait(what, |s| {
        rows(s).into_iter().collect::<BTreeSet<_>>() == want
    })
}

#[test]
fn top_shows_the_workers_scales_reloads_and_quits() {
    let world = World::new("main");
    let mut cluster = world.start("web");
    let tmux = Tmux::start(world.dir.path(), world.dir.path());
    let before = pids(&world.wait_status("web", "two workers", |s| pids(s).len() == 2));

    tmux.shell(&top_line("web", " --interval 500ms"));
    let screen = wait_rows(&tmux, "both workers' rows", &before);
    assert_eq!(
        tmux.var("alternate_on"),
        "1",
        "top runs on the alternate screen"
    );
    assert!(
        screen.contains(&format!("web: primary pid {}", cluster.pid())),
        "{screen}"
    );
    assert!(screen.contains("2/2 workers ready"), "{screen}");
    for title in ["SLOT", "PID", "STATE", "IN-FLIGHT", "SERVED", "RSS", "CPU%"] {
        assert!(screen.contains(title), "no {title} column\n{screen}");
    }

    // `+`: a third worker, in the status and on the screen.
    tmux.type_text("+");
    let three = world.wait_status("web", "three workers", |s| {
        pids(s).len() == 3 && s["ready"] == 3
    });
    wait_rows(&tmux, "three rows", &pids(&three));
    tmux.wait("the scale line", |s| s.contains("scaled to 3 workers"));

    // `-`: back to two.
    tmux.type_text("-");
    let two = world.wait_status("web", "two workers again", |s| {
        s["workers"].as_array().map(Vec::len) == Some(2) && pids(s).len() == 2
    });
    wait_rows(&tmux, "two rows", &pids(&two));
    tmux.wait("the scale line", |s| s.contains("scaled to 2 workers"));

    // `r`: "reloading…" while the view keeps refreshing (a reload takes a second per slot
    // here), then the result; the rows then show the new workers.
    tmux.type_text("r");
    let mut headers = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    let done = loop {
        let screen = tmux.screen();
        if screen.contains("reload done: every worker replaced") {
            break screen;
        }
        if screen.contains("reloading…") {
            headers.extend(
                lines_starting(&screen, "web: primary pid")
                    .into_iter()
                    .map(String::from),
            );
        }
        assert!(Instant::now() < deadline, "no reload result\n{screen}");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(
        headers.len() >= 2,
        "the view did not refresh during the reload: {headers:?}\n{done}"
    );
    let old: BTreeSet<u64> = pids(&two).into_iter().map(|(_, pid)| pid).collect();
    let reloaded = world.wait_status("web", "new workers", |s| {
        let now = pids(s);
        now.len() == 2 && now.iter().all(|(_, pid)| !old.contains(pid))
    });
    wait_rows(&tmux, "the new workers' rows", &pids(&reloaded));

    // `q`, then Ctrl-C and Esc in new runs: each exits 0 and puts the terminal back.
    tmux.type_text("q");
    wait_exited(&tmux, 1);
    for (run, key) in [(2, "C-c"), (3, "Escape")] {
        tmux.shell(&top_line("web", ""));
        wait_rows(&tmux, "rows again", &pids(&reloaded));
        tmux.press(key);
        wait_exited(&tmux, run);
    }
    cluster.stop_cleanly();
}

#[test]
fn top_leaves_by_itself_when_the_cluster_stops() {
    let world = World::new("gone");
    let mut cluster = world.start("api");
    let tmux = Tmux::start(world.dir.path(), world.dir.path());
    let status = world.wait_status("api", "two workers", |s| pids(s).len() == 2);

    tmux.shell(&top_line("api", ""));
    wait_rows(&tmux, "both workers' rows", &pids(&status));
    let stop = world.ctl(&["stop", "api"]);
    assert_eq!(stop.code, Some(0), "{}", stop.stderr);
    tmux.wait("the stopped line", |s| s.contains("the cluster stopped"));
    // No key is pressed: it leaves by itself after a few seconds.
    wait_exited(&tmux, 1);
    assert_eq!(cluster.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn top_without_a_terminal_points_at_status() {
    let world = World::new("pipe");
    let out = world.ctl(&["top", "web"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "forkline: error: forkline top needs a terminal; use forkline status"
    );
    assert_eq!(out.stdout, "");
}
