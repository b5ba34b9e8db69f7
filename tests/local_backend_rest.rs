//! PostgREST subset, pairing, edge functions and row-level security of the local backend,
//! exercised against the real binary on loopback.

mod support;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::emulator::*;

#[test]
fn ready_line_and_health() {
    let b = Backend::start(&[]);
    assert!(b.url.starts_with("http://127.0.0.1:"));
    assert_eq!(b.anon.split('.').count(), 3);
    assert_ne!(b.anon, b.service);
    let r = b.req_full("GET", "/health", None, None, &[], None);
    assert_eq!(r.status, 200);
}

#[test]
fn api_key_is_required_and_checked() {
    let b = Backend::start(&[]);
    let r = b.req_full("GET", "/rest/v1/gateway_jobs", None, None, &[], None);
    assert_eq!(r.status, 401);
    assert!(r.json()["message"].as_str().unwrap().contains("No API key"));
    let forged = format!("{}x", b.anon);
    let r = b.req_full(
        "GET",
        "/rest/v1/gateway_jobs",
        Some(&forged),
        None,
        &[],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Invalid API key");
}

#[test]
fn pairing_success_body_is_exact_and_code_works_once() {
    let b = Backend::start(&[]);
    let code = b.pairing_code(None);
    let team = code["team_id"].as_str().unwrap().to_string();
    let r = b.exchange(code["code"].as_str().unwrap());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_at",
            "gateway_id",
            "refresh_token",
            "success",
            "team_id",
            "token_type"
        ]
    );
    assert_eq!(v["success"], true);
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["team_id"], json!(team));
    let exp = v["expires_at"].as_str().unwrap();
    assert!(exp.ends_with('Z') && exp.contains('T'), "{exp}");
    // Access token: sub = gateway user, role authenticated, exp present.
    let payload = v["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["role"], "authenticated");
    assert!(claims["exp"].as_u64().unwrap() > 0);
    assert!(claims["sub"].is_string());
    assert_eq!(claims["gateway_id"], v["gateway_id"]);

    // The gateway row exists, pending, with the device name.
    let rows = b
        .service(
            "GET",
            &format!(
                "/rest/v1/team_gateways?id=eq.{}",
                v["gateway_id"].as_str().unwrap()
            ),
            None,
        )
        .json();
    assert_eq!(rows[0]["status"], "pending");
    assert_eq!(rows[0]["device_name"], "test-box");
    assert_eq!(rows[0]["team_id"], json!(team));

    // Second use fails with the failure shape.
    let r = b.exchange(code["code"].as_str().unwrap());
    assert!(r.status >= 400 && r.status < 500);
    assert_eq!(r.json()["success"], false);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("already been used"));

    // Unknown code.
    let r = b.exchange("NOPE-NOPE");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "Invalid pairing code");

    // A second gateway in the same team.
    let g2 = b.pair(Some(&team));
    assert_eq!(g2.team_id, team);
    assert_ne!(g2.gateway_id, v["gateway_id"].as_str().unwrap());
}

#[test]
fn pairing_code_expires() {
    let b = Backend::start(&["--pairing-code-ttl", "0"]);
    let code = b.pairing_code(None);
    let r = b.exchange(code["code"].as_str().unwrap());
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["success"], false);
    assert_eq!(r.json()["error"], "Pairing code expired");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("new pairing code"));
}

