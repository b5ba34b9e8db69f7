//! The Panorama wire: session (GoTrue refresh), rest (PostgREST tables and RPC), functions
//! (edge functions), realtime (Phoenix over tungstenite), jobs (typed rows, claim/complete).
//! Owner: Connect (issue 4). Knows the wire, nothing about CLIs.

pub mod capabilities;
pub mod functions;
pub mod interrupt;
pub mod jobs;
pub mod net;
pub mod realtime;
pub mod resources;
pub mod rest;
pub mod session;
pub mod spool;
pub mod subagents;

use std::fmt;
use std::io::Read;
use std::time::Duration;

use crate::util::truncate_chars;

/// Largest response body read from any endpoint unless a call says otherwise.
pub const MAX_BODY: u64 = 16 * 1024 * 1024;
/// Replies of the pairing exchange and the auth endpoints are small.
pub const MAX_SMALL_BODY: u64 = 1024 * 1024;

/// What went wrong talking to the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The request never got an HTTP answer: DNS, connect, TLS, timeout, reset.
    Transport(String),
    /// The backend answered with a non-2xx status. `body` is the start of the reply (bounded).
    Status { status: u16, body: String },
    /// The backend answered 2xx but the reply is not what the contract says.
    Decode(String),
    /// The refresh token was refused: the pairing is gone and `pair` must run again.
    Reauth(String),
    /// The reply (HTTP `status`) was larger than the `limit` bytes the call reads.
    TooLarge { status: u16, limit: u64 },
}

impl Error {
    /// Worth retrying later: transport failures, 5xx, 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429 || *status == 0
            }
            Error::Decode(_) | Error::Reauth(_) | Error::TooLarge { .. } => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport(m) => write!(f, "backend unreachable: {m}"),
            Error::Status { status, body } => {
                let msg = error_message_from_body(body);
                if msg.is_empty() {
                    write!(f, "backend answered HTTP {status}")
                } else {
                    write!(f, "backend answered HTTP {status}: {msg}")
                }
            }
            Error::Decode(m) => write!(f, "unexpected reply from the backend: {m}"),
            Error::TooLarge { status, limit } => write!(
                f,
                "unexpected reply from the backend: larger than {limit} bytes (HTTP {status})"
            ),
            Error::Reauth(m) => write!(
                f,
                "the backend refused the gateway's refresh token ({m}); re-pair needed: run `panorama-gateway pair <CODE>`"
            ),
        }
    }
}

/// Pulls a human message out of a JSON error body (`message`, `msg`, `error_description`,
/// `error`), else the start of the text. Never long.
pub fn error_message_from_body(body: &str) -> String {
    let msg = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => ["message", "msg", "error_description", "error"]
            .iter()
            .find_map(|k| o.get(*k).and_then(|v| v.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.to_string()),
        _ => body.to_string(),
    };
    truncate_chars(msg.trim(), 300, "...")
}

/// `X-Client-Info` of every HTTP request: informational for the backend's logs (supabase-js
/// sends `supabase-js/<ver>; runtime=node; ...`; we name ourselves instead of impersonating it).
pub const CLIENT_INFO: &str = concat!(
    "panorama-gateway/",
    env!("CARGO_PKG_VERSION"),
    "; runtime=rust"
);

/// One HTTP exchange as the wire modules need it.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub url: String,
    pub headers: Vec<(&'a str, String)>,
    pub body: Option<String>,
    pub timeout: Duration,
    pub max_body: u64,
}

/// Status and body of a response (any status).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The settings every HTTP agent shares: connection pooling, connect and call timeouts.
pub fn agent_builder() -> ureq::AgentBuilder {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .max_idle_connections_per_host(16)
        .user_agent(concat!("panorama-gateway/", env!("CARGO_PKG_VERSION")))
}

/// A direct agent with the webpki roots (tests and callers without a [`net::Net`]).
pub fn new_agent() -> ureq::Agent {
    agent_builder().build()
}

/// Sends one request; any HTTP status comes back as `Ok`, only transport failures and bodies
/// over the limit are errors.
pub fn send(agent: &ureq::Agent, req: HttpRequest<'_>) -> Result<HttpResponse, Error> {
    let mut r = agent
        .request(req.method, &req.url)
        .timeout(req.timeout)
        .set("X-Client-Info", CLIENT_INFO);
    for (k, v) in &req.headers {
        r = r.set(k, v);
    }
    let resp = match req.body {
        Some(b) => r.send_string(&b),
        None => r.call(),
    };
    let resp = match resp {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(ureq::Error::Transport(t)) => return Err(Error::Transport(transport_message(&t))),
    };
    let status = resp.status();
    let mut body = Vec::new();
    resp.into_reader()
        .take(req.max_body + 1)
        .read_to_end(&mut body)
        .map_err(|e| Error::Transport(format!("reading the reply failed: {e}")))?;
    if body.len() as u64 > req.max_body {
        return Err(Error::TooLarge {
            status,
            limit: req.max_body,
        });
    }
    Ok(HttpResponse { status, body })
}

