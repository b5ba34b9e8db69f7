//! Provider health (providers.md §4): statuses, full/light resolution, updates after model
//! runs, and the `providerHealth` map of gateway.json.

use serde_json::{Map, Value};

use crate::config::state::GatewayState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Healthy,
    Unhealthy,
    Unknown,
    Unavailable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
            Status::Unknown => "unknown",
            Status::Unavailable => "unavailable",
        }
    }
    /// Anything unrecognised is `unknown`.
    pub fn parse(s: &str) -> Status {
        match s {
            "healthy" => Status::Healthy,
            "unhealthy" => Status::Unhealthy,
            "unavailable" => Status::Unavailable,
            _ => Status::Unknown,
        }
    }
}

/// How health is checked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A real (tiny) model call per available provider.
    Full,
    /// Probe results only; the previous status is carried forward.
    Light,
    /// Full when there was never a full check, else light.
    Auto,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub status: Status,
    /// `full` when a model call was made.
    pub full: bool,
    pub checked_at: String,
    pub last_full_checked_at: Option<String>,
    pub last_full_status: Option<Status>,
    pub error: Option<String>,
    pub model: Option<String>,
    pub duration_ms: Option<u64>,
}

impl Health {
    /// `full` or `light`.
    pub fn check_type(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "light"
        }
    }

    /// A check without a model call: `status` now, the previous full check carried forward.
    fn carried(
        prev: Option<&Health>,
        status: Status,
        full: bool,
        error: Option<String>,
        now: &str,
    ) -> Health {
        Health {
            status,
            full,
            checked_at: now.to_string(),
            last_full_checked_at: prev.and_then(|p| p.last_full_checked_at.clone()),
            last_full_status: prev.and_then(|p| p.last_full_status),
            error,
            model: None,
            duration_ms: None,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), self.status.as_str().into());
        m.insert("check_type".into(), self.check_type().into());
        m.insert("checked_at".into(), self.checked_at.clone().into());
        if let Some(v) = &self.last_full_checked_at {
            m.insert("last_full_checked_at".into(), v.clone().into());
        }
        if let Some(v) = self.last_full_status {
            m.insert("last_full_status".into(), v.as_str().into());
        }
        if let Some(v) = &self.error {
            m.insert("error".into(), v.clone().into());
        }
        if let Some(v) = &self.model {
            m.insert("model".into(), v.clone().into());
        }
        if let Some(v) = self.duration_ms {
            m.insert("duration_ms".into(), v.into());
        }
        Value::Object(m)
    }

    /// Reads one `providerHealth` entry (None when it is not an object); other fields are
    /// dropped. A missing or empty `status` falls back to `last_full_status`, else `unknown`;
    /// any other unrecognised value is `unknown` (providers.md §4.1, §4.3 rule 3), so a
    /// hand-edited entry keeps its `last_full_*` instead of being discarded.
    pub fn from_json(v: &Value) -> Option<Health> {
        let o = v.as_object()?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(String::from);
        let last_full_status = s("last_full_status").map(|x| Status::parse(&x));
        let status = match o.get("status") {
            None | Some(Value::Null) => last_full_status.unwrap_or(Status::Unknown),
            Some(Value::String(x)) if x.is_empty() => last_full_status.unwrap_or(Status::Unknown),
            Some(Value::String(x)) => Status::parse(x),
            Some(_) => Status::Unknown,
        };
        Some(Health {
            status,
            full: o.get("check_type").and_then(Value::as_str) == Some("full"),
            checked_at: s("checked_at").unwrap_or_default(),
            last_full_checked_at: s("last_full_checked_at"),
            last_full_status,
            // Written by an older version (or the reference), it may hold a raw stderr with
            // a key in it: cleaned before it is shown or sent in a heartbeat.
            error: s("error").map(|e| clean_error(&e, HEALTH_ERROR_LIMIT)),
            model: s("model"),
            duration_ms: o.get("duration_ms").and_then(Value::as_u64),
        })
    }
}

