//! `logs [--lines N] [--no-follow]`: the last N lines (read from the end, reaching into the
//! rotated file when the current one is short), then follow like `tail -F`: across rotation
//! (the path gets a new file) and truncation, until Ctrl-C.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::config::Settings;
use crate::logging::rotated_path;

const POLL: Duration = Duration::from_millis(200);

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

/// Copies everything from `f` (at its position) to `out`. False when stdout is gone.
fn pump(f: &mut File, out: &mut impl Write) -> bool {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if !write_out(out, &buf[..n]) {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

fn follow(path: &Path, mut current: Option<File>, out: &mut impl Write) -> i32 {
    let mut waited_note = false;
    loop {
        if current.is_none() {
            match File::open(path) {
                Ok(f) => current = Some(f),
                Err(_) => {
                    if !waited_note {
                        eprintln!("Waiting for {} to appear...", path.display());
                        waited_note = true;
                    }
                    std::thread::sleep(POLL);
                    continue;
                }
            }
        }
        let Some(f) = current.as_mut() else { continue };
        if !pump(f, out) {
            return 0;
        }
        std::thread::sleep(POLL);
        let (Ok(cur), disk) = (f.metadata(), std::fs::metadata(path)) else {
            continue;
        };
        match disk {
            Ok(d) if d.ino() != cur.ino() || d.dev() != cur.dev() => {
                // Rotated: finish the old file, then continue with the new one from its start.
                if !pump(f, out) {
                    return 0;
                }
                current = File::open(path).ok();
            }
            Ok(d) => {
                let pos = f.stream_position().unwrap_or(0);
                if d.len() < pos {
                    // Truncated in place.
                    let _ = f.seek(SeekFrom::Start(0));
                }
            }
            Err(_) => {} // between rename and re-create: keep the old file for now
        }
    }
}

/// Runs `logs`; returns the exit code.
pub fn run(settings: &Settings, lines: usize, follow_on: bool) -> i32 {
    let path = &settings.paths.log_path;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if settings.verbose {
        eprintln!("Log file: {}", path.display());
    }
    // Open once: the tail and the follow start at the same length, nothing is missed.
    let mut current = File::open(path).ok();
    let len = current
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map(|m| m.len())
        .unwrap_or(0);
    let tail = match current.as_mut() {
        Some(f) => tail_file(f, len, lines),
        None => Err(io::Error::from(io::ErrorKind::NotFound)),
    };
    let (mut data, count) = match tail {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !follow_on {
                eprintln!(
                    "ERROR no log file at {} yet: the gateway has not run with this configuration (start it with panorama-gateway start)",
                    path.display()
                );
                return 1;
            }
            (Vec::new(), 0)
        }
        Err(e) => {
            eprintln!("ERROR cannot read the log file {}: {e}", path.display());
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
    if !write_out(&mut out, &data) {
        return 0;
    }
    if !follow_on {
        return 0;
    }
    if let Some(f) = current.as_mut() {
        // What was printed came from before `len`; continue from there.
        let _ = f.seek(SeekFrom::Start(len));
    }
    follow(path, current, &mut out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
