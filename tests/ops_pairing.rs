//! Pairing hygiene (issue 13): `pair -` takes the code from standard input, `unpair` stops the
//! daemon and removes only the gateway's credentials, and a build with nothing configured uses
//! the built-in production backend (without ever reaching it from a test).

mod connect_support;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use connect_support::*;
use serde_json::json;

/// Runs `pair - --no-start` with `stdin` piped in; (exit code, stdout, stderr).
fn pair_stdin(gw: &Gateway, stdin: &str) -> (i32, String, String) {
    let mut c = gw.command(&["pair", "-", "--no-start", "--device-name", "stdin-box"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pair_dash_reads_the_code_from_stdin_and_never_from_argv() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let (rc, _, err) = pair_stdin(&gw, "\n");
    assert_eq!(rc, 1);
    assert!(err.contains("No pairing code on standard input"), "{err}");
    assert!(!gw.config_dir().join("gateway.json").exists());

    let (code, team) = b.pairing_code(None);
    let (rc, out, err) = pair_stdin(&gw, &format!("  {code}  \n"));
    assert_eq!(rc, 0, "{out} {err}");
    assert!(out.contains("Paired this machine"), "{out}");
    let st = gw.state();
    assert_eq!(st["teamId"], team.as_str());
    assert_eq!(st["deviceName"], "stdin-box");
}

#[test]
fn unpair_stops_the_daemon_and_removes_only_the_credentials() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (code, _) = b.pairing_code(None);
    gw.pair(&code);
    // Keys unpair must keep: full control, a VM identity and one this version does not know.
    let path = gw.config_dir().join("gateway.json");
    let mut v = gw.state();
    v["full_control_enabled"] = json!(true);
    v["vmGuest"] = json!({"vm_id": "vm-1"});
    v["someFutureKey"] = json!([1, 2]);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    gw.start();
    gw.wait_connection(
        "the daemon to connect",
        "connected",
        Duration::from_secs(20),
    );

    let (rc, out, err) = gw.run(&["unpair"]);
    assert_eq!(rc, 0, "{out} {err}");
    // It says what it will do, then does it.
    let plan = out.find("stop the running gateway").expect(&out);
    let keys = out
        .find("accessToken, refreshToken, gatewayId, teamId")
        .expect(&out);
    let stopped = out.find("OK Gateway stopped").expect(&out);
    assert!(plan < stopped && keys < stopped, "{out}");
    assert!(out.contains("OK This machine is unpaired"), "{out}");
    let st = gw.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "the daemon drained and exited 0: {st:?}");

    let after = gw.state();
    for k in ["accessToken", "refreshToken", "gatewayId", "teamId"] {
        assert!(after.get(k).is_none(), "{k} still in {after}");
    }
    for k in [
        "supabaseUrl",
        "supabaseAnonKey",
        "deviceName",
        "full_control_enabled",
        "vmGuest",
        "someFutureKey",
    ] {
        assert_eq!(after[k], v[k], "{k} changed");
    }
    let (rc, _, _) = gw.run(&["status"]);
    assert_eq!(rc, 4, "status says not paired");
    // A second unpair has nothing to do.
    let (rc, out, _) = gw.run(&["unpair"]);
    assert_eq!(rc, 0);
    assert!(out.contains("not paired"), "{out}");
}
