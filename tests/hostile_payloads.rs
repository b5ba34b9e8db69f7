//! Hostile payloads end to end (issue 8): model_run and subagent_run jobs whose fields carry
//! options (`--mcp-config=…`, `-c`, `--`, `-p`), newlines and NUL, through the real daemon and
//! the local backend, against the fake CLIs of tests/fixtures/bin. The fakes act on their argv
//! as the real CLIs do (claude starts the command of any `--mcp-config`, codex of any
//! `--config mcp_servers.*`, an agent given machine control runs the prompt's `RUN:` lines), so
//! a value that became an option, or a restricted run that got machine control, leaves a marker
//! file. Asserted: no marker, each bad job fails with a message naming its field or the layer
//! that is off, provider health is untouched, and the daemon serves the next job.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::connect::*;

const JOB_WAIT: Duration = Duration::from_secs(60);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bin");

/// `--mcp-config` JSON whose "server" touches `marker`.
fn mcp(marker: &Path) -> String {
    json!({"mcpServers": {"x": {"command": "sh", "args": ["-c", format!("touch {}", marker.display())]}}})
        .to_string()
}

struct World {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
    rec: PathBuf,
    marks: PathBuf,
    bin: PathBuf,
}

impl World {
    fn new() -> World {
        let b = Backend::start();
        let mut gw = Gateway::new(&b);
        let (root, bin, rec) = fake_cli_dirs(&mut gw);
        // Every CLI run is recorded here (hostile prompts are exact: no `@set:` tokens).
        gw.set_env(
            "FAKE_CLI_RECORD",
            &rec.join("all.jsonl").display().to_string(),
        );
        let marks = root.join("markers");
        std::fs::create_dir_all(&marks).unwrap();
        let (code, team) = b.pairing_code(None);
        gw.pair(&code);
        let gid = gw.gateway_id();
        let (rc, out, err) = gw.run(&["full-control", "enable"]);
        assert_eq!(rc, 0, "full-control enable: {out} {err}");
        for n in ["claude", "codex", "gemini"] {
            fake_cli_wrapper(&bin, n, None);
        }
        World {
            b,
            gw,
            team,
            gid,
            rec,
            marks,
            bin,
        }
    }

    fn start(&mut self) {
        let c = |n: &str| self.bin.join(n).display().to_string();
        let (a, x, g) = (c("claude"), c("codex"), c("gemini"));
        self.gw
            .start_with(&["--claude-cli", &a, "--codex-cli", &x, "--gemini-cli", &g]);
        let gid = self.gid.clone();
        wait_for("a ready heartbeat", Duration::from_secs(30), || {
            let r = self.b.gateway_row(&gid);
            (r["capabilities"]["services"]["model_execution"]["ready"] == true
                && r["last_seen_at"].is_string())
            .then_some(())
        });
    }

    fn marker(&self, tag: &str) -> PathBuf {
        self.marks.join(tag)
    }

    fn prompt(&self, tag: &str, text: &str) -> String {
        fake_cli_prompt(&self.rec, tag, text, &[])
    }

    /// CLI runs (not probes) whose argv or standard input mention `needle`.
    fn runs_with(&self, needle: &str) -> Vec<Value> {
        fake_cli_records(&self.rec, "all")
            .into_iter()
            .filter(|r| {
                r["stdin"].as_str().unwrap_or("").contains(needle)
                    || r["argv"].to_string().contains(needle)
            })
            .collect()
    }

    fn model_run(&self, payload: Value) -> String {
        self.b
            .insert_job(&self.team, &self.gid, "model_run", payload)
    }

    /// A running subagent of `kind` with its accepted run, and its queued run job.
    fn subagent(&self, kind: &str, config: Value, prompt: &str, meta: Value) -> (String, String) {
        let sid = uuid();
        let rid = uuid();
        let mut metadata = json!({"current_run_id": rid});
        for (k, v) in meta.as_object().unwrap() {
            metadata[k] = v.clone();
        }
        let (st, v) = self.b.insert_row(
            "subagents",
            json!({"id": sid, "team_id": self.team, "gateway_id": self.gid,
                   "subagent_type": kind, "status": "running", "config": config,
                   "input": {"prompt": prompt, "run_id": rid, "run_sequence": 1},
                   "metadata": metadata}),
        );
        assert!((200..300).contains(&st), "insert subagent: {v}");
        let (st, v) = self.b.insert_row(
            "subagent_runs",
            json!({"id": rid, "subagent_id": sid, "team_id": self.team, "gateway_id": self.gid,
                   "run_sequence": 1, "status": "running", "prompt": prompt}),
        );
        assert!((200..300).contains(&st), "insert run: {v}");
        let job = self.b.insert_job(
            &self.team,
            &self.gid,
            "subagent_run",
            json!({"subagent_id": sid, "run_id": rid}),
        );
        (job, rid)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        kill_daemon_tree(&self.gw);
    }
}

