//! The gateway's GoTrue session: one object shared by every thread (behind an `Arc`).
//!
//! - Every REST/Functions call goes through [`Session::request`]: it adds `apikey` and the
//!   bearer, refreshes the access token before its JWT `exp` (minus a margin), and refreshes once
//!   and retries once on a 401.
//! - Refreshes are single-flight. The rotated pair is persisted through the [`TokenStore`]
//!   *before* the new refresh token can be used by anyone (the store is called while the
//!   refresh lock is held, before the new tokens are published).
//! - A refresh token the backend refuses (4xx) puts the session in "re-pair needed": the
//!   refusal is cached and retried at most every `reauth_retry` (60 s by default); meanwhile
//!   the token store is re-read, so a `pair` run on the same config heals the running daemon.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use super::{send, Error, HttpRequest, HttpResponse, MAX_SMALL_BODY};
use crate::util::{lock, unix_now};

/// Where the rotated tokens go (gateway.json in the daemon).
pub trait TokenStore: Send + Sync {
    /// Persists a rotated pair. Called before the new refresh token is used.
    fn save(&self, access_token: &str, refresh_token: &str) -> Result<(), String>;
    /// The pair currently on disk, if readable (to notice a re-pair while in reauth).
    fn load(&self) -> Option<(String, String)>;
}

/// Refresh when less than this remains (the reference ticker uses about 120 s).
const REFRESH_MARGIN_SECS: u64 = 120;
/// After a transient refresh failure, callers reuse the error for this long (no storm).
const TRANSIENT_COOLDOWN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
struct Tokens {
    access: String,
    refresh: String,
    /// JWT `exp` (unix seconds); None when the token does not decode (then: refresh first).
    exp: Option<u64>,
    /// Seconds between issue and expiry, when known (keeps the margin sane for short tokens).
    lifetime: Option<u64>,
}

struct RefreshState {
    /// The last failed refresh: when, the refresh token it used, the error.
    last_failure: Option<(Instant, String, Error)>,
}

/// Decodes the `exp` claim of a JWT without verifying it. None if it is not a JWT.
pub fn jwt_exp(token: &str) -> Option<u64> {
    jwt_claims(token).and_then(|c| c.get("exp").and_then(Value::as_f64).map(|f| f as u64))
}

fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let p = p.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn lifetime_of(token: &str) -> Option<u64> {
    let c = jwt_claims(token)?;
    let exp = c.get("exp")?.as_f64()? as u64;
    let iat = c.get("iat")?.as_f64()? as u64;
    exp.checked_sub(iat)
}

/// What a refresh returns: the pair and the server's `expires_in` (seconds).
#[derive(Debug, Clone, PartialEq)]
struct Refreshed {
    access: String,
    refresh: String,
    expires_in: Option<u64>,
}

impl Tokens {
    fn new(access: String, refresh: String) -> Self {
        Tokens {
            exp: jwt_exp(&access),
            lifetime: lifetime_of(&access),
            access,
            refresh,
        }
    }

    /// After a refresh: expiry from `expires_in` on our own clock, so a skewed local clock
    /// cannot make every fresh token look expired (a refresh storm).
    fn refreshed(r: Refreshed, now: u64) -> Self {
        match r.expires_in.filter(|e| *e > 0) {
            Some(e) => Tokens {
                access: r.access,
                refresh: r.refresh,
                exp: Some(now.saturating_add(e)),
                lifetime: Some(e),
            },
            None => Tokens::new(r.access, r.refresh),
        }
    }

    /// True when the access token should be refreshed now.
    fn needs_refresh(&self, now: u64) -> bool {
        match self.exp {
            None => true,
            Some(exp) => {
                let margin = match self.lifetime {
                    Some(l) if l > 0 => REFRESH_MARGIN_SECS.min(l / 2),
                    _ => REFRESH_MARGIN_SECS,
                };
                exp <= now.saturating_add(margin)
            }
        }
    }

    /// True when the access token is still accepted (with a little slack for clock skew).
    fn still_valid(&self, now: u64) -> bool {
        matches!(self.exp, Some(exp) if exp > now + 5)
    }
}

pub struct Session {
    agent: ureq::Agent,
    /// Proxy and trusted roots for the realtime connection (None: direct, webpki roots).
    net: Option<std::sync::Arc<super::net::Net>>,
    url: String,
    anon_key: String,
    pub gateway_id: String,
    pub team_id: String,
    store: Box<dyn TokenStore>,
    tokens: Mutex<Tokens>,
    refresh: Mutex<RefreshState>,
    generation: AtomicU64,
    /// Successful refreshes (for the metrics endpoint).
    refreshes: AtomicU64,
    reauth: Mutex<Option<String>>,
    reauth_retry: Duration,
}

