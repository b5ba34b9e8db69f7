//! Child processes: spawn in a new process group, scrubbed environment, stdin/stdout/stderr
//! piped, poll(2) on both outputs with bounded capture and a deadline, kill of the whole group
//! with a grace period. Knows processes only. Owner: Providers (issue 5).
//!
//! One call of [`run`] owns one child from spawn to reap, in the calling thread: no thread per
//! pipe. The loop polls stdout, stderr and (while there is input left) stdin, wakes at least
//! every 100 ms to look at the deadline, the [`CancelToken`] and kill requests from the
//! [`Children`] registry, and ends only when the child is reaped. The child leads its own
//! process group; every signal goes to the whole group, so grandchildren (tools, MCP servers,
//! `sh -c` pipelines) go with it. When the leader exits, members still left in its group are
//! killed before the leader is reaped (the pgid cannot be reused while the leader is a zombie).

mod capture;
mod env;
pub mod groups;
pub mod pty;
mod supervise;
mod tmp;

use capture::Capture;
pub use capture::{Spill, SpillFile};
#[cfg(test)]
use env::child_env_from;
pub use env::{child_env, get_var, set_var, ENV_FILE_NAMES_VAR};
use supervise::supervise;
pub use tmp::{ensure_private_dir, write_private_file, PrivateDir};

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Captured bytes kept per stream (PROTOCOL.md §12).
pub const CAPTURE_LIMIT: usize = 5_000_000;
/// SIGTERM → SIGKILL grace for timeouts and kills.
pub const KILL_GRACE: Duration = Duration::from_millis(2000);
/// Longest partial line kept for the line callback (PROTOCOL.md §12 stream buffer).
pub const LINE_LIMIT: usize = 200_000;
/// The loop never sleeps longer than this, so cancel and kill requests act quickly.
const TICK: Duration = Duration::from_millis(100);
/// After the leader exited and its group was killed, how long to wait for the pipes to close
/// (a process that left the group may still hold them).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(2000);

/// Cancellation flag for one job; cheap to clone. `exec::run` polls it while a child runs.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One registered child: its job, its process group and a kill request the owning loop reads.
#[derive(Debug)]
struct Entry {
    key: u64,
    job_id: String,
    pgid: i32,
    /// 0 = no request; otherwise the requested grace in ms + 1.
    kill: Arc<AtomicU64>,
}

/// A process group started or ended for an owner (a job id, or any key the caller chose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupNote {
    /// `start_time`: the leader's, from [`groups::start_time`] (None when /proc could not
    /// tell, for example the leader already exited).
    Started {
        owner: String,
        pgid: i32,
        start_time: Option<u64>,
    },
    Ended {
        owner: String,
        pgid: i32,
    },
}

/// Told of every process group started and ended through [`Children`]; set by whoever keeps a
/// record of them (exec does not know what the record is for).
pub type GroupObserver = Arc<dyn Fn(&GroupNote) + Send + Sync>;

#[derive(Default)]
struct Observer(Mutex<Option<GroupObserver>>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Registry of running children by job id (process group ids), so cancellation and shutdown
/// can reach them. The thread running the child does the signalling and the reaping; the
/// registry only asks it to (so a child is never reaped twice and never left a zombie).
#[derive(Debug, Default)]
pub struct Children {
    entries: Mutex<Vec<Entry>>,
    changed: Condvar,
    next: AtomicU64,
    observer: Observer,
}

/// Removes the entry when the run ends, whatever the path out.
struct Registration<'a> {
    children: &'a Children,
    key: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut g = self.children.lock();
        let gone: Vec<(String, i32)> = g
            .iter()
            .filter(|e| e.key == self.key)
            .map(|e| (e.job_id.clone(), e.pgid))
            .collect();
        g.retain(|e| e.key != self.key);
        self.children.changed.notify_all();
        drop(g);
        for (owner, pgid) in gone {
            self.children.group_ended(&owner, pgid);
        }
    }
}

