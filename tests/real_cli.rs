//! The real provider CLIs — Claude Code, Codex and Gemini CLI, pinned in
//! tests/real-cli/package-lock.json (`(cd tests/real-cli && npm ci)`; CI's .ci/run does it) —
//! through the real daemon and the real local backend, on a host with no login (a fresh HOME)
//! and no network. Set PANORAMA_SKIP_NODE_TESTS=1 to skip on a machine without node.
//!
//! For every argv the gateway builds (model_run JSON and text; subagent restricted JSON,
//! elevated stream-json, a continuation of each; the full health check of `pair`) the real CLI
//! must get past its argument parsing — the failure is a login or the network, never usage —
//! and the job must fail within [`BOUND`] with the right `error_kind` (`auth` without a key,
//! `network` with a dummy key) and a message that says what to run.
//!
//! The success paths are covered by the fakes of tests/fixtures/bin (e2e_model_run.rs,
//! subagents_e2e.rs). The model-execution gate of subagent runs is opened the way a working
//! host opens it: `pair` validates healthy CLIs (the fakes); the daemon then runs the real
//! ones, as on a host whose login expired or whose network went away after pairing.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::connect::*;

/// The longest a failing job may take. The jobs' own timeouts are far longer (model runs
/// [`JOB_TIMEOUT_MS`], subagents 10 min), and left alone the CLIs take minutes (Claude retries
/// ~3 min, Codex forever, Gemini minutes): a job inside the bound failed by the gateway's
/// classification, not by a timeout. Measured on the 2-core development VM, all jobs of a
/// world at once, while other builds ran (load 15–40): Claude 10–26 s (auth) and 37–56 s
/// (network), Codex 4–6 s (auth) and 16–25 s (network), Gemini 26–41 s (auth) and 41–65 s
/// (network; its Node start-up alone takes several seconds there).
const BOUND: Duration = Duration::from_secs(90);

/// The model runs' timeout: longer than any wait for a CLI's own give-up, so a run that was not
/// stopped by the gateway's classification could not end inside [`BOUND`].
const JOB_TIMEOUT_MS: u64 = 300_000;

/// One world at a time: three daemons with a dozen Node and native CLIs each would only
/// compete for the same 2 cores.
static ONE_WORLD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Texts that mean a CLI rejected the argv the gateway gave it.
const USAGE_ERRORS: &[&str] = &[
    "unknown option",
    "unexpected argument",
    "unknown arguments",
    "not enough arguments",
    "invalid values",
    "usage:",
];

const DEFAULT_APPEND: &str = "You cannot write or interact with files in this environment. Include a brief \"Approach Summary\".";

/// The pinned CLIs' bin directory, or None when the tier is skipped.
fn real_bin() -> Option<PathBuf> {
    if std::env::var("PANORAMA_SKIP_NODE_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping the real-CLI tests: PANORAMA_SKIP_NODE_TESTS=1");
        return None;
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real-cli/node_modules/.bin");
    for name in ["claude", "codex", "gemini"] {
        assert!(
            bin.join(name).exists(),
            "{} is missing: run `(cd tests/real-cli && npm ci)`, or set PANORAMA_SKIP_NODE_TESTS=1 to skip this test",
            bin.join(name).display()
        );
    }
    Some(bin)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bin")
}

const CLI_VARS: [(&str, &str); 3] = [
    ("PANORAMA_CLAUDE_CLI", "claude"),
    ("PANORAMA_CODEX_CLI", "codex"),
    ("PANORAMA_GEMINI_CLI", "gemini"),
];

struct World {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
}

impl Drop for World {
    fn drop(&mut self) {
        kill_daemon_tree(&self.gw);
    }
}

/// One job the world runs, and what it must fail with.
struct Case {
    tag: String,
    job: String,
    /// The subagent run of a subagent_run job.
    run: Option<String>,
    kind: &'static str,
    provider: &'static str,
}

