//! `subagent_run`: validate the subagent and its accepted run in the documented order, mark it
//! started, run the provider CLI in an owner-only work directory, finalize through
//! `finalize-gateway-subagent-run` and write the run events (subagents-shell.md §2–§6).

use super::*;

/// The validated inputs of a run.
pub(super) struct Prepared {
    /// The subagent's metadata as the checks read it.
    pub(super) subagent_metadata: Value,
    pub(super) subagent_id: String,
    pub(super) subagent_type: String,
    pub(super) provider: ProviderId,
    pub(super) adapter_id: &'static str,
    pub(super) prompt: String,
    pub(super) config: Value,
    pub(super) resume: Option<String>,
    pub(super) run_id: String,
    pub(super) run_sequence: i64,
    pub(super) fc_requested: bool,
    pub(super) fc_effective: bool,
    pub(super) fc_denied: Option<String>,
    pub(super) gateway_id: Option<String>,
    pub(super) team_id: String,
}

impl Prepared {
    pub(super) fn base_metadata(&self) -> Value {
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

    pub(super) fn target(&self) -> EventTarget {
        EventTarget {
            run_id: self.run_id.clone(),
            subagent_id: self.subagent_id.clone(),
            team_id: self.team_id.clone(),
            gateway_id: self.gateway_id.clone(),
        }
    }
}

/// Provider elevated-mode support (§3.8): None when supported, else the denial text.
pub(super) fn elevated_denial(id: ProviderId, f: &Flags) -> Option<&'static str> {
    match id {
        ProviderId::Claude => (!(f.get("permissionModeFlag") || f.get("dangerouslySkipPermissionsFlag")))
            .then_some("Claude CLI does not expose elevated permission flags on this host (missing --permission-mode bypassPermissions and --dangerously-skip-permissions)."),
        ProviderId::Codex => (!(f.get("dangerouslyBypassApprovalsAndSandboxFlag") || f.get("sandboxFlag")))
            .then_some("Codex CLI does not expose elevated permission flags on this host (missing --dangerously-bypass-approvals-and-sandbox and --sandbox danger-full-access)."),
        ProviderId::Gemini => (!(f.get("approvalModeFlag") || f.get("yoloFlag")))
            .then_some("Gemini CLI does not expose elevated approval flags on this host (missing --approval-mode yolo and --yolo)."),
    }
}

/// A `subagent_run` job whose payload was read (step 1), top-down: the subagent's turn, the checks in the
/// documented order, the start, the CLI run, then finalize and the run events. Err = the job
/// could not be processed at all.
pub(super) fn run_job(
    session: &Session,
    req: &RunPayload,
    ctx: &JobContext,
) -> Result<End, String> {
    let _turn = match wait_for_turn(ctx, &req.subagent_id) {
        Ok(guard) => guard,
        Err(end) => return Ok(end),
    };
    let checked = match check(session, ctx, req) {
        Ok(c) => c,
        Err(end) => return Ok(end),
    };
    let (mut em, plan) = match start(session, ctx, &checked) {
        Ok(started) => started,
        Err(end) => return Ok(end),
    };
    // 24.
    let cli = run_cli(ctx, &checked.prep, &mut em, &plan)?;
    finalize_run(session, ctx, &checked.prep, &mut em, &plan, cli)
}

