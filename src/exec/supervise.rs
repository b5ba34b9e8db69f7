//! The loop that owns one running child until it is reaped (see [`super`]'s docs): each turn
//! it looks for a reason to stop the child (deadline, cancel, kill request, the line watcher:
//! SIGTERM to the group, SIGKILL after the grace), notices the leader's exit, then polls the
//! pipes and stdin until something is ready or the next tick; at the end it reaps the child
//! into an [`Output`].

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{ChildStderr, ChildStdin, ChildStdout};

use super::*;

/// Splits stdout into lines for a streaming parser, keeping at most [`LINE_LIMIT`] bytes of a
/// partial line (the tail, so the end of an over-long line still parses as garbage, not as a
/// different event).
struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Returns true when the callback asked to stop the child.
    fn feed(&mut self, data: &[u8], cb: &mut dyn FnMut(&str) -> bool) -> bool {
        let mut rest = data;
        let mut stop = false;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&rest[..i]);
            stop |= cb(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
            rest = &rest[i + 1..];
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > LINE_LIMIT {
            let cut = self.buf.len() - LINE_LIMIT;
            self.buf.drain(..cut);
        }
        stop
    }
    fn finish(&mut self, cb: &mut dyn FnMut(&str) -> bool) {
        if !self.buf.is_empty() {
            cb(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
        }
    }
}

/// Which of the polled descriptors are ready.
struct Ready {
    stdout: bool,
    stderr: bool,
    stdin: bool,
}

/// One child's state while it runs: its pipes and what is captured, the input left to write,
/// and how far stopping it has gone.
struct Supervisor<'s> {
    pid: i32,
    spec: &'s Spec,
    kill_request: Option<Arc<AtomicU64>>,
    deadline: Option<Instant>,
    out: Capture<ChildStdout>,
    err: Capture<ChildStderr>,
    /// Open while there is input left to write (dropping it gives the child EOF).
    stdin: Option<ChildStdin>,
    input: &'s [u8],
    written: usize,
    lines: LineSplitter,
    err_lines: LineSplitter,
    /// Set when the watcher asks to stop the child; acted on with the other stop reasons.
    abort: bool,
    stop: Stop,
    kill_at: Option<Instant>,
    killed_hard: bool,
    exited_at: Option<Instant>,
    buf: Vec<u8>,
    pidfd: Option<OwnedFd>,
    /// Without a pidfd, an exit with no pipes left is noticed by sleeping in growing steps.
    idle_step: Duration,
}

