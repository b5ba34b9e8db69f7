//! The opt-in health and metrics endpoint (issue 13): `/metrics` is parsed by the reference
//! Python client's parser (`prometheus_client`, installed by .ci/run into a venv named by
//! PANORAMA_PROMETHEUS_PYTHON); `/healthz` and `/readyz` follow the daemon's state.
//! PANORAMA_SKIP_PROMETHEUS_TESTS=1 skips the parse explicitly (like PANORAMA_SKIP_NODE_TESTS).

mod connect_support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use connect_support::*;
use serde_json::{json, Value};

/// (status code, body) of `GET path` on the endpoint.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let code = s
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = s
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

/// The metric families as the Python client parses them: {name: {type, samples: [[name,
/// labels, value]]}}. None when skipped explicitly.
fn parse_with_prometheus_client(text: &str) -> Option<Value> {
    if std::env::var("PANORAMA_SKIP_PROMETHEUS_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIP the prometheus_client parse: PANORAMA_SKIP_PROMETHEUS_TESTS=1");
        return None;
    }
    // The variable, else the venv .ci/run makes, else python3.
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ci-venv/bin/python");
    let python = std::env::var("PANORAMA_PROMETHEUS_PYTHON").unwrap_or_else(|_| {
        if std::path::Path::new(venv).exists() {
            venv.into()
        } else {
            "python3".into()
        }
    });
    let script = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [
        [s.name, s.labels, None if math.isnan(s.value) else s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; set PANORAMA_PROMETHEUS_PYTHON to a python with prometheus_client (.ci/run makes one), or PANORAMA_SKIP_PROMETHEUS_TESTS=1 to skip"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics ({python}): {err}\n--- text ---\n{text}\nNo prometheus_client? `python3 -m venv v && v/bin/pip install prometheus_client`, then PANORAMA_PROMETHEUS_PYTHON=v/bin/python (or PANORAMA_SKIP_PROMETHEUS_TESTS=1 to skip)"
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn sample(families: &Value, family: &str, name: &str, labels: Value) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| {
            s[0] == name
                && labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &s[1][k] == v)
        })
        .and_then(|s| s[2].as_f64())
}

#[test]
fn metrics_parse_and_health_follows_the_daemon() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    fake_cli_dirs(&mut gw);
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    let claude = format!("{}/tests/fixtures/bin/claude", env!("CARGO_MANIFEST_DIR"));
    gw.start_with(&["--claude-cli", &claude, "--metrics-addr", "127.0.0.1:0"]);
    let addr = wait_for(
        "the metrics address in the status file",
        Duration::from_secs(20),
        || {
            gw.status_file()["metrics_addr"]
                .as_str()
                .map(str::to_string)
        },
    );
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_string()));
    let mut last = String::new();
    let ready = (0..300).any(|_| {
        let (c, body) = get(&addr, "/readyz");
        last = body;
        c == 200 || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(ready, "/readyz never said ready: {last}");
    let ok = b.insert_job(&team, &gid, "diagnostic", json!({}));
    let bad = b.insert_job(&team, &gid, "no_such_type", json!({}));
    for id in [&ok, &bad] {
        wait_job_done(&b, id, Duration::from_secs(30));
    }
    // One realtime drop: the reconnect is counted.
    b.fault(json!({"drop_realtime": true}));
    wait_for(
        "the reconnect to be counted",
        Duration::from_secs(30),
        || {
            get(&addr, "/metrics")
                .1
                .contains("panorama_gateway_realtime_reconnects_total 1")
                .then_some(())
        },
    );
    let (code, text) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(get(&addr, "/nope").0, 404);

    if let Some(f) = parse_with_prometheus_client(&text) {
        let jobs = |t: &str, o: &str| {
            sample(
                &f,
                "panorama_gateway_jobs",
                "panorama_gateway_jobs_total",
                json!({"type": t, "outcome": o}),
            )
        };
        assert_eq!(jobs("diagnostic", "completed"), Some(1.0), "{text}");
        assert_eq!(jobs("no_such_type", "failed"), Some(1.0), "{text}");
        assert_eq!(f["panorama_gateway_jobs"]["type"], "counter");
        assert_eq!(
            f["panorama_gateway_job_duration_seconds"]["type"],
            "histogram"
        );
        let d = "panorama_gateway_job_duration_seconds";
        assert_eq!(
            sample(&f, d, &format!("{d}_count"), json!({"type": "diagnostic"})),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &f,
                d,
                &format!("{d}_bucket"),
                json!({"type": "diagnostic", "le": "+Inf"})
            ),
            Some(1.0)
        );
        for (fam, want) in [
            ("panorama_gateway_queue_depth", Some(0.0)),
            ("panorama_gateway_jobs_in_flight", Some(0.0)),
            ("panorama_gateway_realtime_reconnects", Some(1.0)),
            ("panorama_gateway_spool_files", Some(0.0)),
        ] {
            let name = if fam.ends_with("reconnects") {
                format!("{fam}_total")
            } else {
                fam.to_string()
            };
            assert_eq!(sample(&f, fam, &name, json!({})), want, "{fam}: {text}");
        }
        assert!(sample(
            &f,
            "panorama_gateway_token_refreshes",
            "panorama_gateway_token_refreshes_total",
            json!({})
        )
        .is_some());
        let age = sample(
            &f,
            "panorama_gateway_heartbeat_age_seconds",
            "panorama_gateway_heartbeat_age_seconds",
            json!({}),
        )
        .unwrap();
        assert!((0.0..30.0).contains(&age), "{age}");
        assert_eq!(
            sample(
                &f,
                "panorama_gateway_provider_healthy",
                "panorama_gateway_provider_healthy",
                json!({"provider": "claude_code", "status": "healthy"})
            ),
            Some(1.0),
            "{text}"
        );
    }

    // The backend goes away: not ready, with the reason; still alive.
    drop(b);
    let body = wait_for("/readyz to say not ready", Duration::from_secs(30), || {
        let (c, body) = get(&addr, "/readyz");
        (c == 503).then_some(body)
    });
    assert!(body.starts_with("not ready: "), "{body}");
    assert_eq!(get(&addr, "/healthz").0, 200);
    gw.stop(Duration::from_secs(30));
}

#[test]
fn a_busy_metrics_port_fails_the_start_with_a_clear_error() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let (code, _) = b.pairing_code(None);
    gw.pair(&code);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = gw
        .command(&["start", "--foreground"])
        .env("PANORAMA_GATEWAY_METRICS_ADDR", &addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen for metrics on {addr}")),
        "{err}"
    );
    assert!(err.contains("--metrics-addr"), "{err}");
}
