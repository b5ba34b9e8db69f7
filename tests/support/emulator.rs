//! Shared helpers for the local backend's integration tests: start the real binary on an
//! ephemeral loopback port, talk HTTP with ureq and realtime with a tungstenite client.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub use super::wait_until;

pub struct Backend {
    child: Child,
    pub url: String,
    pub anon: String,
    pub service: String,
    /// The raw ready line printed on stdout.
    pub ready_line: String,
    agent: ureq::Agent,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "plb-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub gateway_id: String,
    pub team_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub body: Value,
}

impl Backend {
    pub fn start(extra: &[&str]) -> Backend {
        // The bench script points this at a release build; tests use cargo's binary.
        let bin = std::env::var_os("PANORAMA_LOCAL_BACKEND_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_panorama-local-backend").into());
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if std::env::var_os("PANORAMA_TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn panorama-local-backend");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("panorama-local-backend printed no ready line within 20 s");
            }
        };
        let v: Value = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ready line is not JSON ({e}): {line:?}");
            }
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .build();
        Backend {
            child,
            url: v["url"].as_str().unwrap().to_string(),
            anon: v["anon_key"].as_str().unwrap().to_string(),
            service: v["service_role_key"].as_str().unwrap().to_string(),
            ready_line: line,
            agent,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `sig` and waits for the exit status.
    pub fn stop_with(mut self, sig: i32) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "backend did not stop after signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Any request; `token` is the bearer (the apikey is the anon key unless `apikey` given).
    pub fn req_full(
        &self,
        method: &str,
        path: &str,
        apikey: Option<&str>,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut r = self.agent.request(method, &format!("{}{}", self.url, path));
        if let Some(k) = apikey {
            r = r.set("apikey", k);
        }
        if let Some(t) = token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in headers {
            r = r.set(k, v);
        }
        let res = match body {
            Some(b) => r.set("Content-Type", "application/json").send_string(b),
            None => r.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: transport error {e}"),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .map(|n| {
                let v = resp.header(&n).unwrap_or("").to_string();
                (n, v)
            })
            .collect();
        let body = resp.into_string().unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn req(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
        self.req_headers(method, path, token, &[], body)
    }

    /// Request with `Prefer: return=representation`.
    pub fn req_repr(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
        self.req_headers(
            method,
            path,
            token,
            &[("Prefer", "return=representation")],
            body,
        )
    }

    /// Request with the anon apikey, bearer `token`, extra `headers` and a JSON `body`.
    fn req_headers(
        &self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Resp {
        let b = body.map(|v| v.to_string());
        self.req_full(
            method,
            path,
            Some(&self.anon),
            Some(token),
            headers,
            b.as_deref(),
        )
    }

    /// `GET /auth/v1/user` with the anon apikey and `bearer`.
    pub fn get_user(&self, bearer: &str) -> Resp {
        self.req_full(
            "GET",
            "/auth/v1/user",
            Some(&self.anon),
            Some(bearer),
            &[],
            None,
        )
    }

    /// A refresh-token grant for `refresh_token` with the anon key and `headers`.
    pub fn refresh_with(&self, refresh_token: &str, headers: &[(&str, &str)]) -> Resp {
        self.req_full(
            "POST",
            "/auth/v1/token?grant_type=refresh_token",
            Some(&self.anon),
            Some(&self.anon),
            headers,
            Some(&json!({ "refresh_token": refresh_token }).to_string()),
        )
    }

    /// A refresh-token grant for `refresh_token` with the anon key.
    pub fn refresh(&self, refresh_token: &str) -> Resp {
        self.refresh_with(refresh_token, &[])
    }

    /// A `gateway-heartbeat` call reporting `ready`, with `token`.
    pub fn heartbeat_ready(&self, token: &str) -> Resp {
        self.req(
            "POST",
            "/functions/v1/gateway-heartbeat",
            token,
            Some(&json!({"status": "ready"})),
        )
    }

    pub fn service(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let b = body.map(|v| v.to_string());
        self.req_full(
            method,
            path,
            Some(&self.service),
            Some(&self.service),
            &[("Prefer", "return=representation")],
            b.as_deref(),
        )
    }

    pub fn pairing_code(&self, team: Option<&str>) -> Value {
        let body = match team {
            Some(t) => json!({"team_id": t}),
            None => json!({}),
        };
        let r = self.service(
            "POST",
            "/rest/v1/rpc/admin_create_pairing_code",
            Some(&body),
        );
        assert_eq!(r.status, 200, "admin_create_pairing_code: {}", r.body);
        r.json()
    }

    pub fn exchange(&self, code: &str) -> Resp {
        self.req_full(
            "POST",
            "/functions/v1/exchange-gateway-pairing-code",
            Some(&self.anon),
            Some(&self.anon),
            &[],
            Some(&json!({"code": code, "device_name": "test-box"}).to_string()),
        )
    }

    /// Pairs a new gateway (into `team` if given, else a new team).
    pub fn pair(&self, team: Option<&str>) -> Gateway {
        let code = self.pairing_code(team);
        let r = self.exchange(code["code"].as_str().unwrap());
        assert_eq!(r.status, 200, "pairing exchange: {}", r.body);
        let v = r.json();
        Gateway {
            gateway_id: v["gateway_id"].as_str().unwrap().into(),
            team_id: v["team_id"].as_str().unwrap().into(),
            access_token: v["access_token"].as_str().unwrap().into(),
            refresh_token: v["refresh_token"].as_str().unwrap().into(),
            body: v,
        }
    }

    /// Inserts a queued job as the service role and returns the row.
    pub fn enqueue(&self, team: &str, gateway: Option<&str>, extra: Value) -> Value {
        let mut body = json!({"team_id": team, "gateway_id": gateway, "job_type": "diagnostic", "payload": {}});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let r = self.service("POST", "/rest/v1/gateway_jobs", Some(&body));
        assert_eq!(r.status, 201, "enqueue: {}", r.body);
        r.json()[0].clone()
    }

    pub fn fault(&self, body: Value) -> Resp {
        let r = self.service("POST", "/admin/v1/faults", Some(&body));
        assert_eq!(r.status, 200, "fault {body}: {}", r.body);
        r
    }

    pub fn stats(&self) -> Value {
        let r = self.service("GET", "/admin/v1/stats", None);
        assert_eq!(r.status, 200);
        r.json()
    }

    pub fn ws_url(&self, vsn: &str) -> String {
        format!(
            "{}/realtime/v1/websocket?apikey={}&vsn={vsn}",
            self.url.replacen("http://", "ws://", 1),
            self.anon
        )
    }

    pub fn realtime(&self, vsn: &str) -> Rt {
        Rt::connect(&self.ws_url(vsn), vsn == "2.0.0")
    }
}

/// A Phoenix client over tungstenite for tests; messages are normalised to objects.
pub struct Rt {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
    pub vsn2: bool,
    next_ref: u64,
}

impl Rt {
    pub fn connect(url: &str, vsn2: bool) -> Rt {
        let (ws, resp) = tungstenite::connect(url).expect("websocket connect");
        assert_eq!(resp.status().as_u16(), 101);
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        Rt {
            ws,
            vsn2,
            next_ref: 1,
        }
    }

    pub fn send(
        &mut self,
        join_ref: Option<&str>,
        r: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let text = if self.vsn2 {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": r, "topic": topic, "event": event, "payload": payload})
                .to_string()
        };
        self.ws.send(Message::text(text)).expect("websocket send");
    }

    pub fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Next text message (normalised to an object), or None on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("server frame is JSON");
                    return Some(match v {
                        Value::Array(a) => {
                            assert!(self.vsn2, "vsn 1.0.0 socket got an array frame: {a:?}");
                            json!({"join_ref": a[0], "ref": a[1], "topic": a[2], "event": a[3], "payload": a[4]})
                        }
                        Value::Object(_) => {
                            assert!(!self.vsn2, "vsn 2.0.0 socket got an object frame: {v}");
                            v
                        }
                        other => panic!("unexpected frame {other}"),
                    });
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("websocket read failed: {e}"),
            }
        }
    }

    /// Waits for the first message matching `pred`, skipping others.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!("no matching realtime message within {timeout:?}"),
            }
        }
    }

    /// Collects everything that arrives within `window`.
    pub fn drain(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(v) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            out.push(v);
            if Instant::now() >= deadline {
                break;
            }
        }
        out
    }

    /// True once the server closed or dropped the connection.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if Instant::now() >= deadline {
                        return false;
                    }
                }
                Err(_) => return true,
            }
        }
    }

    /// Joins `realtime:jobs` for every `gateway_jobs` INSERT (no filter) with `token`.
    pub fn join_jobs(&mut self, token: &str) -> Value {
        self.join("jobs", "INSERT", "gateway_jobs", None, Some(token))
    }

    /// Joins `realtime:<channel>` with one postgres_changes binding; returns the ok reply.
    pub fn join(
        &mut self,
        channel: &str,
        event: &str,
        table: &str,
        filter: Option<&str>,
        token: Option<&str>,
    ) -> Value {
        let jr = self.fresh_ref();
        let mut binding = json!({"event": event, "schema": "public", "table": table});
        if let Some(f) = filter {
            binding["filter"] = json!(f);
        }
        let mut payload = json!({"config": {"broadcast": {"ack": false, "self": false},
            "presence": {"key": "", "enabled": false}, "postgres_changes": [binding], "private": false}});
        if let Some(t) = token {
            payload["access_token"] = json!(t);
        }
        let topic = format!("realtime:{channel}");
        self.send(Some(&jr), Some(&jr), &topic, "phx_join", payload);
        let jr2 = jr.clone();
        self.wait_for(Duration::from_secs(5), move |m| {
            m["event"] == "phx_reply" && m["ref"] == json!(jr2)
        })
    }
}
