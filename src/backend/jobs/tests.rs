//! The gateway_jobs and gateway_events calls against a test server: exact requests, row
//! decoding, claim classification.

use super::*;

fn row() -> Value {
    json!({"id": "j1", "team_id": "t", "gateway_id": "g", "status": "queued",
           "job_type": "diagnostic", "payload": {}, "result": null, "error": null,
           "attempt": 1, "idempotency_key": null, "created_at": "2026-01-01T00:00:00Z",
           "updated_at": "2026-01-01T00:00:00Z", "completed_at": null, "extra": 5})
}

#[test]
fn decodes_a_full_row() {
    let j = decode_job(&row()).unwrap();
    assert_eq!(j.id, "j1");
    assert_eq!(j.gateway_id.as_deref(), Some("g"));
    assert_eq!(j.attempt, Some(1));
    assert_eq!(j.payload, json!({}));
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.job_type, JobType::Diagnostic);
}

#[test]
fn job_types_are_typed_and_an_unknown_one_is_kept_as_sent() {
    for (text, ty) in [
        ("diagnostic", JobType::Diagnostic),
        ("model_run", JobType::ModelRun),
        ("subagent_run", JobType::SubagentRun),
        ("subagent_cancel", JobType::SubagentCancel),
        ("shell_exec", JobType::ShellExec),
        ("shell_session", JobType::ShellSession),
    ] {
        let mut r = row();
        r["job_type"] = json!(text);
        let j = decode_job(&r).unwrap();
        assert_eq!(j.job_type, ty);
        assert_eq!(j.job_type.as_str(), text);
    }
    // Not one of ours (case and spaces count): the row decodes, the type is echoed verbatim
    // so only that job fails with "Unsupported job type: <type>".
    for text in ["noop", "Diagnostic", " model_run"] {
        let mut r = row();
        r["job_type"] = json!(text);
        let j = decode_job(&r).unwrap();
        assert_eq!(j.job_type, JobType::Other(text.into()));
        assert_eq!(j.job_type.to_string(), text);
    }
    for (text, st) in [
        ("running", JobStatus::Running),
        ("completed", JobStatus::Completed),
        ("failed", JobStatus::Failed),
        ("cancelled", JobStatus::Cancelled),
    ] {
        let mut r = row();
        r["status"] = json!(text);
        assert_eq!(decode_job(&r).unwrap().status, st);
    }
    let mut r = row();
    r["job_type"] = json!(" ");
    assert_eq!(
        decode_job(&r).unwrap_err(),
        "`job_type` is not a non-empty string"
    );
}

