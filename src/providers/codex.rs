//! OpenAI Codex (`codex exec`): flag detection from `codex exec --help`, the argv in its three
//! JSON modes (schema file + last-message file, JSONL events, schema in the prompt), strict
//! schema conversion and the `args_json` mapping (providers.md §3.3, §5.7, §5.10, §8.2).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{Map, Value};

use super::argv::{self, Argv, InputError};
use super::normalize::{codex_answer, extract_object};
use super::plan::{OutputFormat, OutputMode, ParseError, Parsed, Plan, RunRequest};
use super::subplan::{Format, SessionReport, SubPlan, SubagentRequest};
use super::Flags;
use crate::exec::CAPTURE_LIMIT;

pub const FLAGS: &[(&str, &[&str], bool)] = &[
    ("outputSchemaFlag", &["--output-schema"], false),
    ("outputLastMessageFlag", &["--output-last-message"], false),
    ("jsonFlag", &["--json"], false),
    ("modelFlag", &["--model"], false),
    ("sandboxFlag", &["--sandbox"], false),
    ("skipGitRepoCheckFlag", &["--skip-git-repo-check"], false),
    ("ephemeralFlag", &["--ephemeral"], false),
    // `codex exec resume <SESSION_ID>`: listed under Commands of `codex exec --help`.
    ("resumeCommand", &["resume a previous session"], false),
    (
        "configFlag",
        &["-c, --config", "--config <key=value>"],
        false,
    ),
    (
        "dangerouslyBypassApprovalsAndSandboxFlag",
        &["--dangerously-bypass-approvals-and-sandbox"],
        false,
    ),
];

pub const SCHEMA_FILE: &str = "schema.json";
pub const OUTPUT_FILE: &str = "output.json";
const TOOL_SUFFIX: &str = "Set args_json to a JSON-encoded string containing the arguments object.";

pub fn supports(f: &Flags) -> (bool, bool, bool) {
    (
        f.get("outputSchemaFlag") && f.get("outputLastMessageFlag"),
        f.get("jsonFlag"),
        f.get("configFlag"),
    )
}

/// Every object schema at any depth gets `additionalProperties: false` (§5.7.2).
pub fn strict_schema(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(strict_schema).collect()),
        Value::Object(m) => {
            let mut out: Map<String, Value> = m
                .iter()
                .map(|(k, x)| (k.clone(), strict_schema(x)))
                .collect();
            let object_typed = |x: Option<&Value>| {
                matches!(x, Some(Value::Object(_) | Value::Array(_) | Value::Null))
            };
            let is_object_schema = match m.get("type") {
                Some(Value::String(t)) if t == "object" => true,
                Some(Value::Array(ts)) if ts.iter().any(|t| t == "object") => true,
                _ => false,
            } || object_typed(m.get("properties"))
                || object_typed(m.get("patternProperties"));
            if is_object_schema {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Tool-call schemas (`properties.name` + `properties.args`) become `name` + `args_json`
/// string, with a prompt hint (§5.7.3).
pub fn normalize_tool_schema(schema: &Value) -> (Value, Option<&'static str>) {
    let props = schema.get("properties").and_then(Value::as_object);
    let truthy = |v: Option<&Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        _ => true,
    };
    match props {
        Some(p) if truthy(p.get("name")) && truthy(p.get("args")) => {
            let replaced = serde_json::json!({
                "type": "object",
                "required": ["name", "args_json"],
                "properties": {"name": p["name"].clone(), "args_json": {"type": "string"}},
                "additionalProperties": false
            });
            (replaced, Some(TOOL_SUFFIX))
        }
        _ => (schema.clone(), None),
    }
}

/// Applies tool-schema normalisation to a JSON request (step 2 of the pipeline).
pub fn prepare(req: &mut RunRequest) {
    if req.format != OutputFormat::Json {
        return;
    }
    if let Some(schema) = &req.schema {
        let (s, suffix) = normalize_tool_schema(schema);
        req.schema = Some(s);
        if let Some(sfx) = suffix {
            req.prompt = format!("{}\n\n{sfx}", req.prompt);
        }
    }
}

/// The web-search setting. Codex 0.171 deprecates `features.web_search_request` (a warning on
/// stderr, an `error` item in `--json`) for the top-level `web_search`; CLIs of that
/// generation have `--ephemeral` in `codex exec --help`, older ones get the feature flag.
fn web_search(f: &Flags, on: bool) -> &'static str {
    match (f.get("ephemeralFlag"), on) {
        (true, true) => "web_search=\"live\"",
        (true, false) => "web_search=\"disabled\"",
        (false, true) => "features.web_search_request=true",
        (false, false) => "features.web_search_request=false",
    }
}

