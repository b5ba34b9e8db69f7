//! Ingress: the realtime reader's hooks and the reconcile thread, both feeding the workers'
//! queue (only this gateway's queued jobs, each once). The reconcile thread also drives the
//! outbox (held results, spool, crash recovery) between its polls.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use serde_json::{json, Value};

use super::shared::Shared;
use super::{cancels, outbox};
use crate::backend::jobs::{self as wire, JobRow, JobStatus, JobType, Level};
use crate::backend::realtime::ReaderHooks;
use crate::backend::Error;
use crate::util::lock;

/// Where job queries stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Ingress {
    #[default]
    Pending,
    Ok,
    Failing,
}

/// What ingress knows of the connection, and the dedup of jobs on their way.
#[derive(Default)]
pub(super) struct IngressState {
    /// Ids queued locally or running (dedup of realtime + reconcile).
    pub seen: Mutex<HashSet<String>>,
    pub realtime_up: AtomicBool,
    pub realtime_detail: Mutex<Option<String>>,
    pub down_since: Mutex<Option<Instant>>,
    pub last_reconnect_event: Mutex<Option<Instant>>,
    pub state: Mutex<Ingress>,
    pub last_reconcile_ok: Mutex<Option<Instant>>,
    /// The error of the last reconcile, if it failed.
    pub reconcile_error: Mutex<Option<String>>,
    malformed_logged: Mutex<HashSet<String>>,
}

/// Takes a job from realtime or reconcile: only this gateway's queued jobs, once.
fn offer(s: &Arc<Shared>, job: JobRow) {
    if job.status != JobStatus::Queued
        || job.gateway_id.as_deref() != Some(s.session.gateway_id.as_str())
    {
        return;
    }
    if !s.is_accepting() {
        return;
    }
    if !lock(&s.ingress.seen).insert(job.id.clone()) {
        return;
    }
    if job.job_type == JobType::SubagentCancel {
        // Bypasses the queue and the concurrency limit, into the bounded cancel pool.
        let id = job.id.clone();
        if !cancels::offer(s, job) {
            lock(&s.ingress.seen).remove(&id);
        }
        return;
    }
    let id = job.id.clone();
    match s.channels.to_workers.try_send(Box::new(job)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            lock(&s.ingress.seen).remove(&id);
            log::debug!(target: "ingress", "local queue full; job {id} stays queued for a later reconcile");
        }
    }
}

fn log_malformed(s: &Shared, id: Option<&str>, why: &str, source: &str) {
    let key = format!("{}:{why}", id.unwrap_or("?"));
    let fresh = {
        let mut m = lock(&s.ingress.malformed_logged);
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(key)
    };
    if fresh {
        log::warn!(target: "ingress", "skipped a malformed gateway job from {source}: id={} problem={why}", id.unwrap_or("unknown"));
        s.event(
            Level::Warn,
            "malformed_job",
            format!("Skipped a malformed gateway job row: {why}"),
            json!({ "job_id": id, "source": source }),
        );
    }
}

/// A queued row of ours that cannot be read: logged once, and its job failed with a clear
/// error (conditional on it still being queued) so it does not stay queued forever; the other
/// rows go on.
fn reject_malformed(s: &Shared, id: Option<&str>, why: &str, source: &str) {
    log_malformed(s, id, why, source);
    let Some(id) = id else { return };
    match wire::fail_malformed(&s.session, id, why) {
        Ok(true) => {
            log::warn!(target: "ingress", "failed malformed job {id} from {source}: {why}")
        }
        Ok(false) => {}
        Err(e) => {
            log::warn!(target: "ingress", "could not fail malformed job {id}: {e}; retrying at the next reconcile")
        }
    }
}

/// The realtime reader's view of the runtime.
pub(super) struct Hooks {
    pub shared: Arc<Shared>,
}

