//! Realtime job ingress: Phoenix channels (vsn 2.0.0 frames) over a blocking tungstenite
//! websocket, TLS via rustls for https backends. One thread owns the socket; a short read
//! timeout lets the same loop send Phoenix heartbeats on time, push refreshed tokens and notice
//! shutdown. PROTOCOL.md §7-§7a, supabase-wire.md §5.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

pub use super::interrupt::Interrupt;
use super::session::Session;
use super::{encode_component, Backoff};

/// Largest websocket message accepted (a job row with a big prompt fits easily).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// How long one blocking read waits before the loop looks at its timers again.
const READ_TICK: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A joined connection that lasted this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Frames

/// One Phoenix message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub r#ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

fn opt_ref(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err("ref is neither a string nor null".into()),
    }
}

impl Frame {
    /// The vsn 2.0.0 text: `[join_ref, ref, topic, event, payload]`.
    pub fn encode(&self) -> String {
        json!([
            self.join_ref,
            self.r#ref,
            self.topic,
            self.event,
            self.payload
        ])
        .to_string()
    }

    /// Parses a vsn 2.0.0 array or a vsn 1.0.0 object.
    pub fn decode(text: &str) -> Result<Frame, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let (jr, r, topic, event, payload) = match &v {
            Value::Array(a) if a.len() == 5 => (a.first(), a.get(1), &a[2], &a[3], a[4].clone()),
            Value::Array(a) => {
                return Err(format!("array frame with {} elements, expected 5", a.len()))
            }
            Value::Object(o) => (
                o.get("join_ref"),
                o.get("ref"),
                o.get("topic").unwrap_or(&Value::Null),
                o.get("event").unwrap_or(&Value::Null),
                o.get("payload").cloned().unwrap_or(Value::Null),
            ),
            _ => return Err("frame is neither an array nor an object".into()),
        };
        let topic = topic.as_str().ok_or("topic is not a string")?.to_string();
        let event = event.as_str().ok_or("event is not a string")?.to_string();
        Ok(Frame {
            join_ref: opt_ref(jr)?,
            r#ref: opt_ref(r)?,
            topic,
            event,
            payload,
        })
    }
}

/// The join payload of the gateway's channel.
pub fn join_payload(team_id: &str, access_token: &str) -> Value {
    json!({
        "config": {
            "broadcast": {"ack": false, "self": false},
            "presence": {"key": "", "enabled": false},
            "postgres_changes": [{
                "event": "INSERT", "schema": "public", "table": "gateway_jobs",
                "filter": format!("team_id=eq.{team_id}")
            }],
            "private": false
        },
        "access_token": access_token
    })
}

/// The websocket URL for a backend base URL (`http` → `ws`, `https` → `wss`).
pub fn socket_url(base: &str, anon_key: &str) -> Result<String, String> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        return Err(format!(
            "backend URL {base:?} must start with http:// or https://"
        ));
    };
    Ok(format!(
        "{rest}/realtime/v1/websocket?apikey={}&vsn=2.0.0",
        encode_component(anon_key)
    ))
}

/// host, port, tls from a ws(s) URL.
fn endpoint(url: &str) -> Result<(String, u16, bool), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err("not a websocket URL".into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, after) = h.split_once(']').ok_or("bad IPv6 host")?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    Ok((host, port, tls))
}

// ---------------------------------------------------------------------------------------------
// Transport

/// Plain TCP or rustls over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One open websocket.
pub struct Conn {
    ws: WebSocket<Stream>,
    next_ref: u64,
}

/// What one read gave.
#[derive(Debug)]
pub enum Incoming {
    Frame(Frame),
    /// A text frame that is not a Phoenix message (logged and skipped).
    Malformed(String),
    /// Nothing arrived within the read tick.
    Idle,
}

impl Conn {
    /// TCP connect (timeout), TLS for wss, websocket handshake (timeout); direct, webpki roots.
    #[cfg(test)]
    pub fn connect(url: &str) -> Result<Conn, String> {
        Self::connect_with(url, None)
    }

