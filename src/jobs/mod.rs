//! Job handlers: one per job type. Owner of dispatch: Connect (issue 4); `model_run` and
//! `diagnostic`: Providers (issue 5).
//!
//! A handler gets the job's payload and a context, and returns an [`Outcome`]; the worker turns
//! that into the completion PATCH. Handlers never touch the websocket.

pub mod diagnostic;
pub mod model_run;

use std::sync::Arc;

use serde_json::Value;

use crate::daemon::shutdown::Shutdown;
use crate::exec::{CancelToken, Children};
use crate::providers::Registry;

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

/// What a handler may use.
pub struct JobContext {
    pub job_id: String,
    pub providers: Arc<Registry>,
    /// Running children by job id: cancellation and shutdown reach them through it.
    pub children: Arc<Children>,
    /// Set when this job is cancelled or the daemon stops now.
    pub cancel: CancelToken,
    pub shutdown: Shutdown,
}

/// Runs the handler for `job_type`. Unknown types fail with "Unsupported job type: X"
/// (PROTOCOL.md §7). The worker catches panics around this call.
pub fn dispatch(job_type: &str, payload: &Value, ctx: &JobContext) -> Outcome {
    match job_type {
        "diagnostic" => diagnostic::handle(payload, ctx),
        "model_run" => model_run::handle(payload, ctx),
        other => unsupported(other),
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
