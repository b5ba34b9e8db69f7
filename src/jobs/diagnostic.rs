//! `diagnostic` jobs (PROTOCOL.md §10). Owner: Providers (issue 5).
//!
//! Runs `<claude command> --version` with the scrubbed child environment and a 10 s timeout.
//! The payload is ignored.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{FinalStatus, JobContext, Outcome};
use crate::exec;
use crate::providers::ProviderId;

pub const DIAGNOSTIC_TIMEOUT: Duration = Duration::from_millis(10_000);
const PROBE_CAPTURE: usize = 1 << 20;

pub fn handle(_payload: &Value, ctx: &JobContext) -> Outcome {
    let command = ctx.providers.command(ProviderId::Claude);
    let command_text = format!("{} --version", command.display());
    let mut spec = exec::Spec::new(&command).arg("--version");
    spec.timeout = Some(DIAGNOSTIC_TIMEOUT);
    spec.capture_limit = PROBE_CAPTURE;
    spec.cancel = Some(ctx.cancel.clone());
    spec.register = Some((ctx.children.clone(), ctx.job_id.clone()));
    let started = std::time::Instant::now();
    let mut result = Map::new();
    result.insert("command".into(), command_text.clone().into());
    let mut cancelled = false;
    let error = match exec::run(spec, None) {
        Err(e) => {
            result.insert("stdout".into(), "".into());
            result.insert("stderr".into(), "".into());
            result.insert("exit_code".into(), Value::Null);
            result.insert(
                "duration_ms".into(),
                json!(started.elapsed().as_millis() as u64),
            );
            Some(if e.not_found() {
                format!("{e}; {}", ProviderId::Claude.install_hint())
            } else {
                e.to_string()
            })
        }
        Ok(o) => {
            // The result goes to the backend (the whole team sees it): a CLI that prints a
            // key (a warning echoing its environment) must not publish it.
            let stdout = crate::redact::redact(&o.stdout_lossy());
            let stderr = crate::redact::redact(&o.stderr_lossy());
            result.insert("stdout".into(), stdout.clone().into());
            result.insert("stderr".into(), stderr.clone().into());
            result.insert(
                "exit_code".into(),
                match (o.stop, o.exit_code) {
                    (exec::Stop::None, Some(c)) => json!(c),
                    _ => Value::Null,
                },
            );
            result.insert("duration_ms".into(), json!(o.duration.as_millis() as u64));
            let v = stdout.trim();
            if !v.is_empty() {
                result.insert("version".into(), v.into());
            }
            match o.stop {
                exec::Stop::TimedOut => Some(format!(
                    "Command timed out: {command_text} did not finish within {} s; run it in a terminal to see whether it waits for input",
                    DIAGNOSTIC_TIMEOUT.as_secs()
                )),
                exec::Stop::Cancelled | exec::Stop::Killed | exec::Stop::Aborted => {
                    cancelled = true;
                    Some(format!("Command cancelled: {command_text}"))
                }
                exec::Stop::None if o.exit_code == Some(0) => None,
                exec::Stop::None => {
                    let mut m = format!("Command failed: {command_text}");
                    match (o.exit_code, o.signal) {
                        (Some(c), _) => m.push_str(&format!(" (exit status {c})")),
                        (None, Some(s)) => m.push_str(&format!(" (killed by signal {s})")),
                        _ => {}
                    }
                    let err = stderr.trim();
                    if !err.is_empty() {
                        m.push('\n');
                        m.push_str(&crate::util::truncate_chars(err, 2000, "..."));
                    }
                    Some(m)
                }
            }
        }
    };
    match error {
        None => Outcome {
            status: FinalStatus::Completed,
            result: Some(Value::Object(result)),
            error: None,
            debug: None,
        },
        Some(e) => {
            let e = if e.trim().is_empty() {
                "Claude CLI check failed".to_string()
            } else {
                e
            };
            result.insert("error".into(), e.clone().into());
            // Stopped by a job cancel or an immediate shutdown: `cancelled`, with the shape
            // the reference uses for jobs it cancels (`"cancelled": true`).
            let status = if cancelled {
                result.insert("cancelled".into(), true.into());
                FinalStatus::Cancelled
            } else {
                FinalStatus::Failed
            };
            Outcome {
                status,
                result: Some(Value::Object(result)),
                error: Some(e),
                debug: None,
            }
        }
    }
}
