//! gateway.json: load, atomic owner-only save, read-modify-write under a lock.
//! Owner: Foundation (issue 2). The session (issue 4) rewrites tokens; providers (issue 5)
//! write `providerHealth`; `full-control` writes `full_control_enabled`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::secure;

/// The keys of gateway.json, exactly as PROTOCOL.md §1 names them. Unknown keys (for example
/// `vmGuest`) are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GatewayState {
    #[serde(
        rename = "supabaseUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub supabase_url: Option<String>,
    #[serde(
        rename = "supabaseAnonKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub supabase_anon_key: Option<String>,
    #[serde(
        rename = "accessToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub access_token: Option<String>,
    #[serde(
        rename = "refreshToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_token: Option<String>,
    #[serde(rename = "gatewayId", default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    #[serde(rename = "teamId", default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default)]
    pub full_control_enabled: bool,
    #[serde(rename = "deviceName", default)]
    pub device_name: Option<String>,
    #[serde(
        rename = "providerHealth",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_health: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why gateway.json (or its directory) could not be used. Every variant names the file and
/// says what to do.
#[derive(Debug)]
pub enum StateError {
    /// An I/O error while doing `action` on `path`.
    Io {
        path: PathBuf,
        action: &'static str,
        err: io::Error,
    },
    /// The file is not valid JSON or has a wrong type; it is left untouched.
    Corrupt {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A symlink, a path of another user, or the wrong kind of file: refused.
    Insecure {
        path: PathBuf,
        reason: String,
        fix: String,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io { path, action, err } => {
                let full = matches!(
                    err.raw_os_error(),
                    Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG | libc::EROFS)
                );
                let hint = match err.kind() {
                    _ if full && *action == "write" => {
                        " The disk is full or read-only: free space (or remount it writable) and retry; the previous file is unchanged."
                    }
                    _ if full => " The disk is full or read-only: free space (or remount it writable) and retry.",
                    io::ErrorKind::PermissionDenied => {
                        " Make sure the gateway directory is owned by you and writable, or choose another with --config-dir."
                    }
                    io::ErrorKind::NotFound => " Check the path (--config-dir, --config-path).",
                    _ => "",
                };
                write!(f, "cannot {action} {}: {err}.{hint}", path.display())
            }
            StateError::Corrupt {
                path,
                line,
                column,
                message,
            } => write!(
                f,
                "{}:{line}:{column}: not a valid gateway config ({message}). The file was left untouched: fix it by hand, or move it away and pair again",
                path.display()
            ),
            StateError::Insecure { path, reason, fix } => write!(
                f,
                "refusing to use {}: {reason}. Fix: {fix}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StateError {}

impl GatewayState {
    /// Tells the redactor about this state's tokens and key, so that they are masked in every
    /// log line, error and debug text of this process even where no pattern recognises them.
    pub fn register_secrets(&self) {
        for v in [
            &self.access_token,
            &self.refresh_token,
            &self.supabase_anon_key,
        ]
        .into_iter()
        .flatten()
        {
            crate::redact::register_secret(v);
        }
    }

    /// Paired means the session and identity are present (PROTOCOL.md §1).
    pub fn is_paired(&self) -> bool {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        set(&self.access_token) && set(&self.refresh_token) && set(&self.gateway_id)
    }
}

/// Parses the content of gateway.json. `null` means "no saved fields".
pub fn parse(path: &Path, text: &str) -> Result<GatewayState, StateError> {
    if text.trim() == "null" {
        return Ok(GatewayState::default());
    }
    let state = serde_json::from_str::<GatewayState>(text).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: crate::redact::redact(&e.to_string()),
    })?;
    state.register_secrets();
    Ok(state)
}

/// Reads gateway.json. `Ok(None)` when it does not exist. Refuses a symlink or a file of
/// another user; tightens a looser mode to 0600. Never writes the content.
pub fn load(path: &Path) -> Result<Option<GatewayState>, StateError> {
    if !secure::check_file(path)? {
        return Ok(None);
    }
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                message: "the file is not UTF-8 text".into(),
            })
        }
        Err(e) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                action: "read",
                err: e,
            })
        }
    };
    parse(path, &text).map(Some)
}

