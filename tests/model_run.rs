//! End to end: `model_run` jobs through the real gateway daemon (`start --foreground`) and the
//! real local backend, with the fake provider CLIs of tests/fixtures/bin given by
//! `--claude-cli`/`--codex-cli`/`--gemini-cli`. What is asserted is what a user sees: the
//! `gateway_jobs` row (status, result, error, debug) and what the CLI received (argv, env,
//! files), recorded by the fakes.
//!
//! The fakes read their behaviour from `FAKE_CLI_*` variables, which a daemon passes to every
//! child alike. So each CLI is a small wrapper script that takes `@set:FAKE_CLI_X=value@`
//! tokens from the prompt (the last argument) into its environment before it execs the fake:
//! one daemon runs many scenarios at once, each job with its own mode and its own record file.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::connect::*;

const JOB_WAIT: Duration = Duration::from_secs(40);

/// Settings and secrets in the daemon's environment that no CLI may see (PROTOCOL.md §11).
/// The backend URL and anon key are added per world; `PANORAMA_GATEWAY_*` come from the
/// harness (AUTO_RESTART, RECONCILE_MS, HEARTBEAT_MS) plus one here.
const DAEMON_SECRETS: &[(&str, &str)] = &[
    (
        "DATABASE_URL",
        "postgres://e2e:e2e-db-password@127.0.0.1:1/db",
    ),
    ("DATABASE_CA_CERT", "e2e-ca-cert"),
    ("SUPABASE_SERVICE_ROLE_KEY", "e2e-service-role-secret"),
    ("SUPABASE_SECRET_KEY", "e2e-supabase-secret"),
    ("SUPABASE_PUBLISHABLE_KEY", "e2e-publishable"),
    ("PANORAMA_EGRESS_PROXY_TOKEN", "e2e-egress-token-secret"),
    ("PANORAMA_EGRESS_PROXY_HOST", "127.0.0.1:9"),
    ("OPENROUTER_API_KEY", "e2e-openrouter-secret"),
    // Issue 8: names a fixed list let through; the rule scrubs them by family.
    ("SUPABASE_JWT_SECRET", "e2e-jwt-secret-value"),
    ("SUPABASE_ACCESS_TOKEN", "e2e-supabase-access-token"),
    ("SUPABASE_DB_PASSWORD", "e2e-supabase-db-password"),
    ("SUPABASE_SERVICE_KEY", "e2e-supabase-service-key"),
    ("PANORAMA_SERVICE_ROLE_KEY", "e2e-panorama-service-role"),
    ("PANORAMA_ACCESS_TOKEN", "e2e-panorama-access-token"),
    ("POSTGRES_URL", "postgres://e2e:pg-password@127.0.0.1:1/x"),
    ("ALL_PROXY", "socks5://e2e-proxy-user:secret@127.0.0.1:9"),
    ("BRAVE_SEARCH_API_KEY", "e2e-brave-secret"),
    ("HTTP_PROXY", "http://127.0.0.1:9"),
    ("http_proxy", "http://127.0.0.1:9"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ("https_proxy", "http://127.0.0.1:9"),
    ("PANORAMA_GATEWAY_E2E_SECRET", "e2e-gateway-setting-secret"),
];

/// Passed through to the CLIs (they need their own keys).
/// Set only by the env file the daemon loads (`PANORAMA_ENV_FILE`).
const ENV_FILE_ONLY: &str = "E2E_ENV_FILE_SETTING";

const PASSED_THROUGH: &[(&str, &str)] = &[
    ("ANTHROPIC_API_KEY", "e2e-anthropic-key"),
    ("E2E_PASS_THROUGH", "kept"),
];

/// A JSON schema with a nested object (Codex must make both strict).
fn schema() -> Value {
    json!({"type": "object", "required": ["label"],
           "properties": {"label": {"type": "string"},
                          "meta": {"type": "object", "properties": {"x": {"type": "string"}}}}})
}

fn strict_schema() -> Value {
    json!({"type": "object", "required": ["label"], "additionalProperties": false,
           "properties": {"label": {"type": "string"},
                          "meta": {"type": "object", "additionalProperties": false,
                                   "properties": {"x": {"type": "string"}}}}})
}

/// The prefix of every provider failure message (the reference's wording, kept).
fn unhealthy(label: &str) -> String {
    format!("Gateway provider {label} is unhealthy. Try another provider or run \"panorama-gateway doctor\". Details: ")
}

/// Kills leftover pids when a test fails half-way.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            if *p > 1 {
                unsafe {
                    libc::kill(*p, libc::SIGKILL);
                }
            }
        }
    }
}

struct Job {
    id: String,
    tag: String,
    prompt: String,
}

/// One backend, one paired gateway with wrapper CLIs, and a record directory.
struct World {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
    bin: PathBuf,
    rec: PathBuf,
    clis: [PathBuf; 3],
    tokens: Vec<String>,
}

impl World {
    /// `help`: how each CLI's `--help` answers (claude, codex, gemini); `None`: that CLI is a
    /// path that does not exist.
    fn new(help: [Option<&str>; 3]) -> World {
        let b = Backend::start();
        let mut gw = Gateway::new(&b);
        let (root, bin, rec) = fake_cli_dirs(&mut gw);
        let (code, team) = b.pairing_code(None);
        gw.pair(&code);
        let gid = gw.gateway_id();
        let state = gw.state();
        let tokens = ["accessToken", "refreshToken"]
            .iter()
            .map(|k| state[k].as_str().unwrap().to_string())
            .collect();
        let clis = [("claude", help[0]), ("codex", help[1]), ("gemini", help[2])].map(
            |(name, h)| match h {
                Some(h) => fake_cli_wrapper(&bin, name, Some(h)),
                None => root.join("not-installed").join(name),
            },
        );
        // The daemon runs with every secret a child must not see.
        for (k, v) in DAEMON_SECRETS.iter().chain(PASSED_THROUGH) {
            gw.set_env(k, v);
        }
        gw.set_env("PANORAMA_SUPABASE_URL", &b.url);
        gw.set_env("PANORAMA_SUPABASE_ANON_KEY", &b.anon_key);
        // A setting only the gateway's own env file loads: it must not reach a child either.
        let env_file = root.join("gateway.env");
        std::fs::write(
            &env_file,
            format!("{ENV_FILE_ONLY}=from-the-env-file-only\n"),
        )
        .unwrap();
        gw.set_env("PANORAMA_ENV_FILE", &env_file.display().to_string());
        World {
            b,
            gw,
            team,
            gid,
            bin,
            rec,
            clis,
            tokens,
        }
    }

