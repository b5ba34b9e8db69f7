//! The realtime reader against scripted Phoenix servers: frames, joins, heartbeats, records.
use super::*;

#[test]
fn frames_round_trip_in_both_versions() {
    let f = Frame {
        join_ref: Some("1".into()),
        r#ref: Some("1".into()),
        topic: "realtime:gateway_jobs_g".into(),
        event: "phx_join".into(),
        payload: join_payload("t", "jwt"),
    };
    let text = f.encode();
    assert!(text.starts_with(r#"["1","1","realtime:gateway_jobs_g","phx_join",{"#));
    assert_eq!(Frame::decode(&text).unwrap(), f);
    let v1 = r#"{"join_ref":null,"ref":"7","topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}}}"#;
    let d = Frame::decode(v1).unwrap();
    assert_eq!(d.r#ref.as_deref(), Some("7"));
    assert_eq!(d.join_ref, None);
    assert_eq!(d.event, "phx_reply");
    assert!(Frame::decode("[1,2,3]").is_err());
    assert!(Frame::decode("nope").is_err());
    assert!(Frame::decode(r#"[null,null,5,"x",{}]"#).is_err());
}

#[test]
fn join_payload_matches_the_contract() {
    let p = join_payload("T", "A");
    assert_eq!(p["config"]["postgres_changes"][0]["filter"], "team_id=eq.T");
    assert_eq!(p["config"]["postgres_changes"][0]["table"], "gateway_jobs");
    assert_eq!(p["config"]["private"], false);
    assert_eq!(p["access_token"], "A");
}

#[test]
fn socket_urls_and_endpoints() {
    assert_eq!(
        socket_url("http://127.0.0.1:5432/", "k y").unwrap(),
        "ws://127.0.0.1:5432/realtime/v1/websocket?apikey=k%20y&vsn=2.0.0"
    );
    let u = socket_url("https://api.panorama.app", "k").unwrap();
    assert!(u.starts_with("wss://api.panorama.app/realtime/v1/websocket?"));
    assert_eq!(
        endpoint(&u).unwrap(),
        ("api.panorama.app".into(), 443, true)
    );
    assert_eq!(
        endpoint("ws://[::1]:9/x").unwrap(),
        ("::1".into(), 9, false)
    );
    assert!(socket_url("ftp://x", "k").is_err());
}

#[test]
fn records_are_coerced_by_column_type() {
    let mut rec = json!({"payload": "{\"a\":1}", "attempt": "2", "flag": "t", "id": "j"});
    let cols = json!([{"name":"payload","type":"jsonb"},{"name":"attempt","type":"int4"},
                      {"name":"flag","type":"bool"},{"name":"id","type":"uuid"}]);
    coerce_record(&mut rec, Some(&cols));
    assert_eq!(
        rec,
        json!({"payload": {"a": 1}, "attempt": 2, "flag": true, "id": "j"})
    );
}

#[test]
fn wss_to_a_server_that_is_not_tls_fails_fast_with_a_clear_error() {
    assert!(tls_config().is_ok());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nnot tls");
        std::thread::sleep(Duration::from_millis(200));
    });
    let t0 = Instant::now();
    let err = Conn::connect(&format!(
        "wss://127.0.0.1:{port}/realtime/v1/websocket?vsn=2.0.0"
    ))
    .err()
    .expect("must fail");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(err.contains("handshake"), "{err}");
    t.join().unwrap();
    assert!(Conn::connect("ws://127.0.0.1:1/x").is_err());
}

struct NullStore;
impl crate::backend::session::TokenStore for NullStore {
    fn save(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn load(&self) -> Option<(String, String)> {
        None
    }
}

#[derive(Default)]
struct Hooks {
    records: std::sync::Mutex<Vec<Value>>,
    subscribed: std::sync::atomic::AtomicUsize,
    disconnects: std::sync::atomic::AtomicUsize,
    malformed: std::sync::atomic::AtomicUsize,
}
impl ReaderHooks for Hooks {
    fn stop(&self) -> bool {
        self.records.lock().unwrap().len() >= 2
    }
    fn wait(&self, d: Duration) -> bool {
        std::thread::sleep(d);
        self.stop()
    }
    fn subscribed(&self) {
        self.subscribed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn record(&self, r: Value) {
        self.records.lock().unwrap().push(r);
    }
    fn malformed(&self, _: &str) {
        self.malformed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn disconnected(&self, _: &str, _: Duration) {
        self.disconnects
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A loopback Phoenix server: first connection answers the join, sends garbage and one
/// change, then stops answering heartbeats (the client must reconnect); the second
/// connection delivers the second change.
#[test]
fn reader_joins_skips_garbage_detects_dead_heartbeat_and_reconnects() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for conn_no in 0..2 {
            let (tcp, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            let join = loop {
                if let Message::Text(t) = ws.read().unwrap() {
                    break Frame::decode(t.as_str()).unwrap();
                }
            };
            assert_eq!(join.event, "phx_join");
            assert_eq!(join.topic, "realtime:gateway_jobs_g");
            assert!(join.join_ref.is_some() && join.join_ref == join.r#ref);
            assert_eq!(
                join.payload,
                join_payload("t", join.payload["access_token"].as_str().unwrap())
            );
            assert_eq!(
                join.payload,
                json!({"config": {"broadcast": {"ack": false, "self": false},
                                  "presence": {"key": "", "enabled": false},
                                  "postgres_changes": [{"event": "INSERT", "schema": "public",
                                      "table": "gateway_jobs", "filter": "team_id=eq.t"}],
                                  "private": false},
                       "access_token": join.payload["access_token"].clone()})
            );
            assert_eq!(
                join.payload["access_token"]
                    .as_str()
                    .unwrap()
                    .split('.')
                    .count(),
                3
            );
            assert_eq!(
                join.payload["config"]["postgres_changes"][0]["filter"],
                "team_id=eq.t"
            );
            let reply = Frame {
                join_ref: join.join_ref.clone(),
                r#ref: join.r#ref.clone(),
                topic: join.topic.clone(),
                event: "phx_reply".into(),
                payload: json!({"status":"ok","response":{"postgres_changes":[{"id":42,"event":"INSERT","schema":"public","table":"gateway_jobs","filter":"team_id=eq.t"}]}}),
            };
            ws.send(Message::text(reply.encode())).unwrap();
            ws.send(Message::text("{not json")).unwrap();
            let change = |id: &str, ids: Value| Frame {
                join_ref: None,
                r#ref: None,
                topic: join.topic.clone(),
                event: "postgres_changes".into(),
                payload: json!({"ids": ids, "data": {"type":"INSERT","schema":"public","table":"gateway_jobs","columns":[],"record":{"id": id},"errors":null}}),
            };
            // Wrong binding id: ignored.
            ws.send(Message::text(change("other", json!([7])).encode()))
                .unwrap();
            ws.send(Message::text(
                change(&format!("j{conn_no}"), json!([42])).encode(),
            ))
            .unwrap();
            if conn_no == 0 {
                // Read (and never answer) heartbeats until the client gives up on us.
                let mut beats = 0;
                while let Ok(m) = ws.read() {
                    if let Message::Text(t) = m {
                        // Exactly `[null,"<ref>","phoenix","heartbeat",{}]`.
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        assert_eq!(v[0], Value::Null, "{v}");
                        assert!(v[1].as_str().is_some_and(|r| r.parse::<u64>().is_ok()));
                        assert_eq!(
                            (&v[2], &v[3], &v[4]),
                            (&json!("phoenix"), &json!("heartbeat"), &json!({}))
                        );
                        beats += 1;
                    }
                }
                assert_eq!(beats, 1, "one unanswered heartbeat is enough to reconnect");
            } else {
                // Answer heartbeats until the client leaves.
                while let Ok(m) = ws.read() {
                    if let Message::Text(t) = m {
                        let f = Frame::decode(t.as_str()).unwrap();
                        if f.event == "heartbeat" {
                            let reply = Frame {
                                join_ref: None,
                                r#ref: f.r#ref.clone(),
                                topic: "phoenix".into(),
                                event: "phx_reply".into(),
                                payload: json!({"status": "ok", "response": {}}),
                            };
                            ws.send(Message::text(reply.encode())).unwrap();
                        }
                        if f.event == "phx_leave" {
                            assert_eq!(f.join_ref, join.join_ref);
                            assert_ne!(f.r#ref, join.r#ref);
                            assert_eq!(f.topic, join.topic);
                            assert_eq!(f.payload, json!({}));
                            break;
                        }
                    }
                }
            }
        }
    });
    let cfg = crate::config::BackendConfig {
        url: format!("http://127.0.0.1:{port}"),
        anon_key: "anon".into(),
    };
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = crate::util::unix_now() + 3600;
    let tok = format!(
        "{}.{}.s",
        e.encode("{}"),
        e.encode(format!("{{\"exp\":{exp}}}"))
    );
    let s = Session::new(
        super::super::new_agent(),
        &cfg,
        "g",
        "t",
        &tok,
        "rt",
        Box::new(NullStore),
    );
    let hooks = Hooks::default();
    let rc = ReaderConfig {
        heartbeat: Duration::from_millis(300),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(100),
        interrupt: Interrupt::default(),
    };
    run_reader(&s, &rc, &hooks);
    server.join().unwrap();
    let recs = hooks.records.lock().unwrap().clone();
    assert_eq!(recs, vec![json!({"id":"j0"}), json!({"id":"j1"})]);
    assert_eq!(
        hooks.subscribed.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert!(hooks.disconnects.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(hooks.malformed.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}
