//! `--log-format json` (issue 13): one redacted JSON object per line, and `logs` shows a log
//! that holds both formats (a daemon restarted with the other format appends to the same file).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::connect::*;

#[test]
fn json_log_lines_are_objects_and_logs_shows_both_formats() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    let secrets: Vec<String> = ["accessToken", "refreshToken"]
        .iter()
        .map(|k| gw.state()[k].as_str().unwrap().to_string())
        .collect();

    gw.start_with(&["--log-format", "json"]);
    gw.wait_connection(
        "the json daemon to connect",
        "connected",
        Duration::from_secs(20),
    );
    let id = b.insert_job(&team, &gid, "no_such_type", json!({}));
    wait_job_done(&b, &id, Duration::from_secs(20));
    assert!(gw.stop(Duration::from_secs(20)).success());
    let log = std::fs::read_to_string(gw.config_dir().join("gateway.log")).unwrap();
    let mut objects = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for k in ["ts", "level", "component", "msg"] {
            assert!(v[k].is_string(), "{k} in {line}");
        }
        objects += 1;
    }
    assert!(objects >= 3, "{log}");
    assert!(log.contains(r#""component":"worker""#), "{log}");
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a token reached the log");
    }

    // Same file, text this time (PANORAMA_GATEWAY_LOG_FORMAT unset means text).
    gw.start();
    gw.wait_connection(
        "the text daemon to connect",
        "connected",
        Duration::from_secs(20),
    );
    assert!(gw.stop(Duration::from_secs(20)).success());
    let (rc, out, err) = gw.run(&["logs", "--no-follow", "--lines", "10000"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains(r#""msg":"gateway running""#), "{out}");
    assert!(out.contains(" INFO  [runtime] gateway running"), "{out}");

    let (rc, _, err) = gw.run(&["status", "--log-format", "xml"]);
    assert_eq!(rc, 2);
    assert!(err.contains("unknown log format \"xml\""), "{err}");
}
