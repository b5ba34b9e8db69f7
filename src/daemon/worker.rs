//! The worker threads: take a job from the queue, claim it, run its handler, complete it
//! (through the outbox). Also the registry of the jobs running in this process.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde_json::json;

use super::outbox;
use super::runtime::{RESTART_JOB_ERROR, SHUTDOWN_JOB_ERROR};
use super::shared::Shared;
use crate::backend::jobs::{self as wire, JobRow, JobType};
use crate::backend::{Backoff, Error};
use crate::exec::CancelToken;
use crate::jobs::{self, journal, FinalStatus, JobContext, Outcome};
use crate::util::{lock, now_rfc3339, unix_ms};

pub(super) struct RunningJob {
    pub cancel: CancelToken,
    pub job_type: String,
}

/// The jobs running in this process (by id) and the counts of finished ones.
#[derive(Default)]
pub(super) struct RunningJobs {
    running: Arc<Mutex<HashMap<String, RunningJob>>>,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

impl RunningJobs {
    pub fn len(&self) -> usize {
        lock(&self.running).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.running).is_empty()
    }

    fn insert(&self, id: &str, cancel: CancelToken, job_type: &str) {
        lock(&self.running).insert(
            id.to_string(),
            RunningJob {
                cancel,
                job_type: job_type.to_string(),
            },
        );
    }

    pub(super) fn remove(&self, id: &str) {
        lock(&self.running).remove(id);
    }

    /// (id, job type) of every running job.
    pub fn list(&self) -> Vec<(String, String)> {
        lock(&self.running)
            .iter()
            .map(|(id, r)| (id.clone(), r.job_type.clone()))
            .collect()
    }

    pub fn cancel_all(&self) {
        for r in lock(&self.running).values() {
            r.cancel.cancel();
        }
    }

    /// A handle that cancels a running job by id (for subagent_cancel).
    fn canceller(&self) -> jobs::CancelRunning {
        let running = Arc::clone(&self.running);
        Arc::new(move |id: &str| match lock(&running).get(id) {
            Some(r) => {
                r.cancel.cancel();
                true
            }
            None => false,
        })
    }
}

/// Blocks on the job channel (no idle wake-ups); `stop` disconnects at the drain.
pub(super) fn worker_loop(s: Arc<Shared>, from_ingress: Receiver<Box<JobRow>>, stop: Receiver<()>) {
    loop {
        crossbeam_channel::select! {
            recv(from_ingress) -> job => match job {
                Ok(job) => {
                    let id = job.id.clone();
                    if s.is_accepting() {
                        // The handler is already guarded; this keeps the worker alive if the
                        // wire code around it panics too.
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| process(&s, *job)));
                        if r.is_err() {
                            log::error!(target: "worker", "processing job {id} panicked; the worker continues");
                            job_gone(&s, &id);
                        }
                    }
                    lock(&s.ingress.seen).remove(&id);
                    // The job's output and result are freed by now: hand the pages back.
                    crate::daemon::memory::give_back();
                }
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        }
    }
}

/// A job left the running set: a drain waiting for the last one looks again now.
fn job_gone(s: &Shared, id: &str) {
    s.jobs.remove(id);
    s.shutdown.poke();
}

