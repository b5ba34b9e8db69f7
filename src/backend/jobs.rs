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
    pub status: JobStatus,
    pub job_type: JobType,
    pub payload: Value,
    pub idempotency_key: Option<String>,
    pub attempt: Option<u64>,
    pub requested_via: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
}

/// A job row's `status` column (backend.md §8.1): the only values a row may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// The status named by its wire text; None for anything else.
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A job row's `job_type` column. A type this gateway does not handle is kept as sent in
/// [`JobType::Other`]: the row still decodes, and only that job fails, with the reference's
/// "Unsupported job type: <type>" (backend.md §8.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobType {
    Diagnostic,
    ModelRun,
    SubagentRun,
    SubagentCancel,
    ShellExec,
    ShellSession,
    Other(String),
}

impl JobType {
    /// The type named by its wire text (exact match); anything else is [`JobType::Other`].
    pub fn parse(s: &str) -> JobType {
        match s {
            "diagnostic" => JobType::Diagnostic,
            "model_run" => JobType::ModelRun,
            "subagent_run" => JobType::SubagentRun,
            "subagent_cancel" => JobType::SubagentCancel,
            "shell_exec" => JobType::ShellExec,
            "shell_session" => JobType::ShellSession,
            other => JobType::Other(other.to_string()),
        }
    }

    /// The wire text, exactly as the row carried it.
    pub fn as_str(&self) -> &str {
        match self {
            JobType::Diagnostic => "diagnostic",
            JobType::ModelRun => "model_run",
            JobType::SubagentRun => "subagent_run",
            JobType::SubagentCancel => "subagent_cancel",
            JobType::ShellExec => "shell_exec",
            JobType::ShellSession => "shell_session",
            JobType::Other(s) => s,
        }
    }
}

impl std::fmt::Display for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    let job_type = JobType::parse(&req_str(o, "job_type")?);
    let status = req_str(o, "status")?;
    let status = JobStatus::parse(&status)
        .ok_or_else(|| format!("`status` {status:?} is not a job status"))?;
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
mod tests;
