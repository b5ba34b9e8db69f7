//! `model_run` jobs (PROTOCOL.md "model_run", providers.md §5). Owner: Providers (issue 5).
//!
//! Validate the payload, pick the provider (explicit, else inferred from the model), build the
//! CLI's argv, run it in an owner-only work directory `<work root>/model-runs/<job id>` with
//! the job's timeout, parse its output, and answer with the normalised result. Health is
//! updated after the run (success → healthy, process or parse failure → unhealthy).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{FinalStatus, JobContext, Outcome};
use crate::exec::{self, PrivateDir};
use crate::providers::health::Status;
use crate::providers::normalize::error_summary;
use crate::providers::plan::{collapse, OutputFormat, Parsed, Plan, RunRequest};
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

/// A `model_run` payload, parsed where the handler starts (providers.md §5.1): coerced as the
/// reference does, and refused with its exact wire texts.
#[derive(Debug)]
pub struct ModelRunPayload {
    /// `provider` when it names one exactly, else inferred from `model` (§5.2).
    pub provider: ProviderId,
    pub request: RunRequest,
}

impl ModelRunPayload {
    /// The validated payload and the chosen provider; Err = the job's failed outcome.
    pub fn parse(p: &Value) -> Result<ModelRunPayload, Outcome> {
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
        Ok(ModelRunPayload {
            provider,
            request: RunRequest {
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
        })
    }
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

/// Runs one model_run job: validate → pick the provider (its argv) → run the plan in a fresh
/// work directory → shape the result.
pub fn handle(payload: &Value, ctx: &JobContext) -> Outcome {
    let job = match ModelRunPayload::parse(payload) {
        Ok(j) => j,
        Err(o) => return o,
    };
    let prompt_chars = job.request.prompt.chars().count();
    let (id, plan) = match pick_provider(job, ctx) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let work = match WorkDir::create(ctx) {
        Ok(w) => w,
        Err(o) => return o,
    };
    log::info!(target: "model_run", "starting job_id={} provider={} output_mode={} timeout_ms={}",
        ctx.job_id, id.as_str(), plan.output_mode.as_str(), plan.timeout.as_millis());
    let (finished, result) = run_in(id, plan, work, prompt_chars, ctx);
    finished.shape(result)
}

/// The provider the payload names (or its model implies) and that CLI's plan. A value the CLI
/// cannot be given safely is the job's own input error: it fails this job, names the field,
/// and leaves the provider's health alone.
fn pick_provider(job: ModelRunPayload, ctx: &JobContext) -> Result<(ProviderId, Plan), Outcome> {
    let ModelRunPayload {
        provider: id,
        request: mut req,
    } = job;
    if id == ProviderId::Codex {
        codex::prepare(&mut req);
    }
    let command = ctx.providers.command(id);
    let flags = ctx.providers.flags(id);
    match providers::build_plan(id, &req, &command, &flags) {
        Ok(p) => Ok((id, p)),
        Err(e) => {
            log::warn!(target: "model_run", "refused job_id={} provider={}: {e}", ctx.job_id, id.as_str());
            Err(invalid(&e.0, &e.0))
        }
    }
}

/// The job's owner-only work directory `<work root>/model-runs/<job id>`.
struct WorkDir {
    dir: PrivateDir,
    path: PathBuf,
    /// `<work root>/model-runs`: empty parents are pruned up to here.
    root: PathBuf,
    work_root: PathBuf,
}

impl WorkDir {
    fn create(ctx: &JobContext) -> Result<WorkDir, Outcome> {
        let Some(seg) = safe_job_dir(&ctx.job_id) else {
            return Err(unexpected(format!(
                "job id {:?} cannot be used as a directory name",
                ctx.job_id
            )));
        };
        let work_root = ctx.providers.work_root();
        let root = work_root.join("model-runs");
        if let Err(e) =
            exec::ensure_private_dir(&work_root).and_then(|_| exec::ensure_private_dir(&root))
        {
            return Err(unexpected(format!(
                "the model-run work directory is not safe to use: {e}"
            )));
        }
        let path = root.join(seg);
        if path.exists() {
            // Left over from a run that crashed: it is ours and stale.
            let _ = std::fs::remove_dir_all(&path);
        }
        match PrivateDir::create_exact(&path) {
            Ok(dir) => Ok(WorkDir {
                dir,
                path,
                root,
                work_root,
            }),
            Err(e) => Err(unexpected(format!(
                "could not create the work directory {}: {e}; check that the config directory is writable",
                path.display()
            ))),
        }
    }
}

/// The debug record written before the run (providers.md §5.12): what will run, redacted.
fn plan_debug(
    id: ProviderId,
    plan: &Plan,
    work_dir: &Path,
    prompt_chars: usize,
) -> Map<String, Value> {
    let command_text = plan.command.to_string_lossy();
    let mut debug = Map::new();
    debug.insert("provider_id".into(), id.as_str().into());
    debug.insert(
        "command".into(),
        redact::text(&command_text, redact::COMMAND_LIMIT).into(),
    );
    debug.insert("args".into(), json!(redact::args(&plan.args, false)));
    debug.insert(
        "command_line".into(),
        redact::command_line(&command_text, &plan.args).into(),
    );
    debug.insert(
        "work_dir".into(),
        truncate_chars(&work_dir.to_string_lossy(), redact::PATH_LIMIT, "").into(),
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
    debug
}

/// Runs the plan in `work` (removed afterwards) and gathers what the result is shaped from.
fn run_in<'a>(
    id: ProviderId,
    plan: Plan,
    work: WorkDir,
    prompt_chars: usize,
    ctx: &'a JobContext,
) -> (Finished<'a>, Result<Parsed, Failure>) {
    let command_line = redact::command_line(&plan.command.to_string_lossy(), &plan.args);
    let mut debug = plan_debug(id, &plan, &work.path, prompt_chars);
    let hooks = RunHooks {
        cancel: Some(ctx.cancel.clone()),
        register: Some((ctx.children.clone(), ctx.job_id.clone())),
        shared_root: Some(work.work_root.clone()),
    };
    let timeout = plan.timeout;
    let report = run::run_plan(id, plan, work.dir.path(), &hooks);
    drop(work.dir);
    run::prune_empty_parents(&work.path, &work.root);

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
    let exit_code = report
        .output
        .as_ref()
        .and_then(|o| o.exit_code)
        .map(Value::from)
        .unwrap_or(Value::Null);
    let finished = Finished {
        id,
        ctx,
        output: report.output,
        stdout_cut,
        stderr_cut,
        summary,
        exit_code,
        command_line,
        debug: Some(Value::Object(debug)),
        prompt_chars,
        timeout,
    };
    (finished, report.result)
}

/// A finished run, before its result is shaped.
struct Finished<'a> {
    id: ProviderId,
    ctx: &'a JobContext,
    output: Option<exec::Output>,
    stdout_cut: String,
    stderr_cut: String,
    summary: Option<Value>,
    exit_code: Value,
    /// The redacted command line results quote.
    command_line: String,
    debug: Option<Value>,
    prompt_chars: usize,
    timeout: Duration,
}

impl Finished<'_> {
    /// The job's outcome for how the run ended; health is recorded here.
    fn shape(self, result: Result<Parsed, Failure>) -> Outcome {
        match result {
            Ok(parsed) => self.completed(parsed),
            Err(Failure::StdoutLimit) => self.output_limit("stdout"),
            Err(Failure::FileLimit) => self.output_limit("output_file"),
            Err(Failure::Setup(e)) => unexpected(e),
            Err(Failure::Parse(m)) => self.bad_output(m),
            Err(Failure::Spawn { too_long: true, .. }) => self.too_long(),
            Err(Failure::Spawn {
                message, not_found, ..
            }) => self.not_started(message, not_found),
            Err(Failure::NotLoggedIn(m)) => self.not_ready(Kind::Auth, m),
            Err(Failure::Network(m)) => self.not_ready(Kind::Network, m),
            Err(Failure::Process) => self.process_failed(),
        }
    }