#[test]
fn admin_rpc_needs_service_role() {
    let b = Backend::start(&[]);
    let r = b.req(
        "POST",
        "/rest/v1/rpc/admin_create_pairing_code",
        &b.anon,
        Some(&json!({})),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "42501");
    let g = b.pair(None);
    let r = b.req(
        "POST",
        "/rest/v1/rpc/admin_create_pairing_code",
        &g.access_token,
        Some(&json!({})),
    );
    assert_eq!(r.status, 403);
    let r = b.service(
        "POST",
        "/rest/v1/rpc/admin_create_pairing_code",
        Some(&json!({"team_id": "not-a-uuid"})),
    );
    assert_eq!(r.status, 400);
    let r = b.service("POST", "/rest/v1/rpc/no_such_fn", Some(&json!({})));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "PGRST202");
    // The VM-only RPCs answer with their shapes.
    let r = b.req(
        "POST",
        "/rest/v1/rpc/resolve_secret_placeholders_for_job",
        &g.access_token,
        Some(&json!({"p_job_id": g.gateway_id})),
    );
    assert_eq!(r.json(), json!([]));
    let r = b.req(
        "POST",
        "/rest/v1/rpc/gateway_can_run_vm_restore_readiness_probe",
        &g.access_token,
        Some(&json!({"p_job_id": g.gateway_id})),
    );
    assert_eq!(r.json(), json!(false));
}

#[test]
fn job_defaults_and_gateway_queries() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let job = b.enqueue(
        &g.team_id,
        Some(&g.gateway_id),
        json!({"idempotency_key": "k1"}),
    );
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempt"], 1);
    assert!(job["id"].as_str().unwrap().len() == 36);
    for k in ["result", "error", "completed_at", "started_at", "debug"] {
        assert_eq!(job[k], Value::Null, "{k} must be present and null");
    }
    assert!(job["created_at"].is_string() && job["updated_at"].is_string());
    let id = job["id"].as_str().unwrap();

    // Reconcile query, percent-encoded as URLSearchParams does.
    let q = format!(
        "/rest/v1/gateway_jobs?select=*&team_id=eq.{}&status=eq.queued&gateway_id=eq.{}&order=created_at.asc",
        g.team_id, g.gateway_id
    );
    let rows = b.req("GET", &q, &g.access_token, None).json();
    assert_eq!(rows.as_array().unwrap().len(), 1);

    // Claim: conditional PATCH with representation.
    let claim = format!(
        "/rest/v1/gateway_jobs?id=eq.{id}&team_id=eq.{}&status=eq.queued&gateway_id=eq.{}&select=*",
        g.team_id, g.gateway_id
    );
    let body = json!({"status": "running", "gateway_id": g.gateway_id, "started_at": "2026-01-05T10:00:00.123Z"});
    let r = b.req_repr("PATCH", &claim, &g.access_token, Some(&body));
    assert_eq!(r.status, 200);
    let rows = r.json();
    assert_eq!(rows[0]["status"], "running");
    assert_eq!(rows[0]["started_at"], "2026-01-05T10:00:00.123Z");
    assert!(rows[0]["updated_at"].as_str() >= job["updated_at"].as_str());
    // Claiming again matches nothing: [].
    let r = b.req_repr("PATCH", &claim, &g.access_token, Some(&body));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));

    // Idempotency query: another job with the same key finds the running one.
    let job2 = b.enqueue(
        &g.team_id,
        Some(&g.gateway_id),
        json!({"idempotency_key": "k1"}),
    );
    let idem = format!(
        "/rest/v1/gateway_jobs?select=id%2Cstatus%2Cresult%2Cerror&team_id=eq.{}&idempotency_key=eq.k1&attempt=eq.1&status=in.%28running%2Ccompleted%29&id=neq.{}&order=created_at.asc&limit=1",
        g.team_id,
        job2["id"].as_str().unwrap()
    );
    let rows = b.req("GET", &idem, &g.access_token, None).json();
    assert_eq!(
        rows,
        json!([{"id": id, "status": "running", "result": null, "error": null}])
    );

    // Complete without Prefer: 204, empty body.
    let done = json!({"status": "completed", "result": {"ok": true}, "error": null, "completed_at": "2026-01-05T10:00:05.000Z"});
    let r = b.req(
        "PATCH",
        &format!("/rest/v1/gateway_jobs?id=eq.{id}&status=eq.running"),
        &g.access_token,
        Some(&done),
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.body, "");
    let r = b.req(
        "GET",
        &format!("/rest/v1/gateway_jobs?select=status,result&id=eq.{id}"),
        &g.access_token,
        None,
    );
    assert_eq!(
        r.json(),
        json!([{"status": "completed", "result": {"ok": true}}])
    );
    // Completing again (status no longer running) changes nothing.
    let r = b.req_repr(
        "PATCH",
        &format!("/rest/v1/gateway_jobs?id=eq.{id}&status=eq.running"),
        &g.access_token,
        Some(&json!({"status": "failed"})),
    );
    assert_eq!(r.json(), json!([]));
}

