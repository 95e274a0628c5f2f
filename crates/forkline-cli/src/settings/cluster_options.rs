//! The library's [`ClusterOptions`] for a cluster's settings, workers started through the
//! `__exec` shim.

use std::ffi::OsString;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use forkline::{Backoff, ClusterOptions, ListenSpec};

use super::Settings;

impl Settings {
    /// The library options for these settings. `program` is the resolved worker command;
    /// workers run as `EXE __exec -- PROGRAM ARGS...` (see `cli::exec`), so `exe` is this
    /// binary.
    pub fn cluster_options(
        &self,
        exe: PathBuf,
        program: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> ClusterOptions {
        let mut args: Vec<OsString> = vec!["__exec".into()];
        if let Some(arg0) = self.command.first() {
            args.push("--arg0".into());
            args.push(arg0.clone());
        }
        args.push("--".into());
        args.push(program.as_os_str().to_owned());
        args.extend(self.command.iter().skip(1).cloned());
        ClusterOptions {
            workers: self.workers.resolve(),
            exec: exe,
            args,
            env: self
                .env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            cwd: self.cwd.clone(),
            // Copied line by line either way, so `forkline logs` has them.
            stdio: if self.log_prefix {
                forkline::WorkerStdio::Prefixed
            } else {
                forkline::WorkerStdio::Captured
            },
            log_format: self.log_format.into(),
            log_timestamps: crate::logging::timestamps(),
            name: Some(self.name().to_string()),
            control: Some(self.control()),
            metrics: self.metrics.clone(),
            readyz_requires_all: self.readyz_all,
            uid,
            gid,
            restart: self.restart,
            backoff: Backoff {
                min_uptime: self.min_uptime,
                max_restarts: self.max_restarts,
                ..Backoff::default()
            },
            graceful_timeout: self.graceful_timeout,
            shutdown_delay: self.shutdown_delay,
            on_hang: self.on_hang.clone(),
            cpu_affinity: self.cpu_affinity,
            handle_signals: true,
            mode: self.mode,
            balance: self.balance,
            listeners: self
                .listen
                .iter()
                .map(|l| ListenSpec {
                    kind: l.kind,
                    address: l.address.clone(),
                    name: l.name.clone(),
                })
                .collect(),
            inherited: Vec::new(),
            inherited_names: Vec::new(),
            readiness: self.ready,
            ready_timeout: self.ready_timeout,
            settle_time: self.settle_time,
            upgrade_timeout: self.upgrade_timeout,
            accept_coalesce: Some(self.accept_coalesce).filter(|w| !w.is_zero()),
            accept_threads: self.accept_threads.map(NonZeroUsize::get),
            max_requests: self.max_requests.map(NonZeroU64::get),
            max_requests_jitter: self.max_requests_jitter,
            max_memory: self.max_memory.map(|size| size.as_u64()),
            worker_timeout: self.worker_timeout,
            notify_socket: true,
            tcp_nodelay: self.tcp_nodelay,
            node_ipc: self.node_ipc(program),
            unix_mode: self.socket_mode.map(|mode| mode.0),
            // Looked up by `run` (user names), then set there.
            unix_owner: None,
            proxy_queue_timeout: self.proxy_queue_timeout,
            proxy_in_kernel: self.proxy_kernel,
            trap_binds: self.trap_bind,
            handoff_timeout: self.handoff_timeout,
            ..ClusterOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::layers::testing::{options, resolve};
    use crate::settings::Source;

    #[test]
    fn durations_reach_the_cluster_options() {
        let settings = resolve(&[
            "--settle-time",
            "2500ms",
            "--ready-timeout",
            "7s",
            "--graceful-timeout",
            "9s",
        ]);
        let opts = options(&settings);
        assert_eq!(opts.settle_time, Duration::from_millis(2500));
        assert_eq!(opts.ready_timeout, Duration::from_secs(7));
        assert_eq!(opts.graceful_timeout, Duration::from_secs(9));
        assert_eq!(settings.source("settle-time"), Source::Flag);
    }

    #[test]
    fn listener_settings_reach_the_cluster_options() {
        let settings = resolve(&[
            "-l",
            "web=127.0.0.1:8080",
            "-l",
            "unix:/tmp/x.sock",
            "--tcp-nodelay",
            "false",
            "--socket-mode",
            "660",
            "--proxy-queue-timeout",
            "1500ms",
        ]);
        let opts = options(&settings);
        let names: Vec<Option<&str>> = opts.listeners.iter().map(|l| l.name.as_deref()).collect();
        assert_eq!(names, [Some("web"), None]);
        assert!(!opts.tcp_nodelay);
        assert_eq!(opts.unix_mode, Some(0o660));
        assert_eq!(opts.proxy_queue_timeout, Duration::from_millis(1500));
    }

    /// The defaults written in the flags are the library's.
    #[test]
    fn defaults_are_the_library_defaults() {
        let settings = resolve(&[]);
        let opts = options(&settings);
        let library = ClusterOptions::default();
        let layered = |key: &str| settings.source(key) != Source::Default;
        let unless_set = |key: &str, same: bool| assert!(same || layered(key), "{key}");
        unless_set("tcp-nodelay", opts.tcp_nodelay == library.tcp_nodelay);
        unless_set(
            "proxy-kernel",
            opts.proxy_in_kernel == library.proxy_in_kernel,
        );
        unless_set("trap-bind", opts.trap_binds == library.trap_binds);
        unless_set(
            "shutdown-delay",
            opts.shutdown_delay == library.shutdown_delay,
        );
        unless_set(
            "proxy-queue-timeout",
            opts.proxy_queue_timeout == library.proxy_queue_timeout,
        );
        unless_set(
            "handoff-timeout",
            opts.handoff_timeout == library.handoff_timeout,
        );
        unless_set(
            "settle-time",
            opts.settle_time == forkline::DEFAULT_SETTLE_TIME,
        );
        unless_set(
            "upgrade-timeout",
            opts.upgrade_timeout == library.upgrade_timeout,
        );
        unless_set(
            "min-uptime",
            opts.backoff.min_uptime == Backoff::default().min_uptime,
        );
        unless_set(
            "accept-coalesce",
            settings.accept_coalesce == forkline::DEFAULT_ACCEPT_COALESCE,
        );
        unless_set("socket-mode", opts.unix_mode.is_none());
    }
}
