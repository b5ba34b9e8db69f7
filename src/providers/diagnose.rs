//! Reading a failed CLI run: terminal escapes removed, the failure classified (not logged in,
//! no network, rate limit) with what to run next, and a line watcher that stops a CLI which
//! keeps retrying an API it cannot reach instead of failing (Claude retries for about 3
//! minutes, Codex forever, Gemini for minutes).
//!
//! The patterns are what the real CLIs print (measured with Claude Code 2.1.328, Codex 0.171.0
//! and Gemini CLI 0.61.0 on a host without network; tests/real_cli.rs keeps them honest).

use serde_json::Value;

use super::ProviderId;

/// What went wrong, for people and for `result.error_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotInstalled,
    Auth,
    /// The CLI cannot reach its API (no network, DNS, firewall).
    Network,
    RateLimit,
    Timeout,
    Cancelled,
    ExitStatus,
    BadOutput,
    OutputLimit,
    PromptTooLarge,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotInstalled => "not_installed",
            ErrorKind::Auth => "auth",
            ErrorKind::Network => "network",
            ErrorKind::RateLimit => "rate_limit",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::ExitStatus => "exit_status",
            ErrorKind::BadOutput => "bad_output",
            ErrorKind::OutputLimit => "output_limit",
            ErrorKind::PromptTooLarge => "prompt_too_large",
        }
    }
}

