//! The cancel threads: `subagent_cancel` jobs bypass the workers' queue and concurrency limit
//! (a cancel must act while every worker is busy with the runs it cancels), but they are
//! bounded (issue 8: one thread per cancel job gave 3,027 threads and 268 MB under 3,000
//! cancels against a slow backend). A small fixed pool reads a bounded channel; a cancel for a
//! run that already has one queued or in progress is coalesced: it is not taken now and stays
//! queued in the backend, and a later reconcile offers it again once the first is done (by
//! then it finds the run cancelled and completes at once). A full channel leaves the job
//! queued the same way. Memory stays flat whatever the number of cancel jobs.

use std::collections::HashSet;
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

/// The runs with a cancel queued or in progress (the coalescing key).
#[derive(Default)]
pub(super) struct CancelState {
    targets: Mutex<HashSet<String>>,
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
    if !lock(&s.cancels.targets).insert(key.clone()) {
        log::debug!(target: "worker", "cancel job {} coalesced: a cancel of {key} is already on its way; it stays queued", job.id);
        return false;
    }
    match s.channels.to_cancels.try_send(Box::new(job)) {
        Ok(()) => true,
        Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
            lock(&s.cancels.targets).remove(&key);
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
                    let (id, key) = (job.id.clone(), target(&job.payload));
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| worker::process(&s, *job)));
                    if r.is_err() {
                        log::error!(target: "worker", "processing cancel job {id} panicked; the cancel thread continues");
                        s.jobs.remove(&id);
                    }
                    lock(&s.cancels.targets).remove(&key);
                    lock(&s.ingress.seen).remove(&id);
                }
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        }
    }
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
