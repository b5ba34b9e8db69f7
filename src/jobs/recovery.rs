//! Crash recovery at start, from the in-flight journal an earlier process left (issue 12):
//! end the process groups it started that still run (only those whose leader start time still
//! matches: a reused pid is never hit), then fail exactly its jobs the backend still shows
//! `running` with that process's claim, and end their subagent runs as failed through
//! `finalize-gateway-subagent-run` with a `run_failed` event that says why. Every other
//! `running` row is left alone: it is not ours to judge.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::backend::jobs as wire;
use crate::backend::session::Session;
use crate::backend::subagents as sub;
use crate::backend::Error;
use crate::exec::groups::{self, GroupFate};
use crate::jobs::journal::{Entry, Journal};

/// The error of jobs a previous process left `running`.
pub const RESTART_JOB_ERROR: &str = "gateway restarted during the job";

/// Ends the surviving process groups of `entries` (SIGTERM, SIGKILL after `grace`), logging
/// each. Returns how many groups had processes left.
pub fn end_leftover_groups(entries: &[Entry], grace: Duration) -> usize {
    let mut ended = 0;
    let boot = crate::jobs::journal::boot_id();
    for e in entries {
        if e.boot_id.is_some() && boot.is_some() && e.boot_id != boot {
            log::info!(target: "recovery", "{} {} is from before a reboot: none of its processes is left", e.job_type, e.job_id.as_deref().unwrap_or(&e.key));
            continue;
        }
        for g in &e.groups {
            let what = format!(
                "{} {} pgid={}",
                e.job_type,
                e.job_id.as_deref().unwrap_or(&e.key),
                g.pgid
            );
            let Some(start) = g.start_time else {
                log::warn!(target: "recovery", "not ending process group of {what}: its start time was never recorded, so it cannot be told from a reused pid");
                continue;
            };
            match groups::end_stale_group(g.pgid, start, grace) {
                GroupFate::Gone => {
                    log::debug!(target: "recovery", "process group of {what} is already gone")
                }
                GroupFate::Reused => {
                    log::info!(target: "recovery", "process group of {what} is gone (its pid now names another process, left alone)")
                }
                GroupFate::Ended { members, forced } => {
                    ended += 1;
                    log::warn!(target: "recovery", "ended the leftover process group of {what} from before the restart: {members} process(es), {}", if forced { "SIGKILL after the grace" } else { "SIGTERM" });
                }
                GroupFate::Survived { members } => {
                    ended += 1;
                    log::error!(target: "recovery", "process group of {what} survives SIGKILL ({members} process(es)); end them by hand: kill -KILL -- -{}", g.pgid);
                }
            }
        }
    }
    ended
}

/// The entries of an earlier process still to settle with the backend.
#[derive(Debug, Default)]
pub struct Pending {
    entries: Mutex<Vec<Entry>>,
}

/// Start-up, before any job is taken: reads what an earlier process left in `journal`, reports
/// unreadable entries (returned, to be shown as an event too), and ends the process groups that
/// survived it. The entries are then settled with the backend by [`Pending::settle`].
pub fn begin(journal: &Journal, grace: Duration) -> (Pending, Vec<String>) {
    let prev = journal.previous();
    for p in &prev.problems {
        log::error!(target: "recovery", "{p}");
    }
    if !prev.entries.is_empty() {
        log::warn!(target: "recovery", "the previous gateway process left {} in-flight entr{} (it did not stop cleanly); cleaning up", prev.entries.len(), if prev.entries.len() == 1 { "y" } else { "ies" });
    }
    end_leftover_groups(&prev.entries, grace);
    (
        Pending {
            entries: Mutex::new(prev.entries),
        },
        prev.problems,
    )
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Settles every entry left; each one settled is removed from the journal. Returns the ids
    /// of the jobs marked failed, or the first error when the backend could not be asked (the
    /// rest are kept: call again later).
    pub fn settle(&self, s: &Session, journal: &Journal) -> Result<Vec<String>, Error> {
        let mut failed = Vec::new();
        loop {
            let next = self
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first()
                .cloned();
            let Some(e) = next else { return Ok(failed) };
            let job = e.job_id.clone().unwrap_or_else(|| e.key.clone());
            match settle(s, &e) {
                Ok(Settled::Failed) => {
                    log::warn!(target: "recovery", "job {job} ({}) was interrupted by the restart; marked failed ({RESTART_JOB_ERROR})", e.job_type);
                    failed.push(job);
                }
                Ok(Settled::LeftAlone(why)) => {
                    log::info!(target: "recovery", "job {job} ({}) from before the restart left as it is: {why}", e.job_type)
                }
                Ok(Settled::NoJob) => {}
                Err(err) if err.is_retryable() || matches!(err, Error::Reauth(_)) => {
                    return Err(err)
                }
                Err(err) => {
                    log::error!(target: "recovery", "cannot settle job {job} ({}) from before the restart: {err}; giving it up (the backend's own recovery ends it)", e.job_type)
                }
            }
            journal.forget(&e.key);
            self.entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|x| x.key != e.key);
        }
    }
}

