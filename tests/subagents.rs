//! End to end: `subagent_run` and `subagent_cancel` jobs through the real gateway daemon and
//! the real local backend, with the fake `claude` of tests/fixtures/bin behind a wrapper that
//! takes `@set:FAKE_CLI_X=value@` tokens from the prompt (on standard input), so one daemon
//! runs many scenarios at once. What is asserted is what a user sees: the `gateway_jobs`,
//! `subagents`, `subagent_runs` and `subagent_run_events` rows, and what the CLI received.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::connect::*;

const JOB_WAIT: Duration = Duration::from_secs(40);

const DEFAULT_APPEND: &str = "You cannot write or interact with files in this environment. Include a brief \"Approach Summary\".";

struct World {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
    rec: PathBuf,
    claude: PathBuf,
}

struct Sub {
    sid: String,
    rid: String,
}

impl World {
    fn new(install_full_control: bool) -> World {
        let b = Backend::start();
        let mut gw = Gateway::new(&b);
        let (_, bin, rec) = fake_cli_dirs(&mut gw);
        gw.set_env(
            "DATABASE_URL",
            "postgres://e2e:e2e-db-password@127.0.0.1:1/db",
        );
        gw.set_env("PANORAMA_GATEWAY_E2E_SECRET", "e2e-gateway-setting-secret");
        let (code, team) = b.pairing_code(None);
        gw.pair(&code);
        let gid = gw.gateway_id();
        if install_full_control {
            let (rc, out, err) = gw.run(&["full-control", "enable"]);
            assert_eq!(rc, 0, "full-control enable: {out} {err}");
        }
        let claude = fake_cli_wrapper(&bin, "claude", None);
        fake_cli_wrapper(&bin, "codex", None);
        fake_cli_wrapper(&bin, "gemini", None);
        World {
            b,
            gw,
            team,
            gid,
            rec,
            claude,
        }
    }

    fn start(&mut self) {
        let bin = self.claude.parent().unwrap().to_path_buf();
        let c = self.claude.display().to_string();
        let x = bin.join("codex").display().to_string();
        let g = bin.join("gemini").display().to_string();
        self.gw
            .start_with(&["--claude-cli", &c, "--codex-cli", &x, "--gemini-cli", &g]);
        // Subagent runs need a fresh heartbeat with model execution ready (§2.4 steps 11-12).
        let gid = self.gid.clone();
        wait_for("a ready heartbeat", Duration::from_secs(30), || {
            let r = self.b.gateway_row(&gid);
            (r["capabilities"]["services"]["model_execution"]["ready"] == true
                && r["last_seen_at"].is_string())
            .then_some(())
        });
    }

    fn prompt(&self, tag: &str, sets: &[(&str, &str)]) -> String {
        fake_cli_prompt(&self.rec, tag, &format!("Research {tag}."), sets)
    }

    /// A running subagent with an accepted running run (what the backend writes on admission).
    fn subagent(&self, tag: &str, config: Value, sets: &[(&str, &str)]) -> Sub {
        self.subagent_of(tag, "claude_code_gateway", config, sets)
    }

    fn subagent_of(&self, tag: &str, kind: &str, config: Value, sets: &[(&str, &str)]) -> Sub {
        let sid = uuid();
        let rid = uuid();
        let prompt = self.prompt(tag, sets);
        let (st, v) = self.b.insert_row(
            "subagents",
            json!({"id": sid, "team_id": self.team, "gateway_id": self.gid,
                   "subagent_type": kind, "status": "running", "config": config,
                   "input": {"prompt": prompt, "run_id": rid, "run_sequence": 1},
                   "metadata": {"current_run_id": rid, "kept": "yes"}}),
        );
        assert!((200..300).contains(&st), "insert subagent: {v}");
        let (st, v) = self.b.insert_row(
            "subagent_runs",
            json!({"id": rid, "subagent_id": sid, "team_id": self.team, "gateway_id": self.gid,
                   "run_sequence": 1, "status": "running", "prompt": prompt}),
        );
        assert!((200..300).contains(&st), "insert run: {v}");
        Sub { sid, rid }
    }

    fn run_job(&self, s: &Sub) -> String {
        self.b.insert_job(
            &self.team,
            &self.gid,
            "subagent_run",
            json!({"subagent_id": s.sid, "run_id": s.rid}),
        )
    }

    fn row(&self, table: &str, id: &str) -> Value {
        self.b.admin(
            "GET",
            &format!("/rest/v1/{table}?select=*&id=eq.{id}"),
            None,
        )[0]
        .clone()
    }

    fn run_events(&self, rid: &str) -> Vec<(i64, String, Value)> {
        let v = self.b.admin(
            "GET",
            &format!("/rest/v1/subagent_run_events?select=*&run_id=eq.{rid}&order=sequence.asc"),
            None,
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["sequence"].as_i64().unwrap(),
                    e["event_type"].as_str().unwrap().to_string(),
                    e["payload"].clone(),
                )
            })
            .collect()
    }

    fn kinds(&self, rid: &str) -> Vec<String> {
        self.run_events(rid)
            .into_iter()
            .map(|(_, k, _)| k)
            .collect()
    }

    /// Waits until the run has `n` events (events after finalization come after the job row).
    fn wait_kinds(&self, rid: &str, last: &str) -> Vec<String> {
        wait_for(&format!("run {rid} to get {last}"), JOB_WAIT, || {
            let k = self.kinds(rid);
            k.iter().any(|x| x == last).then_some(k)
        })
    }

    fn records(&self, tag: &str) -> Vec<Value> {
        fake_cli_records(&self.rec, tag)
    }

    fn argv(&self, tag: &str) -> Vec<String> {
        let r = self.records(tag);
        assert_eq!(r.len(), 1, "{tag} ran its CLI once: {r:?}");
        r[0]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    }

    fn work_root(&self) -> PathBuf {
        self.gw.config_dir().join("work").join("subagents")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        kill_daemon_tree(&self.gw);
    }
}

