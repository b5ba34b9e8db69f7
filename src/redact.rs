//! Redaction of access/refresh tokens, JWTs and keys from anything that is logged or stored as
//! debug. Owner: Foundation (issue 2); used by every module that logs outside data.
//!
//! `redact` works on free text (log lines, error messages, child output): it replaces
//! - JWTs (`eyJ…` with three dot-separated base64url segments) with `[REDACTED_JWT]`,
//! - `Bearer <token>` with `Bearer [REDACTED]`,
//! - the value after a sensitive key (`"accessToken": "…"`, `refresh_token=…`, `apikey=…`,
//!   `anon_key: …`, `password=…`, …) with `[REDACTED]`,
//! - API-key shaped words (`sk-…`, `sk-ant-…`, `sb_secret_…`, `sb_publishable_…`) with
//!   `[REDACTED_KEY]`.
//!
//! `redact_json` walks a JSON value: string values under sensitive keys become `[REDACTED]`,
//! every other string goes through `redact`.

use serde_json::Value;

const REDACTED: &str = "[REDACTED]";

/// What [`redact_with`] masks beyond the built-in rules, and the markers it writes. The
/// built-in rules (JWTs, `Bearer` values, sensitive `key=value` pairs, API-key shaped words)
/// always apply; callers with their own wire markers or extra key names (the debug record of
/// model runs) pass their own `Rules`.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Extra key names whose values are secrets; gets the name lowercased with `_`/`-` removed.
    pub extra_key: fn(&str) -> bool,
    /// Written in place of a JWT.
    pub jwt_marker: &'static str,
    /// Written in place of an API-key shaped word.
    pub key_marker: &'static str,
}

/// The rules of [`redact`].
pub const DEFAULT_RULES: Rules = Rules {
    extra_key: |_| false,
    jwt_marker: "[REDACTED_JWT]",
    key_marker: "[REDACTED_KEY]",
};

/// Key names (compared case-insensitively, `-` and `_` ignored) whose values are secrets.
const SENSITIVE_KEYS: &[&str] = &[
    "accesstoken",
    "refreshtoken",
    "apikey",
    "anonkey",
    "supabaseanonkey",
    "publishablekey",
    "servicerolekey",
    "secretkey",
    "providertoken",
    "providerrefreshtoken",
    "idtoken",
    "token",
    "password",
    "secret",
    "clientsecret",
    "authorization",
    "cookie",
    "setcookie",
    "proxytoken",
    "egressproxytoken",
    "rawtoken",
    "activerawtoken",
];

/// A key name lowercased with `_` and `-` removed (the form sensitive names are compared in).
pub fn normalize_key(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(|c| c.to_lowercase())
        .collect()
}

