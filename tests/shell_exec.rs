//! End to end: `shell_exec` jobs through the real gateway daemon and the real local backend.
//! What is asserted is what a caller sees in the `gateway_jobs` row (status, result, error) and
//! what happened on the host (files written, processes gone).

mod connect_support;

use std::path::Path;
use std::time::{Duration, Instant};

use connect_support::*;
use serde_json::{json, Value};

const JOB_WAIT: Duration = Duration::from_secs(40);

/// A paired, running gateway with machine control on at both toggles (install, team), and the
/// ids a test needs.
struct World {
    b: Backend,
    gw: Gateway,
    team: String,
    gid: String,
}

impl World {
    fn new(install: bool, team_toggle: bool) -> World {
        let b = Backend::start();
        let mut gw = Gateway::new(&b);
        // No login shell per missing CLI while pairing (see e2e_model_run).
        gw.set_env("SHELL", "");
        let (code, team) = b.pairing_code(None);
        gw.pair(&code);
        let gid = gw.gateway_id();
        if install {
            let (rc, out, err) = gw.run(&["full-control", "enable"]);
            assert_eq!(rc, 0, "full-control enable: {out} {err}");
        }
        let w = World { b, gw, team, gid };
        w.set_team_toggle(team_toggle);
        w
    }

    fn start(&mut self) {
        self.gw.start();
        let gid = self.gid.clone();
        let b = &self.b;
        wait_for("the first heartbeat", Duration::from_secs(20), || {
            b.gateway_row(&gid)["last_seen_at"].as_str().map(|_| ())
        });
        let on = self.b.gateway_row(&self.gid)["full_control_enabled"] == json!(true);
        self.gw.wait_team_full_control(on);
    }

    /// Sets `team_gateways.full_control_enabled` with the service role; when the daemon runs,
    /// waits until it has read the new value (it does after each heartbeat).
    fn set_team_toggle(&self, on: bool) {
        self.b.set_team_full_control(&self.gid, on);
        if self.gw.daemon.is_some() {
            self.gw.wait_team_full_control(on);
        }
    }

    /// Inserts a `team_resources` row; returns its id.
    fn resource(&self, team: &str, resource_type: &str, access: &str, metadata: Value) -> String {
        self.b
            .insert_team_resource(team, resource_type, access, metadata)
    }

    /// A remote shell resource on this gateway, opted in to machine control.
    fn shell_resource(&self) -> String {
        self.resource(
            &self.team,
            "remote_shell",
            "editor",
            json!({"gateway_id": self.gid, "full_control": true}),
        )
    }

    fn exec(&self, payload: Value) -> Value {
        let id = self
            .b
            .insert_job(&self.team, &self.gid, "shell_exec", payload);
        wait_job_done(&self.b, &id, JOB_WAIT)
    }
}