fn restricted_config() -> Value {
    json!({"output_format": "json", "full_control": false, "allowed_tools": ["WebSearch"],
           "permission_mode": "dontAsk", "append_system_prompt": DEFAULT_APPEND})
}

/// `--flag=value` in one element: the gateway never splits an option from its value.
fn has_pair(argv: &[String], a: &str, b: &str) -> bool {
    argv.contains(&format!("{a}={b}"))
}

#[test]
fn claude_run_completes_with_events_and_finalized_rows() {
    let mut w = World::new(false);
    w.start();
    let s = w.subagent("happy", restricted_config(), &[]);
    let job = w.run_job(&s);
    let j = wait_job_done(&w.b, &job, JOB_WAIT);
    assert_eq!(j["status"], "completed", "job: {j}");
    assert_eq!(j["result"]["status"], "completed");
    assert_eq!(j["result"]["subagent_id"], s.sid.as_str());
    assert_eq!(j["result"]["output"]["content_type"], "markdown");
    assert_eq!(j["result"]["output"]["content"], "{\"message\":\"hi\"}");
    assert!(j["error"].is_null());

    // The edge function wrote the terminal state, merging the metadata patch.
    let run = w.row("subagent_runs", &s.rid);
    assert_eq!(run["status"], "completed", "run: {run}");
    assert!(run["started_at"].is_string());
    let md = &run["metadata"];
    assert_eq!(md["adapter_id"], "claude_code");
    assert_eq!(md["runner"], "gateway");
    assert_eq!(md["session_id"], "f1d2c3b4-0000-4000-8000-000000000000");
    assert_eq!(md["exit_code"], 0);
    assert_eq!(md["cancelled"], false);
    assert_eq!(md["current_run_id"], s.rid.as_str());
    assert_eq!(
        md["kept"], "yes",
        "start markers carry the subagent metadata"
    );
    assert_eq!(md["execution_substrate"], "gateway_host");
    let cmd = md["command"].as_str().unwrap();
    assert!(
        cmd.ends_with("--disable-slash-commands") && !cmd.contains("Research"),
        "no prompt on the command line: {cmd}"
    );
    let sub = w.row("subagents", &s.sid);
    assert_eq!(sub["status"], "completed");

    // Events: 0-based, strictly increasing, in the documented order.
    w.wait_kinds(&s.rid, "run_completed");
    let ev = w.run_events(&s.rid);
    let seqs: Vec<i64> = ev.iter().map(|e| e.0).collect();
    assert_eq!(seqs, [0, 1, 2]);
    let kinds: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(kinds, ["run_started", "run_progress", "run_completed"]);
    assert_eq!(ev[0].2["adapter_id"], "claude_code");
    assert_eq!(ev[0].2["run_sequence"], 1);
    assert_eq!(ev[1].2["phase"], "attempt_started");

    // The CLI got the restricted argv, ran in the per-run work dir, without the daemon's
    // secrets; the work dir is gone afterwards.
    let argv = w.argv("happy");
    assert_eq!(argv[0], "--print");
    // A JSON run streams (connection retries are seen as they happen); the result event is
    // the JSON envelope.
    assert!(
        has_pair(&argv, "--output-format", "stream-json"),
        "{argv:?}"
    );
    assert!(has_pair(&argv, "--allowedTools", "WebSearch"), "{argv:?}");
    assert!(has_pair(&argv, "--permission-mode", "dontAsk"), "{argv:?}");
    assert!(has_pair(&argv, "--setting-sources", "local"), "{argv:?}");
    assert!(argv.contains(&"--disable-slash-commands".to_string()));
    assert!(!argv.contains(&"--dangerously-skip-permissions".to_string()));
    let rec = &w.records("happy")[0];
    // The prompt is on standard input, the appended system prompt in an owner-only file.
    assert!(!argv.contains(&"-p".to_string()), "{argv:?}");
    assert!(
        rec["stdin"]
            .as_str()
            .unwrap()
            .starts_with("Research happy."),
        "{rec}"
    );
    assert!(
        has_pair(
            &argv,
            "--append-system-prompt-file",
            "append-system-prompt.md"
        ),
        "{argv:?}"
    );
    assert_eq!(rec["files"]["append-system-prompt.md"], DEFAULT_APPEND);
    let cwd = PathBuf::from(rec["cwd"].as_str().unwrap());
    // One directory per subagent, kept for its continuations (Claude resumes a session only
    // from the directory it started in); the run's private TMPDIR inside it is gone.
    assert_eq!(cwd, w.work_root().join(&s.sid));
    assert!(cwd.is_dir(), "work dir kept for continuations");
    let tmp = PathBuf::from(rec["env"]["TMPDIR"].as_str().unwrap());
    assert!(tmp.starts_with(&cwd) && !tmp.exists(), "{tmp:?}");
    let env = rec["env"].as_object().unwrap();
    for k in [
        "DATABASE_URL",
        "PANORAMA_GATEWAY_E2E_SECRET",
        "SUPABASE_URL",
        "SUPABASE_ANON_KEY",
    ] {
        assert!(!env.contains_key(k), "{k} reached the CLI");
    }
}

