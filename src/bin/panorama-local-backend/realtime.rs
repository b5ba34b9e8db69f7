//! Realtime: Phoenix channels over a websocket at `/realtime/v1/websocket`, serializer
//! vsn 1.0.0 (JSON objects) and 2.0.0 (JSON arrays), `postgres_changes` bindings with a
//! `col=op.value` filter, delivery filtered by the binding and by row-level security of the
//! channel's token. One reader thread and one writer thread per connection; every outgoing
//! frame goes through the connection's queue, so frames never interleave.

use crate::app::{App, Change, Principal};
use crate::http::{write_response, Request, Response};
use crate::jwt::JwtError;
use crate::query::{self, Op};
use crate::rls;
use crate::store::{table_def, Row};
use crate::util;
use crate::ws::{self, FrameReader, Incoming, ReadError};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Outgoing frames queued per connection before it counts as too slow and is dropped.
const QUEUE: usize = 8192;
/// A connection that sends nothing (not even heartbeats) for this long is closed.
const IDLE: Duration = Duration::from_secs(120);

enum Out {
    Text(String),
    Pong(Vec<u8>),
    /// Close frame then shutdown.
    Close(u16, String),
}

struct Binding {
    id: u32,
    event: String,
    table: String,
    filter: Option<(String, Op)>,
}

struct Chan {
    name: String,
    join_ref: Value,
    bindings: Vec<Binding>,
    /// The token the channel was joined (or last updated) with; None = the apikey (anon).
    token: Option<String>,
    principal: Principal,
}

struct Conn {
    tx: Sender<Out>,
    vsn2: bool,
    stream: TcpStream,
    channels: HashMap<String, Chan>,
}

#[derive(Default)]
struct HubInner {
    conns: HashMap<u64, Conn>,
    next_id: u64,
    muted_until_ms: u64,
}

#[derive(Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
}

fn encode_msg(
    vsn2: bool,
    join_ref: &Value,
    r: &Value,
    topic: &str,
    event: &str,
    payload: Value,
) -> String {
    if vsn2 {
        json!([join_ref, r, topic, event, payload]).to_string()
    } else {
        json!({"join_ref": join_ref, "ref": r, "topic": topic, "event": event, "payload": payload})
            .to_string()
    }
}

/// A server push outside any request: no join ref, no ref.
fn push_msg(vsn2: bool, topic: &str, event: &str, payload: Value) -> String {
    encode_msg(vsn2, &Value::Null, &Value::Null, topic, event, payload)
}

/// The `phx_reply` to message `m` (same refs and topic).
fn reply_msg(vsn2: bool, m: &Msg, status: &str, response: Value) -> String {
    encode_msg(
        vsn2,
        &m.join_ref,
        &m.r,
        &m.topic,
        "phx_reply",
        json!({"status": status, "response": response}),
    )
}

/// The `phx_close` of a channel, with its join ref.
fn close_msg(vsn2: bool, topic: &str, ch: &Chan) -> String {
    let jr = &ch.join_ref;
    encode_msg(vsn2, jr, jr, topic, "phx_close", json!({}))
}

/// The frames that close a channel whose token is no longer good, as Realtime sends them: a
/// `system` error saying why, then `phx_close` with the channel's join ref.
fn token_close_frames(vsn2: bool, topic: &str, ch: &Chan, reason: &str) -> [String; 2] {
    let payload =
        json!({"channel": ch.name, "extension": "system", "message": reason, "status": "error"});
    [
        push_msg(vsn2, topic, "system", payload),
        close_msg(vsn2, topic, ch),
    ]
}

fn send(c: &Conn, text: String) -> bool {
    send_to(&c.tx, &c.stream, text)
}

