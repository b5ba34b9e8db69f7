//! The gateway against a misbehaving backend: realtime drops, 503 bursts and delays, expired
//! access tokens, revoked refresh tokens, malformed rows, crash recovery and the result spool.

mod connect_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use connect_support::*;
use serde_json::{json, Value};

fn gateway_log(gw: &Gateway) -> String {
    std::fs::read_to_string(gw.config_dir().join("gateway.log")).unwrap_or_default()
}

fn started_gateway(b: &Backend) -> (Gateway, String, String) {
    started_gateway_with(b, &[])
}

fn started_gateway_with(b: &Backend, env: &[(&str, &str)]) -> (Gateway, String, String) {
    let mut gw = Gateway::new(b);
    for (k, v) in env {
        gw.set_env(k, v);
    }
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    gw.start();
    wait_for("gateway ready", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    // Ready comes from the first reconcile, which can beat the realtime join now that start-up
    // does not wait for provider discovery; the tests that cut realtime need it joined first.
    gw.wait_connection("the realtime channel", "connected", Duration::from_secs(20));
    (gw, gid, team)
}

/// How many times the gateway started each job (from its log).
fn starts_per_job(gw: &Gateway) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in gateway_log(gw).lines() {
        if let Some(rest) = line.split("job started id=").nth(1) {
            let id = rest.split_whitespace().next().unwrap_or("").to_string();
            *m.entry(id).or_insert(0) += 1;
        }
    }
    m
}

fn assert_alive(gw: &mut Gateway) {
    let child = gw.daemon.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the gateway died\n{}",
        gateway_log(gw)
    );
}

