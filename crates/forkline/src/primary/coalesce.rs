//! Accept coalescing for round-robin mode: while connections keep arriving, the primary's
//! accept loop wakes up on a short one-shot timer and takes everything queued since, instead of
//! waking up once per connection.
//!
//! A wake-up costs the primary a context switch (and, across CPUs, an inter-processor
//! interrupt) and costs each worker another one for the packet it is handed. Under load, with
//! connections a few tens of microseconds apart, those wake-ups are most of the primary's work;
//! batching them is what interrupt moderation does for a network card. While the loop is *cold*
//! (the last timer found nothing) it waits on the socket as usual, so a connection arriving
//! after a quiet spell is handed out at once: only connections that arrive while others are
//! still streaming in wait, and never longer than the window. Waiting connections stay in the
//! kernel's accept queue; nothing is held in the primary.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// A one-shot, high-resolution timer (a `timerfd`; tokio's own timers tick in milliseconds).
pub(crate) struct CoalesceTimer {
    timer: TimerFd,
    /// A second descriptor of the same timer, registered with the runtime.
    ready: AsyncFd<OwnedFd>,
    window: Duration,
}

impl CoalesceTimer {
    /// A timer that fires `window` after each [`wait`](Self::wait) starts.
    pub fn new(window: Duration) -> io::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let registered = timer.as_fd().try_clone_to_owned()?;
        let ready = crate::sys::async_fd(registered, tokio::io::Interest::READABLE)?;
        Ok(Self {
            timer,
            ready,
            window,
        })
    }

    /// Waits one window.
    pub async fn wait(&self) -> io::Result<()> {
        self.timer.set(
            Expiration::OneShot(TimeSpec::from_duration(self.window)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut guard = self.ready.readable().await?;
            // Reading the expiration count empties the timer; EAGAIN means a stale wake-up.
            let read = nix::unistd::read(self.ready.get_ref(), &mut [0u8; 8]);
            guard.clear_ready();
            match read {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
