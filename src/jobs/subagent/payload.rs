//! The subagent jobs' inputs typed at the door (subagents-shell.md §2.1, §2.2, §6.4): the
//! `subagent_run` and `subagent_cancel` payloads and the subagent row fields the handlers read.
//! A value of the wrong type is one clear error naming the field, never a silent default.

use super::*;

/// The JSON type of a value, for error messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value under the first of `keys` that is present and not null, with its key.
fn first<'a>(o: &'a Value, keys: &[&'static str]) -> Option<(&'static str, &'a Value)> {
    keys.iter()
        .find_map(|k| o.get(k).filter(|v| !v.is_null()).map(|v| (*k, v)))
}

/// The text under the first of `keys` present, as sent (None when absent or null); any other
/// type is an error naming `<prefix><key> <place>`.
fn text<'a>(
    o: &'a Value,
    keys: &[&'static str],
    prefix: &str,
    place: &str,
) -> Result<Option<&'a str>, String> {
    match first(o, keys) {
        None => Ok(None),
        Some((_, Value::String(x))) => Ok(Some(x)),
        Some((k, v)) => Err(format!(
            "Invalid {prefix}{k} {place}: expected a string, got {}",
            type_name(v)
        )),
    }
}

/// The payload's text fields: a wrong type says what to send instead.
fn payload_text<'a>(
    p: &'a Value,
    keys: &[&'static str],
    what: &str,
) -> Result<Option<&'a str>, String> {
    text(p, keys, "", "in payload").map_err(|e| format!("{e}; send {what}"))
}

/// How a row is read: `Strict` fails on a mistyped field; `Lax` logs it and reads the field
/// as absent (the cancel path: stopping a run never depends on a cosmetic field).
#[derive(Clone, Copy)]
enum Mode {
    Strict,
    Lax,
}

impl Mode {
    /// A field's read in this mode: a lax read turns a type error into `absent`.
    fn read<T>(self, r: Result<T, String>, absent: T) -> Result<T, String> {
        match (self, r) {
            (Mode::Lax, Err(e)) => {
                log::warn!(target: "subagent", "{e}; read as absent");
                Ok(absent)
            }
            (_, r) => r,
        }
    }
}

/// The row's text fields.
fn row_text<'a>(
    o: &'a Value,
    key: &'static str,
    prefix: &str,
    mode: Mode,
) -> Result<Option<&'a str>, String> {
    mode.read(text(o, &[key], prefix, "in the subagent row"), None)
}

/// A JSON column: an object, or {} when absent or null; anything else names the column.
fn object(o: &Value, key: &'static str, mode: Mode) -> Result<Value, String> {
    let r = match o.get(key) {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(v) => Err(format!(
            "Invalid {key} in the subagent row: expected a JSON object, got {}",
            type_name(v)
        )),
    };
    mode.read(r, json!({}))
}

/// A `subagent_run` job's payload (§2.1).
#[derive(Debug, PartialEq)]
pub(super) struct RunPayload {
    /// `subagent_id` (alias `subagentId`), trimmed.
    pub(super) subagent_id: String,
    /// `run_id` (alias `runId`), trimmed; None when absent or blank.
    pub(super) run_id: Option<String>,
}

/// The payload's subagent id. Missing, blank and the wrong type all fail with the documented
/// wire text (§2.4 step 1, §6.4 step 1); the wrong type is named in the log.
fn subagent_id(p: &Value) -> Result<String, String> {
    const MISSING: &str = "Missing subagent_id in payload";
    let id = payload_text(
        p,
        &["subagent_id", "subagentId"],
        "the subagent's id as text",
    )
    .map_err(|e| {
        log::warn!(target: "subagent", "{e}");
        MISSING.to_string()
    })?;
    trimmed(id).ok_or_else(|| MISSING.to_string())
}

fn run_id(p: &Value) -> Result<Option<String>, String> {
    let id = payload_text(
        p,
        &["run_id", "runId"],
        "the run's UUID as text, or leave it out",
    )?;
    Ok(trimmed(id))
}

impl RunPayload {
    /// Err = the message that fails the job.
    pub(super) fn parse(p: &Value) -> Result<RunPayload, String> {
        Ok(RunPayload {
            subagent_id: subagent_id(p)?,
            run_id: run_id(p)?,
        })
    }
}

/// A `subagent_cancel` job's payload (§6.4).
#[derive(Debug, PartialEq)]
pub(super) struct CancelPayload {
    pub(super) subagent_id: String,
    /// The run the cancel is meant for; None = the active one.
    pub(super) run_id: Option<String>,
    /// `reason`, trimmed; "Cancelled" when absent or blank.
    pub(super) reason: String,
}

