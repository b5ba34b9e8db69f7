//! Realtime (Phoenix channels) of the local backend: both serializers, join replies, delivery
//! filtered by binding and RLS, heartbeats, token updates, leave, and bad input.

mod support;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::emulator::*;

const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn changes(msgs: &[Value]) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m["event"] == "postgres_changes")
        .cloned()
        .collect()
}

#[test]
fn join_reply_system_message_and_insert_delivery_vsn2() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    let filter = format!("team_id=eq.{}", g.team_id);
    let channel = format!("gateway_jobs_{}", g.gateway_id);
    let reply = rt.join(
        &channel,
        "INSERT",
        "gateway_jobs",
        Some(&filter),
        Some(&g.access_token),
    );
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    assert_eq!(reply["topic"], json!(format!("realtime:{channel}")));
    assert_eq!(reply["join_ref"], reply["ref"]);
    let pcs = reply["payload"]["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(pcs.len(), 1);
    assert_eq!(pcs[0]["event"], "INSERT");
    assert_eq!(pcs[0]["schema"], "public");
    assert_eq!(pcs[0]["table"], "gateway_jobs");
    assert_eq!(pcs[0]["filter"], json!(filter));
    let bid = pcs[0]["id"].as_u64().unwrap();
    assert!(bid > 0);
    let sys = rt.wait_for(T, |m| m["event"] == "system");
    assert_eq!(sys["payload"]["status"], "ok");
    assert_eq!(sys["payload"]["message"], "Subscribed to PostgreSQL");
    assert_eq!(sys["payload"]["channel"], json!(channel));

    let job = b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let ev = rt.wait_for(T, |m| m["event"] == "postgres_changes");
    assert_eq!(ev["topic"], json!(format!("realtime:{channel}")));
    assert_eq!(ev["payload"]["ids"], json!([bid]));
    let data = &ev["payload"]["data"];
    assert_eq!(data["type"], "INSERT");
    assert_eq!(data["schema"], "public");
    assert_eq!(data["table"], "gateway_jobs");
    assert!(data["commit_timestamp"].is_string());
    assert_eq!(data["errors"], Value::Null);
    assert!(data["columns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == &json!({"name": "attempt", "type": "int4"})));
    assert_eq!(
        data["record"], job,
        "the full row, including null result/error/completed_at"
    );
    // UPDATEs are not delivered to an INSERT binding.
    b.service(
        "PATCH",
        &format!(
            "/rest/v1/gateway_jobs?id=eq.{}",
            job["id"].as_str().unwrap()
        ),
        Some(&json!({"status": "cancelled"})),
    );
    assert!(changes(&rt.drain(QUIET)).is_empty());
}

#[test]
fn vsn1_objects_heartbeat_and_leave() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut rt = b.realtime("1.0.0");
    rt.send(None, Some("7"), "phoenix", "heartbeat", json!({}));
    let hb = rt.wait_for(T, |m| m["event"] == "phx_reply");
    assert_eq!(
        hb,
        json!({"join_ref": null, "ref": "7", "topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}})
    );
    // Refs are echoed exactly as sent, even as numbers.
    rt.ws
        .send(tungstenite::Message::text(
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":8,"join_ref":null}"#,
        ))
        .unwrap();
    let hb = rt.wait_for(T, |m| m["ref"] == 8);
    assert_eq!(hb["payload"]["status"], "ok");
    let reply = rt.join("jobs", "*", "gateway_jobs", None, Some(&g.access_token));
    assert_eq!(reply["payload"]["status"], "ok");
    let jr = reply["join_ref"].as_str().unwrap().to_string();
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let ev = rt.wait_for(T, |m| m["event"] == "postgres_changes");
    assert_eq!(ev["payload"]["data"]["type"], "INSERT");
    rt.send(
        Some(&jr),
        Some("9"),
        "realtime:jobs",
        "phx_leave",
        json!({}),
    );
    let r = rt.wait_for(T, |m| m["event"] == "phx_reply" && m["ref"] == "9");
    assert_eq!(r["payload"]["status"], "ok");
    let c = rt.wait_for(T, |m| m["event"] == "phx_close");
    assert_eq!(c["join_ref"], json!(jr));
    // After leaving nothing arrives; pushes on the old topic get "unmatched topic".
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    assert!(changes(&rt.drain(QUIET)).is_empty());
    rt.send(
        Some(&jr),
        Some("10"),
        "realtime:jobs",
        "broadcast",
        json!({}),
    );
    let r = rt.wait_for(T, |m| m["ref"] == "10");
    assert_eq!(
        r["payload"],
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    assert!(b.stats()["heartbeats_received"].as_u64().unwrap() >= 1);
}

#[test]
fn team_filter_and_rls_decide_delivery() {
    let b = Backend::start(&[]);
    let a = b.pair(None);
    let a2 = b.pair(Some(&a.team_id));
    let other = b.pair(None);
    let mut rt_a = b.realtime("2.0.0");
    rt_a.join(
        "a",
        "INSERT",
        "gateway_jobs",
        Some(&format!("team_id=eq.{}", a.team_id)),
        Some(&a.access_token),
    );
    // A gateway asking for another team's rows gets nothing (RLS), though the join succeeds.
    let mut rt_spy = b.realtime("2.0.0");
    let r = rt_spy.join(
        "spy",
        "INSERT",
        "gateway_jobs",
        Some(&format!("team_id=eq.{}", a.team_id)),
        Some(&other.access_token),
    );
    assert_eq!(r["payload"]["status"], "ok");
    // The anon key alone sees nothing either.
    let mut rt_anon = b.realtime("2.0.0");
    rt_anon.join("anon", "*", "gateway_jobs", None, None);
    // A service-role token sees everything.
    let mut rt_svc = b.realtime("2.0.0");
    rt_svc.join("svc", "*", "gateway_jobs", None, Some(&b.service));

    b.enqueue(
        &other.team_id,
        Some(&other.gateway_id),
        json!({"job_type": "other-team"}),
    );
    b.enqueue(
        &a.team_id,
        Some(&a2.gateway_id),
        json!({"job_type": "sibling"}),
    );
    let mine = b.enqueue(&a.team_id, Some(&a.gateway_id), json!({"job_type": "mine"}));

    let got = changes(&rt_a.drain(Duration::from_millis(500)));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["payload"]["data"]["record"]["id"], mine["id"]);
    assert!(changes(&rt_spy.drain(QUIET)).is_empty());
    assert!(changes(&rt_anon.drain(QUIET)).is_empty());
    assert_eq!(changes(&rt_svc.drain(QUIET)).len(), 3);
}

#[test]
fn update_and_delete_events_with_old_record() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    let jr = rt.fresh_ref();
    let payload = json!({"config": {"postgres_changes": [
        {"event": "UPDATE", "schema": "public", "table": "gateway_jobs"},
        {"event": "DELETE", "schema": "public", "table": "gateway_jobs"}]}, "access_token": b.service});
    rt.send(
        Some(&jr),
        Some(&jr),
        "realtime:changes",
        "phx_join",
        payload,
    );
    let reply = rt.wait_for(T, |m| m["event"] == "phx_reply");
    let pcs = reply["payload"]["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(pcs.len(), 2);
    let (upd_id, del_id) = (pcs[0]["id"].clone(), pcs[1]["id"].clone());
    assert_ne!(upd_id, del_id);
    let job = b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let id = job["id"].as_str().unwrap();
    b.service(
        "PATCH",
        &format!("/rest/v1/gateway_jobs?id=eq.{id}"),
        Some(&json!({"status": "cancelled"})),
    );
    let ev = rt.wait_for(T, |m| m["event"] == "postgres_changes");
    assert_eq!(ev["payload"]["ids"], json!([upd_id]));
    assert_eq!(ev["payload"]["data"]["type"], "UPDATE");
    assert_eq!(ev["payload"]["data"]["record"]["status"], "cancelled");
    assert_eq!(ev["payload"]["data"]["old_record"]["status"], "queued");
    b.service("DELETE", &format!("/rest/v1/gateway_jobs?id=eq.{id}"), None);
    let ev = rt.wait_for(T, |m| m["event"] == "postgres_changes");
    assert_eq!(ev["payload"]["ids"], json!([del_id]));
    assert_eq!(ev["payload"]["data"]["type"], "DELETE");
    assert_eq!(ev["payload"]["data"]["old_record"]["id"], json!(id));
    assert!(ev["payload"]["data"].get("record").is_none());
}

#[test]
fn bad_tokens_and_bad_bindings_get_error_replies() {
    let b = Backend::start(&["--access-token-ttl", "1"]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    let r = rt.join("x", "INSERT", "gateway_jobs", None, Some("not.a.jwt"));
    assert_eq!(r["payload"]["status"], "error");
    assert!(r["payload"]["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("InvalidJWTToken"));
    let r = rt.join("x", "INSERT", "no_such_table", None, Some(&g.access_token));
    assert_eq!(r["payload"]["status"], "error");
    let r = rt.join(
        "x",
        "INSERT",
        "gateway_jobs",
        Some("bogus=eq.1"),
        Some(&g.access_token),
    );
    assert_eq!(r["payload"]["status"], "error");
    let r = rt.join(
        "x",
        "INSERT",
        "gateway_jobs",
        Some("no-equals-sign"),
        Some(&g.access_token),
    );
    assert_eq!(r["payload"]["status"], "error");
    // Wait for the token to expire, then a join with it is refused.
    wait_until(Duration::from_secs(5), "the access token to expire", || {
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status
            == 401
    });
    let r = rt.join("x", "INSERT", "gateway_jobs", None, Some(&g.access_token));
    assert_eq!(r["payload"]["status"], "error");
    assert!(
        r["payload"]["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("Token has expired"),
        "{r}"
    );
    assert!(b.stats()["join_errors"].as_u64().unwrap() >= 5);
}

#[test]
fn access_token_push_updates_the_channel_and_expiry_closes_it() {
    let b = Backend::start(&["--access-token-ttl", "3"]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    let reply = rt.join(
        "jobs",
        "INSERT",
        "gateway_jobs",
        Some(&format!("team_id=eq.{}", g.team_id)),
        Some(&g.access_token),
    );
    let jr = reply["join_ref"].as_str().unwrap().to_string();
    // Refresh over HTTP one second before the first token expires, so the refreshed token
    // outlives it by about two seconds (exp has whole-second precision).
    let first_exp = jwt_exp(&g.access_token);
    wait_until(
        Duration::from_secs(6),
        "one second before the first token's expiry",
        || unix_now() + 1 >= first_exp,
    );
    let r = b.refresh(&g.refresh_token);
    let new_at = r.json()["access_token"].as_str().unwrap().to_string();
    // Push the refreshed token before the first one expires, as a client does; the channel must
    // then outlive the first token.
    rt.send(
        Some(&jr),
        Some("50"),
        "realtime:jobs",
        "access_token",
        json!({"access_token": new_at}),
    );
    wait_until(
        Duration::from_secs(6),
        "the first access token to expire",
        || {
            b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
                .status
                == 401
        },
    );
    // Frames are handled in order: once the heartbeat is answered, the token is in place.
    rt.send(None, Some("60"), "phoenix", "heartbeat", json!({}));
    rt.wait_for(T, |m| m["ref"] == "60");
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let ev = rt.wait_for(T, |m| m["event"] == "postgres_changes");
    assert_eq!(ev["payload"]["data"]["type"], "INSERT");
    // An invalid token pushed on the channel closes it with a system error and phx_close.
    rt.send(
        Some(&jr),
        Some("51"),
        "realtime:jobs",
        "access_token",
        json!({"access_token": "bad.token.here"}),
    );
    let sys = rt.wait_for(T, |m| {
        m["event"] == "system" && m["payload"]["status"] == "error"
    });
    assert!(sys["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("InvalidJWTToken"));
    let close = rt.wait_for(T, |m| m["event"] == "phx_close");
    assert_eq!(close["join_ref"], json!(jr));
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    assert!(changes(&rt.drain(QUIET)).is_empty());
}

#[test]
fn channel_is_closed_when_its_token_expires_even_without_events() {
    let b = Backend::start(&["--access-token-ttl", "1"]);
    let g = b.pair(None);
    let mut rt = b.realtime("1.0.0");
    let reply = rt.join(
        "idle",
        "INSERT",
        "gateway_jobs",
        None,
        Some(&g.access_token),
    );
    let sys = rt.wait_for(Duration::from_secs(5), |m| {
        m["event"] == "system" && m["payload"]["status"] == "error"
    });
    assert!(sys["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("Token has expired"));
    let close = rt.wait_for(T, |m| m["event"] == "phx_close");
    assert_eq!(close["join_ref"], reply["join_ref"]);
    assert_eq!(b.stats()["channels"], 0);
}

#[test]
fn expire_fault_closes_channels_promptly() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    rt.join_jobs(&g.access_token);
    b.fault(json!({"expire_access_tokens": true}));
    rt.wait_for(T, |m| m["event"] == "phx_close");
}

#[test]
fn channel_with_an_expired_token_gets_no_events() {
    let b = Backend::start(&["--access-token-ttl", "1"]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    rt.join_jobs(&g.access_token);
    wait_until(Duration::from_secs(5), "the access token to expire", || {
        b.req("GET", "/rest/v1/gateway_jobs", &g.access_token, None)
            .status
            == 401
    });
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let sys = rt.wait_for(T, |m| {
        m["event"] == "system" && m["payload"]["status"] == "error"
    });
    assert!(sys["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("Token has expired"));
    rt.wait_for(T, |m| m["event"] == "phx_close");
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    assert!(changes(&rt.drain(QUIET)).is_empty());
}

#[test]
fn upgrade_needs_a_valid_apikey_and_known_vsn() {
    let b = Backend::start(&[]);
    let base = b.url.replacen("http://", "ws://", 1);
    for url in [
        format!("{base}/realtime/v1/websocket?vsn=2.0.0"),
        format!("{base}/realtime/v1/websocket?apikey=forged&vsn=2.0.0"),
        format!("{base}/realtime/v1/websocket?apikey={}&vsn=9.9.9", b.anon),
    ] {
        match tungstenite::connect(url.as_str()) {
            Err(tungstenite::Error::Http(resp)) => assert!(resp.status().as_u16() >= 400),
            other => panic!(
                "upgrade must be refused for {url}: {:?}",
                other.map(|x| x.1.status())
            ),
        }
    }
}

#[test]
fn garbage_frames_do_not_crash_the_server() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    rt.ws
        .send(tungstenite::Message::text("this is not json"))
        .unwrap();
    rt.ws.send(tungstenite::Message::text("[1,2]")).unwrap();
    rt.ws
        .send(tungstenite::Message::text("{\"topic\": 5}"))
        .unwrap();
    rt.ws
        .send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .unwrap();
    rt.send(None, Some("3"), "phoenix", "heartbeat", json!({}));
    let r = rt.wait_for(T, |m| m["ref"] == "3");
    assert_eq!(r["payload"]["status"], "ok");
    // A raw socket that sends an unmasked frame with a huge length gets closed.
    let addr = b.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /realtime/v1/websocket?apikey={}&vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b.anon
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(&[0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
    // Server still serves.
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let mut rt2 = b.realtime("1.0.0");
    rt2.send(None, Some("1"), "phoenix", "heartbeat", json!({}));
    rt2.wait_for(T, |m| m["ref"] == "1");
}

#[test]
fn rejoin_replaces_the_channel_and_stats_count() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let mut rt = b.realtime("2.0.0");
    rt.join_jobs(&g.access_token);
    let second = rt.join_jobs(&g.access_token);
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let got = changes(&rt.drain(Duration::from_millis(500)));
    assert_eq!(got.len(), 1, "one channel per topic: {got:?}");
    let _ = second;
    let s = b.stats();
    assert_eq!(s["joins"], 2);
    assert_eq!(s["connections"]["realtime_open"], 1);
    assert_eq!(s["channels"], 1);
    assert!(s["events_delivered"].as_u64().unwrap() >= 1);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `exp` claim of a JWT (seconds since the epoch).
fn jwt_exp(token: &str) -> u64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    let v: Value = serde_json::from_slice(&bytes).expect("JWT payload is JSON");
    v["exp"].as_u64().expect("JWT has exp")
}
