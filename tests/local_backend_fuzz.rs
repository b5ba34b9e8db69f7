//! Malformed input never crashes the local backend: a deterministic stream of random and
//! adversarial requests and websocket frames, then a check that it still serves correctly.

mod support;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::emulator::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn send_raw(addr: &str, data: &[u8]) {
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = s.write_all(data);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

#[test]
fn random_and_adversarial_input_never_kills_the_server() {
    let b = Backend::start(&[]);
    let g = b.pair(None);
    let addr = b.url.trim_start_matches("http://").to_string();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let methods = ["GET", "POST", "PATCH", "DELETE", "HEAD", "PUT", "BREW", ""];
    let paths = [
        "/rest/v1/gateway_jobs",
        "/rest/v1/rpc/admin_create_pairing_code",
        "/rest/v1/team_gateways?select=*,x(*)",
        "/rest/v1/gateway_jobs?or=(((",
        "/rest/v1/gateway_jobs?status=in.(\"a,b\"",
        "/rest/v1/gateway_jobs?created_at=gt.9999-99-99T99:99",
        "/rest/v1/gateway_jobs?order=status.sideways",
        "/rest/v1/gateway_jobs?limit=-1&offset=abc",
        "/functions/v1/exchange-gateway-pairing-code",
        "/functions/v1/gateway-heartbeat",
        "/functions/v1/finalize-gateway-subagent-run",
        "/auth/v1/token?grant_type=refresh_token",
        "/auth/v1/user",
        "/admin/v1/faults",
        "/%ff%fe/%00",
        "/realtime/v1/websocket",
    ];
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let bodies = [
        "",
        "{",
        "null",
        "[]",
        "[1,2,3]",
        "{\"status\": {\"nested\": [1, {\"a\": null}]}}",
        "{\"team_id\": 12, \"job_type\": [], \"attempt\": 1e400}",
        "{\"attempt\": \"not a number\", \"id\": \"zzz\"}",
        "{\"code\": 5, \"device_name\": {}}",
        "{\"refresh_token\": null}",
        "{\"fail_next\": {\"count\": -1}}",
        "\u{0}\u{1}\u{2}",
        deep.as_str(),
    ];
    let keys = [
        b.anon.as_str(),
        b.service.as_str(),
        g.access_token.as_str(),
        "garbage",
        "a.b.c",
    ];
    for _ in 0..300 {
        let method = rng.pick(&methods);
        let path = rng.pick(&paths);
        let body = rng.pick(&bodies);
        let key = rng.pick(&keys);
        let variant = rng.next() % 6;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\napikey: {key}\r\nAuthorization: Bearer {key}\r\n");
        match variant {
            0 => req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len())),
            1 => req.push_str(&format!(
                "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )),
            2 => req.push_str(&format!(
                "Content-Length: {}\r\n\r\n{body}",
                body.len() + 10
            )), // short body
            3 => req.push_str(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            ),
            4 => req.push_str(&format!("Content-Length: {}\r\n\r\n", rng.next())),
            _ => {
                let junk = rng.bytes(64);
                let mut bytes = req.into_bytes();
                bytes.extend_from_slice(&junk);
                send_raw(&addr, &bytes);
                continue;
            }
        }
        send_raw(&addr, req.as_bytes());
    }
    // Websocket: random frames after a valid upgrade.
    for i in 0..30 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let up = format!(
            "GET /realtime/v1/websocket?apikey={}&vsn={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b.anon,
            if i % 2 == 0 { "2.0.0" } else { "1.0.0" }
        );
        let _ = s.write_all(up.as_bytes());
        let n = 1 + (rng.next() % 200) as usize;
        let _ = s.write_all(&rng.bytes(n));
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // Valid-looking but hostile Phoenix messages.
    let mut rt = b.realtime("2.0.0");
    for text in [
        "[null,null,\"realtime:x\",\"phx_join\",{\"config\":{\"postgres_changes\":\"nope\"}}]",
        "[null,null,\"realtime:x\",\"phx_join\",{\"config\":{\"postgres_changes\":[1,2]}}]",
        "[null,null,\"realtime:x\",\"phx_join\",{\"config\":{\"postgres_changes\":[{\"table\":\"gateway_jobs\",\"filter\":\"status=in.(\"}]}}]",
        "[null,null,\"realtime:x\",\"access_token\",{\"access_token\":42}]",
        "[null,null,\"realtime:\",\"phx_join\",{}]",
        "[1,2,3,4,5]",
        "{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":7,\"ref\":{}}",
    ] {
        rt.ws.send(tungstenite::Message::text(text)).unwrap();
    }
    rt.send(None, Some("99"), "phoenix", "heartbeat", json!({}));
    rt.wait_for(Duration::from_secs(5), |m| m["ref"] == "99");

    // Deep nesting in query strings is refused, not a stack overflow.
    let deep_or = format!(
        "/rest/v1/gateway_jobs?or=({}status.eq.x{})",
        "or(".repeat(10_000),
        ")".repeat(10_000)
    );
    let r = b.req("GET", &deep_or, &g.access_token, None);
    assert_eq!(r.status, 400);
    let many_nots = format!(
        "/rest/v1/gateway_jobs?status={}eq.queued",
        "not.".repeat(10_000)
    );
    let r = b.req("GET", &many_nots, &g.access_token, None);
    assert_eq!(r.status, 200);

    // Still fully functional.
    let mut rt2 = b.realtime("2.0.0");
    rt2.join(
        "after",
        "INSERT",
        "gateway_jobs",
        None,
        Some(&g.access_token),
    );
    b.enqueue(&g.team_id, Some(&g.gateway_id), json!({}));
    rt2.wait_for(Duration::from_secs(5), |m| m["event"] == "postgres_changes");
    let r = b.req(
        "GET",
        "/rest/v1/gateway_jobs?select=id",
        &g.access_token,
        None,
    );
    assert_eq!(r.status, 200);
}