    fn record(&self, status: Status, details: Option<&str>) {
        self.ctx
            .providers
            .record_run(self.id, status, details, Some(&self.ctx.job_id));
    }

    fn unhealthy_message(&self, details: &str) -> String {
        format!(
            "Gateway provider {} is unhealthy. Try another provider or run \"panorama-gateway doctor\". Details: {}",
            self.id.short(),
            // Details quote the CLI's own output (its last stderr line, its error object): the
            // message goes to the job row the whole team sees.
            collapse(&crate::redact::redact(details), 500)
        )
    }

    fn completed(self, parsed: Parsed) -> Outcome {
        self.record(Status::Healthy, None);
        let o = self.output.as_ref();
        log::info!(target: "model_run", "completed job_id={} provider={} duration_ms={}",
            self.ctx.job_id, self.id.as_str(), o.map(|o| o.duration.as_millis()).unwrap_or(0));
        Outcome {
            status: FinalStatus::Completed,
            result: Some(json!({
                "output": parsed.output,
                "raw": parsed.raw,
                "usage": parsed.usage,
                "model": parsed.model,
                "duration_ms": o.map(|o| o.duration.as_millis() as u64).unwrap_or(0),
                "exit_code": self.exit_code,
                "stdout_truncated": o.is_some_and(|o| o.stdout_truncated),
                "stderr_truncated": o.is_some_and(|o| o.stderr_truncated),
                "command": self.command_line,
            })),
            error: None,
            debug: self.debug,
        }
    }

