//! Why a subagent's CLI failed, classified with what to do (the kinds and hints of model
//! runs), and the per-subagent work directories it runs in.

use super::*;
use crate::providers::diagnose::{self, ErrorKind as Kind};

/// How long a subagent's work directory is kept after its last run.
const SUBAGENT_DIR_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// Marks `keep` (the starting run's directory) used now, then removes the work directories of
/// other subagents not used for [`SUBAGENT_DIR_TTL`] (a bounded number per call, so a run
/// never waits on a large sweep). The mark is what keeps a directory: a CLI that writes its
/// sessions elsewhere (Codex) never moves it. A directory in use was marked at its run's
/// start, and a run lasts at most a day (the longest honoured timeout), far below the TTL.
pub(super) fn sweep_stale_dirs(root: &Path, keep: &str) {
    let now = std::time::SystemTime::now();
    let mine = root.join(keep);
    if mine.is_dir() {
        if let Err(e) = std::fs::File::open(&mine).and_then(|d| d.set_modified(now)) {
            log::warn!(target: "subagent", "could not mark the work directory {} used: {e}; it may be swept 14 days after its last change", mine.display());
        }
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten().take(256) {
        if e.file_name().to_str() == Some(keep) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > SUBAGENT_DIR_TTL);
        if old && e.file_type().is_ok_and(|t| t.is_dir()) {
            log::info!(target: "subagent", "removing the unused subagent work directory {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// What the run's start-up learned before or while the CLI ran.
pub(super) struct Signals<'a> {
    /// Codex's `codex login status` said "Not logged in"; nothing was started.
    pub(super) not_logged_in: Option<String>,
    /// The CLI could not be started because it is not there.
    pub(super) not_found: bool,
    /// Why the network watcher stopped the CLI.
    pub(super) network: Option<&'a str>,
}

/// Why a subagent's CLI failed, classified, with what to do: not logged in (Codex's
/// pre-check), no network (the watcher stopped it), timeout, or what the CLI itself reported —
/// Claude's stream-json `result` with `is_error`, an error envelope on stdout, Gemini's
/// `{"error"}` on stderr — before its last stderr line (often a warning), before the exit code.
pub(super) fn failure_reason(
    provider: ProviderId,
    result: &Result<exec::Output, String>,
    signals: Signals<'_>,
    timeout: Duration,
    stdout: &str,
    stderr: &str,
) -> (Kind, String) {
    let with_hint = |kind: Kind, m: &str| match diagnose::hint(provider, kind) {
        Some(h) => (kind, format!("{m}. {h}")),
        None => (kind, m.to_string()),
    };
    match result {
        Err(_) if signals.not_logged_in.is_some() => with_hint(
            Kind::Auth,
            signals.not_logged_in.as_deref().unwrap_or_default(),
        ),
        Err(e) if signals.not_found => (
            Kind::NotInstalled,
            format!(
                "{} CLI is not installed or not on PATH ({e}); {}",
                provider.short(),
                provider.install_hint()
            ),
        ),
        Err(e) => (Kind::ExitStatus, e.clone()),
        Ok(o) if o.stop == exec::Stop::Aborted => with_hint(
            Kind::Network,
            signals.network.unwrap_or("the CLI cannot reach its API"),
        ),
        Ok(o) if o.timed_out() => (
            Kind::Timeout,
            format!(
                "Subagent timed out after {} ms; raise the subagent's timeout_ms, or check that the CLI runs without waiting for input",
                timeout.as_millis()
            ),
        ),
        Ok(o) => {
            let stderr = diagnose::strip_ansi(stderr);
            let summary = providers::normalize::error_summary(&stderr);
            diagnose::explain_exit(
                provider,
                o.exit_code,
                o.signal,
                stdout,
                &stderr,
                summary.as_ref(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_marks_its_directory_used_and_old_others_are_swept() {
        let root = std::env::temp_dir().join(format!("pgw-sweep-{}", new_uuid_v4()));
        let old = std::time::SystemTime::now() - SUBAGENT_DIR_TTL - Duration::from_secs(3600);
        for d in ["mine", "other", "recent"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for d in ["mine", "other"] {
            let f = std::fs::File::open(root.join(d)).unwrap();
            f.set_modified(old).unwrap();
        }
        sweep_stale_dirs(&root, "mine");
        let age = std::fs::metadata(root.join("mine"))
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default())
            .unwrap();
        assert!(
            age < Duration::from_secs(3600),
            "the run's directory is marked used: {age:?}"
        );
        assert!(!root.join("other").exists(), "a stale directory is swept");
        assert!(root.join("recent").exists(), "a recent directory is kept");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
