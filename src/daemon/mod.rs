//! The daemon: pid file + lock, detaching, signals, runtime status file, the runtime.
//! Owner: Foundation (issue 2) except `runtime` (Connect, issue 4).
//!
//! [`run`] is the body of `start` in the foreground and of the detached child: it checks the
//! pairing, takes the pid lock, sets up logging, signals, the status file and the watchdog,
//! tells a waiting parent that it is up, runs [`runtime::run`], and on return removes the pid
//! file (or re-executes itself after an upgrade).

mod cancels;
pub mod detach;
pub mod health;
mod heartbeat;
mod ingress;
pub mod memory;
mod outbox;
pub mod pidfile;
pub mod runtime;
mod shared;
pub mod signals;
pub mod status;
pub mod statusfile;
pub mod watchdog;
mod worker;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, secure, state, Settings};
use crate::shutdown::{Level, Shutdown};

/// Environment variable carrying the write end of the readiness pipe to a detached child.
pub const READY_FD_ENV: &str = "PANORAMA_GATEWAY_READY_FD";

/// The write end of the pipe a launching parent waits on (detached start only).
struct ReadyPipe(Option<File>);

impl ReadyPipe {
    /// Takes the descriptor from the environment (and removes the variable, so neither a
    /// restart nor a child inherits it).
    fn from_env() -> ReadyPipe {
        let Some(v) = std::env::var_os(READY_FD_ENV) else {
            return ReadyPipe(None);
        };
        std::env::remove_var(READY_FD_ENV);
        let Some(fd) = v.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            return ReadyPipe(None);
        };
        // Only trust it if it really is a pipe we were given.
        // SAFETY: fstat/fcntl on an integer descriptor; checked before taking ownership.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if fd < 3
                || libc::fstat(fd, &mut st) != 0
                || (st.st_mode & libc::S_IFMT) != libc::S_IFIFO
            {
                return ReadyPipe(None);
            }
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            ReadyPipe(Some(File::from_raw_fd(fd)))
        }
    }

    fn send(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(format!("{msg}\n").as_bytes());
        }
    }
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Once a drain starts, bounds it: after the drain timeout in-flight work is stopped.
fn spawn_drain_guard(shutdown: Shutdown) {
    let timeout = crate::tuning::drain_timeout();
    let _ = std::thread::Builder::new()
        .name("drain-guard".into())
        .spawn(move || {
            while !shutdown.wait_for(Level::Drain, Duration::from_secs(3600)) {}
            if !shutdown.wait_for(Level::Immediate, timeout) {
                log::warn!(target: "daemon", "drain did not finish within {} s; stopping in-flight work now", timeout.as_secs());
                shutdown.request_immediate();
            }
        });
}

/// Panics (in any thread) are logged as one redacted error line with their location, instead
/// of raw text on stderr only.
fn install_panic_logger() {
    // The default hook is not chained: it prints the raw message to stderr (the log file when
    // detached) without redaction.
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        log::error!(target: "daemon", "panic in thread {thread} at {at}: {msg}");
    }));
}

/// Checks that `start` can run: paired and a backend configured. Returns the state.
pub fn preflight(settings: &Settings) -> Result<state::GatewayState, String> {
    let st = match state::load(&settings.paths.config_path) {
        Ok(Some(s)) if s.is_paired() => s,
        Ok(_) => return Err("not paired: run panorama-gateway pair <CODE>".into()),
        Err(e) => return Err(e.to_string()),
    };
    config::backend_config(settings, Some(&st))?;
    Ok(st)
}