#[test]
fn realtime_dropped_20_times_while_200_jobs_arrive_every_job_runs_exactly_once() {
    let b = Backend::start();
    let (mut gw, gid, team) =
        started_gateway_with(&b, &[("PANORAMA_GATEWAY_RECONNECT_MAX_MS", "2000")]);
    let mut ids = Vec::new();
    std::thread::scope(|s| {
        let dropper = s.spawn(|| {
            for _ in 0..20 {
                b.fault(json!({"drop_realtime": true}));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        for i in 0..200 {
            ids.push(b.insert_job(&team, &gid, "noop", json!({ "n": i })));
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        dropper.join().unwrap();
    });
    for id in &ids {
        let j = wait_job_done(&b, id, Duration::from_secs(60));
        assert_eq!(j["error"], "Unsupported job type: noop", "job {id}: {j}");
    }
    let starts = starts_per_job(&gw);
    for id in &ids {
        assert_eq!(starts.get(id), Some(&1), "job {id} must run exactly once");
    }
    assert!(
        b.stats()["joins"].as_u64().unwrap() >= 2,
        "the gateway rejoined"
    );
    assert_alive(&mut gw);
    // Back to normal: realtime reconnects and the gateway says so.
    gw.wait_connection("connected again", "connected", Duration::from_secs(40));
    wait_for(
        "a realtime_reconnected event",
        Duration::from_secs(10),
        || {
            b.events(&gid)
                .iter()
                .any(|e| e["code"] == "realtime_reconnected")
                .then_some(())
        },
    );
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn rest_and_function_503_bursts_and_delays_do_not_lose_jobs() {
    let b = Backend::start();
    let (mut gw, gid, team) = started_gateway(&b);
    b.fault(json!({"fail_next": {"count": 60, "status": 503, "paths": "rest|functions"}}));
    b.fault(json!({"delay_next": {"count": 20, "ms": 300, "paths": "rest|functions"}}));
    let ids: Vec<String> = (0..20)
        .map(|i| b.insert_job(&team, &gid, "noop", json!({ "n": i })))
        .collect();
    for id in &ids {
        let j = wait_job_done(&b, id, Duration::from_secs(60));
        assert_eq!(j["status"], "failed");
        assert_eq!(j["error"], "Unsupported job type: noop");
    }
    let starts = starts_per_job(&gw);
    for id in &ids {
        assert_eq!(starts.get(id), Some(&1), "job {id} must run exactly once");
    }
    let injected = b.stats()["faults_injected"].as_u64().unwrap();
    let absorbed = b.harness_5xx.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        injected >= absorbed + 10,
        "the gateway met the faults: {injected} injected, {absorbed} absorbed by the harness"
    );
    assert_alive(&mut gw);
    wait_for("ready again", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn expired_access_tokens_are_refreshed_and_the_rotation_is_persisted() {
    // Short-lived tokens: the gateway refreshes ahead of expiry, and once more after the
    // backend refuses every token issued so far.
    let b = Backend::start_with(&["--access-token-ttl", "6"]);
    let (mut gw, gid, team) = started_gateway(&b);
    let first_rt = gw.state()["refreshToken"].as_str().unwrap().to_string();
    let mut ids = vec![b.insert_job(&team, &gid, "noop", json!({}))];
    wait_for("a proactive refresh", Duration::from_secs(20), || {
        (gw.state()["refreshToken"].as_str() != Some(first_rt.as_str())).then_some(())
    });
    b.fault(json!({"expire_access_tokens": true}));
    let before = b.stats()["token_refreshes"].as_u64().unwrap();
    for _ in 0..5 {
        ids.push(b.insert_job(&team, &gid, "noop", json!({})));
    }
    for id in &ids {
        let j = wait_job_done(&b, id, Duration::from_secs(30));
        assert_eq!(
            j["error"], "Unsupported job type: noop",
            "no job fails for auth: {j}"
        );
    }
    wait_for("a refresh after the 401s", Duration::from_secs(20), || {
        (b.stats()["token_refreshes"].as_u64().unwrap() > before).then_some(())
    });
    assert!(gateway_log(&gw).contains("gateway session refreshed"));
    assert_alive(&mut gw);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));

    // The persisted pair is the live one: a restart authenticates with it.
    let rt_on_disk = gw.state()["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(rt_on_disk, first_rt);
    b.fault(json!({"expire_access_tokens": true}));
    gw.start();
    let id = b.insert_job(&team, &gid, "noop", json!({}));
    let j = wait_job_done(&b, &id, Duration::from_secs(30));
    assert_eq!(j["error"], "Unsupported job type: noop");
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
    let log = gateway_log(&gw);
    assert!(!log.contains(&rt_on_disk), "tokens never reach the log");
}

#[test]
fn revoked_refresh_token_reports_re_pair_needed_without_spinning() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    gw.set_env("PANORAMA_GATEWAY_REAUTH_RETRY_MS", "1000");
    let (code, _team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    gw.start();
    wait_for("gateway ready", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    b.fault(json!({"revoke_refresh_tokens": true, "expire_access_tokens": true}));
    let st = gw.wait_connection(
        "reauth_required in status",
        "reauth_required",
        Duration::from_secs(20),
    );
    assert!(
        st["detail"].as_str().unwrap_or("").contains("re-pair"),
        "{st}"
    );
    let (rc, out, _) = gw.run(&["status"]);
    assert_eq!(rc, 1, "degraded: {out}");
    let r0 = b.stats()["token_refreshes"].as_u64().unwrap();
    let auth0 = b.stats()["requests"]["auth"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let auth1 = b.stats()["requests"]["auth"].as_u64().unwrap();
    assert!(
        auth1 - auth0 <= 8,
        "refresh retried slowly, not in a loop: {} requests in 3 s",
        auth1 - auth0
    );
    assert!(auth1 > auth0, "but it keeps retrying");
    assert_eq!(b.stats()["token_refreshes"].as_u64().unwrap(), r0);
    assert_alive(&mut gw);
    assert!(gateway_log(&gw).contains("pair"), "the log says what to do");
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

/// Issue 8: one bad row never blocks the others. Rows whose payload is not an object, or nested
/// deeper than the gateway's JSON decoder goes (Postgres takes 200 levels), fail their own job
/// with a clear error; the good jobs around them run and the gateway stays connected.
#[test]
fn malformed_rows_fail_their_own_job_and_the_others_run() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    // Queued before the gateway starts: they arrive by reconcile.
    let mut bad = Vec::new();
    for (payload, why) in [
        (json!([1, 2]), "`payload` is not a JSON object"),
        (json!("just text"), "`payload` is not a JSON object"),
        (json!(42), "`payload` is not a JSON object"),
        (json!({ "deep": deep }), "could not be decoded"),
    ] {
        // Our own id: the test client's JSON decoder cannot read the deep row back.
        let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .unwrap()
            .trim()
            .to_string();
        let (st, v) = b.insert_row(
            "gateway_jobs",
            json!({"id": id, "team_id": team, "gateway_id": gid, "job_type": "noop", "payload": payload}),
        );
        assert!(
            (200..300).contains(&st),
            "backend refused the row: {st} {v}"
        );
        bad.push((id, why));
    }
    let good = b.insert_job(&team, &gid, "noop", json!({}));
    gw.start();
    let j = wait_job_done(&b, &good, Duration::from_secs(20));
    assert_eq!(j["error"], "Unsupported job type: noop");
    for (id, why) in &bad {
        // Without the payload: the test client's decoder cannot read the deep one.
        let j = wait_for("the malformed job to fail", Duration::from_secs(20), || {
            let v = b.admin(
                "GET",
                &format!("/rest/v1/gateway_jobs?select=id,status,error,result&id=eq.{id}"),
                None,
            );
            let j = v[0].clone();
            (j["status"] != "queued" && j["status"] != "running").then_some(j)
        });
        assert_eq!(j["status"], "failed", "{j}");
        let err = j["error"].as_str().unwrap();
        assert!(
            err.starts_with("The gateway could not read this job: ") && err.contains(why),
            "{err}"
        );
        assert_eq!(j["result"]["error_code"], "GATEWAY_JOB_MALFORMED");
    }
    // Reconcile keeps working: a job queued now (realtime or reconcile) runs too, and the
    // gateway is connected, not failing on the deep row.
    let next = b.insert_job(&team, &gid, "noop", json!({}));
    wait_job_done(&b, &next, Duration::from_secs(20));
    gw.wait_connection("connected", "connected", Duration::from_secs(20));
    let log = gateway_log(&gw);
    assert!(!log.contains("recursion limit exceeded\n"), "{log}");
    assert!(log.contains("malformed"));
    assert_alive(&mut gw);
    let codes: Vec<Value> = b.events(&gid).iter().map(|e| e["code"].clone()).collect();
    assert!(codes.contains(&json!("malformed_job")), "{codes:?}");
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

/// The same from realtime: a row inserted while the gateway runs.
#[test]
fn a_malformed_row_arriving_by_realtime_fails_its_job() {
    let b = Backend::start();
    let (mut gw, gid, team) =
        started_gateway_with(&b, &[("PANORAMA_GATEWAY_RECONCILE_MS", "60000")]);
    let (st, v) = b.insert_row(
        "gateway_jobs",
        json!({"team_id": team, "gateway_id": gid, "job_type": "noop", "payload": "text"}),
    );
    assert!((200..300).contains(&st), "{v}");
    let row: Value = if v.is_array() { v[0].clone() } else { v };
    let j = wait_job_done(&b, row["id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"]
        .as_str()
        .unwrap()
        .contains("`payload` is not a JSON object"));
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn restart_fails_its_own_interrupted_jobs_only_and_flushes_spooled_results_first() {
    let b = Backend::start();
    let gw0 = Gateway::new(&b);
    let (code, team) = b.pairing_code(None);
    gw0.pair(&code);
    let mut gw = gw0;
    let gid = gw.gateway_id();
    let stale = b.insert_job(&team, &gid, "noop", json!({}));
    let spooled = b.insert_job(&team, &gid, "noop", json!({}));
    let foreign = b.insert_job(&team, &gid, "noop", json!({}));
    for id in [&stale, &spooled, &foreign] {
        b.admin(
            "PATCH",
            &format!("/rest/v1/gateway_jobs?id=eq.{id}"),
            Some(json!({"status": "running", "started_at": "2020-01-01T00:00:00.000Z"})),
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let private_dir = |name: &str| {
        let d = gw.config_dir().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    };
    // The previous process's in-flight journal names `stale` (not `foreign`: someone else's).
    let inflight = private_dir("inflight");
    let entry = json!({"key": stale, "job_id": stale, "job_type": "noop",
                       "started_at": "2020-01-01T00:00:00.000Z", "subagent_id": null,
                       "run_id": null, "groups": [], "recorded_at": "2020-01-01T00:00:00.000Z"});
    std::fs::write(inflight.join(format!("{stale}.json")), entry.to_string()).unwrap();
    // A result the previous process could not deliver.
    let spool = private_dir("spool");
    let entry = json!({"job_id": spooled, "body": {"status": "completed", "result": {"spooled": true},
                       "error": null, "completed_at": "2020-01-01T00:00:01.000Z"}});
    std::fs::write(spool.join(format!("{spooled}.json")), entry.to_string()).unwrap();

    let t0 = Instant::now();
    gw.start();
    let s = wait_job_done(&b, &stale, Duration::from_secs(20));
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"], "gateway restarted during the job");
    let p = wait_job_done(&b, &spooled, Duration::from_secs(20));
    assert_eq!(p["status"], "completed", "the spooled result wins: {p}");
    assert_eq!(p["result"]["spooled"], true);
    wait_for("spool emptied", Duration::from_secs(10), || {
        (std::fs::read_dir(&spool).unwrap().count() == 0).then_some(())
    });
    assert!(t0.elapsed() < Duration::from_secs(20));
    // A job claimed by this process is not touched by the recovery.
    let fresh = b.insert_job(&team, &gid, "noop", json!({}));
    assert_eq!(
        wait_job_done(&b, &fresh, Duration::from_secs(20))["error"],
        "Unsupported job type: noop"
    );
    // Nor is a running job that no journal of ours names.
    assert_eq!(b.job(&foreign)["status"], "running");
    assert_eq!(std::fs::read_dir(&inflight).unwrap().count(), 0);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn changes_lost_by_a_muted_realtime_are_picked_up_by_reconcile() {
    let b = Backend::start();
    let (mut gw, gid, team) = started_gateway(&b);
    b.fault(json!({"mute_realtime_ms": 10000}));
    let t0 = Instant::now();
    let ids: Vec<String> = (0..10)
        .map(|_| b.insert_job(&team, &gid, "noop", json!({})))
        .collect();
    for id in &ids {
        let j = wait_job_done(&b, id, Duration::from_secs(20));
        assert_eq!(j["error"], "Unsupported job type: noop");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "reconcile (500 ms here) found them while realtime was muted"
    );
    assert_alive(&mut gw);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn a_claim_whose_reply_is_lost_while_the_checks_fail_is_resolved_and_runs_once() {
    let b = Backend::start();
    // The gateway gives up on a REST call after 700 ms...
    let (mut gw, gid, team) =
        started_gateway_with(&b, &[("PANORAMA_GATEWAY_REST_TIMEOUT_MS", "700")]);
    // ...and every REST request now takes 1.5 s at the backend: the claim PATCH lands, but its
    // reply never reaches the gateway, and neither do the replies of its follow-up checks.
    b.fault(json!({"delay_next": {"count": 100000, "ms": 1500, "paths": "rest"}}));
    let id = b.insert_job(&team, &gid, "noop", json!({}));
    wait_for("the claim to land", Duration::from_secs(30), || {
        (b.job(&id)["status"] == "running").then_some(())
    });
    wait_for("failed follow-up checks", Duration::from_secs(30), || {
        let log = gateway_log(&gw);
        (log.contains(&format!("claim of job {id} in doubt"))
            && log.contains(&format!("cannot check the claim of job {id} yet")))
        .then_some(())
    });
    assert!(
        !starts_per_job(&gw).contains_key(&id),
        "not run while in doubt"
    );
    // The backend comes back after a last burst of 503s: the gateway recognises its own claim
    // and runs the job instead of leaving it `running` until the next restart.
    b.fault(json!({"clear": true}));
    b.fault(json!({"fail_next": {"count": 4, "status": 503, "paths": "rest"}}));
    let j = wait_job_done(&b, &id, Duration::from_secs(60));
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["error"], "Unsupported job type: noop", "it ran: {j}");
    assert_eq!(starts_per_job(&gw).get(&id), Some(&1), "exactly once");
    assert!(gateway_log(&gw).contains(&format!("claim of job {id} had landed")));
    assert_alive(&mut gw);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn heartbeat_status_follows_job_ingress_at_once_and_status_says_why() {
    let b = Backend::start();
    // A 30 s heartbeat tick: the status changes below must be pushed when they happen.
    let (mut gw, gid, _team) = started_gateway_with(
        &b,
        &[
            ("PANORAMA_GATEWAY_HEARTBEAT_MS", "30000"),
            ("PANORAMA_GATEWAY_REST_TIMEOUT_MS", "700"),
        ],
    );
    gw.wait_connection("connected", "connected", Duration::from_secs(20));
    // Job queries stop being answered (slower than the gateway's timeout).
    let t0 = Instant::now();
    b.fault(json!({"delay_next": {"count": 100000, "ms": 1500, "paths": "rest"}}));
    wait_for("team_gateways error", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "error").then_some(())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "`error` was sent on the change, not at the next 30 s tick ({:?})",
        t0.elapsed()
    );
    let st = gw.wait_connection(
        "status file disconnected",
        "disconnected",
        Duration::from_secs(10),
    );
    assert!(
        st["detail"]
            .as_str()
            .unwrap_or("")
            .contains("does not answer job queries"),
        "{st}"
    );
    let (rc, out, _) = gw.run(&["status"]);
    assert_eq!(rc, 1, "degraded: {out}");
    // Back to normal: `ready` again, right away.
    let t1 = Instant::now();
    b.fault(json!({"clear": true}));
    wait_for("team_gateways ready", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    assert!(t1.elapsed() < Duration::from_secs(15));
    wait_for("status exit 0", Duration::from_secs(10), || {
        (gw.run(&["status"]).0 == 0).then_some(())
    });
    assert_alive(&mut gw);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(b.gateway_row(&gid)["status"], "offline");
}

#[test]
fn refused_heartbeats_show_in_status_until_one_is_accepted() {
    let b = Backend::start();
    let (mut gw, _gid, _team) = started_gateway(&b);
    gw.wait_connection("connected", "connected", Duration::from_secs(20));
    b.fault(json!({"fail_next": {"count": 100000, "status": 503, "paths": "functions"}}));
    // Heartbeats every second here: after 3 refused intervals Panorama shows us offline.
    let st = gw.wait_connection(
        "status file disconnected",
        "disconnected",
        Duration::from_secs(20),
    );
    assert!(
        st["detail"]
            .as_str()
            .unwrap_or("")
            .contains("heartbeats are not accepted"),
        "{st}"
    );
    assert_eq!(st["last_heartbeat_ok"], false, "{st}");
    let last_ok = st["last_heartbeat_at"].clone();
    assert!(last_ok.is_string(), "the last accepted one is kept: {st}");
    let (rc, out, _) = gw.run(&["status"]);
    assert_eq!(rc, 1, "degraded: {out}");
    b.fault(json!({"clear": true}));
    let st = gw.wait_connection("connected again", "connected", Duration::from_secs(20));
    assert_eq!(st["last_heartbeat_ok"], true);
    assert_ne!(st["last_heartbeat_at"], last_ok);
    assert_alive(&mut gw);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn a_backlog_too_big_for_one_reconcile_reply_is_fetched_in_smaller_pages() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    // Queued while the gateway is stopped: 3 rows of 6 MiB (long prompts) are more than the
    // 16 MiB a reconcile reply may have.
    let blob = "x".repeat(6 * 1024 * 1024);
    let ids: Vec<String> = (0..3)
        .map(|i| b.insert_job(&team, &gid, "noop", json!({ "n": i, "blob": blob })))
        .collect();
    gw.start();
    for id in &ids {
        let j = wait_job_done(&b, id, Duration::from_secs(60));
        assert_eq!(j["error"], "Unsupported job type: noop", "{id}");
    }
    assert!(gateway_log(&gw).contains("too large for one reconcile reply"));
    assert_alive(&mut gw);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

/// The spool becomes unwritable (replaced by a regular file: root-safe) while the backend
/// refuses completions: the result is held in memory, shown by `status`, and delivered once
/// the backend is back, exactly once. At shutdown a result still held is named loudly as lost.
#[test]
fn a_result_neither_delivered_nor_spooled_is_held_and_delivered_once() {
    let (b, mut gw, team, gid) =
        ready_gateway_with_fake_claude(&[("PANORAMA_GATEWAY_COMPLETE_RETRY_MS", "300")], 1);
    let spool = gw.config_dir().join("spool");
    assert!(spool.is_dir());
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::write(&spool, "not a directory").unwrap();
    arm_fake_claude(&gw);

    let run_until_held = |gw: &Gateway| {
        let id = b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true}));
        let dir = gw.dir.path().to_path_buf();
        wait_for("the fake CLI to start", Duration::from_secs(20), || {
            read_pid(&dir, 1).filter(|_| b.job(&id)["status"] == "running")
        });
        let _ = std::fs::remove_file(dir.join("claude-1.pid"));
        b.fault(json!({"fail_next": {"count": 100000, "status": 503, "paths": "rest"}}));
        wait_for("the result held in memory", Duration::from_secs(30), || {
            (gw.status_file()["results_pending"] == 1).then_some(())
        });
        id
    };

    let id = run_until_held(&gw);
    assert!(gw
        .log()
        .contains(&format!("cannot spool the result of job {id}")));
    let (rc, out, _) = gw.run(&["status"]);
    assert_eq!(rc, 1, "degraded while a result is held: {out}");
    assert!(
        out.contains("WARNING 1 job result(s) could not be delivered"),
        "{out}"
    );
    // (No REST call of the harness here: the injected faults apply to it too.)
    b.fault(json!({"clear": true}));
    let done = wait_job_done(&b, &id, Duration::from_secs(30));
    assert!(done["completed_at"].is_string(), "{done}");
    wait_for("nothing held any more", Duration::from_secs(10), || {
        (gw.status_file()["results_pending"] == 0).then_some(())
    });
    // Connected and healthy again once reconcile and heartbeat succeed after the outage.
    wait_for(
        "status to report connected",
        Duration::from_secs(30),
        || (gw.run(&["status"]).0 == 0).then_some(()),
    );
    assert_eq!(starts_per_job(&gw).get(&id), Some(&1), "ran once");
    assert!(!gw.log().contains("LOST RESULT"), "{}", gw.log());

    // Held at shutdown with the backend still away: the last attempt fails and the log names
    // the lost result.
    let id2 = run_until_held(&gw);
    assert_eq!(gw.stop(Duration::from_secs(60)).code(), Some(0));
    assert!(
        gw.log().contains(&format!("LOST RESULT of job {id2}")),
        "{}",
        gw.log()
    );
    assert_eq!(starts_per_job(&gw).get(&id), Some(&1));
}

/// Issue 4: "push the new access token to the realtime socket". The local backend closes a
/// channel whose token has expired (as Realtime does), so a gateway that refreshed its session
/// but kept the old token on the channel would be dropped and rejoin. Over several token
/// lifetimes the channel must stay the one joined at start, and realtime alone still delivers.
#[test]
fn refreshed_tokens_are_pushed_to_the_realtime_channel() {
    let b = Backend::start_with(&["--access-token-ttl", "4"]);
    // Reconcile only every 10 minutes: a job can then only arrive over realtime.
    let (mut gw, gid, team) =
        started_gateway_with(&b, &[("PANORAMA_GATEWAY_RECONCILE_MS", "600000")]);
    let joins = b.stats()["joins"].as_u64().unwrap();
    assert!(joins >= 1, "{}", b.stats());
    let refreshes = b.stats()["token_refreshes"].as_u64().unwrap();
    // Three refreshes: the token joined with, and the next one, have expired by then.
    wait_for("three proactive refreshes", Duration::from_secs(30), || {
        (b.stats()["token_refreshes"].as_u64().unwrap() >= refreshes + 3).then_some(())
    });
    assert_eq!(
        b.stats()["joins"].as_u64().unwrap(),
        joins,
        "the channel was rejoined: the refreshed token did not reach it\n{}",
        gateway_log(&gw)
    );
    let id = b.insert_job(&team, &gid, "noop", json!({}));
    let j = wait_job_done(&b, &id, Duration::from_secs(20));
    assert_eq!(j["error"], "Unsupported job type: noop");
    assert_alive(&mut gw);
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}
