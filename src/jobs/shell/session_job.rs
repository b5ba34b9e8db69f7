//! `shell_session` jobs (2.29.14 seed contract, §7.7, on a real terminal): `open`, `write`,
//! `read`, `status`, `resize`, `close` on a session of [`super::ShellSessions`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::access::{check_now, check_resource, machine_control_last_read, Access, Refusal};
use super::session::{NewSession, Sess, WRITE_TIMEOUT};
use super::{failed, ok, resource_id, tmp_base, wants_secrets};
use crate::exec::pty::{self, ReadOut, WinSize};
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
/// Largest terminal side accepted for `rows` and `cols`.
pub const MAX_SIDE: u64 = 1000;

const ACTIONS: &str = "open, write, read, status, resize, close";

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

/// `rows` and `cols` of the payload: both or neither (then None), each 1…[`MAX_SIDE`].
fn size_fields(payload: &Value) -> Result<Option<WinSize>, String> {
    let side = |name: &str| -> Result<Option<u16>, String> {
        match u64_field(payload, name) {
            Ok(None) => Ok(None),
            Ok(Some(v)) if (1..=MAX_SIDE).contains(&v) => Ok(Some(v as u16)),
            _ => Err(format!(
                "Invalid {name} in payload: expected an integer from 1 to {MAX_SIDE}"
            )),
        }
    };
    match (side("rows")?, side("cols")?) {
        (Some(rows), Some(cols)) => Ok(Some(WinSize { rows, cols })),
        (None, None) => Ok(None),
        _ => Err("Give both rows and cols in payload, or neither".into()),
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
    size: Option<WinSize>,
}

/// The action named by the payload and the access it needs; Err = the failed outcome.
fn action(payload: &Value) -> Result<(String, Access), Outcome> {
    let action = payload
        .get("action")
        .and_then(Value::as_str)
        .map(|a| a.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let access = match action.as_str() {
        "open" | "write" | "resize" | "close" => Access::Write,
        "read" | "status" => Access::Read,
        "" => {
            return Err(failed(
                &format!("Missing action in payload (one of: {ACTIONS})"),
                &[],
            ))
        }
        other => {
            return Err(failed(
                &format!("Unknown shell_session action {other:?}; use one of: {ACTIONS}"),
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
    // reaches a session of the same team and resource. What acts on the machine (open, write,
    // resize) reads every layer now; what only looks uses the team toggle as last read.
    // Acting reads both rows in one parallel read (machine control reported first).
    let closing = action == "close";
    let rid = resource_id(payload);
    let checked = match access {
        _ if closing => Ok(()),
        Access::Write => check_now(ctx, rid.as_deref().ok(), access),
        Access::Read => machine_control_last_read(ctx).map_err(Refusal::Control),
    };
    let resource_refused = match checked {
        Ok(()) => None,
        Err(Refusal::Control(m)) => {
            log::info!(target: "shell", "shell_session denied job_id={} action={action} reason={m:?}", ctx.job_id);
            return failed(m, &[("action", act)]);
        }
        Err(Refusal::Resource(m)) => Some(m),
    };
    let rid = match rid {
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
        let checked = match resource_refused {
            Some(m) => Err(m),
            None if access == Access::Read => check_resource(ctx, &rid, access),
            None => Ok(()),
        };
        if let Err(m) = checked {
            log::info!(target: "shell", "shell_session denied job_id={} action={action} resource_id={rid} reason={m:?}", ctx.job_id);
            // The resource no longer allows a shell here (not a passing read error): its
            // sessions go too.
            if !m.starts_with("Failed to load") && ctx.resources.is_some() {
                ctx.shell_sessions.close_where(
                    |s| s.team_id == team && s.resource_id == rid,
                    &format!("Shell session was closed because its resource no longer allows it ({m}); open a new session"),
                );
            }
            return failed(&m, &[("action", act), ("resource_id", rid_v)]);
        }
    }
    let fields = (|| -> Result<_, String> {
        Ok((
            u64_field(payload, "cursor")?,
            u64_field(payload, "max_bytes")?,
            u64_field(payload, "wait_ms")?,
            size_fields(payload)?,
        ))
    })();
    let (cursor, max_bytes, wait_ms, size) = match fields {
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
        return open(ctx, &team, &rid, size.unwrap_or(pty::DEFAULT_SIZE));
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
            let note = ctx.shell_sessions.ended_note(sid, &team, &rid);
            return failed(
                note.as_deref().unwrap_or("Shell session not found"),
                &[
                    ("action", act),
                    ("resource_id", rid_v),
                    ("session_id", sid.into()),
                ],
            );
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
        size,
    };
    let mut r = Map::new();
    r.insert("action".into(), req.act.clone());
    r.insert("resource_id".into(), req.rid_v.clone());
    r.insert("session_id".into(), sess.id.clone().into());
    match action.as_str() {
        "read" => read(&sess, &req, r),
        "write" => write(&sess, &req, r),
        "resize" => resize(&sess, &req, r),
        "status" => status(&sess, r),
        _ => close(&sess, &req, r),
    }
}

/// Puts a read's fields into `r`.
fn put_read(r: &mut Map<String, Value>, out: ReadOut) {
    r.insert(
        "output".into(),
        String::from_utf8_lossy(&out.data).into_owned().into(),
    );
    r.insert("cursor".into(), json!(out.cursor));
    r.insert("next_cursor".into(), json!(out.next_cursor));
    r.insert("truncated".into(), Value::Bool(out.dropped > 0));
    r.insert("dropped_bytes".into(), json!(out.dropped));
    r.insert("more".into(), Value::Bool(out.more));
    r.insert("exited".into(), Value::Bool(out.ended));
    r.insert("exit_code".into(), json!(out.exit_code));
}

fn read_from(sess: &Sess, req: &Request, cursor: Option<u64>) -> ReadOut {
    let (cancel, shutdown) = (&req.ctx.cancel, &req.ctx.shutdown);
    sess.pty.read(cursor, req.max_bytes, req.wait, &|| {
        cancel.is_cancelled() || shutdown.is_draining()
    })
}

fn read(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    put_read(&mut r, read_from(sess, req, req.cursor));
    r.insert("message".into(), "Shell session output read".into());
    r.insert("success".into(), Value::Bool(true));
    ok(r)
}

fn here(
    sess: &Sess,
    req: &Request,
    extra: Option<(&'static str, Value)>,
) -> Vec<(&'static str, Value)> {
    let mut v = vec![
        ("action", req.act.clone()),
        ("resource_id", req.rid_v.clone()),
        ("session_id", Value::from(sess.id.clone())),
    ];
    v.extend(extra);
    v
}

fn write(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    let input = match req.payload.get("input") {
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        _ => {
            return failed(
                "Missing input in payload (a string typed into the terminal: end a line with \"\\n\", send \"\\u0003\" for Ctrl-C)",
                &here(sess, req, None),
            )
        }
    };
    if input.len() > SESSION_INPUT_MAX {
        return failed(
            &format!(
                "Input too large: {} bytes; send at most {SESSION_INPUT_MAX} bytes per write",
                input.len()
            ),
            &here(sess, req, None),
        );
    }
    let st = sess.pty.status();
    if !st.alive || st.stop.is_some() {
        return failed(
            "Shell session has exited; open a new session",
            &here(sess, req, Some(("exit_code", json!(st.exit_code)))),
        );
    }
    let before = st.buffer_end;
    let written = sess.pty.write(&input, WRITE_TIMEOUT);
    r.insert(
        "bytes_written".into(),
        json!(written.as_ref().map(|n| *n).unwrap_or_else(|e| e.written())),
    );
    put_read(
        &mut r,
        read_from(sess, req, Some(req.cursor.unwrap_or(before))),
    );
    match written {
        Ok(_) => {
            r.insert("message".into(), "Shell session input written".into());
            r.insert("success".into(), Value::Bool(true));
            r.insert("error".into(), Value::Null);
        }
        Err(e) => {
            r.insert(
                "message".into(),
                "Shell session input was not fully written".into(),
            );
            r.insert("success".into(), Value::Bool(false));
            r.insert("error".into(), e.to_string().into());
        }
    }
    ok(r)
}

fn resize(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    let Some(size) = req.size else {
        return failed(
            "Missing rows and cols in payload (the terminal's new size)",
            &here(sess, req, None),
        );
    };
    if let Err(e) = sess.pty.resize(size) {
        return failed(
            &format!("Could not resize the terminal: {e}"),
            &here(sess, req, None),
        );
    }
    r.insert("message".into(), "Shell session terminal resized".into());
    r.insert("rows".into(), json!(size.rows));
    r.insert("cols".into(), json!(size.cols));
    r.insert("success".into(), Value::Bool(true));
    ok(r)
}

fn status(sess: &Sess, mut r: Map<String, Value>) -> Outcome {
    let st = sess.pty.status();
    r.insert("message".into(), "Shell session status".into());
    r.insert("alive".into(), Value::Bool(st.alive));
    let state = match (st.alive, st.stop) {
        (false, _) => "exited",
        (true, Some(_)) => "closing",
        (true, None) => "open",
    };
    r.insert("status".into(), state.into());
    r.insert("exit_code".into(), json!(st.exit_code));
    r.insert("signal".into(), json!(st.signal));
    r.insert("shell".into(), sess.shell.clone().into());
    r.insert("cwd".into(), "/".into());
    r.insert(
        "tty".into(),
        sess.pty.tty().to_string_lossy().into_owned().into(),
    );
    r.insert("rows".into(), json!(st.size.rows));
    r.insert("cols".into(), json!(st.size.cols));
    r.insert("created_at".into(), sess.created_at.clone().into());
    r.insert(
        "last_activity_at".into(),
        crate::util::rfc3339_millis(st.last_activity_at).into(),
    );
    r.insert("idle_ms".into(), json!(st.idle.as_millis() as u64));
    r.insert("buffer_start".into(), json!(st.buffer_start));
    r.insert("buffer_end".into(), json!(st.buffer_end));
    r.insert("success".into(), Value::Bool(true));
    ok(r)
}

fn close(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    let st = sess.pty.close("close");
    // The tail of the output, at most max_bytes.
    let from = st
        .buffer_end
        .saturating_sub(req.max_bytes as u64)
        .max(st.buffer_start);
    let out = sess
        .pty
        .read(Some(from), req.max_bytes, Duration::ZERO, &|| true);
    r.insert("message".into(), "Shell session closed".into());
    r.insert("status".into(), "closed".into());
    put_read(&mut r, out);
    r.insert("exited".into(), Value::Bool(!st.alive));
    r.insert("exit_code".into(), json!(st.exit_code));
    r.insert("signal".into(), json!(st.signal));
    r.insert("success".into(), Value::Bool(!st.alive));
    req.ctx
        .shell_sessions
        .forget(sess, "Shell session was closed; open a new session".into());
    log::info!(target: "shell", "shell session closed session_id={} job_id={}", sess.id, req.ctx.job_id);
    ok(r)
}

fn open(ctx: &JobContext, team: &str, rid: &str, size: WinSize) -> Outcome {
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
    let shell = pty::login_shell();
    let new = NewSession {
        team_id: team.to_string(),
        resource_id: rid.to_string(),
        shell: shell.clone(),
        env: crate::exec::child_env(&[]),
        tmp_base: Some(tmp_base(ctx)),
        size,
        children: ctx.children.clone(),
    };
    let sess: Arc<Sess> = match ctx.shell_sessions.start(new) {
        Ok(s) => s,
        Err(e) if e.tmp_base.is_some() => {
            return failed(
                &format!(
                    "Could not create a private temporary directory for the shell session: {e}"
                ),
                &[("action", "open".into()), ("resource_id", rid_v)],
            )
        }
        Err(e) => {
            return Outcome {
                status: FinalStatus::Completed,
                result: Some(json!({
                    "message": "Shell session failed to start",
                    "action": "open",
                    "resource_id": rid,
                    "shell": shell.to_string_lossy(),
                    "success": false,
                    "error": e.to_string(),
                })),
                error: None,
                debug: None,
            }
        }
    };
    log::info!(target: "shell", "shell session opened session_id={} resource_id={rid} job_id={} pid={} tty={}", sess.id, ctx.job_id, sess.pty.pid(), sess.pty.tty().display());
    ok(Map::from_iter([
        ("message".to_string(), Value::from("Shell session opened")),
        ("action".into(), "open".into()),
        ("session_id".into(), sess.id.clone().into()),
        ("status".into(), "open".into()),
        ("resource_id".into(), rid.into()),
        ("shell".into(), sess.shell.clone().into()),
        ("cwd".into(), "/".into()),
        (
            "tty".into(),
            sess.pty.tty().to_string_lossy().into_owned().into(),
        ),
        ("term".into(), pty::DEFAULT_TERM.into()),
        ("rows".into(), json!(size.rows)),
        ("cols".into(), json!(size.cols)),
        ("created_at".into(), sess.created_at.clone().into()),
        ("success".into(), Value::Bool(true)),
    ]))
}
