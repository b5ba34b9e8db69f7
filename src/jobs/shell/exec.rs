//! `shell_exec`: one command through `<shell> -lc <command>` (2.32 contract).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::access::{check_now, Access, Refusal};
use super::payload::ExecPayload;
use super::{failed, pick_shell, tmp_base};
use crate::exec;
use crate::jobs::{FinalStatus, JobContext, Outcome, Prefetch, Prefetched};

/// Most bytes stdout and stderr may take in a `shell_exec` result once JSON-encoded. Each stream
/// is captured up to 5 MB, but two full streams (or control bytes, which JSON escapes to six
/// bytes each) would make a completion the backend refuses, and the job would stay `running`.
/// stdout keeps its 5 MB first; stderr gets at least 1 MB of the rest.
pub const RESULT_OUTPUT_BUDGET: usize = 6_000_000;
const STDERR_RESERVE: usize = 1_000_000;

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The JSON-encoded size of `s`, without the quotes.
fn json_size(s: &str) -> usize {
    s.chars().map(json_len).sum()
}

/// Cuts `s` (at a char boundary) so its JSON-encoded size is at most `budget`; true when cut.
fn cut_to_json_budget(s: &mut String, budget: usize) -> bool {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += json_len(c);
        if used > budget {
            s.truncate(i);
            return true;
        }
    }
    false
}

/// Fits stdout and stderr into [`RESULT_OUTPUT_BUDGET`]; returns whether each was cut.
fn fit_output(stdout: &mut String, stderr: &mut String) -> (bool, bool) {
    let out_size = json_size(stdout);
    let err_size = json_size(stderr);
    if out_size + err_size <= RESULT_OUTPUT_BUDGET {
        return (false, false);
    }
    let out_budget = out_size
        .min(exec::CAPTURE_LIMIT)
        .min(RESULT_OUTPUT_BUDGET - err_size.min(STDERR_RESERVE));
    let out_cut = cut_to_json_budget(stdout, out_budget);
    let err_budget = RESULT_OUTPUT_BUDGET - json_size(stdout);
    let err_cut = cut_to_json_budget(stderr, err_budget);
    (out_cut, err_cut)
}

/// The rows [`handle_exec`] checks, read alongside the claim: none when the payload is not an
/// object (the handler fails it without reading).
pub fn exec_prefetch(payload: &Value) -> Option<Prefetch> {
    let p = ExecPayload::parse(payload).ok()?;
    Some(Prefetch::RemoteShell {
        resource_id: p.resource_id.ok(),
    })
}

/// `prefetched`: the rows read alongside the claim ([`exec_prefetch`]); read now when absent.
pub fn handle_exec(payload: &Value, ctx: &JobContext, prefetched: Option<Prefetched>) -> Outcome {
    if ctx.cancel.is_cancelled() {
        return failed(
            "Gateway remote shell exec job was cancelled before execution",
            &[("cancelled", Value::Bool(true))],
        );
    }
    let p = match ExecPayload::parse(payload) {
        Ok(p) => p,
        Err(bad) => return bad.fail(&[]),
    };
    // Machine control first, then the resource id, then the resource (the reference's order),
    // from one parallel read of the two rows.
    let rid = p.resource_id.as_deref().ok();
    let read = prefetched.and_then(|Prefetched::RemoteShell { resource_id, rows }| {
        (resource_id.as_deref() == rid).then_some(rows)
    });
    match check_now(ctx, rid, Access::Write, read) {
        Ok(()) => {}
        Err(Refusal::Control(m)) => {
            log::info!(target: "shell", "shell_exec denied job_id={} reason={m:?}", ctx.job_id);
            return failed(m, &[]);
        }
        Err(Refusal::Resource(m)) => {
            let rid = p.resource_id.as_deref().unwrap_or_default();
            log::info!(target: "shell", "shell_exec denied job_id={} resource_id={rid} reason={m:?}", ctx.job_id);
            return failed(&m, &[("resource_id", Value::String(rid.to_string()))]);
        }
    }
    let rid = match p.resource_id {
        Ok(r) => r,
        Err(bad) => return bad.fail(&[]),
    };
    let rid_v = Value::String(rid.clone());
    let command = match p.command {
        Ok(c) => c,
        Err(bad) => return bad.fail(&[("resource_id", rid_v.clone())]),
    };
    if p.wants_secrets {
        return failed(
            "Team secrets can only be injected inside a managed VM",
            &[("resource_id", rid_v)],
        );
    }
    let timeout_ms = p.timeout_ms;
    let shell = pick_shell();
    let mut spec = exec::Spec::new(&shell)
        .arg("-lc")
        .arg(&command)
        .timeout(Duration::from_millis(timeout_ms));
    spec.cwd = Some(PathBuf::from("/"));
    spec.cancel = Some(ctx.cancel.clone());
    spec.register = Some((ctx.children.clone(), ctx.job_id.clone()));
    spec.tmp_base = Some(tmp_base(ctx));
    log::info!(target: "shell", "shell_exec start job_id={} resource_id={rid} timeout_ms={timeout_ms} command_bytes={}", ctx.job_id, command.len());
    let started = Instant::now();
    let run = exec::run(spec, None);
    let ran = Ran::from_run(&run, ctx);
    let duration = run
        .as_ref()
        .map(|o| o.duration)
        .unwrap_or_else(|_| started.elapsed());
    let duration_ms = duration.as_millis() as u64;
    // run_us: spawn to reaped, for benchmarks (scripts/bench-lifecycle.sh) finer than the log's
    // millisecond timestamps.
    log::info!(target: "shell", "shell_exec done job_id={} exit_code={:?} timed_out={} duration_ms={duration_ms} run_us={}", ctx.job_id, ran.exit_code, ran.timed_out, duration.as_micros());
    let r = ran.into_result(
        rid,
        command,
        shell.to_string_lossy().into_owned(),
        duration_ms,
    );
    Outcome {
        status: FinalStatus::Completed,
        result: Some(Value::Object(r)),
        error: None,
        debug: None,
    }
}

