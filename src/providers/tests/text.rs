//! Outside text never panics a parser or the redactor, and secrets a CLI prints never reach
//! a job row or the capabilities.

use super::*;

/// Outside text (CLI output, version banners, model answers, gateway.json, .env files) never
/// panics a parser or the redactor: random strings built from the characters those parsers
/// look at, multi-byte characters included.
#[test]
fn parsers_and_redactors_never_panic_on_random_text() {
    const ALPHABET: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        "'",
        "\\",
        ":",
        "=",
        ",",
        ".",
        "-",
        "_",
        " ",
        "\n",
        "\t",
        "`",
        "```",
        "json",
        "eyJ",
        "Bearer ",
        "token",
        "apikey",
        "sk-",
        "exec ",
        "1",
        "2.",
        "v",
        "é",
        "€",
        "😀",
        "\u{0}",
        "#",
        "export ",
        "$",
        "type",
        "result",
        "item.completed",
        "agent_message",
        "text",
        "error",
        "message",
        "null",
        "true",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let dir = std::env::temp_dir().join(format!("pg-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for _ in 0..3000 {
        let n = (next() % 40) as usize;
        let s: String = (0..n)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
            .collect();
        let _ = crate::redact::redact(&s);
        let _ = redact::text(&s, (next() % 50) as usize);
        let _ = redact::command_line(&s, std::slice::from_ref(&s));
        let _ = redact::args(&[s.clone(), "--api-key".into(), s.clone()], true);
        let _ = normalize::strip_fence(&s);
        let _ = normalize::extract_object(&s, true);
        let _ = normalize::error_summary(&s);
        let _ = plan::collapse(&s, (next() % 20) as usize);
        let _ = crate::util::truncate_chars(&s, (next() % 20) as usize, "…");
        let _ = discovery::extract_version(&s);
        let _ = discovery::compare_versions(&s, "1.2.3");
        let _ = gemini::parse_extensions(&s);
        for f in [plan::OutputFormat::Json, plan::OutputFormat::Text] {
            let _ = gemini::parse(f, &s);
            for m in [
                plan::OutputMode::StdoutJson,
                plan::OutputMode::StreamJson,
                plan::OutputMode::FileJson,
            ] {
                let _ = claude::parse(f, m, &s);
                let _ = codex::parse(f, m, &s, &dir);
            }
        }
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<Value>(&s) {
            let _ = codex::map_args_json(o);
        }
        let _ = crate::config::state::parse(std::path::Path::new("g.json"), &s);
        let _ = crate::config::envfile::parse(std::path::Path::new(".env"), &s);
        if let Ok(mut v) = serde_json::from_str::<Value>(&s) {
            crate::redact::redact_json(&mut v);
            let _ = redact::summary(&v, 0);
        }
        let wrapper = dir.join("w");
        std::fs::write(&wrapper, &s).unwrap();
        let _ = discovery::broken_wrapper_target(&wrapper, None);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn diagnostic_output_is_redacted_before_it_reaches_the_backend() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("diag-redact");
    let key = "sk-ant-api03-ZyXwVuTsRqPoNmLkJiHg";
    let cli = s.path().join("leaky-claude");
    std::fs::write(
        &cli,
        format!("#!/bin/sh\necho \"2.0.14 (Claude Code) key={key}\"\necho \"warning: ANTHROPIC_API_KEY={key} rejected\" >&2\nexit 1\n"),
    )
    .unwrap();
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let reg = Arc::new(Registry::with_commands([
        cli.clone(),
        s.path().join("none/codex"),
        s.path().join("none/gemini"),
    ]));
    let o = jobs::diagnostic::handle(&json!({}), &ctx(&reg, "d-redact"));
    assert_eq!(o.status, FinalStatus::Failed);
    let r = o.result.unwrap();
    let text = r.to_string();
    assert!(!text.contains(key), "{text}");
    assert!(!o.error.unwrap_or_default().contains(key));
    assert!(r["stderr"].as_str().unwrap().contains("rejected"), "{r}");
}

#[test]
fn a_key_a_failing_cli_prints_never_reaches_the_job_row() {
    let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUv";
    let s = Scratch::new("fail-redact");
    let stderr = format!(
        "ERROR: unexpected status 401 Unauthorized: {{\"error\":{{\"message\":\"Incorrect API key provided: {key}\",\"type\":\"invalid_request_error\"}}}}"
    );
    let reg = s.registry(
        &[],
        &[("FAKE_CLI_MODE", "fail"), ("FAKE_CLI_STDERR", &stderr)],
        &[],
    );
    let o = run_job(
        &reg,
        "job-leak",
        json!({"prompt": "hi", "model": "gpt-5-codex", "provider": "codex", "output_format": "text"}),
    );
    assert_eq!(o.status, FinalStatus::Failed, "{o:?}");
    let everything = format!(
        "{} {} {}",
        o.result.clone().unwrap_or_default(),
        o.error.clone().unwrap_or_default(),
        o.debug.clone().unwrap_or_default()
    );
    assert!(!everything.contains(key), "{everything}");
    assert!(
        o.error.unwrap_or_default().contains("Incorrect API key"),
        "the message still says what happened: {everything}"
    );
    let h = reg.capabilities_providers().to_string();
    assert!(!h.contains(key), "{h}");
}
