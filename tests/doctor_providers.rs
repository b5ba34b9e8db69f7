//! `doctor` with provider CLIs: a full health check per provider through the fake CLIs in
//! tests/fixtures/bin (given with --claude-cli/--codex-cli/--gemini-cli), health saved in
//! gateway.json when paired, a missing CLI is a warning, no usable provider fails; then
//! `status -v` / `status --json` show the saved health without starting any process.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn fake(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bin")
        .join(name)
}

/// A PATH with nothing but python3 (the fakes' interpreter), so no real CLI is found.
fn python_only_path(w: &World) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs the fake CLIs");
    let exe = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let dir = w.root.join("pybin");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("python3");
    if !link.exists() {
        std::os::unix::fs::symlink(exe, &link).unwrap();
    }
    dir
}

/// `doctor` (plus `extra` args) with HOME and PATH controlled and the CLIs given by flag
/// (`None`: a path that does not exist).
fn doctor(w: &World, clis: [Option<&str>; 3], extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = w.cmd(&["doctor"]);
    c.args(extra);
    for (flag, cli) in ["--claude-cli", "--codex-cli", "--gemini-cli"]
        .into_iter()
        .zip(clis)
    {
        let path = match cli {
            Some(name) => fake(name),
            None => w.root.join("missing").join(flag.trim_start_matches("--")),
        };
        c.arg(flag).arg(path);
    }
    c.env("PATH", python_only_path(w)).env_remove("SHELL");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(c: Command) -> (i32, String) {
    let o = run_with_timeout(c, Duration::from_secs(60));
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

/// The first output line starting with `prefix` (the test fails with the output otherwise).
fn line_of<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {out}"))
}

fn saved(w: &World) -> Value {
    serde_json::from_str(&fs::read_to_string(w.config()).unwrap()).unwrap()
}

#[test]
fn healthy_providers_are_checked_for_real_and_saved() {
    let w = World::new("doc-prov-ok");
    w.write_paired_config();
    let (code, out) = run(doctor(
        &w,
        [Some("claude"), Some("codex"), Some("gemini")],
        &[],
        &[],
    ));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Validating providers"), "{out}");
    for id in ["claude_code", "codex", "gemini"] {
        let line = line_of(&out, &format!("ok   provider {id}:"));
        assert!(line.contains("healthy (full check, "), "{line}");
    }
    assert!(out.contains("(2.0.14 (Claude Code))"), "{out}");
    assert!(out.contains("ok   provider health: saved in"), "{out}");
    assert!(out.contains("All checks passed."), "{out}");

    let v = saved(&w);
    for id in ["claude_code", "codex", "gemini"] {
        let h = &v["providerHealth"][id];
        assert_eq!(h["status"], "healthy", "{id}: {h}");
        assert_eq!(h["check_type"], "full", "{id}: {h}");
        assert_eq!(h["last_full_status"], "healthy", "{id}: {h}");
        assert_eq!(h["checked_at"], h["last_full_checked_at"], "{id}: {h}");
        assert!(h["duration_ms"].is_u64(), "{id}: {h}");
        assert!(h.get("error").is_none(), "{id}: {h}");
    }
    // The rest of gateway.json is untouched, and it stays owner-only.
    assert_eq!(v["someFutureKey"]["kept"], true);
    assert_eq!(v["refreshToken"], "refresh-secret-1");
    assert_eq!(v["gatewayId"], "gw-test-1");
    assert_eq!(mode(&w.config()), 0o600);
    // The validation work directories are gone.
    let vroot = w.cfg.join("work/validation");
    let left: Vec<_> = fs::read_dir(&vroot)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // --json: levels per check and the providers object (capabilities v1 entries).
    let (code, out) = run(doctor(
        &w,
        [Some("claude"), Some("codex"), Some("gemini")],
        &["--json"],
        &[],
    ));
    assert_eq!(code, 0, "{out}");
    let j: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(j["ok"], true);
    assert_eq!(j["providers"]["codex"]["available"], true);
    assert_eq!(j["providers"]["codex"]["health"]["status"], "healthy");
    assert_eq!(
        j["providers"]["gemini"]["extensions"],
        serde_json::json!([])
    );
    assert!(j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["level"] == "ok"));
}

