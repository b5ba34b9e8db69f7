//! Capabilities v1 (PROTOCOL.md §9), the object the heartbeat sends, and the timestamp
//! parsing the wire needs.

use serde_json::{json, Value};

/// `runtime.node_version` of capabilities v1 (the schema requires it): our toolchain.
pub const RUST_VERSION: &str = match option_env!("PANORAMA_RUSTC_VERSION") {
    Some(v) => v,
    None => "rust-1.95.0",
};

/// The capabilities v1 object (PROTOCOL.md §9) around the providers object.
/// `model_ready`: Providers' verdict (`Registry::model_execution_ready`); None derives it from
/// the providers object the same way (providers.md §4.5).
pub fn capabilities(
    providers: Value,
    model_ready: Option<bool>,
    device_name: &str,
    install_full_control: bool,
) -> Value {
    let model_ready = model_ready.unwrap_or_else(|| {
        providers
            .as_object()
            .map(|m| m.values().any(provider_ready))
            .unwrap_or(false)
    });
    let mut model_execution = json!({ "ready": model_ready });
    if !model_ready {
        model_execution["reason"] = json!("No gateway AI model provider is healthy");
    }
    let mut machine_control = json!({ "ready": install_full_control });
    if !install_full_control {
        machine_control["reason"] = json!("Gateway host machine control is disabled");
    }
    json!({
        "schema_version": "v1",
        "providers": providers,
        "hosts": {
            "gateway": {
                "kind": "gateway",
                "available": true,
                "label": device_name,
                "metadata": { "install_full_control_enabled": install_full_control }
            }
        },
        "services": {
            "model_execution": model_execution,
            "remote_shell": { "ready": true },
            "machine_control": machine_control,
        },
        "runtime": {
            "platform": platform(),
            "arch": arch(),
            "node_version": RUST_VERSION,
            "gateway_version": env!("CARGO_PKG_VERSION"),
        }
    })
}

fn provider_ready(p: &Value) -> bool {
    let health = p.pointer("/health/status").and_then(Value::as_str);
    if health == Some("healthy") {
        return true;
    }
    p.get("available") == Some(&Value::Bool(true))
        && !matches!(health, Some("unhealthy") | Some("unavailable"))
}

fn platform() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "x86" => "ia32",
        other => other,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let mut digits: String = frac.chars().take(3).collect();
        while digits.len() < 3 {
            digits.push('0');
        }
        ms = digits.parse().ok()?;
    }
    let offset_min: i64 = match &s[i..] {
        "Z" | "z" | "" => 0,
        rest => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let r = &rest[1..];
            let part = |a: usize, b: usize| r.get(a..b)?.parse::<i64>().ok();
            let (oh, om) = if r.len() == 5 && r.as_bytes()[2] == b':' {
                (part(0, 2)?, part(3, 5)?)
            } else if r.len() == 4 {
                (part(0, 2)?, part(2, 4)?)
            } else if r.len() == 2 {
                (r.parse::<i64>().ok()?, 0)
            } else {
                return None;
            };
            sign * (oh * 60 + om)
        }
    };
    // days from civil (Howard Hinnant)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::now_rfc3339;

    #[test]
    fn parses_rfc3339_variants() {
        let z = parse_rfc3339_ms("2026-11-29T20:41:00.123Z").unwrap();
        assert_eq!(z, 1_795_984_860_123);
        assert_eq!(parse_rfc3339_ms("2026-11-29T22:41:00.123+02:00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-11-29 20:41:00.123456+00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:00Z"), Some(z - 123));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        // Odd bytes from the backend never panic.
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:00+1é1"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:00é"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:0é"), None);
        let now = now_rfc3339();
        let back = parse_rfc3339_ms(&now).unwrap();
        assert!(back.abs_diff(crate::util::unix_now() * 1000) < 5_000);
    }

    #[test]
    fn capabilities_follow_schema_v1() {
        let providers = json!({
            "claude_code": {"available": true, "supports": {"output_schema": true, "stream_json": true, "tool_disable": true}},
            "codex": {"available": false, "supports": {"output_schema": false, "stream_json": false, "tool_disable": false}},
            "gemini": {"available": true, "health": {"status": "unhealthy", "check_type": "full", "checked_at": "x"},
                       "supports": {"output_schema": false, "stream_json": true, "tool_disable": true}}
        });
        let c = capabilities(providers, None, "box", false);
        assert_eq!(c["schema_version"], "v1");
        assert_eq!(c["hosts"]["gateway"]["kind"], "gateway");
        assert_eq!(c["hosts"]["gateway"]["label"], "box");
        assert_eq!(c["services"]["model_execution"]["ready"], true);
        assert_eq!(c["services"]["machine_control"]["ready"], false);
        assert!(c["runtime"]["node_version"]
            .as_str()
            .unwrap()
            .starts_with("rust-"));
        assert_eq!(c["runtime"]["gateway_version"], env!("CARGO_PKG_VERSION"));
        let none = capabilities(json!({"codex": {"available": false}}), None, "b", true);
        assert_eq!(none["services"]["model_execution"]["ready"], false);
        assert_eq!(none["services"]["machine_control"]["ready"], true);
    }
}
