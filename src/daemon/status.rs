//! `gateway.status.json`: the running daemon's view of itself, for `status` (no network).
//! Owner: Foundation (issue 2) writes the file; the runtime (issue 4) fills the fields.

use serde::{Deserialize, Serialize};

/// Written atomically (0600) on every state change by the daemon; read by `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RuntimeStatus {
    pub pid: u32,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub version: String,
    /// `starting` | `connecting` | `connected` | `disconnected` | `reauth_required` | `draining`
    /// | `stopped`.
    pub connection: String,
    /// Human-readable reason when not connected (last error), never a secret.
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub last_heartbeat_at: Option<String>,
    #[serde(default)]
    pub last_heartbeat_ok: Option<bool>,
    #[serde(default)]
    pub last_reconcile_at: Option<String>,
    /// The team-level toggle as last read from `team_gateways`.
    #[serde(default)]
    pub team_full_control: Option<bool>,
    /// `host:port` of the health/metrics endpoint, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    #[serde(default)]
    pub jobs_in_flight: u64,
    #[serde(default)]
    pub jobs_completed: u64,
    #[serde(default)]
    pub jobs_failed: u64,
    /// Results waiting in the spool for the backend to accept them.
    #[serde(default)]
    pub results_spooled: u64,
    /// Results that could neither be delivered nor spooled (spool unwritable while the backend
    /// was away): held in memory and retried; lost if the daemon dies before one works.
    #[serde(default)]
    pub results_pending: u64,
    /// `started_at` as seconds since the epoch (uptime without parsing dates).
    #[serde(default)]
    pub started_at_unix: u64,
    /// The install-level toggle as the daemon last read it from gateway.json.
    #[serde(default)]
    pub full_control_enabled: Option<bool>,
    /// Set while the daemon drains before restarting into an upgraded binary.
    #[serde(default)]
    pub restart_pending: bool,
    /// The last write of gateway.json failed (disk full, read-only, permissions): rotated
    /// tokens or settings live only in memory until a write succeeds. Cleared by the next
    /// successful write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_save_error: Option<String>,
}
