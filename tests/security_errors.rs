//! Failure paths say what happened and what to do next, and never panic.

mod common;

use std::fs;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn doctor_into_a_closed_pipe_ends_quietly() {
    let w = World::new("pipe");
    let mut c = w.cmd(&["doctor"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut g = ChildGuard::spawn(c);
    // Like `doctor | head -0`: the reader goes away before doctor prints its checks.
    drop(g.child().stdout.take());
    let st = g.wait_exit(Duration::from_secs(60));
    let mut err = String::new();
    g.child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(st.code(), Some(101), "{err}");
}

#[test]
fn start_names_what_is_wrong_in_the_backend_config() {
    // (Nothing set and nothing saved means the built-in production backend: not started here,
    // tests never reach it.)
    let w = World::new("backend-cfg");
    w.write_paired_config();
    let o = w.run(&[
        "start",
        "--foreground",
        "--supabase-url",
        "ftp://example",
        "--anon-key",
        "k",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("ftp://example") && e.contains("https://"), "{e}");
    assert!(!w.pid_file().exists(), "nothing started");
}

#[test]
fn a_file_where_a_directory_belongs_is_named() {
    let w = World::new("notdir");
    w.write_paired_config();
    let f = w.root.join("plainfile");
    fs::write(&f, "x").unwrap();
    let log = f.join("gw.log");
    let o = w.run(&["start", "--foreground", "--log-path", log.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(f.to_str().unwrap()) && e.contains("not a directory"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&f).unwrap(), "x");
}

#[test]
fn stop_with_a_locked_empty_pid_file_says_how_to_find_the_holder() {
    use std::os::unix::io::AsRawFd;
    let w = World::new("emptypid");
    w.write_paired_config();
    let f = fs::File::create(w.pid_file()).unwrap();
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    let o = w.run(&["stop"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("holds no pid") && e.contains("fuser -v"), "{e}");
    drop(f);
}
