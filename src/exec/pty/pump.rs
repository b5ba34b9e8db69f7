//! The pump thread of one terminal session: reads the terminal into the ring, ends the session
//! on the idle limit, escalates a close to SIGKILL after the grace, kills what is left of the
//! session when the shell exits, and reaps the shell.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{sys, Shared, DRAIN_AFTER_EXIT, TICK};

pub(super) fn run(shared: Arc<Shared>, mut child: Child) {
    let pid = shared.pid;
    let fd = shared.master.as_raw_fd();
    let pidfd = super::super::pidfd_open(pid);
    let mut buf = vec![0u8; 64 * 1024];
    let mut master_open = true;
    let mut kill_at: Option<Instant> = None;
    let mut killed_hard = false;
    let mut exited_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if exited_at.is_none() {
            let (stop, idle) = {
                let st = shared.lock();
                (st.stop, st.last_activity.elapsed())
            };
            if stop.is_none() && shared.idle_timeout.is_some_and(|t| idle >= t) {
                shared.request_stop("idle");
            }
            if kill_at.is_none() && shared.lock().stop.is_some() {
                kill_at = Some(now + shared.grace);
            }
            if !killed_hard && kill_at.is_some_and(|k| now >= k) {
                log::info!(target: "exec", "terminal session did not end within the grace, killing it pid={pid}");
                sys::signal_session(pid, &[libc::SIGKILL]);
                killed_hard = true;
            }
            if super::super::leader_exited(pid) {
                exited_at = Some(now);
                // What the shell left behind in its session (background jobs, a process
                // holding the terminal) goes with it.
                sys::signal_session(pid, &[libc::SIGKILL]);
            }
        }
        if exited_at.is_some() && !master_open {
            break;
        }
        if exited_at.is_some_and(|t| now >= t + DRAIN_AFTER_EXIT) {
            log::warn!(target: "exec", "terminal still held after the shell exited, giving up on its output pid={pid}");
            break;
        }
        let mut fds = Vec::with_capacity(2);
        if master_open {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let (Some(p), None) = (&pidfd, exited_at) {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let mut wait = TICK;
        if let Some(k) = kill_at.filter(|_| !killed_hard) {
            wait = wait.min(k.saturating_duration_since(now));
        }
        let ms = wait.as_micros().div_ceil(1000) as libc::c_int;
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(ms.clamp(1, 20) as u64));
            continue;
        }
        // SAFETY: fds is a valid pollfd array for the duration of the call.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms);
        }
        if master_open {
            master_open = drain(&shared, fd, &mut buf);
        }
    }
    // Reap under the lock: request_stop signals the session only while `ended` is false, so
    // nobody signals a session id the system may hand out again after this.
    let mut st = shared.lock();
    // Forgotten while the shell is still an unreaped zombie (its ids not yet reusable).
    if let Some((children, owner)) = &shared.register {
        children.group_ended(owner, pid);
    }
    let status = child.wait();
    st.ended = true;
    match status {
        Ok(s) => {
            st.exit_code = s.code();
            st.signal = s.signal();
        }
        Err(e) => {
            log::warn!(target: "exec", "waiting for the terminal's shell failed pid={pid} error={e}")
        }
    }
    let why = *st.stop.get_or_insert("exited");
    log::info!(target: "exec", "terminal session ended pid={pid} reason={why} exit_code={:?} signal={:?}", st.exit_code, st.signal);
    drop(st);
    shared.changed.notify_all();
}

/// Reads what the terminal has (a bounded number of rounds, so a flood cannot starve the exit
/// and kill checks). False once no process holds the terminal any more (EIO) or it failed.
fn drain(shared: &Shared, fd: i32, buf: &mut [u8]) -> bool {
    for _ in 0..16 {
        // SAFETY: read(2) into our buffer from our master descriptor.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            shared.lock().ring.push(&buf[..n as usize]);
            shared.changed.notify_all();
            continue;
        }
        if n == 0 {
            return false;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return true,
            // EIO: every slave descriptor is closed; the session's processes are gone.
            _ if e.raw_os_error() == Some(libc::EIO) => return false,
            _ => {
                log::warn!(target: "exec", "reading the terminal failed pid={} error={e}", shared.pid);
                return false;
            }
        }
    }
    true
}
