//! Job handlers: one per job type. Owner of dispatch: Connect (issue 4); `model_run` and
//! `diagnostic`: Providers (issue 5).
//!
//! A handler gets the job's payload and a context, and returns an [`Outcome`]; the worker turns
//! that into the completion PATCH. Handlers never touch the websocket.

pub mod control;
pub mod diagnostic;
pub mod journal;
pub mod model_run;
pub mod recovery;
pub mod shell;
pub mod subagent;

use std::sync::Arc;

use serde_json::Value;

pub use crate::backend::jobs::JobType;
use crate::exec::{CancelToken, Children};
use crate::providers::{Registry, Stage};
use crate::shutdown::Shutdown;

/// The final status a handler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalStatus {
    Completed,
    Failed,
    Cancelled,
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Completed => "completed",
            FinalStatus::Failed => "failed",
            FinalStatus::Cancelled => "cancelled",
        }
    }
}

/// What a handler produced: the completion body, plus an optional `debug` object (redacted,
/// bounded) that the worker PATCHes separately (PROTOCOL.md §7 "Debug").
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: FinalStatus,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub debug: Option<Value>,
}

/// The machine-control layers as read for one check (PROTOCOL.md §8). The resource-level
/// opt-in is per job and checked by the handler. See [`control`] for the check at the moment
/// of use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlState {
    /// `full_control_enabled` in gateway.json (`panorama-gateway full-control enable`).
    pub install_enabled: bool,
    /// `team_gateways.full_control_enabled`: as last read after a heartbeat, or read from the
    /// backend for this check by the handler ([`control::machine_control_with_team`]). False
    /// when it could not be read.
    pub team_enabled: bool,
    /// The team toggle could be read. When false, `team_enabled` is false because it is
    /// unknown, and machine control is denied.
    pub team_known: bool,
    /// The last accepted heartbeat is younger than 90 s.
    pub heartbeat_fresh: bool,
}

impl ControlState {
    /// Machine control is effective only when every gateway-side layer allows it.
    #[cfg(test)]
    pub fn allowed(&self) -> bool {
        self.install_enabled && self.team_known && self.team_enabled && self.heartbeat_fresh
    }

    /// Why machine control is not available, for error messages; None when allowed.
    pub fn denial(&self) -> Option<&'static str> {
        if !self.install_enabled {
            Some("host machine control is disabled on this gateway (run `panorama-gateway full-control enable` on the host)")
        } else if !self.team_enabled {
            Some("machine control is disabled for this gateway in the team settings")
        } else if !self.heartbeat_fresh {
            Some("the gateway's heartbeat is stale, so machine control is paused until it reaches Panorama again")
        } else {
            None
        }
    }
}

/// Cancels a job that runs in this gateway, by job id; true when it was running here.
pub type CancelRunning = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Reads the machine-control layers when a handler asks: the install toggle from gateway.json
/// and the heartbeat's freshness at the time of the call, the team toggle as the heartbeat last
/// read it. A handler that acts on the machine reads the team toggle from the backend itself
/// ([`control`]).
pub type ControlSource = Arc<dyn Fn() -> ControlState + Send + Sync>;

/// What a handler may use.
pub struct JobContext {
    pub job_id: String,
    pub providers: Arc<Registry>,
    /// Running children by job id: cancellation and shutdown reach them through it.
    pub children: Arc<Children>,
    /// Set when this job is cancelled or the daemon stops now.
    pub cancel: CancelToken,
    pub shutdown: Shutdown,
    /// The backend session, for handlers that read or write backend rows (subagents, remote
    /// shell resources) through `crate::backend`. None where no backend exists (unit tests).
    pub session: Option<Arc<crate::backend::session::Session>>,
    /// The remote shell's reads (resource and gateway rows). None where no backend exists.
    pub resources: Option<Arc<dyn crate::backend::resources::ResourceReader>>,
    /// The open shell sessions (owned by the runtime).
    pub shell_sessions: Arc<shell::ShellSessions>,
    /// Machine-control layers, read on demand through [`JobContext::control`].
    pub control: ControlSource,
    /// Reaches other running jobs (subagent_cancel).
    pub cancel_running: CancelRunning,
    /// The subagent runs active here and the cancels waiting for theirs (owned by the runtime).
    pub subagent_runs: Arc<subagent::active::SubagentRuns>,
}

impl JobContext {
    /// The machine-control layers with the team toggle as last read after a heartbeat (reads
    /// the install toggle from gateway.json).
    pub fn control(&self) -> ControlState {
        (self.control)()
    }
}

