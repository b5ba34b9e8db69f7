//! Load generator for scripts/bench-backend.sh (ignored in normal test runs): PostgREST select
//! throughput over keep-alive connections, and realtime fan-out latency INSERT → delivery.
//! Parameters (env): BENCH_SECS (3), BENCH_CLIENTS (8), BENCH_SUBSCRIBERS (50), BENCH_EVENTS (200),
//! BENCH_EVENT_GAP_MS (5).

mod support;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use support::emulator::*;

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// One keep-alive request; returns the status.
fn roundtrip(w: &mut TcpStream, r: &mut BufReader<TcpStream>, req: &[u8]) -> u16 {
    w.write_all(req).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    status
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
#[ignore]
fn bench_rest_select() {
    let secs = env_num("BENCH_SECS", 3);
    let clients = env_num("BENCH_CLIENTS", 8) as usize;
    let b = Backend::start(&[]);
    let g = b.pair(None);
    for _ in 0..100 {
        b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    }
    let addr = b.url.trim_start_matches("http://").to_string();
    let req = format!(
        "GET /rest/v1/gateway_jobs?select=*&team_id=eq.{t}&status=eq.queued&gateway_id=eq.{g}&order=created_at.asc&limit=10 HTTP/1.1\r\nHost: {addr}\r\napikey: {a}\r\nAuthorization: Bearer {tok}\r\nAccept-Profile: public\r\n\r\n",
        t = g.team_id,
        g = g.gateway_id,
        a = b.anon,
        tok = g.access_token
    );
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(clients + 1));
    let mut hs = Vec::new();
    for _ in 0..clients {
        let (addr, req, count, stop, start) = (
            addr.clone(),
            req.clone(),
            count.clone(),
            stop.clone(),
            start.clone(),
        );
        hs.push(std::thread::spawn(move || {
            let mut w = TcpStream::connect(&addr).unwrap();
            w.set_nodelay(true).unwrap();
            let mut r = BufReader::new(w.try_clone().unwrap());
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(roundtrip(&mut w, &mut r, req.as_bytes()), 200);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let n = count.load(Ordering::Relaxed);
    let rps = n as f64 / t0.elapsed().as_secs_f64();
    println!("BENCH rest_select clients={clients} secs={secs} requests={n} rps={rps:.0} (100 rows in table, 10 returned)");
}

#[test]
#[ignore]
fn bench_realtime_fanout() {
    let subs = env_num("BENCH_SUBSCRIBERS", 50) as usize;
    let events = env_num("BENCH_EVENTS", 200) as usize;
    // Pause between inserts, so latency is measured below saturation (0 = back to back).
    let gap = Duration::from_millis(env_num("BENCH_EVENT_GAP_MS", 5));
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let filter = format!("team_id=eq.{}", g.team_id);
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; events]));
    let ready = Arc::new(Barrier::new(subs + 1));
    let mut hs = Vec::new();
    for i in 0..subs {
        let mut rt = b.realtime("2.0.0");
        let reply = rt.join(
            &format!("bench_{i}"),
            "INSERT",
            "gateway_jobs",
            Some(&filter),
            Some(&g.access_token),
        );
        assert_eq!(reply["payload"]["status"], "ok");
        let ready = ready.clone();
        hs.push(std::thread::spawn(move || {
            ready.wait();
            let mut got: Vec<(usize, Instant)> = Vec::with_capacity(events);
            let deadline = Instant::now() + Duration::from_secs(60);
            while got.len() < events && Instant::now() < deadline {
                // Minimal work per frame (no JSON parse) so the reader measures the server.
                let text = match rt.ws.read() {
                    Ok(tungstenite::Message::Text(t)) => t,
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        continue
                    }
                    Err(e) => panic!("subscriber read failed: {e}"),
                };
                let at = Instant::now();
                if let Some(pos) = text.as_str().find("\"seq\":") {
                    let digits: String = text.as_str()[pos + 6..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    got.push((digits.parse::<usize>().unwrap(), at));
                }
            }
            got
        }));
    }
    ready.wait();
    let agent = ureq::AgentBuilder::new().build();
    let url = format!("{}/rest/v1/gateway_jobs", b.url);
    let t_all = Instant::now();
    for seq in 0..events {
        let body = json!({"team_id": g.team_id, "gateway_id": g.gateway_id, "job_type": "bench", "payload": {"seq": seq}}).to_string();
        sent.lock().unwrap()[seq] = Some(Instant::now());
        let r = agent
            .post(&url)
            .set("apikey", &b.service)
            .set("Authorization", &format!("Bearer {}", b.service))
            .set("Content-Type", "application/json")
            .send_string(&body)
            .unwrap();
        assert_eq!(r.status(), 201);
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    let insert_secs = t_all.elapsed().as_secs_f64();
    let sent = sent.lock().unwrap().clone();
    let mut lat: Vec<Duration> = Vec::new();
    let mut missing = 0usize;
    for h in hs {
        let got = h.join().unwrap();
        missing += events - got.len();
        for (seq, at) in got {
            lat.push(at.saturating_duration_since(sent[seq].unwrap()));
        }
    }
    lat.sort();
    println!(
        "BENCH realtime_fanout subscribers={subs} events={events} gap_ms={} deliveries={} missing={missing} inserts_per_s={:.0} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        gap.as_millis(),
        lat.len(),
        events as f64 / insert_secs,
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    assert_eq!(missing, 0, "every subscriber must receive every event");
}
