//! Crash-safe lifecycle (issue 12), through the real daemon and the real local backend:
//! SIGKILL during a model_run, a subagent_run and a shell session leaves no process behind
//! after the next start, fails exactly our interrupted jobs (and their subagent rows), and
//! leaves a `running` job that is not in the journal alone; a provider turning unhealthy
//! reaches `team_gateways` at once; a `stop` during a CLI probe that hangs ends the probe and
//! returns without waiting it out.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::connect::*;

const WAIT: Duration = Duration::from_secs(40);
const RESTART_ERROR: &str = "gateway restarted during the job";

struct World {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
    rec: PathBuf,
    args: Vec<String>,
}

impl World {
    fn new(env: &[(&str, &str)]) -> World {
        let b = Backend::start();
        let mut gw = Gateway::new(&b);
        let (_, bin, rec) = fake_cli_dirs(&mut gw);
        for (k, v) in env {
            gw.set_env(k, v);
        }
        let (code, team) = b.pairing_code(None);
        gw.pair(&code);
        let gid = gw.gateway_id();
        let mut args = Vec::new();
        for (flag, name) in [
            ("--claude-cli", "claude"),
            ("--codex-cli", "codex"),
            ("--gemini-cli", "gemini"),
        ] {
            let p = fake_cli_wrapper(&bin, name, None);
            args.push(flag.to_string());
            args.push(p.display().to_string());
        }
        World {
            b,
            gw,
            team,
            gid,
            rec,
            args,
        }
    }

    fn start(&mut self) {
        let a: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.gw.start_with(&a);
        let gid = self.gid.clone();
        wait_for("a ready heartbeat", WAIT, || {
            let r = self.b.gateway_row(&gid);
            (r["capabilities"]["services"]["model_execution"]["ready"] == true
                && r["status"] == "ready")
                .then_some(())
        });
    }

    fn prompt(&self, tag: &str, sets: &[(&str, &str)]) -> String {
        fake_cli_prompt(&self.rec, tag, &format!("Work on {tag}."), sets)
    }

    fn row(&self, table: &str, id: &str) -> Value {
        self.b.admin(
            "GET",
            &format!("/rest/v1/{table}?select=*&id=eq.{id}"),
            None,
        )[0]
        .clone()
    }

    fn shell_job(&self, payload: Value) -> Value {
        let id = self
            .b
            .insert_job(&self.team, &self.gid, "shell_session", payload);
        let j = wait_job_done(&self.b, &id, WAIT);
        assert_eq!(j["status"], "completed", "{j}");
        j["result"].clone()
    }

    fn journal_files(&self, ext: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.gw.config_dir().join("inflight"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == ext))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        kill_daemon_tree(&self.gw);
    }
}

fn pid_in(p: &Path) -> i32 {
    wait_for(&format!("a pid in {}", p.display()), WAIT, || {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    })
}

/// The parent of `pid` (the CLI whose grandchild it is).
fn parent(pid: i32) -> i32 {
    proc_entry(pid).map(|(_, pp)| pp).unwrap_or(0)
}

