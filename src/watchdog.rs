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

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The wait being watched: its description and deadline, and a number
/// that tells one arming from the next.
struct Armed {
    what: String,
    deadline: Instant,
    serial: u64,
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
            .spawn(move || watch_loop(&watched, &on_expiry))
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
        state.armed = Instant::now()
            .checked_add(self.limit)
            .map(|deadline| Armed {
                what: what.into(),
                deadline,
                serial,
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

fn watch_loop(shared: &Shared, on_expiry: &dyn Fn(&str)) {
    let (lock, wake) = &**shared;
    let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if state.closed {
            return;
        }
        let Some(armed) = &state.armed else {
            state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let now = Instant::now();
        if now < armed.deadline {
            let left = armed.deadline - now;
            state = wake
                .wait_timeout(state, left)
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
}