#[test]
fn rejects_malformed_rows_without_failing_the_batch() {
    let mut bad_payload = row();
    bad_payload["payload"] = json!([1, 2]);
    bad_payload["id"] = json!("j2");
    let mut bad_status = row();
    bad_status["status"] = json!("weird");
    let mut bad_attempt = row();
    bad_attempt["attempt"] = json!(-1);
    // A payload nested deeper than serde_json's recursion limit (Postgres accepts it).
    let deep = format!(
        "{{\"id\":\"j6\",\"payload\":{}1{}}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    let mut string_payload = row();
    string_payload["payload"] = json!("just text");
    let body = format!(
        "[{},{},\"x\",{},{},{},{},{}]",
        row(),
        bad_payload,
        bad_status,
        bad_attempt,
        deep,
        string_payload,
        row()
    );
    let raws: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(&body).unwrap();
    let (ok, bad) = decode_raw_rows(raws);
    assert_eq!(ok.len(), 2, "the good rows around the bad ones: {bad:?}");
    assert_eq!(bad.len(), 6);
    assert_eq!(bad[0].0.as_deref(), Some("j2"));
    assert!(bad[0].1.contains("payload"));
    assert_eq!(bad[4].0.as_deref(), Some("j6"), "the deep row's id is read");
    assert!(bad[4].1.contains("could not be decoded"), "{}", bad[4].1);
    assert!(
        bad[5].1.contains("`payload` is not a JSON object"),
        "{}",
        bad[5].1
    );
}

#[test]
fn jsonb_text_payload_is_parsed() {
    let mut r = row();
    r["payload"] = json!("{\"a\":1}");
    assert_eq!(decode_job(&r).unwrap().payload, json!({"a": 1}));
}

#[test]
fn completion_results_keep_user_data_that_only_looks_secret() {
    // A shell command mentioning a key variable, a model's JSON with a `token` field and
    // usage counters are the user's data: only registered secret values are masked.
    let result = json!({
        "command": "echo \"key=${SUPABASE_ANON_KEY:-unset}\"",
        "output": {"token": "abc", "password": "hunter2"},
        "usage": {"input_tokens": 12, "output_tokens": 3},
    });
    let b = completion_body("completed", &Some(result.clone()), &None, "t");
    assert_eq!(b["result"], result);
}

#[test]
fn registered_secrets_never_reach_completion_or_event_bodies() {
    let secret = "opaque-refresh-c0ffee-4242";
    crate::redact::register_secret(secret);
    let err = format!("handler failed: child said {secret}");
    let b = completion_body(
        "failed",
        &Some(json!({"stdout": format!("x {secret} y"), "nested": [secret]})),
        &Some(err.clone()),
        "t",
    );
    let text = b.to_string();
    assert!(!text.contains(secret), "{text}");
    assert!(b["error"].as_str().unwrap().starts_with("handler failed"));
    let s = wire_session("http://127.0.0.1:9", "tok");
    let ev = GatewayEvent {
        level: Level::Error,
        code: Some("job_failed".into()),
        provider: None,
        message: err,
        details: json!({"error": secret}),
    };
    let text = event_body(&s, &ev).to_string();
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("handler failed"), "{text}");
}

#[test]
fn completion_body_nulls_empty_errors() {
    let b = completion_body("completed", &None, &Some(String::new()), "t");
    assert_eq!(
        b,
        json!({"status": "completed", "result": null, "error": null, "completed_at": "t"})
    );
}

#[test]
fn a_claim_is_recognised_by_our_started_at() {
    let ours = "2026-01-05T10:00:00.123Z";
    let mut r = row();
    r["status"] = json!("running");
    r["started_at"] = json!("2026-01-05T10:00:00.123+00:00");
    match classify_claim(Some(&r), "g", ours) {
        ClaimCheck::Ours(j) => assert_eq!(j.id, "j1"),
        other => panic!("{other:?}"),
    }
    r["started_at"] = json!("2026-01-05T10:00:00.124Z");
    assert!(matches!(
        classify_claim(Some(&r), "g", ours),
        ClaimCheck::NotOurs(_)
    ));
    r["started_at"] = json!(null);
    assert!(matches!(
        classify_claim(Some(&r), "g", ours),
        ClaimCheck::NotOurs(_)
    ));
    r["started_at"] = json!(ours);
    r["gateway_id"] = json!("other");
    assert!(matches!(
        classify_claim(Some(&r), "g", ours),
        ClaimCheck::NotOurs(_)
    ));
    r["gateway_id"] = json!("g");
    r["payload"] = json!("not an object");
    assert!(matches!(
        classify_claim(Some(&r), "g", ours),
        ClaimCheck::Malformed(_)
    ));
    assert_eq!(
        classify_claim(Some(&row()), "g", ours),
        ClaimCheck::StillQueued
    );
    for st in ["cancelled", "completed", "failed"] {
        let mut r = row();
        r["status"] = json!(st);
        r["started_at"] = json!(ours);
        assert!(
            matches!(classify_claim(Some(&r), "g", ours), ClaimCheck::NotOurs(_)),
            "{st}"
        );
    }
    assert!(matches!(
        classify_claim(None, "g", ours),
        ClaimCheck::NotOurs(_)
    ));
}

