//! The in-flight journal: which jobs this gateway process is running and which process groups
//! it started for them, on disk, so the next start can end what a crash left behind and fail
//! exactly its own interrupted jobs (lifecycle, issue 12).
//!
//! One owner-only JSON file per entry under `<config-dir>/inflight/`, replaced atomically (the
//! project's owner-only writer, `config::secure::write_atomic`: temp file, rename) whenever it
//! changes and removed when the job's result was delivered or spooled. An entry is a job (id,
//! type, the `started_at` of our claim, the subagent and run ids of a `subagent_run`) or a
//! long-lived process owner that outlives its job (a shell session); each lists its process
//! groups with the leader's start time from `/proc` and the boot id, so a reused pid (or a pid
//! of another boot) is never taken for ours.
//!
//! Nothing is fsync'ed: every write is atomic (temp file, rename), which survives any crash of
//! the gateway process, since the kernel keeps the data. Only a crash of the whole machine can
//! lose a write, and then no process group of the entry is left to end (groups of another boot
//! are never signalled anyway) and the backend's own recovery ends the row. An fsync costs
//! 5-100 ms on a loaded disk, which would sit on every job's path: before its claim, or
//! between the spawn of a shell command and reading its output (a `shell_exec` of `true` takes
//! a few milliseconds in all). Removals are not fsync'ed either: an entry that comes back is
//! settled as "not ours any more" (the row was completed).
//!
//! A file that cannot be read or parsed is renamed `*.bad`, reported, and otherwise ignored:
//! it never stops the gateway from starting.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::secure;
use crate::exec::{GroupNote, GroupObserver};
use crate::jobs::JobType;

/// One process group a journal entry owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub pgid: i32,
    /// The leader's start time (clock ticks since boot); None when /proc could not tell.
    pub start_time: Option<u64>,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The file's key: the job id, or `shell-session-<id>` for a session's shell.
    pub key: String,
    /// The job this entry is (or, for a session, the job that opened it).
    pub job_id: Option<String>,
    pub job_type: String,
    /// The `started_at` our claim wrote: the job is ours only while the row still has it.
    /// None for entries that are not a claimed job (the job of a session already ended).
    pub started_at: Option<String>,
    pub subagent_id: Option<String>,
    pub run_id: Option<String>,
    #[serde(default)]
    pub groups: Vec<Group>,
    /// `/proc/sys/kernel/random/boot_id` when the entry was made: process groups of another
    /// boot are long gone (and their start times mean nothing now).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// When the entry was written first (for the logs).
    pub recorded_at: String,
}

impl Entry {
    /// A claimed job; `payload` gives the subagent and run ids of a `subagent_run`.
    pub fn job(job_id: &str, job_type: &JobType, started_at: &str, payload: &Value) -> Entry {
        let (subagent_id, run_id) = if *job_type == JobType::SubagentRun {
            subagent_ids(payload)
        } else {
            (None, None)
        };
        Entry {
            key: job_id.to_string(),
            job_id: Some(job_id.to_string()),
            job_type: job_type.as_str().to_string(),
            started_at: Some(started_at.to_string()),
            subagent_id,
            run_id,
            groups: Vec::new(),
            boot_id: boot_id(),
            recorded_at: crate::util::now_rfc3339(),
        }
    }
}

/// This boot's id, from the kernel.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `subagent_id` (or `subagentId`) and the run id (`run_id` or `runId`, else `input.run_id`) of
/// a `subagent_run` payload, with the handler's aliases, each only when it is a UUID (anything
/// else never names a row). A run id the payload does not carry is resolved by recovery.
pub fn subagent_ids(payload: &Value) -> (Option<String>, Option<String>) {
    let uuid = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| crate::util::is_uuid(s))
            .map(str::to_string)
    };
    let field = |a: &str, b: &str| uuid(payload.get(a)).or_else(|| uuid(payload.get(b)));
    let sub = field("subagent_id", "subagentId");
    let run = field("run_id", "runId")
        .or_else(|| uuid(payload.get("input").and_then(|i| i.get("run_id"))));
    (sub, run)
}

/// What an earlier process left in the journal.
#[derive(Debug, Default)]
pub struct Previous {
    pub entries: Vec<Entry>,
    /// Files that could not be read, each with the reason (they were renamed `*.bad`).
    pub problems: Vec<String>,
}

/// The journal of this process. Cheap to share (`Arc`).
pub struct Journal {
    dir: PathBuf,
    live: Mutex<HashMap<String, Entry>>,
}

fn file_name(key: &str) -> String {
    let safe = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if safe {
        format!("{key}.json")
    } else {
        let hex: String = key.bytes().take(100).map(|b| format!("{b:02x}")).collect();
        format!("x{hex}.json")
    }
}