#[test]
fn validation_outcomes_follow_the_documented_order() {
    let mut w = World::new(false);
    w.start();
    // 1: no subagent id.
    let missing =
        w.b.insert_job(&w.team, &w.gid, "subagent_run", json!({"run_id": uuid()}));
    // 1, typed at the door: a run id that is not text fails the job, naming the field.
    let bad_run_id = w.b.insert_job(
        &w.team,
        &w.gid,
        "subagent_run",
        json!({"subagent_id": uuid(), "run_id": 42}),
    );
    // 2, typed at the door: a row field of the wrong type fails the run, naming the field.
    let bad_row = w.subagent("badrow", restricted_config(), &[]);
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/subagents?id=eq.{}", bad_row.sid),
        Some(json!({"input": {"prompt": 42, "run_id": bad_row.rid, "run_sequence": 1}})),
    );
    let bad_row_job = w.run_job(&bad_row);
    // 2: unknown subagent.
    let unknown = w.b.insert_job(
        &w.team,
        &w.gid,
        "subagent_run",
        json!({"subagent_id": uuid()}),
    );
    // 4: subagent not running.
    let idle = w.subagent("idle", restricted_config(), &[]);
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/subagents?id=eq.{}", idle.sid),
        Some(json!({"status": "idle"})),
    );
    let idle_job = w.run_job(&idle);
    // 5: stale job (payload run id differs from current_run_id).
    let stale = w.subagent("stale", restricted_config(), &[]);
    let stale_job = w.b.insert_job(
        &w.team,
        &w.gid,
        "subagent_run",
        json!({"subagent_id": stale.sid, "run_id": uuid()}),
    );
    // 5 before typing: a stale job skips even when another field of the row is mistyped, and
    // neither the subagent nor its live run is failed (§5.4 must not run).
    let stale_bad = w.subagent("stalebad", restricted_config(), &[]);
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/subagents?id=eq.{}", stale_bad.sid),
        Some(json!({"metadata": {"current_run_id": stale_bad.rid, "session_id": 5}})),
    );
    let stale_bad_job = w.b.insert_job(
        &w.team,
        &w.gid,
        "subagent_run",
        json!({"subagent_id": stale_bad.sid, "run_id": uuid()}),
    );
    // 6: unsupported type → failed, and the subagent and its run are marked failed (§5.4).
    let odd = w.subagent("odd", restricted_config(), &[]);
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/subagents?id=eq.{}", odd.sid),
        Some(json!({"subagent_type": "cursor_gateway"})),
    );
    let odd_job = w.run_job(&odd);
    // 16: run not accepted (no run row), and a run whose prompt differs.
    let unaccepted = w.subagent("unaccepted", restricted_config(), &[]);
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/subagent_runs?id=eq.{}", unaccepted.rid),
        Some(json!({"id": uuid()})),
    );
    let unaccepted_job = w.run_job(&unaccepted);
    let mismatch = w.subagent("mismatch", restricted_config(), &[]);
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/subagent_runs?id=eq.{}", mismatch.rid),
        Some(json!({"prompt": "something else"})),
    );
    let mismatch_job = w.run_job(&mismatch);

    let j = wait_job_done(&w.b, &missing, JOB_WAIT);
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error"], "Missing subagent_id in payload");
    let j = wait_job_done(&w.b, &bad_run_id, JOB_WAIT);
    assert_eq!(j["status"], "failed");
    assert_eq!(
        j["error"],
        "Invalid run_id in payload: expected a string, got a number; send the run's UUID as text, or leave it out"
    );
    let j = wait_job_done(&w.b, &bad_row_job, JOB_WAIT);
    assert_eq!(j["status"], "failed");
    assert_eq!(
        j["error"],
        "Invalid input.prompt in the subagent row: expected a string, got a number; fix the subagent's row and start a new run"
    );
    assert_eq!(w.row("subagents", &bad_row.sid)["status"], "failed");
    let j = wait_job_done(&w.b, &unknown, JOB_WAIT);
    assert_eq!(j["status"], "cancelled");
    assert_eq!(j["result"]["message"], "Subagent not found");
    let j = wait_job_done(&w.b, &idle_job, JOB_WAIT);
    assert_eq!(j["status"], "cancelled");
    assert_eq!(
        j["error"],
        "Subagent status changed before queued job execution (status=idle)"
    );
    assert_eq!(j["result"]["expected_run_id"], idle.rid.as_str());
    let j = wait_job_done(&w.b, &stale_job, JOB_WAIT);
    assert_eq!(j["status"], "cancelled");
    assert_eq!(
        j["error"],
        "Queued subagent job no longer matches the subagent current_run_id"
    );
    let j = wait_job_done(&w.b, &stale_bad_job, JOB_WAIT);
    assert_eq!(j["status"], "cancelled");
    assert_eq!(
        j["error"],
        "Queued subagent job no longer matches the subagent current_run_id"
    );
    assert_eq!(w.row("subagents", &stale_bad.sid)["status"], "running");
    assert_eq!(w.row("subagent_runs", &stale_bad.rid)["status"], "running");
    let j = wait_job_done(&w.b, &odd_job, JOB_WAIT);
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error"], "Unsupported subagent type: cursor_gateway");
    assert_eq!(w.row("subagents", &odd.sid)["status"], "failed");
    let run = w.row("subagent_runs", &odd.rid);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"], "Unsupported subagent type: cursor_gateway");
    assert_eq!(
        w.wait_kinds(&odd.rid, "run_failed"),
        ["run_failed"],
        "§5.4 writes one run_failed event"
    );
    let j = wait_job_done(&w.b, &unaccepted_job, JOB_WAIT);
    assert_eq!(j["status"], "cancelled");
    assert_eq!(
        j["error"],
        "Gateway job has no atomically accepted subagent run"
    );
    let j = wait_job_done(&w.b, &mismatch_job, JOB_WAIT);
    assert_eq!(j["status"], "cancelled");
    assert_eq!(j["error"], "Accepted subagent run identity mismatch");
    // Skipped jobs leave the subagents alone and never ran a CLI.
    assert_eq!(w.row("subagents", &idle.sid)["status"], "idle");
    assert_eq!(w.row("subagents", &mismatch.sid)["status"], "running");
    for t in ["badrow", "idle", "stale", "odd", "unaccepted", "mismatch"] {
        assert!(w.records(t).is_empty(), "{t} ran a CLI");
    }
}

