//! System calls of the terminal sessions: the pseudo-terminal pair, the window size, the
//! child's new session with the pty as its controlling terminal, the processes of a session,
//! and the user's login shell.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// The master and slave side of a new pseudo-terminal, both close-on-exec.
pub struct Pair {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// `/dev/pts/N`.
    pub tty: PathBuf,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a pseudo-terminal of `size` (what openpty(3) does, through the POSIX calls that every
/// libc has, so no libutil is needed).
pub fn open_pair(size: WinSize) -> io::Result<Pair> {
    // SAFETY: posix_openpt returns a new descriptor or -1; we own it from here.
    let master = unsafe {
        let fd = check(libc::posix_openpt(
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        OwnedFd::from_raw_fd(fd)
    };
    let m = master.as_raw_fd();
    set_cloexec(m);
    // SAFETY: grantpt/unlockpt/ptsname_r act on our master; the name buffer is ours and sized.
    let tty = unsafe {
        check(libc::grantpt(m))?;
        check(libc::unlockpt(m))?;
        let mut name = [0 as libc::c_char; 128];
        let r = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        PathBuf::from(OsStr::from_bytes(CStr::from_ptr(name.as_ptr()).to_bytes()))
    };
    let cpath = std::ffi::CString::new(tty.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pty name holds a NUL byte"))?;
    // SAFETY: open(2) of the slave path; a non-negative result is a new descriptor we own.
    let slave = unsafe {
        let fd = check(libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        OwnedFd::from_raw_fd(fd)
    };
    set_size(m, size)?;
    Ok(Pair { master, slave, tty })
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFD);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
        }
    }
}

pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// Sets the window size; the kernel sends SIGWINCH to the terminal's foreground process group.
pub fn set_size(master: RawFd, size: WinSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
    check(unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// In the forked child, before exec (async-signal-safe calls only): a new session whose
/// controlling terminal is the pty on stdin, default signal dispositions for what a terminal
/// sends (the daemon handles or blocks some of them), an empty signal mask.
pub fn become_session_leader() -> io::Result<()> {
    // SAFETY: setsid/ioctl/signal/sigprocmask are async-signal-safe and touch only this
    // process.
    unsafe {
        check(libc::setsid())?;
        check(libc::ioctl(0, libc::TIOCSCTTY as _, 0))?;
        for sig in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGCHLD,
            libc::SIGPIPE,
            libc::SIGWINCH,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    Ok(())
}

/// The process groups of every process in session `sid` (Linux /proc). The session leader's
/// own group (`sid`) is always included, so a system without /proc still reaches the shell.
pub fn session_groups(sid: i32) -> Vec<i32> {
    let mut groups = vec![sid];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return groups;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After "(comm)": state ppid pgrp session ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().take(4).collect();
        if f.len() == 4 && f[3].parse::<i32>().ok() == Some(sid) {
            if let Ok(pgrp) = f[2].parse::<i32>() {
                if pgrp > 1 && !groups.contains(&pgrp) {
                    groups.push(pgrp);
                }
            }
        }
    }
    groups
}

/// Sends `sigs` (in order) to every process group of session `sid`. The caller guarantees the
/// session leader is not reaped yet, so `sid` cannot name someone else's session.
pub fn signal_session(sid: i32, sigs: &[libc::c_int]) {
    if sid <= 1 {
        return;
    }
    for pgrp in session_groups(sid) {
        for &sig in sigs {
            super::super::signal_group(pgrp, sig);
        }
    }
}

/// The user's login shell: the passwd entry's shell when it is an executable, real shell
/// (not `nologin`/`false`), else `$SHELL`, else `/bin/bash`, else `/bin/sh`.
pub fn login_shell() -> PathBuf {
    let usable = |p: &Path| {
        let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
        p.is_absolute() && !matches!(name, "nologin" | "false" | "") && is_executable(p)
    };
    if let Some(p) = passwd_shell().filter(|p| usable(p)) {
        return p;
    }
    if let Some(p) = std::env::var_os("SHELL")
        .map(PathBuf::from)
        .filter(|p| usable(p))
    {
        return p;
    }
    for p in ["/bin/bash", "/bin/sh"] {
        if is_executable(Path::new(p)) {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("/bin/sh")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn passwd_shell() -> Option<PathBuf> {
    // SAFETY: getpwuid_r writes into our passwd and buffer; pw_shell points into the buffer,
    // which outlives the copy made below.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let r = libc::getpwuid_r(
            libc::getuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        );
        if r != 0 || out.is_null() || pw.pw_shell.is_null() {
            return None;
        }
        let shell = CStr::from_ptr(pw.pw_shell).to_bytes();
        (!shell.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(shell)))
    }
}