/// Longest `error` kept in health (the reference stored whole stderr, up to 5 MB, in
/// gateway.json and every heartbeat; providers.md §9.12).
pub const HEALTH_ERROR_LIMIT: usize = 2000;

/// A CLI's error text as stored in health: redacted (a CLI may echo the key it was refused,
/// and health goes to gateway.json, `doctor`, `status -v` and every heartbeat), one line,
/// bounded.
fn clean_error(e: &str, limit: usize) -> String {
    super::plan::collapse(&crate::redact::redact(e), limit)
}

/// Rule 1: the CLI did not answer `--version`.
pub fn unavailable(prev: Option<&Health>, mode: Mode, error: Option<&str>, now: &str) -> Health {
    let error = error
        .map(|e| clean_error(e, HEALTH_ERROR_LIMIT))
        .or_else(|| prev.and_then(|p| p.error.clone()));
    Health::carried(prev, Status::Unavailable, mode == Mode::Full, error, now)
}

/// Whether `mode` with this previous health needs a model call.
pub fn needs_full(mode: Mode, prev: Option<&Health>) -> bool {
    match mode {
        Mode::Full => true,
        Mode::Light => false,
        Mode::Auto => prev
            .map(|p| p.last_full_checked_at.is_none() || p.last_full_status.is_none())
            .unwrap_or(true),
    }
}

/// Rule 2: the result of a validation call.
pub fn full(ok: bool, error: Option<&str>, duration_ms: u64, now: &str) -> Health {
    let status = if ok {
        Status::Healthy
    } else {
        Status::Unhealthy
    };
    Health {
        status,
        full: true,
        checked_at: now.to_string(),
        last_full_checked_at: Some(now.to_string()),
        last_full_status: Some(status),
        error: (!ok).then(|| {
            clean_error(
                error.unwrap_or("Provider validation failed"),
                HEALTH_ERROR_LIMIT,
            )
        }),
        model: None,
        duration_ms: Some(duration_ms),
    }
}

/// Rule 3: carry the previous status forward (the CLI answered `--version`).
///
/// Except `unavailable`, which means "did not answer `--version`": once it answers again the
/// provider is `unknown` (ready to try; `unhealthy` if its last full check failed) and the
/// stale "not found" error is dropped. The reference carried `unavailable` forward until a
/// model run or a restart (providers.md §9.4), so a reinstalled CLI stayed unusable.
pub fn light(prev: Option<&Health>, now: &str) -> Health {
    if let Some(p) = prev.filter(|p| p.status == Status::Unavailable) {
        let status = match p.last_full_status {
            Some(Status::Unhealthy) => Status::Unhealthy,
            _ => Status::Unknown,
        };
        return Health::carried(prev, status, false, None, now);
    }
    let status = prev
        .map(|p| p.status)
        .or_else(|| prev.and_then(|p| p.last_full_status))
        .unwrap_or(Status::Unknown);
    Health::carried(prev, status, false, prev.and_then(|p| p.error.clone()), now)
}

/// After a model run (§4.6): healthy drops the error; otherwise the new summary (or the old
/// error) is kept.
pub fn after_run(
    prev: Option<&Health>,
    status: Status,
    summary: Option<&str>,
    now: &str,
) -> Health {
    let error = if status == Status::Healthy {
        None
    } else {
        summary
            .map(|s| clean_error(s, 500))
            .or_else(|| prev.and_then(|p| p.error.clone()))
    };
    Health::carried(prev, status, false, error, now)
}

