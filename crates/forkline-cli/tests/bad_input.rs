//! Bad input: every mistake ends `forkline` with exit code 2 (usage) or 1 (runtime) and one
//! line on stderr, `forkline: error: ...`, naming the problem — before any worker starts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `forkline ARGS` and checks the exit code and the one error line.
fn fails(command: Command, code: i32, mentions: &[&str]) {
    let finished = run_to_end(command, Duration::from_secs(30));
    let lines: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{}",
        finished.stderr
    );
    let line = lines[0];
    assert!(line.starts_with("forkline: error: "), "{line}");
    for word in mentions {
        assert!(line.contains(word), "`{line}` does not mention `{word}`");
    }
    assert_eq!(finished.code, Some(code), "{line}");
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
}

fn run(args: &[&str]) -> Command {
    let mut command = forkline();
    command.arg("run").args(args);
    command
}

#[test]
fn unknown_flag() {
    fails(run(&["--bogus", "--", "true"]), 2, &["--bogus"]);
    fails(run(&["-Z", "--", "true"]), 2, &["-Z"]);
    let mut no_subcommand = forkline();
    no_subcommand.arg("fly");
    fails(no_subcommand, 2, &["fly"]);
}

/// clap's suggestion stays in the one line, and so does ours for values and config keys.
#[test]
fn did_you_mean() {
    fails(
        run(&["--worker", "2", "--", "true"]),
        2,
        &[
            "'--worker'",
            "did you mean '--workers'?",
            "(see forkline --help)",
        ],
    );
    fails(
        run(&["--log-format", "jsn", "--", "true"]),
        2,
        &["--log-format", "did you mean 'json'?"],
    );
    let mut from_env = run(&["--", "true"]);
    from_env.env("FORKLINE_LOG_FORMAT", "jsn");
    fails(
        from_env,
        2,
        &["did you mean 'json'?", "FORKLINE_LOG_FORMAT"],
    );
    let mut from_env = run(&["--", "true"]);
    from_env.env("FORKLINE_MODE", "prxy");
    fails(
        from_env,
        2,
        &["FORKLINE_MODE", "prxy", "did you mean `proxy`?"],
    );
    let dir = TempDir::new("did-you-mean");
    let path = dir.write(
        "forkline.toml",
        "workers = 2

wrokers = 3
",
    );
    let mut check = forkline();
    check.arg("check-config").arg(&path);
    fails(
        check,
        2,
        &["forkline.toml:3:", "`wrokers`", "did you mean `workers`?"],
    );
}

#[test]
fn malformed_addresses() {
    for bad in [
        "127.0.0.1",
        "127.0.0.1:99999",
        "::1:80",
        "[::1]80",
        "ftp://127.0.0.1:21",
        "unix:",
        "no such host:80",
        // Names systemd would not accept in LISTEN_FDNAMES, or not a name at all.
        "=127.0.0.1:80",
        "a:b=127.0.0.1:80",
        "tab\tname=127.0.0.1:80",
        "caf\u{e9}=127.0.0.1:80",
        "web=nowhere",
    ] {
        fails(run(&["-l", bad, "--", "true"]), 2, &["--listen", bad]);
    }
    let long_name = format!("{}=127.0.0.1:80", "n".repeat(256));
    fails(
        run(&["-l", &long_name, "--", "true"]),
        2,
        &["--listen", "255 bytes"],
    );
    let mut from_env = run(&["--", "true"]);
    from_env.env("FORKLINE_LISTEN", "web=127.0.0.1:80,=127.0.0.1:81");
    fails(from_env, 2, &["--listen", "FORKLINE_LISTEN", "empty"]);
}

#[test]
fn bad_listener_settings() {
    fails(
        run(&["--tcp-nodelay", "maybe", "--", "true"]),
        2,
        &["--tcp-nodelay", "maybe"],
    );
    fails(
        run(&["--socket-mode", "0999", "--", "true"]),
        2,
        &["--socket-mode", "0999"],
    );
    fails(
        run(&["--socket-mode", "4755", "--", "true"]),
        2,
        &["--socket-mode", "0777"],
    );
    fails(
        run(&["--socket-owner", "a:b:c", "--", "true"]),
        2,
        &["--socket-owner", "a:b:c"],
    );
    fails(
        run(&["--socket-owner", "no-such-user-x", "--", "true"]),
        2,
        &["--socket-owner", "unknown user", "no-such-user-x"],
    );
    fails(
        run(&["--socket-owner", "root:no-such-group-x", "--", "true"]),
        2,
        &["--socket-owner", "unknown group", "no-such-group-x"],
    );
    fails(
        run(&["--proxy-queue-timeout", "soon", "--", "true"]),
        2,
        &["--proxy-queue-timeout", "soon"],
    );
    for (var, value) in [
        ("FORKLINE_TCP_NODELAY", "maybe"),
        ("FORKLINE_SOCKET_MODE", "rw-rw----"),
        ("FORKLINE_SOCKET_OWNER", "a:b:c"),
        ("FORKLINE_PROXY_QUEUE_TIMEOUT", "soon"),
    ] {
        let mut from_env = run(&["--", "true"]);
        from_env.env(var, value);
        fails(from_env, 2, &[var, value]);
    }
    let mut unknown_from_env = run(&["--", "true"]);
    unknown_from_env.env("FORKLINE_SOCKET_OWNER", "no-such-user-x");
    fails(
        unknown_from_env,
        2,
        &["--socket-owner", "no-such-user-x", "FORKLINE_SOCKET_OWNER"],
    );
}

