//! `subagent_run` and `subagent_cancel` jobs: delegated gateway subagents
//! (subagents-shell.md §2–§6, §8). Owner: Subagents.
//!
//! A run job validates the subagent and its atomically accepted run in the documented order,
//! marks the run started with conditional updates, runs the provider CLI in an owner-only work
//! directory `<work root>/subagents/<subagent>/<run>` (own process group, scrubbed env, run
//! timeout), finalizes through `finalize-gateway-subagent-run` and writes the run events. A
//! cancel job (handled outside the queue by the runtime) records the cancel request and kills
//! the running child's process group with a 5 s grace, or leaves a pending cancel that the run
//! job honours before it starts anything.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{FinalStatus, JobContext, Outcome};
use crate::backend::session::Session;
use crate::backend::subagents::{self as wire, EventTarget};
use crate::exec;
use crate::providers::diagnose::{self, ErrorKind as Kind};
use crate::providers::health::Status;
use crate::providers::plan::collapse;
use crate::providers::restrict::Layers;
use crate::providers::subplan::{Format, SubPlan, SubagentRequest};
use crate::providers::{self, Flags, ProviderId};
use crate::util::{is_rfc4122_uuid, new_uuid_v4, parse_rfc3339_ms};

/// SIGTERM → SIGKILL grace for cancel (and, here, for the run timeout too).
pub const CANCEL_GRACE: Duration = Duration::from_millis(5000);
/// `last_seen_at` older than this means the gateway is offline for the backend.
const HEARTBEAT_STALE_MS: i64 = 90_000;
/// Parsed stream-json events kept (oldest dropped).
const STREAM_EVENTS: usize = 2000;
const CANCELLED: &str = "Cancelled";

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

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

fn subagent_id_of(p: &Value) -> Option<String> {
    trimmed(s(p, "subagent_id").or_else(|| s(p, "subagentId")))
}

/// Entry point of `subagent_run` jobs.
pub fn handle_run(payload: &Value, ctx: &JobContext) -> Outcome {
    let Some(session) = ctx.session.clone() else {
        return outcome(
            FinalStatus::Failed,
            json!({"message": "Gateway backend session unavailable"}),
            Some("Gateway backend session unavailable; restart the gateway".into()),
        );
    };
    let sid = subagent_id_of(payload);
    let end = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_job(&session, payload, ctx)
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
        if let Some(sid) = sid {
            let msg = end
                .outcome
                .error
                .clone()
                .unwrap_or_else(|| "Gateway subagent job failed".into());
            fail_subagent_run(&session, &sid, &msg);
        }
    }
    end.outcome
}

/// The validated inputs of a run.
struct Prepared {
    subagent: Value,
    subagent_id: String,
    subagent_type: String,
    provider: ProviderId,
    adapter_id: &'static str,
    prompt: String,
    config: Value,
    resume: Option<String>,
    run_id: String,
    run_sequence: i64,
    fc_requested: bool,
    fc_effective: bool,
    fc_denied: Option<String>,
    gateway_id: Option<String>,
    team_id: String,
}

impl Prepared {
    fn base_metadata(&self) -> Value {
        merged(
            Some(&json!({
                "schema_version": 1,
                "runner": "gateway",
                "adapter_id": self.adapter_id,
                "subagent_type": self.subagent_type,
                "run_id": self.run_id,
                "run_sequence": self.run_sequence,
                "cancel_state": "none",
                "full_control_requested": self.fc_requested,
                "full_control_effective": self.fc_effective,
                "full_control_denied_reason": self.fc_denied,
            })),
            &execution_context(),
        )
    }

    fn target(&self) -> EventTarget {
        EventTarget {
            run_id: self.run_id.clone(),
            subagent_id: self.subagent_id.clone(),
            team_id: self.team_id.clone(),
            gateway_id: self.gateway_id.clone(),
        }
    }
}

fn run_sequence_of(input: &Value) -> Option<i64> {
    let v = input
        .get("run_sequence")
        .or_else(|| input.get("runSequence"))?;
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(x) => x.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

fn prompt_of(input: &Value) -> Option<String> {
    ["prompt", "query", "task"]
        .iter()
        .find_map(|k| trimmed(s(input, k)))
}

/// Provider elevated-mode support (§3.8): None when supported, else the denial text.
fn elevated_denial(id: ProviderId, f: &Flags) -> Option<&'static str> {
    match id {
        ProviderId::Claude => (!(f.get("permissionModeFlag") || f.get("dangerouslySkipPermissionsFlag")))
            .then_some("Claude CLI does not expose elevated permission flags on this host (missing --permission-mode bypassPermissions and --dangerously-skip-permissions)."),
        ProviderId::Codex => (!(f.get("dangerouslyBypassApprovalsAndSandboxFlag") || f.get("sandboxFlag")))
            .then_some("Codex CLI does not expose elevated permission flags on this host (missing --dangerously-bypass-approvals-and-sandbox and --sandbox danger-full-access)."),
        ProviderId::Gemini => (!(f.get("approvalModeFlag") || f.get("yoloFlag")))
            .then_some("Gemini CLI does not expose elevated approval flags on this host (missing --approval-mode yolo and --yolo)."),
    }
}

