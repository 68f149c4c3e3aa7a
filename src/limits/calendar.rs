//! Calendar windows for `quota: {requests, reset, timeZone}`.
//!
//! A window is the calendar minute, hour, day, ISO week (Monday first) or
//! month containing an instant, in an IANA time zone, so "10,000 a day" and
//! "5 million a month" mean what the customer reads in the contract (a month
//! is the calendar month, not 30 days). Days, weeks and months start at the
//! first instant of their first day (`jiff`'s `start_of_day`, which handles
//! days that do not begin at midnight because of a DST gap); a DST day is
//! 23 or 25 hours long, exactly as on the customer's wall clock. Minutes and
//! hours are truncated in local time and last 60 s / 3600 s.
//!
//! The time zone database is bundled into the binary (`jiff`'s
//! `tzdb-bundle-always`), so windows do not depend on the container having
//! `/usr/share/zoneinfo`.

use std::sync::atomic::{AtomicU64, Ordering};

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::policy::types::QuotaWindow;

/// A compiled calendar quota.
#[derive(Clone, Debug)]
pub struct Calendar {
    pub requests: u64,
    pub window: QuotaWindow,
    /// The IANA name as written (`UTC` by default).
    pub zone: String,
    tz: TimeZone,
    /// The last day, week or month window computed, reused while `now`
    /// stays inside it.
    recent: RecentWindow,
}

/// One window packed into one atomic word (start in Unix seconds in the
/// high 36 bits, length in seconds in the low 28; 0 = none), so every
/// request thread reads and replaces it without a lock and never sees the
/// start of one window with the end of another.
///
/// Only day, week and month windows are kept: they tile the timeline (each
/// ends where the next begins), so a window containing `now` *is* the
/// window of `now`. Minute and hour windows are cut in local time and can
/// overlap across an offset change of 30 minutes (Lord Howe Island), and
/// cost little to compute anyway.
#[derive(Debug, Default)]
struct RecentWindow(AtomicU64);

