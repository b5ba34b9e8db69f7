//! Starting the daemon in the background: re-execute this binary as `start --daemon-child` in a
//! new session (setsid) with stdin on /dev/null and stdout/stderr on the log file, then wait on
//! a pipe until the child reports `ready <pid>`, `running <pid>` (another daemon won the race)
//! or `error <message>`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{secure, Settings};
use crate::daemon::pidfile::{self, PidState};
use crate::daemon::READY_FD_ENV;

/// Outcome of a background start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    Started(u32),
    AlreadyRunning(u32),
}

/// How long the parent waits for the child to report.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn child_args(settings: &Settings) -> Vec<std::ffi::OsString> {
    let p = &settings.paths;
    let mut a: Vec<std::ffi::OsString> = vec![
        "start".into(),
        "--daemon-child".into(),
        "--config-dir".into(),
        p.config_dir.clone().into(),
        "--config-path".into(),
        p.config_path.clone().into(),
        "--log-path".into(),
        p.log_path.clone().into(),
        "--pid-path".into(),
        p.pid_path.clone().into(),
    ];
    if settings.verbose {
        a.push("--verbose".into());
    }
    if let Some(n) = &settings.device_name {
        a.push("--device-name".into());
        a.push(n.into());
    }
    let o = &settings.cli_overrides;
    for (flag, v) in [
        ("--claude-cli", &o.claude),
        ("--codex-cli", &o.codex),
        ("--gemini-cli", &o.gemini),
    ] {
        if let Some(v) = v {
            a.push(flag.into());
            a.push(v.clone().into());
        }
    }
    a
}

fn read_with_deadline(r: &mut File, deadline: Instant) -> io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let mut pfd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            continue;
        }
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&buf[..n]);
        if out.contains(&b'\n') {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
    }
}

/// Starts the daemon in the background (or finds it running). Err says what went wrong and
/// where to look.
pub fn launch(settings: &Settings) -> Result<Launch, String> {
    let paths = &settings.paths;
    match pidfile::probe(&paths.pid_path) {
        Ok(PidState::Running(pid)) => return Ok(Launch::AlreadyRunning(pid)),
        Ok(PidState::NotRunning { .. }) => {}
        Err(e) => {
            return Err(format!(
                "cannot read the pid file {}: {e}",
                paths.pid_path.display()
            ))
        }
    }
    super::preflight(settings)?;
    secure::ensure_dir(&paths.config_dir).map_err(|e| e.to_string())?;
    if let Some(d) = paths.log_path.parent() {
        secure::ensure_parent_dir(d).map_err(|e| e.to_string())?;
    }
    let log = secure::open_append_secure(&paths.log_path).map_err(|e| e.to_string())?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate the log descriptor: {e}"))?;

    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot create a pipe: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (mut r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let wfd = w.as_raw_fd();

    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the gateway executable to start: {e}"))?;
    let mut cmd = Command::new(&exe);
    cmd.args(child_args(settings))
        .env(READY_FD_ENV, wfd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // Keep the flag/env precedence of the backend settings across the re-exec.
    if let Some(u) = &settings.supabase_url {
        cmd.env("SUPABASE_URL", u);
    }
    if let Some(k) = &settings.anon_key {
        cmd.env("SUPABASE_ANON_KEY", k);
    }
    if settings.allow_insecure_http {
        cmd.env(crate::config::ALLOW_INSECURE_HTTP_ENV, "1");
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Let the readiness pipe survive exec.
            if libc::fcntl(wfd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(w); // only the child holds the write end now: EOF means it is gone
    let child_pid = child.id();
    drop(child); // not waited for: it outlives us

    let reply = read_with_deadline(&mut r, Instant::now() + READY_TIMEOUT).map_err(|e| {
        format!(
            "the gateway (pid {child_pid}) did not report within {} s ({e}); check {} and panorama-gateway status",
            READY_TIMEOUT.as_secs(),
            paths.log_path.display()
        )
    })?;
    let line = reply.lines().next().unwrap_or("").trim();
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "ready" => Ok(Launch::Started(rest.parse().unwrap_or(child_pid))),
        "running" => Ok(Launch::AlreadyRunning(rest.parse().unwrap_or(0))),
        "error" => Err(rest.to_string()),
        _ => Err(format!(
            "the gateway exited during startup; see {}",
            paths.log_path.display()
        )),
    }
}
