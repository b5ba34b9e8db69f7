//! `gateway_jobs` rows and the calls on them: reconcile, claim, idempotency check, complete,
//! debug, crash recovery; and `gateway_events` inserts. PROTOCOL.md §6-§7.

use serde_json::{json, Map, Value};

use super::rest;
use super::session::Session;
use super::Error;

/// One `gateway_jobs` row, decoded strictly (backend.md §8.1); extra columns are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub team_id: String,
    pub gateway_id: Option<String>,
    pub status: String,
    pub job_type: String,
    pub payload: Value,
    pub idempotency_key: Option<String>,
    pub attempt: Option<u64>,
    pub requested_via: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
}

const STATUSES: [&str; 5] = ["queued", "running", "completed", "failed", "cancelled"];

fn req_str(o: &Map<String, Value>, k: &str) -> Result<String, String> {
    match o.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("`{k}` is not a non-empty string")),
        None => Err(format!("`{k}` is missing")),
    }
}

fn opt_str(o: &Map<String, Value>, k: &str) -> Result<Option<String>, String> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{k}` is not a string")),
    }
}

/// Decodes a row. The error names the first problem (for the log line).
pub fn decode_job(v: &Value) -> Result<JobRow, String> {
    let o = v.as_object().ok_or("the row is not a JSON object")?;
    let id = req_str(o, "id")?;
    let team_id = req_str(o, "team_id")?;
    let job_type = req_str(o, "job_type")?;
    let status = req_str(o, "status")?;
    if !STATUSES.contains(&status.as_str()) {
        return Err(format!("`status` {status:?} is not a job status"));
    }
    let gateway_id = opt_str(o, "gateway_id")?.filter(|s| !s.is_empty());
    let payload = match o.get("payload") {
        Some(p @ Value::Object(_)) => p.clone(),
        // Realtime may deliver jsonb as text when the column types were not applied.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(p @ Value::Object(_)) => p,
            _ => return Err("`payload` is not a JSON object".into()),
        },
        Some(_) => return Err("`payload` is not a JSON object".into()),
        None => return Err("`payload` is missing".into()),
    };
    let attempt = match o.get("attempt") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or("`attempt` is not a non-negative integer")?,
        ),
        Some(Value::String(s)) => Some(
            s.parse::<u64>()
                .map_err(|_| "`attempt` is not a non-negative integer")?,
        ),
        Some(_) => return Err("`attempt` is not a non-negative integer".into()),
    };
    Ok(JobRow {
        id,
        team_id,
        gateway_id,
        status,
        job_type,
        payload,
        idempotency_key: opt_str(o, "idempotency_key")?.filter(|s| !s.is_empty()),
        attempt,
        requested_via: opt_str(o, "requested_via")?,
        created_at: opt_str(o, "created_at")?.unwrap_or_default(),
        started_at: opt_str(o, "started_at")?,
    })
}

/// Rows that did not decode: (id if readable, what is wrong).
pub type Malformed = Vec<(Option<String>, String)>;

/// Rows given as JSON text, decoded one by one: a row that is not JSON this decoder accepts
/// (nested past its recursion limit, say) is malformed on its own, with its id when the id can
/// be read (a shallow read that skips the rest of the row without recursion).
pub fn decode_raw_rows(rows: Vec<Box<serde_json::value::RawValue>>) -> (Vec<JobRow>, Malformed) {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for raw in rows {
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(v) => match decode_job(&v) {
                Ok(j) => ok.push(j),
                Err(e) => bad.push((v.get("id").and_then(Value::as_str).map(str::to_string), e)),
            },
            Err(e) => {
                let id = serde_json::from_str::<IdOnly>(raw.get())
                    .ok()
                    .and_then(|r| r.id)
                    .and_then(|v| v.as_str().map(str::to_string));
                bad.push((id, format!("the row could not be decoded ({e})")));
            }
        }
    }
    (ok, bad)
}

/// Fails a queued job of this gateway whose row could not be read (conditional: only while it
/// is still queued and ours), so it does not stay queued forever. `Ok(false)`: nothing matched.
pub fn fail_malformed(s: &Session, job_id: &str, why: &str) -> Result<bool, Error> {
    let message = format!(
        "The gateway could not read this job: {why}. The payload must be a JSON object of the job's fields; fix the job and submit it again."
    );
    let body = completion_body(
        "failed",
        &Some(json!({"message": message, "error_code": "GATEWAY_JOB_MALFORMED"})),
        &Some(message.clone()),
        &crate::util::now_rfc3339(),
    );
    let id = format!("eq.{job_id}");
    let gw = format!("eq.{}", s.gateway_id);
    let rows = rest::update(
        s,
        "gateway_jobs",
        &[("id", &id), ("status", "eq.queued"), ("gateway_id", &gw)],
        &body,
        true,
    )?;
    Ok(!rows.is_empty())
}

/// At most this many queued jobs per reconcile (fewer while big rows do not fit the body limit).
pub const RECONCILE_LIMIT: usize = 1000;

/// The queued jobs of this gateway, oldest first, at most `limit`; malformed rows come back
/// separately.
pub fn reconcile(s: &Session, limit: usize) -> Result<(Vec<JobRow>, Malformed), Error> {
    let limit = limit.to_string();
    let team = format!("eq.{}", s.team_id);
    let gw = format!("eq.{}", s.gateway_id);
    let rows = rest::select_raw(
        s,
        "gateway_jobs",
        &[
            ("select", "*"),
            ("team_id", &team),
            ("status", "eq.queued"),
            ("gateway_id", &gw),
            ("order", "created_at.asc"),
            // Bounded (the reference has no limit): a huge backlog must not make every
            // reconcile exceed the body limit; the next ones come as these are claimed.
            ("limit", &limit),
        ],
    )?;
    Ok(decode_raw_rows(rows))
}

/// The conditional claim. `Ok(Some(row))`: ours. `Ok(None)`: someone else has it or it is no
/// longer queued.
pub fn claim(s: &Session, job_id: &str, started_at: &str) -> Result<Option<JobRow>, Error> {
    let id = format!("eq.{job_id}");
    let team = format!("eq.{}", s.team_id);
    let gw = format!("eq.{}", s.gateway_id);
    let rows = rest::update(
        s,
        "gateway_jobs",
        &[
            ("id", &id),
            ("team_id", &team),
            ("status", "eq.queued"),
            ("gateway_id", &gw),
            ("select", "*"),
        ],
        &json!({ "status": "running", "gateway_id": s.gateway_id, "started_at": started_at }),
        true,
    )?;
    match rows.into_iter().next() {
        None => Ok(None),
        Some(r) => decode_job(&r)
            .map(Some)
            .map_err(|e| Error::Decode(format!("claimed row is malformed: {e}"))),
    }
}

/// One job row by id (`GET gateway_jobs?select=*&id=eq.<id>`), None when it does not exist.
pub fn job_row(s: &Session, job_id: &str) -> Result<Option<Value>, Error> {
    let id = format!("eq.{job_id}");
    let rows = rest::select(s, "gateway_jobs", &[("select", "*"), ("id", &id)])?;
    Ok(rows.into_iter().next())
}

/// What a re-read says about a claim whose reply never arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCheck {
    /// Running for this gateway with the `started_at` our claim sent: it landed.
    Ours(Box<JobRow>),
    /// Still queued for this gateway: the claim did not land (yet: it may still be in flight).
    StillQueued,
    /// Someone else's, cancelled, finished or gone: not ours to run.
    NotOurs(String),
    /// Ours, but the row does not decode (it must be failed, not run).
    Malformed(String),
}

/// Recognises our own claim by the `started_at` we sent (compared as instants: the backend may
/// answer `+00:00` or microseconds), the gateway id and the status.
pub fn classify_claim(row: Option<&Value>, gateway_id: &str, started_at: &str) -> ClaimCheck {
    use crate::util::parse_rfc3339_ms;
    let Some(row) = row else {
        return ClaimCheck::NotOurs("the job no longer exists".into());
    };
    let get = |k: &str| row.get(k).and_then(Value::as_str);
    let status = get("status").unwrap_or("");
    if get("gateway_id") != Some(gateway_id) {
        return ClaimCheck::NotOurs("the job is not for this gateway".into());
    }
    match status {
        "queued" => ClaimCheck::StillQueued,
        "running"
            if get("started_at")
                .and_then(parse_rfc3339_ms)
                .is_some_and(|t| Some(t) == parse_rfc3339_ms(started_at)) =>
        {
            match decode_job(row) {
                Ok(j) => ClaimCheck::Ours(Box::new(j)),
                Err(e) => ClaimCheck::Malformed(e),
            }
        }
        "running" => ClaimCheck::NotOurs(format!(
            "running since {} (another claim)",
            get("started_at").unwrap_or("an unknown time")
        )),
        other => ClaimCheck::NotOurs(format!("status is {other:?}")),
    }
}

/// True when another execution with the same idempotency key and attempt is running or done.
/// Query errors count as "no conflict" (like the reference), but are returned for logging.
pub fn idempotency_conflict(s: &Session, job: &JobRow) -> Result<bool, Error> {
    let Some(key) = &job.idempotency_key else {
        return Ok(false);
    };
    let team = format!("eq.{}", job.team_id);
    let k = format!("eq.{key}");
    let attempt = format!("eq.{}", job.attempt.unwrap_or(1));
    let not_me = format!("neq.{}", job.id);
    let rows = rest::select(
        s,
        "gateway_jobs",
        &[
            ("select", "id,status,result,error"),
            ("team_id", &team),
            ("idempotency_key", &k),
            ("attempt", &attempt),
            ("status", "in.(running,completed)"),
            ("id", &not_me),
            ("order", "created_at.asc"),
            ("limit", "1"),
        ],
    )?;
    Ok(!rows.is_empty())
}

/// The completion body (PROTOCOL.md §7).
pub fn completion_body(
    status: &str,
    result: &Option<Value>,
    error: &Option<String>,
    completed_at: &str,
) -> Value {
    // Second line of defence: handlers redact what they report, but the gateway's own tokens
    // and keys echoed by a child or quoted in an error must never reach the team's job table.
    // Only the known secret values are masked: results are the user's data (commands, model
    // output), which pattern-based redaction would corrupt.
    let mut result = result.clone().unwrap_or(Value::Null);
    crate::redact::mask_known_secrets_json(&mut result);
    json!({
        "status": status,
        "result": result,
        "error": error
            .as_deref()
            .filter(|e| !e.is_empty())
            .map(crate::redact::mask_known_secrets),
        "completed_at": completed_at,
    })
}

/// `PATCH gateway_jobs?id=eq.<id>&status=eq.running` with the completion body.
pub fn complete(s: &Session, job_id: &str, body: &Value) -> Result<(), Error> {
    let id = format!("eq.{job_id}");
    rest::update(
        s,
        "gateway_jobs",
        &[("id", &id), ("status", "eq.running")],
        body,
        false,
    )
    .map(|_| ())
}

/// `PATCH gateway_jobs?id=eq.<id>&status=eq.running&gateway_id=eq.<us>&started_at=eq.<ours>`
/// with `body`: completes the job only while it is still the run our claim started (crash
/// recovery: another claim of the same job, or a row the backend already ended, is left
/// alone). True when the row matched.
pub fn complete_if_ours(
    s: &Session,
    job_id: &str,
    started_at: &str,
    body: &Value,
) -> Result<bool, Error> {
    let id = format!("eq.{job_id}");
    let gw = format!("eq.{}", s.gateway_id);
    let started = format!("eq.{started_at}");
    let rows = rest::update(
        s,
        "gateway_jobs",
        &[
            ("id", &id),
            ("status", "eq.running"),
            ("gateway_id", &gw),
            ("started_at", &started),
            ("select", "id"),
        ],
        body,
        true,
    )?;
    Ok(!rows.is_empty())
}

/// `PATCH gateway_jobs?id=eq.<id>` with `{"debug": ...}`.
pub fn set_debug(s: &Session, job_id: &str, debug: &Value) -> Result<(), Error> {
    let id = format!("eq.{job_id}");
    rest::update(
        s,
        "gateway_jobs",
        &[("id", &id)],
        &json!({ "debug": debug }),
        false,
    )
    .map(|_| ())
}

/// Levels of `gateway_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One `gateway_events` row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayEvent {
    pub level: Level,
    pub code: Option<String>,
    pub provider: Option<String>,
    pub message: String,
    pub details: Value,
}

