//! The cancel threads: `subagent_cancel` jobs bypass the workers' queue and concurrency limit
//! (a cancel must act while every worker is busy with the runs it cancels), but they are
//! bounded (issue 8: one thread per cancel job gave 3,027 threads and 268 MB under 3,000
//! cancels against a slow backend). A small fixed pool reads a bounded channel; a cancel for a
//! run that already has one queued or in progress is coalesced: it waits beside that one (at
//! most [`WAITING`] of them in all) and the same cancel thread runs it right after, when it
//! finds the run already cancelled and completes at once. Past that bound, or when the channel
//! is full, a cancel job is not taken and stays queued in the backend for a later reconcile.
//! Memory stays flat whatever the number of cancel jobs.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, TrySendError};
use serde_json::Value;

use super::shared::Shared;
use super::worker;
use crate::backend::jobs::JobRow;
use crate::util::lock;

/// Cancel threads.
pub(super) const THREADS: usize = 2;
/// Cancel jobs waiting for a cancel thread.
pub(super) const QUEUE: usize = 64;
/// Coalesced cancel jobs waiting behind the cancel of the same run, in all.
pub(super) const WAITING: usize = 256;

/// The runs with a cancel queued or in progress (the coalescing key), each with the
/// duplicates waiting behind it.
#[derive(Default)]
pub(super) struct CancelState {
    targets: Mutex<HashMap<String, VecDeque<Box<JobRow>>>>,
}

/// What a cancel job aims at: its subagent and run (trimmed), as the handler reads them.
fn target(payload: &Value) -> String {
    let s = |a: &str, b: &str| {
        payload
            .get(a)
            .or_else(|| payload.get(b))
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    format!(
        "{}/{}",
        s("subagent_id", "subagentId"),
        s("run_id", "runId")
    )
}

/// Takes a cancel job for the pool. False: it was not taken (a duplicate of a cancel in
/// flight, or the pool is full) and stays queued for a later reconcile.
pub(super) fn offer(s: &Shared, job: JobRow) -> bool {
    let key = target(&job.payload);
    {
        let mut m = lock(&s.cancels.targets);
        let waiting: usize = m.values().map(VecDeque::len).sum();
        match m.get_mut(&key) {
            Some(q) if waiting < WAITING => {
                log::debug!(target: "worker", "cancel job {} coalesced behind the cancel of {key} on its way", job.id);
                q.push_back(Box::new(job));
                return true;
            }
            Some(_) => {
                log::debug!(target: "worker", "cancel job {} stays queued: {WAITING} coalesced cancels already wait", job.id);
                return false;
            }
            None => {
                m.insert(key.clone(), VecDeque::new());
            }
        }
    }
    match s.channels.to_cancels.try_send(Box::new(job)) {
        Ok(()) => true,
        Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
            // Duplicates that coalesced behind it meanwhile stay queued with it.
            let behind = lock(&s.cancels.targets).remove(&key);
            for d in behind.into_iter().flatten() {
                lock(&s.ingress.seen).remove(&d.id);
            }
            log::debug!(target: "worker", "cancel queue full; cancel job {} stays queued", j.id);
            false
        }
    }
}

/// One cancel thread: runs cancel jobs until the drain disconnects `stop`.
pub(super) fn cancel_loop(s: Arc<Shared>, from_ingress: Receiver<Box<JobRow>>, stop: Receiver<()>) {
    loop {
        crossbeam_channel::select! {
            recv(from_ingress) -> job => match job {
                Ok(job) => {
                    let key = target(&job.payload);
                    let mut next = Some(job);
                    // The job, then the duplicates that queued up behind it meanwhile.
                    while let Some(job) = next.take() {
                        run_one(&s, job);
                        let mut m = lock(&s.cancels.targets);
                        next = m.get_mut(&key).and_then(VecDeque::pop_front);
                        if next.is_none() {
                            m.remove(&key);
                        }
                    }
                }
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        }
    }
}

fn run_one(s: &Shared, job: Box<JobRow>) {
    let id = job.id.clone();
    if s.is_accepting() {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| worker::process(s, *job)));
        if r.is_err() {
            log::error!(target: "worker", "processing cancel job {id} panicked; the cancel thread continues");
            s.jobs.remove(&id);
        }
    }
    lock(&s.ingress.seen).remove(&id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_coalescing_key_is_the_target_run() {
        assert_eq!(
            target(&json!({"subagent_id": " s1 ", "run_id": "r1"})),
            target(&json!({"subagentId": "s1", "runId": "r1", "reason": "x"}))
        );
        assert_ne!(
            target(&json!({"subagent_id": "s1", "run_id": "r1"})),
            target(&json!({"subagent_id": "s1", "run_id": "r2"}))
        );
    }
}
