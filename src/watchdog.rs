//! A time limit on waits that may never end: a rank of a data-parallel
//! run waiting in a collective for a rank that hangs (a stuck file system,
//! a deadlocked loader, a GPU fault) waits forever, NCCL has no time limit
//! of its own, and the launcher only acts when some rank exits. The
//! watchdog turns such a wait into an exit with a message, after which the
//! launcher stops the rest.
//!
//! One thread per watchdog sleeps until the armed wait's deadline; the
//! waiting thread cannot be interrupted (it is inside the CUDA driver), so
//! what happens at expiry is the owner's callback, in production an
//! immediate exit of the process.
//!
//! Time the process spends stopped does not count (beyond one tick): a job
//! suspended with Ctrl-Z or SIGSTOP (a scheduler's suspend) stops every
//! rank, and none of them should give up on the others when it resumes.
//! The clock does not say that a process was stopped, so the thread sleeps
//! in short ticks, and a tick that ends much later than asked (or a first
//! look at a wait much later than its arming) moves the deadline by the
//! excess. A thread starved of the CPU gets the same credit.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The wait being watched: its description and deadline, and a number
/// that tells one arming from the next.
struct Armed {
    what: String,
    deadline: Instant,
    serial: u64,
    /// When it was armed: the watch thread may first see it late (the
    /// process stopped in between).
    since: Instant,
}

/// The longest the thread sleeps at a time while a wait is armed: a tenth
/// of the limit, from 10 ms to 10 s. A wake-up later than asked by more
/// than a tick means the process was stopped (or starved) meanwhile.
fn tick_of(limit: Duration) -> Duration {
    (limit / 10).clamp(Duration::from_millis(10), Duration::from_secs(10))
}

struct State {
    armed: Option<Armed>,
    serial: u64,
    /// Set when the watchdog is dropped: the thread ends.
    closed: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// Calls its callback when a wait outlives the time limit.
pub struct Watchdog {
    shared: Shared,
    limit: Duration,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watchdog({} s)", self.limit.as_secs_f64())
    }
}

/// A wait under watch; dropping it ends the watch.
#[must_use = "the watch ends when this is dropped"]
pub struct Watch<'a> {
    watchdog: &'a Watchdog,
    serial: u64,
}

impl Watchdog {
    /// A watchdog that calls `on_expiry` with a wait's description (what
    /// [`Watchdog::watch`] was given) once that wait passes `limit`.
    pub fn new(limit: Duration, on_expiry: impl Fn(&str) + Send + 'static) -> Self {
        let shared: Shared = Arc::new((
            Mutex::new(State {
                armed: None,
                serial: 0,
                closed: false,
            }),
            Condvar::new(),
        ));
        let watched = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch_loop(&watched, tick_of(limit), &on_expiry))
            .expect("cannot start the watchdog thread");
        Self { shared, limit }
    }

    /// The time limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Watches the wait described by `what` until the returned guard is
    /// dropped. One wait at a time: a new watch replaces the last. A limit
    /// too large to add to the clock (`u64::MAX` seconds, say) never ends
    /// a wait.
    pub fn watch(&self, what: impl Into<String>) -> Watch<'_> {
        let (lock, wake) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        state.serial += 1;
        let serial = state.serial;
        let now = Instant::now();
        state.armed = now.checked_add(self.limit).map(|deadline| Armed {
            what: what.into(),
            deadline,
            serial,
            since: now,
        });
        wake.notify_all();
        Watch {
            watchdog: self,
            serial,
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let (lock, wake) = &*self.watchdog.shared;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .armed
            .as_ref()
            .is_some_and(|a| a.serial == self.serial)
        {
            state.armed = None;
            wake.notify_all();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        wake.notify_all();
    }
}

