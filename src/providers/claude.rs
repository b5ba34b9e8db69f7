//! Claude Code (`claude`): flag detection from `claude --help`, the `--print` argv, and the
//! JSON result envelope (providers.md §3.2, §5.6, §5.10, §8.1).

use std::path::Path;

use serde_json::Value;

use super::argv::{self, Argv, InputError};
use super::normalize::{extract_object, last_event, parse_object};
use super::plan::{OutputFormat, OutputMode, ParseError, Parsed, Plan, RunRequest};
use super::subplan::{Format, SessionReport, SubPlan, SubagentRequest};
use super::Flags;

/// The system prompt file in the work directory, when the CLI takes one.
pub const SYSTEM_FILE: &str = "system-prompt.md";
/// The appended system prompt file of a subagent run, when the CLI takes one.
pub const APPEND_FILE: &str = "append-system-prompt.md";

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
    // Written `--system-prompt[-file]` in Claude Code 2.x's help.
    (
        "systemPromptFileFlag",
        &["--system-prompt-file", "--system-prompt[-file]"],
        false,
    ),
    (
        "appendSystemPromptFileFlag",
        &[
            "--append-system-prompt-file",
            "--append-system-prompt[-file]",
        ],
        false,
    ),
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

/// The argv for one model call (§5.6). The prompt goes to standard input (`--print` reads it
/// there when no prompt argument is given); every value is `--flag=value` (see [`argv`]).
pub fn plan(req: &RunRequest, command: &Path, f: &Flags) -> Result<Plan, InputError> {
    let mut a = Argv::new(&["--print"]);
    if let Some(m) = req.model_arg() {
        a.model("--model", "model", m)?;
    }
    let json = req.format == OutputFormat::Json;
    // stream-json (with the --verbose it requires) where the CLI has it: its events arrive as
    // they happen, so a Claude that keeps retrying an API it cannot reach is seen (and
    // stopped) within seconds instead of after its ~3 minutes of retries; the last event is
    // the same result envelope `json` prints.
    let stream = streams(f);
    a.fixed(
        "--output-format",
        match (stream, json) {
            (true, _) => "stream-json",
            (false, true) => "json",
            (false, false) => "text",
        },
    );
    if stream {
        a.flag("--verbose");
    }
    let mut schema_chars = 0;
    if json {
        let s = req.schema_text("Claude")?;
        schema_chars = s.chars().count();
        a.text("--json-schema", "json_schema", &s)?;
    }
    if f.get("toolsFlag") {
        a.fixed("--tools", "");
    } else if f.get("allowedToolsFlag") {
        a.fixed("--allowedTools", "");
    }
    if f.get("inputFormatFlag") {
        a.fixed("--input-format", "text");
    }
    if f.get("noSessionPersistenceFlag") {
        a.flag("--no-session-persistence");
    }
    if f.get("permissionModeFlag") {
        a.fixed("--permission-mode", "dontAsk");
    }
    let mut files = Vec::new();
    if f.get("settingSourcesFlag") {
        a.fixed("--setting-sources", "local");
        auth_settings(&mut a, &mut files, f);
    }
    if f.get("disableSlashCommandsFlag") {
        a.flag("--disable-slash-commands");
    }
    if let Some(sp) = req
        .append_system_prompt
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        argv::text("append_system_prompt", sp)?;
        if f.get("systemPromptFileFlag") {
            a.fixed("--system-prompt-file", SYSTEM_FILE);
            files.push((SYSTEM_FILE.to_string(), sp.as_bytes().to_vec()));
        } else if f.get("systemPromptFlag") {
            a.text("--system-prompt", "append_system_prompt", sp)?;
        } else if f.get("appendSystemPromptFileFlag") {
            a.fixed("--append-system-prompt-file", SYSTEM_FILE);
            files.push((SYSTEM_FILE.to_string(), sp.as_bytes().to_vec()));
        } else if f.get("appendSystemPromptFlag") {
            a.text("--append-system-prompt", "append_system_prompt", sp)?;
        }
    }
    Ok(Plan {
        json_schema_chars: schema_chars,
        files,
        // Claude keeps a project per working directory in ~/.claude/projects, even with
        // --no-session-persistence: one shared directory, not one per job.
        shared_cwd: true,
        stdin: argv::stdin_prompt("prompt", &req.prompt)?,
        output_mode: if stream {
            OutputMode::StreamJson
        } else {
            OutputMode::StdoutJson
        },
        ..Plan::stdout(req, command, a.into_vec())
    })
}

/// Whether model runs use `--output-format stream-json --verbose`.
pub fn streams(f: &Flags) -> bool {
    f.get("outputFormatFlag") && f.get("streamJsonFlag") && f.get("verboseFlag")
}

/// The file the user's auth settings are copied to for a run with `--setting-sources local`.
pub const AUTH_SETTINGS_FILE: &str = "claude-auth-settings.json";

/// The keys of the user's `settings.json` that log Claude in (`claude auth status` honours
/// them; `--setting-sources local` hides them).
const AUTH_KEYS: &[&str] = &[
    "apiKeyHelper",
    "env",
    "awsAuthRefresh",
    "awsCredentialExport",
    "forceLoginMethod",
    "forceLoginOrgUUID",
];