    /// stdout or Codex's output file went past the capture limit (`boundary` names which).
    fn output_limit(self, boundary: &'static str) -> Outcome {
        let message = format!(
            "Gateway model {boundary} exceeded the {}-byte output limit",
            exec::CAPTURE_LIMIT
        );
        log::warn!(target: "model_run", "output limit job_id={} provider={} boundary={boundary}", self.ctx.job_id, self.id.as_str());
        failed(
            json!({
                "message": message,
                "error_code": "GATEWAY_MODEL_OUTPUT_LIMIT",
                "boundary": boundary,
                "output_limit_bytes": exec::CAPTURE_LIMIT,
                "error_kind": Kind::OutputLimit.as_str(),
            }),
            message.clone(),
            self.debug,
        )
    }

    fn bad_output(self, m: String) -> Outcome {
        self.record(Status::Unhealthy, Some(&m));
        let message = self.unhealthy_message(&m);
        log::warn!(target: "model_run", "bad output job_id={} provider={} error={}", self.ctx.job_id, self.id.as_str(), collapse(&m, 200));
        failed(
            json!({
                "message": message,
                "stdout": redact::text(&self.stdout_cut, RESULT_TEXT_LIMIT),
                "stderr": redact::text(&self.stderr_cut, RESULT_TEXT_LIMIT),
                "command": self.command_line,
                "error_kind": Kind::BadOutput.as_str(),
            }),
            message.clone(),
            self.debug,
        )
    }

    /// The prompt goes on stdin, but a system prompt or schema is an argument; Linux caps one
    /// argument at 128 KiB. That is the payload's doing, not the provider's: health is left
    /// alone.
    fn too_long(self) -> Outcome {
        let prompt_chars = self.prompt_chars;
        let message = format!(
            "The system prompt or JSON schema of this job ({prompt_chars} prompt characters) is too large to pass to the {} CLI as a command-line argument (Linux limits one argument to 128 KiB); shorten it",
            self.id.short()
        );
        log::warn!(target: "model_run", "prompt too large job_id={} provider={} prompt_chars={prompt_chars}", self.ctx.job_id, self.id.as_str());
        failed(
            json!({
                "message": message,
                "exit_code": Value::Null,
                "command": self.command_line,
                "error_kind": Kind::PromptTooLarge.as_str(),
            }),
            message.clone(),
            self.debug,
        )
    }

