//! exec against real processes: sh, cat, head, sleep.

use super::*;
use std::ffi::OsStr;

fn sh(script: &str) -> Spec {
    Spec::new("/bin/sh").arg("-c").arg(script)
}

/// True once `pid` is gone or a zombie of someone else (reparented to init and not yet reaped).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Kills a pid at the end of a test even if an assertion failed first.
struct KillOnDrop(Vec<i32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            if p > 1 {
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
    }
}

#[test]
fn captures_both_streams_and_exit_code() {
    let o = run(sh("echo out; echo err >&2; exit 7"), None).unwrap();
    assert_eq!(o.stdout, b"out\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.exit_code, Some(7));
    assert_eq!(o.stop, Stop::None);
    assert!(!o.success());
}

#[test]
fn spawn_error_names_the_program() {
    let e = run(Spec::new("/nonexistent/claude-xyz"), None).unwrap_err();
    assert!(e.not_found());
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/claude-xyz"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
}

#[test]
fn timeout_kills_and_reports() {
    let t0 = Instant::now();
    let o = run(sh("sleep 30").timeout(Duration::from_millis(300)), None).unwrap();
    assert_eq!(o.stop, Stop::TimedOut);
    assert!(o.timed_out());
    assert_eq!(o.exit_code, None);
    assert_eq!(o.signal, Some(libc::SIGTERM));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn sigterm_ignored_escalates_to_sigkill_after_grace() {
    let mut spec = sh("trap '' TERM; echo ready; while :; do sleep 0.05; done");
    spec.timeout = Some(Duration::from_millis(200));
    spec.grace = Duration::from_millis(300);
    let t0 = Instant::now();
    let o = run(spec, None).unwrap();
    assert_eq!(o.stop, Stop::TimedOut);
    assert_eq!(o.signal, Some(libc::SIGKILL));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn timeout_kills_the_whole_group_including_grandchildren() {
    // The grandchild holds no pipe, so only the group kill can reach it.
    let o = run(
        sh("sleep 300 >/dev/null 2>&1 & echo $!; wait").timeout(Duration::from_millis(300)),
        None,
    )
    .unwrap();
    let gc: i32 = o.stdout_lossy().trim().parse().unwrap();
    let _guard = KillOnDrop(vec![gc]);
    assert_eq!(o.stop, Stop::TimedOut);
    assert!(
        wait_until(Duration::from_secs(3), || process_gone(gc)),
        "grandchild {gc} survived"
    );
}

#[test]
fn background_grandchild_does_not_outlive_its_leader() {
    // Leader exits at once; the grandchild keeps stdout open. Without the group kill the run
    // would wait for it (or leave it behind).
    let t0 = Instant::now();
    let o = run(sh("sleep 300 & echo $!"), None).unwrap();
    let gc: i32 = o.stdout_lossy().trim().parse().unwrap();
    let _guard = KillOnDrop(vec![gc]);
    assert_eq!(o.exit_code, Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(wait_until(Duration::from_secs(3), || process_gone(gc)));
}

#[test]
fn child_is_reaped_no_zombie() {
    let pid_file = std::env::temp_dir().join(format!("pgw-exec-zombie-{}", std::process::id()));
    let o = run(sh(&format!("echo $$ > {}", pid_file.display())), None).unwrap();
    assert_eq!(o.exit_code, Some(0));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_file(&pid_file);
    // Reaped by us: no /proc entry, and waitpid has nothing left to collect.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    assert_eq!(r, -1);
}

#[test]
fn output_beyond_the_limit_is_drained_and_flagged() {
    let o = run(sh("head -c 12000000 /dev/zero; echo done >&2"), None).unwrap();
    assert_eq!(o.exit_code, Some(0));
    assert!(o.stdout_truncated);
    assert_eq!(o.stdout.len(), CAPTURE_LIMIT);
    assert_eq!(o.stdout_total, 12_000_000);
    assert!(!o.stderr_truncated);
    assert_eq!(o.stderr, b"done\n");
}

#[test]
fn both_streams_flooding_at_once_do_not_deadlock() {
    let mut spec = sh("head -c 3000000 /dev/zero >&2 & head -c 3000000 /dev/zero; wait");
    spec.capture_limit = 1000;
    spec.timeout = Some(Duration::from_secs(20));
    let o = run(spec, None).unwrap();
    assert_eq!(o.stop, Stop::None);
    assert_eq!((o.stdout_total, o.stderr_total), (3_000_000, 3_000_000));
    assert!(o.stdout_truncated && o.stderr_truncated);
    assert_eq!(o.stdout.len(), 1000);
}

#[test]
fn large_stdin_is_written_while_output_is_read() {
    // cat echoes 20 MB back: with a blocking write before reading, both pipes would fill up.
    let input: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut spec = Spec::new("cat");
    spec.stdin = Some(input.clone());
    spec.capture_limit = 30_000_000;
    spec.timeout = Some(Duration::from_secs(30));
    let o = run(spec, None).unwrap();
    assert_eq!(o.stop, Stop::None);
    assert_eq!(o.stdin_unwritten, 0);
    assert!(o.stdout == input, "echoed bytes differ");
}

#[test]
fn child_that_ignores_stdin_does_not_block_the_writer() {
    let mut spec = sh("exit 0");
    spec.stdin = Some(vec![b'x'; 10_000_000]);
    spec.timeout = Some(Duration::from_secs(10));
    let o = run(spec, None).unwrap();
    assert_eq!(o.stop, Stop::None);
    assert_eq!(o.exit_code, Some(0));
    assert!(o.stdin_unwritten > 0);
}

#[test]
fn cancel_token_stops_the_child() {
    let cancel = CancelToken::new();
    let mut spec = sh("sleep 30");
    spec.cancel = Some(cancel.clone());
    let c2 = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c2.cancel();
    });
    let t0 = Instant::now();
    let o = run(spec, None).unwrap();
    t.join().unwrap();
    assert_eq!(o.stop, Stop::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// Runs `script` on a thread, registered in a fresh registry under `job`; returns once the
/// registry holds its child.
fn run_registered(script: &str, job: &str) -> (Arc<Children>, std::thread::JoinHandle<Output>) {
    let children = Arc::new(Children::new());
    let mut spec = sh(script);
    spec.register = Some((children.clone(), job.into()));
    let c2 = children.clone();
    let t = std::thread::spawn(move || run(spec, None).unwrap());
    assert!(wait_until(Duration::from_secs(5), || c2.len() == 1));
    (children, t)
}

#[test]
fn registry_reaches_running_children_and_forgets_finished_ones() {
    let (children, t) = run_registered(
        "trap '' TERM; sleep 0.2; sleep 0.2; sleep 0.2; sleep 30",
        "job-1",
    );
    children.kill_job("other-job", Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(children.len(), 1, "another job's kill must not touch it");
    let t0 = Instant::now();
    // SIGTERM is trapped, so this needs the SIGKILL after the grace.
    children.kill_all(Duration::from_millis(300));
    assert!(children.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(4));
    let o = t.join().unwrap();
    assert_eq!(o.stop, Stop::Killed);
    assert_eq!(o.signal, Some(libc::SIGKILL));
}

#[test]
fn kill_job_terminates_that_job() {
    let (children, t) = run_registered("sleep 30", "job-2");
    children.kill_job("job-2", Duration::from_secs(2));
    let o = t.join().unwrap();
    assert_eq!(o.stop, Stop::Killed);
    assert_eq!(o.signal, Some(libc::SIGTERM));
    assert_eq!(children.len(), 0);
}

#[test]
fn environment_is_scrubbed_and_tmpdir_is_private() {
    let vars = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", "/tmp/nohome".into()),
        ("SUPABASE_URL", "http://x".into()),
        ("SUPABASE_SERVICE_ROLE_KEY", "secret".into()),
        ("https_proxy", "http://proxy".into()),
        ("PANORAMA_GATEWAY_CONFIG_DIR", "/x".into()),
        ("PANORAMA_GATEWAY_ANYTHING", "/x".into()),
        ("PANORAMA_CLAUDE_CLI", "/opt/claude".into()),
        ("ANTHROPIC_API_KEY", "kept".into()),
        ("supabase_url", "lowercase too".into()),
        ("FROM_ENV_FILE", "loaded by --env-file".into()),
        ("PANORAMA_GATEWAY_ENV_FILE_NAMES", "FROM_ENV_FILE".into()),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let mut spec = Spec::new("/bin/sh")
        .arg("-c")
        .arg("env; echo TMPMODE=$(stat -c %a \"$TMPDIR\")");
    spec.env = child_env_from(vars, &[("EXTRA", Some(OsStr::new("1")))]);
    let base = std::env::temp_dir().join(format!("pgw-exec-tmpbase-{}", std::process::id()));
    spec.tmp_base = Some(base.clone());
    let o = run(spec, None).unwrap();
    let text = o.stdout_lossy();
    let names: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
    for gone in [
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "https_proxy",
        "PANORAMA_GATEWAY_CONFIG_DIR",
        "PANORAMA_GATEWAY_ANYTHING",
        "PANORAMA_CLAUDE_CLI",
        "supabase_url",
        "FROM_ENV_FILE",
        "PANORAMA_GATEWAY_ENV_FILE_NAMES",
    ] {
        assert!(!names.contains(&gone), "{gone} leaked:\n{text}");
    }
    for kept in ["ANTHROPIC_API_KEY", "EXTRA", "HOME"] {
        assert!(names.contains(&kept), "{kept} missing:\n{text}");
    }
    let tmpdir = text
        .lines()
        .find_map(|l| l.strip_prefix("TMPDIR="))
        .unwrap()
        .to_string();
    assert!(tmpdir.starts_with(base.to_str().unwrap()), "{tmpdir}");
    assert!(text.contains(&format!("TMP={tmpdir}")));
    assert!(text.contains(&format!("TEMP={tmpdir}")));
    assert!(text.contains("TMPMODE=700"), "{text}");
    assert!(
        !std::path::Path::new(&tmpdir).exists(),
        "tmpdir not removed"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn no_descriptors_leak_into_the_child() {
    // Open a file in the parent without caring about flags: std opens with O_CLOEXEC.
    let _held = std::fs::File::open("/proc/self/stat").unwrap();
    let o = run(Spec::new("ls").arg("/proc/self/fd"), None).unwrap();
    let fds: Vec<String> = o.stdout_lossy().lines().map(String::from).collect();
    // 0, 1, 2 and the directory ls itself is reading.
    assert!(fds.len() <= 4, "{fds:?}");
}

#[test]
fn private_dirs_must_be_ours_and_closed() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("pgw-exec-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let ok = base.join("a/b");
    ensure_private_dir(&ok).unwrap();
    assert_eq!(
        std::fs::metadata(&ok).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = ensure_private_dir(&open).unwrap_err().to_string();
    assert!(e.contains("accessible to other users"), "{e}");
    let link = base.join("link");
    std::os::unix::fs::symlink(&ok, &link).unwrap();
    let e = ensure_private_dir(&link).unwrap_err().to_string();
    assert!(e.contains("symlink"), "{e}");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn line_callback_sees_each_stdout_line() {
    let mut seen = Vec::new();
    let mut cb = |s: Stream, l: &str| {
        seen.push(format!("{s:?}:{l}"));
        false
    };
    let o = run(
        sh("printf 'a\\nbb\\n'; printf 'e\\n' >&2; sleep 0.1; printf 'c'"),
        Some(&mut cb),
    )
    .unwrap();
    assert_eq!(o.exit_code, Some(0));
    seen.sort();
    assert_eq!(seen, vec!["Stderr:e", "Stdout:a", "Stdout:bb", "Stdout:c"]);
}

#[test]
fn a_watcher_can_stop_a_child_that_keeps_retrying() {
    // A CLI that loops "Reconnecting..." on stderr forever is stopped at its third retry.
    let mut retries = 0;
    let mut cb = |s: Stream, l: &str| {
        if s == Stream::Stderr && l.starts_with("Reconnecting") {
            retries += 1;
        }
        retries >= 3
    };
    let started = Instant::now();
    let mut spec = sh("while true; do echo Reconnecting >&2; sleep 0.05; done");
    spec.timeout = Some(Duration::from_secs(30));
    let o = run(spec, Some(&mut cb)).unwrap();
    assert_eq!(o.stop, Stop::Aborted);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(retries >= 3);
}

// ---------------------------------------------------------------- bench (scripts/bench-exec.sh)

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// fork + execve + waitpid with nothing else: the floor exec is compared against.
fn bare_fork_exec(path: &std::ffi::CStr, args: &[&std::ffi::CStr]) {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: the child only calls execv and _exit.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

/// VmRSS of this process now, in KiB.
fn rss_now_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}

fn max_rss_kib() -> i64 {
    // SAFETY: plain getrusage on ourselves.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss
    }
}

#[test]
#[ignore = "benchmark: run through scripts/bench-exec.sh"]
fn bench_exec() {
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let fake = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bin/claude");
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/usr/bin/python3");
    println!("== spawn-to-exit, {iters} runs each (median)");
    let targets: Vec<(&str, String, Vec<String>)> = vec![
        ("/bin/true", "/bin/true".into(), vec![]),
        (
            "fake claude --version (python3)",
            python.to_string(),
            vec![fake.display().to_string(), "--version".into()],
        ),
    ];
    for (label, prog, args) in targets {
        let cprog = std::ffi::CString::new(prog.clone()).unwrap();
        let cargs: Vec<std::ffi::CString> = std::iter::once(prog.clone())
            .chain(args.iter().cloned())
            .map(|a| std::ffi::CString::new(a).unwrap())
            .collect();
        let cargs_ref: Vec<&std::ffi::CStr> = cargs.iter().map(|c| c.as_c_str()).collect();
        let mut bare = Vec::with_capacity(iters);
        let mut ours = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            bare_fork_exec(&cprog, &cargs_ref);
            bare.push(t.elapsed());
            let t = Instant::now();
            let mut spec = Spec::new(&prog).args(args.iter());
            spec.timeout = Some(Duration::from_secs(30));
            let o = run(spec, None).unwrap();
            assert_eq!(o.exit_code, Some(0));
            ours.push(t.elapsed());
        }
        let (b, o) = (median(bare), median(ours));
        println!(
            "{label:<34} bare fork/exec {:>8.3} ms   exec::run {:>8.3} ms   ratio {:.2}",
            b.as_secs_f64() * 1e3,
            o.as_secs_f64() * 1e3,
            o.as_secs_f64() / b.as_secs_f64()
        );
    }

    println!("== memory while a CLI floods stdout (max RSS of this process)");
    let base = max_rss_kib();
    println!("baseline max RSS {base} KiB, RSS now {} KiB", rss_now_kib());
    for (label, bytes) in [
        ("256 MiB", 256u64 << 20),
        ("1 GiB", 1u64 << 30),
        ("1 GiB again", 1u64 << 30),
    ] {
        let mut spec = Spec::new(&fake).arg("--print").arg("flood");
        spec.env.push(("FAKE_CLI_MODE".into(), "flood".into()));
        spec.env
            .push(("FAKE_CLI_FLOOD_BYTES".into(), bytes.to_string().into()));
        spec.timeout = Some(Duration::from_secs(300));
        let t = Instant::now();
        let o = run(spec, None).unwrap();
        let took = t.elapsed();
        assert_eq!(o.stdout_total, bytes);
        assert!(o.stdout_truncated);
        println!(
            "{label:<12} drained {:>5} MiB in {:>6.2} s ({:>6.0} MiB/s), kept {} bytes, max RSS {} KiB, RSS with capture held {} KiB",
            o.stdout_total >> 20,
            took.as_secs_f64(),
            (o.stdout_total >> 20) as f64 / took.as_secs_f64(),
            o.stdout.len(),
            max_rss_kib(),
            rss_now_kib()
        );
        drop(o);
    }
}

#[test]
fn a_spilled_capture_keeps_its_head_in_memory_and_the_rest_in_an_unlinked_file() {
    let dir = std::env::temp_dir().join(format!("pgw-spill-{}", std::process::id()));
    ensure_private_dir(&dir).unwrap();
    // 300,000 bytes of "é" (2 bytes each) then "end": spilled past 1,001 bytes (mid-character).
    let mut spec = sh("python3 -c 'import sys; sys.stdout.write(\"é\" * 150000 + \"end\")'");
    spec.spill = Some(Spill {
        after: 1001,
        dir: dir.clone(),
    });
    let o = run(spec, None).unwrap();
    assert!(o.success(), "{o:?}");
    assert_eq!(o.stdout.len(), 1001, "only the head is on the heap");
    assert_eq!(o.stdout_kept(), 300_003);
    let all = o.stdout_bytes().unwrap();
    assert_eq!(all.len(), 300_003);
    assert!(all.ends_with(b"end"));
    assert_eq!(o.stdout_chars().unwrap(), 150_003);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the spill file has no name anyone could open"
    );
    // The capture limit covers head and file together.
    let mut spec = sh("head -c 50000 /dev/zero");
    spec.capture_limit = 20_000;
    spec.spill = Some(Spill {
        after: 5000,
        dir: dir.clone(),
    });
    let o = run(spec, None).unwrap();
    assert!(o.stdout_truncated);
    assert_eq!((o.stdout.len(), o.stdout_kept()), (5000, 20_000));
    assert_eq!(o.stdout_total, 50_000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rule, family by family (issue 8: the fixed list let `SUPABASE_JWT_SECRET`,
/// `PANORAMA_ACCESS_TOKEN`, `POSTGRES_URL`, `ALL_PROXY`, … through).
#[test]
fn child_env_scrubs_by_rule_and_keeps_provider_keys() {
    let scrubbed = [
        // Supabase
        "SUPABASE_JWT_SECRET",
        "SUPABASE_ACCESS_TOKEN",
        "SUPABASE_DB_PASSWORD",
        "SUPABASE_SERVICE_KEY",
        "supabase_anon_key",
        // Panorama (the gateway's own settings included)
        "PANORAMA_SERVICE_ROLE_KEY",
        "PANORAMA_ACCESS_TOKEN",
        "PANORAMA_GATEWAY_CONFIG_DIR",
        // Postgres and databases
        "POSTGRES_URL",
        "POSTGRES_PASSWORD",
        "POSTGRESQL_URI",
        "PGPASSWORD",
        "DATABASE_URL",
        "DATABASE_CA_CERT",
        "DIRECT_DATABASE_URL",
        "APP_DB_PASSWORD",
        // secrets by what their name says
        "MY_SERVICE_ROLE_KEY",
        "AUTH_JWT_SECRET",
        // proxies
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "https_proxy",
    ];
    let kept = [
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AZURE_OPENAI_API_KEY",
        "CLAUDE_CODE_USE_BEDROCK",
        "GEMINI_CLI_TRUST_WORKSPACE",
        "PATH",
        "HOME",
        "NO_PROXY",
    ];
    let vars = scrubbed
        .iter()
        .chain(kept.iter())
        .map(|k| (OsString::from(k), OsString::from("v")));
    let env = child_env_from(vars, &[]);
    let names: Vec<String> = env
        .iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    for s in scrubbed {
        assert!(!names.iter().any(|n| n == s), "{s} reached the child");
    }
    for k in kept {
        assert!(names.iter().any(|n| n == k), "{k} was scrubbed");
    }
}