/// True when a key (JSON object key, `key=value` name) names a secret.
pub fn is_sensitive_key(k: &str) -> bool {
    let n = normalize_key(k);
    if SENSITIVE_KEYS.contains(&n.as_str()) {
        return true;
    }
    // `x_access_token`, `supabase_anon_key`, `OPENAI_API_KEY`, `github_token`…
    n.ends_with("accesstoken")
        || n.ends_with("refreshtoken")
        || n.ends_with("apikey")
        || n.ends_with("anonkey")
        || n.ends_with("secret")
        || n.ends_with("password")
        || (n.ends_with("token") && !n.ends_with("tokens") && n != "tokentype")
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Length of a JWT starting at `i` (`eyJ` + 2 dots), or 0.
fn jwt_len(s: &[u8], i: usize) -> usize {
    if !s[i..].starts_with(b"eyJ") || (i > 0 && is_word(s[i - 1])) {
        return 0;
    }
    let mut j = i;
    let mut dots = 0;
    let mut seg_len = 0;
    while j < s.len() {
        let b = s[j];
        if is_b64url(b) {
            seg_len += 1;
        } else if b == b'.' && dots < 2 && seg_len > 0 {
            dots += 1;
            seg_len = 0;
        } else {
            break;
        }
        j += 1;
    }
    if dots == 2 {
        j - i
    } else {
        0
    }
}

/// Length of an API-key shaped word at `i`, or 0.
fn key_len(s: &[u8], i: usize) -> usize {
    if i > 0 && is_word(s[i - 1]) {
        return 0;
    }
    let prefixes: [&[u8]; 5] = [b"sk-", b"sk_", b"sb_secret_", b"sb_publishable_", b"sbp_"];
    for p in prefixes {
        if s[i..].starts_with(p) {
            let mut j = i + p.len();
            while j < s.len() && is_word(s[j]) {
                j += 1;
            }
            if j - i - p.len() >= 16 {
                return j - i;
            }
        }
    }
    0
}

/// If a sensitive key ends right before `i` (the key word is `s[start..i]`) and is followed by
/// a separator and a value, returns (value_start, value_end).
fn keyed_value(
    s: &[u8],
    key_start: usize,
    key_end: usize,
    rules: &Rules,
) -> Option<(usize, usize)> {
    let key = std::str::from_utf8(&s[key_start..key_end]).ok()?;
    if !is_sensitive_key(key) && !(rules.extra_key)(&normalize_key(key)) {
        return None;
    }
    let mut j = key_end;
    // optional closing quote of a JSON key (plain or escaped)
    if s[j..].starts_with(b"\\\"") {
        j += 2;
    } else if j < s.len() && (s[j] == b'"' || s[j] == b'\'') {
        j += 1;
    }
    while j < s.len() && s[j] == b' ' {
        j += 1;
    }
    if j >= s.len() || (s[j] != b':' && s[j] != b'=') {
        return None;
    }
    j += 1;
    while j < s.len() && s[j] == b' ' {
        j += 1;
    }
    if j >= s.len() {
        return None;
    }
    // Quoted value: up to the matching quote (escaped quotes inside JSON-in-JSON included).
    if s[j..].starts_with(b"\\\"") {
        let start = j + 2;
        let mut k = start;
        while k < s.len() && !s[k..].starts_with(b"\\\"") {
            k += 1;
        }
        return Some((start, k));
    }
    if s[j] == b'"' || s[j] == b'\'' {
        let q = s[j];
        let start = j + 1;
        let mut k = start;
        while k < s.len() && s[k] != q {
            if s[k] == b'\\' {
                k += 1;
            }
            k += 1;
        }
        return Some((start, k.min(s.len())));
    }
    // `Bearer xyz` after a key: keep the scheme word (any case) and mask what follows it.
    if s[j..].len() >= 7 && s[j..j + 7].eq_ignore_ascii_case(b"bearer ") {
        j += 7;
        while j < s.len() && s[j] == b' ' {
            j += 1;
        }
        if j >= s.len() {
            return None;
        }
    }
    if s[j..].starts_with(b"null") || s[j..].starts_with(b"true") || s[j..].starts_with(b"false") {
        let end = j + if s[j] == b'f' { 5 } else { 4 };
        if end >= s.len() || !is_word(s[end]) {
            return None;
        }
    }
    let start = j;
    let mut k = j;
    while k < s.len()
        && !matches!(
            s[k],
            b' ' | b'\t' | b'\n' | b'\r' | b'&' | b',' | b'}' | b')' | b']' | b';' | b'"' | b'\''
        )
    {
        k += 1;
    }
    if k == start {
        return None;
    }
    Some((start, k))
}

/// Returns `text` with tokens and keys replaced by placeholders. Safe to call on any text.
pub fn redact(text: &str) -> String {
    redact_with(text, &DEFAULT_RULES)
}

/// Secret values this process knows (the gateway's tokens and keys), masked wherever they
/// appear, whatever surrounds them: a refresh token is a short opaque string that no pattern
/// recognises, so the value itself is the only reliable marker.
static KNOWN_SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());
/// Values shorter than this are not registered (masking them would mangle ordinary text).
const MIN_KNOWN_SECRET: usize = 12;
/// At most this many values are kept (the oldest are dropped): rotated tokens accumulate.
const MAX_KNOWN_SECRETS: usize = 32;

