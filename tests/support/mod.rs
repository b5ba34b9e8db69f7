//! The integration tests' one support module. Each test file does `mod support;` and uses the
//! part it needs:
//! - `cli`: the gateway binary without a backend (a temp world with HOME and a config dir,
//!   guards that kill what a test started);
//! - `connect`: a local backend process and gateway daemons against it, admin helpers, the
//!   fake provider CLIs;
//! - `emulator`: raw HTTP and realtime clients of the local backend (its own tests).
//!
//! Waiting is shared: [`wait_for`] polls a condition (a `bool`, or an `Option` whose value it
//! returns) until a deadline and then fails the test naming what it waited for.
#![allow(dead_code, unused_imports)] // each test binary uses only part of it

pub mod cli;
pub mod connect;
pub mod emulator;

use std::time::{Duration, Instant};

/// What a polled condition returns: `true`, or `Some(value)`, once it holds.
pub trait Ready {
    type Out;
    fn ready(self) -> Option<Self::Out>;
}

impl Ready for bool {
    type Out = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Out = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `f` every 20 ms until it holds or `timeout` passes (then panics naming `what`).
pub fn wait_for<R: Ready>(what: &str, timeout: Duration, mut f: impl FnMut() -> R) -> R::Out {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().ready() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_for`] with the arguments in the emulator tests' order.
pub fn wait_until(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    wait_for(what, timeout, f)
}