/// Only root may give socket files to another user, or to a group it is not in: a clear usage
/// error before anything starts. As root, the check runs forkline as `nobody`.
#[test]
fn socket_owner_of_another_user_needs_root() {
    let as_unprivileged = |owner: &str| {
        let mut command = run(&[
            "-l",
            "unix:/tmp/forkline-never-bound.sock",
            "--socket-owner",
            owner,
            "--cwd",
            "/",
            "--",
            "true",
        ]);
        if nix::unistd::Uid::effective().is_root() {
            let nobody = nix::unistd::User::from_name("nobody")
                .unwrap()
                .expect("user nobody");
            command.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
        }
        command
    };
    fails(
        as_unprivileged("root"),
        2,
        &["--socket-owner root", "only root", "another user"],
    );
    if nix::unistd::Uid::effective().is_root() {
        fails(
            as_unprivileged("nobody:root"),
            2,
            &["--socket-owner nobody:root", "only root", "group"],
        );
    }
}

#[test]
fn zero_workers() {
    fails(
        run(&["--workers", "0", "--", "true"]),
        2,
        &["--workers", "at least 1"],
    );
    let mut from_env = run(&["--", "true"]);
    from_env.env("WEB_CONCURRENCY", "0");
    fails(from_env, 2, &["WEB_CONCURRENCY", "at least 1"]);
}

#[test]
fn unknown_sched_policy() {
    let mut command = run(&["--", "true"]);
    command.env("FORKLINE_SCHED_POLICY", "fastest");
    fails(command, 2, &["FORKLINE_SCHED_POLICY", "fastest"]);
}

#[test]
fn bad_accept_coalesce_value() {
    let mut command = run(&["--mode", "round-robin", "--", "true"]);
    command.env("FORKLINE_ACCEPT_COALESCE_US", "soon");
    fails(command, 2, &["FORKLINE_ACCEPT_COALESCE_US", "soon"]);
}

#[test]
fn bad_values() {
    fails(
        run(&["--mode", "fast", "--", "true"]),
        2,
        &["--mode", "fast"],
    );
    fails(
        run(&["--balance", "random", "--", "true"]),
        2,
        &["--balance"],
    );
    fails(
        run(&["--restart", "sometimes", "--", "true"]),
        2,
        &["--restart"],
    );
    fails(run(&["--ready", "soon", "--", "true"]), 2, &["--ready"]);
    fails(
        run(&["--log-level", "forkline=loud", "--", "true"]),
        2,
        &["--log-level", "forkline=loud"],
    );
    fails(
        run(&["--readyz-all=maybe", "--", "true"]),
        2,
        &["--readyz-all", "maybe"],
    );
    fails(
        run(&["--graceful-timeout", "a while", "--", "true"]),
        2,
        &["--graceful-timeout"],
    );
    fails(
        run(&["--settle-time", "soon", "--", "true"]),
        2,
        &["--settle-time", "soon"],
    );
    fails(
        run(&["--max-memory", "12Q", "--", "true"]),
        2,
        &["--max-memory", "12Q"],
    );
    fails(
        run(&["--max-requests", "0", "--", "true"]),
        2,
        &["--max-requests"],
    );
    fails(
        run(&["--env", "NOVALUE", "--", "true"]),
        2,
        &["--env", "KEY=VALUE"],
    );
    fails(
        run(&["--mode", "proxy", "--", "true"]),
        2,
        &["proxy", "--listen"],
    );
    fails(
        run(&["--cwd", "/no/such/dir", "--", "true"]),
        2,
        &["--cwd", "/no/such/dir"],
    );
    fails(
        run(&["--user", "no-such-user-x", "--", "true"]),
        2,
        &["no-such-user-x"],
    );
    fails(run(&[]), 2, &["no command"]);
    let mut from_env = run(&["--", "true"]);
    from_env.env("FORKLINE_MAX_MEMORY", "lots");
    fails(from_env, 2, &["FORKLINE_MAX_MEMORY"]);
    let mut from_env = run(&["--", "true"]);
    from_env.env("FORKLINE_SETTLE_TIME", "a while");
    fails(from_env, 2, &["FORKLINE_SETTLE_TIME", "a while"]);
}

