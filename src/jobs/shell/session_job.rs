//! `shell_session` jobs (2.29.14 seed contract, §7.7): `open`, `write`, `read`, `status`,
//! `close` on a session of [`super::ShellSessions`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::access::{check_resource, machine_control, Access};
use super::session::{NewSession, Sess};
use super::{failed, ok, pick_shell, resource_id, tmp_base, wants_secrets};
use crate::exec;
use crate::jobs::{FinalStatus, JobContext, Outcome};

/// Most bytes one `read` returns.
pub const SESSION_READ_MAX: usize = 1_000_000;
/// Default bytes one `read` returns.
pub const SESSION_READ_DEFAULT: usize = 65_536;
/// Most bytes one `write` accepts.
pub const SESSION_INPUT_MAX: usize = 1_000_000;
/// Longest long-poll of `read`/`write` (`wait_ms`).
pub const SESSION_WAIT_MAX_MS: u64 = 30_000;
/// Sessions per gateway and per resource.
pub const MAX_SESSIONS: usize = 10;
pub const MAX_SESSIONS_PER_RESOURCE: usize = 4;

fn u64_field(payload: &Value, name: &str) -> Result<Option<u64>, String> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None => Err(format!(
                "Invalid {name} in payload: expected a non-negative integer"
            )),
        },
        Some(_) => Err(format!(
            "Invalid {name} in payload: expected a non-negative integer"
        )),
    }
}

/// The parts of a request on an existing session.
struct Request<'a> {
    payload: &'a Value,
    ctx: &'a JobContext,
    act: Value,
    rid_v: Value,
    cursor: Option<u64>,
    max_bytes: usize,
    wait: Duration,
}

