//! `service install|uninstall|status`: a systemd unit that runs `start --foreground` for good.
//! A user unit by default (`~/.config/systemd/user`), a system unit with `User=` for
//! `--system`. The unit bakes in the PATH and HOME of the shell that installs it (a service's
//! default PATH hides `claude`/`codex`/`gemini` in `~/.local/bin` or an npm prefix), restarts
//! on failure, and gives the drain longer than it needs to stop. It only writes or removes the
//! unit file and prints the systemctl command to run next: it never calls systemd itself.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use crate::cli::ServiceAction;
use crate::config::{self, Settings};

pub const UNIT_NAME: &str = "panorama-gateway.service";
const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// Parsed `service` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceArgs {
    pub system: bool,
    /// `--user NAME`: the account a system unit runs as.
    pub user: Option<String>,
    /// `--unit-dir PATH`: where the unit goes (packaging, tests).
    pub unit_dir: Option<PathBuf>,
}

/// An account from the password database.
struct Account {
    name: String,
    uid: u32,
    home: PathBuf,
}

fn account_from(pw: *const libc::passwd) -> Option<Account> {
    if pw.is_null() {
        return None;
    }
    // SAFETY: a non-null entry from getpw*; its strings are valid until the next getpw* call,
    // and they are copied at once.
    unsafe {
        Some(Account {
            name: CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned(),
            uid: (*pw).pw_uid,
            home: PathBuf::from(CStr::from_ptr((*pw).pw_dir).to_string_lossy().into_owned()),
        })
    }
}

fn account_by_name(name: &str) -> Option<Account> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string; the result is copied before any other getpw* call.
    account_from(unsafe { libc::getpwnam(c.as_ptr()) })
}

fn current_account() -> Option<Account> {
    // SAFETY: as above.
    account_from(unsafe { libc::getpwuid(libc::getuid()) })
}

/// One systemd word: double-quoted, with `\`, `"` escaped and `%`/`$` doubled so systemd
/// neither expands specifiers nor variables in it. Control characters are refused.
fn quote(what: &str, s: &str) -> Result<String, String> {
    if s.chars().any(|c| c.is_control()) {
        return Err(format!(
            "the {what} {s:?} contains a control character (newline, tab...); systemd units cannot hold it: use a path without one"
        ));
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn unit_dir(args: &ServiceArgs) -> Result<PathBuf, String> {
    if let Some(d) = &args.unit_dir {
        return Ok(config::absolute(d));
    }
    if args.system {
        return Ok(PathBuf::from(SYSTEM_UNIT_DIR));
    }
    if let Some(x) = config::env_nonempty(&["XDG_CONFIG_HOME"]) {
        return Ok(PathBuf::from(x).join("systemd/user"));
    }
    match home::home_dir() {
        Some(h) if !h.as_os_str().is_empty() => Ok(h.join(".config/systemd/user")),
        _ => Err("cannot find your home directory for the user unit: set HOME (or XDG_CONFIG_HOME), or pass --unit-dir".into()),
    }
}

fn target(args: &ServiceArgs) -> &'static str {
    if args.system {
        "multi-user.target"
    } else {
        "default.target"
    }
}

fn systemctl(args: &ServiceArgs) -> &'static str {
    if args.system {
        "sudo systemctl"
    } else {
        "systemctl --user"
    }
}

/// The bound on a stop's drain the daemon will use, plus 30 s: systemd must not SIGKILL a
/// gateway that is still finishing jobs.
fn stop_timeout_secs() -> u64 {
    let drain_ms = config::env_nonempty(&["PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS"])
        .and_then(|v| v.to_string_lossy().trim().parse::<u64>().ok())
        .unwrap_or(90_000);
    drain_ms.div_ceil(1000) + 30
}