/// `--ephemeral` where the CLI has it: no session files in `~/.codex/sessions` for a run that
/// is never resumed (model runs, health checks, subagent runs with `no_session_persistence`).
fn ephemeral(a: &mut Argv, f: &Flags) {
    if f.get("ephemeralFlag") {
        a.flag("--ephemeral");
    }
}

/// The argv for one model call (§5.7). The prompt goes to standard input (`exec -`); every
/// value is `--flag=value` (see [`argv`]).
pub fn plan(req: &RunRequest, command: &Path, f: &Flags) -> Result<Plan, InputError> {
    let mut a = Argv::new(&["exec"]);
    a.fixed("--sandbox", "read-only");
    a.flag("--skip-git-repo-check");
    if let Some(m) = req.model_arg() {
        a.model("--model", "model", m)?;
    }
    if f.get("configFlag") {
        if let Some(e) = &req.reasoning_effort {
            a.choice_as(
                "--config",
                "reasoning_effort",
                e,
                super::subplan::REASONING_EFFORTS,
                effort_setting,
            )?;
        }
        a.fixed("--config", "features.shell_tool=false");
        a.fixed("--config", web_search(f, false));
    }
    ephemeral(&mut a, f);
    let mut prompt = req.prompt.clone();
    let mut files = Vec::new();
    let mut mode = OutputMode::StdoutJson;
    let mut output_path = None;
    let mut schema_chars = 0;
    if req.format == OutputFormat::Json {
        let schema = req
            .schema
            .as_ref()
            .ok_or_else(|| InputError("Codex JSON model run requires a schema".into()))?;
        let strict = strict_schema(schema);
        let strict_text = serde_json::to_string(&strict)
            .map_err(|e| InputError(format!("Invalid json_schema: {e}")))?;
        argv::text("json_schema", &strict_text)?;
        schema_chars = serde_json::to_string(schema)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        if f.get("outputSchemaFlag") && f.get("outputLastMessageFlag") {
            a.fixed("--output-schema", SCHEMA_FILE);
            a.fixed("--output-last-message", OUTPUT_FILE);
            files.push((SCHEMA_FILE.to_string(), strict_text.into_bytes()));
            mode = OutputMode::FileJson;
            output_path = Some(OUTPUT_FILE.to_string());
        } else if f.get("jsonFlag") {
            a.flag("--json");
            mode = OutputMode::StreamJson;
        } else {
            prompt = format!("{prompt}\n\nReturn STRICT JSON matching this schema:\n{strict_text}");
        }
    }
    if let Some(sp) = req
        .append_system_prompt
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        argv::text("append_system_prompt", sp)?;
        prompt = format!("{prompt}\n\n{sp}");
    }
    // `-`: read the prompt from standard input.
    a.flag("-");
    Ok(Plan {
        files,
        output_mode: mode,
        output_path,
        json_schema_chars: schema_chars,
        stdin: argv::stdin_prompt("prompt", &prompt)?,
        ..Plan::stdout(req, command, a.into_vec())
    })
}

/// `model_reasoning_effort="<e>"`, the TOML setting codex's `--config` takes.
pub fn effort_setting(e: &str) -> String {
    format!("model_reasoning_effort=\"{e}\"")
}

fn flag_not_false(f: &Flags, k: &str) -> bool {
    // "a missing flag counts as supported": only an explicit false entry disables it.
    !f.0.iter().any(|(key, v)| *key == k && !*v)
}

