//! `logs [--lines N] [--no-follow]`: the last N lines (read from the end, reaching into the
//! rotated file when the current one is short), then follow like `tail -F`: across rotation
//! (the path gets a new file) and truncation, until Ctrl-C.
//!
//! Following polls every 100 ms and keeps the file it reads open. When the path holds a new
//! file, the open one is read to its end, then every rotated file newer than it
//! (`gateway.log.2`, `.1`), then the new one: no line is lost or printed twice however often
//! the log rotated between two polls, as long as the open file is still among the kept ones
//! (otherwise one NOTE on stderr says lines may be missing). Only whole lines are printed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::config::Settings;
use crate::logging::{rotated_path, KEEP_FILES};

/// How often the log is looked at while following: quick enough to feel live, idle between.
const POLL: Duration = Duration::from_millis(100);

/// The last `n` lines of a file (bytes, each line with its newline) read backwards from the
/// end; and how many lines that is.
pub fn tail_lines(path: &Path, n: usize) -> io::Result<(Vec<u8>, usize)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    tail_file(&mut f, len, n)
}

/// The last `n` lines of the first `len` bytes of `f`.
pub fn tail_file(f: &mut File, len: u64, n: usize) -> io::Result<(Vec<u8>, usize)> {
    if n == 0 {
        return Ok((Vec::new(), 0));
    }
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    const CHUNK: u64 = 64 * 1024;
    loop {
        // Count line starts in buf (excluding a final newline at the very end).
        let body = if buf.last() == Some(&b'\n') {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        let newlines = body.iter().filter(|b| **b == b'\n').count();
        if newlines >= n || pos == 0 {
            if newlines >= n {
                // keep the last n lines: skip to after the (newlines - n + 1)-th newline
                let mut skip = newlines - n + 1;
                let mut start = 0;
                for (i, b) in body.iter().enumerate() {
                    if *b == b'\n' {
                        skip -= 1;
                        if skip == 0 {
                            start = i + 1;
                            break;
                        }
                    }
                }
                let out = buf[start..].to_vec();
                return Ok((out, n));
            }
            let count = if buf.is_empty() { 0 } else { newlines + 1 };
            return Ok((buf, count));
        }
        let step = CHUNK.min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0u8; step as usize];
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
}

fn write_out(out: &mut impl Write, data: &[u8]) -> bool {
    out.write_all(data).is_ok() && out.flush().is_ok()
}

/// Prints whole lines only: a trailing partial line (a write still in progress) is held back
/// until its newline arrives, or until its file is finished for good.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Prints every complete line of `partial + data`; keeps the rest. False when stdout is gone.
    fn feed(&mut self, data: &[u8], out: &mut impl Write) -> bool {
        let Some(i) = data.iter().rposition(|b| *b == b'\n') else {
            self.partial.extend_from_slice(data);
            return true;
        };
        let ok = if self.partial.is_empty() {
            write_out(out, &data[..=i])
        } else {
            self.partial.extend_from_slice(&data[..=i]);
            let ok = write_out(out, &self.partial);
            self.partial.clear();
            ok
        };
        self.partial.extend_from_slice(&data[i + 1..]);
        ok
    }

    /// The file being read will not grow any more (rotated away or truncated): its unfinished
    /// last line is printed as a line of its own rather than lost or glued to the next file.
    fn finish(&mut self, out: &mut impl Write) -> bool {
        if self.partial.is_empty() {
            return true;
        }
        self.partial.push(b'\n');
        let ok = write_out(out, &self.partial);
        self.partial.clear();
        ok
    }
}