#[test]
fn cancel_kills_the_running_process_group_and_cancels_the_run() {
    let mut w = World::new(false);
    w.start();
    let pidfile = w.gw.dir.path().join("grandchild.pid");
    let s = w.subagent(
        "cancel",
        restricted_config(),
        &[
            ("FAKE_CLI_MODE", "grandchild"),
            ("FAKE_CLI_GRANDCHILD_PID", &pidfile.display().to_string()),
        ],
    );
    let job = w.run_job(&s);
    let gpid: i32 = wait_for("the grandchild", JOB_WAIT, || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    assert!(!dead(gpid));
    let cancel = w.b.insert_job(
        &w.team,
        &w.gid,
        "subagent_cancel",
        json!({"subagent_id": s.sid, "run_id": s.rid, "reason": "User requested stop"}),
    );
    let c = wait_job_done(&w.b, &cancel, JOB_WAIT);
    assert_eq!(c["status"], "completed", "cancel job: {c}");
    assert_eq!(c["result"]["cancel_result"], "accepted");
    assert_eq!(c["result"]["cancelled_active_run"], true);
    assert_eq!(
        c["result"]["message"],
        "Cancel requested and forwarded to gateway."
    );
    let j = wait_job_done(&w.b, &job, Duration::from_secs(15));
    assert_eq!(
        j["status"], "completed",
        "a cancelled run completes the job: {j}"
    );
    assert_eq!(j["result"]["status"], "cancelled");
    assert_eq!(j["result"]["error"], "User requested stop");
    wait_for("the grandchild to die", Duration::from_secs(10), || {
        dead(gpid).then_some(())
    });
    let run = w.row("subagent_runs", &s.rid);
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["error"], "User requested stop");
    assert_eq!(run["metadata"]["cancel_state"], "acknowledged");
    assert_eq!(run["metadata"]["cancelled"], true);
    assert_eq!(w.row("subagents", &s.sid)["status"], "cancelled");
    let kinds = w.wait_kinds(&s.rid, "run_cancelled");
    assert_eq!(
        kinds,
        [
            "run_started",
            "run_progress",
            "cancellation_requested",
            "cancellation_acknowledged",
            "run_cancelled"
        ]
    );
    // The provider is not blamed for a cancel.
    assert!(!w.gw.state().to_string().contains("\"unhealthy\""));
}

#[test]
fn cancel_of_a_pending_run_finalizes_it_without_running_anything() {
    let mut w = World::new(false);
    w.start();
    let s = w.subagent("pending", restricted_config(), &[]);
    let cancel = w.b.insert_job(
        &w.team,
        &w.gid,
        "subagent_cancel",
        json!({"subagent_id": s.sid, "reason": "  "}),
    );
    let c = wait_job_done(&w.b, &cancel, JOB_WAIT);
    assert_eq!(c["status"], "completed", "cancel job: {c}");
    assert_eq!(c["result"]["cancel_result"], "accepted");
    assert_eq!(c["result"]["cancelled_active_run"], false);
    assert_eq!(c["result"]["reason"], "Cancelled");
    let sub = w.row("subagents", &s.sid);
    assert_eq!(sub["metadata"]["cancel_run_id"], s.rid.as_str());
    assert_eq!(sub["metadata"]["cancel_state"], "requested");

    let job = w.run_job(&s);
    let j = wait_job_done(&w.b, &job, JOB_WAIT);
    assert_eq!(j["status"], "completed", "job: {j}");
    assert_eq!(j["result"]["status"], "cancelled");
    assert_eq!(j["result"]["error"], "Cancelled");
    assert_eq!(w.row("subagent_runs", &s.rid)["status"], "cancelled");
    assert_eq!(w.row("subagents", &s.sid)["status"], "cancelled");
    let kinds = w.wait_kinds(&s.rid, "run_cancelled");
    assert_eq!(
        kinds,
        [
            "cancellation_requested",
            "cancellation_requested",
            "cancellation_acknowledged",
            "run_cancelled"
        ]
    );
    assert!(w.records("pending").is_empty(), "no CLI ran");

    // A cancel for a subagent that is not running is answered, not failed.
    let again = w.b.insert_job(
        &w.team,
        &w.gid,
        "subagent_cancel",
        json!({"subagent_id": s.sid}),
    );
    let c = wait_job_done(&w.b, &again, JOB_WAIT);
    assert_eq!(c["status"], "completed");
    assert_eq!(c["result"]["cancel_result"], "already_terminal");
}

