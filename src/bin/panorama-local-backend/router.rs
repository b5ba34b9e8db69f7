//! Request routing: API-key gate, fault injection, then the service handlers.

use crate::app::{App, Principal};
use crate::auth;
use crate::faults::PathClass;
use crate::http::{Request, Response};
use crate::jwt::JwtError;
use crate::util;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

pub fn apikey(req: &Request) -> Option<String> {
    if let Some(k) = req.header("apikey") {
        return Some(k.trim().to_string());
    }
    util::parse_query(&req.query)
        .into_iter()
        .find(|(k, _)| k == "apikey")
        .map(|(_, v)| v)
}

pub fn route(app: &App, req: &Request) -> Response {
    let class = PathClass::of(&req.path);
    app.stats.count_request(class);
    match class {
        PathClass::Admin => return admin(app, req),
        PathClass::Other => {
            return match req.path.as_str() {
                "/" | "/health" => Response::json(
                    200,
                    &json!({"status": "ok", "service": "panorama-local-backend"}),
                ),
                _ => Response::json(
                    404,
                    &json!({"message": "no Route matched with those values"}),
                ),
            }
        }
        _ => {}
    }
    match apikey(req) {
        None => {
            return Response::json(
                401,
                &json!({"message": "No API key found in request", "hint": "No `apikey` request header or url param was found."}),
            )
        }
        Some(k) if !app.apikey_ok(&k) => {
            return Response::json(
                401,
                &json!({"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."}),
            )
        }
        Some(_) => {}
    }
    let verdict = app.faults.take(class, &req.method, &req.path);
    if verdict.delay_ms > 0 {
        app.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "faults", "delaying request path={} ms={}", req.path, verdict.delay_ms);
        std::thread::sleep(std::time::Duration::from_millis(verdict.delay_ms));
    }
    if let Some(status) = verdict.fail_status {
        app.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "faults", "failing request path={} status={status}", req.path);
        return injected_failure(class, status);
    }
    match class {
        PathClass::Auth => auth::handle(app, req),
        PathClass::Rest => crate::postgrest::handle(app, req),
        PathClass::Functions => crate::functions::handle(app, req),
        _ => Response::json(
            400,
            &json!({"message": "the realtime endpoint needs a websocket upgrade (GET /realtime/v1/websocket with Upgrade: websocket)"}),
        ),
    }
}

fn injected_failure(class: PathClass, status: u16) -> Response {
    match class {
        PathClass::Functions => Response::json(
            status,
            &json!({"success": false, "error": "Injected fault (panorama-local-backend)"}),
        ),
        PathClass::Auth => auth::auth_error(
            status,
            "unexpected_failure",
            "Injected fault (panorama-local-backend)",
        ),
        _ => Response::json(
            status,
            &json!({"code": "PGRST000", "message": "Injected fault (panorama-local-backend)", "details": null, "hint": null}),
        ),
    }
}

/// The caller of a REST or Functions request: the bearer token, else the apikey.
pub fn principal(app: &App, req: &Request) -> Result<Principal, JwtError> {
    let tok = auth::bearer(req)
        .map(str::to_string)
        .or_else(|| apikey(req));
    match tok {
        Some(t) => app.principal(&t),
        None => Ok(Principal::Anon),
    }
}

fn admin(app: &App, req: &Request) -> Response {
    if !matches!(principal(app, req), Ok(Principal::Service)) {
        return Response::json(
            401,
            &json!({"error": "the admin API needs the service_role key (apikey header or Authorization: Bearer)"}),
        );
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/admin/v1/stats") => {
            Response::json(200, &app.stats.to_json(app.hub.channel_count()))
        }
        ("GET", "/admin/v1/faults") => Response::json(200, &app.faults.pending_json()),
        ("POST", "/admin/v1/faults") => {
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => {
                    return Response::json(
                        400,
                        &json!({"error": format!("the body is not valid JSON: {e}")}),
                    )
                }
            };
            match app.faults.apply_body(&body) {
                Ok(r) => {
                    if r.expire_access_tokens {
                        app.expire_access_tokens();
                        log::info!(target: "faults", "every access token issued so far is now expired");
                    }
                    if r.revoke_refresh_tokens {
                        auth::revoke_all(app);
                        log::info!(target: "faults", "every refresh token is now revoked");
                    }
                    if let Some(ms) = r.mute_realtime_ms {
                        app.hub.mute_for(ms);
                        log::info!(target: "faults", "realtime delivery muted ms={ms}");
                    }
                    if r.clear {
                        app.hub.mute_for(0);
                    }
                    let dropped = if r.drop_realtime {
                        app.hub.drop_all()
                    } else {
                        0
                    };
                    if r.drop_realtime {
                        log::info!(target: "faults", "dropped every realtime connection count={dropped}");
                    }
                    Response::json(
                        200,
                        &json!({"ok": true, "dropped_connections": dropped, "pending": app.faults.pending_json()}),
                    )
                }
                Err(e) => Response::json(400, &json!({"error": e})),
            }
        }
        _ => Response::json(
            404,
            &json!({"error": "unknown admin route; use GET /admin/v1/stats, GET|POST /admin/v1/faults"}),
        ),
    }
}
