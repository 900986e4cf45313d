//! A timer that wakes on time: an auction's per-buyer bounds end to within tens of
//! microseconds instead of tokio's 0-2 ms late.
//!
//! tokio's timer wheel has 1 ms ticks: a sleep is rounded up to its next tick, and the
//! driver then parks for a whole number of milliseconds counted from the current tick, so
//! a bound fires 0-2 ms after it (about 1 ms on average). An auction with a buyer that
//! hangs answers its seller only when that buyer's bound passes, so the seller's answer
//! carried that lateness (P3: p99 <= T + 2 ms with hanging buyers).
//!
//! [`Deadline`] waits in two steps: tokio's timer until [`LEAD`] before the instant (cheap,
//! and most auctions end before it: every buyer answered), then a one-shot Linux
//! `timerfd` armed for what is left, read through the runtime's own event loop. So only
//! an auction still waiting in its last [`LEAD`] pays for the fine step (a timerfd made,
//! armed, registered and closed: five system calls). If the timerfd cannot be made, the
//! rest is waited with tokio's timer, as before. It never reports the instant passed
//! before [`Instant::now`] reaches it.
//!
//! Under tokio's paused time (tests), the coarse step follows the virtual clock; the fine
//! step then waits at most [`LEAD`] of real time, finds the virtual clock has not moved,
//! and finishes on tokio's timer.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::{Instant, Sleep};

/// How long before the instant the fine step takes over: more than tokio's worst lateness
/// (2 ms), so the coarse step never overshoots the instant.
pub const LEAD: Duration = Duration::from_millis(3);

enum Step {
    /// tokio's timer, until `LEAD` before the instant.
    Coarse,
    /// A timerfd armed for the rest.
    Fine(AsyncFd<OwnedFd>),
    /// tokio's timer until the instant itself (no timerfd could be made).
    Exact,
}

/// One instant to wake at, movable with [`reset`](Deadline::reset).
pub struct Deadline {
    at: Instant,
    coarse: Pin<Box<Sleep>>,
    step: Step,
    fine_allowed: bool,
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline").field("at", &self.at).finish()
    }
}

impl Deadline {
    /// Wakes at `at`, as precisely as the system allows.
    pub fn new(at: Instant) -> Deadline {
        Deadline::with_fine(at, true)
    }

    /// Wakes at `at` with tokio's timer only (0-2 ms late): what [`Deadline`] falls back to.
    pub fn coarse_only(at: Instant) -> Deadline {
        Deadline::with_fine(at, false)
    }

    fn with_fine(at: Instant, fine_allowed: bool) -> Deadline {
        let first = if fine_allowed { early(at) } else { at };
        Deadline {
            at,
            coarse: Box::pin(tokio::time::sleep_until(first)),
            step: if fine_allowed {
                Step::Coarse
            } else {
                Step::Exact
            },
            fine_allowed,
        }
    }

    /// The instant it wakes at.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Moves the instant (a no-op if it is the same one).
    pub fn reset(&mut self, at: Instant) {
        if at == self.at {
            return;
        }
        self.at = at;
        if self.fine_allowed {
            self.step = Step::Coarse;
            self.coarse.as_mut().reset(early(at));
        } else {
            self.step = Step::Exact;
            self.coarse.as_mut().reset(at);
        }
    }

    /// Ready once [`Instant::now`] has reached the instant.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &self.step {
                Step::Coarse | Step::Exact => {
                    if self.coarse.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Step::Fine(fd) => match fd.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(_)) => {}
                    // The event loop lost the descriptor: finish on tokio's timer.
                    Poll::Ready(Err(_)) => self.exact(),
                },
            }
            let left = self.at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Poll::Ready(());
            }
            match self.step {
                // The coarse step is done: a timerfd for the rest.
                Step::Coarse => match arm(left) {
                    Ok(fd) => self.step = Step::Fine(fd),
                    Err(_) => self.exact(),
                },
                // A monotonic timerfd armed for `left` after a reading of the clock does
                // not fire before it; the clock is behind only when tokio's time is
                // paused (tests), and then tokio's timer follows it. tokio's own timer
                // does not fire early either, but if it did it waits again.
                Step::Fine(_) | Step::Exact => self.exact(),
            }
        }
    }

    /// Waits until the instant.
    pub fn elapsed(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_elapsed(cx))
    }

    fn exact(&mut self) {
        self.step = Step::Exact;
        self.coarse.as_mut().reset(self.at);
    }
}

