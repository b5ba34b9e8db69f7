//! Secrets stay in gateway.json: a running gateway (refreshing its tokens, running jobs and
//! provider probes, answering status/doctor/logs) never shows a token or key anywhere else: not
//! in its files, its output, its children's environment or argv, its job results, or its own
//! command line (readable by every local user in /proc/<pid>/cmdline).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::connect::*;

/// Every file under `dir` (recursively) except `skip` names, as (path, lossy text).
fn files_under(dir: &Path, skip: &[&str], out: &mut Vec<(String, String)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        if p.is_dir() {
            files_under(&p, skip, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((
                p.display().to_string(),
                String::from_utf8_lossy(&b).into_owned(),
            ));
        }
    }
}

fn cmdline(pid: u32) -> String {
    let b = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&b).replace('\0', " ")
}

fn assert_no_secret(secrets: &[(&str, String)], places: &[(String, String)]) {
    for (what, secret) in secrets {
        assert!(secret.len() >= 12, "{what} too short to be a useful probe");
        for (place, text) in places {
            assert!(
                !text.contains(secret.as_str()),
                "the {what} leaked into {place}:\n{text}"
            );
        }
    }
}

#[test]
fn tokens_and_keys_never_leave_gateway_json() {
    // Short-lived access tokens: the daemon rotates the pair while the test watches.
    let b = Backend::start_with(&["--access-token-ttl", "6"]);
    let mut gw = Gateway::new(&b);
    let (code, team) = b.pairing_code(None);
    let first = gw.pair(&code);
    let gid = gw.gateway_id();

    // A fake claude that records what it was given.
    let rec = gw.dir.path().join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let claude = gw.dir.path().join("claude");
    std::fs::write(
        &claude,
        format!(
            "#!/bin/sh\nenv >> '{r}/env.txt'\necho \"$0 $*\" >> '{r}/argv.txt'\nls -l /proc/self/fd >> '{r}/fds.txt'\necho '2.0.14 (Claude Code)'\n",
            r = rec.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The key given as a flag (the worst case for the process list), verbose logging on.
    gw.start_with(&[
        "-v",
        "--anon-key",
        &b.anon_key,
        "--supabase-url",
        &b.url,
        "--claude-cli",
        claude.to_str().unwrap(),
    ]);
    let pid = gw.pid();
    wait_for("gateway ready", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    let own_cmdline = cmdline(pid);
    assert!(
        own_cmdline.contains("start") && own_cmdline.contains("--claude-cli"),
        "same process, same command otherwise: {own_cmdline}"
    );

    let diag = b.insert_job(&team, &gid, "diagnostic", json!({}));
    let d = wait_job_done(&b, &diag, Duration::from_secs(20));
    assert_eq!(d["status"], "completed", "{d}");
    wait_for("a token rotation", Duration::from_secs(20), || {
        (gw.state()["refreshToken"] != first["refreshToken"]).then_some(())
    });

    let mut places: Vec<(String, String)> = vec![
        ("the daemon's command line".into(), own_cmdline),
        ("the diagnostic job row".into(), d.to_string()),
    ];
    for args in [
        &["status"][..],
        &["status", "-v"],
        &["status", "--json"],
        &["doctor"],
        &["doctor", "--json", "-v"],
        &["logs", "--no-follow", "--lines", "100000"],
        &["full-control", "status"],
    ] {
        let (_, out, err) = gw.run(args);
        places.push((format!("the output of {args:?}"), format!("{out}\n{err}")));
    }
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));

    let last = gw.state();
    let secrets = vec![
        (
            "first access token",
            first["accessToken"].as_str().unwrap().to_string(),
        ),
        (
            "first refresh token",
            first["refreshToken"].as_str().unwrap().to_string(),
        ),
        (
            "rotated access token",
            last["accessToken"].as_str().unwrap().to_string(),
        ),
        (
            "rotated refresh token",
            last["refreshToken"].as_str().unwrap().to_string(),
        ),
        ("anon key", b.anon_key.clone()),
    ];
    assert_ne!(secrets[1].1, secrets[3].1, "the pair rotated");

    // Everything the gateway wrote except gateway.json itself.
    files_under(gw.config_dir().as_path(), &["gateway.json"], &mut places);
    files_under(gw.dir.path(), &["config", "home"], &mut places);
    let env = std::fs::read_to_string(rec.join("env.txt")).unwrap();
    assert!(env.contains("PATH="), "the fake CLI ran: {env}");
    for name in ["SUPABASE_URL=", "SUPABASE_ANON_KEY=", "PANORAMA_GATEWAY_"] {
        assert!(
            !env.lines().any(|l| l.starts_with(name)),
            "{name} reached a child: {env}"
        );
    }
    // No descriptor of the daemon (gateway files, backend sockets, its pipes) reaches a child:
    // only stdin/stdout/stderr, the shell's script and ls's own directory handle.
    let fds = std::fs::read_to_string(rec.join("fds.txt")).unwrap();
    assert!(
        fds.lines().filter(|l| l.contains(" -> pipe:")).count() >= 3,
        "stdio of every run is piped: {fds}"
    );
    for l in fds.lines().filter(|l| l.contains(" -> ")) {
        let (left, target) = l.split_once(" -> ").unwrap();
        let fd: u32 = left.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            !target.contains("gateway") && !target.contains("socket:"),
            "leaked descriptor in a child: {l}\n{fds}"
        );
        assert!(
            fd <= 2 || !target.contains("pipe:"),
            "leaked pipe in a child: {l}\n{fds}"
        );
    }
    assert!(places.iter().any(|(p, _)| p.ends_with("gateway.log")));
    assert_no_secret(&secrets, &places);
}

#[test]
fn background_start_keeps_the_key_off_the_command_line() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let (code, _team) = b.pairing_code(None);
    gw.pair(&code);
    // Flags only: nothing in the environment.
    let mut c = gw.command(&[
        "start",
        "--daemon",
        "--anon-key",
        &b.anon_key,
        "--supabase-url",
        &b.url,
    ]);
    c.env_remove("SUPABASE_ANON_KEY").env_remove("SUPABASE_URL");
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"));
    let guard = KillOnDrop(pid);
    let line = cmdline(pid);
    assert!(line.contains("--daemon-child"), "{line}");
    assert!(!line.contains(&b.anon_key), "{line}");
    let (rc, out, err) = gw.run(&["stop"]);
    assert_eq!(rc, 0, "{out} {err}");
    std::mem::forget(guard);
}

/// Kills a daemon the test started in the background if the test fails before `stop`.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}
