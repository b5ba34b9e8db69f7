//! model_run failures against the fake CLIs: payload validation, named CLI errors, exit
//! status and bad output, missing CLIs, timeouts, output floods, cancellation.

use super::*;

// ---------------------------------------------------------------- model_run: failures

#[test]
fn payload_validation_errors() {
    let s = Scratch::new("payload");
    let reg = Arc::new(Registry::default());
    reg.set_work_root(s.path().join("work"));
    let o = run_job(&reg, "j", json!({"prompt": "", "model": "x"}));
    assert_eq!(o.status, FinalStatus::Failed);
    assert_eq!(
        o.result.unwrap(),
        json!({"message": "Missing prompt or model for gateway model run"})
    );
    assert_eq!(o.error.as_deref(), Some("Missing prompt or model"));
    assert!(o.debug.is_none());
    let o = run_job(
        &reg,
        "j",
        json!({"prompt": "p", "model": "x", "output_format": "JSON"}),
    );
    assert_eq!(o.error.as_deref(), Some("Missing json_schema"));
    let job =
        crate::jobs::model_run::ModelRunPayload::parse(&json!({"prompt": "p", "model": "gemini-x",
        "provider": "nope", "output_format": "text", "timeout_ms": -5, "reasoning_effort": "max"}))
        .unwrap();
    let (p, req) = (job.provider, job.request);
    assert_eq!(p, ProviderId::Gemini);
    assert_eq!(req.timeout, Duration::from_millis(110_000));
    assert_eq!(req.reasoning_effort, None);
    let o = run_job(
        &reg,
        "../evil",
        json!({"prompt": "p", "model": "m", "output_format": "text"}),
    );
    assert_eq!(
        o.result.unwrap()["message"],
        "Gateway job processing failed"
    );
}