impl Journal {
    /// Opens (creating, owner-only) the journal directory. A directory that cannot be made
    /// is logged, not fatal: every write then says what is at risk.
    pub fn open(dir: &Path) -> Journal {
        if let Err(e) = secure::ensure_dir(dir) {
            log::error!(target: "journal", "cannot use the in-flight journal directory: {e}; jobs run, but after a crash their processes and rows cannot be cleaned up");
        }
        Journal {
            dir: dir.to_path_buf(),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entries an earlier process left (read once, at start, before this process writes
    /// any). Unreadable files are renamed `*.bad` and reported in `problems`.
    pub fn previous(&self) -> Previous {
        let mut out = Previous::default();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) => {
                out.problems.push(format!(
                    "cannot list the in-flight journal {}: {e}",
                    self.dir.display()
                ));
                return out;
            }
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        paths.sort();
        for p in paths {
            let parsed = secure::check_file(&p)
                .map_err(|e| e.to_string())
                .and_then(|_| fs::read(&p).map_err(|e| e.to_string()))
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(e) if p.file_name().and_then(|n| n.to_str()) == Some(&file_name(&e.key)) => {
                    out.entries.push(e)
                }
                Ok(_) => out
                    .problems
                    .push(set_aside(&p, "its key does not match its name")),
                Err(why) => out.problems.push(set_aside(&p, &why)),
            }
        }
        out
    }

    /// Replaces the entry's file (atomically, not fsync'ed: see the module docs). Writes of one
    /// key come from one thread at a time (its job's worker, or its session's).
    fn write(&self, e: &Entry) {
        let path = self.dir.join(file_name(&e.key));
        let data = match serde_json::to_vec(e) {
            Ok(d) => d,
            Err(err) => {
                log::error!(target: "journal", "cannot encode the in-flight entry {}: {err}", e.key);
                return;
            }
        };
        if let Err(err) = secure::write_atomic(&path, &data, false) {
            log::error!(target: "journal", "cannot record in-flight work {} ({err}); if the gateway crashes now, the next start cannot clean it up. Free disk space or fix the permissions of {}", e.key, self.dir.display());
        }
    }

    /// Records a job as in flight (before its claim or its first child).
    pub fn begin(&self, entry: Entry) {
        self.write(&entry);
        self.lock().insert(entry.key.clone(), entry);
    }

    /// The job or owner `key` is done: its entry goes.
    pub fn end(&self, key: &str) {
        let had = self.lock().remove(key).is_some();
        if had {
            self.remove_file(key);
        }
    }

    /// Removes the file of a previous process's entry once it was dealt with.
    pub fn forget(&self, key: &str) {
        if !self.lock().contains_key(key) {
            self.remove_file(key);
        }
    }

    fn remove_file(&self, key: &str) {
        let path = self.dir.join(file_name(key));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                log::warn!(target: "journal", "cannot remove the in-flight entry {} ({e}); the next start looks at it again (harmless)", path.display())
            }
        }
    }

    /// Applies a process-group note. A group of a key with no entry (a shell session's shell)
    /// gets an entry of its own, removed with its last group.
    pub fn note(&self, n: &GroupNote) {
        let mut live = self.lock();
        let changed = match n {
            GroupNote::Started {
                owner,
                pgid,
                start_time,
            } => {
                let e = live.entry(owner.clone()).or_insert_with(|| Entry {
                    key: owner.clone(),
                    job_id: None,
                    job_type: owner_kind(owner).into(),
                    started_at: None,
                    subagent_id: None,
                    run_id: None,
                    groups: Vec::new(),
                    boot_id: boot_id(),
                    recorded_at: crate::util::now_rfc3339(),
                });
                e.groups.retain(|g| g.pgid != *pgid);
                e.groups.push(Group {
                    pgid: *pgid,
                    start_time: *start_time,
                });
                Some(e.clone())
            }
            GroupNote::Ended { owner, pgid } => match live.get_mut(owner) {
                Some(e) => {
                    e.groups.retain(|g| g.pgid != *pgid);
                    if e.groups.is_empty() && e.started_at.is_none() {
                        live.remove(owner);
                        drop(live);
                        self.remove_file(owner);
                        return;
                    }
                    // A claimed job's file is not rewritten here, between its command's exit
                    // and its completion: the entry goes once the result is delivered or
                    // spooled, and a recorded group that has ended is told from a reused pid
                    // by its start time at the next start (and left alone). The next write of
                    // the entry, if any, is made from the entry as it is now.
                    if e.started_at.is_some() {
                        return;
                    }
                    Some(e.clone())
                }
                None => None,
            },
        };
        drop(live);
        if let Some(e) = changed {
            self.write(&e);
        }
    }

    /// The observer to give to `exec::Children`.
    pub fn observer(self: &Arc<Self>) -> GroupObserver {
        let j = Arc::clone(self);
        Arc::new(move |n: &GroupNote| j.note(n))
    }

    /// How many entries this process has open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key of a shell session's shell.
