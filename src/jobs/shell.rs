//! Remote shell jobs (subagents-shell.md §7, backend.md §9.3, PROTOCOL.md §8 and §12):
//!
//! - `shell_exec` (2.32 contract): one command through `<shell> -lc <command>`, cwd `/`, scrubbed
//!   environment, private TMPDIR under `<configDir>/tmp`, timeout (default 30 s, clamped to
//!   1 ms…10 min), 5 MB kept per stream, whole process group killed on timeout.
//! - `shell_session` (2.29.14 seed contract, §7.7): `open` starts a long-lived `<shell> -l` with
//!   piped stdin; `write`, `read`, `status`, `close` act on it by `session_id` in later jobs.
//!   Output (stdout and stderr merged) goes to a bounded buffer with absolute offsets. Sessions
//!   live in a process-wide registry, expire when idle, and are killed (whole process group)
//!   when closed, when idle too long and when the daemon stops.
//!
//! Both check every machine-control layer (install toggle, team toggle, fresh heartbeat) and
//! the remote shell resource (§7.3, with its `metadata.full_control === true` opt-in) before
//! anything runs. Denials fail the job with `{message, resource_id?}`; a command that ran
//! completes the job whatever its exit status (`success` tells the truth).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{FinalStatus, JobContext, Outcome};
use crate::exec;
use crate::util::{is_uuid, new_uuid_v4};

/// `DEFAULT_REMOTE_SHELL_EXEC_TIMEOUT_MS`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Gateway-side clamp of `timeout_ms` (10 min).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most bytes stdout and stderr may take in a `shell_exec` result once JSON-encoded. Each stream
/// is captured up to 5 MB, but two full streams (or control bytes, which JSON escapes to six
/// bytes each) would make a completion the backend refuses, and the job would stay `running`.
/// stdout keeps its 5 MB first; stderr gets at least 1 MB of the rest.
pub const RESULT_OUTPUT_BUDGET: usize = 6_000_000;
const STDERR_RESERVE: usize = 1_000_000;

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The JSON-encoded size of `s`, without the quotes.
fn json_size(s: &str) -> usize {
    s.chars().map(json_len).sum()
}

/// Cuts `s` (at a char boundary) so its JSON-encoded size is at most `budget`; true when cut.
fn cut_to_json_budget(s: &mut String, budget: usize) -> bool {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += json_len(c);
        if used > budget {
            s.truncate(i);
            return true;
        }
    }
    false
}

/// Fits stdout and stderr into [`RESULT_OUTPUT_BUDGET`]; returns whether each was cut.
fn fit_output(stdout: &mut String, stderr: &mut String) -> (bool, bool) {
    let out_size = json_size(stdout);
    let err_size = json_size(stderr);
    if out_size + err_size <= RESULT_OUTPUT_BUDGET {
        return (false, false);
    }
    let out_budget = out_size
        .min(exec::CAPTURE_LIMIT)
        .min(RESULT_OUTPUT_BUDGET - err_size.min(STDERR_RESERVE));
    let out_cut = cut_to_json_budget(stdout, out_budget);
    let err_budget = RESULT_OUTPUT_BUDGET - json_size(stdout);
    let err_cut = cut_to_json_budget(stderr, err_budget);
    (out_cut, err_cut)
}

/// Output kept per session (stdout and stderr merged); older bytes are dropped.
pub const SESSION_BUFFER_BYTES: usize = 5_000_000;
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
/// Default idle expiry (no `write`/`read`; `status` does not count as activity);
/// `PANORAMA_GATEWAY_SHELL_SESSION_IDLE_MS`.
pub const DEFAULT_SESSION_IDLE_MS: u64 = 15 * 60 * 1000;
/// How long a write may wait for the shell to take its input.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------

fn failed(message: &str, extra: &[(&str, Value)]) -> Outcome {
    let mut m = Map::new();
    m.insert("message".into(), message.into());
    for (k, v) in extra {
        m.insert((*k).into(), v.clone());
    }
    Outcome {
        status: FinalStatus::Failed,
        result: Some(Value::Object(m)),
        error: Some(message.to_string()),
        debug: None,
    }
}

/// The gateway-side machine-control layers, first failing one wins (§7.2 step 2): heartbeat,
/// team toggle, install toggle. Locally the `machine_control` service is ready exactly when the
/// install toggle is on, so its check is the install check.
/// On denial, also returns the state read, for [`enforce_control`].
fn machine_control(ctx: &JobContext) -> Result<(), (&'static str, super::ControlState)> {
    let c = ctx.control();
    control_denial(ctx.session.is_some(), c).map_err(|m| (m, c))
}

