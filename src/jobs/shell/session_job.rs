//! `shell_session` jobs (2.29.14 seed contract, §7.7, on a real terminal): `open`, `write`,
//! `read`, `status`, `resize`, `close` on a session of [`super::ShellSessions`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::access::{check_now, check_resource, machine_control_last_read, Access, Refusal};
use super::payload::{context, Action, SessionPayload, View};
use super::session::{NewSession, Sess, WRITE_TIMEOUT};
use super::{failed, ok, tmp_base};
use crate::exec::pty::{self, ReadOut, WinSize};
use crate::jobs::{FinalStatus, JobContext, Outcome};

/// Sessions per gateway and per resource.
pub const MAX_SESSIONS: usize = 10;
pub const MAX_SESSIONS_PER_RESOURCE: usize = 4;

/// The parts of a request on an existing session.
struct Request<'a> {
    payload: SessionPayload<'a>,
    ctx: &'a JobContext,
    act: Value,
    rid_v: Value,
    view: View,
}

pub fn handle_session(payload: &Value, ctx: &JobContext) -> Outcome {
    if ctx.cancel.is_cancelled() {
        return failed(
            "Gateway shell session job was cancelled before execution",
            &[("cancelled", Value::Bool(true))],
        );
    }
    let p = match SessionPayload::parse(payload) {
        Ok(p) => p,
        Err(bad) => return bad.fail(&[]),
    };
    let action = p.action;
    let act = Value::from(action.as_str());
    // Closing only takes control away, so it needs no machine control and no resource opt-in:
    // a session can be closed after its resource or a toggle was switched off. It still only
    // reaches a session of the same team and resource. What acts on the machine (open, write,
    // resize) reads every layer now; what only looks uses the team toggle as last read.
    // Acting reads the team toggle and the resource in one parallel read (machine control
    // reported first); looking reads the resource after the id was checked.
    let closing = action == Action::Close;
    let checked = match action.access() {
        _ if closing => Ok(()),
        Access::Write => check_now(ctx, p.resource_id.as_deref().ok(), Access::Write, None),
        Access::Read => machine_control_last_read(ctx).map_err(Refusal::Control),
    };
    let resource_refused = match checked {
        Ok(()) => None,
        Err(Refusal::Control(m)) => {
            log::info!(target: "shell", "shell_session denied job_id={} action={} reason={m:?}", ctx.job_id, action.as_str());
            return failed(m, &[("action", act)]);
        }
        Err(Refusal::Resource(m)) => Some(m),
    };
    let rid = match &p.resource_id {
        Ok(r) => r.clone(),
        Err(bad) => return bad.clone().fail(&[]),
    };
    let team = ctx
        .resources
        .as_ref()
        .map(|s| s.team_id().to_string())
        .unwrap_or_default();
    if !closing {
        let checked = match resource_refused {
            Some(m) => Err(m),
            None if action.access() == Access::Read => check_resource(ctx, &rid, Access::Read),
            None => Ok(()),
        };
        if let Err(m) = checked {
            log::info!(target: "shell", "shell_session denied job_id={} action={} resource_id={rid} reason={m:?}", ctx.job_id, action.as_str());
            // The resource no longer allows a shell here (not a passing read error): its
            // sessions go too.
            if !m.starts_with("Failed to load") && ctx.resources.is_some() {
                ctx.shell_sessions.close_where(
                    |s| s.team_id == team && s.resource_id == rid,
                    &format!("Shell session was closed because its resource no longer allows it ({m}); open a new session"),
                );
            }
            return failed(&m, &context(action, &rid));
        }
    }
    let view = match &p.view {
        Ok(v) => *v,
        Err(bad) => return bad.clone().fail(&context(action, &rid)),
    };
    ctx.shell_sessions.sweep();
    if action == Action::Open {
        if p.wants_secrets {
            return failed(
                "Team secrets can only be injected inside a managed VM",
                &context(action, &rid),
            );
        }
        return open(ctx, &team, &rid, view.size.unwrap_or(pty::DEFAULT_SIZE));
    }
    let sid = match &p.session_id {
        Ok(s) => *s,
        Err(bad) => return bad.clone().fail(&context(action, &rid)),
    };
    let sess = match ctx.shell_sessions.get(sid) {
        Some(s) if s.team_id == team && s.resource_id == rid => s,
        _ => {
            let note = ctx.shell_sessions.ended_note(sid, &team, &rid);
            let [a, r] = context(action, &rid);
            return failed(
                note.as_deref().unwrap_or("Shell session not found"),
                &[a, r, ("session_id", sid.into())],
            );
        }
    };
    let req = Request {
        payload: p,
        ctx,
        act,
        rid_v: Value::String(rid),
        view,
    };
    let mut r = Map::new();
    r.insert("action".into(), req.act.clone());
    r.insert("resource_id".into(), req.rid_v.clone());
    r.insert("session_id".into(), sess.id.clone().into());
    match action {
        Action::Read => read(&sess, &req, r),
        Action::Write => write(&sess, &req, r),
        Action::Resize => resize(&sess, &req, r),
        Action::Status => status(&sess, r),
        // `open` was answered above.
        Action::Close | Action::Open => close(&sess, &req, r),
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
    sess.pty
        .read(cursor, req.view.max_bytes, req.view.wait, &|| {
            cancel.is_cancelled() || shutdown.is_draining()
        })
}

fn read(sess: &Sess, req: &Request, mut r: Map<String, Value>) -> Outcome {
    put_read(&mut r, read_from(sess, req, req.view.cursor));
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
    let input = match &req.payload.input {
        Ok(s) => s.as_bytes(),
        Err(bad) => return bad.clone().fail(&here(sess, req, None)),
    };
    let st = sess.pty.status();
    if !st.alive || st.stop.is_some() {
        return failed(
            "Shell session has exited; open a new session",
            &here(sess, req, Some(("exit_code", json!(st.exit_code)))),
        );
    }
    let before = st.buffer_end;
    let written = sess.pty.write(input, WRITE_TIMEOUT);
    r.insert(
        "bytes_written".into(),
        json!(written.as_ref().map(|n| *n).unwrap_or_else(|e| e.written())),
    );
    put_read(
        &mut r,
        read_from(sess, req, Some(req.view.cursor.unwrap_or(before))),
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
    let Some(size) = req.view.size else {
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
        .saturating_sub(req.view.max_bytes as u64)
        .max(st.buffer_start);
    let out = sess
        .pty
        .read(Some(from), req.view.max_bytes, Duration::ZERO, &|| true);
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
