//! The outbox: job results on their way to the backend. Delivery with retries, the spool
//! (owner-only files flushed after a reconnect or a restart), results held in memory when the
//! spool cannot store them either, and the crash recovery of jobs a previous process left
//! `running`. Never drops a result silently.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::runtime::{RESTART_JOB_ERROR, SHUTDOWN_JOB_ERROR};
use super::shared::Shared;
use crate::backend::jobs::{self as wire, Level};
use crate::backend::spool::Spool;
use crate::backend::{Backoff, Error};
use crate::util::{lock, now_rfc3339};

/// At most this many undeliverable, unspoolable results are held in memory (bodies can be
/// large). Beyond it the oldest is given up, loudly.
const MAX_PENDING: usize = 256;

pub(super) struct Outbox {
    pub spool: Spool,
    /// Completions that could neither be delivered nor spooled (job id, body), oldest first:
    /// retried by the reconcile loop and once more at shutdown. Bounded by [`MAX_PENDING`].
    pending: Mutex<VecDeque<(String, Value)>>,
}

impl Outbox {
    pub fn new(spool: Spool) -> Outbox {
        Outbox {
            spool,
            pending: Mutex::new(VecDeque::new()),
        }
    }

    pub fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }

    /// The ids of the results still held in memory.
    pub fn pending_ids(&self) -> Vec<String> {
        lock(&self.pending)
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The outbox's share of each reconcile round: held results, then the spool; before the
/// first successful round, the spool and then crash recovery (spooled results win over it).
pub(super) fn between_polls(s: &Shared, startup_done: &mut bool) {
    if s.outbox.pending_len() > 0 {
        retry_pending(s);
    }
    if !*startup_done {
        flush_spool(s);
        match recover_stale_jobs(s) {
            Ok(()) => *startup_done = true,
            Err(e) => {
                log::warn!(target: "runtime", "crash recovery check failed, retrying: {e}")
            }
        }
    } else if s.outbox.spool.len() > 0 {
        flush_spool(s);
    }
}

/// Completes a job: retries with backoff; spools it when the backend still does not take
/// it (network, 5xx, lost session). Never drops a result silently.
pub(super) fn deliver(s: &Shared, job_id: &str, body: &Value) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(4));
    let deadline = Instant::now() + s.tuning.complete_retry;
    loop {
        match wire::complete(&s.session, job_id, body) {
            Ok(()) => {
                s.journal.end(job_id);
                return;
            }
            Err(e) if e.is_retryable() => {
                if Instant::now() >= deadline || s.shutdown.is_immediate() {
                    log::warn!(target: "worker", "completion of job {job_id} not accepted yet ({e}); spooling it for later delivery");
                    break;
                }
                log::debug!(target: "worker", "completion of job {job_id} failed, retrying: {e}");
                // An immediate stop cuts the wait short (the result goes to the spool).
                s.shutdown
                    .wait_for(crate::shutdown::Level::Immediate, backoff.next_delay());
            }
            Err(e @ Error::Reauth(_)) => {
                log::warn!(target: "worker", "completion of job {job_id} waits for a new session: {e}");
                break;
            }
            Err(e) => {
                reject_fallback(s, job_id, &e);
                return;
            }
        }
    }
    match s.outbox.spool.put(job_id, body) {
        Ok(()) => {
            s.journal.end(job_id);
            s.push_status(true);
            s.event(
                Level::Warn,
                "result_spooled",
                format!("The result of job {job_id} could not be delivered yet; it is kept on the host and sent when the backend takes it"),
                json!({ "job_id": job_id }),
            );
        }
        Err(e) => hold_pending(s, job_id, body, &e),
    }
}

/// A result the backend did not take and the spool could not store: kept in memory and
/// retried (delivery and spooling) by the reconcile loop until shutdown, never dropped
/// silently.
pub(super) fn hold_pending(s: &Shared, job_id: &str, body: &Value, spool_error: &str) {
    let spool_dir = s.outbox.spool.dir().display();
    let n = {
        let mut p = lock(&s.outbox.pending);
        p.retain(|(id, _)| id != job_id);
        if p.len() >= MAX_PENDING {
            if let Some((old, _)) = p.pop_front() {
                log::error!(target: "worker", "LOST RESULT of job {old}: more than {MAX_PENDING} results wait in memory (the spool is unwritable and the backend away); the next start fails it ({RESTART_JOB_ERROR}). Fix the spool directory {spool_dir}");
            }
        }
        p.push_back((job_id.to_string(), body.clone()));
        p.len()
    };
    log::error!(target: "worker", "cannot spool the result of job {job_id}: {spool_error}; holding it in memory and retrying ({n} result(s) held). Fix the spool directory {spool_dir} or free disk space: a result still held when the gateway stops is lost");
    s.event(
        Level::Error,
        "result_pending",
        format!("The result of job {job_id} could not be delivered nor stored on the host; it is held in memory and retried"),
        json!({ "job_id": job_id }),
    );
    s.push_status(true);
}

