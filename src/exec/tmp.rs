//! Owner-only scratch directories: a child's private TMPDIR, a model run's work directory.
//! Removed (recursively) when dropped.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The sequence behind [`unique_name`]: the one process-wide counter of `exec/`. It holds no
/// state anyone reads back, only makes names differ.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `<prefix><pid>-<n>-<nanos>`: a name no other scratch file or directory of this process has
/// taken (callers still create it exclusively, since another process may).
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}-{n}-{nanos:x}", std::process::id())
}

/// Creates `dir` (and its missing parents) with mode 0700 and checks that it is a real
/// directory (not a symlink) owned by us and closed to others. On a shared host a directory
/// someone else created at a predictable path (under /tmp) must never hold our work.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    let problem = if !meta.file_type().is_dir() {
        Some("is not a directory (or is a symlink)".to_string())
    } else if meta.uid() != me {
        Some(format!(
            "is owned by uid {}, not by you (uid {me})",
            meta.uid()
        ))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!(
            "is accessible to other users (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} {p}; remove it or run `chmod 700` on it", dir.display()),
        )),
    }
}

/// Writes a new owner-only (0600) file in a private work directory: never follows a symlink
/// and never reuses an existing file (O_EXCL), so nothing planted there is written through.
/// Flushed to disk before the CLI that reads it starts.
pub fn write_private_file(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all().ok();
    Ok(())
}

/// A directory created with mode 0700 and removed on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    keep: bool,
}

impl PrivateDir {
    /// Creates `<parent>/<prefix><unique>` (0700). `parent` is created (0700) if missing.
    pub fn create_in(parent: &Path, prefix: &str) -> io::Result<PrivateDir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
        for _ in 0..100 {
            let path = parent.join(unique_name(prefix));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path, keep: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not find a free scratch directory name",
        ))
    }

    /// Creates exactly `path` (0700; its parents 0700 too). Fails if it exists.
    pub fn create_exact(path: &Path) -> io::Result<PrivateDir> {
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
        Ok(PrivateDir {
            path: path.to_path_buf(),
            keep: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `TMPDIR`, `TMP`, `TEMP` entries pointing here.
    pub fn tmp_vars(&self) -> [(&'static str, OsString); 3] {
        let p = self.path.as_os_str().to_os_string();
        [("TMPDIR", p.clone()), ("TMP", p.clone()), ("TEMP", p)]
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!(target: "exec", "could not remove scratch directory path={} error={e}", self.path.display());
                }
            }
        }
    }
}

/// A child's environment, name and value pairs in order.
pub(crate) type ChildEnv = Vec<(OsString, OsString)>;

/// `env` plus a private TMPDIR (TMPDIR, TMP, TEMP) created under `tmp_base` with `prefix`, for
/// the child `program`; without a base, `env` as it is. The directory lives (and is removed)
/// with the returned guard. Used by both ways of starting a child (pipes and pty).
pub(crate) fn env_with_private_tmp(
    program: &Path,
    env: &[(OsString, OsString)],
    tmp_base: Option<&Path>,
    prefix: &str,
) -> Result<(Option<PrivateDir>, ChildEnv), super::SpawnError> {
    let mut env = env.to_vec();
    let Some(base) = tmp_base else {
        return Ok((None, env));
    };
    let dir = PrivateDir::create_in(base, prefix).map_err(|error| super::SpawnError {
        program: program.to_path_buf(),
        error,
        tmp_base: Some(base.to_path_buf()),
    })?;
    for (k, v) in dir.tmp_vars() {
        super::set_var(&mut env, k, v);
    }
    Ok((Some(dir), env))
}
