//! Wire helpers for delegated gateway subagents (subagents-shell.md §2, §5, §6): the
//! `subagents`, `subagent_runs` and `subagent_run_events` rows and the
//! `finalize-gateway-subagent-run` edge function. Owner: Subagents.

use std::time::Duration;

use serde_json::{json, Value};

use super::session::Session;
use super::{rest, Error};

/// Timeout of the finalize edge function call.
pub const FINALIZE_TIMEOUT: Duration = Duration::from_secs(30);
/// A run-event payload whose compact JSON is longer than this is replaced by a preview.
pub const EVENT_PAYLOAD_LIMIT: usize = 200_000;
/// The run-event types the table takes; anything else is written as `system`.
pub const EVENT_TYPES: &[&str] = &[
    "message",
    "system",
    "tool_call",
    "tool_result",
    "run_started",
    "run_progress",
    "cancellation_requested",
    "cancellation_acknowledged",
    "run_completed",
    "run_failed",
    "run_cancelled",
];

fn first(rows: Vec<Value>) -> Option<Value> {
    rows.into_iter().next()
}

/// `subagents` row by id (None: not found or not visible).
pub fn load_subagent(s: &Session, id: &str, columns: &str) -> Result<Option<Value>, Error> {
    let f = format!("eq.{id}");
    rest::select(
        s,
        "subagents",
        &[("select", columns), ("id", &f), ("limit", "1")],
    )
    .map(first)
}

/// `subagent_runs` row by id.
pub fn load_run(s: &Session, id: &str, columns: &str) -> Result<Option<Value>, Error> {
    let f = format!("eq.{id}");
    rest::select(
        s,
        "subagent_runs",
        &[("select", columns), ("id", &f), ("limit", "1")],
    )
    .map(first)
}

/// The newest `running` run of a subagent (by `run_sequence`).
pub fn newest_running_run(
    s: &Session,
    subagent_id: &str,
    columns: &str,
) -> Result<Option<Value>, Error> {
    let f = format!("eq.{subagent_id}");
    rest::select(
        s,
        "subagent_runs",
        &[
            ("select", columns),
            ("subagent_id", &f),
            ("status", "eq.running"),
            ("order", "run_sequence.desc"),
            ("limit", "1"),
        ],
    )
    .map(first)
}

/// `team_gateways` control columns of this gateway (§2.4 step 10).
pub fn load_control(s: &Session, gateway_id: &str, team_id: &str) -> Result<Option<Value>, Error> {
    let g = format!("eq.{gateway_id}");
    let t = format!("eq.{team_id}");
    rest::select(
        s,
        "team_gateways",
        &[
            (
                "select",
                "full_control_enabled,status,last_seen_at,capabilities",
            ),
            ("id", &g),
            ("team_id", &t),
            ("limit", "1"),
        ],
    )
    .map(first)
}

/// `PATCH <table> … WHERE id=<id> [AND extra…]` returning whether a row matched.
pub fn update_where(
    s: &Session,
    table: &str,
    id: &str,
    extra: &[(&str, &str)],
    body: &Value,
) -> Result<bool, Error> {
    let f = format!("eq.{id}");
    let mut params: Vec<(&str, &str)> = vec![("id", &f)];
    params.extend_from_slice(extra);
    params.push(("select", "id"));
    rest::update(s, table, &params, body, true).map(|rows| !rows.is_empty())
}

/// (max `sequence` of the run) + 1, or 0 when there is none or on a read error (§6.2).
pub fn next_sequence(s: &Session, run_id: &str) -> i64 {
    let f = format!("eq.{run_id}");
    match rest::select(
        s,
        "subagent_run_events",
        &[
            ("select", "sequence"),
            ("run_id", &f),
            ("order", "sequence.desc"),
            ("limit", "1"),
        ],
    ) {
        Ok(rows) => rows
            .first()
            .and_then(|r| r.get("sequence"))
            .and_then(Value::as_i64)
            .map(|n| n + 1)
            .unwrap_or(0),
        Err(e) => {
            log::warn!(target: "subagent", "could not read the next event sequence of run {run_id}, using 0: {e}");
            0
        }
    }
}

/// The payload as stored: replaced by `{truncated, original_bytes, preview}` when its compact
/// JSON is longer than [`EVENT_PAYLOAD_LIMIT`] characters (§6.1).
pub fn bound_payload(payload: Value) -> Value {
    let text = payload.to_string();
    let chars = text.chars().count();
    if chars <= EVENT_PAYLOAD_LIMIT {
        return payload;
    }
    let preview: String = text.chars().take(EVENT_PAYLOAD_LIMIT).collect();
    json!({"truncated": true, "original_bytes": chars, "preview": preview})
}

/// The event type as stored: trimmed, lower-cased, unknown → `system`.
pub fn event_type(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    if EVENT_TYPES.contains(&t.as_str()) {
        t
    } else {
        "system".into()
    }
}

