//! The runtime: owns the reader, the workers, the heartbeat and the watchdog threads.
//! Owner: Connect (issue 4). Called by `start` (issue 2) once the pid lock is held, logging is
//! set up and signals are routed into `ctx.shutdown`.

use std::sync::Arc;

use crate::config::Settings;
use crate::daemon::shutdown::Shutdown;
use crate::daemon::status::RuntimeStatus;

/// Edits the daemon's status; the closure changes the current status and the file is rewritten
/// atomically. Provided by the daemon (issue 2).
pub type StatusUpdater = Arc<dyn Fn(&dyn Fn(&mut RuntimeStatus)) + Send + Sync>;

/// What `start` hands to the runtime.
pub struct RuntimeContext {
    pub settings: Settings,
    pub shutdown: Shutdown,
    pub status: StatusUpdater,
}

/// Runs until `ctx.shutdown` asks to stop and every thread has wound down. Returns Err with a
/// human sentence when the runtime cannot start at all (for example not paired).
pub fn run(ctx: RuntimeContext) -> Result<(), String> {
    // Placeholder until Connect lands: idle until asked to stop.
    while !ctx.shutdown.sleep(std::time::Duration::from_secs(3600)) {}
    (ctx.status)(&|s| s.connection = "stopped".into());
    Ok(())
}