fn send_to(tx: &Sender<Out>, stream: &TcpStream, text: String) -> bool {
    match tx.try_send(Out::Text(text)) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            log::warn!(target: "realtime", "client too slow (queue full); dropping the connection");
            let _ = stream.shutdown(Shutdown::Both);
            false
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// Stable non-zero 31-bit id for a binding (like Realtime's hash of the subscription params).
fn binding_id(event: &str, schema: &str, table: &str, filter: Option<&str>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in [event, schema, table, filter.unwrap_or("")] {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    let id = h & 0x7fff_ffff;
    if id == 0 {
        1
    } else {
        id
    }
}

fn columns_of(table: &str) -> Value {
    match table_def(table) {
        Some(def) => Value::Array(
            def.columns
                .iter()
                .map(|c| json!({"name": c.name, "type": c.ty.pg_name()}))
                .collect(),
        ),
        None => json!([]),
    }
}

fn token_reason(e: &JwtError) -> String {
    match e {
        JwtError::Expired(secs) => format!("InvalidJWTToken: Token has expired {secs} seconds ago"),
        JwtError::Revoked => "InvalidJWTToken: Token has expired 0 seconds ago".to_string(),
        JwtError::BadSignature => "InvalidJWTToken: Invalid token signature".to_string(),
        JwtError::Malformed(why) => format!("InvalidJWTToken: {why}"),
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn channel_count(&self) -> usize {
        self.lock().conns.values().map(|c| c.channels.len()).sum()
    }

    pub fn mute_for(&self, ms: u64) {
        self.lock().muted_until_ms = if ms == 0 { 0 } else { util::now_ms() + ms };
    }

    /// Closes every websocket at once, without a close frame (like a network drop).
    pub fn drop_all(&self) -> usize {
        let mut h = self.lock();
        let n = h.conns.len();
        for (_, c) in h.conns.drain() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        n
    }

    /// Closes channels whose token has expired or was revoked, as Realtime does when a token
    /// runs out: a `system` error then `phx_close`. Run periodically (see main).
    pub fn sweep_expired(&self, app: &App) {
        let mut h = self.lock();
        for conn in h.conns.values_mut() {
            let expired: Vec<(String, String)> = conn
                .channels
                .iter()
                .filter_map(|(topic, ch)| {
                    let tok = ch.token.as_ref()?;
                    app.principal(tok)
                        .err()
                        .map(|e| (topic.clone(), token_reason(&e)))
                })
                .collect();
            for (topic, reason) in expired {
                if let Some(ch) = conn.channels.remove(&topic) {
                    log::info!(target: "realtime", "closing a channel whose token expired channel={}", ch.name);
                    for frame in token_close_frames(conn.vsn2, &topic, &ch, &reason) {
                        send(conn, frame);
                    }
                }
            }
        }
    }

    /// Fans committed changes out to matching channels. Called under the store lock.
    pub fn publish(&self, app: &App, changes: &[Change]) {
        let mut h = self.lock();
        if h.conns.is_empty() {
            return;
        }
        if h.muted_until_ms > util::now_ms() {
            log::debug!(target: "realtime", "delivery muted; dropping changes count={}", changes.len());
            return;
        }
        // Each change's `data` object is serialised once, whatever the number of subscribers.
        let encoded: Vec<String> = changes
            .iter()
            .map(|change| {
                let mut data = json!({
                    "type": change.kind, "schema": "public", "table": change.table,
                    "commit_timestamp": change.commit_timestamp, "columns": columns_of(change.table),
                    "errors": null,
                });
                if let Some(r) = &change.record {
                    data["record"] = Value::Object(r.clone());
                }
                if let Some(o) = &change.old {
                    data["old_record"] = Value::Object(o.clone());
                }
                data.to_string()
            })
            .collect();
        let mut delivered = 0u64;
        for conn in h.conns.values_mut() {
            let mut closed: Vec<String> = Vec::new();
            let Conn {
                tx,
                vsn2,
                stream,
                channels,
            } = conn;
            let vsn2 = *vsn2;
            for (topic, ch) in channels.iter() {
                // Re-check the channel's token: it may have expired or been revoked.
                if let Some(tok) = &ch.token {
                    if let Err(e) = app.principal(tok) {
                        for frame in token_close_frames(vsn2, topic, ch, &token_reason(&e)) {
                            send_to(tx, stream, frame);
                        }
                        closed.push(topic.clone());
                        continue;
                    }
                }
                for (ci, change) in changes.iter().enumerate() {
                    let row: &Row = match change.record.as_ref().or(change.old.as_ref()) {
                        Some(r) => r,
                        None => continue,
                    };
                    let ids: Vec<u32> = ch
                        .bindings
                        .iter()
                        .filter(|b| {
                            b.table == change.table
                                && (b.event == "*" || b.event.eq_ignore_ascii_case(change.kind))
                                && match &b.filter {
                                    None => true,
                                    Some((col, op)) => {
                                        let ty = table_def(change.table)
                                            .and_then(|d| d.column(col))
                                            .map(|c| c.ty);
                                        match ty {
                                            Some(ty) => {
                                                query::eval_leaf(
                                                    ty,
                                                    row.get(col).unwrap_or(&Value::Null),
                                                    op,
                                                ) == Some(true)
                                            }
                                            None => false,
                                        }
                                    }
                                }
                        })
                        .map(|b| b.id)
                        .collect();
                    if ids.is_empty() || !rls::can_select(&ch.principal, change.table, row) {
                        continue;
                    }
                    let data = &encoded[ci];
                    let ids_s = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
                    let topic_s = Value::String(topic.clone()).to_string();
                    let msg = if vsn2 {
                        format!("[null,null,{topic_s},\"postgres_changes\",{{\"ids\":{ids_s},\"data\":{data}}}]")
                    } else {
                        format!("{{\"join_ref\":null,\"ref\":null,\"topic\":{topic_s},\"event\":\"postgres_changes\",\"payload\":{{\"ids\":{ids_s},\"data\":{data}}}}}")
                    };
                    if send_to(tx, stream, msg) {
                        delivered += 1;
                    }
                }
            }
            for t in closed {
                channels.remove(&t);
            }
        }
        app.stats
            .events_delivered
            .fetch_add(delivered, Ordering::Relaxed);
    }
}

/// Refs are kept as the JSON values received (normally strings) and echoed unchanged.
struct Msg {
    join_ref: Value,
    r: Value,
    topic: String,
    event: String,
    payload: Value,
}

fn ref_value(v: Option<&Value>) -> Value {
    match v {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        _ => Value::Null,
    }
}

fn parse_msg(text: &str) -> Option<Msg> {
    let v: Value = serde_json::from_str(text).ok()?;
    match v {
        Value::Array(a) if a.len() == 5 => Some(Msg {
            join_ref: ref_value(a.first()),
            r: ref_value(a.get(1)),
            topic: a.get(2)?.as_str()?.to_string(),
            event: a.get(3)?.as_str()?.to_string(),
            payload: a.get(4).cloned().unwrap_or(Value::Null),
        }),
        Value::Object(m) => Some(Msg {
            join_ref: ref_value(m.get("join_ref")),
            r: ref_value(m.get("ref")),
            topic: m.get("topic")?.as_str()?.to_string(),
            event: m.get("event")?.as_str()?.to_string(),
            payload: m.get("payload").cloned().unwrap_or(Value::Null),
        }),
        _ => None,
    }
}

/// Parses a binding filter `col=op.value` against the table.
fn parse_filter(table: &str, f: &str) -> Result<(String, Op), String> {
    let (col, expr) = f
        .split_once('=')
        .ok_or_else(|| format!("filter {f:?} is not of the form column=operator.value"))?;
    let def = table_def(table).ok_or_else(|| format!("unknown table {table}"))?;
    if !def.has(col) {
        return Err(format!("column {col:?} does not exist in {table}"));
    }
    match query::parse_op_expr(col, expr) {
        Ok(query::Cond::Leaf { op, .. }) => match op {
            Op::Eq(_)
            | Op::Neq(_)
            | Op::Lt(_)
            | Op::Lte(_)
            | Op::Gt(_)
            | Op::Gte(_)
            | Op::In(_) => Ok((col.to_string(), op)),
            _ => Err(format!(
                "operator in filter {f:?} is not supported; use eq, neq, lt, lte, gt, gte or in"
            )),
        },
        Ok(_) => Err(format!("negated filter {f:?} is not supported")),
        Err(e) => Err(e.details.unwrap_or(e.message)),
    }
}

pub fn handle_upgrade(app: Arc<App>, mut stream: TcpStream, req: Request, leftover: Vec<u8>) {
    app.stats.count_request(crate::faults::PathClass::Realtime);
    let params = util::parse_query(&req.query);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let reject = |stream: &mut TcpStream, status: u16, msg: &str| {
        let _ = write_response(
            stream,
            &Response::json(status, &json!({"message": msg})),
            true,
        );
    };
    if req.method != "GET" {
        return reject(&mut stream, 405, "the websocket endpoint needs GET");
    }
    let key = match req.header("sec-websocket-key") {
        Some(k) => k.to_string(),
        None => return reject(&mut stream, 400, "missing Sec-WebSocket-Key"),
    };
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return reject(
            &mut stream,
            400,
            "unsupported Sec-WebSocket-Version (13 expected)",
        );
    }
    let apikey = param("apikey").or_else(|| req.header("apikey").map(str::to_string));
    match &apikey {
        None => {
            return reject(
                &mut stream,
                401,
                "No API key found in request (apikey query parameter)",
            )
        }
        Some(k) if !app.apikey_ok(k) => return reject(&mut stream, 401, "Invalid API key"),
        _ => {}
    }
    let verdict = app
        .faults
        .take(crate::faults::PathClass::Realtime, &req.method, &req.path);
    if verdict.delay_ms > 0 {
        app.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(verdict.delay_ms));
    }
    if let Some(status) = verdict.fail_status {
        app.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "faults", "failing a websocket upgrade status={status}");
        return reject(
            &mut stream,
            status,
            "Injected fault (panorama-local-backend)",
        );
    }
    let vsn2 = match param("vsn").as_deref() {
        Some("2.0.0") => true,
        None | Some("1.0.0") => false,
        Some(other) => {
            return reject(
                &mut stream,
                400,
                &format!("unsupported serializer vsn={other}; use 1.0.0 or 2.0.0"),
            )
        }
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws::accept_key(&key)
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(IDLE));
    let (writer_stream, hub_stream, reader_stream) =
        match (stream.try_clone(), stream.try_clone(), stream.try_clone()) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return,
        };
    let (tx, rx) = bounded::<Out>(QUEUE);
    let id = {
        let mut h = app.hub.lock();
        h.next_id += 1;
        let id = h.next_id;
        h.conns.insert(
            id,
            Conn {
                tx: tx.clone(),
                vsn2,
                stream: hub_stream,
                channels: HashMap::new(),
            },
        );
        id
    };
    app.stats.ws_total.fetch_add(1, Ordering::Relaxed);
    app.stats.ws_open.fetch_add(1, Ordering::Relaxed);
    log::info!(target: "realtime", "websocket opened conn={id} vsn={}", if vsn2 { "2.0.0" } else { "1.0.0" });
    let writer = std::thread::Builder::new()
        .name("ws-writer".into())
        .spawn(move || writer_loop(writer_stream, rx));
    if writer.is_err() {
        log::error!(target: "realtime", "cannot spawn a writer thread; closing conn={id}");
    } else {
        let mut reader = FrameReader::new(reader_stream, leftover);
        reader_loop(&app, id, vsn2, &tx, &mut reader, apikey.unwrap_or_default());
    }
    app.hub.lock().conns.remove(&id);
    drop(tx);
    let _ = stream.shutdown(Shutdown::Both);
    app.stats.ws_open.fetch_sub(1, Ordering::Relaxed);
    log::info!(target: "realtime", "websocket closed conn={id}");
}

