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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_run(stdout: &str) -> Result<Parsed, ParseError> {
        parse(OutputFormat::Json, stdout)
    }

    #[test]
    fn envelope_candidates_usage_and_model_in_reference_order() {
        // structured_output first; the envelope is `raw`; usage from `usage`.
        let env = json!({"type": "result", "structured_output": {"a": 1}, "output": {"b": 2},
                         "result": "{\"c\":3}", "usage": {"input_tokens": 1}, "total_cost_usd": 0.5});
        let p = json_run(&env.to_string()).unwrap();
        assert_eq!(p.output, json!({"a": 1}));
        assert_eq!(p.raw, env);
        assert_eq!(p.usage, json!({"input_tokens": 1}));
        assert_eq!(p.model, Value::Null);
        // Null candidates are skipped; the next one wins.
        let p = json_run(r#"{"structured_output":null,"toolCall":{"t":1}}"#).unwrap();
        assert_eq!(p.output, json!({"t": 1}));
        // A falsy candidate falls back to the JSON inside `result` (extraction, no fences).
        let p = json_run(r#"{"structured_output":"","result":"Sure: {\"c\":3}","usage_metadata":{"u":1},"provider_model":"m"}"#).unwrap();
        assert_eq!(p.output, json!({"c": 3}));
        assert_eq!(p.usage, json!({"u": 1}));
        assert_eq!(p.model, json!("m"));
        // An array is not a payload.
        assert_eq!(
            json_run(r#"{"structured_output":[1]}"#),
            Err(ParseError::bad(
                "Claude output missing structured JSON payload"
            ))
        );
        assert_eq!(
            json_run("   \n"),
            Err(ParseError::bad("Empty Claude output"))
        );
        assert_eq!(
            json_run("not json"),
            Err(ParseError::bad("Failed to parse Claude JSON output"))
        );
        // Text runs: the trimmed stdout.
        assert_eq!(
            parse(OutputFormat::Text, "  hi \n").unwrap().output,
            json!({"text": "hi"})
        );
    }

    #[test]
    fn help_failed_defaults_and_supports() {
        let f = Flags::detect(super::super::ProviderId::Claude, None);
        assert_eq!(f.0.len(), 26);
        let on: Vec<&str> = f.0.iter().filter(|(_, v)| *v).map(|(k, _)| *k).collect();
        assert_eq!(
            on,
            [
                "allowedToolsFlag",
                "disallowedToolsFlag",
                "outputFormatFlag",
                "systemPromptFlag"
            ]
        );
        assert_eq!(supports(&f), (false, false, true));
        // `--append-system-prompt` does not contain `--system-prompt` (one dash before
        // "system"): a CLI with only the append flag gets the append flag, never a
        // `--system-prompt` it would reject (providers.md §9.1 decided deliberately).
        let old_cli = Flags::detect(
            super::super::ProviderId::Claude,
            Some("  --append-system-prompt <prompt>  append"),
        );
        assert!(!old_cli.get("systemPromptFlag") && old_cli.get("appendSystemPromptFlag"));
        let req = RunRequest {
            prompt: "p".into(),
            model: super::super::plan::DEFAULT_MODEL.into(),
            format: OutputFormat::Text,
            schema: None,
            append_system_prompt: Some("Be terse.".into()),
            reasoning_effort: None,
            timeout: std::time::Duration::from_secs(1),
        };
        let a = plan(&req, Path::new("claude"), &old_cli).unwrap().args;
        assert_eq!(
            a,
            [
                "--print",
                "--output-format",
                "text",
                "--append-system-prompt",
                "Be terse.",
                "p"
            ]
        );
        // With both flags in the help, the system prompt replaces Claude's (§5.6 step 11).
        let both = Flags::detect(
            super::super::ProviderId::Claude,
            Some("--system-prompt <p>\n--append-system-prompt <p>"),
        );
        let a = plan(&req, Path::new("claude"), &both).unwrap().args;
        assert_eq!(
            a,
            [
                "--print",
                "--output-format",
                "text",
                "--system-prompt",
                "Be terse.",
                "p"
            ]
        );
    }
}