    fn start(&mut self) {
        let c = self.clis.clone().map(|p| p.display().to_string());
        self.gw.start_with(&[
            "--claude-cli",
            &c[0],
            "--codex-cli",
            &c[1],
            "--gemini-cli",
            &c[2],
        ]);
        // The scrub tests mean something only if the daemon itself has the secrets.
        let pid = self.gw.pid();
        let environ = wait_for("the daemon's environment", Duration::from_secs(10), || {
            let e = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let e = String::from_utf8_lossy(&e).into_owned();
            e.contains("SUPABASE_ANON_KEY=").then_some(e)
        });
        for (k, v) in DAEMON_SECRETS {
            assert!(
                environ.split('\0').any(|e| e == format!("{k}={v}")),
                "the daemon runs with {k}: {environ:?}"
            );
        }
    }

    /// The prompt of job `tag`: `text`, then the fake's record file and `sets` as tokens.
    fn prompt(&self, tag: &str, text: &str, sets: &[(&str, &str)]) -> String {
        fake_cli_prompt(&self.rec, tag, text, sets)
    }

    /// Queues a model_run: `payload` plus a prompt built by [`World::prompt`].
    fn submit(&self, tag: &str, mut payload: Value, sets: &[(&str, &str)]) -> Job {
        let prompt = self.prompt(tag, &format!("Classify ticket {tag}."), sets);
        payload["prompt"] = json!(prompt);
        let id = self
            .b
            .insert_job(&self.team, &self.gid, "model_run", payload);
        Job {
            id,
            tag: tag.into(),
            prompt,
        }
    }

    fn wait(&self, j: &Job) -> Value {
        wait_job_done(&self.b, &j.id, JOB_WAIT)
    }

    /// The fake's invocations for job `tag` (one JSON object each).
    fn records(&self, tag: &str) -> Vec<Value> {
        fake_cli_records(&self.rec, tag)
    }

    /// The one invocation of job `j`.
    fn record(&self, j: &Job) -> Value {
        let r = self.records(&j.tag);
        assert_eq!(r.len(), 1, "job {} ran its CLI once: {r:?}", j.tag);
        r[0].clone()
    }

    fn work_dir(&self, j: &Job) -> PathBuf {
        self.gw
            .config_dir()
            .join("work")
            .join("model-runs")
            .join(&j.id)
    }

