//! End to end: `shell_session` jobs (seed contract: open, write, read, status, close) through
//! the real gateway daemon and the real local backend. A session outlives the job that opened
//! it; what is asserted is what a caller sees in the job rows and on the host (shell state kept
//! between jobs, process groups gone after close, idle expiry and daemon shutdown).

mod connect_support;

use std::path::Path;
use std::time::Duration;

use connect_support::*;
use serde_json::{json, Value};

const JOB_WAIT: Duration = Duration::from_secs(40);

struct World {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
}

impl World {
    fn start(env: &[(&str, &str)]) -> World {
        let b = Backend::start();
        let mut gw = Gateway::new(&b);
        gw.set_env("SHELL", "");
        for (k, v) in env {
            gw.set_env(k, v);
        }
        let (code, team) = b.pairing_code(None);
        gw.pair(&code);
        let gid = gw.gateway_id();
        let (rc, out, err) = gw.run(&["full-control", "enable"]);
        assert_eq!(rc, 0, "{out} {err}");
        b.set_team_full_control(&gid, true);
        gw.start();
        gw.wait_team_full_control(true);
        World { b, gw, team, gid }
    }

    fn resource(&self, access: &str, metadata: Value) -> String {
        self.b
            .insert_team_resource(&self.team, "remote_shell", access, metadata)
    }

    fn shell_resource(&self) -> String {
        self.resource(
            "editor",
            json!({"gateway_id": self.gid, "full_control": true}),
        )
    }

    fn job(&self, payload: Value) -> Value {
        let id = self
            .b
            .insert_job(&self.team, &self.gid, "shell_session", payload);
        wait_job_done(&self.b, &id, JOB_WAIT)
    }

    /// A job that must complete; returns its result.
    fn ok(&self, payload: Value) -> Value {
        let j = self.job(payload.clone());
        assert_eq!(j["status"], "completed", "{payload} → {j}");
        j["result"].clone()
    }

    fn open(&self, rid: &str) -> String {
        let r = self.ok(json!({"action": "open", "resource_id": rid}));
        assert_eq!(r["status"], "open", "{r}");
        assert_eq!(r["cwd"], "/");
        r["session_id"].as_str().unwrap().to_string()
    }

    /// Reads from `cursor` until the output so far contains `needle`; returns it and the next
    /// cursor.
    fn read_until(&self, rid: &str, sid: &str, mut cursor: u64, needle: &str) -> (String, u64) {
        let mut seen = String::new();
        wait_for(
            &format!("{needle:?} in the session output"),
            JOB_WAIT,
            || {
                let r = self.ok(
                    json!({"action": "read", "resource_id": rid, "session_id": sid,
                                   "cursor": cursor, "wait_ms": 2000, "max_bytes": 1_000_000}),
                );
                // The cursor is used as given unless older output was dropped meanwhile.
                assert!(
                    r["cursor"] == cursor || r["truncated"] == true,
                    "cursor {cursor} → {} truncated {}",
                    r["cursor"],
                    r["truncated"]
                );
                seen.push_str(r["output"].as_str().unwrap());
                cursor = r["next_cursor"].as_u64().unwrap();
                seen.contains(needle).then_some(())
            },
        );
        (seen, cursor)
    }
}

fn wait_pid(p: &Path) -> i32 {
    wait_for(&format!("a pid in {}", p.display()), JOB_WAIT, || {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    })
}

