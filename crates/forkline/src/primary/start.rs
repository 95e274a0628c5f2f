//! Starting a cluster, top to bottom: adopt what an upgrade handed over, bind the listeners,
//! the control socket and the metrics endpoint before anything forks (a clash is a start
//! error naming the address), build the core, start the primary's own tasks (reaper, keeper
//! watch, signals, recycling, reclaiming), serve the outside (at once, or once an upgrade's
//! predecessor lets go), and start the first workers.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::primary::core::Core;
use crate::primary::lifecycle::notify_dir::NotifyDir;
use crate::primary::lifecycle::supervisor::{self, Start};
use crate::primary::lifecycle::{keeper_watch, reaper, recycle};
use crate::primary::ops::{control, signals, upgrade};
use crate::primary::options::ClusterOptions;
use crate::primary::task;
use crate::primary::traffic::dispatch::accept;
use crate::primary::traffic::listeners::{BindOptions, ListenKey, ListenerTable};
use crate::primary::traffic::{proxy, steering};
use crate::protocol::{Mode, SocketKind};

/// Starts a cluster with `opts`; `expect_protocol` when its workers are library workers.
pub(crate) async fn start(mut opts: ClusterOptions, expect_protocol: bool) -> Result<Arc<Core>> {
    check_metrics_feature(&opts)?;
    // Started by an upgrade: the old primary's sockets are ours to serve.
    let mut successor = upgrade::Successor::take();
    if let Some(successor) = successor.as_mut() {
        if opts.inherited.is_empty() {
            let listeners = std::mem::take(&mut successor.listeners);
            opts.inherited = listeners.into_iter().map(Arc::new).collect();
        }
    }
    let listeners = ListenerTable::new(BindOptions {
        nodelay: opts.tcp_nodelay,
        unix_mode: opts.unix_mode,
        unix_owner: opts.unix_owner,
        migration: opts.reuseport_migration,
        balance: opts.balance,
    });
    let mut prebound = Vec::new();
    for (index, spec) in opts.listeners.iter().enumerate() {
        let key = ListenKey {
            kind: spec.kind,
            address: spec.address.clone(),
            mode: opts.mode,
            index: 0,
        };
        let listener = match opts.inherited.get(index) {
            Some(fd) => listeners.adopt(key, fd.try_clone()?)?,
            None => listeners.get_or_bind(key)?.0,
        };
        listener.pin();
        prebound.push(listener);
    }
    // Bound before anything starts: a clash is a start error naming the path.
    let handed_control = successor.as_mut().and_then(|s| s.control.take());
    let control = match (&opts.control, handed_control) {
        (Some(path), Some(fd)) => Some(control::adopt(path, fd)?),
        (Some(path), None) => Some(control::bind(path)?),
        (None, _) => None,
    };
    let metrics = match &opts.metrics {
        Some(address) => {
            let handed = successor.as_mut().and_then(|s| s.metrics.take());
            Some((address.clone(), bind_metrics(address, handed).await?))
        }
        None => None,
    };
    let notify_dir = if opts.notify_socket {
        Some(NotifyDir::create(Some((opts.uid, opts.gid)))?)
    } else {
        None
    };
    let core = Core::new(opts, expect_protocol, listeners, prebound, notify_dir);
    let opts = core.opts();
    keeper_watch::start(&core);
    if opts.mode == Mode::Steer {
        steering::probe_at_start(&core);
    }
    if opts.subreaper {
        reaper::become_subreaper()?;
    }
    if reaper::needed() {
        task::spawn("reaper", reaper::run(reaper::registry()));
    }
    if opts.handle_signals {
        signals::handle(core.clone())?;
    }
    // What serves the outside: at once, or, started by an upgrade, once this primary's
    // workers are ready and the old primary has stopped accepting.
    let serving = core.clone();
    let serve = move || {
        if let Some(listener) = control {
            control::serve(serving.clone(), listener);
        }
        if let Some((address, listener)) = metrics {
            serve_metrics(&serving, &address, listener);
        }
        if serving.opts().mode == Mode::Proxy {
            let first_tcp = serving
                .prebound()
                .iter()
                .find(|l| l.kind == SocketKind::Tcp);
            if let Some(listener) = first_tcp {
                proxy::start_kernel_steering(
                    serving.proxy(),
                    serving.opts(),
                    serving.stop_accepting().subscribe(),
                    listener,
                );
            }
        }
        for listener in serving.prebound() {
            match serving.opts().mode {
                Mode::RoundRobin => accept::start_accepting(&serving, listener),
                Mode::Proxy => proxy::start_accepting(
                    serving.proxy(),
                    serving.opts().balance,
                    serving.stop_accepting().subscribe(),
                    listener,
                ),
                Mode::Shared | Mode::Reuseport | Mode::Steer => {}
            }
        }
    };
    match successor {
        Some(successor) => upgrade::take_over_when_ready(&core, successor, serve),
        None => serve(),
    }
    accept::start_reclaiming(&core);
    if opts.mode == Mode::Proxy {
        proxy::start_stopped_checks(core.proxy(), core.stop_accepting().subscribe());
    }
    if opts.max_requests.is_some() || opts.max_memory.is_some() {
        task::spawn("recycle", recycle::watch(core.clone()));
    }
    for slot in 0..opts.workers {
        supervisor::start_worker(&core, Start::Slot(slot))?;
    }
    Ok(core)
}

/// Binds `address` for `/metrics`, `/healthz` and `/readyz` (or adopts the socket an upgrade
/// handed over). Without the `axum` feature a metrics address is refused before this
/// (`check_metrics_feature`).
async fn bind_metrics(
    address: &str,
    inherited: Option<OwnedFd>,
) -> Result<tokio::net::TcpListener> {
    let listen_error = |source| Error::Listen {
        address: address.to_string(),
        source,
    };
    let listener = match inherited {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true).map_err(listen_error)?;
            tokio::net::TcpListener::from_std(listener).map_err(listen_error)?
        }
        None => tokio::net::TcpListener::bind(address)
            .await
            .map_err(listen_error)?,
    };
    Ok(listener)
}

#[cfg(feature = "axum")]
fn serve_metrics(core: &Arc<Core>, address: &str, listener: tokio::net::TcpListener) {
    if let Ok(copy) = crate::sys::dup_cloexec(std::os::fd::AsFd::as_fd(&listener)) {
        core.upgrades().keep_metrics(copy);
    }
    // The address as bound: the real port when 0 was asked for.
    let bound = listener.local_addr().map(|a| a.to_string());
    let address = bound.as_deref().unwrap_or(address);
    tracing::info!(%address, "metrics at /metrics, probes at /healthz and /readyz");
    crate::primary::ops::metrics::serve(core.clone(), listener);
}

#[cfg(not(feature = "axum"))]
fn serve_metrics(_: &Arc<Core>, _: &str, _: tokio::net::TcpListener) {}

#[cfg(not(feature = "axum"))]
fn check_metrics_feature(opts: &ClusterOptions) -> Result<()> {
    match opts.metrics {
        Some(_) => Err(Error::InvalidOption {
            field: "metrics",
            reason: "forkline was built without its `axum` feature".into(),
        }),
        None => Ok(()),
    }
}

#[cfg(feature = "axum")]
fn check_metrics_feature(_: &ClusterOptions) -> Result<()> {
    Ok(())
}
