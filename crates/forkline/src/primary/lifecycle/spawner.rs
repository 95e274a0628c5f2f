//! The one long-lived thread that starts every worker process.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Tokio
//! may retire its threads at any time, so workers are forked from this thread, which lives as
//! long as the primary. Reaping stays with tokio (`tokio::process::Child::wait`), the one place
//! that reaps a worker; each is recorded in the reaper's registry as it starts, so the orphan
//! reaper (PID 1, subreaper) never takes it.

use std::io;
use std::sync::mpsc as std_mpsc;
use std::sync::OnceLock;

use tokio::process::Child;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Request {
    command: std::process::Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<std::sync::Mutex<std_mpsc::Sender<Request>>> = OnceLock::new();

/// Starts `command` from the spawner thread and returns the tokio child, registered with the
/// runtime that first used the spawner.
pub(crate) async fn spawn(command: std::process::Command) -> io::Result<Child> {
    let sender = SPAWNER
        .get_or_init(|| std::sync::Mutex::new(start_thread(Handle::current())))
        .lock()
        .unwrap()
        .clone();
    let (reply, answer) = oneshot::channel();
    sender
        .send(Request { command, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

fn start_thread(runtime: Handle) -> std_mpsc::Sender<Request> {
    let (tx, rx) = std_mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("forkline-spawner".into())
        .spawn(move || {
            let _entered = runtime.enter();
            let registry = crate::primary::lifecycle::reaper::registry();
            for request in rx {
                // Recorded before the orphan reaper can see it: tokio reaps this child.
                let mut registered = registry.lock();
                let result = tokio::process::Command::from(request.command).spawn();
                if let Some(pid) = result.as_ref().ok().and_then(|child| child.id()) {
                    registered.insert(pid);
                }
                drop(registered);
                let _ = request.reply.send(result);
            }
        })
        .expect("failed to start the forkline spawner thread");
    tx
}
