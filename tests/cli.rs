//! The CLI without a daemon: help, usage errors, path and backend precedence, env files,
//! gateway.json hardening (perms, symlinks, owners, corruption, atomic writes, unknown keys),
//! full-control, doctor, status when not running.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use support::cli::*;

#[test]
fn help_version_and_usage_errors() {
    let w = World::new("help");
    let o = w.bare_cmd().output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("panorama-gateway pair <CODE>"));
    let o = w.bare_cmd().arg("--version").output().unwrap();
    assert_eq!(
        stdout(&o).trim(),
        format!("panorama-gateway {}", env!("CARGO_PKG_VERSION"))
    );
    for cmd in [
        "pair",
        "start",
        "stop",
        "status",
        "logs",
        "doctor",
        "full-control",
    ] {
        let o = w.bare_cmd().args([cmd, "--help"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{cmd} --help");
        assert!(
            stdout(&o).contains(&format!("panorama-gateway {cmd}")),
            "{cmd}: {}",
            stdout(&o)
        );
    }
    let o = w.bare_cmd().args(["help", "status"]).output().unwrap();
    assert!(stdout(&o).contains("4  not paired"), "{}", stdout(&o));

    for (args, needle) in [
        (&["bogus"][..], "unknown command \"bogus\""),
        (&["status", "--nope"][..], "unknown flag --nope"),
        (&["status", "--follow"][..], "unknown flag --follow"),
        (
            &["status", "--no-follow"][..],
            "--no-follow is not a flag of status",
        ),
        (
            &["logs", "--lines", "ten"][..],
            "--lines expects a whole number",
        ),
        (&["logs", "--lines"][..], "--lines needs a value"),
        (&["stop", "--timeout", "-3"][..], "--timeout"),
        (&["start", "--foreground=true"][..], "does not take a value"),
        (
            &["full-control", "sometimes"][..],
            "unknown full-control action",
        ),
        (&["pair"][..], "pairing code"),
    ] {
        let o = w.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{args:?}: one line expected: {e}");
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(e.contains("see panorama-gateway --help"), "{e}");
        assert!(stdout(&o).is_empty());
    }
    // Nothing was created by failed parsing.
    assert!(!w.cfg.exists());
}

#[test]
fn path_precedence_flag_env_default() {
    let w = World::new("paths");
    // default: ~/.panorama/gateway
    let o = w.bare_cmd().args(["status", "--json"]).output().unwrap();
    let v = stdout_json(&o);
    let def = w.home.join(".panorama/gateway");
    assert_eq!(v["config_path"], def.join("gateway.json").to_str().unwrap());
    assert_eq!(v["log_path"], def.join("gateway.log").to_str().unwrap());
    assert_eq!(v["pid_path"], def.join("gateway.pid").to_str().unwrap());
    assert!(!def.exists(), "status must not create anything");

    // env beats default; relative paths resolve against the working directory
    let o = w
        .bare_cmd()
        .args(["status", "--json"])
        .env("PANORAMA_GATEWAY_CONFIG_DIR", "envdir")
        .env("PANORAMA_GATEWAY_LOG_PATH", "/tmp/envlog.log")
        .output()
        .unwrap();
    let v = stdout_json(&o);
    assert_eq!(
        v["config_path"],
        w.root.join("envdir/gateway.json").to_str().unwrap()
    );
    assert_eq!(v["log_path"], "/tmp/envlog.log");

    // flag beats env; log and pid follow the config file's directory
    let o = w
        .bare_cmd()
        .args(["status", "--json", "--config-path", "/tmp/flagdir/g.json"])
        .env("PANORAMA_GATEWAY_CONFIG_PATH", "/tmp/envdir/g.json")
        .env("PANORAMA_GATEWAY_PID_PATH", "/tmp/envpid.pid")
        .output()
        .unwrap();
    let v = stdout_json(&o);
    assert_eq!(v["config_path"], "/tmp/flagdir/g.json");
    assert_eq!(v["log_path"], "/tmp/flagdir/gateway.log");
    assert_eq!(v["pid_path"], "/tmp/envpid.pid");
}

#[test]
fn backend_precedence_and_builtin_default() {
    let w = World::new("backend");
    w.write_paired_config();
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.config()).unwrap()).unwrap();
    let saved_url = saved["supabaseUrl"].as_str().unwrap().to_string();
    let backend = |c: &mut std::process::Command| -> String {
        let b = doctor_check(&c.output().unwrap(), "backend");
        b["detail"].as_str().unwrap().to_string()
    };
    assert_eq!(backend(&mut w.cmd(&["doctor", "--json"])), saved_url);
    assert_eq!(
        backend(
            w.cmd(&["doctor", "--json"])
                .env("PANORAMA_SUPABASE_URL", "https://p.env")
        ),
        "https://p.env"
    );
    assert_eq!(
        backend(
            w.cmd(&["doctor", "--json"])
                .env("PANORAMA_SUPABASE_URL", "https://p.env")
                .env("SUPABASE_URL", "https://s.env/")
        ),
        "https://s.env"
    );
    assert_eq!(
        backend(
            w.cmd(&["doctor", "--json", "--supabase-url", "https://flag.example"])
                .env("SUPABASE_URL", "https://s.env")
        ),
        "https://flag.example"
    );
    // Nothing saved, nothing set: the built-in production backend (doctor does not call it).
    let w2 = World::new("backend2");
    assert_eq!(
        backend(&mut w2.cmd(&["doctor", "--json"])),
        "https://api.panorama.app"
    );
    // start on an unpaired config says so
    assert_fails(
        &w2.run(&["start", "--foreground"]),
        1,
        &["not paired: run panorama-gateway pair <CODE>"],
    );
}

