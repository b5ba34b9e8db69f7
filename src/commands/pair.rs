//! `pair <CODE>`: exchange a pairing code for a session and save it. Owner: Connect (issue 4).

use crate::config::Settings;

/// Parsed `pair` arguments (parsing: Foundation's cli.rs).
#[derive(Debug, Clone, Default)]
pub struct PairArgs {
    pub code: String,
    /// `--no-start`: do not start the daemon afterwards.
    pub no_start: bool,
}

/// Runs `pair`; returns the exit code. Prints its own output.
pub fn run(_settings: &Settings, _args: &PairArgs) -> i32 {
    eprintln!("pair is not available in this build yet");
    1
}
