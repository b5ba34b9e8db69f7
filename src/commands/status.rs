//! `status`: local files only (pid lock, gateway.json, gateway.status.json), no network, fast.
//! Exit codes: 0 running and connected, 1 running but degraded, 3 not running, 4 not paired.

use serde_json::{json, Value};

use crate::config::{state, Settings};
use crate::daemon::pidfile::{self, PidState};
use crate::daemon::status::RuntimeStatus;
use crate::daemon::statusfile;
use crate::providers::health::Health;
use crate::providers::{plan, ProviderId};

pub const EXIT_CONNECTED: i32 = 0;
pub const EXIT_DEGRADED: i32 = 1;
pub const EXIT_NOT_RUNNING: i32 = 3;
pub const EXIT_NOT_PAIRED: i32 = 4;

/// A heartbeat older than this means the connection is not healthy (backend: 90 s stale).
const HEARTBEAT_STALE_SECS: u64 = 120;

/// Seconds since the epoch of an RFC 3339 time (`2026-11-24T20:41:00.123Z`, `+hh:mm` offsets).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    crate::util::parse_rfc3339_ms(s).map(|ms| (ms / 1000) as i64)
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Each provider's saved health (gateway.json `providerHealth`), in wire order; None when it
/// was never checked. Only the file already read: no process, no network.
fn saved_health(cfg: Option<&state::GatewayState>) -> Vec<(ProviderId, Option<Health>)> {
    let map = cfg.and_then(|c| c.provider_health.as_ref());
    ProviderId::ALL
        .into_iter()
        .map(|id| {
            let h = map
                .and_then(|m| m.get(id.as_str()))
                .and_then(Health::from_json);
            (id, h)
        })
        .collect()
}

/// `healthy (full check, 2026-11-25T17:20:00.000Z, 3m ago): <error>` for `status -v`.
fn health_line(h: &Health, now: u64) -> String {
    let kind = format!("{} check", h.check_type());
    let mut s = format!("{} ({kind}", h.status.as_str());
    if !h.checked_at.is_empty() {
        s.push_str(&format!(", {}", h.checked_at));
        if let Some(t) = parse_rfc3339(&h.checked_at) {
            let age = (now as i64 - t).max(0) as u64;
            s.push_str(&format!(", {} ago", human_duration(age)));
        }
    }
    s.push(')');
    if let Some(e) = &h.error {
        s.push_str(&format!(": {}", plan::collapse(e, 200)));
    }
    s
}

/// What `status` knows, read from the pid file, gateway.json and the status file.
struct Snapshot {
    now: u64,
    running: bool,
    pid: Option<u32>,
    stale_pid: Option<u32>,
    pid_error: Option<String>,
    cfg: Option<state::GatewayState>,
    cfg_error: Option<String>,
    paired: Option<bool>,
    rt: Option<RuntimeStatus>,
    hb_age: Option<u64>,
    connection: String,
    detail: Option<String>,
    save_error: Option<String>,
    results_pending: u64,
    connected: bool,
    full_control: bool,
    uptime: Option<u64>,
    code: i32,
    health: Vec<(ProviderId, Option<Health>)>,
}

