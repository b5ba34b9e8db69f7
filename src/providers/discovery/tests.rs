//! Discovery against scripted CLIs: the choice of command, trust, wrappers, shell hints and
//! probes stopped at shutdown.

use super::*;
use std::collections::HashMap;

struct MapEnv(HashMap<String, OsString>);
impl EnvLookup for MapEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        self.0.get(name).cloned()
    }
}

#[test]
fn version_extraction_matches_the_reference_examples() {
    assert_eq!(
        extract_version("2.0.14 (Claude Code)").as_deref(),
        Some("2.0.14")
    );
    assert_eq!(
        extract_version("codex-cli 0.46.0").as_deref(),
        Some("0.46.0")
    );
    assert_eq!(
        extract_version("0.9.0-nightly.20251001").as_deref(),
        Some("0.9.0-nightly.20251001")
    );
    assert_eq!(extract_version("v1.2").as_deref(), Some("1.2.0"));
    assert_eq!(extract_version("  "), None);
    assert_eq!(extract_version("no digits"), None);
}

#[test]
fn version_comparison() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_versions("2.0.14", "2.0.9"), Greater);
    assert_eq!(compare_versions("v1.2", "1.2.0"), Equal);
    assert_eq!(compare_versions("1.0.0", "1.0.0-beta"), Greater);
    assert_eq!(compare_versions("1.0.0-alpha", "1.0.0-beta"), Less);
    assert_eq!(compare_versions("x.y", "1.0.0"), Equal);
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pgw-disc-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_exe(p: &Path, body: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn picks_the_highest_version_and_falls_back_to_the_bare_name() {
    let d = scratch("pick");
    let a = d.join("a");
    let b = d.join("b");
    write_exe(&a.join("codex"), "#!/bin/sh\necho 'codex-cli 0.40.0'\n");
    write_exe(&b.join("codex"), "#!/bin/sh\necho 'codex-cli 0.46.0'\n");
    write_exe(&d.join("c/gemini"), "#!/bin/sh\nexit 1\n");
    let env = MapEnv(HashMap::from([
        (
            "PATH".to_string(),
            OsString::from(format!(
                "{}:{}:{}",
                a.display(),
                b.display(),
                d.join("c").display()
            )),
        ),
        ("HOME".to_string(), d.join("home").into_os_string()),
    ]));
    let got = discover_one(ProviderId::Codex, None, &env, &ProbeStop::default());
    assert_eq!(got.source, Source::Detected);
    assert_eq!(got.command, b.join("codex"));
    assert_eq!(got.version.as_deref(), Some("0.46.0"));
    let g = discover_one(ProviderId::Gemini, None, &env, &ProbeStop::default());
    // /usr/bin etc. are searched too; on a test host without gemini this is the fallback.
    if !is_executable_file(Path::new("/usr/bin/gemini"))
        && !is_executable_file(Path::new("/usr/local/bin/gemini"))
    {
        assert_eq!(g.source, Source::Fallback);
        assert_eq!(g.command, PathBuf::from("gemini"));
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn planted_or_world_writable_clis_and_relative_path_entries_are_skipped() {
    let d = scratch("trust");
    let good = d.join("good");
    let open = d.join("open");
    write_exe(&good.join("codex"), "#!/bin/sh\necho 'codex-cli 0.40.0'\n");
    write_exe(&open.join("codex"), "#!/bin/sh\necho 'codex-cli 9.9.9'\n");
    // A directory anyone can write to without the sticky bit: whatever is in it can be
    // swapped by anyone.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let env = MapEnv(HashMap::from([
        (
            "PATH".to_string(),
            OsString::from(format!(".::{}:{}", open.display(), good.display())),
        ),
        ("HOME".to_string(), d.join("home").into_os_string()),
    ]));
    assert!(untrusted_reason(&open.join("codex")).is_some());
    assert!(untrusted_reason(&good.join("codex")).is_none());
    let c = candidates(ProviderId::Codex, &env);
    assert!(!c.contains(&open.join("codex")), "{c:?}");
    assert!(c.contains(&good.join("codex")), "{c:?}");
    let cwd = std::env::current_dir().unwrap();
    assert!(
        !bin_dirs(&env).contains(&cwd),
        "relative PATH entries are not searched"
    );
    // A world-writable executable in a good directory is skipped too.
    std::fs::set_permissions(good.join("codex"), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(untrusted_reason(&good.join("codex")).is_some());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn override_wins_even_when_its_probe_fails() {
    let env = MapEnv(HashMap::new());
    let got = discover_one(
        ProviderId::Gemini,
        Some(Path::new("/nonexistent/gemini")),
        &env,
        &ProbeStop::default(),
    );
    assert_eq!(got.source, Source::Override);
    assert_eq!(got.command, PathBuf::from("/nonexistent/gemini"));
    assert_eq!(got.version, None);
}

#[test]
fn claude_local_install_is_found_and_a_broken_wrapper_is_repaired() {
    let d = scratch("claude");
    let home = d.join("home");
    write_exe(
        &home.join(".claude/local/claude"),
        "#!/bin/sh\nexec \"$HOME/.claude/local/node_modules/.bin/claude\" \"$@\"\n",
    );
    // The wrapper's target uses $HOME (not ~/): it is not expanded, so it does not exist.
    write_exe(
        &home.join(".claude/claude"),
        "#!/bin/sh\necho '2.0.14 (Claude Code)'\n",
    );
    let env = MapEnv(HashMap::from([
        ("HOME".to_string(), home.clone().into_os_string()),
        ("PATH".to_string(), OsString::from("/nonexistent")),
    ]));
    assert!(broken_wrapper_target(&home.join(".claude/local/claude"), Some(&home)).is_some());
    let got = discover_one(ProviderId::Claude, None, &env, &ProbeStop::default());
    assert_eq!(got.command, home.join(".claude/claude"));
    assert_eq!(got.version.as_deref(), Some("2.0.14"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn wrapper_targets_are_read_like_the_reference() {
    let d = scratch("wrap");
    let home = d.join("home");
    let exists = d.join("real-claude");
    write_exe(&exists, "#!/bin/sh\n");
    let w = d.join("w");
    let check = |body: &str| {
        std::fs::write(&w, body).unwrap();
        broken_wrapper_target(&w, Some(&home))
    };
    assert_eq!(
        check(&format!("#!/bin/sh\nexec '{}' \"$@\"\n", exists.display())),
        None
    );
    assert_eq!(
        check("#!/bin/sh\nexec \"/gone/claude\" \"$@\"\n").as_deref(),
        Some("/gone/claude")
    );
    // `~/` is expanded against the home directory.
    assert_eq!(
        check("exec ~/.claude/local/node_modules/.bin/claude").as_deref(),
        Some("~/.claude/local/node_modules/.bin/claude")
    );
    // An unclosed quote: the word including the quote is the target (it does not exist).
    assert_eq!(
        check("#!/bin/sh\nexec \"/gone/claude $@\n").as_deref(),
        Some("\"/gone/claude")
    );
    // `exec` without whitespace after it is not a match; the next one is.
    assert_eq!(
        check("# execute me\nexec /gone/x\n").as_deref(),
        Some("/gone/x")
    );
    // Larger than 4096 bytes: never a wrapper.
    assert_eq!(check(&format!("exec /gone/x\n#{}", "x".repeat(5000))), None);
    let _ = std::fs::remove_dir_all(&d);
}

/// Whether `pid` is gone or a zombie (killed, not yet reaped by whoever inherits it).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Waits (bounded) for a file with a pid in it.
fn read_pid(path: &Path) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_stop_kills_a_probe_that_hangs_and_no_probe_starts_after_it() {
    let d = scratch("stop");
    let cli = d.join("codex");
    // Hangs in --version with a child of its own, as a CLI waiting on the network might.
    write_exe(
        &cli,
        &format!(
            "#!/bin/sh\necho $$ >> '{d}/started'\nsleep 600 &\necho $! > '{d}/sleeper'\nwait\n",
            d = d.display()
        ),
    );
    let stop = ProbeStop::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let (cli, stop) = (cli.clone(), stop.clone());
        std::thread::spawn(move || {
            let env = MapEnv(HashMap::new());
            let found = discover_one(ProviderId::Codex, Some(&cli), &env, &stop);
            // What discovery does next with the command: no probe starts any more.
            let after = probe(&cli, &["--help"], DISCOVERY_PROBE_TIMEOUT, &stop);
            let _ = tx.send((found, after));
        })
    };
    let probe_pid = read_pid(&d.join("started"));
    let sleeper = read_pid(&d.join("sleeper"));
    stop.stop();
    // stop() returns once the probe's group is killed: the CLI and its child are dead.
    assert!(dead(probe_pid), "the probe {probe_pid} outlived the stop");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !dead(sleeper) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        dead(sleeper),
        "the probe's child {sleeper} outlived the stop"
    );
    // Generous bound: the probe's own limit is 5 s, and nothing waits for it now.
    let (found, after) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("discovery returned after the stop");
    worker.join().unwrap();
    assert_eq!(found.source, Source::Override);
    assert_eq!(found.version, None);
    assert!(!after.ok);
    assert!(
        after
            .error
            .as_deref()
            .unwrap_or("")
            .contains("gateway is stopping"),
        "{:?}",
        after.error
    );
    let started = std::fs::read_to_string(d.join("started")).unwrap();
    assert_eq!(started.lines().count(), 1, "a probe started after the stop");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn shell_hint_explains_aliases_and_paths_outside_path() {
    let d = scratch("shell");
    let alias_sh = d.join("alias-sh");
    write_exe(
        &alias_sh,
        "#!/bin/sh\necho 'codex is aliased to `npx @openai/codex`'\n",
    );
    let path_sh = d.join("path-sh");
    write_exe(
        &path_sh,
        "#!/bin/sh\necho 'gemini is /opt/node/bin/gemini'\n",
    );
    let env = |sh: &Path| {
        MapEnv(HashMap::from([(
            "SHELL".to_string(),
            sh.as_os_str().to_owned(),
        )]))
    };
    let a = shell_hint(ProviderId::Codex, &env(&alias_sh), &ProbeStop::default()).unwrap();
    assert!(a.contains("as an alias"), "{a}");
    assert!(a.contains("PANORAMA_CODEX_CLI"), "{a}");
    let p = shell_hint(ProviderId::Gemini, &env(&path_sh), &ProbeStop::default()).unwrap();
    assert!(p.contains("/opt/node/bin/gemini"), "{p}");
    assert!(p.contains("--gemini-cli"), "{p}");
    assert_eq!(
        shell_hint(
            ProviderId::Gemini,
            &MapEnv(HashMap::new()),
            &ProbeStop::default()
        ),
        None
    );
    let _ = std::fs::remove_dir_all(&d);
}