#[test]
fn timeout_fails_the_run_and_marks_the_provider_unhealthy() {
    let mut w = World::new(false);
    w.start();
    let mut config = restricted_config();
    config["timeout_ms"] = json!(1500);
    // The auth failure first (its run must end before the slow one times out, whatever the
    // machine's load): it is the status change that emits the event.
    let auth = w.subagent(
        "auth",
        restricted_config(),
        &[("FAKE_CLI_MODE", "auth_error")],
    );
    let auth_job = w.run_job(&auth);
    let j = wait_job_done(&w.b, &auth_job, JOB_WAIT);
    assert_eq!(j["status"], "failed", "job: {j}");
    // The CLI's own reason (its error envelope on stdout), classified, with what to run.
    assert_eq!(
        j["error"],
        "Gateway provider Claude is unhealthy. Try another provider or run \"panorama-gateway doctor\". Details: Claude exited with status 1: Invalid API key · Please run /login. The CLI is not logged in or its API key was rejected; run `claude` once in a terminal and log in (/login), or set ANTHROPIC_API_KEY for the gateway"
    );
    assert_eq!(j["result"]["error_kind"], "auth", "job: {j}");
    assert_eq!(w.row("subagent_runs", &auth.rid)["status"], "failed");
    let s = w.subagent("slow", config, &[("FAKE_CLI_MODE", "hang")]);
    let job = w.run_job(&s);
    let j = wait_job_done(&w.b, &job, JOB_WAIT);
    assert_eq!(j["status"], "failed", "job: {j}");
    let err = j["error"].as_str().unwrap();
    assert!(
        err.starts_with("Gateway provider Claude is unhealthy."),
        "{err}"
    );
    assert!(err.contains("timed out"), "{err}");
    assert_eq!(j["result"]["status"], "failed");
    let run = w.row("subagent_runs", &s.rid);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["metadata"]["timed_out"], true);
    assert_eq!(w.row("subagents", &s.sid)["status"], "failed");
    assert_eq!(
        w.wait_kinds(&s.rid, "run_failed"),
        ["run_started", "run_progress", "run_failed"]
    );
    // The team sees why: a provider_unhealthy event for this run.
    let gid = w.gid.clone();
    let ev = wait_for("the provider_unhealthy event", JOB_WAIT, || {
        w.b.events(&gid)
            .into_iter()
            .find(|e| e["code"] == "provider_unhealthy")
    });
    assert_eq!(ev["details"]["context"], "subagent_run");
    // Emitted on the status change: the auth failure came first.
    assert_eq!(ev["details"]["run_id"], auth.rid.as_str());
}

#[test]
fn full_control_is_denied_until_every_layer_allows_it() {
    let mut w = World::new(true);
    w.start();
    let mut config = restricted_config();
    config["full_control"] = json!("yes");
    // Team toggle off: denied before anything runs.
    let denied = w.subagent("denied", config.clone(), &[]);
    let job = w.run_job(&denied);
    let j = wait_job_done(&w.b, &job, JOB_WAIT);
    assert_eq!(j["status"], "failed", "job: {j}");
    let reason = "Gateway machine control is disabled in Team Integrations.";
    assert_eq!(j["error"], reason);
    let run = w.row("subagent_runs", &denied.rid);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["metadata"]["full_control_requested"], true);
    assert_eq!(run["metadata"]["full_control_effective"], false);
    assert_eq!(run["metadata"]["full_control_denied_reason"], reason);
    assert_eq!(w.row("subagents", &denied.sid)["status"], "failed");
    let ev = w.run_events(&denied.rid);
    assert_eq!(ev.last().unwrap().1, "run_failed");
    assert_eq!(ev.last().unwrap().2["stage"], "pre_execution");
    assert!(w.records("denied").is_empty(), "no CLI ran");

    // Team toggle on (install toggle is on): elevated argv.
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/team_gateways?id=eq.{}", w.gid),
        Some(json!({"full_control_enabled": true})),
    );
    let allowed = w.subagent("allowed", config.clone(), &[]);
    let job = w.run_job(&allowed);
    let j = wait_job_done(&w.b, &job, JOB_WAIT);
    assert_eq!(j["status"], "completed", "job: {j}");
    let argv = w.argv("allowed");
    assert!(
        has_pair(&argv, "--permission-mode", "bypassPermissions"),
        "{argv:?}"
    );
    assert!(argv.contains(&"--dangerously-skip-permissions".to_string()));
    assert!(
        !argv.iter().any(|a| a.starts_with("--allowedTools")),
        "{argv:?}"
    );
    assert!(!argv.iter().any(|a| a.starts_with("--setting-sources")));
    assert!(!argv.iter().any(|a| a.contains("You cannot write")));
    let run = w.row("subagent_runs", &allowed.rid);
    assert_eq!(run["metadata"]["full_control_effective"], true);

    // Team toggle switched off right before the run, with no heartbeat in between: the run
    // reads the toggle itself and is denied before any CLI starts.
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/team_gateways?id=eq.{}", w.gid),
        Some(json!({"full_control_enabled": false})),
    );
    let late = w.subagent("late", config, &[]);
    let job = w.run_job(&late);
    let j = wait_job_done(&w.b, &job, JOB_WAIT);
    assert_eq!(j["status"], "failed", "job: {j}");
    assert_eq!(j["error"], reason);
    assert!(w.records("late").is_empty(), "no CLI ran");
}

#[test]
fn install_toggle_off_denies_full_control() {
    let mut w = World::new(false);
    w.start();
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/team_gateways?id=eq.{}", w.gid),
        Some(json!({"full_control_enabled": true})),
    );
    let mut config = restricted_config();
    config["full_control"] = json!(true);
    let s = w.subagent("noinstall", config, &[]);
    let job = w.run_job(&s);
    let j = wait_job_done(&w.b, &job, JOB_WAIT);
    assert_eq!(j["status"], "failed", "job: {j}");
    assert_eq!(
        j["error"],
        "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host."
    );
    assert!(w.records("noinstall").is_empty());
}