impl Clone for RecentWindow {
    fn clone(&self) -> Self {
        Self(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

const LEN_BITS: u32 = 28;

impl RecentWindow {
    fn get(&self, now_us: u64) -> Option<Window> {
        let packed = self.0.load(Ordering::Relaxed);
        if packed == 0 {
            return None;
        }
        let start_us = (packed >> LEN_BITS) * 1_000_000;
        let end_us = start_us + (packed & ((1 << LEN_BITS) - 1)) * 1_000_000;
        (start_us <= now_us && now_us < end_us).then_some(Window { start_us, end_us })
    }

    /// Keeps `window` when it packs exactly (whole seconds, in range).
    fn set(&self, window: Window) {
        let whole =
            window.start_us.is_multiple_of(1_000_000) && window.end_us.is_multiple_of(1_000_000);
        let start = window.start_us / 1_000_000;
        let len = window.end_us.saturating_sub(window.start_us) / 1_000_000;
        if whole && len > 0 && len < (1 << LEN_BITS) && start < (1 << (64 - LEN_BITS)) {
            self.0.store(start << LEN_BITS | len, Ordering::Relaxed);
        }
    }
}

/// One window: `[start, end)` in µs since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_us: u64,
    pub end_us: u64,
}

impl Window {
    /// The window's length in whole seconds (`w` of `RateLimit-Policy`).
    pub fn len_secs(&self) -> u64 {
        (self.end_us - self.start_us) / 1_000_000
    }

    /// The start in whole seconds: the window's id inside store keys
    /// (unambiguous, unlike a local date-time during a DST fold).
    pub fn id(&self) -> u64 {
        self.start_us / 1_000_000
    }
}

impl Calendar {
    /// Compiles a quota; fails on an unknown time zone name.
    pub fn new(requests: u64, window: QuotaWindow, zone: &str) -> Result<Self, String> {
        let tz = TimeZone::get(zone).map_err(|e| format!("unknown time zone {zone:?}: {e}"))?;
        Ok(Self {
            requests,
            window,
            zone: zone.to_owned(),
            tz,
            recent: RecentWindow::default(),
        })
    }

    /// The window containing `now_us`.
    pub fn window_at(&self, now_us: u64) -> Result<Window, String> {
        let tiles = matches!(
            self.window,
            QuotaWindow::Day | QuotaWindow::Week | QuotaWindow::Month
        );
        if tiles && let Some(window) = self.recent.get(now_us) {
            return Ok(window);
        }
        let window = window_at(self.window, &self.tz, now_us).map_err(|e| e.to_string())?;
        if tiles {
            self.recent.set(window);
        }
        Ok(window)
    }
}

fn window_at(window: QuotaWindow, tz: &TimeZone, now_us: u64) -> Result<Window, jiff::Error> {
    let now_i = i64::try_from(now_us).unwrap_or(i64::MAX);
    let ts = Timestamp::from_microsecond(now_i)?;
    let zdt = ts.to_zoned_datetime(tz.clone());
    let subsec_us = i64::from(zdt.subsec_nanosecond() / 1000);
    let (start, end) = match window {
        QuotaWindow::Minute => {
            let start = now_i - i64::from(zdt.second()) * 1_000_000 - subsec_us;
            (start, start + 60_000_000)
        }
        QuotaWindow::Hour => {
            let into = (i64::from(zdt.minute()) * 60 + i64::from(zdt.second())) * 1_000_000;
            let start = now_i - into - subsec_us;
            (start, start + 3_600_000_000)
        }
        QuotaWindow::Day => {
            let date = zdt.date();
            (
                day_start(date, tz)?,
                day_start(date.checked_add(1.day())?, tz)?,
            )
        }
        QuotaWindow::Week => {
            let date = zdt.date();
            let back = jiff::civil::Weekday::Monday.until(date.weekday());
            let monday = date.checked_sub(i64::from(back).days())?;
            (
                day_start(monday, tz)?,
                day_start(monday.checked_add(7.days())?, tz)?,
            )
        }
        QuotaWindow::Month => {
            let first = zdt.date().first_of_month();
            (
                day_start(first, tz)?,
                day_start(first.checked_add(1.month())?, tz)?,
            )
        }
    };
    Ok(Window {
        start_us: u64::try_from(start).unwrap_or(0),
        end_us: u64::try_from(end).unwrap_or(0),
    })
}

/// The first instant of `date` in `tz`.
fn day_start(date: jiff::civil::Date, tz: &TimeZone) -> Result<i64, jiff::Error> {
    Ok(date
        .to_zoned_datetime(tz.clone())?
        .start_of_day()?
        .timestamp()
        .as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> u64 {
        u64::try_from(s.parse::<Timestamp>().unwrap().as_microsecond()).unwrap()
    }

    fn at(c: &Calendar, s: &str) -> (String, String) {
        let w = c.window_at(us(s)).unwrap();
        let f = |x: u64| {
            Timestamp::from_microsecond(i64::try_from(x).unwrap())
                .unwrap()
                .to_string()
        };
        (f(w.start_us), f(w.end_us))
    }

    #[test]
    fn month_is_the_calendar_month() {
        let c = Calendar::new(10, QuotaWindow::Month, "UTC").unwrap();
        assert_eq!(
            at(&c, "2024-02-29T23:59:59.999999Z"),
            ("2024-02-01T00:00:00Z".into(), "2024-03-01T00:00:00Z".into())
        );
        assert_eq!(
            at(&c, "2024-03-01T00:00:00Z"),
            ("2024-03-01T00:00:00Z".into(), "2024-04-01T00:00:00Z".into())
        );
    }

    #[test]
    fn day_in_a_dst_zone_is_23_or_25_hours() {
        let c = Calendar::new(10, QuotaWindow::Day, "Europe/Berlin").unwrap();
        // 2024-03-31: clocks go 02:00 → 03:00 CET→CEST.
        let w = c.window_at(us("2024-03-31T12:00:00Z")).unwrap();
        assert_eq!(w.len_secs(), 23 * 3600);
        assert_eq!(at(&c, "2024-03-31T12:00:00Z").0, "2024-03-30T23:00:00Z");
        // 2024-10-27: 03:00 → 02:00.
        let w = c.window_at(us("2024-10-27T12:00:00Z")).unwrap();
        assert_eq!(w.len_secs(), 25 * 3600);
    }

    #[test]
    fn week_starts_on_monday_and_hour_in_half_hour_zones() {
        let c = Calendar::new(10, QuotaWindow::Week, "UTC").unwrap();
        // 2024-03-07 is a Thursday.
        assert_eq!(
            at(&c, "2024-03-07T10:00:00Z"),
            ("2024-03-04T00:00:00Z".into(), "2024-03-11T00:00:00Z".into())
        );
        let c = Calendar::new(10, QuotaWindow::Hour, "Asia/Kolkata").unwrap();
        assert_eq!(
            at(&c, "2024-03-07T10:10:00Z"),
            ("2024-03-07T09:30:00Z".into(), "2024-03-07T10:30:00Z".into())
        );
    }

    #[test]
    fn remembered_windows_match_fresh_ones() {
        // Walk through a DST month, a month boundary and a leap day in
        // steps that cross every window edge, in order and back again:
        // the remembered window must always be the one computed afresh.
        for (window, zone) in [
            (QuotaWindow::Day, "America/New_York"),
            (QuotaWindow::Day, "Australia/Lord_Howe"),
            (QuotaWindow::Week, "Europe/Berlin"),
            (QuotaWindow::Month, "Asia/Kolkata"),
            (QuotaWindow::Hour, "Australia/Lord_Howe"),
            (QuotaWindow::Minute, "UTC"),
        ] {
            let c = Calendar::new(10, window, zone).unwrap();
            let start = us("2024-02-27T00:00:00Z");
            let steps: Vec<u64> = (0..2_000u64).map(|i| start + i * 1_789_000_000).collect();
            for &t in steps.iter().chain(steps.iter().rev()) {
                let fresh = super::window_at(window, &c.tz, t).unwrap();
                assert_eq!(c.window_at(t).unwrap(), fresh, "{zone} {window:?} at {t}");
                assert!(fresh.start_us <= t && t < fresh.end_us);
            }
        }
    }

    #[test]
    fn unknown_zone_is_an_error_naming_it() {
        let err = Calendar::new(1, QuotaWindow::Day, "Mars/Olympus").unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }
}
