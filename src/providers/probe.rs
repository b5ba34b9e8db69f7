//! The capability probes of one CLI (providers.md §3): `--version`, `--help` (Codex:
//! `exec --help`) and for Gemini `--list-extensions`; the `--version` run is kept for
//! diagnostics (see [`super::versions`]).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::plan::{self, OutputFormat, RunRequest};
use super::{
    build_plan, claude, codex, diagnose, discovery, gemini, run, versions, Caps, Flags, ProviderId,
    PROBE_TIMEOUT, VALIDATION_PROMPT, VALIDATION_TIMEOUT,
};

/// Probes one command (providers.md §3); `stop` ends the probes.
pub fn probe_caps(id: ProviderId, command: &Path, stop: &discovery::ProbeStop) -> Caps {
    let mk_spec = |args: &[&str]| {
        let mut spec = crate::exec::Spec::new(command).args(args.iter().copied());
        spec.timeout = Some(PROBE_TIMEOUT);
        spec.capture_limit = 1 << 20;
        spec.grace = Duration::from_millis(1000);
        if id == ProviderId::Gemini {
            // Gemini is a node script: its own directory on PATH, like model runs.
            spec.env = run::env_with(&[], &gemini::path_prepend(command), Path::new("/"));
        }
        spec
    };
    let file = versions::FileId::of(command);
    let v = discovery::probe_spec(mk_spec(&["--version"]), command, &["--version"], stop);
    let probed = versions::Answer {
        command: command.to_path_buf(),
        stdout: v.stdout.clone(),
        stderr: v.stderr.clone(),
        exit_code: v.exit_code,
        duration: v.duration,
        error: v.error.clone(),
        // A probe the stopping daemon killed says nothing about the CLI: never reused.
        cancelled: stop.token().is_cancelled(),
        by: "discovery",
        at: std::time::Instant::now(),
        at_wall: std::time::SystemTime::now(),
        file,
    };
    let help_args: &[&str] = if id == ProviderId::Codex {
        &["exec", "--help"]
    } else {
        &["--help"]
    };
    let (available, version, error) = if v.ok {
        let t = v.stdout.trim().to_string();
        (true, (!t.is_empty()).then_some(t), None)
    } else {
        (false, None, v.error.clone())
    };
    let help = if available {
        let h = discovery::probe_spec(mk_spec(help_args), command, help_args, stop);
        h.ok.then(|| h.help_text())
    } else {
        None
    };
    let flags = Flags::detect(id, help.as_deref());
    let (extensions, extensions_ok) = if id == ProviderId::Gemini {
        if !available {
            (Some(Vec::new()), false)
        } else if help.as_deref().is_some_and(gemini::has_extensions_command) {
            // `gemini --list-extensions` needs a login (exit 41 without one) and prints
            // nothing when there are none; `gemini extensions list` needs neither.
            let args = gemini::EXTENSIONS_LIST;
            let e = discovery::probe_spec(mk_spec(args), command, args, stop);
            match gemini::parse_extensions_json(&e.stdout, &e.stderr) {
                Some(names) if e.ok => (Some(names), true),
                _ => (Some(Vec::new()), false),
            }
        } else {
            let e = discovery::probe_spec(
                mk_spec(&["--list-extensions"]),
                command,
                &["--list-extensions"],
                stop,
            );
            if e.ok {
                (Some(gemini::parse_extensions(&e.stdout)), true)
            } else {
                (Some(Vec::new()), false)
            }
        }
    } else {
        (None, false)
    };
    let supports = match id {
        ProviderId::Claude => claude::supports(&flags),
        ProviderId::Codex => codex::supports(&flags),
        ProviderId::Gemini => {
            gemini::supports(&flags, extensions_ok, extensions.as_deref().unwrap_or(&[]))
        }
    };
    Caps {
        available,
        version,
        error,
        flags,
        extensions,
        supports,
        probed: Some(probed),
    }
}

/// Runs `f` for every provider in parallel. A thread that panics (a bug met on odd CLI output)
/// yields `on_panic(id, message)` instead of taking the caller (the daemon, `doctor`) down.
pub(super) fn run_parallel<T: Send>(
    f: impl Fn(ProviderId) -> T + Sync,
    on_panic: impl Fn(ProviderId, String) -> T,
) -> Vec<T> {
    std::thread::scope(|s| {
        let hs: Vec<_> = ProviderId::ALL
            .into_iter()
            .map(|id| {
                let f = &f;
                (id, s.spawn(move || f(id)))
            })
            .collect();
        hs.into_iter()
            .map(|(id, h)| match h.join() {
                Ok(v) => v,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    log::error!(target: "providers", "checking provider={} failed with an internal error: {msg}", id.as_str());
                    on_panic(id, msg)
                }
            })
            .collect()
    })
}

