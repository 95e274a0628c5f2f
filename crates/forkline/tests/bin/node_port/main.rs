//! Test fixture for `tests/node_cluster.rs`: Node.js's own cluster tests
//! (`test/parallel/test-cluster-*.js` in nodejs/node, read from denoland/node_test), ported to
//! forkline's API, one scenario per Node file.
//!
//! `forkline-node-port SCENARIO` runs one scenario as the primary: it starts its own cluster,
//! plays the Node test's primary part, checks what the Node test checks, prints `ok` and exits 0,
//! or prints `FAIL SCENARIO: why` and exits 1. Its workers are this same program (`role()`); they
//! learn the scenario from `NODE_PORT_SCENARIO` and play the Node test's worker part. Worker-side
//! assertions end in the worker's exit code (1 when one failed), which the primary checks.
//! `forkline-node-port --list` prints every scenario with its Node file.
//!
//! How Node maps onto forkline here:
//! - Node's primary starts with no worker; a forkline cluster needs at least one. Slot 0 is
//!   therefore a *bystander* that only waits to be disconnected, and the Node test's workers are
//!   the ones the scenario `fork()`s: Node's worker ids 1, 2, ... are slots 1, 2, ... Node's
//!   `cluster.workers` and `cluster.disconnect()` leave the bystander out.
//! - `cluster.fork(env)` has no per-fork environment in forkline: a worker picks its part by its
//!   slot id, and environment variables are set for every worker with `ClusterBuilder::env`.
//! - Node's worker runtime closes its servers and then its IPC channel when the primary asks it
//!   to disconnect, and the process exits once nothing keeps it alive. A forkline worker is the
//!   program itself, so the worker parts below do just that: `accept` ends, in-flight connections
//!   finish, `Worker::disconnect()` closes the channel, `main` returns.
//! - Node's `worker.process.kill(sig)` (a raw signal that bypasses the `Worker` API) is
//!   `kill(2)` on `WorkerHandle::pid()`; Node's worker-side `cluster.worker.kill()` /
//!   `destroy()` is `Worker::disconnect()` followed by `exit(0)`.
//! - `RestartPolicy::Never`, Node's behaviour, everywhere.
//!
//! Every scenario also checks, for every worker, that its events come in Node's order: one
//! `fork` first, at most one `online` before any `listening`, `message` or `disconnect`, exactly
//! one `disconnect`, then exactly one `exit`, and nothing after it; and that no worker broke the
//! protocol and no slot was restarted. Every wait has a deadline: a scenario ends by itself
//! within about 20 s, and the primary stops its workers before it exits.
//!
//! The fixture's files: `main.rs` dispatches (this process's role, then the scenario by name);
//! `primary.rs` and `worker.rs` hold what every scenario's primary and worker parts use; the
//! scenarios are modules grouped by theme: `worker_lifecycle.rs` (one worker's life through the
//! `Worker` object), `events.rs` (events, messages and the settings a worker starts with),
//! `disconnection.rs` (`cluster.disconnect()`, and workers disconnected, killed or destroyed)
//! and `ports.rs` (servers and ports over time).

use forkline::{role, Role, Worker};

use primary::Primary;

/// Names the scenario for the workers.
const ENV_SCENARIO: &str = "NODE_PORT_SCENARIO";

/// Returns `Err(message)` from the enclosing function unless `cond` holds (Node's `assert`).
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

// Declared after `check!`, which they use.
mod disconnection;
mod events;
mod ports;
mod primary;
mod worker;
mod worker_lifecycle;

/// Lists every scenario once, by theme: `theme { name: "Node file"; ... }`. Each name is a
/// module of the theme's file with `async fn primary() -> Result<Primary, String>` and
/// `async fn worker(Worker, usize) -> i32`.
macro_rules! scenarios {
    ($($theme:ident { $($name:ident: $node:literal;)* })*) => {
        /// Every scenario and the Node test it ports.
        const SCENARIOS: &[(&str, &str)] = &[$($((stringify!($name), $node),)*)*];

        async fn run_primary(name: &str) -> Result<Primary, String> {
            match name {
                $($(stringify!($name) => $theme::$name::primary().await,)*)*
                other => Err(format!("unknown scenario {other:?} (try --list)")),
            }
        }

        async fn run_worker(name: &str, worker: Worker, id: usize) -> i32 {
            match name {
                $($(stringify!($name) => $theme::$name::worker(worker, id).await,)*)*
                other => {
                    eprintln!("[worker {id}] unknown scenario {other:?}");
                    91
                }
            }
        }
    };
}

