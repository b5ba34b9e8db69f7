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

/// Decodes a list of rows; malformed rows are returned separately (never fail the batch).
pub fn decode_jobs(rows: Vec<Value>) -> (Vec<JobRow>, Malformed) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for r in rows {
        match decode_job(&r) {
            Ok(j) => ok.push(j),
            Err(e) => bad.push((r.get("id").and_then(Value::as_str).map(str::to_string), e)),
        }
    }
    (ok, bad)
}

/// At most this many queued jobs per reconcile.
pub const RECONCILE_LIMIT: &str = "1000";

/// The queued jobs of this gateway, oldest first; malformed rows come back separately.
pub fn reconcile(s: &Session) -> Result<(Vec<JobRow>, Malformed), Error> {
    let team = format!("eq.{}", s.team_id);
    let gw = format!("eq.{}", s.gateway_id);
    let rows = rest::select(
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
            ("limit", RECONCILE_LIMIT),
        ],
    )?;
    Ok(decode_jobs(rows))
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
    json!({
        "status": status,
        "result": result.clone().unwrap_or(Value::Null),
        "error": error.clone().filter(|e| !e.is_empty()),
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

/// This gateway's jobs still `running` (for crash recovery at start): (id, started_at).
pub fn running_jobs(s: &Session) -> Result<Vec<(String, Option<String>, String)>, Error> {
    let team = format!("eq.{}", s.team_id);
    let gw = format!("eq.{}", s.gateway_id);
    let rows = rest::select(
        s,
        "gateway_jobs",
        &[
            ("select", "id,started_at,job_type"),
            ("team_id", &team),
            ("gateway_id", &gw),
            ("status", "eq.running"),
        ],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let id = r.get("id")?.as_str()?.to_string();
            let started = r
                .get("started_at")
                .and_then(Value::as_str)
                .map(str::to_string);
            let jt = r
                .get("job_type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            Some((id, started, jt))
        })
        .collect())
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

/// The insert body: message cut to 2000 characters (+ "..."), details an object.
pub fn event_body(s: &Session, ev: &GatewayEvent) -> Value {
    let message = if ev.message.chars().count() > 2000 {
        let mut m: String = ev.message.chars().take(2000).collect();
        m.push_str("...");
        m
    } else {
        ev.message.clone()
    };
    let details = match &ev.details {
        Value::Object(_) => ev.details.clone(),
        _ => json!({}),
    };
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
        let (ok, bad) = decode_jobs(vec![
            row(),
            bad_payload,
            json!("x"),
            bad_status,
            bad_attempt,
        ]);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 4);
        assert_eq!(bad[0].0.as_deref(), Some("j2"));
        assert!(bad[0].1.contains("payload"));
    }

    #[test]
    fn jsonb_text_payload_is_parsed() {
        let mut r = row();
        r["payload"] = json!("{\"a\":1}");
        assert_eq!(decode_job(&r).unwrap().payload, json!({"a": 1}));
    }

    #[test]
    fn completion_body_nulls_empty_errors() {
        let b = completion_body("completed", &None, &Some(String::new()), "t");
        assert_eq!(
            b,
            json!({"status": "completed", "result": null, "error": null, "completed_at": "t"})
        );
    }
}