fn restricted() -> Value {
    json!({"output_format": "json", "full_control": false, "allowed_tools": ["WebSearch"],
           "permission_mode": "dontAsk"})
}

/// The fakes do act on a hostile argv: without this, "no marker" would prove nothing.
#[test]
fn the_fake_clis_act_on_options_wherever_they_appear() {
    let t = TempDir::new("hostile-fake");
    let run = |name: &str, args: &[String], stdin: &str| {
        let mut c = Command::new(Path::new(FIXTURES).join(name));
        c.args(args)
            .current_dir(t.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut ch = c.spawn().unwrap();
        use std::io::Write;
        ch.stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        ch.wait().unwrap();
    };
    // The old argv: the prompt was the last argument, and claude parsed it as an option.
    let m1 = t.path().join("m1");
    run(
        "claude",
        &["--print".into(), format!("--mcp-config={}", mcp(&m1))],
        "",
    );
    assert!(m1.exists(), "claude's --mcp-config=… starts its server");
    let m2 = t.path().join("m2");
    run(
        "claude",
        &[
            "--betas".into(),
            "b".into(),
            "--mcp-config".into(),
            mcp(&m2),
        ],
        "",
    );
    assert!(m2.exists(), "a split --mcp-config after a variadic");
    let m3 = t.path().join("m3");
    run(
        "codex",
        &[
            "exec".into(),
            "-c".into(),
            "mcp_servers.x.command=\"sh\"".into(),
            "-c".into(),
            format!("mcp_servers.x.args=[\"-c\",\"touch {}\"]", m3.display()),
            "-".into(),
        ],
        "",
    );
    assert!(m3.exists(), "codex's -c mcp_servers.*");
    let m4 = t.path().join("m4");
    run(
        "claude",
        &[
            "--print".into(),
            "--permission-mode=bypassPermissions".into(),
        ],
        &format!("RUN: touch {}", m4.display()),
    );
    assert!(
        m4.exists(),
        "an elevated agent runs the prompt's RUN: lines"
    );
    let m5 = t.path().join("m5");
    run(
        "gemini",
        &["--approval-mode=plan".into()],
        &format!("RUN: touch {}", m5.display()),
    );
    assert!(!m5.exists(), "a restricted agent does not");
}

fn assert_failed_naming(row: &Value, needle: &str) {
    assert_eq!(row["status"], "failed", "{row}");
    let err = row["error"].as_str().unwrap_or_default();
    assert!(err.contains(needle), "error does not name {needle}: {err}");
}

#[test]
fn hostile_payloads_run_nothing_fail_their_job_and_the_daemon_goes_on() {
    let mut w = World::new();
    let schema = json!({"type": "object", "properties": {"message": {"type": "string"}}});
    let mut expect_ok: Vec<(String, PathBuf)> = Vec::new();
    let mut expect_fail: Vec<(String, &str, PathBuf)> = Vec::new();

    // model_run: the prompt that ran `sh -c` on the host, for each CLI; it is now text on
    // standard input, the run completes, and nothing starts.
    for (model, cli) in [
        ("claude-sonnet-4-5", "claude"),
        ("gpt-5-codex", "codex"),
        ("gemini-2.5-pro", "gemini"),
    ] {
        let tag = format!("mr-prompt-{cli}");
        let m = w.marker(&tag);
        let hostile = match cli {
            "codex" => format!(
                "--config=mcp_servers.x.command=\"sh\"\n-c\nmcp_servers.x.args=[\"-c\",\"touch {}\"]",
                m.display()
            ),
            _ => format!("--mcp-config={}", mcp(&m)),
        };
        let j = w.model_run(json!({"model": model, "json_schema": schema,
            "prompt": hostile,
            "append_system_prompt": format!("--mcp-config={}\n-p\n--", mcp(&m))}));
        expect_ok.push((j, m));
    }
    // model_run fields that must be refused, naming the field, before any CLI starts.
    for (field, value) in [
        ("model", "--mcp-config={}".to_string()),
        ("model", "-c".to_string()),
        ("prompt", "hello\0world".to_string()),
        ("timeout_ms", "1e-300".to_string()),
    ] {
        let tag = format!("mr-{field}-{}", expect_fail.len());
        let m = w.marker(&tag);
        let mut p = json!({"model": "claude-sonnet-4-5", "output_format": "text",
                           "prompt": format!("{tag} --mcp-config={}", mcp(&m))});
        p[field] = match field {
            "timeout_ms" => json!(1e-300),
            "prompt" => json!(format!("{tag}{value}")),
            _ => json!(value),
        };
        expect_fail.push((w.model_run(p), field, m));
    }

    // subagent_run, restricted: every field that reaches the command line.
    let sub_cases: Vec<(&str, Value, Value, &str)> = vec![
        (
            "config.betas",
            json!({"betas": ["--mcp-config={}"]}),
            json!({}),
            "config.betas",
        ),
        (
            "config.resume_session_id",
            json!({"resume_session_id": "--mcp-config={}"}),
            json!({}),
            "config.resume_session_id",
        ),
        (
            "metadata.session_id",
            json!({}),
            json!({"session_id": "--mcp-config={}"}),
            "metadata.session_id",
        ),
        (
            "config.model",
            json!({"model": "-p"}),
            json!({}),
            "config.model",
        ),
        (
            "config.allowed_tools",
            json!({"allowed_tools": ["WebSearch", "--mcp-config={}"]}),
            json!({}),
            "config.allowed_tools",
        ),
        (
            "config.session_id",
            json!({"session_id": "--"}),
            json!({}),
            "config.session_id",
        ),
        (
            "config.input_format",
            json!({"input_format": "stream-json"}),
            json!({}),
            "config.input_format",
        ),
        // Restricted means restricted: what runs commands or writes files is refused,
        // naming the layer that is off.
        (
            "bypass",
            json!({"permission_mode": "bypassPermissions", "allowed_tools": ["Bash", "Write", "Edit"]}),
            json!({}),
            "config.full_control is not true",
        ),
        (
            "accept-edits",
            json!({"permission_mode": "acceptEdits"}),
            json!({}),
            "config.full_control is not true",
        ),
        (
            "bash-tool",
            json!({"allowed_tools": "WebSearch,Bash"}),
            json!({}),
            "config.full_control is not true",
        ),
    ];
    let mut sub_fail: Vec<(String, String, &str, PathBuf)> = Vec::new();
    for (i, (label, cfg, meta, needle)) in sub_cases.iter().enumerate() {
        let tag = format!("sub-{i}");
        let m = w.marker(&tag);
        let mut config = restricted();
        for (k, v) in cfg.as_object().unwrap() {
            let v = serde_json::to_string(v).unwrap().replace(
                "--mcp-config={}",
                &format!("--mcp-config={}", mcp(&m).replace('"', "\\\"")),
            );
            config[k] = serde_json::from_str(&v).unwrap();
        }
        let meta = serde_json::from_str(&serde_json::to_string(meta).unwrap().replace(
            "--mcp-config={}",
            &format!("--mcp-config={}", mcp(&m).replace('"', "\\\"")),
        ))
        .unwrap();
        let prompt = format!("{tag}\nRUN: touch {}", m.display());
        let kind = ["claude_code_gateway", "codex_gateway", "gemini_gateway"][i % 3];
        let kind = if label.contains("session")
            || label.contains("betas")
            || *label == "config.input_format"
        {
            "claude_code_gateway"
        } else {
            kind
        };
        let (job, rid) = w.subagent(kind, config, &prompt, meta);
        sub_fail.push((job, rid, needle, m));
    }
    // A restricted run with a hostile prompt: text on standard input, the run completes.
    let tag = "sub-prompt";
    let m_prompt = w.marker(tag);
    let p = format!(
        "--mcp-config={}\nRUN: touch {}\n-p\n--",
        mcp(&m_prompt),
        m_prompt.display()
    );
    let (sub_ok, _) = w.subagent("claude_code_gateway", restricted(), &p, json!({}));

    w.start();

    for (j, m) in &expect_ok {
        let row = wait_job_done(&w.b, j, JOB_WAIT);
        assert_eq!(row["status"], "completed", "{row}");
        assert!(
            !m.exists(),
            "{} was created: a job value became an option",
            m.display()
        );
        let runs = w.runs_with(&m.display().to_string());
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(
            runs[0]["stdin"].as_str().unwrap().contains("mcp"),
            "{runs:?}"
        );
    }
    for (j, field, m) in &expect_fail {
        let row = wait_job_done(&w.b, j, JOB_WAIT);
        assert_failed_naming(&row, field);
        assert!(!m.exists());
        let tag = m.file_name().unwrap().to_str().unwrap();
        assert_eq!(w.runs_with(tag).len(), 0, "{tag}: no CLI was started");
    }
    for (j, rid, needle, m) in &sub_fail {
        let row = wait_job_done(&w.b, j, JOB_WAIT);
        assert_failed_naming(&row, needle);
        let run = w.b.admin(
            "GET",
            &format!("/rest/v1/subagent_runs?select=*&id=eq.{rid}"),
            None,
        )[0]
        .clone();
        assert_eq!(run["status"], "failed", "{run}");
        assert!(run["error"].as_str().unwrap().contains(*needle), "{run}");
        assert!(!m.exists(), "{} was created", m.display());
        assert_eq!(
            w.runs_with(&m.display().to_string()).len(),
            0,
            "no CLI was started"
        );
    }
    let row = wait_job_done(&w.b, &sub_ok, JOB_WAIT);
    assert_eq!(row["status"], "completed", "{row}");
    assert!(!m_prompt.exists());
    let rec = &w.runs_with(&m_prompt.display().to_string())[0];
    assert!(
        rec["stdin"].as_str().unwrap().starts_with("--mcp-config="),
        "{rec}"
    );

    // Bad input never marked a provider unhealthy.
    let caps = w.b.gateway_row(&w.gid)["capabilities"]["providers"].clone();
    for p in ["claude_code", "codex", "gemini"] {
        assert_ne!(caps[p]["health"]["status"], "unhealthy", "{p}: {caps}");
    }

    // The daemon serves the next job.
    let tag = "after";
    let j = w.model_run(
        json!({"model": "claude-sonnet-4-5", "output_format": "text",
                               "prompt": w.prompt(tag, "still there?")}),
    );
    let row = wait_job_done(&w.b, &j, JOB_WAIT);
    assert_eq!(row["status"], "completed", "{row}");

    // With all three machine-control layers on, the same fakes do run commands: the
    // markers above would have shown a leak.
    w.b.set_team_full_control(&w.gid, true);
    w.gw.wait_team_full_control(true);
    let tag = "elevated";
    let m = w.marker(tag);
    let mut cfg = restricted();
    cfg["full_control"] = json!(true);
    let (j, _) = w.subagent(
        "claude_code_gateway",
        cfg,
        &format!("RUN: touch {}", m.display()),
        json!({}),
    );
    let row = wait_job_done(&w.b, &j, JOB_WAIT);
    assert_eq!(row["status"], "completed", "{row}");
    assert!(m.exists(), "the elevated run acted");
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Issue 8 point 3: cancel jobs no longer get a thread each. Hundreds of them against a slow
/// backend (duplicates of one target among them) run on the small fixed cancel pool: the
/// daemon's thread count stays flat, and every one of them still completes.
#[test]
fn a_flood_of_cancel_jobs_runs_on_a_bounded_pool_and_all_complete() {
    let mut w = World::new();
    w.gw.set_env("PANORAMA_GATEWAY_RECONCILE_MS", "300");
    w.start();
    let pid = w.gw.pid();
    let base = threads_of(pid);
    assert!(base > 0);
    // Every REST call waits 25 ms for a while: cancels pile up.
    w.b.fault(json!({"delay_next": {"count": 1500, "ms": 25, "paths": "rest"}}));
    let mut ids = Vec::new();
    for i in 0..150 {
        // Every third one aims at the same run: those are coalesced.
        let sid = if i % 3 == 0 {
            "00000000-0000-4000-8000-000000000001".to_string()
        } else {
            uuid()
        };
        ids.push(w.b.insert_job(
            &w.team,
            &w.gid,
            "subagent_cancel",
            json!({"subagent_id": sid, "run_id": "00000000-0000-4000-8000-0000000000aa"}),
        ));
    }
    let mut most = 0;
    wait_for(
        "every cancel job to complete",
        Duration::from_secs(180),
        || {
            most = most.max(threads_of(pid));
            let done =
                w.b.jobs(&w.gid)
                    .iter()
                    .filter(|j| {
                        j["job_type"] == "subagent_cancel"
                            && j["status"] != "queued"
                            && j["status"] != "running"
                    })
                    .count();
            (done == ids.len()).then_some(())
        },
    );
    // The pool's threads exist from the start: nothing grows with the number of cancels.
    assert!(
        most <= base + 2,
        "threads grew from {base} to {most} under {} cancel jobs",
        ids.len()
    );
    for id in &ids {
        let j = w.b.job(id);
        assert_eq!(j["status"], "completed", "{j}");
    }
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
}

/// The real CLIs' bin directory (the pinned real-CLI tier, `tests/real-cli`, or
/// `PANORAMA_REAL_CLI_BIN`), or None where they are not installed.
fn real_cli_bin() -> Option<PathBuf> {
    if std::env::var("PANORAMA_SKIP_NODE_TESTS").as_deref() == Ok("1") {
        return None;
    }
    let bin = std::env::var_os("PANORAMA_REAL_CLI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real-cli/node_modules/.bin")
        });
    ["claude", "codex", "gemini"]
        .iter()
        .all(|n| bin.join(n).exists())
        .then_some(bin)
}

