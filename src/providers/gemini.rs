//! Gemini CLI (`gemini`): flag detection, the argv, the system prompt file, and the JSON
//! envelope `{response, stats}` (providers.md §3.4, §5.8, §5.10, §8.3).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::plan::{strip_fence, OutputFormat, ParseError, Parsed, Plan, RunRequest};
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
        ..Plan::stdout(req, command, a)
    })
}

/// Gemini refuses to run headless in a folder the user never trusted (exit 55), and in an
/// untrusted folder it turns `--approval-mode plan` back into `default`. The gateway's work
/// directories are its own, fresh and empty: it trusts them for that run only, with the
/// variable Gemini's own message names (works on every version; `--skip-trust` is newer).
pub fn trust_env() -> (String, String) {
    ("GEMINI_CLI_TRUST_WORKSPACE".to_string(), "true".to_string())
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
    let (env, first_model) = super::plan::extract_with(stdout, false, |t| {
        super::plan::parse_object(t).map(|m| (m, first_model_key(t)))
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
