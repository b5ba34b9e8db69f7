//! Logging to the log file: one line per event, `2026-11-24T20:41:00.123Z INFO  [component]
//! message key=value` (or, with `--log-format json`, one JSON object per line), tokens
//! redacted, size-based rotation. Owner: Foundation (issue 2).
//! Everyone logs with `log::info!(target: "component", "message key=value")`.
//!
//! This is a small `log::Log` implementation rather than simplelog's `WriteLogger`: simplelog
//! 0.12 always writes `[LEVEL] target: message` (bracketed level, target with a colon), not the
//! `LEVEL  [component] message` lines of the log contract that `logs` filters on, so the
//! dependency was dropped (docs/DESIGN.md, "Logging").
//!
//! Rotation: when a write would grow the file past the limit (10 MiB, or
//! `PANORAMA_GATEWAY_LOG_MAX_BYTES`), `gateway.log.1` becomes `gateway.log.2`, the current file
//! becomes `gateway.log.1` and a new `gateway.log` (0600) is started: 3 files at most. When the
//! daemon's stdout/stderr point at the log (detached), they are moved to the new file too, so a
//! panic message lands in the current log.
//!
//! Rotated files must be ours (issue 8): in a shared sticky directory another user may
//! pre-create `gateway.log.1`/`.2` (or symlinks), and renaming over them fails. Such a file is
//! never written, renamed or followed; rotation is refused loudly (a WARN line at the top of
//! the log and on stderr, naming the file, its owner and the fix), and the current log is
//! truncated instead, so it never grows past its limit.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::secure;
use crate::redact::redact;

/// Default rotation size.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept: the current one plus `.1` and `.2`.
pub const KEEP_FILES: usize = 3;

struct Sink {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    /// stdout/stderr are the log file (detached daemon): follow rotations with dup2.
    stdio_is_log: bool,
}

/// How each line is written: `text` (the default) or `json` (one object per line, for log
/// shippers): `{"ts","level","component","msg"}`, redacted the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl Format {
    /// `text` or `json` (`--log-format`, `PANORAMA_GATEWAY_LOG_FORMAT`).
    pub fn parse(v: &str) -> Result<Format, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown log format {other:?}: use text or json (--log-format, PANORAMA_GATEWAY_LOG_FORMAT)"
            )),
        }
    }
}

struct Logger {
    level: LevelFilter,
    format: Format,
    also_stderr: bool,
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn max_bytes_from_env() -> u64 {
    std::env::var("PANORAMA_GATEWAY_LOG_MAX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n >= 1024)
        .unwrap_or(DEFAULT_MAX_BYTES)
}

/// Path of rotated file number `n` (`gateway.log.1`).
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Sink {
    fn open(&mut self) -> Result<(), String> {
        let f = secure::open_append_secure(&self.path).map_err(|e| e.to_string())?;
        self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if self.stdio_is_log {
            // SAFETY: dup2 on valid descriptors; fds 1 and 2 are ours.
            unsafe {
                libc::dup2(f.as_raw_fd(), 1);
                libc::dup2(f.as_raw_fd(), 2);
            }
        }
        self.file = Some(f);
        Ok(())
    }

    fn rotate(&mut self) {
        let refused = (1..KEEP_FILES)
            .map(|n| rotated_path(&self.path, n))
            .find_map(|p| foreign(&p).map(|why| (p, why)));
        let refused = match refused {
            Some((p, why)) => Some(format!("{} {why}", p.display())),
            None => {
                self.file = None;
                let mut err = None;
                for n in (1..KEEP_FILES).rev() {
                    let from = if n == 1 {
                        self.path.clone()
                    } else {
                        rotated_path(&self.path, n - 1)
                    };
                    let to = rotated_path(&self.path, n);
                    match std::fs::rename(&from, &to) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            err = Some(format!(
                                "{} could not be renamed to {}: {e}",
                                from.display(),
                                to.display()
                            ));
                        }
                        _ => {}
                    }
                }
                if let Err(e) = self.open() {
                    eprintln!("panorama-gateway: cannot reopen log after rotation: {e}");
                }
                err
            }
        };
        if self.size == 0 {
            return;
        }
        // The current file could not move away: start it over rather than grow past the limit.
        let why = refused.unwrap_or_else(|| "the log file could not be moved away".into());
        let dir = self
            .path
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string();
        let line = format_line(
            SystemTime::now(),
            Level::Warn,
            "logging",
            &format!(
                "log rotation refused: {why}. The log was truncated to stay under {} bytes; earlier lines are lost. Fix: remove that file if it is not yours to keep, or use a --log-path in a directory of your own (not the shared {dir})",
                self.max_bytes
            ),
        );
        eprint!("panorama-gateway: {line}");
        if self.file.is_none() && self.open().is_err() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            if f.set_len(0).is_ok() {
                self.size = 0;
                if f.write_all(line.as_bytes()).is_ok() {
                    self.size = line.len() as u64;
                }
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        if self.file.is_none() {
            // A previous reopen failed: try again now, the situation may have been fixed.
            if self.open().is_err() {
                return;
            }
        }
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(line.as_bytes()).is_ok() {
                self.size += len;
            }
        }
    }
}

