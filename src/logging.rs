//! Logging to the log file: one line per event, `2026-11-24T20:41:00.123Z INFO  [component]
//! message key=value`, tokens redacted, size-based rotation. Owner: Foundation (issue 2).
//! Everyone logs with `log::info!(target: "component", "message key=value")`.
