//! Owner-only state on disk: directories 0700, files 0600, tightened when looser; symlinks and
//! paths owned by another user are refused with a hardening error naming the path, its owner
//! and mode, and the command that fixes it. Atomic writes (temp file in the same directory,
//! fsync, rename, fsync the directory).

use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::state::StateError;

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `uid 1000 (alice)`, or `uid 1000` when the name is unknown.
pub fn describe_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers are valid for the given sizes; out is checked before use.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf and is NUL-terminated.
    let name = unsafe { CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

fn shell_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn me() -> String {
    user_name(euid()).unwrap_or_else(|| euid().to_string())
}

fn io_err(path: &Path, action: &'static str, err: io::Error) -> StateError {
    StateError::Io {
        path: path.to_path_buf(),
        action,
        err,
    }
}

/// Refuses symlinks and paths of other users. `want_mode` is 0o700 or 0o600 (for the fix hint).
fn check_owner_and_kind(path: &Path, md: &fs::Metadata, dir: bool) -> Result<(), StateError> {
    let want = if dir { "700" } else { "600" };
    let mode = md.mode() & 0o7777;
    if md.file_type().is_symlink() {
        let target = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let fix = if dir {
            format!(
                "mv {p} {p}.link && mkdir -m 700 {p} (or point --config-dir at the real directory {t})",
                p = shell_quote(path),
                t = target
            )
        } else {
            format!(
                "cp --remove-destination \"$(readlink -f {p})\" {p} && chmod 600 {p}",
                p = shell_quote(path)
            )
        };
        return Err(StateError::Insecure {
            path: path.to_path_buf(),
            reason: format!(
                "it is a symbolic link to {target} (owner {}, mode {mode:04o}); gateway state must be a real {} so nobody can redirect it",
                describe_uid(md.uid()),
                if dir { "directory" } else { "file" }
            ),
            fix,
        });
    }
    if !dir && md.is_file() && md.nlink() > 1 {
        // A hard link made elsewhere (a shared directory) would point the gateway's writes at
        // some other file of yours, e.g. ~/.ssh/authorized_keys.
        return Err(StateError::Insecure {
            path: path.to_path_buf(),
            reason: format!(
                "it has {} hard links; another name for the same file could redirect what the gateway writes",
                md.nlink()
            ),
            fix: format!(
                "cp {p} {p}.copy && mv {p}.copy {p} (after checking what the other links are)",
                p = shell_quote(path)
            ),
        });
    }
    if md.uid() != euid() && dir && md.uid() == 0 {
        // A system directory: handing it over to a user is never the fix.
        return Err(StateError::Insecure {
            path: path.to_path_buf(),
            reason: format!(
                "it belongs to {} (a system directory), not to you ({}); mode {mode:04o}",
                describe_uid(md.uid()),
                describe_uid(euid())
            ),
            fix: "choose a directory of your own with --config-dir (the default is ~/.panorama/gateway)".into(),
        });
    }
    if md.uid() != euid() {
        return Err(StateError::Insecure {
            path: path.to_path_buf(),
            reason: format!(
                "it belongs to {}, not to you ({}); mode {mode:04o}",
                describe_uid(md.uid()),
                describe_uid(euid())
            ),
            fix: format!(
                "sudo chown {}{} {} && chmod {want} {}",
                if dir { "-R " } else { "" },
                me(),
                shell_quote(path),
                shell_quote(path)
            ),
        });
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, "create directory", e))?;
    // Someone may have won the race and put a directory or a symlink of theirs there (mkdir -p
    // accepts an existing one): check what is there now, as for an existing path.
    let md = fs::symlink_metadata(dir).map_err(|e| io_err(dir, "inspect", e))?;
    check_owner_and_kind(dir, &md, true)?;
    // The umask may have narrowed it further; that is fine. Make sure it is not wider.
    tighten(dir, &md, 0o700)
}

/// Creates `dir` (0700, parents too) when missing; refuses a symlink or a directory of another
/// user; tightens a looser mode to 0700. For the gateway's own directories (the config dir and
/// what is inside it); the directory of an explicitly placed file goes through
/// [`ensure_parent_dir`], which never changes an existing directory.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_dir(dir),
        Err(e) => Err(io_err(dir, "inspect", e)),
        Ok(md) => {
            if md.is_dir() && md.mode() & libc::S_ISVTX != 0 {
                // /tmp and the like: tightening would lock every other user out of it.
                return Err(StateError::Insecure {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "it is a shared directory (sticky bit, mode {:04o}); the gateway's state directory must be its own",
                        md.mode() & 0o7777
                    ),
                    fix: format!(
                        "use a directory of its own, e.g. --config-dir {}",
                        shell_quote(&dir.join("panorama-gateway"))
                    ),
                });
            }
            check_owner_and_kind(dir, &md, true)?;
            if !md.is_dir() {
                return Err(wrong_kind(dir, "a directory", "--config-dir"));
            }
            tighten(dir, &md, 0o700)
        }
    }
}