fn watch_loop(shared: &Shared, tick: Duration, on_expiry: &dyn Fn(&str)) {
    let (lock, wake) = &**shared;
    let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
    // The last timed sleep: when it began, for how long, and the wait
    // armed then.
    let mut slept: Option<(Instant, Duration, u64)> = None;
    loop {
        if state.closed {
            return;
        }
        let now = Instant::now();
        let last = slept.take();
        let Some(armed) = &mut state.armed else {
            state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        // Since the thread last looked at this wait: its timed sleep, or
        // (a wait it has not slept on yet) since the wait was armed.
        let (began, asked) = match last {
            Some((began, asked, serial)) if serial == armed.serial => (began, asked),
            _ => (armed.since, Duration::ZERO),
        };
        let late = now.saturating_duration_since(began).saturating_sub(asked);
        if late > tick {
            // Stopped meanwhile (or starved): not the others' delay.
            if let Some(later) = armed.deadline.checked_add(late) {
                armed.deadline = later;
            }
        }
        if now < armed.deadline {
            let asked = (armed.deadline - now).min(tick);
            slept = Some((now, asked, armed.serial));
            state = wake
                .wait_timeout(state, asked)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        // Expired: reported once, then watched no more.
        let what = armed.what.clone();
        state.armed = None;
        drop(state);
        on_expiry(&what);
        state = lock.lock().unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watchdog(limit: Duration) -> (Watchdog, mpsc::Receiver<String>) {
        let (send, receive) = mpsc::channel();
        let dog = Watchdog::new(limit, move |what| {
            let _ = send.send(what.to_string());
        });
        (dog, receive)
    }

    /// A wait past the limit is reported, once, by its description.
    #[test]
    fn a_wait_past_the_limit_is_reported_once() {
        let (dog, expired) = watchdog(Duration::from_millis(50));
        let _watch = dog.watch("the all-reduce of step 3");
        let what = expired
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait was not reported");
        assert_eq!(what, "the all-reduce of step 3");
        assert!(
            expired.recv_timeout(Duration::from_millis(300)).is_err(),
            "reported twice"
        );
    }

    /// A wait that ends in time is not reported, though the watchdog then
    /// goes on past its deadline; the next wait is watched again.
    #[test]
    fn a_wait_that_ends_in_time_is_not_reported() {
        let (dog, expired) = watchdog(Duration::from_millis(1000));
        drop(dog.watch("a wait that ended"));
        assert!(
            expired.recv_timeout(Duration::from_millis(1500)).is_err(),
            "a wait that ended was reported"
        );
        let _watch = dog.watch("a wait that did not end");
        let what = expired
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait was not reported");
        assert_eq!(what, "a wait that did not end");
    }

    /// A limit past the clock's range never fires (and does not panic).
    #[test]
    fn a_limit_past_the_clocks_range_never_fires() {
        let (dog, expired) = watchdog(Duration::from_secs(u64::MAX));
        let _watch = dog.watch("a wait without limit");
        assert!(expired.recv_timeout(Duration::from_millis(200)).is_err());
    }

    /// A watch that replaced another keeps its own deadline: dropping the
    /// replaced guard late does not end it.
    #[test]
    fn a_replaced_watch_does_not_end_its_successor() {
        let (dog, expired) = watchdog(Duration::from_millis(100));
        let first = dog.watch("first");
        let _second = dog.watch("second");
        drop(first);
        let what = expired
            .recv_timeout(Duration::from_secs(10))
            .expect("the second wait was not reported");
        assert_eq!(what, "second");
    }

    /// A wait the watch thread first looks at late (the process stopped
    /// between the arming and the thread's first look) gets the same
    /// credit as one stopped during a tick: still watched, it expires a
    /// limit after the arming plus the gap, not at once.
    #[test]
    fn a_wait_first_seen_late_gets_credit_for_the_gap() {
        let (dog, expired) = watchdog(Duration::from_millis(400));
        // Armed 1 s ago, as `watch` arms, and seen by the thread only now.
        {
            let (lock, wake) = &*dog.shared;
            let mut state = lock.lock().unwrap();
            state.serial += 1;
            let since = Instant::now() - Duration::from_secs(1);
            state.armed = Some(Armed {
                what: "seen late".into(),
                deadline: since + dog.limit(),
                serial: state.serial,
                since,
            });
            wake.notify_all();
        }
        assert!(
            expired.recv_timeout(Duration::from_millis(200)).is_err(),
            "the gap before the first look counted against the limit"
        );
        let what = expired
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait was no longer watched");
        assert_eq!(what, "seen late");
    }

    const STOPPED_READY_FILE: &str = "UNIATTACK_TEST_WATCHDOG_READY_FILE";
    const STOPPED_AFTER_MS: &str = "UNIATTACK_TEST_WATCHDOG_STOP_AFTER_MS";
    /// The exit status of [`stopped_process`] when its watchdog fires.
    const FIRED: i32 = 3;

    /// Entry point of the processes `time_stopped_does_not_count` stops:
    /// arms a 4 s watch, runs for the time the test asks (the watch thread
    /// then asleep in a tick) or not at all (the thread may not have seen
    /// the watch yet), says so through a file, runs 1 s more (in short
    /// sleeps, so a stop leaves them to do after it), and ends the watch.
    /// Exits with [`FIRED`] if the watchdog fires.
    #[test]
    #[ignore = "run by time_stopped_does_not_count only"]
    fn stopped_process() {
        let (Some(ready), Some(after)) = (
            std::env::var_os(STOPPED_READY_FILE),
            std::env::var(STOPPED_AFTER_MS).ok(),
        ) else {
            panic!("run by time_stopped_does_not_count only");
        };
        let dog = Watchdog::new(Duration::from_secs(4), |_| {
            // SAFETY: ends the process at once, as the real callback does.
            unsafe { libc::_exit(FIRED) }
        });
        let watch = dog.watch("a wait the test stops");
        std::thread::sleep(Duration::from_millis(after.parse().unwrap()));
        std::fs::write(ready, "armed").unwrap();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(watch);
    }

    /// A process stopped (SIGSTOP, as Ctrl-Z or a scheduler's suspend
    /// stops a job) for longer than the limit is not timed out when it
    /// resumes with the wait still to end: the stop is not the others'
    /// delay. Two processes: one stopped right after arming its 4 s watch,
    /// one 1 s into it; each is stopped for 5 s and needs 1 s after. Without
    /// the accounting the watchdog fires at once on resuming (the deadline
    /// passed during the stop).
    #[cfg(target_os = "linux")]
    #[test]
    fn time_stopped_does_not_count() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let children: Vec<_> = [0, 1000]
            .into_iter()
            .map(|after_ms| {
                let ready = dir.path().join(format!("ready-{after_ms}"));
                let child = Command::new(std::env::current_exe().unwrap())
                    .args([
                        "watchdog::tests::stopped_process",
                        "--exact",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env(STOPPED_READY_FILE, &ready)
                    .env(STOPPED_AFTER_MS, after_ms.to_string())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                (after_ms, ready, child)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut waiting: Vec<_> = children
            .iter()
            .map(|(_, ready, child)| (ready, child.id()))
            .collect();
        while !waiting.is_empty() {
            assert!(Instant::now() < deadline, "a watch was not armed");
            waiting.retain(|(ready, pid)| {
                if !ready.exists() {
                    return true;
                }
                // SAFETY: signalling a process this test started (not yet
                // waited for, so its id is still its own).
                unsafe { libc::kill(*pid as i32, libc::SIGSTOP) };
                false
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        // The second child is stopped about 1 s after the first: 5 s for
        // the second, 6 for the first.
        std::thread::sleep(Duration::from_secs(5));
        for (_, _, child) in &children {
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        for (after_ms, _, mut child) in children {
            let status = child.wait().unwrap();
            assert_ne!(
                status.code(),
                Some(FIRED),
                "stopped {after_ms} ms into its wait: the watchdog counted the stop against \
                 a 4 s limit"
            );
            assert!(
                status.success(),
                "stopped {after_ms} ms into its wait: {status}"
            );
        }
    }
}