/// Retries the results held in memory: delivery first, then the spool. Once the backend
/// fails transiently, the rest only try the spool (each delivery try could take a whole
/// request timeout). Returns how many are still held.
pub(super) fn retry_pending(s: &Shared) -> usize {
    let held: Vec<(String, Value)> = lock(&s.outbox.pending).iter().cloned().collect();
    if held.is_empty() {
        return 0;
    }
    let mut backend_away = false;
    let mut done: Vec<String> = Vec::new();
    for (id, body) in &held {
        if !backend_away {
            match wire::complete(&s.session, id, body) {
                Ok(()) => {
                    s.journal.end(id);
                    log::info!(target: "worker", "delivered the held result of job {id}");
                    done.push(id.clone());
                    continue;
                }
                Err(e) if e.is_retryable() || matches!(e, Error::Reauth(_)) => {
                    log::debug!(target: "worker", "held result of job {id} not accepted yet: {e}");
                    backend_away = true;
                }
                Err(e) => {
                    reject_fallback(s, id, &e);
                    done.push(id.clone());
                    continue;
                }
            }
        }
        if s.outbox.spool.put(id, body).is_ok() {
            s.journal.end(id);
            log::info!(target: "worker", "held result of job {id} written to the spool");
            done.push(id.clone());
        }
    }
    let left = {
        let mut p = lock(&s.outbox.pending);
        // Only what was retried goes: a newer body held meanwhile for the same job stays.
        p.retain(|(id, b)| {
            !held
                .iter()
                .any(|(hi, hb)| hi == id && hb == b && done.contains(id))
        });
        p.len()
    };
    if !done.is_empty() {
        s.push_status(true);
    }
    left
}

/// The backend refused a completion for good (say 413 for a result too large, or 400): the
/// job must not stay `running`, so fail it with a small body that says why.
fn reject_fallback(s: &Shared, job_id: &str, e: &Error) {
    log::error!(target: "worker", "the backend rejected the completion of job {job_id}: {e}; failing the job with a short error instead");
    let msg = crate::util::truncate_chars(
        &format!("the backend rejected the gateway's job result: {e}"),
        1000,
        "...",
    );
    let body = wire::completion_body(
        "failed",
        &Some(json!({ "message": "Gateway job result rejected by the backend" })),
        &Some(msg),
        &now_rfc3339(),
    );
    match wire::complete(&s.session, job_id, &body) {
        Ok(()) => s.journal.end(job_id),
        Err(e2) => {
            log::error!(target: "worker", "could not fail job {job_id} either ({e2}); it stays running until the next gateway restart fails it")
        }
    }
}

/// Sends spooled completions; stops at the first transient failure (backend still away).
fn flush_spool(s: &Shared) {
    let entries = s.outbox.spool.entries();
    if entries.is_empty() {
        return;
    }
    let mut sent = 0;
    for e in &entries {
        if s.shutdown.is_draining() {
            break; // the spool survives the restart
        }
        match wire::complete(&s.session, &e.job_id, &e.body) {
            Ok(()) => {
                s.outbox.spool.remove(e);
                sent += 1;
            }
            Err(err) if err.is_retryable() || matches!(err, Error::Reauth(_)) => {
                log::info!(target: "spool", "backend still not taking spooled results ({err}); {} left", entries.len() - sent);
                break;
            }
            Err(err) => {
                reject_fallback(s, &e.job_id, &err);
                s.outbox.spool.remove(e);
            }
        }
    }
    if sent > 0 {
        log::info!(target: "spool", "delivered {sent} spooled job results");
    }
    s.push_status(true);
}

/// Crash recovery, from the journal an earlier process left: its jobs the backend still
/// shows running with that process's claim are failed (and their subagent runs ended).
/// Every other `running` row is left alone: not ours to judge.
fn recover_stale_jobs(s: &Shared) -> Result<(), Error> {
    if s.recovery.is_empty() {
        return Ok(());
    }
    let failed = s.recovery.settle(&s.session, &s.journal)?;
    if !failed.is_empty() {
        s.event(
            Level::Warn,
            "jobs_recovered",
            format!(
                "{} job(s) interrupted by a gateway restart were marked failed",
                failed.len()
            ),
            json!({ "count": failed.len(), "job_ids": failed }),
        );
    }
    Ok(())
}

/// At the end of the drain: jobs that did not stop are failed (or their failure spooled,
/// once the backend failed to answer: each try could take a whole request timeout).
pub(super) fn fail_stuck_jobs(s: &Shared, stuck: Vec<(String, String)>) {
    let mut backend_away = false;
    for (id, jt) in stuck {
        log::warn!(target: "runtime", "job {id} did not stop; marking it failed");
        let body = wire::completion_body(
            "failed",
            &Some(json!({ "message": SHUTDOWN_JOB_ERROR, "job_type": jt })),
            &Some(SHUTDOWN_JOB_ERROR.into()),
            &now_rfc3339(),
        );
        let sent = !backend_away
            && match wire::complete(&s.session, &id, &body) {
                Ok(()) => {
                    s.journal.end(&id);
                    true
                }
                Err(e) => {
                    log::warn!(target: "runtime", "could not mark job {id} failed ({e}); spooling it for the next start");
                    backend_away = true;
                    false
                }
            };
        if !sent {
            match s.outbox.spool.put(&id, &body) {
                Ok(()) => s.journal.end(&id),
                Err(e) => hold_pending(s, &id, &body, &e),
            }
        }
    }
}

/// Last chance for results held in memory: deliver or spool them, else say loudly what is
/// lost (the next start fails those jobs).
pub(super) fn last_retry(s: &Shared) {
    if retry_pending(s) > 0 {
        for id in s.outbox.pending_ids() {
            log::error!(target: "runtime", "LOST RESULT of job {id}: the backend did not take it and the spool {} is unwritable; the next start fails the job ({RESTART_JOB_ERROR})", s.outbox.spool.dir().display());
        }
    }
}
