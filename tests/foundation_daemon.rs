//! The daemon as a user runs it: background and foreground start, the pid lock, stop, status
//! exit codes, signals, SIGHUP reload, log rotation and `logs` follow, redaction in the log,
//! auto-restart on upgrade.
//!
//! "Running" is status 0 or 1: the runtime may report degraded against the dead test backend.

mod common;

use std::fs;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(20);

fn running(w: &World) -> bool {
    let (code, v) = status_json(w);
    (code == 0 || code == 1) && v["running"] == true
}

#[test]
fn background_start_status_stop() {
    let w = World::new("bg");
    w.write_paired_config();
    let pid = start_daemon(&w, &[]);
    let _g = PidGuard(pid);
    assert!(is_alive(pid));
    assert_eq!(
        fs::read_to_string(w.pid_file()).unwrap(),
        format!("{pid}\n")
    );
    assert_eq!(mode(&w.pid_file()), 0o600);
    assert_eq!(mode(&w.log()), 0o600);
    assert_eq!(mode(&w.status_file()), 0o600);
    // detached: its own session
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], pid.to_string(), "session id = pid (setsid)");

    let (code, v) = status_json(&w);
    assert!(code == 0 || code == 1, "running: {code} {v}");
    assert_eq!(v["running"], true);
    assert_eq!(v["pid"], pid);
    assert_eq!(v["paired"], true);
    assert_eq!(v["connected"], code == 0);
    let o = w.run(&["status", "-v"]);
    assert!(
        stdout(&o).contains(&format!("Gateway: running (pid {pid}, up ")),
        "{}",
        stdout(&o)
    );

    // a second start is a no-op
    let o = w.run(&["start", "--daemon"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o).trim(),
        format!("Gateway already running (pid {pid})")
    );
    // and so is a foreground one: no second daemon, the pid file untouched
    let o = w.run(&["start", "--foreground"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains(&format!("already running (pid {pid})")),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        fs::read_to_string(w.pid_file()).unwrap(),
        format!("{pid}\n")
    );

    let o = w.run(&["stop"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("OK Gateway stopped"), "{}", stdout(&o));
    wait_for("daemon exit", T, || !is_alive(pid));
    assert!(!w.pid_file().exists(), "pid file removed");
    let (code, v) = status_json(&w);
    assert_eq!(code, 3);
    assert_eq!(v["running"], false);
    let log = w.read_log();
    assert!(log.contains("[daemon] gateway started"), "{log}");
    assert!(log.contains("SIGTERM received: draining"), "{log}");
    assert!(log.contains("[daemon] gateway stopped"), "{log}");
    // every line has the documented shape
    for l in log.lines().filter(|l| l.starts_with("20")) {
        let parts: Vec<&str> = l.splitn(4, ' ').collect();
        assert!(parts[0].ends_with('Z') && parts[0].len() == 24, "{l}");
    }
}

#[test]
fn stale_pid_file_is_replaced_on_start() {
    let w = World::new("stale");
    w.write_paired_config();
    fs::write(w.pid_file(), "999999\n").unwrap();
    let pid = start_daemon(&w, &[]);
    let _g = PidGuard(pid);
    assert_ne!(pid, 999999);
    assert_eq!(
        fs::read_to_string(w.pid_file()).unwrap(),
        format!("{pid}\n")
    );
    assert!(running(&w));
    let o = w.run(&["stop", "--timeout", "30"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn unpaired_background_start_fails_with_the_reason() {
    let w = World::new("unpaired");
    let o = w.run(&["start", "--daemon"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not paired: run panorama-gateway pair <CODE>"),
        "{}",
        stderr(&o)
    );
    assert!(!w.pid_file().exists());
}

#[test]
fn foreground_sigterm_drains_and_exits_zero() {
    let w = World::new("fgterm");
    w.write_paired_config();
    let mut c = w.cmd(&["start"]); // debug build: foreground by default
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut g = ChildGuard::spawn(c);
    let pid = g.pid();
    wait_for("foreground daemon running", T, || running(&w));
    assert_eq!(status_json(&w).1["pid"], pid);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = g.wait_exit(T);
    let mut err = String::new();
    g.child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(0), "{st:?}: {err}");
    assert!(!w.pid_file().exists());
    assert!(
        err.contains("SIGTERM received: draining"),
        "log copied to stderr: {err}"
    );
    let mut out = String::new();
    g.child()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains(&format!("Gateway running in the foreground (pid {pid})")),
        "{out}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.status_file()).unwrap()).unwrap();
    assert_eq!(s["connection"], "stopped");
}

#[test]
fn sigquit_stops_now_and_stop_force_works() {
    let w = World::new("quit");
    w.write_paired_config();
    let mut c = w.cmd(&["start", "--foreground"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut g = ChildGuard::spawn(c);
    wait_for("running", T, || running(&w));
    unsafe { libc::kill(g.pid() as i32, libc::SIGQUIT) };
    assert_eq!(g.wait_exit(T).code(), Some(0));
    assert!(w.read_log().contains("SIGQUIT received: stopping now"));
    assert!(!w.pid_file().exists());

    let pid = start_daemon(&w, &[]);
    let _g = PidGuard(pid);
    let o = w.run(&["stop", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("OK Gateway stopped"), "{}", stdout(&o));
    wait_for("exit", T, || !is_alive(pid));
}

#[test]
fn sighup_rereads_full_control() {
    let w = World::new("hup");
    w.write_paired_config();
    let pid = start_daemon(&w, &[]);
    let _g = PidGuard(pid);
    let o = w.run(&["full-control", "enable"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(&format!("pid {pid}")), "{}", stdout(&o));
    wait_for("reload logged", T, || {
        w.read_log()
            .contains("config re-read full_control_enabled=true")
    });
    wait_for("status file updated", T, || {
        fs::read_to_string(w.status_file())
            .map(|s| s.contains("\"full_control_enabled\": true"))
            .unwrap_or(false)
    });
    let (_, v) = status_json(&w);
    assert_eq!(v["full_control_enabled"], true);
    // a corrupt config holding a token: the warning names the problem, the token never
    // reaches the log
    fs::write(
        w.config(),
        format!("{{\"accessToken\": \"{JWT}\", \"full_control_enabled\": \"{JWT}\"}}"),
    )
    .unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for("warning logged", T, || {
        w.read_log().contains("cannot re-read gateway.json")
    });
    let log = w.read_log();
    assert!(!log.contains("eyJ"), "token leaked: {log}");
    assert!(!log.contains("c2lnbmF0dXJlLXNlY3JldA"), "{log}");
    let o = w.run(&["stop"]);
    assert_eq!(o.status.code(), Some(0));
}

/// The log files on disk, oldest first (`gateway.log.2`, `.1`, `gateway.log`): inode and text
/// of each, read while no rotation happened (inodes checked before and after).
fn log_files(w: &World) -> Vec<(u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let paths = ["gateway.log.2", "gateway.log.1", "gateway.log"].map(|f| w.cfg.join(f));
    let inodes = || {
        paths
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.ino()).unwrap_or(0))
            .collect::<Vec<_>>()
    };
    loop {
        let before = inodes();
        let texts: Vec<String> = paths
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect();
        if inodes() == before && before[2] != 0 {
            return before
                .into_iter()
                .zip(texts)
                .filter(|(ino, _)| *ino != 0)
                .collect();
        }
    }
}

const HUP_LINE: &str = "SIGHUP: log reopened";

/// The same log file in two snapshots: files only grow, and an inode number may be reused by
/// a new file once the old one was rotated away.
fn same_file(prev: &(u64, String), now: &(u64, String)) -> bool {
    prev.0 == now.0 && now.1.starts_with(&prev.1)
}

/// `SIGHUP: log reopened` lines added between two [`log_files`] snapshots.
fn hup_lines_added(prev: &[(u64, String)], now: &[(u64, String)]) -> usize {
    now.iter()
        .map(|n| {
            let before = prev
                .iter()
                .find(|p| same_file(p, n))
                .map_or(0, |(_, t)| t.matches(HUP_LINE).count());
            n.1.matches(HUP_LINE).count() - before
        })
        .sum()
}

/// Sends one SIGHUP and waits until its line is in the log; the files afterwards.
fn hup_once(w: &World, pid: u32, prev: &[(u64, String)]) -> Vec<(u64, String)> {
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let mut now = Vec::new();
    wait_for_every("SIGHUP logged", T, Duration::from_millis(1), || {
        now = log_files(w);
        hup_lines_added(prev, &now) == 1
    });
    now
}

/// Every line on disk written after the follower started is in its output exactly once, in
/// order, and nothing else: the output and the files on disk end alike (whichever reaches
/// further back). Lines rotated away are not on disk and not compared.
fn follower_matches_disk(seen: &str, files: &[(u64, String)]) -> bool {
    let disk: String = files.iter().map(|(_, t)| t.as_str()).collect();
    let (got, want): (Vec<&str>, Vec<&str>) = (seen.lines().collect(), disk.lines().collect());
    seen.ends_with('\n')
        && if got.len() >= want.len() {
            got.ends_with(&want)
        } else {
            want.ends_with(&got)
        }
}

#[test]
fn log_rotates_and_logs_follows_across_rotation() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new("rotate");
    w.write_paired_config();
    let pid = start_daemon(&w, &[("PANORAMA_GATEWAY_LOG_MAX_BYTES", "2048")]);
    let _g = PidGuard(pid);

    // follow from now on
    let mut c = w.cmd(&["logs", "--lines", "1"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut follower = ChildGuard::spawn(c);
    let fpid = follower.pid() as i32;
    let seen = capture(follower.child().stdout.take().unwrap());
    let notes = capture(follower.child().stderr.take().unwrap());
    let cur_ino = || fs::metadata(w.log()).map(|m| m.ino()).unwrap_or(0);
    // Caught up: printed everything on disk, and reading the current file (not still the
    // previous one, which would make the rotations counted below one more for it).
    let wait_caught_up = |what: &str| {
        let deadline = Instant::now() + T;
        loop {
            let files = log_files(&w);
            let got = seen.lock().unwrap().clone();
            if follower_matches_disk(&got, &files) && open_inodes(fpid as u32).contains(&cur_ino())
            {
                return files;
            }
            if Instant::now() > deadline {
                let disk: String = files.iter().map(|(_, t)| t.as_str()).collect();
                let missing: Vec<&str> = disk
                    .lines()
                    .filter(|l| l.contains(HUP_LINE) && !got.contains(l))
                    .collect();
                panic!(
                    "{what}: after {T:?} the follower output does not end like the log files \
                     on disk: {} SIGHUP lines on disk, {} printed, {} on disk never printed, \
                     e.g. {:?}\nfollower output, last lines newest first:\n{}",
                    disk.matches(HUP_LINE).count(),
                    got.matches(HUP_LINE).count(),
                    missing.len(),
                    missing.first(),
                    got.lines().rev().take(5).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut files = wait_caught_up("follower started");

    // Two rotations while the follower sleeps (stopped): when it wakes, the file it had open
    // is gateway.log.2 and its successor gateway.log.1, which it must print before the new
    // gateway.log. Several times, so the files it reads are ones it caught up into.
    for round in 0..3 {
        let followed = cur_ino();
        unsafe { libc::kill(fpid, libc::SIGSTOP) };
        while files.len() < 3 || files[0].0 != followed {
            files = hup_once(&w, pid, &files);
        }
        unsafe { libc::kill(fpid, libc::SIGCONT) };
        files = wait_caught_up(&format!("follower caught up after round {round}"));
    }
    let got = seen.lock().unwrap().clone();
    assert!(got.matches(HUP_LINE).count() >= 3 * 19, "{got}");
    assert_eq!(notes.lock().unwrap().as_str(), "", "nothing was lost");

    // Four rotations while it sleeps: the file after the one it had open is gone. It says so
    // once on stderr, and still prints all it can, once: its open file and the 3 on disk.
    let mut rotations = 0;
    unsafe { libc::kill(fpid, libc::SIGSTOP) };
    while rotations < 4 {
        let now = hup_once(&w, pid, &files);
        if !same_file(&files[files.len() - 1], &now[now.len() - 1]) {
            rotations += 1;
        }
        files = now;
    }
    unsafe { libc::kill(fpid, libc::SIGCONT) };
    wait_caught_up("follower caught up after lines were rotated away");
    let n = notes.lock().unwrap().clone();
    assert_eq!(n.lines().count(), 1, "{n}");
    assert!(n.contains("rotated away"), "{n}");

    // the log never exceeds its size and at most 3 files exist
    assert!(!w.cfg.join("gateway.log.3").exists());
    for f in ["gateway.log", "gateway.log.1", "gateway.log.2"] {
        let len = fs::metadata(w.cfg.join(f)).unwrap().len();
        assert!(len <= 2048, "{f} is {len} bytes");
    }
    // whole log lines only
    let got = seen.lock().unwrap().clone();
    for l in got.lines() {
        let b = l.as_bytes();
        assert!(
            b.len() > 30 && b[4] == b'-' && b[10] == b'T' && l.contains("Z ") && l.contains(" ["),
            "not a whole log line: {l:?}"
        );
    }
    drop(follower);
    let o = w.run(&["stop"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn auto_restart_on_binary_upgrade() {
    let w = World::new("upgrade");
    w.write_paired_config();
    let bindir = w.root.join("bin");
    fs::create_dir_all(&bindir).unwrap();
    let exe = bindir.join("panorama-gateway");
    fs::copy(BIN, &exe).unwrap();
    let mut c = w.cmd(&["start", "--daemon"]);
    c.env("PANORAMA_GATEWAY_AUTO_RESTART", "1")
        .env("PANORAMA_GATEWAY_RESTART_CHECK_MS", "1000");
    // run the copy, not the build output
    let mut c2 = std::process::Command::new(&exe);
    c2.args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => c2.env(k, v),
            None => c2.env_remove(k),
        };
    }
    c2.current_dir(&w.root);
    let o = run_with_timeout(c2, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    wait_for("running", T, || running(&w));
    let (_, v) = status_json(&w);
    let pid = v["pid"].as_u64().unwrap() as u32;
    let _g = PidGuard(pid);
    let started1 = v["started_at"].as_str().unwrap().to_string();
    wait_for("watchdog armed", T, || {
        w.read_log().contains("watching the gateway binary")
    });

    // "upgrade": a new file with another version stamp atomically renamed over the installed
    // one (an identical copy is not an upgrade and is not restarted into)
    let tmp = bindir.join(".panorama-gateway.new");
    let mut bytes = fs::read(BIN).unwrap();
    let from = format!("panorama-gateway-version:{}\0", env!("CARGO_PKG_VERSION")).into_bytes();
    let new_version: String = env!("CARGO_PKG_VERSION")
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_ne!(new_version, env!("CARGO_PKG_VERSION"));
    let to = format!("panorama-gateway-version:{new_version}\0").into_bytes();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_slice())
        .expect("the version stamp is in the binary");
    bytes[at..at + from.len()].copy_from_slice(&to);
    fs::write(&tmp, &bytes).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::rename(&tmp, &exe).unwrap();

    wait_for("restart logged", T, || {
        w.read_log().contains("restarting into the upgraded binary")
    });
    wait_for("restarted and running", T, || {
        let (code, v) = status_json(&w);
        (code == 0 || code == 1) && v["started_at"].as_str().is_some_and(|s| s != started1)
    });
    let log = w.read_log();
    assert!(
        log.contains("gateway binary changed; draining before restart"),
        "{log}"
    );
    assert_eq!(log.matches("[daemon] gateway started").count(), 2, "{log}");
    let (_, v) = status_json(&w);
    assert_eq!(v["daemon_version"], new_version.as_str(), "{v}");
    let pid2 = v["pid"].as_u64().unwrap() as u32;
    let _g2 = PidGuard(pid2);
    let o = w.run(&["stop"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    wait_for("exit", T, || !is_alive(pid2));
}

/// Whether flock(1) is not installed (then the test says it is skipped).
fn flock_missing() -> bool {
    let missing = std::process::Command::new("flock")
        .arg("--version")
        .output()
        .is_err();
    if missing {
        eprintln!("skipped: flock(1) not installed");
    }
    missing
}

/// A "daemon" that ignores SIGTERM and holds the pid lock: flock(1) with SIGTERM ignored.
/// `stop --timeout` gives up with exit 1 and says how to force; `stop --force` ends it.
#[test]
fn stop_times_out_then_force_kills() {
    if flock_missing() {
        return;
    }
    let w = World::new("stubborn");
    w.write_paired_config();
    let pid_file = w.pid_file();
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(r#"trap '' TERM; exec flock -o -x "$0" sleep 60"#)
        .arg(&pid_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut g = ChildGuard::spawn(c);
    let pid = g.pid();
    fs::write(&pid_file, format!("{pid}\n")).unwrap();
    wait_for("lock held", T, || {
        let (code, v) = status_json(&w);
        code == 1 && v["running"] == true && v["pid"] == pid
    });
    let o = w.run(&["stop", "--timeout", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("(pid {pid}) is still running after 1 s")),
        "{e}"
    );
    assert!(e.contains("stop --force"), "{e}");
    assert!(is_alive(pid));

    let o = w.run(&["stop", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{} {}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("OK Gateway stopped"), "{}", stdout(&o));
    let st = g.wait_exit(T);
    assert!(st.code().is_none(), "ended by a signal: {st:?}");
    let (code, _) = status_json(&w);
    assert_eq!(code, 3);
}

/// `status` derives 0/1 from the daemon's status file: connected with a fresh heartbeat → 0,
/// a stale heartbeat or another state → 1 with the reason; a status file of another pid is
/// ignored.
#[test]
fn status_reads_the_runtime_status_file() {
    if flock_missing() {
        return;
    }
    let w = World::new("statusfile");
    w.write_paired_config();
    let mut c = std::process::Command::new("flock");
    c.args(["-o", "-x"]).arg(w.pid_file()).args(["sleep", "60"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let g = ChildGuard::spawn(c);
    let pid = g.pid();
    fs::write(w.pid_file(), format!("{pid}\n")).unwrap();
    let now = std::time::SystemTime::now();
    let fmt = |t: std::time::SystemTime| {
        // RFC 3339 via the binary's own format is not reachable here; build it by hand (UTC).
        let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let write_status = |pid: u32, conn: &str, hb: std::time::SystemTime| {
        let s = serde_json::json!({
            "pid": pid, "started_at": fmt(now), "version": "0.0.0", "connection": conn,
            "detail": null, "last_heartbeat_at": fmt(hb), "jobs_in_flight": 2,
            "jobs_completed": 7, "jobs_failed": 1, "started_at_unix": 0
        });
        fs::write(w.status_file(), s.to_string()).unwrap();
    };
    wait_for("lock held", T, || status_json(&w).1["running"] == true);
    write_status(pid, "connected", now);
    let (code, v) = status_json(&w);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["connected"], true);
    assert_eq!(v["jobs_in_flight"], 2);
    let o = w.run(&["status"]);
    assert!(
        stdout(&o).contains("Connection: connected"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("Jobs: 2 in flight, 7 completed, 1 failed"),
        "{}",
        stdout(&o)
    );

    write_status(pid, "connected", now - Duration::from_secs(600));
    let o = w.run(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("degraded: last heartbeat 10m"),
        "{}",
        stdout(&o)
    );

    write_status(pid, "disconnected", now);
    assert_eq!(status_json(&w).0, 1);

    write_status(pid + 1, "connected", now); // another daemon's file
    let (code, v) = status_json(&w);
    assert_eq!(code, 1);
    assert_eq!(v["connection"], "unknown");
    drop(g);
}
