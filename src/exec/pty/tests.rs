//! Terminal sessions against real programs on a real pty: bash, stty, python3, sleep, cat.
//!
//! Typed commands are echoed by the terminal, so every awaited text is spelled differently in
//! the command that prints it (`echo rea""dy` prints `ready`): finding it proves the program
//! ran, not that the terminal echoed the input.

use super::*;

const LIMIT: Duration = Duration::from_secs(15);

/// An interactive bash without profile or rc files, so only what the test types runs.
fn bash_with(f: impl FnOnce(&mut PtySpec)) -> Pty {
    let mut spec = PtySpec::new("/bin/bash")
        .arg("--noprofile")
        .arg("--norc")
        .arg("-i");
    set_var(&mut spec.env, "PS1", "pty$ ");
    set_var(&mut spec.env, "HISTFILE", "/dev/null");
    spec.grace = Duration::from_millis(500);
    f(&mut spec);
    spawn(spec).expect("bash starts on a pty")
}

fn bash() -> Pty {
    bash_with(|_| {})
}

/// Everything read from `cursor` until `needle` shows up; panics with what was seen after
/// `LIMIT`. Returns the text and the cursor after it.
fn expect(p: &Pty, cursor: u64, needle: &str) -> (String, u64) {
    let end = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    let mut cursor = cursor;
    while Instant::now() < end {
        let r = p.read(Some(cursor), 64 * 1024, Duration::from_millis(200), &|| {
            false
        });
        assert_eq!(
            r.dropped, 0,
            "output was dropped while waiting for {needle:?}"
        );
        seen.extend_from_slice(&r.data);
        cursor = r.next_cursor;
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return (text.into_owned(), cursor);
        }
        if r.ended && !r.more {
            break;
        }
    }
    panic!(
        "{needle:?} did not appear; the terminal showed {:?}",
        String::from_utf8_lossy(&seen)
    );
}

fn type_in(p: &Pty, s: &str) {
    assert_eq!(p.write(s.as_bytes(), LIMIT).expect("write"), s.len());
}

