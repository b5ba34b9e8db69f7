//! Remote shell jobs (subagents-shell.md §7, backend.md §9.3, PROTOCOL.md §8 and §12):
//!
//! - `shell_exec` (2.32 contract, `exec.rs`): one command through `<shell> -lc <command>`, cwd
//!   `/`, scrubbed environment, private TMPDIR under `<configDir>/tmp`, timeout (default 30 s,
//!   clamped to 1 ms…10 min), 5 MB kept per stream, whole process group killed on timeout.
//! - `shell_session` (2.29.14 seed contract, §7.7, `session_job.rs`): `open` starts the user's
//!   login shell on a pseudo-terminal (`exec::pty`); `write` (keystrokes), `read`, `status`,
//!   `resize`, `close` act on it by `session_id` in later jobs. Output goes to a bounded ring
//!   with absolute offsets. Sessions live in a registry the runtime owns (`session.rs`), expire
//!   when idle, and are killed (every process group of the terminal's session) when closed,
//!   when idle too long, when machine control is switched off and when the daemon stops.
//!
//! Both check machine control at the moment of use (`jobs::control`: the team toggle read from
//! the backend, the install toggle from gateway.json, the heartbeat's freshness) and the remote
//! shell resource (§7.3, with its `metadata.full_control === true` opt-in) before anything
//! runs (`access.rs`). Denials fail the job with `{message, resource_id?}`; a command that ran
//! completes the job whatever its exit status (`success` tells the truth).

mod access;
mod exec;
mod payload;
mod session;
mod session_job;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{FinalStatus, JobContext, Outcome};

pub use exec::{exec_prefetch, handle_exec};
pub use session::ShellSessions;
pub use session_job::handle_session;

fn failed(message: &str, extra: &[(&str, Value)]) -> Outcome {
    let mut m = Map::new();
    m.insert("message".into(), message.into());
    for (k, v) in extra {
        m.insert((*k).into(), v.clone());
    }
    Outcome {
        status: FinalStatus::Failed,
        result: Some(Value::Object(m)),
        error: Some(message.to_string()),
        debug: None,
    }
}

fn ok(result: Map<String, Value>) -> Outcome {
    Outcome {
        status: FinalStatus::Completed,
        result: Some(Value::Object(result)),
        error: None,
        debug: None,
    }
}

/// `/bin/bash` if it exists, else `/bin/sh`, else `$SHELL`, else `/bin/bash` (§7.2 step 9).
fn pick_shell() -> PathBuf {
    for p in ["/bin/bash", "/bin/sh"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    match std::env::var("SHELL") {
        Ok(s) if !s.trim().is_empty() => PathBuf::from(s.trim()),
        _ => PathBuf::from("/bin/bash"),
    }
}

/// `<configDir>/tmp` (the work root is `<configDir>/work`), owner-only.
fn tmp_base(ctx: &JobContext) -> PathBuf {
    let work = ctx.providers.work_root();
    let base = work
        .parent()
        .map(|p| p.join("tmp"))
        .unwrap_or_else(|| work.join("tmp"));
    if let Err(e) = crate::exec::ensure_private_dir(&base) {
        log::warn!(target: "shell", "could not prepare {}: {e}", base.display());
    }
    base
}

#[cfg(test)]
mod tests {
    use crate::util::new_uuid_v4;

    #[test]
    fn uuids_are_v4_shaped_and_distinct() {
        let a = new_uuid_v4();
        let b = new_uuid_v4();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
