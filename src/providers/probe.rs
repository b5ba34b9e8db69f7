//! The capability probes of one CLI (providers.md §3): `--version`, `--help` (Codex:
//! `exec --help`) and for Gemini `--list-extensions`; the `--version` run is kept for
//! diagnostics (see [`super::versions`]).

use std::path::Path;
use std::time::Duration;

use super::{
    claude, codex, discovery, gemini, run, versions, Caps, Flags, ProviderId, PROBE_TIMEOUT,
};

/// Probes one command (providers.md §3).
pub fn probe_caps(id: ProviderId, command: &Path) -> Caps {
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
    let v = discovery::probe_spec(mk_spec(&["--version"]), command, &["--version"]);
    let probed = versions::Answer {
        command: command.to_path_buf(),
        stdout: v.stdout.clone(),
        stderr: v.stderr.clone(),
        exit_code: v.exit_code,
        duration: v.duration,
        error: v.error.clone(),
        cancelled: false,
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
        let h = discovery::probe_spec(mk_spec(help_args), command, help_args);
        h.ok.then(|| h.help_text())
    } else {
        None
    };
    let flags = Flags::detect(id, help.as_deref());
    let (extensions, extensions_ok) = if id == ProviderId::Gemini {
        if available {
            let e = discovery::probe_spec(
                mk_spec(&["--list-extensions"]),
                command,
                &["--list-extensions"],
            );
            if e.ok {
                (Some(gemini::parse_extensions(&e.stdout)), true)
            } else {
                (Some(Vec::new()), false)
            }
        } else {
            (Some(Vec::new()), false)
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