/// The argv of a subagent run (subagents-shell.md §3.4), every value `--flag=value`, the
/// prompt (plus the append prompt) on standard input through `exec -`.
pub fn subagent_plan(r: &SubagentRequest, command: &Path, f: &Flags) -> Result<SubPlan, String> {
    let full = r.full;
    let format = r.format();
    let mut a = Argv::new(&["exec", "--skip-git-repo-check"]);
    if !full {
        if flag_not_false(f, "sandboxFlag") {
            a.fixed("--sandbox", "read-only");
        }
    } else if f.get("dangerouslyBypassApprovalsAndSandboxFlag") {
        a.flag("--dangerously-bypass-approvals-and-sandbox");
    } else if flag_not_false(f, "sandboxFlag") {
        a.fixed("--sandbox", "danger-full-access");
    }
    if let Some(m) = &r.model {
        a.model("--model", "config.model", m)?;
    }
    if flag_not_false(f, "configFlag") {
        let effort = r.reasoning_effort.as_deref().unwrap_or("high");
        a.choice_as(
            "--config",
            "config.reasoning_effort",
            effort,
            super::subplan::REASONING_EFFORTS,
            effort_setting,
        )?;
        if full {
            a.fixed("--config", "features.shell_tool=true");
            a.fixed("--config", web_search(f, true));
        } else {
            let web = r.allowed_tools.iter().any(|t| {
                t.chars()
                    .filter(char::is_ascii_alphabetic)
                    .collect::<String>()
                    .eq_ignore_ascii_case("websearch")
            });
            a.fixed("--config", "features.shell_tool=false");
            a.fixed("--config", web_search(f, web));
        }
    }
    // A subagent's session is kept for its continuations (`codex exec resume`), unless the
    // subagent asked for none.
    if r.no_session_persistence {
        ephemeral(&mut a, f);
    }
    if format != Format::Text {
        a.flag("--json");
    }
    let mut p = r.prompt.clone();
    if let Some(ap) = &r.append_system_prompt {
        p = format!("{p}\n\n{ap}");
    }
    let session = continuation(&mut a, r, f)?;
    a.flag("-");
    Ok(SubPlan {
        command: command.to_path_buf(),
        args: a.into_vec(),
        stdin: argv::stdin_prompt("input.prompt", &p)?,
        files: Vec::new(),
        env: Vec::new(),
        path_prepend: Vec::new(),
        format,
        timeout: r.timeout,
        session,
    })
}

/// A continuation is `codex exec [options] resume <id> -`: Codex keeps its sessions by id in
/// `~/.codex/sessions` (found from any directory), and the options given to `exec` before
/// `resume` apply to the resumed thread (`resume` itself has no `--sandbox`). The id is its
/// own argument there, checked as a UUID first. Without `resume` in `codex exec --help` the
/// run is refused, saying what to do.
fn continuation(a: &mut Argv, r: &SubagentRequest, f: &Flags) -> Result<SessionReport, String> {
    let Some(id) = &r.resume else {
        // A subagent that asked for no session is never continued from this run.
        return Ok(if r.no_session_persistence {
            SessionReport::Output
        } else {
            SessionReport::Printed
        });
    };
    if !f.get("resumeCommand") {
        return Err("Codex CLI does not support session continuation (`codex exec resume` is not in `codex exec --help`). Update Codex (npm install -g @openai/codex), or start a new subagent instead of continuing this one".into());
    }
    a.flag("resume");
    a.id_argument("the resume session id", id)?;
    Ok(SessionReport::Known(id.clone()))
}

/// The session (thread) id a Codex run printed: its first `thread.started` event (`--json`,
/// any format but text), else the `session id:` line of the banner Codex writes to stderr. In
/// text format stdout is the model's answer, which never decides the session.
pub fn printed_session(format: Format, stdout: &str, stderr: &str) -> Option<String> {
    let events = if format == Format::Text { "" } else { stdout };
    let from_events = events.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l.trim()).ok()?;
        (v.get("type")?.as_str()? == "thread.started")
            .then(|| v.get("thread_id")?.as_str().map(String::from))?
    });
    from_events.or_else(|| {
        stderr.lines().find_map(|l| {
            l.trim()
                .strip_prefix("session id:")
                .map(|id| id.trim().to_string())
        })
    })
}