#[test]
fn claim_is_atomic_under_concurrency() {
    let b = std::sync::Arc::new(Backend::start(&[]));
    let g = b.pair(None);
    let job = b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    let id = job["id"].as_str().unwrap().to_string();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        let g = g.clone();
        let id = id.clone();
        handles.push(std::thread::spawn(move || {
            let claim = format!("/rest/v1/gateway_jobs?id=eq.{id}&status=eq.queued&select=id");
            b.req_repr(
                "PATCH",
                &claim,
                &g.access_token,
                Some(&json!({"status": "running"})),
            )
            .json()
            .as_array()
            .unwrap()
            .len()
        }));
    }
    let wins: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(wins, 1, "exactly one concurrent claim may win");
}

#[test]
fn filters_order_limit_offset_select() {
    let b = Backend::start(&[]);
    let team = b.pairing_code(None)["team_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (i, st) in ["queued", "running", "completed", "failed", "queued"]
        .iter()
        .enumerate()
    {
        let mut extra = json!({"status": st, "attempt": i as i64 + 1, "job_type": format!("t{i}")});
        if i == 2 {
            extra["idempotency_key"] = json!("key-2");
        }
        b.enqueue(&team, None, extra);
    }
    let get = |q: &str| -> Value {
        let r = b.service(
            "GET",
            &format!("/rest/v1/gateway_jobs?team_id=eq.{team}&{q}"),
            None,
        );
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()
    };
    let types = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["job_type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        types(&get("select=job_type&status=eq.queued&order=attempt.asc")),
        ["t0", "t4"]
    );
    assert_eq!(
        get("status=neq.queued&select=job_type")
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        types(&get(
            "select=job_type&status=in.(running,failed)&order=attempt.desc"
        )),
        ["t3", "t1"]
    );
    assert_eq!(
        types(&get(
            "select=job_type&status=in.%28running%2Cfailed%29&order=attempt.asc"
        )),
        ["t1", "t3"]
    );
    assert_eq!(
        types(&get("select=job_type&attempt=gt.3&order=attempt.asc")),
        ["t3", "t4"]
    );
    assert_eq!(
        types(&get("select=job_type&attempt=gte.3&order=attempt.asc")),
        ["t2", "t3", "t4"]
    );
    assert_eq!(types(&get("select=job_type&attempt=lt.2")), ["t0"]);
    assert_eq!(
        types(&get("select=job_type&attempt=lte.2&order=attempt.asc")),
        ["t0", "t1"]
    );
    assert_eq!(
        types(&get(
            "select=job_type&idempotency_key=is.null&order=attempt.asc"
        ))
        .len(),
        4
    );
    assert_eq!(
        types(&get("select=job_type&idempotency_key=not.is.null")),
        ["t2"]
    );
    assert_eq!(
        types(&get("select=job_type&order=attempt.desc&limit=2")),
        ["t4", "t3"]
    );
    assert_eq!(
        types(&get("select=job_type&order=attempt.asc&limit=2&offset=1")),
        ["t1", "t2"]
    );
    assert_eq!(
        types(&get(
            "select=job_type&or=(status.eq.failed,attempt.eq.1)&order=attempt.asc"
        )),
        ["t0", "t3"]
    );
    assert_eq!(
        types(&get("select=job_type&job_type=like.t*&attempt=eq.5")),
        ["t4"]
    );
    assert_eq!(
        types(&get("select=job_type&job_type=ilike.T%25&attempt=lt.2")),
        ["t0"]
    );
    assert_eq!(
        types(&get(
            "select=job_type&job_type=not.in.(t0,t1,t2)&order=attempt.asc"
        )),
        ["t3", "t4"]
    );
    // HEAD: headers only, with the count.
    let r = b.req_full(
        "HEAD",
        &format!("/rest/v1/gateway_jobs?team_id=eq.{team}"),
        Some(&b.service),
        Some(&b.service),
        &[("Prefer", "count=exact")],
        None,
    );
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(r.header("content-range"), Some("0-4/5"));
    // A column list returns exactly those keys; aliases rename.
    let v = get("select=id,status&limit=1");
    assert_eq!(v[0].as_object().unwrap().len(), 2);
    let v = get("select=kind:job_type&attempt=eq.1");
    assert_eq!(v, json!([{"kind": "t0"}]));
    // Null ordering: ascending puts nulls last.
    let v = get("select=idempotency_key&order=idempotency_key.asc");
    assert_eq!(v[0]["idempotency_key"], "key-2");
    // Timestamps compare as instants.
    let v = get("select=job_type&created_at=gt.2000-01-01T00:00:00%2B00:00");
    assert_eq!(v.as_array().unwrap().len(), 5);
    // Content-Range with count=exact.
    let r = b.req_full(
        "GET",
        &format!("/rest/v1/gateway_jobs?team_id=eq.{team}&select=id&limit=2"),
        Some(&b.service),
        Some(&b.service),
        &[("Prefer", "count=exact")],
        None,
    );
    assert_eq!(r.header("content-range"), Some("0-1/5"));
}

#[test]
fn single_object_and_error_shapes() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let obj = [("Accept", "application/vnd.pgrst.object+json")];
    let path = format!("/rest/v1/team_gateways?select=full_control_enabled,status,last_seen_at,capabilities&id=eq.{}&team_id=eq.{}", g.gateway_id, g.team_id);
    let r = b.req_full(
        "GET",
        &path,
        Some(&b.anon),
        Some(&g.access_token),
        &obj,
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"full_control_enabled": false, "status": "pending", "last_seen_at": null, "capabilities": null})
    );
    let r = b.req_full(
        "GET",
        "/rest/v1/gateway_jobs?select=id",
        Some(&b.anon),
        Some(&g.access_token),
        &obj,
        None,
    );
    assert_eq!(r.status, 406);
    let e = r.json();
    assert_eq!(e["code"], "PGRST116");
    for k in ["message", "details", "hint"] {
        assert!(e.get(k).is_some(), "error body lacks {k}");
    }
    // Unknown table, unknown column in a filter, in a body, bad operator, bad JSON.
    let r = b.service("GET", "/rest/v1/nope", None);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("PGRST205"))
    );
    let r = b.service("GET", "/rest/v1/gateway_jobs?bogus=eq.1", None);
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!("42703")));
    let r = b.service(
        "POST",
        "/rest/v1/gateway_jobs",
        Some(&json!({"team_id": g.team_id, "job_type": "x", "bogus": 1})),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("PGRST204"))
    );
    let r = b.service("GET", "/rest/v1/gateway_jobs?status=approx.1", None);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("PGRST100"))
    );
    let r = b.req_full(
        "POST",
        "/rest/v1/gateway_jobs",
        Some(&b.service),
        Some(&b.service),
        &[],
        Some("{not json"),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("PGRST102"))
    );
    // Constraints: not null, check, uuid syntax.
    let r = b.service(
        "POST",
        "/rest/v1/gateway_jobs",
        Some(&json!({"team_id": g.team_id})),
    );
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!("23502")));
    let r = b.service(
        "POST",
        "/rest/v1/gateway_jobs",
        Some(&json!({"team_id": g.team_id, "job_type": "x", "status": "weird"})),
    );
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!("23514")));
    let r = b.service(
        "POST",
        "/rest/v1/gateway_jobs",
        Some(&json!({"team_id": "abc", "job_type": "x"})),
    );
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!("22P02")));
    // An expired/invalid JWT on REST: 401 mentioning JWT.
    let forged = format!("{}A", g.access_token);
    let r = b.req("GET", "/rest/v1/gateway_jobs", &forged, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "PGRST301");
    assert!(r.json()["message"].as_str().unwrap().contains("JWT"));
}