/// The unit text for this install.
fn unit_text(
    args: &ServiceArgs,
    exe: &Path,
    paths: &config::Paths,
    account: Option<&Account>,
    path_env: &str,
    home_dir: &Path,
) -> Result<String, String> {
    let mut exec = vec![
        quote("gateway binary path", &exe.to_string_lossy())?,
        "--config-dir".into(),
        quote("config dir", &paths.config_dir.to_string_lossy())?,
    ];
    let defaults = [
        (
            "--config-path",
            &paths.config_path,
            paths.config_dir.join("gateway.json"),
        ),
        (
            "--log-path",
            &paths.log_path,
            paths.config_dir.join("gateway.log"),
        ),
        (
            "--pid-path",
            &paths.pid_path,
            paths.config_dir.join("gateway.pid"),
        ),
    ];
    for (flag, actual, default) in defaults {
        if *actual != default {
            exec.push(flag.into());
            exec.push(quote(flag, &actual.to_string_lossy())?);
        }
    }
    exec.extend(["start".into(), "--foreground".into()]);
    let user_line = match account {
        Some(a) => format!("User={}\n", a.name),
        None => String::new(),
    };
    Ok(format!(
        "# Written by `panorama-gateway service install`; remove it with `panorama-gateway service uninstall`.\n\
[Unit]\n\
Description=Panorama gateway (runs Panorama jobs with this host's AI coding CLIs)\n\
After=network-online.target\n\
Wants=network-online.target\n\
\n\
[Service]\n\
Type=simple\n\
{user_line}\
ExecStart={exec}\n\
ExecReload=/bin/kill -HUP $MAINPID\n\
# The PATH and HOME of the shell that installed the unit, so the CLIs are found as there.\n\
Environment={path}\n\
Environment={home}\n\
# SIGTERM to the gateway only: it drains its jobs and stops their process groups itself.\n\
KillMode=mixed\n\
KillSignal=SIGTERM\n\
TimeoutStopSec={timeout}\n\
Restart=on-failure\n\
RestartSec=5\n\
\n\
[Install]\n\
WantedBy={target}\n",
        exec = exec.join(" "),
        path = quote("PATH", &format!("PATH={path_env}"))?,
        home = quote("HOME", &format!("HOME={}", home_dir.display()))?,
        timeout = stop_timeout_secs(),
        target = target(args),
    ))
}

/// Runs `service <action>`; returns the exit code.
pub fn run(settings: &Settings, action: ServiceAction, args: &ServiceArgs) -> i32 {
    let result = match action {
        ServiceAction::Install => install(settings, args),
        ServiceAction::Uninstall => uninstall(args),
        ServiceAction::Status => status(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR {e}");
            1
        }
    }
}

