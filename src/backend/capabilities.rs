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
        model_execution["reason"] = json!(not_ready_reason(&providers));
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
            "gateway_version": crate::util::version(),
        }
    })
}

/// Why no provider can run models, naming each one and its last error (a subagent run that
/// is refused shows this text to the team).
fn not_ready_reason(providers: &Value) -> String {
    let each: Vec<String> = providers
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(id, p)| {
                    let status = p
                        .pointer("/health/status")
                        .and_then(Value::as_str)
                        .unwrap_or(if p["available"] == true {
                            "unknown"
                        } else {
                            "unavailable"
                        });
                    let why = p
                        .pointer("/health/error")
                        .or_else(|| p.get("error"))
                        .and_then(Value::as_str)
                        .map(|e| format!(": {}", crate::util::truncate_chars(e, 200, "...")))
                        .unwrap_or_default();
                    format!("{id} {status}{why}")
                })
                .collect()
        })
        .unwrap_or_default();
    if each.is_empty() {
        return "No gateway AI model provider is healthy".into();
    }
    format!(
        "No gateway AI model provider is healthy ({}). Run `panorama-gateway doctor` on the gateway host",
        each.join("; ")
    )
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

#[cfg(test)]
mod tests {
    use super::*;

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
