//! Time as an input.
//!
//! Domain code takes a [`Timestamp`] argument and never asks the system for the time. The
//! server reads [`SystemClock`] at the edge of each request; tests drive a [`ManualClock`].
//! This module is the only one allowed to call `SystemTime::now` (see `clippy.toml`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// "00" to "99", for writing two digits at a time.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating at the end of time.
    pub fn plus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating at the start of time.
    pub fn minus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// How long from `earlier` to `self`; zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-21T10:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// The 24 bytes of [`Timestamp::to_rfc3339`], without an allocation (every validate
    /// answer formats four timestamps). Instants outside years 0-9999 read as the last
    /// millisecond of 9999.
    ///
    /// The date is Howard Hinnant's `civil_from_days`, in integer arithmetic the compiler
    /// turns into multiplications, and the digits are copied two at a time: through the
    /// `time` crate's calendar this was about 260 instructions a timestamp, a tenth of
    /// validate's own work (callgrind, twenty-ninth session). Checked against `time` over
    /// the whole range in the tests.
    pub fn rfc3339_bytes(self) -> [u8; 24] {
        const LAST: &[u8; 24] = b"9999-12-31T23:59:59.999Z";
        const FIRST_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
        const LAST_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        const MS_PER_DAY: i64 = 86_400_000;
        if !(FIRST_MS..=LAST_MS).contains(&self.0) {
            return *LAST;
        }
        // From here all is unsigned, whose divisions by constants are cheaper: milliseconds
        // since 0000-01-01, which is 60 days before the first era's March 1st.
        let since = (self.0 - FIRST_MS) as u64;
        let (days, ms) = (since / MS_PER_DAY as u64, since % MS_PER_DAY as u64);
        // Days since -0400-03-01: eras of 400 years, each starting on a March 1st.
        let z = days + 146_097 - 60;
        let (era, doe) = (z / 146_097, z % 146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2) - 400;

        let mut out = *b"0000-00-00T00:00:00.000Z";
        // In range, every field is 0-9999, so the casts below cannot wrap.
        let mut put2 = |at: usize, v: u64| {
            let i = 2 * v as usize;
            out[at..at + 2].copy_from_slice(&DIGIT_PAIRS[i..i + 2]);
        };
        put2(0, year / 100);
        put2(2, year % 100);
        put2(5, month);
        put2(8, day);
        let secs = ms / 1000;
        put2(11, secs / 3600);
        put2(14, secs / 60 % 60);
        put2(17, secs % 60);
        let millis = ms % 1000;
        put2(21, millis % 100);
        out[20] = b'0' + (millis / 100) as u8;
        out
    }

    /// Parses RFC 3339 (any offset) into a timestamp.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(ms).ok().map(Timestamp)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.rfc3339_bytes();
        // Only ASCII digits and separators are ever written.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    // Shared so a test can hold one handle and give another to the code under test.
    ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            ms: Arc::new(AtomicI64::new(start.0)),
        }
    }

    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, t: Timestamp) {
        self.ms.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.ms.load(Ordering::SeqCst))
    }
}

/// Parses a duration written like `"30m"`, `"12h"`, `"2s"` or `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}` is not a duration ({e})"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_millis() {
        let t = Timestamp(1_795_000_000_123);
        let s = t.to_rfc3339();
        assert_eq!(s, "2026-11-18T11:06:40.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_matches_the_time_crate_everywhere_in_range() {
        let reference = |ms: i64| {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .expect("in range");
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        };
        // Year 0 to 9999, leap days and the epoch's neighbours included.
        let (first, last) = (-62_167_219_200_000_i64, 253_402_300_799_999_i64);
        let mut ms = first;
        let step = (last - first) / 100_003;
        while ms <= last {
            assert_eq!(Timestamp(ms).to_rfc3339(), reference(ms), "at {ms}");
            ms += step;
        }
        // Every day of the centuries' and the eras' turns, where leap years are decided.
        let day = 86_400_000_i64;
        for start in [
            first,
            -2_208_988_800_000,
            946_684_800_000,
            4_102_444_800_000,
        ] {
            for d in -800..800 {
                let ms = start + d * day + 45_296_789;
                if (first..=last).contains(&ms) {
                    assert_eq!(Timestamp(ms).to_rfc3339(), reference(ms), "at {ms}");
                }
            }
        }
        for ms in [first, last, -1, 0, 1, 951_782_400_000, 1_709_164_800_999] {
            assert_eq!(Timestamp(ms).to_rfc3339(), reference(ms), "at {ms}");
        }
        assert_eq!(Timestamp(-1).to_rfc3339(), "1969-12-31T23:59:59.999Z");
        for out in [first - 1, last + 1, i64::MIN, i64::MAX] {
            assert_eq!(Timestamp(out).to_rfc3339(), "9999-12-31T23:59:59.999Z");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(1000));
        let other = c.clone();
        assert_eq!(c.now(), Timestamp(1000));
        other.advance(Duration::from_secs(2));
        assert_eq!(c.now(), Timestamp(3000));
    }

    #[test]
    fn durations_parse_like_the_contract_writes_them() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Timestamp(i64::MAX).plus(Duration::from_secs(1)),
            Timestamp(i64::MAX)
        );
        assert_eq!(Timestamp(5).since(Timestamp(10)), Duration::ZERO);
    }
}