fn writer_loop(mut stream: TcpStream, rx: Receiver<Out>) {
    while let Ok(out) = rx.recv() {
        let (bytes, last) = match out {
            Out::Text(t) => (ws::encode(0x1, t.as_bytes()), false),
            Out::Pong(p) => (ws::encode(0xA, &p), false),
            Out::Close(code, reason) => (ws::close_frame(code, &reason), true),
        };
        if stream.write_all(&bytes).is_err() || last {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn reader_loop(
    app: &App,
    id: u64,
    vsn2: bool,
    tx: &Sender<Out>,
    reader: &mut FrameReader,
    apikey: String,
) {
    loop {
        let text = match reader.read_message() {
            Ok(Incoming::Text(t)) => t,
            Ok(Incoming::Ping(p)) => {
                let _ = tx.try_send(Out::Pong(p));
                continue;
            }
            Ok(Incoming::Pong) | Ok(Incoming::Binary) => continue,
            Ok(Incoming::Close) => {
                let _ = tx.try_send(Out::Close(1000, String::new()));
                return;
            }
            Err(ReadError::Protocol(code, why)) => {
                log::warn!(target: "realtime", "closing conn={id} after a protocol error code={code} reason={why}");
                let _ = tx.try_send(Out::Close(code, why.to_string()));
                return;
            }
            Err(ReadError::Io(e)) => {
                log::debug!(target: "realtime", "read ended conn={id} error={e}");
                return;
            }
        };
        let msg = match parse_msg(&text) {
            Some(m) => m,
            None => {
                log::warn!(target: "realtime", "ignoring a frame that is not a Phoenix message conn={id} bytes={}", text.len());
                continue;
            }
        };
        handle_msg(app, id, vsn2, msg, &apikey);
    }
}

/// Answers message `m` of connection `id` with a `phx_reply` (same refs and topic).
fn send_reply(h: &HubInner, id: u64, vsn2: bool, m: &Msg, status: &str, response: Value) {
    if let Some(c) = h.conns.get(&id) {
        send(c, reply_msg(vsn2, m, status, response));
    }
}

fn handle_msg(app: &App, id: u64, vsn2: bool, m: Msg, apikey: &str) {
    let reply =
        |h: &HubInner, status: &str, response: Value| send_reply(h, id, vsn2, &m, status, response);
    if m.topic == "phoenix" {
        let h = app.hub.lock();
        if m.event == "heartbeat" {
            app.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            reply(&h, "ok", json!({}));
        } else {
            reply(&h, "error", json!({"reason": "unmatched topic"}));
        }
        return;
    }
    match m.event.as_str() {
        "phx_join" => join(app, id, vsn2, &m, apikey),
        "access_token" => {
            let tok = m
                .payload
                .get("access_token")
                .and_then(Value::as_str)
                .map(str::to_string);
            let mut h = app.hub.lock();
            let conn = match h.conns.get_mut(&id) {
                Some(c) => c,
                None => return,
            };
            let Some(tok) = tok else { return };
            match app.principal(&tok) {
                Ok(p) => {
                    if let Some(ch) = conn.channels.get_mut(&m.topic) {
                        ch.principal = p;
                        ch.token = Some(tok);
                    }
                }
                Err(e) => {
                    if let Some(ch) = conn.channels.remove(&m.topic) {
                        for frame in token_close_frames(vsn2, &m.topic, &ch, &token_reason(&e)) {
                            send(conn, frame);
                        }
                    }
                }
            }
        }
        "phx_leave" => {
            let mut h = app.hub.lock();
            let conn = match h.conns.get_mut(&id) {
                Some(c) => c,
                None => return,
            };
            let removed = conn.channels.remove(&m.topic);
            send(conn, reply_msg(vsn2, &m, "ok", json!({})));
            if let Some(ch) = removed {
                send(conn, close_msg(vsn2, &m.topic, &ch));
            }
        }
        _ => {
            let h = app.hub.lock();
            let joined = h
                .conns
                .get(&id)
                .map(|c| c.channels.contains_key(&m.topic))
                .unwrap_or(false);
            if joined {
                reply(&h, "ok", json!({}));
            } else {
                reply(&h, "error", json!({"reason": "unmatched topic"}));
            }
        }
    }
}

fn join(app: &App, id: u64, vsn2: bool, m: &Msg, apikey: &str) {
    let err_reply = |reason: String| {
        app.stats.join_errors.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "realtime", "join refused conn={id} topic={} reason={reason}", m.topic);
        send_reply(
            &app.hub.lock(),
            id,
            vsn2,
            m,
            "error",
            json!({ "reason": reason }),
        );
    };
    let name = match m.topic.strip_prefix("realtime:") {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => return err_reply("unmatched topic".into()),
    };
    if app.faults.take_fail_join() {
        return err_reply("Injected fault (panorama-local-backend): join refused".into());
    }
    let token = m
        .payload
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string);
    let principal = match app.principal(token.as_deref().unwrap_or(apikey)) {
        Ok(p) => p,
        Err(e) => return err_reply(token_reason(&e)),
    };
    let config = m.payload.get("config").cloned().unwrap_or(json!({}));
    let pcs = match config.get("postgres_changes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return err_reply("Unable to subscribe to changes with given parameters: postgres_changes must be an array".into()),
    };
    let mut bindings = Vec::new();
    let mut echoed = Vec::new();
    for pc in &pcs {
        let event = pc
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("*")
            .to_string();
        let schema = pc
            .get("schema")
            .and_then(Value::as_str)
            .unwrap_or("public")
            .to_string();
        let table = pc
            .get("table")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let filter = pc.get("filter").and_then(Value::as_str).map(str::to_string);
        if !["*", "INSERT", "UPDATE", "DELETE"].contains(&event.to_ascii_uppercase().as_str()) {
            return err_reply(format!(
                "Unable to subscribe to changes with given parameters: unknown event {event:?}"
            ));
        }
        if schema != "public" || table_def(&table).is_none() {
            return err_reply(format!("Unable to subscribe to changes with given parameters: unknown table {schema}.{table}"));
        }
        let parsed = match &filter {
            Some(f) => match parse_filter(&table, f) {
                Ok(x) => Some(x),
                Err(e) => {
                    return err_reply(format!(
                        "Unable to subscribe to changes with given parameters: {e}"
                    ))
                }
            },
            None => None,
        };
        let bid = binding_id(&event, &schema, &table, filter.as_deref());
        let mut e = match pc {
            Value::Object(o) => o.clone(),
            _ => serde_json::Map::new(),
        };
        e.insert("id".into(), json!(bid));
        echoed.push(Value::Object(e));
        bindings.push(Binding {
            id: bid,
            event,
            table,
            filter: parsed,
        });
    }
    let close_after = app.faults.take_close_after_join();
    let mut h = app.hub.lock();
    let conn = match h.conns.get_mut(&id) {
        Some(c) => c,
        None => return,
    };
    send(
        conn,
        reply_msg(vsn2, m, "ok", json!({"postgres_changes": echoed})),
    );
    send(conn, push_msg(vsn2, &m.topic, "presence_state", json!({})));
    if !bindings.is_empty() {
        send(
            conn,
            push_msg(
                vsn2,
                &m.topic,
                "system",
                json!({"channel": name, "extension": "postgres_changes", "message": "Subscribed to PostgreSQL", "status": "ok"}),
            ),
        );
    }
    conn.channels.insert(
        m.topic.clone(),
        Chan {
            name: name.clone(),
            join_ref: m.join_ref.clone(),
            bindings,
            token,
            principal,
        },
    );
    app.stats.joins.fetch_add(1, Ordering::Relaxed);
    log::info!(target: "realtime", "channel joined conn={id} channel={name}");
    if close_after {
        log::info!(target: "faults", "closing the connection right after a join conn={id}");
        let _ = conn
            .tx
            .try_send(Out::Close(1011, "injected fault: close after join".into()));
        h.conns.remove(&id);
    }
}