/// One job: claim → handler → complete.
pub(super) fn process(s: &Shared, job: JobRow) {
    let started_at = now_rfc3339();
    // Journaled before the claim: a claim that lands unseen is still ours to clean up after a
    // crash. The entry goes once the result is delivered or spooled (the outbox).
    s.journal.begin(journal::Entry::job(
        &job.id,
        &job.job_type,
        &started_at,
        &job.payload,
    ));
    let reader = crate::backend::resources::reader(&s.session);
    let (claim, mut prefetched) = claim_with_prefetch(s, &job, &started_at, &*reader);
    let claimed = match claim {
        Ok(Some(row)) => row,
        Ok(None) => {
            log::debug!(target: "worker", "job {} was taken or cancelled before we claimed it", job.id);
            s.journal.end(&job.id);
            return;
        }
        // No answer, or an answer we cannot read: the PATCH may have landed (a timed-out
        // request can still reach the database later). Find out before moving on.
        Err(e) if e.is_retryable() || matches!(e, Error::Decode(_) | Error::TooLarge { .. }) => {
            // Rows read before a claim in doubt may be seconds old once it resolves.
            prefetched = None;
            match resolve_claim(s, &job, &started_at, &e) {
                Some(row) => row,
                None => {
                    // Unresolved at an immediate stop: the entry stays for the next start.
                    if !s.shutdown.is_immediate() {
                        s.journal.end(&job.id);
                    }
                    return;
                }
            }
        }
        Err(e) => {
            log::warn!(target: "worker", "claim of job {} refused, it stays queued and is retried by the next reconcile: {e}", job.id);
            s.journal.end(&job.id);
            return;
        }
    };
    let cancel = CancelToken::new();
    s.jobs
        .insert(&claimed.id, cancel.clone(), claimed.job_type.as_str());
    s.push_status(false);
    log::info!(target: "worker", "job started id={} type={} t_ms={}", claimed.id, claimed.job_type, unix_ms());
    let t0 = Instant::now();
    let outcome = run_handler(s, &claimed, &cancel, reader, prefetched);
    let outcome = if cancel.is_cancelled() && s.shutdown.is_immediate() {
        Outcome {
            status: FinalStatus::Failed,
            result: Some(
                json!({ "message": SHUTDOWN_JOB_ERROR, "job_type": claimed.job_type.as_str() }),
            ),
            error: Some(SHUTDOWN_JOB_ERROR.into()),
            debug: outcome.debug,
        }
    } else {
        outcome
    };
    if let Some(d) = &outcome.debug {
        if let Err(e) = wire::set_debug(&s.session, &claimed.id, d) {
            log::warn!(target: "worker", "could not store debug info of job {}: {e}", claimed.id);
        }
    }
    let body = wire::completion_body(
        outcome.status.as_str(),
        &outcome.result,
        &outcome.error,
        &now_rfc3339(),
    );
    outbox::deliver(s, &claimed.id, &body);
    match outcome.status {
        FinalStatus::Completed => s.jobs.completed.fetch_add(1, Ordering::SeqCst),
        _ => s.jobs.failed.fetch_add(1, Ordering::SeqCst),
    };
    s.metrics.job_finished(
        claimed.job_type.as_str(),
        outcome.status.as_str(),
        t0.elapsed(),
    );
    log::info!(target: "worker", "job finished id={} type={} status={} duration_ms={}", claimed.id, claimed.job_type, outcome.status.as_str(), t0.elapsed().as_millis());
    job_gone(s, &claimed.id);
    s.push_status(false);
}

/// The claim PATCH, with the reads the job's handler wants ([`jobs::prefetch`]) running beside
/// it on a scoped thread: both answers arrive after one round trip instead of two. The reads
/// are dropped by the caller when the claim does not land.
fn claim_with_prefetch(
    s: &Shared,
    job: &JobRow,
    started_at: &str,
    reader: &dyn crate::backend::resources::ResourceReader,
) -> (Result<Option<JobRow>, Error>, Option<jobs::Prefetched>) {
    let Some(plan) = jobs::prefetch(&job.job_type, &job.payload) else {
        return (wire::claim(&s.session, &job.id, started_at), None);
    };
    std::thread::scope(|sc| {
        let reads = sc.spawn(|| plan.read(reader));
        let claim = wire::claim(&s.session, &job.id, started_at);
        // A read thread that panicked leaves nothing: the handler reads again.
        (claim, reads.join().ok())
    })
}

/// A claim whose reply was lost: re-read the job with backoff (500 ms doubling to 30 s)
/// until the backend answers, then run it if our claim landed (recognised by the
/// `started_at` we sent), re-claim it (same `started_at`) if it is still queued, or skip it.
/// Meanwhile it counts as in flight, so a drain waits for it. Only an immediate stop ends
/// the wait; a claim that landed unseen is then failed by the next start's recovery.
fn resolve_claim(s: &Shared, job: &JobRow, started_at: &str, first: &Error) -> Option<JobRow> {
    log::warn!(target: "worker", "claim of job {} in doubt ({first}); checking whether it landed", job.id);
    s.jobs
        .insert(&job.id, CancelToken::new(), job.job_type.as_str());
    let r = resolve_claim_loop(s, job, started_at);
    if r.is_none() {
        job_gone(s, &job.id);
        s.push_status(false);
    }
    r
}

