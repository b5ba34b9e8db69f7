//! pair → start → jobs complete → stop, against the local backend (real processes).

mod connect_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use connect_support::*;
use serde_json::json;

#[test]
fn pair_start_job_stop_and_backend_sees_ready_then_offline() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (code, team) = b.pairing_code(None);

    let state = gw.pair(&code);
    assert_eq!(state["teamId"], team.as_str());
    assert_eq!(state["deviceName"], "test-box");
    assert_eq!(state["supabaseUrl"], b.url.as_str());
    assert!(state["accessToken"].as_str().unwrap().split('.').count() == 3);
    assert!(!state["refreshToken"].as_str().unwrap().is_empty());
    let mode = std::fs::metadata(gw.config_dir().join("gateway.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "gateway.json must be owner-only");
    let gid = gw.gateway_id();

    // The code is single-use: a second pair with it fails with the backend's message.
    let other = Gateway::new(&b);
    let (rc, out, err) = other.run(&["pair", &code, "--no-start"]);
    assert_eq!(rc, 1, "reusing a code must fail: {out} {err}");
    assert!(err.contains("Pairing failed"), "{err}");

    let (rc, _, _) = gw.run(&["status"]);
    assert_eq!(rc, 3, "status before start: not running");

    let claude = gw.dir.path().join("claude");
    std::fs::write(&claude, "#!/bin/sh\necho '2.0.14 (Claude Code)'\n").unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    gw.start_with(&["--claude-cli", claude.to_str().unwrap()]);
    let row = wait_for("team_gateways ready", Duration::from_secs(20), || {
        let r = b.gateway_row(&gid);
        (r["status"] == "ready").then_some(r)
    });
    assert_eq!(row["device_name"], "test-box");
    assert_eq!(row["capabilities"]["schema_version"], "v1");
    assert_eq!(row["capabilities"]["hosts"]["gateway"]["available"], true);
    assert!(row["capabilities"]["runtime"]["node_version"]
        .as_str()
        .unwrap()
        .starts_with("rust-"));

    wait_for("status exit 0 (connected)", Duration::from_secs(20), || {
        (gw.run(&["status"]).0 == 0).then_some(())
    });
    // Connected, but the only provider (a claude that answers --version alone) fails its
    // check: status says that no provider can run models.
    wait_for("status says no provider", Duration::from_secs(20), || {
        let out = gw.run(&["status"]).1;
        out.contains("no AI provider can run models").then_some(())
    });

    // Provider discovery runs after ready (it never delays the first heartbeat); the next
    // heartbeat shows what it found.
    let row = wait_for(
        "the discovered CLI in the heartbeat",
        Duration::from_secs(20),
        || {
            let r = b.gateway_row(&gid);
            (r["capabilities"]["providers"]["claude_code"]["available"] == true).then_some(r)
        },
    );
    assert_eq!(row["status"], "ready");

    // A diagnostic job runs `<claude> --version` and completes with the contract's keys.
    let diag = b.insert_job(&team, &gid, "diagnostic", json!({}));
    let d = wait_job_done(&b, &diag, Duration::from_secs(20));
    assert_eq!(d["status"], "completed", "{d}");
    assert_eq!(d["result"]["version"], "2.0.14 (Claude Code)");
    assert_eq!(d["result"]["exit_code"], 0);
    assert!(d["result"]["command"]
        .as_str()
        .unwrap()
        .ends_with("claude --version"));
    assert!(d["error"].is_null());

    // A job type without a handler fails fast with the contract's message.
    let id = b.insert_job(&team, &gid, "noop", json!({}));
    let j = wait_job_done(&b, &id, Duration::from_secs(20));
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error"], "Unsupported job type: noop");
    assert_eq!(j["result"]["message"], "Unsupported job type");
    assert_eq!(j["result"]["job_type"], "noop");
    assert!(j["started_at"].is_string() && j["completed_at"].is_string());

    // Jobs for another gateway of the team are not touched.
    let (code2, _) = b.pairing_code(Some(&team));
    let gw2 = Gateway::new(&b);
    gw2.pair(&code2);
    let other_id = b.insert_job(&team, &gw2.gateway_id(), "noop", json!({}));
    let mine = b.insert_job(&team, &gid, "noop", json!({}));
    wait_job_done(&b, &mine, Duration::from_secs(20));
    assert_eq!(b.job(&other_id)["status"], "queued");

    let st = wait_for(
        "jobs counted in the status file",
        Duration::from_secs(10),
        || {
            let s = gw.status_file();
            (s["jobs_failed"].as_u64() >= Some(2) && s["jobs_completed"].as_u64() >= Some(1))
                .then_some(s)
        },
    );
    assert_eq!(st["connection"], "connected");

    let exit = gw.stop(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "clean stop exits 0\n{}", gw.log());
    assert_eq!(b.gateway_row(&gid)["status"], "offline");
    assert!(
        !gw.config_dir().join("gateway.pid").exists(),
        "pid file removed"
    );
    let (rc, _, _) = gw.run(&["status"]);
    assert_eq!(rc, 3, "status after stop: not running");

    let codes: Vec<String> = b
        .events(&gid)
        .iter()
        .filter_map(|e| e["code"].as_str().map(String::from))
        .collect();
    assert!(codes.contains(&"gateway_started".to_string()), "{codes:?}");
    assert!(codes.contains(&"gateway_stopped".to_string()), "{codes:?}");
}

#[test]
fn pair_reports_unreachable_backend_and_bad_codes() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let (rc, _, err) = gw.run(&["pair", "NOPE-0000", "--no-start"]);
    assert_eq!(rc, 1);
    assert!(err.contains("Pairing failed"), "{err}");
    assert!(
        !gw.config_dir().join("gateway.json").exists(),
        "nothing saved on failure"
    );

    let mut dead = Gateway::new(&b);
    dead.url = "http://127.0.0.1:9".into();
    let (rc, _, err) = dead.run(&["pair", "ABCD-1234", "--no-start"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("Could not reach the Panorama backend"),
        "{err}"
    );

    let (rc, _, err) = gw.run(&["pair", "  ", "--no-start"]);
    assert_eq!(rc, 2, "{err}");
}

/// `pair <code> --no-start --config-path <config>`: `(exit code, stdout, stderr)`.
fn pair_no_start_at(gw: &Gateway, code: &str, config: &std::path::Path) -> (i32, String, String) {
    gw.run(&[
        "pair",
        code,
        "--no-start",
        "--config-path",
        config.to_str().unwrap(),
    ])
}

#[test]
fn pair_checks_the_state_can_be_saved_before_spending_the_code() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let (code, _team) = b.pairing_code(None);
    // A config path whose parent is a regular file: gateway.json cannot be written (works as
    // root too, unlike chmod).
    let blocker = gw.home().join("not-a-dir");
    std::fs::create_dir_all(gw.home()).unwrap();
    std::fs::write(&blocker, "x").unwrap();
    let bad = blocker.join("gateway.json");
    let (rc, out, err) = pair_no_start_at(&gw, &code, &bad);
    assert_eq!(rc, 1, "{out} {err}");
    assert!(err.contains("not a directory"), "{err}");
    assert!(err.contains("was not used"), "{err}");
    assert!(err.contains("pair again"), "{err}");
    // A directory other users could write to: the gateway refuses to save there.
    let shared = gw.home().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bad = shared.join("gateway.json");
    let (rc, out, err) = pair_no_start_at(&gw, &code, &bad);
    assert_eq!(rc, 1, "{out} {err}");
    assert!(err.contains("other users can write"), "{err}");
    assert!(err.contains("was not used"), "{err}");
    assert!(!bad.exists());
    // The code is still good: pairing with a usable directory succeeds with it.
    let state = gw.pair(&code);
    assert!(
        state["gatewayId"].as_str().is_some_and(|s| !s.is_empty()),
        "{state}"
    );
}

