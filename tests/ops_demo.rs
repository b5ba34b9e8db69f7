//! `scripts/demo.sh` (issue 13): the one-command demo completes every job and leaves nothing
//! behind, also when interrupted. It runs the binaries cargo built for this test run
//! (PANORAMA_DEMO_BIN_DIR), so the test does not build again.

mod connect_support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use connect_support::*;

fn demo(tmp: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = Path::new(GATEWAY).parent().unwrap();
    let mut c = Command::new(root.join("scripts/demo.sh"));
    c.env("PANORAMA_DEMO_BIN_DIR", bin_dir)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    c
}

/// Kills the demo's whole process group, and the detached daemon it started, if the test
/// fails midway.
struct GroupGuard(Child, Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe {
                libc::kill(-(self.0.id() as i32), libc::SIGKILL);
            }
            let _ = self.0.wait();
        }
        if let Some(pid) = self.1.filter(|p| !dead(*p)) {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Every line of the demo's stdout and stderr, as it comes.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    rx
}

fn leftovers(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn daemon_pid(seen: &[String]) -> Option<i32> {
    seen.iter()
        .find_map(|l| l.split("Gateway started (pid ").nth(1))
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
}

#[test]
fn the_demo_completes_every_job_and_removes_what_it_made() {
    let tmp = TempDir::new("demo");
    let mut g = GroupGuard(demo(tmp.path()).spawn().unwrap(), None);
    let rx = lines(&mut g.0);
    let mut seen = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(120)) {
        seen.push(l);
        g.1 = g.1.or_else(|| daemon_pid(&seen));
    }
    let st = wait_for("the demo to exit", Duration::from_secs(30), || {
        g.0.try_wait().ok().flatten()
    });
    let all = seen.join("\n");
    assert_eq!(st.code(), Some(0), "{all}");
    for job in [
        "diagnostic",
        "model_run (fake claude)",
        "shell_exec",
        "shell_session open",
        "shell_session write",
        "shell_session read",
        "shell_session close",
    ] {
        assert!(
            seen.iter()
                .any(|l| l.trim_start().starts_with(job) && l.trim_end().ends_with("completed")),
            "{job} completed: {all}"
        );
    }
    assert!(all.contains("Hello from the fake CLI."), "{all}");
    assert!(all.contains("hello from Linux"), "{all}");
    assert!(all.contains("session in /tmp"), "{all}");
    assert!(all.contains("Connection: connected"), "status shown: {all}");
    assert!(
        all.contains("[worker] job finished"),
        "log lines shown: {all}"
    );
    assert!(all.contains("Every job completed."), "{all}");
    let pid = daemon_pid(&seen).expect("the demo names the daemon's pid");
    assert!(dead(pid), "the gateway daemon {pid} was stopped");
    assert_eq!(leftovers(tmp.path()), Vec::<PathBuf>::new());
}

#[test]
fn an_interrupted_demo_stops_everything_and_removes_what_it_made() {
    let tmp = TempDir::new("demo-int");
    let mut g = GroupGuard(demo(tmp.path()).spawn().unwrap(), None);
    let rx = lines(&mut g.0);
    let mut seen = Vec::new();
    // Interrupt once the daemon runs (Ctrl-C goes to the whole foreground group).
    let pid = wait_for(
        "the demo to start the gateway",
        Duration::from_secs(60),
        || {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.push(l);
            }
            daemon_pid(&seen)
        },
    );
    g.1 = Some(pid);
    unsafe {
        libc::kill(-(g.0.id() as i32), libc::SIGINT);
    }
    let st = wait_for("the demo to exit", Duration::from_secs(60), || {
        g.0.try_wait().ok().flatten()
    });
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(l);
    }
    let all = seen.join("\n");
    assert_ne!(st.code(), Some(0), "{all}");
    assert!(all.contains("stopped everything and removed"), "{all}");
    wait_for(
        "the gateway daemon to be gone",
        Duration::from_secs(20),
        || dead(pid).then_some(()),
    );
    assert_eq!(leftovers(tmp.path()), Vec::<PathBuf>::new());
}
