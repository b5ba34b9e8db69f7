//! Command-line parsing (lexopt) into a command and options; help and version text.
//! Owner: Foundation (issue 2).
//!
//! Global flags are accepted before or after the command; command flags only with their
//! command. Unknown commands or flags, missing values and bad numbers are usage errors (exit 2,
//! one line naming the problem plus `see panorama-gateway --help`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::Overrides;

/// Everything except the command.
#[derive(Debug, Clone, Default)]
pub struct Global {
    pub overrides: Overrides,
    pub env_name: Option<String>,
    pub env_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullControlAction {
    Enable,
    Disable,
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Pair {
        code: String,
        no_start: bool,
    },
    Start {
        foreground: bool,
        daemon: bool,
        /// Internal: this is the detached child started by `start`.
        daemon_child: bool,
        /// Check that the daemon could start with these arguments (paired, backend known,
        /// state directories usable), then exit: the upgrade check runs the new binary so.
        check_config: bool,
    },
    Stop {
        force: bool,
        timeout_secs: Option<u64>,
    },
    Status {
        json: bool,
    },
    Logs {
        lines: usize,
        follow: bool,
    },
    Doctor {
        json: bool,
    },
    FullControl {
        action: FullControlAction,
    },
    Unpair,
    Service {
        action: ServiceAction,
        system: bool,
        user: Option<String>,
        unit_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Install,
    Uninstall,
    Status,
}

#[derive(Debug)]
pub enum Parsed {
    Run {
        global: Box<Global>,
        command: Command,
    },
    /// Print this help text and exit 0.
    Help(String),
    Version,
}

/// A usage error: the message names the problem; `main` adds the hint and exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {} (see panorama-gateway --help)", self.0)
    }
}

const COMMANDS: &[&str] = &[
    "pair",
    "start",
    "stop",
    "status",
    "logs",
    "doctor",
    "full-control",
    "unpair",
    "service",
    "help",
];

/// Which command-specific flags each command takes.
fn allowed(cmd: &str, flag: &str) -> bool {
    matches!(
        (cmd, flag),
        ("pair", "no-start")
            | ("start", "foreground")
            | ("start", "daemon")
            | ("start", "daemon-child")
            | ("start", "check-config")
            | ("stop", "force")
            | ("stop", "timeout")
            | ("status", "json")
            | ("doctor", "json")
            | ("logs", "lines")
            | ("logs", "no-follow")
            | ("service", "system")
            | ("service", "user")
            | ("service", "unit-dir")
    )
}

fn os_to_string(flag: &str, v: OsString) -> Result<String, UsageError> {
    v.into_string()
        .map_err(|_| UsageError(format!("the value of --{flag} is not valid UTF-8")))
}

fn nonempty_path(flag: &str, v: OsString) -> Result<PathBuf, UsageError> {
    if v.is_empty() {
        return Err(UsageError(format!("--{flag} needs a non-empty path")));
    }
    Ok(PathBuf::from(v))
}

fn parse_number(flag: &str, v: &str) -> Result<u64, UsageError> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| UsageError(format!("--{flag} expects a whole number, got {v:?}")))
}

/// The value of `--flag`, just seen. A following `--other` is not taken as the value: the
/// value is missing (write `./--x` for a path that really starts with dashes).
fn take_value(p: &mut lexopt::Parser, flag: &str) -> Result<OsString, UsageError> {
    let next_is_flag = p
        .try_raw_args()
        .and_then(|raw| raw.peek().map(|a| a.to_string_lossy().starts_with("--")))
        .unwrap_or(false);
    if next_is_flag {
        return Err(UsageError(format!("--{flag} needs a value")));
    }
    p.value().map_err(lexopt_err)
}

fn lexopt_err(e: lexopt::Error) -> UsageError {
    UsageError(match e {
        lexopt::Error::MissingValue { option: Some(o) } => format!("{o} needs a value"),
        lexopt::Error::UnexpectedValue { option, .. } => {
            format!("{option} does not take a value")
        }
        other => other.to_string(),
    })
}