/// What became of one journal entry at the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The job was still running from our claim: marked failed (and its run, if any).
    Failed,
    /// The job was not ours to fail any more (why).
    LeftAlone(String),
    /// The entry is no claimed job (a shell session's shell): nothing to write.
    NoJob,
}

/// Settles one entry with the backend. `Err`: the backend could not be asked (retry later).
pub fn settle(s: &Session, e: &Entry) -> Result<Settled, Error> {
    let (Some(job_id), Some(started_at)) = (e.job_id.as_deref(), e.started_at.as_deref()) else {
        return Ok(Settled::NoJob);
    };
    let row = wire::job_row(s, job_id)?;
    match wire::classify_claim(row.as_ref(), &s.gateway_id, started_at) {
        wire::ClaimCheck::Ours(_) | wire::ClaimCheck::Malformed(_) => {}
        wire::ClaimCheck::StillQueued => {
            return Ok(Settled::LeftAlone(
                "still queued: our claim never landed".into(),
            ))
        }
        wire::ClaimCheck::NotOurs(why) => return Ok(Settled::LeftAlone(why)),
    }
    // The run first: if this stops half-way, the job is still running at the next start and
    // the run is finalized again (the function leaves a terminal run as it is).
    if let Some(sid) = e.subagent_id.as_deref() {
        fail_subagent_run(s, job_id, sid, e.run_id.as_deref())?;
    }
    let body = wire::completion_body(
        "failed",
        &Some(json!({ "message": RESTART_JOB_ERROR, "job_type": e.job_type })),
        &Some(RESTART_JOB_ERROR.into()),
        &crate::util::now_rfc3339(),
    );
    if wire::complete_if_ours(s, job_id, started_at, &body)? {
        Ok(Settled::Failed)
    } else {
        Ok(Settled::LeftAlone(
            "it changed while we looked (finished or claimed again)".into(),
        ))
    }
}

/// Ends a subagent run this gateway was executing as failed, through the edge function, and
/// records a `run_failed` event. A subagent assigned to another gateway is not touched. `rid`:
/// the run id the job's payload named; without one (the handler took the row's or made one),
/// the run the running subagent points at (`metadata.current_run_id`): runs of one subagent
/// take turns, so while this job is still running with our claim, that run is its run.
fn fail_subagent_run(s: &Session, job_id: &str, sid: &str, rid: Option<&str>) -> Result<(), Error> {
    let Some(subagent) = sub::load_subagent(s, sid, "id,gateway_id,status,metadata")? else {
        log::info!(target: "recovery", "subagent {sid} of job {job_id} no longer exists; nothing to finalize");
        return Ok(());
    };
    if subagent.get("gateway_id").and_then(Value::as_str) != Some(s.gateway_id.as_str()) {
        log::info!(target: "recovery", "subagent {sid} of job {job_id} is not assigned to this gateway; its run is left alone");
        return Ok(());
    }
    let current = subagent
        .get("metadata")
        .and_then(|m| m.get("current_run_id"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| crate::util::is_uuid(r));
    let running = subagent.get("status").and_then(Value::as_str) == Some("running");
    let Some(rid) = rid.or(current.filter(|_| running)) else {
        log::info!(target: "recovery", "subagent {sid} of job {job_id} has no running run to end (its payload named none and the subagent is not running one)");
        return Ok(());
    };
    let now = crate::util::now_rfc3339();
    let reason = RESTART_JOB_ERROR;
    let envelope =
        json!({"schema_version": 1, "content": reason, "content_type": "text", "errors": [reason]});
    let body = json!({
        "subagent_id": sid, "run_id": rid, "final_status": "failed",
        "failure_output": envelope, "final_error": reason, "completed_at": now,
        "stderr": null,
        "metadata_patch": {
            "runner": "gateway", "gateway_error": reason, "last_run_at": now,
            "recovered_after_restart": true, "job_id": job_id,
        },
    });
    let fin = sub::finalize(s, &body)?;
    if !fin.success {
        log::warn!(target: "recovery", "finalize-gateway-subagent-run refused to end run {rid} of subagent {sid}: {}; the job is failed anyway", fin.error.unwrap_or_default());
        return Ok(());
    }
    if fin.status.as_deref() != Some("failed") {
        // Already terminal: the function reported the stored state and changed nothing.
        log::info!(target: "recovery", "run {rid} of subagent {sid} had already ended ({}); no event", fin.status.unwrap_or_default());
        return Ok(());
    }
    let target = sub::EventTarget {
        run_id: rid.to_string(),
        subagent_id: sid.to_string(),
        team_id: s.team_id.clone(),
        gateway_id: Some(s.gateway_id.clone()),
    };
    let seq = sub::next_sequence(s, rid);
    sub::insert_event(
        s,
        &target,
        seq,
        "run_failed",
        json!({"reason": reason, "source": "gateway_restart", "job_id": job_id}),
    );
    log::warn!(target: "recovery", "subagent run {rid} of subagent {sid} (job {job_id}) marked failed: {reason}");
    Ok(())
}
