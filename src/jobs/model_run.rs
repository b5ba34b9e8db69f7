//! `model_run` jobs (PROTOCOL.md "model_run", providers.md). Owner: Providers (issue 5).

use serde_json::Value;

use super::{JobContext, Outcome};

pub fn handle(_payload: &Value, _ctx: &JobContext) -> Outcome {
    super::Outcome {
        status: super::FinalStatus::Failed,
        result: None,
        error: Some("model_run jobs are not available in this build yet".into()),
        debug: None,
    }
}