#[test]
fn sigkill_leaves_no_orphan_and_the_next_start_fails_only_our_jobs() {
    let mut w = World::new(&[]);
    let (rc, out, err) = w.gw.run(&["full-control", "enable"]);
    assert_eq!(rc, 0, "{out} {err}");
    w.b.set_team_full_control(&w.gid, true);
    w.start();
    w.gw.wait_team_full_control(true);
    let dir = w.gw.dir.path().to_path_buf();

    // A job of this gateway left running by someone else (not in our journal): not ours to judge.
    let foreign = w.b.admin(
        "POST",
        "/rest/v1/gateway_jobs",
        Some(
            json!({"team_id": w.team, "gateway_id": w.gid, "job_type": "model_run",
                    "payload": {"prompt": "elsewhere"}, "status": "running",
                    "started_at": "2026-01-01T00:00:00.000Z"}),
        ),
    );
    let foreign = foreign[0]["id"].as_str().unwrap().to_string();

    // A model_run whose CLI has a grandchild.
    let mr_pid = dir.join("mr-grandchild.pid");
    let mr_prompt = w.prompt(
        "mr",
        &[
            ("FAKE_CLI_MODE", "grandchild"),
            ("FAKE_CLI_GRANDCHILD_PID", &mr_pid.display().to_string()),
        ],
    );
    let mr = w.b.insert_job(
        &w.team,
        &w.gid,
        "model_run",
        json!({"provider": "claude_code", "model": "claude-sonnet-4-5", "output_format": "text",
               "prompt": mr_prompt}),
    );
    // A subagent_run whose CLI has a grandchild.
    let (sid, rid) = (uuid(), uuid());
    let sa_pid = dir.join("sa-grandchild.pid");
    let sa_prompt = w.prompt(
        "sa",
        &[
            ("FAKE_CLI_MODE", "grandchild"),
            ("FAKE_CLI_GRANDCHILD_PID", &sa_pid.display().to_string()),
        ],
    );
    for (table, row) in [
        (
            "subagents",
            json!({"id": sid, "team_id": w.team, "gateway_id": w.gid,
                   "subagent_type": "claude_code_gateway", "status": "running",
                   "config": {"output_format": "json", "full_control": false},
                   "input": {"prompt": sa_prompt, "run_id": rid, "run_sequence": 1},
                   "metadata": {"current_run_id": rid}}),
        ),
        (
            "subagent_runs",
            json!({"id": rid, "subagent_id": sid, "team_id": w.team, "gateway_id": w.gid,
                   "run_sequence": 1, "status": "running", "prompt": sa_prompt}),
        ),
    ] {
        let (st, v) = w.b.insert_row(table, row);
        assert!((200..300).contains(&st), "insert {table}: {v}");
    }
    // The payload names the subagent by its camelCase alias and no run: the handler takes the
    // run from the row, and recovery must still find and end it.
    let sa =
        w.b.insert_job(&w.team, &w.gid, "subagent_run", json!({"subagentId": sid}));
    // A shell session with a background child.
    let res = w.b.insert_team_resource(
        &w.team,
        "remote_shell",
        "editor",
        json!({"gateway_id": w.gid, "full_control": true}),
    );
    let r = w.shell_job(json!({"action": "open", "resource_id": res}));
    let session = r["session_id"].as_str().unwrap().to_string();
    let (sh_pid, bg_pid) = (dir.join("shell.pid"), dir.join("bg.pid"));
    w.shell_job(json!({"action": "write", "resource_id": res, "session_id": session,
        "input": format!("echo $$ > {}; (trap '' HUP; exec sleep 3600) & echo $! > {}\n", sh_pid.display(), bg_pid.display())}));

    let mut pids = vec![
        pid_in(&mr_pid),
        pid_in(&sa_pid),
        pid_in(&sh_pid),
        pid_in(&bg_pid),
    ];
    pids.push(parent(pids[0]));
    pids.push(parent(pids[1]));
    assert!(pids.iter().all(|p| *p > 1 && !dead(*p)), "{pids:?}");
    let old_daemon = w.gw.pid() as i32;
    assert!(
        pids.iter().all(|p| *p != old_daemon),
        "the CLIs are the daemon's children, not the daemon"
    );

    // Crash. Without recovery these would live on as orphans (the session's shell itself
    // ends when its terminal hangs up; a background job that ignores SIGHUP does not).
    w.gw.kill9();
    let left: Vec<i32> = pids.iter().copied().filter(|p| !dead(*p)).collect();
    assert!(
        left.len() >= 5 && left.contains(&pids[3]),
        "{left:?} of {pids:?}"
    );
    // A torn journal entry (a crash mid-write of a non-atomic writer would leave one).
    let torn = w.gw.config_dir().join("inflight").join("torn.json");
    std::fs::write(&torn, b"{\"key\": \"torn\", \"job_ty").unwrap();

    w.start();
    wait_for("every process of the old jobs to end", WAIT, || {
        pids.iter().all(|p| dead(*p)).then_some(())
    });
    for id in [&mr, &sa] {
        let j = wait_job_done(&w.b, id, WAIT);
        assert_eq!(j["status"], "failed", "{j}");
        assert_eq!(j["error"], RESTART_ERROR, "{j}");
    }
    let run = w.row("subagent_runs", &rid);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"], RESTART_ERROR);
    let sub = w.row("subagents", &sid);
    assert_eq!(sub["status"], "failed", "{sub}");
    assert_eq!(sub["metadata"]["recovered_after_restart"], true, "{sub}");
    let events = w.b.admin(
        "GET",
        &format!("/rest/v1/subagent_run_events?select=*&run_id=eq.{rid}&event_type=eq.run_failed"),
        None,
    );
    assert_eq!(events[0]["payload"]["reason"], RESTART_ERROR, "{events}");
    assert_eq!(events[0]["payload"]["source"], "gateway_restart");

    // Recovery is over once the event says so; the foreign job is untouched.
    let gid = w.gid.clone();
    let ev = wait_for("the jobs_recovered event", WAIT, || {
        w.b.events(&gid)
            .into_iter()
            .find(|e| e["code"] == "jobs_recovered")
    });
    assert_eq!(ev["details"]["count"], 2, "{ev}");
    assert!(w
        .b
        .events(&gid)
        .iter()
        .any(|e| e["code"] == "journal_unreadable"));
    assert_eq!(w.b.job(&foreign)["status"], "running");
    assert!(!torn.exists());
    assert_eq!(w.journal_files("bad").len(), 1);
    // The recovered entries are gone; the gateway serves jobs again.
    let d = w.b.insert_job(&w.team, &w.gid, "diagnostic", json!({}));
    assert_eq!(wait_job_done(&w.b, &d, WAIT)["status"], "completed");
    wait_for("an empty journal", WAIT, || {
        w.journal_files("json").is_empty().then_some(())
    });
    assert_eq!(w.b.job(&foreign)["status"], "running");
    let log = w.gw.log();
    assert!(
        log.contains("ended the leftover process group of model_run"),
        "{log}"
    );
    assert!(log.contains("ended the leftover process group of shell_session"));
    assert_eq!(w.gw.stop(WAIT).code(), Some(0));
}

