//! `doctor`: one line per check (state permissions, config, backend configuration, log file,
//! daemon, each provider CLI); exit 0 when all pass, 1 otherwise; `--json`.

use std::path::Path;

use serde_json::json;

use crate::config::{self, secure, state, Settings};
use crate::daemon::pidfile::{self, PidState};
use crate::providers::Registry;

struct Check {
    name: String,
    ok: bool,
    /// Informational checks never fail the run.
    detail: String,
}

fn check_dir(name: &str, dir: &Path) -> Check {
    match secure::ensure_dir(dir) {
        Ok(()) => Check {
            name: name.into(),
            ok: true,
            detail: format!("{} (0700, yours)", dir.display()),
        },
        Err(e) => Check {
            name: name.into(),
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// Runs `doctor`; returns the exit code.
pub fn run(settings: &Settings, as_json: bool) -> i32 {
    let p = &settings.paths;
    let mut checks: Vec<Check> = Vec::new();

    checks.push(check_dir("state directory", &p.config_dir));
    if let Some(d) = p.config_path.parent() {
        if d != p.config_dir {
            checks.push(check_dir("config directory", d));
        }
    }

    let loaded = state::load(&p.config_path);
    let st = match &loaded {
        Ok(Some(s)) if s.is_paired() => {
            checks.push(Check {
                name: "config".into(),
                ok: true,
                detail: format!(
                    "{} is valid and paired (gateway {})",
                    p.config_path.display(),
                    s.gateway_id.as_deref().unwrap_or("?")
                ),
            });
            Some(s.clone())
        }
        Ok(Some(s)) => {
            checks.push(Check {
                name: "config".into(),
                ok: false,
                detail: format!(
                    "{} is valid but not paired: run panorama-gateway pair <CODE>",
                    p.config_path.display()
                ),
            });
            Some(s.clone())
        }
        Ok(None) => {
            checks.push(Check {
                name: "config".into(),
                ok: false,
                detail: format!(
                    "no {} yet: run panorama-gateway pair <CODE>",
                    p.config_path.display()
                ),
            });
            None
        }
        Err(e) => {
            checks.push(Check {
                name: "config".into(),
                ok: false,
                detail: e.to_string(),
            });
            None
        }
    };

    checks.push(match config::backend_config(settings, st.as_ref()) {
        Ok(b) => Check {
            name: "backend".into(),
            ok: true,
            detail: b.url,
        },
        Err(e) => Check {
            name: "backend".into(),
            ok: false,
            detail: e,
        },
    });

    let log_dir_ok = p
        .log_path
        .parent()
        .map(secure::ensure_dir)
        .unwrap_or(Ok(()));
    checks.push(
        match log_dir_ok.and_then(|_| secure::open_append_secure(&p.log_path)) {
            Ok(_) => Check {
                name: "log file".into(),
                ok: true,
                detail: format!("{} is writable (0600)", p.log_path.display()),
            },
            Err(e) => Check {
                name: "log file".into(),
                ok: false,
                detail: e.to_string(),
            },
        },
    );

    checks.push(match pidfile::probe(&p.pid_path) {
        Ok(PidState::Running(pid)) => Check {
            name: "daemon".into(),
            ok: true,
            detail: format!("running (pid {pid})"),
        },
        Ok(PidState::NotRunning { .. }) => Check {
            name: "daemon".into(),
            ok: true,
            detail: "not running (start it with panorama-gateway start)".into(),
        },
        Err(e) => Check {
            name: "daemon".into(),
            ok: false,
            detail: format!("cannot read {}: {e}", p.pid_path.display()),
        },
    });

    let registry = Registry::discover(&settings.cli_overrides);
    for pc in registry.doctor_report() {
        let mut detail = match (&pc.command, &pc.version) {
            (Some(c), Some(v)) => format!("{} ({v})", c.display()),
            (Some(c), None) => c.display().to_string(),
            (None, _) => "not found".into(),
        };
        if let Some(d) = &pc.detail {
            detail.push_str(&format!(": {d}"));
        }
        checks.push(Check {
            name: format!("provider {}", pc.id),
            ok: pc.ok,
            detail,
        });
    }

    let all_ok = checks.iter().all(|c| c.ok);
    if as_json {
        let v = json!({
            "ok": all_ok,
            "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        for c in &checks {
            println!(
                "{} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        if all_ok {
            println!("All checks passed.");
        } else {
            let n = checks.iter().filter(|c| !c.ok).count();
            println!("{n} check(s) failed.");
        }
    }
    if all_ok {
        0
    } else {
        1
    }
}
