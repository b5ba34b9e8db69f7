//! panorama-gateway: connects the AI coding CLIs and the shell of a host to a Panorama team.
//!
//! Module map: see DESIGN.md. `main` parses the command line, runs one command and maps its
//! error to an exit code.

mod backend;
mod cli;
mod commands;
mod config;
mod daemon;
mod exec;
mod jobs;
mod logging;
mod metrics;
mod providers;
mod redact;
mod shutdown;
mod state_store;
mod tuning;
mod util;

fn main() {
    std::process::exit(commands::main_entry());
}
