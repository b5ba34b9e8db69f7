//! `model_run` jobs (PROTOCOL.md "model_run", providers.md §5). Owner: Providers (issue 5).
//!
//! Validate the payload, pick the provider (explicit, else inferred from the model), build the
//! CLI's argv, run it in an owner-only work directory `<work root>/model-runs/<job id>` with
//! the job's timeout, parse its output, and answer with the normalised result. Health is
//! updated after the run (success → healthy, process or parse failure → unhealthy).

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{FinalStatus, JobContext, Outcome};
use crate::exec::{self, PrivateDir};
use crate::providers::health::Status;
use crate::providers::plan::{collapse, error_summary, OutputFormat, RunRequest};
use crate::providers::run::{self, Failure, RunHooks};
use crate::providers::{self, codex, diagnose, infer_provider, redact, ProviderId};
use crate::util::truncate_chars;

pub const DEFAULT_TIMEOUT_MS: f64 = 110_000.0;
/// Longest timeout honoured (the reference has no cap; a day keeps Duration arithmetic sane).
const MAX_TIMEOUT_MS: f64 = 86_400_000.0;
/// stdout/stderr in results and debug are cut to this many characters.
const RESULT_TEXT_LIMIT: usize = 200_000;
// The head of stdout kept in memory holds every character a result quotes.
const _: () = assert!(RESULT_TEXT_LIMIT * 4 <= run::STDOUT_HEAP_BYTES);

fn failed(result: Value, error: impl Into<String>, debug: Option<Value>) -> Outcome {
    Outcome {
        status: FinalStatus::Failed,
        result: Some(result),
        error: Some(error.into()),
        debug,
    }
}

fn invalid(message: &str, short: &str) -> Outcome {
    failed(json!({ "message": message }), short, None)
}

fn unexpected(e: impl Into<String>) -> Outcome {
    failed(
        json!({"message": "Gateway job processing failed", "job_type": "model_run"}),
        e,
        None,
    )
}

/// The validated payload and the chosen provider.
pub fn parse_payload(p: &Value) -> Result<(ProviderId, RunRequest), Outcome> {
    let s = |k: &str| p.get(k).and_then(Value::as_str);
    let prompt = s("prompt").filter(|x| !x.is_empty());
    let model = s("model").filter(|x| !x.is_empty());
    let (Some(prompt), Some(model)) = (prompt, model) else {
        return Err(invalid(
            "Missing prompt or model for gateway model run",
            "Missing prompt or model",
        ));
    };
    let format = if s("output_format") == Some("text") {
        OutputFormat::Text
    } else {
        OutputFormat::Json
    };
    let schema = p
        .get("json_schema")
        .filter(|v| v.is_object() || v.is_array())
        .cloned();
    if format == OutputFormat::Json && schema.is_none() {
        return Err(invalid(
            "Missing json_schema for gateway model run",
            "Missing json_schema",
        ));
    }
    let timeout_ms = p
        .get("timeout_ms")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && *t > 0.0)
        .unwrap_or(DEFAULT_TIMEOUT_MS)
        .min(MAX_TIMEOUT_MS);
    if timeout_ms < 1.0 {
        let m = format!("Invalid timeout_ms {timeout_ms}: a timeout is at least 1 millisecond. Fix timeout_ms and submit the job again.");
        return Err(invalid(&m, &m));
    }
    let provider = s("provider")
        .and_then(ProviderId::parse)
        .unwrap_or_else(|| infer_provider(model));
    Ok((
        provider,
        RunRequest {
            prompt: prompt.to_string(),
            model: model.to_string(),
            format,
            schema: if format == OutputFormat::Json {
                schema
            } else {
                None
            },
            append_system_prompt: s("append_system_prompt").map(String::from),
            reasoning_effort: s("reasoning_effort")
                .filter(|e| matches!(*e, "low" | "medium" | "high"))
                .map(String::from),
            timeout: Duration::from_secs_f64(timeout_ms / 1000.0),
        },
    ))
}

/// A job id usable as one path segment.
fn safe_job_dir(id: &str) -> Option<&str> {
    let t = id.trim();
    (!t.is_empty()
        && t != "."
        && t != ".."
        && !t.contains('/')
        && !t.contains('\\')
        && !t.contains('\0'))
    .then_some(t)
}

/// What went wrong, for people and for `result.error_kind`.
pub use crate::providers::diagnose::ErrorKind as Kind;

fn cut(s: &str) -> (String, bool) {
    let t = truncate_chars(s, RESULT_TEXT_LIMIT, "");
    let c = t.len() != s.len();
    (t, c)
}