/// Why a rotated log file may not be touched: it is a symlink, not a regular file, or not ours.
/// None when it is ours or does not exist.
fn foreign(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).ok()?;
    if md.file_type().is_symlink() {
        return Some("is a symbolic link".into());
    }
    if !md.is_file() {
        return Some("is not a regular file".into());
    }
    if md.uid() != secure::euid() {
        return Some(format!(
            "belongs to {}, not to you",
            secure::describe_uid(md.uid())
        ));
    }
    None
}

/// Component shown in brackets: the log target, without the crate prefix of module paths.
fn component(target: &str) -> &str {
    target
        .strip_prefix("panorama_gateway::")
        .or_else(|| target.strip_prefix("panorama_gateway"))
        .filter(|s| !s.is_empty())
        .unwrap_or(target)
}

/// Formats one log line (with the trailing newline), redacted.
pub fn format_line(t: SystemTime, level: Level, target: &str, msg: &str) -> String {
    let mut msg = redact(msg);
    // One event, one line: embedded newlines would break `logs` and line-based tools.
    if msg.contains('\n') || msg.contains('\r') {
        msg = msg.replace("\r\n", "\\n").replace(['\n', '\r'], "\\n");
    }
    format!(
        "{} {:<5} [{}] {}\n",
        crate::util::rfc3339_millis(t),
        level.as_str(),
        component(target),
        msg
    )
}

/// One JSON object per line (with the trailing newline), redacted like the text lines.
pub fn format_json_line(t: SystemTime, level: Level, target: &str, msg: &str) -> String {
    let v = serde_json::json!({
        "ts": crate::util::rfc3339_millis(t),
        "level": level.as_str(),
        "component": component(target),
        "msg": redact(msg),
    });
    format!("{v}\n")
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        let t = m.target();
        // Dependencies are noisy at info/debug and may print request details.
        let dep = t.starts_with("rustls")
            || t.starts_with("ureq")
            || t.starts_with("tungstenite")
            || t.starts_with("webpki");
        if dep {
            m.level() <= Level::Warn
        } else {
            m.level() <= self.level
        }
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let fmt = match self.format {
            Format::Text => format_line,
            Format::Json => format_json_line,
        };
        let line = fmt(
            SystemTime::now(),
            r.level(),
            r.target(),
            &r.args().to_string(),
        );
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        sink.write_line(&line);
        if self.also_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = sink.file.as_mut() {
            let _ = f.flush();
        }
    }
}

/// Starts logging to `log_path` (created 0600; its directory must exist). `verbose` enables
/// debug lines; `also_stderr` copies every line to stderr (foreground runs); `stdio_is_log`
/// says stdout/stderr are the log file (detached daemon) and must follow it across rotation
/// and reopen. Call once.
pub fn init_with(
    log_path: &Path,
    format: Format,
    verbose: bool,
    also_stderr: bool,
    stdio_is_log: bool,
) -> Result<(), String> {
    let mut sink = Sink {
        path: log_path.to_path_buf(),
        file: None,
        size: 0,
        max_bytes: max_bytes_from_env(),
        stdio_is_log,
    };
    sink.open()?;
    let level = if verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let logger = Logger {
        level,
        format,
        also_stderr,
        sink: Mutex::new(sink),
    };
    if LOGGER.set(logger).is_err() {
        return Err("logging was already initialised".into());
    }
    let l: &'static Logger = LOGGER.get().ok_or("logger missing after init")?;
    log::set_logger(l).map_err(|e| format!("cannot install logger: {e}"))?;
    log::set_max_level(level);
    Ok(())
}