/// Backend reads a handler wants for its job, known from the payload before the claim: the
/// worker starts them alongside the claim PATCH, so they cost no round trip of their own, and
/// drops them when the claim does not land. Still read "at the moment of use": in the same
/// round of requests as the claim, never earlier.
pub enum Prefetch {
    /// The remote shell rows (`shell_exec`): this gateway's row and the resource's.
    RemoteShell { resource_id: Option<String> },
}

/// What a [`Prefetch`] read, handed to the handler.
pub enum Prefetched {
    RemoteShell {
        resource_id: Option<String>,
        rows: crate::backend::resources::RemoteShellRows,
    },
}

impl Prefetch {
    /// Does the reads (blocking; the worker runs this beside the claim).
    pub fn read(self, reader: &dyn crate::backend::resources::ResourceReader) -> Prefetched {
        match self {
            Prefetch::RemoteShell { resource_id } => Prefetched::RemoteShell {
                rows: reader.remote_shell_rows(resource_id.as_deref()),
                resource_id,
            },
        }
    }
}

/// The reads the handler of `job_type` wants started with the claim, if any.
pub fn prefetch(job_type: &JobType, payload: &Value) -> Option<Prefetch> {
    match job_type {
        JobType::ShellExec => shell::exec_prefetch(payload),
        _ => None,
    }
}

/// Runs the handler for `job_type`. Unknown types fail with "Unsupported job type: X"
/// (PROTOCOL.md §7). The worker catches panics around this call. `prefetched`: what
/// [`prefetch`] read alongside this job's claim.
pub fn dispatch(
    job_type: &JobType,
    payload: &Value,
    ctx: &JobContext,
    prefetched: Option<Prefetched>,
) -> Outcome {
    // Claimed right after the start, while the CLIs are checked (off the start-up path):
    // these jobs need the CLIs, and a subagent run their health as the backend sees it.
    match job_type {
        JobType::Diagnostic | JobType::ModelRun => ctx.providers.wait_for(Stage::Discovered),
        JobType::SubagentRun => ctx.providers.wait_for(Stage::Checked),
        _ => {}
    }
    match job_type {
        JobType::Diagnostic => diagnostic::handle(payload, ctx),
        JobType::ModelRun => model_run::handle(payload, ctx),
        JobType::SubagentRun => subagent::handle_run(payload, ctx),
        JobType::SubagentCancel => subagent::handle_cancel(payload, ctx),
        JobType::ShellExec => shell::handle_exec(payload, ctx, prefetched),
        JobType::ShellSession => shell::handle_session(payload, ctx),
        JobType::Other(other) => unsupported(other),
    }
}

/// The outcome for a job type this gateway does not handle.
pub fn unsupported(job_type: &str) -> Outcome {
    Outcome {
        status: FinalStatus::Failed,
        result: Some(serde_json::json!({
            "message": "Unsupported job type",
            "job_type": job_type,
        })),
        error: Some(format!("Unsupported job type: {job_type}")),
        debug: None,
    }
}

/// The outcome for a handler that panicked or could not run (PROTOCOL.md §7).
pub fn processing_failed(job_type: &str, message: &str) -> Outcome {
    Outcome {
        status: FinalStatus::Failed,
        result: Some(serde_json::json!({
            "message": "Gateway job processing failed",
            "job_type": job_type,
        })),
        error: Some(message.to_string()),
        debug: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{ControlState, FinalStatus};

    #[test]
    fn an_unknown_job_type_fails_with_the_reference_wire_text() {
        let o = super::unsupported("noop");
        assert_eq!(o.status, FinalStatus::Failed);
        assert_eq!(
            o.result,
            Some(serde_json::json!({"message": "Unsupported job type", "job_type": "noop"}))
        );
        assert_eq!(o.error.as_deref(), Some("Unsupported job type: noop"));
    }

    #[test]
    fn machine_control_needs_every_layer() {
        let all = ControlState {
            install_enabled: true,
            team_enabled: true,
            team_known: true,
            heartbeat_fresh: true,
        };
        assert!(all.allowed());
        assert_eq!(all.denial(), None);
        let no_install = ControlState {
            install_enabled: false,
            ..all
        };
        assert!(!no_install.allowed());
        assert!(no_install.denial().unwrap().contains("full-control enable"));
        let no_team = ControlState {
            team_enabled: false,
            ..all
        };
        assert!(no_team.denial().unwrap().contains("team settings"));
        let stale = ControlState {
            heartbeat_fresh: false,
            ..all
        };
        assert!(stale.denial().unwrap().contains("heartbeat"));
    }
}