    /// As [`Conn::connect`], through `net`'s proxy (CONNECT tunnel) and trusted roots.
    pub fn connect_with(url: &str, net: Option<&super::net::Net>) -> Result<Conn, String> {
        let (host, port, tls) = endpoint(url)?;
        let tcp = match net {
            Some(n) => n.connect(url, &host, port, CONNECT_TIMEOUT)?,
            None => {
                let addrs: Vec<_> = (host.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?
                    .collect();
                let mut last = format!("no address for {host}");
                let mut tcp = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            tcp = Some(s);
                            break;
                        }
                        Err(e) => last = format!("connect to {a} failed: {e}"),
                    }
                }
                tcp.ok_or(last)?
            }
        };
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT))
            .and_then(|_| tcp.set_write_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| format!("socket setup failed: {e}"))?;
        let stream = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("bad TLS server name {host}: {e}"))?;
            let cfg = match net {
                Some(n) => n.tls(),
                None => tls_config()?,
            };
            let conn = rustls::ClientConnection::new(cfg, name)
                .map_err(|e| format!("TLS setup failed: {e}"))?;
            Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        } else {
            Stream::Plain(tcp)
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let (ws, _resp) = tungstenite::client::client_with_config(url, stream, Some(config))
            .map_err(|e| match e {
                tungstenite::HandshakeError::Interrupted(_) => {
                    "websocket handshake timed out".to_string()
                }
                tungstenite::HandshakeError::Failure(e) => {
                    let m = format!("websocket handshake failed: {e}");
                    super::net::explain_tls(&m).unwrap_or(m)
                }
            })?;
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(READ_TICK))
            .map_err(|e| format!("socket setup failed: {e}"))?;
        Ok(Conn { ws, next_ref: 0 })
    }

    pub fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub fn send(&mut self, f: &Frame) -> Result<(), String> {
        self.ws
            .send(Message::text(f.encode()))
            .map_err(|e| format!("websocket write failed: {e}"))
    }

    /// Waits up to the read tick for one message.
    pub fn read(&mut self) -> Result<Incoming, String> {
        match self.ws.read() {
            Ok(Message::Text(t)) => Ok(match Frame::decode(t.as_str()) {
                Ok(f) => Incoming::Frame(f),
                Err(e) => Incoming::Malformed(e),
            }),
            Ok(Message::Binary(_)) => Ok(Incoming::Malformed("binary frame".into())),
            Ok(Message::Close(c)) => Err(match c {
                Some(c) => format!("server closed the websocket ({} {})", c.code, c.reason),
                None => "server closed the websocket".into(),
            }),
            Ok(_) => Ok(Incoming::Idle),
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => Ok(Incoming::Idle),
            Err(e) => Err(format!("websocket read failed: {e}")),
        }
    }

    /// Best-effort close (bounded by the write timeout).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => continue,
                Err(_) => break,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reader loop

/// What the reader tells the runtime.
pub trait ReaderHooks {
    /// True once the reader must leave the channel and return.
    fn stop(&self) -> bool;
    /// Sleeps up to `d`; true if asked to stop meanwhile.
    fn wait(&self, d: Duration) -> bool;
    /// The channel is joined (reconcile now).
    fn subscribed(&self);
    /// An INSERT's `record` (not yet decoded or filtered).
    fn record(&self, record: Value);
    /// A frame or event that could not be understood.
    fn malformed(&self, what: &str);
    /// The connection ended; the next try is in `retry_in`.
    fn disconnected(&self, reason: &str, retry_in: Duration);
}

/// Timers of the reader (env knobs for tests) and its wake-up.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub heartbeat: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub interrupt: Interrupt,
}

impl ReaderConfig {
    pub fn from_env() -> Self {
        ReaderConfig {
            heartbeat: crate::tuning::realtime_heartbeat(),
            backoff_min: crate::tuning::reconnect_min(),
            backoff_max: crate::tuning::reconnect_max(),
            interrupt: Interrupt::default(),
        }
    }
}