/// How long `codex login status` may take (it answers in well under a second).
const LOGIN_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Environment variables that give Codex a key without `codex login`.
const KEY_VARS: &[&str] = &["OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_ACCESS_TOKEN"];

/// Why Codex surely cannot run, checked before it is started: without a login Codex does not
/// fail but retries "Reconnecting…" until the gateway's timeout. `codex login status` (exit 1,
/// "Not logged in") answers in under a second. Not conclusive, so `None` (run it) when: a key
/// variable is set, `config.toml` picks a `model_provider` other than OpenAI (a local model
/// needs no login), or the command fails any other way (an old CLI without `login status`).
pub fn login_missing(
    command: &Path,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    work_dir: &Path,
) -> Option<String> {
    let var = |k: &str| crate::exec::get_var(env, k).filter(|v| !v.is_empty());
    if KEY_VARS.iter().any(|k| var(k).is_some()) {
        return None;
    }
    let home = var("CODEX_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(h).join(".codex")))?;
    if other_provider(&std::fs::read_to_string(home.join("config.toml")).unwrap_or_default()) {
        return None;
    }
    let mut spec = crate::exec::Spec::new(command).args(["login", "status"]);
    spec.env = env.to_vec();
    spec.cwd = Some(work_dir.to_path_buf());
    spec.timeout = Some(LOGIN_STATUS_TIMEOUT);
    spec.capture_limit = 64 * 1024;
    spec.tmp_base = Some(work_dir.to_path_buf());
    let out = crate::exec::run(spec, None).ok()?;
    let said = format!("{}\n{}", out.stdout_lossy(), out.stderr_lossy());
    // The answer is one line; Codex may print warnings around it.
    let line = super::diagnose::strip_ansi(&said)
        .lines()
        .map(str::trim)
        .find(|l| l.to_lowercase().contains("not logged in"))
        .map(|l| super::plan::collapse(l, 200))?;
    (out.exit_code != Some(0))
        .then(|| format!("Codex is not logged in (`codex login status` says: {line})"))
}

/// Whether `config.toml` sets a top-level `model_provider` other than `openai`.
fn other_provider(config: &str) -> bool {
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            return false;
        }
        if let Some(v) = line
            .strip_prefix("model_provider")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
        {
            let v = v
                .split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(['"', '\'']);
            return !v.is_empty() && v != "openai";
        }
    }
    false
}

/// `args_json` (or `argsJson`) string → `args` object.
pub fn map_args_json(mut o: Map<String, Value>) -> Result<Value, ParseError> {
    let s = match (o.get("args_json"), o.get("argsJson")) {
        (Some(Value::String(s)), _) | (_, Some(Value::String(s))) => Some(s.clone()),
        _ => None,
    };
    if let Some(s) = s {
        match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => {
                o.insert("args".into(), v);
                o.remove("args_json");
                o.remove("argsJson");
            }
            Ok(_) => return Err(ParseError::bad("Codex args_json is not valid JSON: Failed to decode ai_model_output boundary \"gateway.codex_cli.args\": 1 schema issue")),
            Err(_) => return Err(ParseError::bad("Codex args_json is not valid JSON: Failed to decode ai_model_output boundary \"gateway.codex_cli.args\": invalid JSON")),
        }
    }
    Ok(Value::Object(o))
}

