//! The bounded output buffer of a terminal session: the newest `cap` bytes with absolute byte
//! offsets, so a reader that keeps its cursor never loses or repeats a byte, and a reader that
//! fell behind learns how much was dropped.

use std::collections::VecDeque;

/// One read from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub data: Vec<u8>,
    /// Absolute offset of `data[0]` (the asked cursor, or the buffer start when the cursor was
    /// older than the buffer).
    pub from: u64,
    /// Absolute offset just past `data`: the cursor of the next read.
    pub to: u64,
    /// Bytes between the asked cursor and `from` that were dropped before anyone read them.
    pub dropped: u64,
}

#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    /// Absolute offset of `buf[0]`.
    start: u64,
    cap: usize,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: VecDeque::new(),
            start: 0,
            cap: cap.max(1),
        }
    }

    /// Offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Offset just past the newest byte (total bytes ever pushed).
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Appends `data`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            // Only the tail can survive; count the rest as pushed and dropped.
            let skip = data.len() - self.cap;
            self.start += (self.buf.len() + skip) as u64;
            self.buf.clear();
            &data[skip..]
        } else {
            data
        };
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
        self.buf.extend(data);
    }

    /// Up to `max` bytes from `cursor` (clamped into the buffer: a cursor past the end reads
    /// from the end, one before the start reads from the start and reports the gap). Unless
    /// `whole_tail` is set, a trailing incomplete UTF-8 character is left for the next read
    /// (its rest may still be on the way), except when nothing else would be returned.
    pub fn read(&self, cursor: u64, max: usize, whole_tail: bool) -> Chunk {
        let end = self.end();
        let from = cursor.clamp(self.start, end);
        let dropped = self.start.saturating_sub(cursor);
        let to = from.saturating_add(max as u64).min(end);
        let (a, b) = self.buf.as_slices();
        let (lo, hi) = ((from - self.start) as usize, (to - self.start) as usize);
        let mut data = Vec::with_capacity(hi - lo);
        if lo < a.len() {
            data.extend_from_slice(&a[lo..hi.min(a.len())]);
        }
        if hi > a.len() {
            data.extend_from_slice(&b[lo.saturating_sub(a.len())..hi - a.len()]);
        }
        if !(whole_tail && to == end) {
            let keep = utf8_complete_prefix(&data);
            if keep > 0 {
                data.truncate(keep);
            }
        }
        let to = from + data.len() as u64;
        Chunk {
            data,
            from,
            to,
            dropped,
        }
    }
}

/// The length of `b` without a trailing, incomplete UTF-8 sequence (at most 3 bytes dropped;
/// bytes that can never be UTF-8 are kept).
pub fn utf8_complete_prefix(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=3.min(n) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return n,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_with_absolute_offsets() {
        let mut r = Ring::new(10);
        r.push(b"0123456789");
        r.push(b"abc");
        assert_eq!((r.start(), r.end()), (3, 13));
        let c = r.read(0, 100, true);
        assert_eq!(c.data, b"3456789abc");
        assert_eq!((c.from, c.to, c.dropped), (3, 13, 3));
        // A push larger than the whole ring keeps its tail.
        r.push(b"ABCDEFGHIJKLMNOP");
        assert_eq!((r.start(), r.end()), (19, 29));
        assert_eq!(r.read(19, 100, true).data, b"GHIJKLMNOP");
    }

    #[test]
    fn reads_in_pieces_lose_and_repeat_nothing_across_the_wrap() {
        let mut r = Ring::new(7);
        let mut got = Vec::new();
        let mut cursor = 0;
        for i in 0..50u8 {
            r.push(&[b'a' + i % 26, b'0' + i % 10]);
            let c = r.read(cursor, 3, true);
            assert_eq!(c.dropped, 0);
            got.extend_from_slice(&c.data);
            cursor = c.to;
            let c = r.read(cursor, 3, true);
            got.extend_from_slice(&c.data);
            cursor = c.to;
        }
        let want: Vec<u8> = (0..50u8)
            .flat_map(|i| [b'a' + i % 26, b'0' + i % 10])
            .collect();
        assert_eq!(got, want);
        // A cursor past the end reads nothing from the end.
        let c = r.read(10_000, 5, true);
        assert_eq!((c.from, c.to, c.data.len()), (100, 100, 0));
    }

    #[test]
    fn reads_end_on_a_character_boundary() {
        let e = "é".as_bytes(); // C3 A9
        let euro = "€".as_bytes(); // E2 82 AC
        assert_eq!(utf8_complete_prefix(b"abc"), 3);
        assert_eq!(utf8_complete_prefix(&[b'a', e[0]]), 1);
        assert_eq!(utf8_complete_prefix(&[b'a', e[0], e[1]]), 3);
        assert_eq!(utf8_complete_prefix(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(utf8_complete_prefix(euro), 3);
        assert_eq!(utf8_complete_prefix(&[0xff]), 1);
        assert_eq!(utf8_complete_prefix(&[]), 0);
        let mut r = Ring::new(100);
        r.push(&[b'x', euro[0], euro[1]]);
        let c = r.read(0, 100, false);
        assert_eq!((c.data.as_slice(), c.to), (&b"x"[..], 1));
        // The rest arrives: the character comes whole in the next read.
        r.push(&euro[2..]);
        assert_eq!(r.read(c.to, 100, false).data, euro);
        // The end of a finished stream is handed out as it is.
        let mut r = Ring::new(100);
        r.push(&[b'x', euro[0]]);
        assert_eq!(r.read(0, 100, true).data.len(), 2);
    }
}
