//! Every timer the environment can tune (operator settings and test knobs), with its default,
//! in one place. Documented in docs/README-connect.md.

use std::time::Duration;

/// A whole number of milliseconds from the environment (negative counts as 0); None when unset
/// or not a number.
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .map(|v| v.max(0) as u64)
}

/// A positive duration in milliseconds from the environment, else the default.
pub fn env_ms(name: &str, default_ms: u64) -> Duration {
    Duration::from_millis(env_u64(name).filter(|v| *v > 0).unwrap_or(default_ms))
}

/// The runtime's timers and sizes, read once at start.
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
            drain_timeout: drain_timeout(),
            complete_retry: env_ms("PANORAMA_GATEWAY_COMPLETE_RETRY_MS", 15_000),
            queue_capacity: 4096,
        }
    }
}

/// How long a stop waits for running jobs before it stops them (default 90 s).
pub fn drain_timeout() -> Duration {
    env_ms("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", 90_000)
}

/// The realtime channel: Phoenix heartbeat interval, reconnect backoff bounds.
pub fn realtime_heartbeat() -> Duration {
    env_ms("PANORAMA_GATEWAY_REALTIME_HEARTBEAT_MS", 25_000)
}
pub fn reconnect_min() -> Duration {
    env_ms("PANORAMA_GATEWAY_RECONNECT_MIN_MS", 1_000)
}
pub fn reconnect_max() -> Duration {
    env_ms("PANORAMA_GATEWAY_RECONNECT_MAX_MS", 30_000)
}

/// How often a refused refresh token is tried again (default 60 s).
pub fn reauth_retry() -> Duration {
    env_ms("PANORAMA_GATEWAY_REAUTH_RETRY_MS", 60_000)
}

/// The timeout of one REST call (default 15 s; a test knob: lost replies are simulated by a
/// backend slower than this).
pub fn rest_timeout(default: Duration) -> Duration {
    env_ms(
        "PANORAMA_GATEWAY_REST_TIMEOUT_MS",
        default.as_millis() as u64,
    )
}

/// Idle expiry of a remote shell session (no `write`/`read`).
pub fn shell_session_idle(default_ms: u64) -> Duration {
    env_ms("PANORAMA_GATEWAY_SHELL_SESSION_IDLE_MS", default_ms)
}

/// How often the watchdog looks at the installed binary (default 30 s, at least 1 s).
pub fn restart_check() -> Duration {
    Duration::from_millis(
        env_u64("PANORAMA_GATEWAY_RESTART_CHECK_MS")
            .unwrap_or(30_000)
            .max(1000),
    )
}

/// The longest an upgrade restart waits for the drain (unset or 0: no bound of its own).
pub fn restart_max_wait() -> Option<Duration> {
    env_u64("PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS")
        .filter(|v| *v > 0)
        .map(Duration::from_millis)
}