/// The directory of an explicitly placed file (`--log-path`, `--pid-path`, `--config-path`):
/// created 0700 when missing. An existing one is used as it is and never changed (it may be
/// `/tmp`, `/run` or your home directory), provided nobody else can swap files in it: it must
/// belong to you or root, and be writable by nobody else unless it has the sticky bit (files in
/// it are still refused when they are symlinks or belong to someone else).
pub fn ensure_parent_dir(dir: &Path) -> Result<(), StateError> {
    let md = match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling symlink is "not found" through metadata: refuse it, don't create
            // through it.
            if let Ok(l) = fs::symlink_metadata(dir) {
                return check_owner_and_kind(dir, &l, true);
            }
            return create_private_dir(dir);
        }
        Err(e) => return Err(io_err(dir, "inspect", e)),
        Ok(md) => md,
    };
    let mode = md.mode() & 0o7777;
    if !md.is_dir() {
        return Err(StateError::Insecure {
            path: dir.to_path_buf(),
            reason: "it is not a directory".into(),
            fix: "choose a path inside a directory (--log-path, --pid-path, --config-path)".into(),
        });
    }
    if md.uid() != euid() && md.uid() != 0 {
        return Err(StateError::Insecure {
            path: dir.to_path_buf(),
            reason: format!(
                "it belongs to {}, not to you ({}); mode {mode:04o}: its owner could replace the gateway's files",
                describe_uid(md.uid()),
                describe_uid(euid())
            ),
            fix: "choose a directory of your own".into(),
        });
    }
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(StateError::Insecure {
            path: dir.to_path_buf(),
            reason: format!(
                "other users can write to it (mode {mode:04o}) and replace the gateway's files"
            ),
            fix: format!(
                "chmod go-w {}, or choose another directory",
                shell_quote(dir)
            ),
        });
    }
    Ok(())
}

fn tighten(path: &Path, md: &fs::Metadata, want: u32) -> Result<(), StateError> {
    let mode = md.mode() & 0o7777;
    if mode & !want != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & want))
            .map_err(|e| io_err(path, "tighten permissions of", e))?;
    }
    Ok(())
}

/// Checks an existing state file: refuses symlinks, other owners and non-regular files;
/// tightens a looser mode to 0600. Returns false when the file does not exist.
pub fn check_file(path: &Path) -> Result<bool, StateError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, "inspect", e)),
        Ok(md) => {
            check_owner_and_kind(path, &md, false)?;
            if !md.is_file() {
                return Err(wrong_kind(path, "a regular file", "path"));
            }
            tighten(path, &md, 0o600)?;
            Ok(true)
        }
    }
}

/// Checks what was really opened: between [`check_file`] and `open(O_CREAT)` someone with
/// write access to the directory (a shared one such as /tmp) could have put their own file or a
/// hard link there.
fn verify_opened(path: &Path, f: File) -> Result<File, StateError> {
    let md = f.metadata().map_err(|e| io_err(path, "inspect", e))?;
    check_owner_and_kind(path, &md, false)?;
    if !md.is_file() {
        return Err(wrong_kind(path, "a regular file", "path"));
    }
    Ok(f)
}

/// Opens (creating 0600) a file for appending, never through a symlink, refusing other owners
/// and hard-linked files.
pub fn open_append_secure(path: &Path) -> Result<File, StateError> {
    check_file(path)?;
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_err(path, "open", e))?;
    verify_opened(path, f)
}

/// Opens (creating 0600) a file for read+write without truncating, never through a symlink,
/// refusing other owners and hard-linked files.
pub fn open_rw_secure(path: &Path) -> Result<File, StateError> {
    check_file(path)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_err(path, "open", e))?;
    verify_opened(path, f)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

/// Replaces `path` atomically with `data` (mode 0600). With `durable`, the file and the
/// directory are fsync'ed so the new content survives a crash.
pub fn write_atomic(path: &Path, data: &[u8], durable: bool) -> Result<(), StateError> {
    check_file(path)?;
    let tmp = temp_path(path);
    // Errors name the file being replaced (the temporary name means nothing to a reader); the
    // old content is untouched until the rename.
    let result = (|| -> Result<(), StateError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| io_err(path, "write", e))?;
        f.write_all(data).map_err(|e| io_err(path, "write", e))?;
        if durable {
            f.sync_all().map_err(|e| io_err(path, "write", e))?;
        }
        drop(f);
        fs::rename(&tmp, path).map_err(|e| io_err(path, "replace", e))?;
        if durable {
            let dir = path.parent().unwrap_or(Path::new("."));
            let d = File::open(dir).map_err(|e| io_err(dir, "open directory", e))?;
            d.sync_all()
                .map_err(|e| io_err(dir, "fsync directory", e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The error for a state path that exists but is not what it must be (`kind`: "a directory",
/// "a regular file"); `other` names what to choose instead ("--config-dir", "path").
fn wrong_kind(path: &Path, kind: &str, other: &str) -> StateError {
    StateError::Insecure {
        path: path.to_path_buf(),
        reason: format!("it is not {kind}"),
        fix: format!(
            "move it away (mv {p} {p}.bak) or choose another {other}",
            p = shell_quote(path)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pg-secure-{tag}-{}-{}",
            std::process::id(),
            crate::util::unix_now()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn tightens_and_refuses_symlinks() {
        let d = tmpdir("t");
        let sub = d.join("state");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&sub).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
        let f = sub.join("f.json");
        fs::write(&f, "{}").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_file(&f).unwrap());
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        let link = sub.join("link.json");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = check_file(&link).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains("link.json"),
            "{e}"
        );
        // A hard link to a file of ours elsewhere: refused for reading and for writing.
        let precious = d.join("precious");
        fs::write(&precious, "keep").unwrap();
        let hard = sub.join("gateway.log");
        fs::hard_link(&precious, &hard).unwrap();
        let e = open_append_secure(&hard).unwrap_err().to_string();
        assert!(e.contains("2 hard links"), "{e}");
        assert!(check_file(&hard).is_err());
        assert_eq!(fs::read_to_string(&precious).unwrap(), "keep");
        fs::remove_file(&hard).unwrap();
        assert!(open_append_secure(&hard).is_ok());
        write_atomic(&f, b"{\"a\":1}", true).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "{\"a\":1}");
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        fs::remove_dir_all(&d).unwrap();
    }
}