#[test]
fn codex_and_gemini_runs_complete_with_their_argv() {
    let mut w = World::new(false);
    w.start();
    let mut config = restricted_config();
    config.as_object_mut().unwrap().remove("permission_mode");
    let cx = w.subagent_of("codex", "codex_gateway", config.clone(), &[]);
    let gm = w.subagent_of("gemini", "gemini_gateway", config.clone(), &[]);
    let mut stream = config.clone();
    stream["output_format"] = json!("stream-json");
    let cs = w.subagent_of("codexstream", "codex_gateway", stream, &[]);
    let jobs: Vec<String> = [&cx, &gm, &cs].iter().map(|s| w.run_job(s)).collect();
    for j in &jobs {
        let row = wait_job_done(&w.b, j, JOB_WAIT);
        assert_eq!(row["status"], "completed", "job: {row}");
        assert_eq!(row["result"]["output"]["content_type"], "json");
        assert_eq!(row["result"]["output"]["content"]["message"], "hi");
    }
    let argv = w.argv("codex");
    assert_eq!(
        &argv[..4],
        [
            "exec",
            "--skip-git-repo-check",
            "--sandbox=read-only",
            "--config=model_reasoning_effort=\"high\""
        ]
    );
    assert!(
        has_pair(&argv, "--config", "features.shell_tool=false"),
        "{argv:?}"
    );
    assert!(
        has_pair(&argv, "--config", "web_search=\"live\""),
        "{argv:?}"
    );
    assert!(argv.contains(&"--json".to_string()));
    assert_eq!(argv.last().unwrap(), "-");
    let stdin = w.records("codex")[0]["stdin"].as_str().unwrap().to_string();
    assert!(stdin.contains("\n\nYou cannot write"), "{stdin}");
    let argv = w.argv("gemini");
    assert!(has_pair(&argv, "--output-format", "json"), "{argv:?}");
    assert!(has_pair(&argv, "--approval-mode", "plan"), "{argv:?}");
    let rec = &w.records("gemini")[0];
    let md = rec["system_md"].as_str().unwrap();
    assert!(md.contains("You cannot write"), "{md}");
    assert!(
        md.ends_with("Return STRICT JSON only. Do not wrap in code fences."),
        "{md}"
    );
    // stream-json: the agent message and reasoning become message events after finalization.
    let kinds = w.wait_kinds(&cs.rid, "run_completed");
    assert_eq!(
        kinds,
        [
            "run_started",
            "run_progress",
            "message",
            "message",
            "run_completed"
        ]
    );
    let ev = w.run_events(&cs.rid);
    assert_eq!(ev[2].2["kind"], "reasoning");
    assert_eq!(
        w.row("subagent_runs", &cs.rid)["metadata"]["usage"]["output_tokens"],
        122
    );

    // Claude stream-json: asked with --verbose (the CLI requires it), the result line is the
    // output.
    let mut stream = restricted_config();
    stream["output_format"] = json!("stream_json");
    let cl = w.subagent("claudestream", stream, &[]);
    let row = wait_job_done(&w.b, &w.run_job(&cl), JOB_WAIT);
    assert_eq!(row["status"], "completed", "job: {row}");
    assert_eq!(row["result"]["output"]["content"], "{\"message\":\"hi\"}");
    let argv = w.argv("claudestream");
    assert_eq!(
        &argv[..3],
        ["--print", "--output-format=stream-json", "--verbose"]
    );
    let md = &w.row("subagent_runs", &cl.rid)["metadata"];
    assert_eq!(md["output_format"], "stream-json");
    assert_eq!(md["session_id"], "f1d2c3b4-0000-4000-8000-000000000000");
}

impl World {
    /// What the backend writes to continue subagent `sid` with a new prompt (run `seq`):
    /// the subagent running again with `session` as `metadata.session_id`, and an accepted
    /// run. The fakes record under `tag`.
    fn continuation(&self, sid: &str, seq: i64, tag: &str, session: &str) -> Sub {
        let rid = uuid();
        let prompt = self.prompt(tag, &[("FAKE_CLI_SESSIONS", "1")]);
        let mut metadata = self.row("subagents", sid)["metadata"].clone();
        metadata["current_run_id"] = json!(rid);
        metadata["session_id"] = json!(session);
        self.b.admin(
            "PATCH",
            &format!("/rest/v1/subagents?id=eq.{sid}"),
            Some(json!({"status": "running", "metadata": metadata,
                        "input": {"prompt": prompt, "run_id": rid, "run_sequence": seq}})),
        );
        let (st, v) = self.b.insert_row(
            "subagent_runs",
            json!({"id": rid, "subagent_id": sid, "team_id": self.team, "gateway_id": self.gid,
                   "run_sequence": seq, "status": "running", "prompt": prompt}),
        );
        assert!((200..300).contains(&st), "insert run: {v}");
        Sub {
            sid: sid.to_string(),
            rid,
        }
    }
}

