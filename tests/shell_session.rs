//! End to end: `shell_session` jobs (open, write, read, status, resize, close) through the real
//! gateway daemon and the real local backend. A session is the user's login shell on a real
//! terminal and outlives the job that opened it; what is asserted is what a caller sees in the
//! job rows and on the host (interactive programs answered by later writes, process groups gone
//! after close, idle expiry, machine control switched off, daemon shutdown).
//!
//! The terminal echoes what is typed, so every awaited text is spelled differently in the
//! command that prints it (`echo al""ive` prints `alive`).

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

    /// A job that must fail with `error`.
    fn denied(&self, payload: Value, error: &str) {
        let j = self.job(payload.clone());
        assert_eq!(j["status"], "failed", "{payload} → {j}");
        assert_eq!(j["error"], error, "{payload} → {j}");
    }

    fn open(&self, rid: &str) -> String {
        let r = self.ok(json!({"action": "open", "resource_id": rid}));
        assert_eq!(r["status"], "open", "{r}");
        assert_eq!(r["cwd"], "/");
        r["session_id"].as_str().unwrap().to_string()
    }

    /// Types `input` into the session; returns the output position before it.
    fn type_in(&self, rid: &str, sid: &str, input: &str) -> u64 {
        let r = self.ok(
            json!({"action": "write", "resource_id": rid, "session_id": sid,
                               "input": input}),
        );
        assert_eq!(r["success"], true, "{r}");
        assert_eq!(r["bytes_written"], input.len(), "{r}");
        r["cursor"].as_u64().unwrap()
    }

    /// Reads from `cursor` until the output so far contains `needle`; returns it and the next
    /// cursor. Every read starts where the last one ended, and nothing was dropped.
    fn read_until(&self, rid: &str, sid: &str, mut cursor: u64, needle: &str) -> (String, u64) {
        let mut seen = String::new();
        let deadline = std::time::Instant::now() + JOB_WAIT;
        while std::time::Instant::now() < deadline {
            let r = self.ok(
                json!({"action": "read", "resource_id": rid, "session_id": sid,
                                   "cursor": cursor, "wait_ms": 2000, "max_bytes": 1_000_000}),
            );
            assert_eq!(r["cursor"], cursor, "{r}");
            assert_eq!(r["truncated"], false, "{r}");
            seen.push_str(r["output"].as_str().unwrap());
            cursor = r["next_cursor"].as_u64().unwrap();
            if seen.contains(needle) {
                return (seen, cursor);
            }
        }
        panic!("{needle:?} did not appear in the session output: {seen:?}");
    }

    /// Types `input` and waits for `needle` in what follows.
    fn run(&self, rid: &str, sid: &str, input: &str, needle: &str) -> (String, u64) {
        let at = self.type_in(rid, sid, input);
        self.read_until(rid, sid, at, needle)
    }
}

fn wait_pid(p: &Path) -> i32 {
    wait_for(&format!("a pid in {}", p.display()), JOB_WAIT, || {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    })
}

/// The pid of a live child of `parent` running `comm`.
fn child_named(parent: i32, comm: &str) -> i32 {
    wait_for(&format!("{comm} under pid {parent}"), JOB_WAIT, || {
        processes().into_iter().find_map(|(p, st, pp)| {
            let name = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            (pp == parent && st != 'Z' && name.trim() == comm).then_some(p)
        })
    })
}