/// What a run of the command gave, as the result reports it.
struct Ran {
    message: &'static str,
    stdout: String,
    stderr: String,
    exit_code: Option<i32>,
    timed_out: bool,
    success: bool,
    stdout_truncated: bool,
    stderr_truncated: bool,
    error: Option<String>,
    stopped: bool,
}

impl Ran {
    fn from_run(run: &Result<exec::Output, exec::SpawnError>, ctx: &JobContext) -> Ran {
        let o = match run {
            Err(e) => {
                return Ran {
                    message: "Remote shell command failed to start",
                    stdout: String::new(),
                    stderr: String::new(),
                    exit_code: None,
                    timed_out: false,
                    success: false,
                    stdout_truncated: false,
                    stderr_truncated: false,
                    error: Some(e.to_string()),
                    stopped: false,
                }
            }
            Ok(o) => o,
        };
        let stopped = matches!(o.stop, exec::Stop::Cancelled | exec::Stop::Killed);
        let message = if o.timed_out() {
            "Remote shell command timed out"
        } else if stopped {
            "Remote shell command was stopped before it finished"
        } else if o.success() {
            "Remote shell command completed"
        } else {
            "Remote shell command completed with a non-zero exit status"
        };
        let (mut stdout, mut stderr) = (o.stdout_lossy(), o.stderr_lossy());
        let (out_cut, err_cut) = fit_output(&mut stdout, &mut stderr);
        if out_cut || err_cut {
            log::info!(target: "shell", "shell_exec output cut to the result budget job_id={} stdout_bytes={} stderr_bytes={}", ctx.job_id, stdout.len(), stderr.len());
        }
        Ran {
            message,
            stdout,
            stderr,
            exit_code: o.exit_code,
            timed_out: o.timed_out(),
            success: o.success(),
            stdout_truncated: o.stdout_truncated || out_cut,
            stderr_truncated: o.stderr_truncated || err_cut,
            error: None,
            stopped,
        }
    }

    fn into_result(
        self,
        rid: String,
        command: String,
        shell: String,
        duration_ms: u64,
    ) -> Map<String, Value> {
        let (so_t, se_t) = (self.stdout_truncated, self.stderr_truncated);
        let mut r = Map::new();
        r.insert("message".into(), self.message.into());
        r.insert("resource_id".into(), rid.into());
        r.insert("command".into(), command.into());
        r.insert("shell".into(), shell.into());
        r.insert("exec_user".into(), Value::Null);
        r.insert("workload_id".into(), Value::Null);
        r.insert("cgroup".into(), Value::Null);
        r.insert("cgroup_termination_error".into(), Value::Null);
        r.insert("process_tree_contained".into(), Value::Bool(false));
        r.insert("cwd".into(), "/".into());
        r.insert("stdout".into(), self.stdout.into());
        r.insert("stderr".into(), self.stderr.into());
        r.insert("exit_code".into(), json!(self.exit_code));
        r.insert("duration_ms".into(), json!(duration_ms));
        r.insert("timed_out".into(), Value::Bool(self.timed_out));
        r.insert("success".into(), Value::Bool(self.success));
        r.insert("readiness_evidence".into(), Value::Null);
        r.insert("stdout_truncated".into(), Value::Bool(so_t));
        r.insert("stderr_truncated".into(), Value::Bool(se_t));
        r.insert("output_truncated".into(), Value::Bool(so_t || se_t));
        r.insert("error".into(), json!(self.error));
        if self.stopped {
            r.insert("cancelled".into(), Value::Bool(true));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_fits_the_result_budget_stdout_first() {
        // Small output is untouched.
        let (mut o, mut e) = ("a\n".to_string(), "\"b\"".to_string());
        assert_eq!(fit_output(&mut o, &mut e), (false, false));
        assert_eq!((o.as_str(), e.as_str()), ("a\n", "\"b\""));
        // 5 MB stdout + small stderr: untouched (the per-stream contract).
        let (mut o, mut e) = ("a".repeat(5_000_000), "e".repeat(900_000));
        assert_eq!(fit_output(&mut o, &mut e), (false, false));
        // Two full streams: stdout keeps 5 MB, stderr the rest of the budget.
        let (mut o, mut e) = ("a".repeat(5_000_000), "e".repeat(5_000_000));
        assert_eq!(fit_output(&mut o, &mut e), (false, true));
        assert_eq!((o.len(), e.len()), (5_000_000, 1_000_000));
        // Control bytes are measured as JSON writes them.
        let (mut o, mut e) = ("\0".repeat(2_000_000), String::new());
        assert_eq!(fit_output(&mut o, &mut e), (true, false));
        let encoded = serde_json::to_string(&o).unwrap().len() - 2;
        assert!(encoded <= 5_000_000 && encoded > 4_999_990, "{encoded}");
        // Multi-byte characters are cut at a boundary.
        let mut s = "é".repeat(10);
        assert!(cut_to_json_budget(&mut s, 5));
        assert_eq!(s, "éé");
        assert_eq!(json_size("\"\\\n\u{1}é"), 2 + 2 + 2 + 6 + 2);
    }
}