/// Registers a secret value (an access or refresh token, a key) so that [`redact`] masks it
/// wherever it appears. Called by everything that loads or saves gateway.json and by the
/// backend configuration; cheap to call again with a value already known.
pub fn register_secret(value: &str) {
    let v = value.trim();
    if v.len() < MIN_KNOWN_SECRET {
        return;
    }
    let mut known = KNOWN_SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if known.iter().any(|k| k == v) {
        return;
    }
    if known.len() >= MAX_KNOWN_SECRETS {
        known.remove(0);
    }
    known.push(v.to_string());
}

fn mask_known(text: &str) -> std::borrow::Cow<'_, str> {
    let known = KNOWN_SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if known.iter().all(|k| !text.contains(k.as_str())) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for k in known.iter() {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), REDACTED);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Masks only the registered secret values (no patterns): for data that belongs to the user
/// (job results, command lines, model output), where a pattern could mangle ordinary text but
/// the gateway's own tokens and keys must still never appear.
pub fn mask_known_secrets(text: &str) -> String {
    mask_known(text).into_owned()
}

/// [`mask_known_secrets`] on every string of a JSON value, in place; keys are left alone.
pub fn mask_known_secrets_json(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(m) = mask_known(s) {
                *s = m;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask_known_secrets_json),
        Value::Object(m) => m.values_mut().for_each(mask_known_secrets_json),
        _ => {}
    }
}

/// [`redact`] with other markers and extra sensitive key names.
pub fn redact_with(text: &str, rules: &Rules) -> String {
    let masked = mask_known(text);
    let s = masked.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        // JWT
        if b == b'e' {
            let n = jwt_len(s, i);
            if n > 0 {
                out.extend_from_slice(rules.jwt_marker.as_bytes());
                i += n;
                continue;
            }
        }
        // API-key shaped words
        if b == b's' {
            let n = key_len(s, i);
            if n > 0 {
                out.extend_from_slice(rules.key_marker.as_bytes());
                i += n;
                continue;
            }
        }
        // Bearer <token>
        // (`Bearer`/`BEARER` only: `token_type=bearer` is not a credential)
        if b == b'B'
            && (i == 0 || !is_word(s[i - 1]))
            && s.len() >= i + 7
            && (&s[i..i + 7] == b"Bearer " || &s[i..i + 7] == b"BEARER ")
        {
            let mut j = i + 7;
            while j < s.len() && s[j] == b' ' {
                j += 1;
            }
            let start = j;
            while j < s.len()
                && !matches!(
                    s[j],
                    b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'' | b',' | b'}' | b')' | b';'
                )
            {
                j += 1;
            }
            if j > start {
                out.extend_from_slice(&s[i..i + 7]);
                out.extend_from_slice(REDACTED.as_bytes());
                i = j;
                continue;
            }
        }
        // key=value / "key": "value"
        if is_word(b) && (i == 0 || !is_word(s[i - 1])) {
            let mut e = i;
            while e < s.len() && is_word(s[e]) {
                e += 1;
            }
            if let Some((vs, ve)) = keyed_value(s, i, e, rules) {
                out.extend_from_slice(&s[i..vs]);
                out.extend_from_slice(REDACTED.as_bytes());
                i = ve;
                continue;
            }
            out.extend_from_slice(&s[i..e]);
            i = e;
            continue;
        }
        out.push(b);
        i += 1;
    }
    // Only ASCII was inserted and only at ASCII boundaries: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Redacts a JSON value in place: strings under sensitive keys become `[REDACTED]`, every other