/// A global option that takes a value (`--config-dir PATH`, `--env NAME`, …): stores it in
/// `g`; false when `name` is not a global option.
fn global_option(name: &str, p: &mut lexopt::Parser, g: &mut Global) -> Result<bool, UsageError> {
    let o = &mut g.overrides;
    match name {
        "config-dir" | "config-path" | "log-path" | "pid-path" | "claude-cli" | "codex-cli"
        | "gemini-cli" | "ca-file" => {
            let v = Some(nonempty_path(name, take_value(p, name)?)?);
            match name {
                "config-dir" => o.config_dir = v,
                "config-path" => o.config_path = v,
                "log-path" => o.log_path = v,
                "pid-path" => o.pid_path = v,
                "claude-cli" => o.claude_cli = v,
                "codex-cli" => o.codex_cli = v,
                "ca-file" => o.ca_file = v,
                _ => o.gemini_cli = v,
            }
        }
        "env-file" => g.env_file = Some(nonempty_path("env-file", take_value(p, "env-file")?)?),
        "env" => {
            let v = os_to_string("env", take_value(p, "env")?)?;
            let n = crate::config::envfile::normalize_env_name(&v).map_err(UsageError)?;
            g.env_name = Some(n);
        }
        "supabase-url" => {
            o.supabase_url = Some(os_to_string(
                "supabase-url",
                take_value(p, "supabase-url")?,
            )?)
        }
        "anon-key" => o.anon_key = Some(os_to_string("anon-key", take_value(p, "anon-key")?)?),
        "log-format" => {
            let v = os_to_string("log-format", take_value(p, "log-format")?)?;
            crate::logging::Format::parse(&v).map_err(UsageError)?;
            o.log_format = Some(v)
        }
        "metrics-addr" => {
            o.metrics_addr = Some(os_to_string(
                "metrics-addr",
                take_value(p, "metrics-addr")?,
            )?)
        }
        "device-name" => {
            let v = os_to_string("device-name", take_value(p, "device-name")?)?;
            if v.trim().is_empty() {
                return Err(UsageError("--device-name needs a non-empty name".into()));
            }
            o.device_name = Some(v)
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The command `cmd` with its positionals and flags, checked.
fn build_command(
    cmd: &str,
    positionals: &[String],
    cmd_flags: &[(String, Option<String>)],
) -> Result<Command, UsageError> {
    for (f, _) in cmd_flags {
        if !allowed(cmd, f) {
            return Err(UsageError(format!("--{f} is not a flag of {cmd}")));
        }
    }
    let has = |name: &str| cmd_flags.iter().any(|(f, _)| f == name);
    let val = |name: &str| {
        cmd_flags
            .iter()
            .rev()
            .find(|(f, _)| f == name)
            .and_then(|(_, v)| v.clone())
    };
    let max_positionals = match cmd {
        "pair" | "full-control" | "service" => 1,
        _ => 0,
    };
    if positionals.len() > max_positionals {
        return Err(UsageError(format!(
            "unexpected argument {:?} for {cmd}",
            positionals[max_positionals]
        )));
    }
    Ok(match cmd {
        "pair" => {
            let code = positionals.first().cloned().unwrap_or_default();
            if code.trim().is_empty() {
                return Err(UsageError(
                    "pair needs the pairing code: panorama-gateway pair <CODE>".into(),
                ));
            }
            Command::Pair {
                code: code.trim().to_string(),
                no_start: has("no-start"),
            }
        }
        "start" => {
            if has("foreground") && has("daemon") {
                return Err(UsageError(
                    "--foreground and --daemon contradict each other".into(),
                ));
            }
            Command::Start {
                foreground: has("foreground"),
                daemon: has("daemon"),
                daemon_child: has("daemon-child"),
                check_config: has("check-config"),
            }
        }
        "stop" => Command::Stop {
            force: has("force"),
            timeout_secs: match val("timeout") {
                Some(v) => {
                    let n = parse_number("timeout", &v)?;
                    if n == 0 {
                        return Err(UsageError("--timeout must be at least 1 second".into()));
                    }
                    Some(n)
                }
                None => None,
            },
        },
        "status" => Command::Status { json: has("json") },
        "unpair" => Command::Unpair,
        "service" => Command::Service {
            action: match positionals.first().map(|s| s.trim().to_ascii_lowercase()) {
                Some(a) if a == "install" => ServiceAction::Install,
                Some(a) if a == "uninstall" => ServiceAction::Uninstall,
                Some(a) if a == "status" => ServiceAction::Status,
                Some(a) => {
                    return Err(UsageError(format!(
                        "unknown service action {a:?}: use install, uninstall or status"
                    )))
                }
                None => {
                    return Err(UsageError(
                        "service needs an action: install, uninstall or status".into(),
                    ))
                }
            },
            system: has("system"),
            user: val("user").filter(|u| !u.trim().is_empty()),
            unit_dir: val("unit-dir").filter(|d| !d.is_empty()).map(PathBuf::from),
        },
        "doctor" => Command::Doctor { json: has("json") },
        "logs" => Command::Logs {
            lines: match val("lines") {
                Some(v) => parse_number("lines", &v)? as usize,
                None => 200,
            },
            follow: !has("no-follow"),
        },
        "full-control" => Command::FullControl {
            action: match positionals.first().map(|s| s.trim().to_ascii_lowercase()) {
                None => FullControlAction::Status,
                Some(a) => match a.as_str() {
                    "enable" | "on" => FullControlAction::Enable,
                    "disable" | "off" => FullControlAction::Disable,
                    "status" => FullControlAction::Status,
                    _ => {
                        return Err(UsageError(format!(
                            "unknown full-control action {a:?}: use enable, disable or status"
                        )))
                    }
                },
            },
        },
        other => return Err(UsageError(format!("unknown command {other:?}"))),
    })
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Parsed, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut g = Global::default();
    let mut command: Option<String> = None;
    let mut positionals: Vec<String> = Vec::new();
    let mut help = false;
    let mut version = false;
    // command-specific flags seen: (name, value)
    let mut cmd_flags: Vec<(String, Option<String>)> = Vec::new();

    while let Some(arg) = p.next().map_err(lexopt_err)? {
        match arg {
            Short('h') | Long("help") => help = true,
            Short('V') | Long("version") => version = true,
            Short('v') | Long("verbose") => g.overrides.verbose = true,
            Long("allow-insecure-http") => g.overrides.allow_insecure_http = true,
            Long(
                f @ ("no-start" | "foreground" | "daemon" | "daemon-child" | "check-config"
                | "force" | "json" | "no-follow" | "system"),
            ) => cmd_flags.push((f.to_string(), None)),
            Long(f @ ("timeout" | "lines" | "user" | "unit-dir")) => {
                let f = f.to_string();
                let v = os_to_string(&f, take_value(&mut p, &f)?)?;
                cmd_flags.push((f, Some(v)))
            }
            Short('n') => {
                let v = os_to_string("lines", take_value(&mut p, "lines")?)?;
                cmd_flags.push(("lines".into(), Some(v)))
            }
            Short('f') => cmd_flags.push(("force".into(), None)),
            Value(v) => {
                let v = os_to_string("argument", v)?;
                if command.is_none() {
                    if !COMMANDS.contains(&v.as_str()) {
                        return Err(UsageError(format!("unknown command {v:?}")));
                    }
                    command = Some(v);
                } else {
                    positionals.push(v);
                }
            }
            Long(other) => {
                let name = other.to_string();
                if !global_option(&name, &mut p, &mut g)? {
                    return Err(UsageError(format!("unknown flag --{name}")));
                }
            }
            Short(c) => return Err(UsageError(format!("unknown flag -{c}"))),
        }
    }

    if command.as_deref() == Some("help") {
        let topic = positionals.first().cloned();
        if let Some(t) = &topic {
            if !COMMANDS.contains(&t.as_str()) {
                return Err(UsageError(format!("unknown command {t:?}")));
            }
        }
        return Ok(Parsed::Help(help_text(topic.as_deref())));
    }
    if help {
        return Ok(Parsed::Help(help_text(command.as_deref())));
    }
    if version {
        return Ok(Parsed::Version);
    }
    let Some(cmd) = command else {
        if cmd_flags.is_empty() {
            return Ok(Parsed::Help(help_text(None)));
        }
        return Err(UsageError("missing command".into()));
    };
    let command = build_command(&cmd, &positionals, &cmd_flags)?;
    Ok(Parsed::Run {
        global: Box::new(g),
        command,
    })
}

pub fn version_text() -> String {
    format!("panorama-gateway {}", crate::util::version())
}

const GLOBAL_HELP: &str = "\
Global options (any command):
  -v, --verbose              Show technical details (paths, ids, pids)
  -h, --help                 Show help (also: panorama-gateway help <command>)
  -V, --version              Print the version
  --config-dir <path>        State directory (default ~/.panorama/gateway)
  --config-path <path>       gateway.json (default <config-dir>/gateway.json)
  --log-path <path>          Log file (default next to gateway.json: gateway.log)
  --pid-path <path>          Pid file (default next to gateway.json: gateway.pid)
  --env <name>               Load .env.<name> from the repository root
                             (local|dev|test|stage|prod; local falls back to .env)
  --env-file <path>          Load this env file
  --supabase-url <url>       Backend URL (overrides SUPABASE_URL and the saved one)
  --anon-key <key>           Backend anon key (overrides SUPABASE_ANON_KEY and the saved one)
  --device-name <name>       Name shown in Panorama (pair, start)
  --ca-file <pem>            Also trust these CA certificates (as SSL_CERT_FILE); for
                             networks that inspect TLS. HTTPS_PROXY/HTTP_PROXY/NO_PROXY
                             are honoured for every backend call and the realtime socket
  --log-format <text|json>   Log lines as text (default) or one JSON object per line
  --metrics-addr <addr>      Serve /healthz, /readyz and /metrics (Prometheus) on this
                             address (start; PORT alone means 127.0.0.1:PORT)
  --allow-insecure-http      Accept a plain http:// backend that is not on this machine
                             (tokens travel in clear text; also PANORAMA_GATEWAY_ALLOW_INSECURE_HTTP=1)
  --claude-cli <path>        Claude CLI command
  --codex-cli <path>         Codex CLI command
  --gemini-cli <path>        Gemini CLI command
";

const ENV_HELP: &str = "\
Environment (flags win over environment, environment over defaults):
  PANORAMA_GATEWAY_CONFIG_DIR, PANORAMA_GATEWAY_CONFIG_PATH,
  PANORAMA_GATEWAY_LOG_PATH, PANORAMA_GATEWAY_PID_PATH
  PANORAMA_CLAUDE_CLI or CLAUDE_CLI, PANORAMA_CODEX_CLI or CODEX_CLI,
  PANORAMA_GEMINI_CLI or GEMINI_CLI
  PANORAMA_ENV, PANORAMA_ENV_FILE, PANORAMA_GATEWAY_DEVICE_NAME
  SUPABASE_URL or PANORAMA_SUPABASE_URL
  SUPABASE_ANON_KEY or PANORAMA_SUPABASE_ANON_KEY or SUPABASE_PUBLISHABLE_KEY
  PANORAMA_GATEWAY_AUTO_RESTART (default: on for release builds)
  PANORAMA_GATEWAY_RESTART_CHECK_MS (default 30000, min 1000)
  PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS (stop in-flight work after this drain wait)
  PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS (bound on a stop's drain, default 90000)
  PANORAMA_GATEWAY_LOG_MAX_BYTES (log rotation size, default 10 MiB)
  PANORAMA_GATEWAY_METRICS_ADDR (as --metrics-addr)
  PANORAMA_GATEWAY_LOG_FORMAT (as --log-format)
";

/// Help text: general, or for one command.
const PAIR_HELP: &str = "\
Usage: panorama-gateway pair <CODE> [--device-name NAME] [--no-start]
       panorama-gateway pair - [--device-name NAME] [--no-start]   (code on standard input)

Exchanges a pairing code from Panorama for this gateway's identity and session, saves them
in gateway.json (0600), then starts the gateway in the background. With `-` the code is read
from the first line of standard input, so it stays out of shell history and `ps`.

The backend is Panorama's production backend unless --supabase-url/--anon-key, the
environment or an env file say otherwise.

Options:
  --device-name <name>   Name shown in Panorama (default: PANORAMA_GATEWAY_DEVICE_NAME, hostname)
  --no-start             Do not start the gateway after pairing
";

const START_HELP: &str = "\
Usage: panorama-gateway start [--foreground|--daemon]

Starts the gateway. Release builds run in the background by default (a detached process that
logs to the log file); debug builds run in the foreground. A second start says it is already
running and exits 0.

Options:
  --foreground   Stay attached; Ctrl-C drains and stops
  --daemon       Run in the background (detached)
  --check-config Only check that it could start (paired, backend known), then exit

Signals: SIGTERM/SIGINT drain (finish in-flight jobs, at most 90 s); a second one or SIGQUIT
stops now; SIGHUP reopens the log and re-reads full control.
Exit: 0 started or already running; 1 not paired, misconfigured or failed.
";

const STOP_HELP: &str = "\
Usage: panorama-gateway stop [--timeout SECS] [--force]

Asks the running gateway to drain (SIGTERM) and waits until it is gone.

Options:
  --timeout <secs>   How long to wait (default 120)
  --force, -f        Stop now: SIGQUIT, then SIGKILL after 5 s

Exit: 0 stopped or not running; 1 still running after the timeout.
";

const STATUS_HELP: &str = "\
Usage: panorama-gateway status [--json] [-v]

Shows whether the gateway is paired and running, its connection, last heartbeat, full control
and version. Reads local files only (no network); safe to run from cron.

Options:
  --json   One JSON object (paired, running, connected, pid, version, full_control_enabled,
           providers, ...)
  -v       Also ids, paths, and each provider's health as last saved in gateway.json (status,
           full/light check, when): from pair, doctor, start or the last model run

Exit codes:
  0  running and connected
  1  running but degraded (not connected, backend unreachable, starting)
  3  not running
  4  not paired
";

const LOGS_HELP: &str = "\
Usage: panorama-gateway logs [--lines N] [--no-follow]

Prints the last N lines of the log (default 200), then follows it like tail -F (across
rotation) until Ctrl-C.

Options:
  --lines <n>, -n <n>   Lines to show first (0: none)
  --no-follow           Print and exit
";

const DOCTOR_HELP: &str = "\
Usage: panorama-gateway doctor [--json]

Checks state permissions, the config, the backend configuration, the log file and each
provider CLI. One line per check (ok, WARN or FAIL); exit 0 when nothing failed, 1 otherwise.

Providers get a full health check: one small model call each (\"Say hi.\", up to 30 s). The
result is saved in gateway.json (providerHealth) when the gateway is paired, and shown by
status -v. A provider that is missing or fails its check is a warning; doctor fails only when
no provider is usable. Point the gateway at a CLI with --claude-cli/--codex-cli/--gemini-cli
<path>, or PANORAMA_CLAUDE_CLI, PANORAMA_CODEX_CLI, PANORAMA_GEMINI_CLI (also CLAUDE_CLI,
CODEX_CLI, GEMINI_CLI).
";

const UNPAIR_HELP: &str = "\
Usage: panorama-gateway unpair

Stops the running gateway (draining in-flight jobs) and removes this gateway's credentials
(accessToken, refreshToken, gatewayId, teamId) from gateway.json. The backend settings, device
name, full control and every other key stay. It says what it will do before doing it. The
gateway still shows in Panorama until you remove it there.
";

const SERVICE_HELP: &str = "\
Usage: panorama-gateway service <install|uninstall|status> [--system [--user NAME]] [--unit-dir DIR]

install writes a systemd unit that runs `panorama-gateway start --foreground` with the PATH and
HOME of the shell you run it from (so claude, codex and gemini are found as they are here),
restarts it on failure and gives the drain time to finish on stop. It prints the systemctl
command to run next; it never calls systemctl itself. uninstall removes the unit (disable it
first); status shows whether it is installed and enabled.

Options:
  --system          A system unit in /etc/systemd/system (run with sudo) instead of a user
                    unit in ~/.config/systemd/user
  --user <name>     The account a system unit runs as (default: SUDO_USER, else you); never root
  --unit-dir <dir>  Write the unit to this directory instead
";

const FULL_CONTROL_HELP: &str = "\
Usage: panorama-gateway full-control <enable|disable|status>

Sets or shows the install-level host machine control toggle (full_control_enabled in
gateway.json). Works before pairing. A running gateway is told at once (SIGHUP).
";

const OVERVIEW_HELP: &str = "\
panorama-gateway: connects the AI coding CLIs (claude, codex, gemini) and the shell of this
host to a Panorama team.

Usage:
  panorama-gateway pair <CODE> [--device-name NAME] [--no-start]   (CODE `-`: from stdin)
  panorama-gateway start [--foreground|--daemon]
  panorama-gateway stop [--timeout SECS] [--force]
  panorama-gateway status [--json]
  panorama-gateway logs [--lines N] [--no-follow]
  panorama-gateway doctor [--json]
  panorama-gateway full-control <enable|disable|status>
  panorama-gateway unpair
  panorama-gateway service <install|uninstall|status> [--system]
  panorama-gateway help [COMMAND]

status exit codes: 0 running and connected, 1 running but degraded, 3 not running,
4 not paired. Other commands: 0 ok, 1 error, 2 usage error.
";

pub fn help_text(topic: Option<&str>) -> String {
    let body = match topic {
        Some("pair") => PAIR_HELP,
        Some("start") => START_HELP,
        Some("stop") => STOP_HELP,
        Some("status") => STATUS_HELP,
        Some("logs") => LOGS_HELP,
        Some("doctor") => DOCTOR_HELP,
        Some("unpair") => UNPAIR_HELP,
        Some("service") => SERVICE_HELP,
        Some("full-control") => FULL_CONTROL_HELP,
        _ => OVERVIEW_HELP,
    };
    format!("{body}\n{GLOBAL_HELP}\n{ENV_HELP}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Parsed, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_anywhere_and_values() {
        match run(&[
            "-v",
            "logs",
            "--lines=5",
            "--no-follow",
            "--config-dir",
            "/x",
        ])
        .unwrap()
        {
            Parsed::Run { global, command } => {
                assert!(global.overrides.verbose);
                assert_eq!(global.overrides.config_dir, Some(PathBuf::from("/x")));
                assert_eq!(
                    command,
                    Command::Logs {
                        lines: 5,
                        follow: false
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match run(&["start", "--foreground", "-v"]).unwrap() {
            Parsed::Run { global, command } => {
                assert!(global.overrides.verbose);
                assert!(matches!(
                    command,
                    Command::Start {
                        foreground: true,
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_errors() {
        for (args, needle) in [
            (&["bogus"][..], "unknown command"),
            (&["status", "--bogus"][..], "unknown flag --bogus"),
            (&["status", "--foreground"][..], "not a flag of status"),
            (&["logs", "--lines", "x"][..], "whole number"),
            (&["logs", "--lines"][..], "needs a value"),
            (&["start", "--foreground=yes"][..], "does not take a value"),
            (
                &["full-control", "maybe"][..],
                "unknown full-control action",
            ),
            (&["pair"][..], "pairing code"),
            (&["--env", "bogus", "status"][..], "unknown environment"),
            (&["--config-dir="][..], "non-empty"),
        ] {
            let e = run(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(e.ends_with("(see panorama-gateway --help)"), "{e}");
        }
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(run(&[]).unwrap(), Parsed::Help(_)));
        match run(&["status", "--help"]).unwrap() {
            Parsed::Help(t) => assert!(t.contains("4  not paired")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(run(&["--version"]).unwrap(), Parsed::Version));
    }
}