fn jwt(exp: u64) -> String {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(format!(r#"{{"exp":{exp},"sub":"g"}}"#))
    )
}

struct NoStore;
impl crate::backend::session::TokenStore for NoStore {
    fn save(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn load(&self) -> Option<(String, String)> {
        None
    }
}

fn wire_session(url: &str, token: &str) -> Session {
    let cfg = crate::config::BackendConfig {
        url: format!("{url}/"),
        anon_key: "ANON".into(),
    };
    Session::new(
        crate::backend::new_agent(),
        &cfg,
        "g",
        "t",
        token,
        "rt-0",
        Box::new(NoStore),
    )
}

/// A session against a test server that answers like PostgREST; the request log; the token.
#[allow(clippy::type_complexity)]
fn contract_session() -> (
    Session,
    std::sync::Arc<std::sync::Mutex<Vec<crate::backend::testsrv::Captured>>>,
    String,
) {
    use crate::backend::testsrv;
    let (url, log) = testsrv::start(Box::new(|c: &testsrv::Captured| {
        if c.method == "PATCH" && c.header("prefer").is_some() {
            let mut r = row();
            r["status"] = json!("running");
            (200, json!([r]).to_string())
        } else if c.method == "GET" {
            (200, "[]".into())
        } else if c.method == "POST" {
            (201, String::new())
        } else {
            (204, String::new())
        }
    }));
    let tok = jwt(crate::util::unix_now() + 3600);
    let s = wire_session(&url, &tok);
    (s, log, tok)
}

/// What every REST call carries.
fn assert_common(c: &crate::backend::testsrv::Captured, tok: &str) {
    assert_eq!(c.header("apikey"), Some("ANON"), "{c:?}");
    assert_eq!(
        c.header("authorization"),
        Some(format!("Bearer {tok}").as_str())
    );
    assert!(c
        .header("x-client-info")
        .unwrap()
        .starts_with("panorama-gateway/"));
}

/// A PostgREST read.
fn assert_read(c: &crate::backend::testsrv::Captured, tok: &str) {
    assert_common(c, tok);
    assert_eq!(c.method, "GET");
    assert_eq!(c.header("accept-profile"), Some("public"));
    assert_eq!(c.header("prefer"), None);
    assert_eq!(c.header("content-type"), None);
    assert_eq!(c.header("accept"), Some("*/*"));
    assert!(c.body.is_empty());
}

/// A PostgREST write with this `Prefer`.
fn assert_write(c: &crate::backend::testsrv::Captured, tok: &str, prefer: Option<&str>) {
    assert_common(c, tok);
    assert_eq!(c.header("content-profile"), Some("public"));
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(c.header("prefer"), prefer);
}

/// Every gateway_jobs / gateway_events / team_gateways request, byte for byte as
/// PROTOCOL.md §5-§8 and supabase-wire.md §3.7 give them (URLSearchParams encoding).
#[test]
fn rest_requests_are_exactly_the_contract() {
    let (s, log, tok) = contract_session();
    let last = || log.lock().unwrap().last().cloned().unwrap();
    let read = |c: &crate::backend::testsrv::Captured| assert_read(c, &tok);
    let write =
        |c: &crate::backend::testsrv::Captured, prefer: Option<&str>| assert_write(c, &tok, prefer);

    reconcile(&s, RECONCILE_LIMIT).unwrap();
    let c = last();
    read(&c);
    assert_eq!(
        c.target,
        "/rest/v1/gateway_jobs?select=*&team_id=eq.t&status=eq.queued&gateway_id=eq.g&order=created_at.asc&limit=1000"
    );

    // The claim: the reply is a one-row array (`row()` with status running).
    let claimed = claim(&s, "j1", "2026-01-05T10:00:00.123Z");
    let c = last();
    write(&c, Some("return=representation"));
    assert_eq!(c.method, "PATCH");
    assert_eq!(
        c.target,
        "/rest/v1/gateway_jobs?id=eq.j1&team_id=eq.t&status=eq.queued&gateway_id=eq.g&select=*"
    );
    assert_eq!(
        c.json(),
        json!({"status": "running", "gateway_id": "g", "started_at": "2026-01-05T10:00:00.123Z"})
    );
    assert!(claimed.is_ok(), "{claimed:?}");

    let mut job = decode_job(&row()).unwrap();
    job.idempotency_key = Some("k 1,(x)".into());
    job.attempt = Some(2);
    assert!(!idempotency_conflict(&s, &job).unwrap());
    let c = last();
    read(&c);
    assert_eq!(
        c.target,
        "/rest/v1/gateway_jobs?select=id%2Cstatus%2Cresult%2Cerror&team_id=eq.t&idempotency_key=eq.k%201%2C%28x%29&attempt=eq.2&status=in.%28running%2Ccompleted%29&id=neq.j1&order=created_at.asc&limit=1"
    );
    // No attempt column: `attempt or 1`.
    job.attempt = None;
    idempotency_conflict(&s, &job).unwrap();
    assert!(last().target.contains("&attempt=eq.1&"));
    let n = log.lock().unwrap().len();
    job.idempotency_key = None;
    assert!(!idempotency_conflict(&s, &job).unwrap());
    assert_eq!(log.lock().unwrap().len(), n, "no key, no query");

    let body = completion_body(
        "failed",
        &Some(json!({"message": "m"})),
        &Some("boom".into()),
        "2026-01-05T10:00:05.000Z",
    );
    complete(&s, "j1", &body).unwrap();
    let c = last();
    write(&c, None);
    assert_eq!(c.method, "PATCH");
    assert_eq!(c.target, "/rest/v1/gateway_jobs?id=eq.j1&status=eq.running");
    assert_eq!(
        c.json(),
        json!({"status": "failed", "result": {"message": "m"}, "error": "boom",
               "completed_at": "2026-01-05T10:00:05.000Z"})
    );

    set_debug(&s, "j1", &json!({"exit_code": 0})).unwrap();
    let c = last();
    write(&c, None);
    assert_eq!(c.method, "PATCH");
    assert_eq!(c.target, "/rest/v1/gateway_jobs?id=eq.j1");
    assert_eq!(c.json(), json!({"debug": {"exit_code": 0}}));

    // Crash recovery fails a job only while it is still the run our claim started.
    let _ = complete_if_ours(&s, "j1", "2026-01-05T10:00:00.000Z", &body);
    let c = last();
    write(&c, Some("return=representation"));
    assert_eq!(c.method, "PATCH");
    assert_eq!(
        c.target,
        "/rest/v1/gateway_jobs?id=eq.j1&status=eq.running&gateway_id=eq.g&started_at=eq.2026-01-05T10%3A00%3A00.000Z&select=id"
    );
}

/// gateway_events inserts and the control-state read (PROTOCOL.md §6, §8).
#[test]
fn event_and_control_requests_are_exactly_the_contract() {
    let (s, log, tok) = contract_session();
    let last = || log.lock().unwrap().last().cloned().unwrap();
    let read = |c: &crate::backend::testsrv::Captured| assert_read(c, &tok);
    let write =
        |c: &crate::backend::testsrv::Captured, prefer: Option<&str>| assert_write(c, &tok, prefer);

    let ev = GatewayEvent {
        level: Level::Warn,
        code: Some("c".into()),
        provider: None,
        message: "x".repeat(2001),
        details: json!(null),
    };
    insert_event(&s, &ev).unwrap();
    let c = last();
    write(&c, None);
    assert_eq!(c.method, "POST");
    assert_eq!(c.target, "/rest/v1/gateway_events");
    let b = c.json();
    let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "code",
            "details",
            "gateway_id",
            "level",
            "message",
            "provider",
            "team_id"
        ]
    );
    assert_eq!(b["message"].as_str().unwrap().len(), 2003);
    assert!(b["message"].as_str().unwrap().ends_with("..."));
    assert_eq!(b["details"], json!({}));
    assert_eq!(b["provider"], Value::Null);
    assert_eq!(
        (b["gateway_id"].as_str(), b["team_id"].as_str()),
        (Some("g"), Some("t"))
    );

    assert_eq!(control_state(&s).unwrap(), None);
    let c = last();
    read(&c);
    assert_eq!(
        c.target,
        "/rest/v1/team_gateways?select=full_control_enabled%2Cstatus%2Clast_seen_at%2Ccapabilities&id=eq.g&team_id=eq.t"
    );
}

