//! Running one model-call plan: owner-only work directory, plan files, environment, the child
//! through `exec`, then the provider's parser. Shared by `model_run` jobs and full health checks.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::plan::{ParseError, Parsed, Plan};
use super::ProviderId;
use crate::exec::{self, CancelToken, Children};

/// Bytes of a run's stdout kept on the heap; the rest of the capture (up to the 5 MB limit)
/// goes to an unlinked file beside the work directory. Large enough for every head a result
/// quotes (200,000 characters are at most 800,000 bytes).
pub const STDOUT_HEAP_BYTES: usize = 1 << 20;

/// What a run may be reached by.
#[derive(Default, Clone)]
pub struct RunHooks {
    pub cancel: Option<CancelToken>,
    pub register: Option<(Arc<Children>, String)>,
    /// Where the directories of plans with `shared_cwd` live (`<config dir>/work`); None: beside
    /// the work directory.
    pub shared_root: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Failure {
    /// The CLI could not be started (not installed, not executable).
    Spawn {
        message: String,
        not_found: bool,
        /// The argument list was too long for the kernel (E2BIG): a prompt over 128 KiB.
        too_long: bool,
    },
    /// Work directory or plan files could not be prepared.
    Setup(String),
    /// stdout exceeded the capture limit.
    StdoutLimit,
    /// Codex's output file exceeded the limit.
    FileLimit,
    /// The CLI is surely not logged in (Codex's `codex login status`); nothing was run.
    NotLoggedIn(String),
    /// The CLI kept failing to reach its API and was stopped (see `diagnose::NetworkWatch`).
    Network(String),
    /// Non-zero exit, timeout, signal, or cancel.
    Process,
    /// Exited 0 but the output could not be used.
    Parse(String),
}

pub struct Report {
    pub output: Option<exec::Output>,
    pub result: Result<Parsed, Failure>,
}

/// A relative path that stays inside the work directory.
fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path.is_relative()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Builds the child environment for a plan: scrubbed parent env, plan extras, PATH prepends.
pub fn plan_env(plan: &Plan, work_dir: &Path) -> Vec<(OsString, OsString)> {
    env_with(&plan.env, &plan.path_prepend, work_dir)
}

/// The scrubbed parent environment plus `extra` (`{WORKDIR}` in a value becomes `work_dir`)
/// and `path_prepend` put in front of PATH (each only when not already there).
pub fn env_with(
    extra: &[(String, String)],
    path_prepend: &[PathBuf],
    work_dir: &Path,
) -> Vec<(OsString, OsString)> {
    let mut env = exec::child_env(&[]);
    let wd = work_dir.to_string_lossy();
    for (k, v) in extra {
        exec::set_var(&mut env, k, v.replace("{WORKDIR}", &wd));
    }
    if !path_prepend.is_empty() {
        let cur = exec::get_var(&env, "PATH")
            .map(|p| p.to_os_string())
            .unwrap_or_default();
        let mut parts: Vec<PathBuf> = std::env::split_paths(&cur).collect();
        for d in path_prepend.iter().rev() {
            if !parts.contains(d) {
                parts.insert(0, d.clone());
            }
        }
        if let Ok(joined) = std::env::join_paths(parts) {
            exec::set_var(&mut env, "PATH", joined);
        }
    }
    env
}

/// Runs `plan` in the (already created, empty, 0700) `work_dir` and parses its output.
pub fn run_plan(id: ProviderId, plan: Plan, work_dir: &Path, hooks: &RunHooks) -> Report {
    let fail = |f: Failure| Report {
        output: None,
        result: Err(f),
    };
    if let Some(op) = &plan.output_path {
        if !safe_relative(op) {
            let m = format!("output path {op:?} is not a plain relative path");
            return fail(Failure::Setup(m));
        }
    }
    for (name, data) in &plan.files {
        if !safe_relative(name) {
            let m = format!("plan file {name:?} is not a plain relative path");
            return fail(Failure::Setup(m));
        }
        if let Err(e) = crate::exec::write_private_file(&work_dir.join(name), data) {
            let m = format!("could not write {} in {}: {e}", name, work_dir.display());
            return fail(Failure::Setup(m));
        }
    }
    let env = plan_env(&plan, work_dir);
    if id == ProviderId::Codex {
        if let Some(m) = super::codex::login_missing(&plan.command, &env, work_dir) {
            return fail(Failure::NotLoggedIn(m));
        }
    }
    let cwd = match shared_cwd(id, &plan, work_dir, hooks.shared_root.as_deref()) {
        Ok(c) => c,
        Err(m) => return fail(Failure::Setup(m)),
    };
    let discard_env = plan.discard_session.as_ref().map(|_| env.clone());
    let mut spec = exec::Spec::new(&plan.command);
    spec.args = if cwd == work_dir {
        plan.args.iter().map(OsString::from).collect()
    } else {
        absolute_file_args(&plan, work_dir)
    };
    spec.stdin = Some(plan.stdin.clone());
    let session_cwd = cwd.clone();
    spec.cwd = Some(cwd);
    spec.env = env;
    spec.timeout = Some(plan.timeout);
    spec.cancel = hooks.cancel.clone();
    spec.register = hooks.register.clone();
    spec.tmp_base = Some(work_dir.to_path_buf());
    // The work directory's parent is ours alone (0700) and the child does not work in it.
    spec.spill = work_dir.parent().map(|dir| exec::Spill {
        after: STDOUT_HEAP_BYTES,
        dir: dir.to_path_buf(),
    });
    let mut watch = super::diagnose::NetworkWatch::new(id);
    let ran = exec::run(spec, Some(&mut |_, line: &str| watch.observe(line)));
    if let (Some(sid), Some(env), ProviderId::Gemini) = (&plan.discard_session, &discard_env, id) {
        super::gemini::forget_session(env, sid, &session_cwd);
    }
    let out = match ran {
        Ok(o) => o,
        Err(e) => {
            let not_found = e.not_found();
            let too_long = e.error.raw_os_error() == Some(libc::E2BIG);
            return fail(Failure::Spawn {
                message: e.to_string(),
                not_found,
                too_long,
            });
        }
    };
    let result = if out.stop == exec::Stop::Aborted {
        Err(Failure::Network(
            watch
                .reason()
                .unwrap_or("the CLI cannot reach its API")
                .to_string(),
        ))
    } else if out.stdout_truncated {
        Err(Failure::StdoutLimit)
    } else if !out.success() {
        Err(Failure::Process)
    } else {
        // Read back once for the parser; a spilled capture is on the heap only meanwhile.
        let bytes = match out.stdout_bytes() {
            Ok(b) => b,
            Err(e) => {
                let m = format!("could not read back the CLI's output: {e}");
                return Report {
                    output: Some(out),
                    result: Err(Failure::Setup(m)),
                };
            }
        };
        let stdout = String::from_utf8_lossy(&bytes);
        let parsed = match id {
            ProviderId::Claude => super::claude::parse(plan.format, plan.output_mode, &stdout),
            ProviderId::Codex => {
                super::codex::parse(plan.format, plan.output_mode, &stdout, work_dir)
            }
            ProviderId::Gemini => super::gemini::parse(plan.format, &stdout),
        };
        parsed.map_err(|e| match e {
            ParseError::OutputLimit => Failure::FileLimit,
            ParseError::Bad(m) => Failure::Parse(m),
        })
    };
    Report {
        output: Some(out),
        result,
    }
}

/// The directory the CLI runs in: the work directory, or for a plan with `shared_cwd` the
/// owner-only `<shared root>/.<cli>-cwd` (created when missing).
fn shared_cwd(
    id: ProviderId,
    plan: &Plan,
    work_dir: &Path,
    root: Option<&Path>,
) -> Result<PathBuf, String> {
    let Some(parent) = root.or(work_dir.parent()).filter(|_| plan.shared_cwd) else {
        return Ok(work_dir.to_path_buf());
    };
    let dir = parent.join(format!(".{}-cwd", id.bare_name()));
    exec::ensure_private_dir(&dir)
        .map(|()| dir.clone())
        .map_err(|e| format!("could not prepare {}: {e}", dir.display()))
}

/// The argv for a CLI that runs outside the work directory: a `--flag=<name>` whose value is
/// one of the plan's files (or its output file) names that file by its absolute path.
fn absolute_file_args(plan: &Plan, work_dir: &Path) -> Vec<OsString> {
    let names: Vec<&str> = plan
        .files
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(plan.output_path.as_deref())
        .collect();
    plan.args
        .iter()
        .map(|a| match a.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") && names.contains(&v) => {
                let mut s = OsString::from(format!("{flag}="));
                s.push(work_dir.join(v));
                s
            }
            _ => OsString::from(a),
        })
        .collect()
}

/// Removes `dir`'s empty parents up to (not including) `root`.
pub fn prune_empty_parents(dir: &Path, root: &Path) {
    let mut cur = dir.parent();
    while let Some(p) = cur {
        if p == root || !p.starts_with(root) {
            break;
        }
        if std::fs::remove_dir(p).is_err() {
            break;
        }
        cur = p.parent();
    }
}
