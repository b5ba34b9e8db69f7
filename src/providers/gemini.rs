//! Gemini CLI (`gemini`): flag detection, the argv, the system prompt file, and the JSON
//! envelope `{response, stats}` (providers.md §3.4, §5.8, §5.10, §8.3).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::argv::{self, Argv, InputError};
use super::normalize::{extract_with, parse_object, strip_fence};
use super::plan::{OutputFormat, ParseError, Parsed, Plan, RunRequest};
use super::subplan::{Format, SessionReport, SubPlan, SubagentRequest};
use super::Flags;

pub const FLAGS: &[(&str, &[&str], bool)] = &[
    ("outputFormatFlag", &["--output-format"], true),
    ("streamJsonFlag", &["\"stream-json\""], false),
    ("modelFlag", &["--model"], true),
    ("extensionsFlag", &[""], true),
    ("approvalModeFlag", &["--approval-mode"], false),
    ("yoloFlag", &["--yolo"], false),
    ("sandboxFlag", &["--sandbox"], false),
    ("resumeFlag", &["--resume"], false),
    ("sessionIdFlag", &["--session-id"], false),
];

pub const SYSTEM_FILE: &str = "system.md";
const STRICT: &str = "Return STRICT JSON only. Do not wrap in code fences.\nSchema:\n";

/// `output_schema` is never supported; tools count as disabled only when the extension list
/// was read and is empty.
pub fn supports(f: &Flags, extensions_ok: bool, extensions: &[String]) -> (bool, bool, bool) {
    (
        false,
        f.get("outputFormatFlag"),
        extensions_ok && extensions.is_empty(),
    )
}

/// `gemini --list-extensions` stdout → extension names. The header and Gemini's "No
/// extensions installed." line are not extensions (the reference counted the latter as one,
/// so a host without extensions never got `tool_disable`).
pub fn parse_extensions(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.eq_ignore_ascii_case("installed extensions:")
                && !l
                    .to_ascii_lowercase()
                    .starts_with("no extensions installed")
        })
        .map(String::from)
        .collect()
}

/// The extension listing that needs no login (Gemini CLI 0.3x and later).
pub const EXTENSIONS_LIST: &[&str] = &["extensions", "list", "--output-format", "json"];

/// Whether `gemini --help` lists the `extensions` command.
pub fn has_extensions_command(help: &str) -> bool {
    help.contains("gemini extensions")
}

/// `gemini extensions list --output-format json` → extension names. Gemini logs the JSON
/// array (`[]` when there are none) on stderr or stdout depending on the version; `None` when
/// neither holds one.
pub fn parse_extensions_json(stdout: &str, stderr: &str) -> Option<Vec<String>> {
    [stdout, stderr].into_iter().find_map(|t| {
        let t = super::diagnose::strip_ansi(t);
        let start = t.find('[')?;
        let end = t.rfind(']')?;
        let v: Vec<Value> = serde_json::from_str(t.get(start..=end)?).ok()?;
        Some(
            v.iter()
                .filter_map(|e| e.get("name").and_then(Value::as_str))
                .map(String::from)
                .collect(),
        )
    })
}

/// The argv for one model call (§5.8). The prompt goes to standard input (gemini reads it
/// there when no prompt argument is given); every value is `--flag=value` (see [`argv`]).
pub fn plan(req: &RunRequest, command: &Path, _f: &Flags) -> Result<Plan, InputError> {
    let json = req.format == OutputFormat::Json;
    let mut a = Argv::default();
    a.fixed("--output-format", if json { "json" } else { "text" });
    if let Some(m) = req.model_arg() {
        a.model("--model", "model", m)?;
    }
    let mut schema_chars = 0;
    let system = if json {
        let s = req.schema_text("Gemini")?;
        schema_chars = s.chars().count();
        match req
            .append_system_prompt
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(sp) => format!("{sp}\n{STRICT}{s}"),
            None => format!("{STRICT}{s}"),
        }
    } else {
        req.append_system_prompt.clone().unwrap_or_default()
    };
    argv::text("append_system_prompt", &system)?;
    Ok(Plan {
        files: vec![(SYSTEM_FILE.to_string(), system.into_bytes())],
        env: vec![
            (
                "GEMINI_SYSTEM_MD".to_string(),
                format!("{{WORKDIR}}/{SYSTEM_FILE}"),
            ),
            trust_env(),
        ],
        path_prepend: path_prepend(command),
        json_schema_chars: schema_chars,
        shared_cwd: true,
        stdin: argv::stdin_prompt("prompt", &req.prompt)?,
        ..Plan::stdout(req, command, a.into_vec())
    })
}