fn run_job(session: &Session, payload: &Value, ctx: &JobContext) -> Result<End, String> {
    let me = session.gateway_id.clone();
    // 1.
    let Some(subagent_id) = subagent_id_of(payload) else {
        return Ok(fail_msg("Missing subagent_id in payload"));
    };
    let payload_run_id = trimmed(s(payload, "run_id").or_else(|| s(payload, "runId")));
    // At most one active run per subagent (§1.4): reserve the subagent, waiting for a run of
    // it that is still active in this gateway.
    let _guard = {
        let mut waited = false;
        loop {
            if let Some(g) = ctx.subagent_runs.reserve(&subagent_id, &ctx.job_id) {
                break g;
            }
            if !waited {
                log::info!(target: "subagent", "job {} waits for the active run of subagent {subagent_id} to finish (one run per subagent at a time)", ctx.job_id);
                waited = true;
            }
            if ctx.cancel.is_cancelled() || ctx.shutdown.is_immediate() {
                let m = "Gateway stopped before the subagent run could start";
                return Ok(skip(json!({"message": m, "subagent_id": subagent_id}), m));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // 2.
    let sub = match wire::load_subagent(
        session,
        &subagent_id,
        "id,team_id,gateway_id,owner_agent_id,subagent_type,status,config,input,metadata",
    ) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Ok(skip(
                json!({"message": "Subagent not found", "subagent_id": subagent_id}),
                "Subagent not found",
            ))
        }
        Err(e) => {
            return Ok(skip(
                json!({"message": "Subagent not found", "subagent_id": subagent_id}),
                e.to_string(),
            ))
        }
    };
    // 3.
    let assigned = s(&sub, "gateway_id").map(String::from);
    if assigned.as_deref() != Some(me.as_str()) {
        let m = "Subagent is assigned to a different gateway";
        return Ok(skip(
            json!({"message": m, "subagent_id": subagent_id, "assigned_gateway_id": assigned, "gateway_id": me}),
            m,
        ));
    }
    let metadata = sub.get("metadata").cloned().unwrap_or(json!({}));
    let current_run_id = trimmed(s(&metadata, "current_run_id"));
    // 4.
    let status = s(&sub, "status").unwrap_or("unknown").to_string();
    if status != "running" {
        let m = format!("Subagent status changed before queued job execution (status={status})");
        return Ok(skip(
            json!({"message": m, "subagent_id": subagent_id, "expected_run_id": payload_run_id, "current_run_id": current_run_id}),
            m,
        ));
    }
    // 5.
    if let (Some(p), Some(c)) = (&payload_run_id, &current_run_id) {
        if p != c {
            let m = "Queued subagent job no longer matches the subagent current_run_id";
            return Ok(skip(
                json!({"message": m, "subagent_id": subagent_id, "expected_run_id": p, "current_run_id": c}),
                m,
            ));
        }
    }
    // 6.
    let subagent_type = s(&sub, "subagent_type").unwrap_or("").to_string();
    let Some((provider, adapter_id)) = adapter_for(&subagent_type) else {
        return Ok(fail(
            json!({"message": "Unsupported subagent type", "subagent_type": subagent_type}),
            format!("Unsupported subagent type: {subagent_type}"),
        ));
    };
    // 7.
    let input = sub.get("input").cloned().unwrap_or(json!({}));
    let Some(prompt) = prompt_of(&input) else {
        return Ok(fail_msg("Missing prompt in subagent input"));
    };
    // 8.
    let resume = trimmed(s(&metadata, "session_id"));
    if resume.is_some() && provider != ProviderId::Claude {
        return Ok(fail(
            json!({"message": "Subagent does not support continuation"}),
            "Subagent provider does not support continuation",
        ));
    }
    // 9. (the install toggle is re-read from gateway.json by `ctx.control()` at step 13) 10.
    let control = match wire::load_control(session, &me, &session.team_id) {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => return Ok(fail_msg("Gateway control state unavailable")),
    };
    // 11.
    let fresh = s(&control, "last_seen_at")
        .and_then(parse_rfc3339_ms)
        .map(|t| t as i64)
        .is_some_and(|t| now_ms() - t <= HEARTBEAT_STALE_MS);
    if !fresh {
        return Ok(fail_msg("Gateway is offline or heartbeat is stale"));
    }
    // 12.
    let me_svc = control
        .get("capabilities")
        .and_then(|c| c.get("services"))
        .and_then(|sv| sv.get("model_execution"));
    if me_svc.and_then(|m| m.get("ready")).and_then(Value::as_bool) != Some(true) {
        let reason = me_svc
            .and_then(|m| trimmed(s(m, "reason")))
            .unwrap_or_else(|| "Gateway AI model providers are unavailable".into());
        return Ok(fail_msg(&reason));
    }
    // 13.
    let config = sub.get("config").cloned().unwrap_or(json!({}));
    let fc_requested = lenient_bool(
        config
            .get("full_control")
            .or_else(|| config.get("fullControl")),
    );
    let flags = ctx.providers.flags(provider);
    // Machine control at the moment of use: the team toggle from the row just read, the
    // install toggle from gateway.json now (jobs::control, shared with the remote shell).
    let team_fc = control.get("full_control_enabled") == Some(&Value::Bool(true));
    let layers = ctx.control();
    let fc_denied: Option<String> = if !fc_requested {
        None
    } else if let Some(d) = crate::jobs::control::elevated_denial(&control, layers) {
        Some(d.into())
    } else if let Some(d) = elevated_denial(provider, &flags) {
        Some(d.into())
    } else if !layers.heartbeat_fresh {
        Some(
            layers
                .denial()
                .unwrap_or("Gateway elevated provider mode is unavailable.")
                .into(),
        )
    } else {
        None
    };
    let fc_effective = fc_requested && fc_denied.is_none();
    let layers_on = Layers {
        resource: fc_requested,
        team: team_fc,
        install: layers.install_enabled,
    };
    log::info!(target: "subagent", "Resolved subagent elevated provider state subagent={subagent_id} requested={fc_requested} effective={fc_effective}");
    // 14.
    let run_id = payload_run_id
        .clone()
        .filter(|r| is_rfc4122_uuid(r))
        .or_else(|| trimmed(s(&input, "run_id")).filter(|r| is_rfc4122_uuid(r)))
        .unwrap_or_else(new_uuid_v4);
    // 15.
    let Some(run_sequence) = run_sequence_of(&input) else {
        let m = "Accepted subagent run has no run sequence";
        return Ok(skip(
            json!({"message": m, "subagent_id": subagent_id, "run_id": run_id}),
            m,
        ));
    };
    // 16.
    let run = match wire::load_run(
        session,
        &run_id,
        "id,subagent_id,run_sequence,status,prompt",
    ) {
        Ok(r) => r,
        Err(e) => {
            return Ok(fail(
                json!({"message": "Failed to load accepted subagent run", "subagent_id": subagent_id, "run_id": run_id}),
                e.to_string(),
            ))
        }
    };
    let Some(run) = run else {
        return Ok(skip(
            json!({"message": "Rejected unaccepted subagent job", "subagent_id": subagent_id, "run_id": run_id}),
            "Gateway job has no atomically accepted subagent run",
        ));
    };
    let run_status = s(&run, "status").unwrap_or("unknown");
    if run_status != "running" {
        return Ok(skip(
            json!({"message": "Accepted subagent run is no longer active", "subagent_id": subagent_id, "run_id": run_id, "run_status": run_status}),
            format!("Accepted subagent run is {run_status}"),
        ));
    }
    let same = s(&run, "subagent_id") == Some(subagent_id.as_str())
        && run.get("run_sequence").and_then(Value::as_i64) == Some(run_sequence)
        && s(&run, "prompt") == Some(prompt.as_str());
    if !same {
        return Ok(skip(
            json!({"message": "Gateway job does not match its accepted subagent run", "subagent_id": subagent_id, "run_id": run_id}),
            "Accepted subagent run identity mismatch",
        ));
    }
    let prep = Prepared {
        subagent: sub.clone(),
        subagent_id: subagent_id.clone(),
        subagent_type,
        provider,
        adapter_id,
        prompt,
        config,
        resume,
        run_id: run_id.clone(),
        run_sequence,
        fc_requested,
        fc_effective,
        fc_denied,
        gateway_id: assigned,
        team_id: s(&sub, "team_id").unwrap_or(&session.team_id).to_string(),
    };
    // 17.
    let stored = (s(&metadata, "cancel_run_id") == Some(run_id.as_str()))
        .then(|| trimmed(s(&metadata, "cancel_reason")).unwrap_or_else(|| CANCELLED.into()));
    let in_memory = ctx.subagent_runs.take_pending(&run_id, &subagent_id);
    if let Some(reason) = stored.or(in_memory) {
        return Ok(cancel_before_start(session, &prep, &reason));
    }
    // 18.
    if ctx
        .subagent_runs
        .attach_run(&subagent_id, &ctx.job_id, &run_id)
        .is_some()
    {
        ctx.cancel.cancel();
    }
    // 19.
    let now = crate::util::now_rfc3339();
    let start_meta = merged(
        Some(&metadata),
        &json!({"current_run_id": run_id, "current_run_sequence": run_sequence}),
    );
    match wire::update_where(
        session,
        "subagent_runs",
        &run_id,
        &[
            ("subagent_id", &format!("eq.{subagent_id}")),
            ("status", "eq.running"),
        ],
        &json!({"started_at": now, "metadata": start_meta}),
    ) {
        Err(e) => {
            return Ok(fail(
                json!({"message": "Failed to mark subagent run as started", "subagent_id": subagent_id}),
                e.to_string(),
            ))
        }
        Ok(false) => {
            let m = "Accepted subagent run changed before gateway execution could start";
            return Ok(skip(
                json!({"message": m, "subagent_id": subagent_id, "run_id": run_id}),
                m,
            ));
        }
        Ok(true) => {}
    }
    match wire::update_where(
        session,
        "subagents",
        &subagent_id,
        &[("status", "eq.running")],
        &json!({"status": "running", "started_at": now, "metadata": start_meta}),
    ) {
        Err(e) => {
            return Ok(fail(
                json!({"message": "Failed to mark subagent as running", "subagent_id": subagent_id}),
                e.to_string(),
            ))
        }
        Ok(false) => {
            let m = "Subagent status changed before gateway execution could start";
            return Ok(skip(
                json!({"message": m, "subagent_id": subagent_id, "run_id": run_id}),
                m,
            ));
        }
        Ok(true) => {}
    }
    // 20.
    let mut em = Emitter {
        session,
        target: prep.target(),
        next: None,
    };
    let ec = execution_context();
    em.emit(
        "run_started",
        merged(
            Some(&json!({"runner": "gateway", "adapter_id": adapter_id, "subagent_type": prep.subagent_type, "run_id": run_id, "run_sequence": run_sequence})),
            &ec,
        ),
    );
    // 21.
    if prep.fc_requested && !prep.fc_effective {
        let reason = prep
            .fc_denied
            .clone()
            .unwrap_or_else(|| "Gateway elevated provider mode is unavailable.".into());
        return Ok(fail_run(session, &prep, &mut em, &reason));
    }
    // 22.
    let plan = match build_plan(&prep, &layers_on, &ctx.providers.command(provider), &flags) {
        Ok(p) => p,
        Err(e) => {
            let m = if e.trim().is_empty() {
                "Failed to build subagent run plan".to_string()
            } else {
                e
            };
            return Ok(fail_run(session, &prep, &mut em, &m));
        }
    };
    // 24.
    execute_and_finalize(session, ctx, &prep, &mut em, plan)
}

/// The run's plan, built by the provider's one argv builder (`providers::subagent_plan`): a
/// field that cannot be passed safely, or an elevated ask of a restricted run, fails the run
/// with a message that names the field or the layers that are off.
fn build_plan(
    prep: &Prepared,
    layers: &Layers,
    command: &Path,
    f: &Flags,
) -> Result<SubPlan, String> {
    let req = SubagentRequest::from_config(
        &prep.config,
        &prep.prompt,
        prep.fc_effective,
        prep.resume.as_deref(),
    )?;
    providers::subagent_plan(prep.provider, &req, layers, command, f)
}

/// §6.4 "pending cancel consumption": finalize as cancelled without spawning anything.
fn cancel_before_start(session: &Session, prep: &Prepared, reason: &str) -> End {
    let patch = merged(
        Some(&prep.base_metadata()),
        &json!({"cancel_reason": reason, "cancel_support": "gateway", "cancel_state": "acknowledged",
                "cancellation_scope": "gateway", "cancelled": true}),
    );
    let body = json!({
        "subagent_id": prep.subagent_id, "run_id": prep.run_id, "final_status": "cancelled",
        "failure_output": error_envelope(reason), "final_error": reason,
        "completed_at": crate::util::now_rfc3339(), "metadata_patch": patch,
    });
    let ok = matches!(wire::finalize(session, &body), Ok(f) if f.success);
    if !ok {
        let m = "Failed to record cancelled run";
        return fail(
            json!({"message": m, "subagent_id": prep.subagent_id, "run_id": prep.run_id}),
            m,
        );
    }
    let mut em = Emitter {
        session,
        target: prep.target(),
        next: None,
    };
    em.emit(
        "cancellation_requested",
        json!({"reason": reason, "source": "pending_cancel", "stage": "before_start"}),
    );
    let ack = json!({"reason": reason, "source": "gateway", "cancellation_scope": "gateway"});
    em.emit("cancellation_acknowledged", ack.clone());
    em.emit("run_cancelled", ack);
    log::info!(target: "subagent", "run cancelled before start subagent={} run={}", prep.subagent_id, prep.run_id);
    End {
        outcome: outcome(
            FinalStatus::Completed,
            json!({"subagent_id": prep.subagent_id, "status": "cancelled", "output": error_envelope(reason), "error": reason}),
            None,
        ),
        fail_subagent: false,
    }
}

/// §5.2: fail the started run before anything was spawned.
fn fail_run(session: &Session, prep: &Prepared, em: &mut Emitter, msg: &str) -> End {
    let now = crate::util::now_rfc3339();
    let env = error_envelope(msg);
    let extra = json!({"full_control_requested": prep.fc_requested, "full_control_effective": prep.fc_effective,
                       "full_control_denied_reason": prep.fc_denied});
    let run_meta = merged(Some(&prep.base_metadata()), &extra);
    let sub_meta = merged(prep.subagent.get("metadata"), &extra);
    let mut errs = Vec::new();
    if let Err(e) = wire::update_where(
        session,
        "subagent_runs",
        &prep.run_id,
        &[("status", "eq.running")],
        &json!({"status": "failed", "output": env, "error": msg, "completed_at": now, "metadata": run_meta}),
    ) {
        errs.push(format!("run update: {e}"));
    }
    if let Err(e) = wire::update_where(
        session,
        "subagents",
        &prep.subagent_id,
        &[("status", "eq.running")],
        &json!({"status": "failed", "output": env, "error": msg, "completed_at": now, "metadata": sub_meta}),
    ) {
        errs.push(format!("subagent update: {e}"));
    }
    em.emit(
        "run_failed",
        json!({"reason": msg, "source": "gateway", "stage": "pre_execution"}),
    );
    log::warn!(target: "subagent", "run failed before execution subagent={} run={} reason={msg}", prep.subagent_id, prep.run_id);
    let error = if errs.is_empty() {
        msg.to_string()
    } else {
        format!("{msg} (persistence errors: {})", errs.join("; "))
    };
    fail(
        json!({"message": msg, "subagent_id": prep.subagent_id}),
        error,
    )
}

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

// ---------------------------------------------------------------------------------------------
// Provider adapters (§3).

// ---------------------------------------------------------------------------------------------
// Output normalization (§3.3–§3.7).

/// Normalized output: envelope, adapter metadata, parse error, run events (stream-json).
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    pub output: Value,
    pub metadata: Map<String, Value>,
    pub parse_error: Option<String>,
    pub events: Vec<(String, Value)>,
}

