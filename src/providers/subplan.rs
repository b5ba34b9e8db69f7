//! A subagent run before it becomes an argv: the stored `subagents.config`, the prompt and the
//! resume id, read and checked field by field into a [`SubagentRequest`]
//! (subagents-shell.md §3.1, §3.6), and the [`SubPlan`] each CLI's builder returns. Every
//! value that reaches a command line is checked here or in [`super::argv`]; a bad one is an
//! [`InputError`] that names its field (`config.betas`, `input.prompt`, …).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::argv::{self, InputError};

/// Run timeout when `config.timeout_ms` is not a JSON number.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_800_000;
/// Longest honoured run timeout.
const MAX_TIMEOUT_MS: f64 = 86_400_000.0;
/// The sentence of the backend's default restricted append prompt (§3.3 step 6).
pub const SAFE_PROMPT: &str = "You cannot write or interact with files in this environment.";

/// Claude's permission modes (`claude --help`).
pub const PERMISSION_MODES: &[&str] = &[
    "acceptEdits",
    "bypassPermissions",
    "default",
    "dontAsk",
    "plan",
];
/// Codex's `model_reasoning_effort` values.
pub const REASONING_EFFORTS: &[&str] = &["none", "minimal", "low", "medium", "high", "xhigh"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
    StreamJson,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "text",
            Format::StreamJson => "stream-json",
        }
    }
}

/// The exact command of one subagent run.
#[derive(Debug, Clone)]
pub struct SubPlan {
    pub command: PathBuf,
    pub args: Vec<String>,
    /// The prompt, written to the CLI's standard input.
    pub stdin: Vec<u8>,
    pub files: Vec<(String, Vec<u8>)>,
    pub env: Vec<(String, String)>,
    pub path_prepend: Vec<PathBuf>,
    pub format: Format,
    pub timeout: Duration,
    /// Where the id of the CLI session this run starts or continues comes from.
    pub session: SessionReport,
}

/// Where the id of the CLI session a run starts or continues comes from. A completed run
/// reports it as `metadata.session_id` (the finalize `metadata_patch`), which the backend keeps
/// on the subagent: the next run of that subagent resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SessionReport {
    /// Nothing beyond what the output normaliser reads: Claude (its `result` carries
    /// `session_id`), or a run that keeps no session.
    #[default]
    Output,
    /// The gateway named it: the id it resumed, or the one it gave Gemini's `--session-id`.
    Known(String),
    /// The CLI prints it: Codex's `thread.started` event (`--json`) or the `session id:` line
    /// of its banner on stderr; Gemini's `session_id` in its JSON envelope or `init` event.
    Printed,
    /// Not reported, and removed after the run: the Gemini session (which Gemini keeps
    /// whatever it is asked) of a subagent that asked for none (`no_session_persistence`).
    Discard(String),
}

impl SubPlan {
    /// The session id to report for a completed run of `id` (None: the normaliser's, if any).
    pub fn session_id(&self, id: super::ProviderId, stdout: &str, stderr: &str) -> Option<String> {
        match &self.session {
            SessionReport::Output | SessionReport::Discard(_) => None,
            SessionReport::Known(s) => Some(s.clone()),
            SessionReport::Printed => match id {
                super::ProviderId::Codex => {
                    super::codex::printed_session(self.format, stdout, stderr)
                }
                super::ProviderId::Gemini => super::gemini::printed_session(self.format, stdout),
                super::ProviderId::Claude => None,
            },
        }
        .filter(|s| crate::util::is_uuid(s))
    }
}

impl SubPlan {
    /// After the run: removes the session of a [`SessionReport::Discard`] (`env` is the run's,
    /// `cwd` the directory it ran in).
    pub fn discard_session(
        &self,
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        cwd: &std::path::Path,
    ) {
        if let SessionReport::Discard(id) = &self.session {
            super::gemini::forget_session(env, id, cwd);
        }
    }
}

/// The checked inputs of one subagent run. `full` is the *effective* machine control.
#[derive(Debug, Clone, Default)]
pub struct SubagentRequest {
    pub prompt: String,
    pub full: bool,
    pub format: Option<Format>,
    pub timeout: Duration,
    pub model: Option<String>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    /// Already dropped in full control when it is the default safe prompt.
    pub append_system_prompt: Option<String>,
    pub system_prompt: Option<String>,
    pub json_schema: Option<String>,
    pub permission_mode: Option<String>,
    pub max_budget_usd: Option<f64>,
    pub input_format: Option<String>,
    pub betas: Vec<String>,
    pub no_session_persistence: bool,
    pub session_id: Option<String>,
    /// `config.resume_session_id`, else the subagent's `metadata.session_id`.
    pub resume: Option<String>,
    pub reasoning_effort: Option<String>,
    pub extensions: Vec<String>,
}

impl SubagentRequest {
    pub fn format(&self) -> Format {
        self.format.unwrap_or(Format::Json)
    }
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn trimmed(v: Option<&str>) -> Option<String> {
    v.map(str::trim).filter(|x| !x.is_empty()).map(String::from)
}

/// Array or comma string → trimmed non-empty items; an item that is not a string is an error.
fn list_of(c: &Value, k: &str) -> Result<Vec<String>, InputError> {
    let field = format!("config.{k}");
    match c.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for item in a {
                let Some(x) = item.as_str() else {
                    return Err(InputError(format!(
                        "Invalid {field}: every item must be a string (found {item}). Fix {field} and submit the job again."
                    )));
                };
                let x = x.trim();
                if !x.is_empty() {
                    out.push(x.to_string());
                }
            }
            Ok(out)
        }
        Some(Value::String(x)) => Ok(x
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()),
        Some(other) => Err(InputError(format!(
            "Invalid {field}: expected a list of names or a comma-separated string, found {other}. Fix {field} and submit the job again."
        ))),
    }
}

