//! Worker pool semantics against the local backend: idempotency keys, the concurrency limit,
//! and `subagent_cancel` bypassing a full pool.

mod connect_support;

use std::time::Duration;

use connect_support::*;
use serde_json::{json, Value};

/// Milliseconds since the epoch of a `YYYY-MM-DDTHH:MM:SS.mmm` UTC timestamp.
fn ms(ts: &Value) -> i64 {
    let s = ts.as_str().unwrap();
    let n = |a: usize, b: usize| -> i64 { s[a..b].parse().unwrap() };
    let (y, mo, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let days = 365 * y2 + y2 / 4 - y2 / 100 + y2 / 400 + (153 * m2 + 2) / 5 + d - 1;
    let milli = if s.as_bytes().get(19) == Some(&b'.') {
        n(20, 23)
    } else {
        0
    };
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + milli
}

#[test]
fn a_duplicate_idempotency_key_is_cancelled_without_running() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    // An execution with key k1, attempt 1 already completed.
    let (st, v) = b.insert_row(
        "gateway_jobs",
        json!({"team_id": team, "gateway_id": gid, "job_type": "noop", "payload": {},
               "status": "completed", "idempotency_key": "k1", "attempt": 1}),
    );
    assert!((200..300).contains(&st), "{v}");
    gw.start();
    let dup = {
        let (st, v) = b.insert_row(
            "gateway_jobs",
            json!({"team_id": team, "gateway_id": gid, "job_type": "noop", "payload": {},
                   "idempotency_key": "k1", "attempt": 1}),
        );
        assert!((200..300).contains(&st), "{v}");
        v[0]["id"].as_str().unwrap().to_string()
    };
    let retry = {
        let (_, v) = b.insert_row(
            "gateway_jobs",
            json!({"team_id": team, "gateway_id": gid, "job_type": "noop", "payload": {},
                   "idempotency_key": "k1", "attempt": 2}),
        );
        v[0]["id"].as_str().unwrap().to_string()
    };
    let d = wait_job_done(&b, &dup, Duration::from_secs(20));
    assert_eq!(d["status"], "cancelled", "{d}");
    let msg = "Duplicate gateway job idempotency key; skipping execution";
    assert_eq!(d["error"], msg);
    assert_eq!(d["result"]["message"], msg);
    assert_eq!(d["result"]["idempotency_key"], "k1");
    assert_eq!(d["result"]["attempt"], 1);
    // A new attempt is a new execution.
    let r = wait_job_done(&b, &retry, Duration::from_secs(20));
    assert_eq!(r["error"], "Unsupported job type: noop");
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn at_most_concurrency_jobs_run_at_once() {
    let (b, mut gw, team, gid) =
        ready_gateway_with_fake_claude(&[("PANORAMA_GATEWAY_CONCURRENCY", "2")], 1);
    arm_fake_claude(&gw);
    let ids: Vec<String> = (0..5)
        .map(|_| b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true})))
        .collect();
    let rows: Vec<Value> = ids
        .iter()
        .map(|id| wait_job_done(&b, id, Duration::from_secs(30)))
        .collect();
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for r in &rows {
        assert_eq!(r["status"], "completed", "{r}");
        edges.push((ms(&r["started_at"]), 1));
        edges.push((ms(&r["completed_at"]), -1));
    }
    edges.sort();
    let (mut cur, mut max) = (0, 0);
    for (_, d) in edges {
        cur += d;
        max = max.max(cur);
    }
    assert_eq!(max, 2, "two at a time, never more");
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn subagent_cancel_bypasses_a_full_worker_pool() {
    let (b, mut gw, team, gid) =
        ready_gateway_with_fake_claude(&[("PANORAMA_GATEWAY_CONCURRENCY", "1")], 4);
    arm_fake_claude(&gw);
    let busy = b.insert_job(&team, &gid, "diagnostic", json!({"fresh": true}));
    wait_fake_claude_pid(&gw, "the only worker busy", 4);
    let waiting = b.insert_job(&team, &gid, "noop", json!({}));
    let cancel = b.insert_job(&team, &gid, "subagent_cancel", json!({"subagent_id": "s"}));
    let c = wait_job_done(&b, &cancel, Duration::from_secs(3));
    // Handled (no such subagent: nothing to cancel) while the only worker is busy.
    assert_eq!(c["status"], "completed", "cancel job: {c}");
    assert_eq!(c["result"]["cancel_result"], "no_active_run");
    assert_eq!(b.job(&busy)["status"], "running", "the pool was still full");
    assert_eq!(
        b.job(&waiting)["status"],
        "queued",
        "ordinary jobs wait for a worker"
    );
    wait_job_done(&b, &busy, Duration::from_secs(20));
    wait_job_done(&b, &waiting, Duration::from_secs(20));
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}
