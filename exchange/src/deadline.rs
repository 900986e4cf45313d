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
//! and most auctions end before it: every buyer answered), then the thread's wheel:
//! one Linux `timerfd` per thread and runtime, armed for the earliest instant waited for,
//! read by a task of its own through the runtime's event loop. So an auction still
//! waiting in its last [`LEAD`] costs a lock and at most one `timerfd_settime`, not a
//! descriptor of its own. While in the fine step the deadline keeps tokio's timer as a
//! safety net at `LEAD` past the instant; if no timerfd can be made, it waits on tokio's
//! timer alone, as before. It never reports the instant passed before [`Instant::now`]
//! reaches it.
//!
//! Under tokio's paused time (tests), the coarse step follows the virtual clock; the
//! wheel's real-time wake-up then finds the virtual clock has not moved, and the safety
//! net, on the virtual clock, ends the wait.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
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
    /// Registered with the thread's wheel (tokio's timer, `LEAD` past the instant, is the
    /// safety net).
    Fine { wheel: Arc<Wheel>, id: u64 },
    /// tokio's timer until the instant itself (no wheel could be made).
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
        self.leave_wheel();
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
            if Instant::now() >= self.at {
                self.leave_wheel();
                return Poll::Ready(());
            }
            match &self.step {
                Step::Coarse => {
                    if self.coarse.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Within LEAD of the instant: the wheel for the rest.
                    match Wheel::current() {
                        Some(wheel) => {
                            let id = wheel.register(self.at, cx.waker());
                            self.step = Step::Fine { wheel, id };
                            self.coarse.as_mut().reset(self.at + LEAD);
                        }
                        None => self.exact(),
                    }
                }
                Step::Fine { wheel, id } => {
                    wheel.update(*id, cx.waker());
                    if self.coarse.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The safety net fired: the wheel did not (or time is paused). The
                    // instant has passed on tokio's clock; the check above says so.
                    self.leave_wheel();
                    self.exact();
                }
                Step::Exact => {
                    if self.coarse.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // tokio's timer for the instant itself has fired.
                    return Poll::Ready(());
                }
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

    fn leave_wheel(&mut self) {
        if let Step::Fine { wheel, id } = &self.step {
            wheel.forget(*id);
            self.step = Step::Coarse;
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.leave_wheel();
    }
}

fn early(at: Instant) -> Instant {
    at.checked_sub(LEAD).unwrap_or(at)
}

thread_local! {
    /// This thread's wheel, and the runtime it belongs to.
    static WHEEL: RefCell<Option<(tokio::runtime::Id, Arc<Wheel>)>> = const { RefCell::new(None) };
}

/// One timerfd for the deadlines of one thread's runtime in their fine step: armed for the
/// earliest instant registered, read by its own task ([`drive`]), which wakes the
/// deadlines whose instant has come.
struct Wheel {
    fd: AsyncFd<OwnedFd>,
    inner: Mutex<WheelInner>,
    /// Set when its task ended (the runtime is going away): a new wheel is made.
    stopped: AtomicBool,
}

#[derive(Default)]
struct WheelInner {
    /// Instants waited for (an entry whose id left `wakers` is skipped when reached).
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    wakers: HashMap<u64, Waker>,
    /// The instant the timerfd is armed for.
    armed: Option<Instant>,
    next_id: u64,
}

impl Wheel {
    /// This thread's wheel for the current runtime, made (with its task) on first use;
    /// `None` outside a runtime or if no timerfd can be made.
    fn current() -> Option<Arc<Wheel>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let rt = handle.id();
        WHEEL.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some((id, wheel)) = cell.as_ref() {
                if *id == rt && !wheel.stopped.load(Ordering::Acquire) {
                    return Some(wheel.clone());
                }
            }
            let wheel = Arc::new(Wheel::new().ok()?);
            handle.spawn(drive(wheel.clone()));
            *cell = Some((rt, wheel.clone()));
            Some(wheel)
        })
    }

    fn new() -> std::io::Result<Wheel> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // Deprecated because a wrapper could close its descriptor while registered (tokio
        // #8587); an `OwnedFd` owned by the `AsyncFd` is closed only after it deregisters.
        // The replacement is `unsafe`, which this workspace forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Wheel {
            fd,
            inner: Mutex::new(WheelInner::default()),
            stopped: AtomicBool::new(false),
        })
    }

    fn register(&self, at: Instant, waker: &Waker) -> u64 {
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        inner.due.push(Reverse((at, id)));
        inner.wakers.insert(id, waker.clone());
        if inner.armed.is_none_or(|armed| at < armed) {
            self.arm(&mut inner, at);
        }
        id
    }

    fn update(&self, id: u64, waker: &Waker) {
        let mut inner = self.inner.lock();
        if let Some(w) = inner.wakers.get_mut(&id) {
            if !w.will_wake(waker) {
                w.clone_from(waker);
            }
        }
    }

    fn forget(&self, id: u64) {
        self.inner.lock().wakers.remove(&id);
    }

    /// Arms the timerfd for `at` (relative to now: a monotonic timerfd does not fire before).
    fn arm(&self, inner: &mut WheelInner, at: Instant) {
        // A zero value disarms a timerfd: at least a nanosecond.
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
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
        // If it cannot be armed, the deadlines' safety net ends their wait.
        inner.armed = timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)
            .ok()
            .map(|_| at);
    }

    /// After the timerfd fired: the wakers whose instant has come, and the timerfd armed
    /// for the next instant still waited for.
    fn due_now(&self) -> Vec<Waker> {
        let mut inner = self.inner.lock();
        inner.armed = None;
        let now = Instant::now();
        let mut woken = Vec::new();
        while let Some(&Reverse((at, id))) = inner.due.peek() {
            let waited = inner.wakers.contains_key(&id);
            if waited && at > now {
                self.arm(&mut inner, at);
                break;
            }
            inner.due.pop();
            if let Some(w) = inner.wakers.remove(&id) {
                woken.push(w);
            }
        }
        woken
    }
}