fn resolve_claim_loop(s: &Shared, job: &JobRow, started_at: &str) -> Option<JobRow> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let t0 = Instant::now();
    let mut failures = 0u32;
    loop {
        if s.shutdown
            .wait_for(crate::shutdown::Level::Immediate, backoff.next_delay())
        {
            log::warn!(target: "worker", "stopping with the claim of job {} unresolved; if it landed, the next start marks the job failed ({RESTART_JOB_ERROR})", job.id);
            return None;
        }
        let row = match wire::job_row(&s.session, &job.id) {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    log::warn!(target: "worker", "cannot check the claim of job {} yet (try {failures}, {} s): {e}; retrying", job.id, t0.elapsed().as_secs());
                }
                continue;
            }
        };
        match wire::classify_claim(row.as_ref(), &s.session.gateway_id, started_at) {
            wire::ClaimCheck::Ours(row) => {
                log::info!(target: "worker", "claim of job {} had landed (its reply was lost); running it", job.id);
                return Some(*row);
            }
            wire::ClaimCheck::NotOurs(why) => {
                log::info!(target: "worker", "claim of job {} did not land ({why}); skipping it", job.id);
                return None;
            }
            wire::ClaimCheck::Malformed(why) => {
                log::warn!(target: "worker", "claimed job {} has a malformed row ({why}); failing it", job.id);
                let o = jobs::processing_failed(
                    job.job_type.as_str(),
                    &format!("malformed gateway job row: {why}"),
                );
                let body =
                    wire::completion_body(o.status.as_str(), &o.result, &o.error, &now_rfc3339());
                outbox::deliver(s, &job.id, &body);
                s.jobs.failed.fetch_add(1, Ordering::SeqCst);
                return None;
            }
            // Not landed (or still on its way): claim again with the same `started_at`.
            // Whichever PATCH lands first wins; the other matches nothing.
            wire::ClaimCheck::StillQueued => match wire::claim(&s.session, &job.id, started_at) {
                Ok(Some(row)) => {
                    log::info!(target: "worker", "claimed job {} on the second try", job.id);
                    return Some(row);
                }
                Ok(None) => {}
                Err(e) => {
                    log::debug!(target: "worker", "re-claim of job {} failed: {e}", job.id)
                }
            },
        }
    }
}

fn run_handler(
    s: &Shared,
    job: &JobRow,
    cancel: &CancelToken,
    resources: Arc<dyn crate::backend::resources::ResourceReader>,
    prefetched: Option<jobs::Prefetched>,
) -> Outcome {
    if job.job_type != JobType::SubagentCancel {
        match wire::idempotency_conflict(&s.session, job) {
            Ok(true) => {
                let msg = "Duplicate gateway job idempotency key; skipping execution";
                return Outcome {
                    status: FinalStatus::Cancelled,
                    result: Some(json!({
                        "message": msg,
                        "idempotency_key": job.idempotency_key,
                        "attempt": job.attempt,
                    })),
                    error: Some(msg.into()),
                    debug: None,
                };
            }
            Ok(false) => {}
            Err(e) => {
                log::warn!(target: "worker", "idempotency check of job {} failed, running it: {e}", job.id)
            }
        }
    }
    let ctx = JobContext {
        job_id: job.id.clone(),
        providers: s.providers.clone(),
        children: s.children.clone(),
        cancel: cancel.clone(),
        shutdown: s.shutdown.clone(),
        session: Some(s.session.clone()),
        resources: Some(resources),
        shell_sessions: s.shell_sessions.clone(),
        control: s.control_source(),
        cancel_running: s.jobs.canceller(),
        subagent_runs: s.subagent_runs.clone(),
    };
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        jobs::dispatch(&job.job_type, &job.payload, &ctx, prefetched)
    })) {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the job handler panicked".into());
            log::error!(target: "worker", "handler of job {} ({}) panicked: {msg}", job.id, job.job_type);
            jobs::processing_failed(job.job_type.as_str(), &msg)
        }
    }
}
