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
pub fn plan(req: &RunRequest, command: &Path, f: &Flags) -> Result<Plan, InputError> {
    let json = req.format == OutputFormat::Json;
    let mut a = Argv::default();
    a.fixed("--output-format", if json { "json" } else { "text" });
    if let Some(m) = req.model_arg() {
        a.model("--model", "model", m)?;
    }
    // Gemini writes a chat log for every run; naming the session lets the gateway remove it
    // afterwards (`forget_session`), so model runs and health checks leave none.
    let discard_session = f.get("sessionIdFlag").then(crate::util::new_uuid_v4);
    if let Some(id) = &discard_session {
        a.uuid("--session-id", "session id", id)?;
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
        discard_session,
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
        // Gemini keeps every session: one the subagent asked not to keep goes after the run.
        // Only a session the gateway named itself for this run is ever removed: with
        // `no_session_persistence` a job-given `config.session_id` (maybe another subagent's
        // or the user's own session) is ignored, as nothing of the run is kept or reported.
        if r.no_session_persistence {
            let id = crate::util::new_uuid_v4();
            a.uuid("--session-id", "session id", &id)?;
            return Ok(SessionReport::Discard(id));
        }
        let id = r
            .session_id
            .clone()
            .unwrap_or_else(crate::util::new_uuid_v4);
        a.uuid("--session-id", "config.session_id", &id)?;
        return Ok(SessionReport::Known(id));
    }
    Ok(if r.no_session_persistence {
        SessionReport::Output
    } else {
        SessionReport::Printed
    })
}

/// The session id a Gemini run printed: `session_id` of its JSON envelope, or of its
/// stream-json `init` event. None in text format: stdout is then the model's answer, which
/// never decides the session.
pub fn printed_session(format: Format, stdout: &str) -> Option<String> {
    if format == Format::Text {
        return None;
    }
    let id = |v: &Value| v.get("session_id")?.as_str().map(String::from);
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
        return id(&v);
    }
    stdout.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l.trim()).ok()?;
        (v.get("type")?.as_str()? == "init").then(|| id(&v))?
    })
}

/// How many of Gemini's project directories `forget_session` looks into.
const PROJECTS_SCANNED: usize = 4096;

/// Removes what Gemini kept of session `id` (a UUID the gateway generated for the run that
/// ran in `cwd`; never one a job named): the chat log
/// `~/.gemini/tmp/<project>/chats/session-<time>-<first 8>.jsonl` whose first line names the
/// session, and the session's `logs/session-<id>.jsonl`, `tool-outputs/session-<id>` and
/// `<id>` beside it (what Gemini's own session deletion removes). Gemini names the project from
/// its registry and marks its directory with `.project_root` (the project's path): only the
/// project of `cwd` is looked into, or a project without the marker (older layouts), where only
/// this run's files carry its fresh id. `env` is the run's environment (`GEMINI_CLI_HOME`, else
/// `HOME`). Best effort: what cannot be removed is logged.
pub fn forget_session(env: &[(std::ffi::OsString, std::ffi::OsString)], id: &str, cwd: &Path) {
    if !crate::util::is_uuid(id) {
        return;
    }
    let var = |k: &str| crate::exec::get_var(env, k).filter(|v| !v.is_empty());
    let Some(home) = var("GEMINI_CLI_HOME").or_else(|| var("HOME")) else {
        return;
    };
    let tmp = Path::new(home).join(".gemini").join("tmp");
    let Ok(projects) = std::fs::read_dir(&tmp) else {
        return;
    };
    let suffix = format!("-{}.json", &id[..8]);
    for project in projects.flatten().take(PROJECTS_SCANNED) {
        let dir = project.path();
        if !project_of(&dir, cwd) {
            continue;
        }
        let Ok(chats) = std::fs::read_dir(dir.join("chats")) else {
            continue;
        };
        let mut found = false;
        for chat in chats.flatten() {
            let name = chat.file_name();
            let name = name.to_string_lossy();
            let ours = name.starts_with("session-")
                && (name.ends_with(&suffix) || name.ends_with(&format!("{suffix}l")))
                && chat.file_type().is_ok_and(|t| t.is_file())
                && names_session(&chat.path(), id);
            if ours {
                found = true;
                remove(&chat.path(), false);
            }
        }
        if found {
            remove(&dir.join("logs").join(format!("session-{id}.jsonl")), false);
            remove(
                &dir.join("tool-outputs").join(format!("session-{id}")),
                true,
            );
            remove(&dir.join(id), true);
        }
    }
}