pub(super) fn supervise(
    child: &mut Child,
    pid: i32,
    spec: &Spec,
    (registration, kill_request): (Option<Registration<'_>>, Option<Arc<AtomicU64>>),
    mut on_line: Option<LineWatch<'_>>,
    started: Instant,
) -> Output {
    let mut s = Supervisor::new(child, pid, spec, kill_request, started);
    loop {
        let now = Instant::now();
        s.stop_if_asked(now);
        s.kill_after_grace(now);
        s.notice_exit(now);
        if s.finished(now) {
            break;
        }
        let Some(ready) = s.wait(now) else {
            continue;
        };
        if ready.stdout {
            s.abort |= drain(
                &mut s.out,
                &mut s.lines,
                &mut s.buf,
                Stream::Stdout,
                &mut on_line,
            );
        }
        if ready.stderr {
            s.abort |= drain(
                &mut s.err,
                &mut s.err_lines,
                &mut s.buf,
                Stream::Stderr,
                &mut on_line,
            );
        }
        if ready.stdin {
            s.write_input();
        }
    }
    s.reap(child, registration, on_line, started)
}

impl<'s> Supervisor<'s> {
    fn new(
        child: &mut Child,
        pid: i32,
        spec: &'s Spec,
        kill_request: Option<Arc<AtomicU64>>,
        started: Instant,
    ) -> Supervisor<'s> {
        let out = Capture::new(child.stdout.take(), spec.capture_limit, spec.spill.clone());
        let err = Capture::new(child.stderr.take(), spec.capture_limit, None);
        let mut stdin = child.stdin.take();
        if let Some(s) = &stdin {
            set_nonblocking(s.as_raw_fd());
        }
        let input: &[u8] = spec.stdin.as_deref().unwrap_or(&[]);
        if input.is_empty() {
            stdin = None; // closes it: the child sees EOF at once
        }
        Supervisor {
            pid,
            spec,
            kill_request,
            deadline: spec.timeout.map(|t| started + t),
            out,
            err,
            stdin,
            input,
            written: 0,
            lines: LineSplitter { buf: Vec::new() },
            err_lines: LineSplitter { buf: Vec::new() },
            abort: false,
            stop: Stop::None,
            kill_at: None,
            killed_hard: false,
            exited_at: None,
            buf: vec![0u8; 64 * 1024],
            pidfd: pidfd_open(pid),
            idle_step: Duration::from_millis(1),
        }
    }

    /// Reasons to stop the child, first one wins: the deadline, the cancel token, a kill
    /// request from the registry (its grace), the line watcher. SIGTERM to the group now,
    /// SIGKILL when the grace is over.
    fn stop_if_asked(&mut self, now: Instant) {
        if self.stop != Stop::None || self.exited_at.is_some() {
            return;
        }
        let spec = self.spec;
        let asked = self
            .kill_request
            .as_ref()
            .map(|k| k.load(Ordering::SeqCst))
            .unwrap_or(0);
        let why = if self.deadline.is_some_and(|d| now >= d) {
            Some((Stop::TimedOut, spec.grace))
        } else if spec.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            Some((Stop::Cancelled, spec.grace))
        } else if asked > 0 {
            Some((Stop::Killed, Duration::from_millis(asked - 1)))
        } else if self.abort {
            Some((Stop::Aborted, spec.grace))
        } else {
            None
        };
        if let Some((why, grace)) = why {
            self.stop = why;
            signal_group(self.pid, libc::SIGTERM);
            self.kill_at = Some(now + grace);
            self.stdin = None;
        }
    }

    fn kill_after_grace(&mut self, now: Instant) {
        if !self.killed_hard && self.kill_at.is_some_and(|k| now >= k) {
            signal_group(self.pid, libc::SIGKILL);
            self.killed_hard = true;
        }
    }

    fn notice_exit(&mut self, now: Instant) {
        if self.exited_at.is_none() && leader_exited(self.pid) {
            self.exited_at = Some(now);
            // Leftover members of the group (background grandchildren) go with the leader.
            signal_group(self.pid, libc::SIGKILL);
            self.killed_hard = true;
            self.stdin = None;
        }
    }

    /// The leader exited and its pipes are closed, or they stayed open too long after.
    fn finished(&self, now: Instant) -> bool {
        let pipes_open = self.out.pipe.is_some() || self.err.pipe.is_some();
        if self.exited_at.is_some() && !pipes_open {
            return true;
        }
        if self.exited_at.is_some_and(|t| now >= t + DRAIN_AFTER_EXIT) {
            // Someone outside the group holds the pipes; stop waiting for them.
            log::warn!(target: "exec", "output pipes still open after exit, giving up on them pid={}", self.pid);
            return true;
        }
        false
    }

    /// Waits for data, room on stdin, the leader's exit, or the next tick (at the latest the
    /// deadline or the end of the grace). None = nothing to look at this turn.
    fn wait(&mut self, now: Instant) -> Option<Ready> {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut slots = [usize::MAX; 3];
        let mut watch = |fd: i32, events: libc::c_short| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            fds.len() - 1
        };
        if let (Some(p), None) = (&self.pidfd, self.exited_at) {
            watch(p.as_raw_fd(), libc::POLLIN);
        }
        if let Some(p) = &self.out.pipe {
            slots[0] = watch(p.as_raw_fd(), libc::POLLIN);
        }
        if let Some(p) = &self.err.pipe {
            slots[1] = watch(p.as_raw_fd(), libc::POLLIN);
        }
        if let Some(s) = &self.stdin {
            slots[2] = watch(s.as_raw_fd(), libc::POLLOUT);
        }
        let mut wait = TICK;
        for t in [self.deadline, self.kill_at].into_iter().flatten() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        // Round up so we do not spin on a sub-millisecond remainder.
        let ms = (wait.as_micros().div_ceil(1000)) as libc::c_int;
        if fds.is_empty() {
            std::thread::sleep(self.idle_step.min(Duration::from_millis(ms.max(1) as u64)));
            self.idle_step = (self.idle_step * 2).min(TICK);
            return None;
        }
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn!(target: "exec", "poll failed error={e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            return None;
        }
        let ready = |slot: usize| slot != usize::MAX && fds[slot].revents != 0;
        Some(Ready {
            stdout: ready(slots[0]),
            stderr: ready(slots[1]),
            stdin: ready(slots[2]),
        })
    }

    /// Writes what stdin takes now; closes it when all is written or the child closed it.
    fn write_input(&mut self) {
        let Some(s) = self.stdin.as_mut() else {
            return;
        };
        match s.write(&self.input[self.written..]) {
            Ok(n) => {
                self.written += n;
                if self.written >= self.input.len() {
                    self.stdin = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EPIPE: the child closed stdin; the rest is not wanted.
            Err(_) => self.stdin = None,
        }
    }

    /// The last partial lines to the watcher, the group killed if the leader has not exited,
    /// the registration dropped, then the leader reaped.
    fn reap(
        mut self,
        child: &mut Child,
        registration: Option<Registration<'_>>,
        on_line: Option<LineWatch<'_>>,
        started: Instant,
    ) -> Output {
        drop(self.stdin.take());
        if let Some(cb) = on_line {
            self.lines.finish(&mut |l| cb(Stream::Stdout, l));
            self.err_lines.finish(&mut |l| cb(Stream::Stderr, l));
        }
        let pid = self.pid;
        // The leader is a zombie (or about to be, if we gave up on the pipes): reap it.
        if self.exited_at.is_none() {
            signal_group(pid, libc::SIGKILL);
        }
        // Unregister while the leader is still an unreaped zombie: nobody can signal its pgid
        // after this, so a reused pgid is never hit.
        drop(registration);
        let status = child.wait();
        let (exit_code, signal) = match status {
            Ok(s) => (s.code(), s.signal()),
            Err(e) => {
                log::warn!(target: "exec", "wait failed pid={pid} error={e}");
                (None, None)
            }
        };
        let input_len = self.input.len();
        Output {
            exit_code,
            signal,
            stdout: std::mem::take(&mut self.out.kept),
            stderr: std::mem::take(&mut self.err.kept),
            stdout_spill: self.out.spilled.take().map(Arc::new),
            stdout_truncated: self.out.truncated,
            stderr_truncated: self.err.truncated,
            stdout_total: self.out.total,
            stderr_total: self.err.total,
            stop: self.stop,
            duration: started.elapsed(),
            stdin_unwritten: input_len - self.written.min(input_len),
        }
    }
}

/// Reads a ready pipe until it is empty (at most 16 reads, so a flood cannot starve the other
/// checks for long), feeding the watcher its lines. True when the watcher asked to stop.
fn drain<R: Read + AsRawFd>(
    cap: &mut Capture<R>,
    lines: &mut LineSplitter,
    buf: &mut [u8],
    stream: Stream,
    on_line: &mut Option<LineWatch<'_>>,
) -> bool {
    let mut abort = false;
    for _ in 0..16 {
        match cap.read_some(buf) {
            Some(0) | None => break,
            Some(n) => {
                if let Some(cb) = on_line.as_deref_mut() {
                    abort |= lines.feed(&buf[..n], &mut |l| cb(stream, l));
                }
            }
        }
    }
    abort
}