impl CancelPayload {
    /// Err = the message that fails the job.
    pub(super) fn parse(p: &Value) -> Result<CancelPayload, String> {
        let subagent_id = subagent_id(p)?;
        let run_id = run_id(p)?;
        // §6.4: a cosmetic field never stops a cancel; a reason that is not text is "Cancelled".
        let reason = payload_text(p, &["reason"], "the reason as text, or leave it out")
            .unwrap_or_else(|e| {
                log::warn!(target: "subagent", "{e}; cancelling with the reason {CANCELLED:?}");
                None
            });
        Ok(CancelPayload {
            subagent_id,
            run_id,
            reason: trimmed(reason).unwrap_or_else(|| CANCELLED.into()),
        })
    }
}

/// The fields of a `subagents` row the handlers read (§2.2), as sent (text columns are not
/// trimmed: they are compared exactly).
#[derive(Debug)]
pub(super) struct SubagentRow {
    pub(super) team_id: Option<String>,
    pub(super) gateway_id: Option<String>,
    /// "unknown" when absent.
    pub(super) status: String,
    /// "" when absent.
    pub(super) subagent_type: String,
    /// The provider options, an object (read field by field by the plan's request).
    pub(super) config: Value,
    pub(super) input: SubagentInput,
    pub(super) metadata: SubagentMeta,
}

/// `subagents.input`: what the run is asked to do.
#[derive(Debug, Default)]
pub(super) struct SubagentInput {
    /// `prompt`, else `query`, else `task`: the first that is not blank, trimmed.
    pub(super) prompt: Option<String>,
    /// `run_id`, trimmed.
    pub(super) run_id: Option<String>,
    /// `run_sequence` (alias `runSequence`): a number, or a numeric string.
    pub(super) run_sequence: Option<i64>,
}

/// `subagents.metadata`: the whole object (merged into on writes) and the fields read.
#[derive(Debug)]
pub(super) struct SubagentMeta {
    pub(super) all: Value,
    /// The provider session a continuation resumes, trimmed.
    pub(super) session_id: Option<String>,
    /// A pending cancel's run, as sent.
    pub(super) cancel_run_id: Option<String>,
    /// trimmed
    pub(super) cancel_reason: Option<String>,
}

impl SubagentRow {
    /// Err = a message naming the field of the row that has the wrong type.
    pub(super) fn parse(row: &Value) -> Result<SubagentRow, String> {
        SubagentRow::read(row, Mode::Strict)
    }

    /// The cancel path's read (§6.4): a mistyped field is logged and read as absent, so a
    /// cosmetic field never stops a runaway run. (A mistyped gateway_id is not this gateway's.)
    pub(super) fn parse_lenient(row: &Value) -> SubagentRow {
        SubagentRow::read(row, Mode::Lax).unwrap_or_else(|e| {
            // A lax read turns every type error into "absent"; should one still come through,
            // the cancel goes on with what decides it (gateway and status), not a panic.
            log::warn!(target: "subagent", "subagent row read with defaults: {e}");
            let text = |k: &str| row.get(k).and_then(Value::as_str).map(String::from);
            SubagentRow {
                team_id: text("team_id"),
                gateway_id: text("gateway_id"),
                status: text("status").unwrap_or_else(|| "unknown".into()),
                subagent_type: text("subagent_type").unwrap_or_default(),
                config: Value::Object(Default::default()),
                input: SubagentInput::default(),
                metadata: SubagentMeta {
                    all: Value::Object(Default::default()),
                    session_id: None,
                    cancel_run_id: None,
                    cancel_reason: None,
                },
            }
        })
    }

    fn read(row: &Value, mode: Mode) -> Result<SubagentRow, String> {
        let owned = |v: Option<&str>| v.map(String::from);
        let input = object(row, "input", mode)?;
        let metadata = object(row, "metadata", mode)?;
        let meta = |k| row_text(&metadata, k, "metadata.", mode);
        let text = |k| row_text(row, k, "", mode);
        Ok(SubagentRow {
            team_id: owned(text("team_id")?),
            gateway_id: owned(text("gateway_id")?),
            status: text("status")?.unwrap_or("unknown").into(),
            subagent_type: text("subagent_type")?.unwrap_or("").into(),
            config: object(row, "config", mode)?,
            input: SubagentInput::parse(&input, mode)?,
            metadata: SubagentMeta {
                session_id: trimmed(meta("session_id")?),
                cancel_run_id: owned(meta("cancel_run_id")?),
                cancel_reason: trimmed(meta("cancel_reason")?),
                all: metadata,
            },
        })
    }
}

