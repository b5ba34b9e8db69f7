//! Where state lives and how to reach the backend, resolved flag > environment > default.
//! Owner: Foundation (issue 2). Consumers: every command, the runtime, providers.

pub mod state;

use std::path::PathBuf;

/// The files of one gateway install. Resolved once per process by the CLI layer.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `~/.panorama/gateway` by default (0700).
    pub config_dir: PathBuf,
    /// `gateway.json` (0600).
    pub config_path: PathBuf,
    /// `gateway.log`.
    pub log_path: PathBuf,
    /// `gateway.pid` (flock'ed by the running daemon).
    pub pid_path: PathBuf,
    /// `gateway.status.json`: the daemon's runtime status, read by `status`.
    pub status_path: PathBuf,
    /// Owner-only directory for results the backend has not yet accepted.
    pub spool_dir: PathBuf,
}

/// `--claude-cli` / `--codex-cli` / `--gemini-cli` (already merged with their env vars).
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub claude: Option<PathBuf>,
    pub codex: Option<PathBuf>,
    pub gemini: Option<PathBuf>,
}

/// Everything the command line and the environment said, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    pub verbose: bool,
    /// `--device-name` > `PANORAMA_GATEWAY_DEVICE_NAME` (hostname is applied by `pair`).
    pub device_name: Option<String>,
    pub cli_overrides: CliOverrides,
    /// `--supabase-url` > `SUPABASE_URL` > `PANORAMA_SUPABASE_URL` (saved/embedded come later).
    pub supabase_url: Option<String>,
    /// `--anon-key` > `SUPABASE_ANON_KEY` > `PANORAMA_SUPABASE_ANON_KEY` > `SUPABASE_PUBLISHABLE_KEY`.
    pub anon_key: Option<String>,
}

/// The backend to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:54321`.
    pub url: String,
    pub anon_key: String,
}