/// Creates and tightens the gateway's own directories; the directory of an explicitly placed
/// pid or log file is created when missing but never changed (it may be /run or /tmp).
fn prepare_dirs(paths: &config::Paths) -> Result<(), String> {
    for dir in [paths.config_dir.clone(), paths.spool_dir.clone()] {
        secure::ensure_dir(&dir).map_err(|e| e.to_string())?;
    }
    for dir in [parent_of(&paths.pid_path), parent_of(&paths.log_path)] {
        secure::ensure_parent_dir(&dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A failed write of gateway.json (rotated tokens, provider health) must not stay a log line
/// nobody reads: `status` shows it and reports the gateway degraded until a write succeeds.
fn report_config_save_errors(status: &Arc<statusfile::StatusFile>, config_path: &Path) {
    let save_status = Arc::clone(status);
    let save_config = config_path.to_path_buf();
    state::set_save_observer(Box::new(move |err| {
        let err = err.map(|e| {
            format!("{e} (rotated tokens are kept in memory only: free disk space or fix the permissions of {}, or the next restart will need a re-pair)", save_config.display())
        });
        if let Some(e) = &err {
            log::error!(target: "daemon", "cannot save gateway.json: {e}");
        }
        save_status.update(&|s| s.config_save_error = err.clone());
    }));
}

/// SIGHUP: reopen the log, re-read gateway.json (the full-control toggle), bump the reload
/// counter the runtime watches (it compares it with the value it last saw, to act on the
/// toggle at once instead of at its next periodic refresh).
fn hup_handler(
    status: &Arc<statusfile::StatusFile>,
    config_path: &Path,
    reloads: &Arc<AtomicU64>,
) -> Box<dyn Fn() + Send> {
    let hup_status = Arc::clone(status);
    let reloads = Arc::clone(reloads);
    let config_path = config_path.to_path_buf();
    Box::new(move || {
        crate::logging::reopen();
        reloads.fetch_add(1, Ordering::SeqCst);
        match state::load(&config_path) {
            Ok(Some(s)) => {
                let fc = s.full_control_enabled;
                hup_status.update(&|r| r.full_control_enabled = Some(fc));
                log::info!(target: "daemon", "SIGHUP: log reopened, config re-read full_control_enabled={fc}");
            }
            Ok(None) => {
                log::warn!(target: "daemon", "SIGHUP: log reopened; gateway.json is missing")
            }
            Err(e) => {
                log::warn!(target: "daemon", "SIGHUP: log reopened; cannot re-read gateway.json: {e}")
            }
        }
    })
}

/// Runs the daemon in this process until it is stopped. `detached`: this is the background
/// child (stdio on the log file, a parent may wait on the readiness pipe). Returns the exit
/// code.
pub fn run(settings: &Settings, detached: bool) -> i32 {
    memory::tune();
    let mut ready = ReadyPipe::from_env();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let exe = std::env::current_exe().ok();
    let paths = &settings.paths;
    fn fail_with(ready: &mut ReadyPipe, msg: String) -> i32 {
        eprintln!("ERROR {msg}");
        ready.send(&format!("error {msg}"));
        1
    }
    macro_rules! fail {
        ($m:expr) => {
            fail_with(&mut ready, $m)
        };
    }

    // A running gateway wins over any complaint about the config: say it runs.
    if let Ok(pidfile::PidState::Running(pid)) = pidfile::probe(&paths.pid_path) {
        println!("Gateway already running (pid {pid})");
        ready.send(&format!("running {pid}"));
        return 0;
    }
    let st = match preflight(settings) {
        Ok(s) => s,
        Err(e) => return fail!(e),
    };
    if let Err(e) = prepare_dirs(paths) {
        return fail!(e);
    }
    // Handlers first: once the pid lock is held, `status` says "running" and a SIGTERM may
    // come at once; it must drain, not kill the process with the default action.
    let sigpipe = match signals::install() {
        Ok(p) => p,
        Err(e) => return fail!(format!("cannot install signal handlers: {e}")),
    };
    let lock = match pidfile::acquire(&paths.pid_path) {
        Ok(l) => l,
        Err(pidfile::AcquireError::AlreadyRunning(pid)) => {
            println!("Gateway already running (pid {pid})");
            ready.send(&format!("running {pid}"));
            return 0;
        }
        Err(pidfile::AcquireError::Failed(e)) => return fail!(e),
    };
    if let Err(e) = crate::logging::init_with(
        &paths.log_path,
        settings.log_format,
        settings.verbose,
        !detached,
        detached,
    ) {
        return fail!(format!("cannot open the log file: {e}"));
    }

    install_panic_logger();

    let pid = std::process::id();
    let version = crate::util::version().to_string();
    let status = statusfile::StatusFile::create(
        &paths.status_path,
        status::RuntimeStatus {
            pid,
            started_at: crate::util::now_rfc3339(),
            started_at_unix: crate::util::unix_now(),
            version: version.clone(),
            connection: "starting".into(),
            full_control_enabled: Some(st.full_control_enabled),
            ..Default::default()
        },
    );
    let updater = status.updater();
    let shutdown = Shutdown::new();
    report_config_save_errors(&status, &paths.config_path);
    let reloads = Arc::new(AtomicU64::new(0));
    let on_hup = hup_handler(&status, &paths.config_path, &reloads);
    let stop_requested = Arc::new(AtomicBool::new(false));
    if let Err(e) = signals::spawn_router(
        sigpipe,
        shutdown.clone(),
        on_hup,
        Arc::clone(&stop_requested),
    ) {
        return fail!(format!("cannot start the signal thread: {e}"));
    }
    spawn_drain_guard(shutdown.clone());
    let restart = match &exe {
        Some(exe) => watchdog::spawn(
            exe.clone(),
            argv.iter().skip(1).cloned().collect(),
            watchdog::WatchConfig::from_env(),
            shutdown.clone(),
            updater.clone(),
        ),
        None => watchdog::RestartFlag::default(),
    };

    log::info!(target: "daemon", "gateway started pid={pid} version={version} detached={detached} config={} log={}", paths.config_path.display(), paths.log_path.display());
    ready.send(&format!("ready {pid}"));
    if !detached {
        println!("Gateway running in the foreground (pid {pid}); press Ctrl-C to stop");
        let _ = std::io::stdout().flush();
    }

    let ctx = runtime::RuntimeContext {
        settings: settings.clone(),
        shutdown: shutdown.clone(),
        status: updater,
        reloads,
    };
    let result = runtime::run(ctx);
    // The runtime has returned: make sure helper threads wind down too.
    shutdown.request_drain();

    let code = match &result {
        Ok(()) => 0,
        Err(e) => {
            log::error!(target: "daemon", "gateway stopped with an error: {e}");
            eprintln!("ERROR {e}");
            1
        }
    };
    status.update(&|s| {
        s.connection = "stopped".into();
        s.jobs_in_flight = 0;
    });

    if restart.is_set() && stop_requested.load(Ordering::SeqCst) {
        log::info!(target: "daemon", "a stop was requested during the upgrade drain: not restarting");
    } else if restart.is_set() && result.is_ok() {
        if let Some(exe) = exe {
            log::info!(target: "daemon", "restarting into the upgraded binary path={}", exe.display());
            log::logger().flush();
            use std::os::unix::process::CommandExt;
            // The pid lock is released by exec (close-on-exec) and taken again by the new image.
            let err = std::process::Command::new(&exe)
                .args(argv.iter().skip(1))
                .exec();
            log::error!(target: "daemon", "restart failed: cannot execute {}: {err}; the gateway is stopping, start it again with panorama-gateway start", exe.display());
            lock.release();
            return 1;
        }
    }
    log::info!(target: "daemon", "gateway stopped pid={pid}");
    log::logger().flush();
    lock.release();
    code
}
