//! Signals through a self-pipe: the handler only writes the signal number to a pipe; a thread
//! reads it and acts (no work in signal handlers).
//!
//! SIGTERM/SIGINT → drain; a second one or SIGQUIT → stop now; SIGHUP → reopen the log and
//! re-read gateway.json's `full_control_enabled`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use crate::shutdown::Shutdown;

static PIPE_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls: errno save/restore and write(2).
    unsafe {
        let errno = *libc::__errno_location();
        let fd = PIPE_WRITE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = sig as u8;
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// The signals the daemon handles.
pub const HANDLED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP];

/// Installs the handlers and returns the read end of the self-pipe.
pub fn install() -> io::Result<File> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The read end blocks; the write end stays non-blocking so a full pipe never blocks the
    // handler (a lost duplicate signal byte does not matter).
    // SAFETY: fcntl on a descriptor we just created.
    unsafe {
        let fl = libc::fcntl(fds[0], libc::F_GETFL);
        libc::fcntl(fds[0], libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    PIPE_WRITE_FD.store(fds[1], Ordering::SeqCst);
    for sig in HANDLED {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: fds[0] is ours and owned by the File from now on.
    Ok(unsafe { File::from_raw_fd(fds[0]) })
}

/// Name for logs.
pub fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// Reads signals from the pipe forever and routes them. `on_hup` runs on the signal thread.
/// `stop_requested` is set on SIGTERM/SIGINT/SIGQUIT (a stop wins over a pending restart).
pub fn spawn_router(
    mut pipe: File,
    shutdown: Shutdown,
    on_hup: Box<dyn Fn() + Send>,
    stop_requested: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut buf = [0u8; 16];
            let mut stops = 0;
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                for &b in &buf[..n] {
                    let sig = b as libc::c_int;
                    match sig {
                        libc::SIGTERM | libc::SIGINT => {
                            stop_requested.store(true, Ordering::SeqCst);
                            stops += 1;
                            if stops == 1 {
                                log::info!(target: "daemon", "{} received: draining (finishing in-flight jobs); send it again or SIGQUIT to stop now", name(sig));
                                shutdown.request_drain();
                            } else {
                                log::warn!(target: "daemon", "{} received again: stopping now", name(sig));
                                shutdown.request_immediate();
                            }
                        }
                        libc::SIGQUIT => {
                            stop_requested.store(true, Ordering::SeqCst);
                            log::warn!(target: "daemon", "SIGQUIT received: stopping now");
                            shutdown.request_immediate();
                        }
                        libc::SIGHUP => on_hup(),
                        _ => {}
                    }
                }
            }
        })
}
