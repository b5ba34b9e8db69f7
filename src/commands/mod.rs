//! One file per command: pair (issue 4), start, stop, status, logs, full_control, doctor
//! (issue 2). `main_entry` parses, dispatches and maps errors to exit codes.

pub mod doctor;
pub mod full_control;
pub mod logs;
pub mod pair;
pub mod service;
pub mod start;
pub mod status;
pub mod stop;
pub mod unpair;

use crate::cli::{self, Command, Parsed};
use crate::config;

/// Restores the default SIGPIPE action, so `status | head -1` ends quietly instead of failing
/// on a closed stdout. Only for commands that write nothing but stdout (no sockets, no child
/// pipes).
fn default_sigpipe() {
    // SAFETY: setting a standard disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses the command line, runs the command, returns the process exit code.
pub fn main_entry() -> i32 {
    let parsed = match cli::parse(std::env::args_os().skip(1)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    if matches!(
        parsed,
        Parsed::Help(_)
            | Parsed::Version
            | Parsed::Run {
                command: Command::Status { .. } | Command::Logs { .. },
                ..
            }
    ) {
        default_sigpipe();
    }
    let (global, command) = match parsed {
        Parsed::Help(text) => {
            print!("{text}");
            return 0;
        }
        Parsed::Version => {
            println!("{}", cli::version_text());
            return 0;
        }
        Parsed::Run { global, command } => (global, command),
    };
    // Env files first: they may set the path variables resolved below.
    if let Err(e) =
        config::envfile::load_requested(global.env_name.as_deref(), global.env_file.as_deref())
    {
        eprintln!("ERROR {e}");
        return 1;
    }
    let settings = match config::resolve(&global.overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ERROR {e}");
            return 1;
        }
    };
    match command {
        Command::Pair { code, no_start } => {
            pair::run(&settings, &pair::PairArgs { code, no_start })
        }
        Command::Start {
            foreground,
            daemon,
            daemon_child,
            check_config,
        } => {
            if check_config {
                start::check_config(&settings)
            } else {
                start::run(&settings, foreground, daemon, daemon_child)
            }
        }
        Command::Stop {
            force,
            timeout_secs,
        } => stop::run(&settings, force, timeout_secs),
        Command::Status { json } => status::run(&settings, json),
        Command::Logs { lines, follow } => logs::run(&settings, lines, follow),
        Command::Doctor { json } => doctor::run(&settings, json),
        Command::FullControl { action } => full_control::run(&settings, action),
        Command::Unpair => unpair::run(&settings),
        Command::Service {
            action,
            system,
            user,
            unit_dir,
        } => service::run(
            &settings,
            action,
            &service::ServiceArgs {
                system,
                user,
                unit_dir,
            },
        ),
    }
}

/// `~/x` for paths under the home directory (human output).
pub fn display_path(p: &std::path::Path) -> String {
    if let Some(h) = home::home_dir() {
        if !h.as_os_str().is_empty() && h != std::path::Path::new("/") {
            if let Ok(rest) = p.strip_prefix(&h) {
                return if rest.as_os_str().is_empty() {
                    "~".into()
                } else {
                    format!("~/{}", rest.display())
                };
            }
        }
    }
    p.display().to_string()
}
