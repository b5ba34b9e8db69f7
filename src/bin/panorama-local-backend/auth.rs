//! GoTrue subset: `GET /auth/v1/user`, `POST /auth/v1/token?grant_type=refresh_token`,
//! `POST /auth/v1/logout`. Refresh tokens are opaque and rotate on use; a spent token is still
//! honoured for the reuse interval (returning the current session again), then refused and the
//! whole session revoked, as GoTrue's reuse detection does.

use crate::app::{App, Principal};
use crate::http::{Request, Response};
use crate::jwt::JwtError;
use crate::store::{Db, RefreshToken, User};
use crate::util;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

pub fn auth_error(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        &json!({"code": code, "error_code": code, "message": message, "msg": message}),
    )
    .with_header("X-Supabase-Api-Version", "2024-01-01")
}

pub fn bearer(req: &Request) -> Option<&str> {
    let h = req.header("authorization")?;
    let (scheme, tok) = h.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(tok.trim())
    } else {
        None
    }
}

/// A new session for `user`: access token + refresh token, as GoTrue returns it.
pub fn new_session(app: &App, db: &mut Db, user: &User, session_id: Option<&str>) -> Value {
    let session_id = session_id.map(str::to_string).unwrap_or_else(util::uuid_v4);
    let refresh = util::random_token(24);
    db.refresh.insert(
        refresh.clone(),
        RefreshToken {
            user_id: user.id.clone(),
            session_id: session_id.clone(),
            created_ms: util::now_ms(),
            revoked: false,
            used_ms: None,
            child: None,
        },
    );
    app.mark_dirty();
    session_json(app, user, &session_id, &refresh)
}

fn session_json(app: &App, user: &User, session_id: &str, refresh: &str) -> Value {
    let (access, exp) =
        app.issue_access_token(&user.id, &user.gateway_id, &user.team_id, session_id);
    json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": app.cfg.access_ttl_secs,
        "expires_at": exp,
        "refresh_token": refresh,
        "user": user.to_json(),
    })
}

pub fn handle(app: &App, req: &Request) -> Response {
    let sub = req.path.trim_start_matches("/auth/v1/");
    match (req.method.as_str(), sub) {
        ("GET", "user") => get_user(app, req),
        ("POST", "token") => token(app, req),
        ("POST", "logout") => logout(app, req),
        ("GET", "health") => Response::json(200, &json!({"name": "GoTrue", "version": "local"})),
        _ => auth_error(
            404,
            "not_found",
            "Not found: this emulator serves /auth/v1/user, /auth/v1/token and /auth/v1/logout",
        ),
    }
}

fn jwt_failure(e: &JwtError) -> Response {
    auth_error(401, "bad_jwt", &e.describe())
}

fn get_user(app: &App, req: &Request) -> Response {
    let tok = match bearer(req) {
        Some(t) => t,
        None => {
            return auth_error(
                401,
                "no_authorization",
                "This endpoint requires a Bearer token",
            )
        }
    };
    match app.principal(tok) {
        Ok(Principal::Gateway(c)) => {
            let db = app.db();
            match db.users.get(&c.user_id) {
                Some(u) => Response::json(200, &u.to_json())
                    .with_header("X-Supabase-Api-Version", "2024-01-01"),
                None => auth_error(
                    403,
                    "user_not_found",
                    "User from sub claim in JWT does not exist",
                ),
            }
        }
        Ok(_) => auth_error(403, "bad_jwt", "invalid claim: missing sub claim"),
        Err(e) => jwt_failure(&e),
    }
}

