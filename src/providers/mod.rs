//! Provider CLIs: discovery, probing, health and capabilities; one file per CLI. Knows CLIs,
//! nothing about the wire. Owner: Providers (issue 5).

use serde_json::Value;

use crate::config::CliOverrides;

/// The discovered provider CLIs (filled in by issue 5).
#[derive(Debug, Default)]
pub struct Registry {}

/// One line of `doctor` for one provider.
#[derive(Debug, Clone)]
pub struct ProviderCheck {
    /// `claude_code` | `codex` | `gemini`.
    pub id: String,
    pub ok: bool,
    /// Resolved executable, if found.
    pub command: Option<std::path::PathBuf>,
    pub version: Option<String>,
    /// What is wrong and what to do, when not ok.
    pub detail: Option<String>,
}

impl Registry {
    /// Finds each CLI (flag/env override > PATH > usual install locations) and probes it with
    /// short timeouts. Never fails: a missing CLI is recorded as unavailable.
    pub fn discover(_overrides: &CliOverrides) -> Registry {
        Registry {}
    }

    /// One check per provider, for `doctor`.
    pub fn doctor_report(&self) -> Vec<ProviderCheck> {
        Vec::new()
    }

    /// The `providers` object of capabilities v1 (PROTOCOL.md §9), all three ids present.
    pub fn capabilities_providers(&self) -> Value {
        Value::Object(Default::default())
    }
}
