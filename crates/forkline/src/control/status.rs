//! The answer to `status`: the cluster ([`Status`]) and each of its slots ([`SlotStatus`]),
//! with the closed sets of values some of their fields take ([`Steering`],
//! [`MigrationStatus`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::primary::WorkerState;
use crate::protocol::Mode;

/// The cluster at one moment: the answer to `status` (what `Cluster::stats()` reports).
///
/// The connection counters (`accepted_total`, `handed_off_total`, `redispatched_total`,
/// `accept_errors_total`) count what the primary does with connections, so they are 0 in the
/// modes where the workers accept by themselves (shared, reuseport, steer).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The cluster's name (`ClusterBuilder::name`), if it has one.
    pub name: Option<String>,
    /// The primary's process id.
    pub pid: u32,
    /// The distribution mode.
    pub mode: Mode,
    /// Steer mode: how connections are steered; `None` in other modes.
    pub steering: Option<Steering>,
    /// The addresses it listens on.
    pub addresses: Vec<String>,
    /// How long the primary has run, in seconds (to the millisecond).
    pub uptime_secs: f64,
    /// The number of worker slots it keeps.
    pub target: usize,
    /// Workers ready to serve.
    pub ready: usize,
    /// One entry per slot, by slot.
    pub workers: Vec<SlotStatus>,
    /// Notify messages dropped because they came from outside a worker's process group.
    pub notify_rejected: u64,
    /// Reuseport mode: how a closing worker's queued connections reach the others, or that
    /// they do not; `None` in other modes (or before the first socket).
    pub reuseport_migration: Option<MigrationStatus>,
    /// Connections the primary accepted (round-robin and proxy modes).
    pub accepted_total: u64,
    /// Connections handed to a worker: passed over its channel (round-robin) or connected to
    /// its port (proxy). A connection taken back and handed elsewhere counts once per handoff.
    pub handed_off_total: u64,
    /// Connections taken back from a worker and handed to another: round-robin, those a worker
    /// never read (it died, stopped reading, or gave them back); proxy, those a worker refused.
    pub redispatched_total: u64,
    /// Failed `accept` calls of the primary (EMFILE, ENFILE, ENOBUFS, ...).
    pub accept_errors_total: u64,
    /// A rolling reload is in progress.
    pub reloading: bool,
}

/// One slot and its current worker, in a [`Status`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot (the worker's `FORKLINE_WORKER_ID`).
    pub slot: usize,
    /// The current worker's pid, while it runs.
    pub pid: Option<u32>,
    /// The current worker's state, while there is one.
    pub state: Option<WorkerState>,
    /// How long the current worker has run, in seconds (to the millisecond).
    pub uptime_secs: Option<f64>,
    /// The slot's restarts so far.
    pub restarts: u64,
    /// Consecutive deaths soon after starting (`crash_loop` once it reaches
    /// `crash_loop_after`). Not sent by primaries of today: absent, it reads as `None`, and
    /// `None` is not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// Connections handed to the current worker (round-robin, proxy).
    pub connections: u64,
    /// Connections the current worker holds as far as the primary knows: round-robin, handed
    /// to it and not acknowledged yet (acks come in batches); proxy, relays open to it. 0 in
    /// shared, reuseport and steer modes.
    pub connections_in_flight: u64,
    /// Connections handed to the current worker that it kept: `connections` less those taken
    /// back and served by another worker. 0 in shared, reuseport and steer modes.
    pub connections_served: u64,
    /// The current worker's resident memory, in bytes.
    pub rss_bytes: Option<u64>,
    /// CPU time the current worker used (user and system), in seconds.
    pub cpu_seconds: Option<f64>,
    /// The current worker's CPU use in percent of one CPU (100 = one busy core), since the
    /// previous status at least a second earlier, or since it started.
    pub cpu_percent: Option<f64>,
    /// The pid of a replacement on trial beside the current worker (reload, recycling).
    pub replacement_pid: Option<u32>,
    /// True while the slot keeps dying young.
    pub crash_loop: bool,
    /// True once the slot reached `max_restarts` and is no longer restarted.
    pub gave_up: bool,
    /// The CPU the slot's worker is pinned to (`cpu_affinity`; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<usize>,
    /// How the slot's last worker process ended (none has yet: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<super::LastExit>,
}

