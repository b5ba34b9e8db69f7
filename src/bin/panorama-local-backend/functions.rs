//! Edge functions: exchange-gateway-pairing-code, gateway-heartbeat,
//! finalize-gateway-subagent-run.

use crate::app::{obj, App, Change, GatewayClaims, Principal};
use crate::auth;
use crate::http::{Request, Response};
use crate::router;
use crate::store::{Row, User};
use crate::util;
use serde_json::{json, Map, Value};

fn fail(status: u16, error: &str) -> Response {
    Response::json(status, &json!({"success": false, "error": error}))
}

/// A pairing failure: `error` as the gateway shows it, `message` says what to do next.
fn pair_fail(status: u16, error: &str, code: &str) -> Response {
    Response::json(
        status,
        &json!({"success": false, "error": error, "code": code,
                "message": "Create a new pairing code (admin_create_pairing_code) and run pair again"}),
    )
}

pub fn handle(app: &App, req: &Request) -> Response {
    let name = req.path.trim_start_matches("/functions/v1/");
    if req.method != "POST" {
        return fail(405, "Edge functions here accept POST only");
    }
    // The functions gateway verifies the JWT before the function runs.
    let principal = match router::principal(app, req) {
        Ok(p) => p,
        Err(e) => {
            return Response::json(
                401,
                &json!({"code": 401, "message": "Invalid JWT", "success": false,
                "error": format!("Invalid JWT: {}", e.describe())}),
            )
        }
    };
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => return fail(400, "The request body must be a JSON object"),
        Err(e) => return fail(400, &format!("The request body is not valid JSON: {e}")),
    };
    match name {
        "exchange-gateway-pairing-code" => exchange(app, &body),
        "gateway-heartbeat" => match principal {
            Principal::Gateway(g) => heartbeat(app, &g, &body),
            _ => fail(401, "Unauthorized: a gateway session token is required"),
        },
        "finalize-gateway-subagent-run" => match principal {
            Principal::Anon => fail(401, "Unauthorized: a gateway session token is required"),
            p => finalize(app, &p, &body),
        },
        _ => Response::json(
            404,
            &json!({"code": "NOT_FOUND", "message": "Requested function was not found",
            "success": false, "error": format!("Function {name} not found")}),
        ),
    }
}

