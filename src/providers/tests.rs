//! Providers and the model_run / diagnostic handlers against the fake CLIs in
//! tests/fixtures/bin (real processes; each test gets its own scratch directory and wrappers
//! that set the fake's FAKE_CLI_* controls, so tests never touch the process environment).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::health::{Mode, Status};
use super::*;
use crate::exec::{CancelToken, Children};
use crate::jobs::{self, FinalStatus, JobContext};
use crate::shutdown::Shutdown;

mod failures;
mod text;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bin")
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("pgw-prov-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn record(&self) -> PathBuf {
        self.0.join("record.jsonl")
    }
    /// A wrapper `<scratch>/<tag>/<name>` that sets the controls and runs the fake.
    fn fake(&self, name: &str, tag: &str, env: &[(&str, &str)]) -> PathBuf {
        let dir = self.0.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let mut body = format!(
            "#!/bin/sh\nexport FAKE_CLI_WRAPPER_PATH=\"$PATH\"\nexport FAKE_CLI_RECORD='{}'\n",
            self.record().display()
        );
        for (k, v) in env {
            body.push_str(&format!("export {k}='{v}'\n"));
        }
        body.push_str(&format!(
            "exec '{}' \"$@\"\n",
            fixtures().join(name).display()
        ));
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
    /// Registry over three wrappers, each with its own controls.
    fn registry(
        &self,
        claude: &[(&str, &str)],
        codex: &[(&str, &str)],
        gemini: &[(&str, &str)],
    ) -> Arc<Registry> {
        let r = Registry::with_commands([
            self.fake("claude", "c", claude),
            self.fake("codex", "x", codex),
            self.fake("gemini", "g", gemini),
        ]);
        r.set_work_root(self.0.join("work"));
        Arc::new(r)
    }
    /// Invocations that were model calls (not probes).
    fn runs(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.record()).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| {
                let argv: Vec<&str> = v["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                !matches!(
                    argv.as_slice(),
                    ["--version"] | ["--help"] | ["exec", "--help"] | ["--list-extensions"]
                )
            })
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ctx(reg: &Arc<Registry>, job: &str) -> JobContext {
    JobContext {
        job_id: job.to_string(),
        providers: reg.clone(),
        children: Arc::new(Children::new()),
        cancel: CancelToken::new(),
        shutdown: Shutdown::new(),
        session: None,
        resources: None,
        shell_sessions: Arc::new(crate::jobs::shell::ShellSessions::new()),
        control: Arc::new(Default::default),
        cancel_running: Arc::new(|_: &str| false),
        subagent_runs: Arc::default(),
    }
}

/// Claude's health status (it must have one).
fn claude_status(reg: &Registry) -> Status {
    reg.health(ProviderId::Claude).unwrap().status
}