    /// The CLI could not be started: not installed, or not executable.
    fn not_started(self, message: String, not_found: bool) -> Outcome {
        let id = self.id;
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
        self.record(status, Some(&details));
        let message = self.unhealthy_message(&details);
        log::warn!(target: "model_run", "spawn failed job_id={} provider={} error={}", self.ctx.job_id, id.as_str(), collapse(&details, 200));
        failed(
            json!({
                "message": message,
                "exit_code": Value::Null,
                "stderr": "",
                "stdout": "",
                "command": self.command_line,
                "error_summary": Value::Null,
                "error_kind": kind.as_str(),
            }),
            message.clone(),
            self.debug,
        )
    }

    /// The CLI cannot run at all (not logged in) or cannot reach its API: say which, and what
    /// to run.
    fn not_ready(self, kind: Kind, m: String) -> Outcome {
        let details = match diagnose::hint(self.id, kind) {
            Some(h) => format!("{m}. {h}"),
            None => m,
        };
        self.failed_run(kind, &details, Value::Null)
    }

    /// Non-zero exit, timeout, signal, or cancel.
    fn process_failed(self) -> Outcome {
        let (id, o) = (self.id, self.output.as_ref());
        let stop = o.map(|o| o.stop).unwrap_or(exec::Stop::None);
        if matches!(stop, exec::Stop::Cancelled | exec::Stop::Killed) {
            // Cancelled by the job's owner or by an immediate shutdown: not the CLI's fault.
            log::info!(target: "model_run", "cancelled job_id={} provider={}", self.ctx.job_id, id.as_str());
            return Outcome {
                status: FinalStatus::Cancelled,
                result: Some(json!({
                    "message": "Gateway model run was cancelled before it finished",
                    "cancelled": true,
                    "error_kind": Kind::Cancelled.as_str(),
                    "command": self.command_line,
                })),
                error: Some("Gateway model run was cancelled".into()),
                debug: self.debug,
            };
        }
        let (kind, details) = if stop == exec::Stop::TimedOut {
            (
                Kind::Timeout,
                format!(
                    "{} did not finish within {} ms (timeout_ms) and was stopped; raise timeout_ms, or check that the CLI runs without waiting for input ({})",
                    id.short(),
                    self.timeout.as_millis(),
                    diagnose::login_hint(id)
                ),
            )
        } else {
            let (exit, signal) = (o.and_then(|o| o.exit_code), o.and_then(|o| o.signal));
            diagnose::explain_exit(
                id,
                exit,
                signal,
                &self.stdout_cut,
                &self.stderr_cut,
                self.summary.as_ref(),
            )
        };
        let summary = self
            .summary
            .clone()
            .map(|mut v| {
                crate::redact::redact_json(&mut v);
                v
            })
            .unwrap_or(Value::Null);
        self.failed_run(kind, &details, summary)
    }

    /// A run the CLI failed: health unhealthy, the message names the provider and the details,
    /// the result quotes its output (redacted).
    fn failed_run(self, kind: Kind, details: &str, error_summary: Value) -> Outcome {
        self.record(Status::Unhealthy, Some(details));
        let message = self.unhealthy_message(details);
        log::warn!(target: "model_run", "failed job_id={} provider={} kind={} error={}", self.ctx.job_id, self.id.as_str(), kind.as_str(), collapse(details, 200));
        failed(
            json!({
                "message": message,
                "exit_code": self.exit_code,
                "stderr": redact::text(&self.stderr_cut, RESULT_TEXT_LIMIT),
                "stdout": redact::text(&self.stdout_cut, RESULT_TEXT_LIMIT),
                "command": self.command_line,
                "error_summary": error_summary,
                "error_kind": kind.as_str(),
            }),
            message.clone(),
            self.debug,
        )
    }
}

// Tests: src/providers/tests.rs (with the fake CLIs).
