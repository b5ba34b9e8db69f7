//! The last `--version` answer of each CLI, shared by discovery and `diagnostic` jobs (issue
//! 14). Discovery's probe at start fills it; a diagnostic reuses an answer that is fresh (a
//! success at most [`FRESH_FOR`] old, from the same command whose file has not changed since)
//! and otherwise probes, one probe per CLI at a time: diagnostics that arrive while a probe
//! runs wait for it and share its answer instead of starting their own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::ProviderId;

/// How long a successful answer is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(60);

/// What identifies the file behind a command: a reinstall or upgrade changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileId {
    /// The identity of `command` when it is a path to an existing file (a bare name has none:
    /// what it runs depends on PATH at spawn time).
    pub fn of(command: &Path) -> Option<FileId> {
        if !command.is_absolute() {
            return None;
        }
        let m = std::fs::metadata(command).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

/// One `<command> --version` run.
#[derive(Debug, Clone)]
pub struct Answer {
    pub command: PathBuf,
    pub stdout: String,
    pub stderr: String,
    /// Null when the run was stopped or killed by a signal.
    pub exit_code: Option<i32>,
    pub duration: Duration,
    /// Why the check failed (None: it answered with status 0).
    pub error: Option<String>,
    /// Stopped by a job cancel or a shutdown: never shared.
    pub cancelled: bool,
    /// Who ran it: "discovery" or "diagnostic".
    pub by: &'static str,
    pub at: Instant,
    pub at_wall: SystemTime,
    /// The command's file when the run started.
    pub file: Option<FileId>,
}

/// Why a stored answer was used instead of a new run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reuse {
    /// A success at most FRESH_FOR old from the same, unchanged file.
    Fresh { age: Duration },
    /// Another job's run finished while this one waited for it.
    Shared,
}

impl Reuse {
    /// A sentence for the job result.
    pub fn reason(&self, a: &Answer) -> String {
        match self {
            Reuse::Fresh { age } => format!(
                "answer of the {} run {} ms ago, reused: it succeeded less than {} s ago and {} has not changed since (same inode, size and mtime); a diagnostic with payload {{\"fresh\": true}} runs it again",
                a.by,
                age.as_millis(),
                FRESH_FOR.as_secs(),
                a.command.display()
            ),
            Reuse::Shared => format!(
                "answer of a {} run of the same command that finished while this job waited for it (one run per CLI at a time), shared instead of running the CLI again",
                a.by
            ),
        }
    }
}

/// The last answer per CLI; its per-CLI lock is held while a probe runs.
#[derive(Debug, Default)]
pub struct VersionCache {
    slots: [Mutex<Option<Answer>>; 3],
}

/// The slot of one CLI, locked: look, then probe and store while holding it.
pub struct Slot<'a>(MutexGuard<'a, Option<Answer>>);

impl VersionCache {
    fn index(id: ProviderId) -> usize {
        ProviderId::ALL.iter().position(|p| *p == id).unwrap_or(0)
    }

    /// Records an answer (discovery's probe, a diagnostic's run).
    pub fn store(&self, id: ProviderId, a: Answer) {
        *self.lock(id).0 = Some(a);
    }

    /// Waits until no probe of `id` runs (one probe per CLI at a time) and returns its slot.
    pub fn lock(&self, id: ProviderId) -> Slot<'_> {
        Slot(
            self.slots[Self::index(id)]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

impl Slot<'_> {
    /// A stored answer for `command` this caller may use instead of running it, and why:
    /// one that finished after `waited_since` (it ran while this caller waited for the slot),
    /// or, when `allow_fresh`, a success within FRESH_FOR from the same unchanged file.
    pub fn reusable(
        &self,
        command: &Path,
        waited_since: Instant,
        allow_fresh: bool,
    ) -> Option<(Answer, Reuse)> {
        let a = self.0.as_ref()?;
        if a.command != command || a.cancelled {
            return None;
        }
        if a.at >= waited_since {
            return Some((a.clone(), Reuse::Shared));
        }
        let age = a.at.elapsed();
        let fresh = allow_fresh
            && a.error.is_none()
            && age <= FRESH_FOR
            && a.file.is_some()
            && a.file == FileId::of(command);
        fresh.then(|| (a.clone(), Reuse::Fresh { age }))
    }

    pub fn put(&mut self, a: Answer) {
        *self.0 = Some(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(command: &Path, ok: bool, at: Instant) -> Answer {
        Answer {
            command: command.to_path_buf(),
            stdout: "1.0.0\n".into(),
            stderr: String::new(),
            exit_code: Some(if ok { 0 } else { 1 }),
            duration: Duration::from_millis(5),
            error: (!ok).then(|| "failed".to_string()),
            cancelled: false,
            by: "diagnostic",
            at,
            at_wall: SystemTime::now(),
            file: FileId::of(command),
        }
    }

    #[test]
    fn fresh_successes_are_reused_until_the_file_changes_failures_only_when_shared() {
        let dir = std::env::temp_dir().join(format!("pgw-versions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cmd = dir.join("claude");
        std::fs::write(&cmd, "#!/bin/sh\necho 1\n").unwrap();
        let c = VersionCache::default();
        let before = Instant::now();
        c.store(ProviderId::Claude, answer(&cmd, true, Instant::now()));
        let later = Instant::now();
        let slot = c.lock(ProviderId::Claude);
        // Stored before this caller started waiting: reused as fresh, not as shared.
        let (_, why) = slot.reusable(&cmd, later, true).unwrap();
        assert!(matches!(why, Reuse::Fresh { .. }), "{why:?}");
        assert!(why
            .reason(&slot.0.clone().unwrap())
            .contains("has not changed"));
        // Finished while the caller waited: shared, even when fresh answers are refused.
        assert_eq!(slot.reusable(&cmd, before, false).unwrap().1, Reuse::Shared);
        assert!(slot.reusable(&cmd, later, false).is_none(), "fresh refused");
        assert!(slot.reusable(&dir.join("other"), before, true).is_none());
        drop(slot);
        // A changed file is probed again.
        std::fs::write(&cmd, "#!/bin/sh\necho 2 changed\n").unwrap();
        assert!(c
            .lock(ProviderId::Claude)
            .reusable(&cmd, later, true)
            .is_none());
        // A failure is never fresh, but is shared with those who waited for it.
        c.store(ProviderId::Codex, answer(&cmd, false, Instant::now()));
        let late = Instant::now();
        assert!(c
            .lock(ProviderId::Codex)
            .reusable(&cmd, late, true)
            .is_none());
        assert!(c
            .lock(ProviderId::Codex)
            .reusable(&cmd, before, true)
            .is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
