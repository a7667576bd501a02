//! Converting the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.

use chrono::{DateTime, Local, Utc};

/// CLOCK_MONOTONIC now, in nanoseconds: what `bpf_ktime_get_ns()` reads in the kernel.
pub fn monotonic_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; clock ids are constants.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// A time's text up to its second, then its fraction.
type Second = super::digits::Ascii<32>;

/// Maps monotonic nanoseconds to UTC, using the offset measured once at start-up.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn measure() -> Self {
        Self {
            offset_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// A fixed offset (tests, and the user-space cost's synthetic times).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Wall-clock minus monotonic time, in nanoseconds.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// For times that already are wall-clock nanoseconds (a recording's).
    pub fn wall() -> Self {
        Self { offset_ns: 0 }
    }

    pub fn utc(&self, mono_ns: u64) -> DateTime<Utc> {
        let (secs, sub) = self.split(mono_ns);
        DateTime::from_timestamp(secs, sub).unwrap_or_default()
    }

    /// The wall-clock second `mono_ns` falls in, and its nanoseconds within it. Every time
    /// after 1970 fits a u64, whose division is a few instructions; the i128 one is a call
    /// of a hundred, twice for each shown packet (callgrind, bench-user).
    fn split(&self, mono_ns: u64) -> (i64, u32) {
        const NS: u64 = 1_000_000_000;
        let ns = i128::from(mono_ns) + self.offset_ns;
        match u64::try_from(ns) {
            Ok(ns) => ((ns / NS) as i64, (ns % NS) as u32),
            Err(_) => (
                ns.div_euclid(i128::from(NS)) as i64,
                ns.rem_euclid(i128::from(NS)) as u32,
            ),
        }
    }

    /// `2026-11-24T15:07:34.120511Z`
    /// Written field by field: chrono's `format` parses its pattern on every call, and every
    /// shown packet has a time. The date and time of day are worked out once a second (the
    /// packets of one second, thousands under load, only write their fraction).
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        thread_local! {
            /// The last second written (`2026-11-24T15:07:34`), by its wall-clock second.
            static LAST: std::cell::Cell<(i64, Second)> = const {
                std::cell::Cell::new((i64::MIN, Second::EMPTY))
            };
        }
        let (secs, sub) = self.split(mono_ns);
        let mut s = LAST.with(|last| match last.get() {
            (at, second) if at == secs => second,
            _ => {
                let second = self.second(mono_ns);
                last.set((secs, second));
                second
            }
        });
        s.byte(b'.');
        // from_timestamp gives no leap second: the fraction is the nanoseconds' own.
        s.number(sub / 1000, 6);
        s.byte(b'Z');
        s.as_str().to_owned()
    }

    /// `2026-11-24T15:07:34`: the date and time of day of the second `mono_ns` falls in.
    fn second(&self, mono_ns: u64) -> Second {
        use chrono::{Datelike, Timelike};
        let t = self.utc(mono_ns);
        let mut s = Second::EMPTY;
        s.number(t.year().max(0) as u32, 4);
        for (sep, n) in [(b'-', t.month()), (b'-', t.day()), (b'T', t.hour())] {
            s.byte(sep);
            s.number(n, 2);
        }
        for n in [t.minute(), t.second()] {
            s.byte(b':');
            s.number(n, 2);
        }
        s
    }

    /// `15:07:34.120511`, local time, like tcpdump.
    pub fn short(&self, mono_ns: u64) -> String {
        self.utc(mono_ns)
            .with_timezone(&Local)
            .format("%H:%M:%S%.6f")
            .to_string()
    }
}

/// `2026-11-24T15:07:34.120511Z` → `15:07:34.120511` in local time (as `WallClock::short`).
/// The time's local second is worked out once a second: the packets of one second (thousands
/// under load) only append their fraction to it. Other forms go through chrono each time.
pub fn short_time(rfc3339: &str) -> String {
    thread_local! {
        /// The last UTC second seen (`2026-11-24T15:07:34`) and its local `HH:MM:SS`.
        static LAST: std::cell::RefCell<(String, String)> = const {
            std::cell::RefCell::new((String::new(), String::new()))
        };
    }
    let b = rfc3339.as_bytes();
    let ours =
        b.len() == 27 && b[19] == b'.' && b[26] == b'Z' && b[20..26].iter().all(u8::is_ascii_digit);
    if !ours {
        return short_time_slow(rfc3339);
    }
    let (second, frac) = (&rfc3339[..19], &rfc3339[19..26]);
    LAST.with_borrow_mut(|(utc, local)| {
        if utc != second {
            let Ok(t) = DateTime::parse_from_rfc3339(&[second, "Z"].concat()) else {
                return short_time_slow(rfc3339);
            };
            *local = t.with_timezone(&Local).format("%H:%M:%S").to_string();
            second.clone_into(utc);
        }
        [local.as_str(), frac].concat()
    })
}

