//! A small blocking HTTP/1.1 server: one thread per connection, keep-alive, Content-Length and
//! chunked request bodies, request heads parsed with httparse. The websocket upgrade on
//! `/realtime/v1/websocket` is handed to the realtime module with any bytes already read.

use crate::app::App;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Largest request head accepted (431 beyond).
const MAX_HEAD: usize = 64 * 1024;
/// A keep-alive connection idle for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A response (or websocket frame) that cannot be written for this long drops the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Request {
    pub method: String,
    /// Path without the query string, percent-decoded.
    pub path: String,
    /// Raw query string (not decoded).
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &Value) -> Response {
        Response {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: v.to_string().into_bytes(),
        }
    }

    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

pub fn write_response(stream: &mut TcpStream, resp: &Response, close: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    } else {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    stream.write_all(&out)?;
    stream.flush()
}

/// Accepts connections forever, one thread each.
pub fn serve(app: Arc<App>, listener: TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let app = app.clone();
                let spawned = std::thread::Builder::new()
                    .name("http-conn".into())
                    .spawn(move || serve_connection(app, stream));
                if let Err(e) = spawned {
                    log::error!(target: "http", "cannot spawn a connection thread error={e}");
                }
            }
            Err(e) => {
                log::warn!(target: "http", "accept failed error={e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

enum Head {
    Parsed {
        req: Request,
        head_len: usize,
        http10: bool,
    },
    Partial,
    Bad(u16, &'static str),
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let method = r.method.unwrap_or("GET").to_string();
            let target = r.path.unwrap_or("/");
            // Absolute form (`GET https://host:port/path`, RFC 9112 §3.2.2): what clients
            // send through an HTTP proxy, also inside a CONNECT tunnel.
            let target = match target.split_once("://") {
                Some((scheme, rest)) if !scheme.contains('/') => {
                    rest.find('/').map(|i| &rest[i..]).unwrap_or("/")
                }
                _ => target,
            };
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, q.to_string()),
                None => (target, String::new()),
            };
            let headers = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Head::Parsed {
                req: Request {
                    method,
                    path: crate::util::url_decode(&path.replace('+', "%2B")),
                    query,
                    headers,
                    body: Vec::new(),
                },
                head_len: n,
                http10: r.version == Some(0),
            }
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Bad(431, "too many headers"),
        Err(_) => Head::Bad(400, "malformed request head"),
    }
}

fn error_body(status: u16, msg: &str) -> Response {
    Response::json(
        status,
        &serde_json::json!({"code": status.to_string(), "message": msg, "details": null, "hint": null}),
    )
}

/// Reads more bytes into `buf`; Ok(false) on EOF.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Ok(false);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(true)
}

enum BodyResult {
    Ok(Vec<u8>),
    TooLarge,
    Bad(&'static str),
    Eof,
}

/// Decodes a chunked body starting at buf[0]; on success removes the consumed bytes.
fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<BodyResult> {
    let mut body = Vec::new();
    let mut pos = 0usize;
    loop {
        // Chunk size line.
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            if buf.len() - pos > 4096 {
                return Ok(BodyResult::Bad("chunk size line too long"));
            }
            if !fill(stream, buf)? {
                return Ok(BodyResult::Eof);
            }
        };
        let line = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = match usize::from_str_radix(size_str, 16) {
            Ok(s) => s,
            Err(_) => return Ok(BodyResult::Bad("bad chunk size")),
        };
        pos = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = loop {
                    if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                        break pos + i;
                    }
                    if buf.len() - pos > 8192 {
                        return Ok(BodyResult::Bad("trailers too long"));
                    }
                    if !fill(stream, buf)? {
                        return Ok(BodyResult::Eof);
                    }
                };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    buf.drain(..pos);
                    return Ok(BodyResult::Ok(body));
                }
            }
        }
        if size > MAX_BODY || body.len() + size > MAX_BODY {
            return Ok(BodyResult::TooLarge);
        }
        while buf.len() < pos + size + 2 {
            if !fill(stream, buf)? {
                return Ok(BodyResult::Eof);
            }
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Ok(BodyResult::Bad("chunk not terminated by CRLF"));
        }
        pos += size + 2;
        // Keep the buffer from growing with consumed bytes.
        if pos > 64 * 1024 {
            buf.drain(..pos);
            pos = 0;
        }
    }
}

fn serve_connection(app: Arc<App>, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    // A client that stops reading must not hold a thread forever.
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    app.stats.http_connection_opened();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Read a complete head.
        let (mut req, head_len, http10) = loop {
            if !buf.is_empty() {
                match parse_head(&buf) {
                    Head::Parsed {
                        req,
                        head_len,
                        http10,
                    } => break (req, head_len, http10),
                    Head::Bad(status, msg) => {
                        let _ = write_response(&mut stream, &error_body(status, msg), true);
                        return;
                    }
                    Head::Partial => {}
                }
                if buf.len() > MAX_HEAD {
                    let _ = write_response(
                        &mut stream,
                        &error_body(431, "request head too large"),
                        true,
                    );
                    return;
                }
            }
            match fill(&mut stream, &mut buf) {
                Ok(true) => {}
                _ => return, // EOF, idle timeout or reset
            }
        };
        buf.drain(..head_len);

        let conn_hdr = req.header("connection").unwrap_or("").to_ascii_lowercase();
        let mut close = if http10 {
            !conn_hdr.contains("keep-alive")
        } else {
            conn_hdr.split(',').any(|t| t.trim() == "close")
        };

        if req.path == "/realtime/v1/websocket"
            && req
                .header("upgrade")
                .map(|u| u.eq_ignore_ascii_case("websocket"))
                .unwrap_or(false)
        {
            crate::realtime::handle_upgrade(app, stream, req, buf);
            return;
        }

        if req
            .header("expect")
            .map(|e| e.eq_ignore_ascii_case("100-continue"))
            .unwrap_or(false)
        {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }

        let chunked = req
            .header("transfer-encoding")
            .map(|t| t.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            match read_chunked(&mut stream, &mut buf) {
                Ok(BodyResult::Ok(b)) => req.body = b,
                Ok(BodyResult::TooLarge) => {
                    let _ = write_response(
                        &mut stream,
                        &error_body(413, "request body larger than 8 MiB"),
                        true,
                    );
                    return;
                }
                Ok(BodyResult::Bad(msg)) => {
                    let _ = write_response(&mut stream, &error_body(400, msg), true);
                    return;
                }
                Ok(BodyResult::Eof) | Err(_) => return,
            }
        } else if let Some(cl) = req.header("content-length") {
            let len = match cl.trim().parse::<usize>() {
                Ok(n) => n,
                Err(_) => {
                    let _ = write_response(
                        &mut stream,
                        &error_body(400, "invalid Content-Length"),
                        true,
                    );
                    return;
                }
            };
            if len > MAX_BODY {
                let _ = write_response(
                    &mut stream,
                    &error_body(413, "request body larger than 8 MiB"),
                    true,
                );
                return;
            }
            while buf.len() < len {
                match fill(&mut stream, &mut buf) {
                    Ok(true) => {}
                    _ => return,
                }
            }
            req.body = buf.drain(..len).collect();
        }

        let resp = crate::router::route(&app, &req);
        if resp.status == 413 {
            close = true;
        }
        if write_response(&mut stream, &resp, close).is_err() || close {
            return;
        }
    }
}
