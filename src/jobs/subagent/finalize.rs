//! A subagent run after its CLI (subagents-shell.md §5.1, §6): was it cancelled, how did it
//! end (with the provider's health recorded), the terminal state through
//! `finalize-gateway-subagent-run`, the run's closing events, and the job's result.

use super::*;
use crate::providers::diagnose::ErrorKind;

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

/// Finalizes a run whose CLI has run: cancelled (by a cancel job, or by the daemon stopping
/// now), failed or completed. Err = the finalize call itself failed.
pub(super) fn finalize_run(
    session: &Session,
    ctx: &JobContext,
    prep: &Prepared,
    em: &mut Emitter,
    plan: &SubPlan,
    cli: CliRun,
) -> Result<End, String> {
    let cancel = cancel_requested(session, ctx, prep);
    let killed = matches!(&cli.result, Ok(o) if o.stop != exec::Stop::None && !o.timed_out());
    if ctx.shutdown.is_immediate() && killed && cancel.is_none() {
        return Ok(cancel_on_shutdown(
            session,
            prep,
            em,
            "Gateway shutting down",
        ));
    }
    let cap = Captured::of(&cli.result);
    let mut verdict = judge(prep, plan, &cli, &cap, cancel);
    if verdict.cancel.is_none() {
        record_health(ctx, prep, &mut verdict);
    }
    let now = crate::util::now_rfc3339();
    let body = finalize_body(prep, plan, &cli, &cap, &verdict, &now);
    let fin = wire::finalize(session, &body)
        .map_err(|e| format!("Failed to finalize gateway subagent run: {e}"))?;
    if !fin.success {
        let m = "Failed to persist terminal subagent run state";
        return Ok(fail(
            json!({"message": m, "subagent_id": prep.subagent_id, "run_id": prep.run_id}),
            fin.error.unwrap_or_else(|| m.to_string()),
        ));
    }
    let output = fin
        .output
        .clone()
        .unwrap_or_else(|| verdict.norm.output.clone());
    emit_closing_events(em, plan, &verdict, cli.duration_ms);
    log::info!(target: "subagent", "subagent run finished subagent={} run={} status={} duration_ms={}", prep.subagent_id, prep.run_id, verdict.status, cli.duration_ms);
    Ok(job_end(prep, verdict, output))
}

/// §5.1 steps 1–2: the run was cancelled if its row now says so, or a cancel job asked for it
/// here. Some(reason) when cancelled.
fn cancel_requested(session: &Session, ctx: &JobContext, prep: &Prepared) -> Option<String> {
    let db_cancelled = match wire::load_run(session, &prep.run_id, "status") {
        Ok(Some(r)) => s(&r, "status") == Some("cancelled"),
        Ok(None) => false,
        Err(e) => {
            log::warn!(target: "subagent", "could not re-read run {} status: {e}", prep.run_id);
            false
        }
    };
    let mem_reason = ctx.subagent_runs.cancel_reason(&prep.subagent_id);
    (mem_reason.is_some() || db_cancelled).then(|| {
        mem_reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| CANCELLED.into())
    })
}

/// What the CLI left: success, its output and how it ended (all empty when it never ran).
struct Captured {
    ok: bool,
    stdout: String,
    stderr: String,
    exit_code: Option<i32>,
    timed_out: bool,
    stdout_truncated: bool,
    stderr_truncated: bool,
}

impl Captured {
    fn of(result: &Result<exec::Output, String>) -> Captured {
        match result {
            Ok(o) => Captured {
                ok: o.success(),
                stdout: o.stdout_lossy(),
                stderr: o.stderr_lossy(),
                exit_code: o.exit_code,
                timed_out: o.timed_out(),
                stdout_truncated: o.stdout_truncated,
                stderr_truncated: o.stderr_truncated,
            },
            Err(_) => Captured {
                ok: false,
                stdout: String::new(),
                stderr: String::new(),
                exit_code: None,
                timed_out: false,
                stdout_truncated: false,
                stderr_truncated: false,
            },
        }
    }
}

/// How the run ends.
struct Verdict {
    /// The normalised output (the raw text when the CLI failed).
    norm: Normalized,
    /// Some(reason) when the run was cancelled: that wins over a failure.
    cancel: Option<String>,
    /// The CLI failed, or its strict JSON did not parse, and the run was not cancelled.
    failed: bool,
    kind: ErrorKind,
    error_message: String,
    /// "cancelled", "failed" or "completed".
    status: &'static str,
}

impl Verdict {
    fn final_error(&self) -> Option<String> {
        match self.status {
            "cancelled" => self.cancel.clone(),
            "failed" => Some(self.error_message.clone()),
            _ => None,
        }
    }
}

/// The output normalised, and why the run failed if it did (the CLI's failure classified, or
/// the parse error of a strict JSON run).
fn judge(
    prep: &Prepared,
    plan: &SubPlan,
    cli: &CliRun,
    cap: &Captured,
    cancel: Option<String>,
) -> Verdict {
    let norm = if cap.ok {
        normalize(prep.provider, plan.format, &cap.stdout)
    } else {
        Normalized {
            output: envelope(json!(cap.stdout.trim()), "text"),
            ..Default::default()
        }
    };
    let parse_strict = plan.format == Format::Json;
    let should_fail = !cap.ok || (parse_strict && norm.parse_error.is_some());
    let failed = should_fail && cancel.is_none();
    let (kind, error_message) = if !cap.ok {
        failure_reason(
            prep.provider,
            &cli.result,
            cli.signals(),
            plan.timeout,
            &cap.stdout,
            &cap.stderr,
        )
    } else {
        (
            ErrorKind::BadOutput,
            norm.parse_error.clone().unwrap_or_default(),
        )
    };
    let status = if cancel.is_some() {
        "cancelled"
    } else if failed {
        "failed"
    } else {
        "completed"
    };
    Verdict {
        norm,
        cancel,
        failed,
        kind,
        error_message,
        status,
    }
}

