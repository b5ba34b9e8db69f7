//! Debug redaction for model runs (providers.md §7.3): argv, command lines and captured text
//! that go into `gateway_jobs.debug`. The token/JWT/key masking is `crate::redact`'s; this
//! module adds what is specific to the debug wire: its single `[REDACTED]` marker, the
//! `session` keys, the argument sanitiser (sensitive flags, `[REDACTED_CONTENT:<n>]`, the
//! hidden prompt), the error-summary walk and the limits.

use serde_json::{Map, Value};

use crate::util::truncate_chars;

pub const TEXT_LIMIT: usize = 200_000;
pub const SHORT_LIMIT: usize = 2000;
pub const COMMAND_LIMIT: usize = 512;
pub const PATH_LIMIT: usize = 1024;
pub const ARG_LIMIT: usize = 256;
pub const ARG_COUNT: usize = 128;

const R: &str = "[REDACTED]";

/// Key names that are secrets in model-run output beyond `crate::redact`'s (given normalised:
/// lowercase, no `_`/`-`): the debug wire's `session`/`session_id` (§7.3), and
/// `*_ACCESS_KEY`, `*_PRIVATE_KEY`, `*_SECRET_KEY` names a CLI may echo from its environment.
fn provider_key(n: &str) -> bool {
    n == "session"
        || n == "sessionid"
        || ["accesskey", "privatekey", "secretkey"]
            .iter()
            .any(|s| n.ends_with(s))
}

/// `crate::redact` with the debug wire's single marker (`[REDACTED]` for JWTs and keys too)
/// and the provider-only key names.
const DEBUG_RULES: crate::redact::Rules = crate::redact::Rules {
    extra_key: provider_key,
    jwt_marker: R,
    key_marker: R,
};

fn is_sensitive_key(k: &str) -> bool {
    crate::redact::is_sensitive_key(k) || provider_key(&crate::redact::normalize_key(k))
}

/// Text sanitiser: sensitive JSON values, `key=value` pairs, bearer tokens, JWTs and `sk-`
/// keys become `[REDACTED]` (the masking is `crate::redact`'s); then the text is cut to
/// `limit` characters.
pub fn text(s: &str, limit: usize) -> String {
    truncate_chars(&crate::redact::redact_with(s, &DEBUG_RULES), limit, "")
}