/// The action named by the payload and the access it needs; Err = the failed outcome.
fn action(payload: &Value) -> Result<(String, Access), Outcome> {
    let action = payload
        .get("action")
        .and_then(Value::as_str)
        .map(|a| a.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let access = match action.as_str() {
        "open" | "write" | "close" => Access::Write,
        "read" | "status" => Access::Read,
        "" => {
            return Err(failed(
                "Missing action in payload (one of: open, write, read, status, close)",
                &[],
            ))
        }
        other => {
            return Err(failed(
                &format!("Unknown shell_session action {other:?}; use one of: open, write, read, status, close"),
                &[],
            ))
        }
    };
    Ok((action, access))
}

pub fn handle_session(payload: &Value, ctx: &JobContext) -> Outcome {
    if ctx.cancel.is_cancelled() {
        return failed(
            "Gateway shell session job was cancelled before execution",
            &[("cancelled", Value::Bool(true))],
        );
    }
    if !payload.is_object() {
        return failed(
            "Invalid shell_session payload: expected a JSON object with action and resource_id",
            &[],
        );
    }
    let (action, access) = match action(payload) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let act = Value::String(action.clone());
    // Closing only takes control away, so it needs no machine control and no resource opt-in:
    // a session can be closed after its resource or a toggle was switched off. It still only
    // reaches a session of the same team and resource.
    let closing = action == "close";
    if let Err((m, c)) = machine_control(ctx) {
        ctx.shell_sessions
            .enforce_control(ctx.resources.is_some(), c);
        if !closing {
            log::info!(target: "shell", "shell_session denied job_id={} action={action} reason={m:?}", ctx.job_id);
            return failed(m, &[("action", act)]);
        }
    }
    let rid = match resource_id(payload) {
        Ok(r) => r,
        Err(o) => return o,
    };
    let rid_v = Value::String(rid.clone());
    let team = ctx
        .resources
        .as_ref()
        .map(|s| s.team_id().to_string())
        .unwrap_or_default();
    if !closing {
        if let Err(m) = check_resource(ctx, &rid, access) {
            log::info!(target: "shell", "shell_session denied job_id={} action={action} resource_id={rid} reason={m:?}", ctx.job_id);
            // The resource no longer allows a shell here (not a passing read error): its
            // sessions go too.
            if !m.starts_with("Failed to load") && ctx.resources.is_some() {
                ctx.shell_sessions
                    .close_where(|s| s.team_id == team && s.resource_id == rid, &m);
            }
            return failed(&m, &[("action", act), ("resource_id", rid_v)]);
        }
    }
    let fields = (|| -> Result<_, String> {
        Ok((
            u64_field(payload, "cursor")?,
            u64_field(payload, "max_bytes")?,
            u64_field(payload, "wait_ms")?,
        ))
    })();
    let (cursor, max_bytes, wait_ms) = match fields {
        Ok(f) => f,
        Err(m) => return failed(&m, &[("action", act), ("resource_id", rid_v)]),
    };
    let max_bytes =
        (max_bytes.unwrap_or(SESSION_READ_DEFAULT as u64) as usize).clamp(1, SESSION_READ_MAX);
    let wait = Duration::from_millis(wait_ms.unwrap_or(0).min(SESSION_WAIT_MAX_MS));
    ctx.shell_sessions.sweep();
    if action == "open" {
        if wants_secrets(payload) {
            return failed(
                "Team secrets can only be injected inside a managed VM",
                &[("action", act), ("resource_id", rid_v)],
            );
        }
        return open(ctx, &team, &rid);
    }
    let sid = payload
        .get("session_id")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or("");
    if sid.is_empty() {
        return failed(
            "Missing session_id in payload",
            &[("action", act), ("resource_id", rid_v)],
        );
    }
    let sess = match ctx.shell_sessions.get(sid) {
        Some(s) if s.team_id == team && s.resource_id == rid => s,
        _ => {
            return failed(
                "Shell session not found",
                &[
                    ("action", act),
                    ("resource_id", rid_v),
                    ("session_id", sid.into()),
                ],
            )
        }
    };
    let req = Request {
        payload,
        ctx,
        act,
        rid_v,
        cursor,
        max_bytes,
        wait,
    };
    let mut r = Map::new();
    r.insert("action".into(), req.act.clone());
    r.insert("resource_id".into(), req.rid_v.clone());
    r.insert("session_id".into(), sess.id.clone().into());
    match action.as_str() {
        "read" => read(&sess, &req, r),
        "write" => write(&sess, &req, r),
        "status" => status(&sess, r),
        _ => close(&sess, &req, r),
    }
}

fn read(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    sess.lock().touch();
    sess.read_into(&mut r, req.cursor, req.max_bytes, req.wait, req.ctx);
    r.insert("message".into(), "Shell session output read".into());
    r.insert("success".into(), Value::Bool(true));
    ok(r)
}

fn write(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    let here = |extra: Option<(&'static str, Value)>| {
        let mut v = vec![
            ("action", req.act.clone()),
            ("resource_id", req.rid_v.clone()),
            ("session_id", Value::from(sess.id.clone())),
        ];
        v.extend(extra);
        v
    };
    let input = match req.payload.get("input") {
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        _ => {
            return failed(
                "Missing input in payload (a string; include the newline to run a line)",
                &here(None),
            )
        }
    };
    if input.len() > SESSION_INPUT_MAX {
        return failed(
            &format!(
                "Input too large: {} bytes; send at most {SESSION_INPUT_MAX} bytes per write",
                input.len()
            ),
            &here(None),
        );
    }
    {
        let mut st = sess.lock();
        if st.exited || st.stop.is_some() {
            return failed(
                "Shell session has exited; open a new session",
                &here(Some(("exit_code", json!(st.exit_code)))),
            );
        }
        st.touch();
    }
    let before = sess.lock().end();
    let written = sess.write_input(&input);
    r.insert(
        "bytes_written".into(),
        json!(written.as_ref().map(|n| *n).unwrap_or_else(|(n, _)| *n)),
    );
    sess.read_into(
        &mut r,
        Some(req.cursor.unwrap_or(before)),
        req.max_bytes,
        req.wait,
        req.ctx,
    );
    match written {
        Ok(_) => {
            r.insert("message".into(), "Shell session input written".into());
            r.insert("success".into(), Value::Bool(true));
            r.insert("error".into(), Value::Null);
        }
        Err((_, e)) => {
            r.insert(
                "message".into(),
                "Shell session input was not fully written".into(),
            );
            r.insert("success".into(), Value::Bool(false));
            r.insert("error".into(), e.into());
        }
    }
    ok(r)
}

fn status(sess: &Sess, mut r: Map<String, Value>) -> Outcome {
    let st = sess.lock();
    let idle_ms = st.last_activity.elapsed().as_millis() as u64;
    r.insert("message".into(), "Shell session status".into());
    r.insert("alive".into(), Value::Bool(!st.exited));
    let state = match (st.exited, st.stop) {
        (true, _) => "exited",
        (false, Some(_)) => "closing",
        (false, None) => "open",
    };
    r.insert("status".into(), state.into());
    r.insert("exit_code".into(), json!(st.exit_code));
    r.insert("shell".into(), sess.shell.clone().into());
    r.insert("cwd".into(), "/".into());
    r.insert("created_at".into(), sess.created_at.clone().into());
    r.insert(
        "last_activity_at".into(),
        st.last_activity_at.clone().into(),
    );
    r.insert("idle_ms".into(), json!(idle_ms));
    r.insert("buffer_start".into(), json!(st.start));
    r.insert("buffer_end".into(), json!(st.end()));
    r.insert("success".into(), Value::Bool(true));
    drop(st);
    ok(r)
}

fn close(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    sess.request_stop("close");
    let deadline = Instant::now() + exec::KILL_GRACE + Duration::from_secs(3);
    let st = sess.wait_exited(deadline);
    let end = st.end();
    let from = end.saturating_sub(req.max_bytes as u64).max(st.start);
    let tail: Vec<u8> = st
        .buf
        .range((from - st.start) as usize..)
        .copied()
        .collect();
    r.insert("message".into(), "Shell session closed".into());
    r.insert("status".into(), "closed".into());
    r.insert(
        "output".into(),
        String::from_utf8_lossy(&tail).into_owned().into(),
    );
    r.insert("cursor".into(), json!(from));
    r.insert("next_cursor".into(), json!(end));
    r.insert("exited".into(), Value::Bool(st.exited));
    r.insert("exit_code".into(), json!(st.exit_code));
    r.insert("signal".into(), json!(st.signal));
    r.insert("success".into(), Value::Bool(st.exited));
    drop(st);
    req.ctx.shell_sessions.remove(&sess.id);
    log::info!(target: "shell", "shell session closed session_id={} job_id={}", sess.id, req.ctx.job_id);
    ok(r)
}

fn open(ctx: &JobContext, team: &str, rid: &str) -> Outcome {
    let rid_v = Value::String(rid.to_string());
    let (all, here) = ctx.shell_sessions.counts(team, rid);
    if all >= MAX_SESSIONS {
        return failed(
            &format!("Too many shell sessions on this gateway ({MAX_SESSIONS}); close one first"),
            &[("action", "open".into()), ("resource_id", rid_v)],
        );
    }
    if here >= MAX_SESSIONS_PER_RESOURCE {
        return failed(
            &format!("Too many shell sessions on this resource ({MAX_SESSIONS_PER_RESOURCE}); close one first"),
            &[("action", "open".into()), ("resource_id", rid_v)],
        );
    }
    let shell = pick_shell();
    let tmp = match exec::PrivateDir::create_in(&tmp_base(ctx), "pgw-shell-") {
        Ok(t) => Some(t),
        Err(e) => {
            return failed(
                &format!("Could not create a private temporary directory for the shell session: {e}; check that the gateway config directory is writable"),
                &[("action", "open".into()), ("resource_id", rid_v)],
            )
        }
    };
    let mut env = exec::child_env(&[]);
    if let Some(t) = &tmp {
        for (k, v) in t.tmp_vars() {
            exec::set_var(&mut env, k, v);
        }
    }
    let (child, stdin) = match exec::session::spawn_session(&shell, &["-l"], &env, Path::new("/")) {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                status: FinalStatus::Completed,
                result: Some(json!({
                    "message": "Shell session failed to start",
                    "action": "open",
                    "resource_id": rid,
                    "shell": shell.to_string_lossy(),
                    "success": false,
                    "error": format!("could not start {}: {e}", shell.display()),
                })),
                error: None,
                debug: None,
            }
        }
    };
    let new = NewSession {
        team_id: team.to_string(),
        resource_id: rid.to_string(),
        shell: shell.to_string_lossy().into_owned(),
        tmp,
    };
    let sess: Arc<Sess> = match ctx
        .shell_sessions
        .start(new, child, stdin, ctx.shutdown.clone())
    {
        Ok(s) => s,
        Err(m) => return failed(&m, &[("action", "open".into()), ("resource_id", rid_v)]),
    };
    log::info!(target: "shell", "shell session opened session_id={} resource_id={rid} job_id={} pid={}", sess.id, ctx.job_id, sess.pgid);
    ok(Map::from_iter([
        ("message".to_string(), Value::from("Shell session opened")),
        ("action".into(), "open".into()),
        ("session_id".into(), sess.id.clone().into()),
        ("status".into(), "open".into()),
        ("resource_id".into(), rid.into()),
        ("shell".into(), sess.shell.clone().into()),
        ("cwd".into(), "/".into()),
        ("created_at".into(), sess.created_at.clone().into()),
        ("success".into(), Value::Bool(true)),
    ]))
}