/// Issue 8 point 6: plain http:// only to this machine, unless explicitly allowed; doctor says
/// which, and `pair` refuses before sending the pairing code anywhere.
#[test]
fn plain_http_to_another_host_needs_allow_insecure_http() {
    let w = World::new("insecure");
    let check = |o: &std::process::Output| doctor_check(o, "backend");
    let o = w
        .cmd(&["doctor", "--json"])
        .env("SUPABASE_URL", "http://gateway-backend.example:54321")
        .env("SUPABASE_ANON_KEY", "k")
        .output()
        .unwrap();
    let b = check(&o);
    assert_eq!(b["ok"], false, "{b}");
    let d = b["detail"].as_str().unwrap();
    assert!(
        d.starts_with("refusing plain http:// to gateway-backend.example:54321")
            && d.contains("--allow-insecure-http"),
        "{d}"
    );
    let mut by_env = w.cmd(&["doctor", "--json"]);
    by_env.env("PANORAMA_GATEWAY_ALLOW_INSECURE_HTTP", "1");
    for mut allow in [
        w.cmd(&["doctor", "--json", "--allow-insecure-http"]),
        by_env,
    ] {
        let o = allow
            .env("SUPABASE_URL", "http://gateway-backend.example:54321")
            .env("SUPABASE_ANON_KEY", "k")
            .output()
            .unwrap();
        let b = check(&o);
        assert_eq!(b["ok"], true, "{b}");
        assert!(
            b["detail"].as_str().unwrap().contains("clear text"),
            "doctor warns: {b}"
        );
    }
    // Loopback needs no flag.
    let o = w
        .cmd(&["doctor", "--json"])
        .env("SUPABASE_URL", "http://127.0.0.1:54321")
        .env("SUPABASE_ANON_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(check(&o)["ok"], true);
    // pair refuses before contacting anything.
    let o = w
        .cmd(&["pair", "ABCD-1234", "--no-start"])
        .env("SUPABASE_URL", "http://gateway-backend.example:54321")
        .env("SUPABASE_ANON_KEY", "k")
        .output()
        .unwrap();
    assert_fails(&o, 1, &["refusing plain http://"]);
}

#[test]
fn env_files_load_with_existing_values_winning() {
    let w = World::new("envfile");
    let repo = w.root.join("repo");
    let sub = repo.join("a/b");
    fs::create_dir_all(&sub).unwrap();
    fs::create_dir_all(repo.join(".git")).unwrap();
    let dev_dir = w.root.join("devcfg");
    fs::write(
        repo.join(".env.dev"),
        format!(
            "# dev backend\nexport PANORAMA_GATEWAY_CONFIG_DIR=\"{}\"\nSUPABASE_URL='https://dev.local:1'\nSUPABASE_ANON_KEY=devkey # comment\n",
            dev_dir.display()
        ),
    )
    .unwrap();
    let o = w
        .bare_cmd()
        .current_dir(&sub)
        .args(["--env", "dev", "status", "--json"])
        .output()
        .unwrap();
    let v = stdout_json(&o);
    assert_eq!(
        v["config_path"],
        dev_dir.join("gateway.json").to_str().unwrap()
    );

    // PANORAMA_ENV works the same; a value already in the environment wins over the file
    let o = w
        .bare_cmd()
        .current_dir(&sub)
        .env("PANORAMA_ENV", "dev")
        .env("PANORAMA_GATEWAY_CONFIG_DIR", w.root.join("mine"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    let v = stdout_json(&o);
    assert_eq!(
        v["config_path"],
        w.root.join("mine/gateway.json").to_str().unwrap()
    );

    // backend from the env file
    let o = w
        .bare_cmd()
        .current_dir(&sub)
        .args(["--env-file", "../../.env.dev", "doctor", "--json"])
        .output()
        .unwrap();
    let b = doctor_check(&o, "backend");
    assert_eq!(b["detail"], "https://dev.local:1", "{b}");

    // missing env file: error naming it, exit 1; bad syntax: file and line
    fs::write(repo.join(".env.test"), "A=1\nthis is not valid\n").unwrap();
    for (dir, args, names) in [
        (Some(&sub), ["--env", "stage", "status"], ".env.stage"),
        (
            None,
            ["--env-file", "/nonexistent/x.env", "status"],
            "/nonexistent/x.env",
        ),
        (Some(&sub), ["--env", "test", "status"], ".env.test:2:"),
    ] {
        let mut c = w.bare_cmd();
        if let Some(d) = dir {
            c.current_dir(d);
        }
        assert_fails(&c.args(args).output().unwrap(), 1, &[names]);
    }
}

#[test]
fn permissions_are_tightened() {
    let w = World::new("perms");
    w.write_paired_config();
    fs::set_permissions(&w.cfg, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(w.config(), fs::Permissions::from_mode(0o644)).unwrap();
    let o = w.run(&["status"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(mode(&w.config()), 0o600, "status tightens gateway.json");
    let o = w.run(&["full-control", "enable"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(mode(&w.cfg), 0o700);
    assert_eq!(mode(&w.config()), 0o600);

    // a fresh install is created owner-only
    let w2 = World::new("perms2");
    let o = w2.run(&["full-control", "enable"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(mode(&w2.cfg), 0o700);
    assert_eq!(mode(&w2.config()), 0o600);
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w2.config()).unwrap()).unwrap();
    assert_eq!(v["full_control_enabled"], true);
}

#[test]
fn symlinked_state_is_refused() {
    let w = World::new("symlink");
    w.write_paired_config();
    let real = w.root.join("elsewhere.json");
    fs::rename(w.config(), &real).unwrap();
    std::os::unix::fs::symlink(&real, w.config()).unwrap();
    let before = fs::read(&real).unwrap();
    let o = w.run(&["full-control", "enable"]);
    let config = w.config().to_str().unwrap().to_string();
    assert_fails(
        &o,
        1,
        &["refusing to use", &config, "symbolic link", "mode", "Fix:"],
    );
    assert_eq!(fs::read(&real).unwrap(), before, "target untouched");
    assert_fails(&w.run(&["start", "--foreground"]), 1, &["symbolic link"]);

    // a symlinked config dir too
    let w2 = World::new("symlinkdir");
    let real_dir = w2.root.join("realdir");
    fs::create_dir_all(&real_dir).unwrap();
    std::os::unix::fs::symlink(&real_dir, &w2.cfg).unwrap();
    assert_fails(&w2.run(&["full-control", "enable"]), 1, &["symbolic link"]);
    assert!(!real_dir.join("gateway.json").exists());
}

#[test]
fn state_of_another_user_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to create a file owned by another user");
        return;
    }
    let w = World::new("owner");
    w.write_paired_config();
    fs::set_permissions(w.config(), fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(w.config(), Some(65534), Some(65534)).unwrap();
    assert_fails(
        &w.run(&["full-control", "enable"]),
        1,
        &["uid 65534", "0644", "chown"],
    );
    assert_eq!(fs::metadata(w.config()).unwrap().uid(), 65534);
    assert_eq!(mode(&w.config()), 0o644, "not touched");
}

#[test]
fn corrupt_config_is_reported_and_never_overwritten() {
    let w = World::new("corrupt");
    fs::create_dir_all(&w.cfg).unwrap();
    let bad = "{\n  \"accessToken\": \"x\",\n  \"teamId\": \"t\"\n  \"gatewayId\": \"g\"\n}\n";
    fs::write(w.config(), bad).unwrap();
    for args in [
        &["full-control", "enable"][..],
        &["start", "--foreground"][..],
    ] {
        let at = format!("{}:4:", w.config().display());
        assert_fails(&w.run(args), 1, &[&at, "left untouched"]);
    }
    assert_eq!(fs::read_to_string(w.config()).unwrap(), bad);
    // status still answers (not running) and names the problem
    let o = w.run(&["status"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).contains("Paired: unknown"), "{}", stdout(&o));
    assert!(stderr(&o).contains(":4:"), "{}", stderr(&o));
    // wrong type: position too; and a token value does not leak into the message
    fs::write(
        w.config(),
        format!("{{\"full_control_enabled\": \"{JWT}\"}}"),
    )
    .unwrap();
    let o = w.run(&["full-control", "status"]);
    assert_fails(&o, 1, &["gateway.json:1:"]);
    assert!(!stderr(&o).contains("eyJ"), "{}", stderr(&o));
}

#[test]
fn writes_are_atomic_and_keep_unknown_keys() {
    let w = World::new("atomic");
    w.write_paired_config();
    let ino_before = fs::metadata(w.config()).unwrap().ino();
    let o = w.run(&["full-control", "enable"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("Full control: enabled"));
    let ino_after = fs::metadata(w.config()).unwrap().ino();
    assert_ne!(
        ino_before, ino_after,
        "replaced by rename, not rewritten in place"
    );
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.config()).unwrap()).unwrap();
    assert_eq!(v["full_control_enabled"], true);
    assert_eq!(v["someFutureKey"]["kept"], true);
    assert_eq!(v["refreshToken"], "refresh-secret-1");
    assert_eq!(v["deviceName"], "test box");
    assert!(v.as_object().unwrap().contains_key("vmGuest"));
    // no temp files left behind
    for e in fs::read_dir(&w.cfg).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp"), "leftover {n}");
    }
    // unchanged toggles say so
    let o = w.run(&["full-control", "enable"]);
    assert!(stdout(&o).contains("unchanged"), "{}", stdout(&o));
    let o = w.run(&["full-control"]);
    assert_eq!(stdout(&o).trim(), "Full control: enabled");
    let o = w.run(&["full-control", "disable"]);
    assert_eq!(o.status.code(), Some(0));
    let o = w.run(&["full-control", "status"]);
    assert_eq!(stdout(&o).trim(), "Full control: disabled");

    // concurrent CLI writers: the file stays valid and keeps every key
    let children: Vec<ChildGuard> = (0..12)
        .map(|i| {
            let mut c = w.cmd(&[
                "full-control",
                if i % 2 == 0 { "enable" } else { "disable" },
            ]);
            c.stdout(std::process::Stdio::null());
            ChildGuard::spawn(c)
        })
        .collect();
    for mut c in children {
        assert!(c.wait_exit(std::time::Duration::from_secs(30)).success());
    }
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.config()).unwrap()).unwrap();
    assert_eq!(v["someFutureKey"]["kept"], true);
    assert_eq!(v["accessToken"], JWT);
}

#[test]
fn status_exit_codes_without_daemon() {
    let w = World::new("status");
    let (code, v) = status_json(&w);
    assert_eq!(code, 4, "not paired");
    assert_eq!(v["paired"], false);
    assert_eq!(v["running"], false);
    assert_eq!(v["connected"], false);
    assert_eq!(v["pid"], serde_json::Value::Null);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["full_control_enabled"], false);
    w.write_paired_config();
    let (code, v) = status_json(&w);
    assert_eq!(code, 3, "paired, not running");
    assert_eq!(v["paired"], true);
    // stale pid file (nobody holds the lock): still not running
    fs::write(w.pid_file(), "999999\n").unwrap();
    let o = w.run(&["status", "-v"]);
    assert_eq!(o.status.code(), Some(3));
    let out = stdout(&o);
    assert!(
        out.contains("Gateway: not running") && out.contains("Stale PID: 999999"),
        "{out}"
    );
    assert!(
        out.contains("Device: test box") && out.contains("Gateway ID: gw-test-1"),
        "{out}"
    );
    // stop removes the stale file
    let o = w.run(&["stop"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("not running") && stdout(&o).contains("999999"),
        "{}",
        stdout(&o)
    );
    assert!(!w.pid_file().exists());
    let o = w.run(&["stop"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), "Gateway is not running");
}

#[test]
fn doctor_reports_each_check() {
    let w = World::new("doctor");
    w.write_paired_config();
    fs::set_permissions(&w.cfg, fs::Permissions::from_mode(0o750)).unwrap();
    let o = w.run(&["doctor"]);
    let out = stdout(&o);
    for name in ["state directory", "config", "backend", "log file", "daemon"] {
        assert!(out.contains(&format!("ok   {name}:")), "{name}: {out}");
    }
    assert_eq!(mode(&w.cfg), 0o700);
    // the providers module decides the provider lines; all checks passing → 0
    let v = stdout_json(&w.run(&["doctor", "--json"]));
    let all_ok = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["ok"] == true);
    assert_eq!(v["ok"], all_ok);
    assert_eq!(o.status.code(), Some(if all_ok { 0 } else { 1 }));

    // unpaired: config check fails, exit 1
    let w2 = World::new("doctor2");
    let o = w2.run(&["doctor"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("FAIL config"), "{}", stdout(&o));
}

#[test]
fn logs_without_follow_prints_last_lines() {
    let w = World::new("logsnf");
    assert_fails(&w.run(&["logs", "--no-follow"]), 1, &["no log file"]);
    fs::create_dir_all(&w.cfg).unwrap();
    let body: String = (1..=500).map(|i| format!("line {i}\n")).collect();
    fs::write(w.log(), &body).unwrap();
    let o = w.run(&["logs", "--no-follow"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 200);
    assert!(out.starts_with("line 301\n") && out.ends_with("line 500\n"));
    let o = w.run(&["logs", "--no-follow", "--lines", "3"]);
    assert_eq!(stdout(&o), "line 498\nline 499\nline 500\n");
    // short current file: the rotated one supplies the rest
    fs::rename(w.log(), w.cfg.join("gateway.log.1")).unwrap();
    fs::write(w.log(), "new 1\n").unwrap();
    let o = w.run(&["logs", "--no-follow", "-n", "3"]);
    assert_eq!(stdout(&o), "line 499\nline 500\nnew 1\n");
}

#[test]
fn logs_errors_say_what_to_do() {
    let w = World::new("logsdir");
    let o = w.run(&["logs", "--no-follow"]);
    assert!(stderr(&o).contains("--log-path"), "{}", stderr(&o));
    // A directory where the log should be: the error names it and the way out, with and
    // without following (no endless wait).
    fs::create_dir_all(w.log()).unwrap();
    for args in [&["logs", "--no-follow"][..], &["logs"][..]] {
        assert_fails(
            &w.run(args),
            1,
            &["is a directory", "--log-path", "PANORAMA_GATEWAY_LOG_PATH"],
        );
    }
}

/// Everything `r` yields from now on, read by a thread into a shared string.
fn collect(mut r: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let o2 = std::sync::Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            o2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

#[test]
fn logs_follow_survives_truncation_rotation_and_a_late_file() {
    use std::io::Write;
    use std::time::Duration;
    let w = World::new("follow");
    fs::create_dir_all(&w.cfg).unwrap();
    // the file does not exist yet: follow waits for it
    let mut c = w.cmd(&["logs", "--lines", "5"]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut g = ChildGuard::spawn(c);
    let so = g.child().stdout.take().unwrap();
    let se = g.child().stderr.take().unwrap();
    let seen = collect(so);
    let waiting = collect(se);
    let t = Duration::from_secs(20);
    wait_for("waiting note", t, || {
        waiting.lock().unwrap().contains("Waiting for")
    });
    let append = |s: &str| {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(w.log())
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    };
    append("one\n");
    wait_for("first line", t, || seen.lock().unwrap().contains("one\n"));
    append("two\n");
    wait_for("appended line", t, || {
        seen.lock().unwrap().contains("two\n")
    });
    // rotation: rename away, new file at the path
    fs::rename(w.log(), w.cfg.join("gateway.log.1")).unwrap();
    append("three after rotation\n");
    wait_for("line after rotation", t, || {
        seen.lock().unwrap().contains("three after rotation\n")
    });
    // truncation in place (like copytruncate), then new content shorter than what was read
    fs::write(w.log(), "").unwrap();
    append("four\n");
    wait_for("line after truncation", t, || {
        seen.lock().unwrap().contains("four\n")
    });
    assert_eq!(
        *seen.lock().unwrap(),
        "one\ntwo\nthree after rotation\nfour\n"
    );
}