/// Whether Gemini's project directory `dir` may hold sessions of runs in `cwd`: its
/// `.project_root` names `cwd`, or it has none.
fn project_of(dir: &Path, cwd: &Path) -> bool {
    let Ok(root) = std::fs::read_to_string(dir.join(".project_root")) else {
        return !dir.join(".project_root").exists();
    };
    let root = Path::new(root.trim_end_matches(['\n', '\r']));
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    root == cwd || canon(root) == canon(cwd)
}

/// Whether the chat log at `path` starts with the record of session `id`.
fn names_session(path: &Path, id: &str) -> bool {
    use std::io::{BufRead, Read};
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut first = String::new();
    if std::io::BufReader::new(f.take(64 * 1024))
        .read_line(&mut first)
        .is_err()
    {
        return false;
    }
    serde_json::from_str::<Value>(first.trim())
        .ok()
        .and_then(|v| v.get("sessionId")?.as_str().map(|s| s == id))
        .unwrap_or(false)
}

fn remove(path: &Path, dir: bool) {
    let r = match std::fs::symlink_metadata(path) {
        Err(_) => return,
        Ok(m) if dir && m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    if let Err(e) = r {
        log::warn!(target: "providers", "could not remove Gemini's {}: {e}", path.display());
    }
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
    fn forgetting_a_session_removes_its_chat_and_artifacts_only() {
        let home = std::env::temp_dir().join(format!(
            "gemini-forget-{}-{}",
            std::process::id(),
            crate::util::new_uuid_v4()
        ));
        let id = "0b7c0000-0000-4000-8000-000000000001";
        let other = "0b7c0000-0000-4000-8000-000000000002";
        let p = home.join(".gemini/tmp/gemini-cwd");
        let q = home.join(".gemini/tmp/someone-elses-project");
        for d in [
            p.join("chats"),
            p.join("logs"),
            p.join(format!("tool-outputs/session-{id}")),
            p.join(id),
            q.join("chats"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let chat = |dir: &Path, name: &str, sid: &str| {
            let f = dir.join("chats").join(name);
            std::fs::write(
                &f,
                format!("{{\"sessionId\":\"{sid}\"}}\n{{\"type\":\"user\"}}\n"),
            )
            .unwrap();
            f
        };
        let ours = chat(&p, "session-2026-12-05T00-07-0b7c0000.jsonl", id);
        // Same short id, another session: kept.
        let same_prefix = chat(&q, "session-2026-12-05T00-08-0b7c0000.jsonl", other);
        let unrelated = chat(&q, "session-2026-12-05T00-09-1a2b3c4d.jsonl", other);
        let log = p.join(format!("logs/session-{id}.jsonl"));
        std::fs::write(&log, "{}").unwrap();
        let cwd = home.join("work");
        std::fs::write(p.join(".project_root"), format!("{}\n", cwd.display())).unwrap();
        // Another project (marked as someone else's) holding the same session id: untouched.
        let r = home.join(".gemini/tmp/users-own-project");
        std::fs::create_dir_all(r.join("chats")).unwrap();
        std::fs::write(r.join(".project_root"), "/home/user/src/app\n").unwrap();
        let theirs = chat(&r, "session-2026-12-05T00-07-0b7c0000.jsonl", id);
        let env = vec![("HOME".into(), home.clone().into_os_string())];
        forget_session(&env, id, &cwd);
        assert!(theirs.exists(), "another project's session was removed");
        assert!(!ours.exists() && !log.exists());
        assert!(!p.join(format!("tool-outputs/session-{id}")).exists());
        assert!(!p.join(id).exists());
        assert!(same_prefix.exists() && unrelated.exists());
        // Not a UUID: nothing is touched.
        forget_session(&env, "../chats", &cwd);
        assert!(same_prefix.exists());
        let _ = std::fs::remove_dir_all(&home);
    }

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