/// Runs one model_run job.
pub fn handle(payload: &Value, ctx: &JobContext) -> Outcome {
    let (id, mut req) = match parse_payload(payload) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let prompt_chars = req.prompt.chars().count();
    if id == ProviderId::Codex {
        codex::prepare(&mut req);
    }
    let command = ctx.providers.command(id);
    let flags = ctx.providers.flags(id);
    // A value the CLI cannot be given safely is the job's own input error: it fails this job,
    // names the field, and leaves the provider's health alone.
    let plan = match providers::build_plan(id, &req, &command, &flags) {
        Ok(p) => p,
        Err(e) => {
            log::warn!(target: "model_run", "refused job_id={} provider={}: {e}", ctx.job_id, id.as_str());
            return invalid(&e.0, &e.0);
        }
    };
    let Some(seg) = safe_job_dir(&ctx.job_id) else {
        return unexpected(format!(
            "job id {:?} cannot be used as a directory name",
            ctx.job_id
        ));
    };
    let work_root = ctx.providers.work_root();
    let root = work_root.join("model-runs");
    if let Err(e) =
        exec::ensure_private_dir(&work_root).and_then(|_| exec::ensure_private_dir(&root))
    {
        return unexpected(format!(
            "the model-run work directory is not safe to use: {e}"
        ));
    }
    let dir_path = root.join(seg);
    if dir_path.exists() {
        // Left over from a run that crashed: it is ours and stale.
        let _ = std::fs::remove_dir_all(&dir_path);
    }
    let dir = match PrivateDir::create_exact(&dir_path) {
        Ok(d) => d,
        Err(e) => {
            return unexpected(format!(
                "could not create the work directory {}: {e}; check that the config directory is writable",
                dir_path.display()
            ))
        }
    };
    log::info!(target: "model_run", "starting job_id={} provider={} output_mode={} timeout_ms={}",
        ctx.job_id, id.as_str(), plan.output_mode.as_str(), plan.timeout.as_millis());

    let command_text = plan.command.to_string_lossy().into_owned();
    let safe_command_line = redact::command_line(&command_text, &plan.args);
    let mut debug = Map::new();
    debug.insert("provider_id".into(), id.as_str().into());
    debug.insert(
        "command".into(),
        redact::text(&command_text, redact::COMMAND_LIMIT).into(),
    );
    debug.insert("args".into(), json!(redact::args(&plan.args, false)));
    debug.insert("command_line".into(), safe_command_line.clone().into());
    debug.insert(
        "work_dir".into(),
        truncate_chars(&dir_path.to_string_lossy(), redact::PATH_LIMIT, "").into(),
    );
    debug.insert("prompt_chars".into(), json!(prompt_chars));
    debug.insert("json_schema_chars".into(), json!(plan.json_schema_chars));
    debug.insert("timeout_ms".into(), json!(plan.timeout.as_millis() as u64));
    debug.insert("output_mode".into(), plan.output_mode.as_str().into());
    debug.insert(
        "output_path".into(),
        plan.output_path
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null),
    );
    debug.insert(
        "files".into(),
        json!(plan
            .files
            .iter()
            .take(redact::ARG_COUNT)
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>()),
    );

    let hooks = RunHooks {
        cancel: Some(ctx.cancel.clone()),
        register: Some((ctx.children.clone(), ctx.job_id.clone())),
        shared_root: Some(work_root.clone()),
    };
    let timeout = plan.timeout;
    let report = run::run_plan(id, plan, dir.path(), &hooks);
    drop(dir);
    run::prune_empty_parents(&dir_path, &root);

    // The in-memory head of stdout (a large capture's rest is in a spill file): results and
    // debug quote at most RESULT_TEXT_LIMIT characters of it.
    let (stdout, stderr) = report
        .output
        .as_ref()
        .map(|o| {
            (
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            )
        })
        .unwrap_or_default();
    // Failed runs return their output to the team; tokens and keys a CLI echoes are masked
    // there as in debug (the reference sent them raw, providers.md §9.14).
    let (stdout_cut, stdout_cut_flag) = cut(&stdout);
    let (stderr_cut, stderr_cut_flag) = cut(&stderr);
    let summary = error_summary(&stderr_cut);
    if let Some(o) = &report.output {
        debug.insert(
            "stdout".into(),
            redact::text(&stdout_cut, redact::TEXT_LIMIT).into(),
        );
        debug.insert("stdout_truncated".into(), stdout_cut_flag.into());
        let stdout_chars = o.stdout_chars().unwrap_or_else(|_| stdout.chars().count());
        debug.insert("stdout_bytes".into(), json!(stdout_chars));
        debug.insert(
            "stderr".into(),
            redact::text(&stderr_cut, redact::TEXT_LIMIT).into(),
        );
        debug.insert("stderr_truncated".into(), stderr_cut_flag.into());
        debug.insert("stderr_bytes".into(), json!(stderr.chars().count()));
        debug.insert(
            "exit_code".into(),
            o.exit_code.map(Value::from).unwrap_or(Value::Null),
        );
        debug.insert("duration_ms".into(), json!(o.duration.as_millis() as u64));
        debug.insert("timed_out".into(), o.timed_out().into());
        if let Some(s) = &summary {
            debug.insert("error_summary".into(), redact::summary(s, 0));
        }
    }
    let debug = Some(Value::Object(debug));
    let exit_code = report
        .output
        .as_ref()
        .and_then(|o| o.exit_code)
        .map(Value::from)
        .unwrap_or(Value::Null);

    let unhealthy_message = |details: &str| {
        format!(
            "Gateway provider {} is unhealthy. Try another provider or run \"panorama-gateway doctor\". Details: {}",
            id.short(),
            // Details quote the CLI's own output (its last stderr line, its error object): the
            // message goes to the job row the whole team sees.
            collapse(&crate::redact::redact(details), 500)
        )
    };

    // The CLI cannot run at all (not logged in) or cannot reach its API: say which, and what
    // to run.
    let not_ready = |kind: Kind, m: String, debug: Option<Value>| {
        let details = match diagnose::hint(id, kind) {
            Some(h) => format!("{m}. {h}"),
            None => m,
        };
        ctx.providers
            .record_run(id, Status::Unhealthy, Some(&details), Some(&ctx.job_id));
        let message = unhealthy_message(&details);
        log::warn!(target: "model_run", "failed job_id={} provider={} kind={} error={}", ctx.job_id, id.as_str(), kind.as_str(), collapse(&details, 200));
        failed(
            json!({
                "message": message,
                "exit_code": exit_code,
                "stderr": redact::text(&stderr_cut, RESULT_TEXT_LIMIT),
                "stdout": redact::text(&stdout_cut, RESULT_TEXT_LIMIT),
                "command": safe_command_line,
                "error_summary": Value::Null,
                "error_kind": kind.as_str(),
            }),
            message.clone(),
            debug,
        )
    };

    match report.result {
        Ok(parsed) => {
            ctx.providers
                .record_run(id, Status::Healthy, None, Some(&ctx.job_id));
            let o = report.output.as_ref();
            log::info!(target: "model_run", "completed job_id={} provider={} duration_ms={}",
                ctx.job_id, id.as_str(), o.map(|o| o.duration.as_millis()).unwrap_or(0));
            Outcome {
                status: FinalStatus::Completed,
                result: Some(json!({
                    "output": parsed.output,
                    "raw": parsed.raw,
                    "usage": parsed.usage,
                    "model": parsed.model,
                    "duration_ms": o.map(|o| o.duration.as_millis() as u64).unwrap_or(0),
                    "exit_code": exit_code,
                    "stdout_truncated": o.is_some_and(|o| o.stdout_truncated),
                    "stderr_truncated": o.is_some_and(|o| o.stderr_truncated),
                    "command": safe_command_line,
                })),
                error: None,
                debug,
            }
        }
        Err(Failure::StdoutLimit) | Err(Failure::FileLimit) => {
            let (boundary, what) = match report.result {
                Err(Failure::FileLimit) => ("output_file", "output_file"),
                _ => ("stdout", "stdout"),
            };
            let message = format!(
                "Gateway model {what} exceeded the {}-byte output limit",
                exec::CAPTURE_LIMIT
            );
            log::warn!(target: "model_run", "output limit job_id={} provider={} boundary={boundary}", ctx.job_id, id.as_str());
            failed(
                json!({
                    "message": message,
                    "error_code": "GATEWAY_MODEL_OUTPUT_LIMIT",
                    "boundary": boundary,
                    "output_limit_bytes": exec::CAPTURE_LIMIT,
                    "error_kind": Kind::OutputLimit.as_str(),
                }),
                message.clone(),
                debug,
            )
        }
        Err(Failure::Setup(e)) => unexpected(e),
        Err(Failure::Parse(m)) => {
            ctx.providers
                .record_run(id, Status::Unhealthy, Some(&m), Some(&ctx.job_id));
            let message = unhealthy_message(&m);
            log::warn!(target: "model_run", "bad output job_id={} provider={} error={}", ctx.job_id, id.as_str(), collapse(&m, 200));
            failed(
                json!({
                    "message": message,
                    "stdout": redact::text(&stdout_cut, RESULT_TEXT_LIMIT),
                    "stderr": redact::text(&stderr_cut, RESULT_TEXT_LIMIT),
                    "command": safe_command_line,
                    "error_kind": Kind::BadOutput.as_str(),
                }),
                message.clone(),
                debug,
            )
        }
        Err(Failure::Spawn { too_long: true, .. }) => {
            // The prompt goes on stdin, but a system prompt or schema is an argument; Linux
            // caps one argument at 128 KiB. That is the payload's doing, not the provider's:
            // health is left alone.
            let message = format!(
                "The system prompt or JSON schema of this job ({prompt_chars} prompt characters) is too large to pass to the {} CLI as a command-line argument (Linux limits one argument to 128 KiB); shorten it",
                id.short()
            );
            log::warn!(target: "model_run", "prompt too large job_id={} provider={} prompt_chars={prompt_chars}", ctx.job_id, id.as_str());
            failed(
                json!({
                    "message": message,
                    "exit_code": Value::Null,
                    "command": safe_command_line,
                    "error_kind": Kind::PromptTooLarge.as_str(),
                }),
                message.clone(),
                debug,
            )
        }
        Err(Failure::Spawn {
            message, not_found, ..
        }) => {
            let (kind, details) = if not_found {
                (
                    Kind::NotInstalled,
                    format!(
                        "{} CLI is not installed or not on PATH ({message}); {}",
                        id.short(),
                        id.install_hint()
                    ),
                )
            } else {
                (Kind::ExitStatus, message)
            };
            let status = if not_found {
                Status::Unavailable
            } else {
                Status::Unhealthy
            };
            ctx.providers
                .record_run(id, status, Some(&details), Some(&ctx.job_id));
            let message = unhealthy_message(&details);
            log::warn!(target: "model_run", "spawn failed job_id={} provider={} error={}", ctx.job_id, id.as_str(), collapse(&details, 200));
            failed(
                json!({
                    "message": message,
                    "exit_code": Value::Null,
                    "stderr": "",
                    "stdout": "",
                    "command": safe_command_line,
                    "error_summary": Value::Null,
                    "error_kind": kind.as_str(),
                }),
                message.clone(),
                debug,
            )
        }
        Err(Failure::NotLoggedIn(m)) => not_ready(Kind::Auth, m, debug),
        Err(Failure::Network(m)) => not_ready(Kind::Network, m, debug),
        Err(Failure::Process) => {
            let o = report.output.as_ref();
            let stop = o.map(|o| o.stop).unwrap_or(exec::Stop::None);
            if matches!(stop, exec::Stop::Cancelled | exec::Stop::Killed) {
                // Cancelled by the job's owner or by an immediate shutdown: not the CLI's fault.
                log::info!(target: "model_run", "cancelled job_id={} provider={}", ctx.job_id, id.as_str());
                return Outcome {
                    status: FinalStatus::Cancelled,
                    result: Some(json!({
                        "message": "Gateway model run was cancelled before it finished",
                        "cancelled": true,
                        "error_kind": Kind::Cancelled.as_str(),
                        "command": safe_command_line,
                    })),
                    error: Some("Gateway model run was cancelled".into()),
                    debug,
                };
            }
            let (kind, details) = if stop == exec::Stop::TimedOut {
                (
                    Kind::Timeout,
                    format!(
                        "{} did not finish within {} ms (timeout_ms) and was stopped; raise timeout_ms, or check that the CLI runs without waiting for input ({})",
                        id.short(),
                        timeout.as_millis(),
                        diagnose::login_hint(id)
                    ),
                )
            } else {
                let (exit, signal) = (o.and_then(|o| o.exit_code), o.and_then(|o| o.signal));
                diagnose::explain_exit(id, exit, signal, &stdout_cut, &stderr_cut, summary.as_ref())
            };
            ctx.providers
                .record_run(id, Status::Unhealthy, Some(&details), Some(&ctx.job_id));
            let message = unhealthy_message(&details);
            log::warn!(target: "model_run", "failed job_id={} provider={} kind={} error={}", ctx.job_id, id.as_str(), kind.as_str(), collapse(&details, 200));
            failed(
                json!({
                    "message": message,
                    "exit_code": exit_code,
                    "stderr": redact::text(&stderr_cut, RESULT_TEXT_LIMIT),
                    "stdout": redact::text(&stdout_cut, RESULT_TEXT_LIMIT),
                    "command": safe_command_line,
                    "error_summary": summary.map(|mut v| {
                        crate::redact::redact_json(&mut v);
                        v
                    }).unwrap_or(Value::Null),
                    "error_kind": kind.as_str(),
                }),
                message.clone(),
                debug,
            )
        }
    }
}

// Tests: src/providers/tests.rs (with the fake CLIs).