fn envelope(content: Value, content_type: &str) -> Value {
    json!({"schema_version": 1, "content": content, "content_type": content_type})
}

/// "Extract JSON from text" (§3.7).
pub fn extract_json(text: &str, strict: bool) -> (Value, Option<String>) {
    let t = text.trim();
    let (candidate, looks) = if let Some(start) = t.find("```") {
        let after = &t[start + 3..];
        let after = after.strip_prefix("json").unwrap_or(after);
        match after.find("```") {
            Some(end) => (after[..end].trim().to_string(), true),
            None => (after.trim().to_string(), true),
        }
    } else if let (Some(a), Some(b)) = (t.find('{'), t.rfind('}')) {
        if a < b {
            (t[a..=b].to_string(), true)
        } else {
            (t.to_string(), false)
        }
    } else if let (Some(a), Some(b)) = (t.find('['), t.rfind(']')) {
        if a < b {
            (t[a..=b].to_string(), true)
        } else {
            (t.to_string(), false)
        }
    } else {
        (t.to_string(), t.starts_with('{') || t.starts_with('['))
    };
    match serde_json::from_str::<Value>(&candidate) {
        Ok(v) => (envelope(v, "json"), None),
        Err(_) if strict || looks => (
            envelope(json!(t), "markdown"),
            Some("Failed to parse JSON output".into()),
        ),
        Err(_) => (envelope(json!(t), "markdown"), None),
    }
}