impl GatewayEvent {
    /// An event as the providers report it (`{level, code, provider, message, details}`):
    /// level `error` and `info` kept, anything else a warning; details default to `{}`.
    pub fn from_value(ev: &Value) -> GatewayEvent {
        let text = |k: &str| ev.get(k).and_then(Value::as_str).map(str::to_string);
        GatewayEvent {
            level: match ev.get("level").and_then(Value::as_str) {
                Some("error") => Level::Error,
                Some("info") => Level::Info,
                _ => Level::Warn,
            },
            code: text("code"),
            provider: text("provider"),
            message: text("message").unwrap_or_default(),
            details: ev
                .get("details")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
        }
    }
}

/// The insert body: message cut to 2000 characters (+ "..."), details an object.
pub fn event_body(s: &Session, ev: &GatewayEvent) -> Value {
    // Redacted before cutting, so a secret is never left half-visible at the cut; a second
    // line of defence behind the callers' own redaction.
    let redacted = crate::redact::redact(&ev.message);
    let message = if redacted.chars().count() > 2000 {
        let mut m: String = redacted.chars().take(2000).collect();
        m.push_str("...");
        m
    } else {
        redacted
    };
    let mut details = match &ev.details {
        Value::Object(_) => ev.details.clone(),
        _ => json!({}),
    };
    crate::redact::redact_json(&mut details);
    json!({
        "gateway_id": s.gateway_id,
        "team_id": s.team_id,
        "provider": ev.provider,
        "level": ev.level.as_str(),
        "code": ev.code,
        "message": message,
        "details": details,
    })
}

