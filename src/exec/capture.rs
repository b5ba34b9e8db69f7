//! Bounded capture of one output stream. The first `limit` bytes are kept, the rest is read,
//! counted and dropped. With a [`Spill`], only the first `after` bytes stay on the heap and the
//! rest of the kept bytes goes to an owner-only file that is unlinked as soon as it is created
//! (only our descriptor reaches it): ten runs flooding 5 MB each cost page cache, not 50 MB of
//! daemon memory, and the memory is back the moment the run's output is dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where stdout goes past `after` bytes: an unlinked owner-only file created in `dir` (a
/// private directory of ours, not one the child writes in).
#[derive(Debug, Clone)]
pub struct Spill {
    pub after: usize,
    pub dir: PathBuf,
}

/// The kept bytes past the in-memory head.
#[derive(Debug)]
pub struct SpillFile {
    file: File,
    len: usize,
}

impl SpillFile {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Reads the spilled bytes in chunks of at most `chunk` bytes.
    fn for_each_chunk(&self, chunk: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; chunk.min(self.len).max(1)];
        let mut off = 0usize;
        while off < self.len {
            let n = buf.len().min(self.len - off);
            self.file.read_exact_at(&mut buf[..n], off as u64)?;
            f(&buf[..n]);
            off += n;
        }
        Ok(())
    }

    fn read_all(&self, into: &mut Vec<u8>) -> io::Result<()> {
        into.reserve_exact(self.len);
        self.for_each_chunk(1 << 20, &mut |b| into.extend_from_slice(b))
    }
}

