//! `doctor`: one line per check (state permissions, config, backend configuration, log file,
//! daemon, each provider CLI); exit 0 when nothing failed, 1 otherwise; `--json`.
//!
//! Providers get a full health check (one tiny model call each, providers.md §4.2), saved in
//! gateway.json `providerHealth` when the gateway is paired. A provider that is missing or
//! failed its check is a warning; only "no provider usable at all" fails the run.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::config::{self, secure, state, Settings};
use crate::daemon::pidfile::{self, PidState};
use crate::providers::health::{self, Health, Mode};
use crate::providers::{ProviderId, Registry, VALIDATION_TIMEOUT};

struct Check {
    name: String,
    ok: bool,
    /// A problem worth reading that does not fail the run (`ok` stays true).
    warning: bool,
    detail: String,
}

impl Check {
    fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok,
            warning: false,
            detail: detail.into(),
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            warning: true,
            ..Check::new(name, true, detail)
        }
    }
    fn level(&self) -> &'static str {
        match (self.ok, self.warning) {
            (false, _) => "fail",
            (true, true) => "warn",
            (true, false) => "ok",
        }
    }
}

/// Prints a line to stdout; a closed stdout (`doctor | head -1`) ends the output quietly instead
/// of panicking. (`doctor` keeps SIGPIPE ignored: it writes to provider CLIs' pipes.)
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

fn check_dir(name: &str, dir: &Path) -> Check {
    match secure::ensure_dir(dir) {
        Ok(()) => Check::new(name, true, format!("{} (0700, yours)", dir.display())),
        Err(e) => Check::new(name, false, e.to_string()),
    }
}

/// `healthy (full check, 1.2s)`, `unavailable (full check)`.
fn health_text(h: &Health) -> String {
    let kind = format!("{} check", h.check_type());
    match h.duration_ms {
        Some(ms) if ms < 1000 => format!("{} ({kind}, {ms}ms)", h.status.as_str()),
        Some(ms) => format!("{} ({kind}, {:.1}s)", h.status.as_str(), ms as f64 / 1000.0),
        None => format!("{} ({kind})", h.status.as_str()),
    }
}

/// What to do when no provider is usable (names every flag and variable that points the
/// gateway at a CLI).
pub const NO_PROVIDER_HINT: &str = "No providers passed validation. Install and log in to at \
least one provider CLI (claude, codex or gemini), or point the gateway at one with \
--claude-cli/--codex-cli/--gemini-cli <path> or the variables PANORAMA_CLAUDE_CLI, \
PANORAMA_CODEX_CLI, PANORAMA_GEMINI_CLI (also CLAUDE_CLI, CODEX_CLI, GEMINI_CLI), then run \
panorama-gateway doctor again";

/// Discovers and fully checks every provider, saves health when paired; one check line per
/// provider plus, when none is usable, a failing `providers` line.
fn provider_checks(
    settings: &Settings,
    saved: Option<&state::GatewayState>,
    as_json: bool,
) -> (Vec<Check>, serde_json::Value) {
    let p = &settings.paths;
    let registry = Registry::discover(&settings.cli_overrides);
    registry.set_work_root(p.config_dir.join("work"));
    if let Some(map) = saved.and_then(|s| s.provider_health.as_ref()) {
        registry.load_health(map);
    }
    if !as_json {
        say!(
            "Validating providers (one small model call each, up to {} s)...",
            VALIDATION_TIMEOUT.as_secs()
        );
        let _ = std::io::stdout().flush();
    }
    let results = registry.check_health(Mode::Full, Some("doctor"));
    // doctor does not talk to the backend: the validation events are not sent.
    let _ = registry.take_events();
    let mut checks = Vec::new();
    if saved.is_some_and(|s| s.is_paired()) {
        let saved = state::update(&p.config_path, |st| {
            for (id, h) in &results {
                health::apply_to_state(st, id.as_str(), h);
            }
        });
        checks.push(match saved {
            Ok(_) => Check::new(
                "provider health",
                true,
                format!("saved in {} (providerHealth)", p.config_path.display()),
            ),
            Err(e) => Check::warn(
                "provider health",
                format!("could not be saved: {e}; the next start checks the providers again"),
            ),
        });
    }
    let report = registry.doctor_report();
    let usable = report.iter().any(|pc| pc.ok);
    for (pc, id) in report.iter().zip(ProviderId::ALL) {
        let mut detail = match (&pc.command, &pc.version) {
            (Some(c), Some(v)) => format!("{} ({v})", c.display()),
            (Some(c), None) => c.display().to_string(),
            (None, _) => "not found".into(),
        };
        if let Some(h) = registry.health(id) {
            detail.push_str(&format!(", {}", health_text(&h)));
        }
        if let Some(d) = &pc.detail {
            detail.push_str(&format!(": {d}"));
        }
        let name = format!("provider {}", pc.id);
        checks.push(if pc.ok {
            Check::new(name, true, detail)
        } else {
            Check::warn(name, detail)
        });
    }
    if !usable {
        checks.push(Check::new("providers", false, NO_PROVIDER_HINT));
    }
    (checks, registry.capabilities_providers())
}