impl Children {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        crate::util::lock(&self.entries)
    }

    /// Sets the one observer of started and ended process groups.
    pub fn set_observer(&self, o: GroupObserver) {
        *self.observer.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
    }

    fn notify(&self, note: GroupNote) {
        let o = self
            .observer
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(o) = o {
            o(&note);
        }
    }

    /// Tells the observer that `owner` started the process group `pgid` (its leader's pid).
    /// [`run`] does it for registered children; long-lived children started elsewhere (shell
    /// sessions) call it themselves, right after the spawn.
    pub fn group_started(&self, owner: &str, pgid: i32) {
        self.notify(GroupNote::Started {
            owner: owner.to_string(),
            pgid,
            start_time: groups::start_time(pgid),
        });
    }

    /// Tells the observer that the process group `pgid` of `owner` is gone.
    pub fn group_ended(&self, owner: &str, pgid: i32) {
        self.notify(GroupNote::Ended {
            owner: owner.to_string(),
            pgid,
        });
    }

    fn register(&self, job_id: &str, pgid: i32) -> (Registration<'_>, Arc<AtomicU64>) {
        self.group_started(job_id, pgid);
        let key = self.next.fetch_add(1, Ordering::SeqCst);
        let kill = Arc::new(AtomicU64::new(0));
        self.lock().push(Entry {
            key,
            job_id: job_id.to_string(),
            pgid,
            kill: kill.clone(),
        });
        self.changed.notify_all();
        (
            Registration {
                children: self,
                key,
            },
            kill,
        )
    }

    fn request(e: &Entry, grace: Duration) {
        let ms = grace.as_millis().min(u64::MAX as u128 - 1) as u64 + 1;
        // Keep the shortest grace asked for.
        let _ = e
            .kill
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
                if cur == 0 || ms < cur {
                    Some(ms)
                } else {
                    None
                }
            });
        // Signal at once too: the owning loop may be up to one tick away. No grace: SIGKILL
        // now (the pgid is still ours: the entry goes before the leader is reaped).
        let sig = if grace.is_zero() {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        signal_group(e.pgid, sig);
    }

    /// SIGTERM the process groups of one job's children, SIGKILL after `grace`.
    pub fn kill_job(&self, job_id: &str, grace: std::time::Duration) {
        let g = self.lock();
        for e in g.iter().filter(|e| e.job_id == job_id) {
            log::info!(target: "exec", "killing job children job_id={} pgid={}", job_id, e.pgid);
            Self::request(e, grace);
        }
    }

    /// SIGTERM every registered process group, SIGKILL after `grace` (at once when it is zero);
    /// returns when all are gone.
    pub fn kill_all(&self, grace: std::time::Duration) {
        let mut g = self.lock();
        if g.is_empty() {
            return;
        }
        log::info!(target: "exec", "killing all children count={}", g.len());
        for e in g.iter() {
            Self::request(e, grace);
        }
        // The owners escalate to SIGKILL after `grace`; allow them that plus the drain window.
        let deadline = Instant::now() + grace + DRAIN_AFTER_EXIT + Duration::from_secs(1);
        while !g.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                log::warn!(target: "exec", "children still registered after kill_all count={}", g.len());
                return;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many children are running now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to run and how.
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    /// The complete child environment (the parent's is not inherited). Build it with
    /// [`child_env`].
    pub env: Vec<(OsString, OsString)>,
    /// Bytes written to stdin (then closed); None gives the child an empty stdin.
    pub stdin: Option<Vec<u8>>,
    /// Wall-clock limit; None means no limit.
    pub timeout: Option<Duration>,
    /// SIGTERM → SIGKILL grace on timeout and cancel.
    pub grace: Duration,
    /// Bytes kept per stream; the rest is read and counted but dropped.
    pub capture_limit: usize,
    /// Keep only this much of stdout on the heap and the rest of it in an unlinked file (for
    /// outputs that may be large, such as model runs); None keeps all of it in memory.
    pub spill: Option<Spill>,
    pub cancel: Option<CancelToken>,
    /// Register the child under this job id so [`Children::kill_job`] reaches it.
    pub register: Option<(Arc<Children>, String)>,
    /// When set, the child gets a private `TMPDIR`/`TMP`/`TEMP` (0700) created under this
    /// directory and removed after the run.
    pub tmp_base: Option<PathBuf>,
}