/// How steer mode, or proxy mode, steers connections ([`Status::steering`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Steering {
    /// `bpf-round-robin`: a BPF program picks each new connection's worker in the kernel, in
    /// turn over the ready workers.
    BpfRoundRobin,
    /// `bpf-least-conn`: a BPF program picks the ready worker with the fewest open connections.
    BpfLeastConn,
    /// `fallback-round-robin`: BPF was refused; the primary accepts and hands connections out
    /// (library workers).
    FallbackRoundRobin,
    /// `fallback-reuseport`: BPF was refused; each worker accepts on its own socket and the
    /// kernel hashes.
    FallbackReuseport,
    /// `proxy-kernel`: proxy mode, and a BPF program (`SK_LOOKUP`) sends each new connection
    /// straight to the own listener of a worker in turn; the primary relays only what it
    /// misses.
    ProxyKernel,
    /// `proxy-relay`: proxy mode, and the primary relays every connection (kernel steering
    /// was refused, turned off, or not round-robin).
    ProxyRelay,
}

impl Steering {
    /// Every value, in declaration order.
    pub const ALL: [Steering; 6] = [
        Steering::BpfRoundRobin,
        Steering::BpfLeastConn,
        Steering::FallbackRoundRobin,
        Steering::FallbackReuseport,
        Steering::ProxyKernel,
        Steering::ProxyRelay,
    ];

    /// Its name on the wire: `bpf-round-robin`, `bpf-least-conn`, `fallback-round-robin`,
    /// `fallback-reuseport`, `proxy-kernel`, `proxy-relay`.
    pub fn name(self) -> &'static str {
        match self {
            Steering::BpfRoundRobin => "bpf-round-robin",
            Steering::BpfLeastConn => "bpf-least-conn",
            Steering::FallbackRoundRobin => "fallback-round-robin",
            Steering::FallbackReuseport => "fallback-reuseport",
            Steering::ProxyKernel => "proxy-kernel",
            Steering::ProxyRelay => "proxy-relay",
        }
    }

    /// The value named `name` (as [`name`](Steering::name) gives it).
    pub fn parse(name: &str) -> Option<Steering> {
        Steering::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reuseport mode: what becomes of the connections queued on a closing worker's socket
/// ([`Status::reuseport_migration`]); what [`Migration`](crate::Migration) chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum MigrationStatus {
    /// `bpf`: they move to another worker's socket (a BPF program on each reuseport group).
    Bpf,
    /// `sysctl`: they move to another worker's socket (`net.ipv4.tcp_migrate_req` is 1).
    Sysctl,
    /// `off`: they are reset.
    Off,
}

impl MigrationStatus {
    /// Every value, in declaration order.
    pub const ALL: [MigrationStatus; 3] = [
        MigrationStatus::Bpf,
        MigrationStatus::Sysctl,
        MigrationStatus::Off,
    ];