#[test]
fn minimal_and_representation_inserts_and_deletes() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let ev = json!({"gateway_id": g.gateway_id, "team_id": g.team_id, "provider": null, "level": "warn",
        "code": "provider_validation", "message": "gemini validation failed", "details": {"context": "startup"}});
    let r = b.req(
        "POST",
        "/rest/v1/gateway_events",
        &g.access_token,
        Some(&ev),
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.body, "");
    let r = b.req_repr(
        "POST",
        "/rest/v1/gateway_events?select=id,level",
        &g.access_token,
        Some(&ev),
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.json()[0]["level"], "warn");
    let rows = b
        .service(
            "GET",
            &format!("/rest/v1/gateway_events?gateway_id=eq.{}", g.gateway_id),
            None,
        )
        .json();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows[0]["created_at"].is_string());
    // Bulk insert with an array body.
    let r = b.service("POST", "/rest/v1/team_resources", Some(&json!([
        {"team_id": g.team_id, "resource_type": "remote_shell", "metadata": {"gateway_id": g.gateway_id, "full_control": true}},
        {"team_id": g.team_id, "resource_type": "remote_shell"}])));
    assert_eq!(r.status, 201);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    // Only the service role deletes.
    let r = b.req_repr(
        "DELETE",
        &format!("/rest/v1/gateway_events?gateway_id=eq.{}", g.gateway_id),
        &g.access_token,
        None,
    );
    assert_eq!(r.json(), json!([]));
    let r = b.service(
        "DELETE",
        &format!("/rest/v1/gateway_events?gateway_id=eq.{}", g.gateway_id),
        None,
    );
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let rows = b.service("GET", "/rest/v1/gateway_events", None).json();
    assert_eq!(rows, json!([]));
}