fn install(settings: &Settings, args: &ServiceArgs) -> Result<i32, String> {
    let dir = unit_dir(args)?;
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| {
            format!("cannot find this program's own path ({e}); run it by its full path")
        })?;
    let account = if args.system {
        let name = args
            .user
            .clone()
            .or_else(|| {
                config::env_nonempty(&["SUDO_USER"]).map(|v| v.to_string_lossy().into_owned())
            })
            .or_else(|| current_account().map(|a| a.name))
            .ok_or("cannot tell which account the gateway should run as: pass --user NAME")?;
        let a = account_by_name(&name).ok_or_else(|| {
            format!(
                "there is no user {name:?} on this machine: pass --user with an existing account"
            )
        })?;
        if a.uid == 0 {
            return Err("refusing to install a system unit that runs the gateway as root (jobs would get root's shell): pass --user with the account that owns the CLIs".into());
        }
        Some(a)
    } else {
        if args.user.is_some() {
            return Err("--user is for --system units (a user unit runs as you)".into());
        }
        None
    };
    // The state of the account that runs the unit: its own ~/.panorama/gateway unless paths
    // were given explicitly.
    let mut paths = settings.paths.clone();
    let home_dir = match &account {
        Some(a) => {
            if config::default_config_dir().ok() == Some(paths.config_dir.clone()) {
                let o = config::Overrides {
                    config_dir: Some(a.home.join(".panorama/gateway")),
                    ..Default::default()
                };
                paths = config::resolve(&o)?.paths;
            }
            a.home.clone()
        }
        None => home::home_dir().ok_or("cannot find your home directory: set HOME")?,
    };
    let path_env = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let text = unit_text(args, &exe, &paths, account.as_ref(), &path_env, &home_dir)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join(UNIT_NAME);
    let tmp = dir.join(format!(".{UNIT_NAME}.tmp"));
    std::fs::write(&tmp, &text)
        .and_then(|_| std::fs::rename(&tmp, &file))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            let hint = if args.system && e.kind() == std::io::ErrorKind::PermissionDenied {
                " (a system unit needs root: run it with sudo)"
            } else {
                ""
            };
            format!("cannot write {}: {e}{hint}", file.display())
        })?;
    println!("Wrote {}", file.display());
    println!(
        "  runs: {} start --foreground (as {}), PATH and HOME from this shell",
        exe.display(),
        account.as_ref().map(|a| a.name.as_str()).unwrap_or("you")
    );
    println!(
        "  log:  {} (panorama-gateway logs)",
        paths.log_path.display()
    );
    let paired = config::state::load(&paths.config_path)
        .ok()
        .flatten()
        .is_some_and(|s| s.is_paired());
    if !paired {
        println!("Not paired yet: run `panorama-gateway pair <CODE> --no-start` first.");
    }
    println!(
        "Next: {0} daemon-reload && {0} enable --now panorama-gateway",
        systemctl(args)
    );
    if !args.system {
        println!(
            "      loginctl enable-linger {}   # keeps it running without an open session",
            current_account()
                .map(|a| a.name)
                .unwrap_or_else(|| "$USER".into())
        );
    }
    Ok(0)
}

fn enabled_link(dir: &Path, args: &ServiceArgs) -> PathBuf {
    dir.join(format!("{}.wants", target(args))).join(UNIT_NAME)
}

fn uninstall(args: &ServiceArgs) -> Result<i32, String> {
    let dir = unit_dir(args)?;
    let file = dir.join(UNIT_NAME);
    if std::fs::symlink_metadata(enabled_link(&dir, args)).is_ok() {
        eprintln!(
            "The unit is still enabled: run `{} disable --now panorama-gateway` first (it stops the gateway), then `panorama-gateway service uninstall` again.",
            systemctl(args)
        );
        return Ok(1);
    }
    match std::fs::remove_file(&file) {
        Ok(()) => {
            println!("Removed {}", file.display());
            println!("Next: {} daemon-reload", systemctl(args));
            Ok(0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("No unit at {}; nothing to remove.", file.display());
            Ok(0)
        }
        Err(e) => Err(format!("cannot remove {}: {e}", file.display())),
    }
}

fn status(args: &ServiceArgs) -> Result<i32, String> {
    let dir = unit_dir(args)?;
    let file = dir.join(UNIT_NAME);
    let Ok(text) = std::fs::read_to_string(&file) else {
        println!("Not installed ({} does not exist).", file.display());
        println!(
            "Install it with `panorama-gateway service install{}`.",
            if args.system { " --system" } else { "" }
        );
        return Ok(3);
    };
    let enabled = std::fs::symlink_metadata(enabled_link(&dir, args)).is_ok();
    println!("Installed: {}", file.display());
    println!("Enabled: {}", if enabled { "yes" } else { "no" });
    for l in text
        .lines()
        .filter(|l| l.starts_with("ExecStart=") || l.starts_with("User="))
    {
        println!("  {l}");
    }
    println!("Service state: {} status panorama-gateway", systemctl(args));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_systemd() {
        assert_eq!(quote("x", "/a b/c").unwrap(), "\"/a b/c\"");
        assert_eq!(
            quote("x", r#"/a"b\c%h$HOME"#).unwrap(),
            r#""/a\"b\\c%%h$$HOME""#
        );
        let e = quote("config dir", "/a\nb").unwrap_err();
        assert!(e.contains("control character"), "{e}");
    }
}
