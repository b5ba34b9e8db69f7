//! `subagent_run`: validate the subagent and its accepted run in the documented order, mark it
//! started, run the provider CLI in an owner-only work directory, finalize through
//! `finalize-gateway-subagent-run` and write the run events (subagents-shell.md §2–§6).

use super::*;

/// The validated inputs of a run.
pub(super) struct Prepared {
    pub(super) subagent: Value,
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

pub(super) fn run_sequence_of(input: &Value) -> Option<i64> {
    let v = input
        .get("run_sequence")
        .or_else(|| input.get("runSequence"))?;
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(x) => x.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

pub(super) fn prompt_of(input: &Value) -> Option<String> {
    ["prompt", "query", "task"]
        .iter()
        .find_map(|k| trimmed(s(input, k)))
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

pub(super) fn run_job(session: &Session, payload: &Value, ctx: &JobContext) -> Result<End, String> {
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
    let Machine {
        config,
        flags,
        fc_requested,
        fc_denied,
        fc_effective,
        layers_on,
    } = match machine_control(session, &me, &sub, provider, ctx, &subagent_id) {
        Ok(m) => m,
        Err(end) => return Ok(end),
    };
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
    if let Err(end) = mark_started(session, &prep, &metadata) {
        return Ok(end);
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
    sub: &Value,
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

pub(super) fn safe_segment(v: &str, label: &str) -> Result<String, String> {
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

pub(super) fn unhealthy_message(provider: ProviderId, detail: &str) -> String {
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

pub(super) fn execute_and_finalize(
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
    // Gemini keys its sessions by directory. Left-overs are swept after 14 days.
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
        let signals = Signals {
            not_logged_in,
            not_found: spawn_not_found,
            network: watch.reason(),
        };
        failure_reason(
            prep.provider,
            &result,
            signals,
            plan.timeout,
            &stdout,
            &stderr,
        )
    } else {
        (
            providers::diagnose::ErrorKind::BadOutput,
            norm.parse_error.clone().unwrap_or_default(),
        )
    };
    if !was_cancelled {
        if effective_fail {
            let summary = providers::plan::collapse(&error_message, 500);
            ctx.providers.record_run_in(
                prep.provider,
                if kind == providers::diagnose::ErrorKind::NotInstalled {
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
