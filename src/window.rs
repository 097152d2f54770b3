//! Rotation windows: the hours of the week, in a named time zone, in which routine refreshes
//! may run, so that a refresh that fails does so while people are there to act on it.
//!
//! A window is a set of weekdays and one daily span `start..end` of local wall-clock time
//! (never crossing midnight). It is a plain value with no clock of its own: every question
//! takes the instant it is about, so [`crate::rotation::plan`] stays pure.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;

use crate::clock::Timestamp;

/// The days a window's names may use, Monday first (bit 0 of [`Window`]'s day mask).
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Minutes in a day; also the only `end` allowed to be written `24:00`.
const DAY_MINUTES: u32 = 24 * 60;

/// Why a window was refused; the text is shown to the operator next to the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A day name other than mon..sun.
    #[error("unknown day \"{0}\": use mon, tue, wed, thu, fri, sat, sun")]
    UnknownDay(String),
    /// No day listed: the window would never open.
    #[error("lists no day, so the window would never open")]
    NoDays,
    /// Not `HH:MM`.
    #[error("\"{0}\" is not a time of day HH:MM (00:00 to 24:00)")]
    BadTime(String),
    /// `end` not after `start`.
    #[error("end {end} must be later than start {start} on the same day")]
    Empty {
        /// As written.
        start: String,
        /// As written.
        end: String,
    },
    /// Not an IANA time zone name, or not in the system's tz database.
    #[error(
        "unknown time zone \"{0}\": use an IANA name such as \"Europe/Berlin\" or \"UTC\" \
         (zones are read from the system's tz database, /usr/share/zoneinfo or $TZDIR: the \
         tzdata package)"
    )]
    UnknownZone(String),
}

/// When routine refreshes may run: some weekdays, one daily span of local time, one zone.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Bit `i` set: open on the day `i` days after Monday.
    days: u8,
    /// Opening, in minutes after local midnight.
    start: u32,
    /// Closing, in minutes after local midnight; later than `start`, at most 24:00.
    end: u32,
    /// The zone whose wall clock `start` and `end` are read on (DST included); one shared
    /// copy per zone name, so a window stays a plain `Copy` value (see [`zone_named`]).
    zone: &'static TimeZone,
}

impl PartialEq for Window {
    fn eq(&self, other: &Window) -> bool {
        (self.days, self.start, self.end) == (other.days, other.start, other.end)
            && self.zone == other.zone
    }
}

impl Eq for Window {}

/// The zone called `name`, read from the system's tz database once per name and kept for the
/// life of the process: a configuration names a handful of zones, and reloads find the same
/// ones again, so what is kept is bounded by the distinct names ever configured.
fn zone_named(name: &str) -> Option<&'static TimeZone> {
    static ZONES: Mutex<Option<HashMap<String, &'static TimeZone>>> = Mutex::new(None);
    let mut zones = ZONES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let zones = zones.get_or_insert_with(HashMap::new);
    if let Some(zone) = zones.get(name) {
        return Some(zone);
    }
    let zone: &'static TimeZone = Box::leak(Box::new(TimeZone::get(name).ok()?));
    zones.insert(name.to_string(), zone);
    Some(zone)
}

impl Window {
    /// A window from its written parts: day names (`mon`..`sun`), `HH:MM` times and an IANA
    /// zone name.
    pub fn new(days: &[String], start: &str, end: &str, zone: &str) -> Result<Window, WindowError> {
        let mut mask = 0u8;
        for day in days {
            let lower = day.trim().to_ascii_lowercase();
            let i = DAY_NAMES
                .iter()
                .position(|d| *d == lower)
                .ok_or_else(|| WindowError::UnknownDay(day.clone()))?;
            mask |= 1 << i;
        }
        if mask == 0 {
            return Err(WindowError::NoDays);
        }
        let (start_min, end_min) = (minutes(start)?, minutes(end)?);
        if end_min <= start_min {
            return Err(WindowError::Empty {
                start: start.into(),
                end: end.into(),
            });
        }
        let zone = zone_named(zone.trim()).ok_or_else(|| WindowError::UnknownZone(zone.into()))?;
        Ok(Window {
            days: mask,
            start: start_min,
            end: end_min,
            zone,
        })
    }

