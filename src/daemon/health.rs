//! The opt-in health and metrics endpoint (`--metrics-addr`, `PANORAMA_GATEWAY_METRICS_ADDR`):
//! `/healthz` (the daemon runs), `/readyz` (connected, heartbeat fresh, a provider healthy)
//! and `/metrics` (Prometheus text format). One thread, one short request per connection;
//! loopback unless an address is given explicitly. Reads the shared state, changes nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::Shared;
use crate::metrics::Gauges;
use crate::providers::ProviderId;
use crate::util::lock;

/// Where to listen: `PORT` or `:PORT` means 127.0.0.1:PORT; `HOST:PORT` is taken as given.
pub fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    let v = v.trim();
    let port_only = v.strip_prefix(':').unwrap_or(v);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    v.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            format!("invalid metrics address {v:?}: use 127.0.0.1:PORT (or just PORT for loopback)")
        })
}

/// Binds the listener (the caller fails the start when this fails).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen for metrics on {addr}: {e}; pick another --metrics-addr (or PANORAMA_GATEWAY_METRICS_ADDR), or leave it unset")
    })
}

/// Serves until the process exits (the thread is not joined: it holds no state to save).
pub(super) fn serve(s: Arc<Shared>, listener: TcpListener, started: Instant) {
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                if let Err(e) = handle(&s, c, started) {
                    log::debug!(target: "metrics", "request failed: {e}");
                }
            }
            Err(e) => {
                log::warn!(target: "metrics", "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if s.shutdown.is_immediate() {
            return;
        }
    }
}

fn handle(s: &Shared, mut c: TcpStream, started: Instant) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    // Only the request line matters; read the head (bounded) and ignore the rest.
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let k = c.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
            || buf[..n].windows(2).any(|w| w == b"\n\n")
        {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => (200, "text/plain", "ok\n".to_string()),
        ("GET" | "HEAD", "/readyz") => {
            let problems = not_ready(s);
            if problems.is_empty() {
                (200, "text/plain", "ready\n".to_string())
            } else {
                (
                    503,
                    "text/plain",
                    format!("not ready: {}\n", problems.join("; ")),
                )
            }
        }
        ("GET" | "HEAD", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            s.metrics.render(&gauges(s, started)),
        ),
        ("GET" | "HEAD", _) => (
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".to_string(),
        ),
        _ => (405, "text/plain", "only GET and HEAD\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    c.write_all(out.as_bytes())
}

fn heartbeat_age(s: &Shared) -> Option<Duration> {
    lock(&s.heartbeat.ok_at).map(|t| t.elapsed())
}

fn healthy_providers(s: &Shared) -> Vec<(String, String)> {
    ProviderId::ALL
        .iter()
        .map(|id| {
            let status = s
                .providers
                .health(*id)
                .map(|h| h.status.as_str().to_string())
                .unwrap_or_else(|| "unknown".into());
            (id.as_str().to_string(), status)
        })
        .collect()
}

/// Why the gateway is not ready; empty when it is.
fn not_ready(s: &Shared) -> Vec<String> {
    let mut why = Vec::new();
    let (state, detail) = s.connection_state();
    if state != "connected" {
        why.push(match detail {
            Some(d) => format!("{state} ({d})"),
            None => state,
        });
    }
    match heartbeat_age(s) {
        None => why.push("no heartbeat accepted yet".into()),
        Some(a) if a > s.tuning.heartbeat * 3 => {
            why.push(format!("last accepted heartbeat {} s ago", a.as_secs()))
        }
        Some(_) => {}
    }
    if !healthy_providers(s).iter().any(|(_, st)| st == "healthy") {
        why.push("no provider CLI is healthy (see panorama-gateway doctor)".into());
    }
    why
}

fn spool_size(s: &Shared) -> (u64, u64) {
    let Ok(rd) = std::fs::read_dir(&s.settings.paths.spool_dir) else {
        return (0, 0);
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

fn gauges(s: &Shared, started: Instant) -> Gauges {
    let (spool_files, spool_bytes) = spool_size(s);
    Gauges {
        connected: s.connection_state().0 == "connected",
        queue_depth: s.channels.to_workers.len(),
        in_flight: s.jobs.len(),
        heartbeat_age_secs: heartbeat_age(s).map(|d| d.as_secs_f64()),
        spool_files,
        spool_bytes,
        token_refreshes: s.session.refresh_count(),
        providers: healthy_providers(s),
        uptime_secs: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(
            parse_addr("0.0.0.0:9464").unwrap().to_string(),
            "0.0.0.0:9464"
        );
        assert!(parse_addr("nonsense")
            .unwrap_err()
            .contains("invalid metrics address"));
    }
}