/// `--x…(token|key|secret|…)…` where the sensitive word is not right after the dashes.
fn is_sensitive_flag(a: &str) -> bool {
    let t = a.trim();
    if [
        "-p",
        "--prompt",
        "--json-schema",
        "--system-prompt",
        "--append-system-prompt",
    ]
    .contains(&t)
    {
        return true;
    }
    let body = match t.strip_prefix("--").or_else(|| t.strip_prefix('-')) {
        Some(b) => b,
        None => return false,
    };
    let mut cs = body.chars();
    match cs.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    let rest = cs.as_str();
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return false;
    }
    let lower = rest.to_ascii_lowercase();
    [
        "token",
        "key",
        "secret",
        "password",
        "authorization",
        "cookie",
        "session",
        "prompt",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

fn contains_sensitive_word(a: &str) -> bool {
    let l = a.to_ascii_lowercase();
    let squashed: String = l.chars().filter(|c| *c != '_' && *c != '-').collect();
    for w in [
        "accesstoken",
        "refreshtoken",
        "apikey",
        "servicerolekey",
        "secret",
        "password",
        "authorization",
        "cookie",
        "session",
        "prompt",
    ] {
        if squashed.contains(w) {
            return true;
        }
    }
    // `token` delimited by start, end, `_` or `-`.
    let mut from = 0;
    while let Some(p) = l[from..].find("token") {
        let s = from + p;
        let e = s + 5;
        let before = s == 0 || matches!(l.as_bytes()[s - 1], b'_' | b'-');
        let after = e == l.len() || matches!(l.as_bytes()[e], b'_' | b'-');
        if before && after {
            return true;
        }
        from = s + 1;
    }
    text(a, usize::MAX) != a
}

/// Argument sanitiser; `redact_last` hides the last argument (the prompt).
pub fn args(list: &[String], redact_last: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut redact_next = false;
    let n = list.len();
    for (i, a) in list.iter().enumerate().take(ARG_COUNT) {
        // A bare flag followed by another option had no value to hide (the gateway writes
        // values as `--flag=value`).
        if redact_next && a.starts_with("--") {
            redact_next = false;
        }
        if redact_next || (redact_last && i + 1 == n) {
            redact_next = false;
            out.push(R.to_string());
            continue;
        }
        if is_sensitive_flag(a) {
            out.push(text(a.trim(), ARG_LIMIT));
            redact_next = true;
            continue;
        }
        if let Some((flag, _)) = a.split_once('=') {
            if flag.starts_with('-') && is_sensitive_flag(flag) {
                out.push(format!("{flag}={R}"));
                continue;
            }
        }
        let t = a.trim();
        if t.is_empty() {
            out.push(String::new());
        } else if contains_sensitive_word(t)
            || a.chars().any(char::is_whitespace)
            || a.chars().count() > ARG_LIMIT
        {
            out.push(format!("[REDACTED_CONTENT:{}]", a.chars().count()));
        } else {
            out.push(text(a, ARG_LIMIT));
        }
    }
    out
}

/// `<command> <args…>`, sanitised. (The prompt is on standard input, never in `list`.)
pub fn command_line(command: &str, list: &[String]) -> String {
    let mut line = text(command, COMMAND_LIMIT);
    for a in args(list, false) {
        line.push(' ');
        line.push_str(&a);
    }
    text(&line, TEXT_LIMIT)
}

/// `error_summary` for debug: sensitive keys hidden, strings sanitised, bounded.
pub fn summary(v: &Value, depth: usize) -> Value {
    match v {
        Value::String(s) => Value::String(text(s, SHORT_LIMIT)),
        Value::Array(a) if depth < 2 => {
            Value::Array(a.iter().take(20).map(|x| summary(x, depth + 1)).collect())
        }
        Value::Object(m) if depth < 2 => {
            let mut o = Map::new();
            for (k, x) in m {
                let val = if is_sensitive_key(k) {
                    Value::String(R.into())
                } else {
                    summary(x, depth + 1)
                };
                o.insert(k.clone(), val);
            }
            Value::Object(o)
        }
        Value::Array(_) | Value::Object(_) => Value::String("[REDACTED_NESTED]".into()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn text_hides_tokens_keys_and_secrets() {
        let s = r#"{"access_token": "abc.def", "ok": "fine"} password=hunter2; Authorization: Bearer xyz123 sk-abcdefghijklmnopqrstu eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl"#;
        let r = text(s, TEXT_LIMIT);
        for leaked in [
            "abc.def",
            "hunter2",
            "xyz123",
            "sk-abcdefghijklmnop",
            "eyJhbGciOiJI",
        ] {
            assert!(!r.contains(leaked), "{leaked} in {r}");
        }
        assert!(r.contains(r#""ok": "fine""#), "{r}");
        let env = text(
            "ANTHROPIC_API_KEY=abc123 GITHUB_TOKEN: ghp_x key sk-proj-ABCDEFGHIJKLMNOPQRST max_tokens=5",
            TEXT_LIMIT,
        );
        assert_eq!(
            env,
            "ANTHROPIC_API_KEY=[REDACTED] GITHUB_TOKEN: [REDACTED] key [REDACTED] max_tokens=5"
        );
    }

    #[test]
    fn debug_rules_on_top_of_the_common_masking() {
        // Session keys and *_ACCESS_KEY names are provider-only; the marker is always
        // `[REDACTED]`, never the log markers `[REDACTED_JWT]`/`[REDACTED_KEY]`.
        let r = text(
            r#"{"session_id": "s-1"} AWS_SECRET_ACCESS_KEY=abc session: xyz eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl"#,
            TEXT_LIMIT,
        );
        assert_eq!(
            r,
            r#"{"session_id": "[REDACTED]"} AWS_SECRET_ACCESS_KEY=[REDACTED] session: [REDACTED] [REDACTED]"#
        );
        assert_eq!(text("abcdef", 3), "abc");
        let s = summary(
            &serde_json::json!({"message": "m", "session": "s", "max_tokens": 5,
                                "nested": {"deeper": {"x": 1}}}),
            0,
        );
        assert_eq!(
            s,
            serde_json::json!({"message": "m", "session": "[REDACTED]", "max_tokens": 5,
                               "nested": {"deeper": "[REDACTED_NESTED]"}})
        );
    }

    #[test]
    fn args_match_the_reference_command_line() {
        let a = v(&[
            "--print",
            "--model=claude-sonnet-4-5",
            "--output-format=json",
            "--json-schema={\"type\":\"object\"}",
            "--tools=",
            "--input-format=text",
            "--no-session-persistence",
            "--permission-mode=dontAsk",
            "--setting-sources=local",
            "--disable-slash-commands",
            "--system-prompt=Be terse.",
        ]);
        assert_eq!(
            command_line("claude", &a),
            "claude --print --model=claude-sonnet-4-5 --output-format=json --json-schema=[REDACTED] --tools= --input-format=text --no-session-persistence --permission-mode=dontAsk --setting-sources=local --disable-slash-commands --system-prompt=[REDACTED]"
        );
        let b = args(
            &v(&[
                "--api-key=abc",
                "has space",
                "-c",
                "x",
                "--session-id",
                "s1",
                "last",
            ]),
            true,
        );
        assert_eq!(
            b,
            v(&[
                "--api-key=[REDACTED]",
                "[REDACTED_CONTENT:9]",
                "-c",
                "x",
                "[REDACTED_CONTENT:12]",
                "s1",
                "[REDACTED]"
            ])
        );
    }
}
