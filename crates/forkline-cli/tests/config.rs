//! The config file and the precedence of settings — flags over environment variables over the
//! file over defaults — as `check-config` reports them and as `run` applies them.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const FILE: &str = r#"
command = ["sh", "-c", "echo \"$GREETING from $FORKLINE_WORKER_ID\""]
workers = 3
listen = ["127.0.0.1:8080"]
mode = "reuseport"
graceful-timeout = "10s"
restart = "never"
max-memory = "1G"
name = "from-file"
tcp-nodelay = false
socket-mode = "0660"
proxy-queue-timeout = "1500ms"

[env]
GREETING = "hello"
"#;

/// The value and the source comment of `key` in `check-config` output.
fn setting(output: &str, key: &str) -> (String, String) {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no `{key}` in\n{output}"));
    let (assignment, source) = line.split_once(" # ").unwrap();
    let value = assignment.split_once(" = ").unwrap().1.trim().to_string();
    (value, source.trim().to_string())
}

#[test]
fn flags_override_env_which_overrides_the_file() {
    let dir = TempDir::new("precedence");
    let path = dir.write("forkline.toml", FILE);
    let mut command = forkline();
    command.env("WEB_CONCURRENCY", "5");
    command.env("FORKLINE_MODE", "proxy");
    command.env("FORKLINE_GRACEFUL_TIMEOUT", "20s");
    command.arg("check-config").arg(&path);
    command.args(["--graceful-timeout", "45s", "--ready", "delay:500ms"]);
    let finished = run_to_end(command, Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let out = &finished.stdout;
    assert!(
        out.starts_with(&format!("# {}: OK", path.display())),
        "{out}"
    );
    let expect = |key: &str, value: &str, source: &str| {
        assert_eq!(
            setting(out, key),
            (value.to_string(), source.to_string()),
            "{key}"
        )
    };
    expect("graceful-timeout", "\"45s\"", "flag");
    expect("ready", "\"delay:500ms\"", "flag");
    expect("workers", "5", "env WEB_CONCURRENCY");
    expect("mode", "\"proxy\"", "env FORKLINE_MODE");
    expect("max-memory", "\"1G\"", "config file");
    expect("restart", "\"never\"", "config file");
    expect("name", "\"from-file\"", "config file");
    expect("min-uptime", "\"5s\"", "default");
    assert!(out.ends_with("\n[env]\nGREETING = \"hello\""), "{out}");
}

/// Node's variable picks the mode when neither `--mode` nor `FORKLINE_MODE` does.
#[test]
fn sched_policy_variable_picks_the_mode_after_forkline_mode() {
    let dir = TempDir::new("sched-policy");
    let path = dir.write("forkline.toml", FILE);
    let mode_with = |vars: &[(&str, &str)]| {
        let mut command = forkline();
        command.envs(vars.iter().copied());
        command.arg("check-config").arg(&path);
        let finished = run_to_end(command, Duration::from_secs(30));
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        setting(&finished.stdout, "mode")
    };
    assert_eq!(
        mode_with(&[("FORKLINE_SCHED_POLICY", "rr")]),
        (
            "\"round-robin\"".to_string(),
            "env FORKLINE_SCHED_POLICY".to_string()
        )
    );
    assert_eq!(
        mode_with(&[
            ("FORKLINE_SCHED_POLICY", "none"),
            ("FORKLINE_MODE", "proxy")
        ]),
        ("\"proxy\"".to_string(), "env FORKLINE_MODE".to_string())
    );
}

/// `--accept-coalesce` takes microseconds as a duration; the library's variable takes a number
/// of microseconds and comes after the flag; too long a window is a usage error naming the flag.
#[test]
fn accept_coalesce_from_flag_file_and_environment() {
    let dir = TempDir::new("coalesce");
    let path = dir.write(
        "forkline.toml",
        "command = [\"true\"]\naccept-coalesce = \"2ms\"\n",
    );
    let check = |args: &[&str], vars: &[(&str, &str)]| {
        let mut command = forkline();
        command.envs(vars.iter().copied());
        command.arg("check-config").args(args).arg(&path);
        run_to_end(command, Duration::from_secs(30))
    };
    let setting_of = |finished: &Finished| {
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        setting(&finished.stdout, "accept-coalesce")
    };
    assert_eq!(
        setting_of(&check(&[], &[])),
        ("\"2ms\"".to_string(), "config file".to_string())
    );
    assert_eq!(
        setting_of(&check(&[], &[("FORKLINE_ACCEPT_COALESCE_US", "250")])),
        (
            "\"250us\"".to_string(),
            "env FORKLINE_ACCEPT_COALESCE_US".to_string()
        )
    );
    assert_eq!(
        setting_of(&check(
            &["--accept-coalesce", "500us"],
            &[("FORKLINE_ACCEPT_COALESCE_US", "250")]
        )),
        ("\"500us\"".to_string(), "flag".to_string())
    );
    let too_long = check(&["--accept-coalesce", "2s"], &[]);
    assert_eq!(too_long.code, Some(2));
    assert!(
        too_long.stderr.contains("--accept-coalesce"),
        "{}",
        too_long.stderr
    );
}

/// `--settle-time` is a duration like the others: flag over `FORKLINE_SETTLE_TIME` over the
/// file's `settle-time` over the default, 1s (the library's `DEFAULT_SETTLE_TIME`).
#[test]
fn settle_time_from_flag_environment_file_and_default() {
    let dir = TempDir::new("settle-time");
    let with_key = dir.write(
        "forkline.toml",
        "command = [\"true\"]\nsettle-time = \"2500ms\"\n",
    );
    let without_key = dir.write("plain.toml", "command = [\"true\"]\n");
    let check = |file: &PathBuf, args: &[&str], vars: &[(&str, &str)]| {
        let mut command = forkline();
        command.env_remove("FORKLINE_SETTLE_TIME");
        command.envs(vars.iter().copied());
        command.arg("check-config").args(args).arg(file);
        let finished = run_to_end(command, Duration::from_secs(30));
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        setting(&finished.stdout, "settle-time")
    };
    let expect = |value: &str, source: &str| (value.to_string(), source.to_string());
    assert_eq!(check(&without_key, &[], &[]), expect("\"1s\"", "default"));
    assert_eq!(
        check(&with_key, &[], &[]),
        expect("\"2500ms\"", "config file")
    );
    assert_eq!(
        check(&with_key, &[], &[("FORKLINE_SETTLE_TIME", "3s")]),
        expect("\"3s\"", "env FORKLINE_SETTLE_TIME")
    );
    assert_eq!(
        check(
            &with_key,
            &["--settle-time", "0"],
            &[("FORKLINE_SETTLE_TIME", "3s")]
        ),
        expect("\"0s\"", "flag")
    );
}

/// The listener settings — `tcp-nodelay`, `socket-mode`, `socket-owner`,
/// `proxy-queue-timeout` — each from a flag, its environment variable, the file or the default,
/// and named listen addresses (`NAME=ADDR`) from each layer.
#[test]
fn listener_settings_from_flag_environment_file_and_default() {
    let dir = TempDir::new("listener-settings");
    let with_keys = dir.write(
        "forkline.toml",
        r#"command = ["true"]
listen = ["web=127.0.0.1:8080", "admin=unix:/run/app=1.sock"]
tcp-nodelay = false
socket-mode = "660"
socket-owner = "www-data:adm"
proxy-queue-timeout = "2s"
"#,
    );
    let without_keys = dir.write("plain.toml", "command = [\"true\"]\n");
    const VARS: [&str; 5] = [
        "FORKLINE_LISTEN",
        "FORKLINE_TCP_NODELAY",
        "FORKLINE_SOCKET_MODE",
        "FORKLINE_SOCKET_OWNER",
        "FORKLINE_PROXY_QUEUE_TIMEOUT",
    ];
    let check = |file: &PathBuf, args: &[&str], vars: &[(&str, &str)]| {
        let mut command = forkline();
        for var in VARS {
            command.env_remove(var);
        }
        command.envs(vars.iter().copied());
        command.arg("check-config").args(args).arg(file);
        let finished = run_to_end(command, Duration::from_secs(30));
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        finished.stdout
    };
    let expect = |value: &str, source: &str| (value.to_string(), source.to_string());

    let defaults = check(&without_keys, &[], &[]);
    assert_eq!(setting(&defaults, "tcp-nodelay"), expect("true", "default"));
    assert_eq!(
        setting(&defaults, "proxy-queue-timeout"),
        expect("\"5s\"", "default")
    );
    for key in ["socket-mode", "socket-owner"] {
        assert!(
            defaults.contains(&format!("# {key} is not set")),
            "{defaults}"
        );
    }

    let file = check(&with_keys, &[], &[]);
    assert_eq!(
        setting(&file, "listen"),
        expect(
            r#"["web=127.0.0.1:8080", "admin=unix:/run/app=1.sock"]"#,
            "config file"
        )
    );
    assert_eq!(
        setting(&file, "tcp-nodelay"),
        expect("false", "config file")
    );
    assert_eq!(
        setting(&file, "socket-mode"),
        expect("\"0660\"", "config file")
    );
    assert_eq!(
        setting(&file, "socket-owner"),
        expect("\"www-data:adm\"", "config file")
    );
    assert_eq!(
        setting(&file, "proxy-queue-timeout"),
        expect("\"2s\"", "config file")
    );

    let env = check(
        &with_keys,
        &[],
        &[
            ("FORKLINE_LISTEN", "api=127.0.0.1:9000,127.0.0.1:9001"),
            ("FORKLINE_TCP_NODELAY", "yes"),
            ("FORKLINE_SOCKET_MODE", "0600"),
            ("FORKLINE_SOCKET_OWNER", "nobody"),
            ("FORKLINE_PROXY_QUEUE_TIMEOUT", "750ms"),
        ],
    );
    assert_eq!(
        setting(&env, "listen"),
        expect(
            r#"["api=127.0.0.1:9000", "127.0.0.1:9001"]"#,
            "env FORKLINE_LISTEN"
        )
    );
    assert_eq!(
        setting(&env, "tcp-nodelay"),
        expect("true", "env FORKLINE_TCP_NODELAY")
    );
    assert_eq!(
        setting(&env, "socket-mode"),
        expect("\"0600\"", "env FORKLINE_SOCKET_MODE")
    );
    assert_eq!(
        setting(&env, "socket-owner"),
        expect("\"nobody\"", "env FORKLINE_SOCKET_OWNER")
    );
    assert_eq!(
        setting(&env, "proxy-queue-timeout"),
        expect("\"750ms\"", "env FORKLINE_PROXY_QUEUE_TIMEOUT")
    );

    let flags = check(
        &with_keys,
        &[
            "-l",
            "public=[::1]:80",
            "--tcp-nodelay",
            "false",
            "--socket-mode",
            "0o640",
            "--socket-owner",
            "0:0",
            "--proxy-queue-timeout",
            "0",
        ],
        &[
            ("FORKLINE_TCP_NODELAY", "true"),
            ("FORKLINE_SOCKET_MODE", "0600"),
            ("FORKLINE_PROXY_QUEUE_TIMEOUT", "750ms"),
        ],
    );
    assert_eq!(
        setting(&flags, "listen"),
        expect(r#"["public=[::1]:80"]"#, "flag")
    );
    assert_eq!(setting(&flags, "tcp-nodelay"), expect("false", "flag"));
    assert_eq!(setting(&flags, "socket-mode"), expect("\"0640\"", "flag"));
    assert_eq!(setting(&flags, "socket-owner"), expect("\"0:0\"", "flag"));
    assert_eq!(
        setting(&flags, "proxy-queue-timeout"),
        expect("\"0s\"", "flag")
    );
}

/// The printed settings are a config file that reads back to the same settings.
#[test]
fn check_config_output_reads_back() {
    let dir = TempDir::new("roundtrip");
    let path = dir.write("forkline.toml", FILE);
    let mut first = forkline();
    first.arg("check-config").arg(&path).args([
        "--socket-owner",
        "nobody:nogroup",
        "-l",
        "web=127.0.0.1:80",
    ]);
    let first = run_to_end(first, Duration::from_secs(30));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let again = dir.write("again.toml", &first.stdout);
    let mut second = forkline();
    second.arg("check-config").arg(&again);
    let second = run_to_end(second, Duration::from_secs(30));
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .skip(1)
            .map(|l| l.split(" # ").next().unwrap().trim().to_string())
            .collect()
    };
    assert_eq!(settings(&first.stdout), settings(&second.stdout));
}

/// `run --config` takes everything, the command included, from the file; flags still win.
#[test]
fn run_takes_its_settings_from_the_file() {
    let dir = TempDir::new("run-config");
    let path = dir.write("forkline.toml", FILE);
    let mut command = forkline();
    command.arg("run").arg("--config").arg(&path);
    command.args(["-w", "2", "--mode", "shared"]);
    command
        .arg("-l")
        .arg(format!("unix:{}", dir.path().join("app.sock").display()));
    let finished = run_to_end(command, Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let mut lines: Vec<String> = finished
        .stdout
        .lines()
        .map(|l| unstamped(l).split_once("] ").unwrap().1.to_string())
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["hello from 0", "hello from 1"],
        "{}",
        finished.stdout
    );
    assert!(
        finished
            .stdout
            .lines()
            .all(|l| unstamped(l).starts_with("[from-file:")),
        "{}",
        finished.stdout
    );
}

/// The example config shipped in docs/ is valid.
#[test]
fn the_documented_example_is_valid() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/forkline.toml");
    let mut command = forkline();
    command.arg("check-config").arg(&example);
    let finished = run_to_end(command, Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
}

/// `handoff-timeout` from the default, the file, its environment variable and its flag, each
/// overriding the one before.
#[test]
fn handoff_timeout_from_each_layer() {
    let dir = TempDir::new("handoff-timeout");
    let file = dir.write(
        "forkline.toml",
        "command = [\"true\"]\nhandoff-timeout = \"3s\"\n",
    );
    let plain = dir.write("plain.toml", "command = [\"true\"]\n");
    let check = |file: &PathBuf, args: &[&str], var: Option<&str>| {
        let mut command = forkline();
        command.env_remove("FORKLINE_HANDOFF_TIMEOUT");
        if let Some(value) = var {
            command.env("FORKLINE_HANDOFF_TIMEOUT", value);
        }
        command.arg("check-config").args(args).arg(file);
        let finished = run_to_end(command, Duration::from_secs(30));
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        setting(&finished.stdout, "handoff-timeout")
    };
    let expect = |value: &str, source: &str| (value.to_string(), source.to_string());
    assert_eq!(check(&plain, &[], None), expect("\"10s\"", "default"));
    assert_eq!(check(&file, &[], None).0, "\"3s\"");
    assert_eq!(
        check(&file, &[], Some("4s")),
        expect("\"4s\"", "env FORKLINE_HANDOFF_TIMEOUT")
    );
    assert_eq!(
        check(&file, &["--handoff-timeout", "500ms"], Some("4s")).0,
        "\"500ms\""
    );
}

/// `log-format`, `log-level` and `readyz-all` from each layer; `RUST_LOG` gives the level only
/// when no flag, `FORKLINE_LOG_LEVEL` or file key does.
#[test]
fn logging_and_readyz_settings_from_each_layer() {
    let dir = TempDir::new("logging-settings");
    let file = dir.write(
        "forkline.toml",
        "command = [\"true\"]\nlog-format = \"json\"\nlog-level = \"warn\"\nreadyz-all = true\n",
    );
    let plain = dir.write("plain.toml", "command = [\"true\"]\n");
    let check = |file: &PathBuf, args: &[&str], vars: &[(&str, &str)]| {
        let mut command = forkline();
        for var in [
            "RUST_LOG",
            "FORKLINE_LOG_FORMAT",
            "FORKLINE_LOG_LEVEL",
            "FORKLINE_READYZ_ALL",
        ] {
            command.env_remove(var);
        }
        command.envs(vars.iter().copied());
        command.arg("check-config").args(args).arg(file);
        let finished = run_to_end(command, Duration::from_secs(30));
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        let out = finished.stdout;
        ["log-format", "log-level", "readyz-all"].map(|key| setting(&out, key))
    };
    let expect = |value: &str, source: &str| (value.to_string(), source.to_string());

    assert_eq!(
        check(&plain, &[], &[]),
        [
            expect("\"text\"", "default"),
            expect("\"info\"", "default"),
            expect("false", "default")
        ]
    );
    let [_, level, _] = check(&plain, &[], &[("RUST_LOG", "debug")]);
    assert_eq!(level, expect("\"debug\"", "env RUST_LOG"));
    assert_eq!(
        check(&file, &[], &[("RUST_LOG", "debug")]),
        [
            expect("\"json\"", "config file"),
            expect("\"warn\"", "config file"),
            expect("true", "config file")
        ]
    );
    assert_eq!(
        check(
            &file,
            &[],
            &[
                ("FORKLINE_LOG_FORMAT", "text"),
                ("FORKLINE_LOG_LEVEL", "forkline=debug,info"),
                ("FORKLINE_READYZ_ALL", "no"),
            ]
        ),
        [
            expect("\"text\"", "env FORKLINE_LOG_FORMAT"),
            expect("\"forkline=debug,info\"", "env FORKLINE_LOG_LEVEL"),
            expect("false", "env FORKLINE_READYZ_ALL")
        ]
    );
    assert_eq!(
        check(
            &file,
            &[
                "--log-format",
                "text",
                "--log-level",
                "error",
                "--readyz-all=false"
            ],
            &[("FORKLINE_LOG_LEVEL", "debug")]
        ),
        [
            expect("\"text\"", "flag"),
            expect("\"error\"", "flag"),
            expect("false", "flag")
        ]
    );
    let [_, _, readyz] = check(&plain, &["--readyz-all"], &[]);
    assert_eq!(readyz, expect("true", "flag"));
}
