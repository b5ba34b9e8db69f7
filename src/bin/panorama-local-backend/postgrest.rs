//! PostgREST subset over the store: GET/HEAD/POST/PATCH/DELETE on tables and POST on RPCs.
//! Every write happens under the single store lock, so conditional PATCHes (claim, complete)
//! are atomic.

use crate::app::{App, Change, Principal};
use crate::http::{Request, Response};
use crate::query::Query;
use crate::rls;
use crate::router;
use crate::store::{self, table_def, DbError, Row, TableDef};
use crate::util;
use serde_json::{json, Value};

fn err(e: &DbError) -> Response {
    Response::json(e.status, &e.to_json())
}

fn jwt_error(e: &crate::jwt::JwtError) -> Response {
    use crate::jwt::JwtError;
    let (code, msg) = match e {
        JwtError::Expired(_) | JwtError::Revoked => ("PGRST303", "JWT expired".to_string()),
        JwtError::BadSignature => (
            "PGRST301",
            "JWT could not be verified: signature is invalid".to_string(),
        ),
        JwtError::Malformed(why) => ("PGRST301", format!("JWT could not be decoded: {why}")),
    };
    Response::json(
        401,
        &json!({"code": code, "message": msg, "details": null, "hint": null}),
    )
    .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
}

struct Prefer {
    representation: bool,
    count_exact: bool,
    merge_duplicates: bool,
    ignore_duplicates: bool,
}

fn prefer(req: &Request) -> Prefer {
    let h = req
        .headers
        .iter()
        .filter(|(k, _)| k == "prefer")
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let has = |t: &str| h.split(',').any(|x| x.trim() == t);
    Prefer {
        representation: has("return=representation"),
        count_exact: has("count=exact") || has("count=planned") || has("count=estimated"),
        merge_duplicates: has("resolution=merge-duplicates"),
        ignore_duplicates: has("resolution=ignore-duplicates"),
    }
}

fn wants_object(req: &Request) -> bool {
    req.header("accept")
        .map(|a| a.contains("application/vnd.pgrst.object+json"))
        .unwrap_or(false)
}

/// Renders a result set: an array, or one object for `Accept: application/vnd.pgrst.object+json`.
fn render(req: &Request, status: u16, rows: Vec<Value>, content_range: Option<String>) -> Response {
    let resp = if wants_object(req) {
        if rows.len() != 1 {
            return Response::json(
                406,
                &json!({"code": "PGRST116", "details": format!("The result contains {} rows", rows.len()),
                        "hint": null, "message": "Cannot coerce the result to a single JSON object"}),
            );
        }
        let mut r = Response::json(status, &rows[0]);
        r.headers = vec![(
            "Content-Type".into(),
            "application/vnd.pgrst.object+json; charset=utf-8".into(),
        )];
        r
    } else {
        Response::json(status, &Value::Array(rows))
    };
    match content_range {
        Some(cr) => resp.with_header("Content-Range", &cr),
        None => resp,
    }
}

pub fn handle(app: &App, req: &Request) -> Response {
    let principal = match router::principal(app, req) {
        Ok(p) => p,
        Err(e) => return jwt_error(&e),
    };
    for h in ["accept-profile", "content-profile"] {
        if let Some(schema) = req.header(h) {
            if schema.trim() != "public" {
                return err(&DbError::new(
                    406,
                    "PGRST106",
                    "The schema must be one of the following: public",
                )
                .details(format!("{h}: {schema}")));
            }
        }
    }
    let sub = req
        .path
        .trim_start_matches("/rest/v1")
        .trim_start_matches('/');
    if let Some(func) = sub.strip_prefix("rpc/") {
        return rpc(app, req, &principal, func);
    }
    if sub.is_empty() {
        return Response::json(
            200,
            &json!({"swagger": "2.0", "info": {"title": "panorama-local-backend"},
            "paths": store::tables().iter().map(|t| format!("/{}", t.name)).collect::<Vec<_>>()}),
        );
    }
    let def = match table_def(sub) {
        Some(d) => d,
        None => {
            return err(&DbError::new(404, "PGRST205", format!("Could not find the table 'public.{sub}' in the schema cache"))
                .hint("Tables here: team_gateways, gateway_jobs, gateway_events, subagents, subagent_runs, subagent_run_events, team_resources, gateway_pairing_codes"))
        }
    };
    let params = util::parse_query(&req.query);
    let q = match Query::parse(def, &params) {
        Ok(q) => q,
        Err(e) => return err(&e),
    };
    match req.method.as_str() {
        "GET" | "HEAD" => {
            let mut r = select(app, req, &principal, def, &q);
            if req.method == "HEAD" {
                r.body.clear();
            }
            r
        }
        "POST" => insert(app, req, &principal, def, &q),
        "PATCH" => update(app, req, &principal, def, &q),
        "DELETE" => delete(app, req, &principal, def, &q),
        m => err(&DbError::new(
            405,
            "PGRST117",
            format!("Unsupported HTTP method: {m}"),
        )),
    }
}