/// `text` without terminal escape sequences (colours, cursor moves, OSC titles). Gemini prints
/// its errors in red; the escapes must not reach job rows, `gateway.json` or the heartbeat.
pub fn strip_ansi(text: &str) -> String {
    if !text.contains('\u{1b}') && !text.contains('\u{9b}') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.peek() {
                // CSI: ESC [ parameters… final byte in @..~
                Some('[') => {
                    it.next();
                    for d in it.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
                // OSC: ESC ] … BEL or ESC \
                Some(']') => {
                    it.next();
                    while let Some(d) = it.next() {
                        if d == '\u{7}' {
                            break;
                        }
                        if d == '\u{1b}' && it.peek() == Some(&'\\') {
                            it.next();
                            break;
                        }
                    }
                }
                // Character set designations: ESC ( B, ESC ) 0, …
                Some('(' | ')' | '*' | '+') => {
                    it.next();
                    it.next();
                }
                // Two-character escapes (ESC c, ESC =, …).
                Some(_) => {
                    it.next();
                }
                None => {}
            },
            '\u{9b}' => {
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

const AUTH: &[&str] = &[
    "invalid api key",
    "invalid_api_key",
    "incorrect api key",
    "401 unauthorized",
    "unauthorized",
    "authentication",
    "please run /login",
    "not logged in",
    "login required",
    "auth method",
    "api key not valid",
    "oauth token",
];

const RATE: &[&str] = &[
    "rate limit",
    "rate_limit",
    "429",
    "too many requests",
    "usage limit",
    "quota exceeded",
    "resource_exhausted",
    "overloaded",
];

/// What the CLIs print when they cannot reach their API (Node's and Rust's resolver and
/// socket errors, and each CLI's own sentence).
const NETWORK: &[&str] = &[
    "can't reach the api server",
    "unable to connect to api",
    "connection_failed",
    "enotfound",
    "econnrefused",
    "econnreset",
    "eai_again",
    "etimedout",
    "ehostunreach",
    "enetunreach",
    "fetch failed",
    "failed to lookup address",
    "name does not resolve",
    "name or service not known",
    "temporary failure in name resolution",
    "could not resolve host",
    "waiting for network",
    "network is unreachable",
    "connection refused",
    "error sending request",
];

fn any(t: &str, pats: &[&str]) -> bool {
    pats.iter().any(|p| t.contains(p))
}

/// Classifies a CLI's failure text as rate limit, auth or network, if it looks like one.
pub fn classify(text: &str) -> Option<ErrorKind> {
    let t = text.to_lowercase();
    if any(&t, RATE) {
        Some(ErrorKind::RateLimit)
    } else if any(&t, AUTH) {
        Some(ErrorKind::Auth)
    } else if any(&t, NETWORK) {
        Some(ErrorKind::Network)
    } else {
        None
    }
}

/// Classifies the CLI's own reason first (its error envelope or last stderr line), then the
/// rest of its output: a number such as `1429` in a JSON envelope is not a rate limit when the
/// reason says "Not logged in".
pub fn classify_run(reason: Option<&str>, rest: &str) -> Option<ErrorKind> {
    reason.and_then(classify).or_else(|| classify(rest))
}

/// How to log in, for messages.
pub fn login_hint(id: ProviderId) -> &'static str {
    match id {
        ProviderId::Claude => {
            "run `claude` once in a terminal and log in (/login), or set ANTHROPIC_API_KEY for the gateway"
        }
        ProviderId::Codex => {
            "run `codex login` (with a key: `printenv OPENAI_API_KEY | codex login --with-api-key`)"
        }
        ProviderId::Gemini => {
            "run `gemini` once in a terminal and log in, or set GEMINI_API_KEY for the gateway"
        }
    }
}

/// What to do when the CLI cannot reach its API.
pub fn network_hint(id: ProviderId) -> String {
    format!(
        "check this host's internet connection and DNS ({} must reach its API; the gateway does not pass HTTP_PROXY/HTTPS_PROXY to CLIs, so a proxy must be set in the CLI's own settings), then retry",
        id.short()
    )
}

/// The sentence added to a classified failure.
pub fn hint(id: ProviderId, kind: ErrorKind) -> Option<String> {
    match kind {
        ErrorKind::Auth => Some(format!(
            "The CLI is not logged in or its API key was rejected; {}",
            login_hint(id)
        )),
        ErrorKind::Network => Some(format!(
            "The CLI cannot reach its API; {}",
            network_hint(id)
        )),
        ErrorKind::RateLimit => Some(
            "The provider's rate or usage limit was hit; retry later or use another provider"
                .into(),
        ),
        _ => None,
    }
}

/// The last non-empty line of `text`, escapes removed.
pub fn last_line(text: &str) -> Option<String> {
    strip_ansi(text)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(String::from)
}

/// What a CLI that exited unsuccessfully reported, classified, as `(kind, details)`: its
/// structured error (Claude's envelope, Gemini's `{"error"}`, Codex's OpenAI-style error in
/// `summary`), else its last stderr line, else its last stdout line (Claude prints errors on
/// stdout in text mode); escapes removed, secrets masked, and the hint of the kind added.
pub fn explain_exit(
    id: ProviderId,
    exit: Option<i32>,
    signal: Option<i32>,
    stdout: &str,
    stderr: &str,
    summary: Option<&Value>,
) -> (ErrorKind, String) {
    let reported = super::cli_reported(id, stdout, summary).map(|r| strip_ansi(&r));
    let status_text = match (exit, signal) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".into(),
    };
    if let Some(line) = session_not_found(stdout, stderr) {
        // What the CLI reported in a structured place (Claude's `result`) reads better than
        // its raw output line.
        let line = match &reported {
            Some(r) if session_not_found("", r).is_some() => r.clone(),
            _ => line,
        };
        return (
            ErrorKind::ExitStatus,
            format!(
                "{} {status_text}: {}. The session this subagent continues (its metadata.session_id) is not in the CLI's state on this host (removed, or kept under another user or HOME); start a new subagent to begin again",
                id.short(),
                // Tokens and keys masked; the debug rules would also mask the id after
                // "session:", which is what the person needs to see here.
                crate::util::truncate_chars(&crate::redact::redact(&line), 300, "")
            ),
        );
    }
    let reason = reported
        .clone()
        .or_else(|| last_line(stderr))
        .or_else(|| last_line(stdout))
        .map(|r| super::redact::text(&r, 300));
    let what = match &reason {
        Some(r) => format!("{} {status_text}: {r}", id.short()),
        None => format!("{} {status_text}", id.short()),
    };
    let rest = format!(
        "{}\n{}",
        strip_ansi(stderr),
        stdout.chars().take(4000).collect::<String>()
    );
    match classify_run(reported.as_deref().or(reason.as_deref()), &rest) {
        Some(k) => (k, format!("{what}. {}", hint(id, k).unwrap_or_default())),
        // Claude Code refuses full permissions as root (elevated subagents).
        None if rest.contains("cannot be used with root/sudo privileges") => (
            ErrorKind::ExitStatus,
            format!("{what}. Claude Code refuses full permissions when it runs as root; run panorama-gateway as a normal user to give Claude subagents machine control"),
        ),
        None => (ErrorKind::ExitStatus, what),
    }
}

/// The line where a CLI says the session a continuation names does not exist: Claude's "No
/// conversation found with session ID", Codex's "no rollout found for thread id", Gemini's
/// "Invalid session identifier" (whose last line only says to use `--list-sessions`).
fn session_not_found(stdout: &str, stderr: &str) -> Option<String> {
    const SAID: &[&str] = &[
        "no conversation found with session id",
        "no rollout found for thread id",
        "invalid session identifier",
    ];
    let text = strip_ansi(&format!("{stderr}\n{stdout}"));
    text.lines()
        .map(str::trim)
        .find(|l| {
            let l = l.to_lowercase();
            SAID.iter().any(|s| l.contains(s))
        })
        .map(|l| l.trim_end_matches('.').to_string())
}

/// Watches a running CLI's output lines and says when to stop it because it keeps failing to
/// reach its API. Thresholds (from the real CLIs, no network):
/// * Claude (stream-json): 3 `api_retry` events without an HTTP status (about 4 s; Claude
///   itself gives up after 10, about 3 minutes).
/// * Codex: its own "waiting for network" (about 7 s), or 3 reconnects whose reason is a
///   network error (`--json`, about 2 s). Codex never gives up by itself.
/// * Gemini: 2 "Attempt N failed" retries on a network error (a few seconds after start-up).
#[derive(Debug)]
pub struct NetworkWatch {
    id: ProviderId,
    failures: u32,
    reason: Option<String>,
}

impl NetworkWatch {
    pub fn new(id: ProviderId) -> NetworkWatch {
        NetworkWatch {
            id,
            failures: 0,
            reason: None,
        }
    }

    /// Why the run was stopped, once [`NetworkWatch::observe`] returned true.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Feeds one output line; true means: stop the CLI, it cannot reach its API.
    pub fn observe(&mut self, line: &str) -> bool {
        if self.reason.is_some() {
            return true;
        }
        let line = line.trim();
        if line.is_empty() {
            return false;
        }
        let lower = line.to_lowercase();
        let (counted, limit, immediate) = match self.id {
            ProviderId::Claude => {
                let retry = line.starts_with('{')
                    && serde_json::from_str::<Value>(line).is_ok_and(|v| {
                        v.get("type").and_then(Value::as_str) == Some("system")
                            && v.get("subtype").and_then(Value::as_str) == Some("api_retry")
                            && v.get("error_status").is_none_or(Value::is_null)
                    });
                (retry, 3, false)
            }
            ProviderId::Codex => (
                lower.contains("reconnecting") && any(&lower, NETWORK),
                3,
                lower.contains("waiting for network"),
            ),
            ProviderId::Gemini => (
                lower.contains("attempt") && lower.contains("failed") && any(&lower, NETWORK),
                2,
                false,
            ),
        };
        if counted {
            self.failures += 1;
        }
        if immediate || (counted && self.failures >= limit) {
            let said = match self.id {
                ProviderId::Claude => format!(
                    "{} connection attempts to the Anthropic API failed",
                    self.failures
                ),
                _ => super::plan::collapse(&strip_ansi(line), 300),
            };
            self.reason = Some(format!(
                "{} cannot reach its API ({said}); it was stopped instead of retrying for minutes",
                self.id.short()
            ));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continuation_whose_session_is_gone_says_so() {
        let gemini = "Error resuming session: Invalid session identifier \"0b7c0000-0000-4000-8000-000000000001\".\n  Searched for sessions in /h/.gemini/tmp/x/chats.\n  Use --list-sessions to see available sessions, then use --resume {number}, --resume {uuid}, or --resume latest.\n";
        let (k, m) = explain_exit(ProviderId::Gemini, Some(42), None, "", gemini, None);
        assert_eq!(k, ErrorKind::ExitStatus);
        assert!(
            m.starts_with(
                "Gemini exited with status 42: Error resuming session: Invalid session identifier"
            ),
            "{m}"
        );
        assert!(m.contains("start a new subagent"), "{m}");
        let codex = "Error: thread/resume: thread/resume failed: no rollout found for thread id 01a24385-2906-7721-97c3-d49ef42cd31d (code -32600)\n\nStack backtrace:\n   0: <unknown>\n";
        let (_, m) = explain_exit(ProviderId::Codex, Some(1), None, "", codex, None);
        assert!(m.contains("no rollout found for thread id 01a24385"), "{m}");
        assert!(m.contains("metadata.session_id"), "{m}");
    }

    #[test]
    fn ansi_escapes_are_removed() {
        let red = "\u{1b}[31mGemini CLI is not running in a trusted directory.\u{1b}[0m";
        assert_eq!(
            strip_ansi(red),
            "Gemini CLI is not running in a trusted directory."
        );
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}ok \u{1b}(Bx"), "ok x");
        assert_eq!(strip_ansi("plain ünïcode"), "plain ünïcode");
        assert_eq!(strip_ansi("cut \u{1b}["), "cut ");
    }

    #[test]
    fn the_real_clis_failures_are_classified() {
        // Claude, no key / a key without network; Gemini, no key / a key without network.
        for (text, kind) in [
            ("Not logged in · Please run /login", ErrorKind::Auth),
            (
                "API Error: Can't reach the API server — check your internet or DNS (ENOTFOUND)",
                ErrorKind::Network,
            ),
            ("Please set an Auth method in your /h/.gemini/settings.json or specify one of the following environment variables before running: GEMINI_API_KEY", ErrorKind::Auth),
            (
                "[API Error: exception TypeError: fetch failed sending request]",
                ErrorKind::Network,
            ),
            ("Not logged in", ErrorKind::Auth),
            ("Rate limit reached", ErrorKind::RateLimit),
        ] {
            assert_eq!(classify(text), Some(kind), "{text}");
        }
        assert_eq!(classify("Error: unknown option '-x'"), None);
        // The reason wins over numbers elsewhere in the output.
        assert_eq!(
            classify_run(Some("Not logged in"), "\"duration_ms\":1429"),
            Some(ErrorKind::Auth)
        );
    }

    #[test]
    fn the_watch_stops_each_cli_at_its_threshold() {
        let retry = r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":584,"error_status":null,"error":"unknown"}"#;
        let overloaded = r#"{"type":"system","subtype":"api_retry","attempt":1,"error_status":529,"error":"overloaded"}"#;
        let mut w = NetworkWatch::new(ProviderId::Claude);
        assert!(!w.observe(overloaded) && !w.observe(retry) && !w.observe(retry));
        assert!(w.observe(retry));
        assert!(w.reason().unwrap().contains("Claude cannot reach its API"));

        let mut w = NetworkWatch::new(ProviderId::Codex);
        assert!(!w.observe("ERROR: Reconnecting... 2/5"));
        assert!(w.observe("ERROR: Reconnecting... waiting for network"));
        let mut w = NetworkWatch::new(ProviderId::Codex);
        let ev = r#"{"type":"error","message":"Reconnecting... 2/5 (stream disconnected before completion: failed to lookup address information: Name does not resolve)"}"#;
        assert!(!w.observe(ev) && !w.observe(ev) && w.observe(ev));

        let mut w = NetworkWatch::new(ProviderId::Gemini);
        let a = "Attempt 1 failed. Retrying with backoff... Error: exception TypeError: fetch failed sending request";
        assert!(!w.observe("    at async Models.generateContent (file:///x.js:1:1)"));
        assert!(!w.observe(a) && w.observe(a));
        assert!(w
            .reason()
            .unwrap()
            .starts_with("Gemini cannot reach its API (Attempt 1"));
    }
}
