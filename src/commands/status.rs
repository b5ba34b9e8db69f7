//! `status`: local files only (pid lock, gateway.json, gateway.status.json), no network, fast.
//! Exit codes: 0 running and connected, 1 running but degraded, 3 not running, 4 not paired.

use serde_json::{json, Value};

use crate::config::{state, Settings};
use crate::daemon::pidfile::{self, PidState};
use crate::daemon::statusfile;
use crate::providers::health::Health;
use crate::providers::{plan, ProviderId};

pub const EXIT_CONNECTED: i32 = 0;
pub const EXIT_DEGRADED: i32 = 1;
pub const EXIT_NOT_RUNNING: i32 = 3;
pub const EXIT_NOT_PAIRED: i32 = 4;

/// A heartbeat older than this means the connection is not healthy (backend: 90 s stale).
const HEARTBEAT_STALE_SECS: u64 = 120;

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of an RFC 3339 time (`2026-11-24T20:41:00.123Z`, `+hh:mm` offsets).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse::<i64>().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        Some(b'Z') | Some(b'z') => 0,
        Some(&c @ (b'+' | b'-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset)
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

/// Runs `status`; returns its exit code.
pub fn run(settings: &Settings, as_json: bool) -> i32 {
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
    let version = env!("CARGO_PKG_VERSION");
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

    let health = saved_health(cfg.as_ref());
    // Connected but useless: every provider's last check or run failed (or it is missing).
    let no_provider = health.iter().all(|(_, h)| {
        matches!(
            h.as_ref().map(|h| h.status),
            Some(crate::providers::health::Status::Unhealthy)
                | Some(crate::providers::health::Status::Unavailable)
        )
    });
    let code = if paired == Some(false) {
        EXIT_NOT_PAIRED
    } else if !running {
        EXIT_NOT_RUNNING
    } else if connected && paired == Some(true) && save_error.is_none() && results_pending == 0 {
        // A gateway without a usable provider still exits 0 (connected): it serves shell
        // jobs, and scripts read exit 0 as "connected". The text and `--json`
        // (`models_ready`) say that no provider can run models.
        EXIT_CONNECTED
    } else {
        EXIT_DEGRADED
    };

    if as_json {
        let c = cfg.as_ref();
        let providers: serde_json::Map<String, Value> = health
            .iter()
            .map(|(id, h)| {
                let v = h.as_ref().map(Health::to_json).unwrap_or(Value::Null);
                (id.as_str().to_string(), v)
            })
            .collect();
        let mut v = json!({
            "paired": paired,
            "running": running,
            "connected": connected,
            "pid": pid,
            "version": version,
            "full_control_enabled": full_control,
            "connection": connection,
            "detail": detail,
            "device_name": c.and_then(|c| c.device_name.clone()),
            "gateway_id": c.and_then(|c| c.gateway_id.clone()),
            "team_id": c.and_then(|c| c.team_id.clone()),
            "started_at": rt.as_ref().map(|s| s.started_at.clone()),
            "uptime_secs": uptime,
            "daemon_version": rt.as_ref().map(|s| s.version.clone()),
            "last_heartbeat_at": rt.as_ref().and_then(|s| s.last_heartbeat_at.clone()),
            "last_heartbeat_age_secs": hb_age,
            "team_full_control": rt.as_ref().and_then(|s| s.team_full_control),
            "jobs_in_flight": rt.as_ref().map(|s| s.jobs_in_flight),
            "jobs_completed": rt.as_ref().map(|s| s.jobs_completed),
            "jobs_failed": rt.as_ref().map(|s| s.jobs_failed),
            "results_spooled": rt.as_ref().map(|s| s.results_spooled),
            "results_pending": rt.as_ref().map(|s| s.results_pending),
            "restart_pending": rt.as_ref().map(|s| s.restart_pending),
            "config_save_error": save_error,
            "stale_pid": stale_pid,
            "exit_code": code,
            "config_path": paths.config_path,
            "log_path": paths.log_path,
            "pid_path": paths.pid_path,
            "providers": providers,
            "models_ready": !no_provider,
        });
        let errors: Vec<Value> = [cfg_error.clone(), pid_error.clone()]
            .into_iter()
            .flatten()
            .map(Value::String)
            .collect();
        if !errors.is_empty() {
            v["errors"] = Value::Array(errors);
        }
        println!("{v}");
        return code;
    }

    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    if running {
        let mut s = "Gateway: running".to_string();
        if settings.verbose {
            let mut extra = vec![format!("pid {}", pid.unwrap_or(0))];
            if let Some(u) = uptime {
                extra.push(format!("up {}", human_duration(u)));
            }
            s.push_str(&format!(" ({})", extra.join(", ")));
        }
        line(&mut out, s);
    } else {
        line(&mut out, "Gateway: not running".into());
    }
    match paired {
        Some(true) => line(&mut out, "Paired: yes".into()),
        Some(false) => line(
            &mut out,
            "Paired: no (run panorama-gateway pair <CODE>)".into(),
        ),
        None => line(
            &mut out,
            "Paired: unknown (gateway.json is unreadable)".into(),
        ),
    }
    if let Some(n) = cfg.as_ref().and_then(|c| c.device_name.as_deref()) {
        line(&mut out, format!("Device: {n}"));
    }
    if running {
        let conn = if connected {
            "connected".to_string()
        } else {
            match &detail {
                Some(d) => format!("{connection} (degraded: {d})"),
                None => format!("{connection} (degraded)"),
            }
        };
        line(&mut out, format!("Connection: {conn}"));
        let hb = match (
            rt.as_ref().and_then(|s| s.last_heartbeat_at.clone()),
            hb_age,
        ) {
            (Some(t), Some(a)) => format!("{t} ({} ago)", human_duration(a)),
            (Some(t), None) => t,
            _ => "none yet".into(),
        };
        line(&mut out, format!("Last heartbeat: {hb}"));
        if let Some(s) = &rt {
            line(
                &mut out,
                format!(
                    "Jobs: {} in flight, {} completed, {} failed",
                    s.jobs_in_flight, s.jobs_completed, s.jobs_failed
                ),
            );
            if s.restart_pending {
                line(
                    &mut out,
                    "Restart: pending (upgraded binary; draining)".into(),
                );
            }
        }
        if results_pending > 0 {
            line(
                &mut out,
                format!(
                    "WARNING {results_pending} job result(s) could not be delivered nor written to the spool; held in memory and retried, lost if the gateway dies. Fix the spool directory ({}) or free disk space; `panorama-gateway logs` shows why",
                    paths.spool_dir.display()
                ),
            );
        }
        if let Some(e) = &save_error {
            line(
                &mut out,
                format!("WARNING gateway.json could not be saved: {e}"),
            );
        }
        if no_provider {
            line(
                &mut out,
                "WARNING no AI provider can run models: every provider's last check or run failed (`status -v` shows why). Fix them, then run `panorama-gateway doctor`".into(),
            );
        }
    }
    line(
        &mut out,
        format!(
            "Full control: {}",
            if full_control { "enabled" } else { "disabled" }
        ),
    );
    line(&mut out, format!("Version: {version}"));
    if settings.verbose {
        if let Some(c) = &cfg {
            if let Some(g) = c.gateway_id.as_deref().filter(|s| !s.is_empty()) {
                line(&mut out, format!("Gateway ID: {g}"));
            }
            if let Some(t) = c.team_id.as_deref().filter(|s| !s.is_empty()) {
                line(&mut out, format!("Team ID: {t}"));
            }
        }
        if let Some(p) = stale_pid {
            line(
                &mut out,
                format!("Stale PID: {p} (removed by the next start or stop)"),
            );
        }
        line(&mut out, "Providers:".into());
        for (id, h) in &health {
            let text = match h {
                Some(h) => health_line(h, now),
                None => "not checked yet (run panorama-gateway doctor)".into(),
            };
            line(&mut out, format!("  {}: {text}", id.as_str()));
        }
        line(&mut out, format!("Config: {}", paths.config_path.display()));
        line(&mut out, format!("Log: {}", paths.log_path.display()));
        line(&mut out, format!("PID file: {}", paths.pid_path.display()));
    }
    print!("{out}");
    for e in [cfg_error, pid_error].into_iter().flatten() {
        eprintln!("WARN {e}");
    }
    code
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