#[test]
fn bad_config_files() {
    let dir = TempDir::new("bad-config");
    let cases = [
        (
            "unknown.toml",
            "workers = 2\n\ngracefull-timeout = \"5s\"\n",
            ":3:",
            "gracefull-timeout",
        ),
        (
            "value.toml",
            "workers = 2\nmode = \"fast\"\n",
            ":2:",
            "mode",
        ),
        ("type.toml", "# comment\nworkers = true\n", ":2:", "workers"),
        ("zero.toml", "workers = 0\n", ":1:", "workers"),
        ("syntax.toml", "name = \"web\nworkers = 2\n", ":1:", "name"),
        (
            "address.toml",
            "listen = [\"127.0.0.1:8080\", \"nowhere\"]\n",
            ":1:",
            "listen",
        ),
        ("env.toml", "[env]\nA = \"1\"\nB = [2]\n", ":3:", "env.B"),
        (
            "settle.toml",
            "workers = 2\nsettle-time = \"a while\"\n",
            ":2:",
            "settle-time",
        ),
        (
            "settle-type.toml",
            "settle-time = [1]\n",
            ":1:",
            "settle-time",
        ),
        (
            "nodelay.toml",
            "workers = 1\ntcp-nodelay = \"maybe\"\n",
            ":2:",
            "tcp-nodelay",
        ),
        (
            "mode-number.toml",
            "socket-mode = 660\n",
            ":1:",
            "socket-mode",
        ),
        (
            "mode.toml",
            "socket-mode = \"0999\"\n",
            ":1:",
            "socket-mode",
        ),
        (
            "owner.toml",
            "socket-owner = \"a:b:c\"\n",
            ":1:",
            "socket-owner",
        ),
        (
            "queue.toml",
            "\nproxy-queue-timeout = \"soon\"\n",
            ":2:",
            "proxy-queue-timeout",
        ),
        (
            "name.toml",
            "listen = [\"web=127.0.0.1:8080\", \"=127.0.0.1:8081\"]\n",
            ":1:",
            "listen",
        ),
        (
            "format.toml",
            "\nlog-format = \"xml\"\n",
            ":2:",
            "log-format",
        ),
        ("level.toml", "log-level = \"a=b=c\"\n", ":1:", "log-level"),
        ("readyz.toml", "readyz-all = \"yes\"\n", ":1:", "readyz-all"),
        // Checked even where a flag (below, `--`) overrides it.
        ("command.toml", "command = []\n", ":1:", "command"),
    ];
    for (name, text, line, key) in cases {
        let path = dir.write(name, text);
        let mut command = forkline();
        command
            .arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--", "true"]);
        fails(command, 2, &[name, line, key]);
        let mut check = forkline();
        check.arg("check-config").arg(&path);
        fails(check, 2, &[name, line, key]);
    }
    let mut missing = forkline();
    missing.args(["run", "--config", "/no/such/forkline.toml", "--", "true"]);
    fails(missing, 2, &["/no/such/forkline.toml"]);
}

#[test]
fn command_missing_or_not_executable() {
    fails(
        run(&["--", "no-such-command-xyz"]),
        2,
        &["not found", "no-such-command-xyz"],
    );
    let dir = TempDir::new("not-executable");
    let script = dir.write("server.sh", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = forkline();
    command.arg("run").arg("--").arg(&script);
    fails(
        command,
        2,
        &["not executable", &script.display().to_string()],
    );
    let mut in_cwd = forkline();
    in_cwd
        .arg("run")
        .arg("--cwd")
        .arg(dir.path())
        .args(["--", "./missing.sh"]);
    fails(in_cwd, 2, &["not found", "missing.sh"]);
}

#[test]
fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    fails(
        run(&["-l", &address, "--", "true"]),
        1,
        &[&address, "in use"],
    );
}

#[test]
fn unix_socket_path_not_writable() {
    fails(
        run(&["-l", "unix:/no/such/dir/app.sock", "--", "true"]),
        1,
        &["unix:/no/such/dir/app.sock"],
    );
    // A directory the user may not write to. Root may write anywhere, so as root the check
    // runs forkline as `nobody` on a root-owned 0755 directory.
    let dir = TempDir::new("read-only");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let address = format!("unix:{}/app.sock", locked.display());
    let mut command = run(&["-l", &address, "--cwd", "/", "--", "true"]);
    if nix::unistd::Uid::effective().is_root() {
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("user nobody");
        command.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    }
    fails(command, 1, &[&address, "Permission denied"]);
}