/// What §2.4 steps 3–5 read of the row, before any other field is typed: those checks run
/// first "in this exact order", and a mistyped field elsewhere must not fail (nor, via §5.4,
/// fail the live run of) a job those checks would skip.
#[derive(Debug, PartialEq)]
pub(super) struct RowHead {
    /// As sent when text; any other type is not this gateway's id.
    pub(super) gateway_id: Option<String>,
    /// `gateway_id` as sent, for the report.
    pub(super) assigned: Value,
    /// As sent when text; "unknown" when absent; any other type as its JSON (never "running").
    pub(super) status: String,
    /// `metadata.current_run_id`: trimmed text, or a value of another type as sent (it matches
    /// no run id); None when absent, null or blank.
    pub(super) current_run_id: Option<Value>,
}

impl RowHead {
    pub(super) fn read(row: &Value) -> RowHead {
        let status = match row.get("status") {
            None | Some(Value::Null) => "unknown".to_string(),
            Some(Value::String(x)) => x.clone(),
            Some(v) => v.to_string(),
        };
        let current_run_id = match row.get("metadata").and_then(|m| m.get("current_run_id")) {
            None | Some(Value::Null) => None,
            Some(Value::String(x)) => trimmed(Some(x)).map(Value::String),
            Some(v) => Some(v.clone()),
        };
        RowHead {
            gateway_id: row
                .get("gateway_id")
                .and_then(Value::as_str)
                .map(String::from),
            assigned: row.get("gateway_id").cloned().unwrap_or(Value::Null),
            status,
            current_run_id,
        }
    }
}

