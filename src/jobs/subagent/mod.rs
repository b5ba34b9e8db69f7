//! `subagent_run` and `subagent_cancel` jobs: delegated gateway subagents
//! (subagents-shell.md §2–§6, §8). Owner: Subagents.
//!
//! A run job validates the subagent and its atomically accepted run in the documented order,
//! marks the run started with conditional updates, runs the provider CLI in an owner-only work
//! directory `<work root>/subagents/<subagent>`, kept between the subagent's runs so a
//! continuation finds its session (own process group, scrubbed env, run timeout), finalizes through `finalize-gateway-subagent-run` and writes the run events. A
//! cancel job (handled outside the queue by the runtime) records the cancel request and kills
//! the running child's process group with a 5 s grace, or leaves a pending cancel that the run
//! job honours before it starts anything.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

pub mod active;
mod cancel;
mod execute;
mod failure;
mod finalize;
mod payload;
mod run;

pub use cancel::handle_cancel;
use cancel::*;
use execute::*;
use failure::*;
use finalize::*;
use payload::*;
use run::*;

use super::{FinalStatus, JobContext, Outcome};
use crate::backend::session::Session;
use crate::backend::subagents::{self as wire, EventTarget};
use crate::exec;
use crate::providers::health::Status;
use crate::providers::normalize::{envelope, normalize, s, Normalized};
use crate::providers::restrict::Layers;
use crate::providers::subplan::{Format, SubPlan, SubagentRequest};
use crate::providers::{self, Flags, ProviderId};
use crate::util::{is_rfc4122_uuid, new_uuid_v4, parse_rfc3339_ms};

/// SIGTERM → SIGKILL grace for cancel (and, here, for the run timeout too).
pub const CANCEL_GRACE: Duration = Duration::from_millis(5000);
/// `last_seen_at` older than this means the gateway is offline for the backend.
const HEARTBEAT_STALE_MS: i64 = 90_000;
const CANCELLED: &str = "Cancelled";

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn trimmed(v: Option<&str>) -> Option<String> {
    v.map(str::trim).filter(|x| !x.is_empty()).map(String::from)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lenient boolean (§2.2): booleans, or `true/1/yes/on`; anything else is false.
pub fn lenient_bool(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(x)) => {
            matches!(
                x.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            )
        }
        Some(Value::Number(n)) => n.as_f64() == Some(1.0),
        _ => false,
    }
}

fn merged(base: Option<&Value>, extra: &Value) -> Value {
    let mut m = match base {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    if let Value::Object(e) = extra {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

/// The error envelope used for every failure and cancel output.
pub fn error_envelope(message: &str) -> Value {
    json!({"schema_version": 1, "content": message, "content_type": "text", "errors": [message]})
}

fn execution_context() -> Value {
    json!({
        "execution_lane": "cloud",
        "execution_bridge": "gateway",
        "execution_substrate": "gateway_host",
        "trust_zone": "user_delegated_host",
        "delegate_kind": "gateway_cli",
    })
}

fn adapter_for(subagent_type: &str) -> Option<(ProviderId, &'static str)> {
    match subagent_type {
        "claude_code_gateway" => Some((ProviderId::Claude, "claude_code")),
        "codex_gateway" => Some((ProviderId::Codex, "codex")),
        "gemini_gateway" => Some((ProviderId::Gemini, "gemini")),
        _ => None,
    }
}

fn outcome(status: FinalStatus, result: Value, error: Option<String>) -> Outcome {
    Outcome {
        status,
        result: Some(result),
        error: error.filter(|e| !e.is_empty()),
        debug: None,
    }
}

/// How a run job ends: `fail_subagent` asks for §5.4 after a failed outcome.
struct End {
    outcome: Outcome,
    fail_subagent: bool,
}

fn skip(result: Value, error: impl Into<String>) -> End {
    End {
        outcome: outcome(FinalStatus::Cancelled, result, Some(error.into())),
        fail_subagent: false,
    }
}

fn fail(result: Value, error: impl Into<String>) -> End {
    End {
        outcome: outcome(FinalStatus::Failed, result, Some(error.into())),
        fail_subagent: true,
    }
}

fn fail_msg(message: &str) -> End {
    fail(json!({ "message": message }), message)
}

// ---------------------------------------------------------------------------------------------
// Run events with a local sequence counter (§6.2).

struct Emitter<'a> {
    session: &'a Session,
    target: EventTarget,
    next: Option<i64>,
}

impl Emitter<'_> {
    fn emit(&mut self, kind: &str, payload: Value) {
        let seq = match self.next {
            Some(n) => n,
            None => wire::next_sequence(self.session, &self.target.run_id),
        };
        self.next = Some(seq);
        if let Some(written) = wire::insert_event(self.session, &self.target, seq, kind, payload) {
            self.next = Some(written + 1);
        }
    }
}

/// One event with a freshly read sequence (cancel job, §5.4).
fn emit_once(session: &Session, target: &EventTarget, kind: &str, payload: Value) {
    let seq = wire::next_sequence(session, &target.run_id);
    wire::insert_event(session, target, seq, kind, payload);
}

// ---------------------------------------------------------------------------------------------
// `subagent_run`.

/// Entry point of `subagent_run` jobs.
pub fn handle_run(payload: &Value, ctx: &JobContext) -> Outcome {
    let Some(session) = ctx.session.clone() else {
        return outcome(
            FinalStatus::Failed,
            json!({"message": "Gateway backend session unavailable"}),
            Some("Gateway backend session unavailable; restart the gateway".into()),
        );
    };
    // 1. (a payload that cannot be read marks no subagent failed)
    let req = match RunPayload::parse(payload) {
        Ok(req) => req,
        Err(m) => return fail_msg(&m).outcome,
    };
    let end = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_job(&session, &req, ctx)
    })) {
        Ok(Ok(end)) => end,
        Ok(Err(msg)) => End {
            outcome: super::processing_failed("subagent_run", &msg),
            fail_subagent: true,
        },
        Err(_) => End {
            outcome: super::processing_failed("subagent_run", "the subagent handler panicked"),
            fail_subagent: true,
        },
    };
    if end.fail_subagent && end.outcome.status == FinalStatus::Failed {
        let msg = end
            .outcome
            .error
            .clone()
            .unwrap_or_else(|| "Gateway subagent job failed".into());
        fail_subagent_run(&session, &req.subagent_id, &msg);
    }
    end.outcome
}