/// `--setting-sources local` keeps the user's settings (hooks, permissions, MCP servers) out
/// of gateway runs, but also the login a user set there (`apiKeyHelper`, `env`). Those keys
/// alone are copied to an owner-only file in the work directory and given with `--settings`
/// (which `--setting-sources` does not filter). Nothing is added when there are none.
fn auth_settings(a: &mut Argv, files: &mut Vec<(String, Vec<u8>)>, f: &Flags) {
    if !f.get("settingsFlag") {
        return;
    }
    let Some(auth) = user_auth_settings() else {
        return;
    };
    a.fixed("--settings", AUTH_SETTINGS_FILE);
    files.push((AUTH_SETTINGS_FILE.to_string(), auth));
}

/// The login keys of `$CLAUDE_CONFIG_DIR/settings.json` (else `~/.claude/settings.json`).
pub fn user_auth_settings() -> Option<Vec<u8>> {
    let dir = std::env::var_os("CLAUDE_CONFIG_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| home::home_dir().map(|h| h.join(".claude")))?;
    let text = std::fs::read_to_string(dir.join("settings.json")).ok()?;
    let Ok(Value::Object(all)) = serde_json::from_str::<Value>(&text) else {
        return None;
    };
    let auth: serde_json::Map<String, Value> = all
        .into_iter()
        .filter(|(k, _)| AUTH_KEYS.contains(&k.as_str()))
        .collect();
    (!auth.is_empty()).then(|| Value::Object(auth).to_string().into_bytes())
}

/// Whether `stdout` is stream-json (its first event is the `system`/`init` event).
pub fn is_stream(stdout: &str) -> bool {
    stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .and_then(parse_object)
        .is_some_and(|e| {
            e.get("type").and_then(Value::as_str) == Some("system")
                && e.get("subtype").and_then(Value::as_str) == Some("init")
        })
}

/// The argv of a subagent run (subagents-shell.md §3.3), every value `--flag=value`, the
/// prompt on standard input (it was `-p <prompt>`, last). Restricted-mode limits are checked
/// before (`restrict::check_request`) and after (`restrict::check_argv`) by the caller.
pub fn subagent_plan(r: &SubagentRequest, command: &Path, f: &Flags) -> Result<SubPlan, String> {
    let full = r.full;
    let format = r.format();
    let mut a = Argv::new(&["--print"]);
    let mut prompt = r.prompt.clone();
    let mut files = Vec::new();
    if f.get("outputFormatFlag") {
        // Text and JSON runs also stream where the CLI can (the result event is the same
        // envelope): a run that keeps retrying an unreachable API is seen within seconds.
        let cli = match format {
            _ if streams(f) => "stream-json",
            Format::StreamJson if f.get("streamJsonFlag") => "stream-json",
            Format::Text => "text",
            _ => "json",
        };
        a.fixed("--output-format", cli);
        // The reference omits --verbose (subagents-shell.md §11.10), but `claude --print`
        // refuses stream-json without it; same wire, working CLI.
        if cli == "stream-json" && f.get("verboseFlag") {
            a.flag("--verbose");
        }
    }
    if let (Some(m), true) = (&r.model, f.get("modelFlag")) {
        a.model("--model", "config.model", m)?;
    }
    let mut tools: Vec<String> = r
        .allowed_tools
        .iter()
        .map(|t| {
            if matches!(
                t.to_ascii_lowercase().as_str(),
                "web__search" | "web_search" | "websearch"
            ) {
                "WebSearch".into()
            } else {
                t.clone()
            }
        })
        .collect();
    if full && tools.len() == 1 && tools[0].eq_ignore_ascii_case("websearch") {
        tools.clear();
    } else if !full && tools.is_empty() {
        tools.push("WebSearch".into());
    }
    if !tools.is_empty() {
        if f.get("allowedToolsFlag") {
            a.names("--allowedTools", "config.allowed_tools", &tools)?;
        } else if f.get("toolsFlag") {
            a.names("--tools", "config.allowed_tools", &tools)?;
        }
    }
    if !r.disallowed_tools.is_empty() && f.get("disallowedToolsFlag") {
        a.names(
            "--disallowedTools",
            "config.disallowed_tools",
            &r.disallowed_tools,
        )?;
    }
    if let Some(ap) = &r.append_system_prompt {
        if f.get("appendSystemPromptFileFlag") {
            a.fixed("--append-system-prompt-file", APPEND_FILE);
            files.push((APPEND_FILE.to_string(), ap.as_bytes().to_vec()));
        } else if f.get("appendSystemPromptFlag") {
            a.text("--append-system-prompt", "config.append_system_prompt", ap)?;
        } else {
            prompt = format!("{prompt}\n\n{ap}");
        }
    }
    if let Some(sp) = &r.system_prompt {
        if f.get("systemPromptFileFlag") {
            a.fixed("--system-prompt-file", SYSTEM_FILE);
            files.push((SYSTEM_FILE.to_string(), sp.as_bytes().to_vec()));
        } else if f.get("systemPromptFlag") {
            a.text("--system-prompt", "config.system_prompt", sp)?;
        }
    }
    if let Some(sc) = &r.json_schema {
        if f.get("jsonSchemaFlag") {
            a.text("--json-schema", "config.json_schema", sc)?;
        } else {
            prompt = format!("{prompt}\n\nReturn STRICT JSON matching this schema:\n{sc}");
        }
    }
    let mut mode = r.permission_mode.clone();
    if full
        && mode
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case("dontAsk"))
    {
        mode = Some("bypassPermissions".into());
    }
    if let (Some(m), true) = (mode, f.get("permissionModeFlag")) {
        a.choice(
            "--permission-mode",
            "config.permission_mode",
            &m,
            super::subplan::PERMISSION_MODES,
        )?;
    }
    if full && f.get("dangerouslySkipPermissionsFlag") {
        a.flag("--dangerously-skip-permissions");
    }
    if let (Some(b), true) = (r.max_budget_usd, f.get("maxBudgetFlag")) {
        a.text("--max-budget-usd", "config.max_budget_usd", &b.to_string())?;
    }
    if let (Some(i), true) = (&r.input_format, f.get("inputFormatFlag")) {
        a.choice("--input-format", "config.input_format", i, &["text"])?;
    }
    if !r.betas.is_empty() && f.get("betasFlag") {
        a.names("--betas", "config.betas", &r.betas)?;
    }
    if r.no_session_persistence && f.get("noSessionPersistenceFlag") {
        a.flag("--no-session-persistence");
    }
    if let (Some(sid), true) = (&r.session_id, f.get("sessionIdFlag")) {
        a.uuid("--session-id", "config.session_id", sid)?;
    }
    if let Some(id) = &r.resume {
        if !f.get("resumeFlag") {
            return Err("Claude CLI does not support session continuation (--resume)".into());
        }
        a.uuid("--resume", "config.resume_session_id", id)?;
    }
    if !full {
        if f.get("settingSourcesFlag") {
            a.fixed("--setting-sources", "local");
            auth_settings(&mut a, &mut files, f);
        }
        if f.get("disableSlashCommandsFlag") {
            a.flag("--disable-slash-commands");
        }
    }
    Ok(SubPlan {
        command: command.to_path_buf(),
        args: a.into_vec(),
        stdin: argv::stdin_prompt("input.prompt", &prompt)?,
        files,
        env: Vec::new(),
        path_prepend: Vec::new(),
        format,
        timeout: r.timeout,
        // Claude's `result` event carries its `session_id` (the normaliser reads it).
        session: SessionReport::Output,
    })
}