impl Session {
    pub fn new(
        agent: ureq::Agent,
        cfg: &crate::config::BackendConfig,
        gateway_id: &str,
        team_id: &str,
        access_token: &str,
        refresh_token: &str,
        store: Box<dyn TokenStore>,
    ) -> Session {
        Session {
            agent,
            net: None,
            url: cfg.url.trim_end_matches('/').to_string(),
            anon_key: cfg.anon_key.clone(),
            gateway_id: gateway_id.to_string(),
            team_id: team_id.to_string(),
            store,
            tokens: Mutex::new(Tokens::new(
                access_token.to_string(),
                refresh_token.to_string(),
            )),
            refresh: Mutex::new(RefreshState { last_failure: None }),
            generation: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            reauth: Mutex::new(None),
            reauth_retry: crate::tuning::reauth_retry(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The network setup (proxy, trusted roots) the realtime connection uses too.
    pub fn with_net(mut self, net: std::sync::Arc<super::net::Net>) -> Session {
        self.net = Some(net);
        self
    }

    pub fn net(&self) -> Option<&super::net::Net> {
        self.net.as_deref()
    }

    /// Access-token refreshes that succeeded so far.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    pub fn anon_key(&self) -> &str {
        &self.anon_key
    }

    /// Bumped on every successful refresh; the realtime thread pushes the new token when it
    /// sees a new value.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Why the session needs a new pairing, if it does.
    pub fn reauth_reason(&self) -> Option<String> {
        lock(&self.reauth).clone()
    }

    /// The current access token without refreshing (for the realtime join).
    pub fn current_access_token(&self) -> String {
        lock(&self.tokens).access.clone()
    }

    /// A usable access token: refreshed first when it is about to expire. A failed refresh is
    /// tolerated while the old token is still valid.
    pub fn access_token(&self) -> Result<String, Error> {
        let t = lock(&self.tokens).clone();
        let now = unix_now();
        if !t.needs_refresh(now) {
            return Ok(t.access);
        }
        match self.refresh_if_current(&t.access) {
            Ok(tok) => Ok(tok),
            Err(e) if t.still_valid(now) => {
                log::debug!(target: "session", "early refresh failed, old token still valid: {e}");
                Ok(t.access)
            }
            Err(e) => Err(e),
        }
    }

    /// Refreshes unless someone already replaced `seen_access` (many threads hitting 401 at
    /// once cause one refresh). Returns the access token to use next.
    pub fn refresh_if_current(&self, seen_access: &str) -> Result<String, Error> {
        let mut st = lock(&self.refresh);
        let cur = lock(&self.tokens).clone();
        if cur.access != seen_access {
            return Ok(cur.access);
        }
        if let Some((at, rt, err)) = &st.last_failure {
            let cooldown = if matches!(err, Error::Reauth(_)) {
                self.reauth_retry
            } else {
                TRANSIENT_COOLDOWN
            };
            if rt == &cur.refresh && at.elapsed() < cooldown {
                return Err(err.clone());
            }
        }
        let mut refresh_token = cur.refresh.clone();
        if lock(&self.reauth).is_some() {
            // A `pair` on this config since the refusal? Adopt its tokens.
            if let Some((a, r)) = self.store.load() {
                if r != cur.refresh && !r.is_empty() {
                    log::info!(target: "session", "found new tokens in gateway.json (re-paired); using them");
                    let fresh = Tokens::new(a, r.clone());
                    *lock(&self.tokens) = fresh.clone();
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    *lock(&self.reauth) = None;
                    st.last_failure = None;
                    if !fresh.needs_refresh(unix_now()) {
                        return Ok(fresh.access);
                    }
                    refresh_token = r;
                }
            }
        }
        match self.call_refresh(&refresh_token) {
            Ok(r) => {
                // Persist first: if we crash right after, gateway.json already holds the pair
                // the backend now expects.
                if let Err(e) = self.store.save(&r.access, &r.refresh) {
                    log::error!(target: "session", "could not save the rotated tokens to gateway.json: {e}; keeping them in memory (a crash now would need a re-pair)");
                }
                let access = r.access.clone();
                *lock(&self.tokens) = Tokens::refreshed(r, unix_now());
                self.generation.fetch_add(1, Ordering::SeqCst);
                if lock(&self.reauth).take().is_some() {
                    log::info!(target: "session", "session restored; re-pair no longer needed");
                }
                st.last_failure = None;
                self.refreshes.fetch_add(1, Ordering::Relaxed);
                log::info!(target: "session", "gateway session refreshed");
                Ok(access)
            }
            Err(e) => {
                if let Error::Reauth(reason) = &e {
                    let mut r = lock(&self.reauth);
                    if r.is_none() {
                        log::error!(target: "session", "refresh token refused: {reason}; the gateway must be paired again (panorama-gateway pair <CODE>); retrying every {}s", self.reauth_retry.as_secs());
                    }
                    *r = Some(reason.clone());
                } else {
                    log::warn!(target: "session", "token refresh failed, will retry: {e}");
                }
                st.last_failure = Some((Instant::now(), refresh_token, e.clone()));
                Err(e)
            }
        }
    }

    /// One `POST /auth/v1/token?grant_type=refresh_token`, with short retries on 5xx/network.
    fn call_refresh(&self, refresh_token: &str) -> Result<Refreshed, Error> {
        let body = serde_json::json!({ "refresh_token": refresh_token }).to_string();
        let mut delay = Duration::from_millis(200);
        let mut last = Error::Transport("no attempt".into());
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay *= 2;
            }
            let resp = send(
                &self.agent,
                HttpRequest {
                    method: "POST",
                    url: format!("{}/auth/v1/token?grant_type=refresh_token", self.url),
                    headers: vec![
                        ("apikey", self.anon_key.clone()),
                        ("Authorization", format!("Bearer {}", self.anon_key)),
                        ("Content-Type", "application/json".into()),
                        ("X-Supabase-Api-Version", "2024-01-01".into()),
                    ],
                    body: Some(body.clone()),
                    timeout: Duration::from_secs(10),
                    max_body: MAX_SMALL_BODY,
                },
            );
            match resp {
                Ok(r) if r.is_success() => return parse_refresh_reply(&r),
                Ok(r) => {
                    let e = Error::Status {
                        status: r.status,
                        body: r.text(),
                    };
                    if !e.is_retryable() {
                        return Err(Error::Reauth(format!(
                            "HTTP {}: {}",
                            r.status,
                            super::error_message_from_body(&r.text())
                        )));
                    }
                    last = e;
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends a request to `{url}{path}` (path includes the query) with the session headers.
    /// Refreshes before expiry and once after a 401. Any HTTP status comes back as `Ok`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        timeout: Duration,
        max_body: u64,
    ) -> Result<HttpResponse, Error> {
        let token = self.access_token()?;
        let resp = self.send_with(&token, method, path, headers, body, timeout, max_body)?;
        if resp.status != 401 {
            return Ok(resp);
        }
        log::info!(target: "session", "backend answered 401 on {method} {}; refreshing the session", path_only(path));
        let token2 = self.refresh_if_current(&token)?;
        self.send_with(&token2, method, path, headers, body, timeout, max_body)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_with(
        &self,
        token: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        timeout: Duration,
        max_body: u64,
    ) -> Result<HttpResponse, Error> {
        let mut h: Vec<(&str, String)> = vec![
            ("apikey", self.anon_key.clone()),
            ("Authorization", format!("Bearer {token}")),
        ];
        for (k, v) in headers {
            h.push((k, v.to_string()));
        }
        send(
            &self.agent,
            HttpRequest {
                method,
                url: format!("{}{}", self.url, path),
                headers: h,
                body: body.map(str::to_string),
                timeout,
                max_body,
            },
        )
    }
}

fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

fn parse_refresh_reply(r: &HttpResponse) -> Result<Refreshed, Error> {
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|e| Error::Decode(format!("token refresh reply is not JSON: {e}")))?;
    let access = v.get("access_token").and_then(Value::as_str).unwrap_or("");
    let refresh = v.get("refresh_token").and_then(Value::as_str).unwrap_or("");
    if access.trim().is_empty() || refresh.trim().is_empty() {
        return Err(Error::Decode(
            "token refresh reply lacks access_token or refresh_token".into(),
        ));
    }
    Ok(Refreshed {
        access: access.to_string(),
        refresh: refresh.to_string(),
        expires_in: v
            .get("expires_in")
            .and_then(Value::as_f64)
            .map(|f| f as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(claims)
        )
    }

    #[test]
    fn reads_exp_from_a_jwt() {
        assert_eq!(
            jwt_exp(&jwt(r#"{"exp":1795560724,"sub":"g"}"#)),
            Some(1795560724)
        );
        assert_eq!(jwt_exp(&jwt(r#"{"exp":1795560724.5}"#)), Some(1795560724));
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"g"}"#)), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.b"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn refresh_margin_follows_the_token_lifetime() {
        let now = 1_000_000;
        let long = Tokens::new(
            jwt(&format!(r#"{{"exp":{},"iat":{}}}"#, now + 3600, now)),
            "r".into(),
        );
        assert!(!long.needs_refresh(now));
        assert!(long.needs_refresh(now + 3600 - 100));
        // A 60 s token refreshes at half-life, not immediately.
        let short = Tokens::new(
            jwt(&format!(r#"{{"exp":{},"iat":{}}}"#, now + 60, now)),
            "r".into(),
        );
        assert!(!short.needs_refresh(now + 10));
        assert!(short.needs_refresh(now + 31));
        let opaque = Tokens::new("opaque".into(), "r".into());
        assert!(opaque.needs_refresh(now));
        assert!(!opaque.still_valid(now));
    }

    #[test]
    fn refresh_reply_needs_both_tokens() {
        let ok = HttpResponse {
            status: 200,
            body: br#"{"access_token":"a","refresh_token":"r","expires_in":3600}"#.to_vec(),
        };
        let r = parse_refresh_reply(&ok).unwrap();
        assert_eq!(
            (r.access.as_str(), r.refresh.as_str(), r.expires_in),
            ("a", "r", Some(3600))
        );
        // A local clock an hour ahead: the JWT looks expired, expires_in does not.
        let now = 1_000_000;
        let skewed = Tokens::refreshed(
            Refreshed {
                access: jwt(&format!(r#"{{"exp":{},"iat":{}}}"#, now - 100, now - 3700)),
                refresh: "r".into(),
                expires_in: Some(3600),
            },
            now,
        );
        assert!(!skewed.needs_refresh(now + 60));
        assert!(skewed.needs_refresh(now + 3500));
        let bad = HttpResponse {
            status: 200,
            body: br#"{"access_token":"a"}"#.to_vec(),
        };
        assert!(matches!(parse_refresh_reply(&bad), Err(Error::Decode(_))));
    }

    /// A tiny HTTP server answering each request with the next canned (status, body);
    /// counts requests.
    fn fake_gotrue(
        replies: Vec<(u16, String)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c2 = count.clone();
        std::thread::spawn(move || {
            let mut replies = replies.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    let (st, b) = replies.next().unwrap_or((500, "{}".into()));
                    let resp = format!(
                        "HTTP/1.1 {st} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                        b.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        (url, count)
    }

    #[derive(Default)]
    struct MemStore {
        saved: Mutex<Vec<(String, String)>>,
    }
    impl TokenStore for std::sync::Arc<MemStore> {
        fn save(&self, a: &str, r: &str) -> Result<(), String> {
            self.saved.lock().unwrap().push((a.into(), r.into()));
            Ok(())
        }
        fn load(&self) -> Option<(String, String)> {
            None
        }
    }

    fn session(url: &str, store: std::sync::Arc<MemStore>) -> Session {
        let cfg = crate::config::BackendConfig {
            url: url.into(),
            anon_key: "anon".into(),
        };
        let old = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 30));
        Session::new(
            crate::backend::new_agent(),
            &cfg,
            "g",
            "t",
            &old,
            "rt-0",
            Box::new(store),
        )
    }

    #[test]
    fn concurrent_refreshes_are_single_flight_and_persisted_before_use() {
        let new_at = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 3600));
        let (url, count) = fake_gotrue(vec![(
            200,
            format!(r#"{{"access_token":"{new_at}","refresh_token":"rt-1","expires_in":3600}}"#),
        )]);
        let store = std::sync::Arc::new(MemStore::default());
        let s = std::sync::Arc::new(session(&url, store.clone()));
        let old = s.current_access_token();
        let got: Vec<String> = (0..8)
            .map(|_| {
                let s = s.clone();
                let old = old.clone();
                std::thread::spawn(move || s.refresh_if_current(&old).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(got.iter().all(|t| *t == new_at));
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one refresh"
        );
        assert_eq!(
            *store.saved.lock().unwrap(),
            vec![(new_at.clone(), "rt-1".to_string())]
        );
        assert_eq!(s.generation(), 1);
        // The access token now has an hour: no refresh on use.
        assert_eq!(s.access_token().unwrap(), new_at);
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_refused_refresh_token_means_reauth_and_is_not_retried_in_a_loop() {
        let (url, count) = fake_gotrue(vec![(
            400,
            r#"{"code":"refresh_token_not_found","message":"Invalid Refresh Token: Refresh Token Not Found"}"#.into(),
        )]);
        let store = std::sync::Arc::new(MemStore::default());
        let s = session(&url, store.clone());
        let old = s.current_access_token();
        let e = s.refresh_if_current(&old).unwrap_err();
        assert!(matches!(e, Error::Reauth(_)), "{e:?}");
        assert!(e.to_string().contains("re-pair"), "{e}");
        assert!(s
            .reauth_reason()
            .unwrap()
            .contains("Refresh Token Not Found"));
        for _ in 0..20 {
            assert!(s.refresh_if_current(&old).is_err());
        }
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "cached for the retry interval"
        );
        assert!(store.saved.lock().unwrap().is_empty());
        // The old access token is still valid for a while: calls keep using it.
        assert_eq!(s.access_token().unwrap(), old);
    }
}