#[test]
fn a_provider_turning_unhealthy_reaches_team_gateways_at_once() {
    // Periodic heartbeats far apart: only the health change can bring the news quickly.
    let mut w = World::new(&[
        ("PANORAMA_GATEWAY_HEARTBEAT_MS", "120000"),
        ("PANORAMA_GATEWAY_RECONCILE_MS", "60000"),
    ]);
    w.start();
    let gid = w.gid.clone();
    let status = |b: &Backend| {
        b.gateway_row(&gid)["capabilities"]["providers"]["claude_code"]["health"]["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // The start-up validation of the three providers is over (its end wakes the heartbeat
    // too): from now on only the health change itself can.
    wait_for(
        "the start-up provider checks in team_gateways",
        WAIT,
        || {
            let p = w.b.gateway_row(&gid)["capabilities"]["providers"].clone();
            ["claude_code", "codex", "gemini"]
                .iter()
                .all(|id| p[id]["health"]["status"].is_string())
                .then_some(())
        },
    );
    assert_ne!(status(&w.b), "unhealthy");
    let prompt = w.prompt("auth", &[("FAKE_CLI_MODE", "auth_error")]);
    let id = w.b.insert_job(
        &w.team,
        &w.gid,
        "model_run",
        json!({"provider": "claude_code", "model": "claude-sonnet-4-5", "output_format": "text",
               "prompt": prompt}),
    );
    // The provider's health changes before the job's result is written.
    let j = wait_job_done(&w.b, &id, WAIT);
    assert_eq!(j["status"], "failed", "{j}");
    let t0 = Instant::now();
    // The issue asks for 2 s; the bound leaves room for a loaded build box (the periodic
    // heartbeat is 120 s away, so only the wake-up can make it).
    wait_for("unhealthy in team_gateways", Duration::from_secs(5), || {
        (status(&w.b) == "unhealthy").then_some(())
    });
    eprintln!(
        "unhealthy visible {} ms after the job row",
        t0.elapsed().as_millis()
    );
    assert_eq!(w.gw.stop(WAIT).code(), Some(0));
}

#[test]
fn a_stop_during_a_cli_probe_that_hangs_ends_the_probe_and_returns() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (root, bin, _rec) = fake_cli_dirs(&mut gw);
    let (code, _) = b.pairing_code(None);
    gw.pair(&code);
    // A codex that hangs in `--version` with a child of its own, as a CLI waiting for the
    // network or a login can: discovery probes it right after the start.
    let marks = root.join("probe");
    let codex = bin.join("codex-hangs");
    std::fs::write(
        &codex,
        format!(
            "#!/bin/sh\necho $$ > '{m}.cli'\nsleep 600 &\necho $! > '{m}.child'\nwait\n",
            m = marks.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&codex, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let claude = fake_cli_wrapper(&bin, "claude", None);
    let gemini = fake_cli_wrapper(&bin, "gemini", None);
    gw.start_with(&[
        "--claude-cli",
        &claude.display().to_string(),
        "--codex-cli",
        &codex.display().to_string(),
        "--gemini-cli",
        &gemini.display().to_string(),
    ]);
    let cli = pid_in(&marks.with_extension("cli"));
    let child = pid_in(&marks.with_extension("child"));
    let daemon = gw.pid() as i32;
    let t0 = Instant::now();
    let (code, out, err) = gw.run(&["stop"]);
    let took = t0.elapsed();
    assert_eq!(code, 0, "stop: {out}{err}");
    eprintln!("stop returned after {} ms", took.as_millis());
    // `stop` returns when the process is gone; the probe went with it, not after it.
    assert!(
        dead(daemon),
        "the daemon {daemon} is still running after stop"
    );
    assert!(dead(cli), "the probe {cli} outlived the daemon");
    wait_for("the probe's child to be killed", WAIT, || {
        dead(child).then_some(())
    });
    // Generous: the probe alone would have held the stop for 5 s, the checks for 30 s.
    assert!(
        took < Duration::from_secs(20),
        "stop waited {took:?} for a probe"
    );
    assert_eq!(gw.wait_exit(WAIT).code(), Some(0));
}