#[test]
fn start_without_pairing_fails_clearly() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let (rc, out, err) = gw.run(&["start", "--foreground"]);
    assert_eq!(rc, 1, "{out}{err}");
    assert!(format!("{out}{err}").contains("pair"), "{out}{err}");
}

/// Stops a detached daemon (not our child) when the test ends, pass or fail.
struct StopGuard<'a>(&'a Gateway);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["stop", "--force"]);
    }
}

#[test]
fn pair_starts_the_daemon_in_the_background_and_stop_takes_it_offline() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let _guard = StopGuard(&gw);
    let (code, _team) = b.pairing_code(None);
    let (rc, out, err) = gw.run(&["pair", &code, "--device-name", "bg-box"]);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("bg-box"), "{out}");
    assert!(out.contains("started in the background"), "{out}");
    let gid = gw.gateway_id();
    wait_for("ready", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    wait_for("status 0", Duration::from_secs(20), || {
        (gw.run(&["status"]).0 == 0).then_some(())
    });
    // Pairing again while it runs says how to pick up the new pairing.
    let (code2, _) = b.pairing_code(None);
    let (rc, out, _) = gw.run(&["pair", &code2, "--device-name", "bg-box"]);
    assert_eq!(rc, 0);
    assert!(out.contains("already running"), "{out}");
    let new_state = gw.state();
    assert_ne!(new_state["gatewayId"], gid.as_str());
    // The old process refreshes its session: it must not overwrite the new pairing's tokens.
    let before = b.stats()["token_refreshes"].as_u64().unwrap();
    b.fault(serde_json::json!({"expire_access_tokens": true}));
    wait_for(
        "the running gateway to refresh",
        Duration::from_secs(20),
        || (b.stats()["token_refreshes"].as_u64().unwrap() > before).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.state()["refreshToken"],
        new_state["refreshToken"],
        "new pairing kept"
    );
    assert_eq!(gw.state()["gatewayId"], new_state["gatewayId"]);
    let (rc, out, err) = gw.run(&["stop"]);
    assert_eq!(rc, 0, "{out}{err}");
    assert_eq!(b.gateway_row(&gid)["status"], "offline");
    // The restarted gateway is the new one.
    let (rc, out, err) = gw.run(&["start", "--daemon"]);
    assert_eq!(rc, 0, "{out}{err}");
    let new_gid = new_state["gatewayId"].as_str().unwrap().to_string();
    wait_for("the new gateway ready", Duration::from_secs(20), || {
        (b.gateway_row(&new_gid)["status"] == "ready").then_some(())
    });
}
