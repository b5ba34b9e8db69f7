//! The live shell sessions: each one's output buffer and state, the reader ("pump") thread
//! that fills it, and [`ShellSessions`], the registry the runtime owns and hands to the
//! handlers. Process plumbing (poll, non-blocking pipes, waitid) is `exec::session`'s.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::exec::session::{kill_group, terminate_group, SessionChild, SessionInput};
use crate::exec::{PrivateDir, KILL_GRACE};
use crate::jobs::{ControlState, JobContext};
use crate::shutdown::Shutdown;
use crate::util::lock;

/// Output kept per session (stdout and stderr merged); older bytes are dropped.
pub const SESSION_BUFFER_BYTES: usize = 5_000_000;
/// Default idle expiry (no `write`/`read`; `status` does not count as activity);
/// `PANORAMA_GATEWAY_SHELL_SESSION_IDLE_MS`.
pub const DEFAULT_SESSION_IDLE_MS: u64 = 15 * 60 * 1000;
/// How long a write may wait for the shell to take its input.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const TICK: Duration = Duration::from_millis(100);

/// What the pump thread and the handlers share about one session.
pub(super) struct State {
    /// Retained output; `buf[0]` is at absolute offset `start`.
    pub buf: VecDeque<u8>,
    pub start: u64,
    /// Default cursor of `read`: the `next_cursor` last handed out.
    acked: u64,
    pub exited: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub last_activity: Instant,
    pub last_activity_at: String,
    /// Why the session must end (close, idle, shutdown); the pump kills the group.
    pub stop: Option<&'static str>,
}

impl State {
    fn new(now: &str) -> State {
        State {
            buf: VecDeque::new(),
            start: 0,
            acked: 0,
            exited: false,
            exit_code: None,
            signal: None,
            last_activity: Instant::now(),
            last_activity_at: now.to_string(),
            stop: None,
        }
    }
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
    pub fn touch(&mut self) {
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

/// One open shell session.
pub(super) struct Sess {
    pub id: String,
    pub team_id: String,
    pub resource_id: String,
    pub shell: String,
    pub created_at: String,
    pub pgid: i32,
    stdin: Mutex<Option<SessionInput>>,
    st: Mutex<State>,
    changed: Condvar,
    /// The private TMPDIR; removed when the session is dropped.
    _tmp: Option<PrivateDir>,
}

/// Who a new session is for, and what it runs.
pub(super) struct NewSession {
    pub team_id: String,
    pub resource_id: String,
    pub shell: String,
    pub tmp: Option<PrivateDir>,
}

impl Sess {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.st)
    }