impl World {
    /// A paired gateway whose daemon runs the real CLIs from `bin` with `keys` in its
    /// environment, machine control enabled on the host and the team, ready for subagents.
    fn start(bin: &Path, keys: &[(&str, &str)]) -> World {
        let b = Backend::start();
        let mut gw = Gateway::new(&b);
        gw.set_env(
            "PATH",
            &format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        gw.set_env("SHELL", "");
        gw.set_env("PANORAMA_GATEWAY_CONCURRENCY", "16");
        for (k, v) in keys {
            gw.set_env(k, v);
        }
        // `pair` validates healthy CLIs (the fakes), as on a working host.
        for (var, name) in CLI_VARS {
            gw.set_env(var, &fixtures().join(name).display().to_string());
        }
        let (code, team) = b.pairing_code(None);
        gw.pair(&code);
        let gid = gw.gateway_id();
        let (rc, out, err) = gw.run(&["full-control", "enable"]);
        assert_eq!(rc, 0, "full-control enable: {out} {err}");
        b.admin(
            "PATCH",
            &format!("/rest/v1/team_gateways?id=eq.{gid}"),
            Some(json!({"full_control_enabled": true})),
        );
        for (var, name) in CLI_VARS {
            gw.set_env(var, &bin.join(name).display().to_string());
        }
        gw.start();
        let w = World { b, gw, team, gid };
        wait_for("a ready heartbeat", Duration::from_secs(120), || {
            let r = w.b.gateway_row(&w.gid);
            (r["capabilities"]["services"]["model_execution"]["ready"] == true
                && r["last_seen_at"].is_string())
            .then_some(())
        });
        w.gw.wait_team_full_control(true);
        w
    }

    fn model_run(&self, tag: &str, model: &str, json_mode: bool, prompt: &str) -> Case {
        let mut payload = json!({"model": model, "prompt": prompt, "timeout_ms": JOB_TIMEOUT_MS});
        if json_mode {
            payload["json_schema"] = json!({"type": "object", "required": ["message"],
                "properties": {"message": {"type": "string"}}});
        } else {
            payload["output_format"] = json!("text");
        }
        let job = self
            .b
            .insert_job(&self.team, &self.gid, "model_run", payload);
        Case {
            tag: tag.into(),
            job,
            run: None,
            kind: "",
            provider: "",
        }
    }

    /// A running subagent with an accepted running run; returns (subagent id, run id).
    fn subagent(&self, kind: &str, config: Value, prompt: &str, meta: Value) -> (String, String) {
        let sid = uuid();
        let rid = uuid();
        let mut metadata = json!({"current_run_id": rid});
        if let (Some(m), Value::Object(extra)) = (metadata.as_object_mut(), meta) {
            m.extend(extra);
        }
        let (st, v) = self.b.insert_row(
            "subagents",
            json!({"id": sid, "team_id": self.team, "gateway_id": self.gid,
                   "subagent_type": kind, "status": "running", "config": config,
                   "input": {"prompt": prompt, "run_id": rid, "run_sequence": 1},
                   "metadata": metadata}),
        );
        assert!((200..300).contains(&st), "insert subagent: {v}");
        self.accepted_run(&sid, &rid, 1, prompt);
        (sid, rid)
    }

    fn accepted_run(&self, sid: &str, rid: &str, seq: i64, prompt: &str) {
        let (st, v) = self.b.insert_row(
            "subagent_runs",
            json!({"id": rid, "subagent_id": sid, "team_id": self.team, "gateway_id": self.gid,
                   "run_sequence": seq, "status": "running", "prompt": prompt}),
        );
        assert!((200..300).contains(&st), "insert run: {v}");
    }

    /// What the backend writes to continue subagent `sid` (run 2) in `session`; returns the
    /// new run's id.
    fn continuation(&self, sid: &str, prompt: &str, session: &str) -> String {
        let rid2 = uuid();
        self.b.admin(
            "PATCH",
            &format!("/rest/v1/subagents?id=eq.{sid}"),
            Some(json!({"status": "running", "config": restricted(),
                        "input": {"prompt": prompt, "run_id": rid2, "run_sequence": 2},
                        "metadata": {"current_run_id": rid2, "session_id": session}})),
        );
        self.accepted_run(sid, &rid2, 2, prompt);
        rid2
    }

    fn run_job(&self, tag: &str, sid: &str, rid: &str) -> Case {
        let job = self.b.insert_job(
            &self.team,
            &self.gid,
            "subagent_run",
            json!({"subagent_id": sid, "run_id": rid}),
        );
        Case {
            tag: tag.into(),
            job,
            run: Some(rid.into()),
            kind: "",
            provider: "",
        }
    }

    fn row(&self, table: &str, id: &str) -> Value {
        self.b.admin(
            "GET",
            &format!("/rest/v1/{table}?select=*&id=eq.{id}"),
            None,
        )[0]
        .clone()
    }

    /// Waits for every case and checks it (all of them, then reports every failure); returns
    /// each case's time from job creation to its end.
    fn check_all(&self, cases: &[Case]) -> Vec<(String, f64)> {
        let mut times = Vec::new();
        let mut bad = Vec::new();
        for c in cases {
            let row = wait_job_done(&self.b, &c.job, BOUND + Duration::from_secs(30));
            let took = row_seconds(&row);
            times.push((c.tag.clone(), (took * 10.0).round() / 10.0));
            if let Err(e) = self.check(c, &row, took) {
                bad.push(e);
            }
        }
        assert!(
            bad.is_empty(),
            "{} case(s) failed:\n{}",
            bad.len(),
            bad.join("\n\n")
        );
        times
    }

    fn check(&self, c: &Case, row: &Value, took: f64) -> Result<(), String> {
        let tag = &c.tag;
        let err = row["error"].as_str().unwrap_or_default();
        let fail = |what: String| Err(format!("{tag}: {what}\n  error: {err}"));
        if row["status"] != "failed" {
            return fail(format!("status {}", row["status"]));
        }
        let kind = &row["result"]["error_kind"];
        if kind != c.kind {
            return fail(format!("error_kind {kind}, wanted {}", c.kind));
        }
        let all = row.to_string().to_lowercase();
        if let Some(u) = USAGE_ERRORS.iter().find(|u| all.contains(**u)) {
            return fail(format!("the CLI rejected its argv ({u}): {row}"));
        }
        if err.contains('\u{1b}') {
            return fail("terminal escapes in the message".into());
        }
        let wants: &[&str] = match (c.kind, c.provider) {
            ("auth", "claude") => &["ANTHROPIC_API_KEY", "log in"],
            ("auth", "codex") => &["codex login"],
            ("auth", "gemini") => &["GEMINI_API_KEY", "log in"],
            ("network", _) => &["cannot reach its API", "internet connection"],
            ("exit_status", "claude") => &["run panorama-gateway as a normal user"],
            _ => &[],
        };
        if let Some(w) = wants.iter().find(|w| !err.contains(**w)) {
            return fail(format!("the message does not say {w:?}"));
        }
        if took >= BOUND.as_secs_f64() {
            return fail(format!(
                "failed after {took:.1} s (bound {} s)",
                BOUND.as_secs()
            ));
        }
        if let Some(rid) = &c.run {
            let run = self.row("subagent_runs", rid);
            if run["status"] != "failed" || run["error"] != err {
                return fail(format!("the run does not keep the reason: {run}"));
            }
        }
        eprintln!("{tag}: {} in {took:.1} s: {err}", c.kind);
        Ok(())
    }
}

/// Seconds from the job's creation to its last update.
fn row_seconds(row: &Value) -> f64 {
    let t = |k: &str| {
        let s = row[k].as_str().unwrap_or_default();
        // `…THH:MM:SS.ffffff+00:00`: seconds of the day are enough (jobs last < 1 h here).
        let time = s.split('T').nth(1).unwrap_or("0:0:0");
        let mut p = time.split(['+', 'Z']).next().unwrap_or("0:0:0").split(':');
        let h: f64 = p.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
        let m: f64 = p.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
        let s: f64 = p.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
        h * 3600.0 + m * 60.0 + s
    };
    let d = t("updated_at") - t("created_at");
    if d < 0.0 {
        d + 86_400.0
    } else {
        d
    }
}

fn restricted() -> Value {
    json!({"output_format": "json", "full_control": false, "allowed_tools": ["WebSearch"],
           "permission_mode": "dontAsk", "append_system_prompt": DEFAULT_APPEND,
           "timeout_ms": 600_000})
}

fn elevated() -> Value {
    json!({"output_format": "stream-json", "full_control": true, "timeout_ms": 600_000})
}

const PROVIDERS: [(&str, &str, &str); 3] = [
    ("claude", "claude-sonnet-4-5", "claude_code_gateway"),
    ("codex", "gpt-5-codex", "codex_gateway"),
    ("gemini", "gemini-2.5-pro", "gemini_gateway"),
];

/// Every model_run mode and subagent mode of each of `providers`, at once.
fn all_cases(w: &World, providers: &[&str], kind: &'static str, prompt: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for (p, model, sub_kind) in PROVIDERS {
        if !providers.contains(&p) {
            continue;
        }
        for (mode, json_mode) in [("json", true), ("text", false)] {
            let mut c = w.model_run(&format!("{p}-model-{mode}"), model, json_mode, prompt);
            c.kind = kind;
            c.provider = p;
            cases.push(c);
        }
        for (mode, config) in [("restricted", restricted()), ("elevated", elevated())] {
            let (sid, rid) = w.subagent(sub_kind, config, prompt, json!({}));
            let mut c = w.run_job(&format!("{p}-subagent-{mode}"), &sid, &rid);
            c.kind = kind;
            // SAFETY: geteuid has no preconditions.
            if p == "claude" && mode == "elevated" && unsafe { libc::geteuid() } == 0 {
                // Claude Code refuses full permissions as root, before any login check.
                c.kind = "exit_status";
            }
            c.provider = p;
            cases.push(c);
        }
    }
    cases
}