/// `POST gateway_events`.
pub fn insert_event(s: &Session, ev: &GatewayEvent) -> Result<(), Error> {
    if s.gateway_id.is_empty() || s.team_id.is_empty() {
        return Ok(());
    }
    rest::insert(s, "gateway_events", &event_body(s, ev))
}

/// The team-level control state: `team_gateways` (full_control_enabled, status, ...).
pub fn control_state(s: &Session) -> Result<Option<Value>, Error> {
    let id = format!("eq.{}", s.gateway_id);
    let team = format!("eq.{}", s.team_id);
    let rows = rest::select(
        s,
        "team_gateways",
        &[
            (
                "select",
                "full_control_enabled,status,last_seen_at,capabilities",
            ),
            ("id", &id),
            ("team_id", &team),
        ],
    )?;
    Ok(rows.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Value {
        json!({"id": "j1", "team_id": "t", "gateway_id": "g", "status": "queued",
               "job_type": "diagnostic", "payload": {}, "result": null, "error": null,
               "attempt": 1, "idempotency_key": null, "created_at": "2026-01-01T00:00:00Z",
               "updated_at": "2026-01-01T00:00:00Z", "completed_at": null, "extra": 5})
    }

    #[test]
    fn decodes_a_full_row() {
        let j = decode_job(&row()).unwrap();
        assert_eq!(j.id, "j1");
        assert_eq!(j.gateway_id.as_deref(), Some("g"));
        assert_eq!(j.attempt, Some(1));
        assert_eq!(j.payload, json!({}));
    }

    #[test]
    fn rejects_malformed_rows_without_failing_the_batch() {
        let mut bad_payload = row();
        bad_payload["payload"] = json!([1, 2]);
        bad_payload["id"] = json!("j2");
        let mut bad_status = row();
        bad_status["status"] = json!("weird");
        let mut bad_attempt = row();
        bad_attempt["attempt"] = json!(-1);
        // A payload nested deeper than serde_json's recursion limit (Postgres accepts it).
        let deep = format!(
            "{{\"id\":\"j6\",\"payload\":{}1{}}}",
            "[".repeat(300),
            "]".repeat(300)
        );
        let mut string_payload = row();
        string_payload["payload"] = json!("just text");
        let body = format!(
            "[{},{},\"x\",{},{},{},{},{}]",
            row(),
            bad_payload,
            bad_status,
            bad_attempt,
            deep,
            string_payload,
            row()
        );
        let raws: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(&body).unwrap();
        let (ok, bad) = decode_raw_rows(raws);
        assert_eq!(ok.len(), 2, "the good rows around the bad ones: {bad:?}");
        assert_eq!(bad.len(), 6);
        assert_eq!(bad[0].0.as_deref(), Some("j2"));
        assert!(bad[0].1.contains("payload"));
        assert_eq!(bad[4].0.as_deref(), Some("j6"), "the deep row's id is read");
        assert!(bad[4].1.contains("could not be decoded"), "{}", bad[4].1);
        assert!(
            bad[5].1.contains("`payload` is not a JSON object"),
            "{}",
            bad[5].1
        );
    }

    #[test]
    fn jsonb_text_payload_is_parsed() {
        let mut r = row();
        r["payload"] = json!("{\"a\":1}");
        assert_eq!(decode_job(&r).unwrap().payload, json!({"a": 1}));
    }

    #[test]
    fn completion_results_keep_user_data_that_only_looks_secret() {
        // A shell command mentioning a key variable, a model's JSON with a `token` field and
        // usage counters are the user's data: only registered secret values are masked.
        let result = json!({
            "command": "echo \"key=${SUPABASE_ANON_KEY:-unset}\"",
            "output": {"token": "abc", "password": "hunter2"},
            "usage": {"input_tokens": 12, "output_tokens": 3},
        });
        let b = completion_body("completed", &Some(result.clone()), &None, "t");
        assert_eq!(b["result"], result);
    }

    #[test]
    fn registered_secrets_never_reach_completion_or_event_bodies() {
        let secret = "opaque-refresh-c0ffee-4242";
        crate::redact::register_secret(secret);
        let err = format!("handler failed: child said {secret}");
        let b = completion_body(
            "failed",
            &Some(json!({"stdout": format!("x {secret} y"), "nested": [secret]})),
            &Some(err.clone()),
            "t",
        );
        let text = b.to_string();
        assert!(!text.contains(secret), "{text}");
        assert!(b["error"].as_str().unwrap().starts_with("handler failed"));
        let s = wire_session("http://127.0.0.1:9", "tok");
        let ev = GatewayEvent {
            level: Level::Error,
            code: Some("job_failed".into()),
            provider: None,
            message: err,
            details: json!({"error": secret}),
        };
        let text = event_body(&s, &ev).to_string();
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("handler failed"), "{text}");
    }

    #[test]
    fn completion_body_nulls_empty_errors() {
        let b = completion_body("completed", &None, &Some(String::new()), "t");
        assert_eq!(
            b,
            json!({"status": "completed", "result": null, "error": null, "completed_at": "t"})
        );
    }

    #[test]
    fn a_claim_is_recognised_by_our_started_at() {
        let ours = "2026-01-05T10:00:00.123Z";
        let mut r = row();
        r["status"] = json!("running");
        r["started_at"] = json!("2026-01-05T10:00:00.123+00:00");
        match classify_claim(Some(&r), "g", ours) {
            ClaimCheck::Ours(j) => assert_eq!(j.id, "j1"),
            other => panic!("{other:?}"),
        }
        r["started_at"] = json!("2026-01-05T10:00:00.124Z");
        assert!(matches!(
            classify_claim(Some(&r), "g", ours),
            ClaimCheck::NotOurs(_)
        ));
        r["started_at"] = json!(null);
        assert!(matches!(
            classify_claim(Some(&r), "g", ours),
            ClaimCheck::NotOurs(_)
        ));
        r["started_at"] = json!(ours);
        r["gateway_id"] = json!("other");
        assert!(matches!(
            classify_claim(Some(&r), "g", ours),
            ClaimCheck::NotOurs(_)
        ));
        r["gateway_id"] = json!("g");
        r["payload"] = json!("not an object");
        assert!(matches!(
            classify_claim(Some(&r), "g", ours),
            ClaimCheck::Malformed(_)
        ));
        assert_eq!(
            classify_claim(Some(&row()), "g", ours),
            ClaimCheck::StillQueued
        );
        for st in ["cancelled", "completed", "failed"] {
            let mut r = row();
            r["status"] = json!(st);
            r["started_at"] = json!(ours);
            assert!(
                matches!(classify_claim(Some(&r), "g", ours), ClaimCheck::NotOurs(_)),
                "{st}"
            );
        }
        assert!(matches!(
            classify_claim(None, "g", ours),
            ClaimCheck::NotOurs(_)
        ));
    }

    fn jwt(exp: u64) -> String {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(format!(r#"{{"exp":{exp},"sub":"g"}}"#))
        )
    }

    struct NoStore;
    impl crate::backend::session::TokenStore for NoStore {
        fn save(&self, _: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn load(&self) -> Option<(String, String)> {
            None
        }
    }

    fn wire_session(url: &str, token: &str) -> Session {
        let cfg = crate::config::BackendConfig {
            url: format!("{url}/"),
            anon_key: "ANON".into(),
        };
        Session::new(
            crate::backend::new_agent(),
            &cfg,
            "g",
            "t",
            token,
            "rt-0",
            Box::new(NoStore),
        )
    }

    /// Every gateway_jobs / gateway_events / team_gateways request, byte for byte as
    /// PROTOCOL.md §5-§8 and supabase-wire.md §3.7 give them (URLSearchParams encoding).
    #[test]
    fn rest_requests_are_exactly_the_contract() {
        use crate::backend::testsrv;
        let (url, log) = testsrv::start(Box::new(|c: &testsrv::Captured| {
            if c.method == "PATCH" && c.header("prefer").is_some() {
                let mut r = row();
                r["status"] = json!("running");
                (200, json!([r]).to_string())
            } else if c.method == "GET" {
                (200, "[]".into())
            } else if c.method == "POST" {
                (201, String::new())
            } else {
                (204, String::new())
            }
        }));
        let tok = jwt(crate::util::unix_now() + 3600);
        let s = wire_session(&url, &tok);
        let last = || log.lock().unwrap().last().cloned().unwrap();
        let common = |c: &testsrv::Captured| {
            assert_eq!(c.header("apikey"), Some("ANON"), "{c:?}");
            assert_eq!(
                c.header("authorization"),
                Some(format!("Bearer {tok}").as_str())
            );
            assert!(c
                .header("x-client-info")
                .unwrap()
                .starts_with("panorama-gateway/"));
        };
        let read = |c: &testsrv::Captured| {
            common(c);
            assert_eq!(c.method, "GET");
            assert_eq!(c.header("accept-profile"), Some("public"));
            assert_eq!(c.header("prefer"), None);
            assert_eq!(c.header("content-type"), None);
            assert_eq!(c.header("accept"), Some("*/*"));
            assert!(c.body.is_empty());
        };
        let write = |c: &testsrv::Captured, prefer: Option<&str>| {
            common(c);
            assert_eq!(c.header("content-profile"), Some("public"));
            assert_eq!(c.header("content-type"), Some("application/json"));
            assert_eq!(c.header("prefer"), prefer);
        };

        reconcile(&s, RECONCILE_LIMIT).unwrap();
        let c = last();
        read(&c);
        assert_eq!(
            c.target,
            "/rest/v1/gateway_jobs?select=*&team_id=eq.t&status=eq.queued&gateway_id=eq.g&order=created_at.asc&limit=1000"
        );

        // The claim: the reply is a one-row array (`row()` with status running).
        let claimed = claim(&s, "j1", "2026-01-05T10:00:00.123Z");
        let c = last();
        write(&c, Some("return=representation"));
        assert_eq!(c.method, "PATCH");
        assert_eq!(
            c.target,
            "/rest/v1/gateway_jobs?id=eq.j1&team_id=eq.t&status=eq.queued&gateway_id=eq.g&select=*"
        );
        assert_eq!(
            c.json(),
            json!({"status": "running", "gateway_id": "g", "started_at": "2026-01-05T10:00:00.123Z"})
        );
        assert!(claimed.is_ok(), "{claimed:?}");

        let mut job = decode_job(&row()).unwrap();
        job.idempotency_key = Some("k 1,(x)".into());
        job.attempt = Some(2);
        assert!(!idempotency_conflict(&s, &job).unwrap());
        let c = last();
        read(&c);
        assert_eq!(
            c.target,
            "/rest/v1/gateway_jobs?select=id%2Cstatus%2Cresult%2Cerror&team_id=eq.t&idempotency_key=eq.k%201%2C%28x%29&attempt=eq.2&status=in.%28running%2Ccompleted%29&id=neq.j1&order=created_at.asc&limit=1"
        );
        // No attempt column: `attempt or 1`.
        job.attempt = None;
        idempotency_conflict(&s, &job).unwrap();
        assert!(last().target.contains("&attempt=eq.1&"));
        let n = log.lock().unwrap().len();
        job.idempotency_key = None;
        assert!(!idempotency_conflict(&s, &job).unwrap());
        assert_eq!(log.lock().unwrap().len(), n, "no key, no query");

        let body = completion_body(
            "failed",
            &Some(json!({"message": "m"})),
            &Some("boom".into()),
            "2026-01-05T10:00:05.000Z",
        );
        complete(&s, "j1", &body).unwrap();
        let c = last();
        write(&c, None);
        assert_eq!(c.method, "PATCH");
        assert_eq!(c.target, "/rest/v1/gateway_jobs?id=eq.j1&status=eq.running");
        assert_eq!(
            c.json(),
            json!({"status": "failed", "result": {"message": "m"}, "error": "boom",
                   "completed_at": "2026-01-05T10:00:05.000Z"})
        );

        set_debug(&s, "j1", &json!({"exit_code": 0})).unwrap();
        let c = last();
        write(&c, None);
        assert_eq!(c.method, "PATCH");
        assert_eq!(c.target, "/rest/v1/gateway_jobs?id=eq.j1");
        assert_eq!(c.json(), json!({"debug": {"exit_code": 0}}));

        // Crash recovery fails a job only while it is still the run our claim started.
        let _ = complete_if_ours(&s, "j1", "2026-01-05T10:00:00.000Z", &body);
        let c = last();
        write(&c, Some("return=representation"));
        assert_eq!(c.method, "PATCH");
        assert_eq!(
            c.target,
            "/rest/v1/gateway_jobs?id=eq.j1&status=eq.running&gateway_id=eq.g&started_at=eq.2026-01-05T10%3A00%3A00.000Z&select=id"
        );

        let ev = GatewayEvent {
            level: Level::Warn,
            code: Some("c".into()),
            provider: None,
            message: "x".repeat(2001),
            details: json!(null),
        };
        insert_event(&s, &ev).unwrap();
        let c = last();
        write(&c, None);
        assert_eq!(c.method, "POST");
        assert_eq!(c.target, "/rest/v1/gateway_events");
        let b = c.json();
        let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "code",
                "details",
                "gateway_id",
                "level",
                "message",
                "provider",
                "team_id"
            ]
        );
        assert_eq!(b["message"].as_str().unwrap().len(), 2003);
        assert!(b["message"].as_str().unwrap().ends_with("..."));
        assert_eq!(b["details"], json!({}));
        assert_eq!(b["provider"], Value::Null);
        assert_eq!(
            (b["gateway_id"].as_str(), b["team_id"].as_str()),
            (Some("g"), Some("t"))
        );

        assert_eq!(control_state(&s).unwrap(), None);
        let c = last();
        read(&c);
        assert_eq!(
            c.target,
            "/rest/v1/team_gateways?select=full_control_enabled%2Cstatus%2Clast_seen_at%2Ccapabilities&id=eq.g&team_id=eq.t"
        );
    }

    /// Heartbeat, pairing and refresh requests (PROTOCOL.md §3, §4, §8).
    #[test]
    fn function_and_auth_requests_are_exactly_the_contract() {
        use crate::backend::testsrv;
        let new_at = jwt(crate::util::unix_now() + 3600);
        let new_at2 = new_at.clone();
        let (url, log) = testsrv::start(Box::new(move |c: &testsrv::Captured| {
            match c.target.as_str() {
                "/functions/v1/gateway-heartbeat" => {
                    (200, r#"{"success":true,"egress_credential_renewal":null}"#.into())
                }
                "/functions/v1/exchange-gateway-pairing-code" => (
                    200,
                    json!({"success": true, "gateway_id": "g", "team_id": "t", "access_token": "a.b.c",
                           "refresh_token": "r", "expires_at": "2026-01-05T11:11:12Z", "token_type": "bearer"})
                    .to_string(),
                ),
                "/auth/v1/token?grant_type=refresh_token" => (
                    200,
                    json!({"access_token": new_at2, "token_type": "bearer", "expires_in": 3600,
                           "refresh_token": "rt-1", "user": {}})
                    .to_string(),
                ),
                // The expired token is refused once: one refresh, one retry.
                _ if c.header("authorization") == Some(&format!("Bearer {new_at2}")) => {
                    (200, "[]".into())
                }
                _ => (401, r#"{"code":"PGRST303","message":"JWT expired"}"#.into()),
            }
        }));
        let cfg = crate::config::BackendConfig {
            url: url.clone(),
            anon_key: "ANON".into(),
        };
        let p = crate::backend::functions::exchange_pairing_code(
            &crate::backend::new_agent(),
            &cfg,
            "  ABCD-1234 \n",
            "My Box",
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(p.gateway_id, "g");
        let c = log.lock().unwrap().last().cloned().unwrap();
        assert_eq!(c.method, "POST");
        assert_eq!(c.target, "/functions/v1/exchange-gateway-pairing-code");
        assert_eq!(c.header("apikey"), Some("ANON"));
        assert_eq!(c.header("authorization"), Some("Bearer ANON"));
        assert_eq!(c.header("content-type"), Some("application/json"));
        assert_eq!(
            c.json(),
            json!({"code": "ABCD-1234", "device_name": "My Box"})
        );

        // A session whose token the server calls expired (its `exp` still looks fine).
        let old = jwt(crate::util::unix_now() + 3000);
        let s = wire_session(&url, &old);
        let hb = json!({"status": "ready", "capabilities": {}, "device_name": "My Box"});
        let before = log.lock().unwrap().len();
        rest::select(&s, "gateway_jobs", &[("select", "status"), ("id", "eq.j1")]).unwrap();
        let reqs: Vec<_> = log.lock().unwrap()[before..].to_vec();
        assert_eq!(reqs.len(), 3, "{reqs:#?}");
        assert_eq!(
            reqs[0].header("authorization"),
            Some(format!("Bearer {old}").as_str())
        );
        assert_eq!(
            reqs[0].target,
            "/rest/v1/gateway_jobs?select=status&id=eq.j1"
        );
        let r = &reqs[1];
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("POST", "/auth/v1/token?grant_type=refresh_token")
        );
        assert_eq!(r.header("apikey"), Some("ANON"));
        assert_eq!(r.header("authorization"), Some("Bearer ANON"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-supabase-api-version"), Some("2024-01-01"));
        assert_eq!(r.json(), json!({"refresh_token": "rt-0"}));
        assert_eq!(
            reqs[2].header("authorization"),
            Some(format!("Bearer {new_at}").as_str())
        );
        assert_eq!(reqs[2].target, reqs[0].target);

        let v = crate::backend::functions::invoke(
            &s,
            "gateway-heartbeat",
            &hb,
            crate::backend::functions::HEARTBEAT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(v["success"], true);
        let c = log.lock().unwrap().last().cloned().unwrap();
        assert_eq!(c.method, "POST");
        assert_eq!(c.target, "/functions/v1/gateway-heartbeat");
        assert_eq!(c.header("apikey"), Some("ANON"));
        assert_eq!(
            c.header("authorization"),
            Some(format!("Bearer {new_at}").as_str())
        );
        assert_eq!(c.header("content-type"), Some("application/json"));
        assert_eq!(c.json(), hb);
    }
}
