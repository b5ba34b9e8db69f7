//! A full disk never loses gateway.json: a write that cannot complete leaves the previous file
//! byte for byte, says what happened and what to do, and a running daemon reports it in
//! `status` (rotated tokens then live in memory only).
//!
//! "Full" is simulated with RLIMIT_FSIZE in the gateway process (writes past the limit fail
//! with EFBIG): it needs neither root nor a mount, and works when the tests run as root (where
//! a read-only chmod would be ignored).

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use support::connect::*;

/// Makes `cmd` run with files limited to `bytes` (writes beyond fail with EFBIG, no signal).
fn limit_file_size(cmd: &mut Command, bytes: u64) {
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn a_full_disk_leaves_gateway_json_untouched_and_says_so() {
    let dir = TempDir::new("full");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cfg = dir.path().join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    let path = cfg.join("gateway.json");
    let before = format!(
        "{{\n  \"accessToken\": \"a\",\n  \"vmGuest\": {{\"vmId\": \"{}\"}}\n}}\n",
        "v".repeat(200)
    );
    std::fs::write(&path, &before).unwrap();
    let mut cmd = Command::new(GATEWAY);
    cmd.args([
        "--config-dir",
        cfg.to_str().unwrap(),
        "full-control",
        "enable",
    ])
    .env("HOME", &home);
    // Room for less than the new file (which is at least as long as the old one).
    limit_file_size(&mut cmd, (before.len() / 2) as u64);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(path.to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(
        err.contains("disk is full") && err.contains("previous file is unchanged"),
        "says what happened and what to do: {err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    assert!(leftovers(&cfg).is_empty(), "{:?}", leftovers(&cfg));

    // With room again the same command works (nothing was left half-done).
    let out = Command::new(GATEWAY)
        .args([
            "--config-dir",
            cfg.to_str().unwrap(),
            "full-control",
            "enable",
        ])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["full_control_enabled"], true);
    assert_eq!(v["vmGuest"]["vmId"].as_str().unwrap().len(), 200);
}

#[test]
fn a_daemon_that_cannot_save_rotated_tokens_reports_it_in_status() {
    let b = Backend::start_with(&["--access-token-ttl", "6"]);
    let mut gw = Gateway::new(&b);
    let (code, _team) = b.pairing_code(None);
    gw.pair(&code);
    let path = gw.config_dir().join("gateway.json");
    let before = std::fs::read_to_string(&path).unwrap();
    // The status file (a few hundred bytes) still fits; gateway.json does not.
    let limit = (before.len() - 64) as u64;
    assert!(limit > 900, "gateway.json is {} bytes", before.len());

    let refreshes = b.stats()["token_refreshes"].as_u64().unwrap_or(0);
    let out = std::fs::File::create(gw.dir.path().join("daemon.out")).unwrap();
    let err = std::fs::File::create(gw.dir.path().join("daemon.err")).unwrap();
    let mut cmd = gw.command(&["start", "--foreground"]);
    cmd.stdout(out).stderr(err);
    limit_file_size(&mut cmd, limit);
    gw.daemon = Some(cmd.spawn().unwrap());

    wait_for("a token rotation", Duration::from_secs(30), || {
        (b.stats()["token_refreshes"].as_u64().unwrap_or(0) > refreshes).then_some(())
    });
    let (rc, out, err) = wait_for(
        "status to report the failed save",
        Duration::from_secs(20),
        || {
            let r = gw.run(&["status"]);
            r.1.contains("WARNING gateway.json could not be saved")
                .then_some(r)
        },
    );
    assert_eq!(
        rc, 1,
        "degraded while tokens are only in memory: {out} {err}"
    );
    assert!(out.contains("disk is full"), "{out}");
    let (_, js, _) = gw.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
    assert!(
        v["config_save_error"]
            .as_str()
            .unwrap_or("")
            .contains("memory only"),
        "{v}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "the last good gateway.json is kept whole"
    );
    assert!(leftovers(&gw.config_dir()).is_empty());
    assert_eq!(gw.stop(Duration::from_secs(30)).code(), Some(0));
}
