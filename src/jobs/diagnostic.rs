//! `diagnostic` jobs (PROTOCOL.md §10). Owner: Providers (issue 5).
//!
//! Runs `<command> --version` of every provider CLI, in parallel, with the scrubbed child
//! environment and a 10 s timeout. The result keeps the reference's keys for Claude at the top
//! (`command`, `stdout`, `stderr`, `exit_code`, `duration_ms`, `version`, and `error` on
//! failure; the job fails when Claude's check fails) and adds `providers`: the same keys per
//! provider id. A fresh answer (discovery's or an earlier diagnostic's, see
//! [`crate::providers::versions`]) is reused instead of starting the CLI again; the entry then
//! says `"cached": true` and why (`cached_reason`); diagnostics arriving while a CLI's run is
//! under way wait for it and share its answer. Payload `{"fresh": true}` runs every CLI again
//! for this job alone; any other payload is ignored.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{FinalStatus, JobContext, Outcome};
use crate::exec;
use crate::providers::versions::{Answer, FileId, Reuse};
use crate::providers::ProviderId;

pub const DIAGNOSTIC_TIMEOUT: Duration = Duration::from_millis(10_000);
const PROBE_CAPTURE: usize = 1 << 20;

/// A `diagnostic` payload, parsed where the handler starts. The reference ignores the payload;
/// ours reads one optional field and ignores everything else, so no payload fails the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagnosticPayload {
    /// `"fresh": true` (exactly): run every CLI now, whatever is stored.
    pub fresh: bool,
}

impl DiagnosticPayload {
    pub fn parse(payload: &Value) -> DiagnosticPayload {
        DiagnosticPayload {
            fresh: payload.get("fresh") == Some(&Value::Bool(true)),
        }
    }
}

pub fn handle(payload: &Value, ctx: &JobContext) -> Outcome {
    let allow_fresh = !DiagnosticPayload::parse(payload).fresh;
    let started = Instant::now();
    let answers: Vec<(ProviderId, Answer, Option<Reuse>)> = std::thread::scope(|s| {
        let hs: Vec<_> = ProviderId::ALL
            .into_iter()
            .map(|id| (id, s.spawn(move || check(id, ctx, started, allow_fresh))))
            .collect();
        hs.into_iter()
            .map(|(id, h)| {
                let (a, r) = h
                    .join()
                    .unwrap_or_else(|_| (crashed(id, &ctx.providers.command(id), started), None));
                (id, a, r)
            })
            .collect()
    });
    let mut providers = Map::new();
    let mut top = None;
    for (id, a, reuse) in answers {
        let entry = entry(&a, reuse.as_ref());
        if id == ProviderId::Claude {
            top = Some((entry.clone(), a));
        }
        providers.insert(id.as_str().into(), Value::Object(entry));
    }
    let Some((mut result, claude)) = top else {
        unreachable!("ProviderId::ALL has Claude");
    };
    result.insert("providers".into(), Value::Object(providers));
    match claude.error {
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
            let status = if claude.cancelled {
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

/// The answer for one CLI: a reusable stored one, else a new run (stored for the next jobs).
fn check(
    id: ProviderId,
    ctx: &JobContext,
    started: Instant,
    allow_fresh: bool,
) -> (Answer, Option<Reuse>) {
    let command = ctx.providers.command(id);
    if !allow_fresh {
        // Asked for a run of its own: neither a stored answer nor a wait for another run.
        let a = run(id, &command, ctx);
        ctx.providers.versions().store(id, a.clone());
        return (a, None);
    }
    let mut slot = ctx.providers.versions().lock(id);
    if let Some((a, why)) = slot.reusable(&command, started, true) {
        return (a, Some(why));
    }
    let a = run(id, &command, ctx);
    slot.put(a.clone());
    (a, None)
}

fn crashed(id: ProviderId, command: &std::path::Path, started: Instant) -> Answer {
    Answer {
        command: command.to_path_buf(),
        stdout: String::new(),
        stderr: String::new(),
        exit_code: None,
        duration: started.elapsed(),
        error: Some(format!(
            "checking the {} CLI failed with an internal error; run panorama-gateway doctor -v and report what it says",
            id.short()
        )),
        cancelled: false,
        by: "diagnostic",
        at: Instant::now(),
        at_wall: std::time::SystemTime::now(),
        file: None,
    }
}

/// Runs `<command> --version` for `id`.
fn run(id: ProviderId, command: &std::path::Path, ctx: &JobContext) -> Answer {
    let command_text = format!("{} --version", command.display());
    let mut spec = exec::Spec::new(command).arg("--version");
    spec.timeout = Some(DIAGNOSTIC_TIMEOUT);
    spec.capture_limit = PROBE_CAPTURE;
    spec.cancel = Some(ctx.cancel.clone());
    spec.register = Some((ctx.children.clone(), ctx.job_id.clone()));
    let file = FileId::of(command);
    let started = Instant::now();
    let mut a = Answer {
        command: command.to_path_buf(),
        stdout: String::new(),
        stderr: String::new(),
        exit_code: None,
        duration: Duration::ZERO,
        error: None,
        cancelled: false,
        by: "diagnostic",
        at: started,
        at_wall: std::time::SystemTime::now(),
        file,
    };
    match exec::run(spec, None) {
        Err(e) => {
            a.error = Some(if e.not_found() {
                format!("{e}; {}", id.install_hint())
            } else {
                e.to_string()
            });
        }
        Ok(o) => {
            a.stdout = o.stdout_lossy();
            a.stderr = o.stderr_lossy();
            a.exit_code = match o.stop {
                exec::Stop::None => o.exit_code,
                _ => None,
            };
            a.duration = o.duration;
            a.error = match o.stop {
                exec::Stop::TimedOut => Some(format!(
                    "Command timed out: {command_text} did not finish within {} s; run it in a terminal to see whether it waits for input",
                    DIAGNOSTIC_TIMEOUT.as_secs()
                )),
                exec::Stop::Cancelled | exec::Stop::Killed | exec::Stop::Aborted => {
                    a.cancelled = true;
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
                    let err = crate::redact::redact(&a.stderr);
                    let err = err.trim();
                    if !err.is_empty() {
                        m.push('\n');
                        m.push_str(&crate::util::truncate_chars(err, 2000, "..."));
                    }
                    Some(m)
                }
            };
        }
    }
    a.at = Instant::now();
    a.at_wall = std::time::SystemTime::now();
    a
}

/// The result keys for one CLI. What goes to the backend is seen by the whole team: a CLI
/// that prints a key (a warning echoing its environment) must not publish it.
fn entry(a: &Answer, reuse: Option<&Reuse>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "command".into(),
        format!("{} --version", a.command.display()).into(),
    );
    let stdout = crate::redact::redact(&a.stdout);
    m.insert("stdout".into(), stdout.clone().into());
    m.insert("stderr".into(), crate::redact::redact(&a.stderr).into());
    m.insert(
        "exit_code".into(),
        a.exit_code.map(Value::from).unwrap_or(Value::Null),
    );
    m.insert("duration_ms".into(), json!(a.duration.as_millis() as u64));
    let v = stdout.trim();
    if !v.is_empty() {
        m.insert("version".into(), v.into());
    }
    if let Some(e) = &a.error {
        m.insert("error".into(), e.clone().into());
    }
    if let Some(r) = reuse {
        m.insert("cached".into(), true.into());
        m.insert("cached_reason".into(), r.reason(a).into());
        m.insert(
            "checked_at".into(),
            crate::util::rfc3339_millis(a.at_wall).into(),
        );
    }
    m
}
