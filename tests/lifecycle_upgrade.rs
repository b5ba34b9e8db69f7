//! Verified upgrades (issue 12), through the real daemon started from an installed copy and
//! the real local backend: files swapped in that are not upgrades (another program, the same
//! version, a binary that fails its dry start, a truncated copy) are refused once each while
//! the daemon keeps serving jobs; a real upgrade (a different version stamp) with a job in
//! flight lets the job finish once and comes back on the new version with the provider CLIs
//! discovered again.

mod connect_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use connect_support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const REFUSED: &str = "is not an upgrade to restart into";

/// Installs `bytes` at `exe` the way package managers do: a new file renamed over the old.
fn install(exe: &Path, bytes: &[u8]) {
    let tmp = exe.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, exe).unwrap();
}

/// The gateway binary with another version stamp (same length): a real upgrade.
fn other_version() -> (Vec<u8>, String) {
    let mut bytes = std::fs::read(GATEWAY).unwrap();
    let v = env!("CARGO_PKG_VERSION");
    let from = format!("panorama-gateway-version:{v}\0").into_bytes();
    let new: String = v
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_ne!(new, v);
    let to = format!("panorama-gateway-version:{new}\0").into_bytes();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_slice())
        .expect("the version stamp is in the binary");
    bytes[at..at + from.len()].copy_from_slice(&to);
    (bytes, new)
}

fn script(body: &str) -> Vec<u8> {
    format!("#!/bin/sh\n{body}\n").into_bytes()
}

/// The daemon's log file (the foreground daemon also copies it to stderr).
fn log_file(gw: &Gateway) -> String {
    std::fs::read_to_string(gw.config_dir().join("gateway.log")).unwrap_or_default()
}

fn refusals(gw: &Gateway) -> usize {
    log_file(gw).matches(REFUSED).count()
}

#[test]
fn only_a_verified_upgrade_replaces_the_daemon_and_the_job_in_flight_completes_once() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (_, bin, rec) = fake_cli_dirs(&mut gw);
    gw.set_env("PANORAMA_GATEWAY_AUTO_RESTART", "1");
    gw.set_env("PANORAMA_GATEWAY_RESTART_CHECK_MS", "1000");
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    let fake = fake_cli_wrapper(&bin, "claude", None);
    // A run whose prompt (argument or stdin) says SLOW first marks that it started, then
    // takes 4 s.
    let started = gw.dir.path().join("slow.started");
    let slow = bin.join("claude-slow");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ntmp=$(mktemp)\ncat > \"$tmp\"\nall=\"$* $(cat \"$tmp\")\"\nexec 0<\"$tmp\"\nrm -f \"$tmp\"\ncase \"$all\" in *SLOW*) : > '{}'; sleep 4;; esac\nexec '{}' \"$@\"\n",
            started.display(),
            fake.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The daemon runs from an installed copy, which the test then replaces.
    let installed = gw.dir.path().join("install");
    std::fs::create_dir_all(&installed).unwrap();
    let exe: PathBuf = installed.join("panorama-gateway");
    install(&exe, &std::fs::read(GATEWAY).unwrap());
    let slow_arg = slow.display().to_string();
    let c = gw.command(&["start", "--foreground", "--claude-cli", &slow_arg]);
    let mut c2 = Command::new(&exe);
    c2.args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => c2.env(k, v),
            None => c2.env_remove(k),
        };
    }
    let out = std::fs::File::create(gw.dir.path().join("daemon.out")).unwrap();
    let err = std::fs::File::create(gw.dir.path().join("daemon.err")).unwrap();
    c2.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    gw.daemon = Some(c2.spawn().unwrap());
    let pid = gw.pid();
    wait_for("ready", WAIT, || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    wait_for("the watchdog", WAIT, || {
        gw.log()
            .contains("watching the gateway binary")
            .then_some(())
    });
    let serves = |what: &str| {
        let d = b.insert_job(&team, &gid, "diagnostic", json!({}));
        let j = wait_job_done(&b, &d, WAIT);
        assert_eq!(j["status"], "completed", "{what}: {j}");
    };

    let gateway = std::fs::read(GATEWAY).unwrap();
    let not_upgrades: Vec<(&str, Vec<u8>)> = vec![
        (
            "another program",
            script("echo 'this is not panorama-gateway'"),
        ),
        ("the same version", gateway.clone()),
        (
            "a binary that fails to start",
            script("[ \"$1\" = --version ] && { echo 'panorama-gateway 99.0.0'; exit 0; }\nexit 1"),
        ),
        // A download cut short: the program headers point past the end of the file.
        ("a truncated copy", gateway[..65536].to_vec()),
    ];
    for (i, (what, bytes)) in not_upgrades.iter().enumerate() {
        install(&exe, bytes);
        wait_for(&format!("{what} refused"), WAIT, || {
            (refusals(&gw) > i).then_some(())
        });
        serves(what);
        assert_eq!(gw.pid(), pid);
        assert_eq!(gw.status_file()["version"], env!("CARGO_PKG_VERSION"));
    }
    // Each file was looked at once, not at every tick.
    assert_eq!(refusals(&gw), not_upgrades.len(), "{}", log_file(&gw));
    let log = log_file(&gw);
    for why in [
        "not \"panorama-gateway <version>\"",
        "is the running version",
        "fails a dry start",
        "--version exited with signal",
    ] {
        assert!(log.contains(why), "{why}: {log}");
    }

    // A real upgrade while a job runs.
    let prompt = fake_cli_prompt(&rec, "slow", "SLOW work.", &[]);
    let job = b.insert_job(
        &team,
        &gid,
        "model_run",
        json!({"provider": "claude_code", "model": "claude-sonnet-4-5", "output_format": "text",
               "prompt": prompt}),
    );
    let t = std::time::Instant::now();
    while !started.exists() {
        assert!(
            t.elapsed() < WAIT,
            "the slow run did not start: {} {}",
            b.job(&job),
            log_file(&gw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (bytes, new_version) = other_version();
    install(&exe, &bytes);
    wait_for("the drain before the restart", WAIT, || {
        gw.log()
            .contains("gateway binary changed; draining before restart")
            .then_some(())
    });
    let j = wait_job_done(&b, &job, WAIT);
    assert_eq!(j["status"], "completed", "{j}");
    wait_for("the new version running", WAIT, || {
        let s = gw.status_file();
        (s["version"] == new_version.as_str() && s["connection"] == "connected").then_some(())
    });
    assert_eq!(gw.pid(), pid, "re-executed in place");
    assert_eq!(fake_cli_records(&rec, "slow").len(), 1, "the job ran once");
    assert_eq!(b.job(&job)["status"], "completed");
    // Discovery runs after ready (it never delays the first heartbeat), so wait for the new
    // process's own line rather than reading the log the moment the status says connected.
    wait_for("the new process resolved the CLIs again", WAIT, || {
        (log_file(&gw)
            .matches("discovered provider=claude_code")
            .count()
            >= 2)
            .then_some(())
    });
    assert_eq!(
        log_file(&gw)
            .matches("discovered provider=claude_code")
            .count(),
        2,
        "the CLIs were resolved once per process"
    );
    serves("the upgraded daemon");
    assert_eq!(gw.stop(WAIT).code(), Some(0));
}