/// The result envelope → normalised output (§5.10). In stream-json mode the envelope is the
/// last `result` event (a text run's answer is its `result`).
pub fn parse(format: OutputFormat, mode: OutputMode, stdout: &str) -> Result<Parsed, ParseError> {
    if mode == OutputMode::StreamJson {
        let Some(env) = last_event(stdout, "result") else {
            return Err(ParseError::bad(if stdout.trim().is_empty() {
                "Empty Claude output"
            } else {
                "Claude stream-json output has no result event"
            }));
        };
        if format == OutputFormat::Text {
            let text = env.get("result").and_then(Value::as_str).unwrap_or("");
            return Ok(Parsed::text(text));
        }
        return parse(
            format,
            OutputMode::StdoutJson,
            &Value::Object(env).to_string(),
        );
    }
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
        parse(OutputFormat::Json, OutputMode::StdoutJson, stdout)
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
            parse(OutputFormat::Text, OutputMode::StdoutJson, "  hi \n")
                .unwrap()
                .output,
            json!({"text": "hi"})
        );
    }

    #[test]
    fn stream_json_takes_the_last_result_event() {
        let out = [
            r#"{"type":"system","subtype":"init","session_id":"s"}"#,
            r#"{"type":"system","subtype":"api_retry","attempt":1,"error_status":529}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hi"}]}}"#,
            r#"{"type":"result","subtype":"success","is_error":false,"result":"Hi there","structured_output":{"message":"hi"},"usage":{"output_tokens":3}}"#,
        ]
        .join("\n");
        let p = parse(OutputFormat::Json, OutputMode::StreamJson, &out).unwrap();
        assert_eq!(p.output, serde_json::json!({"message": "hi"}));
        assert_eq!(p.usage, serde_json::json!({"output_tokens": 3}));
        let t = parse(OutputFormat::Text, OutputMode::StreamJson, &out).unwrap();
        assert_eq!(t.output, serde_json::json!({"text": "Hi there"}));
        assert_eq!(
            parse(
                OutputFormat::Json,
                OutputMode::StreamJson,
                "{\"type\":\"system\"}"
            ),
            Err(ParseError::bad(
                "Claude stream-json output has no result event"
            ))
        );
    }

    #[test]
    fn help_failed_defaults_and_supports() {
        let f = Flags::detect(super::super::ProviderId::Claude, None);
        assert_eq!(f.0.len(), 28);
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
                "--output-format=text",
                "--append-system-prompt=Be terse.",
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
                "--output-format=text",
                "--system-prompt=Be terse.",
            ]
        );
    }
}