#[test]
fn a_session_is_a_real_terminal_for_interactive_programs() {
    let mut w = World::start(&[]);
    let rid = w.shell_resource();
    let dir = TempDir::new("shell-tty");
    let r = w.ok(json!({"action": "open", "resource_id": rid, "rows": 33, "cols": 91}));
    assert_eq!(
        (r["rows"].clone(), r["cols"].clone()),
        (json!(33), json!(91)),
        "{r}"
    );
    assert_eq!(r["term"], "xterm-256color");
    let tty = r["tty"].as_str().unwrap().to_string();
    assert!(tty.starts_with("/dev/pts/"), "{r}");
    let sid = r["session_id"].as_str().unwrap().to_string();

    // A terminal: tty names it, stty knows its size, TERM is set, the gateway's secrets are not.
    let (out, _) = w.run(
        &rid,
        &sid,
        "tty; stty size; echo \"te\"\"rm=$TERM k\"\"ey=${SUPABASE_ANON_KEY:-unset}.\"\n",
        "key=",
    );
    assert!(out.contains(&format!("{tty}\r\n")), "{out}");
    assert!(out.contains("33 91\r\n"), "{out}");
    assert!(out.contains("term=xterm-256color key=unset."), "{out}");
    // A resize changes what the programs see.
    let r = w.ok(
        json!({"action": "resize", "resource_id": rid, "session_id": sid,
                        "rows": 50, "cols": 100}),
    );
    assert_eq!(r["success"], true, "{r}");
    w.run(&rid, &sid, "stty size\n", "50 100\r\n");
    let st = w.ok(json!({"action": "status", "resource_id": rid, "session_id": sid}));
    assert_eq!(
        (st["rows"].clone(), st["cols"].clone()),
        (json!(50), json!(100)),
        "{st}"
    );
    assert_eq!(st["alive"], true);

    // A prompt answered by a later write.
    w.run(
        &rid,
        &sid,
        "p=nam; read -p \"${p}e? \" n; echo \"h\"\"i $n\"\n",
        "name? ",
    );
    w.run(&rid, &sid, "bob\n", "hi bob");

    // The python REPL: an expression, exit(), and the shell answers again.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3");
    w.run(&rid, &sid, &format!("{python} -q\n"), ">>> ");
    w.run(&rid, &sid, "print(6*7)\n", "42\r\n");
    w.type_in(&rid, &sid, "exit()\n");
    w.run(&rid, &sid, "echo she\"\"ll-back\n", "shell-back");

    // Ctrl-C interrupts the foreground job; the shell lives on.
    let shell_pid = dir.path().join("shell.pid");
    w.type_in(&rid, &sid, &format!("echo $$ > {}\n", shell_pid.display()));
    let shell = wait_pid(&shell_pid);
    w.type_in(&rid, &sid, "sleep 100\n");
    let sleep = child_named(shell, "sleep");
    w.type_in(&rid, &sid, "\u{3}");
    wait_for("sleep to end on ^C", JOB_WAIT, || dead(sleep).then_some(()));
    w.run(&rid, &sid, "echo al\"\"ive\n", "alive");
    assert!(!dead(shell));

    // Ctrl-D is end-of-file for cat.
    w.type_in(&rid, &sid, "cat\n");
    let cat = child_named(shell, "cat");
    let at = w.type_in(&rid, &sid, "abc\n");
    let (out, _) = w.read_until(&rid, &sid, at, "abc\r\nabc\r\n");
    assert!(
        out.starts_with("abc\r\nabc\r\n"),
        "echoed, then written back: {out:?}"
    );
    w.type_in(&rid, &sid, "\u{4}");
    wait_for("cat to end on ^D", JOB_WAIT, || dead(cat).then_some(()));
    w.run(&rid, &sid, "echo do\"\"ne\n", "done");

    // The input limit.
    let j = w.job(
        json!({"action": "write", "resource_id": rid, "session_id": sid,
                         "input": "x".repeat(1_000_001)}),
    );
    assert_eq!(j["status"], "failed");
    assert_eq!(
        j["error"],
        "Input too large: 1000001 bytes; send at most 1000000 bytes per write"
    );

    // Close: the shell and a background job go; the next write says the session is closed.
    let bg_pid = dir.path().join("bg.pid");
    w.type_in(
        &rid,
        &sid,
        &format!("sleep 60 & echo $! > {}\n", bg_pid.display()),
    );
    let bg = wait_pid(&bg_pid);
    let r = w.ok(json!({"action": "close", "resource_id": rid, "session_id": sid}));
    assert_eq!(
        (r["status"].clone(), r["exited"].clone()),
        (json!("closed"), json!(true)),
        "{r}"
    );
    wait_for(
        "the session's processes to be gone",
        Duration::from_secs(5),
        || (dead(bg) && dead(shell)).then_some(()),
    );
    w.denied(
        json!({"action": "write", "resource_id": rid, "session_id": sid, "input": "ls\n"}),
        "Shell session was closed; open a new session",
    );

    // A shell that exits on its own reports its exit code and refuses input.
    let sid2 = w.open(&rid);
    w.type_in(&rid, &sid2, "exit 7\n");
    let st = wait_for("the shell to exit", JOB_WAIT, || {
        let st = w.ok(json!({"action": "status", "resource_id": rid, "session_id": sid2}));
        (st["alive"] == false).then_some(st)
    });
    assert_eq!(st["exit_code"], 7, "{st}");
    w.denied(
        json!({"action": "write", "resource_id": rid, "session_id": sid2, "input": "echo\n"}),
        "Shell session has exited; open a new session",
    );
    let r = w.ok(json!({"action": "close", "resource_id": rid, "session_id": sid2}));
    assert_eq!(r["exit_code"], 7);
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn reads_lose_and_repeat_nothing_overflow_is_flagged_and_limits_hold() {
    let mut w = World::start(&[]);
    let rid = w.shell_resource();
    let sid = w.open(&rid);

    // Cursor reads while seq floods the terminal: every line, once, in order.
    let at = w.type_in(&rid, &sid, "seq 1 100000; echo fin\"\"ished\n");
    let mut cursor = at;
    let mut seen = String::new();
    wait_for("the whole sequence", JOB_WAIT, || {
        let r = w.ok(
            json!({"action": "read", "resource_id": rid, "session_id": sid,
                            "cursor": cursor, "wait_ms": 1000, "max_bytes": 65536}),
        );
        assert_eq!(
            (r["cursor"].as_u64(), r["dropped_bytes"].as_u64()),
            (Some(cursor), Some(0))
        );
        seen.push_str(r["output"].as_str().unwrap());
        cursor = r["next_cursor"].as_u64().unwrap();
        seen.contains("finished").then_some(())
    });
    let lines: Vec<&str> = seen.split("\r\n").collect();
    // bash ends its bracketed-paste mode (`ESC[?2004l\r`) before the command's output.
    let first = lines
        .iter()
        .position(|l| *l == "1" || l.ends_with("\r1"))
        .unwrap_or_else(|| panic!("no line 1 in {:?}", &seen[..seen.len().min(300)]));
    for n in 2..=100_000u32 {
        assert_eq!(lines[first + n as usize - 1], n.to_string(), "line {n}");
    }
    // Without a cursor, a read goes on where the last one ended.
    let r = w.ok(json!({"action": "read", "resource_id": rid, "session_id": sid}));
    assert_eq!(r["cursor"].as_u64(), Some(cursor), "{r}");

    // More than the 5 MB buffer: a cursor from before it says what was dropped.
    let before = w.type_in(
        &rid,
        &sid,
        "head -c 6000000 /dev/zero | tr '\\0' a; echo; echo big-\"\"done\n",
    );
    wait_for("the flood to end", JOB_WAIT, || {
        let st = w.ok(json!({"action": "status", "resource_id": rid, "session_id": sid}));
        let end = st["buffer_end"].as_u64()?;
        let r = w.ok(
            json!({"action": "read", "resource_id": rid, "session_id": sid,
                            "cursor": end.saturating_sub(64), "max_bytes": 64, "wait_ms": 500}),
        );
        r["output"].as_str()?.contains("big-done").then_some(())
    });
    let r = w.ok(
        json!({"action": "read", "resource_id": rid, "session_id": sid,
                        "cursor": before, "max_bytes": 5_000_000}),
    );
    assert_eq!(r["truncated"], true, "{r}");
    let start = r["cursor"].as_u64().unwrap();
    assert_eq!(r["dropped_bytes"].as_u64(), Some(start - before));
    assert!(start > before + 1_000_000, "buffer start {start}");
    assert_eq!(
        r["output"].as_str().unwrap().len(),
        1_000_000,
        "a read is at most 1 MB"
    );
    let st = w.ok(json!({"action": "status", "resource_id": rid, "session_id": sid}));
    assert_eq!(
        st["buffer_end"].as_u64().unwrap() - st["buffer_start"].as_u64().unwrap(),
        5_000_000
    );

    // Validation and authorization.
    let j = w.job(json!({"action": "dance", "resource_id": rid}));
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
    w.denied(
        json!({"action": "write", "resource_id": rid}),
        "Missing session_id in payload",
    );
    w.denied(json!({"action": "open"}), "Missing resource_id in payload");
    w.denied(
        json!({"action": "read", "resource_id": rid, "session_id": sid, "cursor": "x"}),
        "Invalid cursor in payload: expected a non-negative integer",
    );
    w.denied(
        json!({"action": "open", "resource_id": rid, "rows": 0, "cols": 80}),
        "Invalid rows in payload: expected an integer from 1 to 1000",
    );
    w.denied(
        json!({"action": "resize", "resource_id": rid, "session_id": sid, "rows": 30}),
        "Give both rows and cols in payload, or neither",
    );
    let other = w.shell_resource();
    w.denied(
        json!({"action": "status", "resource_id": other, "session_id": sid}),
        "Shell session not found",
    );
    let viewer = w.resource("viewer", json!({"gateway_id": w.gid, "full_control": true}));
    w.denied(
        json!({"action": "open", "resource_id": viewer}),
        "Remote shell resource is configured for viewer access. Full access is required for this action.",
    );

    // At most 4 sessions per resource and 10 per gateway.
    for _ in 0..3 {
        w.open(&rid);
    }
    w.denied(
        json!({"action": "open", "resource_id": rid}),
        "Too many shell sessions on this resource (4); close one first",
    );
    let (r2, r3) = (w.shell_resource(), w.shell_resource());
    for _ in 0..4 {
        w.open(&r2);
    }
    w.open(&r3);
    w.open(&r3);
    w.denied(
        json!({"action": "open", "resource_id": r3}),
        "Too many shell sessions on this gateway (10); close one first",
    );
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
}

const TEAM_OFF: &str = "Gateway machine control is disabled in Team Integrations.";
const INSTALL_OFF: &str =
    "Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host.";
const RESOURCE_OFF: &str = "Remote shell resource machine control is disabled";

/// Starts `sleep 60 &` in the session; returns its pid.
fn background_sleep(w: &World, rid: &str, sid: &str, pidfile: &Path) -> i32 {
    w.type_in(
        rid,
        sid,
        &format!("sleep 60 & echo $! > {}\n", pidfile.display()),
    );
    let pid = wait_pid(pidfile);
    assert!(!dead(pid));
    pid
}

fn closed_because(why: &str) -> String {
    format!("Shell session was closed because machine control was switched off ({why}); open a new session once it is back on")
}

#[test]
fn each_machine_control_layer_off_denies_runs_nothing_and_ends_the_sessions() {
    let mut w = World::start(&[]);
    let rid = w.shell_resource();
    let dir = TempDir::new("shell-control");
    let marker = dir.path().join("ran");
    let touch = format!("touch {}\n", marker.display());
    let write = |sid: &str| json!({"action": "write", "resource_id": rid, "session_id": sid, "input": touch});

    // Team toggle switched off just before the write, with no heartbeat in between: the write
    // reads the toggle itself, is denied, and types nothing.
    let sid = w.open(&rid);
    let bg = background_sleep(&w, &rid, &sid, &dir.path().join("team.pid"));
    w.b.set_team_full_control(&w.gid, false);
    w.denied(write(&sid), TEAM_OFF);
    w.denied(json!({"action": "open", "resource_id": rid}), TEAM_OFF);
    assert!(!marker.exists(), "a denied write ran");
    wait_for("the session to end", Duration::from_secs(10), || {
        dead(bg).then_some(())
    });
    w.b.set_team_full_control(&w.gid, true);
    w.gw.wait_team_full_control(true);
    w.denied(write(&sid), &closed_because(TEAM_OFF));
    assert!(!marker.exists());

    // Team toggle off with no job at all: the daemon ends the sessions within its heartbeat.
    let sid = w.open(&rid);
    let bg = background_sleep(&w, &rid, &sid, &dir.path().join("team2.pid"));
    w.b.set_team_full_control(&w.gid, false);
    wait_for(
        "the heartbeat to end the session",
        Duration::from_secs(10),
        || dead(bg).then_some(()),
    );
    w.b.set_team_full_control(&w.gid, true);
    w.gw.wait_team_full_control(true);

    // Install toggle: `full-control disable` (SIGHUP to the daemon) ends the sessions at once.
    let sid = w.open(&rid);
    let bg = background_sleep(&w, &rid, &sid, &dir.path().join("install.pid"));
    let (rc, out, err) = w.gw.run(&["full-control", "disable"]);
    assert_eq!(rc, 0, "{out} {err}");
    wait_for("SIGHUP to end the session", Duration::from_secs(5), || {
        dead(bg).then_some(())
    });
    w.denied(write(&sid), INSTALL_OFF);
    w.denied(json!({"action": "open", "resource_id": rid}), INSTALL_OFF);
    assert!(!marker.exists());
    let (rc, out, err) = w.gw.run(&["full-control", "enable"]);
    assert_eq!(rc, 0, "{out} {err}");
    w.denied(write(&sid), &closed_because(INSTALL_OFF));

    // Resource opt-in revoked: denied, nothing typed, that resource's sessions end.
    let sid = w.open(&rid);
    let bg = background_sleep(&w, &rid, &sid, &dir.path().join("resource.pid"));
    w.b.admin(
        "PATCH",
        &format!("/rest/v1/team_resources?id=eq.{rid}"),
        Some(json!({"metadata": {"gateway_id": w.gid, "full_control": false}})),
    );
    w.denied(write(&sid), RESOURCE_OFF);
    assert!(!marker.exists());
    wait_for(
        "the revoked session to end",
        Duration::from_secs(10),
        || dead(bg).then_some(()),
    );
    // Closing needs no machine control; it is told why the session is already gone.
    w.denied(
        json!({"action": "close", "resource_id": rid, "session_id": sid}),
        &format!("Shell session was closed because its resource no longer allows it ({RESOURCE_OFF}); open a new session"),
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
    let bg = background_sleep(&w, &rid, &sid, &dir.path().join("idle.pid"));
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
            (j["error"]
                == "Shell session was closed after 3 s without a read or write; open a new session")
                .then_some(())
        },
    );

    // Shutdown: an open session's processes are killed before the daemon exits.
    let sid = w.open(&rid);
    let bg = background_sleep(&w, &rid, &sid, &dir.path().join("shutdown.pid"));
    assert_eq!(w.gw.stop(Duration::from_secs(30)).code(), Some(0));
    wait_for(
        "the session's process to be gone after shutdown",
        Duration::from_secs(5),
        || dead(bg).then_some(()),
    );
}
