//! The subagent runs of this gateway in memory (subagents-shell.md §9): the active run of each
//! subagent (at most one), and the cancels that arrived before their run started. One object,
//! owned by the runtime and handed to the handlers through `JobContext` (no global registry).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::util::lock;

/// Pending cancels kept at most (oldest dropped first). A dropped one is not lost: the cancel
/// job also wrote `metadata.cancel_run_id`, which the run job reads before it starts.
pub const PENDING_LIMIT: usize = 1024;

#[derive(Debug, Clone)]
struct Active {
    subagent_id: String,
    run_id: String,
    job_id: String,
    cancel_reason: Option<String>,
}

#[derive(Default)]
pub struct SubagentRuns {
    active: Mutex<Vec<Active>>,
    /// (run id or subagent id, reason), bounded by [`PENDING_LIMIT`].
    pending: Mutex<VecDeque<(String, String)>>,
}

/// Holds a subagent's active slot; released when the run job ends, whatever the path out.
pub struct ActiveGuard {
    runs: Arc<SubagentRuns>,
    subagent_id: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        lock(&self.runs.active).retain(|a| a.subagent_id != self.subagent_id);
    }
}

impl SubagentRuns {
    /// Reserves the subagent for `job_id`; None while another run of it is active here.
    pub fn reserve(self: &Arc<Self>, subagent_id: &str, job_id: &str) -> Option<ActiveGuard> {
        let mut g = lock(&self.active);
        if g.iter().any(|a| a.subagent_id == subagent_id) {
            return None;
        }
        g.push(Active {
            subagent_id: subagent_id.to_string(),
            run_id: String::new(),
            job_id: job_id.to_string(),
            cancel_reason: None,
        });
        Some(ActiveGuard {
            runs: Arc::clone(self),
            subagent_id: subagent_id.to_string(),
        })
    }

    /// The cancel reason recorded for the subagent's active run.
    pub fn cancel_reason(&self, subagent_id: &str) -> Option<String> {
        lock(&self.active)
            .iter()
            .find(|a| a.subagent_id == subagent_id)
            .and_then(|a| a.cancel_reason.clone())
    }

    /// Takes the pending cancels for `run_id` / `subagent_id`; the reason of the first one.
    pub fn take_pending(&self, run_id: &str, subagent_id: &str) -> Option<String> {
        let mut g = lock(&self.pending);
        let reason = g
            .iter()
            .find(|(k, _)| k == run_id || k == subagent_id)
            .map(|(_, r)| r.clone());
        g.retain(|(k, _)| k != run_id && k != subagent_id);
        reason
    }

    /// Records the run id of the job's active run. Under the active lock, so a cancel sees
    /// either the run id or leaves a pending cancel that is taken here (its reason returned).
    pub fn attach_run(&self, subagent_id: &str, job_id: &str, run_id: &str) -> Option<String> {
        let mut g = lock(&self.active);
        let a = g
            .iter_mut()
            .find(|a| a.subagent_id == subagent_id && a.job_id == job_id)?;
        a.run_id = run_id.to_string();
        let reason = self.take_pending(run_id, subagent_id)?;
        a.cancel_reason = Some(reason.clone());
        Some(reason)
    }

    /// A cancel request: marks the active run (returns its job id) or leaves a pending cancel.
    pub fn request_cancel(&self, subagent_id: &str, run_id: &str, reason: &str) -> Option<String> {
        let mut g = lock(&self.active);
        if let Some(a) = g
            .iter_mut()
            .find(|a| a.subagent_id == subagent_id && a.run_id == run_id)
        {
            a.cancel_reason = Some(reason.to_string());
            return Some(a.job_id.clone());
        }
        let mut p = lock(&self.pending);
        p.retain(|(k, _)| k != run_id);
        if p.len() >= PENDING_LIMIT {
            p.pop_front();
        }
        p.push_back((run_id.to_string(), reason.to_string()));
        None
    }

    /// Pending cancels held.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_active_run_per_subagent_and_cancels_reach_it_or_wait() {
        let r = Arc::new(SubagentRuns::default());
        let g = r.reserve("s1", "j1").unwrap();
        assert!(r.reserve("s1", "j2").is_none());
        // Before the run id is known, a cancel waits as pending and is taken when it is.
        assert_eq!(r.request_cancel("s1", "r1", "stop"), None);
        assert_eq!(r.attach_run("s1", "j1", "r1").as_deref(), Some("stop"));
        assert_eq!(r.cancel_reason("s1").as_deref(), Some("stop"));
        assert_eq!(r.pending_len(), 0);
        // Once attached, a cancel reaches the running job.
        assert_eq!(r.request_cancel("s1", "r1", "again").as_deref(), Some("j1"));
        drop(g);
        assert!(r.reserve("s1", "j3").is_some());
    }

    #[test]
    fn pending_cancels_stay_bounded_and_coalesce_per_run() {
        let r = SubagentRuns::default();
        for i in 0..(PENDING_LIMIT * 3) {
            r.request_cancel("s", &format!("run-{i}"), "x");
            r.request_cancel("s", &format!("run-{i}"), "dup");
        }
        assert_eq!(r.pending_len(), PENDING_LIMIT);
        let last = format!("run-{}", PENDING_LIMIT * 3 - 1);
        assert_eq!(r.take_pending(&last, "other").as_deref(), Some("dup"));
    }
}