/// Heartbeat, pairing and refresh requests (PROTOCOL.md §3, §4, §8).
#[test]
fn function_and_auth_requests_are_exactly_the_contract() {
    use crate::backend::testsrv;
    let new_at = jwt(crate::util::unix_now() + 3600);
    let new_at2 = new_at.clone();
    let (url, log) = testsrv::start(Box::new(move |c: &testsrv::Captured| {
        match c.target.as_str() {
            "/functions/v1/gateway-heartbeat" => {
                (200, r#"{"success":true,"egress_credential_renewal":null}"#.into())
            }
            "/functions/v1/exchange-gateway-pairing-code" => (
                200,
                json!({"success": true, "gateway_id": "g", "team_id": "t", "access_token": "a.b.c",
                       "refresh_token": "r", "expires_at": "2026-01-05T11:11:12Z", "token_type": "bearer"})
                .to_string(),
            ),
            "/auth/v1/token?grant_type=refresh_token" => (
                200,
                json!({"access_token": new_at2, "token_type": "bearer", "expires_in": 3600,
                       "refresh_token": "rt-1", "user": {}})
                .to_string(),
            ),
            // The expired token is refused once: one refresh, one retry.
            _ if c.header("authorization") == Some(&format!("Bearer {new_at2}")) => {
                (200, "[]".into())
            }
            _ => (401, r#"{"code":"PGRST303","message":"JWT expired"}"#.into()),
        }
    }));
    let cfg = crate::config::BackendConfig {
        url: url.clone(),
        anon_key: "ANON".into(),
    };
    let p = crate::backend::functions::exchange_pairing_code(
        &crate::backend::new_agent(),
        &cfg,
        "  ABCD-1234 \n",
        "My Box",
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(p.gateway_id, "g");
    let c = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(c.method, "POST");
    assert_eq!(c.target, "/functions/v1/exchange-gateway-pairing-code");
    assert_eq!(c.header("apikey"), Some("ANON"));
    assert_eq!(c.header("authorization"), Some("Bearer ANON"));
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(
        c.json(),
        json!({"code": "ABCD-1234", "device_name": "My Box"})
    );

    // A session whose token the server calls expired (its `exp` still looks fine).
    let old = jwt(crate::util::unix_now() + 3000);
    let s = wire_session(&url, &old);
    let hb = json!({"status": "ready", "capabilities": {}, "device_name": "My Box"});
    let before = log.lock().unwrap().len();
    rest::select(&s, "gateway_jobs", &[("select", "status"), ("id", "eq.j1")]).unwrap();
    let reqs: Vec<_> = log.lock().unwrap()[before..].to_vec();
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {old}").as_str())
    );
    assert_eq!(
        reqs[0].target,
        "/rest/v1/gateway_jobs?select=status&id=eq.j1"
    );
    let r = &reqs[1];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("POST", "/auth/v1/token?grant_type=refresh_token")
    );
    assert_eq!(r.header("apikey"), Some("ANON"));
    assert_eq!(r.header("authorization"), Some("Bearer ANON"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-supabase-api-version"), Some("2024-01-01"));
    assert_eq!(r.json(), json!({"refresh_token": "rt-0"}));
    assert_eq!(
        reqs[2].header("authorization"),
        Some(format!("Bearer {new_at}").as_str())
    );
    assert_eq!(reqs[2].target, reqs[0].target);

    let v = crate::backend::functions::invoke(
        &s,
        "gateway-heartbeat",
        &hb,
        crate::backend::functions::HEARTBEAT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(v["success"], true);
    let c = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(c.method, "POST");
    assert_eq!(c.target, "/functions/v1/gateway-heartbeat");
    assert_eq!(c.header("apikey"), Some("ANON"));
    assert_eq!(
        c.header("authorization"),
        Some(format!("Bearer {new_at}").as_str())
    );
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(c.json(), hb);
}