impl Spec {
    /// Defaults: scrubbed parent environment, no stdin, no timeout, 2 s grace, 5 MB capture.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Spec {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: child_env(&[]),
            stdin: None,
            timeout: None,
            grace: KILL_GRACE,
            capture_limit: CAPTURE_LIMIT,
            spill: None,
            cancel: None,
            register: None,
            tmp_base: Some(std::env::temp_dir()),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// Why the run ended early, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    None,
    TimedOut,
    Cancelled,
    /// Killed through the [`Children`] registry (job cancel or shutdown).
    Killed,
    /// Stopped because the line watcher asked for it (for example: the CLI keeps retrying a
    /// network it cannot reach).
    Aborted,
}

/// Which output stream a watched line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Sees each complete output line as it arrives; returning true stops the child (SIGTERM to
/// its group, SIGKILL after the grace) and the run ends with [`Stop::Aborted`].
pub type LineWatch<'a> = &'a mut dyn FnMut(Stream, &str) -> bool;

/// The result of a run that started.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code when the child exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when the child was killed by a signal.
    pub signal: Option<i32>,
    /// The kept stdout; with [`Spec::spill`], only its head (the rest: [`Output::stdout_spill`]).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The kept stdout past the spill threshold, in an unlinked file.
    pub stdout_spill: Option<Arc<SpillFile>>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Total bytes the child wrote, kept or not (what the exec tests measure capture by).
    #[cfg_attr(not(test), allow(dead_code))]
    pub stdout_total: u64,
    #[cfg_attr(not(test), allow(dead_code))]
    pub stderr_total: u64,
    pub stop: Stop,
    pub duration: Duration,
    /// The child did not read all of the stdin input (it closed stdin or exited first).
    #[cfg_attr(not(test), allow(dead_code))]
    pub stdin_unwritten: usize,
}

impl Output {
    /// Exit code 0, not stopped.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.stop == Stop::None
    }
    pub fn timed_out(&self) -> bool {
        self.stop == Stop::TimedOut
    }
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// All kept stdout bytes, the spilled part read back (borrowed when nothing was spilled).
    pub fn stdout_bytes(&self) -> io::Result<std::borrow::Cow<'_, [u8]>> {
        capture::all_bytes(&self.stdout, self.stdout_spill.as_ref())
    }
    /// Kept stdout bytes, in memory and spilled.
    #[cfg(test)]
    pub fn stdout_kept(&self) -> usize {
        self.stdout.len() + self.stdout_spill.as_ref().map_or(0, |s| s.len())
    }
    /// The number of characters of the kept stdout decoded lossily, without decoding it all
    /// into memory at once.
    pub fn stdout_chars(&self) -> io::Result<usize> {
        capture::lossy_chars(&self.stdout, self.stdout_spill.as_ref())
    }
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The child could not be started (or an I/O error broke the loop before it started).
#[derive(Debug)]
pub struct SpawnError {
    pub program: PathBuf,
    pub error: io::Error,
    /// Set when the private TMPDIR (under this directory) could not be created.
    pub tmp_base: Option<PathBuf>,
}

impl SpawnError {
    pub fn not_found(&self) -> bool {
        self.tmp_base.is_none() && self.error.kind() == io::ErrorKind::NotFound
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(base) = &self.tmp_base {
            return write!(
                f,
                "could not create a private temporary directory under {} for {}: {}; check that it exists and is writable",
                base.display(),
                self.program.display(),
                self.error
            );
        }
        let what = match self.error.kind() {
            io::ErrorKind::NotFound => "not found (is it installed and on PATH?)".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied (is it executable?)".to_string(),
            _ => self.error.to_string(),
        };
        write!(f, "could not start {}: {}", self.program.display(), what)
    }
}

impl std::error::Error for SpawnError {}