/// The wheel's task: waits for its timerfd, clears it, wakes the deadlines that are due
/// and arms it for the next. Ends (and marks the wheel stopped) if the event loop fails.
async fn drive(wheel: Arc<Wheel>) {
    loop {
        let Ok(mut ready) = wheel.fd.readable().await else {
            break;
        };
        // The expiration count; reading it makes the descriptor not readable again.
        let mut count = [0u8; 8];
        let _ = rustix::io::read(ready.get_inner(), &mut count);
        ready.clear_ready();
        for w in wheel.due_now() {
            w.wake();
        }
    }
    wheel.stopped.store(true, Ordering::Release);
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
            assert!(
                matches!(d.step, Step::Fine { .. }),
                "the rest is a timerfd's"
            );
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

    #[tokio::test]
    async fn many_deadlines_share_one_wheel_and_each_wakes_on_its_own_instant() {
        let base = Instant::now() + Duration::from_millis(1);
        // Registered out of order, some dropped before their instant.
        let offsets_us = [2_500u64, 300, 1_700, 900, 2_100, 50, 1_200];
        let mut waits = Vec::new();
        for (i, us) in offsets_us.iter().enumerate() {
            let at = base + Duration::from_micros(*us);
            let mut d = Deadline::new(at);
            let keep = i % 3 != 1;
            waits.push(tokio::spawn(async move {
                if keep {
                    d.elapsed().await;
                    assert!(Instant::now() >= at, "woke before its instant");
                } else {
                    // Polled into the wheel, then dropped: its entry is skipped.
                    let waker = futures_util::task::noop_waker();
                    let _ = d.poll_elapsed(&mut Context::from_waker(&waker));
                    drop(d);
                }
            }));
        }
        for w in waits {
            w.await.unwrap();
        }
        let wheel = Wheel::current().expect("a wheel on Linux");
        let inner = wheel.inner.lock();
        assert!(inner.wakers.is_empty(), "nothing left waiting");
    }

    #[test]
    fn each_runtime_on_a_thread_gets_its_own_wheel() {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let at = Instant::now() + Duration::from_millis(2);
                let mut d = Deadline::new(at);
                d.elapsed().await;
                assert!(Instant::now() >= at);
                let wheel = Wheel::current().expect("a wheel");
                seen.push(Arc::as_ptr(&wheel) as usize);
            });
        }
        assert_ne!(seen[0], seen[1], "the second runtime made its own wheel");
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