fn assert_denied(job: &Value, message: &str) {
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"], message, "{job}");
    assert_eq!(job["result"]["message"], message, "{job}");
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[test]
fn shell_exec_runs_commands_with_the_reference_result_shape_and_limits() {
    let mut w = World::new(true, true);
    w.start();
    let rid = w.shell_resource();

    // Happy path: login shell, cwd /, scrubbed env, private TMPDIR, exact result shape.
    let cmd = "echo hello; echo oops >&2; pwd; echo \"tmp=$TMPDIR\"; echo \"key=${SUPABASE_ANON_KEY:-unset}\"";
    let j = w.exec(
        json!({"resource_id": format!("  {rid} "), "command": cmd, "timeout_ms": 20000,
                          "resource_uri": "panorama://x", "requested_at": "2026-01-01T00:00:00Z"}),
    );
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["error"], Value::Null, "{j}");
    let r = &j["result"];
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "message",
        "resource_id",
        "command",
        "shell",
        "exec_user",
        "workload_id",
        "cgroup",
        "cgroup_termination_error",
        "process_tree_contained",
        "cwd",
        "stdout",
        "stderr",
        "exit_code",
        "duration_ms",
        "timed_out",
        "success",
        "readiness_evidence",
        "stdout_truncated",
        "stderr_truncated",
        "output_truncated",
        "error",
    ];
    let mut got = keys.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{r}");
    assert_eq!(r["message"], "Remote shell command completed");
    assert_eq!(r["resource_id"], rid.as_str());
    assert_eq!(r["command"], cmd);
    let shell = r["shell"].as_str().unwrap();
    assert!(shell == "/bin/bash" || shell == "/bin/sh", "shell {shell}");
    assert_eq!(r["cwd"], "/");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["success"], true);
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["process_tree_contained"], false);
    assert_eq!(r["exec_user"], Value::Null);
    assert_eq!(r["output_truncated"], false);
    assert_eq!(r["stderr"], "oops\n");
    let out = r["stdout"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello", "{out}");
    assert_eq!(lines[1], "/", "{out}");
    let tmp = lines[2].strip_prefix("tmp=").unwrap();
    assert!(
        Path::new(tmp).starts_with(w.gw.config_dir().join("tmp")),
        "TMPDIR {tmp} should be under the config dir"
    );
    assert_eq!(lines[3], "key=unset", "secrets reach the command: {out}");
    assert!(r["duration_ms"].as_u64().is_some());

    // A non-zero exit still completes the job; success says false.
    let j = w.exec(json!({"resource_id": rid, "command": "echo partial; exit 3"}));
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(
        j["result"]["message"],
        "Remote shell command completed with a non-zero exit status"
    );
    assert_eq!(j["result"]["exit_code"], 3);
    assert_eq!(j["result"]["success"], false);
    assert_eq!(j["result"]["stdout"], "partial\n");

    // Timeout: the whole process group goes, background grandchild included.
    let dir = TempDir::new("shell-timeout");
    let pidfile = dir.path().join("grandchild.pid");
    let cmd = format!(
        "sleep 60 & echo $! > {}; echo started; sleep 60",
        pidfile.display()
    );
    let t0 = Instant::now();
    let j = w.exec(json!({"resource_id": rid, "command": cmd, "timeout_ms": "700"}));
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "timeout took {:?}",
        t0.elapsed()
    );
    assert_eq!(j["status"], "completed", "{j}");
    let r = &j["result"];
    assert_eq!(r["message"], "Remote shell command timed out", "{r}");
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["success"], false);
    assert_eq!(r["exit_code"], Value::Null);
    assert_eq!(r["stdout"], "started\n");
    let gc = read_pid(&pidfile).expect("the grandchild wrote its pid");
    wait_for("the grandchild to be gone", Duration::from_secs(5), || {
        dead(gc).then_some(())
    });

    // Output beyond 5 MB per stream is dropped and flagged.
    let j = w.exec(json!({"resource_id": rid,
        "command": "head -c 6000000 /dev/zero | tr '\\0' a; echo err >&2"}));
    assert_eq!(j["status"], "completed", "{}", j["error"]);
    let r = &j["result"];
    assert_eq!(r["stdout"].as_str().unwrap().len(), 5_000_000);
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stderr_truncated"], false);
    assert_eq!(r["output_truncated"], true);
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["success"], true);

    // Both streams full: the result still fits a completion the backend takes (stdout keeps
    // its 5 MB, stderr the rest of the 6 MB budget) instead of leaving the job running.
    let j = w.exec(json!({"resource_id": rid,
        "command": "head -c 6000000 /dev/zero | tr '\\0' a; head -c 6000000 /dev/zero | tr '\\0' b >&2"}));
    assert_eq!(j["status"], "completed", "{}", j["error"]);
    let r = &j["result"];
    assert_eq!(r["stdout"].as_str().unwrap().len(), 5_000_000);
    assert_eq!(r["stderr"].as_str().unwrap().len(), 1_000_000);
    assert!(r["stderr"].as_str().unwrap().bytes().all(|b| b == b'b'));
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stderr_truncated"], true);
    assert_eq!(r["output_truncated"], true);
    // Control bytes are escaped six-fold in JSON; the budget counts them that way.
    let j = w.exec(json!({"resource_id": rid, "command": "head -c 3000000 /dev/zero"}));
    assert_eq!(j["status"], "completed", "{}", j["error"]);
    let r = &j["result"];
    let n = r["stdout"].as_str().unwrap().len();
    assert!(n <= 5_000_000 / 6 && n > 800_000, "{n}");
    assert_eq!(r["stdout_truncated"], true);

    // Payload validation.
    let j = w.exec(json!({"command": "true"}));
    assert_denied(&j, "Missing resource_id in payload");
    let j = w.exec(json!({"resource_id": "box-1", "command": "true"}));
    assert_denied(
        &j,
        "Invalid resource_id in payload: expected the UUID of a team resource",
    );
    let j = w.exec(json!({"resource_id": rid, "command": "   "}));
    assert_denied(&j, "Missing command in payload");
    assert_eq!(j["result"]["resource_id"], rid.as_str());
    let j = w.exec(json!({"resource_id": rid, "command": "true", "secret_env": {"A": "b"}}));
    assert_denied(&j, "Team secrets can only be injected inside a managed VM");

    // Resource checks, in the reference's order and words.
    let missing = "00000000-0000-4000-8000-000000000000";
    let j = w.exec(json!({"resource_id": missing, "command": "true"}));
    assert_denied(&j, "Remote shell resource not found");
    assert_eq!(j["result"]["resource_id"], missing);
    let (_, other_team) = w.b.pairing_code(None);
    let foreign = w.resource(
        &other_team,
        "remote_shell",
        "editor",
        json!({"gateway_id": w.gid, "full_control": true}),
    );
    let j = w.exec(json!({"resource_id": foreign, "command": "true"}));
    assert_denied(&j, "Remote shell resource not found");
    let repo = w.resource(
        &w.team,
        "github_repo",
        "editor",
        json!({"gateway_id": w.gid}),
    );
    let j = w.exec(json!({"resource_id": repo, "command": "true"}));
    assert_denied(
        &j,
        "Resource is not a remote shell target (found github_repo)",
    );
    let viewer = w.resource(
        &w.team,
        "remote_shell",
        "viewer",
        json!({"gateway_id": w.gid, "full_control": true}),
    );
    let j = w.exec(json!({"resource_id": viewer, "command": "true"}));
    assert_denied(&j, "Remote shell resource is configured for viewer access. Full access is required for this action.");
    let vm = w.resource(
        &w.team,
        "remote_shell",
        "editor",
        json!({"vm_id": "vm-1", "full_control": true}),
    );
    let j = w.exec(json!({"resource_id": vm, "command": "true"}));
    assert_denied(
        &j,
        "Remote shell resource targets a different VM-backed gateway",
    );
    let unbound = w.resource(
        &w.team,
        "remote_shell",
        "editor",
        json!({"full_control": true}),
    );
    let j = w.exec(json!({"resource_id": unbound, "command": "true"}));
    assert_denied(
        &j,
        "Remote shell resource is missing metadata.gateway_id or metadata.vm_id",
    );
    let elsewhere = w.resource(
        &w.team,
        "remote_shell",
        "editor",
        json!({"gateway_id": "11111111-1111-4111-8111-111111111111", "full_control": true}),
    );
    let j = w.exec(json!({"resource_id": elsewhere, "command": "true"}));
    assert_denied(&j, "Remote shell resource targets a different gateway");
    // The opt-in is the exact JSON `true`.
    for fc in [json!(false), json!("true"), Value::Null] {
        let res = w.resource(
            &w.team,
            "remote_shell",
            "editor",
            json!({"gateway_id": w.gid, "full_control": fc}),
        );
        let marker = w.gw.dir.path().join("must-not-exist");
        let j =
            w.exec(json!({"resource_id": res, "command": format!("touch {}", marker.display())}));
        assert_denied(&j, "Remote shell resource machine control is disabled");
        assert!(!marker.exists(), "a denied command ran");
    }
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn shell_exec_is_denied_by_each_machine_control_layer() {
    // Install toggle off, team toggle on.
    let mut w = World::new(false, true);
    w.start();
    let rid = w.shell_resource();
    let marker = w.gw.dir.path().join("ran");
    let cmd = format!("touch {}", marker.display());
    let j = w.exec(json!({"resource_id": rid, "command": cmd}));
    assert_denied(
        &j,
        "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host.",
    );
    assert!(!marker.exists());

    // The install toggle is read per job: enabling it on the host lets the next job run.
    let (rc, out, err) = w.gw.run(&["full-control", "enable"]);
    assert_eq!(rc, 0, "{out} {err}");
    let j = w.exec(json!({"resource_id": rid, "command": cmd}));
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["result"]["success"], true, "{j}");
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();

    // Team toggle off (read by the daemon after each heartbeat).
    w.set_team_toggle(false);
    let j = w.exec(json!({"resource_id": rid, "command": cmd}));
    assert_denied(
        &j,
        "Gateway machine control is disabled in Team Integrations.",
    );
    assert!(!marker.exists());

    // Both on again: runs.
    w.set_team_toggle(true);
    let j = w.exec(json!({"resource_id": rid, "command": cmd}));
    assert_eq!(j["status"], "completed", "{j}");
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();

    // The team toggle switched off right before the job, with no heartbeat in between: the
    // job reads the toggle itself and runs nothing.
    w.b.set_team_full_control(&w.gid, false);
    let j = w.exec(json!({"resource_id": rid, "command": cmd}));
    assert_denied(
        &j,
        "Gateway machine control is disabled in Team Integrations.",
    );
    assert!(
        !marker.exists(),
        "a command ran after the team toggle went off"
    );
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
}
