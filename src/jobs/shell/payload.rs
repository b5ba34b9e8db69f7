//! The remote shell jobs' payloads, parsed where each handler starts: [`ExecPayload`] and
//! [`SessionPayload`] (with its [`Action`]).
//!
//! The protocol checks a shell job in a fixed order (subagents-shell.md §7.2: cancelled, machine
//! control, `resource_id`, the resource, `command`, ...), so a payload is read once, up front,
//! but each field keeps its own result: its value, or a [`BadField`] with the message that
//! names it. The handler surfaces those in the documented order.

use std::time::Duration;

use serde_json::Value;

use super::access::Access;
use super::failed;
use crate::exec::pty::WinSize;
use crate::jobs::Outcome;
use crate::util::is_uuid;

/// `DEFAULT_REMOTE_SHELL_EXEC_TIMEOUT_MS`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Gateway-side clamp of `timeout_ms` (10 min).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most bytes one `read` returns.
pub const SESSION_READ_MAX: usize = 1_000_000;
/// Default bytes one `read` returns.
pub const SESSION_READ_DEFAULT: usize = 65_536;
/// Most bytes one `write` accepts.
pub const SESSION_INPUT_MAX: usize = 1_000_000;
/// Longest long-poll of `read`/`write` (`wait_ms`).
pub const SESSION_WAIT_MAX_MS: u64 = 30_000;
/// Largest terminal side accepted for `rows` and `cols`.
pub const MAX_SIDE: u64 = 1000;

const ACTIONS: &str = "open, write, read, status, resize, close";

/// A payload field that is missing or invalid: the job's failure message (it names the field)
/// and, when the result shows the offending value, that value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BadField {
    pub message: String,
    echo: Option<(&'static str, Value)>,
}

impl BadField {
    fn new(message: impl Into<String>) -> BadField {
        BadField {
            message: message.into(),
            echo: None,
        }
    }

    /// The failed outcome: `{message, <context>..., <echoed value>}`.
    pub fn fail(self, context: &[(&str, Value)]) -> Outcome {
        let mut extra: Vec<(&str, Value)> = context.to_vec();
        extra.extend(self.echo);
        failed(&self.message, &extra)
    }
}

/// `resource_id` trimmed: a team resource's UUID (it goes into a PostgREST filter).
fn resource_id(payload: &Value) -> Result<String, BadField> {
    match payload
        .get("resource_id")
        .and_then(Value::as_str)
        .map(str::trim)
    {
        Some(r) if !r.is_empty() => {
            if is_uuid(r) {
                Ok(r.to_string())
            } else {
                Err(BadField {
                    message: "Invalid resource_id in payload: expected the UUID of a team resource"
                        .into(),
                    echo: Some(("resource_id", r.into())),
                })
            }
        }
        _ => Err(BadField::new("Missing resource_id in payload")),
    }
}

/// True when `secret_env` asks for secrets (a non-empty object).
fn wants_secrets(payload: &Value) -> bool {
    payload
        .get("secret_env")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

/// A `shell_exec` payload (subagents-shell.md §7.1).
#[derive(Debug)]
pub(super) struct ExecPayload {
    pub resource_id: Result<String, BadField>,
    /// Not blank.
    pub command: Result<String, BadField>,
    /// `secret_env` asks for team secrets (only a managed VM can inject them).
    pub wants_secrets: bool,
    /// Clamped to 1…[`MAX_TIMEOUT_MS`]; [`DEFAULT_TIMEOUT_MS`] when not a number.
    pub timeout_ms: u64,
}

impl ExecPayload {
    /// Err: the payload is not a JSON object.
    pub fn parse(payload: &Value) -> Result<ExecPayload, BadField> {
        if !payload.is_object() {
            return Err(BadField::new(
                "Invalid shell_exec payload: expected a JSON object with resource_id and command",
            ));
        }
        Ok(ExecPayload {
            resource_id: resource_id(payload),
            command: match payload.get("command").and_then(Value::as_str) {
                Some(c) if !c.trim().is_empty() => Ok(c.to_string()),
                _ => Err(BadField::new("Missing command in payload")),
            },
            wants_secrets: wants_secrets(payload),
            timeout_ms: parse_timeout(payload.get("timeout_ms")),
        })
    }
}

/// A number (truncated) or a base-10 integer string (leading digits, like `parseInt`); anything
/// else gives the default; then clamped to 1…600 000 ms (§7.2 step 8).
fn parse_timeout(v: Option<&Value>) -> u64 {
    let n: Option<f64> = match v {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => {
            let t = s.trim();
            let (sign, digits) = match t.strip_prefix('-') {
                Some(r) => (-1.0, r),
                None => (1.0, t.strip_prefix('+').unwrap_or(t)),
            };
            let d: String = digits.chars().take_while(|c| c.is_ascii_digit()).collect();
            d.parse::<f64>().ok().map(|x| sign * x)
        }
        _ => None,
    };
    match n {
        Some(x) if x.is_finite() => (x.trunc().max(1.0) as u64).min(MAX_TIMEOUT_MS),
        _ => DEFAULT_TIMEOUT_MS,
    }
}

/// A `shell_session` action (§7.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Open,
    Write,
    Read,
    Status,
    Resize,
    Close,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Write => "write",
            Action::Read => "read",
            Action::Status => "status",
            Action::Resize => "resize",
            Action::Close => "close",
        }
    }

    /// What the action needs of the resource: what acts on the machine needs write access.
    pub fn access(self) -> Access {
        match self {
            Action::Open | Action::Write | Action::Resize | Action::Close => Access::Write,
            Action::Read | Action::Status => Access::Read,
        }
    }

    /// The action named by `action` (trimmed, any case).
    fn parse(payload: &Value) -> Result<Action, BadField> {
        let action = payload
            .get("action")
            .and_then(Value::as_str)
            .map(|a| a.trim().to_ascii_lowercase())
            .unwrap_or_default();
        Ok(match action.as_str() {
            "open" => Action::Open,
            "write" => Action::Write,
            "read" => Action::Read,
            "status" => Action::Status,
            "resize" => Action::Resize,
            "close" => Action::Close,
            "" => {
                return Err(BadField::new(format!(
                    "Missing action in payload (one of: {ACTIONS})"
                )))
            }
            other => {
                return Err(BadField::new(format!(
                    "Unknown shell_session action {other:?}; use one of: {ACTIONS}"
                )))
            }
        })
    }
}