/// Runs `doctor`; returns the exit code.
pub fn run(settings: &Settings, as_json: bool) -> i32 {
    let p = &settings.paths;
    let mut checks: Vec<Check> = Vec::new();

    checks.push(check_dir("state directory", &p.config_dir));
    if let Some(d) = p.config_path.parent() {
        if d != p.config_dir {
            checks.push(match secure::ensure_parent_dir(d) {
                Ok(()) => Check::new("config directory", true, d.display().to_string()),
                Err(e) => Check::new("config directory", false, e.to_string()),
            });
        }
    }

    let loaded = state::load(&p.config_path);
    let st = match &loaded {
        Ok(Some(s)) if s.is_paired() => {
            checks.push(Check::new(
                "config",
                true,
                format!(
                    "{} is valid and paired (gateway {})",
                    p.config_path.display(),
                    s.gateway_id.as_deref().unwrap_or("?")
                ),
            ));
            Some(s.clone())
        }
        Ok(Some(s)) => {
            checks.push(Check::new(
                "config",
                false,
                format!(
                    "{} is valid but not paired: run panorama-gateway pair <CODE>",
                    p.config_path.display()
                ),
            ));
            Some(s.clone())
        }
        Ok(None) => {
            checks.push(Check::new(
                "config",
                false,
                format!(
                    "no {} yet: run panorama-gateway pair <CODE>",
                    p.config_path.display()
                ),
            ));
            None
        }
        Err(e) => {
            checks.push(Check::new("config", false, e.to_string()));
            None
        }
    };

    checks.push(match config::backend_config(settings, st.as_ref()) {
        Ok(b) => {
            let host = b.url.strip_prefix("http://").map(|r| r.split('/').next().unwrap_or(""));
            match host {
                Some(h) if !config::is_loopback_host(h) => Check::warn(
                    "backend",
                    format!("{} uses plain http:// to a host that is not this machine, allowed by --allow-insecure-http: pairing codes and tokens travel in clear text; use https://", b.url),
                ),
                _ => Check::new("backend", true, b.url),
            }
        }
        Err(e) => Check::new("backend", false, e),
    });

    let log_dir_ok = p
        .log_path
        .parent()
        .map(secure::ensure_parent_dir)
        .unwrap_or(Ok(()));
    checks.push(
        match log_dir_ok.and_then(|_| secure::open_append_secure(&p.log_path)) {
            Ok(_) => Check::new(
                "log file",
                true,
                format!("{} is writable (0600)", p.log_path.display()),
            ),
            Err(e) => Check::new("log file", false, e.to_string()),
        },
    );

    checks.push(match pidfile::probe(&p.pid_path) {
        Ok(PidState::Running(pid)) => Check::new("daemon", true, format!("running (pid {pid})")),
        Ok(PidState::NotRunning { .. }) => Check::new(
            "daemon",
            true,
            "not running (start it with panorama-gateway start)",
        ),
        Err(e) => Check::new(
            "daemon",
            false,
            format!("cannot read {}: {e}", p.pid_path.display()),
        ),
    });

    let (provider_checks, providers) = provider_checks(settings, st.as_ref(), as_json);
    checks.extend(provider_checks);

    let all_ok = checks.iter().all(|c| c.ok);
    if as_json {
        let v = json!({
            "ok": all_ok,
            "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "level": c.level(), "detail": c.detail})).collect::<Vec<_>>(),
            "providers": providers,
        });
        say!("{v}");
    } else {
        for c in &checks {
            let tag = match c.level() {
                "fail" => "FAIL",
                "warn" => "WARN",
                _ => "ok  ",
            };
            say!("{tag} {}: {}", c.name, c.detail);
        }
        let warnings = checks.iter().filter(|c| c.warning).count();
        if all_ok && warnings > 0 {
            say!("All checks passed ({warnings} warning(s)).");
        } else if all_ok {
            say!("All checks passed.");
        } else {
            let n = checks.iter().filter(|c| !c.ok).count();
            say!("{n} check(s) failed.");
        }
    }
    if all_ok {
        0
    } else {
        1
    }
}