    /// Whether the window is open at `t`.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.span_from(t).is_some_and(|(open, _)| open <= t)
    }

    /// The opening and closing of the window occurrence that is open at `t`, else of the next
    /// one to open. `None` only for instants outside chrono's range.
    pub fn span_from(&self, t: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let now = jiff::Timestamp::from_millisecond(t.millis()).ok()?;
        // Yesterday too: at 00:30 after a DST change the local date can lag the span it is in.
        let first = self.zone.to_datetime(now).date().yesterday().ok()?;
        std::iter::successors(Some(first), |d| d.tomorrow().ok())
            .take(9)
            .filter(|d| self.days & (1 << d.weekday().to_monday_zero_offset()) != 0)
            .filter_map(|d| Some((self.instant(d, self.start)?, self.instant(d, self.end)?)))
            .find(|(_, close)| *close > t)
    }

    /// The instant of local `minute` on `date`. A time skipped by a DST jump (02:30 on the
    /// spring-forward day) is read as the same time after the jump (03:30), the first
    /// wall-clock time that exists after it; a time that happens twice (autumn) as its first
    /// occurrence. This is jiff's "compatible" disambiguation (RFC 5545's rule).
    fn instant(&self, date: Date, minute: u32) -> Option<Timestamp> {
        let local = date
            .to_datetime(Time::midnight())
            .checked_add(jiff::Span::new().minutes(i64::from(minute)))
            .ok()?;
        let at = self.zone.to_ambiguous_timestamp(local).compatible().ok()?;
        Some(Timestamp::from_millis(at.as_millisecond()))
    }
}

/// `HH:MM` as minutes after midnight; `24:00` is the end of the day.
fn minutes(s: &str) -> Result<u32, WindowError> {
    let bad = || WindowError::BadTime(s.into());
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let total = h * 60 + m;
    if m >= 60 || total > DAY_MINUTES {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    /// Monday to Friday, 09:00-17:00 in Berlin: the window the rotation tests use too.
    pub(crate) fn weekdays_9_to_5() -> Window {
        let days: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| d.to_string())
            .collect();
        Window::new(&days, "09:00", "17:00", "Europe/Berlin").unwrap()
    }

    #[test]
    fn open_on_weekday_hours_in_the_zone() {
        let w = weekdays_9_to_5();
        // 2026-11-24 is a Tuesday; Berlin is UTC+1 in winter.
        assert!(w.contains(at("2026-11-24T08:00:00Z")));
        assert!(!w.contains(at("2026-11-24T07:59:59Z")));
        assert!(!w.contains(at("2026-11-24T16:00:00Z")));
        // Saturday: closed; the next opening is Monday 09:00 Berlin.
        assert!(!w.contains(at("2026-11-28T10:00:00Z")));
        assert_eq!(
            w.span_from(at("2026-11-28T10:00:00Z")),
            Some((at("2026-11-30T08:00:00Z"), at("2026-11-30T16:00:00Z")))
        );
    }

    #[test]
    fn dst_moves_the_utc_hours_and_skipped_times_open_an_hour_later() {
        let w = weekdays_9_to_5();
        // Friday 2026-03-27 (CET, UTC+1) and Monday 2026-03-30 (CEST, UTC+2).
        assert!(w.contains(at("2026-03-27T08:00:00Z")));
        assert!(!w.contains(at("2026-03-27T07:30:00Z")));
        assert!(w.contains(at("2026-03-30T07:00:00Z")));
        assert!(!w.contains(at("2026-03-30T06:30:00Z")));
        // Sunday 2026-03-29: 02:30 does not exist in Berlin; the window opens at 03:30 CEST.
        let night = Window::new(&["sun".into()], "02:30", "04:00", "Europe/Berlin").unwrap();
        assert_eq!(
            night.span_from(at("2026-03-28T12:00:00Z")),
            Some((at("2026-03-29T01:30:00Z"), at("2026-03-29T02:00:00Z")))
        );
        // Sunday 2026-10-25: 02:30 happens twice; the first one (CEST) counts.
        assert_eq!(
            night.span_from(at("2026-10-24T12:00:00Z")).map(|s| s.0),
            Some(at("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn bad_windows_are_refused() {
        let d = vec!["mon".to_string()];
        assert_eq!(
            Window::new(&["monday".into()], "09:00", "17:00", "UTC"),
            Err(WindowError::UnknownDay("monday".into()))
        );
        assert_eq!(
            Window::new(&[], "09:00", "17:00", "UTC"),
            Err(WindowError::NoDays)
        );
        assert!(matches!(
            Window::new(&d, "9", "17:00", "UTC"),
            Err(WindowError::BadTime(_))
        ));
        assert!(matches!(
            Window::new(&d, "17:00", "09:00", "UTC"),
            Err(WindowError::Empty { .. })
        ));
        assert!(matches!(
            Window::new(&d, "09:00", "17:00", "Mars/Olympus"),
            Err(WindowError::UnknownZone(_))
        ));
        assert!(Window::new(&d, "00:00", "24:00", "UTC").is_ok());
    }
}
