//! A subagent run's CLI (subagents-shell.md §4): the subagent's owner-only work directory, the
//! plan's files in it, and the CLI itself (own process group, scrubbed env, run timeout,
//! cancellable), watched for network failures.

use super::*;
use crate::providers::diagnose::NetworkWatch;

/// How the CLI run went, and what its start-up and its output watcher learned.
pub(super) struct CliRun {
    /// The CLI's output, or why it could not be run.
    pub(super) result: Result<exec::Output, String>,
    pub(super) duration_ms: u64,
    /// Codex's `codex login status` said "Not logged in"; nothing was started.
    not_logged_in: Option<String>,
    /// The CLI could not be started because it is not there.
    not_found: bool,
    watch: NetworkWatch,
}

impl CliRun {
    pub(super) fn signals(&self) -> Signals<'_> {
        Signals {
            not_logged_in: self.not_logged_in.clone(),
            not_found: self.not_found,
            network: self.watch.reason(),
        }
    }
}

pub(super) fn safe_segment(v: &str, label: &str) -> Result<String, String> {
    let t = v.trim();
    if t.is_empty() {
        return Err(format!("{label} is required"));
    }
    if t == "." || t == ".." {
        return Err(format!("{label} contains invalid path segments"));
    }
    if t.contains('/') || t.contains('\\') || t.contains('\0') {
        return Err(format!("{label} contains path separators"));
    }
    Ok(t.to_string())
}

/// Step 24 (§4): runs the plan's CLI in the subagent's work directory. Err = ids that cannot
/// name a directory (the job cannot be processed).
pub(super) fn run_cli(
    ctx: &JobContext,
    prep: &Prepared,
    em: &mut Emitter,
    plan: &SubPlan,
) -> Result<CliRun, String> {
    let sid = safe_segment(&prep.subagent_id, "subagent id")?;
    safe_segment(&prep.run_id, "run id")?;
    let root = ctx.providers.work_root().join("subagents");
    // One work directory per subagent, kept between its runs: Claude finds a session to
    // `--resume` only while the directory it was started in exists (Claude Code 2.1), and
    // Gemini keys its sessions by directory (Codex finds its threads by id from anywhere, so the
    // gateway resumes only a thread started in this directory: `codex::foreign_thread`).
    // Left-overs are swept after 14 days.
    let work = root.join(&sid);
    sweep_stale_dirs(&root, &sid);
    let started = Instant::now();
    em.emit(
        "run_progress",
        json!({"phase": "attempt_started", "attempt": 1, "max_attempts": 1}),
    );
    let mut run = CliRun {
        result: Err(String::new()),
        duration_ms: 0,
        not_logged_in: None,
        not_found: false,
        watch: NetworkWatch::new(prep.provider),
    };
    let ready = exec::ensure_private_dir(&root).and_then(|()| exec::ensure_private_dir(&work));
    run.result = match ready {
        Err(e) => Err(format!(
            "could not create the subagent work directory {}: {e}",
            work.display()
        )),
        Ok(()) => run_in(ctx, prep, plan, &work, &mut run),
    };
    run.duration_ms = started.elapsed().as_millis() as u64;
    Ok(run)
}

/// The plan's files written into `dir` (a previous run's file of the same name goes first),
/// the CLI run there, and the files removed again.
fn run_in(
    ctx: &JobContext,
    prep: &Prepared,
    plan: &SubPlan,
    dir: &Path,
    run: &mut CliRun,
) -> Result<exec::Output, String> {
    let mut written = Ok(());
    for (name, data) in &plan.files {
        // A previous run's file (or whatever a tool left under that name) goes first.
        let _ = std::fs::remove_file(dir.join(name));
        if let Err(e) = exec::write_private_file(&dir.join(name), data) {
            written = Err(format!("could not write {name} in the work directory: {e}"));
        }
    }
    let out = written.and_then(|()| spawn_cli(ctx, prep, plan, dir, run));
    for (name, _) in &plan.files {
        let _ = std::fs::remove_file(dir.join(name));
    }
    out
}

/// Codex's login pre-check, then the CLI under the run timeout, cancellable by the job's
/// token and registered with the job's children; every output line goes past the watcher.
fn spawn_cli(
    ctx: &JobContext,
    prep: &Prepared,
    plan: &SubPlan,
    dir: &Path,
    run: &mut CliRun,
) -> Result<exec::Output, String> {
    let env = providers::run::env_with(&plan.env, &plan.path_prepend, dir);
    if prep.provider == ProviderId::Codex {
        if let Some(m) = providers::codex::login_missing(&plan.command, &env, dir) {
            run.not_logged_in = Some(m.clone());
            return Err(m);
        }
        if let Some(m) = providers::codex::foreign_thread(plan, &env, dir) {
            return Err(m);
        }
    }
    let mut spec = exec::Spec::new(&plan.command);
    spec.args = plan.args.iter().map(Into::into).collect();
    spec.stdin = Some(plan.stdin.clone());
    spec.cwd = Some(dir.to_path_buf());
    spec.env = env.clone();
    spec.timeout = Some(plan.timeout);
    spec.grace = CANCEL_GRACE;
    spec.cancel = Some(ctx.cancel.clone());
    spec.register = Some((ctx.children.clone(), ctx.job_id.clone()));
    spec.tmp_base = Some(dir.to_path_buf());
    log::info!(target: "subagent", "starting subagent CLI subagent={} run={} provider={} timeout_ms={}",
        prep.subagent_id, prep.run_id, prep.provider.as_str(), plan.timeout.as_millis());
    let watch = &mut run.watch;
    let out = exec::run(spec, Some(&mut |_, line: &str| watch.observe(line))).map_err(|e| {
        run.not_found = e.not_found();
        e.to_string()
    });
    plan.discard_session(&env, dir);
    out
}