/// Gemini refuses to run headless in a folder the user never trusted (exit 55), and in an
/// untrusted folder it turns `--approval-mode plan` back into `default`. The gateway's work
/// directories are its own, fresh and empty: it trusts them for that run only, with the
/// variable Gemini's own message names (works on every version; `--skip-trust` is newer).
pub fn trust_env() -> (String, String) {
    ("GEMINI_CLI_TRUST_WORKSPACE".to_string(), "true".to_string())
}

/// The argv of a subagent run (subagents-shell.md §3.5), every value `--flag=value`, the
/// prompt on standard input, the system prompts in `system.md` (`GEMINI_SYSTEM_MD`).
pub fn subagent_plan(r: &SubagentRequest, command: &Path, f: &Flags) -> Result<SubPlan, String> {
    let full = r.full;
    let format = r.format();
    let mut a = Argv::default();
    // Gemini CLI 0.61 streams natively (`init`/`message`/`tool_use`/`result` events, which the
    // normaliser reads); older ones answer stream-json runs with one JSON envelope.
    a.fixed(
        "--output-format",
        match format {
            Format::Text => "text",
            Format::StreamJson if f.get("streamJsonFlag") => "stream-json",
            _ => "json",
        },
    );
    if f.get("approvalModeFlag") {
        a.fixed("--approval-mode", if full { "yolo" } else { "plan" });
    } else if full && f.get("yoloFlag") {
        a.flag("--yolo");
    }
    // No `--sandbox` when restricted: it needs docker or podman and an image pull (exit 44
    // without a container runtime). `--approval-mode plan` is Gemini's read-only mode; the
    // trusted work directory (GEMINI_CLI_TRUST_WORKSPACE) keeps Gemini from turning it back
    // into `default`.
    if let Some(m) = &r.model {
        a.model("--model", "config.model", m)?;
    }
    if !r.extensions.is_empty() {
        a.names("--extensions", "config.extensions", &r.extensions)?;
    }
    let session = session(&mut a, r, f)?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(sp) = &r.system_prompt {
        parts.push(sp.clone());
    }
    if let Some(ap) = &r.append_system_prompt {
        parts.push(ap.clone());
    }
    if format != Format::Text {
        parts.push("Return STRICT JSON only. Do not wrap in code fences.".into());
    }
    let content = parts.join("\n");
    let mut plan = SubPlan {
        command: command.to_path_buf(),
        args: a.into_vec(),
        stdin: argv::stdin_prompt("input.prompt", &r.prompt)?,
        files: Vec::new(),
        env: vec![trust_env()],
        path_prepend: path_prepend(command),
        format,
        timeout: r.timeout,
        session,
    };
    if !content.is_empty() {
        plan.files.push((SYSTEM_FILE.into(), content.into_bytes()));
        plan.env.push((
            "GEMINI_SYSTEM_MD".into(),
            format!("{{WORKDIR}}/{SYSTEM_FILE}"),
        ));
    }
    Ok(plan)
}

/// The session of a subagent run. Gemini keeps its sessions per project directory
/// (`~/.gemini/tmp/<project>/chats`), so a continuation runs in the subagent's own, stable work
/// directory and resumes by id: `--resume=<id>` (refused, saying what to do, when `--resume` is
/// not in `gemini --help`). A first run names its session with `--session-id=<id>` where the CLI
/// has it (`config.session_id`, else a new UUID), so the id is known in every output format;
/// older CLIs print it in their JSON envelope or `init` event.
fn session(a: &mut Argv, r: &SubagentRequest, f: &Flags) -> Result<SessionReport, String> {
    if let Some(id) = &r.resume {
        if !f.get("resumeFlag") {
            return Err("Gemini CLI does not support session continuation (`--resume` is not in `gemini --help`). Update Gemini CLI (npm install -g @google/gemini-cli), or start a new subagent instead of continuing this one".into());
        }
        a.uuid("--resume", "the resume session id", id)?;
        return Ok(SessionReport::Known(id.clone()));
    }
    if f.get("sessionIdFlag") {
        let id = r
            .session_id
            .clone()
            .unwrap_or_else(crate::util::new_uuid_v4);
        a.uuid("--session-id", "config.session_id", &id)?;
        if !r.no_session_persistence {
            return Ok(SessionReport::Known(id));
        }
        return Ok(SessionReport::Output);
    }
    Ok(if r.no_session_persistence {
        SessionReport::Output
    } else {
        SessionReport::Printed
    })
}

