//! Child processes: spawn in a new process group, scrubbed environment, stdin/stdout/stderr
//! piped, poll(2) on both outputs with bounded capture and a deadline, kill of the whole group
//! with a grace period. Knows processes only. Owner: Providers (issue 5).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Cancellation flag for one job; cheap to clone. `exec::run` polls it while a child runs.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Registry of running children by job id (process group ids), so cancellation and shutdown
/// can reach them. Filled in by issue 5.
#[derive(Debug, Default)]
pub struct Children {}

impl Children {
    /// SIGTERM the process groups of one job's children, SIGKILL after `grace`.
    pub fn kill_job(&self, _job_id: &str, _grace: std::time::Duration) {}

    /// SIGTERM every registered process group, SIGKILL after `grace`; returns when all are gone.
    pub fn kill_all(&self, _grace: std::time::Duration) {}

    /// How many children are running now.
    pub fn len(&self) -> usize {
        0
    }
}