#[test]
fn a_session_keeps_its_shell_across_jobs_and_close_kills_its_group() {
    let mut w = World::start(&[]);
    let rid = w.shell_resource();
    let sid = w.open(&rid);
    let dir = TempDir::new("shell-session");

    // State survives between jobs: variables and the working directory.
    let r = w.ok(
        json!({"action": "write", "resource_id": rid, "session_id": sid,
                        "input": "cd /tmp && X=41\n"}),
    );
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["bytes_written"], 16);
    let r = w.ok(json!({"action": "write", "resource_id": rid, "session_id": sid,
                        "input": "echo \"x=$((X+1)) pwd=$PWD\"; echo to-stderr >&2; echo \"key=${SUPABASE_ANON_KEY:-unset}\"\n"}));
    let start = r["cursor"].as_u64().unwrap();
    let (out, next) = w.read_until(&rid, &sid, start, "key=");
    assert!(out.contains("x=42 pwd=/tmp\n"), "{out}");
    assert!(out.contains("to-stderr\n"), "{out}");
    assert!(
        out.contains("key=unset"),
        "the anon key reached the shell: {out}"
    );

    // Reading from 0 again gives the same bytes (absolute cursors); nothing new past the end.
    let r = w.ok(json!({"action": "read", "resource_id": rid, "session_id": sid, "cursor": 0}));
    assert_eq!(r["cursor"], 0);
    assert_eq!(r["next_cursor"], next);
    assert_eq!(r["truncated"], false);
    assert!(r["output"].as_str().unwrap().ends_with(&out), "{r}");
    let r = w.ok(
        json!({"action": "read", "resource_id": rid, "session_id": sid,
                        "cursor": next, "max_bytes": 10}),
    );
    assert_eq!(r["output"], "");
    assert_eq!(r["next_cursor"], next);
    // max_bytes bounds a read.
    let r = w.ok(
        json!({"action": "read", "resource_id": rid, "session_id": sid,
                        "cursor": 0, "max_bytes": 3}),
    );
    assert_eq!(r["next_cursor"], 3);
    assert_eq!(r["more"], true);

    // A read never splits a UTF-8 character: 3 bytes of "ééé" give one "é".
    let r = w.ok(
        json!({"action": "write", "resource_id": rid, "session_id": sid,
                        "input": "echo ééé\n"}),
    );
    let at = r["cursor"].as_u64().unwrap();
    let (_, next) = w.read_until(&rid, &sid, at, "ééé\n");
    let r = w.ok(
        json!({"action": "read", "resource_id": rid, "session_id": sid,
                        "cursor": at, "max_bytes": 3}),
    );
    assert_eq!(r["output"], "é", "{r}");
    assert_eq!(r["next_cursor"], at + 2);

    let st = w.ok(json!({"action": "status", "resource_id": rid, "session_id": sid}));
    assert_eq!(st["alive"], true, "{st}");
    assert_eq!(st["exit_code"], Value::Null);
    assert_eq!(st["buffer_start"], 0);
    assert_eq!(st["buffer_end"], next);
    assert!(st["created_at"].as_str().is_some() && st["idle_ms"].as_u64().is_some());

    // A viewer resource may not be used for a session of another resource, and a session is
    // bound to the resource it was opened on.
    let other = w.shell_resource();
    let j = w.job(json!({"action": "status", "resource_id": other, "session_id": sid}));
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["error"], "Shell session not found");

    // The buffer keeps the newest 5 MB; a cursor from before it says so; a read is ≤ 1 MB.
    w.ok(
        json!({"action": "write", "resource_id": rid, "session_id": sid,
                "input": "head -c 6000000 /dev/zero | tr '\\0' a; echo; echo big-done\n"}),
    );
    w.read_until(&rid, &sid, next, "big-done");
    let r = w.ok(
        json!({"action": "read", "resource_id": rid, "session_id": sid,
                        "cursor": 0, "max_bytes": 5_000_000}),
    );
    assert_eq!(r["truncated"], true, "cursor {}", r["cursor"]);
    let start = r["cursor"].as_u64().unwrap();
    assert!(start > 1_000_000, "buffer start {start}");
    assert_eq!(r["output"].as_str().unwrap().len(), 1_000_000);
    assert_eq!(r["next_cursor"], start + 1_000_000);
    assert_eq!(r["more"], true);
    let st = w.ok(json!({"action": "status", "resource_id": rid, "session_id": sid}));
    assert_eq!(
        st["buffer_end"].as_u64().unwrap() - st["buffer_start"].as_u64().unwrap(),
        5_000_000
    );

    // Close: a background grandchild goes with the shell.
    let pidfile = dir.path().join("bg.pid");
    w.ok(
        json!({"action": "write", "resource_id": rid, "session_id": sid,
                "input": format!("sleep 60 & echo $! > {}\n", pidfile.display())}),
    );
    let bg = wait_pid(&pidfile);
    assert!(!dead(bg));
    let r = w.ok(json!({"action": "close", "resource_id": rid, "session_id": sid}));
    assert_eq!(r["status"], "closed", "{r}");
    assert_eq!(r["exited"], true, "{r}");
    wait_for(
        "the background process to be gone",
        Duration::from_secs(5),
        || dead(bg).then_some(()),
    );
    let j = w.job(json!({"action": "read", "resource_id": rid, "session_id": sid}));
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["error"], "Shell session not found");

    // A shell that exits on its own reports its exit code and refuses input.
    let sid2 = w.open(&rid);
    w.ok(json!({"action": "write", "resource_id": rid, "session_id": sid2, "input": "exit 7\n"}));
    let st = wait_for("the shell to exit", JOB_WAIT, || {
        let st = w.ok(json!({"action": "status", "resource_id": rid, "session_id": sid2}));
        (st["alive"] == false).then_some(st)
    });
    assert_eq!(st["exit_code"], 7, "{st}");
    let j = w
        .job(json!({"action": "write", "resource_id": rid, "session_id": sid2, "input": "echo\n"}));
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["error"], "Shell session has exited; open a new session");
    let r = w.ok(json!({"action": "close", "resource_id": rid, "session_id": sid2}));
    assert_eq!(r["exit_code"], 7);

    // Validation and authorization.
    let j = w.job(json!({"action": "dance", "resource_id": rid}));
    assert_eq!(j["status"], "failed");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("Unknown shell_session action"),
        "{j}"
    );
    let j = w.job(json!({"resource_id": rid}));
    assert!(
        j["error"].as_str().unwrap().starts_with("Missing action"),
        "{j}"
    );
    let j = w.job(json!({"action": "write", "resource_id": rid}));
    assert_eq!(j["error"], "Missing session_id in payload");
    let j = w.job(json!({"action": "open"}));
    assert_eq!(j["error"], "Missing resource_id in payload");
    let j = w.job(json!({"action": "read", "resource_id": rid, "session_id": sid, "cursor": "x"}));
    assert_eq!(
        j["error"],
        "Invalid cursor in payload: expected a non-negative integer"
    );
    let viewer = w.resource("viewer", json!({"gateway_id": w.gid, "full_control": true}));
    let j = w.job(json!({"action": "open", "resource_id": viewer}));
    assert_eq!(
        j["error"],
        "Remote shell resource is configured for viewer access. Full access is required for this action."
    );
    // Reading is allowed on a viewer resource (it then finds no session of its own).
    let j = w.job(json!({"action": "status", "resource_id": viewer, "session_id": sid}));
    assert_eq!(j["error"], "Shell session not found");
    let off = w.resource(
        "editor",
        json!({"gateway_id": w.gid, "full_control": false}),
    );
    let j = w.job(json!({"action": "open", "resource_id": off}));
    assert_eq!(
        j["error"],
        "Remote shell resource machine control is disabled"
    );
    // At most 4 sessions per resource.
    let busy = w.shell_resource();
    for _ in 0..4 {
        w.open(&busy);
    }
    let j = w.job(json!({"action": "open", "resource_id": busy}));
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(
        j["error"],
        "Too many shell sessions on this resource (4); close one first"
    );
    // Revoking the resource's opt-in ends its sessions at the next job that sees it.
    let revoked = w.shell_resource();
    let rsid = w.open(&revoked);
    let rpid = dir.path().join("revoked.pid");
    w.ok(
        json!({"action": "write", "resource_id": revoked, "session_id": rsid,
                "input": format!("sleep 60 & echo $! > {}\n", rpid.display())}),
    );
    let rbg = wait_pid(&rpid);
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/team_resources?id=eq.{revoked}"),
        Some(json!({"metadata": {"gateway_id": w.gid, "full_control": false}})),
    );
    let j = w.job(json!({"action": "read", "resource_id": revoked, "session_id": rsid}));
    assert_eq!(
        j["error"],
        "Remote shell resource machine control is disabled"
    );
    wait_for(
        "the revoked session's process to be gone",
        Duration::from_secs(10),
        || dead(rbg).then_some(()),
    );
    // Closing needs no machine control: it works on the revoked resource too.
    wait_for(
        "the revoked session to be forgotten",
        Duration::from_secs(10),
        || {
            let j = w.job(json!({"action": "close", "resource_id": revoked, "session_id": rsid}));
            (j["error"] == "Shell session not found").then_some(())
        },
    );

    // A session whose process must die when the team toggle goes off.
    let tsid = w.open(&rid);
    let tpid = dir.path().join("team.pid");
    w.ok(
        json!({"action": "write", "resource_id": rid, "session_id": tsid,
                "input": format!("sleep 60 & echo $! > {}\n", tpid.display())}),
    );
    let tbg = wait_pid(&tpid);
    let csid = w.open(&rid);

    // Team toggle off: every action is denied, naming the layer.
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/team_gateways?id=eq.{}", w.gid),
        Some(json!({ "full_control_enabled": false })),
    );
    wait_for(
        "the daemon to read the team toggle",
        Duration::from_secs(20),
        || (w.gw.status_file()["team_full_control"] == json!(false)).then_some(()),
    );
    // The daemon ends every session as soon as it reads the toggle, without waiting for a
    // shell job: the background process of the session dies.
    wait_for(
        "sessions to end when the team toggle is off",
        Duration::from_secs(10),
        || dead(tbg).then_some(()),
    );
    // The ended sessions are forgotten; every other action is denied, naming the layer.
    let j = w.job(json!({"action": "close", "resource_id": rid, "session_id": csid}));
    assert_eq!(j["error"], "Shell session not found", "{j}");
    let j = w.job(json!({"action": "open", "resource_id": rid}));
    assert_eq!(j["status"], "failed");
    assert_eq!(
        j["error"],
        "Gateway machine control is disabled in Team Integrations."
    );
    let j = w.job(json!({"action": "read", "resource_id": rid, "session_id": tsid}));
    assert_eq!(
        j["error"],
        "Gateway machine control is disabled in Team Integrations."
    );
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn idle_sessions_expire_and_shutdown_kills_the_rest() {
    let mut w = World::start(&[("PANORAMA_GATEWAY_SHELL_SESSION_IDLE_MS", "3000")]);
    let rid = w.shell_resource();
    let dir = TempDir::new("shell-idle");

    // Idle expiry: nobody touches the session; its shell and background process go.
    let sid = w.open(&rid);
    let idle_pid = dir.path().join("idle.pid");
    w.ok(
        json!({"action": "write", "resource_id": rid, "session_id": sid,
                "input": format!("sleep 60 & echo $! > {}\n", idle_pid.display())}),
    );
    let bg = wait_pid(&idle_pid);
    wait_for(
        "the idle session's process to be gone",
        Duration::from_secs(15),
        || dead(bg).then_some(()),
    );
    // `status` is not activity, so polling it does not keep the session alive.
    wait_for(
        "the idle session to be removed",
        Duration::from_secs(10),
        || {
            let j = w.job(json!({"action": "status", "resource_id": rid, "session_id": sid}));
            (j["error"] == "Shell session not found").then_some(())
        },
    );

    // Shutdown: an open session's process group is killed before the daemon exits.
    let sid = w.open(&rid);
    let pidfile = dir.path().join("shutdown.pid");
    w.ok(
        json!({"action": "write", "resource_id": rid, "session_id": sid,
                "input": format!("sleep 60 & echo $! > {}\n", pidfile.display())}),
    );
    let bg = wait_pid(&pidfile);
    assert!(!dead(bg));
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
    wait_for(
        "the session's process to be gone after shutdown",
        Duration::from_secs(5),
        || dead(bg).then_some(()),
    );
}