/// The processes of session `sid` now: (pid, command name).
fn session_procs(sid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some((_, rest))) = (stat.find('('), stat.rsplit_once(')')) else {
            continue;
        };
        let comm = stat[open + 1..stat.len() - rest.len() - 1].to_string();
        let f: Vec<&str> = rest.split_whitespace().take(4).collect();
        if f.len() == 4 && f[0] != "Z" && f[3].parse::<i32>().ok() == Some(sid) {
            out.push((pid, comm));
        }
    }
    out
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + LIMIT;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn pid_of(sid: i32, comm: &str) -> i32 {
    let mut found = None;
    assert!(
        wait_until(|| {
            found = session_procs(sid).into_iter().find(|(_, c)| c == comm);
            found.is_some()
        }),
        "{comm} never ran in the session: {:?}",
        session_procs(sid)
    );
    found.map(|(p, _)| p).unwrap_or(0)
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn the_shell_has_a_real_terminal_with_term_set() {
    let p = bash();
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(&p, "tty; echo \"te\"\"rm=$TERM\"\n");
    let (text, _) = expect(&p, c, "term=");
    let (text, _) = if text.contains("term=xterm-256color") {
        (text, 0)
    } else {
        expect(&p, c, "term=xterm-256color")
    };
    let tty = p.tty().to_string_lossy().into_owned();
    assert!(tty.starts_with("/dev/pts/"), "{tty}");
    assert!(text.contains(&format!("{tty}\r\n")), "{text:?}");
    assert!(!text.contains("not a tty"), "{text:?}");
    p.close("test");
}

#[test]
fn stty_size_shows_the_opened_size_and_a_resize_changes_it() {
    let p = bash_with(|s| {
        s.size = WinSize { rows: 33, cols: 91 };
    });
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(&p, "stty size\n");
    let (_, c) = expect(&p, c, "33 91\r\n");
    p.resize(WinSize {
        rows: 50,
        cols: 101,
    })
    .unwrap();
    assert_eq!(
        p.status().size,
        WinSize {
            rows: 50,
            cols: 101
        }
    );
    type_in(&p, "stty size\n");
    let (_, c) = expect(&p, c, "50 101\r\n");
    // The foreground program is told (SIGWINCH).
    type_in(
        &p,
        "sh -c 'trap \"echo got-\"\"winch\" WINCH; echo rea\"\"dy; while :; do sleep 0.05; done'\n",
    );
    let (_, c) = expect(&p, c, "ready");
    p.resize(WinSize { rows: 20, cols: 80 }).unwrap();
    let (_, c) = expect(&p, c, "got-winch");
    type_in(&p, "\x03");
    type_in(&p, "stty size\n");
    expect(&p, c, "20 80\r\n");
    assert!(p
        .resize(WinSize { rows: 0, cols: 80 })
        .unwrap_err()
        .to_string()
        .contains("at least one row"));
    p.close("test");
}

#[test]
fn an_interactive_prompt_is_answered_by_a_later_write() {
    let p = bash();
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(&p, "p=nam; read -p \"${p}e? \" n; echo \"h\"\"i $n\"\n");
    let (_, c) = expect(&p, c, "name? ");
    type_in(&p, "bob\n");
    expect(&p, c, "hi bob");
    p.close("test");
}

#[test]
fn the_python_repl_runs_and_gives_the_shell_back() {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("python3");
    let p = bash();
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(&p, &format!("{python} -q\n"));
    let (_, c) = expect(&p, c, ">>> ");
    type_in(&p, "print(6*7)\n");
    let (_, c) = expect(&p, c, "42\r\n");
    type_in(&p, "exit()\n");
    let (_, c) = expect(&p, c, "pty$ ");
    type_in(&p, "echo she\"\"ll-back\n");
    expect(&p, c, "shell-back");
    assert!(p.status().alive);
    p.close("test");
}

#[test]
fn ctrl_c_interrupts_the_foreground_job_and_the_shell_lives_on() {
    let p = bash();
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(&p, "sleep 100\n");
    let sleep = pid_of(p.pid(), "sleep");
    type_in(&p, "\x03");
    assert!(wait_until(|| gone(sleep)), "sleep survived ^C");
    type_in(&p, "echo al\"\"ive\n");
    let (text, _) = expect(&p, c, "alive");
    assert!(text.contains("^C"), "the terminal echoes ^C: {text:?}");
    assert!(p.status().alive);
    p.close("test");
}

#[test]
fn ctrl_d_is_end_of_file_for_cat() {
    let p = bash();
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(&p, "cat\n");
    let cat = pid_of(p.pid(), "cat");
    type_in(&p, "abc\n");
    // Once echoed by the terminal, once written back by cat.
    let end = Instant::now() + LIMIT;
    let mut c2 = c;
    let mut text = String::new();
    while text.matches("abc\r\n").count() < 2 && Instant::now() < end {
        let r = p.read(Some(c2), 4096, Duration::from_millis(200), &|| false);
        text.push_str(&String::from_utf8_lossy(&r.data));
        c2 = r.next_cursor;
    }
    assert_eq!(text.matches("abc\r\n").count(), 2, "{text:?}");
    type_in(&p, "\x04");
    assert!(wait_until(|| gone(cat)), "cat did not end on ^D");
    type_in(&p, "echo do\"\"ne\n");
    expect(&p, c2, "done");
    p.close("test");
}

/// The lines `1..=n` must follow the echoed command in `text` exactly.
fn assert_sequence(text: &str, n: u32) {
    let lines: Vec<&str> = text.split("\r\n").collect();
    let first = lines
        .iter()
        // bash ends its bracketed-paste mode (`ESC[?2004l\r`) before the command's output.
        .position(|l| *l == "1" || l.ends_with("\r1"))
        .unwrap_or_else(|| panic!("no line 1 in {:?}", &text[..text.len().min(300)]));
    for (i, want) in (2..=n).enumerate() {
        assert_eq!(
            lines.get(first + 1 + i).copied(),
            Some(want.to_string().as_str()),
            "line {} of the output",
            i + 2
        );
    }
}

#[test]
fn cursor_reads_under_load_lose_and_repeat_nothing() {
    let p = bash();
    let (_, mut cursor) = expect(&p, 0, "pty$ ");
    type_in(&p, "seq 1 100000; echo fin\"\"ished\n");
    let mut seen = Vec::new();
    let end = Instant::now() + LIMIT;
    while !String::from_utf8_lossy(&seen).contains("finished") && Instant::now() < end {
        // Small reads, while seq floods the terminal.
        let r = p.read(Some(cursor), 3000, Duration::from_millis(200), &|| false);
        assert_eq!(r.dropped, 0);
        assert_eq!(
            r.cursor, cursor,
            "each read starts where the last one ended"
        );
        cursor = r.next_cursor;
        seen.extend_from_slice(&r.data);
    }
    assert_sequence(&String::from_utf8_lossy(&seen), 100_000);
    // Without a cursor, reads continue where the last read ended.
    type_in(&p, "echo ne\"\"xt\n");
    let end = Instant::now() + LIMIT;
    let mut more = String::new();
    while !more.contains("next") && Instant::now() < end {
        let r = p.read(None, 64, Duration::from_millis(200), &|| false);
        assert_eq!(r.cursor, cursor);
        cursor = r.next_cursor;
        more.push_str(&String::from_utf8_lossy(&r.data));
    }
    assert!(more.starts_with("echo ne\"\"xt"), "{more:?}");
    p.close("test");
}

#[test]
fn overflow_is_flagged_and_the_newest_output_kept() {
    let p = bash_with(|s| s.buffer_bytes = 64 * 1024);
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(&p, "seq 1 100000; echo fin\"\"ished\n");
    // Nobody reads while seq writes ~590 kB through a 64 KiB buffer.
    assert!(wait_until(|| {
        let whole = p.read(
            Some(p.status().buffer_start),
            1 << 20,
            Duration::ZERO,
            &|| false,
        );
        String::from_utf8_lossy(&whole.data).contains("finished")
    }));
    let st = p.status();
    assert_eq!(st.buffer_end - st.buffer_start, 64 * 1024);
    let r = p.read(Some(c), 1 << 20, Duration::ZERO, &|| false);
    assert_eq!(r.cursor, st.buffer_start);
    assert_eq!(r.dropped, st.buffer_start - c);
    assert!(String::from_utf8_lossy(&r.data).contains("100000\r\nfinished"));
    // From there on, nothing is missing.
    let r2 = p.read(None, 10, Duration::ZERO, &|| false);
    assert_eq!((r2.cursor, r2.dropped), (r.next_cursor, 0));
    p.close("test");
}

#[test]
fn a_shell_that_exits_is_reaped_and_reported() {
    let p = bash();
    let (_, _) = expect(&p, 0, "pty$ ");
    type_in(&p, "sleep 1000 & exit 3\n");
    assert!(p.wait_ended(LIMIT));
    let st = p.status();
    assert_eq!(
        (st.alive, st.exit_code, st.stop),
        (false, Some(3), Some("exited"))
    );
    assert!(gone(p.pid()), "the shell was reaped");
    // Killed before the shell was reaped; it may take a moment to finish dying.
    assert!(
        wait_until(|| session_procs(p.pid()).is_empty()),
        "its background job went too"
    );
    let e = p.write(b"echo hi\n", LIMIT).unwrap_err();
    assert!(e.to_string().contains("exited with status 3"), "{e}");
    let r = p.read(Some(0), 1 << 20, Duration::ZERO, &|| false);
    assert!(r.ended && r.exit_code == Some(3));
}

#[test]
fn close_ends_every_process_of_the_session() {
    let p = bash();
    let (_, _) = expect(&p, 0, "pty$ ");
    type_in(&p, "sleep 1001 &\n");
    type_in(&p, "sleep 1002\n");
    let procs = |p: &Pty| {
        session_procs(p.pid())
            .into_iter()
            .filter(|(_, c)| c == "sleep")
            .count()
    };
    assert!(wait_until(|| procs(&p) == 2));
    let pids: Vec<i32> = session_procs(p.pid()).into_iter().map(|(p, _)| p).collect();
    let st = p.close("test");
    assert_eq!((st.alive, st.stop), (false, Some("test")));
    assert!(
        pids.iter().all(|&q| gone(q)),
        "{:?}",
        session_procs(p.pid())
    );
    let e = p.write(b"x", LIMIT).unwrap_err();
    assert!(e.to_string().contains("closed (test)"), "{e}");
    assert!(p.resize(DEFAULT_SIZE).is_err());
}

#[test]
fn close_escalates_to_sigkill_for_programs_that_ignore_hangup() {
    let p = bash();
    let (_, c) = expect(&p, 0, "pty$ ");
    type_in(
        &p,
        "trap '' HUP TERM; sh -c 'trap \"\" HUP TERM INT; echo ig\"\"noring; while :; do sleep 1; done'\n",
    );
    expect(&p, c, "ignoring");
    let started = Instant::now();
    let st = p.close("test");
    assert!(!st.alive, "the session ended");
    assert_eq!(st.signal, Some(libc::SIGKILL));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "after the grace"
    );
    assert!(wait_until(|| session_procs(p.pid()).is_empty()));
}

#[test]
fn an_idle_session_is_closed() {
    let p = bash_with(|s| s.idle_timeout = Some(Duration::from_millis(300)));
    assert!(p.wait_ended(LIMIT));
    assert_eq!(p.status().stop, Some("idle"));
    assert!(gone(p.pid()));
}

#[test]
fn dropping_the_last_handle_closes_the_session() {
    let p = bash();
    let pid = p.pid();
    let clone = p.clone();
    drop(p);
    assert!(clone.status().alive, "a clone keeps it open");
    drop(clone);
    assert!(wait_until(|| gone(pid)));
}

#[test]
fn the_login_shell_is_an_executable_path() {
    let sh = login_shell();
    assert!(sh.is_absolute(), "{}", sh.display());
    assert!(std::fs::metadata(&sh).is_ok(), "{}", sh.display());
}

#[test]
fn a_missing_program_is_a_clear_spawn_error() {
    let e = match spawn(PtySpec::new("/nonexistent/shell")) {
        Err(e) => e,
        Ok(_) => panic!("a missing program must not start"),
    };
    assert!(e.not_found());
    assert!(e.to_string().contains("/nonexistent/shell"), "{e}");
}
