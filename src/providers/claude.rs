//! Claude Code (`claude`): flag detection from `claude --help`, the `--print` argv, and the
//! JSON result envelope (providers.md §3.2, §5.6, §5.10, §8.1).

use std::path::Path;

use serde_json::Value;

use super::plan::{extract_object, OutputFormat, ParseError, Parsed, Plan, RunRequest};
use super::Flags;

/// (key, substrings any of which in the help text means supported, value when help fails).
pub const FLAGS: &[(&str, &[&str], bool)] = &[
    ("toolsFlag", &["--tools"], false),
    (
        "allowedToolsFlag",
        &["--allowedtools", "--allowed-tools"],
        true,
    ),
    (
        "disallowedToolsFlag",
        &["--disallowedtools", "--disallowed-tools"],
        true,
    ),
    ("outputFormatFlag", &["--output-format"], true),
    ("streamJsonFlag", &["stream-json"], false),
    ("modelFlag", &["--model"], false),
    ("jsonSchemaFlag", &["--json-schema"], false),
    ("appendSystemPromptFlag", &["--append-system-prompt"], false),
    ("systemPromptFlag", &["--system-prompt"], true),
    (
        "includePartialMessagesFlag",
        &["--include-partial-messages"],
        false,
    ),
    ("permissionModeFlag", &["--permission-mode"], false),
    ("maxBudgetFlag", &["--max-budget-usd"], false),
    ("inputFormatFlag", &["--input-format"], false),
    ("betasFlag", &["--betas"], false),
    (
        "noSessionPersistenceFlag",
        &["--no-session-persistence"],
        false,
    ),
    ("sessionIdFlag", &["--session-id"], false),
    ("resumeFlag", &["--resume"], false),
    ("verboseFlag", &["--verbose"], false),
    ("settingsFlag", &["--settings"], false),
    ("settingSourcesFlag", &["--setting-sources"], false),
    (
        "disableSlashCommandsFlag",
        &["--disable-slash-commands"],
        false,
    ),
    ("strictMcpConfigFlag", &["--strict-mcp-config"], false),
    ("mcpConfigFlag", &["--mcp-config"], false),
    ("pluginDirFlag", &["--plugin-dir"], false),
    (
        "dangerouslySkipPermissionsFlag",
        &["--dangerously-skip-permissions"],
        false,
    ),
    (
        "allowDangerouslySkipPermissionsFlag",
        &["--allow-dangerously-skip-permissions"],
        false,
    ),
];

/// `output_schema`, `stream_json`, `tool_disable`.
pub fn supports(f: &Flags) -> (bool, bool, bool) {
    (
        f.get("jsonSchemaFlag"),
        f.get("outputFormatFlag") && f.get("streamJsonFlag"),
        f.get("toolsFlag") || f.get("allowedToolsFlag"),
    )
}

/// The argv for one model call (§5.6). The prompt is the last argument.
pub fn plan(req: &RunRequest, command: &Path, f: &Flags) -> Result<Plan, String> {
    let mut a: Vec<String> = vec!["--print".into()];
    if let Some(m) = req.model_arg() {
        a.extend(["--model".into(), m.into()]);
    }
    let json = req.format == OutputFormat::Json;
    a.extend([
        "--output-format".into(),
        if json { "json" } else { "text" }.into(),
    ]);
    let mut schema_chars = 0;
    if json {
        let s = req.schema_text("Claude")?;
        schema_chars = s.chars().count();
        a.extend(["--json-schema".into(), s]);
    }
    if f.get("toolsFlag") {
        a.extend(["--tools".into(), String::new()]);
    } else if f.get("allowedToolsFlag") {
        a.extend(["--allowedTools".into(), String::new()]);
    }
    if f.get("inputFormatFlag") {
        a.extend(["--input-format".into(), "text".into()]);
    }
    if f.get("noSessionPersistenceFlag") {
        a.push("--no-session-persistence".into());
    }
    if f.get("permissionModeFlag") {
        a.extend(["--permission-mode".into(), "dontAsk".into()]);
    }
    if f.get("settingSourcesFlag") {
        a.extend(["--setting-sources".into(), "local".into()]);
    }
    if f.get("disableSlashCommandsFlag") {
        a.push("--disable-slash-commands".into());
    }
    if let Some(sp) = req
        .append_system_prompt
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        if f.get("systemPromptFlag") {
            a.extend(["--system-prompt".into(), sp.into()]);
        } else if f.get("appendSystemPromptFlag") {
            a.extend(["--append-system-prompt".into(), sp.into()]);
        }
    }
    a.push(req.prompt.clone());
    Ok(Plan {
        json_schema_chars: schema_chars,
        ..Plan::stdout(req, command, a)
    })
}

/// The result envelope → normalised output (§5.10).
pub fn parse(format: OutputFormat, stdout: &str) -> Result<Parsed, ParseError> {
    if format == OutputFormat::Text {
        return Ok(Parsed::text(stdout));
    }
    let env = extract_object(stdout, false).ok_or_else(|| {
        if stdout.trim().is_empty() {
            ParseError::bad("Empty Claude output")
        } else {
            ParseError::bad("Failed to parse Claude JSON output")
        }
    })?;
    let mut cand = [
        "structured_output",
        "structuredOutput",
        "output",
        "tool_call",
        "toolCall",
    ]
    .iter()
    .find_map(|k| env.get(*k).filter(|v| !v.is_null()).cloned());
    let falsy = match &cand {
        None => true,
        Some(Value::Bool(false)) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        _ => false,
    };
    if falsy {
        if let Some(Value::String(r)) = env.get("result") {
            if let Some(o) = extract_object(r, false) {
                cand = Some(Value::Object(o));
            }
        }
    }
    let output = match cand {
        Some(v @ Value::Object(_)) => v,
        _ => {
            // A real error envelope says why; name it so the person can act.
            if env.get("is_error") == Some(&Value::Bool(true)) {
                let why = env
                    .get("result")
                    .and_then(Value::as_str)
                    .or_else(|| env.get("subtype").and_then(Value::as_str))
                    .unwrap_or("error");
                return Err(ParseError::bad(format!(
                    "Claude output missing structured JSON payload (Claude reported an error: {why})"
                )));
            }
            return Err(ParseError::bad(
                "Claude output missing structured JSON payload",
            ));
        }
    };
    let usage = ["usage", "usage_metadata"]
        .iter()
        .find_map(|k| env.get(*k).filter(|v| v.is_object()).cloned())
        .unwrap_or(Value::Null);
    let model = ["model", "provider_model"]
        .iter()
        .find_map(|k| env.get(*k).filter(|v| v.is_string()).cloned())
        .unwrap_or(Value::Null);
    Ok(Parsed {
        output,
        raw: Value::Object(env),
        usage,
        model,
    })
}