    /// Waits until the shell has exited, at most until `deadline`.
    pub fn wait_exited(&self, deadline: Instant) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        while !st.exited && Instant::now() < deadline {
            st = self
                .changed
                .wait_timeout(st, TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st
    }

    fn close_input(&self) {
        *lock(&self.stdin) = None;
    }

    /// Asks the session to end: SIGTERM to its group now (the pump escalates to SIGKILL after
    /// the grace) and its stdin closed.
    pub fn request_stop(&self, why: &'static str) {
        let mut st = self.lock();
        if st.stop.is_none() && !st.exited {
            st.stop = Some(why);
            terminate_group(self.pgid);
        }
        drop(st);
        self.changed.notify_all();
        // Closing stdin makes a shell that ignores SIGTERM (interactive bash) read EOF and exit.
        self.close_input();
    }

    /// Writes all of `input` to the shell's stdin within [`WRITE_TIMEOUT`]. Err = (bytes
    /// written, why the rest was not).
    pub fn write_input(&self, input: &[u8]) -> Result<usize, (usize, String)> {
        let mut guard = lock(&self.stdin);
        let Some(stdin) = guard.as_mut() else {
            return Err((0, "the shell's input is closed".into()));
        };
        stdin.write_within(input, WRITE_TIMEOUT)
    }

    /// Waits up to `wait` for output past `cursor` (or the shell's exit), then puts `output`,
    /// `cursor`, `next_cursor`, `truncated`, `exited`, `exit_code` into `r`.
    pub fn read_into(
        &self,
        r: &mut Map<String, Value>,
        cursor: Option<u64>,
        max_bytes: usize,
        wait: Duration,
        ctx: &JobContext,
    ) {
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        // A cursor past the end means "from the end" (never skip bytes that arrive meanwhile).
        let want = cursor.unwrap_or(st.acked).min(st.end());
        while st.end() <= want && !st.exited && Instant::now() < deadline {
            if ctx.cancel.is_cancelled() || ctx.shutdown.is_draining() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now()).min(TICK);
            st = self
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

/// The open shell sessions of this gateway, by session id. Owned by the runtime, which ends
/// them at shutdown and when machine control is switched off.
#[derive(Default)]
pub struct ShellSessions {
    map: Mutex<HashMap<String, Arc<Sess>>>,
}

fn idle_limit() -> Duration {
    crate::tuning::shell_session_idle(DEFAULT_SESSION_IDLE_MS)
}

impl ShellSessions {
    pub fn new() -> ShellSessions {
        ShellSessions::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Sess>>> {
        lock(&self.map)
    }

    /// (all sessions, those of `team`'s `resource_id`).
    pub(super) fn counts(&self, team: &str, resource_id: &str) -> (usize, usize) {
        let map = self.lock();
        let here = map
            .values()
            .filter(|s| s.team_id == team && s.resource_id == resource_id)
            .count();
        (map.len(), here)
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Sess>> {
        self.lock().get(id).cloned()
    }

    pub(super) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Closes every session (SIGTERM to its group, SIGKILL after 2 s) and waits until their
    /// processes are reaped, at most `timeout`. For the daemon's shutdown.
    pub fn close_all(&self, timeout: Duration) {
        let all: Vec<Arc<Sess>> = self.lock().values().cloned().collect();
        if all.is_empty() {
            return;
        }
        log::info!(target: "shell", "closing shell sessions count={}", all.len());
        for s in &all {
            s.request_stop("shutdown");
        }
        let deadline = Instant::now() + timeout;
        for s in &all {
            drop(s.wait_exited(deadline));
        }
        let mut map = self.lock();
        for s in &all {
            map.remove(&s.id);
        }
    }

    /// Machine control must hold for a session to live on: when any gateway-side layer is off,
    /// every session is closed (process groups killed). Called by every shell job that finds a
    /// layer off, and by the runtime after each heartbeat's control-state read so that turning
    /// a toggle off acts without waiting for the next shell job.
    pub fn enforce_control(&self, has_backend: bool, c: ControlState) {
        if let Err(why) = super::access::control_denial(has_backend, c) {
            self.close_where(|_| true, &format!("machine control is off ({why})"));
        }
    }

    /// Stops the sessions `pick` selects; their pumps finish the kill and then forget them.
    pub(super) fn close_where(&self, pick: impl Fn(&Sess) -> bool, why: &str) {
        let picked: Vec<Arc<Sess>> = self
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
            s.request_stop("revoked");
        }
    }

    /// Drops sessions that exited on their own and were then left idle.
    pub(super) fn sweep(&self) {
        let idle = idle_limit();
        self.lock().retain(|_, s| {
            let st = s.lock();
            !(st.exited && st.last_activity.elapsed() >= idle)
        });
    }

    /// Registers a started shell and starts its reader thread. Err = why the thread could not
    /// start (the shell's group is killed then).
    pub(super) fn start(
        self: &Arc<Self>,
        new: NewSession,
        child: SessionChild,
        stdin: Option<SessionInput>,
        shutdown: Shutdown,
    ) -> Result<Arc<Sess>, String> {
        let now = crate::util::now_rfc3339();
        let sess = Arc::new(Sess {
            id: crate::util::new_uuid_v4(),
            team_id: new.team_id,
            resource_id: new.resource_id,
            shell: new.shell,
            created_at: now.clone(),
            pgid: child.pgid,
            stdin: Mutex::new(stdin),
            st: Mutex::new(State::new(&now)),
            changed: Condvar::new(),
            _tmp: new.tmp,
        });
        self.lock().insert(sess.id.clone(), sess.clone());
        let (me, s2) = (self.clone(), sess.clone());
        let spawned = std::thread::Builder::new()
            .name("shell-session".into())
            .spawn(move || me.pump(s2, child, shutdown));
        if let Err(e) = spawned {
            // The child went with the closure; its group still exists: kill it.
            kill_group(sess.pgid);
            self.remove(&sess.id);
            return Err(format!(
                "Could not start the shell session's reader thread: {e}"
            ));
        }
        Ok(sess)
    }

    /// Reads both pipes into the buffer until the shell has exited and its group is gone;
    /// kills the group on a stop request (close, idle expiry, daemon shutdown); reaps the shell.
    fn pump(&self, sess: Arc<Sess>, mut child: SessionChild, shutdown: Shutdown) {
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
                        terminate_group(sess.pgid);
                    }
                }
                if st.stop.is_some() && kill_at.is_none() {
                    kill_at = Some(now + KILL_GRACE);
                    drop(st);
                    sess.close_input();
                }
            }
            if kill_at.is_some_and(|k| now >= k) && exited_at.is_none() {
                kill_group(sess.pgid);
            }
            if exited_at.is_none() && child.has_exited() {
                exited_at = Some(now);
                // Background members of the group go with the leader.
                kill_group(sess.pgid);
            }
            if exited_at.is_some()
                && (!child.output_open()
                    || exited_at.is_some_and(|t| now >= t + Duration::from_secs(2)))
            {
                break;
            }
            child.read_output(TICK, &mut buf, &mut |data| {
                sess.lock().push(data);
                sess.changed.notify_all();
            });
        }
        // Reap under the lock: `request_stop` signals the group only while `exited` is false,
        // so nobody signals a process group id the system may hand out again after the reap.
        let mut st = sess.lock();
        let status = child.reap();
        st.exited = true;
        if let Some(s) = status {
            st.exit_code = s.code;
            st.signal = s.signal;
        }
        let why = st.stop;
        drop(st);
        sess.changed.notify_all();
        sess.close_input();
        log::info!(target: "shell", "shell session ended session_id={} reason={}", sess.id, why.unwrap_or("exited"));
        // Idle, shutdown and revoked stops remove the session; `close` removes it itself; a
        // shell that exited on its own stays readable until closed or idle.
        if matches!(why, Some("idle") | Some("shutdown") | Some("revoked")) {
            self.remove(&sess.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn session_buffer_keeps_the_newest_bytes_with_absolute_offsets() {
        let mut st = State::new("");
        st.push(&vec![b'a'; SESSION_BUFFER_BYTES]);
        st.push(b"xyz");
        assert_eq!(st.start, 3);
        assert_eq!(st.end(), SESSION_BUFFER_BYTES as u64 + 3);
        assert_eq!(st.buf.len(), SESSION_BUFFER_BYTES);
        assert_eq!(st.buf.back(), Some(&b'z'));
    }
}
