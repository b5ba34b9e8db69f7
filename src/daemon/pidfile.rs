//! The pid file, flock'ed by the running daemon for its whole life. Whoever holds the lock is
//! the gateway; a file nobody holds is stale (a crashed daemon) and is replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::secure;

/// What the pid file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidState {
    /// No daemon holds the lock. `stale_pid` is the pid left in a stale file.
    NotRunning { stale_pid: Option<u32> },
    /// A daemon holds the lock; its pid.
    Running(u32),
}

/// The held lock; dropping it (or process exit) releases it. Use [`PidLock::release`] for an
/// orderly stop: it removes the file first.
#[derive(Debug)]
pub struct PidLock {
    file: File,
    path: PathBuf,
}

#[derive(Debug)]
pub enum AcquireError {
    AlreadyRunning(u32),
    Failed(String),
}

fn try_flock(f: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).ok()?;
    f.take(64).read_to_string(&mut s).ok()?;
    s.trim().parse::<u32>().ok().filter(|p| *p > 0)
}

/// Reads the pid of the daemon holding the lock, waiting briefly for a daemon that has just
/// taken the lock to write its pid.
fn holder_pid(f: &mut File) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if let Some(p) = read_pid(f) {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Is a daemon running? Reads the lock without disturbing it (a shared lock for a moment).
pub fn probe(path: &Path) -> io::Result<PidState> {
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(PidState::NotRunning { stale_pid: None })
        }
        Err(e) => return Err(e),
    };
    if try_flock(&f, libc::LOCK_SH)? {
        let pid = read_pid(&mut f);
        // dropping f releases the shared lock
        Ok(PidState::NotRunning { stale_pid: pid })
    } else {
        Ok(PidState::Running(holder_pid(&mut f).unwrap_or(0)))
    }
}

/// Takes the lock and writes our pid. A stale file is reused. A lock held by someone else is
/// `AlreadyRunning` (after a short retry: a `status` may hold a shared lock for a moment).
pub fn acquire(path: &Path) -> Result<PidLock, AcquireError> {
    let fail = |e: String| AcquireError::Failed(e);
    for _attempt in 0..5 {
        let mut f = secure::open_rw_secure(path).map_err(|e| fail(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_millis(300);
        let locked = loop {
            match try_flock(&f, libc::LOCK_EX) {
                Ok(true) => break true,
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(false) => break false,
                Err(e) => return Err(fail(format!("cannot lock {}: {e}", path.display()))),
            }
        };
        if !locked {
            return Err(AcquireError::AlreadyRunning(
                holder_pid(&mut f).unwrap_or(0),
            ));
        }
        // The file may have been removed (an orderly stop) between open and lock: then our
        // lock is on an orphan inode. Start over on the current file.
        let same = match (f.metadata(), fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            continue;
        }
        let write = (|| -> io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            f.sync_all()
        })();
        write.map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
        return Ok(PidLock {
            file: f,
            path: path.to_path_buf(),
        });
    }
    Err(fail(format!(
        "cannot take the lock on {}: it keeps being replaced; is another gateway starting?",
        path.display()
    )))
}

impl PidLock {
    /// Removes the pid file, then releases the lock.
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Removes a stale pid file (nobody holds its lock). Returns the stale pid when one was removed;
/// `Ok(None)` when there was no file or a daemon holds it.
pub fn remove_stale(path: &Path) -> io::Result<Option<u32>> {
    let mut f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !try_flock(&f, libc::LOCK_EX)? {
        return Ok(None);
    }
    let pid = read_pid(&mut f);
    let same = match (f.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino(),
        _ => false,
    };
    if same {
        fs::remove_file(path)?;
    }
    Ok(pid.or(Some(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_probe_release() {
        let d = std::env::temp_dir().join(format!("pg-pid-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let p = d.join("gateway.pid");
        assert_eq!(probe(&p).unwrap(), PidState::NotRunning { stale_pid: None });
        fs::write(&p, "999999\n").unwrap();
        assert_eq!(
            probe(&p).unwrap(),
            PidState::NotRunning {
                stale_pid: Some(999999)
            }
        );
        let l = acquire(&p).unwrap();
        assert_eq!(probe(&p).unwrap(), PidState::Running(std::process::id()));
        // flock is per open file description: a second acquire in the same process conflicts.
        match acquire(&p) {
            Err(AcquireError::AlreadyRunning(pid)) => assert_eq!(pid, std::process::id()),
            other => panic!("{other:?}"),
        }
        assert_eq!(remove_stale(&p).unwrap(), None);
        l.release();
        assert!(!p.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
