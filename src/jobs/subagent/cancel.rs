//! `subagent_cancel`: record the cancel request and stop the running child's process group
//! with a grace, or leave a pending cancel the run honours before it starts anything
//! (subagents-shell.md §8); and a run's own cancel paths (cancelled before it started, stopped
//! by the daemon's shutdown).

use super::*;

pub(super) fn cancel_result(
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

pub(super) fn ok(result: Value) -> Outcome {
    outcome(FinalStatus::Completed, result, None)
}

/// Resolution table of §6.4 step 7: (cancel_result, cancel_state, message) or None = accepted.
pub(super) fn resolve(
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

pub(super) fn failed_cancel(message: &str) -> Outcome {
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
    // 1.
    let req = match CancelPayload::parse(payload) {
        Ok(req) => req,
        Err(m) => return failed_cancel(&m),
    };
    match cancel(&session, ctx, &req) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

/// A step of the cancel job; Err = the job's outcome, decided early.
type Step<T> = Result<T, Outcome>;

/// §6.4 steps 2–10, top-down: the subagent, its active run, the resolution table, the cancel
/// request recorded on both rows, then the running child signalled.
fn cancel(session: &Session, ctx: &JobContext, req: &CancelPayload) -> Step<Outcome> {
    let sub = load_for_cancel(session, req)?;
    let supported = adapter_for(&sub.subagent_type).is_some() && sub.gateway_id.is_some();
    let status = sub.status.to_ascii_lowercase();
    let active = if status == "running" {
        find_active(session, &req.subagent_id).map_err(|e| {
            log::warn!(target: "subagent", "could not resolve the active run of {}: {e}", req.subagent_id);
            failed_cancel("Failed to resolve active subagent run for cancellation")
        })?
    } else {
        None
    };
    let active_id = active.as_ref().map(|(id, _)| id.clone());
    if let Some((cr, cs, msg)) = resolve(
        supported,
        &status,
        active_id.as_deref(),
        req.run_id.as_deref(),
    ) {
        return Ok(ok(cancel_result(
            &req.subagent_id,
            None,
            active_id.as_deref(),
            &req.reason,
            (cr, cs, supported, &status, &msg),
        )));
    }
    let (run_id, run_meta) = active.unwrap_or_default();
    record_request(session, req, &sub, &run_id, &run_meta, supported)?;
    Ok(signal_run(session, ctx, req, &sub, &run_id))
}

/// Steps 2–4: the subagent row. Not found, or assigned to another gateway: nothing to
/// cancel here (the job completes, saying so).
fn load_for_cancel(session: &Session, req: &CancelPayload) -> Step<SubagentRow> {
    let sid = &req.subagent_id;
    let row = wire::load_subagent(
        session,
        sid,
        "id,team_id,gateway_id,subagent_type,status,metadata",
    )
    .map_err(|e| {
        log::warn!(target: "subagent", "could not load subagent {sid} for cancellation: {e}");
        failed_cancel("Failed to load subagent for cancellation")
    })?;
    let Some(row) = row else {
        let mut r = cancel_result(
            sid,
            req.run_id.as_deref(),
            None,
            &req.reason,
            (
                "no_active_run",
                "none",
                false,
                "not_found",
                "Subagent not found; no active run to cancel.",
            ),
        );
        r.as_object_mut().map(|o| o.remove("active_run_id"));
        return Err(ok(r));
    };
    // Only the row's own gateway and status decide a cancel: a mistyped field is read as absent.
    let sub = SubagentRow::parse_lenient(&row);
    if sub.gateway_id.as_deref() != Some(session.gateway_id.as_str()) {
        return Err(ok(cancel_result(
            sid,
            req.run_id.as_deref(),
            None,
            &req.reason,
            (
                "no_active_run",
                "none",
                false,
                "running",
                "Subagent is assigned to another gateway; skipping stale cancel request.",
            ),
        )));
    }
    Ok(sub)
}

/// The subagent's newest running run: (id, metadata).
fn find_active(session: &Session, sid: &str) -> Result<Option<(String, Value)>, String> {
    wire::newest_running_run(session, sid, "id,metadata")
        .map(|r| {
            r.and_then(|r| {
                Some((
                    s(&r, "id")?.to_string(),
                    r.get("metadata").cloned().unwrap_or(json!({})),
                ))
            })
        })
        .map_err(|e| e.to_string())
}

/// Steps 8–9: the cancel request written into the subagent's metadata (only while it is
/// still running: a lost race resolves again and ends the job), then into the run's.
fn record_request(
    session: &Session,
    req: &CancelPayload,
    sub: &SubagentRow,
    run_id: &str,
    run_meta: &Value,
    supported: bool,
) -> Step<()> {
    let sid = &req.subagent_id;
    let now = crate::util::now_rfc3339();
    let marks = json!({"cancel_run_id": run_id, "cancel_requested_at": now, "cancel_reason": req.reason,
        "cancel_state": "requested", "cancel_support": "gateway", "cancellation_scope": "gateway"});
    match wire::update_where(
        session,
        "subagents",
        sid,
        &[("status", "eq.running")],
        &json!({"metadata": merged(Some(&sub.metadata.all), &marks)}),
    ) {
        Err(e) => {
            log::warn!(target: "subagent", "could not persist cancel metadata of {sid}: {e}");
            return Err(failed_cancel(
                "Failed to persist subagent cancellation metadata",
            ));
        }
        Ok(false) => return Err(resolve_after_race(session, req, supported)),
        Ok(true) => {}
    }
    if let Err(e) = wire::update_where(
        session,
        "subagent_runs",
        run_id,
        &[("status", "eq.running")],
        &json!({"metadata": merged(Some(run_meta), &marks)}),
    ) {
        log::warn!(target: "subagent", "could not persist cancel metadata of run {run_id}: {e}");
        return Err(failed_cancel("Failed to persist run cancellation metadata"));
    }
    Ok(())
}

/// The subagent changed between the read and the write: re-read it and resolve again.
fn resolve_after_race(session: &Session, req: &CancelPayload, supported: bool) -> Outcome {
    let status = wire::load_subagent(session, &req.subagent_id, "status,metadata")
        .ok()
        .flatten()
        .map(|r| SubagentRow::parse_lenient(&r))
        .map_or_else(|| "unknown".into(), |r| r.status.to_ascii_lowercase());
    let active = if status == "running" {
        find_active(session, &req.subagent_id).ok().flatten()
    } else {
        None
    };
    let active_id = active.as_ref().map(|(id, _)| id.clone());
    let res = resolve(
        supported,
        &status,
        active_id.as_deref(),
        req.run_id.as_deref(),
    )
    .unwrap_or((
        "no_active_run",
        "none",
        "Subagent state changed while cancelling; try again.".into(),
    ));
    ok(cancel_result(
        &req.subagent_id,
        None,
        active_id.as_deref(),
        &req.reason,
        (res.0, res.1, supported, &status, &res.2),
    ))
}

/// Step 10: the request reaches the run in memory, `cancellation_requested` is written, and
/// a running child's process group is stopped with the grace.
fn signal_run(
    session: &Session,
    ctx: &JobContext,
    req: &CancelPayload,
    sub: &SubagentRow,
    run_id: &str,
) -> Outcome {
    let sid = &req.subagent_id;
    let reason = &req.reason;
    let target_job = ctx.subagent_runs.request_cancel(sid, run_id, reason);
    let is_active = target_job.is_some();
    log::info!(target: "subagent", "subagent cancel requested subagent={sid} run={run_id} active_process={is_active}");
    let t = EventTarget {
        run_id: run_id.to_string(),
        subagent_id: sid.clone(),
        team_id: sub
            .team_id
            .clone()
            .unwrap_or_else(|| session.team_id.clone()),
        gateway_id: sub.gateway_id.clone(),
    };
    // The request is recorded before the run is signalled, so the run's own
    // `cancellation_acknowledged` always follows it in the run's event sequence.
    emit_once(
        session,
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

/// §6.4 "pending cancel consumption": finalize as cancelled without spawning anything.
pub(super) fn cancel_before_start(session: &Session, prep: &Prepared, reason: &str) -> End {
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

/// §6.6 "cancel on shutdown": the daemon stopped now and killed the child; write the
/// cancelled state directly (no edge function) and complete the job as cancelled.
pub(super) fn cancel_on_shutdown(
    session: &Session,
    prep: &Prepared,
    em: &mut Emitter,
    reason: &str,
) -> End {
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
