//! Small helpers shared by every module: wall-clock time as RFC 3339 UTC, UUIDs, a poison-proof
//! lock, the host name.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Locks `m`, taking the data over if a thread panicked while holding it (every guarded value
/// in this crate stays consistent between statements, so poisoning is no reason to stop).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `s` cut to at most `max` characters, `marker` appended when it was cut.
pub fn truncate_chars(s: &str, max: usize, marker: &str) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}{marker}", &s[..i]),
    }
}

/// The host name (device name default); "gateway" when the system has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "gateway".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if s.is_empty() {
        "gateway".into()
    } else {
        s
    }
}

/// The build's version stamp: one NUL-terminated string in the binary, so the version of an
/// installed file can be read (and, by the upgrade tests, changed) without running it.
static VERSION_STAMP: &str = concat!("panorama-gateway-version:", env!("CARGO_PKG_VERSION"), "\0");

/// This program's version, read from the stamp at run time (`panorama-gateway --version`,
/// the status file, the heartbeat's capabilities, the upgrade check).
pub fn version() -> &'static str {
    let s: &'static str = std::hint::black_box(VERSION_STAMP);
    s.strip_prefix("panorama-gateway-version:")
        .unwrap_or(s)
        .trim_end_matches('\0')
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats a time as `2026-11-24T20:41:00.123Z` (UTC, milliseconds), the form the backend and
/// the log use.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_millis(SystemTime::now())
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall-clock time of a monotonic instant in the past, as RFC 3339 UTC.
pub fn instant_to_rfc3339(t: Instant) -> String {
    rfc3339_millis(SystemTime::now() - t.elapsed())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let mut digits: String = frac.chars().take(3).collect();
        while digits.len() < 3 {
            digits.push('0');
        }
        ms = digits.parse().ok()?;
    }
    let offset_min: i64 = match &s[i..] {
        "Z" | "z" | "" => 0,
        rest => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let r = &rest[1..];
            let part = |a: usize, b: usize| r.get(a..b)?.parse::<i64>().ok();
            let (oh, om) = if r.len() == 5 && r.as_bytes()[2] == b':' {
                (part(0, 2)?, part(3, 5)?)
            } else if r.len() == 4 {
                (part(0, 2)?, part(2, 4)?)
            } else if r.len() == 2 {
                (r.parse::<i64>().ok()?, 0)
            } else {
                return None;
            };
            sign * (oh * 60 + om)
        }
    };
    // days from civil (Howard Hinnant)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// 8-4-4-4-12 hex digits, any version: the shape of a Postgres `uuid` value.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// An RFC 4122 UUID: the uuid shape with version 1-5 and the RFC variant (case-insensitive).
pub fn is_rfc4122_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    is_uuid(s)
        && (b'1'..=b'5').contains(&b[14])
        && matches!(b[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

/// A random version-4 UUID.
pub fn new_uuid_v4() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Fall back to time and pid; uniqueness within this process is all that matters.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b.copy_from_slice(&(t ^ ((std::process::id() as u128) << 64)).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_984_860_123);
        assert_eq!(rfc3339_millis(t), "2026-11-29T20:41:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_rfc3339_variants() {
        let z = parse_rfc3339_ms("2026-11-29T20:41:00.123Z").unwrap();
        assert_eq!(z, 1_795_984_860_123);
        assert_eq!(parse_rfc3339_ms("2026-11-29T22:41:00.123+02:00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-11-29 20:41:00.123456+00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:00Z"), Some(z - 123));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        // Odd bytes from the backend never panic.
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:00+1é1"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:00é"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-29T20:41:0é"), None);
        let now = now_rfc3339();
        let back = parse_rfc3339_ms(&now).unwrap();
        assert!(back.abs_diff(crate::util::unix_now() * 1000) < 5_000);
    }

    #[test]
    fn uuids() {
        assert!(is_rfc4122_uuid("8e9b1f22-6c1d-4f0e-8a7b-3e2c1d0f9a88"));
        assert!(!is_rfc4122_uuid("8e9b1f22-6c1d-0f0e-8a7b-3e2c1d0f9a88"));
        assert!(is_uuid("8e9b1f22-6c1d-0f0e-8a7b-3e2c1d0f9a88"));
        assert!(!is_uuid("8e9b1f22-6c1d-4f0e-8a7b-3e2c1d0f9a8"));
        let (a, b) = (new_uuid_v4(), new_uuid_v4());
        assert_ne!(a, b);
        assert!(is_rfc4122_uuid(&a));
        assert_eq!(&a[14..15], "4");
    }
}