// ---------------------------------------------------------------------------------------------
// Provider adapters (§3).

// ---------------------------------------------------------------------------------------------
// Output normalization (§3.3–§3.7).

// ---------------------------------------------------------------------------------------------
// Execution (§4) and finalization (§5.1).

// ---------------------------------------------------------------------------------------------
// `subagent_cancel` (§6.4).

/// §5.4: after a failed job, mark the subagent's running run and the subagent failed.
pub fn fail_subagent_run(session: &Session, subagent_id: &str, message: &str) {
    let sub = match wire::load_subagent(
        session,
        subagent_id,
        "id,status,subagent_type,metadata,team_id,gateway_id",
    ) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            log::warn!(target: "subagent", "could not load subagent {subagent_id} to mark it failed: {e}");
            return;
        }
    };
    if s(&sub, "status") != Some("running") {
        return;
    }
    let now = crate::util::now_rfc3339();
    let meta = merged(
        sub.get("metadata"),
        &merged(
            Some(
                &json!({"schema_version": 1, "runner": "gateway", "subagent_type": s(&sub, "subagent_type"),
                         "last_run_at": now, "gateway_error": message}),
            ),
            &execution_context(),
        ),
    );
    let env = error_envelope(message);
    match wire::newest_running_run(session, subagent_id, "id") {
        Ok(Some(run)) => {
            if let Some(rid) = s(&run, "id") {
                let r = wire::update_where(
                    session,
                    "subagent_runs",
                    rid,
                    &[("status", "eq.running")],
                    &json!({"status": "failed", "error": message, "output": env, "completed_at": now, "metadata": meta}),
                );
                if let Err(e) = r {
                    log::warn!(target: "subagent", "could not mark run {rid} failed: {e}");
                }
                if let Some(gid) = s(&sub, "gateway_id") {
                    let t = EventTarget {
                        run_id: rid.to_string(),
                        subagent_id: subagent_id.to_string(),
                        team_id: s(&sub, "team_id").unwrap_or(&session.team_id).to_string(),
                        gateway_id: Some(gid.to_string()),
                    };
                    emit_once(
                        session,
                        &t,
                        "run_failed",
                        json!({"reason": message, "source": "gateway_job_failure"}),
                    );
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            log::warn!(target: "subagent", "could not find the running run of subagent {subagent_id}: {e}")
        }
    }
    if let Err(e) = wire::update_where(
        session,
        "subagents",
        subagent_id,
        &[],
        &json!({"status": "failed", "error": message, "completed_at": now, "output": env, "metadata": meta}),
    ) {
        log::warn!(target: "subagent", "could not mark subagent {subagent_id} failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::cancel::resolve;
    use super::*;

    #[test]
    fn helpers() {
        assert!(is_rfc4122_uuid("8e9b1f22-6c1d-4f0e-8a7b-3e2c1d0f9a88"));
        assert!(!is_rfc4122_uuid("8e9b1f22-6c1d-0f0e-8a7b-3e2c1d0f9a88"));
        assert!(is_rfc4122_uuid(&new_uuid_v4()));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert!(lenient_bool(Some(&json!("Yes"))));
        assert!(!lenient_bool(Some(&json!("maybe"))));
        assert!(resolve(true, "running", Some("r1"), None).is_none());
        assert_eq!(
            resolve(true, "running", Some("r1"), Some("r2")).unwrap().0,
            "no_active_run"
        );
        assert_eq!(
            resolve(true, "completed", None, None).unwrap().0,
            "already_terminal"
        );
        assert_eq!(
            resolve(false, "running", Some("r1"), None).unwrap().0,
            "rejected"
        );
    }
}
