//! File safety on a shared host: everything the daemon creates is owner-only whatever the umask;
//! shared directories (/tmp-like, sticky) are used for explicitly placed files but never
//! chmod'ed; symlinks planted in the config dir are refused and their targets never written.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use support::cli::*;

fn full_mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Every path under `dir` with its mode (symlinks not followed).
fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, fs::Metadata)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let md = fs::symlink_metadata(e.path()).unwrap();
        out.push((e.path(), md.clone()));
        if md.is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[test]
fn daemon_state_is_owner_only_even_with_umask_000() {
    let w = World::new("umask");
    w.write_paired_config();
    let mut c = w.cmd(&["start", "--foreground", "-v"]);
    // A tiny rotation size: rotated logs are created too.
    c.env("PANORAMA_GATEWAY_LOG_MAX_BYTES", "1024")
        .env("PANORAMA_GATEWAY_AUTO_RESTART", "0");
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut g = ChildGuard::spawn(c);
    wait_for("a rotated log", Duration::from_secs(30), || {
        w.cfg.join("gateway.log.1").exists() && w.status_file().exists()
    });
    unsafe { libc::kill(g.pid() as i32, libc::SIGTERM) };
    assert!(g.wait_exit(Duration::from_secs(30)).success());
    let mut all = Vec::new();
    walk(&w.cfg, &mut all);
    let names: Vec<String> = all
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "gateway.log",
        "gateway.log.1",
        "gateway.status.json",
        "spool",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    for (p, md) in &all {
        let m = md.mode() & 0o7777;
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:04o}", p.display());
        assert_eq!(md.uid(), unsafe { libc::geteuid() });
    }
    assert_eq!(full_mode(&w.cfg), 0o700);
}

#[test]
fn shared_directories_hold_explicit_files_but_are_never_chmodded() {
    let w = World::new("shared");
    w.write_paired_config();
    let shared = w.root.join("shared-tmp");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let log = shared.join("gw.log");
    let pid = shared.join("gw.pid");
    let mut c = w.cmd(&[
        "start",
        "--foreground",
        "--log-path",
        log.to_str().unwrap(),
        "--pid-path",
        pid.to_str().unwrap(),
    ]);
    c.env("PANORAMA_GATEWAY_AUTO_RESTART", "0");
    let mut g = ChildGuard::spawn(c);
    wait_for("the pid file", Duration::from_secs(30), || {
        pid.exists() && shared.join("gw.status.json").exists()
    });
    unsafe { libc::kill(g.pid() as i32, libc::SIGTERM) };
    assert!(g.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(
        full_mode(&shared),
        0o1777,
        "a shared directory is left alone"
    );
    assert_eq!(mode(&log), 0o600);
    assert_eq!(mode(&shared.join("gw.status.json")), 0o600);

    // The same directory as the gateway's own state dir: refused, not tightened.
    let mut c = w.bare_cmd();
    c.args(["full-control", "enable", "--config-dir"])
        .arg(&shared);
    let o = run_with_timeout(c, Duration::from_secs(30));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("shared directory") && err.contains("--config-dir"),
        "{err}"
    );
    assert_eq!(full_mode(&shared), 0o1777);

    // A directory others can write to without the sticky bit: refused, says how to fix it.
    let open = w.root.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let o = w.run(&[
        "doctor",
        "--log-path",
        open.join("gw.log").to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("chmod go-w"), "{out}");
    assert_eq!(full_mode(&open), 0o777);
    assert!(!open.join("gw.log").exists());
}

#[test]
fn symlinks_planted_in_the_config_dir_are_refused_and_targets_untouched() {
    for victim in ["gateway.log", "gateway.pid", "spool"] {
        let w = World::new("plant");
        w.write_paired_config();
        let target = w.root.join(format!("victim-{victim}"));
        if victim == "spool" {
            fs::create_dir(&target).unwrap();
        } else {
            fs::write(&target, "precious\n").unwrap();
        }
        std::os::unix::fs::symlink(&target, w.cfg.join(victim)).unwrap();
        let o = w.run(&["start", "--foreground"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{victim}: {err}");
        assert!(
            err.contains("symbolic link") && err.contains(victim),
            "{victim}: {err}"
        );
        if victim == "spool" {
            assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
        } else {
            assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        }
        assert!(
            fs::symlink_metadata(w.cfg.join(victim))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{victim}: left for the owner to inspect"
        );
    }
}

#[test]
fn a_config_dir_replaced_by_a_symlink_is_refused() {
    let w = World::new("dirlink");
    w.write_paired_config();
    let elsewhere = w.root.join("elsewhere");
    fs::rename(&w.cfg, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &w.cfg).unwrap();
    let before = fs::read(elsewhere.join("gateway.json")).unwrap();
    for args in [&["full-control", "enable"][..], &["start", "--foreground"]] {
        let o = w.run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("symbolic link"), "{args:?}: {err}");
    }
    let left: Vec<_> = fs::read_dir(&elsewhere)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("gateway.json")]);
    assert_eq!(fs::read(elsewhere.join("gateway.json")).unwrap(), before);
}

#[test]
fn a_hard_link_planted_as_the_log_is_refused() {
    // In a shared (sticky) directory anyone can create a name; a hard link there to a file of
    // yours (think ~/.ssh/authorized_keys) must not receive the gateway's log lines.
    let w = World::new("hardlink");
    w.write_paired_config();
    let shared = w.root.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let precious = w.root.join("authorized_keys");
    fs::write(&precious, "ssh-ed25519 AAAA me\n").unwrap();
    let log = shared.join("gw.log");
    fs::hard_link(&precious, &log).unwrap();
    let o = w.run(&["start", "--foreground", "--log-path", log.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("hard links"), "{e}");
    assert_eq!(
        fs::read_to_string(&precious).unwrap(),
        "ssh-ed25519 AAAA me\n"
    );
}

#[test]
fn an_env_file_of_another_user_is_never_loaded() {
    // `--env prod` walks up from the working directory: a `.env.prod` that someone else left in
    // a shared parent directory would redirect the gateway (and its tokens) to their backend.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to give a file to another user (CI runs as root)");
        return;
    }
    let w = World::new("envowner");
    w.write_paired_config();
    let env = w.root.join(".env.prod");
    fs::write(&env, "SUPABASE_URL=http://evil.example\n").unwrap();
    fs::set_permissions(&env, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&env, Some(65534), Some(65534)).unwrap();
    let o = w.run(&["doctor", "--env", "prod"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(".env.prod") && e.contains("not to you") && e.contains("--env-file"),
        "{e}"
    );
    assert!(!stdout(&o).contains("evil.example"));
}