    fn cli(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    /// The end of a test: nothing leaked, the daemon stops cleanly (exit 0); how long it took.
    fn finish(&mut self, what: &str, t0: Instant) {
        self.assert_nothing_leaked();
        assert_eq!(self.gw.stop(Duration::from_secs(30)).code(), Some(0));
        eprintln!("{what}: {:?}", t0.elapsed());
    }

    /// No session token (from pairing or the current one), key or daemon secret anywhere a
    /// user or the team can read: job rows (result, error, debug), events, the gateway log.
    fn assert_nothing_leaked(&self) {
        let state = self.gw.state();
        let mut secrets: Vec<String> = self.tokens.clone();
        for k in ["accessToken", "refreshToken"] {
            if let Some(t) = state[k].as_str() {
                secrets.push(t.to_string());
            }
        }
        secrets.push(self.b.anon_key.clone());
        secrets.push(self.b.service_key.clone());
        for (k, v) in DAEMON_SECRETS {
            if k.contains("KEY")
                || k.contains("TOKEN")
                || k.contains("SECRET")
                || k.starts_with("DATABASE")
            {
                secrets.push(v.to_string());
            }
        }
        let rows = serde_json::to_string(&self.b.jobs(&self.gid)).unwrap();
        let events = serde_json::to_string(&self.b.events(&self.gid)).unwrap();
        let log = self.gw.log();
        assert!(log.contains("model_run"), "the log covers the runs: {log}");
        for s in secrets.iter().filter(|s| s.len() >= 12) {
            for (what, hay) in [
                ("job rows", &rows),
                ("events", &events),
                ("gateway log", &log),
            ] {
                assert!(
                    !hay.contains(s.as_str()),
                    "a secret ({}…) appears in the {what}",
                    &s[..8]
                );
            }
        }
    }

    /// The daemon's children that are zombies (never reaped).
    fn zombie_children(&self) -> Vec<i32> {
        let me = self.gw.pid() as i32;
        processes()
            .into_iter()
            .filter(|(_, s, pp)| *pp == me && *s == 'Z')
            .map(|(p, _, _)| p)
            .collect()
    }
}

/// On a failed test the daemon may still have CLIs running (in their own process groups, so
/// killing the daemon alone would orphan them): kill its whole process tree first.
impl Drop for World {
    fn drop(&mut self) {
        kill_daemon_tree(&self.gw);
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn argv(rec: &Value) -> Vec<String> {
    strs(&rec["argv"])
}

/// A Gemini run's argv without its last element, which names a fresh session (a random v4
/// UUID) so the gateway can remove Gemini's chat log afterwards.
fn gemini_argv(rec: &Value) -> Vec<String> {
    let mut a = argv(rec);
    let last = a.pop().unwrap_or_default();
    let id = last.strip_prefix("--session-id=").unwrap_or_default();
    assert!(
        id.len() == 36 && id.as_bytes()[14] == b'4',
        "{last:?} in {a:?}"
    );
    a
}

fn sv(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The child environment: scrubbed, private TMPDIR in the work directory, HOME/PATH kept.
fn assert_scrubbed_env(w: &World, j: &Job, rec: &Value) {
    let env: BTreeMap<String, String> = serde_json::from_value(rec["env"].clone()).unwrap();
    for (k, _) in DAEMON_SECRETS {
        assert!(!env.contains_key(*k), "{k} reached the CLI of {}", j.tag);
    }
    for k in [
        "SUPABASE_URL",
        "SUPABASE_ANON_KEY",
        "PANORAMA_SUPABASE_URL",
        "PANORAMA_SUPABASE_ANON_KEY",
    ] {
        assert!(!env.contains_key(k), "{k} reached the CLI of {}", j.tag);
    }
    assert!(
        !env.contains_key(ENV_FILE_ONLY),
        "a value of the gateway's env file reached the CLI of {}",
        j.tag
    );
    let leaked: Vec<&String> = env.keys().filter(|k| k.starts_with("PANORAMA_")).collect();
    assert!(leaked.is_empty(), "{leaked:?} reached the CLI of {}", j.tag);
    let all = serde_json::to_string(&env).unwrap();
    for t in &w.tokens {
        assert!(!all.contains(t.as_str()), "a session token reached the CLI");
    }
    assert!(!all.contains(&w.b.anon_key), "the anon key reached the CLI");
    for (k, v) in PASSED_THROUGH {
        assert_eq!(
            env.get(*k).map(String::as_str),
            Some(*v),
            "{k} is passed through"
        );
    }
    assert_eq!(env["HOME"], w.gw.home().display().to_string());
    let path =
        w.gw.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .unwrap()
            .1
            .clone();
    assert!(env["PATH"].ends_with(&path), "PATH kept: {}", env["PATH"]);
    // A private TMPDIR inside the job's work directory, which is the cwd — except for Gemini
    // and Claude, which keep state per directory in their homes: they run in one
    // shared directory.
    let work = w.work_dir(j);
    let name = rec["name"].as_str().unwrap_or_default();
    if name == "gemini" || name == "claude" {
        let shared = w.gw.config_dir().join("work").join(format!(".{name}-cwd"));
        assert_eq!(rec["cwd"], shared.display().to_string());
        assert!(shared.is_dir(), "the shared Gemini directory stays");
    } else {
        assert_eq!(rec["cwd"], work.display().to_string());
    }
    let tmp = PathBuf::from(&env["TMPDIR"]);
    assert!(tmp.starts_with(&work), "TMPDIR {tmp:?} is inside {work:?}");
    assert_eq!(env["TMP"], env["TMPDIR"]);
    assert_eq!(env["TEMP"], env["TMPDIR"]);
    // Gone once the job is done (the row is final only after the cleanup).
    assert!(!tmp.exists(), "TMPDIR {tmp:?} removed after the job");
    assert!(!work.exists(), "work dir {work:?} removed after the job");
}

/// The debug column: which CLI ran how, prompt and schema redacted.
fn assert_debug(row: &Value, provider: &str, prompt: &str, mode: &str) {
    let d = &row["debug"];
    assert_eq!(d["provider_id"], provider, "{d}");
    assert_eq!(d["output_mode"], mode, "{d}");
    assert_eq!(d["prompt_chars"], prompt.chars().count());
    let args = strs(&d["args"]);
    assert!(
        !args.iter().any(|a| a.contains("Classify")),
        "the prompt is never an argument: {args:?}"
    );
    let text = d.to_string();
    assert!(
        !text.contains("Classify ticket"),
        "prompt text in debug: {d}"
    );
    assert!(!text.contains("required"), "schema text in debug: {d}");
    for k in ["stdout", "stderr"] {
        let s = d[k]
            .as_str()
            .unwrap_or_else(|| panic!("debug.{k} missing: {d}"));
        assert!(s.chars().count() <= 200_000);
    }
    assert_eq!(d["timed_out"], false);
    assert!(d["duration_ms"].as_u64().is_some(), "{d}");
}

#[test]
fn text_and_json_runs_of_each_provider_with_exact_argv_and_a_scrubbed_env() {
    let t0 = Instant::now();
    let mut w = World::new([Some("full"), Some("full"), Some("full")]);
    let sch = schema();
    let sch_text = serde_json::to_string(&sch).unwrap();
    let resp = r#"{"label":"billing","meta":{"x":"y"}}"#;
    let resp_v: Value = serde_json::from_str(resp).unwrap();

    let claude_json = w.submit(
        "claude-json",
        json!({"provider": "claude_code", "model": "claude-sonnet-4-5", "output_format": "json",
               "json_schema": sch, "append_system_prompt": "Be terse."}),
        &[("FAKE_CLI_RESPONSE", resp)],
    );
    let claude_text = w.submit(
        "claude-text",
        json!({"provider": "claude_code", "model": "claude-sonnet-4-5", "output_format": "text"}),
        &[("FAKE_CLI_TEXT", "A short poem.")],
    );
    let codex_json = w.submit(
        "codex-json",
        json!({"provider": "codex", "model": "gpt-5-codex", "json_schema": sch,
               "reasoning_effort": "high", "append_system_prompt": "Be terse.", "timeout_ms": 90000}),
        &[("FAKE_CLI_RESPONSE", r#"{"label":"bug"}"#)],
    );
    let codex_text = w.submit(
        "codex-text",
        json!({"provider": "codex", "model": "gpt-5-codex", "output_format": "text"}),
        &[("FAKE_CLI_TEXT", "Codex says hi.")],
    );
    let gemini_json = w.submit(
        "gemini-json",
        json!({"provider": "gemini", "model": "gemini-2.5-pro", "output_format": "json",
               "json_schema": sch, "append_system_prompt": "Be terse."}),
        // Gemini keeps a chat log per run (the fake too, with FAKE_CLI_SESSIONS=1).
        &[("FAKE_CLI_RESPONSE", resp), ("FAKE_CLI_SESSIONS", "1")],
    );
    let gemini_text = w.submit(
        "gemini-text",
        json!({"provider": "gemini", "model": "gemini-2.5-flash", "output_format": "text"}),
        &[
            ("FAKE_CLI_TEXT", "Gemini says hi."),
            ("FAKE_CLI_SESSIONS", "1"),
        ],
    );
    // Provider inferred from the model when `provider` is absent or not a provider id.
    let inferred: Vec<(Job, &str, &str, Option<&str>)> = [
        ("infer-gpt", "gpt-5", None, "codex"),
        ("infer-openai", "openai/gpt-5", None, "codex"),
        ("infer-codex-anywhere", "my-Codex-mini", None, "codex"),
        ("infer-gemini", "gemini-2.5-flash", None, "gemini"),
        ("infer-google", "google/gemini-pro", None, "gemini"),
        ("infer-claude", "claude-opus-4", None, "claude"),
        ("infer-o3", "o3", None, "claude"),
        ("infer-default", "__default__", None, "claude"),
        ("infer-bogus-provider", "gpt-5", Some("openai"), "codex"),
        (
            "explicit-wins",
            "gpt-5-codex",
            Some("claude_code"),
            "claude",
        ),
    ]
    .into_iter()
    .map(|(tag, model, provider, cli)| {
        let mut p = json!({"model": model, "output_format": "text"});
        if let Some(pr) = provider {
            p["provider"] = json!(pr);
        }
        (w.submit(tag, p, &[]), model, cli, provider)
    })
    .collect();
    w.start();

    // Claude, JSON with a schema: the full modern argv, structured output, usage.
    let row = w.wait(&claude_json);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["error"], Value::Null);
    let r = &row["result"];
    assert_eq!(r["output"], resp_v, "{r}");
    assert_eq!(r["raw"]["structured_output"], resp_v);
    assert_eq!(r["usage"]["input_tokens"], 12);
    assert_eq!(r["usage"]["output_tokens"], 34);
    assert_eq!(r["model"], Value::Null);
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout_truncated"], false);
    assert_eq!(r["stderr_truncated"], false);
    assert_eq!(
        r["command"],
        format!("{} --print --model=claude-sonnet-4-5 --output-format=stream-json --verbose --json-schema=[REDACTED] --tools= --input-format=text --no-session-persistence --permission-mode=dontAsk --setting-sources=local --disable-slash-commands --system-prompt-file=[REDACTED]", w.cli("claude"))
    );
    let rec = w.record(&claude_json);
    assert_eq!(rec["name"], "claude");
    assert_eq!(
        argv(&rec),
        sv(&[
            "--print",
            "--model=claude-sonnet-4-5",
            "--output-format=stream-json",
            "--verbose",
            &format!("--json-schema={}", sch_text),
            "--tools=",
            "--input-format=text",
            "--no-session-persistence",
            "--permission-mode=dontAsk",
            "--setting-sources=local",
            "--disable-slash-commands",
            &format!(
                "--system-prompt-file={}/system-prompt.md",
                w.work_dir(&claude_json).display()
            ),
        ])
    );
    assert_eq!(rec["files"]["system-prompt.md"], "Be terse.");
    assert_eq!(w.record(&claude_json)["stdin"], claude_json.prompt.as_str());
    // stream-json: the answer is the last `result` event.
    assert_debug(&row, "claude_code", &claude_json.prompt, "stream-json");
    assert_eq!(row["debug"]["json_schema_chars"], sch_text.chars().count());
    assert_eq!(row["debug"]["timeout_ms"], 110_000, "the default timeout");
    let dbg_out = row["debug"]["stdout"].as_str().unwrap();
    assert!(dbg_out.contains("structured_output"), "{dbg_out}");
    assert!(
        !dbg_out.contains("f1d2c3b4-0000"),
        "session_id masked in debug.stdout: {dbg_out}"
    );
    assert_scrubbed_env(&w, &claude_json, &rec);

    // Claude, text.
    let row = w.wait(&claude_text);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["output"], json!({"text": "A short poem."}));
    assert_eq!(row["result"]["usage"], Value::Null);
    let rec = w.record(&claude_text);
    assert_eq!(
        argv(&rec),
        sv(&[
            "--print",
            "--model=claude-sonnet-4-5",
            "--output-format=stream-json",
            "--verbose",
            "--tools=",
            "--input-format=text",
            "--no-session-persistence",
            "--permission-mode=dontAsk",
            "--setting-sources=local",
            "--disable-slash-commands",
        ])
    );
    assert_eq!(w.record(&claude_text)["stdin"], claude_text.prompt.as_str());
    assert_eq!(row["debug"]["json_schema_chars"], 0);
    assert_scrubbed_env(&w, &claude_text, &rec);

    // Codex, JSON: schema file mode with the strict schema, effort and tool flags.
    let row = w.wait(&codex_json);
    assert_eq!(row["status"], "completed", "{row}");
    let r = &row["result"];
    assert_eq!(r["output"], json!({"label": "bug"}), "{r}");
    assert_eq!(r["usage"], Value::Null, "file mode has no usage");
    assert_eq!(
        r["command"],
        format!("{} exec --sandbox=read-only --skip-git-repo-check --model=gpt-5-codex --config=model_reasoning_effort=\"high\" --config=features.shell_tool=false --config=web_search=\"disabled\" --ephemeral --output-schema=schema.json --output-last-message=output.json -", w.cli("codex"))
    );
    let rec = w.record(&codex_json);
    assert_eq!(rec["name"], "codex");
    assert_eq!(
        argv(&rec),
        sv(&[
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
            "-",
        ])
    );
    assert_eq!(rec["stdin"], format!("{}\n\nBe terse.", codex_json.prompt));
    let written: Value =
        serde_json::from_str(rec["files"]["schema.json"].as_str().unwrap()).unwrap();
    assert_eq!(written, strict_schema(), "the strict schema file");
    assert_debug(&row, "codex", &codex_json.prompt, "file-json");
    assert_eq!(row["debug"]["output_path"], "output.json");
    assert_eq!(row["debug"]["files"], json!(["schema.json"]));
    assert_eq!(row["debug"]["timeout_ms"], 90_000);
    assert_scrubbed_env(&w, &codex_json, &rec);

    // Codex, text.
    let row = w.wait(&codex_text);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["output"], json!({"text": "Codex says hi."}));
    let rec = w.record(&codex_text);
    assert_eq!(
        argv(&rec),
        sv(&[
            "exec",
            "--sandbox=read-only",
            "--skip-git-repo-check",
            "--model=gpt-5-codex",
            "--config=features.shell_tool=false",
            "--config=web_search=\"disabled\"",
            "--ephemeral",
            "-",
        ])
    );
    assert_eq!(w.record(&codex_text)["stdin"], codex_text.prompt.as_str());
    assert_scrubbed_env(&w, &codex_text, &rec);

    // Gemini, JSON: schema in the system prompt file, model and usage from the stats.
    let row = w.wait(&gemini_json);
    assert_eq!(row["status"], "completed", "{row}");
    let r = &row["result"];
    assert_eq!(r["output"], resp_v, "{r}");
    assert_eq!(r["model"], "gemini-2.5-pro");
    assert_eq!(
        r["usage"]["models"]["gemini-2.5-pro"]["tokens"]["total"],
        5212
    );
    let rec = w.record(&gemini_json);
    assert_eq!(rec["name"], "gemini");
    assert_eq!(
        gemini_argv(&rec),
        sv(&["--output-format=json", "--model=gemini-2.5-pro",])
    );
    assert_eq!(w.record(&gemini_json)["stdin"], gemini_json.prompt.as_str());
    assert_eq!(
        rec["system_md"],
        format!(
            "Be terse.\nReturn STRICT JSON only. Do not wrap in code fences.\nSchema:\n{sch_text}"
        )
    );
    let work = w.work_dir(&gemini_json);
    assert_eq!(
        rec["env"]["GEMINI_SYSTEM_MD"],
        work.join("system.md").display().to_string()
    );
    assert!(
        rec["env"]["PATH"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", w.bin.display())),
        "gemini's own directory first on PATH: {}",
        rec["env"]["PATH"]
    );
    assert_debug(&row, "gemini", &gemini_json.prompt, "stdout-json");
    assert_scrubbed_env(&w, &gemini_json, &rec);

    // Gemini, text: an empty system prompt file still replaces the built-in one.
    let row = w.wait(&gemini_text);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["output"], json!({"text": "Gemini says hi."}));
    let rec = w.record(&gemini_text);
    assert_eq!(
        gemini_argv(&rec),
        sv(&["--output-format=text", "--model=gemini-2.5-flash",])
    );
    assert_eq!(w.record(&gemini_text)["stdin"], gemini_text.prompt.as_str());
    assert_eq!(rec["system_md"], "");
    assert_scrubbed_env(&w, &gemini_text, &rec);
    // No chat log per model run: the gateway named each run's session and removed it.
    let tmp = w.gw.home().join(".gemini/tmp");
    let chats: Vec<_> = std::fs::read_dir(&tmp)
        .expect("the fake gemini kept its sessions under HOME")
        .flatten()
        .flat_map(|p| {
            std::fs::read_dir(p.path().join("chats"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(chats.is_empty(), "gemini chat logs left: {chats:?}");

    // Inference: the CLI that ran, the model passed verbatim (`__default__`: no --model).
    for (j, model, cli, provider) in &inferred {
        let row = w.wait(j);
        assert_eq!(row["status"], "completed", "{}: {row}", j.tag);
        let rec = w.record(j);
        assert_eq!(
            rec["name"], *cli,
            "{} ({model}, provider {provider:?})",
            j.tag
        );
        let want_id = if *cli == "claude" { "claude_code" } else { cli };
        assert_eq!(row["debug"]["provider_id"], want_id, "{}", j.tag);
        let a = argv(&rec);
        let m = a
            .iter()
            .find_map(|x| x.strip_prefix("--model=").map(String::from));
        if *model == "__default__" {
            assert_eq!(m, None, "{a:?}");
        } else {
            assert_eq!(m.as_deref(), Some(*model), "{a:?}");
        }
    }

    w.finish("providers/modes/inference", t0);
}

#[test]
fn older_clis_get_their_fallback_modes() {
    let t0 = Instant::now();
    // Claude and Codex with an older `--help` (no --json-schema, --tools, --output-schema or
    // -c); Gemini's `--help` fails (its defaults apply).
    let mut w = World::new([Some("old"), Some("old"), Some("fail")]);
    let sch = schema();
    let sch_text = serde_json::to_string(&sch).unwrap();
    // The schema flag is always passed for Claude JSON runs; without structured_output the
    // answer is read from the envelope's `result` text.
    let claude_json = w.submit(
        "old-claude-json",
        json!({"provider": "claude_code", "model": "claude-sonnet-4-5", "json_schema": sch,
               "append_system_prompt": "Be terse."}),
        &[
            ("FAKE_CLI_NO_STRUCTURED", "1"),
            ("FAKE_CLI_RESPONSE", r#"{"label":"from-result"}"#),
        ],
    );
    let claude_text = w.submit(
        "old-claude-text",
        json!({"model": "__default__", "output_format": "text"}),
        &[("FAKE_CLI_TEXT", "Old claude.")],
    );
    // Codex without schema mode: JSONL events (`--json`), usage from turn.completed, the
    // answer's code fence stripped.
    let codex_json = w.submit(
        "old-codex-jsonl",
        json!({"provider": "codex", "model": "gpt-5-codex", "json_schema": sch,
               "reasoning_effort": "high"}),
        &[
            ("FAKE_CLI_RESPONSE", r#"{"label":"jsonl"}"#),
            ("FAKE_CLI_FENCE", "1"),
        ],
    );
    let codex_no_msg = w.submit(
        "old-codex-no-message",
        json!({"provider": "codex", "model": "gpt-5-codex", "json_schema": sch}),
        &[("FAKE_CLI_MODE", "no_message")],
    );
    let gemini_json = w.submit(
        "helpless-gemini-json",
        json!({"model": "gemini-2.5-pro", "json_schema": sch}),
        &[
            ("FAKE_CLI_RESPONSE", r#"{"label":"fenced"}"#),
            ("FAKE_CLI_FENCE", "1"),
        ],
    );
    w.start();

    let row = w.wait(&claude_json);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["output"], json!({"label": "from-result"}));
    assert_eq!(row["result"]["raw"]["result"], r#"{"label":"from-result"}"#);
    // No --tools (only --allowedTools), no system-prompt flag at all: the text is dropped.
    assert_eq!(
        argv(&w.record(&claude_json)),
        sv(&[
            "--print",
            "--model=claude-sonnet-4-5",
            "--output-format=json",
            &format!("--json-schema={}", sch_text),
            "--allowedTools=",
        ])
    );
    assert_eq!(w.record(&claude_json)["stdin"], claude_json.prompt.as_str());
    let row = w.wait(&claude_text);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["output"], json!({"text": "Old claude."}));
    assert_eq!(
        argv(&w.record(&claude_text)),
        sv(&["--print", "--output-format=text", "--allowedTools=",])
    );
    assert_eq!(w.record(&claude_text)["stdin"], claude_text.prompt.as_str());

    let row = w.wait(&codex_json);
    assert_eq!(row["status"], "completed", "{row}");
    let r = &row["result"];
    assert_eq!(r["output"], json!({"label": "jsonl"}), "{r}");
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122})
    );
    // No -c support: no effort, no tool flags.
    assert_eq!(
        argv(&w.record(&codex_json)),
        sv(&[
            "exec",
            "--sandbox=read-only",
            "--skip-git-repo-check",
            "--model=gpt-5-codex",
            "--json",
            "-",
        ])
    );
    assert_eq!(w.record(&codex_json)["stdin"], codex_json.prompt.as_str());
    assert_debug(&row, "codex", &codex_json.prompt, "stream-json");

    let row = w.wait(&codex_no_msg);
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["result"]["error_kind"], "bad_output");
    assert_eq!(
        row["error"],
        format!(
            "{}Codex JSONL output missing agent message",
            unhealthy("Codex")
        )
    );

    let row = w.wait(&gemini_json);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["output"], json!({"label": "fenced"}));
    assert_eq!(
        gemini_argv(&w.record(&gemini_json)),
        sv(&["--output-format=json", "--model=gemini-2.5-pro",])
    );
    assert_eq!(w.record(&gemini_json)["stdin"], gemini_json.prompt.as_str());

    w.finish("fallback modes", t0);
}

#[test]
fn failures_are_classified_with_actionable_messages() {
    let t0 = Instant::now();
    let mut w = World::new([Some("full"), Some("full"), Some("full")]);
    let sch = schema();
    let js = |model: &str| json!({"model": model, "json_schema": sch});
    let tx = |model: &str| json!({"model": model, "output_format": "text"});
    let bearer = "e2e-bearer-secret-0123456789";
    let stderr_line = format!("upstream said Authorization: Bearer {bearer}");
    let (claude, codex, gemini) = ("claude-sonnet-4-5", "gpt-5-codex", "gemini-2.5-pro");
    let mode = |m| vec![("FAKE_CLI_MODE", m)];
    // (tag, model, text run, the fake CLI's environment, error_kind, texts the job error must
    // contain); a row's index is its job's index in `cases` below.
    type Row<'a> = (
        &'a str,
        &'a str,
        bool,
        Vec<(&'a str, &'a str)>,
        &'a str,
        Vec<String>,
    );
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        ("claude-auth", claude, false, mode("auth_error"), "auth", vec![
            unhealthy("Claude"),
            "Claude exited with status 1: Invalid API key · Please run /login".into(),
            "run `claude` once in a terminal and log in".into(),
        ]),
        ("claude-rate", claude, true, mode("rate_limit"), "rate_limit", vec![
            "Claude AI usage limit reached".into(),
            "retry later or use another provider".into(),
        ]),
        ("claude-exit", claude, false,
            vec![("FAKE_CLI_MODE", "fail"), ("FAKE_CLI_STDERR", &stderr_line)], "exit_status", vec![
            "Claude exited with status 1: Error: something broke inside the fake claude".into(),
        ]),
        ("claude-bad", claude, false, mode("bad_json"), "bad_output", vec![
            format!("{}Claude stream-json output has no result event", unhealthy("Claude")),
        ]),
        ("claude-empty", claude, false, mode("empty"), "bad_output", vec![
            "Empty Claude output".into(),
        ]),
        ("codex-auth", codex, false, mode("auth_error"), "auth", vec![
            "Incorrect API key provided".into(),
            "run `codex login`".into(),
        ]),
        ("codex-rate", codex, false, mode("rate_limit"), "rate_limit", vec![
            "Rate limit reached for gpt-5-codex".into(),
        ]),
        ("codex-exit", codex, true, mode("fail"), "exit_status", vec![
            "Codex exited with status 1: Error: fatal error in the fake codex".into(),
        ]),
        ("codex-no-file", codex, false, mode("no_message"), "bad_output", vec![
            format!("{}Codex output file not found", unhealthy("Codex")),
        ]),
        ("codex-symlink", codex, false, mode("symlink_output"), "bad_output", vec![
            "Codex output path is a symlink; refusing to follow it".into(),
        ]),
        ("gemini-auth", gemini, false, mode("auth_error"), "auth", vec![
            unhealthy("Gemini"),
            "Please set an Auth method".into(),
            "run `gemini` once in a terminal and log in".into(),
        ]),
        ("gemini-rate", gemini, true, mode("rate_limit"), "rate_limit", vec![
            "Quota exceeded".into(),
        ]),
        ("gemini-bad", gemini, false, vec![("FAKE_CLI_RESPONSE", "not json")], "bad_output", vec![
            "Failed to decode ai_model_output boundary \"gateway.gemini_cli.output\": invalid JSON".into(),
        ]),
    ];
    // (job, error_kind, text the job error must contain)
    let cases: Vec<(Job, &str, Vec<String>)> = table
        .into_iter()
        .map(|(tag, model, text, env, kind, needles)| {
            let payload = if text { tx(model) } else { js(model) };
            (w.submit(tag, payload, &env), kind, needles)
        })
        .collect();
    // Invalid payloads: no CLI runs, no debug.
    let no_prompt = w.b.insert_job(
        &w.team,
        &w.gid,
        "model_run",
        json!({"model": "claude-sonnet-4-5"}),
    );
    let no_schema = w.b.insert_job(
        &w.team,
        &w.gid,
        "model_run",
        json!({"model": "claude-sonnet-4-5", "prompt": "hi"}),
    );
    w.start();

    for (j, kind, needles) in &cases {
        let row = w.wait(j);
        assert_eq!(row["status"], "failed", "{}: {row}", j.tag);
        let r = &row["result"];
        assert_eq!(r["error_kind"], *kind, "{}: {row}", j.tag);
        let err = row["error"].as_str().unwrap();
        assert_eq!(r["message"], err, "{}", j.tag);
        assert!(
            err.starts_with("Gateway provider "),
            "{}: the established prefix: {err}",
            j.tag
        );
        for n in needles {
            assert!(err.contains(n.as_str()), "{}: {err:?} lacks {n:?}", j.tag);
        }
        let cmd = r["command"].as_str().unwrap();
        assert!(!cmd.contains("Classify"), "{}: no prompt in {cmd}", j.tag);
        assert!(row["debug"].is_object(), "{}: debug written", j.tag);
        assert_eq!(w.records(&j.tag).len(), 1, "{}: ran once, no retry", j.tag);
        if *kind != "bad_output" {
            assert_eq!(r["exit_code"], 1, "{}: {r}", j.tag);
            assert_eq!(row["debug"]["exit_code"], 1, "{}", j.tag);
        }
    }
    let row = w.wait(&cases[2].0);
    for k in ["result", "debug", "error"] {
        let text = row[k].to_string();
        assert!(
            !text.contains(bearer),
            "the bearer token is masked in {k}: {row}"
        );
    }
    assert!(
        row["result"]["stderr"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"),
        "{row}"
    );
    let row = w.wait(&cases[3].0);
    assert!(row["result"]["stdout"]
        .as_str()
        .unwrap()
        .contains("I could not produce JSON"));
    let codex_auth = w.wait(&cases[5].0);
    assert_eq!(
        codex_auth["result"]["error_summary"],
        json!({"message": "Incorrect API key provided: sk-proj-****abcd.",
               "type": "invalid_request_error", "code": "invalid_api_key"})
    );
    assert_eq!(
        w.wait(&cases[6].0)["result"]["error_summary"]["code"],
        "rate_limit_exceeded"
    );

    let row = wait_job_done(&w.b, &no_prompt, JOB_WAIT);
    assert_eq!(row["status"], "failed");
    assert_eq!(row["error"], "Missing prompt or model");
    assert_eq!(
        row["result"],
        json!({"message": "Missing prompt or model for gateway model run"})
    );
    assert_eq!(row["debug"], Value::Null);
    let row = wait_job_done(&w.b, &no_schema, JOB_WAIT);
    assert_eq!(row["error"], "Missing json_schema");
    assert_eq!(
        row["result"],
        json!({"message": "Missing json_schema for gateway model run"})
    );

    // Each provider that failed is reported to the team as unhealthy.
    for p in ["claude_code", "codex", "gemini"] {
        wait_for(
            &format!("a provider_unhealthy event for {p}"),
            JOB_WAIT,
            || {
                w.b.events(&w.gid)
                    .iter()
                    .any(|e| e["code"] == "provider_unhealthy" && e["provider"] == p)
                    .then_some(())
            },
        );
    }
    let log = w.gw.log();
    assert!(!log.contains(bearer), "the bearer token is not logged");
    w.finish("failure classification", t0);
}

#[test]
fn timeouts_kill_the_process_tree_floods_are_bounded_and_a_missing_cli_is_named() {
    let t0 = Instant::now();
    // Codex's `exec --help` fails: JSON runs embed the schema in the prompt. Gemini is a path
    // that does not exist.
    let mut w = World::new([Some("full"), Some("fail"), None]);
    let gc_file = w.rec.join("grandchild.pid");
    let tree = w.submit(
        "timeout-tree",
        json!({"model": "claude-sonnet-4-5", "output_format": "text", "timeout_ms": 2500}),
        &[
            ("FAKE_CLI_MODE", "grandchild"),
            ("FAKE_CLI_GRANDCHILD_PID", &gc_file.display().to_string()),
        ],
    );
    let stubborn = w.submit(
        "timeout-ignores-term",
        json!({"model": "claude-sonnet-4-5", "output_format": "text", "timeout_ms": 800}),
        &[("FAKE_CLI_MODE", "hang_term")],
    );
    let flood = w.submit(
        "flood",
        json!({"model": "gpt-5-codex", "json_schema": schema()}),
        &[
            ("FAKE_CLI_MODE", "flood"),
            ("FAKE_CLI_FLOOD_BYTES", "100000000"),
        ],
    );
    let inline = w.submit(
        "codex-inline-schema",
        json!({"model": "gpt-5-codex", "json_schema": schema(), "append_system_prompt": "Be terse."}),
        &[("FAKE_CLI_RESPONSE", r#"{"label":"inline"}"#)],
    );
    let missing = w.submit(
        "gemini-missing",
        json!({"model": "gemini-2.5-pro", "output_format": "text"}),
        &[],
    );
    w.start();

    // The fake started a grandchild and hangs; both must go when the timeout fires. On a loaded
    // machine the fake (Python) can be stopped before it has started its grandchild: such a run
    // proves nothing about the tree, so it is repeated once with a longer timeout.
    let mut case = (tree, 2500u64, gc_file);
    for retry in [false, true] {
        let (job, timeout_ms, gc_file) = &case;
        let gc = wait_for("the grandchild's pid or the run's end", JOB_WAIT, || {
            if let Some(pid) = std::fs::read_to_string(gc_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                return Some(Some(pid));
            }
            let done = matches!(
                w.b.job(&job.id)["status"].as_str(),
                Some("failed" | "completed")
            );
            done.then_some(None)
        });
        let Some(gc) = gc else {
            assert!(
                !retry,
                "the fake never started its grandchild, even with a 15 s timeout"
            );
            eprintln!("the fake was stopped before it started its grandchild; once more, 15 s");
            let gc_file = w.rec.join("grandchild-2.pid");
            let job = w.submit(
                "timeout-tree-2",
                json!({"model": "claude-sonnet-4-5", "output_format": "text", "timeout_ms": 15000}),
                &[
                    ("FAKE_CLI_MODE", "grandchild"),
                    ("FAKE_CLI_GRANDCHILD_PID", &gc_file.display().to_string()),
                ],
            );
            case = (job, 15000, gc_file);
            continue;
        };
        let (_, fake) = proc_entry(gc).expect("the grandchild runs");
        let _guard = KillOnDrop(vec![gc, fake]);
        assert!(fake > 1 && !dead(fake), "the fake CLI runs");
        let row = w.wait(job);
        assert_eq!(row["status"], "failed", "{row}");
        let r = &row["result"];
        assert_eq!(r["error_kind"], "timeout", "{r}");
        assert_eq!(r["exit_code"], Value::Null);
        let err = row["error"].as_str().unwrap();
        assert!(err.starts_with(&unhealthy("Claude")), "{err}");
        let said = format!(
            "Claude did not finish within {timeout_ms} ms (timeout_ms) and was stopped; raise timeout_ms"
        );
        assert!(err.contains(&said), "{err}");
        assert_eq!(row["debug"]["timed_out"], true);
        assert_eq!(row["debug"]["timeout_ms"], *timeout_ms);
        assert!(
            wait_for_bool(Duration::from_secs(5), || dead(gc)),
            "grandchild {gc} survived the timeout"
        );
        assert_eq!(
            proc_entry(fake),
            None,
            "the fake CLI {fake} was reaped (no zombie)"
        );
        break;
    }

    // A CLI that ignores SIGTERM is killed after the grace period.
    let row = w.wait(&stubborn);
    assert_eq!(row["result"]["error_kind"], "timeout", "{row}");
    let ms = row["debug"]["duration_ms"].as_u64().unwrap();
    assert!((800..10_000).contains(&ms), "stopped after {ms} ms");

    // 100 MB of output: the run fails on the 5 MB limit, memory stays bounded.
    let row = w.wait(&flood);
    assert_eq!(row["status"], "failed", "{row}");
    let msg = "Gateway model stdout exceeded the 5000000-byte output limit";
    assert_eq!(
        row["result"],
        json!({"message": msg, "error_code": "GATEWAY_MODEL_OUTPUT_LIMIT", "boundary": "stdout",
               "output_limit_bytes": 5_000_000, "error_kind": "output_limit"})
    );
    assert_eq!(row["error"], msg);
    let d = &row["debug"];
    assert_eq!(d["stdout_truncated"], true, "cut for debug");
    assert_eq!(
        d["stdout_bytes"], 5_000_000,
        "5 MB captured, the rest drained"
    );
    assert_eq!(d["stdout"].as_str().unwrap().chars().count(), 200_000);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", w.gw.pid())).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        hwm_kb < 50_000,
        "the daemon's peak RSS stayed far below the 100 MB flood: {hwm_kb} kB"
    );

    // Codex without any detected flag: the strict schema travels in the prompt.
    eprintln!("daemon peak RSS after the flood: {hwm_kb} kB");
    let row = w.wait(&inline);
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["result"]["output"], json!({"label": "inline"}));
    let strict = serde_json::to_string(&strict_schema()).unwrap();
    assert_eq!(
        argv(&w.record(&inline)),
        sv(&[
            "exec",
            "--sandbox=read-only",
            "--skip-git-repo-check",
            "--model=gpt-5-codex",
            "-",
        ])
    );
    assert_eq!(
        w.record(&inline)["stdin"],
        format!(
            "{}\n\nReturn STRICT JSON matching this schema:\n{strict}\n\nBe terse.",
            inline.prompt
        )
    );

    // Not installed: named, with the fix.
    let row = w.wait(&missing);
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["result"]["error_kind"], "not_installed", "{row}");
    let err = row["error"].as_str().unwrap();
    assert!(err.starts_with(&unhealthy("Gemini")), "{err}");
    assert!(
        err.contains("Gemini CLI is not installed or not on PATH"),
        "{err}"
    );
    assert!(
        err.contains("npm install -g @google/gemini-cli) or pass --gemini-cli <path>"),
        "{err}"
    );

    // The daemon is alive and still runs jobs.
    let after = w.submit(
        "after",
        json!({"model": "claude-sonnet-4-5", "output_format": "text"}),
        &[("FAKE_CLI_TEXT", "still here")],
    );
    let row = w.wait(&after);
    assert_eq!(
        row["result"]["output"],
        json!({"text": "still here"}),
        "{row}"
    );
    assert!(w.gw.daemon.as_mut().unwrap().try_wait().unwrap().is_none());
    assert!(
        wait_for_bool(Duration::from_secs(5), || w.zombie_children().is_empty()),
        "zombie children of the daemon: {:?}",
        w.zombie_children()
    );
    let log = w.gw.log();
    assert!(log.contains("kind=timeout"), "the timeout is logged");
    w.finish("timeout/flood/missing", t0);
}

fn wait_for_bool(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