fn exchange(app: &App, body: &Value) -> Response {
    let code = match body.get("code").and_then(Value::as_str).map(str::trim) {
        Some(c) if !c.is_empty() => c.to_ascii_uppercase(),
        _ => return fail(400, "Pairing code is required"),
    };
    let device_name = body
        .get("device_name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let now_ms = util::now_ms();
    let now = util::iso_ms(now_ms);
    let mut db = app.db();
    let idx = match db
        .rows("gateway_pairing_codes")
        .iter()
        .position(|r| r.get("code").and_then(Value::as_str) == Some(code.as_str()))
    {
        Some(i) => i,
        None => return pair_fail(404, "Invalid pairing code", "invalid_code"),
    };
    let rec = db.rows("gateway_pairing_codes")[idx].clone();
    if !rec.get("used_at").map(Value::is_null).unwrap_or(true) {
        return pair_fail(409, "Pairing code has already been used", "code_used");
    }
    let expires = rec
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(crate::query::parse_iso_ms)
        .unwrap_or(0);
    if expires <= now_ms as i64 {
        return pair_fail(410, "Pairing code expired", "code_expired");
    }
    let team_id = rec
        .get("team_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let gateway_id = util::uuid_v4();
    let gw_row: Row = obj(json!({
        "id": gateway_id, "team_id": team_id, "status": "pending", "capabilities": null,
        "device_name": device_name, "full_control_enabled": false, "last_seen_at": null,
        "ready_at": null, "vm_id": null, "vm_provisioning_generation": null,
        "vm_restore_stage_id": null, "created_at": now, "updated_at": now,
    }));
    db.rows_mut("team_gateways").push(gw_row.clone());
    let old_code = rec.clone();
    let mut new_code = rec;
    new_code.insert("used_at".into(), json!(now));
    new_code.insert("used_gateway_id".into(), json!(gateway_id));
    db.rows_mut("gateway_pairing_codes")[idx] = new_code.clone();
    let user = User {
        id: util::uuid_v4(),
        gateway_id: gateway_id.clone(),
        team_id: team_id.clone(),
        created_at: now.clone(),
    };
    db.users.insert(user.id.clone(), user.clone());
    let session = auth::new_session(app, &mut db, &user, None);
    app.commit(vec![
        Change {
            kind: "INSERT",
            table: "team_gateways",
            record: Some(gw_row),
            old: None,
            commit_timestamp: now.clone(),
        },
        Change {
            kind: "UPDATE",
            table: "gateway_pairing_codes",
            record: Some(new_code),
            old: Some(old_code),
            commit_timestamp: now,
        },
    ]);
    drop(db);
    let exp = session["expires_at"].as_u64().unwrap_or(0);
    log::info!(target: "functions", "gateway paired gateway={gateway_id} team={team_id}");
    Response::json(
        200,
        &json!({
            "success": true,
            "gateway_id": gateway_id,
            "team_id": team_id,
            "access_token": session["access_token"],
            "refresh_token": session["refresh_token"],
            "expires_at": util::iso_ms(exp * 1000),
            "token_type": "bearer",
        }),
    )
}

const HEARTBEAT_STATUSES: &[&str] = &["pending", "ready", "offline", "error"];

fn heartbeat(app: &App, g: &GatewayClaims, body: &Value) -> Response {
    let status = match body.get("status").and_then(Value::as_str) {
        Some(s) if HEARTBEAT_STATUSES.contains(&s) => s.to_string(),
        Some(s) => {
            return fail(
                400,
                &format!("Invalid status {s:?}: expected pending, ready, offline or error"),
            )
        }
        None => return fail(400, "status is required"),
    };
    let capabilities = body.get("capabilities").cloned();
    if let Some(c) = &capabilities {
        if !c.is_object() && !c.is_null() {
            return fail(400, "capabilities must be a JSON object");
        }
    }
    let device_name = body
        .get("device_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let now = util::now_iso();
    let mut db = app.db();
    let idx = db.rows("team_gateways").iter().position(|r| {
        r.get("id").and_then(Value::as_str) == Some(g.gateway_id.as_str())
            && r.get("team_id").and_then(Value::as_str) == Some(g.team_id.as_str())
    });
    let idx = match idx {
        Some(i) => i,
        None => {
            return fail(
                404,
                "Gateway not found for this session; pair the gateway again",
            )
        }
    };
    let old = db.rows("team_gateways")[idx].clone();
    let mut new = old.clone();
    new.insert("status".into(), json!(status));
    new.insert("last_seen_at".into(), json!(now));
    if let Some(c) = capabilities {
        new.insert("capabilities".into(), c);
    }
    if let Some(d) = device_name {
        new.insert("device_name".into(), json!(d));
    }
    if status == "ready" && old.get("status").and_then(Value::as_str) != Some("ready") {
        new.insert("ready_at".into(), json!(now));
    }
    new.insert("updated_at".into(), json!(now));
    db.rows_mut("team_gateways")[idx] = new.clone();
    app.commit(vec![Change {
        kind: "UPDATE",
        table: "team_gateways",
        record: Some(new),
        old: Some(old),
        commit_timestamp: now,
    }]);
    drop(db);
    log::debug!(target: "functions", "heartbeat gateway={} status={status}", g.gateway_id);
    Response::json(
        200,
        &json!({"success": true, "egress_credential_renewal": null}),
    )
}

const FINALIZE_KEYS: &[&str] = &[
    "subagent_id",
    "run_id",
    "final_status",
    "output",
    "failure_output",
    "final_error",
    "completed_at",
    "stderr",
    "metadata_patch",
];

const ENVELOPE_KEYS: &[&str] = &[
    "schema_version",
    "content",
    "content_type",
    "original_content_type",
    "exact_content_state",
    "omission_reason",
    "summary",
    "sources",
    "errors",
    "overflow_artifact",
];

/// The strict output envelope of subagents-shell.md §5.3.
fn check_envelope(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("expected an object")?;
    if let Some(k) = o.keys().find(|k| !ENVELOPE_KEYS.contains(&k.as_str())) {
        return Err(format!("unexpected field {k:?}"));
    }
    if o.get("schema_version")
        .and_then(Value::as_u64)
        .is_none_or(|n| n == 0)
    {
        return Err("schema_version must be a positive integer".into());
    }
    if !o.contains_key("content") {
        return Err("content is required".into());
    }
    let types = ["markdown", "text", "json"];
    for k in ["content_type", "original_content_type"] {
        match o.get(k) {
            None if k == "original_content_type" => {}
            Some(Value::String(t)) if types.contains(&t.as_str()) => {}
            _ => return Err(format!("{k} must be markdown, text or json")),
        }
    }
    if let Some(st) = o.get("exact_content_state") {
        if !matches!(st.as_str(), Some("inline" | "overflow" | "preview_only")) {
            return Err("exact_content_state must be inline, overflow or preview_only".into());
        }
    }
    for k in ["sources", "errors"] {
        if let Some(a) = o.get(k) {
            if !a.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                return Err(format!("{k} must be an array of strings"));
            }
        }
    }
    if let Some(s) = o.get("summary") {
        if !s.is_string() {
            return Err("summary must be a string".into());
        }
    }
    Ok(())
}

fn merge_meta(base: Option<&Value>, patch: &Map<String, Value>) -> Value {
    let mut m = match base {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in patch {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

fn finalize(app: &App, p: &Principal, body: &Value) -> Response {
    let m = body.as_object().cloned().unwrap_or_default();
    for k in m.keys() {
        if !FINALIZE_KEYS.contains(&k.as_str()) {
            return fail(400, &format!("Unexpected field {k:?} in the request"));
        }
    }
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let (sid, rid) = match (s("subagent_id"), s("run_id")) {
        (Some(a), Some(b)) if util::is_uuid(&a) && util::is_uuid(&b) => {
            (a.to_ascii_lowercase(), b.to_ascii_lowercase())
        }
        _ => return fail(400, "subagent_id and run_id must be UUIDs"),
    };
    let final_status = match s("final_status") {
        Some(st) if ["completed", "failed", "cancelled"].contains(&st.as_str()) => st,
        _ => return fail(400, "final_status must be completed, failed or cancelled"),
    };
    let completed_at = match s("completed_at") {
        Some(c) if crate::query::parse_iso_ms(&c).is_some() => c,
        _ => return fail(400, "completed_at must be an ISO 8601 timestamp"),
    };
    for k in ["output", "failure_output"] {
        if let Some(v) = m.get(k) {
            if !v.is_null() {
                if let Err(e) = check_envelope(v) {
                    return fail(400, &format!("{k} is not a valid output envelope: {e}"));
                }
            }
        }
    }
    if final_status == "completed" && !m.get("output").is_some_and(Value::is_object) {
        return fail(400, "output is required when final_status is completed");
    }
    if !matches!(
        m.get("stderr"),
        None | Some(Value::Null) | Some(Value::String(_))
    ) {
        return fail(400, "stderr must be a string or null");
    }
    let final_error = match m.get("final_error") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(e)) => json!(e),
        Some(_) => return fail(400, "final_error must be a string or null"),
    };
    let patch = match m.get("metadata_patch") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return fail(400, "metadata_patch must be a JSON object"),
    };
    let output = if final_status == "completed" {
        m.get("output").cloned().unwrap_or(Value::Null)
    } else {
        m.get("failure_output").cloned().unwrap_or(Value::Null)
    };
    let now = util::now_iso();
    let mut db = app.db();
    let ri = db.rows("subagent_runs").iter().position(|r| {
        r.get("id").and_then(Value::as_str) == Some(rid.as_str())
            && r.get("subagent_id").and_then(Value::as_str) == Some(sid.as_str())
            && crate::rls::can_select(p, "subagent_runs", r)
    });
    let ri = match ri {
        Some(i) => i,
        None => return fail(404, "Subagent run not found for this gateway"),
    };
    let run = db.rows("subagent_runs")[ri].clone();
    if run.get("status").and_then(Value::as_str) != Some("running") {
        // Already terminal: report the stored state, change nothing.
        return Response::json(
            200,
            &json!({"success": true,
            "status": run.get("status").cloned().unwrap_or(Value::Null),
            "output": run.get("output").cloned().unwrap_or(Value::Null),
            "error": run.get("error").cloned().unwrap_or(Value::Null)}),
        );
    }
    let mut changes = Vec::new();
    let mut new_run = run.clone();
    new_run.insert("status".into(), json!(final_status));
    new_run.insert("output".into(), output.clone());
    new_run.insert("error".into(), final_error.clone());
    new_run.insert("completed_at".into(), json!(completed_at));
    new_run.insert("metadata".into(), merge_meta(run.get("metadata"), &patch));
    new_run.insert("updated_at".into(), json!(now));
    db.rows_mut("subagent_runs")[ri] = new_run.clone();
    changes.push(Change {
        kind: "UPDATE",
        table: "subagent_runs",
        record: Some(new_run),
        old: Some(run),
        commit_timestamp: now.clone(),
    });
    if let Some(si) = db
        .rows("subagents")
        .iter()
        .position(|r| r.get("id").and_then(Value::as_str) == Some(sid.as_str()))
    {
        let sub = db.rows("subagents")[si].clone();
        if sub.get("status").and_then(Value::as_str) == Some("running") {
            let mut new_sub = sub.clone();
            new_sub.insert("status".into(), json!(final_status));
            new_sub.insert("output".into(), output.clone());
            new_sub.insert("error".into(), final_error.clone());
            new_sub.insert("completed_at".into(), json!(completed_at));
            new_sub.insert("metadata".into(), merge_meta(sub.get("metadata"), &patch));
            new_sub.insert("updated_at".into(), json!(now));
            db.rows_mut("subagents")[si] = new_sub.clone();
            changes.push(Change {
                kind: "UPDATE",
                table: "subagents",
                record: Some(new_sub),
                old: Some(sub),
                commit_timestamp: now.clone(),
            });
        }
    }
    app.commit(changes);
    drop(db);
    Response::json(
        200,
        &json!({"success": true, "status": final_status, "output": output, "error": final_error}),
    )
}