/// A running `claude_code_gateway` subagent of `g` (with `metadata` if given) and its running
/// run number `run_sequence`, inserted with the service key; their rows.
fn running_subagent_run(
    b: &Backend,
    g: &Gateway,
    metadata: Option<Value>,
    run_sequence: u32,
) -> (Value, Value) {
    let mut row = json!({"team_id": g.team_id, "gateway_id": g.gateway_id,
        "subagent_type": "claude_code_gateway", "status": "running"});
    if let Some(m) = metadata {
        row["metadata"] = m;
    }
    let sub = b.service("POST", "/rest/v1/subagents", Some(&row)).json()[0].clone();
    let run = b
        .service(
            "POST",
            "/rest/v1/subagent_runs",
            Some(&json!({"team_id": g.team_id, "gateway_id": g.gateway_id,
        "subagent_id": sub["id"], "run_sequence": run_sequence, "status": "running", "prompt": "hi"})),
        )
        .json()[0]
        .clone();
    (sub, run)
}

#[test]
fn run_events_unique_sequence_gives_23505() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let (sub, run) = running_subagent_run(&b, &g, None, 3);
    let ev = json!({"run_id": run["id"], "subagent_id": sub["id"], "team_id": g.team_id, "gateway_id": g.gateway_id,
        "sequence": 0, "event_type": "run_started", "payload": {}});
    assert_eq!(
        b.req(
            "POST",
            "/rest/v1/subagent_run_events",
            &g.access_token,
            Some(&ev)
        )
        .status,
        201
    );
    let r = b.req(
        "POST",
        "/rest/v1/subagent_run_events",
        &g.access_token,
        Some(&ev),
    );
    assert_eq!(r.status, 409);
    let e = r.json();
    assert_eq!(e["code"], "23505");
    assert!(e["details"]
        .as_str()
        .unwrap()
        .contains("(run_id, sequence)"));
    let r = b.req(
        "GET",
        &format!(
            "/rest/v1/subagent_run_events?select=sequence&run_id=eq.{}&order=sequence.desc&limit=1",
            run["id"].as_str().unwrap()
        ),
        &g.access_token,
        None,
    );
    assert_eq!(r.json(), json!([{"sequence": 0}]));
}

