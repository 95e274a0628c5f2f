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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::lifecycle::reaper::tests::{is_isolated, isolated_command};

    /// A panic in a task ends the whole process with exit code 70 and a line naming the task,
    /// instead of leaving the rest of the primary running without it.
    #[test]
    fn a_panicking_task_ends_the_process_and_names_the_task() {
        const NAME: &str = "a_panicking_task_ends_the_process_and_names_the_task";
        if is_isolated(NAME) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                spawn("doomed", async { panic!("on purpose") });
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            });
            unreachable!("the process survived a panicking task");
        }
        let run = isolated_command(module_path!(), NAME)
            .output()
            .expect("run the test binary");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(PANIC_EXIT_CODE), "{stderr}");
        assert!(
            stderr.contains("the primary's doomed task panicked"),
            "{stderr}"
        );
    }
}