/// Creates an owner-only file in `dir` that nobody else can open: O_EXCL under a fresh name,
/// never through a symlink, unlinked at once.
fn unlinked_file(dir: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(super::tmp::unique_name(".pgw-spill-"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// One output stream being captured.
pub(super) struct Capture<R> {
    pub pipe: Option<R>,
    /// The kept bytes (all of them without a spill; the head with one).
    pub kept: Vec<u8>,
    limit: usize,
    pub total: u64,
    pub truncated: bool,
    spill: Option<Spill>,
    pub spilled: Option<SpillFile>,
}

impl<R: Read + AsRawFd> Capture<R> {
    pub fn new(pipe: Option<R>, limit: usize, spill: Option<Spill>) -> Self {
        if let Some(p) = &pipe {
            super::set_nonblocking(p.as_raw_fd());
        }
        Capture {
            pipe,
            kept: Vec::new(),
            limit,
            total: 0,
            truncated: false,
            spill,
            spilled: None,
        }
    }

    fn kept_len(&self) -> usize {
        self.kept.len() + self.spilled.as_ref().map_or(0, |s| s.len)
    }

    /// Keeps `data` (already cut to the limit): on the heap up to the spill threshold, then in
    /// the spill file. A spill file that cannot be created or written is given up: what it
    /// holds comes back to the heap and capture goes on there (logged once).
    fn keep(&mut self, mut data: &[u8]) {
        if self.spilled.is_none() {
            let head_room = match &self.spill {
                Some(s) => s.after.saturating_sub(self.kept.len()),
                None => usize::MAX,
            };
            let n = data.len().min(head_room);
            self.kept.extend_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                return;
            }
            let Some(spill) = self.spill.clone() else {
                return;
            };
            match unlinked_file(&spill.dir) {
                Ok(file) => self.spilled = Some(SpillFile { file, len: 0 }),
                Err(e) => {
                    log::warn!(target: "exec", "cannot create a spill file in {} ({e}); keeping the output in memory", spill.dir.display());
                    self.spill = None;
                    self.kept.extend_from_slice(data);
                    return;
                }
            }
        }
        let Some(s) = self.spilled.as_mut() else {
            self.kept.extend_from_slice(data);
            return;
        };
        if let Err(e) = s.file.write_all(data) {
            log::warn!(target: "exec", "writing the spill file failed ({e}); keeping the output in memory");
            let s = self.spilled.take().expect("checked above");
            self.spill = None;
            // Whatever write_all wrote before failing is not counted in len: read back the
            // counted part, then the new data.
            if let Err(e) = s.read_all(&mut self.kept) {
                log::warn!(target: "exec", "reading the spill file back failed ({e}); {} captured bytes are lost", s.len);
            }
            self.kept.extend_from_slice(data);
            return;
        }
        s.len += data.len();
    }

    /// Reads what is available. Returns the number of bytes read (0: nothing yet), or None at
    /// EOF/error.
    pub fn read_some(&mut self, buf: &mut [u8]) -> Option<usize> {
        let pipe = self.pipe.as_mut()?;
        loop {
            match pipe.read(buf) {
                Ok(0) => {
                    self.pipe = None;
                    return None;
                }
                Ok(n) => {
                    self.total += n as u64;
                    let room = self.limit.saturating_sub(self.kept_len());
                    if n > room {
                        self.truncated = true;
                    }
                    self.keep(&buf[..n.min(room)]);
                    return Some(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(0),
                Err(_) => {
                    self.pipe = None;
                    return None;
                }
            }
        }
    }
}

/// Captured bytes: the head on the heap and, for a spilled capture, the rest in a file.
pub(super) fn all_bytes<'a>(
    head: &'a [u8],
    spill: Option<&Arc<SpillFile>>,
) -> io::Result<std::borrow::Cow<'a, [u8]>> {
    match spill {
        None => Ok(std::borrow::Cow::Borrowed(head)),
        Some(s) => {
            let mut v = Vec::with_capacity(head.len() + s.len);
            v.extend_from_slice(head);
            s.read_all(&mut v)?;
            Ok(std::borrow::Cow::Owned(v))
        }
    }
}

/// How many characters `String::from_utf8_lossy` of head + spill has, without building it.
pub(super) fn lossy_chars(head: &[u8], spill: Option<&Arc<SpillFile>>) -> io::Result<usize> {
    let mut counter = LossyChars::default();
    counter.feed(head);
    if let Some(s) = spill {
        s.for_each_chunk(256 * 1024, &mut |b| counter.feed(b))?;
    }
    Ok(counter.finish())
}

/// Counts the characters of a lossy UTF-8 decoding fed in pieces (a sequence split across
/// pieces counts once; each invalid sequence counts as one U+FFFD, as from_utf8_lossy does).
#[derive(Default)]
struct LossyChars {
    carry: Vec<u8>,
    count: usize,
}

impl LossyChars {
    fn feed(&mut self, piece: &[u8]) {
        if self.carry.is_empty() {
            self.scan(piece);
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(piece);
            self.scan(&joined);
        }
    }

    fn scan(&mut self, mut data: &[u8]) {
        loop {
            match std::str::from_utf8(data) {
                Ok(s) => {
                    self.count += s.chars().count();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 (from_utf8 said so).
                    self.count += std::str::from_utf8(&data[..valid])
                        .map(|s| s.chars().count())
                        .unwrap_or(valid);
                    match e.error_len() {
                        Some(l) => {
                            self.count += 1;
                            data = &data[valid + l..];
                        }
                        None => {
                            // An incomplete sequence at the end: wait for the next piece.
                            self.carry = data[valid..].to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    fn finish(self) -> usize {
        self.count + usize::from(!self.carry.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_char_count_matches_from_utf8_lossy_across_any_split() {
        let samples: Vec<Vec<u8>> = vec![
            "héllo wörld €𝄞".as_bytes().to_vec(),
            vec![b'a', 0xff, b'b', 0xe2, 0x82, b'c', 0xf0, 0x9d, 0x84],
            vec![0xe2, 0x82, 0xac, 0xe2],
            Vec::new(),
        ];
        for s in samples {
            let want = String::from_utf8_lossy(&s).chars().count();
            for cut in 0..=s.len() {
                for cut2 in cut..=s.len() {
                    let mut c = LossyChars::default();
                    c.feed(&s[..cut]);
                    c.feed(&s[cut..cut2]);
                    c.feed(&s[cut2..]);
                    assert_eq!(c.finish(), want, "{s:?} split at {cut}/{cut2}");
                }
            }
        }
    }
}
