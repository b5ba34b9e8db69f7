//! Interactive programs on a pseudo-terminal: the remote shell's sessions. Knows processes and
//! terminals only (no job, no wire).
//!
//! [`spawn`] opens a pty, starts the program (the user's login shell, see [`login_shell`]) in a
//! new session with the pty as its controlling terminal, `TERM` set and the window size given,
//! so the program sees a real terminal: `tty` names `/dev/pts/N`, line editing and job control
//! work, `\x03` typed is SIGINT for the foreground job and `\x04` is end-of-file. One pump
//! thread per session ([`pump`]) reads the terminal into a bounded [`ring::Ring`] with
//! absolute offsets, notices the shell's exit, escalates a close to SIGKILL after the grace,
//! and reaps the shell, so a shell that ends on its own is reported, never left a zombie.
//!
//! A session is its processes: closing it signals every process group of the session (the
//! shell's and each job's), SIGHUP + SIGTERM (an interactive shell ignores SIGTERM but a
//! hangup ends it and its jobs), then SIGKILL after the grace; when the shell exits, whatever
//! is left of its session is killed before the shell is reaped. Dropping the last [`Pty`]
//! handle closes the session too.

mod pump;
mod ring;
mod sys;

pub use sys::{login_shell, WinSize};

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{set_var, PrivateDir, SpawnError, KILL_GRACE};
use ring::Ring;

/// The size a terminal gets when the caller names none.
pub const DEFAULT_SIZE: WinSize = WinSize {
    rows: 40,
    cols: 120,
};
/// `TERM` of the session's programs.
pub const DEFAULT_TERM: &str = "xterm-256color";
/// Output kept per session by default.
pub const DEFAULT_BUFFER_BYTES: usize = 5_000_000;
/// Longest sleep of the pump and of waiting readers, so stop requests act quickly.
const TICK: Duration = Duration::from_millis(100);
/// After the shell exited and its session was killed, how long to wait for the terminal to
/// report that no process holds it any more (a process that left the session may keep it).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(2000);

/// What to start on the terminal and how.
pub struct PtySpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment (the parent's is not inherited); `TERM` is set from `term`.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub size: WinSize,
    pub term: String,
    /// Output bytes kept; older bytes are dropped (and reported to readers behind them).
    pub buffer_bytes: usize,
    /// SIGTERM → SIGKILL grace of a close.
    pub grace: Duration,
    /// Close the session after this long without a read or a write.
    pub idle_timeout: Option<Duration>,
    /// When set, the program gets a private `TMPDIR`/`TMP`/`TEMP` (0700) created under this
    /// directory and removed when the session is gone.
    pub tmp_base: Option<PathBuf>,
    /// Tell these [`super::Children`] (their observer: the in-flight journal) of the session
    /// under this owner key when it starts and right before its shell is reaped.
    pub register: Option<(Arc<super::Children>, String)>,
}

impl PtySpec {
    /// Defaults: scrubbed parent environment, 120x40, 5 MB of output, 2 s grace, no idle limit,
    /// no private TMPDIR, working directory inherited.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        PtySpec {
            program: program.into(),
            args: Vec::new(),
            env: super::child_env(&[]),
            cwd: None,
            size: DEFAULT_SIZE,
            term: DEFAULT_TERM.to_string(),
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            grace: KILL_GRACE,
            idle_timeout: None,
            tmp_base: None,
            register: None,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
}

/// What the session's processes and handles share.
struct Shared {
    pid: i32,
    tty: PathBuf,
    master: OwnedFd,
    /// One writer at a time, so two writes never interleave their bytes.
    writer: Mutex<()>,
    st: Mutex<State>,
    changed: Condvar,
    grace: Duration,
    idle_timeout: Option<Duration>,
    register: Option<(Arc<super::Children>, String)>,
    /// The private TMPDIR; removed when the last reference goes.
    _tmp: Option<PrivateDir>,
}