fn early(at: Instant) -> Instant {
    at.checked_sub(LEAD).unwrap_or(at)
}

/// A one-shot monotonic timerfd that becomes readable `after` from now, registered with the
/// current runtime's event loop.
fn arm(after: Duration) -> std::io::Result<AsyncFd<OwnedFd>> {
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    // A zero value disarms a timerfd: at least a nanosecond.
    let after = after.max(Duration::from_nanos(1));
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(after.subsec_nanos()),
        },
    };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
    // Deprecated because a wrapper could close its descriptor while registered (tokio
    // #8587); an `OwnedFd` owned by the `AsyncFd` is closed only after it deregisters. The
    // replacement is `unsafe`, which this workspace forbids.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, Interest::READABLE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_is_never_ready_before_its_instant() {
        // Instants inside the fine step, at its edge, past it, and already passed.
        for ms in [0u64, 1, 2, 3, 4, 7] {
            let at = Instant::now() + Duration::from_millis(ms);
            let mut d = Deadline::new(at);
            d.elapsed().await;
            assert!(Instant::now() >= at, "woke before {ms} ms");
            // Once passed, it stays passed.
            d.elapsed().await;
        }
    }

    #[tokio::test]
    async fn the_fine_step_is_a_timerfd_and_the_coarse_one_tokio() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut d = Deadline::new(Instant::now() + Duration::from_secs(60));
        assert!(d.poll_elapsed(&mut cx).is_pending());
        assert!(
            matches!(d.step, Step::Coarse),
            "far from the instant: tokio's timer"
        );
        // Until the coarse step ends (tokio's timer, up to LEAD before the instant).
        let at = Instant::now() + LEAD + Duration::from_millis(20);
        d.reset(at);
        let done = std::future::poll_fn(|cx| match d.poll_elapsed(cx) {
            Poll::Ready(()) => Poll::Ready(true),
            Poll::Pending if matches!(d.step, Step::Coarse) => Poll::Pending,
            Poll::Pending => Poll::Ready(false),
        })
        .await;
        if done {
            // A slow machine got here after the instant.
            assert!(Instant::now() >= at);
        } else {
            assert!(matches!(d.step, Step::Fine(_)), "the rest is a timerfd's");
            assert!(Instant::now() < at);
        }
        d.elapsed().await;
        assert!(Instant::now() >= at);
    }

    #[tokio::test]
    async fn a_reset_moves_the_instant_either_way() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut d = Deadline::new(far);
        let near = Instant::now() + Duration::from_millis(4);
        d.reset(near);
        assert_eq!(d.at(), near);
        d.elapsed().await;
        assert!(Instant::now() >= near);
        // Later again, after it had passed: it waits once more.
        let later = Instant::now() + Duration::from_millis(2);
        d.reset(later);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if Instant::now() < later {
            assert!(d.poll_elapsed(&mut cx).is_pending());
        }
        d.elapsed().await;
        assert!(Instant::now() >= later);
    }

    #[tokio::test]
    async fn tokio_only_is_the_fallback_and_is_never_early_either() {
        let at = Instant::now() + Duration::from_millis(3);
        let mut d = Deadline::coarse_only(at);
        d.elapsed().await;
        assert!(Instant::now() >= at);
        assert!(matches!(d.step, Step::Exact));
        d.reset(Instant::now() + Duration::from_millis(1));
        d.elapsed().await;
    }

    #[tokio::test(start_paused = true)]
    async fn under_paused_time_the_coarse_step_follows_the_virtual_clock() {
        // An hour of virtual time passes at once; the last LEAD is real time.
        let at = Instant::now() + Duration::from_secs(3600);
        let mut d = Deadline::new(at);
        d.elapsed().await;
        assert!(Instant::now() >= at);
    }
}