/// Codex and Gemini continue natively (the reference refused both): a completed run reports
/// its session as `metadata.session_id`, the next run of the subagent resumes exactly that one
/// (`codex exec … resume <id> -`, `gemini --resume=<id>`) from the subagent's work directory,
/// and a session the CLI never handed out fails the run with the CLI's own words. The fakes
/// keep sessions like the real CLIs (codex by thread id in ~/.codex/sessions, gemini per
/// directory in ~/.gemini/tmp) and only resume one they created.
#[test]
fn codex_and_gemini_continuations_resume_the_session_their_last_run_reported() {
    let mut w = World::new(false);
    w.start();
    let mut config = restricted_config();
    config.as_object_mut().unwrap().remove("permission_mode");
    for (tag, kind, not_found) in [
        ("cxcont", "codex_gateway", "no rollout found for thread id"),
        ("gmcont", "gemini_gateway", "Invalid session identifier"),
    ] {
        let first = w.subagent_of(tag, kind, config.clone(), &[("FAKE_CLI_SESSIONS", "1")]);
        let row = wait_job_done(&w.b, &w.run_job(&first), JOB_WAIT);
        assert_eq!(row["status"], "completed", "{tag}: {row}");
        let session = w.row("subagents", &first.sid)["metadata"]["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{tag}: no session reported"))
            .to_string();
        assert_eq!(
            w.row("subagent_runs", &first.rid)["metadata"]["session_id"],
            session.as_str()
        );
        let argv = w.argv(tag);
        assert!(!argv.iter().any(|a| a == "--ephemeral"), "{tag}: {argv:?}");

        let tag2 = format!("{tag}2");
        let second = w.continuation(&first.sid, 2, &tag2, &session);
        let row = wait_job_done(&w.b, &w.run_job(&second), JOB_WAIT);
        assert_eq!(row["status"], "completed", "{tag2}: {row}");
        assert_eq!(row["result"]["output"]["content"]["message"], "hi");
        let argv = w.argv(&tag2);
        if kind == "codex_gateway" {
            let at = argv.iter().position(|a| a == "resume").expect("resume");
            assert_eq!(
                argv[at + 1..],
                [session.clone(), "-".to_string()],
                "{argv:?}"
            );
            assert!(argv[..at].contains(&"--sandbox=read-only".to_string()));
        } else {
            assert!(argv.contains(&format!("--resume={session}")), "{argv:?}");
            assert!(!argv.iter().any(|a| a.starts_with("--session-id")));
        }
        assert_eq!(
            w.records(tag)[0]["cwd"],
            w.records(&tag2)[0]["cwd"],
            "{tag}: one work directory per subagent"
        );
        let md = w.row("subagents", &first.sid)["metadata"].clone();
        assert_eq!(md["session_id"], session.as_str(), "{md}");
        assert_eq!(md["run_sequence"], 2);

        // A session this CLI never handed out is not found: the run fails saying so.
        let tag3 = format!("{tag}3");
        let third = w.continuation(&first.sid, 3, &tag3, &uuid());
        let row = wait_job_done(&w.b, &w.run_job(&third), JOB_WAIT);
        assert_eq!(row["status"], "failed", "{tag3}: {row}");
        let err = row["error"].as_str().unwrap();
        assert!(err.contains(not_found), "{tag3}: {err}");

        // Another subagent naming this one's Codex thread (Codex would find it from any
        // directory) fails before its CLI starts: it only resumes its own threads.
        if kind == "codex_gateway" {
            let tag4 = format!("{tag}4");
            let other = w.subagent_of(&tag4, kind, config.clone(), &[("FAKE_CLI_SESSIONS", "1")]);
            let tag5 = format!("{tag}5");
            let steal = w.continuation(&other.sid, 2, &tag5, &session);
            let row = wait_job_done(&w.b, &w.run_job(&steal), JOB_WAIT);
            assert_eq!(row["status"], "failed", "{tag5}: {row}");
            let err = row["error"].as_str().unwrap();
            assert!(
                err.contains(&format!(
                    "session {session} was not started by this subagent"
                )) && err.contains("start a new subagent"),
                "{tag5}: {err}"
            );
            assert!(w.records(&tag5).is_empty(), "{tag5}: the CLI ran");
        }
    }
    // A subagent that asks for no session: Codex runs --ephemeral, Gemini's session (which it
    // always keeps) is removed after the run; neither is reported.
    let mut none = config.clone();
    none["no_session_persistence"] = json!(true);
    for (tag, kind) in [("cxnone", "codex_gateway"), ("gmnone", "gemini_gateway")] {
        let s = w.subagent_of(tag, kind, none.clone(), &[("FAKE_CLI_SESSIONS", "1")]);
        let row = wait_job_done(&w.b, &w.run_job(&s), JOB_WAIT);
        assert_eq!(row["status"], "completed", "{tag}: {row}");
        let md = w.row("subagents", &s.sid)["metadata"].clone();
        assert!(md.get("session_id").is_none(), "{tag}: {md}");
        let argv = w.argv(tag);
        if kind == "codex_gateway" {
            assert!(argv.contains(&"--ephemeral".to_string()), "{argv:?}");
        } else {
            let id = argv
                .iter()
                .find_map(|a| a.strip_prefix("--session-id="))
                .unwrap_or_else(|| panic!("{argv:?}"));
            let left: Vec<_> = std::fs::read_dir(w.gw.home().join(".gemini/tmp"))
                .unwrap()
                .flatten()
                .flat_map(|p| {
                    std::fs::read_dir(p.path().join("chats"))
                        .into_iter()
                        .flatten()
                })
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with(&format!("-{}.jsonl", &id[..8]))
                })
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
}