/// Sends `sig` to every process of group `pgid`. Errors (the group is already gone) are fine.
pub fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid addresses a process group; no memory involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Makes `cmd` start in a process group of its own (so the whole group can be signalled) with
/// no descriptor of the gateway beyond its stdio. [`run`] starts every pipe child through this.
///
/// The descriptors are marked close-on-exec here, in the gateway, rather than between fork and
/// exec: with no `pre_exec` closure, std starts the child with `posix_spawn` (a vfork-style
/// clone that shares the gateway's memory until the exec) instead of `fork` (which copies every
/// page table of a process with a dozen threads first), which keeps a `shell_exec` of `true`
/// within a few milliseconds. Every descriptor the gateway opens itself is close-on-exec
/// already; this catches the ones it inherited. (The remote shell's terminal sessions need
/// `setsid` in the child, so they fork and mark in the child.)
pub fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    mark_inherited_fds_cloexec();
}

/// Descriptors the gateway itself inherited without CLOEXEC (a parent's jobserver pipe, a
/// launcher's log fd) must not reach the CLI: marks every fd above 2 close-on-exec (not
/// closed: they may be in use). Async-signal-safe (close_range / fcntl only), so a forked
/// child may call it before exec too.
fn mark_inherited_fds_cloexec() {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: raw syscall with integer arguments.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        };
        if r == 0 {
            return;
        }
    }
    // Older kernels and other systems: walk a bounded range.
    // SAFETY: getrlimit/fcntl are async-signal-safe and touch only our own descriptors.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            (rl.rlim_cur as u64).min(65_536) as i32
        } else {
            1024
        };
        for fd in 3..max {
            let fl = libc::fcntl(fd, libc::F_GETFD);
            if fl >= 0 && fl & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
            }
        }
    }
}

/// True when the child has exited; it is left a zombie (WNOWAIT) so its pid, and so its pgid,
/// stay reserved until we reap it.
fn leader_exited(pid: i32) -> bool {
    matches!(peek_exit(pid), Ok(true))
}

/// Whether `pid` has exited, without reaping it (waitid with WNOWAIT); Err when it cannot be
/// waited for (not our child any more).
fn peek_exit(pid: i32) -> io::Result<bool> {
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
        Ok(info.si_pid() == pid)
    }
}

/// A descriptor that becomes readable when `pid` exits (Linux 5.3+), so the loop wakes at
/// once instead of at the next tick. None where unsupported.
/// Waits for a process (not necessarily our child) to exit, through a pidfd: wakes the moment
/// it is gone instead of polling.
pub struct ExitWatch(std::os::fd::OwnedFd);

impl ExitWatch {
    /// None when the kernel has no pidfd (before Linux 5.3) or the process is already gone.
    pub fn new(pid: i32) -> Option<ExitWatch> {
        pidfd_open(pid).map(ExitWatch)
    }

    /// True once the process has exited; false when `d` passed first.
    pub fn wait(&self, d: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = d.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut fd, 1, ms) };
        r > 0
    }
}

fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::FromRawFd;
        // SAFETY: raw syscall with integer arguments; a non-negative result is a new fd
        // (close-on-exec by definition) that we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            return Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
        }
    }
    let _ = pid;
    None
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

/// Runs a child to completion. See the module docs. `on_line` gets each complete stdout and
/// stderr line (without the newline) as it arrives, and may stop the child.
pub fn run(spec: Spec, on_line: Option<LineWatch<'_>>) -> Result<Output, SpawnError> {
    let started = Instant::now();
    let spawn_err = |error| SpawnError {
        program: spec.program.clone(),
        error,
        tmp_base: None,
    };
    let (tmp, env) = tmp::env_with_private_tmp(
        &spec.program,
        &spec.env,
        spec.tmp_base.as_deref(),
        "pgw-tmp-",
    )?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    isolate(&mut cmd);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let pid = child.id() as i32;
    let registration = spec
        .register
        .as_ref()
        .map(|(children, job)| children.register(job, pid));
    let (registration, kill_request) = match registration {
        Some((r, k)) => (Some(r), Some(k)),
        None => (None, None),
    };
    let out = supervise(
        &mut child,
        pid,
        &spec,
        (registration, kill_request),
        on_line,
        started,
    );
    drop(tmp);
    Ok(out)
}

#[cfg(test)]
mod tests;
