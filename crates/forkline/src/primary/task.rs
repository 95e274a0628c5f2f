//! Spawning the primary's tasks so that a panic in one of them ends the primary with a clear
//! message, instead of leaving a supervisor that silently stopped supervising (a dead signal
//! task ignores SIGTERM; a dead worker task never restarts its slot).

use std::future::Future;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Exit code of a primary stopped by a panic in one of its tasks (EX_SOFTWARE).
const PANIC_EXIT_CODE: i32 = 70;

/// `tokio::spawn`, except that a panic in `future` ends the process: the default panic hook
/// has printed the panic, this adds one line naming the task, then the primary exits (its
/// workers die with it: parent-death signal, keeper, EOF on their channels).
pub(crate) fn spawn<F>(name: &'static str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(Guarded {
        name,
        future: Box::pin(future),
    })
}

/// A future that turns a panic while polling into the end of the process.
struct Guarded<F> {
    name: &'static str,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let name = this.name;
        let future = this.future.as_mut();
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                // Writing may fail (stderr closed): that must not panic again.
                let _ = writeln!(
                    std::io::stderr(),
                    "forkline: the primary's {name} task panicked; stopping the primary so \
                     that nothing runs unsupervised"
                );
                std::process::exit(PANIC_EXIT_CODE);
            }
        }
    }
}