/// At most one active run per subagent (§1.4): reserve the subagent, waiting for a run of it
/// that is still active in this gateway. Err = the gateway stopped while waiting.
fn wait_for_turn(ctx: &JobContext, subagent_id: &str) -> Result<active::ActiveGuard, End> {
    let mut waited = false;
    loop {
        if let Some(g) = ctx.subagent_runs.reserve(subagent_id, &ctx.job_id) {
            return Ok(g);
        }
        if !waited {
            log::info!(target: "subagent", "job {} waits for the active run of subagent {subagent_id} to finish (one run per subagent at a time)", ctx.job_id);
            waited = true;
        }
        if ctx.cancel.is_cancelled() || ctx.shutdown.is_immediate() {
            let m = "Gateway stopped before the subagent run could start";
            return Err(skip(json!({"message": m, "subagent_id": subagent_id}), m));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the checks (steps 2–16) hand to the start: the run's inputs, the subagent's metadata
/// as read, and what the CLI plan is built from.
pub(super) struct Checked {
    pub(super) prep: Prepared,
    metadata: SubagentMeta,
    flags: Flags,
    layers_on: Layers,
}

/// Steps 2–16 in the documented order: the subagent (steps 2–8), the gateway's control row
/// and machine control (9–13), the atomically accepted run (14–16). Err = how the run ends.
fn check(session: &Session, ctx: &JobContext, req: &RunPayload) -> Result<Checked, End> {
    let me = session.gateway_id.clone();
    let subagent_id = req.subagent_id.as_str();
    let sub = check_subagent(session, &me, subagent_id, req.run_id.as_deref())?;
    let Machine {
        config,
        flags,
        fc_requested,
        fc_denied,
        fc_effective,
        layers_on,
    } = machine_control(session, &me, sub.config, sub.provider, ctx, subagent_id)?;
    let (run_id, run_sequence) = check_accepted_run(
        session,
        subagent_id,
        req.run_id.clone(),
        &sub.input,
        &sub.prompt,
    )?;
    let prep = Prepared {
        team_id: sub.team_id.unwrap_or_else(|| session.team_id.clone()),
        subagent_metadata: sub.metadata.all.clone(),
        subagent_id: subagent_id.to_string(),
        subagent_type: sub.subagent_type,
        provider: sub.provider,
        adapter_id: sub.adapter_id,
        prompt: sub.prompt,
        config,
        resume: sub.resume,
        run_id,
        run_sequence,
        fc_requested,
        fc_effective,
        fc_denied,
        gateway_id: sub.assigned,
    };
    Ok(Checked {
        prep,
        metadata: sub.metadata,
        flags,
        layers_on,
    })
}

/// What steps 2–8 learn about the subagent.
struct SubagentChecked {
    team_id: Option<String>,
    assigned: Option<String>,
    metadata: SubagentMeta,
    subagent_type: String,
    provider: ProviderId,
    adapter_id: &'static str,
    config: Value,
    input: SubagentInput,
    prompt: String,
    resume: Option<String>,
}

/// Steps 2–8: the subagent row loads, is assigned to this gateway, is running, still expects
/// this queued job's run, has a supported type and a prompt; a `metadata.session_id` is the
/// session to continue. Err = how the run ends.
fn check_subagent(
    session: &Session,
    me: &str,
    subagent_id: &str,
    payload_run_id: Option<&str>,
) -> Result<SubagentChecked, End> {
    // 2.
    let raw = match wire::load_subagent(
        session,
        subagent_id,
        "id,team_id,gateway_id,owner_agent_id,subagent_type,status,config,input,metadata",
    ) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(skip(
                json!({"message": "Subagent not found", "subagent_id": subagent_id}),
                "Subagent not found",
            ))
        }
        Err(e) => {
            return Err(skip(
                json!({"message": "Subagent not found", "subagent_id": subagent_id}),
                e.to_string(),
            ))
        }
    };
    // Steps 3–5 read only gateway_id, status and metadata.current_run_id; the other fields
    // are typed after them, so a mistyped field never fails a job these checks skip.
    let head = RowHead::read(&raw);
    // 3.
    if head.gateway_id.as_deref() != Some(me) {
        let m = "Subagent is assigned to a different gateway";
        return Err(skip(
            json!({"message": m, "subagent_id": subagent_id, "assigned_gateway_id": head.assigned, "gateway_id": me}),
            m,
        ));
    }
    let current_run_id = &head.current_run_id;
    // 4.
    let status = &head.status;
    if status != "running" {
        let m = format!("Subagent status changed before queued job execution (status={status})");
        return Err(skip(
            json!({"message": m, "subagent_id": subagent_id, "expected_run_id": payload_run_id, "current_run_id": current_run_id}),
            m,
        ));
    }
    // 5.
    if let (Some(p), Some(c)) = (payload_run_id, current_run_id) {
        if c.as_str() != Some(p) {
            let m = "Queued subagent job no longer matches the subagent current_run_id";
            return Err(skip(
                json!({"message": m, "subagent_id": subagent_id, "expected_run_id": p, "current_run_id": c}),
                m,
            ));
        }
    }
    // The row is this gateway's, running and expecting this run: a mistyped field fails it.
    let sub = SubagentRow::parse(&raw).map_err(|e| {
        let m = format!("{e}; fix the subagent's row and start a new run");
        fail(json!({"message": m, "subagent_id": subagent_id}), m.clone())
    })?;
    let assigned = sub.gateway_id;
    let metadata = sub.metadata;
    // 6.
    let subagent_type = sub.subagent_type;
    let Some((provider, adapter_id)) = adapter_for(&subagent_type) else {
        return Err(fail(
            json!({"message": "Unsupported subagent type", "subagent_type": subagent_type}),
            format!("Unsupported subagent type: {subagent_type}"),
        ));
    };
    // 7.
    let input = sub.input;
    let Some(prompt) = input.prompt.clone() else {
        return Err(fail_msg("Missing prompt in subagent input"));
    };
    // 8. Every adapter continues natively here: Claude `--resume`, Codex `exec resume`, Gemini
    // `--resume`, each in the subagent's own work directory (the reference refused Codex and
    // Gemini). A CLI too old for it fails the run at step 22, naming what it lacks.
    let resume = metadata.session_id.clone();
    Ok(SubagentChecked {
        team_id: sub.team_id,
        assigned,
        metadata,
        subagent_type,
        provider,
        adapter_id,
        config: sub.config,
        input,
        prompt,
        resume,
    })
}

/// Steps 14–16: the run id (the payload's, else the input's, else a fresh one), its sequence,
/// and the acceptance check: the run row exists, is running, and is this subagent's run of
/// this prompt. Ok = (run id, run sequence); Err = how the run ends.
fn check_accepted_run(
    session: &Session,
    subagent_id: &str,
    payload_run_id: Option<String>,
    input: &SubagentInput,
    prompt: &str,
) -> Result<(String, i64), End> {
    // 14.
    let run_id = payload_run_id
        .filter(|r| is_rfc4122_uuid(r))
        .or_else(|| input.run_id.clone().filter(|r| is_rfc4122_uuid(r)))
        .unwrap_or_else(new_uuid_v4);
    // 15.
    let Some(run_sequence) = input.run_sequence else {
        let m = "Accepted subagent run has no run sequence";
        return Err(skip(
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
            return Err(fail(
                json!({"message": "Failed to load accepted subagent run", "subagent_id": subagent_id, "run_id": run_id}),
                e.to_string(),
            ))
        }
    };
    let Some(run) = run else {
        return Err(skip(
            json!({"message": "Rejected unaccepted subagent job", "subagent_id": subagent_id, "run_id": run_id}),
            "Gateway job has no atomically accepted subagent run",
        ));
    };
    let run_status = s(&run, "status").unwrap_or("unknown");
    if run_status != "running" {
        return Err(skip(
            json!({"message": "Accepted subagent run is no longer active", "subagent_id": subagent_id, "run_id": run_id, "run_status": run_status}),
            format!("Accepted subagent run is {run_status}"),
        ));
    }
    let same = s(&run, "subagent_id") == Some(subagent_id)
        && run.get("run_sequence").and_then(Value::as_i64) == Some(run_sequence)
        && s(&run, "prompt") == Some(prompt);
    if !same {
        return Err(skip(
            json!({"message": "Gateway job does not match its accepted subagent run", "subagent_id": subagent_id, "run_id": run_id}),
            "Accepted subagent run identity mismatch",
        ));
    }
    Ok((run_id, run_sequence))
}

/// Steps 17–22: a pending cancel ends the run before anything starts; else the run becomes
/// this job's active run, is marked started, announced (`run_started`), and its plan built (an
/// elevated ask that was denied, or a field that cannot be passed, fails the started run).
/// Ok = the run's event writer and its plan; Err = how the run ends.
fn start<'a>(
    session: &'a Session,
    ctx: &JobContext,
    checked: &Checked,
) -> Result<(Emitter<'a>, SubPlan), End> {
    let prep = &checked.prep;
    // 17.
    let metadata = &checked.metadata;
    let stored = (metadata.cancel_run_id.as_deref() == Some(prep.run_id.as_str())).then(|| {
        metadata
            .cancel_reason
            .clone()
            .unwrap_or_else(|| CANCELLED.into())
    });
    let in_memory = ctx
        .subagent_runs
        .take_pending(&prep.run_id, &prep.subagent_id);
    if let Some(reason) = stored.or(in_memory) {
        return Err(cancel_before_start(session, prep, &reason));
    }
    // 18.
    if ctx
        .subagent_runs
        .attach_run(&prep.subagent_id, &ctx.job_id, &prep.run_id)
        .is_some()
    {
        ctx.cancel.cancel();
    }
    // 19.
    mark_started(session, prep, &metadata.all)?;
    // 20.
    let mut em = Emitter {
        session,
        target: prep.target(),
        next: None,
    };
    em.emit(
        "run_started",
        merged(
            Some(&json!({"runner": "gateway", "adapter_id": prep.adapter_id, "subagent_type": prep.subagent_type, "run_id": prep.run_id, "run_sequence": prep.run_sequence})),
            &execution_context(),
        ),
    );
    // 21.
    if prep.fc_requested && !prep.fc_effective {
        let reason = prep
            .fc_denied
            .clone()
            .unwrap_or_else(|| "Gateway elevated provider mode is unavailable.".into());
        return Err(fail_run(session, prep, &mut em, &reason));
    }
    // 22.
    let command = ctx.providers.command(prep.provider);
    match build_plan(prep, &checked.layers_on, &command, &checked.flags) {
        Ok(plan) => Ok((em, plan)),
        Err(e) => {
            let m = if e.trim().is_empty() {
                "Failed to build subagent run plan".to_string()
            } else {
                e
            };
            Err(fail_run(session, prep, &mut em, &m))
        }
    }
}

/// Step 19: the run, then the subagent, marked started with conditional updates (each only
/// while still in the state the checks saw). Err = how the run ends.
fn mark_started(session: &Session, prep: &Prepared, metadata: &Value) -> Result<(), End> {
    let now = crate::util::now_rfc3339();
    let start_meta = merged(
        Some(metadata),
        &json!({"current_run_id": prep.run_id, "current_run_sequence": prep.run_sequence}),
    );
    // Each update applies only while the row is still in the state the checks saw.
    let mark = |table: &str,
                id: &str,
                filters: &[(&str, &str)],
                body: Value,
                failed: &str,
                changed: &str| {
        match wire::update_where(session, table, id, filters, &body) {
            Err(e) => Err(fail(
                json!({"message": failed, "subagent_id": prep.subagent_id}),
                e.to_string(),
            )),
            Ok(false) => Err(skip(
                json!({"message": changed, "subagent_id": prep.subagent_id, "run_id": prep.run_id}),
                changed,
            )),
            Ok(true) => Ok(()),
        }
    };
    mark(
        "subagent_runs",
        &prep.run_id,
        &[
            ("subagent_id", &format!("eq.{}", prep.subagent_id)),
            ("status", "eq.running"),
        ],
        json!({"started_at": now, "metadata": start_meta}),
        "Failed to mark subagent run as started",
        "Accepted subagent run changed before gateway execution could start",
    )?;
    mark(
        "subagents",
        &prep.subagent_id,
        &[("status", "eq.running")],
        json!({"status": "running", "started_at": now, "metadata": start_meta}),
        "Failed to mark subagent as running",
        "Subagent status changed before gateway execution could start",
    )?;
    Ok(())
}

/// What steps 9–13 decide: the stored config, the CLI's flags, and machine control for this
/// run (asked, denied with why, effective, the layers that are on).
pub(super) struct Machine {
    config: Value,
    flags: Flags,
    fc_requested: bool,
    fc_denied: Option<String>,
    fc_effective: bool,
    layers_on: Layers,
}

/// Steps 9–13: the gateway's control row (a fresh heartbeat, model execution ready) and the
/// machine-control layers for this subagent. Err = how the run ends.
fn machine_control(
    session: &Session,
    me: &str,
    config: Value,
    provider: ProviderId,
    ctx: &JobContext,
    subagent_id: &str,
) -> Result<Machine, End> {
    // 9. (the install toggle is re-read from gateway.json by `ctx.control()` at step 13) 10.
    let control = match wire::load_control(session, me, &session.team_id) {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => return Err(fail_msg("Gateway control state unavailable")),
    };
    // 11.
    let fresh = s(&control, "last_seen_at")
        .and_then(parse_rfc3339_ms)
        .map(|t| t as i64)
        .is_some_and(|t| now_ms() - t <= HEARTBEAT_STALE_MS);
    if !fresh {
        return Err(fail_msg("Gateway is offline or heartbeat is stale"));
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
        return Err(fail_msg(&reason));
    }
    // 13.
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
    Ok(Machine {
        config,
        flags,
        fc_requested,
        fc_denied,
        fc_effective,
        layers_on,
    })
}

/// The run's plan, built by the provider's one argv builder (`providers::subagent_plan`): a
/// field that cannot be passed safely, or an elevated ask of a restricted run, fails the run
/// with a message that names the field or the layers that are off.
pub(super) fn build_plan(
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

/// §5.2: fail the started run before anything was spawned.
pub(super) fn fail_run(session: &Session, prep: &Prepared, em: &mut Emitter, msg: &str) -> End {
    let now = crate::util::now_rfc3339();
    let env = error_envelope(msg);
    let extra = json!({"full_control_requested": prep.fc_requested, "full_control_effective": prep.fc_effective,
                       "full_control_denied_reason": prep.fc_denied});
    let run_meta = merged(Some(&prep.base_metadata()), &extra);
    let sub_meta = merged(Some(&prep.subagent_metadata), &extra);
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