impl ReaderHooks for Hooks {
    fn stop(&self) -> bool {
        self.shared.shutdown.is_draining()
    }
    fn wait(&self, d: Duration) -> bool {
        self.shared.shutdown.sleep(d)
    }
    fn subscribed(&self) {
        let s = &self.shared;
        let was_down = lock(&s.ingress.down_since).take();
        s.ingress.realtime_up.store(true, Ordering::SeqCst);
        *lock(&s.ingress.realtime_detail) = None;
        s.wake_reconcile();
        if let Some(since) = was_down {
            let mut last = lock(&s.ingress.last_reconnect_event);
            if !last.is_some_and(|t| t.elapsed() <= Duration::from_secs(60)) {
                *last = Some(Instant::now());
                s.event(
                    Level::Info,
                    "realtime_reconnected",
                    format!(
                        "Realtime job channel reconnected after {} ms",
                        since.elapsed().as_millis()
                    ),
                    json!({ "down_ms": since.elapsed().as_millis() as u64 }),
                );
            }
        }
        s.push_status(true);
    }
    fn record(&self, record: Value) {
        // The binding is team-wide: another gateway's rows are none of our business, even
        // malformed ones.
        if let Some(g) = record.get("gateway_id").and_then(Value::as_str) {
            if g != self.shared.session.gateway_id {
                return;
            }
        }
        match wire::decode_job(&record) {
            Ok(job) => offer(&self.shared, job),
            Err(why) => {
                let id = record.get("id").and_then(Value::as_str);
                reject_malformed(&self.shared, id, &why, "realtime");
            }
        }
    }
    fn malformed(&self, what: &str) {
        log::warn!(target: "realtime", "{what}");
        // A row too deep for the frame decoder: reconcile reads rows one by one.
        self.shared.wake_reconcile();
    }
    fn disconnected(&self, reason: &str, retry_in: Duration) {
        let s = &self.shared;
        s.ingress.realtime_up.store(false, Ordering::SeqCst);
        s.metrics.reconnect();
        lock(&s.ingress.down_since).get_or_insert_with(Instant::now);
        *lock(&s.ingress.realtime_detail) = Some(format!("realtime: {reason}"));
        log::warn!(target: "realtime", "realtime channel down: {reason}; reconnecting in {} ms (jobs are still picked up by polling)", retry_in.as_millis());
        s.push_status(true);
    }
}

/// The reconcile thread: every interval (or when woken) it retries held results, flushes the
/// spool (and, once, recovers jobs a previous process left running), then polls the queued
/// jobs of this gateway.
pub(super) fn reconcile_loop(s: Arc<Shared>, wake: Receiver<()>) {
    let mut limit = wire::RECONCILE_LIMIT;
    let mut startup_done = false;
    let mut last_error_log: Option<Instant> = None;
    loop {
        if s.shutdown.is_draining() {
            return;
        }
        outbox::between_polls(&s, &mut startup_done);
        let before = *lock(&s.ingress.state);
        match wire::reconcile(&s.session, limit) {
            Ok((jobs, bad)) => {
                // The whole backlog fit: back to the full page size.
                if jobs.len() + bad.len() < limit && limit < wire::RECONCILE_LIMIT {
                    log::info!(target: "ingress", "queued jobs fit in one reconcile again; page size back to {}", wire::RECONCILE_LIMIT);
                    limit = wire::RECONCILE_LIMIT;
                }
                *lock(&s.ingress.last_reconcile_ok) = Some(Instant::now());
                // The backend answers again: queued events may go now.
                if s.events.clear_retry() {
                    s.wake_heartbeat();
                }
                *lock(&s.ingress.state) = Ingress::Ok;
                *lock(&s.ingress.reconcile_error) = None;
                for (id, why) in bad {
                    reject_malformed(&s, id.as_deref(), &why, "reconcile");
                }
                for j in jobs {
                    offer(&s, j);
                }
            }
            // Big rows (long prompts) can make a page exceed the body limit: fetch fewer at
            // once right away, or the backlog would never be seen.
            Err(Error::TooLarge { .. }) if limit > 1 => {
                limit = (limit / 4).max(1);
                log::warn!(target: "ingress", "queued jobs are too large for one reconcile reply; fetching {limit} at a time");
                continue;
            }
            Err(e) => {
                *lock(&s.ingress.state) = Ingress::Failing;
                *lock(&s.ingress.reconcile_error) =
                    Some(crate::util::truncate_chars(&e.to_string(), 300, "..."));
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    log::warn!(target: "ingress", "reconcile of queued jobs failed: {e}");
                    last_error_log = Some(Instant::now());
                }
            }
        }
        if *lock(&s.ingress.state) != before
            || before == Ingress::Pending
            || s.heartbeat.last_sent() != Some(s.heartbeat_status())
        {
            s.wake_heartbeat();
        }
        s.push_status(true);
        match wake.recv_timeout(s.tuning.reconcile) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if s.shutdown.sleep(s.tuning.reconcile) {
                    return;
                }
            }
        }
    }
}