/// Every file and directory under `dir`, as paths.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn without_a_login_every_run_fails_fast_as_auth() {
    let Some(bin) = real_bin() else { return };
    let _one = ONE_WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::start(&bin, &[]);
    let started = Instant::now();
    let cases = all_cases(
        &w,
        &["claude", "codex", "gemini"],
        "auth",
        "- fix the login bug, then summarise the release notes",
    );
    let times = w.check_all(&cases);
    eprintln!(
        "no login: {} jobs failed in {:.1} s: {times:?}",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    // No CLI state per job in the CLIs' homes: nothing there names a job's work directory
    // (Gemini keys its state by directory, Claude its projects), and Codex keeps no session
    // files (--ephemeral).
    let home = tree(&w.gw.home());
    for c in cases.iter().filter(|c| c.run.is_none()) {
        let hit: Vec<_> = home
            .iter()
            .filter(|p| p.to_string_lossy().contains(&c.job))
            .collect();
        assert!(hit.is_empty(), "{}: per-job CLI state: {hit:?}", c.tag);
    }
    let sessions: Vec<_> = home
        .iter()
        .filter(|p| p.starts_with(w.gw.home().join(".codex/sessions")) && p.is_file())
        .collect();
    assert!(sessions.is_empty(), "codex session files: {sessions:?}");
}