fn transport_message(t: &ureq::Transport) -> String {
    // ureq's Display includes the URL, which may carry the anon key in a query string for the
    // realtime endpoint only (not used here); REST URLs carry ids, not secrets.
    let mut s = t.to_string();
    if let Some(i) = s.find("apikey=") {
        s.truncate(i);
        s.push_str("apikey=[REDACTED]");
    }
    net::explain_tls(&s).unwrap_or(s)
}

/// Percent-encodes one query component the way URLSearchParams does (space as %20 here: the
/// backend decodes both).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `a=1&b=2` with every key and value encoded.
pub fn encode_query(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A random u64 from the OS (ring), for jitter. Falls back to the clock.
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(7)
}

/// Exponential backoff with jitter: attempt 0 → about `min`, doubling to `max`; the delay is
/// drawn uniformly from [base/2, base].
#[derive(Debug, Clone)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay; each call doubles the base up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let base = self
            .min
            .saturating_mul(1u32 << shift)
            .min(self.max)
            .max(self.min);
        let base_ms = base.as_millis() as u64;
        let half = base_ms / 2;
        let jitter = if half == 0 {
            0
        } else {
            random_u64() % (half + 1)
        };
        Duration::from_millis(half + jitter).max(self.min.min(base))
    }
}

/// A loopback HTTP server for wire tests: records every request (method, target, headers,
/// body) and answers with a canned reply chosen by a closure.
#[cfg(test)]
pub(crate) mod testsrv {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone)]
    pub struct Captured {
        pub method: String,
        /// Path and query exactly as sent.
        pub target: String,
        /// Lower-cased names.
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl Captured {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == &name.to_ascii_lowercase())
                .map(|(_, v)| v.as_str())
        }
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    pub type Reply = Box<dyn Fn(&Captured) -> (u16, String) + Send + Sync>;

    /// Starts the server; returns its base URL and the request log.
    pub fn start(reply: Reply) -> (String, Arc<Mutex<Vec<Captured>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (log2, reply) = (log.clone(), Arc::new(reply));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (log, reply) = (log2.clone(), reply.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(stream.try_clone().unwrap());
                    let mut w = stream;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let method = parts.next().unwrap_or("").to_string();
                        let target = parts.next().unwrap_or("").to_string();
                        let mut headers = Vec::new();
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                            }
                        }
                        let len = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0usize);
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let c = Captured {
                            method,
                            target,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        };
                        let (st, b) = reply(&c);
                        log.lock().unwrap().push(c);
                        let resp = format!(
                            "HTTP/1.1 {st} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                            b.len()
                        );
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_urlsearchparams() {
        assert_eq!(encode_component("select=*"), "select%3D*");
        assert_eq!(
            encode_component("in.(running,completed)"),
            "in.%28running%2Ccompleted%29"
        );
        assert_eq!(
            encode_query(&[("order", "created_at.asc"), ("team_id", "eq.a b")]),
            "order=created_at.asc&team_id=eq.a%20b"
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_inside_bounds() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut last_cap = Duration::ZERO;
        for i in 0..10 {
            let d = b.next_delay();
            let cap = Duration::from_secs(1u64 << i).min(Duration::from_secs(30));
            assert!(d <= cap, "attempt {i}: {d:?} > {cap:?}");
            assert!(
                d >= Duration::from_secs(1),
                "attempt {i}: {d:?} below the minimum"
            );
            assert!(d * 2 >= cap, "attempt {i}: {d:?} below half of {cap:?}");
            last_cap = cap;
        }
        assert_eq!(last_cap, Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn error_messages_come_from_json_bodies() {
        assert_eq!(
            error_message_from_body(r#"{"code":"PGRST301","message":"JWT expired"}"#),
            "JWT expired"
        );
        assert_eq!(
            error_message_from_body(
                r#"{"error":"invalid_grant","error_description":"Invalid Refresh Token: Already Used"}"#
            ),
            "Invalid Refresh Token: Already Used"
        );
        assert!(Error::Status {
            status: 503,
            body: String::new()
        }
        .is_retryable());
        assert!(!Error::Status {
            status: 400,
            body: String::new()
        }
        .is_retryable());
    }
}