/// Writes one provider's health into gateway.json's `providerHealth` (other providers and keys
/// untouched). Use inside `config::state::update`.
pub fn apply_to_state(state: &mut GatewayState, id: &str, h: &Health) {
    state
        .provider_health
        .get_or_insert_with(Map::new)
        .insert(id.to_string(), h.to_json());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cli_that_answers_again_is_no_longer_unavailable() {
        let prev = unavailable(None, Mode::Light, Some("spawn gemini ENOENT"), "t0");
        let l = light(Some(&prev), "t1");
        assert_eq!(l.status, Status::Unknown);
        assert_eq!(l.error, None, "the stale not-found error is dropped");
        let ok = after_run(Some(&prev), Status::Healthy, None, "t2");
        assert_eq!(ok.status, Status::Healthy);
        assert_eq!(ok.error, None);
        // A known failed full check is kept through the outage.
        let bad = full(false, Some("not logged in"), 5, "t0");
        let gone = unavailable(Some(&bad), Mode::Light, Some("ENOENT"), "t1");
        let back = light(Some(&gone), "t2");
        assert_eq!(back.status, Status::Unhealthy);
        assert_eq!(back.last_full_checked_at.as_deref(), Some("t0"));
        // Other statuses are carried forward with their error.
        let h = after_run(None, Status::Unhealthy, Some("boom"), "t0");
        let l = light(Some(&h), "t1");
        assert_eq!(
            (l.status, l.error.as_deref()),
            (Status::Unhealthy, Some("boom"))
        );
    }

    #[test]
    fn cli_errors_are_redacted_before_they_are_stored() {
        let key = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv";
        let e = format!("Invalid API key: {key}\nplease log in");
        let stored = serde_json::json!({"status": "unhealthy", "error": e});
        for h in [
            Health::from_json(&stored).unwrap(),
            full(false, Some(&e), 5, "t"),
            unavailable(None, Mode::Full, Some(&e), "t"),
            after_run(None, Status::Unhealthy, Some(&e), "t"),
        ] {
            let err = h.error.unwrap();
            assert!(!err.contains(key), "{err}");
            assert!(err.contains("Invalid API key"), "{err}");
        }
    }

    #[test]
    fn auto_runs_full_only_without_a_previous_full_check() {
        assert!(needs_full(Mode::Auto, None));
        let f = full(true, None, 12, "t0");
        assert!(!needs_full(Mode::Auto, Some(&f)));
        assert!(needs_full(Mode::Full, Some(&f)));
        let back = Health::from_json(&f.to_json()).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            f.to_json(),
            serde_json::json!({"status":"healthy","check_type":"full","checked_at":"t0",
                "last_full_checked_at":"t0","last_full_status":"healthy","duration_ms":12})
        );
    }

    #[test]
    fn loading_coerces_odd_statuses_and_keeps_the_last_full_check() {
        let j = |v: serde_json::Value| Health::from_json(&v);
        let h = j(serde_json::json!({"check_type":"light","checked_at":"t",
            "last_full_checked_at":"t0","last_full_status":"healthy"}))
        .unwrap();
        assert_eq!(h.status, Status::Healthy);
        assert_eq!(h.last_full_checked_at.as_deref(), Some("t0"));
        // Carried forward by a light check, and no new full check is forced by `auto`.
        assert_eq!(light(Some(&h), "t1").status, Status::Healthy);
        assert!(!needs_full(Mode::Auto, Some(&h)));
        assert_eq!(
            j(serde_json::json!({"status": 3})).unwrap().status,
            Status::Unknown
        );
        assert_eq!(
            j(serde_json::json!({"status": "sick"})).unwrap().status,
            Status::Unknown
        );
        assert_eq!(j(serde_json::json!({})).unwrap().status, Status::Unknown);
        assert_eq!(j(serde_json::json!("healthy")), None);
    }

    #[test]
    fn state_merge_keeps_other_providers_and_keys() {
        let mut st: GatewayState = serde_json::from_value(serde_json::json!({
            "gatewayId": "g", "vmGuest": {"x": 1},
            "providerHealth": {"codex": {"status": "healthy", "check_type": "light", "checked_at": "a"}}
        }))
        .unwrap();
        let h = after_run(None, Status::Unhealthy, Some("boom \n  bad"), "t");
        apply_to_state(&mut st, "claude_code", &h);
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["providerHealth"]["codex"]["status"], "healthy");
        assert_eq!(v["providerHealth"]["claude_code"]["error"], "boom bad");
        assert_eq!(v["vmGuest"]["x"], 1);
    }
}
