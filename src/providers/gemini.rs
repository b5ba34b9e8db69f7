//! Gemini CLI (`gemini`): flag detection, the argv, the system prompt file, and the JSON
//! envelope `{response, stats}` (providers.md §3.4, §5.8, §5.10, §8.3).

use std::path::Path;

use serde_json::Value;

use super::plan::{strip_fence, OutputFormat, OutputMode, ParseError, Parsed, Plan, RunRequest};
use super::Flags;

pub const FLAGS: &[(&str, &[&str], bool)] = &[
    ("outputFormatFlag", &["--output-format"], true),
    ("modelFlag", &["--model"], true),
    ("extensionsFlag", &[""], true),
    ("approvalModeFlag", &["--approval-mode"], false),
    ("yoloFlag", &["--yolo"], false),
    ("sandboxFlag", &["--sandbox"], false),
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

pub fn plan(req: &RunRequest, command: &Path, _f: &Flags) -> Result<Plan, String> {
    let json = req.format == OutputFormat::Json;
    let mut a: Vec<String> = vec![
        "--output-format".into(),
        if json { "json" } else { "text" }.into(),
    ];
    if let Some(m) = req.model_arg() {
        a.extend(["--model".into(), m.into()]);
    }
    a.push(req.prompt.clone());
    let mut schema_chars = 0;
    let system = if json {
        let schema = req
            .schema
            .as_ref()
            .ok_or("Gemini JSON model run requires a schema")?;
        let s = serde_json::to_string(schema).map_err(|e| e.to_string())?;
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
    let path_prepend = command
        .parent()
        .filter(|p| command.is_absolute() && !p.as_os_str().is_empty())
        .map(|p| vec![p.to_path_buf()])
        .unwrap_or_default();
    Ok(Plan {
        command: command.to_path_buf(),
        args: a,
        files: vec![(SYSTEM_FILE.to_string(), system.into_bytes())],
        env: vec![(
            "GEMINI_SYSTEM_MD".to_string(),
            format!("{{WORKDIR}}/{SYSTEM_FILE}"),
        )],
        path_prepend,
        output_mode: OutputMode::StdoutJson,
        output_path: None,
        format: req.format,
        json_schema_chars: schema_chars,
        timeout: req.timeout,
    })
}

pub fn parse(format: OutputFormat, stdout: &str) -> Result<Parsed, ParseError> {
    if format == OutputFormat::Text {
        return Ok(Parsed::text(stdout));
    }
    let env = super::plan::extract_object(stdout, false)
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
    let model = stats
        .as_ref()
        .and_then(|s| s.get("models"))
        .and_then(Value::as_object)
        .and_then(|m| m.keys().next().cloned())
        .map(Value::String)
        .unwrap_or(Value::Null);
    Ok(Parsed {
        output,
        raw: Value::Object(env),
        usage: stats.unwrap_or(Value::Null),
        model,
    })
}