/// Writes gateway.json atomically and durably (0600, directory 0700). Prefer [`update`], which
/// also serialises concurrent writers.
pub fn save(path: &Path, state: &GatewayState) -> Result<(), StateError> {
    // Before anything can fail: an error about this save must not show a new token.
    state.register_secrets();
    let dir = parent_dir(path);
    secure::ensure_parent_dir(&dir)?;
    let mut text = serde_json::to_string_pretty(state).map_err(|e| StateError::Io {
        path: path.to_path_buf(),
        action: "serialise",
        err: io::Error::other(e),
    })?;
    text.push('\n');
    secure::write_atomic(path, text.as_bytes(), true)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The lock file that serialises writers of `path` (`gateway.json.lock` beside it).
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Read-modify-write of gateway.json under an exclusive flock on the sibling lock file, so
/// concurrent writers (the daemon persisting rotated tokens, `full-control` from the CLI) never
/// lose each other's changes. A missing file starts from defaults; a corrupt file is an error
/// and stays untouched. Returns the state as written.
pub fn update<F>(path: &Path, f: F) -> Result<GatewayState, StateError>
where
    F: FnOnce(&mut GatewayState),
{
    let result = update_locked(path, f);
    if let Some(obs) = SAVE_OBSERVER.get() {
        match &result {
            Ok(_) => obs(None),
            Err(e) => obs(Some(&e.to_string())),
        }
    }
    result
}

/// Told about the outcome of every [`update`] in this process: `None` after a successful write,
/// the error otherwise. The daemon shows a failed write in its status file, so that `status`
/// reports it loudly: a rotated token that could not be saved lives only in memory.
type SaveObserver = Box<dyn Fn(Option<&str>) + Send + Sync>;
static SAVE_OBSERVER: std::sync::OnceLock<SaveObserver> = std::sync::OnceLock::new();

/// Installs the observer of [`update`] outcomes (once per process; later calls are ignored).
pub fn set_save_observer(f: SaveObserver) {
    let _ = SAVE_OBSERVER.set(f);
}

fn update_locked<F>(path: &Path, f: F) -> Result<GatewayState, StateError>
where
    F: FnOnce(&mut GatewayState),
{
    let dir = parent_dir(path);
    secure::ensure_parent_dir(&dir)?;
    let lp = lock_path(path);
    let lock = secure::open_rw_secure(&lp)?;
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(StateError::Io {
                path: lp,
                action: "lock",
                err,
            });
        }
    }
    let mut state = load(path)?.unwrap_or_default();
    f(&mut state);
    save(path, &state)?;
    drop(lock); // releases the flock
    Ok(state)
}

/// Checks that [`update`] of `path` would succeed without changing anything: the directory is
/// usable (created 0700 when missing, refused when it is a file, a symlink or someone else's),
/// the lock can be taken, an existing file is readable and valid, and a file of a full state's
/// size can be written, fsync'ed and renamed there (a probe beside it, removed again). For
/// steps that cannot be repeated when the save fails afterwards (spending a one-time pairing
/// code). An existing gateway.json is never rewritten.
pub fn check_writable(path: &Path) -> Result<(), StateError> {
    let dir = parent_dir(path);
    secure::ensure_parent_dir(&dir)?;
    let lp = lock_path(path);
    let lock = secure::open_rw_secure(&lp)?;
    // SAFETY: flock on a descriptor we own; a failure only means no serialisation here.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    load(path)?;
    let mut probe = path.as_os_str().to_owned();
    probe.push(format!(".probe-{}", std::process::id()));
    let probe = PathBuf::from(probe);
    // About the size of a paired state (two JWT-sized tokens, the key, ids): a nearly full
    // disk fails here rather than after the code is spent.
    let result = secure::write_atomic(&probe, &[b' '; 8192], true).map_err(|e| match e {
        StateError::Io { action, err, .. } => StateError::Io {
            path: path.to_path_buf(),
            action,
            err,
        },
        other => other,
    });
    let _ = fs::remove_file(&probe);
    drop(lock);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pg-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn check_writable_leaves_the_state_untouched() {
        let d = tmpdir("probe");
        let p = d.join("gateway.json");
        check_writable(&p).unwrap();
        assert!(!p.exists(), "no state file is created");
        let text = r#"{"accessToken":"a",  "zzz":1}"#;
        fs::write(&p, text).unwrap();
        check_writable(&p).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), text);
        let left: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("probe") || n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        fs::write(&p, "{").unwrap();
        assert!(
            check_writable(&p).is_err(),
            "a corrupt file would fail the save"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let d = tmpdir("conc");
        let p = d.join("gateway.json");
        fs::write(
            &p,
            r#"{"accessToken":"a","vmGuest":{"vmId":"v","generation":null},"zzz":1}"#,
        )
        .unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        update(&p, |s| {
                            let n = s.extra.get("counter").and_then(|v| v.as_u64()).unwrap_or(0);
                            s.extra.insert("counter".into(), (n + 1).into());
                            if i == 0 {
                                s.refresh_token = Some(format!("r{j}"));
                            } else {
                                s.full_control_enabled = j % 2 == 0;
                            }
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = load(&p).unwrap().unwrap();
        assert_eq!(s.extra["counter"], 80);
        assert_eq!(s.refresh_token.as_deref(), Some("r9"));
        assert_eq!(s.extra["zzz"], 1);
        assert_eq!(s.extra["vmGuest"]["vmId"], "v");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_reports_position_and_is_not_overwritten() {
        let d = tmpdir("corrupt");
        let p = d.join("gateway.json");
        let bad = "{\n  \"accessToken\": \"x\",\n  oops\n}";
        fs::write(&p, bad).unwrap();
        let e = update(&p, |s| s.full_control_enabled = true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.json:3:"), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), bad);
        fs::write(&p, r#"{"full_control_enabled":"yes"}"#).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("gateway.json:1:"), "{e}");
        fs::write(&p, "null").unwrap();
        assert_eq!(load(&p).unwrap().unwrap(), GatewayState::default());
        fs::remove_dir_all(&d).unwrap();
    }
}
