//! Fault injection and stats of the local backend (`/admin/v1/faults`, `/admin/v1/stats`).

mod support;
use serde_json::json;
use std::time::{Duration, Instant};
use support::emulator::*;

const T: Duration = Duration::from_secs(5);

#[test]
fn admin_api_needs_the_service_role() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    for tok in [b.anon.clone(), g.access_token.clone()] {
        let r = b.req_full("GET", "/admin/v1/stats", Some(&tok), Some(&tok), &[], None);
        assert_eq!(r.status, 401);
        let r = b.req_full(
            "POST",
            "/admin/v1/faults",
            Some(&tok),
            Some(&tok),
            &[],
            Some("{\"drop_realtime\":true}"),
        );
        assert_eq!(r.status, 401);
    }
    // Unknown faults and bad values are refused with a message naming the problem.
    let r = b.service("POST", "/admin/v1/faults", Some(&json!({"explode": true})));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("explode"));
    let r = b.service(
        "POST",
        "/admin/v1/faults",
        Some(&json!({"fail_next": {"count": 1, "paths": "disk"}})),
    );
    assert_eq!(r.status, 400);
    let r = b.service(
        "POST",
        "/admin/v1/faults",
        Some(&json!({"fail_next": {"count": 1, "status": 200}})),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn fail_next_counts_and_path_classes() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    b.fault(json!({"fail_next": {"count": 2, "status": 503, "paths": "rest"}}));
    // Functions are not affected.
    let r = b.heartbeat_ready(&g.access_token);
    assert_eq!(r.status, 200);
    for _ in 0..2 {
        let r = b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None);
        assert_eq!(r.status, 503);
        assert!(r.json()["message"].as_str().unwrap().contains("Injected"));
    }
    assert_eq!(
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status,
        200
    );

    b.fault(json!({"fail_next": {"count": 1, "status": 500, "paths": "functions"}}));
    let r = b.heartbeat_ready(&g.access_token);
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["success"], false);
    b.fault(json!({"fail_next": {"count": 1, "status": 502, "paths": "auth"}}));
    let r = b.refresh(&g.refresh_token);
    assert_eq!(r.status, 502);
    // A failed refresh did not spend the token.
    let r = b.refresh(&g.refresh_token);
    assert_eq!(r.status, 200);
    // "all" covers every class; clear removes pending rules.
    b.fault(json!({"fail_next": {"count": 5, "status": 503, "paths": "all"}}));
    assert_eq!(
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status,
        503
    );
    b.fault(json!({"clear": true}));
    assert_eq!(
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status,
        200
    );
    assert!(b.stats()["faults_injected"].as_u64().unwrap() >= 5);
}

#[test]
fn fail_next_can_be_narrowed_to_one_method_and_path_prefix() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    b.fault(
        json!({"fail_next": {"count": 1, "status": 413, "paths": "rest",
        "method": "patch", "path_prefix": "/rest/v1/gateway_jobs"}}),
    );
    // Reads of the same table and other tables pass and leave the rule armed.
    for path in ["/rest/v1/gateway_jobs", "/rest/v1/gateway_events"] {
        let r = b.req("GET", path, &g.access_token, None);
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(
        b.service("GET", "/admin/v1/faults", None).json()["fail_next"],
        json!([{"paths": ["rest"], "method": "PATCH", "path_prefix": "/rest/v1/gateway_jobs",
                "remaining": 1, "status": 413}])
    );
    let r = b.req(
        "PATCH",
        "/rest/v1/gateway_jobs?id=eq.00000000-0000-4000-8000-000000000000",
        &g.access_token,
        Some(&json!({"status": "running"})),
    );
    assert_eq!(r.status, 413);
    assert!(r.json()["message"].as_str().unwrap().contains("Injected"));
    // Consumed: the same PATCH passes the fault layer now.
    let r = b.req(
        "PATCH",
        "/rest/v1/gateway_jobs?id=eq.00000000-0000-4000-8000-000000000000",
        &g.access_token,
        Some(&json!({"status": "running"})),
    );
    assert_ne!(r.status, 413);
    // A prefix that is not a path is refused, naming the field.
    let r = b.service(
        "POST",
        "/admin/v1/faults",
        Some(&json!({"fail_next": {"path_prefix": "gateway_jobs"}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("fail_next.path_prefix"));
}

#[test]
fn delay_next_slows_requests() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    b.fault(json!({"delay_next": {"count": 1, "ms": 1000, "paths": "rest"}}));
    let t = Instant::now();
    assert_eq!(
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status,
        200
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "delayed {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "only the next request is delayed"
    );
}

#[test]
fn expire_access_tokens_now() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    assert_eq!(
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status,
        200
    );
    b.fault(json!({"expire_access_tokens": true}));
    let r = b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "JWT expired");
    let r = b.get_user(&g.access_token);
    assert_eq!(r.status, 401);
    // API keys keep working, and a refresh gives a working token.
    assert_eq!(b.service("GET", "/rest/v1/gateway_jobs", None).status, 200);
    let r = b.refresh(&g.refresh_token);
    let at = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(b.req("GET", "/rest/v1/gateway_jobs", &at, None).status, 200);
}

