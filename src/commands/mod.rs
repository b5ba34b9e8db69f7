//! One file per command: pair (issue 4), start, stop, status, logs, full_control, doctor
//! (issue 2). `main_entry` parses, dispatches and maps errors to exit codes.

/// Parses the command line, runs the command, returns the process exit code.
pub fn main_entry() -> i32 {
    0
}

pub mod pair;