#[test]
fn row_level_security() {
    let b = Backend::start(&[]);
    let a = b.pair(None);
    let a2 = b.pair(Some(&a.team_id));
    let other = b.pair(None);
    let ja = b.enqueue(&a.team_id, Some(&a.gateway_id), json!({}));
    let ja2 = b.enqueue(&a.team_id, Some(&a2.gateway_id), json!({}));
    b.enqueue(&other.team_id, Some(&other.gateway_id), json!({}));
    let ids = |tok: &str, table: &str| -> Vec<String> {
        let r = b.req("GET", &format!("/rest/v1/{table}?select=id"), tok, None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The anon key alone sees nothing.
    assert!(ids(&b.anon, "gateway_jobs").is_empty());
    assert!(ids(&b.anon, "team_gateways").is_empty());
    // A gateway sees its own jobs and gateway row only.
    assert_eq!(
        ids(&a.access_token, "gateway_jobs"),
        vec![ja["id"].as_str().unwrap().to_string()]
    );
    assert_eq!(
        ids(&a2.access_token, "gateway_jobs"),
        vec![ja2["id"].as_str().unwrap().to_string()]
    );
    assert_eq!(
        ids(&a.access_token, "team_gateways"),
        vec![a.gateway_id.clone()]
    );
    let codes = b.req(
        "GET",
        "/rest/v1/gateway_pairing_codes?select=code",
        &a.access_token,
        None,
    );
    assert_eq!(codes.json(), json!([]));
    assert_eq!(
        b.service("GET", "/rest/v1/gateway_pairing_codes?select=code", None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Service sees everything.
    assert_eq!(ids(&b.service, "gateway_jobs").len(), 3);
    // Team resources are team-wide.
    b.service(
        "POST",
        "/rest/v1/team_resources",
        Some(&json!({"team_id": a.team_id, "resource_type": "remote_shell"})),
    );
    assert_eq!(ids(&a2.access_token, "team_resources").len(), 1);
    assert!(ids(&other.access_token, "team_resources").is_empty());
    // Another gateway cannot claim a job that is not its own: nothing matches.
    let claim = format!(
        "/rest/v1/gateway_jobs?id=eq.{}&status=eq.queued",
        ja["id"].as_str().unwrap()
    );
    let r = b.req_repr(
        "PATCH",
        &claim,
        &other.access_token,
        Some(&json!({"status": "running"})),
    );
    assert_eq!(r.json(), json!([]));
    // Moving a row out of one's scope is refused (WITH CHECK).
    let r = b.req_repr(
        "PATCH",
        &claim,
        &a.access_token,
        Some(&json!({"gateway_id": other.gateway_id})),
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "42501");
    // Gateways cannot insert jobs, nor events for another gateway; anon cannot insert at all.
    let r = b.req(
        "POST",
        "/rest/v1/gateway_jobs",
        &a.access_token,
        Some(&json!({"team_id": a.team_id, "gateway_id": a.gateway_id, "job_type": "x"})),
    );
    assert_eq!((r.status, r.json()["code"].clone()), (403, json!("42501")));
    let ev = json!({"gateway_id": other.gateway_id, "team_id": other.team_id, "level": "info", "message": "x"});
    assert_eq!(
        b.req(
            "POST",
            "/rest/v1/gateway_events",
            &a.access_token,
            Some(&ev)
        )
        .status,
        403
    );
    assert_eq!(
        b.req("POST", "/rest/v1/gateway_events", &b.anon, Some(&ev))
            .status,
        401
    );
    // Gateways do not write team_gateways (heartbeat does): the update matches nothing.
    let r = b.req_repr(
        "PATCH",
        &format!("/rest/v1/team_gateways?id=eq.{}", a.gateway_id),
        &a.access_token,
        Some(&json!({"full_control_enabled": true})),
    );
    assert_eq!(r.json(), json!([]));
}

#[test]
fn heartbeat_updates_team_gateways() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let caps = json!({"schema_version": "v1", "providers": {}});
    let r = b.req(
        "POST",
        "/functions/v1/gateway-heartbeat",
        &g.access_token,
        Some(&json!({"status": "ready", "capabilities": caps, "device_name": "renamed"})),
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        r.json(),
        json!({"success": true, "egress_credential_renewal": null})
    );
    let row = b
        .service(
            "GET",
            &format!("/rest/v1/team_gateways?id=eq.{}", g.gateway_id),
            None,
        )
        .json()[0]
        .clone();
    assert_eq!(row["status"], "ready");
    assert_eq!(row["device_name"], "renamed");
    assert_eq!(row["capabilities"], caps);
    assert!(row["last_seen_at"].is_string());
    assert!(row["ready_at"].is_string());
    // Bad status, anon caller, forged token.
    let r = b.req(
        "POST",
        "/functions/v1/gateway-heartbeat",
        &g.access_token,
        Some(&json!({"status": "sleepy"})),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["success"], false);
    let r = b.req(
        "POST",
        "/functions/v1/gateway-heartbeat",
        &b.anon,
        Some(&json!({"status": "ready"})),
    );
    assert_eq!(r.status, 401);
    let r = b.req(
        "POST",
        "/functions/v1/gateway-heartbeat",
        &format!("{}x", g.access_token),
        Some(&json!({"status": "ready"})),
    );
    assert_eq!(r.status, 401);
    let r = b.req(
        "POST",
        "/functions/v1/no-such-function",
        &g.access_token,
        Some(&json!({})),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn finalize_subagent_run() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let (sub, run) = running_subagent_run(&b, &g, Some(json!({"keep": 1})), 1);
    let output = json!({"schema_version": 1, "content": "done", "content_type": "markdown"});
    let body = json!({"subagent_id": sub["id"], "run_id": run["id"], "final_status": "completed", "output": output,
        "failure_output": null, "final_error": null, "completed_at": "2026-01-05T10:05:00.000Z", "stderr": "",
        "metadata_patch": {"exit_code": 0}});
    let r = b.req(
        "POST",
        "/functions/v1/finalize-gateway-subagent-run",
        &g.access_token,
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"success": true, "status": "completed", "output": output, "error": null})
    );
    let run_row = b
        .service(
            "GET",
            &format!(
                "/rest/v1/subagent_runs?id=eq.{}",
                run["id"].as_str().unwrap()
            ),
            None,
        )
        .json()[0]
        .clone();
    assert_eq!(run_row["status"], "completed");
    assert_eq!(run_row["metadata"]["exit_code"], 0);
    let sub_row = b
        .service(
            "GET",
            &format!("/rest/v1/subagents?id=eq.{}", sub["id"].as_str().unwrap()),
            None,
        )
        .json()[0]
        .clone();
    assert_eq!(sub_row["status"], "completed");
    assert_eq!(sub_row["metadata"], json!({"keep": 1, "exit_code": 0}));
    // Extra keys are refused (strict body); a terminal run is reported, not changed.
    let mut bad = body.clone();
    bad["surprise"] = json!(1);
    assert_eq!(
        b.req(
            "POST",
            "/functions/v1/finalize-gateway-subagent-run",
            &g.access_token,
            Some(&bad)
        )
        .status,
        400
    );
    let mut again = body.clone();
    again["final_status"] = json!("failed");
    let r = b.req(
        "POST",
        "/functions/v1/finalize-gateway-subagent-run",
        &g.access_token,
        Some(&again),
    );
    assert_eq!(r.json()["status"], "completed");
    // Another team's gateway cannot finalize it.
    let other = b.pair(None);
    let r = b.req(
        "POST",
        "/functions/v1/finalize-gateway-subagent-run",
        &other.access_token,
        Some(&body),
    );
    assert_eq!(r.status, 404);
}

fn raw_exchange(b: &Backend, request: &[u8]) -> String {
    let addr = b.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn chunked_bodies_keep_alive_and_malformed_input() {
    let b = Backend::start(&[]);
    let team = b.pairing_code(None)["team_id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"team_id": team, "job_type": "chunked"}).to_string();
    let (p1, p2) = body.split_at(10);
    let host = b.url.trim_start_matches("http://");
    // Two pipelined requests on one connection: a chunked POST, then a GET with Connection: close.
    let req = format!(
        "POST /rest/v1/gateway_jobs HTTP/1.1\r\nHost: {host}\r\napikey: {k}\r\nAuthorization: Bearer {k}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{p1}\r\n{:x}\r\n{p2}\r\n0\r\n\r\nGET /rest/v1/gateway_jobs?select=job_type HTTP/1.1\r\nHost: {host}\r\napikey: {k}\r\nAuthorization: Bearer {k}\r\nConnection: close\r\n\r\n",
        p1.len(),
        p2.len(),
        k = b.service
    );
    let out = raw_exchange(&b, req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    assert!(out.contains("[{\"job_type\":\"chunked\"}]"), "{out}");
    // Garbage request head: 400, server keeps running.
    let out = raw_exchange(&b, b"\x00\x01 NOT HTTP\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    // Body larger than 8 MiB: 413 without reading it.
    let req = format!("POST /rest/v1/gateway_jobs HTTP/1.1\r\nHost: x\r\napikey: {}\r\nContent-Length: 9000000\r\n\r\n", b.service);
    let out = raw_exchange(&b, req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Bad chunk size.
    let req = format!("POST /rest/v1/gateway_jobs HTTP/1.1\r\nHost: x\r\napikey: {}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b.service);
    let out = raw_exchange(&b, req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A chunk size that would overflow is refused, not a crash.
    let req = format!("POST /rest/v1/gateway_jobs HTTP/1.1\r\nHost: x\r\napikey: {}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", b.service);
    let out = raw_exchange(&b, req.as_bytes());
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Another schema than public is a 406 PGRST106.
    let r = b.req_full(
        "GET",
        "/rest/v1/gateway_jobs",
        Some(&b.service),
        Some(&b.service),
        &[("Accept-Profile", "private")],
        None,
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (406, json!("PGRST106"))
    );
    // Still healthy.
    assert_eq!(
        b.req_full("GET", "/health", None, None, &[], None).status,
        200
    );
}

#[test]
fn upsert_merge_duplicates() {
    let b = Backend::start(&[]);
    let team = b.pairing_code(None)["team_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = b.service(
        "POST",
        "/rest/v1/team_resources",
        Some(&json!({"team_id": team, "resource_type": "remote_shell", "name": "a"})),
    );
    let id = r.json()[0]["id"].as_str().unwrap().to_string();
    let r = b.req_full(
        "POST",
        "/rest/v1/team_resources",
        Some(&b.service),
        Some(&b.service),
        &[(
            "Prefer",
            "return=representation,resolution=merge-duplicates",
        )],
        Some(
            &json!({"id": id, "team_id": team, "resource_type": "remote_shell", "name": "b"})
                .to_string(),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let rows = b
        .service("GET", "/rest/v1/team_resources?select=id,name", None)
        .json();
    assert_eq!(rows, json!([{"id": id, "name": "b"}]));
    // Without the resolution, a duplicate primary key is a 409 23505.
    let r = b.service(
        "POST",
        "/rest/v1/team_resources",
        Some(&json!({"id": id, "team_id": team, "resource_type": "x"})),
    );
    assert_eq!((r.status, r.json()["code"].clone()), (409, json!("23505")));
}