/// The provider's health after a run that was not cancelled: healthy, or unhealthy (not
/// installed: unavailable) with the failure's summary, which becomes the run's error.
fn record_health(ctx: &JobContext, prep: &Prepared, verdict: &mut Verdict) {
    if verdict.failed {
        let summary = providers::plan::collapse(&verdict.error_message, 500);
        ctx.providers.record_run_in(
            prep.provider,
            if verdict.kind == ErrorKind::NotInstalled {
                Status::Unavailable
            } else {
                Status::Unhealthy
            },
            Some(&summary),
            Some(&ctx.job_id),
            "subagent_run",
            Some(&prep.run_id),
        );
        verdict.error_message = unhealthy_message(prep.provider, &summary);
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

/// The body of `finalize-gateway-subagent-run` (§5.1): the terminal status, error and output,
/// and the gateway's metadata over what the normalisation found.
fn finalize_body(
    prep: &Prepared,
    plan: &SubPlan,
    cli: &CliRun,
    cap: &Captured,
    verdict: &Verdict,
    now: &str,
) -> Value {
    let was_cancelled = verdict.cancel.is_some();
    let mut patch = verdict.norm.metadata.clone();
    let gw = merged(
        Some(&json!({
            "schema_version": 1, "runner": "gateway", "adapter_id": prep.adapter_id,
            "subagent_type": prep.subagent_type, "run_id": prep.run_id,
            "run_sequence": prep.run_sequence, "last_run_at": now,
            "command": providers::redact::command_line(&plan.command.to_string_lossy(), &plan.args),
            "exit_code": cap.exit_code, "duration_ms": cli.duration_ms, "timed_out": cap.timed_out,
            "stdout_truncated": cap.stdout_truncated, "stderr_truncated": cap.stderr_truncated,
            "output_format": plan.format.as_str(), "parse_error": verdict.norm.parse_error,
            "retry_count": 0, "retry_reasons": [], "retry_max_attempts": 1,
            "cancel_run_id": null, "cancel_requested_at": null,
            "cancel_reason": verdict.cancel,
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
    // The session a completed run started or continued: the next run of this subagent
    // resumes it (Claude's comes from its `result` through the normaliser).
    if verdict.status == "completed" {
        if let Some(id) = plan.session_id(prep.provider, &cap.stdout, &cap.stderr) {
            patch.insert("session_id".into(), json!(id));
        }
    }
    let final_error = verdict.final_error();
    let mut body = json!({
        "subagent_id": prep.subagent_id, "run_id": prep.run_id, "final_status": verdict.status,
        "failure_output": final_error.as_deref().map(error_envelope),
        "final_error": final_error, "completed_at": now, "stderr": cap.stderr,
        "metadata_patch": Value::Object(patch),
    });
    if verdict.status == "completed" {
        body["output"] = verdict.norm.output.clone();
    }
    body
}

/// §6.3: a stream-json run's own events, then how the run ended.
fn emit_closing_events(em: &mut Emitter, plan: &SubPlan, verdict: &Verdict, duration_ms: u64) {
    if plan.format == Format::StreamJson {
        for (kind, payload) in &verdict.norm.events {
            em.emit(kind, payload.clone());
        }
    }
    let parse_error = &verdict.norm.parse_error;
    match (&verdict.cancel, verdict.status) {
        (Some(reason), _) => {
            em.emit(
                "cancellation_acknowledged",
                json!({"reason": reason, "source": "gateway", "cancellation_scope": "gateway"}),
            );
            em.emit(
                "run_cancelled",
                json!({"reason": reason, "source": "gateway", "cancellation_scope": "gateway", "duration_ms": duration_ms}),
            );
        }
        (None, "failed") => em.emit(
            "run_failed",
            json!({"reason": verdict.error_message, "duration_ms": duration_ms, "parse_error": parse_error, "error_kind": verdict.kind.as_str()}),
        ),
        (None, _) => em.emit(
            "run_completed",
            json!({"duration_ms": duration_ms, "parse_error": parse_error, "retry_count": 0}),
        ),
    }
}

/// The job's outcome: the finalized output, or the failure with its kind. The edge function
/// already wrote the terminal state, so §5.4 has nothing to do.
fn job_end(prep: &Prepared, verdict: Verdict, output: Value) -> End {
    let failed = verdict.failed;
    let mut result = json!({
        "subagent_id": prep.subagent_id, "status": verdict.status,
        "output": if failed { Value::Null } else { output },
        "error": verdict.final_error(),
    });
    if failed {
        result["error_kind"] = json!(verdict.kind.as_str());
        End {
            outcome: outcome(FinalStatus::Failed, result, Some(verdict.error_message)),
            fail_subagent: false,
        }
    } else {
        End {
            outcome: outcome(FinalStatus::Completed, result, None),
            fail_subagent: false,
        }
    }
}