/// Runs until `hooks.stop()`: connect, join, read, reconnect with backoff and jitter.
pub fn run_reader(session: &Session, cfg: &ReaderConfig, hooks: &dyn ReaderHooks) {
    let url = match socket_url(session.url(), session.anon_key()) {
        Ok(u) => u,
        Err(e) => {
            log::error!(target: "realtime", "realtime disabled: {e}; jobs arrive by polling only");
            while !hooks.wait(Duration::from_secs(3600)) {}
            return;
        }
    };
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    loop {
        if hooks.stop() {
            return;
        }
        let reason = match one_connection(session, cfg, &url, hooks, &mut backoff) {
            Ok(()) => return,
            Err(r) => r,
        };
        if hooks.stop() {
            return;
        }
        let d = backoff.next_delay();
        hooks.disconnected(&reason, d);
        if hooks.wait(d) {
            return;
        }
    }
}

/// Converts string-typed values of `record` by the `columns` types (jsonb text, ints, bools).
pub fn coerce_record(record: &mut Value, columns: Option<&Value>) {
    let (Some(obj), Some(Value::Array(cols))) = (record.as_object_mut(), columns) else {
        return;
    };
    for c in cols {
        let (Some(name), Some(ty)) = (
            c.get("name").and_then(Value::as_str),
            c.get("type").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some(Value::String(s)) = obj.get(name) else {
            continue;
        };
        let converted = match ty {
            "json" | "jsonb" => serde_json::from_str::<Value>(s).ok(),
            "int2" | "int4" | "int8" => s.parse::<i64>().ok().map(Value::from),
            "bool" => match s.as_str() {
                "t" => Some(Value::Bool(true)),
                "f" => Some(Value::Bool(false)),
                _ => None,
            },
            _ => None,
        };
        if let Some(v) = converted {
            obj.insert(name.to_string(), v);
        }
    }
}

fn one_connection(
    session: &Session,
    cfg: &ReaderConfig,
    url: &str,
    hooks: &dyn ReaderHooks,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let mut conn = Conn::connect_with(url, session.net())?;
    let socket = conn.ws.get_ref().tcp().try_clone().ok();
    cfg.interrupt.watch(socket);
    let topic = format!("realtime:gateway_jobs_{}", session.gateway_id);
    let token = session
        .access_token()
        .unwrap_or_else(|_| session.current_access_token());
    let mut gen = session.generation();
    let join_ref = conn.make_ref();
    conn.send(&Frame {
        join_ref: Some(join_ref.clone()),
        r#ref: Some(join_ref.clone()),
        topic: topic.clone(),
        event: "phx_join".into(),
        payload: join_payload(&session.team_id, &token),
    })?;
    let started = Instant::now();
    let mut joined = false;
    let mut joined_at: Option<Instant> = None;
    let mut binding_ids: Vec<Value> = Vec::new();
    let mut hb_pending: Option<String> = None;
    let mut next_hb = Instant::now() + cfg.heartbeat;
    let result = loop {
        if hooks.stop() || cfg.interrupt.fired() {
            if joined {
                let r = conn.make_ref();
                let _ = conn.send(&Frame {
                    join_ref: Some(join_ref.clone()),
                    r#ref: Some(r),
                    topic: topic.clone(),
                    event: "phx_leave".into(),
                    payload: json!({}),
                });
            }
            break Ok(());
        }
        let now = Instant::now();
        if !joined && now.duration_since(started) > JOIN_TIMEOUT {
            break Err("no reply to the channel join within 10 s".to_string());
        }
        if now >= next_hb {
            if hb_pending.is_some() {
                break Err("no reply to the Phoenix heartbeat; connection considered dead".into());
            }
            let r = conn.make_ref();
            conn.send(&Frame {
                join_ref: None,
                r#ref: Some(r.clone()),
                topic: "phoenix".into(),
                event: "heartbeat".into(),
                payload: json!({}),
            })?;
            hb_pending = Some(r);
            next_hb = now + cfg.heartbeat;
        }
        if joined && session.generation() != gen {
            gen = session.generation();
            let r = conn.make_ref();
            conn.send(&Frame {
                join_ref: Some(join_ref.clone()),
                r#ref: Some(r),
                topic: topic.clone(),
                event: "access_token".into(),
                payload: json!({ "access_token": session.current_access_token() }),
            })?;
            log::debug!(target: "realtime", "pushed the refreshed access token to the channel");
        }
        let f = match conn.read() {
            // Woken for the shutdown (the read side was shut): leave as on any stop.
            Err(_) if cfg.interrupt.fired() => continue,
            Err(e) => break Err(e),
            Ok(Incoming::Idle) => continue,
            Ok(Incoming::Malformed(m)) => {
                hooks.malformed(&format!("realtime frame skipped: {m}"));
                continue;
            }
            Ok(Incoming::Frame(f)) => f,
        };
        if f.topic == "phoenix" {
            if f.event == "phx_reply" && f.r#ref.is_some() && f.r#ref == hb_pending {
                hb_pending = None;
            }
            continue;
        }
        if f.topic != topic {
            continue;
        }
        if f.join_ref.is_some() && f.join_ref.as_deref() != Some(join_ref.as_str()) {
            continue; // a late message for an older join
        }
        match f.event.as_str() {
            "phx_reply" if f.r#ref.as_deref() == Some(join_ref.as_str()) && !joined => {
                binding_ids = match join_reply(session, &token, &f.payload) {
                    Ok(ids) => ids,
                    Err(e) => break Err(e),
                };
                joined = true;
                joined_at = Some(Instant::now());
                log::info!(target: "realtime", "subscribed to realtime:gateway_jobs_{}", session.gateway_id);
                hooks.subscribed();
            }
            "postgres_changes" => on_change(&f.payload, &binding_ids, hooks),
            "phx_error" => break Err("the server reported a channel error".into()),
            "phx_close" => break Err("the server closed the channel".into()),
            "system" if f.payload.get("status").and_then(Value::as_str) == Some("error") => {
                let text = f.payload.to_string();
                log::warn!(target: "realtime", "realtime system error: {}", crate::util::truncate_chars(&text, 300, "..."));
                // "Token has expired": the server closes the channel next; rejoin with a fresh one.
                refresh_if_token_problem(session, &session.current_access_token(), &text);
            }
            _ => {}
        }
    };
    cfg.interrupt.watch(None);
    conn.close();
    // A connection that stayed up a while earns a fast reconnect; one that flaps right after
    // each join keeps backing off.
    if joined_at.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
        backoff.reset();
    }
    result
}

