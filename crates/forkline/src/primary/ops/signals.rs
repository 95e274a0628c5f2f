//! The primary's signals, gunicorn's conventions: TERM/INT graceful stop, QUIT quick stop, HUP
//! rolling reload, TTIN/TTOU one worker more/less, USR2 upgrade (a new primary takes over). The handler only notes the signal; this
//! task's loop acts on it.

use tokio::signal::unix::{signal, SignalKind};

use crate::error::Result;
use crate::primary::cluster::Cluster;
use crate::primary::task;

/// Starts the task that acts on the primary's signals.
pub(crate) fn handle(cluster: Cluster) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut ttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    task::spawn("signals", async move {
        loop {
            tokio::select! {
                _ = term.recv() => cluster.shutdown(),
                _ = int.recv() => cluster.shutdown(),
                _ = quit.recv() => cluster.shutdown_now(),
                _ = hup.recv() => {
                    let cluster = cluster.clone();
                    task::spawn("reload", async move {
                        // A failed replacement is logged and reported where it happens.
                        let _ = cluster.reload().await;
                    });
                }
                _ = usr2.recv() => {
                    let cluster = cluster.clone();
                    task::spawn("upgrade", async move {
                        // A failed upgrade is logged and reported where it happens.
                        let _ = cluster.upgrade().await;
                    });
                }
                _ = ttin.recv() => {
                    let _ = cluster.scale(cluster.target() + 1);
                }
                _ = ttou.recv() => {
                    let n = cluster.target();
                    if n > 1 {
                        let _ = cluster.scale(n - 1);
                    }
                }
            }
        }
    });
    Ok(())
}
