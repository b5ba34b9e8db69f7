//! The runtime's timers and sizes, read once from the environment at start (documented in
//! docs/README-connect.md).

use std::time::Duration;

use crate::backend::session::env_ms;

/// Timers and sizes of the runtime's threads.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub concurrency: usize,
    pub heartbeat: Duration,
    pub reconcile: Duration,
    pub drain_timeout: Duration,
    /// How long a completion is retried before it goes to the spool.
    pub complete_retry: Duration,
    pub queue_capacity: usize,
}

impl Tuning {
    pub fn from_env() -> Tuning {
        let concurrency = match std::env::var("PANORAMA_GATEWAY_CONCURRENCY") {
            Err(_) => 10,
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n.min(256),
                _ => {
                    log::warn!(target: "runtime", "PANORAMA_GATEWAY_CONCURRENCY={v:?} is not a positive whole number; using 10");
                    10
                }
            },
        };
        Tuning {
            concurrency,
            heartbeat: env_ms("PANORAMA_GATEWAY_HEARTBEAT_MS", 30_000),
            reconcile: env_ms("PANORAMA_GATEWAY_RECONCILE_MS", 5_000),
            drain_timeout: env_ms("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", 90_000),
            complete_retry: env_ms("PANORAMA_GATEWAY_COMPLETE_RETRY_MS", 15_000),
            queue_capacity: 4096,
        }
    }
}