pub fn session_key(session_id: &str) -> String {
    format!("shell-session-{session_id}")
}

fn owner_kind(key: &str) -> &'static str {
    if key.starts_with("shell-session-") {
        "shell_session"
    } else {
        "process"
    }
}

fn set_aside(p: &Path, why: &str) -> String {
    let bad = p.with_extension("bad");
    let kept = match fs::rename(p, &bad) {
        Ok(()) => format!("kept as {}", bad.display()),
        Err(e) => format!("could not rename it ({e})"),
    };
    format!(
        "unreadable in-flight journal entry {} ({why}); {kept} for inspection, it is not recovered",
        p.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pgw-journal-{tag}-{}-{}",
            std::process::id(),
            crate::util::new_uuid_v4()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    const SUB: &str = "5d0b8c1e-2f7a-4a43-9a55-0d9a7f0f3c11";
    const RUN: &str = "8e9b1f22-6c1d-4f0e-8a7b-3e2c1d0f9a88";

    #[test]
    fn entries_survive_a_crash_and_go_when_done() {
        let d = tmp("life");
        let j = Arc::new(Journal::open(&d));
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let payload = json!({"subagent_id": SUB, "input": {"run_id": RUN, "prompt": "x"}});
        j.begin(Entry::job(
            "job-1",
            &JobType::SubagentRun,
            "2026-12-04T21:00:00.000Z",
            &payload,
        ));
        let obs = j.observer();
        obs(&GroupNote::Started {
            owner: "job-1".into(),
            pgid: 4242,
            start_time: Some(77),
        });
        obs(&GroupNote::Started {
            owner: session_key("s1"),
            pgid: 4343,
            start_time: Some(78),
        });
        let f = d.join("job-1.json");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // "Crash": a new journal on the same directory sees both entries.
        let prev = Journal::open(&d).previous();
        assert!(prev.problems.is_empty(), "{:?}", prev.problems);
        assert_eq!(prev.entries.len(), 2);
        let job = prev.entries.iter().find(|e| e.key == "job-1").unwrap();
        assert_eq!(job.subagent_id.as_deref(), Some(SUB));
        assert_eq!(job.run_id.as_deref(), Some(RUN));
        assert_eq!(
            job.groups,
            vec![Group {
                pgid: 4242,
                start_time: Some(77)
            }]
        );
        let sess = prev.entries.iter().find(|e| e.key != "job-1").unwrap();
        assert_eq!(sess.job_type, "shell_session");

        // The job's group ends: the job entry stays (the job is not done); the session's
        // entry goes with its last group; the job's goes when it is done.
        obs(&GroupNote::Ended {
            owner: "job-1".into(),
            pgid: 4242,
        });
        obs(&GroupNote::Ended {
            owner: session_key("s1"),
            pgid: 4343,
        });
        assert!(f.exists());
        assert_eq!(j.len(), 1);
        j.end("job-1");
        assert!(j.is_empty());
        assert!(Journal::open(&d).previous().entries.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_entry_is_set_aside_not_fatal() {
        let d = tmp("bad");
        let j = Journal::open(&d);
        j.begin(Entry::job(
            "good",
            &JobType::ModelRun,
            "2026-12-04T21:00:00.000Z",
            &json!({}),
        ));
        fs::write(d.join("torn.json"), b"{\"key\": \"torn\", \"job_ty").unwrap();
        let prev = Journal::open(&d).previous();
        assert_eq!(prev.entries.len(), 1);
        assert_eq!(prev.entries[0].key, "good");
        assert_eq!(prev.problems.len(), 1);
        assert!(
            prev.problems[0].contains("torn.json"),
            "{:?}",
            prev.problems
        );
        assert!(d.join("torn.bad").exists());
        assert!(!d.join("torn.json").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_uuid_ids_are_kept() {
        let (s, r) = subagent_ids(&json!({"subagent_id": SUB, "run_id": "../etc"}));
        assert_eq!((s.as_deref(), r), (Some(SUB), None));
        let (s, r) = subagent_ids(&json!({"run_id": RUN}));
        assert_eq!((s, r.as_deref()), (None, Some(RUN)));
        // The handler's camelCase aliases name the same rows.
        let (s, r) = subagent_ids(&json!({"subagentId": SUB, "runId": RUN}));
        assert_eq!((s.as_deref(), r.as_deref()), (Some(SUB), Some(RUN)));
        let (s, r) = subagent_ids(&json!({"run_id": RUN}));
        assert_eq!((s, r.as_deref()), (None, Some(RUN)));
        assert_eq!(file_name("a/b"), "x612f62.json");
    }
}