/// How much of a session's output to return and how long to wait for it, and the terminal
/// size: the optional numeric fields of a `shell_session` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct View {
    /// `cursor`: where to read from (None: where the last read stopped).
    pub cursor: Option<u64>,
    /// `max_bytes` clamped to 1…[`SESSION_READ_MAX`], default [`SESSION_READ_DEFAULT`].
    pub max_bytes: usize,
    /// `wait_ms` capped at [`SESSION_WAIT_MAX_MS`], default 0.
    pub wait: Duration,
    /// `rows` and `cols`, both or neither.
    pub size: Option<WinSize>,
}

/// A `shell_session` payload (§7.7). Borrowed from the job row: `input` can be a megabyte.
#[derive(Debug)]
pub(super) struct SessionPayload<'a> {
    pub action: Action,
    pub resource_id: Result<String, BadField>,
    pub view: Result<View, BadField>,
    /// Trimmed, not empty; every action but `open` needs it.
    pub session_id: Result<&'a str, BadField>,
    /// `write`'s keystrokes, at most [`SESSION_INPUT_MAX`] bytes.
    pub input: Result<&'a str, BadField>,
    /// `secret_env` asks for team secrets (only a managed VM can inject them).
    pub wants_secrets: bool,
}

impl<'a> SessionPayload<'a> {
    /// Err: the payload is not a JSON object, or its action is missing or unknown (checked
    /// before anything else, machine control included).
    pub fn parse(payload: &'a Value) -> Result<SessionPayload<'a>, BadField> {
        if !payload.is_object() {
            return Err(BadField::new(
                "Invalid shell_session payload: expected a JSON object with action and resource_id",
            ));
        }
        let action = Action::parse(payload)?;
        let session_id = payload
            .get("session_id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BadField::new("Missing session_id in payload"));
        let input = match payload.get("input") {
            Some(Value::String(s)) if s.len() > SESSION_INPUT_MAX => Err(BadField::new(format!(
                "Input too large: {} bytes; send at most {SESSION_INPUT_MAX} bytes per write",
                s.len()
            ))),
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(BadField::new(
                "Missing input in payload (a string typed into the terminal: end a line with \"\\n\", send \"\\u0003\" for Ctrl-C)",
            )),
        };
        Ok(SessionPayload {
            action,
            resource_id: resource_id(payload),
            view: view(payload),
            session_id,
            input,
            wants_secrets: wants_secrets(payload),
        })
    }
}

fn u64_field(payload: &Value, name: &str) -> Result<Option<u64>, BadField> {
    let invalid = || {
        BadField::new(format!(
            "Invalid {name} in payload: expected a non-negative integer"
        ))
    };
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

/// `rows` and `cols` of the payload: both or neither (then None), each 1…[`MAX_SIDE`].
fn size_fields(payload: &Value) -> Result<Option<WinSize>, BadField> {
    let side = |name: &str| -> Result<Option<u16>, BadField> {
        match u64_field(payload, name) {
            Ok(None) => Ok(None),
            Ok(Some(v)) if (1..=MAX_SIDE).contains(&v) => Ok(Some(v as u16)),
            _ => Err(BadField::new(format!(
                "Invalid {name} in payload: expected an integer from 1 to {MAX_SIDE}"
            ))),
        }
    };
    match (side("rows")?, side("cols")?) {
        (Some(rows), Some(cols)) => Ok(Some(WinSize { rows, cols })),
        (None, None) => Ok(None),
        _ => Err(BadField::new(
            "Give both rows and cols in payload, or neither",
        )),
    }
}

/// The numeric fields, the first bad one named.
fn view(payload: &Value) -> Result<View, BadField> {
    let cursor = u64_field(payload, "cursor")?;
    let max_bytes = u64_field(payload, "max_bytes")?;
    let wait_ms = u64_field(payload, "wait_ms")?;
    let size = size_fields(payload)?;
    Ok(View {
        cursor,
        max_bytes: (max_bytes.unwrap_or(SESSION_READ_DEFAULT as u64) as usize)
            .clamp(1, SESSION_READ_MAX),
        wait: Duration::from_millis(wait_ms.unwrap_or(0).min(SESSION_WAIT_MAX_MS)),
        size,
    })
}

/// The keys a failed result of a session request names: its action and resource.
pub(super) fn context(action: Action, rid: &str) -> [(&'static str, Value); 2] {
    [
        ("action", action.as_str().into()),
        ("resource_id", rid.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_ids_must_be_uuids() {
        assert!(is_uuid("b5e1c0de-0000-4000-8000-00000000abcd"));
        assert!(!is_uuid("b5e1c0de-0000-4000-8000-00000000abc"));
        assert!(!is_uuid("b5e1c0de-0000-4000-8000-00000000abcx"));
        assert!(!is_uuid("b5e1c0de00000-4000-8000-00000000abcd"));
        let o = resource_id(&json!({"resource_id": "x&team_id=eq.y"}))
            .unwrap_err()
            .fail(&[]);
        assert_eq!(
            o.error.as_deref(),
            Some("Invalid resource_id in payload: expected the UUID of a team resource")
        );
        assert_eq!(
            o.result,
            Some(json!({
                "message": "Invalid resource_id in payload: expected the UUID of a team resource",
                "resource_id": "x&team_id=eq.y",
            }))
        );
        assert!(resource_id(&json!({"resource_id": " "})).is_err());
    }

    #[test]
    fn timeout_parsing_follows_the_gateway_clamp() {
        assert_eq!(parse_timeout(None), 30_000);
        assert_eq!(parse_timeout(Some(&json!("abc"))), 30_000);
        assert_eq!(parse_timeout(Some(&json!(null))), 30_000);
        assert_eq!(parse_timeout(Some(&json!(1500.9))), 1500);
        assert_eq!(parse_timeout(Some(&json!("2500ms"))), 2500);
        assert_eq!(parse_timeout(Some(&json!(0))), 1);
        assert_eq!(parse_timeout(Some(&json!(-5))), 1);
        assert_eq!(parse_timeout(Some(&json!(10_000_000))), 600_000);
    }

    #[test]
    fn a_session_payload_names_its_first_bad_field() {
        let bad = |p: Value| SessionPayload::parse(&p).map(|_| ()).unwrap_err().message;
        assert_eq!(
            bad(json!([1])),
            "Invalid shell_session payload: expected a JSON object with action and resource_id"
        );
        assert_eq!(
            bad(json!({})),
            "Missing action in payload (one of: open, write, read, status, resize, close)"
        );
        assert_eq!(
            bad(json!({"action": "dance"})),
            "Unknown shell_session action \"dance\"; use one of: open, write, read, status, resize, close"
        );
        let p = json!({"action": " READ ", "cursor": -1, "rows": 5, "session_id": " s1 "});
        let s = SessionPayload::parse(&p).unwrap();
        assert_eq!(s.action, Action::Read);
        assert_eq!(s.session_id, Ok("s1"));
        assert_eq!(
            s.view.unwrap_err().message,
            "Invalid cursor in payload: expected a non-negative integer"
        );
        let p = json!({"action": "resize", "rows": 5});
        assert_eq!(
            SessionPayload::parse(&p).unwrap().view.unwrap_err().message,
            "Give both rows and cols in payload, or neither"
        );
        let p = json!({"action": "resize", "rows": 5, "cols": 1001});
        assert_eq!(
            SessionPayload::parse(&p).unwrap().view.unwrap_err().message,
            "Invalid cols in payload: expected an integer from 1 to 1000"
        );
        let p = json!({"action": "read", "max_bytes": 0, "wait_ms": 99_000});
        let v = SessionPayload::parse(&p).unwrap().view.unwrap();
        assert_eq!((v.cursor, v.max_bytes, v.size), (None, 1, None));
        assert_eq!(v.wait, Duration::from_millis(SESSION_WAIT_MAX_MS));
        let p = json!({"action": "write", "input": 5});
        assert!(SessionPayload::parse(&p)
            .unwrap()
            .input
            .unwrap_err()
            .message
            .starts_with("Missing input in payload"));
    }
}