fn control_denial(has_backend: bool, c: super::ControlState) -> Result<(), &'static str> {
    if !has_backend {
        return Err("Gateway control state unavailable");
    }
    if !c.heartbeat_fresh {
        return Err("Gateway is offline or heartbeat is stale");
    }
    if !c.team_enabled {
        return Err("Gateway machine control is disabled in Team Integrations.");
    }
    if !c.install_enabled {
        return Err("Gateway host machine control is disabled. Run \"panorama-gateway full-control enable\" on the host.");
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Remote shell resource checks in the reference's order (§7.3). Err = the message.
fn check_resource(ctx: &JobContext, resource_id: &str, access: Access) -> Result<(), String> {
    let Some(s) = ctx.session.as_deref() else {
        return Err("Failed to load remote shell resource".into());
    };
    let team = s.team_id.clone();
    let gw = s.gateway_id.clone();
    let rid = format!("eq.{resource_id}");
    let tid = format!("eq.{team}");
    let gid = format!("eq.{gw}");
    let (res, gate) = std::thread::scope(|sc| {
        let g = sc.spawn(|| {
            crate::backend::rest::select(
                s,
                "team_gateways",
                &[("select", "vm_id"), ("id", &gid), ("team_id", &tid)],
            )
        });
        let r = crate::backend::rest::select(
            s,
            "team_resources",
            &[
                (
                    "select",
                    "id,team_id,resource_type,max_access_level,metadata",
                ),
                ("id", &rid),
                ("team_id", &tid),
            ],
        );
        (r, g.join())
    });
    let res = res.map_err(|e| {
        log::warn!(target: "shell", "reading remote shell resource {resource_id} failed: {e}");
        "Failed to load remote shell resource".to_string()
    })?;
    let gate = match gate {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            log::warn!(target: "shell", "reading the gateway row failed: {e}");
            return Err("Failed to load gateway identity for remote shell resource".into());
        }
        Err(_) => return Err("Failed to load gateway identity for remote shell resource".into()),
    };
    let Some(gate) = gate.first() else {
        return Err("Gateway identity is missing".into());
    };
    let Some(row) = res.first() else {
        return Err("Remote shell resource not found".into());
    };
    if row.get("team_id").and_then(Value::as_str) != Some(team.as_str()) {
        return Err("Remote shell resource belongs to another team".into());
    }
    let rtype = row
        .get("resource_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if rtype != "remote_shell" {
        return Err(format!(
            "Resource is not a remote shell target (found {rtype})"
        ));
    }
    if access == Access::Write
        && row.get("max_access_level").and_then(Value::as_str) == Some("viewer")
    {
        return Err("Remote shell resource is configured for viewer access. Full access is required for this action.".into());
    }
    let meta = row.get("metadata").cloned().unwrap_or(Value::Null);
    let trimmed = |k: &str| {
        meta.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if let Some(vm) = trimmed("vm_id") {
        let mine = gate
            .get("vm_id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty());
        if mine != Some(vm.as_str()) {
            return Err("Remote shell resource targets a different VM-backed gateway".into());
        }
    } else {
        match trimmed("gateway_id") {
            None => {
                return Err(
                    "Remote shell resource is missing metadata.gateway_id or metadata.vm_id".into(),
                )
            }
            Some(g) if g != gw => {
                return Err("Remote shell resource targets a different gateway".into())
            }
            Some(_) => {}
        }
    }
    if meta.get("full_control") != Some(&Value::Bool(true)) {
        return Err("Remote shell resource machine control is disabled".into());
    }
    Ok(())
}

/// `/bin/bash` if it exists, else `/bin/sh`, else `$SHELL`, else `/bin/bash` (§7.2 step 9).
fn pick_shell() -> PathBuf {
    for p in ["/bin/bash", "/bin/sh"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    match std::env::var("SHELL") {
        Ok(s) if !s.trim().is_empty() => PathBuf::from(s.trim()),
        _ => PathBuf::from("/bin/bash"),
    }
}

/// A number (truncated) or a base-10 integer string (leading digits, like `parseInt`); anything
/// else gives the default; then clamped to 1…600 000 ms (§7.2 step 8).
fn parse_timeout(v: Option<&Value>) -> u64 {
    let n: Option<f64> = match v {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => {
            let t = s.trim();
            let (sign, digits) = match t.strip_prefix('-') {
                Some(r) => (-1.0, r),
                None => (1.0, t.strip_prefix('+').unwrap_or(t)),
            };
            let d: String = digits.chars().take_while(|c| c.is_ascii_digit()).collect();
            d.parse::<f64>().ok().map(|x| sign * x)
        }
        _ => None,
    };
    match n {
        Some(x) if x.is_finite() => (x.trunc().max(1.0) as u64).min(MAX_TIMEOUT_MS),
        _ => DEFAULT_TIMEOUT_MS,
    }
}

/// `<configDir>/tmp` (the work root is `<configDir>/work`), owner-only.
fn tmp_base(ctx: &JobContext) -> PathBuf {
    let work = ctx.providers.work_root();
    let base = work
        .parent()
        .map(|p| p.join("tmp"))
        .unwrap_or_else(|| work.join("tmp"));
    if let Err(e) = exec::ensure_private_dir(&base) {
        log::warn!(target: "shell", "could not prepare {}: {e}", base.display());
    }
    base
}

/// `resource_id` trimmed; Err = the failed outcome.
fn resource_id(payload: &Value) -> Result<String, Outcome> {
    match payload
        .get("resource_id")
        .and_then(Value::as_str)
        .map(str::trim)
    {
        Some(r) if !r.is_empty() => {
            if is_uuid(r) {
                Ok(r.to_string())
            } else {
                Err(failed(
                    "Invalid resource_id in payload: expected the UUID of a team resource",
                    &[("resource_id", r.into())],
                ))
            }
        }
        _ => Err(failed("Missing resource_id in payload", &[])),
    }
}

/// True when `secret_env` asks for secrets (a non-empty object).
fn wants_secrets(payload: &Value) -> bool {
    payload
        .get("secret_env")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

// ---------------------------------------------------------------------------------------------
// shell_exec
// ---------------------------------------------------------------------------------------------

pub fn handle_exec(payload: &Value, ctx: &JobContext) -> Outcome {
    if ctx.cancel.is_cancelled() {
        return failed(
            "Gateway remote shell exec job was cancelled before execution",
            &[("cancelled", Value::Bool(true))],
        );
    }
    if !payload.is_object() {
        return failed(
            "Invalid shell_exec payload: expected a JSON object with resource_id and command",
            &[],
        );
    }
    if let Err((m, c)) = machine_control(ctx) {
        log::info!(target: "shell", "shell_exec denied job_id={} reason={m:?}", ctx.job_id);
        enforce_control(ctx.session.is_some(), c);
        return failed(m, &[]);
    }
    let rid = match resource_id(payload) {
        Ok(r) => r,
        Err(o) => return o,
    };
    let rid_v = Value::String(rid.clone());
    if let Err(m) = check_resource(ctx, &rid, Access::Write) {
        log::info!(target: "shell", "shell_exec denied job_id={} resource_id={rid} reason={m:?}", ctx.job_id);
        return failed(&m, &[("resource_id", rid_v)]);
    }
    let command = match payload.get("command").and_then(Value::as_str) {
        Some(c) if !c.trim().is_empty() => c.to_string(),
        _ => return failed("Missing command in payload", &[("resource_id", rid_v)]),
    };
    if wants_secrets(payload) {
        return failed(
            "Team secrets can only be injected inside a managed VM",
            &[("resource_id", rid_v)],
        );
    }
    let timeout_ms = parse_timeout(payload.get("timeout_ms"));
    let shell = pick_shell();
    let mut spec = exec::Spec::new(&shell)
        .arg("-lc")
        .arg(&command)
        .timeout(Duration::from_millis(timeout_ms));
    spec.cwd = Some(PathBuf::from("/"));
    spec.cancel = Some(ctx.cancel.clone());
    spec.register = Some((ctx.children.clone(), ctx.job_id.clone()));
    spec.tmp_base = Some(tmp_base(ctx));
    log::info!(target: "shell", "shell_exec start job_id={} resource_id={rid} timeout_ms={timeout_ms} command_bytes={}", ctx.job_id, command.len());
    let started = Instant::now();
    let run = exec::run(spec, None);
    let mut r = Map::new();
    let (message, stdout, stderr, exit_code, timed_out, success, so_t, se_t, error, stopped) =
        match &run {
            Err(e) => (
                "Remote shell command failed to start",
                String::new(),
                String::new(),
                None,
                false,
                false,
                false,
                false,
                Some(e.to_string()),
                false,
            ),
            Ok(o) => {
                let stopped = matches!(o.stop, exec::Stop::Cancelled | exec::Stop::Killed);
                let msg = if o.timed_out() {
                    "Remote shell command timed out"
                } else if stopped {
                    "Remote shell command was stopped before it finished"
                } else if o.success() {
                    "Remote shell command completed"
                } else {
                    "Remote shell command completed with a non-zero exit status"
                };
                let (mut stdout, mut stderr) = (o.stdout_lossy(), o.stderr_lossy());
                let (out_cut, err_cut) = fit_output(&mut stdout, &mut stderr);
                if out_cut || err_cut {
                    log::info!(target: "shell", "shell_exec output cut to the result budget job_id={} stdout_bytes={} stderr_bytes={}", ctx.job_id, stdout.len(), stderr.len());
                }
                (
                    msg,
                    stdout,
                    stderr,
                    o.exit_code,
                    o.timed_out(),
                    o.success(),
                    o.stdout_truncated || out_cut,
                    o.stderr_truncated || err_cut,
                    None,
                    stopped,
                )
            }
        };
    let duration_ms = run
        .as_ref()
        .map(|o| o.duration.as_millis() as u64)
        .unwrap_or_else(|_| started.elapsed().as_millis() as u64);
    r.insert("message".into(), message.into());
    r.insert("resource_id".into(), rid.into());
    r.insert("command".into(), command.into());
    r.insert("shell".into(), shell.to_string_lossy().into_owned().into());
    r.insert("exec_user".into(), Value::Null);
    r.insert("workload_id".into(), Value::Null);
    r.insert("cgroup".into(), Value::Null);
    r.insert("cgroup_termination_error".into(), Value::Null);
    r.insert("process_tree_contained".into(), Value::Bool(false));
    r.insert("cwd".into(), "/".into());
    r.insert("stdout".into(), stdout.into());
    r.insert("stderr".into(), stderr.into());
    r.insert("exit_code".into(), json!(exit_code));
    r.insert("duration_ms".into(), json!(duration_ms));
    r.insert("timed_out".into(), Value::Bool(timed_out));
    r.insert("success".into(), Value::Bool(success));
    r.insert("readiness_evidence".into(), Value::Null);
    r.insert("stdout_truncated".into(), Value::Bool(so_t));
    r.insert("stderr_truncated".into(), Value::Bool(se_t));
    r.insert("output_truncated".into(), Value::Bool(so_t || se_t));
    r.insert("error".into(), json!(error));
    if stopped {
        r.insert("cancelled".into(), Value::Bool(true));
    }
    log::info!(target: "shell", "shell_exec done job_id={} exit_code={exit_code:?} timed_out={timed_out} duration_ms={duration_ms}", ctx.job_id);
    Outcome {
        status: FinalStatus::Completed,
        result: Some(Value::Object(r)),
        error: None,
        debug: None,
    }
}

// ---------------------------------------------------------------------------------------------
// shell_session
// ---------------------------------------------------------------------------------------------

/// What the pump thread and the handlers share about one session.
struct State {
    /// Retained output; `buf[0]` is at absolute offset `start`.
    buf: VecDeque<u8>,
    start: u64,
    /// Default cursor of `read`: the `next_cursor` last handed out.
    acked: u64,
    exited: bool,
    exit_code: Option<i32>,
    signal: Option<i32>,
    last_activity: Instant,
    last_activity_at: String,
    /// Why the session must end (close, idle, shutdown); the pump kills the group.
    stop: Option<&'static str>,
}

impl State {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
    fn touch(&mut self) {
        self.last_activity = Instant::now();
        self.last_activity_at = crate::util::now_rfc3339();
    }
    fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        let over = self.buf.len().saturating_sub(SESSION_BUFFER_BYTES);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
    }
}

struct Sess {
    id: String,
    team_id: String,
    resource_id: String,
    shell: String,
    created_at: String,
    pgid: i32,
    stdin: Mutex<Option<ChildStdin>>,
    st: Mutex<State>,
    changed: Condvar,
    /// The private TMPDIR; removed when the session is dropped.
    _tmp: Option<exec::PrivateDir>,
}

impl Sess {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Registry {
    map: Mutex<HashMap<String, Arc<Sess>>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Sess>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn idle_limit() -> Duration {
    crate::backend::session::env_ms(
        "PANORAMA_GATEWAY_SHELL_SESSION_IDLE_MS",
        DEFAULT_SESSION_IDLE_MS,
    )
}

/// Closes every session (SIGTERM to its group, SIGKILL after 2 s) and waits until their
/// processes are reaped, at most `timeout`. For the daemon's shutdown.
pub fn close_all_sessions(timeout: Duration) {
    let all: Vec<Arc<Sess>> = registry().lock().values().cloned().collect();
    if all.is_empty() {
        return;
    }
    log::info!(target: "shell", "closing shell sessions count={}", all.len());
    for s in &all {
        request_stop(s, "shutdown");
    }
    let deadline = Instant::now() + timeout;
    for s in &all {
        let mut st = s.lock();
        while !st.exited && Instant::now() < deadline {
            st = s
                .changed
                .wait_timeout(st, TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    let mut map = registry().lock();
    for s in &all {
        map.remove(&s.id);
    }
}

/// Machine control must hold for a session to live on: when any gateway-side layer is off,
/// every session is closed (process groups killed). Called by every shell job that finds a
/// layer off; the runtime may also call it after each heartbeat's control-state read so that
/// turning a toggle off acts without waiting for the next shell job.
pub fn enforce_control(has_backend: bool, c: super::ControlState) {
    if let Err(why) = control_denial(has_backend, c) {
        close_sessions_where(|_| true, &format!("machine control is off ({why})"));
    }
}

/// Stops the sessions `pick` selects; their pumps finish the kill and then forget them.
fn close_sessions_where(pick: impl Fn(&Sess) -> bool, why: &str) {
    let picked: Vec<Arc<Sess>> = registry()
        .lock()
        .values()
        .filter(|s| pick(s) && !s.lock().exited)
        .cloned()
        .collect();
    if picked.is_empty() {
        return;
    }
    log::info!(target: "shell", "closing shell sessions count={} reason={why:?}", picked.len());
    for s in &picked {
        request_stop(s, "revoked");
    }
}

/// How many sessions are open (for status and tests).
pub fn session_count() -> usize {
    registry().lock().len()
}

fn request_stop(s: &Sess, why: &'static str) {
    let mut st = s.lock();
    if st.stop.is_none() && !st.exited {
        st.stop = Some(why);
        // Signal at once; the pump escalates to SIGKILL after the grace.
        exec::signal_group(s.pgid, libc::SIGTERM);
    }
    drop(st);
    s.changed.notify_all();
    // Closing stdin makes a shell that ignores SIGTERM (interactive bash) read EOF and exit.
    *s.stdin.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// Reads both pipes into the buffer until the shell has exited and its group is gone; kills
/// the group on a stop request (close, idle expiry, daemon shutdown); reaps the shell.
fn pump(sess: Arc<Sess>, mut child: Child, shutdown: crate::shutdown::Shutdown) {
    let mut pipes: Vec<Option<Box<dyn ReadFd>>> = vec![
        child.stdout.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
    ];
    for p in pipes.iter().flatten() {
        set_nonblocking(p.fd());
    }
    let idle = idle_limit();
    let mut kill_at: Option<Instant> = None;
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        {
            let mut st = sess.lock();
            if st.stop.is_none() && exited_at.is_none() {
                if shutdown.is_draining() {
                    st.stop = Some("shutdown");
                } else if now.duration_since(st.last_activity) >= idle {
                    st.stop = Some("idle");
                }
                if let Some(why) = st.stop {
                    log::info!(target: "shell", "stopping shell session session_id={} reason={why}", sess.id);
                    exec::signal_group(sess.pgid, libc::SIGTERM);
                }
            }
            if st.stop.is_some() && kill_at.is_none() {
                kill_at = Some(now + exec::KILL_GRACE);
                drop(st);
                *sess.stdin.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        if kill_at.is_some_and(|k| now >= k) && exited_at.is_none() {
            exec::signal_group(sess.pgid, libc::SIGKILL);
        }
        if exited_at.is_none() {
            // An error (the child is not ours to wait for any more) counts as exited too, so
            // this loop cannot outlive the shell.
            if !matches!(peek_exit(child.id() as i32), Ok(None)) {
                exited_at = Some(now);
                // Background members of the group go with the leader.
                exec::signal_group(sess.pgid, libc::SIGKILL);
            }
        }
        let open = pipes.iter().any(Option::is_some);
        if exited_at.is_some()
            && (!open || exited_at.is_some_and(|t| now >= t + Duration::from_secs(2)))
        {
            break;
        }
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .flatten()
            .map(|p| libc::pollfd {
                fd: p.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        // SAFETY: fds is a valid pollfd array for the duration of the call.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                TICK.as_millis() as i32,
            );
        }
        for slot in pipes.iter_mut() {
            let Some(p) = slot.as_mut() else { continue };
            for _ in 0..16 {
                match p.read(&mut buf) {
                    Ok(0) => {
                        *slot = None;
                        break;
                    }
                    Ok(n) => {
                        sess.lock().push(&buf[..n]);
                        sess.changed.notify_all();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *slot = None;
                        break;
                    }
                }
            }
        }
    }
    drop(pipes);
    // Reap under the lock: `request_stop` signals the group only while `exited` is false, so
    // nobody signals a process group id the system may hand out again after the reap.
    let mut st = sess.lock();
    let status = child.wait();
    st.exited = true;
    if let Ok(s) = status {
        st.exit_code = s.code();
        st.signal = s.signal();
    }
    let why = st.stop;
    drop(st);
    sess.changed.notify_all();
    *sess.stdin.lock().unwrap_or_else(|e| e.into_inner()) = None;
    log::info!(target: "shell", "shell session ended session_id={} reason={}", sess.id, why.unwrap_or("exited"));
    // Idle, shutdown and revoked stops remove the session; `close` removes it itself; a shell that
    // exited on its own stays readable until closed or idle.
    if matches!(why, Some("idle") | Some("shutdown") | Some("revoked")) {
        registry().lock().remove(&sess.id);
    }
}

trait ReadFd: Read + Send {
    fn fd(&self) -> i32;
}
impl ReadFd for std::process::ChildStdout {
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
}
impl ReadFd for std::process::ChildStderr {
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
}

/// Some(()) when `pid` has exited; leaves it a zombie (WNOWAIT) so its pgid stays reserved
/// until `wait` reaps it.
fn peek_exit(pid: i32) -> io::Result<Option<()>> {
    // SAFETY: siginfo_t is plain data that waitid fills in.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((info.si_pid() == pid).then_some(()))
    }
}

/// Drops sessions that exited on their own and were then left idle.
fn sweep() {
    let idle = idle_limit();
    let mut map = registry().lock();
    map.retain(|_, s| {
        let st = s.lock();
        !(st.exited && st.last_activity.elapsed() >= idle)
    });
}

fn ok(result: Map<String, Value>) -> Outcome {
    Outcome {
        status: FinalStatus::Completed,
        result: Some(Value::Object(result)),
        error: None,
        debug: None,
    }
}

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
    let action = payload
        .get("action")
        .and_then(Value::as_str)
        .map(|a| a.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let access = match action.as_str() {
        "open" | "write" | "close" => Access::Write,
        "read" | "status" => Access::Read,
        "" => {
            return failed(
                "Missing action in payload (one of: open, write, read, status, close)",
                &[],
            )
        }
        other => {
            return failed(
                &format!("Unknown shell_session action {other:?}; use one of: open, write, read, status, close"),
                &[],
            )
        }
    };
    let act = Value::String(action.clone());
    // Closing only takes control away, so it needs no machine control and no resource opt-in:
    // a session can be closed after its resource or a toggle was switched off. It still only
    // reaches a session of the same team and resource.
    let closing = action == "close";
    if let Err((m, c)) = machine_control(ctx) {
        enforce_control(ctx.session.is_some(), c);
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
    if !closing {
        if let Err(m) = check_resource(ctx, &rid, access) {
            log::info!(target: "shell", "shell_session denied job_id={} action={action} resource_id={rid} reason={m:?}", ctx.job_id);
            // The resource no longer allows a shell here (not a passing read error): its
            // sessions go too.
            if !m.starts_with("Failed to load") {
                let team = ctx.session.as_ref().map(|s| s.team_id.clone());
                close_sessions_where(
                    |s| Some(&s.team_id) == team.as_ref() && s.resource_id == rid,
                    &m,
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
        ))
    })();
    let (cursor, max_bytes, wait_ms) = match fields {
        Ok(f) => f,
        Err(m) => return failed(&m, &[("action", act), ("resource_id", rid_v)]),
    };
    let max_bytes =
        (max_bytes.unwrap_or(SESSION_READ_DEFAULT as u64) as usize).clamp(1, SESSION_READ_MAX);
    let wait = Duration::from_millis(wait_ms.unwrap_or(0).min(SESSION_WAIT_MAX_MS));
    sweep();
    let team = ctx
        .session
        .as_ref()
        .map(|s| s.team_id.clone())
        .unwrap_or_default();
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
    let found = registry().lock().get(sid).cloned();
    let sess = match found {
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
    let mut r = Map::new();
    r.insert("action".into(), act.clone());
    r.insert("resource_id".into(), rid_v.clone());
    r.insert("session_id".into(), sess.id.clone().into());
    match action.as_str() {
        "read" => {
            sess.lock().touch();
            read_into(&sess, &mut r, cursor, max_bytes, wait, ctx);
            r.insert("message".into(), "Shell session output read".into());
            r.insert("success".into(), Value::Bool(true));
            ok(r)
        }
        "write" => {
            let input =
                match payload.get("input") {
                    Some(Value::String(s)) => s.as_bytes().to_vec(),
                    _ => return failed(
                        "Missing input in payload (a string; include the newline to run a line)",
                        &[
                            ("action", act),
                            ("resource_id", rid_v),
                            ("session_id", sess.id.clone().into()),
                        ],
                    ),
                };
            if input.len() > SESSION_INPUT_MAX {
                return failed(
                    &format!("Input too large: {} bytes; send at most {SESSION_INPUT_MAX} bytes per write", input.len()),
                    &[("action", act), ("resource_id", rid_v), ("session_id", sess.id.clone().into())],
                );
            }
            {
                let mut st = sess.lock();
                if st.exited || st.stop.is_some() {
                    return failed(
                        "Shell session has exited; open a new session",
                        &[
                            ("action", act),
                            ("resource_id", rid_v),
                            ("session_id", sess.id.clone().into()),
                            ("exit_code", json!(st.exit_code)),
                        ],
                    );
                }
                st.touch();
            }
            let before = sess.lock().end();
            let written = write_input(&sess, &input);
            r.insert(
                "bytes_written".into(),
                json!(written.as_ref().map(|n| *n).unwrap_or_else(|(n, _)| *n)),
            );
            read_into(
                &sess,
                &mut r,
                Some(cursor.unwrap_or(before)),
                max_bytes,
                wait,
                ctx,
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
        "status" => {
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
        _ => {
            // close
            request_stop(&sess, "close");
            let deadline = Instant::now() + exec::KILL_GRACE + Duration::from_secs(3);
            let mut st = sess.lock();
            while !st.exited && Instant::now() < deadline {
                st = sess
                    .changed
                    .wait_timeout(st, TICK)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let end = st.end();
            let from = end.saturating_sub(max_bytes as u64).max(st.start);
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
            registry().lock().remove(&sess.id);
            log::info!(target: "shell", "shell session closed session_id={} job_id={}", sess.id, ctx.job_id);
            ok(r)
        }
    }
}

/// Waits up to `wait` for output past `cursor` (or the shell's exit), then puts `output`,
/// `cursor`, `next_cursor`, `truncated`, `exited`, `exit_code` into `r`.
fn read_into(
    sess: &Sess,
    r: &mut Map<String, Value>,
    cursor: Option<u64>,
    max_bytes: usize,
    wait: Duration,
    ctx: &JobContext,
) {
    let deadline = Instant::now() + wait;
    let mut st = sess.lock();
    // A cursor past the end means "from the end" (never skip bytes that arrive meanwhile).
    let want = cursor.unwrap_or(st.acked).min(st.end());
    while st.end() <= want && !st.exited && Instant::now() < deadline {
        if ctx.cancel.is_cancelled() || ctx.shutdown.is_draining() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now()).min(TICK);
        st = sess
            .changed
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    let truncated = want < st.start;
    let from = want.clamp(st.start, st.end());
    let to = (from + max_bytes as u64).min(st.end());
    let mut data: Vec<u8> = st
        .buf
        .range((from - st.start) as usize..(to - st.start) as usize)
        .copied()
        .collect();
    // Do not split a UTF-8 character across two reads (its rest may still be on the way);
    // once the shell has exited and this is the end, hand out what there is.
    // A read too small for one whole character (`max_bytes` 1) still makes progress.
    if !(st.exited && to == st.end()) {
        let keep = utf8_complete_prefix(&data);
        if keep > 0 {
            data.truncate(keep);
        }
    }
    let to = from + data.len() as u64;
    st.acked = st.acked.max(to);
    r.insert(
        "output".into(),
        String::from_utf8_lossy(&data).into_owned().into(),
    );
    r.insert("cursor".into(), json!(from));
    r.insert("next_cursor".into(), json!(to));
    r.insert("truncated".into(), Value::Bool(truncated));
    r.insert("more".into(), Value::Bool(to < st.end()));
    r.insert("exited".into(), Value::Bool(st.exited));
    r.insert("exit_code".into(), json!(st.exit_code));
}

/// The length of `b` without a trailing, incomplete UTF-8 sequence (at most 3 bytes dropped;
/// bytes that can never be UTF-8 are kept).
fn utf8_complete_prefix(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=3.min(n) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return n,
        };
        return if need > back { n - back } else { n };
    }
    n
}

/// Writes all of `input` to the shell's stdin within [`WRITE_TIMEOUT`]. Err = (bytes written,
/// why the rest was not).
fn write_input(sess: &Sess, input: &[u8]) -> Result<usize, (usize, String)> {
    let mut guard = sess.stdin.lock().unwrap_or_else(|e| e.into_inner());
    let Some(stdin) = guard.as_mut() else {
        return Err((0, "the shell's input is closed".into()));
    };
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut written = 0;
    while written < input.len() {
        match stdin.write(&input[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err((
                        written,
                        "the shell did not take its input within 5 s (is a command still running and not reading stdin?)".into(),
                    ));
                }
                let mut p = libc::pollfd {
                    fd: stdin.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe {
                    libc::poll(&mut p, 1, TICK.as_millis() as i32);
                }
            }
            Err(e) => return Err((written, format!("writing to the shell failed: {e}"))),
        }
    }
    Ok(written)
}

fn open(ctx: &JobContext, team: &str, rid: &str) -> Outcome {
    let rid_v = Value::String(rid.to_string());
    {
        let map = registry().lock();
        if map.len() >= MAX_SESSIONS {
            return failed(
                &format!(
                    "Too many shell sessions on this gateway ({MAX_SESSIONS}); close one first"
                ),
                &[("action", "open".into()), ("resource_id", rid_v)],
            );
        }
        let here = map
            .values()
            .filter(|s| s.team_id == team && s.resource_id == rid)
            .count();
        if here >= MAX_SESSIONS_PER_RESOURCE {
            return failed(
                &format!("Too many shell sessions on this resource ({MAX_SESSIONS_PER_RESOURCE}); close one first"),
                &[("action", "open".into()), ("resource_id", rid_v)],
            );
        }
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
    let mut cmd = Command::new(&shell);
    cmd.arg("-l")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    exec::isolate(&mut cmd);
    let mut child = match cmd.spawn() {
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
    let stdin = child.stdin.take();
    if let Some(s) = &stdin {
        set_nonblocking(s.as_raw_fd());
    }
    let now = crate::util::now_rfc3339();
    let sess = Arc::new(Sess {
        id: new_uuid_v4(),
        team_id: team.to_string(),
        resource_id: rid.to_string(),
        shell: shell.to_string_lossy().into_owned(),
        created_at: now.clone(),
        pgid: child.id() as i32,
        stdin: Mutex::new(stdin),
        st: Mutex::new(State {
            buf: VecDeque::new(),
            start: 0,
            acked: 0,
            exited: false,
            exit_code: None,
            signal: None,
            last_activity: Instant::now(),
            last_activity_at: now.clone(),
            stop: None,
        }),
        changed: Condvar::new(),
        _tmp: tmp,
    });
    registry().lock().insert(sess.id.clone(), sess.clone());
    let shutdown = ctx.shutdown.clone();
    let s2 = sess.clone();
    let spawned = std::thread::Builder::new()
        .name("shell-session".into())
        .spawn(move || pump(s2, child, shutdown));
    if let Err(e) = spawned {
        // The child went with the closure; its group still exists: kill it.
        exec::signal_group(sess.pgid, libc::SIGKILL);
        registry().lock().remove(&sess.id);
        return failed(
            &format!("Could not start the shell session's reader thread: {e}"),
            &[("action", "open".into()), ("resource_id", rid_v)],
        );
    }
    log::info!(target: "shell", "shell session opened session_id={} resource_id={rid} job_id={} pid={}", sess.id, ctx.job_id, sess.pgid);
    ok(Map::from_iter([
        ("message".to_string(), Value::from("Shell session opened")),
        ("action".into(), "open".into()),
        ("session_id".into(), sess.id.clone().into()),
        ("status".into(), "open".into()),
        ("resource_id".into(), rid.into()),
        ("shell".into(), sess.shell.clone().into()),
        ("cwd".into(), "/".into()),
        ("created_at".into(), now.into()),
        ("success".into(), Value::Bool(true)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_parsing_follows_the_gateway_clamp() {
        assert_eq!(parse_timeout(None), 30_000);
        assert_eq!(parse_timeout(Some(&json!("abc"))), 30_000);
        assert_eq!(parse_timeout(Some(&json!(null))), 30_000);
        assert_eq!(parse_timeout(Some(&json!(1500.9))), 1500);
        assert_eq!(parse_timeout(Some(&json!("2500ms"))), 2500);
        assert_eq!(parse_timeout(Some(&json!(0))), 1);
        assert_eq!(parse_timeout(Some(&json!(-5))), 1);
        assert_eq!(parse_timeout(Some(&json!(10_000_000))), 600_000);
    }

    #[test]
    fn the_first_closed_machine_control_layer_is_named() {
        use super::super::ControlState;
        let all = ControlState {
            install_enabled: true,
            team_enabled: true,
            heartbeat_fresh: true,
        };
        assert_eq!(control_denial(true, all), Ok(()));
        assert_eq!(
            control_denial(false, all),
            Err("Gateway control state unavailable")
        );
        let nothing = ControlState::default();
        assert_eq!(
            control_denial(true, nothing),
            Err("Gateway is offline or heartbeat is stale")
        );
        let no_team = ControlState {
            team_enabled: false,
            install_enabled: false,
            ..all
        };
        assert_eq!(
            control_denial(true, no_team),
            Err("Gateway machine control is disabled in Team Integrations.")
        );
        let no_install = ControlState {
            install_enabled: false,
            ..all
        };
        assert!(control_denial(true, no_install)
            .unwrap_err()
            .contains("panorama-gateway full-control enable"));
    }

    #[test]
    fn output_fits_the_result_budget_stdout_first() {
        // Small output is untouched.
        let (mut o, mut e) = ("a\n".to_string(), "\"b\"".to_string());
        assert_eq!(fit_output(&mut o, &mut e), (false, false));
        assert_eq!((o.as_str(), e.as_str()), ("a\n", "\"b\""));
        // 5 MB stdout + small stderr: untouched (the per-stream contract).
        let (mut o, mut e) = ("a".repeat(5_000_000), "e".repeat(900_000));
        assert_eq!(fit_output(&mut o, &mut e), (false, false));
        // Two full streams: stdout keeps 5 MB, stderr the rest of the budget.
        let (mut o, mut e) = ("a".repeat(5_000_000), "e".repeat(5_000_000));
        assert_eq!(fit_output(&mut o, &mut e), (false, true));
        assert_eq!((o.len(), e.len()), (5_000_000, 1_000_000));
        // Control bytes are measured as JSON writes them.
        let (mut o, mut e) = ("\0".repeat(2_000_000), String::new());
        assert_eq!(fit_output(&mut o, &mut e), (true, false));
        let encoded = serde_json::to_string(&o).unwrap().len() - 2;
        assert!(encoded <= 5_000_000 && encoded > 4_999_990, "{encoded}");
        // Multi-byte characters are cut at a boundary.
        let mut s = "é".repeat(10);
        assert!(cut_to_json_budget(&mut s, 5));
        assert_eq!(s, "éé");
        assert_eq!(json_size("\"\\\n\u{1}é"), 2 + 2 + 2 + 6 + 2);
    }

    #[test]
    fn reads_end_on_a_character_boundary() {
        let e = "é".as_bytes(); // C3 A9
        let euro = "€".as_bytes(); // E2 82 AC
        assert_eq!(utf8_complete_prefix(b"abc"), 3);
        assert_eq!(utf8_complete_prefix(&[b'a', e[0]]), 1);
        assert_eq!(utf8_complete_prefix(&[b'a', e[0], e[1]]), 3);
        assert_eq!(utf8_complete_prefix(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(utf8_complete_prefix(euro), 3);
        assert_eq!(utf8_complete_prefix(&[0xff]), 1);
        assert_eq!(utf8_complete_prefix(&[]), 0);
    }

    #[test]
    fn resource_ids_must_be_uuids() {
        assert!(is_uuid("b5e1c0de-0000-4000-8000-00000000abcd"));
        assert!(!is_uuid("b5e1c0de-0000-4000-8000-00000000abc"));
        assert!(!is_uuid("b5e1c0de-0000-4000-8000-00000000abcx"));
        assert!(!is_uuid("b5e1c0de00000-4000-8000-00000000abcd"));
        let o = resource_id(&json!({"resource_id": "x&team_id=eq.y"})).unwrap_err();
        assert_eq!(
            o.error.as_deref(),
            Some("Invalid resource_id in payload: expected the UUID of a team resource")
        );
        assert!(resource_id(&json!({"resource_id": " "})).is_err());
    }

    #[test]
    fn uuids_are_v4_shaped_and_distinct() {
        let a = new_uuid_v4();
        let b = new_uuid_v4();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn session_buffer_keeps_the_newest_bytes_with_absolute_offsets() {
        let mut st = State {
            buf: VecDeque::new(),
            start: 0,
            acked: 0,
            exited: false,
            exit_code: None,
            signal: None,
            last_activity: Instant::now(),
            last_activity_at: String::new(),
            stop: None,
        };
        st.push(&vec![b'a'; SESSION_BUFFER_BYTES]);
        st.push(b"xyz");
        assert_eq!(st.start, 3);
        assert_eq!(st.end(), SESSION_BUFFER_BYTES as u64 + 3);
        assert_eq!(st.buf.len(), SESSION_BUFFER_BYTES);
        assert_eq!(st.buf.back(), Some(&b'z'));
    }
}