fn select(app: &App, req: &Request, p: &Principal, def: &TableDef, q: &Query) -> Response {
    // Filter, sort and page by reference; only the returned rows are copied.
    let db = app.db();
    let mut rows: Vec<&Row> = db
        .rows(def.name)
        .iter()
        .filter(|r| rls::can_select(p, def.name, r) && q.matches(def, r))
        .collect();
    q.sort(def, &mut rows);
    let total = rows.len();
    let page = q.page(rows);
    let n = page.len();
    let out: Vec<Value> = page.iter().map(|r| q.project(def, r)).collect();
    drop(db);
    let pref = prefer(req);
    let total_s = if pref.count_exact {
        total.to_string()
    } else {
        "*".into()
    };
    let range = if n == 0 {
        format!("*/{total_s}")
    } else {
        format!("{}-{}/{}", q.offset, q.offset + n - 1, total_s)
    };
    render(req, 200, out, Some(range))
}

/// Deepest JSON nesting a request body may have. Postgres takes jsonb far deeper than
/// serde_json's default limit of 128 (issue 8: a 200-level payload is a real row), so the
/// emulator does too, up to a bound that keeps its own recursion safe.
const MAX_JSON_DEPTH: usize = 1000;

/// The nesting depth of a JSON text, without recursion.
fn json_depth(b: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &c in b {
        if in_str {
            match c {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn parse_body(req: &Request) -> Result<Vec<Row>, DbError> {
    if json_depth(&req.body) > MAX_JSON_DEPTH {
        return Err(DbError::new(400, "54001", "stack depth limit exceeded")
            .details(format!("JSON nested deeper than {MAX_JSON_DEPTH} levels")));
    }
    let mut de = serde_json::Deserializer::from_slice(&req.body);
    de.disable_recursion_limit();
    let v: Value = serde::Deserialize::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            DbError::new(400, "PGRST102", "Empty or invalid json").details(e.to_string())
        })?;
    match v {
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items
            .into_iter()
            .map(|x| match x {
                Value::Object(m) => Ok(m),
                _ => Err(DbError::new(400, "PGRST102", "All object keys must match")
                    .details("every element must be a JSON object")),
            })
            .collect(),
        _ => Err(DbError::new(400, "PGRST102", "Empty or invalid json")
            .details("the body must be a JSON object or an array of objects")),
    }
}

fn rls_denied(p: &Principal, table: &str) -> DbError {
    let status = if matches!(p, Principal::Anon) {
        401
    } else {
        403
    };
    DbError::new(
        status,
        "42501",
        format!("new row violates row-level security policy for table \"{table}\""),
    )
}

fn insert(app: &App, req: &Request, p: &Principal, def: &TableDef, q: &Query) -> Response {
    let mut inputs = match parse_body(req) {
        Ok(v) => v,
        Err(e) => return err(&e),
    };
    if let Some(cols) = &q.columns {
        for c in cols {
            if !def.has(c) {
                return err(&store::unknown_column(def.name, c));
            }
        }
        for m in inputs.iter_mut() {
            m.retain(|k, _| cols.contains(k));
        }
    }
    let pref = prefer(req);
    let now = util::now_iso();
    let mut db = app.db();
    let mut staged: Vec<Row> = Vec::new();
    let mut upserts: Vec<(usize, Row)> = Vec::new();
    let conflict_cols: Vec<String> = q
        .on_conflict
        .clone()
        .unwrap_or_else(|| vec![def.pk.to_string()]);
    for input in &inputs {
        let row = match store::new_row(def, input, &now) {
            Ok(r) => r,
            Err(e) => return err(&e),
        };
        if !rls::check_new(p, def.name, &row, true) {
            return err(&rls_denied(p, def.name));
        }
        if pref.merge_duplicates || pref.ignore_duplicates {
            let existing = db.rows(def.name).iter().position(|r| {
                conflict_cols.iter().all(|c| {
                    r.get(c) == row.get(c) && !row.get(c).map(Value::is_null).unwrap_or(true)
                })
            });
            if let Some(i) = existing {
                if pref.merge_duplicates {
                    let old = &db.rows(def.name)[i];
                    if !rls::can_update(p, def.name, old) {
                        return err(&rls_denied(p, def.name));
                    }
                    let mut merged = old.clone();
                    for (k, v) in input {
                        merged.insert(k.clone(), row.get(k).cloned().unwrap_or(v.clone()));
                    }
                    if def.has("updated_at") && !input.contains_key("updated_at") {
                        merged.insert("updated_at".into(), json!(now));
                    }
                    upserts.push((i, merged));
                }
                continue;
            }
        }
        // Unique checks against existing rows and rows staged in this request.
        if let Err(e) = store::check_unique(def, db.rows(def.name), &row, None) {
            return err(&e);
        }
        if let Err(e) = store::check_unique(def, &staged, &row, None) {
            return err(&e);
        }
        staged.push(row);
    }
    let mut changes = Vec::new();
    let mut out_rows = Vec::new();
    for (i, merged) in upserts {
        let old = std::mem::replace(&mut db.rows_mut(def.name)[i], merged.clone());
        changes.push(Change {
            kind: "UPDATE",
            table: def.name,
            record: Some(merged.clone()),
            old: Some(old),
            commit_timestamp: now.clone(),
        });
        out_rows.push(merged);
    }
    for row in staged {
        db.rows_mut(def.name).push(row.clone());
        changes.push(Change {
            kind: "INSERT",
            table: def.name,
            record: Some(row.clone()),
            old: None,
            commit_timestamp: now.clone(),
        });
        out_rows.push(row);
    }
    app.commit(changes);
    drop(db);
    if pref.representation {
        let vis: Vec<Value> = out_rows
            .iter()
            .filter(|r| rls::can_select(p, def.name, r))
            .map(|r| q.project(def, r))
            .collect();
        render(req, 201, vis, None)
    } else {
        Response::empty(201)
    }
}

fn update(app: &App, req: &Request, p: &Principal, def: &TableDef, q: &Query) -> Response {
    let patch = match parse_body(req) {
        Ok(mut v) if v.len() == 1 => v.remove(0),
        Ok(_) => {
            return err(&DbError::new(
                400,
                "PGRST102",
                "PATCH needs one JSON object",
            ))
        }
        Err(e) => return err(&e),
    };
    let mut coerced = Row::new();
    for (k, v) in &patch {
        let c = match def.column(k) {
            Some(c) => c,
            None => return err(&store::unknown_column(def.name, k)),
        };
        match store::coerce(def.name, c, v.clone()) {
            Ok(v) => coerced.insert(k.clone(), v),
            Err(e) => return err(&e),
        };
    }
    let now = util::now_iso();
    let mut db = app.db();
    // Phase 1: compute every new row and validate; nothing changes if one fails.
    let mut targets: Vec<(usize, Row)> = Vec::new();
    {
        let rows = db.rows(def.name);
        let mut matching: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| rls::can_update(p, def.name, r) && q.matches(def, r))
            .map(|(i, _)| i)
            .collect();
        if q.limit.is_some() {
            let mut tmp: Vec<(usize, Row)> =
                matching.iter().map(|i| (*i, rows[*i].clone())).collect();
            let mut only_rows: Vec<Row> = tmp.iter().map(|(_, r)| r.clone()).collect();
            q.sort(def, &mut only_rows);
            tmp.sort_by_key(|(_, r)| only_rows.iter().position(|x| x == r).unwrap_or(usize::MAX));
            matching = q.page(tmp.into_iter().map(|(i, _)| i).collect());
        }
        for i in matching {
            let mut new = rows[i].clone();
            for (k, v) in &coerced {
                new.insert(k.clone(), v.clone());
            }
            if def.has("updated_at") && !coerced.contains_key("updated_at") {
                new.insert("updated_at".into(), json!(now));
            }
            if let Err(e) = store::check_row(def, &new) {
                return err(&e);
            }
            if !rls::check_new(p, def.name, &new, false) {
                return err(&rls_denied(p, def.name));
            }
            if let Err(e) = store::check_unique(def, rows, &new, Some(i)) {
                return err(&e);
            }
            targets.push((i, new));
        }
    }
    // Phase 2: apply.
    let mut changes = Vec::new();
    let mut out_rows = Vec::new();
    for (i, new) in targets {
        let old = std::mem::replace(&mut db.rows_mut(def.name)[i], new.clone());
        changes.push(Change {
            kind: "UPDATE",
            table: def.name,
            record: Some(new.clone()),
            old: Some(old),
            commit_timestamp: now.clone(),
        });
        out_rows.push(new);
    }
    app.commit(changes);
    drop(db);
    if prefer(req).representation {
        let vis: Vec<Value> = out_rows
            .iter()
            .filter(|r| rls::can_select(p, def.name, r))
            .map(|r| q.project(def, r))
            .collect();
        render(req, 200, vis, None)
    } else {
        Response::empty(204)
    }
}

fn delete(app: &App, req: &Request, p: &Principal, def: &TableDef, q: &Query) -> Response {
    let now = util::now_iso();
    let mut db = app.db();
    let rows = db.rows_mut(def.name);
    let mut removed = Vec::new();
    let mut kept = Vec::with_capacity(rows.len());
    for r in rows.drain(..) {
        if rls::can_delete(p, def.name, &r) && q.matches(def, &r) {
            removed.push(r);
        } else {
            kept.push(r);
        }
    }
    *rows = kept;
    let changes = removed
        .iter()
        .map(|r| Change {
            kind: "DELETE",
            table: def.name,
            record: None,
            old: Some(r.clone()),
            commit_timestamp: now.clone(),
        })
        .collect();
    app.commit(changes);
    drop(db);
    if prefer(req).representation {
        render(
            req,
            200,
            removed.iter().map(|r| q.project(def, r)).collect(),
            None,
        )
    } else {
        Response::empty(204)
    }
}

fn rpc(app: &App, req: &Request, p: &Principal, func: &str) -> Response {
    if req.method != "POST" && req.method != "GET" {
        return err(&DbError::new(
            405,
            "PGRST117",
            format!("Unsupported HTTP method: {}", req.method),
        ));
    }
    let args: Value = if req.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return err(&DbError::new(
                    400,
                    "PGRST102",
                    "RPC arguments must be a JSON object",
                ))
            }
            Err(e) => {
                return err(
                    &DbError::new(400, "PGRST102", "Empty or invalid json").details(e.to_string())
                )
            }
        }
    };
    match func {
        "admin_create_pairing_code" => {
            if !p.is_service() {
                let status = if matches!(p, Principal::Anon) { 401 } else { 403 };
                return err(&DbError::new(status, "42501", "permission denied for function admin_create_pairing_code")
                    .hint("call it with the service_role key (apikey and Authorization: Bearer)"));
            }
            let team_id = match args.get("team_id") {
                None | Some(Value::Null) => util::uuid_v4(),
                Some(Value::String(s)) if util::is_uuid(s) => s.to_ascii_lowercase(),
                Some(other) => {
                    return err(&DbError::new(400, "22P02", format!("invalid input syntax for type uuid: {other}"))
                        .hint("team_id must be a UUID, or leave it out to create a new team"))
                }
            };
            let ttl = app.cfg.pairing_ttl_secs;
            let now_ms = util::now_ms();
            let now = util::iso_ms(now_ms);
            let mut db = app.db();
            let code = loop {
                let c = util::pairing_code();
                if !db.rows("gateway_pairing_codes").iter().any(|r| r.get("code") == Some(&json!(c))) {
                    break c;
                }
            };
            let row = crate::app::obj(json!({
                "code": code, "team_id": team_id,
                "expires_at": util::iso_ms(now_ms + ttl * 1000),
                "created_by": null, "used_at": null, "used_gateway_id": null, "created_at": now,
            }));
            db.rows_mut("gateway_pairing_codes").push(row.clone());
            app.commit(vec![Change { kind: "INSERT", table: "gateway_pairing_codes", record: Some(row), old: None, commit_timestamp: now }]);
            log::info!(target: "rest", "pairing code created team={team_id} ttl_secs={ttl}");
            Response::json(200, &json!({"code": code, "team_id": team_id}))
        }
        "resolve_secret_placeholders_for_job" => {
            if matches!(p, Principal::Anon) {
                return err(&DbError::new(401, "42501", "permission denied for function resolve_secret_placeholders_for_job"));
            }
            // No team secrets exist in the emulator.
            Response::json(200, &json!([]))
        }
        "gateway_can_run_vm_restore_readiness_probe" => {
            if matches!(p, Principal::Anon) {
                return err(&DbError::new(401, "42501", "permission denied for function gateway_can_run_vm_restore_readiness_probe"));
            }
            // The emulator has no managed VMs.
            Response::json(200, &json!(false))
        }
        other => err(&DbError::new(404, "PGRST202", format!("Could not find the function public.{other} without parameters in the schema cache"))
            .hint("This emulator serves admin_create_pairing_code, resolve_secret_placeholders_for_job and gateway_can_run_vm_restore_readiness_probe")),
    }
}