/// string goes through [`redact`].
pub fn redact_json(v: &mut Value) {
    match v {
        Value::String(s) => {
            let r = redact(s);
            if r != *s {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_json),
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if is_sensitive_key(k) {
                    match val {
                        Value::String(s) if !s.is_empty() => *s = REDACTED.to_string(),
                        Value::String(_) | Value::Null | Value::Bool(_) => {}
                        Value::Number(_) => *val = Value::String(REDACTED.to_string()),
                        _ => redact_json(val),
                    }
                } else {
                    redact_json(val);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn registered_secrets_are_masked_anywhere() {
        // An opaque refresh token matches no pattern: only its registration masks it.
        let rt = "v1.Zq8LrTfW3xNpQ2sKd9";
        let line = format!("refresh failed for {rt}: status 400 (url=http://h/x?rt={rt})");
        assert!(redact(&line).contains(rt), "not known yet: shows the need");
        register_secret(rt);
        register_secret(rt);
        register_secret("short"); // ignored: too short to mask safely
        let r = redact(&line);
        assert!(!r.contains(rt), "{r}");
        assert!(r.contains("refresh failed for [REDACTED]"), "{r}");
        assert_eq!(redact("a short word"), "a short word");
        let mut v = json!({"detail": format!("x {rt} y")});
        redact_json(&mut v);
        assert_eq!(v["detail"], "x [REDACTED] y");
    }

    #[test]
    fn jwt_anywhere() {
        let s = format!("token expired: {JWT} (retrying)");
        let r = redact(&s);
        assert!(!r.contains("eyJ"), "{r}");
        assert!(r.contains("[REDACTED_JWT] (retrying)"), "{r}");
    }

    #[test]
    fn bearer_header() {
        let r = redact("Authorization: Bearer abc.def-123 sent");
        assert!(!r.contains("abc.def-123"), "{r}");
        assert!(r.contains("Bearer [REDACTED] sent"), "{r}");
    }

    #[test]
    fn json_keys_and_query_params() {
        let r = redact(r#"{"accessToken":"aaa111","refreshToken": "rrr222","gatewayId":"gw-1"}"#);
        assert!(!r.contains("aaa111") && !r.contains("rrr222"), "{r}");
        assert!(r.contains("gw-1"), "{r}");
        let r = redact("GET /realtime/v1/websocket?apikey=anonkey123&vsn=1.0.0");
        assert!(!r.contains("anonkey123"), "{r}");
        assert!(r.contains("vsn=1.0.0"), "{r}");
        let r = redact("refresh_token=zzz999 access_token: yyy888 anon_key='k k'");
        assert!(
            !r.contains("zzz999") && !r.contains("yyy888") && !r.contains("k k"),
            "{r}"
        );
        let r = redact(r#"body={\"refresh_token\":\"esc777\"}"#);
        assert!(!r.contains("esc777"), "{r}");
    }

    #[test]
    fn api_keys() {
        let r = redact(
            "using sk-ant-api03-abcdefghijklmnopqrstuvwxyz and sb_secret_abcdefghijklmnopqrst",
        );
        assert!(!r.contains("abcdefghijklmnop"), "{r}");
        // short words that merely start like a key stay
        assert_eq!(redact("task-sk-1 sk-short"), "task-sk-1 sk-short");
    }

    #[test]
    fn lowercase_bearer_after_a_key_is_masked() {
        let r = redact("authorization: bearer abc123secret next");
        assert_eq!(r, "authorization: bearer [REDACTED] next");
        let r = redact(r#"{"Authorization":"bearer qq99"}"#);
        assert!(!r.contains("qq99"), "{r}");
    }

    #[test]
    fn other_rules_change_markers_and_add_keys() {
        let rules = Rules {
            extra_key: |k| k == "session",
            jwt_marker: "[J]",
            key_marker: "[K]",
        };
        let r = redact_with(
            &format!("{JWT} sk-abcdefghijklmnopqrst session=s1 x=1"),
            &rules,
        );
        assert_eq!(r, "[J] [K] session=[REDACTED] x=1");
        assert_eq!(redact("session=s1"), "session=s1");
    }

    #[test]
    fn harmless_text_unchanged() {
        let s = "job started job_id=123 tokens_used=5 token_type=bearer status=ok é";
        assert_eq!(redact(s), s);
    }

    #[test]
    fn json_values() {
        let mut v = json!({"accessToken": "a", "nested": {"apikey": "k", "note": format!("x {JWT}")},
            "list": ["Bearer qqq"], "refresh_token": null, "gatewayId": "gw"});
        redact_json(&mut v);
        let s = v.to_string();
        assert!(
            !s.contains("\"a\"")
                && !s.contains("\"k\"")
                && !s.contains("eyJ")
                && !s.contains("qqq"),
            "{s}"
        );
        assert_eq!(v["gatewayId"], "gw");
        assert_eq!(v["refresh_token"], Value::Null);
    }
}