/// Reopens the log file (SIGHUP, after an external logrotate moved it away).
pub fn reopen() {
    if let Some(l) = LOGGER.get() {
        let mut sink = l.sink.lock().unwrap_or_else(|e| e.into_inner());
        sink.file = None;
        if let Err(e) = sink.open() {
            eprintln!("panorama-gateway: cannot reopen log file: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn sink(path: &Path, max: u64) -> Sink {
        let mut s = Sink {
            path: path.to_path_buf(),
            file: None,
            size: 0,
            max_bytes: max,
            stdio_is_log: false,
        };
        s.open().unwrap();
        s
    }

    fn size(p: &Path) -> u64 {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn rotation_keeps_three_files_under_the_limit() {
        let dir = std::env::temp_dir().join(format!("pgw-logrot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("gateway.log");
        let mut s = sink(&log, 1024);
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..100 {
            s.write_line(&line);
            assert!(size(&log) <= 1024);
        }
        assert!(size(&rotated_path(&log, 1)) > 0);
        assert!(size(&rotated_path(&log, 2)) > 0);
        assert!(!rotated_path(&log, 3).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 8: another user's (or a symlinked) `.1`/`.2` in a shared directory.
    #[test]
    fn rotated_files_that_are_not_ours_are_refused_loudly_and_the_log_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("pgw-logforeign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("gateway.log");
        let victim = dir.join("victim");
        std::fs::write(&victim, "not yours\n").unwrap();
        let one = rotated_path(&log, 1);
        let two = rotated_path(&log, 2);
        // A symlink as `.1`; as root (CI), also another user's regular file as `.2`.
        std::os::unix::fs::symlink(&victim, &one).unwrap();
        let root = secure::euid() == 0;
        if root {
            std::fs::write(&two, "planted\n").unwrap();
            std::os::unix::fs::chown(&two, Some(65534), Some(65534)).unwrap();
        }
        let mut s = sink(&log, 1024);
        let line = format!("{}\n", "y".repeat(99));
        for _ in 0..100 {
            s.write_line(&line);
            assert!(size(&log) <= 1024, "the log grew past its limit");
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("WARN  [logging] log rotation refused: ")
                && text.contains("is a symbolic link")
                && text.contains("--log-path"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "not yours\n");
        assert!(std::fs::symlink_metadata(&one)
            .unwrap()
            .file_type()
            .is_symlink());
        if root {
            assert_eq!(std::fs::read_to_string(&two).unwrap(), "planted\n");
            // With only the other user's `.2` left, the refusal names its owner.
            std::fs::remove_file(&one).unwrap();
            for _ in 0..20 {
                s.write_line(&line);
            }
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(text.contains("belongs to uid 65534"), "{text}");
            assert!(size(&log) <= 1024);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn json_lines_are_one_redacted_object_each() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_984_860_123);
        let l = format_json_line(
            t,
            Level::Warn,
            "session",
            "refresh failed token=abc\nnext \"q\"",
        );
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ts"], "2026-11-29T20:41:00.123Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["component"], "session");
        assert_eq!(v["msg"], "refresh failed token=[REDACTED]\nnext \"q\"");
        assert_eq!(Format::parse("JSON").unwrap(), Format::Json);
        assert!(Format::parse("xml").unwrap_err().contains("text or json"));
    }

    #[test]
    fn line_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_984_860_123);
        let l = format_line(t, Level::Info, "panorama_gateway::daemon", "started pid=5");
        assert_eq!(l, "2026-11-29T20:41:00.123Z INFO  [daemon] started pid=5\n");
        let l = format_line(t, Level::Warn, "session", "refresh failed token=abc\nnext");
        assert_eq!(
            l,
            "2026-11-29T20:41:00.123Z WARN  [session] refresh failed token=[REDACTED]\\nnext\n"
        );
    }
}