/// Copies everything from `f` (at its position) to `out`, whole lines only. False when stdout
/// is gone.
fn pump(f: &mut File, lines: &mut Lines, out: &mut impl Write) -> bool {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if !lines.feed(&buf[..n], out) {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Identity of a file: device and inode.
type FileId = (u64, u64);

fn id_of(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino())
}

fn path_id(p: &Path) -> Option<FileId> {
    std::fs::metadata(p).ok().map(|m| id_of(&m))
}

/// What one look at the log path found.
enum Step {
    /// Keep reading the same file.
    Same,
    /// The log rotated; everything up to the new file has been printed: read this one next
    /// (from its start).
    Switched(File),
    /// Stdout is gone (the reader quit): stop.
    Stop,
}

/// How often a rotation caught half-way (the renames are not one atomic step) is looked at
/// again before waiting for the next poll.
const SETTLE_TRIES: usize = 20;
const SETTLE_WAIT: Duration = Duration::from_millis(5);

/// Looks at `path` after `cur` (the file being followed) has been read to its end: detects
/// truncation and rotation (see [`catch_up`]).
fn check(
    path: &Path,
    cur: &mut File,
    lines: &mut Lines,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Step {
    let (Ok(open_meta), Ok(disk)) = (cur.metadata(), std::fs::metadata(path)) else {
        // Between the rename and the re-create of a rotation, or the file was removed: keep
        // the open file, the daemon may still be writing to it.
        return Step::Same;
    };
    if id_of(&disk) == id_of(&open_meta) {
        let pos = cur.stream_position().unwrap_or(0);
        if disk.len() < pos {
            // Truncated in place (copytruncate): start over at the top.
            if !lines.finish(out) {
                return Step::Stop;
            }
            let _ = cur.seek(SeekFrom::Start(0));
        }
        return Step::Same;
    }
    for _ in 0..SETTLE_TRIES {
        match catch_up(path, cur, lines, out, err) {
            Step::Same => std::thread::sleep(SETTLE_WAIT),
            done => return done,
        }
    }
    Step::Same
}

/// The path holds a new file. Prints what the old file `old` still holds, then every rotated
/// file newer than it, oldest first (`gateway.log.2`, `gateway.log.1`: the scheme of
/// `logging.rs`), so nothing is lost or printed twice however many rotations happened since
/// the last poll, and returns the new current file. `Same` when the files moved while looking
/// (a rotation half-way): the caller looks again.
fn catch_up(
    path: &Path,
    old: &mut File,
    lines: &mut Lines,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Step {
    if !pump(old, lines, out) {
        return Step::Stop;
    }
    let Ok(old_meta) = old.metadata() else {
        return Step::Same;
    };
    let old_id = id_of(&old_meta);
    let found = (1..KEEP_FILES).find(|n| path_id(&rotated_path(path, *n)) == Some(old_id));
    // Rotated files to print, oldest first.
    let mut newer: Vec<usize> = Vec::new();
    let mut fell_off = false;
    match found {
        Some(n) => newer.extend((1..n).rev()),
        None if old_meta.nlink() == 0 => {
            // Deleted: either rotated past the last kept file (3+ rotations since the last
            // poll), or removed by hand. Only files written after it are newer than it.
            let old_mtime = old_meta.modified().ok();
            for n in (1..KEEP_FILES).rev() {
                let m = std::fs::metadata(rotated_path(path, n)).and_then(|m| m.modified());
                if let (Ok(m), Some(o)) = (m, old_mtime) {
                    if m >= o {
                        newer.push(n);
                    }
                }
            }
            fell_off = newer.first() == Some(&(KEEP_FILES - 1));
        }
        // Moved somewhere else (an external logrotate with its own names): the new file
        // follows it directly.
        None => {}
    }
    // Open everything first, then check nothing moved meanwhile: the handles then are the
    // consecutive files, whatever rotates while they are read.
    let mut handles = Vec::with_capacity(newer.len());
    for n in &newer {
        match File::open(rotated_path(path, *n)) {
            Ok(f) => handles.push(f),
            Err(_) => return Step::Same,
        }
    }
    let Ok(new_cur) = File::open(path) else {
        return Step::Same;
    };
    let still = |p: &Path, f: &File| {
        f.metadata()
            .ok()
            .map(|m| id_of(&m))
            .is_some_and(|id| path_id(p) == Some(id))
    };
    let settled = found.is_none_or(|n| path_id(&rotated_path(path, n)) == Some(old_id))
        && newer
            .iter()
            .zip(&handles)
            .all(|(n, f)| still(&rotated_path(path, *n), f))
        && still(path, &new_cur);
    if !settled {
        return Step::Same;
    }
    // A last look at the old file, then it is done.
    if !pump(old, lines, out) || !lines.finish(out) {
        return Step::Stop;
    }
    if fell_off {
        let _ = writeln!(
            err,
            "NOTE the log rotated 3 or more times since it was last read: lines older than {} may have been rotated away (deleted) and are not shown; a larger PANORAMA_GATEWAY_LOG_MAX_BYTES keeps more",
            rotated_path(path, KEEP_FILES - 1).display()
        );
    }
    for mut f in handles {
        if !pump(&mut f, lines, out) || !lines.finish(out) {
            return Step::Stop;
        }
    }
    Step::Switched(new_cur)
}

fn follow(
    path: &Path,
    mut current: Option<File>,
    lines: &mut Lines,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    let mut waited_note = false;
    loop {
        let Some(f) = current.as_mut() else {
            match File::open(path) {
                Ok(f) => current = Some(f),
                Err(_) => {
                    if !waited_note {
                        let _ = writeln!(err, "Waiting for {} to appear...", path.display());
                        waited_note = true;
                    }
                    std::thread::sleep(POLL);
                }
            }
            continue;
        };
        if !pump(f, lines, out) {
            return 0;
        }
        std::thread::sleep(POLL);
        match check(path, f, lines, out, err) {
            Step::Same => {}
            Step::Switched(n) => current = Some(n),
            Step::Stop => return 0,
        }
    }
}

/// Where the log is chosen, for every error: the user may be looking at the wrong file.
const LOG_PATH_HINT: &str = "if the gateway logs elsewhere, point at its log with --log-path PATH or PANORAMA_GATEWAY_LOG_PATH (same as the running gateway's)";

/// The message for a log file that cannot be read: what happened and what to do next.
fn read_error(path: &Path, kind: io::ErrorKind, err: &str) -> String {
    let p = path.display();
    let what = match kind {
        io::ErrorKind::NotFound => format!(
            "no log file at {p} yet: the gateway has not run with this configuration; start it with `panorama-gateway start`, or"
        ),
        io::ErrorKind::IsADirectory => format!(
            "cannot read the log file {p}: it is a directory ({err}); move it away or"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "cannot read the log file {p}: {err}; run logs as the user that runs the gateway, or"
        ),
        _ => format!("cannot read the log file {p}: {err}; check the file and the disk, or"),
    };
    format!("ERROR {what} {LOG_PATH_HINT}")
}

/// Runs `logs`; returns the exit code.
pub fn run(settings: &Settings, lines: usize, follow_on: bool) -> i32 {
    let path = &settings.paths.log_path;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if settings.verbose {
        eprintln!("Log file: {}", path.display());
    }
    // Open once: the tail and the follow start at the same length, nothing is missed. Only a
    // missing file means "not yet": any other open error (permissions) is reported, not waited
    // on forever.
    let opened = File::open(path);
    let open_err = opened.as_ref().err().map(|e| io::Error::from(e.kind()));
    let open_err_text = opened.as_ref().err().map(|e| e.to_string());
    let mut current = opened.ok();
    let len = current
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map(|m| m.len())
        .unwrap_or(0);
    let tail = match current.as_mut() {
        Some(f) => tail_file(f, len, lines),
        None => Err(open_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound))),
    };
    let (mut data, count) = match tail {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound && follow_on => (Vec::new(), 0),
        Err(e) => {
            let shown = match (&current, open_err_text) {
                (None, Some(t)) => t,
                _ => e.to_string(),
            };
            eprintln!("{}", read_error(path, e.kind(), &shown));
            return 1;
        }
    };
    if count < lines {
        if let Ok((mut older, _)) = tail_lines(&rotated_path(path, 1), lines - count) {
            if !older.is_empty() && older.last() != Some(&b'\n') {
                older.push(b'\n');
            }
            older.extend_from_slice(&data);
            data = older;
        }
    }
    if !follow_on {
        write_out(&mut out, &data);
        return 0;
    }
    // Following: an unfinished last line is completed by what follows, not printed in halves.
    let mut printer = Lines::default();
    if !printer.feed(&data, &mut out) {
        return 0;
    }
    if let Some(f) = current.as_mut() {
        // What was printed came from before `len`; continue from there.
        let _ = f.seek(SeekFrom::Start(len));
    }
    follow(path, current, &mut printer, &mut out, &mut io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_error_says_what_to_do() {
        use io::ErrorKind::*;
        for k in [NotFound, IsADirectory, PermissionDenied, InvalidData, Other] {
            let m = read_error(Path::new("/x/gateway.log"), k, "boom");
            assert!(m.starts_with("ERROR "), "{m}");
            assert!(m.contains("/x/gateway.log"), "{m}");
            assert!(m.contains("--log-path"), "{m}");
            assert!(m.contains("PANORAMA_GATEWAY_LOG_PATH"), "{m}");
        }
    }

    #[test]
    fn tails() {
        let d = std::env::temp_dir().join(format!("pg-tail-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("l.log");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(tail_lines(&p, 2).unwrap(), (b"b\nc\n".to_vec(), 2));
        assert_eq!(tail_lines(&p, 5).unwrap(), (b"a\nb\nc\n".to_vec(), 3));
        std::fs::write(&p, "a\nb\nc").unwrap();
        assert_eq!(tail_lines(&p, 1).unwrap(), (b"c".to_vec(), 1));
        let big: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &big).unwrap();
        let (t, n) = tail_lines(&p, 3).unwrap();
        assert_eq!(n, 3);
        assert_eq!(t, b"line 99997\nline 99998\nline 99999\n".to_vec());
        std::fs::remove_dir_all(&d).unwrap();
    }
    /// A temp dir with an empty `gateway.log`, removed on drop.
    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "pg-logs-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("gateway.log"), "").unwrap();
            Dir(d)
        }
        fn log(&self) -> std::path::PathBuf {
            self.0.join("gateway.log")
        }
        fn append(&self, text: &str) {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(self.log())
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }
        /// The rotation of `logging.rs`: .1 -> .2, current -> .1, a new empty current.
        fn rotate(&self) {
            let p = self.log();
            for n in (1..KEEP_FILES).rev() {
                let from = if n == 1 {
                    p.clone()
                } else {
                    rotated_path(&p, n - 1)
                };
                let _ = std::fs::rename(&from, rotated_path(&p, n));
            }
            std::fs::write(&p, "").unwrap();
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// One poll as `follow` does it (look at the path, then read): what is printed on stdout
    /// and stderr.
    fn poll(d: &Dir, f: &mut File, lines: &mut Lines) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        match check(&d.log(), f, lines, &mut out, &mut err) {
            Step::Same => {}
            Step::Switched(n) => *f = n,
            Step::Stop => panic!("stdout is a Vec"),
        }
        assert!(pump(f, lines, &mut out));
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn follow_catches_up_across_any_number_of_rotations() {
        for rotations in 0..=5 {
            let d = Dir::new(&format!("rot{rotations}"));
            d.append("before\n");
            let mut f = File::open(d.log()).unwrap();
            let mut lines = Lines::default();
            let (o, _) = poll(&d, &mut f, &mut lines);
            assert_eq!(o, "before\n");
            // Between two polls: lines in each file, `rotations` rotations, the last one
            // ending in a half-written line.
            let mut expect = String::new();
            for r in 0..=rotations {
                if r > 0 {
                    d.rotate();
                }
                let text = format!("file{r} a\nfile{r} b\n");
                d.append(&text);
                expect.push_str(&text);
            }
            d.append("half");
            let (o, e) = poll(&d, &mut f, &mut lines);
            if rotations <= KEEP_FILES {
                // The open file plus the 2 kept: nothing lost, in order, once.
                assert_eq!(o, expect, "{rotations} rotations");
            } else {
                // The open file, then a gap, then the 2 rotated files and the current one.
                let kept = (rotations + 1 - KEEP_FILES..=rotations)
                    .map(|r| format!("file{r} a\nfile{r} b\n"))
                    .collect::<String>();
                assert_eq!(o, format!("file0 a\nfile0 b\n{kept}"), "{rotations}");
            }
            if rotations >= KEEP_FILES {
                assert_eq!(e.lines().count(), 1, "{e}");
                assert!(e.contains("rotated away"), "{e}");
            } else {
                assert_eq!(e, "", "{rotations} rotations");
            }
            // The half line is completed by the next write and printed once, whole.
            d.append(" done\n");
            let (o, e) = poll(&d, &mut f, &mut lines);
            assert_eq!((o.as_str(), e.as_str()), ("half done\n", ""));
        }
    }

    #[test]
    fn follow_finishes_a_half_line_left_in_a_rotated_file() {
        let d = Dir::new("half");
        let mut f = File::open(d.log()).unwrap();
        let mut lines = Lines::default();
        d.append("one\ntw");
        assert_eq!(poll(&d, &mut f, &mut lines).0, "one\n");
        d.append("o\nunfinished");
        d.rotate();
        d.append("next\n");
        assert_eq!(poll(&d, &mut f, &mut lines).0, "two\nunfinished\nnext\n");
    }

    #[test]
    fn follow_external_rotation_and_truncation() {
        let d = Dir::new("ext");
        // old rotated files from earlier, not newer than the followed file
        std::fs::write(rotated_path(&d.log(), 1), "old1\n").unwrap();
        std::fs::write(rotated_path(&d.log(), 2), "old2\n").unwrap();
        d.append("a\n");
        let mut f = File::open(d.log()).unwrap();
        let mut lines = Lines::default();
        assert_eq!(poll(&d, &mut f, &mut lines).0, "a\n");
        // logrotate with its own name: the moved file is not shown again, nor are .1/.2
        d.append("b\n");
        std::fs::rename(d.log(), d.0.join("gateway.log-20261125")).unwrap();
        std::fs::write(d.log(), "c\n").unwrap();
        assert_eq!(poll(&d, &mut f, &mut lines), ("b\nc\n".into(), "".into()));
        // deleted by hand, then a new file: .1/.2 are older and not shown again
        let t = std::time::SystemTime::now() - Duration::from_secs(60);
        for n in 1..KEEP_FILES {
            File::options()
                .write(true)
                .open(rotated_path(&d.log(), n))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        d.append("d\n");
        std::fs::remove_file(d.log()).unwrap();
        std::fs::write(d.log(), "e\n").unwrap();
        assert_eq!(poll(&d, &mut f, &mut lines), ("d\ne\n".into(), "".into()));
        // truncated in place (copytruncate): read again from the top
        d.append("f\n");
        assert_eq!(poll(&d, &mut f, &mut lines).0, "f\n");
        std::fs::write(d.log(), "g\n").unwrap();
        assert_eq!(poll(&d, &mut f, &mut lines).0, "g\n");
    }
}