/// The hostile prompts against the real Claude Code, Codex and Gemini CLIs (no login, no
/// network: they fail at auth, on the network or at the job's timeout, never on their argv).
/// Nothing starts: no marker file, whatever the CLI did with the text on its standard input.
#[test]
fn hostile_prompts_start_nothing_in_the_real_clis() {
    let Some(bin) = real_cli_bin() else {
        eprintln!("skipped: the real CLIs are not installed (tests/real-cli: npm ci, or PANORAMA_REAL_CLI_BIN)");
        return;
    };
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (root, _, _) = fake_cli_dirs(&mut gw);
    let marks = root.join("markers");
    std::fs::create_dir_all(&marks).unwrap();
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    let c = |n: &str| bin.join(n).display().to_string();
    let (a, x, g) = (c("claude"), c("codex"), c("gemini"));
    gw.set_env(
        "PATH",
        &format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
    );
    gw.start_with(&["--claude-cli", &a, "--codex-cli", &x, "--gemini-cli", &g]);
    let _guard = KillTree(&gw);
    let mut jobs = Vec::new();
    for (model, cli) in [
        ("claude-sonnet-4-5", "claude"),
        ("gpt-5-codex", "codex"),
        ("gemini-2.5-pro", "gemini"),
    ] {
        let m = marks.join(cli);
        let hostile = match cli {
            "codex" => format!(
                "--config=mcp_servers.x.command=\"sh\"\n--config=mcp_servers.x.args=[\"-c\",\"touch {}\"]",
                m.display()
            ),
            "gemini" => format!("--yolo\nRUN: touch {}", m.display()),
            _ => format!("--mcp-config={}", mcp(&m)),
        };
        let j = b.insert_job(
            &team,
            &gid,
            "model_run",
            json!({"model": model, "output_format": "text", "prompt": hostile,
                   "append_system_prompt": format!("--mcp-config={}", mcp(&m)),
                   "timeout_ms": 40000}),
        );
        jobs.push((j, m));
    }
    for (j, m) in &jobs {
        // Without a login or a network the CLIs fail, or retry until the 40 s timeout; an MCP
        // server or a command would have started within the first seconds.
        let row = wait_job_done(&b, j, Duration::from_secs(150));
        assert_eq!(row["status"], "failed", "no login, no network: {row}");
        let kind = row["result"]["error_kind"].as_str().unwrap_or("");
        assert_ne!(kind, "", "{row}");
        let err = row["error"].as_str().unwrap_or("").to_lowercase();
        for usage in [
            "unknown option",
            "unexpected argument",
            "unknown arguments",
            "usage:",
        ] {
            assert!(!err.contains(usage), "the CLI rejected its argv: {err}");
        }
        assert!(!m.exists(), "{} was created by the real CLI", m.display());
    }
}

/// Kills the daemon's process tree when the test ends, also on failure.
struct KillTree<'a>(&'a Gateway);

impl Drop for KillTree<'_> {
    fn drop(&mut self) {
        kill_daemon_tree(self.0);
    }
}