fn snapshot(settings: &Settings) -> Snapshot {
    let paths = &settings.paths;
    let now = crate::util::unix_now();

    let (running, pid, stale_pid, pid_error) = match pidfile::probe(&paths.pid_path) {
        Ok(PidState::Running(p)) => (true, Some(p), None, None),
        Ok(PidState::NotRunning { stale_pid }) => (false, None, stale_pid, None),
        Err(e) => (
            false,
            None,
            None,
            Some(format!("cannot read {}: {e}", paths.pid_path.display())),
        ),
    };
    let (cfg, cfg_error) = match state::load(&paths.config_path) {
        Ok(c) => (c, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let paired: Option<bool> = if cfg_error.is_some() {
        None
    } else {
        Some(cfg.as_ref().is_some_and(|c| c.is_paired()))
    };
    let rt = if running {
        statusfile::read(&paths.status_path).filter(|s| Some(s.pid) == pid || pid == Some(0))
    } else {
        None
    };
    let hb_age = rt
        .as_ref()
        .and_then(|s| s.last_heartbeat_at.as_deref())
        .and_then(parse_rfc3339)
        .map(|t| (now as i64 - t).max(0) as u64);
    let connection = match (&rt, running) {
        (_, false) => "stopped".to_string(),
        (Some(s), true) => s.connection.clone(),
        (None, true) => "unknown".to_string(),
    };
    let mut detail = rt.as_ref().and_then(|s| s.detail.clone());
    let save_error = rt.as_ref().and_then(|s| s.config_save_error.clone());
    let results_pending = rt.as_ref().map(|s| s.results_pending).unwrap_or(0);
    let mut connected = running && connection == "connected";
    if connected {
        if let Some(age) = hb_age {
            if age > HEARTBEAT_STALE_SECS {
                connected = false;
                detail = Some(format!("last heartbeat {} ago", human_duration(age)));
            }
        }
    }
    let full_control = cfg
        .as_ref()
        .map(|c| c.full_control_enabled)
        .unwrap_or(false);
    let uptime = rt
        .as_ref()
        .filter(|s| s.started_at_unix > 0)
        .map(|s| now.saturating_sub(s.started_at_unix));

    let code = if paired == Some(false) {
        EXIT_NOT_PAIRED
    } else if !running {
        EXIT_NOT_RUNNING
    } else if connected && paired == Some(true) && save_error.is_none() && results_pending == 0 {
        EXIT_CONNECTED
    } else {
        EXIT_DEGRADED
    };
    let health = saved_health(cfg.as_ref());
    Snapshot {
        now,
        running,
        pid,
        stale_pid,
        pid_error,
        cfg,
        cfg_error,
        paired,
        rt,
        hb_age,
        connection,
        detail,
        save_error,
        results_pending,
        connected,
        full_control,
        uptime,
        code,
        health,
    }
}

/// Runs `status`; returns its exit code.
pub fn run(settings: &Settings, as_json: bool) -> i32 {
    let s = snapshot(settings);
    if as_json {
        println!("{}", to_json(&s, settings));
        return s.code;
    }
    let mut out = String::new();
    running_lines(&s, settings, &mut out);
    detail_lines(&s, settings, &mut out);
    print!("{out}");
    for e in [s.cfg_error, s.pid_error].into_iter().flatten() {
        eprintln!("WARN {e}");
    }
    s.code
}

/// `status --json`.
fn to_json(s: &Snapshot, settings: &Settings) -> Value {
    let paths = &settings.paths;
    let (c, rt) = (s.cfg.as_ref(), s.rt.as_ref());
    let providers: serde_json::Map<String, Value> = s
        .health
        .iter()
        .map(|(id, h)| {
            let v = h.as_ref().map(Health::to_json).unwrap_or(Value::Null);
            (id.as_str().to_string(), v)
        })
        .collect();
    let mut v = json!({
        "paired": s.paired,
        "running": s.running,
        "connected": s.connected,
        "pid": s.pid,
        "version": crate::util::version(),
        "full_control_enabled": s.full_control,
        "connection": s.connection,
        "detail": s.detail,
        "device_name": c.and_then(|c| c.device_name.clone()),
        "gateway_id": c.and_then(|c| c.gateway_id.clone()),
        "team_id": c.and_then(|c| c.team_id.clone()),
        "started_at": rt.map(|s| s.started_at.clone()),
        "uptime_secs": s.uptime,
        "daemon_version": rt.map(|s| s.version.clone()),
        "last_heartbeat_at": rt.and_then(|s| s.last_heartbeat_at.clone()),
        "last_heartbeat_age_secs": s.hb_age,
        "team_full_control": rt.and_then(|s| s.team_full_control),
        "jobs_in_flight": rt.map(|s| s.jobs_in_flight),
        "jobs_completed": rt.map(|s| s.jobs_completed),
        "jobs_failed": rt.map(|s| s.jobs_failed),
        "results_spooled": rt.map(|s| s.results_spooled),
        "results_pending": rt.map(|s| s.results_pending),
        "restart_pending": rt.map(|s| s.restart_pending),
        "config_save_error": s.save_error,
        "stale_pid": s.stale_pid,
        "exit_code": s.code,
        "config_path": paths.config_path,
        "log_path": paths.log_path,
        "pid_path": paths.pid_path,
        "providers": providers,
        "models_ready": models_ready(&s.health),
    });
    let errors: Vec<Value> = [s.cfg_error.clone(), s.pid_error.clone()]
        .into_iter()
        .flatten()
        .map(Value::String)
        .collect();
    if !errors.is_empty() {
        v["errors"] = Value::Array(errors);
    }
    v
}

fn line(out: &mut String, s: String) {
    out.push_str(&s);
    out.push('\n');
}

/// The human lines up to the connection's warnings.
fn running_lines(s: &Snapshot, settings: &Settings, out: &mut String) {
    if s.running {
        let mut l = "Gateway: running".to_string();
        if settings.verbose {
            let mut extra = vec![format!("pid {}", s.pid.unwrap_or(0))];
            if let Some(u) = s.uptime {
                extra.push(format!("up {}", human_duration(u)));
            }
            l.push_str(&format!(" ({})", extra.join(", ")));
        }
        line(out, l);
    } else {
        line(out, "Gateway: not running".into());
    }
    match s.paired {
        Some(true) => line(out, "Paired: yes".into()),
        Some(false) => line(out, "Paired: no (run panorama-gateway pair <CODE>)".into()),
        None => line(out, "Paired: unknown (gateway.json is unreadable)".into()),
    }
    if let Some(n) = s.cfg.as_ref().and_then(|c| c.device_name.as_deref()) {
        line(out, format!("Device: {n}"));
    }
    if !s.running {
        return;
    }
    let conn = if s.connected {
        "connected".to_string()
    } else {
        match &s.detail {
            Some(d) => format!("{} (degraded: {d})", s.connection),
            None => format!("{} (degraded)", s.connection),
        }
    };
    line(out, format!("Connection: {conn}"));
    let hb = match (
        s.rt.as_ref().and_then(|s| s.last_heartbeat_at.clone()),
        s.hb_age,
    ) {
        (Some(t), Some(a)) => format!("{t} ({} ago)", human_duration(a)),
        (Some(t), None) => t,
        _ => "none yet".into(),
    };
    line(out, format!("Last heartbeat: {hb}"));
    if let Some(r) = &s.rt {
        line(
            out,
            format!(
                "Jobs: {} in flight, {} completed, {} failed",
                r.jobs_in_flight, r.jobs_completed, r.jobs_failed
            ),
        );
        if r.restart_pending {
            line(out, "Restart: pending (upgraded binary; draining)".into());
        }
    }
    if s.results_pending > 0 {
        line(
            out,
            format!(
                "WARNING {} job result(s) could not be delivered nor written to the spool; held in memory and retried, lost if the gateway dies. Fix the spool directory ({}) or free disk space; `panorama-gateway logs` shows why",
                s.results_pending,
                settings.paths.spool_dir.display()
            ),
        );
    }
    if let Some(e) = &s.save_error {
        line(out, format!("WARNING gateway.json could not be saved: {e}"));
    }
    if !models_ready(&s.health) {
        line(
            out,
            "WARNING no AI provider can run models: every provider's last check or run failed (`status -v` shows why). Fix them, then run `panorama-gateway doctor`".into(),
        );
    }
}

/// False when every provider's saved health says it cannot run models (its last check or
/// run failed, or it is missing). A gateway in that state still exits 0 when connected: it
/// serves shell jobs, and scripts read 0 as "connected".
fn models_ready(health: &[(ProviderId, Option<Health>)]) -> bool {
    !health.iter().all(|(_, h)| {
        matches!(
            h.as_ref().map(|h| h.status),
            Some(crate::providers::health::Status::Unhealthy)
                | Some(crate::providers::health::Status::Unavailable)
        )
    })
}

/// Full control, version, and with `-v` ids, providers and paths.
fn detail_lines(s: &Snapshot, settings: &Settings, out: &mut String) {
    let paths = &settings.paths;
    line(
        out,
        format!(
            "Full control: {}",
            if s.full_control {
                "enabled"
            } else {
                "disabled"
            }
        ),
    );
    line(out, format!("Version: {}", crate::util::version()));
    if !settings.verbose {
        return;
    }
    if let Some(c) = &s.cfg {
        if let Some(g) = c.gateway_id.as_deref().filter(|s| !s.is_empty()) {
            line(out, format!("Gateway ID: {g}"));
        }
        if let Some(t) = c.team_id.as_deref().filter(|s| !s.is_empty()) {
            line(out, format!("Team ID: {t}"));
        }
    }
    if let Some(p) = s.stale_pid {
        line(
            out,
            format!("Stale PID: {p} (removed by the next start or stop)"),
        );
    }
    line(out, "Providers:".into());
    for (id, h) in &s.health {
        let text = match h {
            Some(h) => health_line(h, s.now),
            None => "not checked yet (run panorama-gateway doctor)".into(),
        };
        line(out, format!("  {}: {text}", id.as_str()));
    }
    line(out, format!("Config: {}", paths.config_path.display()));
    line(out, format!("Log: {}", paths.log_path.display()));
    line(out, format!("PID file: {}", paths.pid_path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_roundtrip() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_984_860_123);
        let s = crate::util::rfc3339_millis(t);
        assert_eq!(parse_rfc3339(&s), Some(1_795_984_860));
        assert_eq!(
            parse_rfc3339("2026-11-29T21:41:00+01:00"),
            Some(1_795_984_860)
        );
        assert_eq!(parse_rfc3339("nonsense"), None);
    }
}