impl SubagentInput {
    fn parse(input: &Value, mode: Mode) -> Result<SubagentInput, String> {
        let mut prompt = None;
        for k in ["prompt", "query", "task"] {
            prompt = trimmed(row_text(input, k, "input.", mode)?);
            if prompt.is_some() {
                break;
            }
        }
        let run_sequence = match first(input, &["run_sequence", "runSequence"]) {
            None => Ok(None),
            Some((_, Value::Number(n))) => Ok(n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))),
            Some((k, Value::String(x))) => x.trim().parse::<f64>().map(|f| Some(f as i64)).map_err(
                |_| format!("Invalid input.{k} in the subagent row: expected a number, got the text {x:?}"),
            ),
            Some((k, v)) => Err(format!(
                "Invalid input.{k} in the subagent row: expected a number, got {}",
                type_name(v)
            )),
        };
        Ok(SubagentInput {
            prompt,
            run_sequence: mode.read(run_sequence, None)?,
            run_id: trimmed(row_text(input, "run_id", "input.", mode)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_payload_names_the_bad_field() {
        let ok = RunPayload::parse(&json!({"subagentId": " s1 ", "run_id": " r1 "})).unwrap();
        assert_eq!(
            ok,
            RunPayload {
                subagent_id: "s1".into(),
                run_id: Some("r1".into())
            }
        );
        let blank = RunPayload::parse(&json!({"subagent_id": "s1", "runId": "  "})).unwrap();
        assert_eq!(blank.run_id, None);
        for missing in [
            json!({}),
            json!({"subagent_id": null}),
            json!({"subagent_id": " "}),
        ] {
            assert_eq!(
                RunPayload::parse(&missing).unwrap_err(),
                "Missing subagent_id in payload"
            );
        }
        // §2.4 step 1: the wrong type gets the documented wire text too.
        for mistyped in [json!({"subagent_id": 7}), json!({"subagentId": ["s1"]})] {
            assert_eq!(
                RunPayload::parse(&mistyped).unwrap_err(),
                "Missing subagent_id in payload"
            );
            assert_eq!(
                CancelPayload::parse(&mistyped).unwrap_err(),
                "Missing subagent_id in payload"
            );
        }
        let e = RunPayload::parse(&json!({"subagent_id": "s1", "runId": ["x"]})).unwrap_err();
        assert!(
            e.starts_with("Invalid runId in payload: expected a string, got an array; "),
            "{e}"
        );
    }

    #[test]
    fn a_cancel_payload_defaults_its_reason() {
        let p = CancelPayload::parse(&json!({"subagent_id": "s1"})).unwrap();
        assert_eq!((p.run_id, p.reason.as_str()), (None, "Cancelled"));
        let p = CancelPayload::parse(&json!({"subagent_id": "s1", "reason": " stop "})).unwrap();
        assert_eq!(p.reason, "stop");
        // §6.4: "empty/missing → Cancelled"; a cosmetic field never stops a cancel.
        for reason in [
            json!(true),
            json!(7),
            json!({"why": "x"}),
            json!(""),
            json!(null),
        ] {
            let p = CancelPayload::parse(&json!({"subagent_id": "s1", "reason": reason})).unwrap();
            assert_eq!(p.reason, "Cancelled");
        }
    }

    #[test]
    fn the_row_head_reads_only_what_steps_3_to_5_need() {
        let row = json!({
            "gateway_id": "g1", "status": "idle", "input": {"run_sequence": "abc"},
            "metadata": {"current_run_id": " r1 ", "session_id": 5},
        });
        assert!(SubagentRow::parse(&row).is_err());
        let h = RowHead::read(&row);
        assert_eq!(h.gateway_id.as_deref(), Some("g1"));
        assert_eq!(h.status, "idle");
        assert_eq!(h.current_run_id, Some(json!("r1")));
        let odd = RowHead::read(
            &json!({"gateway_id": 7, "status": true, "metadata": {"current_run_id": 3}}),
        );
        assert_eq!((odd.gateway_id, odd.assigned), (None, json!(7)));
        assert_eq!(odd.status, "true");
        assert_eq!(odd.current_run_id, Some(json!(3)));
        let empty = RowHead::read(&json!({"metadata": "x"}));
        assert_eq!(
            (empty.status.as_str(), empty.current_run_id),
            ("unknown", None)
        );
    }

    #[test]
    fn a_cancel_reads_a_mistyped_row_leniently() {
        let row = json!({
            "gateway_id": "g1", "status": "running", "subagent_type": 3, "team_id": false,
            "config": "x", "input": {"prompt": 5, "run_sequence": "abc"},
            "metadata": {"session_id": 9, "cancel_reason": [], "note": "kept"},
        });
        assert!(SubagentRow::parse(&row).is_err());
        let sub = SubagentRow::parse_lenient(&row);
        assert_eq!(sub.gateway_id.as_deref(), Some("g1"));
        assert_eq!(sub.status, "running");
        assert_eq!((sub.subagent_type.as_str(), sub.team_id), ("", None));
        assert_eq!(sub.metadata.session_id, None);
        assert_eq!(sub.metadata.all["note"], "kept");
        assert_eq!(sub.input.run_sequence, None);
        let odd =
            SubagentRow::parse_lenient(&json!({"gateway_id": 1, "status": 2, "metadata": "x"}));
        assert_eq!((odd.gateway_id, odd.status.as_str()), (None, "unknown"));
        assert_eq!(odd.metadata.all, json!({}));
    }

    #[test]
    fn a_subagent_row_is_read_as_the_contract_says() {
        let row = SubagentRow::parse(&json!({
            "gateway_id": "g1", "status": "running", "subagent_type": "codex_gateway",
            "config": null,
            "input": {"prompt": "  ", "query": " hi ", "run_sequence": "3"},
            "metadata": {"session_id": " s ", "cancel_run_id": "r1", "cancel_reason": ""},
        }))
        .unwrap();
        assert_eq!(row.gateway_id.as_deref(), Some("g1"));
        assert_eq!(row.team_id, None);
        assert_eq!(row.config, json!({}));
        assert_eq!(row.input.prompt.as_deref(), Some("hi"));
        assert_eq!(row.input.run_sequence, Some(3));
        assert_eq!(row.metadata.session_id.as_deref(), Some("s"));
        assert_eq!(row.metadata.cancel_run_id.as_deref(), Some("r1"));
        assert_eq!(row.metadata.cancel_reason, None);
        let empty = SubagentRow::parse(&json!({})).unwrap();
        assert_eq!(
            (empty.status.as_str(), empty.subagent_type.as_str()),
            ("unknown", "")
        );
        assert_eq!(empty.input.run_sequence, None);
        let bad = [
            (json!({"status": 1}), "Invalid status in the subagent row: expected a string, got a number"),
            (json!({"metadata": "x"}), "Invalid metadata in the subagent row: expected a JSON object, got a string"),
            (json!({"input": {"prompt": 5}}), "Invalid input.prompt in the subagent row: expected a string, got a number"),
            (json!({"input": {"runSequence": "two"}}), "Invalid input.runSequence in the subagent row: expected a number, got the text \"two\""),
            (json!({"metadata": {"session_id": {}}}), "Invalid metadata.session_id in the subagent row: expected a string, got an object"),
        ];
        for (row, want) in bad {
            assert_eq!(SubagentRow::parse(&row).unwrap_err(), want);
        }
    }
}