struct State {
    ring: Ring,
    /// Default cursor of [`Pty::read`]: where the last read ended.
    acked: u64,
    /// The shell was reaped: no process of the session is signalled any more.
    ended: bool,
    exit_code: Option<i32>,
    signal: Option<i32>,
    last_activity: Instant,
    last_activity_at: SystemTime,
    /// Why the session is ending (a close, the idle limit; "exited" when the shell ended on
    /// its own); set once.
    stop: Option<&'static str>,
    size: WinSize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts ending the session: hangup and SIGTERM to each of its process groups now; the
    /// pump sends SIGKILL after the grace. No effect once ending.
    fn request_stop(&self, why: &'static str) {
        let mut st = self.lock();
        if st.stop.is_none() && !st.ended {
            st.stop = Some(why);
            log::info!(target: "exec", "closing terminal session pid={} reason={why}", self.pid);
            // Under the lock: the pump reaps the shell under it too, so the session id is
            // still ours.
            sys::signal_session(self.pid, &[libc::SIGHUP, libc::SIGTERM, libc::SIGCONT]);
        }
        drop(st);
        self.changed.notify_all();
    }
}

/// Dropping the last handle closes the session.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.request_stop("dropped");
    }
}

/// A running terminal session; clones share it.
#[derive(Clone)]
pub struct Pty {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// One read of the session's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOut {
    pub data: Vec<u8>,
    /// Offset of `data[0]`.
    pub cursor: u64,
    /// Offset after `data`: where the next read continues.
    pub next_cursor: u64,
    /// Bytes between the asked cursor and `cursor` that were dropped from the buffer before
    /// they were read (0 when nothing was lost).
    pub dropped: u64,
    /// More output is already buffered past `next_cursor`.
    pub more: bool,
    /// The shell has ended and was reaped (see `exit_code`/`signal`).
    pub ended: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// The session now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyStatus {
    pub pid: i32,
    pub tty: PathBuf,
    /// The shell has not been reaped yet.
    pub alive: bool,
    /// Why it is ending or ended: the reason given to [`Pty::close`], `"idle"`, or
    /// `"exited"` when the shell ended on its own; None while it runs.
    pub stop: Option<&'static str>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Time since the last read or write.
    pub idle: Duration,
    pub last_activity_at: SystemTime,
    pub buffer_start: u64,
    pub buffer_end: u64,
    pub size: WinSize,
}

/// Why a write did not take all of its bytes.
#[derive(Debug)]
pub enum WriteError {
    /// The session is closing or its shell has ended.
    Ended {
        why: &'static str,
        exit_code: Option<i32>,
    },
    /// The terminal did not take the rest within the timeout (the program is not reading).
    Stalled {
        written: usize,
        waited: Duration,
    },
    Io {
        written: usize,
        error: io::Error,
    },
}

impl WriteError {
    /// Bytes that did reach the terminal.
    pub fn written(&self) -> usize {
        match self {
            WriteError::Ended { .. } => 0,
            WriteError::Stalled { written, .. } | WriteError::Io { written, .. } => *written,
        }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Ended { why, exit_code } => {
                let how = match (why, exit_code) {
                    (&"exited", Some(c)) => format!("its shell exited with status {c}"),
                    (&"exited", None) => "its shell ended".to_string(),
                    (why, _) => format!("it was closed ({why})"),
                };
                write!(f, "the terminal session has ended: {how}; open a new session")
            }
            WriteError::Stalled { written, waited } => write!(
                f,
                "the terminal took {written} bytes and then nothing more for {} ms: the program in it is not reading input; send \\x03 to interrupt it or read its output",
                waited.as_millis()
            ),
            WriteError::Io { written, error } => write!(
                f,
                "writing to the terminal failed after {written} bytes: {error}"
            ),
        }
    }
}

impl std::error::Error for WriteError {}

