//! The live shell sessions: each one a terminal session (`exec::pty`: the login shell on a
//! pseudo-terminal, its output ring, its pump thread) bound to a team and a resource, and
//! [`ShellSessions`], the registry the runtime owns and hands to the handlers.
//!
//! A session that ends for a reason other than its shell exiting (a close, the idle limit,
//! machine control switched off, the resource revoked) is forgotten and leaves a short note, so
//! the next job on it is told why it is gone instead of "not found".

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::exec::pty::{self, Pty, PtySpec, WinSize};
use crate::exec::{SpawnError, KILL_GRACE};
use crate::jobs::{control, ControlState};
use crate::util::lock;

/// Output kept per session; older bytes are dropped (and reported to a reader behind them).
pub const SESSION_BUFFER_BYTES: usize = 5_000_000;
/// Default idle expiry (no `write`/`read`; `status` does not count as activity);
/// `PANORAMA_GATEWAY_SHELL_SESSION_IDLE_MS`.
pub const DEFAULT_SESSION_IDLE_MS: u64 = 15 * 60 * 1000;
/// How long a write may wait for the terminal to take its input.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Notes kept about sessions that ended (newest last).
const ENDED_NOTES: usize = 256;

/// One open shell session.
pub(super) struct Sess {
    pub id: String,
    pub team_id: String,
    pub resource_id: String,
    pub shell: String,
    pub created_at: String,
    pub pty: Pty,
}

/// Who a new session is for, and what it runs.
pub(super) struct NewSession {
    pub team_id: String,
    pub resource_id: String,
    pub shell: std::path::PathBuf,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub tmp_base: Option<std::path::PathBuf>,
    pub size: WinSize,
    /// Told of the shell's session (the in-flight journal records it: the shell outlives the
    /// job that opened it, and a crash of the gateway must not leave it running).
    pub children: std::sync::Arc<crate::exec::Children>,
}

/// Why a session was forgotten, for the next job that names it.
struct Ended {
    id: String,
    team_id: String,
    resource_id: String,
    message: String,
}

/// The open shell sessions of this gateway, by session id. Owned by the runtime, which ends
/// them at shutdown and when machine control is switched off.
#[derive(Default)]
pub struct ShellSessions {
    map: Mutex<HashMap<String, Arc<Sess>>>,
    ended: Mutex<VecDeque<Ended>>,
}

pub(super) fn idle_limit() -> Duration {
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

    /// Why the session `id` of `team`'s `resource_id` was forgotten, if it was.
    pub(super) fn ended_note(&self, id: &str, team: &str, resource_id: &str) -> Option<String> {
        lock(&self.ended)
            .iter()
            .rev()
            .find(|e| e.id == id && e.team_id == team && e.resource_id == resource_id)
            .map(|e| e.message.clone())
    }

    /// Removes a session from the registry and keeps `message` for the next job naming it.
    /// Dropping the last handle of its terminal closes it if it is still running.
    pub(super) fn forget(&self, s: &Sess, message: String) {
        self.lock().remove(&s.id);
        let mut ended = lock(&self.ended);
        if ended.len() >= ENDED_NOTES {
            ended.pop_front();
        }
        ended.push_back(Ended {
            id: s.id.clone(),
            team_id: s.team_id.clone(),
            resource_id: s.resource_id.clone(),
            message,
        });
    }

    /// Closes every session (hangup and SIGTERM to each of its process groups, SIGKILL after
    /// 2 s) and waits until their shells are reaped, at most `timeout`. For the daemon's
    /// shutdown.
    pub fn close_all(&self, timeout: Duration) {
        let all: Vec<Arc<Sess>> = self.lock().values().cloned().collect();
        if all.is_empty() {
            return;
        }
        log::info!(target: "shell", "closing shell sessions count={}", all.len());
        for s in &all {
            s.pty.request_close("shutdown");
        }
        let deadline = std::time::Instant::now() + timeout;
        for s in &all {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !s.pty.wait_ended(left) {
                log::warn!(target: "shell", "shell session still ending at shutdown session_id={} pid={}", s.id, s.pty.pid());
            }
            self.forget(
                s,
                "Shell session was closed when the gateway stopped; open a new session".into(),
            );
        }
    }

    /// Machine control must hold for a session to live on: when any gateway-side layer is off,
    /// every session is closed (process groups killed). Called by every shell job that finds a
    /// layer off, by the runtime after each heartbeat's team-toggle read, and at SIGHUP (the
    /// install toggle).
    pub fn enforce_control(&self, c: ControlState) {
        if let Some(why) = control::denial(true, c) {
            self.close_where(
                |_| true,
                &format!("Shell session was closed because machine control was switched off ({why}); open a new session once it is back on"),
            );
        }
    }

    /// Closes the sessions `pick` selects (their pumps finish the kill and reap) and forgets
    /// them with `message`.
    pub(super) fn close_where(&self, pick: impl Fn(&Sess) -> bool, message: &str) {
        let picked: Vec<Arc<Sess>> = self.lock().values().filter(|s| pick(s)).cloned().collect();
        if picked.is_empty() {
            return;
        }
        log::info!(target: "shell", "closing shell sessions count={} reason={message:?}", picked.len());
        for s in &picked {
            s.pty.request_close("revoked");
            self.forget(s, message.to_string());
        }
    }

    /// Forgets sessions that ended: closed by the idle limit at once, a shell that exited on
    /// its own once it was then left idle too (until then it stays readable).
    pub(super) fn sweep(&self) {
        let idle = idle_limit();
        let all: Vec<Arc<Sess>> = self.lock().values().cloned().collect();
        for s in all {
            let st = s.pty.status();
            if st.alive {
                continue;
            }
            match st.stop {
                Some("exited") if st.idle < idle => {}
                Some("exited") | Some("idle") => self.forget(
                    &s,
                    format!(
                        "Shell session was closed after {} s without a read or write; open a new session",
                        idle.as_secs()
                    ),
                ),
                other => self.forget(
                    &s,
                    format!(
                        "Shell session has ended ({}); open a new session",
                        other.unwrap_or("exited")
                    ),
                ),
            }
        }
    }

    /// Starts the shell on a new terminal and registers it.
    pub(super) fn start(&self, new: NewSession) -> Result<Arc<Sess>, SpawnError> {
        let mut spec = PtySpec::new(&new.shell).arg("-l");
        spec.env = new.env;
        spec.cwd = Some("/".into());
        spec.size = new.size;
        spec.buffer_bytes = SESSION_BUFFER_BYTES;
        spec.grace = KILL_GRACE;
        spec.idle_timeout = Some(idle_limit());
        spec.tmp_base = new.tmp_base;
        let id = crate::util::new_uuid_v4();
        spec.register = Some((new.children, crate::jobs::journal::session_key(&id)));
        let pty = pty::spawn(spec)?;
        let sess = Arc::new(Sess {
            id,
            team_id: new.team_id,
            resource_id: new.resource_id,
            shell: new.shell.to_string_lossy().into_owned(),
            created_at: crate::util::now_rfc3339(),
            pty,
        });
        self.lock().insert(sess.id.clone(), sess.clone());
        Ok(sess)
    }
}