fn summary_sources(env: &mut Value, from: &Map<String, Value>) {
    if let Some(sm) = from
        .get("summary")
        .or_else(|| from.get("overview"))
        .and_then(Value::as_str)
    {
        env["summary"] = json!(sm);
    }
    if let Some(Value::Array(src)) = from.get("sources") {
        if src.iter().all(Value::is_string) {
            env["sources"] = Value::Array(src.clone());
        }
    }
}

fn claude_object(o: &Map<String, Value>) -> Normalized {
    let mut md = Map::new();
    md.insert("adapter_id".into(), json!("claude_code"));
    for (k, src) in [
        ("session_id", "session_id"),
        ("total_cost_usd", "total_cost_usd"),
        ("usage", "usage"),
        ("model_usage", "modelUsage"),
        ("permission_denials", "permission_denials"),
    ] {
        if let Some(v) = o.get(src) {
            if k != "total_cost_usd" || v.is_number() {
                md.insert(k.into(), v.clone());
            }
        }
    }
    let output = if let Some(Value::Object(so)) = o.get("structured_output") {
        let mut e = envelope(Value::Object(so.clone()), "json");
        summary_sources(&mut e, so);
        e
    } else if let Some(Value::String(r)) = o.get("result") {
        let mut e = envelope(json!(r), "markdown");
        summary_sources(&mut e, o);
        e
    } else if let Some(r) = o.get("result").filter(|r| !r.is_null()) {
        if r.is_object() {
            envelope(r.clone(), "json")
        } else {
            envelope(json!(r.to_string()), "text")
        }
    } else {
        envelope(Value::Object(o.clone()), "json")
    };
    Normalized {
        output,
        metadata: md,
        parse_error: None,
        events: Vec::new(),
    }
}

fn stream_lines(stdout: &str) -> Vec<Value> {
    let mut v: Vec<Value> = stdout
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect();
    if v.len() > STREAM_EVENTS {
        v.drain(..v.len() - STREAM_EVENTS);
    }
    v
}