/// Reads the last-message file: no symlinks, regular file, bounded (§5.10).
fn read_output_file(path: &Path) -> Result<String, ParseError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ParseError::bad("Codex output file not found"),
            _ if e.raw_os_error() == Some(libc::ELOOP) => {
                ParseError::bad("Codex output path is a symlink; refusing to follow it")
            }
            _ => ParseError::bad(format!("Codex output file could not be read: {e}")),
        })?;
    let meta = f
        .metadata()
        .map_err(|e| ParseError::bad(format!("Codex output file could not be read: {e}")))?;
    if !meta.is_file() {
        return Err(ParseError::bad("Codex output path is not a regular file"));
    }
    if meta.len() > CAPTURE_LIMIT as u64 {
        return Err(ParseError::OutputLimit);
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    (&mut f)
        .take(CAPTURE_LIMIT as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ParseError::bad(format!("Codex output file could not be read: {e}")))?;
    if buf.len() as u64 != meta.len() {
        return Err(ParseError::bad(
            "Codex output file changed while it was being read",
        ));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub fn parse(
    format: OutputFormat,
    mode: OutputMode,
    stdout: &str,
    work_dir: &Path,
) -> Result<Parsed, ParseError> {
    if format == OutputFormat::Text {
        return Ok(Parsed::text(stdout));
    }
    match mode {
        OutputMode::FileJson => {
            let text = read_output_file(&work_dir.join(OUTPUT_FILE))?;
            let raw = match serde_json::from_str::<Value>(&text) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => return Err(ParseError::bad("Failed to decode provider_response boundary \"gateway.codex_cli\": 1 schema issue")),
                Err(_) => return Err(ParseError::bad("Failed to decode provider_response boundary \"gateway.codex_cli\": invalid JSON")),
            };
            let output = map_args_json(raw.as_object().cloned().unwrap_or_default())?;
            Ok(Parsed {
                output,
                raw,
                usage: Value::Null,
                model: Value::Null,
            })
        }
        OutputMode::StreamJson => {
            let (last, usage) = codex_answer(stdout);
            let text =
                last.ok_or_else(|| ParseError::bad("Codex JSONL output missing agent message"))?;
            let obj = extract_object(&text, true)
                .ok_or_else(|| ParseError::bad("Failed to parse JSON output"))?;
            let raw = Value::Object(obj.clone());
            Ok(Parsed {
                output: map_args_json(obj)?,
                raw,
                usage,
                model: Value::Null,
            })
        }
        OutputMode::StdoutJson => {
            let obj = extract_object(stdout, true)
                .ok_or_else(|| ParseError::bad("Failed to parse JSON output"))?;
            let raw = Value::Object(obj.clone());
            Ok(Parsed {
                output: map_args_json(obj)?,
                raw,
                usage: Value::Null,
                model: Value::Null,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn web_search_setting_follows_the_cli_generation() {
        let modern = Flags(vec![("ephemeralFlag", true)]);
        let old = Flags(vec![("ephemeralFlag", false)]);
        assert_eq!(web_search(&modern, false), "web_search=\"disabled\"");
        assert_eq!(web_search(&modern, true), "web_search=\"live\"");
        // CLIs before 0.171 (no --ephemeral) only know the feature flag.
        assert_eq!(web_search(&old, false), "features.web_search_request=false");
        assert_eq!(web_search(&old, true), "features.web_search_request=true");
    }

    #[test]
    fn strict_schema_closes_every_object_schema_and_changes_nothing_else() {
        let input = json!({
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": ["object", "null"], "properties": {"x": {"type": "string", "format": "date"}}},
                "b": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "string"}}},
                "c": {"patternProperties": {"^k": {"type": "number"}}},
                "d": {"properties": null},
                "e": {"type": "string"},
                "f": {"anyOf": [{"type": "object"}, {"type": "integer"}]}
            },
            "$defs": {"n": {"type": "object", "additionalProperties": true}}
        });
        let out = strict_schema(&input);
        let p = &out["properties"];
        assert_eq!(out["additionalProperties"], false);
        assert_eq!(out["required"], json!(["a"]), "required is not filled in");
        assert_eq!(
            p["a"]["additionalProperties"], false,
            "type array with object"
        );
        assert_eq!(
            p["a"]["properties"]["x"],
            json!({"type": "string", "format": "date"})
        );
        assert_eq!(
            p["b"]["items"]["additionalProperties"], false,
            "sub-schema overwritten"
        );
        assert_eq!(p["c"]["additionalProperties"], false, "patternProperties");
        assert_eq!(
            p["d"]["additionalProperties"], false,
            "properties: null is object-typed"
        );
        assert_eq!(p["e"], json!({"type": "string"}));
        assert_eq!(p["f"]["anyOf"][0]["additionalProperties"], false);
        assert_eq!(p["f"]["anyOf"][1], json!({"type": "integer"}));
        assert_eq!(out["$defs"]["n"]["additionalProperties"], false);
        // The input is not modified (a deep copy).
        assert_eq!(input["$defs"]["n"]["additionalProperties"], true);
    }

    #[test]
    fn tool_schemas_become_args_json_and_map_back() {
        let s = json!({"type": "object", "properties": {"name": {"enum": ["t"]}, "args": {}}});
        let (out, suffix) = normalize_tool_schema(&s);
        assert_eq!(
            out,
            json!({"type": "object", "required": ["name", "args_json"],
                   "properties": {"name": {"enum": ["t"]}, "args_json": {"type": "string"}},
                   "additionalProperties": false})
        );
        assert_eq!(suffix, Some(TOOL_SUFFIX));
        // Falsy `args` (or `name`): unchanged, no suffix.
        for falsy in [json!(0), json!(""), json!(false), json!(null)] {
            let s = json!({"properties": {"name": {}, "args": falsy}});
            assert_eq!(normalize_tool_schema(&s), (s.clone(), None));
        }
        let obj = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            map_args_json(obj(json!({"name": "t", "args_json": "{\"k\":1}"}))).unwrap(),
            json!({"name": "t", "args": {"k": 1}})
        );
        assert_eq!(
            map_args_json(obj(json!({"argsJson": "{}", "args_json": 5}))).unwrap(),
            json!({"args": {}}),
            "argsJson when args_json is not a string; both removed"
        );
        assert_eq!(
            map_args_json(obj(json!({"args_json": "[1]"}))),
            Err(ParseError::bad("Codex args_json is not valid JSON: Failed to decode ai_model_output boundary \"gateway.codex_cli.args\": 1 schema issue"))
        );
        assert_eq!(
            map_args_json(obj(json!({"args_json": "{"}))),
            Err(ParseError::bad("Codex args_json is not valid JSON: Failed to decode ai_model_output boundary \"gateway.codex_cli.args\": invalid JSON"))
        );
        assert_eq!(
            map_args_json(obj(json!({"a": 1}))).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn a_local_model_provider_needs_no_login() {
        assert!(other_provider(
            "model = \"m\"\nmodel_provider = \"ollama\" # local\n"
        ));
        assert!(!other_provider("model_provider = 'openai'"));
        assert!(!other_provider("[profiles.x]\nmodel_provider = \"ollama\""));
        assert!(!other_provider(""));
    }

    #[test]
    fn jsonl_takes_the_last_agent_message_and_usage() {
        let out = [
            r#"{"type":"thread.started","thread_id":"t"}"#,
            "not json",
            r#"{"type":"item.completed","item":{"type":"agent_message","text":"{\"n\":1}"}}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":1}}"#,
            r#"{"type":"item.completed","item":{"type":"reasoning","text":"{\"n\":9}"}}"#,
            r#"{"type":"item.completed","item":{"type":"agent_message","text":"```json\n{\"n\":2}\n```"}}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":2}}"#,
            r#"{"type":"turn.completed","usage":"bad"}"#,
        ]
        .join("\n");
        let p = parse(
            OutputFormat::Json,
            OutputMode::StreamJson,
            &out,
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(p.output, json!({"n": 2}));
        assert_eq!(p.usage, json!({"input_tokens": 2}));
        assert_eq!(p.model, Value::Null);
        let none = r#"{"type":"turn.completed","usage":{}}"#;
        assert_eq!(
            parse(
                OutputFormat::Json,
                OutputMode::StreamJson,
                none,
                Path::new("/")
            ),
            Err(ParseError::bad("Codex JSONL output missing agent message"))
        );
    }
}