#[test]
fn revoke_refresh_tokens_now() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    b.fault(json!({"revoke_refresh_tokens": true}));
    let r = b.refresh(&g.refresh_token);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "refresh_token_not_found");
    // New pairings get fresh, working refresh tokens.
    let g2 = b.pair(None);
    let r = b.refresh(&g2.refresh_token);
    assert_eq!(r.status, 200);
}

#[test]
fn drop_realtime_closes_every_socket() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut r1 = b.realtime("2.0.0");
    let mut r2 = b.realtime("1.0.0");
    r1.join("a", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    r2.join("b", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    assert_eq!(b.stats()["connections"]["realtime_open"], 2);
    let r = b.fault(json!({"drop_realtime": true}));
    assert_eq!(r.json()["dropped_connections"], 2);
    assert!(r1.closed_within(T));
    assert!(r2.closed_within(T));
    wait_until(T, "open realtime connections to reach 0", || {
        b.stats()["connections"]["realtime_open"] == 0
    });
    // New connections work again.
    let mut r3 = b.realtime("2.0.0");
    r3.join("c", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    r3.wait_for(T, |m| m["event"] == "postgres_changes");
}

#[test]
fn mute_realtime_drops_events_silently_for_a_while() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    rt.join("a", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    b.fault(json!({"mute_realtime_ms": 600}));
    let muted = b.enqueue(
        &g.team_id,
        Some(&g.gateway_id),
        json!({"job_type": "muted"}),
    );
    // Heartbeats still answered while muted: the socket looks healthy.
    rt.send(None, Some("77"), "phoenix", "heartbeat", json!({}));
    rt.wait_for(T, |m| m["ref"] == "77");
    let early: Vec<_> = rt
        .drain(Duration::from_millis(200))
        .into_iter()
        .filter(|m| m["event"] == "postgres_changes")
        .collect();
    assert!(early.is_empty());
    wait_until(T, "the mute to end", || {
        let j = b.enqueue(
            &g.team_id,
            Some(&g.gateway_id),
            json!({"job_type": "after"}),
        );
        rt.drain(Duration::from_millis(100)).iter().any(|m| {
            m["event"] == "postgres_changes" && m["payload"]["data"]["record"]["id"] == j["id"]
        })
    });
    let _ = muted;
}

#[test]
fn close_realtime_after_join() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    b.fault(json!({"close_realtime_after_join": 1}));
    let mut rt = b.realtime("2.0.0");
    let reply = rt.join("a", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    assert_eq!(reply["payload"]["status"], "ok");
    assert!(rt.closed_within(T));
    // Only the next join was affected.
    let mut rt2 = b.realtime("2.0.0");
    rt2.join("a", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    assert!(!rt2.closed_within(Duration::from_millis(300)));
}

#[test]
fn failed_joins_and_upgrades() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    b.fault(json!({"fail_next_joins": 1}));
    let mut rt = b.realtime("2.0.0");
    let r = rt.join("a", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    assert_eq!(r["payload"]["status"], "error");
    assert!(r["payload"]["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("Injected"));
    let r = rt.join("a", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    assert_eq!(r["payload"]["status"], "ok", "only the next join fails");
    // The next websocket upgrade fails with the given status; "all" does not include realtime.
    b.fault(json!({"fail_next": {"count": 1, "status": 503, "paths": "realtime"}}));
    match tungstenite::connect(b.ws_url("2.0.0").as_str()) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("upgrade must fail: {:?}", other.map(|x| x.1.status())),
    }
    let mut rt2 = b.realtime("2.0.0");
    rt2.send(None, Some("1"), "phoenix", "heartbeat", json!({}));
    rt2.wait_for(T, |m| m["ref"] == "1");
    assert!(b.stats()["requests"]["realtime"].as_u64().unwrap() >= 3);
}

#[test]
fn pending_faults_are_listed() {
    let b = Backend::start(&[]);
    b.fault(json!({"fail_next": {"count": 3, "status": 500, "paths": "rest,auth"}, "fail_next_joins": 2}));
    let p = b.service("GET", "/admin/v1/faults", None).json();
    assert_eq!(p["fail_next"][0]["remaining"], 3);
    assert_eq!(p["fail_next"][0]["paths"], json!(["rest", "auth"]));
    assert_eq!(p["fail_next_joins"], 2);
    b.fault(json!({"clear": true}));
    let p = b.service("GET", "/admin/v1/faults", None).json();
    assert_eq!(p["fail_next"], json!([]));
    assert_eq!(p["fail_next_joins"], 0);
}

#[test]
fn stats_count_requests_per_class() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let before = b.stats();
    b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None);
    b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None);
    b.heartbeat_ready(&g.access_token);
    b.get_user(&g.access_token);
    let after = b.stats();
    let d =
        |k: &str| after["requests"][k].as_u64().unwrap() - before["requests"][k].as_u64().unwrap();
    assert_eq!((d("rest"), d("functions"), d("auth")), (2, 1, 1));
    assert!(after["connections"]["http_total"].as_u64().unwrap() >= 1);
}