/// The reply to our channel join: the ids of the postgres_changes bindings, or why the join
/// was refused (a token problem refreshes the session first).
fn join_reply(session: &Session, token: &str, payload: &Value) -> Result<Vec<Value>, String> {
    let status = payload.get("status").and_then(Value::as_str).unwrap_or("");
    if status != "ok" {
        let reason = payload
            .get("response")
            .map(|r| r.to_string())
            .unwrap_or_default();
        refresh_if_token_problem(session, token, &reason);
        return Err(format!(
            "channel join refused: {}",
            crate::util::truncate_chars(&reason, 300, "...")
        ));
    }
    Ok(payload
        .pointer("/response/postgres_changes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|b| b.get("id").cloned()).collect())
        .unwrap_or_default())
}

/// A postgres_changes event for one of our bindings: an INSERT's record goes to the hooks.
fn on_change(payload: &Value, binding_ids: &[Value], hooks: &dyn ReaderHooks) {
    let ids_ok = binding_ids.is_empty()
        || payload
            .get("ids")
            .and_then(Value::as_array)
            .is_some_and(|ids| ids.iter().any(|i| binding_ids.contains(i)));
    let data = payload.get("data");
    let ty = data.and_then(|d| d.get("type")).and_then(Value::as_str);
    match (ids_ok, ty, data.and_then(|d| d.get("record"))) {
        (true, Some(t), Some(rec)) if t.eq_ignore_ascii_case("INSERT") => {
            let mut rec = rec.clone();
            coerce_record(&mut rec, data.and_then(|d| d.get("columns")));
            hooks.record(rec);
        }
        (true, Some(t), _) if !t.eq_ignore_ascii_case("INSERT") => {}
        (false, _, _) => {}
        _ => hooks.malformed("postgres_changes event without a record"),
    }
}

/// The server refused the channel's token (expired or revoked before its `exp` says): refresh
/// the session now (single-flight, failures cached) so the next join carries a new token.
fn refresh_if_token_problem(session: &Session, token: &str, reason: &str) {
    let r = reason.to_ascii_lowercase();
    if r.contains("token") || r.contains("jwt") {
        if let Err(e) = session.refresh_if_current(token) {
            log::debug!(target: "realtime", "refresh after a realtime token error failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