    /// Its name on the wire: `bpf`, `sysctl`, `off`.
    pub fn name(self) -> &'static str {
        match self {
            MigrationStatus::Bpf => "bpf",
            MigrationStatus::Sysctl => "sysctl",
            MigrationStatus::Off => "off",
        }
    }

    /// The value named `name` (as [`name`](MigrationStatus::name) gives it).
    pub fn parse(name: &str) -> Option<MigrationStatus> {
        MigrationStatus::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    use crate::control::Reply;

    /// `forkline status --json` of real clusters (`forkline run -w 2` of small Python servers),
    /// as the primary sent it with `ok` taken out: proxy mode after 20 connections; reuseport;
    /// steer with BPF, and with BPF refused; shared during a reload; a slot crash-looping
    /// between two workers.
    const CAPTURED: [&str; 6] = [
        include_str!("testdata/status_proxy.json"),
        include_str!("testdata/status_reuseport.json"),
        include_str!("testdata/status_steer.json"),
        include_str!("testdata/status_steer_fallback.json"),
        include_str!("testdata/status_reloading.json"),
        include_str!("testdata/status_crash_loop.json"),
    ];

    fn captured(i: usize) -> Status {
        serde_json::from_str(CAPTURED[i]).unwrap()
    }

    #[test]
    fn captured_statuses_read_and_write_back_the_same() {
        for text in CAPTURED {
            let status: Status = serde_json::from_str(text).unwrap();
            // Written again as a `Value` prints it (keys sorted), it is the same text.
            let again = serde_json::to_value(&status).unwrap().to_string();
            assert_eq!(again, text.trim_end());
            assert_eq!(serde_json::from_str::<Status>(&again).unwrap(), status);
            // And as a reply, with `ok`.
            let mut reply = serde_json::to_value(&status).unwrap();
            reply["ok"] = true.into();
            let read: Reply<Status> = serde_json::from_value(reply).unwrap();
            assert_eq!(read, Reply::Ok(status));
        }
    }

    #[test]
    fn captured_statuses_have_their_values() {
        let proxy = captured(0);
        assert_eq!(proxy.name.as_deref(), Some("px"));
        assert_eq!(proxy.mode, Mode::Proxy);
        assert_eq!((proxy.steering, proxy.reuseport_migration), (None, None));
        assert_eq!(proxy.accepted_total, 20);
        assert_eq!(proxy.workers.len(), proxy.target);
        let slot = &proxy.workers[1];
        assert_eq!(slot.slot, 1);
        assert_eq!(slot.state, Some(WorkerState::Ready));
        assert_eq!(slot.connections_served, 10);
        assert_eq!(slot.failures, None, "not sent today");
        let reuseport = captured(1);
        assert_eq!(reuseport.mode, Mode::Reuseport);
        assert_eq!(reuseport.reuseport_migration, Some(MigrationStatus::Bpf));
        assert_eq!(captured(2).steering, Some(Steering::BpfRoundRobin));
        let fallback = captured(3);
        assert_eq!(fallback.steering, Some(Steering::FallbackReuseport));
        assert_eq!(fallback.reuseport_migration, Some(MigrationStatus::Sysctl));
        let reloading = captured(4);
        assert!(reloading.reloading);
        assert!(reloading.workers[0].replacement_pid.is_some());
        let crashing = &captured(5).workers[0];
        assert!(crashing.crash_loop);
        assert_eq!((crashing.pid, crashing.state), (None, None));
        assert_eq!((crashing.rss_bytes, crashing.cpu_percent), (None, None));
    }

    #[test]
    fn a_status_round_trips() {
        let slot = SlotStatus {
            slot: 1,
            pid: Some(4243),
            state: Some(WorkerState::Draining),
            uptime_secs: Some(1.5),
            failures: Some(2),
            cpu_percent: Some(12.3),
            replacement_pid: Some(4250),
            crash_loop: true,
            ..SlotStatus::default()
        };
        let status = Status {
            name: Some("web".into()),
            pid: 42,
            mode: Mode::Steer,
            steering: Some(Steering::BpfLeastConn),
            reuseport_migration: Some(MigrationStatus::Bpf),
            addresses: vec!["127.0.0.1:8080".into()],
            workers: vec![SlotStatus::default(), slot],
            reloading: true,
            ..Status::default()
        };
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), status);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["workers"][1]["failures"], 2);
        assert!(
            value["workers"][0].get("failures").is_none(),
            "None is not written"
        );
        assert_eq!(value["workers"][0]["pid"], Value::Null);
        assert_eq!(value["steering"], "bpf-least-conn");
        assert_eq!(value["mode"], "steer");
    }

    #[test]
    fn a_status_missing_a_field_of_today_is_an_error() {
        let mut value: Value = serde_json::from_str(CAPTURED[0]).unwrap();
        value.as_object_mut().unwrap().remove("accepted_total");
        let error = serde_json::from_value::<Status>(value).unwrap_err();
        assert!(error.to_string().contains("accepted_total"), "{error}");
        let bad_state = json!({"slot": 0, "pid": 1, "state": "sleeping", "uptime_secs": 1.0,
            "restarts": 0, "connections": 0, "connections_in_flight": 0,
            "connections_served": 0, "rss_bytes": null, "cpu_seconds": null,
            "cpu_percent": null, "replacement_pid": null, "crash_loop": false, "gave_up": false});
        let error = serde_json::from_value::<SlotStatus>(bad_state).unwrap_err();
        assert!(error.to_string().contains("sleeping"), "{error}");
    }

    #[test]
    fn the_enums_are_named_as_on_the_wire() {
        for steering in Steering::ALL {
            assert_eq!(serde_json::to_value(steering).unwrap(), steering.name());
            assert_eq!(steering.to_string(), steering.name());
            assert_eq!(Steering::parse(steering.name()), Some(steering));
            let read: Steering = serde_json::from_value(json!(steering.name())).unwrap();
            assert_eq!(read, steering);
        }
        for migration in MigrationStatus::ALL {
            assert_eq!(serde_json::to_value(migration).unwrap(), migration.name());
            assert_eq!(migration.to_string(), migration.name());
            assert_eq!(MigrationStatus::parse(migration.name()), Some(migration));
            let read: MigrationStatus = serde_json::from_value(json!(migration.name())).unwrap();
            assert_eq!(read, migration);
        }
        assert_eq!(Steering::parse("bpf"), None);
        assert_eq!(MigrationStatus::parse("auto"), None);
    }
}
