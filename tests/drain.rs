//! Drain: SIGTERM lets a running job finish within the drain timeout; past the timeout the job
//! is failed and its child process group is gone. Uses a `diagnostic` job with a fake claude
//! CLI that sleeps.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;
use support::connect::*;

#[test]
fn a_running_job_finishes_within_the_drain_timeout() {
    let (b, mut gw, team, gid) =
        ready_gateway_with_fake_claude(&[("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", "20000")], 2);
    arm_fake_claude(&gw);
    let id = b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true}));
    wait_fake_claude_pid(&gw, "the fake CLI to start", 2);
    let t0 = Instant::now();
    gw.signal(libc::SIGTERM);
    // Queued meanwhile: not taken by a draining gateway.
    std::thread::sleep(Duration::from_millis(300));
    let late = b.insert_job(&team, &gid, "noop", json!({}));
    let exit = gw.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0));
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "it waited for the job"
    );
    let j = b.job(&id);
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["result"]["version"], "9.9.9 (Claude Code)");
    assert_eq!(
        b.job(&late)["status"],
        "queued",
        "a draining gateway takes no new job"
    );
    assert_eq!(b.gateway_row(&gid)["status"], "offline");
}

#[test]
fn past_the_drain_timeout_the_job_is_failed_and_its_child_is_gone() {
    let (b, mut gw, team, gid) =
        ready_gateway_with_fake_claude(&[("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", "1000")], 30);
    arm_fake_claude(&gw);
    let id = b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true}));
    let pid = wait_fake_claude_pid(&gw, "the fake CLI to start", 30);
    assert!(alive(pid));
    let t0 = Instant::now();
    gw.signal(libc::SIGTERM);
    let exit = gw.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "bounded by the drain timeout + kill grace"
    );
    let j = b.job(&id);
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["error"], "gateway shut down before the job finished");
    wait_for("the child to be gone", Duration::from_secs(5), || {
        (!alive(pid)).then_some(())
    });
    assert_eq!(b.gateway_row(&gid)["status"], "offline");
}

#[test]
fn a_second_signal_skips_the_wait() {
    let (b, mut gw, team, gid) =
        ready_gateway_with_fake_claude(&[("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", "60000")], 30);
    arm_fake_claude(&gw);
    let id = b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true}));
    let pid = wait_fake_claude_pid(&gw, "the fake CLI to start", 30);
    let t0 = Instant::now();
    gw.signal(libc::SIGTERM);
    // Draining: no longer taking jobs, so `pending` (backend.md §5.3), and `draining` locally.
    wait_for("team_gateways pending", Duration::from_secs(10), || {
        (b.gateway_row(&gid)["status"] == "pending").then_some(())
    });
    assert_eq!(gw.status_file()["connection"], "draining");
    gw.signal(libc::SIGTERM);
    let exit = gw.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "did not wait for the 60 s drain"
    );
    assert_eq!(
        b.job(&id)["error"],
        "gateway shut down before the job finished"
    );
    wait_for("the child to be gone", Duration::from_secs(5), || {
        (!alive(pid)).then_some(())
    });
    assert_eq!(b.gateway_row(&gid)["status"], "offline");
}

#[test]
fn a_result_the_backend_refuses_is_spooled_and_delivered_after_it_recovers() {
    let (b, mut gw, team, gid) =
        ready_gateway_with_fake_claude(&[("PANORAMA_GATEWAY_COMPLETE_RETRY_MS", "1000")], 1);
    arm_fake_claude(&gw);
    let id = b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true}));
    wait_fake_claude_pid(&gw, "the fake CLI to start", 1);
    // The backend now refuses every REST call for a while (the harness sees it too).
    b.fault(json!({"fail_next": {"count": 100000, "status": 503, "paths": "rest"}}));
    let st = wait_for("the result in the spool", Duration::from_secs(20), || {
        let s = gw.status_file();
        (s["results_spooled"].as_u64() >= Some(1)).then_some(s)
    });
    assert_eq!(st["results_spooled"], 1);
    let spool = gw.config_dir().join("spool").join(format!("{id}.json"));
    assert!(spool.exists());
    let mode = std::fs::metadata(&spool).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    b.fault(json!({"clear": true}));
    let j = wait_job_done(&b, &id, Duration::from_secs(20));
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["result"]["version"], "9.9.9 (Claude Code)");
    wait_for("spool emptied", Duration::from_secs(10), || {
        (gw.status_file()["results_spooled"] == 0 && !spool.exists()).then_some(())
    });
    wait_for("a result_spooled event", Duration::from_secs(10), || {
        b.events(&gid)
            .iter()
            .any(|e| e["code"] == "result_spooled" && e["details"]["job_id"] == id.as_str())
            .then_some(())
    });
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn a_result_the_backend_rejects_for_good_fails_the_job_instead_of_leaving_it_running() {
    // A quiet gateway: no periodic REST call competes with the completion for the fault.
    let (b, mut gw, team, gid) = ready_gateway_with_fake_claude(
        &[
            ("PANORAMA_GATEWAY_RECONCILE_MS", "60000"),
            ("PANORAMA_GATEWAY_HEARTBEAT_MS", "60000"),
        ],
        2,
    );
    arm_fake_claude(&gw);
    let id = b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true}));
    wait_fake_claude_pid(&gw, "the fake CLI to start", 2);
    // The completion is refused for good (as a result too large would be). Only the completion
    // (a PATCH of gateway_jobs) takes the fault, whatever other REST call comes first.
    b.fault(
        json!({"fail_next": {"count": 1, "status": 413, "paths": "rest",
        "method": "PATCH", "path_prefix": "/rest/v1/gateway_jobs"}}),
    );
    let log_path = gw.config_dir().join("gateway.log");
    wait_for("the rejection in the log", Duration::from_secs(20), || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains(&format!("rejected the completion of job {id}"))
            .then_some(())
    });
    let j = wait_job_done(&b, &id, Duration::from_secs(20));
    assert_eq!(j["status"], "failed", "not left running: {j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap_or("")
            .contains("rejected the gateway's job result"),
        "{j}"
    );
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}