/// The session id a Gemini run printed: `session_id` of its JSON envelope, or of its
/// stream-json `init` event.
pub fn printed_session(stdout: &str) -> Option<String> {
    let id = |v: &Value| v.get("session_id")?.as_str().map(String::from);
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
        return id(&v);
    }
    stdout.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l.trim()).ok()?;
        (v.get("type")?.as_str()? == "init").then(|| id(&v))?
    })
}

/// Gemini is a node script: its own directory goes first on PATH (model runs and probes), so
/// the `node` installed beside it is found (providers.md §5.8).
pub fn path_prepend(command: &Path) -> Vec<PathBuf> {
    command
        .parent()
        .filter(|p| command.is_absolute() && !p.as_os_str().is_empty())
        .map(|p| vec![p.to_path_buf()])
        .unwrap_or_default()
}

pub fn parse(format: OutputFormat, stdout: &str) -> Result<Parsed, ParseError> {
    if format == OutputFormat::Text {
        return Ok(Parsed::text(stdout));
    }
    let (env, first_model) = extract_with(stdout, false, |t| {
        parse_object(t).map(|m| (m, first_model_key(t)))
    })
    .ok_or_else(|| ParseError::bad("Failed to parse Gemini JSON output"))?;
    let response = env.get("response").and_then(Value::as_str).unwrap_or("");
    let output = match serde_json::from_str::<Value>(&strip_fence(response)) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err(ParseError::bad("Failed to decode ai_model_output boundary \"gateway.gemini_cli.output\": 1 schema issue")),
        Err(_) => {
            // Gemini reports failures inside the envelope: say what it said.
            if let Some(msg) = env
                .get("error")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
            {
                return Err(ParseError::bad(format!(
                    "Failed to decode ai_model_output boundary \"gateway.gemini_cli.output\": invalid JSON (Gemini reported: {msg})"
                )));
            }
            return Err(ParseError::bad(
                "Failed to decode ai_model_output boundary \"gateway.gemini_cli.output\": invalid JSON",
            ));
        }
    };
    let stats = env.get("stats").filter(|s| s.is_object()).cloned();
    let model = first_model.map(Value::String).unwrap_or(Value::Null);
    Ok(Parsed {
        output,
        raw: Value::Object(env),
        usage: stats.unwrap_or(Value::Null),
        model,
    })
}

/// The first key of `stats.models` as Gemini wrote it. serde_json's `Map` keeps keys sorted,
/// so `keys().next()` would name the alphabetically first model, not the one Gemini listed
/// first (the reference takes the first key in document order).
fn first_model_key(envelope: &str) -> Option<String> {
    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

    struct FirstKey(Option<String>);
    impl<'de> Deserialize<'de> for FirstKey {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = FirstKey;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<FirstKey, A::Error> {
                    let first = m.next_key::<String>()?;
                    if first.is_some() {
                        m.next_value::<IgnoredAny>()?;
                        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    }
                    Ok(FirstKey(first))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Stats {
        models: Option<FirstKey>,
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        stats: Option<Stats>,
    }
    serde_json::from_str::<Envelope>(envelope)
        .ok()?
        .stats?
        .models?
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_listing_without_login() {
        assert_eq!(parse_extensions_json("", "[]\n"), Some(vec![]));
        let two = r#"[{"name":"a","version":"1"},{"name":"b"}]"#;
        assert_eq!(
            parse_extensions_json(two, ""),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(parse_extensions_json("No extensions installed.", ""), None);
    }

    #[test]
    fn model_is_the_first_key_of_stats_models_in_document_order() {
        let out = r#"{"response":"{\"message\":\"hi\"}","stats":{"models":{"gemini-2.5-pro":{},"gemini-2.5-flash":{}}}}"#;
        let p = parse(OutputFormat::Json, out).unwrap();
        assert_eq!(p.model, Value::from("gemini-2.5-pro"));
        assert_eq!(p.output, serde_json::json!({"message":"hi"}));
        // Noise around the envelope: the same text the envelope came from is read.
        let noisy = format!("Loaded cached credentials.\n{out}\n");
        assert_eq!(
            parse(OutputFormat::Json, &noisy).unwrap().model,
            Value::from("gemini-2.5-pro")
        );
        let none = r#"{"response":"{}","stats":{"models":{}}}"#;
        assert_eq!(parse(OutputFormat::Json, none).unwrap().model, Value::Null);
        let odd = r#"{"response":"{}","stats":{"models":[1]}}"#;
        assert_eq!(parse(OutputFormat::Json, odd).unwrap().model, Value::Null);
        assert_eq!(
            parse(OutputFormat::Json, r#"{"response":"{}"}"#)
                .unwrap()
                .usage,
            Value::Null
        );
    }
}
