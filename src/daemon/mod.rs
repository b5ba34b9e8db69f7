//! The daemon: pid file + lock, detaching, signals, runtime status file, the runtime.
//! Owner: Foundation (issue 2) except `runtime` (Connect, issue 4).

pub mod runtime;
pub mod shutdown;
pub mod status;