scenarios! {
    worker_lifecycle {
        worker_events: "test/parallel/test-cluster-worker-events.js";
        worker_isconnected: "test/parallel/test-cluster-worker-isconnected.js";
        worker_isdead: "test/parallel/test-cluster-worker-isdead.js";
        worker_exit: "test/parallel/test-cluster-worker-exit.js";
        worker_death: "test/parallel/test-cluster-worker-death.js";
        worker_kill: "test/parallel/test-cluster-worker-kill.js";
        worker_kill_signal: "test/parallel/test-cluster-worker-kill-signal.js";
        worker_disconnect: "test/parallel/test-cluster-worker-disconnect.js";
        worker_destroy: "test/parallel/test-cluster-worker-destroy.js";
        worker_forced_exit: "test/parallel/test-cluster-worker-forced-exit.js";
        worker_init: "test/parallel/test-cluster-worker-init.js";
        worker_no_exit: "test/parallel/test-cluster-worker-no-exit.js";
        worker_wait_server_close: "test/parallel/test-cluster-worker-wait-server-close.js";
        worker_disconnect_on_error: "test/parallel/test-cluster-worker-disconnect-on-error.js";
    }
    events {
        basic: "test/parallel/test-cluster-basic.js";
        listening_port: "test/parallel/test-cluster-listening-port.js";
        message: "test/parallel/test-cluster-message.js";
        invalid_message: "test/parallel/test-cluster-invalid-message.js";
        fork_env: "test/parallel/test-cluster-fork-env.js";
        setup_primary: "test/parallel/test-cluster-setup-primary.js";
        cwd: "test/parallel/test-cluster-cwd.js";
    }
    disconnection {
        disconnect: "test/parallel/test-cluster-disconnect.js";
        disconnect_before_exit: "test/parallel/test-cluster-disconnect-before-exit.js";
        disconnect_idle_worker: "test/parallel/test-cluster-disconnect-idle-worker.js";
        disconnect_leak: "test/parallel/test-cluster-disconnect-leak.js";
        disconnect_unshared_tcp: "test/parallel/test-cluster-disconnect-unshared-tcp.js";
        disconnect_unshared_udp: "test/parallel/test-cluster-disconnect-unshared-udp.js";
        disconnect_race: "test/parallel/test-cluster-disconnect-race.js";
        disconnect_exited_after_disconnect_race:
            "test/parallel/test-cluster-disconnect-exitedAfterDisconnect-race.js";
        concurrent_disconnect: "test/parallel/test-cluster-concurrent-disconnect.js";
        shared_leak: "test/parallel/test-cluster-shared-leak.js";
        kill_disconnect: "test/parallel/test-cluster-kill-disconnect.js";
        kill_infinite_loop: "test/parallel/test-cluster-kill-infinite-loop.js";
        call_and_destroy: "test/parallel/test-cluster-call-and-destroy.js";
        process_disconnect: "test/parallel/test-cluster-process-disconnect.js";
    }
    ports {
        server_restart_rr: "test/parallel/test-cluster-server-restart-rr.js";
        server_restart_none: "test/parallel/test-cluster-server-restart-none.js";
        port_reuse_between_workers: "test/sequential/test-cluster-port-reuse-between-workers.js";
        eaddrinuse: "test/parallel/test-cluster-eaddrinuse.js";
        shared_handle_bind_error: "test/parallel/test-cluster-shared-handle-bind-error.js";
    }
}

fn main() {
    match role() {
        Role::Primary => primary::primary_main(),
        Role::Worker(id) => worker::worker_main(id),
    }
}
