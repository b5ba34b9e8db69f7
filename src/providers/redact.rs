//! Debug redaction for model runs (providers.md §7.3): argv, command lines and captured text
//! that go into `gateway_jobs.debug`. Kept private to providers: `crate::redact` (Foundation)
//! covers log lines; this follows the debug wire's markers and limits exactly.

use serde_json::{Map, Value};

use super::plan::truncate_chars;

pub const TEXT_LIMIT: usize = 200_000;
pub const SHORT_LIMIT: usize = 2000;
pub const COMMAND_LIMIT: usize = 512;
pub const PATH_LIMIT: usize = 1024;
pub const ARG_LIMIT: usize = 256;
pub const ARG_COUNT: usize = 128;

const R: &str = "[REDACTED]";

/// Sensitive key names, compared with `_`/`-` removed and lowercased.
const KEYS: &[&str] = &[
    "accesstoken",
    "refreshtoken",
    "apikey",
    "servicerolekey",
    "secret",
    "password",
    "authorization",
    "cookie",
    "session",
    "sessionid",
    "token",
];

fn norm_key(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Also sensitive as a name's ending: `ANTHROPIC_API_KEY`, `GITHUB_TOKEN`, `DB_PASSWORD`.
const KEY_SUFFIXES: &[&str] = &[
    "apikey",
    "token",
    "secret",
    "password",
    "accesskey",
    "privatekey",
    "secretkey",
];

fn is_sensitive_key(k: &str) -> bool {
    let n = norm_key(k);
    KEYS.contains(&n.as_str()) || KEY_SUFFIXES.iter().any(|s| n.ends_with(s))
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Text sanitiser: sensitive JSON values, `key=value` pairs, bearer tokens, JWTs and `sk-`
/// keys become `[REDACTED]`; then the text is cut to `limit` characters.
pub fn text(s: &str, limit: usize) -> String {
    // Bearer first, so `Authorization: Bearer x` loses the token, not just the word.
    let s = redact_bearer(s);
    let s = redact_pairs(&s);
    let s = redact_tokens(&s);
    truncate_chars(&s, limit, "")
}

/// Pass 1+2: `"key": "value"` and `key: value` / `key=value`.
fn redact_pairs(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        // A word (possibly quoted) starting here?
        let quoted = chars[i] == '"';
        let ws = if quoted { i + 1 } else { i };
        let at_boundary = i == 0 || !is_word(chars[i - 1]);
        if at_boundary && ws < chars.len() && is_word(chars[ws]) {
            let mut we = ws;
            while we < chars.len() && is_word(chars[we]) {
                we += 1;
            }
            let word: String = chars[ws..we].iter().collect();
            let mut j = we;
            if quoted {
                if j < chars.len() && chars[j] == '"' {
                    j += 1;
                } else {
                    out.extend(&chars[i..we]);
                    i = we;
                    continue;
                }
            }
            if is_sensitive_key(&word) {
                let mut k = j;
                while k < chars.len() && chars[k] == ' ' {
                    k += 1;
                }
                if k < chars.len() && (chars[k] == ':' || chars[k] == '=') {
                    k += 1;
                    while k < chars.len() && chars[k] == ' ' {
                        k += 1;
                    }
                    // The value: a quoted string or a bare run.
                    let (vs, ve) = if k < chars.len() && (chars[k] == '"' || chars[k] == '\'') {
                        let q = chars[k];
                        let mut e = k + 1;
                        let mut esc = false;
                        while e < chars.len() {
                            if esc {
                                esc = false;
                            } else if chars[e] == '\\' {
                                esc = true;
                            } else if chars[e] == q {
                                break;
                            }
                            e += 1;
                        }
                        (k, (e + 1).min(chars.len()))
                    } else {
                        let mut e = k;
                        while e < chars.len()
                            && !chars[e].is_whitespace()
                            && chars[e] != ','
                            && chars[e] != ';'
                            && chars[e] != '}'
                        {
                            e += 1;
                        }
                        (k, e)
                    };
                    if ve > vs {
                        out.extend(&chars[i..vs]);
                        if chars[vs] == '"' {
                            out.push_str("\"[REDACTED]\"");
                        } else {
                            out.push_str(R);
                        }
                        i = ve;
                        continue;
                    }
                }
            }
            out.extend(&chars[i..j.max(we)]);
            i = j.max(we);
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn redact_bearer(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(p) = lower.find("bearer ") else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..p + 7]);
        let after = &rest[p + 7..];
        let tok_len = after
            .find(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '\'')
            .unwrap_or(after.len());
        if tok_len > 0 && &after[..tok_len] != R {
            out.push_str(R);
        } else {
            out.push_str(&after[..tok_len]);
        }
        rest = &after[tok_len..];
    }
}

fn tok_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// JWTs (`eyJ…​.…​.…`) and `sk-…` keys.
fn redact_tokens(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !tok_char(chars[i - 1]);
        if boundary {
            // JWT
            if chars[i..].starts_with(&['e', 'y', 'J']) {
                let mut j = i;
                let mut parts = 0;
                let mut ok = true;
                loop {
                    let st = j;
                    while j < chars.len() && tok_char(chars[j]) {
                        j += 1;
                    }
                    let len = j - st - if parts == 0 { 3 } else { 0 };
                    if len < 8 {
                        ok = false;
                        break;
                    }
                    parts += 1;
                    if parts == 3 {
                        break;
                    }
                    if j < chars.len() && chars[j] == '.' {
                        j += 1;
                    } else {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    out.push_str(R);
                    i = j;
                    continue;
                }
            }
            if chars[i..].starts_with(&['s', 'k', '-']) {
                // `sk-…`, including `sk-proj-…` and `sk-ant-…` forms.
                let mut j = i + 3;
                while j < chars.len() && tok_char(chars[j]) {
                    j += 1;
                }
                if j - i - 3 >= 16 {
                    out.push_str(R);
                    i = j;
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
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

/// `<command> <args…>`, sanitised.
pub fn command_line(command: &str, list: &[String]) -> String {
    let mut line = text(command, COMMAND_LIMIT);
    for a in args(list, true) {
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
    fn args_match_the_reference_command_line() {
        let a = v(&[
            "--print",
            "--model",
            "claude-sonnet-4-5",
            "--output-format",
            "json",
            "--json-schema",
            "{\"type\":\"object\"}",
            "--tools",
            "",
            "--input-format",
            "text",
            "--no-session-persistence",
            "--permission-mode",
            "dontAsk",
            "--setting-sources",
            "local",
            "--disable-slash-commands",
            "--system-prompt",
            "Be terse.",
            "Classify this ticket ...",
        ]);
        assert_eq!(
            command_line("claude", &a),
            "claude --print --model claude-sonnet-4-5 --output-format json --json-schema [REDACTED] --tools  --input-format text --no-session-persistence [REDACTED] dontAsk --setting-sources local --disable-slash-commands --system-prompt [REDACTED] [REDACTED]"
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