#[test]
fn a_missing_cli_is_a_warning_not_a_failure() {
    let w = World::new("doc-prov-warn");
    w.write_paired_config();
    let (code, out) = run(doctor(&w, [Some("claude"), Some("codex"), None], &[], &[]));
    assert_eq!(code, 0, "{out}");
    let line = line_of(&out, "WARN provider gemini:");
    assert!(line.contains("unavailable"), "{line}");
    assert!(line.contains("--gemini-cli"), "{line}");
    assert!(out.contains("ok   provider claude_code:"), "{out}");
    assert!(out.contains("All checks passed (1 warning(s))."), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    let v = saved(&w);
    assert_eq!(v["providerHealth"]["gemini"]["status"], "unavailable");
    assert_eq!(v["providerHealth"]["gemini"]["check_type"], "full");
    assert!(v["providerHealth"]["gemini"]["error"]
        .as_str()
        .unwrap()
        .contains("not found"));
    assert_eq!(v["providerHealth"]["codex"]["status"], "healthy");
}

#[test]
fn no_usable_provider_fails_and_names_the_flags() {
    let w = World::new("doc-prov-none");
    w.write_paired_config();
    let (code, out) = run(doctor(&w, [None, None, None], &[], &[]));
    assert_eq!(code, 1, "{out}");
    let fail = line_of(&out, "FAIL providers:");
    for needle in [
        "--claude-cli",
        "--codex-cli",
        "--gemini-cli",
        "PANORAMA_CLAUDE_CLI",
        "PANORAMA_CODEX_CLI",
        "PANORAMA_GEMINI_CLI",
    ] {
        assert!(fail.contains(needle), "{needle}: {fail}");
    }
    assert_eq!(out.matches("WARN provider ").count(), 3, "{out}");
    assert!(out.contains("1 check(s) failed."), "{out}");
    // Still saved: the daemon and status see the result of this check.
    let v = saved(&w);
    for id in ["claude_code", "codex", "gemini"] {
        assert_eq!(v["providerHealth"][id]["status"], "unavailable", "{id}");
    }
}

#[test]
fn installed_but_not_logged_in_counts_as_unusable() {
    let w = World::new("doc-prov-auth");
    w.write_paired_config();
    // The fakes read FAKE_CLI_MODE from the environment doctor passes to them.
    let (code, out) = run(doctor(
        &w,
        [Some("claude"), None, None],
        &[],
        &[("FAKE_CLI_MODE", "auth_error")],
    ));
    assert_eq!(code, 1, "{out}");
    let line = line_of(&out, "WARN provider claude_code:");
    assert!(line.contains("unhealthy (full check"), "{line}");
    assert!(line.contains("Invalid API key"), "{line}");
    assert!(line.contains("log in"), "{line}");
    assert!(out.contains("FAIL providers:"), "{out}");
    let h = &saved(&w)["providerHealth"]["claude_code"];
    assert_eq!(h["status"], "unhealthy");
    // The CLI's reason, classified, with what to run (once: doctor does not repeat it).
    let e = h["error"].as_str().unwrap();
    assert!(
        e.starts_with("Claude exited with status 1: Invalid API key · Please run /login. The CLI is not logged in"),
        "{e}"
    );
    assert_eq!(line.matches("ANTHROPIC_API_KEY").count(), 1, "{line}");
}

#[test]
fn unpaired_doctor_checks_providers_but_writes_no_config() {
    let w = World::new("doc-prov-unpaired");
    let (code, out) = run(doctor(&w, [Some("claude"), None, None], &[], &[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL config"), "{out}");
    assert!(out.contains("ok   provider claude_code:"), "{out}");
    assert!(!out.contains("provider health: saved"), "{out}");
    assert!(!w.config().exists(), "doctor must not create gateway.json");
}

#[test]
fn status_shows_the_saved_health_without_starting_anything() {
    let w = World::new("status-prov");
    w.write_paired_config();
    let (code, out) = run(doctor(&w, [Some("claude"), Some("codex"), None], &[], &[]));
    assert_eq!(code, 0, "{out}");
    let checked_at = saved(&w)["providerHealth"]["claude_code"]["checked_at"]
        .as_str()
        .unwrap()
        .to_string();

    // A fake CLI that records any invocation: status must not start it.
    let record = w.root.join("record.jsonl");
    let status = |args: &[&str]| {
        let mut c = w.cmd(args);
        c.arg("--claude-cli")
            .arg(fake("claude"))
            .env("PATH", python_only_path(&w))
            .env("FAKE_CLI_RECORD", &record);
        run_with_timeout(c, Duration::from_secs(10))
    };
    let o = status(&["status", "-v"]);
    assert_eq!(o.status.code(), Some(3), "not running: {}", stdout(&o));
    let out = stdout(&o);
    let providers_at = out.find("Providers:\n").unwrap_or_else(|| panic!("{out}"));
    let block: Vec<&str> = out[providers_at..].lines().skip(1).take(3).collect();
    assert!(
        block[0].starts_with(&format!(
            "  claude_code: healthy (full check, {checked_at}, "
        )),
        "{out}"
    );
    assert!(block[0].ends_with(" ago)"), "{out}");
    assert!(
        block[1].starts_with("  codex: healthy (full check, "),
        "{out}"
    );
    assert!(
        block[2].starts_with("  gemini: unavailable (full check, "),
        "{out}"
    );
    assert!(block[2].contains("): "), "the error is shown: {out}");

    let o = status(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v["providers"];
    assert_eq!(p["claude_code"]["status"], "healthy");
    assert_eq!(p["claude_code"]["check_type"], "full");
    assert_eq!(p["claude_code"]["checked_at"], checked_at.as_str());
    assert_eq!(p["gemini"]["status"], "unavailable");
    assert!(p["gemini"]["error"].is_string());
    assert!(!record.exists(), "status started a provider CLI");

    // Without -v the human output has no provider block.
    assert!(!stdout(&status(&["status"])).contains("Providers:"));
}

#[test]
fn status_reads_hand_written_and_partial_provider_health() {
    let w = World::new("status-prov-partial");
    w.write_paired_config();
    let mut v = saved(&w);
    v["providerHealth"] = serde_json::json!({
        "codex": {"status": "unhealthy", "check_type": "light", "checked_at": "2026-11-24T21:05:00.000Z",
                  "last_full_checked_at": "2026-11-24T20:00:00.000Z", "last_full_status": "healthy",
                  "error": "Codex JSONL output missing agent message", "extra": "dropped"},
        "someone_else": {"status": "healthy"}
    });
    fs::write(w.config(), serde_json::to_string(&v).unwrap()).unwrap();
    let o = w.run(&["status", "--json"]);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = j["providers"].as_object().unwrap();
    assert_eq!(
        p.keys().collect::<Vec<_>>(),
        ["claude_code", "codex", "gemini"],
        "all three ids, nothing else"
    );
    assert_eq!(p["claude_code"], Value::Null);
    assert_eq!(p["codex"]["status"], "unhealthy");
    assert_eq!(p["codex"]["last_full_status"], "healthy");
    assert!(p["codex"].get("extra").is_none());
    let out = stdout(&w.run(&["status", "--verbose"]));
    assert!(
        out.contains("  claude_code: not checked yet (run panorama-gateway doctor)"),
        "{out}"
    );
    assert!(
        out.contains("  codex: unhealthy (light check, 2026-11-24T21:05:00.000Z, ")
            && out.contains("ago): Codex JSONL output missing agent message"),
        "{out}"
    );
}