fn text_of_content(c: &Value) -> String {
    match c {
        Value::String(x) => x.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| s(p, "type").is_none_or(|t| t == "text"))
            .filter_map(|p| s(p, "text"))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Claude stream events → run events (§3.3).
fn claude_events(events: &[Value]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut msg_index: Vec<(String, usize)> = Vec::new();
    let mut tools: Vec<(String, String)> = Vec::new();
    let mut results_seen: Vec<String> = Vec::new();
    for ev in events {
        let mid = ev.get("message").and_then(|m| s(m, "id")).map(String::from);
        let parts = ev
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match s(ev, "type") {
            Some("assistant") => {
                let text: String = parts
                    .iter()
                    .filter(|p| s(p, "type") == Some("text"))
                    .filter_map(|p| s(p, "text"))
                    .collect::<Vec<_>>()
                    .join("");
                let text = text.trim_end().to_string();
                if !text.is_empty() {
                    let m = ev.get("message").cloned().unwrap_or(json!({}));
                    let mut payload = json!({"role": "assistant", "content": text});
                    for k in ["model", "stop_reason"] {
                        if let Some(v) = m.get(k).filter(|v| !v.is_null()) {
                            payload[k] = v.clone();
                        }
                    }
                    if let Some(id) = &mid {
                        payload["message_id"] = json!(id);
                    }
                    match mid
                        .as_ref()
                        .and_then(|id| msg_index.iter().find(|(k, _)| k == id))
                    {
                        Some((_, i)) => out[*i] = ("message".into(), payload),
                        None => {
                            if let Some(id) = &mid {
                                msg_index.push((id.clone(), out.len()));
                            }
                            out.push(("message".into(), payload));
                        }
                    }
                }
                for p in parts.iter().filter(|p| s(p, "type") == Some("tool_use")) {
                    let id = s(p, "id").unwrap_or("").to_string();
                    if tools.iter().any(|(k, _)| *k == id) {
                        continue;
                    }
                    let name = s(p, "name").unwrap_or("").to_string();
                    tools.push((id.clone(), name.clone()));
                    let input = p.get("input").cloned().unwrap_or(Value::Null);
                    let summary = if let Some(q) = s(&input, "query") {
                        json!(format!("Query: {q}"))
                    } else if let Some(t) = s(&input, "text") {
                        json!(t)
                    } else if let Value::String(x) = &input {
                        json!(x)
                    } else {
                        Value::Null
                    };
                    out.push((
                        "tool_call".into(),
                        json!({"tool_name": name, "tool_use_id": id, "tool_input": input, "summary": summary, "message_id": mid}),
                    ));
                }
            }
            Some("user") => {
                for p in parts.iter().filter(|p| s(p, "type") == Some("tool_result")) {
                    let id = s(p, "tool_use_id").unwrap_or("").to_string();
                    if results_seen.contains(&id) {
                        continue;
                    }
                    let content = match p.get("content") {
                        Some(Value::String(x)) => x.trim_end().to_string(),
                        Some(v) if !v.is_null() => serde_json::to_string_pretty(v)
                            .unwrap_or_default()
                            .trim_end()
                            .to_string(),
                        _ => String::new(),
                    };
                    if content.is_empty() {
                        continue;
                    }
                    results_seen.push(id.clone());
                    let name = tools.iter().find(|(k, _)| *k == id).map(|(_, n)| n.clone());
                    out.push((
                        "tool_result".into(),
                        json!({"tool_use_id": id, "tool_name": name, "content": content,
                               "is_error": p.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                               "message_id": mid}),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

pub fn normalize(provider: ProviderId, format: Format, stdout: &str) -> Normalized {
    let adapter = match provider {
        ProviderId::Claude => "claude_code",
        ProviderId::Codex => "codex",
        ProviderId::Gemini => "gemini",
    };
    let mut base_md = Map::new();
    base_md.insert("adapter_id".into(), json!(adapter));
    let text_out = || Normalized {
        output: envelope(json!(stdout.trim()), "text"),
        metadata: base_md.clone(),
        parse_error: None,
        events: Vec::new(),
    };
    // Claude text and JSON runs stream too (to see connection retries as they happen): their
    // answer is the last result event, the same envelope `json` prints.
    if provider == ProviderId::Claude
        && format != Format::StreamJson
        && providers::claude::is_stream(stdout)
    {
        if let Some(r) = providers::claude::result_event(stdout) {
            if format == Format::Text {
                let text = r.get("result").and_then(Value::as_str).unwrap_or("");
                return Normalized {
                    output: envelope(json!(text.trim()), "text"),
                    ..text_out()
                };
            }
            return claude_object(&r);
        }
    }
    if format == Format::Text {
        return text_out();
    }
    match provider {
        ProviderId::Claude => {
            if format == Format::StreamJson {
                let evs = stream_lines(stdout);
                let events = claude_events(&evs);
                if let Some(Value::Object(r)) =
                    evs.iter().rev().find(|e| s(e, "type") == Some("result"))
                {
                    let mut n = claude_object(r);
                    n.events = events;
                    return n;
                }
                let mut md = base_md.clone();
                for e in &evs {
                    for k in ["session_id", "total_cost_usd", "usage"] {
                        if let Some(v) = e.get(k) {
                            md.insert(k.into(), v.clone());
                        }
                    }
                }
                let last = evs
                    .last()
                    .map(|e| {
                        ["content", "message", "result", "output"]
                            .iter()
                            .find_map(|k| e.get(*k).and_then(Value::as_str).map(String::from))
                            .unwrap_or_else(|| {
                                text_of_content(
                                    e.get("message")
                                        .and_then(|m| m.get("content"))
                                        .unwrap_or(&Value::Null),
                                )
                            })
                    })
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or_else(|| stdout.trim().to_string());
                return Normalized {
                    output: envelope(json!(last), "markdown"),
                    metadata: md,
                    parse_error: None,
                    events,
                };
            }
            match serde_json::from_str::<Value>(stdout.trim()) {
                Ok(Value::Object(o)) => claude_object(&o),
                Ok(_) => Normalized {
                    parse_error: Some("Claude output is not a JSON object".into()),
                    ..text_out()
                },
                Err(e) => Normalized {
                    parse_error: Some(e.to_string()),
                    ..text_out()
                },
            }
        }
        ProviderId::Codex => {
            if format == Format::Json {
                if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(stdout.trim()) {
                    return Normalized {
                        output: envelope(v, "json"),
                        metadata: base_md,
                        parse_error: None,
                        events: Vec::new(),
                    };
                }
            }
            let evs = stream_lines(stdout);
            if evs.is_empty() {
                let err = serde_json::from_str::<Value>(stdout.trim())
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "Codex output is not JSON".into());
                return Normalized {
                    parse_error: Some(err),
                    ..text_out()
                };
            }
            let text = evs
                .iter()
                .rev()
                .find(|e| {
                    s(e, "type") == Some("item.completed")
                        && e.get("item").and_then(|i| s(i, "type")) == Some("agent_message")
                })
                .and_then(|e| e.get("item").and_then(|i| s(i, "text")).map(String::from))
                .unwrap_or_else(|| stdout.to_string());
            let (output, perr) = extract_json(&text, false);
            let mut md = base_md;
            if let Some(u) = evs
                .iter()
                .rev()
                .find(|e| s(e, "type") == Some("turn.completed"))
                .and_then(|e| e.get("usage"))
            {
                md.insert("usage".into(), u.clone());
            }
            let events = evs
                .iter()
                .filter(|e| s(e, "type") == Some("item.completed"))
                .filter_map(|e| {
                    let item = e.get("item")?;
                    let content = s(item, "text")?;
                    match s(item, "type") {
                        Some("agent_message") => Some((
                            "message".to_string(),
                            json!({"role": "assistant", "content": content}),
                        )),
                        Some("reasoning") => Some((
                            "message".to_string(),
                            json!({"role": "assistant", "content": content, "kind": "reasoning"}),
                        )),
                        _ => None,
                    }
                })
                .collect();
            Normalized {
                output,
                metadata: md,
                parse_error: perr,
                events: if format == Format::StreamJson {
                    events
                } else {
                    Vec::new()
                },
            }
        }
        ProviderId::Gemini => {
            if format == Format::StreamJson {
                let evs = stream_lines(stdout);
                let msgs: Vec<(String, Value)> = evs
                    .iter()
                    .filter(|e| s(e, "type") == Some("message"))
                    .filter_map(|e| {
                        Some((
                            "message".to_string(),
                            json!({"role": s(e, "role")?, "content": s(e, "content")?}),
                        ))
                    })
                    .collect();
                let text: String = evs
                    .iter()
                    .filter(|e| {
                        s(e, "type") == Some("message") && s(e, "role") == Some("assistant")
                    })
                    .filter_map(|e| s(e, "content"))
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("");
                let text = if text.is_empty() {
                    stdout.to_string()
                } else {
                    text
                };
                let (output, perr) = extract_json(&text, false);
                let mut md = base_md;
                if let Some(st) = evs
                    .iter()
                    .rev()
                    .find(|e| s(e, "type") == Some("result"))
                    .and_then(|e| e.get("stats"))
                {
                    md.insert("usage".into(), st.clone());
                }
                return Normalized {
                    output,
                    metadata: md,
                    parse_error: perr,
                    events: msgs,
                };
            }
            match serde_json::from_str::<Value>(stdout.trim()) {
                Ok(o) if o.get("response").is_some_and(Value::is_string) => {
                    let (output, perr) =
                        extract_json(o["response"].as_str().unwrap_or_default(), false);
                    Normalized {
                        output,
                        metadata: base_md,
                        parse_error: perr,
                        events: Vec::new(),
                    }
                }
                Ok(_) => Normalized {
                    parse_error: Some("Gemini output has no string response field".into()),
                    ..text_out()
                },
                Err(e) => Normalized {
                    parse_error: Some(e.to_string()),
                    ..text_out()
                },
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Execution (§4) and finalization (§5.1).

fn safe_segment(v: &str, label: &str) -> Result<String, String> {
    let t = v.trim();
    if t.is_empty() {
        return Err(format!("{label} is required"));
    }
    if t == "." || t == ".." {
        return Err(format!("{label} contains invalid path segments"));
    }
    if t.contains('/') || t.contains('\\') || t.contains('\0') {
        return Err(format!("{label} contains path separators"));
    }
    Ok(t.to_string())
}

fn unhealthy_message(provider: ProviderId, detail: &str) -> String {
    let base = format!(
        "Gateway provider {} is unhealthy. Try another provider or run \"panorama-gateway doctor\".",
        provider.short()
    );
    if detail.trim().is_empty() {
        base
    } else {
        format!("{base} Details: {detail}")
    }
}

/// How long a subagent's work directory is kept after its last run.
const SUBAGENT_DIR_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// Removes the work directories of other subagents not used for [`SUBAGENT_DIR_TTL`] (a few
/// per call, so a run never waits on a large sweep).
fn sweep_stale_dirs(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for e in entries.flatten().take(256) {
        if e.file_name().to_str() == Some(keep) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > SUBAGENT_DIR_TTL);
        if old && e.file_type().is_ok_and(|t| t.is_dir()) {
            log::info!(target: "subagent", "removing the unused subagent work directory {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Why a subagent's CLI failed, classified, with what to do: not logged in (Codex's pre-check),
/// no network (the watcher stopped it), timeout, or what the CLI itself reported — Claude's
/// stream-json `result` with `is_error`, an error envelope on stdout, Gemini's `{"error"}` on
/// stderr — before its last stderr line (often a warning), before the exit code.
fn failure_reason(
    provider: ProviderId,
    result: &Result<exec::Output, String>,
    (not_logged_in, not_found, network): (Option<String>, bool, Option<&str>),
    timeout: Duration,
    stdout: &str,
    stderr: &str,
) -> (Kind, String) {
    let with_hint = |kind: Kind, m: &str| match diagnose::hint(provider, kind) {
        Some(h) => (kind, format!("{m}. {h}")),
        None => (kind, m.to_string()),
    };
    match result {
        Err(_) if not_logged_in.is_some() => {
            with_hint(Kind::Auth, not_logged_in.as_deref().unwrap_or_default())
        }
        Err(e) if not_found => (
            Kind::NotInstalled,
            format!(
                "{} CLI is not installed or not on PATH ({e}); {}",
                provider.short(),
                provider.install_hint()
            ),
        ),
        Err(e) => (Kind::ExitStatus, e.clone()),
        Ok(o) if o.stop == exec::Stop::Aborted => with_hint(
            Kind::Network,
            network.unwrap_or("the CLI cannot reach its API"),
        ),
        Ok(o) if o.timed_out() => (
            Kind::Timeout,
            format!(
                "Subagent timed out after {} ms; raise the subagent's timeout_ms, or check that the CLI runs without waiting for input",
                timeout.as_millis()
            ),
        ),
        Ok(o) => {
            let stderr = diagnose::strip_ansi(stderr);
            let summary = providers::plan::error_summary(&stderr);
            diagnose::explain_exit(
                provider,
                o.exit_code,
                o.signal,
                stdout,
                &stderr,
                summary.as_ref(),
            )
        }
    }
}

fn execute_and_finalize(
    session: &Session,
    ctx: &JobContext,
    prep: &Prepared,
    em: &mut Emitter,
    plan: SubPlan,
) -> Result<End, String> {
    let sid = safe_segment(&prep.subagent_id, "subagent id")?;
    safe_segment(&prep.run_id, "run id")?;
    let root = ctx.providers.work_root().join("subagents");
    // One work directory per subagent, kept between its runs: Claude finds a session to
    // `--resume` only while the directory it was started in exists (Claude Code 2.1), and
    // Gemini keys its sessions by directory. Left-overs are swept after SUBAGENT_DIR_TTL.
    let work = root.join(&sid);
    sweep_stale_dirs(&root, &sid);
    let started = Instant::now();
    em.emit(
        "run_progress",
        json!({"phase": "attempt_started", "attempt": 1, "max_attempts": 1}),
    );
    let mut watch = providers::diagnose::NetworkWatch::new(prep.provider);
    let mut not_logged_in: Option<String> = None;
    let mut spawn_not_found = false;
    let ready = exec::ensure_private_dir(&root).and_then(|()| exec::ensure_private_dir(&work));
    let result: Result<exec::Output, String> = match ready {
        Err(e) => Err(format!(
            "could not create the subagent work directory {}: {e}",
            work.display()
        )),
        Ok(()) => {
            let dir = work.as_path();
            let mut r = Ok(());
            for (name, data) in &plan.files {
                // A previous run's file (or whatever a tool left under that name) goes first.
                let _ = std::fs::remove_file(dir.join(name));
                if let Err(e) = exec::write_private_file(&dir.join(name), data) {
                    r = Err(format!("could not write {name} in the work directory: {e}"));
                }
            }
            let out = r.and_then(|()| {
                let env = providers::run::env_with(&plan.env, &plan.path_prepend, dir);
                if prep.provider == ProviderId::Codex {
                    if let Some(m) = providers::codex::login_missing(&plan.command, &env, dir) {
                        not_logged_in = Some(m.clone());
                        return Err(m);
                    }
                }
                let mut spec = exec::Spec::new(&plan.command);
                spec.args = plan.args.iter().map(Into::into).collect();
                spec.stdin = Some(plan.stdin.clone());
                spec.cwd = Some(dir.to_path_buf());
                spec.env = env;
                spec.timeout = Some(plan.timeout);
                spec.grace = CANCEL_GRACE;
                spec.cancel = Some(ctx.cancel.clone());
                spec.register = Some((ctx.children.clone(), ctx.job_id.clone()));
                spec.tmp_base = Some(dir.to_path_buf());
                log::info!(target: "subagent", "starting subagent CLI subagent={} run={} provider={} timeout_ms={}",
                    prep.subagent_id, prep.run_id, prep.provider.as_str(), plan.timeout.as_millis());
                exec::run(spec, Some(&mut |_, line: &str| watch.observe(line))).map_err(|e| {
                    spawn_not_found = e.not_found();
                    e.to_string()
                })
            });
            for (name, _) in &plan.files {
                let _ = std::fs::remove_file(dir.join(name));
            }
            out
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    // §5.1 step 1–2.
    let db_cancelled = match wire::load_run(session, &prep.run_id, "status") {
        Ok(Some(r)) => s(&r, "status") == Some("cancelled"),
        Ok(None) => false,
        Err(e) => {
            log::warn!(target: "subagent", "could not re-read run {} status: {e}", prep.run_id);
            false
        }
    };
    let mem_reason = ctx.subagent_runs.cancel_reason(&prep.subagent_id);
    let killed = matches!(&result, Ok(o) if o.stop != exec::Stop::None && !o.timed_out());
    if ctx.shutdown.is_immediate() && killed && mem_reason.is_none() && !db_cancelled {
        return Ok(cancel_on_shutdown(
            session,
            prep,
            em,
            "Gateway shutting down",
        ));
    }
    let was_cancelled = mem_reason.is_some() || db_cancelled;
    let cancel_reason = mem_reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| CANCELLED.into());
    let (out_ok, stdout, stderr, exit_code, timed_out, so_tr, se_tr) = match &result {
        Ok(o) => (
            o.success(),
            o.stdout_lossy(),
            o.stderr_lossy(),
            o.exit_code,
            o.timed_out(),
            o.stdout_truncated,
            o.stderr_truncated,
        ),
        Err(_) => (
            false,
            String::new(),
            String::new(),
            None,
            false,
            false,
            false,
        ),
    };
    let norm = if out_ok {
        normalize(prep.provider, plan.format, &stdout)
    } else {
        Normalized {
            output: envelope(json!(stdout.trim()), "text"),
            ..Default::default()
        }
    };
    let parse_strict = plan.format == Format::Json;
    let should_fail = !out_ok || (parse_strict && norm.parse_error.is_some());
    let effective_fail = should_fail && !was_cancelled;
    let (kind, mut error_message) = if !out_ok {
        failure_reason(
            prep.provider,
            &result,
            (not_logged_in, spawn_not_found, watch.reason()),
            plan.timeout,
            &stdout,
            &stderr,
        )
    } else {
        (
            Kind::BadOutput,
            norm.parse_error.clone().unwrap_or_default(),
        )
    };
    if !was_cancelled {
        if effective_fail {
            let summary = collapse(&error_message, 500);
            ctx.providers.record_run_in(
                prep.provider,
                if kind == Kind::NotInstalled {
                    Status::Unavailable
                } else {
                    Status::Unhealthy
                },
                Some(&summary),
                Some(&ctx.job_id),
                "subagent_run",
                Some(&prep.run_id),
            );
            error_message = unhealthy_message(prep.provider, &summary);
        } else {
            ctx.providers.record_run_in(
                prep.provider,
                Status::Healthy,
                None,
                Some(&ctx.job_id),
                "subagent_run",
                Some(&prep.run_id),
            );
        }
    }
    let final_status = if was_cancelled {
        "cancelled"
    } else if effective_fail {
        "failed"
    } else {
        "completed"
    };
    let final_error: Option<String> = match final_status {
        "cancelled" => Some(cancel_reason.clone()),
        "failed" => Some(error_message.clone()),
        _ => None,
    };
    let now = crate::util::now_rfc3339();
    let mut patch = norm.metadata.clone();
    let gw = merged(
        Some(&json!({
            "schema_version": 1, "runner": "gateway", "adapter_id": prep.adapter_id,
            "subagent_type": prep.subagent_type, "run_id": prep.run_id,
            "run_sequence": prep.run_sequence, "last_run_at": now,
            "command": providers::redact::command_line(&plan.command.to_string_lossy(), &plan.args),
            "exit_code": exit_code, "duration_ms": duration_ms, "timed_out": timed_out,
            "stdout_truncated": so_tr, "stderr_truncated": se_tr,
            "output_format": plan.format.as_str(), "parse_error": norm.parse_error,
            "retry_count": 0, "retry_reasons": [], "retry_max_attempts": 1,
            "cancel_run_id": null, "cancel_requested_at": null,
            "cancel_reason": if was_cancelled { json!(cancel_reason) } else { Value::Null },
            "cancelled": was_cancelled,
            "cancel_state": if was_cancelled { "acknowledged" } else { "none" },
            "cancel_support": if was_cancelled { json!("gateway") } else { Value::Null },
            "cancellation_scope": if was_cancelled { json!("gateway") } else { Value::Null },
            "full_control_requested": prep.fc_requested,
            "full_control_effective": prep.fc_effective,
            "full_control_denied_reason": null,
        })),
        &execution_context(),
    );
    if let Value::Object(g) = gw {
        for (k, v) in g {
            patch.insert(k, v);
        }
    }
    let mut body = json!({
        "subagent_id": prep.subagent_id, "run_id": prep.run_id, "final_status": final_status,
        "failure_output": final_error.as_deref().map(error_envelope),
        "final_error": final_error, "completed_at": now, "stderr": stderr,
        "metadata_patch": Value::Object(patch),
    });
    if final_status == "completed" {
        body["output"] = norm.output.clone();
    }
    let fin = wire::finalize(session, &body)
        .map_err(|e| format!("Failed to finalize gateway subagent run: {e}"))?;
    if !fin.success {
        let m = "Failed to persist terminal subagent run state";
        return Ok(fail(
            json!({"message": m, "subagent_id": prep.subagent_id, "run_id": prep.run_id}),
            fin.error.unwrap_or_else(|| m.to_string()),
        ));
    }
    let output = fin.output.clone().unwrap_or_else(|| norm.output.clone());
    if plan.format == Format::StreamJson {
        for (kind, payload) in &norm.events {
            em.emit(kind, payload.clone());
        }
    }
    match final_status {
        "cancelled" => {
            em.emit(
                "cancellation_acknowledged",
                json!({"reason": cancel_reason, "source": "gateway", "cancellation_scope": "gateway"}),
            );
            em.emit(
                "run_cancelled",
                json!({"reason": cancel_reason, "source": "gateway", "cancellation_scope": "gateway", "duration_ms": duration_ms}),
            );
        }
        "failed" => em.emit(
            "run_failed",
            json!({"reason": error_message, "duration_ms": duration_ms, "parse_error": norm.parse_error, "error_kind": kind.as_str()}),
        ),
        _ => em.emit(
            "run_completed",
            json!({"duration_ms": duration_ms, "parse_error": norm.parse_error, "retry_count": 0}),
        ),
    }
    log::info!(target: "subagent", "subagent run finished subagent={} run={} status={final_status} duration_ms={duration_ms}", prep.subagent_id, prep.run_id);
    let mut result = json!({
        "subagent_id": prep.subagent_id, "status": final_status,
        "output": if effective_fail { Value::Null } else { output },
        "error": final_error,
    });
    if effective_fail {
        result["error_kind"] = json!(kind.as_str());
    }
    if effective_fail {
        // The edge function already wrote the terminal state: §5.4 has nothing to do.
        Ok(End {
            outcome: outcome(FinalStatus::Failed, result, Some(error_message)),
            fail_subagent: false,
        })
    } else {
        Ok(End {
            outcome: outcome(FinalStatus::Completed, result, None),
            fail_subagent: false,
        })
    }
}

/// §6.6 "cancel on shutdown": the daemon stopped now and killed the child; write the
/// cancelled state directly (no edge function) and complete the job as cancelled.
fn cancel_on_shutdown(session: &Session, prep: &Prepared, em: &mut Emitter, reason: &str) -> End {
    let now = crate::util::now_rfc3339();
    let marks = json!({"cancel_run_id": prep.run_id, "cancel_requested_at": now, "cancel_reason": reason,
        "cancel_support": "gateway", "cancellation_scope": "gateway", "cancel_state": "acknowledged",
        "cancelled": true, "last_run_at": now});
    let env = error_envelope(reason);
    let run_meta = wire::load_run(session, &prep.run_id, "metadata")
        .ok()
        .flatten()
        .and_then(|r| r.get("metadata").cloned());
    let run_hit = wire::update_where(
        session,
        "subagent_runs",
        &prep.run_id,
        &[("status", "eq.running")],
        &json!({"status": "cancelled", "output": env, "error": reason, "completed_at": now,
                "metadata": merged(run_meta.as_ref(), &marks)}),
    );
    let sub_meta = wire::load_subagent(session, &prep.subagent_id, "metadata")
        .ok()
        .flatten()
        .and_then(|r| r.get("metadata").cloned());
    if let Err(e) = wire::update_where(
        session,
        "subagents",
        &prep.subagent_id,
        &[("status", "eq.running")],
        &json!({"status": "cancelled", "output": env, "error": reason, "completed_at": now,
                "metadata": merged(sub_meta.as_ref(), &marks)}),
    ) {
        log::warn!(target: "subagent", "could not mark subagent {} cancelled at shutdown: {e}", prep.subagent_id);
    }
    match run_hit {
        Ok(true) => {
            let p = json!({"reason": reason, "source": "gateway_shutdown", "cancellation_scope": "gateway"});
            em.emit("cancellation_acknowledged", p.clone());
            em.emit("run_cancelled", p);
        }
        Ok(false) => {}
        Err(e) => {
            log::warn!(target: "subagent", "could not mark run {} cancelled at shutdown: {e}", prep.run_id)
        }
    }
    log::info!(target: "subagent", "subagent run cancelled by shutdown subagent={} run={}", prep.subagent_id, prep.run_id);
    End {
        outcome: outcome(
            FinalStatus::Cancelled,
            json!({"message": reason, "cancelled": true}),
            Some(reason.to_string()),
        ),
        fail_subagent: false,
    }
}

// ---------------------------------------------------------------------------------------------
// `subagent_cancel` (§6.4).

fn cancel_result(
    sid: &str,
    run_id: Option<&str>,
    active_run_id: Option<&str>,
    reason: &str,
    res: (&str, &str, bool, &str, &str),
) -> Value {
    let (cancel_result, cancel_state, supported, status, message) = res;
    json!({
        "subagent_id": sid, "run_id": run_id, "active_run_id": active_run_id,
        "cancelled_active_run": false, "reason": reason, "cancel_result": cancel_result,
        "cancel_state": cancel_state, "cancel_supported": supported, "status": status,
        "message": message,
    })
}

fn ok(result: Value) -> Outcome {
    outcome(FinalStatus::Completed, result, None)
}

/// Resolution table of §6.4 step 7: (cancel_result, cancel_state, message) or None = accepted.
fn resolve(
    supported: bool,
    status: &str,
    active_run: Option<&str>,
    requested: Option<&str>,
) -> Option<(&'static str, &'static str, String)> {
    if !supported {
        return Some((
            "rejected",
            "rejected",
            "Cancellation request rejected for this subagent.".into(),
        ));
    }
    match status {
        "completed" | "failed" | "cancelled" => {
            return Some((
                "already_terminal",
                "none",
                format!("Subagent run is already terminal (status: {status})."),
            ))
        }
        "idle" => {
            return Some((
                "no_active_run",
                "none",
                "No active subagent run to cancel.".into(),
            ))
        }
        "running" => {}
        other => {
            return Some((
                "rejected",
                "none",
                format!("Subagent is not running (status: {other})."),
            ))
        }
    }
    let Some(active) = active_run else {
        return Some((
            "no_active_run",
            "none",
            "No active subagent run to cancel.".into(),
        ));
    };
    if requested.is_some_and(|r| r != active) {
        return Some((
            "no_active_run",
            "none",
            "Requested run_id is not the active running subagent run.".into(),
        ));
    }
    None
}

fn failed_cancel(message: &str) -> Outcome {
    outcome(
        FinalStatus::Failed,
        json!({ "message": message }),
        Some(message.to_string()),
    )
}

/// Entry point of `subagent_cancel` jobs.
pub fn handle_cancel(payload: &Value, ctx: &JobContext) -> Outcome {
    let Some(session) = ctx.session.clone() else {
        return failed_cancel("Gateway backend session unavailable");
    };
    let Some(sid) = subagent_id_of(payload) else {
        return failed_cancel("Missing subagent_id in payload");
    };
    let requested = trimmed(s(payload, "run_id").or_else(|| s(payload, "runId")));
    let reason = trimmed(s(payload, "reason")).unwrap_or_else(|| CANCELLED.into());
    let sub = match wire::load_subagent(
        &session,
        &sid,
        "id,team_id,gateway_id,subagent_type,status,metadata",
    ) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(target: "subagent", "could not load subagent {sid} for cancellation: {e}");
            return failed_cancel("Failed to load subagent for cancellation");
        }
    };
    let Some(sub) = sub else {
        let mut r = cancel_result(
            &sid,
            requested.as_deref(),
            None,
            &reason,
            (
                "no_active_run",
                "none",
                false,
                "not_found",
                "Subagent not found; no active run to cancel.",
            ),
        );
        r.as_object_mut().map(|o| o.remove("active_run_id"));
        return ok(r);
    };
    let gid = s(&sub, "gateway_id").map(String::from);
    if gid.as_deref() != Some(session.gateway_id.as_str()) {
        return ok(cancel_result(
            &sid,
            requested.as_deref(),
            None,
            &reason,
            (
                "no_active_run",
                "none",
                false,
                "running",
                "Subagent is assigned to another gateway; skipping stale cancel request.",
            ),
        ));
    }
    let supported = s(&sub, "subagent_type").and_then(adapter_for).is_some() && gid.is_some();
    let mut status = s(&sub, "status").unwrap_or("unknown").to_ascii_lowercase();
    let sub_meta = sub.get("metadata").cloned();
    let find_active = |session: &Session| -> Result<Option<(String, Value)>, String> {
        wire::newest_running_run(session, &sid, "id,metadata")
            .map(|r| {
                r.and_then(|r| {
                    Some((
                        s(&r, "id")?.to_string(),
                        r.get("metadata").cloned().unwrap_or(json!({})),
                    ))
                })
            })
            .map_err(|e| e.to_string())
    };
    let mut active = None;
    if status == "running" {
        match find_active(&session) {
            Ok(a) => active = a,
            Err(e) => {
                log::warn!(target: "subagent", "could not resolve the active run of {sid}: {e}");
                return failed_cancel("Failed to resolve active subagent run for cancellation");
            }
        }
    }
    let team_id = s(&sub, "team_id").unwrap_or(&session.team_id).to_string();
    {
        let active_id = active.as_ref().map(|(id, _): &(String, Value)| id.clone());
        if let Some((cr, cs, msg)) = resolve(
            supported,
            &status,
            active_id.as_deref(),
            requested.as_deref(),
        ) {
            return ok(cancel_result(
                &sid,
                None,
                active_id.as_deref(),
                &reason,
                (cr, cs, supported, &status, &msg),
            ));
        }
        let (run_id, run_meta) = active.clone().unwrap_or_default();
        let now = crate::util::now_rfc3339();
        let marks = json!({"cancel_run_id": run_id, "cancel_requested_at": now, "cancel_reason": reason,
            "cancel_state": "requested", "cancel_support": "gateway", "cancellation_scope": "gateway"});
        match wire::update_where(
            &session,
            "subagents",
            &sid,
            &[("status", "eq.running")],
            &json!({"metadata": merged(sub_meta.as_ref(), &marks)}),
        ) {
            Err(e) => {
                log::warn!(target: "subagent", "could not persist cancel metadata of {sid}: {e}");
                return failed_cancel("Failed to persist subagent cancellation metadata");
            }
            Ok(false) => {
                // Race: re-read and resolve again.
                match wire::load_subagent(&session, &sid, "status,metadata") {
                    Ok(Some(r)) => {
                        status = s(&r, "status").unwrap_or("unknown").to_ascii_lowercase();
                    }
                    _ => status = "unknown".into(),
                }
                active = if status == "running" {
                    find_active(&session).ok().flatten()
                } else {
                    None
                };
                let active_id = active.as_ref().map(|(id, _)| id.clone());
                let res = resolve(
                    supported,
                    &status,
                    active_id.as_deref(),
                    requested.as_deref(),
                )
                .unwrap_or((
                    "no_active_run",
                    "none",
                    "Subagent state changed while cancelling; try again.".into(),
                ));
                return ok(cancel_result(
                    &sid,
                    None,
                    active_id.as_deref(),
                    &reason,
                    (res.0, res.1, supported, &status, &res.2),
                ));
            }
            Ok(_) => {}
        }
        if let Err(e) = wire::update_where(
            &session,
            "subagent_runs",
            &run_id,
            &[("status", "eq.running")],
            &json!({"metadata": merged(Some(&run_meta), &marks)}),
        ) {
            log::warn!(target: "subagent", "could not persist cancel metadata of run {run_id}: {e}");
            return failed_cancel("Failed to persist run cancellation metadata");
        }
        // In-memory cancel request.
        let target_job = ctx.subagent_runs.request_cancel(&sid, &run_id, &reason);
        let is_active = target_job.is_some();
        log::info!(target: "subagent", "subagent cancel requested subagent={sid} run={run_id} active_process={is_active}");
        let t = EventTarget {
            run_id: run_id.clone(),
            subagent_id: sid.clone(),
            team_id: team_id.clone(),
            gateway_id: gid.clone(),
        };
        // The request is recorded before the run is signalled, so the run's own
        // `cancellation_acknowledged` always follows it in the run's event sequence.
        emit_once(
            &session,
            &t,
            "cancellation_requested",
            json!({"reason": reason, "source": "gateway_cancel_job", "active_process": is_active, "cancel_state": "requested"}),
        );
        if let Some(job) = target_job {
            (ctx.cancel_running)(&job);
            ctx.children.kill_job(&job, CANCEL_GRACE);
        }
        ok(json!({
            "subagent_id": sid, "run_id": run_id, "cancelled_active_run": is_active,
            "reason": reason, "cancel_result": "accepted", "cancel_state": "requested",
            "cancel_supported": true, "status": "running",
            "message": "Cancel requested and forwarded to gateway.",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_json_rules() {
        assert_eq!(
            extract_json("x ```json\n{\"a\":1}\n``` y", false).0["content"]["a"],
            1
        );
        let (o, e) = extract_json("see {not json}", false);
        assert_eq!(o["content_type"], "markdown");
        assert_eq!(e.as_deref(), Some("Failed to parse JSON output"));
        let (o, e) = extract_json("plain words", false);
        assert_eq!(o["content_type"], "markdown");
        assert!(e.is_none());
    }

    #[test]
    fn claude_json_and_stream_normalize() {
        let n = normalize(
            ProviderId::Claude,
            Format::Json,
            r#"{"type":"result","result":"Hi","session_id":"s1","total_cost_usd":0.5,"summary":"sum"}"#,
        );
        assert_eq!(n.output["content_type"], "markdown");
        assert_eq!(n.output["summary"], "sum");
        assert_eq!(n.metadata["session_id"], "s1");
        assert!(normalize(ProviderId::Claude, Format::Json, "not json")
            .parse_error
            .is_some());
        let stream = [
            r#"{"type":"system"}"#,
            r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"a"}]}}"#,
            r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"ab "},{"type":"tool_use","id":"t1","name":"WebSearch","input":{"query":"q"}}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"found"}]}}"#,
            r#"{"type":"result","result":"done"}"#,
        ]
        .join("\n");
        let n = normalize(ProviderId::Claude, Format::StreamJson, &stream);
        let kinds: Vec<&str> = n.events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["message", "tool_call", "tool_result"]);
        assert_eq!(n.events[0].1["content"], "ab");
        assert_eq!(n.events[1].1["summary"], "Query: q");
        assert_eq!(n.events[2].1["tool_name"], "WebSearch");
        assert_eq!(n.output["content"], "done");
    }

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