/// Starts `spec.program` on a new pseudo-terminal. See the module docs.
pub fn spawn(spec: PtySpec) -> Result<Pty, SpawnError> {
    let err = |error: io::Error| SpawnError {
        program: spec.program.clone(),
        error,
        tmp_base: None,
    };
    let (tmp, mut env) = super::tmp::env_with_private_tmp(
        &spec.program,
        &spec.env,
        spec.tmp_base.as_deref(),
        "pgw-pty-",
    )?;
    set_var(&mut env, "TERM", &spec.term);
    if spec.size.rows == 0 || spec.size.cols == 0 {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a terminal needs at least one row and one column",
        )));
    }
    let pair = sys::open_pair(spec.size).map_err(|e| {
        err(io::Error::new(
            e.kind(),
            format!("could not open a pseudo-terminal ({e}); is /dev/pts mounted?"),
        ))
    })?;
    let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(dup(&pair.slave).map_err(err)?)
        .stdout(dup(&pair.slave).map_err(err)?)
        .stderr(dup(&pair.slave).map_err(err)?);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(|| {
            sys::become_session_leader()?;
            super::mark_inherited_fds_cloexec();
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The Command holds the slave copies it handed out: drop them, and ours, so the master
    // reports the end once the session's processes have closed the terminal.
    drop(cmd);
    let sys::Pair { master, slave, tty } = pair;
    drop(slave);
    let child = spawned.map_err(err)?;
    sys::set_nonblocking(master.as_raw_fd());
    let pid = child.id() as i32;
    if let Some((children, owner)) = &spec.register {
        children.group_started(owner, pid);
    }
    let now = Instant::now();
    let shared = Arc::new(Shared {
        pid,
        tty,
        master,
        writer: Mutex::new(()),
        st: Mutex::new(State {
            ring: Ring::new(spec.buffer_bytes),
            acked: 0,
            ended: false,
            exit_code: None,
            signal: None,
            last_activity: now,
            last_activity_at: SystemTime::now(),
            stop: None,
            size: spec.size,
        }),
        changed: Condvar::new(),
        grace: spec.grace,
        idle_timeout: spec.idle_timeout,
        register: spec.register.clone(),
        _tmp: tmp,
    });
    let s2 = shared.clone();
    let started = std::thread::Builder::new()
        .name(format!("pty-{pid}"))
        .spawn(move || pump::run(s2, child));
    if let Err(e) = started {
        // The Child went with the closure that never ran (dropping it neither kills nor
        // reaps): kill the session and reap the shell here, by pid.
        sys::signal_session(pid, &[libc::SIGKILL]);
        // SAFETY: waitpid on our own, unreaped child.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        if let Some((children, owner)) = &spec.register {
            children.group_ended(owner, pid);
        }
        return Err(err(io::Error::new(
            e.kind(),
            format!("could not start the terminal's reader thread: {e}"),
        )));
    }
    log::info!(target: "exec", "terminal session started pid={pid} tty={} program={} size={}x{}", shared.tty.display(), spec.program.display(), spec.size.cols, spec.size.rows);
    Ok(Pty {
        _owner: Arc::new(Owner(shared.clone())),
        shared,
    })
}

impl Pty {
    /// The shell's pid, also its session and process group id.
    pub fn pid(&self) -> i32 {
        self.shared.pid
    }

    /// The terminal's path (`/dev/pts/N`).
    pub fn tty(&self) -> &std::path::Path {
        &self.shared.tty
    }

