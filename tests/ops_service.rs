//! `service install|uninstall|status` (issue 13). The units are checked with
//! `systemd-analyze verify` where it exists (in a temporary HOME/XDG_RUNTIME_DIR: the
//! machine's systemd is never touched), and the user unit is run the way systemd would run it
//! (its ExecStart with only its Environment) to show the CLIs are found on the baked-in PATH.

mod connect_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use connect_support::*;
use serde_json::json;

/// The words of an ExecStart line, unquoted the way systemd does for what `install` writes.
fn exec_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => cur.extend(chars.next()),
            '%' | '$' if chars.peek() == Some(&c) => {
                chars.next();
                cur.push(c);
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                }
                in_word = false;
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn key<'a>(unit: &'a str, k: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{k}=")))
        .collect()
}

/// `systemd-analyze verify` of `unit` (with `--user` for a user unit) in a private runtime
/// dir. None when systemd-analyze is not installed (the reason is logged).
fn verify(unit: &Path, user: bool, scratch: &Path) -> Option<(bool, String)> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIP systemd-analyze verify: systemd-analyze is not installed on this machine");
        return None;
    }
    let run = scratch.join("xdg-run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut c = Command::new("systemd-analyze");
    if user {
        c.arg("--user");
    }
    let out = c
        .arg("verify")
        .arg(unit)
        .env("HOME", scratch)
        .env("XDG_RUNTIME_DIR", &run)
        .env("XDG_CONFIG_HOME", scratch.join("xdg-config"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn a_user_unit_runs_the_gateway_with_the_install_time_path_and_home() {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    let (root, bin, _rec) = fake_cli_dirs(&mut gw);
    // claude lives only in a directory of the install-time PATH (like ~/.local/bin).
    let cli_dir = root.join("clis");
    std::fs::create_dir_all(&cli_dir).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bin/claude"),
        cli_dir.join("claude"),
    )
    .unwrap();
    let py = python_dir(&bin);
    let path = format!("{}:{}:/usr/bin:/bin", cli_dir.display(), py.display());
    gw.set_env("PATH", &path);
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);

    let out = gw
        .command(&["service", "install"])
        .env_remove("XDG_CONFIG_HOME")
        .env("PANORAMA_GATEWAY_DRAIN_TIMEOUT_MS", "100000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = gw
        .home()
        .join(".config/systemd/user/panorama-gateway.service");
    assert!(
        stdout.contains(&format!("Wrote {}", file.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Next: systemctl --user daemon-reload && systemctl --user enable --now panorama-gateway"
        ),
        "{stdout}"
    );
    let unit = std::fs::read_to_string(&file).unwrap();
    assert_eq!(key(&unit, "Restart"), ["on-failure"], "{unit}");
    assert_eq!(key(&unit, "WantedBy"), ["default.target"], "{unit}");
    assert!(key(&unit, "User").is_empty(), "{unit}");
    // Longer than the drain the daemon will use (100 s here).
    let stop: u64 = key(&unit, "TimeoutStopSec")[0].parse().unwrap();
    assert!(stop > 100, "{unit}");
    let env: Vec<String> = key(&unit, "Environment")
        .iter()
        .flat_map(|l| exec_words(l))
        .collect();
    assert!(env.contains(&format!("PATH={path}")), "{env:?}");
    assert!(
        env.contains(&format!("HOME={}", gw.home().display())),
        "{env:?}"
    );
    let words = exec_words(key(&unit, "ExecStart")[0]);
    assert_eq!(
        std::fs::canonicalize(&words[0]).unwrap(),
        std::fs::canonicalize(GATEWAY).unwrap()
    );
    assert_eq!(&words[words.len() - 2..], ["start", "--foreground"]);
    assert!(
        words.contains(&gw.config_dir().display().to_string()),
        "{words:?}"
    );

    if let Some((ok, text)) = verify(&file, true, gw.dir.path()) {
        assert!(ok, "systemd-analyze --user verify: {text}");
    }

    // Run it as systemd would: the ExecStart argv with only the unit's environment. The
    // diagnostic job needs `claude`, found only through the baked-in PATH.
    let mut c = Command::new(&words[0]);
    c.args(&words[1..]).env_clear();
    for kv in &env {
        let (k, v) = kv.split_once('=').unwrap();
        c.env(k, v);
    }
    c.env("PANORAMA_GATEWAY_AUTO_RESTART", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    gw.daemon = Some(c.spawn().unwrap());
    gw.wait_connection(
        "the unit's gateway to connect",
        "connected",
        Duration::from_secs(30),
    );
    let gid = gw.gateway_id();
    let id = b.insert_job(&team, &gid, "diagnostic", json!({}));
    let job = wait_job_done(&b, &id, Duration::from_secs(30));
    assert_eq!(job["status"], "completed", "{job}");
    assert!(
        job["result"]["command"]
            .as_str()
            .unwrap()
            .starts_with(&cli_dir.join("claude").display().to_string()),
        "{job}"
    );
    // `logs` (default paths) finds what the unit's gateway wrote.
    let (rc, logs, _) = gw.run(&["logs", "--no-follow", "--lines", "50"]);
    assert_eq!(rc, 0);
    assert!(logs.contains("type=diagnostic"), "{logs}");
    let st = gw.stop(Duration::from_secs(20));
    assert!(st.success());

    // status, then uninstall: refused while enabled, done after disable.
    let (rc, out, _) = gw.run(&["service", "status"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("Enabled: no"), "{out}");
    let wants = file.parent().unwrap().join("default.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(&file, wants.join("panorama-gateway.service")).unwrap();
    let (rc, _, err) = gw.run(&["service", "uninstall"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("systemctl --user disable --now panorama-gateway"),
        "{err}"
    );
    assert!(file.exists());
    std::fs::remove_file(wants.join("panorama-gateway.service")).unwrap();
    let (rc, out, _) = gw.run(&["service", "uninstall"]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("Next: systemctl --user daemon-reload"),
        "{out}"
    );
    assert!(!file.exists());
    let (rc, out, _) = gw.run(&["service", "status"]);
    assert_eq!(rc, 3, "{out}");
}

#[test]
fn a_system_unit_runs_as_the_named_user_never_as_root() {
    let b = Backend::start();
    let gw = Gateway::new(&b);
    let units = gw.dir.path().join("system-units");
    let units_s = units.display().to_string();
    let (rc, out, err) = gw.run(&[
        "service",
        "install",
        "--system",
        "--user",
        "nobody",
        "--unit-dir",
        &units_s,
    ]);
    assert_eq!(rc, 0, "{out} {err}");
    assert!(
        out.contains(
            "Next: sudo systemctl daemon-reload && sudo systemctl enable --now panorama-gateway"
        ),
        "{out}"
    );
    let file = units.join("panorama-gateway.service");
    let unit = std::fs::read_to_string(&file).unwrap();
    assert_eq!(key(&unit, "User"), ["nobody"], "{unit}");
    assert_eq!(key(&unit, "WantedBy"), ["multi-user.target"], "{unit}");
    // The config dir given explicitly (the harness's --config-dir) is kept.
    assert!(
        exec_words(key(&unit, "ExecStart")[0]).contains(&gw.config_dir().display().to_string()),
        "{unit}"
    );
    if let Some((ok, text)) = verify(&file, false, gw.dir.path()) {
        assert!(ok, "systemd-analyze verify: {text}");
    }
    for (args, needle) in [
        (
            &["--user", "no-such-user-x"][..],
            "there is no user \"no-such-user-x\"",
        ),
        (
            &["--user", "root"][..],
            "refusing to install a system unit that runs the gateway as root",
        ),
    ] {
        let mut a = vec!["service", "install", "--system", "--unit-dir", &units_s];
        a.extend_from_slice(args);
        let (rc, _, err) = gw.run(&a);
        assert_eq!(rc, 1, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (rc, _, err) = gw.run(&["service", "install", "--user", "nobody"]);
    assert_eq!(rc, 1);
    assert!(err.contains("--user is for --system units"), "{err}");
    let (rc, _, err) = gw.run(&["service", "reinstall"]);
    assert_eq!(rc, 2);
    assert!(err.contains("unknown service action"), "{err}");
}

#[test]
fn the_unit_files_in_scripts_verify() {
    let tmp = TempDir::new("units");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, user) in [
        ("panorama-gateway.service", true),
        ("panorama-gateway-system.service", false),
    ] {
        let text = std::fs::read_to_string(root.join("scripts/systemd").join(name)).unwrap();
        for k in [
            "Restart=on-failure",
            "TimeoutStopSec=120",
            "KillMode=mixed",
            "start --foreground",
        ] {
            assert!(text.contains(k), "{name}: {k}");
        }
        // The binary path of the file does not exist here: point it at the built one.
        let exec = key(&text, "ExecStart")[0];
        let bin = exec.split(' ').next().unwrap();
        let text = text.replace(bin, GATEWAY);
        let text = if user {
            text
        } else {
            text.replace("User=gateway", "User=nobody")
        };
        let file: PathBuf = tmp.path().join("panorama-gateway.service");
        std::fs::write(&file, text).unwrap();
        if let Some((ok, out)) = verify(&file, user, tmp.path()) {
            assert!(ok, "{name}: {out}");
        }
    }
}