/// Waits up to 10 s until a run registers a child (or returns, to let the caller's asserts
/// fail).
fn wait_for_a_child(children: &Children) {
    let end = Instant::now() + Duration::from_secs(10);
    while children.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn argv(v: &Value) -> Vec<String> {
    v["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// A Gemini model run's argv without its last element, which names a fresh session (a random
/// v4 UUID) so the gateway can remove Gemini's chat log afterwards.
fn gemini_argv(v: &Value) -> Vec<String> {
    let mut a = argv(v);
    let last = a.pop().unwrap_or_default();
    let id = last.strip_prefix("--session-id=").unwrap_or_default();
    assert!(crate::util::is_rfc4122_uuid(id), "{last:?} in {a:?}");
    a
}

fn strs(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

const SCHEMA: &str =
    r#"{"type":"object","required":["label"],"properties":{"label":{"type":"string"}}}"#;

// ---------------------------------------------------------------- capabilities and discovery

#[test]
fn capabilities_of_modern_clis() {
    let s = Scratch::new("caps");
    let reg = s.registry(&[], &[], &[]);
    let caps = reg.capabilities_providers();
    let ids: Vec<&String> = caps.as_object().unwrap().keys().collect();
    assert_eq!(ids.len(), 3);
    let c = &caps["claude_code"];
    assert_eq!(c["available"], true);
    assert_eq!(c["version"], "2.0.14 (Claude Code)");
    assert_eq!(c["supported_flags"].as_object().unwrap().len(), 28);
    assert!(c["supported_flags"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == true));
    assert_eq!(
        c["supports"],
        json!({"output_schema": true, "stream_json": true, "tool_disable": true})
    );
    let x = &caps["codex"];
    assert_eq!(x["version"], "codex-cli 0.46.0");
    // The reference's 8, `--ephemeral` and the `resume` command.
    assert_eq!(x["supported_flags"].as_object().unwrap().len(), 10);
    assert_eq!(
        x["supports"],
        json!({"output_schema": true, "stream_json": true, "tool_disable": true})
    );
    let g = &caps["gemini"];
    assert_eq!(g["version"], "0.9.0");
    assert_eq!(g["extensions"], json!([]));
    assert_eq!(
        g["supports"],
        json!({"output_schema": false, "stream_json": true, "tool_disable": true})
    );
    assert!(c.get("error").is_none());
    assert!(reg.doctor_report().iter().all(|p| p.ok));
    assert!(reg.model_execution_ready());
}

#[test]
fn capabilities_of_old_failing_and_missing_clis() {
    let s = Scratch::new("caps-old");
    let r = Registry::with_commands([
        s.fake("claude", "c", &[("FAKE_CLI_HELP", "old")]),
        s.fake("codex", "x", &[("FAKE_CLI_HELP", "fail")]),
        s.path().join("nonexistent/gemini"),
    ]);
    let caps = r.capabilities_providers();
    let cf = &caps["claude_code"]["supported_flags"];
    assert_eq!(cf["toolsFlag"], false);
    assert_eq!(cf["allowedToolsFlag"], true);
    assert_eq!(cf["jsonSchemaFlag"], false);
    assert_eq!(
        caps["claude_code"]["supports"],
        json!({"output_schema": false, "stream_json": false, "tool_disable": true})
    );
    // codex exec --help failed: empty flag map, nothing supported.
    assert_eq!(caps["codex"]["supported_flags"], json!({}));
    assert_eq!(caps["codex"]["available"], true);
    let g = &caps["gemini"];
    assert_eq!(g["available"], false);
    assert!(g["error"].as_str().unwrap().contains("not found"), "{g}");
    assert_eq!(g["extensions"], json!([]));
    let rep = r.doctor_report();
    let gem = rep.iter().find(|p| p.id == "gemini").unwrap();
    assert!(!gem.ok);
    assert!(
        gem.detail.as_deref().unwrap().contains("--gemini-cli"),
        "{gem:?}"
    );
    // Light check: unavailable stays unavailable, others unknown.
    let h = r.check_health(Mode::Light, None);
    assert_eq!(h[2].1.status, Status::Unavailable);
    assert_eq!(h[0].1.status, Status::Unknown);

    // Gemini gets installed at that path: the next refresh + light check revives it.
    let installed = s.fake("gemini", "g", &[]);
    std::fs::create_dir_all(s.path().join("nonexistent")).unwrap();
    std::fs::rename(&installed, s.path().join("nonexistent/gemini")).unwrap();
    r.refresh();
    let h = r.check_health(Mode::Light, None);
    assert_eq!(h[2].1.status, Status::Unknown);
    assert_eq!(h[2].1.error, None);
    let caps = r.capabilities_providers();
    assert_eq!(caps["gemini"]["available"], true);
    assert_eq!(caps["gemini"]["health"]["status"], "unknown");
}

#[test]
fn gemini_extensions_disable_tool_disable() {
    let s = Scratch::new("ext");
    let reg = s.registry(&[], &[], &[("FAKE_CLI_EXTENSIONS", "security,context7")]);
    let g = &reg.capabilities_providers()["gemini"];
    assert_eq!(g["extensions"], json!(["security", "context7"]));
    assert_eq!(g["supports"]["tool_disable"], false);
}

#[test]
fn provider_inference_from_model_names() {
    assert_eq!(infer_provider("openai/gpt-5"), ProviderId::Codex);
    assert_eq!(infer_provider("gpt-5-codex"), ProviderId::Codex);
    assert_eq!(infer_provider("my-CODEX-model"), ProviderId::Codex);
    assert_eq!(infer_provider("google/gemini-2.5"), ProviderId::Gemini);
    assert_eq!(infer_provider("gemini-2.5-pro"), ProviderId::Gemini);
    assert_eq!(infer_provider("o3"), ProviderId::Claude);
    assert_eq!(infer_provider("__default__"), ProviderId::Claude);
}

// ---------------------------------------------------------------- health

#[test]
fn full_health_check_runs_a_tiny_call_and_persists() {
    let s = Scratch::new("health");
    let reg = s.registry(&[("FAKE_CLI_MODE", "auth_error")], &[], &[]);
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let seen2 = seen.clone();
    reg.set_health_sink(Arc::new(move |id, h| {
        seen2.lock().unwrap().push((id.to_string(), h.to_json()))
    }));
    let out = reg.check_health(Mode::Full, Some("doctor"));
    let by: std::collections::HashMap<_, _> = out.iter().map(|(i, h)| (*i, h.clone())).collect();
    assert_eq!(by[&ProviderId::Codex].status, Status::Healthy);
    assert_eq!(by[&ProviderId::Gemini].status, Status::Healthy);
    let c = &by[&ProviderId::Claude];
    assert_eq!(c.status, Status::Unhealthy);
    assert!(c.full);
    assert!(c.duration_ms.is_some());
    // Claude says why in its stdout envelope (stderr is empty): that is the health error,
    // not the generic "Provider validation failed".
    // It is classified (auth) and says what to run.
    let e = c.error.as_deref().unwrap();
    assert!(
        e.starts_with("Claude exited with status 1: Invalid API key · Please run /login. The CLI is not logged in"),
        "{e}"
    );
    assert!(e.contains("ANTHROPIC_API_KEY"), "{e}");
    // The validation call is exactly the reference's.
    let runs = s.runs();
    let claude = runs.iter().find(|r| r["name"] == "claude").unwrap();
    assert_eq!(
        argv(claude),
        strs(&[
            "--print",
            "--output-format=stream-json",
            "--verbose",
            r#"--json-schema={"additionalProperties":false,"properties":{"message":{"type":"string"}},"required":["message"],"type":"object"}"#,
            "--tools=",
            "--input-format=text",
            "--no-session-persistence",
            "--permission-mode=dontAsk",
            "--setting-sources=local",
            "--disable-slash-commands",
        ])
    );
    assert_eq!(claude["stdin"], "Say hi.");
    let codex = runs.iter().find(|r| r["name"] == "codex").unwrap();
    assert_eq!(
        argv(codex),
        strs(&[
            "exec",
            "--sandbox=read-only",
            "--skip-git-repo-check",
            "--config=features.shell_tool=false",
            "--config=web_search=\"disabled\"",
            "--ephemeral",
            "--output-schema=schema.json",
            "--output-last-message=output.json",
            "-"
        ])
    );
    assert_eq!(codex["stdin"], "Say hi.");
    let gemini = runs.iter().find(|r| r["name"] == "gemini").unwrap();
    assert_eq!(gemini_argv(gemini), strs(&["--output-format=json"]));
    assert_eq!(gemini["stdin"], "Say hi.");
    assert!(gemini["system_md"]
        .as_str()
        .unwrap()
        .starts_with("Return STRICT JSON only. Do not wrap in code fences.\nSchema:\n"));
    // Persisted (all three), and the validation directories are gone.
    assert_eq!(seen.lock().unwrap().len(), 3);
    let vroot = s.path().join("work/validation");
    let left: Vec<_> = std::fs::read_dir(&vroot)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // Light afterwards carries the statuses forward without model calls.
    let before = s.runs().len();
    let events = reg.take_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["code"], "provider_validation");
    assert_eq!(events[0]["level"], "error");
    assert_eq!(events[0]["details"]["context"], "doctor");
    assert!(events[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("claude_code validation failed: "));
    let light = reg.check_health(Mode::Light, None);
    assert_eq!(light[0].1.status, Status::Unhealthy);
    assert!(!light[0].1.full);
    assert_eq!(s.runs().len(), before);
    let caps = reg.capabilities_providers();
    assert_eq!(caps["claude_code"]["health"]["status"], "unhealthy");
    assert!(!reg.doctor_report()[0].ok);
}

// ---------------------------------------------------------------- model_run: argv per CLI and mode

fn run_job(reg: &Arc<Registry>, job: &str, payload: Value) -> jobs::Outcome {
    jobs::model_run::handle(&payload, &ctx(reg, job))
}

/// (error_kind, message) of a failed outcome.
fn failure(o: &jobs::Outcome) -> (String, String) {
    assert_eq!(o.status, FinalStatus::Failed, "{o:?}");
    let r = o.result.clone().unwrap();
    (
        r["error_kind"].as_str().unwrap_or("").to_string(),
        r["message"].as_str().unwrap().to_string(),
    )
}

#[test]
fn claude_json_run_argv_and_result() {
    let s = Scratch::new("claude-json");
    let reg = s.registry(&[("FAKE_CLI_RESPONSE", r#"{"label":"billing"}"#)], &[], &[]);
    let o = run_job(
        &reg,
        "job-c1",
        json!({"prompt": "Classify this ticket ...", "model": "claude-sonnet-4-5",
               "json_schema": serde_json::from_str::<Value>(SCHEMA).unwrap(),
               "append_system_prompt": "Be terse."}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(r["output"], json!({"label": "billing"}));
    assert_eq!(r["usage"]["output_tokens"], 34);
    assert_eq!(r["raw"]["total_cost_usd"], 0.0123);
    assert_eq!(r["model"], Value::Null);
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout_truncated"], false);
    let cmd = r["command"].as_str().unwrap();
    assert!(cmd.ends_with(
        "--json-schema=[REDACTED] --tools= --input-format=text --no-session-persistence --permission-mode=dontAsk --setting-sources=local --disable-slash-commands --system-prompt-file=[REDACTED]"
    ), "{cmd}");
    let run = &s.runs()[0];
    let work = s
        .path()
        .join("work/model-runs/job-c1")
        .display()
        .to_string();
    let schema_text =
        serde_json::to_string(&serde_json::from_str::<Value>(SCHEMA).unwrap()).unwrap();
    assert_eq!(
        argv(run),
        strs(&[
            "--print",
            "--model=claude-sonnet-4-5",
            "--output-format=stream-json",
            "--verbose",
            &format!("--json-schema={schema_text}"),
            "--tools=",
            "--input-format=text",
            "--no-session-persistence",
            "--permission-mode=dontAsk",
            "--setting-sources=local",
            "--disable-slash-commands",
            &format!("--system-prompt-file={work}/system-prompt.md"),
        ])
    );
    // The prompt reaches the CLI on standard input and the system prompt in an owner-only
    // file, never on its command line (where every local user could read them).
    assert_eq!(run["stdin"], "Classify this ticket ...");
    assert_eq!(run["files"]["system-prompt.md"], "Be terse.");
    // Ran in the shared Claude directory (Claude keeps a project per directory), its files
    // and a private TMPDIR in the job's own work dir; that is gone now.
    let cwd = run["cwd"].as_str().unwrap();
    assert!(cwd.ends_with("/work/.claude-cwd"), "{cwd}");
    assert!(run["env"]["TMPDIR"].as_str().unwrap().starts_with(&work));
    assert!(!Path::new(&work).exists());
    // Debug: allowlisted keys, prompt never included.
    let d = o.debug.unwrap();
    let allowed = [
        "provider_id",
        "command",
        "args",
        "command_line",
        "work_dir",
        "prompt_chars",
        "json_schema_chars",
        "timeout_ms",
        "output_mode",
        "output_path",
        "files",
        "stdout",
        "stdout_truncated",
        "stdout_bytes",
        "stderr",
        "stderr_truncated",
        "stderr_bytes",
        "exit_code",
        "duration_ms",
        "timed_out",
        "error_summary",
    ];
    for k in d.as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "unexpected debug key {k}");
    }
    assert_eq!(d["timeout_ms"], 110_000);
    assert_eq!(d["prompt_chars"], 24);
    assert_eq!(d["output_mode"], "stream-json");
    assert!(!d.to_string().contains("Classify this ticket"));
    assert!(!d.to_string().contains("Be terse"));
    assert_eq!(claude_status(&reg), Status::Healthy);
}

#[test]
fn claude_text_run_on_an_old_cli() {
    let s = Scratch::new("claude-text");
    let reg = s.registry(
        &[
            ("FAKE_CLI_HELP", "fail"),
            ("FAKE_CLI_TEXT", "Old pond, frog"),
        ],
        &[],
        &[],
    );
    let o = run_job(
        &reg,
        "job-c2",
        json!({"prompt": "Write a haiku", "model": "__default__", "output_format": "text"}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(r["output"], json!({"text": "Old pond, frog"}));
    assert_eq!(r["usage"], Value::Null);
    assert_eq!(
        argv(&s.runs()[0]),
        strs(&["--print", "--output-format=text", "--allowedTools="])
    );
    assert_eq!(s.runs()[0]["stdin"], "Write a haiku");
}

#[test]
fn codex_file_mode_argv_schema_file_and_result() {
    let s = Scratch::new("codex-file");
    let reg = s.registry(&[], &[("FAKE_CLI_RESPONSE", r#"{"label":"billing"}"#)], &[]);
    let schema = json!({"type":"object","required":["label"],
        "properties":{"label":{"type":"string"},"meta":{"type":"object","properties":{"x":{"type":"number"}},"additionalProperties":true}}});
    let o = run_job(
        &reg,
        "job-x1",
        json!({"prompt": "Classify this ticket ...", "model": "gpt-5-codex", "provider": "codex",
               "json_schema": schema, "append_system_prompt": "Be terse.", "reasoning_effort": "high",
               "timeout_ms": 90000}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(r["output"], json!({"label": "billing"}));
    assert_eq!(r["usage"], Value::Null);
    let run = &s.runs()[0];
    assert_eq!(
        argv(run),
        strs(&[
            "exec",
            "--sandbox=read-only",
            "--skip-git-repo-check",
            "--model=gpt-5-codex",
            "--config=model_reasoning_effort=\"high\"",
            "--config=features.shell_tool=false",
            "--config=web_search=\"disabled\"",
            "--ephemeral",
            "--output-schema=schema.json",
            "--output-last-message=output.json",
            "-"
        ])
    );
    assert_eq!(run["stdin"], "Classify this ticket ...\n\nBe terse.");
    let written: Value =
        serde_json::from_str(run["files"]["schema.json"].as_str().unwrap()).unwrap();
    assert_eq!(written["additionalProperties"], false);
    assert_eq!(written["properties"]["meta"]["additionalProperties"], false);
    assert_eq!(
        written["required"],
        json!(["label"]),
        "required is not filled in"
    );
    let d = o.debug.unwrap();
    assert_eq!(d["output_mode"], "file-json");
    assert_eq!(d["output_path"], "output.json");
    assert_eq!(d["files"], json!(["schema.json"]));
    assert_eq!(d["timeout_ms"], 90000);
}

#[test]
fn codex_jsonl_mode_when_schema_files_are_unsupported() {
    let s = Scratch::new("codex-jsonl");
    let reg = s.registry(
        &[],
        &[("FAKE_CLI_HELP", "old"), ("FAKE_CLI_FENCE", "1")],
        &[],
    );
    let o = run_job(
        &reg,
        "job-x2",
        json!({"prompt": "p", "model": "openai/gpt-5", "json_schema": {"type": "object"}}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(r["output"], json!({"message": "hi"}));
    assert_eq!(r["usage"]["output_tokens"], 122);
    // No -c on a CLI without --config; model passed verbatim.
    assert_eq!(
        argv(&s.runs()[0]),
        strs(&[
            "exec",
            "--sandbox=read-only",
            "--skip-git-repo-check",
            "--model=openai/gpt-5",
            "--json",
            "-"
        ])
    );
    assert_eq!(s.runs()[0]["stdin"], "p");
}

#[test]
fn codex_prompt_embedded_schema_and_tool_schema_mapping() {
    let s = Scratch::new("codex-inline");
    let reg = s.registry(
        &[],
        &[
            ("FAKE_CLI_HELP", "fail"),
            (
                "FAKE_CLI_RESPONSE",
                r#"{"name":"search","args_json":"{\"q\":\"rust\"}"}"#,
            ),
        ],
        &[],
    );
    let o = run_job(
        &reg,
        "job-x3",
        json!({"prompt": "Pick a tool", "model": "gpt-5", "append_system_prompt": "Sys",
               "json_schema": {"type":"object","properties":{"name":{"type":"string"},"args":{"type":"object"}}}}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(
        r["output"],
        json!({"name": "search", "args": {"q": "rust"}})
    );
    assert_eq!(r["raw"]["args_json"], "{\"q\":\"rust\"}");
    let a = argv(&s.runs()[0]);
    let prompt = s.runs()[0]["stdin"].as_str().unwrap().to_string();
    assert!(prompt.starts_with("Pick a tool\n\nSet args_json to a JSON-encoded string containing the arguments object.\n\nReturn STRICT JSON matching this schema:\n{"), "{prompt}");
    assert!(prompt.contains("\"args_json\":{\"type\":\"string\"}"));
    assert!(prompt.ends_with("\n\nSys"));
    assert_eq!(
        a,
        strs(&[
            "exec",
            "--sandbox=read-only",
            "--skip-git-repo-check",
            "--model=gpt-5",
            "-"
        ])
    );
}

#[test]
fn gemini_json_run_system_md_path_and_model() {
    let s = Scratch::new("gemini");
    let reg = s.registry(
        &[],
        &[],
        &[
            ("FAKE_CLI_RESPONSE", r#"{"label":"x"}"#),
            ("FAKE_CLI_FENCE", "1"),
        ],
    );
    let o = run_job(
        &reg,
        "job-g1",
        json!({"prompt": "Go", "model": "gemini-2.5-pro", "json_schema": {"type":"object"},
               "append_system_prompt": "Be terse."}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(r["output"], json!({"label": "x"}));
    assert_eq!(r["model"], "gemini-2.5-pro");
    assert_eq!(
        r["usage"]["models"]["gemini-2.5-pro"]["tokens"]["total"],
        5212
    );
    let run = &s.runs()[0];
    assert_eq!(
        gemini_argv(run),
        strs(&["--output-format=json", "--model=gemini-2.5-pro"])
    );
    assert_eq!(run["stdin"], "Go");
    assert_eq!(
        run["system_md"],
        "Be terse.\nReturn STRICT JSON only. Do not wrap in code fences.\nSchema:\n{\"type\":\"object\"}"
    );
    // Gemini runs in the shared directory; system.md is in the job's work dir (TMPDIR's parent).
    assert!(run["cwd"].as_str().unwrap().ends_with("/work/.gemini-cwd"));
    let tmp = Path::new(run["env"]["TMPDIR"].as_str().unwrap());
    assert_eq!(
        run["env"]["GEMINI_SYSTEM_MD"],
        format!("{}/system.md", tmp.parent().unwrap().display())
    );
    // As the wrapper saw it (python launchers may prepend their own directories).
    let path = run["env"]["FAKE_CLI_WRAPPER_PATH"].as_str().unwrap();
    assert!(
        path.starts_with(s.path().join("g").to_str().unwrap()),
        "{path}"
    );
}

#[test]
fn gemini_text_run_writes_an_empty_system_md() {
    let s = Scratch::new("gemini-text");
    let reg = s.registry(&[], &[], &[]);
    let o = run_job(
        &reg,
        "job-g2",
        json!({"prompt": "Hi", "model": "gemini-2.5-flash", "output_format": "text"}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    assert_eq!(
        o.result.unwrap()["output"]["text"],
        "Hello from the fake CLI."
    );
    assert_eq!(s.runs()[0]["system_md"], "");
}

// ---------------------------------------------------------------- diagnostic

#[test]
fn diagnostic_reports_the_claude_version() {
    let s = Scratch::new("diag");
    let reg = s.registry(&[], &[], &[]);
    let o = jobs::diagnostic::handle(&json!({"anything": 1}), &ctx(&reg, "d1"));
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
    for k in [
        "command",
        "stdout",
        "stderr",
        "exit_code",
        "duration_ms",
        "version",
    ] {
        assert!(keys.iter().any(|x| *x == k), "missing {k}: {r}");
    }
    assert_eq!(r["version"], "2.0.14 (Claude Code)");
    assert_eq!(r["stdout"], "2.0.14 (Claude Code)\n");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(
        r["command"],
        format!("{} --version", s.path().join("c/claude").display())
    );
}

/// `--version` runs of `name` recorded by the fakes.
fn version_runs(s: &Scratch, name: &str) -> usize {
    std::fs::read_to_string(s.record())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["name"] == name && r["argv"] == json!(["--version"]))
        .count()
}

#[test]
fn diagnostics_probe_every_cli_reuse_fresh_answers_and_share_one_run() {
    let s = Scratch::new("diag-cache");
    let reg = s.registry(&[], &[], &[]);
    assert_eq!(version_runs(&s, "claude"), 1, "discovery ran it once");
    // Fresh from discovery: no new run, and the result says so for every provider.
    let o = jobs::diagnostic::handle(&json!({}), &ctx(&reg, "c1"));
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(r["version"], "2.0.14 (Claude Code)");
    assert_eq!(r["cached"], true, "{r}");
    assert!(
        r["cached_reason"].as_str().unwrap().contains("discovery"),
        "{r}"
    );
    for (id, v) in [
        ("claude_code", "2.0.14 (Claude Code)"),
        ("codex", "codex-cli 0.46.0"),
        ("gemini", "0.9.0"),
    ] {
        assert_eq!(r["providers"][id]["version"], v, "{r}");
        assert_eq!(r["providers"][id]["cached"], true, "{r}");
    }
    assert_eq!(version_runs(&s, "claude"), 1);
    // `fresh`: every CLI runs again, in parallel, and nothing says cached.
    let o = jobs::diagnostic::handle(&json!({"fresh": true}), &ctx(&reg, "c2"));
    let r = o.result.unwrap();
    assert!(r.get("cached").is_none(), "{r}");
    assert_eq!(r["providers"]["gemini"]["exit_code"], 0, "{r}");
    assert_eq!(version_runs(&s, "claude"), 2);
    assert_eq!(version_runs(&s, "gemini"), 2);
    // A changed CLI file is run again; diagnostics arriving during that run share it.
    let claude = s.path().join("c/claude");
    let slow = std::fs::read_to_string(&claude).unwrap().replacen(
        "#!/bin/sh\n",
        "#!/bin/sh\nsleep 0.5\n",
        1,
    );
    std::fs::write(&claude, slow).unwrap();
    let before = version_runs(&s, "claude");
    let hs: Vec<_> = (0..4)
        .map(|i| {
            let c = ctx(&reg, &format!("c3-{i}"));
            std::thread::spawn(move || jobs::diagnostic::handle(&json!({}), &c))
        })
        .collect();
    let rs: Vec<Value> = hs
        .into_iter()
        .map(|h| h.join().unwrap().result.unwrap())
        .collect();
    assert_eq!(
        version_runs(&s, "claude"),
        before + 1,
        "one run for four jobs"
    );
    let shared = rs.iter().filter(|r| r["cached"] == true).count();
    assert_eq!(shared, 3, "{rs:?}");
    assert!(rs.iter().all(|r| r["version"] == "2.0.14 (Claude Code)"));
}

#[test]
fn diagnostic_failures_keep_the_keys_and_add_error() {
    let s = Scratch::new("diag-fail");
    let reg = s.registry(&[("FAKE_CLI_PROBE", "fail")], &[], &[]);
    let o = jobs::diagnostic::handle(&json!({}), &ctx(&reg, "d2"));
    assert_eq!(o.status, FinalStatus::Failed);
    let r = o.result.unwrap();
    assert_eq!(r["exit_code"], 1);
    assert!(
        r["error"].as_str().unwrap().starts_with("Command failed: "),
        "{r}"
    );
    assert!(r["stderr"].as_str().unwrap().contains("Cannot find module"));
    assert!(r.get("version").is_none());
    assert_eq!(o.error.as_deref(), r["error"].as_str());

    let missing = Arc::new(Registry::with_commands([
        s.path().join("none/claude"),
        s.path().join("none/codex"),
        s.path().join("none/gemini"),
    ]));
    let o = jobs::diagnostic::handle(&json!({}), &ctx(&missing, "d3"));
    let r = o.result.unwrap();
    assert_eq!(r["exit_code"], Value::Null);
    assert!(r["error"].as_str().unwrap().contains("not found"), "{r}");
}

#[test]
fn big_prompts_go_on_stdin_and_an_oversized_argument_is_named_with_health_untouched() {
    let s = Scratch::new("e2big");
    let reg = s.registry(&[], &[], &[]);
    // A prompt over Linux's 128 KiB argument limit runs: it is written to standard input.
    let prompt = "x".repeat(200 * 1024);
    let o = run_job(
        &reg,
        "big",
        json!({"prompt": prompt, "model": "claude-x", "output_format": "text"}),
    );
    assert_eq!(o.status, FinalStatus::Completed, "{o:?}");
    assert_eq!(s.runs()[0]["stdin"].as_str().unwrap().len(), 200 * 1024);
    // A JSON schema is still an argument: over the limit, the job fails and says so.
    let reg = s.registry(&[], &[], &[]);
    let o = run_job(
        &reg,
        "big2",
        json!({"prompt": "p", "model": "claude-x",
               "json_schema": {"type": "object", "description": "y".repeat(200 * 1024)}}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "prompt_too_large");
    assert!(m.contains("128 KiB"), "{m}");
    assert!(reg.health(ProviderId::Claude).is_none());
}

#[test]
fn secrets_echoed_by_a_failing_cli_are_masked_in_the_result() {
    let s = Scratch::new("mask");
    let reg = s.registry(
        &[("FAKE_CLI_MODE", "fail"), ("FAKE_CLI_STDERR", "using ANTHROPIC_API_KEY=sk-ant-abcdefghijklmnopqrstuvwx token=eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.c2lnbmF0dXJlX3g")],
        &[],
        &[],
    );
    let o = run_job(
        &reg,
        "m1",
        json!({"prompt": "p", "model": "claude-x", "output_format": "text"}),
    );
    let (k, _) = failure(&o);
    assert_eq!(k, "exit_status");
    let text = o.result.unwrap().to_string() + &o.error.unwrap() + &o.debug.unwrap().to_string();
    assert!(!text.contains("abcdefghijklmnop"), "{text}");
    assert!(!text.contains("eyJhbGciOiJIUzI1"), "{text}");
    assert!(text.contains("[REDACTED]"));
}

#[test]
fn a_probe_thread_that_panics_marks_only_its_provider() {
    let out = run_parallel(
        |id| {
            if id == ProviderId::Codex {
                panic!("odd output");
            }
            Ok::<_, String>(id.as_str())
        },
        |id, msg| Err(format!("{}: {msg}", id.as_str())),
    );
    assert_eq!(
        out,
        vec![
            Ok("claude_code"),
            Err("codex: odd output".into()),
            Ok("gemini")
        ]
    );
    let c = probe_crashed(ProviderId::Codex, "odd output");
    assert!(!c.available);
    assert!(c.error.unwrap().contains("internal error (odd output)"));
}