/// The emulator holds the gateway to the strict finalize body (subagents-shell.md §5.3).
#[test]
fn finalize_function_rejects_invalid_envelopes() {
    let w = World::new(false);
    let s = w.subagent("env", restricted_config(), &[]);
    let token = w.gw.state()["accessToken"].as_str().unwrap().to_string();
    let post = |body: &Value| -> (u16, Value) {
        let r = ureq::post(&format!(
            "{}/functions/v1/finalize-gateway-subagent-run",
            w.b.url
        ))
        .set("apikey", &w.b.anon_key)
        .set("Authorization", &format!("Bearer {token}"))
        .send_string(&body.to_string());
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        (r.status(), r.into_json().unwrap())
    };
    let good = json!({"subagent_id": s.sid, "run_id": s.rid, "final_status": "completed",
        "output": {"schema_version": 1, "content": "x", "content_type": "markdown"},
        "failure_output": null, "final_error": null,
        "completed_at": "2026-01-05T10:05:00.000Z", "stderr": "", "metadata_patch": {}});
    for (field, value, why) in [
        (
            "output",
            json!({"schema_version": 1, "content": "x", "content_type": "html"}),
            "content_type",
        ),
        (
            "output",
            json!({"schema_version": 0, "content": "x", "content_type": "text"}),
            "schema_version",
        ),
        (
            "output",
            json!({"schema_version": 1, "content": "x", "content_type": "text", "x": 1}),
            "unexpected field",
        ),
        ("output", Value::Null, "output is required"),
        ("stderr", json!(5), "stderr"),
    ] {
        let mut b = good.clone();
        b[field] = value;
        let (st, v) = post(&b);
        assert_eq!(st, 400, "{field}: {v}");
        assert_eq!(v["success"], false);
        assert!(v["error"].as_str().unwrap().contains(why), "{v}");
    }
    assert_eq!(w.row("subagent_runs", &s.rid)["status"], "running");
    let (st, v) = post(&good);
    assert_eq!(st, 200, "{v}");
    assert_eq!(w.row("subagent_runs", &s.rid)["status"], "completed");
}

/// A stop that outlasts the drain kills the CLI and records the run as cancelled by the
/// shutdown (§6.6), without blaming the provider.
#[test]
fn shutdown_after_the_drain_cancels_the_running_subagent() {
    let mut w = World::new(false);
    w.gw.set_env("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", "300");
    w.start();
    let s = w.subagent("stop", restricted_config(), &[("FAKE_CLI_MODE", "hang")]);
    let job = w.run_job(&s);
    wait_for("the CLI to start", JOB_WAIT, || {
        (!w.records("stop").is_empty()).then_some(())
    });
    w.gw.signal(libc::SIGTERM);
    let st = w.gw.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "daemon exit: {st:?}");
    // The job row follows the runtime's rule for jobs stopped by a shutdown.
    let j = w.b.job(&job);
    assert_eq!(j["status"], "failed", "job: {j}");
    assert_eq!(j["error"], "gateway shut down before the job finished");
    let run = w.row("subagent_runs", &s.rid);
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["metadata"]["cancel_state"], "acknowledged");
    assert_eq!(w.row("subagents", &s.sid)["status"], "cancelled");
    let ev = w.run_events(&s.rid);
    let kinds: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "run_progress",
            "cancellation_acknowledged",
            "run_cancelled"
        ]
    );
    assert_eq!(ev[3].2["source"], "gateway_shutdown");
    assert!(!w.gw.state().to_string().contains("\"unhealthy\""));
}

/// §2.4 steps 11-12 read the gateway's own row: a stale `last_seen_at` or a stored
/// `model_execution` that is not ready fails the run and marks the subagent failed.
#[test]
fn stale_heartbeat_and_unready_models_fail_the_run() {
    let mut w = World::new(false);
    // One heartbeat at start, then none for the test's length.
    w.gw.set_env("PANORAMA_GATEWAY_HEARTBEAT_MS", "600000");
    w.start();
    // Heartbeats are also sent when the status or a provider's health changes: wait until the
    // gateway is ready and the start-up health checks are done, so none races the PATCH below.
    let gid = w.gid.clone();
    wait_for("a settled gateway", Duration::from_secs(30), || {
        let r = w.b.gateway_row(&gid);
        let providers = r["capabilities"]["providers"].as_object().cloned()?;
        let settled = providers
            .values()
            .all(|p| p["available"] != true || p["health"]["check_type"] == "full");
        // The daemon's own start-up checks too: their end changes health and sends one more
        // heartbeat (the capabilities above may already show pair's full checks).
        let started_checks_done = w.gw.log().contains("provider checks at start done");
        (r["status"] == "ready" && settled && started_checks_done).then_some(())
    });
    let path = format!("/rest/v1/team_gateways?id=eq.{}", w.gid);
    let fresh = w.b.gateway_row(&w.gid)["last_seen_at"].clone();
    w.b.admin(
        "PATCH",
        &path,
        Some(json!({"last_seen_at": "2020-01-01T00:00:00.000Z"})),
    );
    let stale = w.subagent("stale_hb", restricted_config(), &[]);
    let j = wait_job_done(&w.b, &w.run_job(&stale), JOB_WAIT);
    assert_eq!(j["status"], "failed", "job: {j}");
    assert_eq!(j["error"], "Gateway is offline or heartbeat is stale");
    assert_eq!(w.row("subagents", &stale.sid)["status"], "failed");
    assert_eq!(w.row("subagent_runs", &stale.rid)["status"], "failed");

    let mut caps = w.b.gateway_row(&w.gid)["capabilities"].clone();
    caps["services"]["model_execution"] =
        json!({"ready": false, "reason": "No gateway AI model provider is healthy"});
    w.b.admin(
        "PATCH",
        &path,
        Some(json!({"last_seen_at": fresh, "capabilities": caps})),
    );
    let unready = w.subagent("unready", restricted_config(), &[]);
    let j = wait_job_done(&w.b, &w.run_job(&unready), JOB_WAIT);
    assert_eq!(j["status"], "failed", "job: {j}");
    assert_eq!(j["error"], "No gateway AI model provider is healthy");
    assert!(w.records("stale_hb").is_empty() && w.records("unready").is_empty());
}