fn token(app: &App, req: &Request) -> Response {
    let q = util::parse_query(&req.query);
    let grant = q
        .iter()
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.as_str());
    if grant != Some("refresh_token") {
        return auth_error(
            400,
            "validation_failed",
            "unsupported_grant_type: this emulator supports grant_type=refresh_token only",
        );
    }
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(_) => return auth_error(400, "bad_json", "Could not parse request body as JSON"),
    };
    let rt = match body.get("refresh_token").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => return auth_error(400, "validation_failed", "refresh_token is required"),
    };
    let mut db = app.db();
    let rec = match db.refresh.get(&rt) {
        Some(r) => r.clone(),
        None => {
            return auth_error(
                400,
                "refresh_token_not_found",
                "Invalid Refresh Token: Refresh Token Not Found",
            )
        }
    };
    if rec.revoked {
        return auth_error(
            400,
            "refresh_token_not_found",
            "Invalid Refresh Token: Refresh Token Not Found",
        );
    }
    let user = match db.users.get(&rec.user_id) {
        Some(u) => u.clone(),
        None => {
            return auth_error(
                400,
                "user_not_found",
                "Invalid Refresh Token: User Not Found",
            )
        }
    };
    let now = util::now_ms();
    app.stats.refreshes.fetch_add(1, Ordering::Relaxed);
    match (rec.used_ms, rec.child.clone()) {
        (None, _) => {
            // Normal rotation.
            let new_rt = util::random_token(24);
            db.refresh.insert(
                new_rt.clone(),
                RefreshToken {
                    user_id: rec.user_id.clone(),
                    session_id: rec.session_id.clone(),
                    created_ms: now,
                    revoked: false,
                    used_ms: None,
                    child: None,
                },
            );
            if let Some(r) = db.refresh.get_mut(&rt) {
                r.used_ms = Some(now);
                r.child = Some(new_rt.clone());
            }
            app.mark_dirty();
            log::info!(target: "auth", "refresh token rotated user={}", user.id);
            Response::json(200, &session_json(app, &user, &rec.session_id, &new_rt))
        }
        (Some(used), child) if now.saturating_sub(used) <= app.cfg.refresh_reuse_secs * 1000 => {
            // Within the reuse interval: hand out the session's current token again.
            let mut current = child.unwrap_or_else(|| rt.clone());
            // Follow the chain to the newest token of this session.
            for _ in 0..1000 {
                match db.refresh.get(&current).and_then(|r| r.child.clone()) {
                    Some(next) => current = next,
                    None => break,
                }
            }
            log::info!(target: "auth", "spent refresh token reused within the reuse interval user={}", user.id);
            Response::json(200, &session_json(app, &user, &rec.session_id, &current))
        }
        _ => {
            // Reuse after the interval: revoke the whole session (GoTrue reuse detection).
            let sid = rec.session_id.clone();
            for r in db.refresh.values_mut() {
                if r.session_id == sid {
                    r.revoked = true;
                }
            }
            app.mark_dirty();
            log::warn!(target: "auth", "spent refresh token reused after the reuse interval; session revoked user={}", user.id);
            auth_error(
                400,
                "refresh_token_already_used",
                "Invalid Refresh Token: Already Used",
            )
        }
    }
}

fn logout(app: &App, req: &Request) -> Response {
    let tok = match bearer(req) {
        Some(t) => t,
        None => {
            return auth_error(
                401,
                "no_authorization",
                "This endpoint requires a Bearer token",
            )
        }
    };
    match app.principal(tok) {
        Ok(Principal::Gateway(c)) => {
            let mut db = app.db();
            for r in db.refresh.values_mut() {
                if r.session_id == c.session_id {
                    r.revoked = true;
                }
            }
            app.mark_dirty();
            Response::empty(204)
        }
        Ok(_) => auth_error(403, "bad_jwt", "invalid claim: missing sub claim"),
        Err(e) => jwt_failure(&e),
    }
}

/// Fault `revoke_refresh_tokens`: every refresh token now fails with refresh_token_not_found.
pub fn revoke_all(app: &App) {
    let mut db = app.db();
    for r in db.refresh.values_mut() {
        r.revoked = true;
    }
    app.mark_dirty();
}