#[test]
fn a_claude_continuation_finds_its_session() {
    let Some(bin) = real_bin() else { return };
    let _one = ONE_WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::start(&bin, &[]);
    let session = uuid();
    let prompt = "- go on with the login fix";
    let mut config = restricted();
    config["session_id"] = json!(session);
    let (sid, rid) = w.subagent("claude_code_gateway", config, prompt, json!({}));
    let mut first = w.run_job("claude-first-run", &sid, &rid);
    first.kind = "auth";
    first.provider = "claude";
    w.check_all(&[first]);
    // The backend reopens the subagent for a continuation of that session: without the
    // session Claude would answer "No conversation found with session ID" (exit_status);
    // finding it, it stops at the login like the first run.
    let rid2 = w.continuation(&sid, prompt, &session);
    let mut second = w.run_job("claude-continuation", &sid, &rid2);
    second.kind = "auth";
    second.provider = "claude";
    w.check_all(&[second]);
}

/// Codex and Gemini continue natively (the reference refused both). With a dummy key (Codex
/// runs only with a key or a login; Gemini records a session only once it has an auth method)
/// the first run leaves its session and fails as `network`; the continuation resumes it —
/// `codex exec … resume <id> -`, `gemini --resume=<id>` from the subagent's work directory —
/// and fails as `network` too. A session the CLI did not find would be `exit_status` ("no
/// rollout found for thread id", "Invalid session identifier"), a bad argv a usage error.
#[test]
fn codex_and_gemini_continuations_find_their_sessions() {
    let Some(bin) = real_bin() else { return };
    let _one = ONE_WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::start(
        &bin,
        &[
            ("OPENAI_API_KEY", "sk-proj-realcli-dummy-key-0000"),
            ("GEMINI_API_KEY", "AIza-realcli-dummy-key-0000"),
        ],
    );
    let prompt = "- go on with the login fix";
    // Gemini's first run names its session (config.session_id → --session-id).
    let gsession = uuid();
    let mut gconfig = restricted();
    gconfig["session_id"] = json!(gsession);
    let (gsid, grid) = w.subagent("gemini_gateway", gconfig, prompt, json!({}));
    let (csid, crid) = w.subagent("codex_gateway", restricted(), prompt, json!({}));
    let mut first = [
        w.run_job("codex-first-run", &csid, &crid),
        w.run_job("gemini-first-run", &gsid, &grid),
    ];
    for (c, p) in first.iter_mut().zip(["codex", "gemini"]) {
        c.kind = "network";
        c.provider = p;
    }
    w.check_all(&first);
    // Codex's thread id is only printed (`thread.started`); a failed run reports none, so the
    // test reads it from the session file the run left: ~/.codex/sessions/…/rollout-…-<id>.jsonl.
    let home = tree(&w.gw.home());
    let rollouts: Vec<String> = home
        .iter()
        .filter(|p| p.starts_with(w.gw.home().join(".codex/sessions")) && p.is_file())
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .strip_suffix(".jsonl")
                .map(String::from)
        })
        .collect();
    assert_eq!(rollouts.len(), 1, "one codex session: {rollouts:?}");
    let csession = rollouts[0][rollouts[0].len() - 36..].to_string();
    // Gemini keeps the session in the project of the subagent's work directory. Without a
    // network it never got to record the prompt, which makes a session resumable: add the
    // prompt as a run that reached the API would have.
    let chat = home
        .iter()
        .find(|p| {
            p.parent().is_some_and(|d| d.ends_with("chats"))
                && p.to_string_lossy()
                    .ends_with(&format!("-{}.jsonl", &gsession[..8]))
        })
        .unwrap_or_else(|| panic!("no gemini chat for {gsession}: {home:?}"));
    let mut f = std::fs::OpenOptions::new().append(true).open(chat).unwrap();
    use std::io::Write;
    writeln!(
        f,
        "{}",
        json!({"id": "realcli-prompt", "timestamp": "2026-01-01T00:00:00.000Z",
               "type": "user", "content": [{"text": prompt}]})
    )
    .unwrap();
    let crid2 = w.continuation(&csid, prompt, &csession);
    let grid2 = w.continuation(&gsid, prompt, &gsession);
    let mut second = [
        w.run_job("codex-continuation", &csid, &crid2),
        w.run_job("gemini-continuation", &gsid, &grid2),
    ];
    for (c, p) in second.iter_mut().zip(["codex", "gemini"]) {
        c.kind = "network";
        c.provider = p;
    }
    w.check_all(&second);
    let command = |rid: &str| w.row("subagent_runs", rid)["metadata"]["command"].clone();
    let c = command(&crid2);
    assert!(
        c.as_str()
            .unwrap()
            .contains(&format!(" resume {csession} ")),
        "{c}"
    );
    let g = command(&grid2);
    assert!(
        g.as_str()
            .unwrap()
            .contains(&format!("--resume={gsession}")),
        "{g}"
    );
    // The continuation resumed, it did not start another session.
    let after: Vec<_> = tree(&w.gw.home().join(".codex/sessions"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
}

#[test]
fn with_a_dummy_key_and_no_network_every_run_fails_fast_as_network() {
    let Some(bin) = real_bin() else { return };
    let _one = ONE_WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::start(
        &bin,
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-api03-realcli-dummy-key-0000"),
            ("OPENAI_API_KEY", "sk-proj-realcli-dummy-key-0000"),
            ("GEMINI_API_KEY", "AIza-realcli-dummy-key-0000"),
        ],
    );
    let started = Instant::now();
    let cases = all_cases(
        &w,
        &["claude", "codex", "gemini"],
        "network",
        "- fix the login bug, then summarise the release notes",
    );
    let times = w.check_all(&cases);
    eprintln!(
        "dummy key: {} jobs failed in {:.1} s: {times:?}",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    // With a key Gemini records a chat log for every run. Model runs share one project (the
    // gateway's `.gemini-cwd`), where none may pile up: the gateway removes each run's.
    let tmp = w.gw.home().join(".gemini/tmp");
    let mut shared = 0;
    for project in std::fs::read_dir(&tmp).unwrap().flatten() {
        let root =
            std::fs::read_to_string(project.path().join(".project_root")).unwrap_or_default();
        if !root.trim_end().ends_with(".gemini-cwd") {
            continue;
        }
        shared += 1;
        let chats: Vec<_> = tree(&project.path().join("chats"));
        assert!(chats.is_empty(), "model-run chat logs left: {chats:?}");
    }
    assert_eq!(shared, 1, "the model runs' project in {}", tmp.display());
}