fn short_time_slow(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.with_timezone(&Local).format("%H:%M:%S%.6f").to_string())
        .unwrap_or_else(|_| rfc3339.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_monotonic_time_to_utc() {
        // 2026-11-24T15:07:34Z = 1795532854 s.
        let clock = WallClock::with_offset(1_795_532_854_000_000_000 - 5_000_000_000);
        assert_eq!(clock.rfc3339(5_120_511_000), "2026-11-24T15:07:34.120511Z");
    }

    /// The packets of one second reuse its text; the next second, and an earlier one (another
    /// clock's, or a packet that arrives late), do not.
    #[test]
    fn rfc3339_within_and_across_seconds_is_chronos_format() {
        let clock = WallClock::with_offset(1_795_532_854_000_000_000);
        let other = WallClock::with_offset(-86_400_000_000_000);
        let base = 1_795_532_854_000_000_000u64;
        for mono in [
            0,
            1_000,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            5_000,
            86_400_000_000_000 + 7,
            3,
        ] {
            for (c, start) in [(clock, 0), (other, base), (clock, 0)] {
                let want = c
                    .utc(start + mono)
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                assert_eq!(c.rfc3339(start + mono), want);
            }
        }
    }

    #[test]
    fn rfc3339_is_chronos_format() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Any instant from 1970 to about 2262.
            let clock = WallClock::with_offset(i128::from(x >> 1));
            let want = clock.utc(0).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            assert_eq!(clock.rfc3339(0), want);
        }
    }

    /// The u64 division gives the i128 one's answer where it is used, and times it cannot
    /// hold (before 1970, past 2554) still take the i128 one.
    #[test]
    fn the_second_and_its_fraction_are_euclids() {
        const NS: i128 = 1_000_000_000;
        for offset in [
            -1,
            -NS,
            -NS - 1,
            0,
            NS - 1,
            1_795_532_854_000_000_000,
            i128::from(u64::MAX),
            i128::from(u64::MAX) + 1,
        ] {
            for mono in [0u64, 1, 999_999_999, 1_000_000_000, u64::MAX] {
                let ns = i128::from(mono) + offset;
                let want = (ns.div_euclid(NS) as i64, ns.rem_euclid(NS) as u32);
                assert_eq!(WallClock::with_offset(offset).split(mono), want, "{ns}");
            }
        }
    }

    #[test]
    fn short_time_agrees_with_the_clock() {
        let clock = WallClock::with_offset(1_795_532_854_000_000_000);
        assert_eq!(
            short_time(&clock.rfc3339(120_511_000)),
            clock.short(120_511_000)
        );
        assert_eq!(short_time("garbage"), "garbage");
    }

    /// The second kept from one call to the next gives chrono's answer, within a second and
    /// across seconds, for times written by the clock and for other forms.
    #[test]
    fn short_time_is_chronos_across_seconds() {
        let clock = WallClock::with_offset(1_795_532_854_000_000_000);
        let mut ns = 0u64;
        for k in 0..3000u64 {
            ns += k * 7_919_117 % 900_000_000;
            let t = clock.rfc3339(ns);
            assert_eq!(short_time(&t), short_time_slow(&t), "{t}");
        }
        for t in [
            "2026-11-24T15:07:34.120511+01:00",
            "2026-11-24T15:07:34Z",
            "2026-11-24T15:07:34.1205119Z",
            "2026-11-24T15:07:3x.120511Z",
        ] {
            assert_eq!(short_time(t), short_time_slow(t), "{t}");
        }
    }

    #[test]
    fn measured_clock_is_close_to_now() {
        let clock = WallClock::measure();
        let mono = now_ns(libc::CLOCK_MONOTONIC) as u64;
        let delta = (clock.utc(mono) - Utc::now()).num_milliseconds().abs();
        assert!(delta < 1000, "{delta} ms off");
    }
}