/// Where an event goes.
#[derive(Debug, Clone)]
pub struct EventTarget {
    pub run_id: String,
    pub subagent_id: String,
    pub team_id: String,
    pub gateway_id: Option<String>,
}

fn is_unique_violation(e: &Error) -> bool {
    matches!(e, Error::Status { status: 409, .. })
        || matches!(e, Error::Status { body, .. } if body.contains("23505"))
}

/// Inserts one event at `sequence`; on a unique violation re-reads the next sequence and
/// retries once. Returns the sequence written, None when it was dropped (logged).
pub fn insert_event(
    s: &Session,
    t: &EventTarget,
    sequence: i64,
    kind: &str,
    payload: Value,
) -> Option<i64> {
    let kind = event_type(kind);
    let payload = bound_payload(payload);
    let row = |seq: i64| {
        json!({
            "run_id": t.run_id, "subagent_id": t.subagent_id, "team_id": t.team_id,
            "gateway_id": t.gateway_id, "sequence": seq, "event_type": kind,
            "payload": payload,
        })
    };
    // Two writers (the run and a cancel job) may take the same next sequence: on a unique
    // violation, read the next free one again, a few times, before giving the event up.
    const SEQUENCE_TRIES: usize = 5;
    let mut seq = sequence;
    for attempt in 1..=SEQUENCE_TRIES {
        match rest::insert(s, "subagent_run_events", &row(seq)) {
            Ok(()) => return Some(seq),
            Err(e) if is_unique_violation(&e) && attempt < SEQUENCE_TRIES => {
                seq = next_sequence(s, &t.run_id);
            }
            Err(e) => {
                log::warn!(target: "subagent", "run event {kind} of run {} dropped after {attempt} attempt(s): {e}", t.run_id);
                return None;
            }
        }
    }
    None
}

/// What `finalize-gateway-subagent-run` answered (§5.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Finalized {
    pub success: bool,
    pub output: Option<Value>,
    pub status: Option<String>,
    pub error: Option<String>,
}

/// Decodes a finalize reply strictly; anything else is a failure with the documented text.
pub fn parse_finalize_reply(v: &Value) -> Finalized {
    let bad = Finalized {
        success: false,
        output: None,
        status: None,
        error: Some("Unexpected response from finalize-gateway-subagent-run".into()),
    };
    let Some(o) = v.as_object() else { return bad };
    let Some(success) = o.get("success").and_then(Value::as_bool) else {
        return bad;
    };
    for k in o.keys() {
        if !["success", "output", "status", "error"].contains(&k.as_str()) {
            return bad;
        }
    }
    let output = match o.get("output") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return bad,
    };
    let status = match o.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(st)) if ["completed", "failed", "cancelled"].contains(&st.as_str()) => {
            Some(st.clone())
        }
        Some(_) => return bad,
    };
    let error = match o.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => Some(e.clone()),
        Some(_) => return bad,
    };
    Finalized {
        success,
        output,
        status,
        error,
    }
}

/// Calls the edge function. A 4xx/5xx whose body is a JSON reply counts as that reply; a
/// transport failure is an `Err` (the caller fails the job as a processing error).
pub fn finalize(s: &Session, body: &Value) -> Result<Finalized, Error> {
    match super::functions::invoke(s, "finalize-gateway-subagent-run", body, FINALIZE_TIMEOUT) {
        Ok(v) => Ok(parse_finalize_reply(&v)),
        Err(Error::Status { status, body }) if status < 500 => {
            match serde_json::from_str::<Value>(&body) {
                Ok(v @ Value::Object(_)) => {
                    let mut f = parse_finalize_reply(&v);
                    f.success = false;
                    if f.error.is_none() {
                        f.error = Some(super::error_message_from_body(&body));
                    }
                    Ok(f)
                }
                _ => Err(Error::Status { status, body }),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_payloads_become_a_preview() {
        let small = json!({"a": 1});
        assert_eq!(bound_payload(small.clone()), small);
        let big = json!({"content": "x".repeat(EVENT_PAYLOAD_LIMIT)});
        let b = bound_payload(big.clone());
        assert_eq!(b["truncated"], true);
        assert_eq!(b["original_bytes"], big.to_string().len());
        assert_eq!(b["preview"].as_str().unwrap().len(), EVENT_PAYLOAD_LIMIT);
    }

    #[test]
    fn event_types_are_normalised() {
        assert_eq!(event_type(" Run_Started "), "run_started");
        assert_eq!(event_type("weird"), "system");
    }

    #[test]
    fn finalize_reply_is_strict() {
        let ok = parse_finalize_reply(
            &json!({"success": true, "status": "completed", "output": {"content": "x"}, "error": null}),
        );
        assert!(ok.success);
        assert_eq!(ok.status.as_deref(), Some("completed"));
        let odd = parse_finalize_reply(&json!({"success": true, "extra": 1}));
        assert!(!odd.success);
        assert_eq!(
            odd.error.as_deref(),
            Some("Unexpected response from finalize-gateway-subagent-run")
        );
        assert!(!parse_finalize_reply(&json!([1])).success);
    }
}