fn conf_text(c: &Value, k: &str) -> Result<Option<String>, InputError> {
    let v = trimmed(s(c, k));
    if let Some(t) = &v {
        argv::text(&format!("config.{k}"), t)?;
    }
    Ok(v)
}

fn format_of(c: &Value) -> Option<Format> {
    match s(c, "output_format")
        .map(|x| x.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("text") => Some(Format::Text),
        Some("stream-json") | Some("stream_json") | Some("stream") => Some(Format::StreamJson),
        _ => None,
    }
}

fn timeout_of(c: &Value) -> Result<Duration, InputError> {
    let ms = match c.get("timeout_ms").and_then(Value::as_f64) {
        Some(t) if t.is_finite() && t > 0.0 && t < 1.0 => {
            return Err(InputError(format!(
                "Invalid config.timeout_ms {t}: a timeout is at least 1 millisecond. Fix config.timeout_ms and submit the job again."
            )))
        }
        Some(t) if t.is_finite() && t > 0.0 => t,
        _ => DEFAULT_TIMEOUT_MS as f64,
    };
    Ok(Duration::from_millis(ms.min(MAX_TIMEOUT_MS) as u64))
}

impl SubagentRequest {
    /// Reads `config`, the prompt and `metadata.session_id` (the resume id of a continuation).
    pub fn from_config(
        config: &Value,
        prompt: &str,
        full: bool,
        resume_meta: Option<&str>,
    ) -> Result<SubagentRequest, InputError> {
        let c = config;
        argv::text("input.prompt", prompt)?;
        let model = trimmed(s(c, "model"));
        if let Some(m) = &model {
            argv::model("config.model", m)?;
        }
        let allowed_tools = list_of(c, "allowed_tools")?;
        for t in &allowed_tools {
            argv::name("config.allowed_tools", t)?;
        }
        let disallowed_tools = list_of(c, "disallowed_tools")?;
        for t in &disallowed_tools {
            argv::name("config.disallowed_tools", t)?;
        }
        let append_system_prompt =
            conf_text(c, "append_system_prompt")?.filter(|t| !(full && t.contains(SAFE_PROMPT)));
        let system_prompt = conf_text(c, "system_prompt")?;
        let json_schema = match c.get("json_schema") {
            Some(Value::String(x)) if !x.trim().is_empty() => Some(x.clone()),
            Some(v @ Value::Object(_)) => Some(v.to_string()),
            _ => None,
        };
        if let Some(j) = &json_schema {
            argv::text("config.json_schema", j)?;
        }
        let permission_mode = trimmed(s(c, "permission_mode"));
        if let Some(m) = &permission_mode {
            argv::choice("config.permission_mode", m, PERMISSION_MODES)?;
        }
        let max_budget_usd = match c.get("max_budget_usd") {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(x)) => x.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|b| b.is_finite());
        let input_format = trimmed(s(c, "input_format"));
        if let Some(i) = &input_format {
            // The prompt is written to standard input as text.
            argv::choice("config.input_format", i, &["text"])?;
        }
        let betas = list_of(c, "betas")?;
        for b in &betas {
            argv::name("config.betas", b)?;
        }
        let session_id = trimmed(s(c, "session_id"));
        if let Some(id) = &session_id {
            argv::uuid("config.session_id", id)?;
        }
        let resume = match trimmed(s(c, "resume_session_id")) {
            Some(r) => {
                argv::uuid("config.resume_session_id", &r)?;
                Some(r)
            }
            None => match trimmed(resume_meta) {
                Some(r) => {
                    argv::uuid("metadata.session_id", &r)?;
                    Some(r)
                }
                None => None,
            },
        };
        let reasoning_effort = trimmed(s(c, "reasoning_effort"));
        if let Some(e) = &reasoning_effort {
            argv::choice("config.reasoning_effort", e, REASONING_EFFORTS)?;
        }
        let extensions = list_of(c, "extensions")?;
        for e in &extensions {
            argv::name("config.extensions", e)?;
        }
        Ok(SubagentRequest {
            prompt: prompt.to_string(),
            full,
            format: format_of(c),
            timeout: timeout_of(c)?,
            model,
            allowed_tools,
            disallowed_tools,
            append_system_prompt,
            system_prompt,
            json_schema,
            permission_mode,
            max_budget_usd,
            input_format,
            betas,
            no_session_persistence: c.get("no_session_persistence") == Some(&Value::Bool(true)),
            session_id,
            resume,
            reasoning_effort,
            extensions,
        })
    }
}

/// The plan of a subagent run on `id`: restricted-mode limits checked on the request, the
/// CLI's argv built, and a restricted argv scanned for elevated options (`restrict`).
pub fn subagent_plan(
    id: super::ProviderId,
    req: &SubagentRequest,
    layers: &super::restrict::Layers,
    command: &std::path::Path,
    flags: &super::Flags,
) -> Result<SubPlan, String> {
    super::restrict::check_request(req, layers)?;
    let plan = match id {
        super::ProviderId::Claude => super::claude::subagent_plan(req, command, flags),
        super::ProviderId::Codex => super::codex::subagent_plan(req, command, flags),
        super::ProviderId::Gemini => super::gemini::subagent_plan(req, command, flags),
    }?;
    if !req.full {
        super::restrict::check_argv(&plan.args)?;
    }
    Ok(plan)
}