#[test]
fn auth_and_rate_limit_errors_are_named() {
    let s = Scratch::new("auth");
    let reg = s.registry(
        &[("FAKE_CLI_MODE", "auth_error")],
        &[("FAKE_CLI_MODE", "rate_limit")],
        &[("FAKE_CLI_MODE", "auth_error")],
    );
    let schema = json!({"type": "object"});
    let o = run_job(
        &reg,
        "a1",
        json!({"prompt": "p", "model": "claude-x", "json_schema": schema}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "auth");
    assert!(m.starts_with("Gateway provider Claude is unhealthy. Try another provider or run \"panorama-gateway doctor\". Details: "), "{m}");
    assert!(m.contains("Invalid API key"), "{m}");
    assert!(m.contains("log in"), "{m}");
    assert_eq!(o.result.as_ref().unwrap()["exit_code"], 1);
    assert_eq!(claude_status(&reg), Status::Unhealthy);

    let o = run_job(
        &reg,
        "a2",
        json!({"prompt": "p", "model": "gpt-5", "json_schema": schema}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "rate_limit");
    assert!(m.contains("Rate limit reached"), "{m}");
    let r = o.result.unwrap();
    assert_eq!(r["error_summary"]["code"], "rate_limit_exceeded");
    assert!(r["stderr"]
        .as_str()
        .unwrap()
        .contains("ERROR: unexpected status 429"));
    assert!(r["stderr"].as_str().unwrap().contains("429"));

    let o = run_job(
        &reg,
        "a3",
        json!({"prompt": "p", "model": "gemini-2.5-pro", "output_format": "text"}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "auth");
    assert!(m.contains("GEMINI_API_KEY"), "{m}");
}

#[test]
fn exit_status_bad_output_and_missing_message_failures() {
    let s = Scratch::new("bad");
    let reg = s.registry(
        &[("FAKE_CLI_MODE", "bad_json")],
        &[("FAKE_CLI_MODE", "no_message"), ("FAKE_CLI_HELP", "old")],
        &[("FAKE_CLI_MODE", "fail")],
    );
    let schema = json!({"type": "object"});
    let o = run_job(
        &reg,
        "b1",
        json!({"prompt": "p", "model": "claude-x", "json_schema": schema}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "bad_output");
    assert!(
        m.ends_with("Details: Claude stream-json output has no result event"),
        "{m}"
    );
    assert!(o.result.unwrap()["stdout"]
        .as_str()
        .unwrap()
        .contains("could not produce JSON"));

    let o = run_job(
        &reg,
        "b2",
        json!({"prompt": "p", "model": "gpt-5", "json_schema": schema}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "bad_output");
    assert!(
        m.ends_with("Codex JSONL output missing agent message"),
        "{m}"
    );

    let o = run_job(
        &reg,
        "b3",
        json!({"prompt": "p", "model": "gemini-2.5-pro", "json_schema": schema}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "exit_status");
    assert!(
        m.contains("Gemini exited with status 1: Error: fatal error in the fake gemini"),
        "{m}"
    );
}

#[test]
fn claude_empty_output_and_codex_symlinked_output_file() {
    let s = Scratch::new("empty");
    let reg = s.registry(
        &[("FAKE_CLI_MODE", "empty")],
        &[("FAKE_CLI_MODE", "symlink_output")],
        &[],
    );
    let schema = json!({"type": "object"});
    let o = run_job(
        &reg,
        "e1",
        json!({"prompt": "p", "model": "claude-x", "json_schema": schema}),
    );
    assert!(failure(&o).1.ends_with("Empty Claude output"));
    let o = run_job(
        &reg,
        "e2",
        json!({"prompt": "p", "model": "gpt-5", "json_schema": schema}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "bad_output");
    assert!(m.contains("symlink"), "{m}");
}

#[test]
fn cli_not_installed() {
    let s = Scratch::new("missing");
    let r = Arc::new(Registry::with_commands([
        s.path().join("none/claude"),
        s.path().join("none/codex"),
        s.path().join("none/gemini"),
    ]));
    r.set_work_root(s.path().join("work"));
    let o = run_job(
        &r,
        "n1",
        json!({"prompt": "p", "model": "gpt-5", "output_format": "text"}),
    );
    let (k, m) = failure(&o);
    assert_eq!(k, "not_installed");
    assert!(m.contains("npm install -g @openai/codex"), "{m}");
    assert_eq!(o.result.unwrap()["exit_code"], Value::Null);
    assert_eq!(
        r.health(ProviderId::Codex).unwrap().status,
        Status::Unavailable
    );
}

#[test]
fn hung_cli_times_out_and_its_grandchild_dies_too() {
    // The fake (Python) must start its grandchild before the timeout fires; on a loaded machine
    // its start-up can take longer than 1.5 s, so a run that ended before the grandchild existed
    // proves nothing and is repeated with a longer timeout (the kill is what is asserted).
    for (attempt, timeout_ms) in [1500u64, 5000, 15000].into_iter().enumerate() {
        let s = Scratch::new("hang");
        let gc_file = s.path().join("gc.pid");
        let reg = s.registry(
            &[
                ("FAKE_CLI_MODE", "grandchild"),
                ("FAKE_CLI_GRANDCHILD_PID", gc_file.to_str().unwrap()),
            ],
            &[],
            &[],
        );
        let t0 = Instant::now();
        let o = run_job(
            &reg,
            &format!("h{attempt}"),
            json!({"prompt": "p", "model": "claude-x", "output_format": "text", "timeout_ms": timeout_ms}),
        );
        let limit = Duration::from_millis(timeout_ms) + Duration::from_secs(6);
        assert!(t0.elapsed() < limit, "{:?}", t0.elapsed());
        let (k, m) = failure(&o);
        assert_eq!(k, "timeout");
        assert!(
            m.contains(&format!("did not finish within {timeout_ms} ms")),
            "{m}"
        );
        assert_eq!(o.result.as_ref().unwrap()["exit_code"], Value::Null);
        assert_eq!(o.debug.unwrap()["timed_out"], true);
        assert_eq!(claude_status(&reg), Status::Unhealthy);
        let Ok(text) = std::fs::read_to_string(&gc_file) else {
            eprintln!("attempt {attempt}: the fake was stopped before it started its grandchild");
            continue;
        };
        let gc: i32 = text.trim().parse().unwrap();
        let gone = |pid: i32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(st) => st
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(false),
        };
        let end = Instant::now() + Duration::from_secs(3);
        while !gone(gc) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let alive = !gone(gc);
        if alive {
            unsafe { libc::kill(gc, libc::SIGKILL) };
        }
        assert!(!alive, "grandchild {gc} outlived the timed-out CLI");
        return;
    }
    panic!("the fake CLI never started its grandchild, even with a 15 s timeout");
}

#[test]
fn flooding_cli_hits_the_output_limit_without_touching_health() {
    let s = Scratch::new("flood");
    let reg = s.registry(
        &[
            ("FAKE_CLI_MODE", "flood"),
            ("FAKE_CLI_FLOOD_BYTES", "6000000"),
        ],
        &[],
        &[],
    );
    let o = run_job(
        &reg,
        "f1",
        json!({"prompt": "p", "model": "claude-x", "output_format": "text"}),
    );
    assert_eq!(o.status, FinalStatus::Failed);
    let r = o.result.unwrap();
    assert_eq!(
        r["message"],
        "Gateway model stdout exceeded the 5000000-byte output limit"
    );
    assert_eq!(r["error_code"], "GATEWAY_MODEL_OUTPUT_LIMIT");
    assert_eq!(r["boundary"], "stdout");
    assert_eq!(r["output_limit_bytes"], 5_000_000);
    assert!(reg.health(ProviderId::Claude).is_none());
}

#[test]
fn cancelled_run_is_cancelled_not_unhealthy() {
    let s = Scratch::new("cancel");
    let reg = s.registry(&[("FAKE_CLI_MODE", "hang")], &[], &[]);
    let c = ctx(&reg, "k1");
    let cancel = c.cancel.clone();
    let children = c.children.clone();
    let t = std::thread::spawn(move || {
        jobs::model_run::handle(
            &json!({"prompt": "p", "model": "claude-x", "output_format": "text"}),
            &c,
        )
    });
    wait_for_a_child(&children);
    assert_eq!(children.len(), 1, "the run registers its child");
    cancel.cancel();
    let o = t.join().unwrap();
    assert_eq!(o.status, FinalStatus::Cancelled, "{o:?}");
    assert_eq!(o.result.as_ref().unwrap()["cancelled"], true, "{o:?}");
    assert!(children.is_empty());
    assert!(reg.health(ProviderId::Claude).is_none());
}

#[test]
fn cancelled_diagnostic_is_cancelled_with_its_keys() {
    let s = Scratch::new("diag-cancel");
    let reg = s.registry(&[], &[], &[]);
    // Probed fine at registry creation; from now on `--version` hangs.
    s.fake("claude", "c", &[("FAKE_CLI_PROBE", "hang")]);
    let c = ctx(&reg, "d9");
    let (cancel, children) = (c.cancel.clone(), c.children.clone());
    let t = std::thread::spawn(move || jobs::diagnostic::handle(&json!({}), &c));
    wait_for_a_child(&children);
    cancel.cancel();
    let o = t.join().unwrap();
    assert_eq!(o.status, FinalStatus::Cancelled, "{o:?}");
    let r = o.result.unwrap();
    assert_eq!(r["cancelled"], true);
    assert_eq!(r["exit_code"], Value::Null);
    assert!(r["error"]
        .as_str()
        .unwrap()
        .starts_with("Command cancelled: "));
}