/// What a provider's probe says when the probe itself crashed.
pub(super) fn probe_crashed(id: ProviderId, msg: &str) -> Caps {
    Caps {
        error: Some(format!(
            "checking the {} CLI failed with an internal error ({}); it is treated as unavailable. Run panorama-gateway doctor -v and report the message",
            id.short(),
            crate::redact::redact(msg)
        )),
        ..Caps::not_probed(id)
    }
}

/// The full check: a tiny JSON model call (providers.md §4.2). Returns (ok, error, ms).
pub fn validate(
    id: ProviderId,
    command: &Path,
    flags: &Flags,
    work_root: &Path,
    stop: &crate::exec::CancelToken,
) -> (bool, Option<String>, u64) {
    let started = std::time::Instant::now();
    let req = RunRequest {
        prompt: VALIDATION_PROMPT.into(),
        model: plan::DEFAULT_MODEL.into(),
        format: OutputFormat::Json,
        schema: Some(
            json!({"type":"object","required":["message"],"properties":{"message":{"type":"string"}},"additionalProperties":false}),
        ),
        append_system_prompt: None,
        reasoning_effort: None,
        timeout: VALIDATION_TIMEOUT,
    };
    let ms = |s: std::time::Instant| s.elapsed().as_millis() as u64;
    let plan = match build_plan(id, &req, command, flags) {
        Ok(p) => p,
        Err(e) => return (false, Some(e.0), ms(started)),
    };
    let root = work_root.join("validation");
    if let Err(e) = crate::exec::ensure_private_dir(work_root)
        .and_then(|_| crate::exec::ensure_private_dir(&root))
    {
        return (
            false,
            Some(format!(
                "the validation work directory is not safe to use: {e}"
            )),
            ms(started),
        );
    }
    let dir = match crate::exec::PrivateDir::create_in(&root.join(id.as_str()), "check-") {
        Ok(d) => d,
        Err(e) => {
            return (
                false,
                Some(format!(
                    "could not create a validation directory under {}: {e}",
                    root.display()
                )),
                ms(started),
            )
        }
    };
    let hooks = run::RunHooks {
        cancel: Some(stop.clone()),
        register: None,
        shared_root: Some(work_root.to_path_buf()),
    };
    let report = run::run_plan(id, plan, dir.path(), &hooks);
    let dir_path = dir.path().to_path_buf();
    drop(dir);
    run::prune_empty_parents(&dir_path, &root);
    let stderr = report
        .output
        .as_ref()
        .map(|o| o.stderr_lossy())
        .unwrap_or_default();
    let timed_out = report.output.as_ref().is_some_and(|o| o.timed_out());
    let err = match report.result {
        Ok(_) => None,
        Err(run::Failure::StdoutLimit) => Some(format!(
            "Provider validation stdout exceeded the {}-byte output limit",
            crate::exec::CAPTURE_LIMIT
        )),
        Err(run::Failure::Spawn { message, .. }) | Err(run::Failure::Setup(message)) => {
            Some(message)
        }
        Err(run::Failure::Process) if timed_out => Some(format!(
            "{} did not answer within {} s; {}",
            id.short(),
            VALIDATION_TIMEOUT.as_secs(),
            diagnose::login_hint(id)
        )),
        Err(run::Failure::NotLoggedIn(m)) => Some(format!(
            "{m}. {}",
            diagnose::hint(id, diagnose::ErrorKind::Auth).unwrap_or_default()
        )),
        Err(run::Failure::Network(m)) => Some(format!(
            "{m}. {}",
            diagnose::hint(id, diagnose::ErrorKind::Network).unwrap_or_default()
        )),
        // What the CLI said in a structured place (Claude reports a bad login in its stdout
        // envelope, with an empty stderr), else its last stderr line, classified with a hint.
        Err(run::Failure::Process) => {
            let o = report.output.as_ref();
            let stdout = o.map(|o| o.stdout_lossy()).unwrap_or_default();
            let summary = super::normalize::error_summary(&stderr);
            let (exit, signal) = (o.and_then(|o| o.exit_code), o.and_then(|o| o.signal));
            Some(diagnose::explain_exit(id, exit, signal, &stdout, &stderr, summary.as_ref()).1)
        }
        Err(run::Failure::Parse(m)) => Some(m),
        Err(run::Failure::FileLimit) => Some("Codex output file exceeded the output limit".into()),
    };
    (err.is_none(), err, ms(started))
}
