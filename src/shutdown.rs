//! The shutdown token every thread of the daemon watches (a base type: handlers, providers and
//! the runtime all wait on it).
//!
//! Two levels: *drain* (stop taking jobs, let in-flight jobs finish within the drain timeout)
//! and *immediate* (cancel in-flight jobs now). Immediate implies drain.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Running,
    Drain,
    Immediate,
}

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<Option<Level>>, Condvar)>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    fn raise(&self, to: Level) {
        let (lock, cv) = &*self.inner;
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        if g.unwrap_or(Level::Running) < to {
            *g = Some(to);
        }
        cv.notify_all();
    }

    /// Wakes every waiter without changing the level: each looks again at what it waits for
    /// (the drain waits for the last running job this way).
    pub fn poke(&self) {
        let (lock, cv) = &*self.inner;
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        cv.notify_all();
    }

    /// Ask for a graceful drain (SIGTERM, SIGINT, `stop`, upgrade restart).
    pub fn request_drain(&self) {
        self.raise(Level::Drain);
    }

    /// Ask to stop now (second signal, SIGQUIT, drain timeout passed).
    pub fn request_immediate(&self) {
        self.raise(Level::Immediate);
    }

    pub fn level(&self) -> Level {
        let (lock, _) = &*self.inner;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(Level::Running)
    }

    /// True once a drain (or an immediate stop) has been requested.
    pub fn is_draining(&self) -> bool {
        self.level() >= Level::Drain
    }

    pub fn is_immediate(&self) -> bool {
        self.level() >= Level::Immediate
    }

    /// Sleeps up to `d`; returns early with true when the level reaches at least `at_least`.
    pub fn wait_for(&self, at_least: Level, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let (lock, cv) = &*self.inner;
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.unwrap_or(Level::Running) >= at_least {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleeps up to `d`; returns early with true when a drain or stop is requested. The way
    /// every periodic loop waits.
    pub fn sleep(&self, d: Duration) -> bool {
        self.wait_for(Level::Drain, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_only_rise_and_wake_sleepers() {
        let s = Shutdown::new();
        assert!(!s.sleep(Duration::from_millis(1)));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(30)));
        s.request_immediate();
        assert!(t.join().unwrap());
        s.request_drain();
        assert!(s.is_immediate());
    }
}