    /// Types `data` into the terminal, as a keyboard would: all of it within `timeout`, or the
    /// error says how much went in. Counts as activity.
    pub fn write(&self, data: &[u8], timeout: Duration) -> Result<usize, WriteError> {
        self.ended_error()?;
        self.touch();
        let _one = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        let fd = self.shared.master.as_raw_fd();
        let started = Instant::now();
        let mut written = 0;
        while written < data.len() {
            let rest = &data[written..];
            // SAFETY: write(2) from a valid slice to our master descriptor.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n >= 0 {
                written += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    self.ended_error()?;
                    let waited = started.elapsed();
                    if waited >= timeout {
                        return Err(WriteError::Stalled { written, waited });
                    }
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    let ms = (timeout - waited).min(TICK).as_millis().max(1) as libc::c_int;
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe {
                        libc::poll(&mut p, 1, ms);
                    }
                }
                _ => {
                    // EIO: no process holds the terminal any more; say so if that is why.
                    self.ended_error()?;
                    return Err(WriteError::Io { written, error: e });
                }
            }
        }
        Ok(written)
    }

    fn ended_error(&self) -> Result<(), WriteError> {
        let st = self.shared.lock();
        match st.stop {
            Some(why) => Err(WriteError::Ended {
                why,
                exit_code: st.exit_code,
            }),
            None if st.ended => Err(WriteError::Ended {
                why: "exited",
                exit_code: st.exit_code,
            }),
            None => Ok(()),
        }
    }

    /// Sets the window size; the program in the foreground gets SIGWINCH.
    pub fn resize(&self, size: WinSize) -> io::Result<()> {
        if size.rows == 0 || size.cols == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a terminal needs at least one row and one column",
            ));
        }
        let mut st = self.shared.lock();
        if st.ended || st.stop.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the terminal session has ended",
            ));
        }
        sys::set_size(self.shared.master.as_raw_fd(), size)?;
        st.size = size;
        Ok(())
    }

    /// Marks the session as used now (reads and writes do this themselves).
    pub fn touch(&self) {
        let mut st = self.shared.lock();
        st.last_activity = Instant::now();
        st.last_activity_at = SystemTime::now();
    }

    /// Output from `cursor` (None: where the last read ended), at most `max` bytes, never
    /// ending inside a UTF-8 character unless the output ended there. When nothing is there
    /// yet, waits up to `wait` for new bytes (or the shell's end, or `interrupted()`).
    /// Counts as activity.
    pub fn read(
        &self,
        cursor: Option<u64>,
        max: usize,
        wait: Duration,
        interrupted: &dyn Fn() -> bool,
    ) -> ReadOut {
        let deadline = Instant::now() + wait;
        let mut st = self.shared.lock();
        st.last_activity = Instant::now();
        st.last_activity_at = SystemTime::now();
        let want = cursor.unwrap_or(st.acked);
        while st.ring.end() <= want && !st.ended && !interrupted() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, (deadline - now).min(TICK))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let c = st.ring.read(want, max.max(1), st.ended);
        st.acked = c.to;
        ReadOut {
            more: c.to < st.ring.end(),
            data: c.data,
            cursor: c.from,
            next_cursor: c.to,
            dropped: c.dropped,
            ended: st.ended,
            exit_code: st.exit_code,
            signal: st.signal,
        }
    }

    pub fn status(&self) -> PtyStatus {
        let st = self.shared.lock();
        PtyStatus {
            pid: self.shared.pid,
            tty: self.shared.tty.clone(),
            alive: !st.ended,
            stop: st.stop,
            exit_code: st.exit_code,
            signal: st.signal,
            idle: st.last_activity.elapsed(),
            last_activity_at: st.last_activity_at,
            buffer_start: st.ring.start(),
            buffer_end: st.ring.end(),
            size: st.size,
        }
    }

    /// Starts closing the session (see the module docs) without waiting.
    pub fn request_close(&self, why: &'static str) {
        self.shared.request_stop(why);
    }

    /// Closes the session and waits until its shell is reaped (at most the grace plus a few
    /// seconds; a session that outlasts that is logged and left to its pump).
    pub fn close(&self, why: &'static str) -> PtyStatus {
        self.shared.request_stop(why);
        let limit = self.shared.grace + DRAIN_AFTER_EXIT + Duration::from_secs(1);
        if !self.wait_ended(limit) {
            log::warn!(target: "exec", "terminal session still not reaped after {} ms pid={}", limit.as_millis(), self.shared.pid);
        }
        self.status()
    }

    /// Waits up to `limit` for the shell to be reaped; true when it was.
    pub fn wait_ended(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        while !st.ended {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests;
