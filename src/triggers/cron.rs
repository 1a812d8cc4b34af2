//! `bindings.cron`: a tick per occurrence of the schedule, delivered as daprd delivers
//! components-contrib's cron binding (no data; metadata `timeZone` and `readTimeUTC`;
//! gRPC `OnBindingEvent`, HTTP `POST /<name>`). A failed tick is dropped, as daprd drops
//! it; ticks may overlap a slow function. Unlike daprd, a tick for a function with no ready
//! endpoint waits for one (telling the platform, as a held request does) up to the hold
//! timeout, and is counted as missed after it.
//!
//! Ticks are computed from the previous scheduled time on the wall clock, never by
//! sleeping a period, so they do not drift.

use super::contract::Answer;
use super::delivery::{Settled, TriggerRuntime};
use super::event::Event;
use crate::plan::CronSource;
use crate::telemetry::event_outcome;
use bytes::Bytes;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A parsed `schedule`, with robfig/cron v3's semantics (the parser daprd's cron binding
/// uses: optional seconds field, descriptors, `TZ=`/`CRON_TZ=` prefixes).
#[derive(Clone, Debug)]
pub enum Schedule {
    /// `@every <duration>`: whole seconds, at least one, from the previous tick.
    Every(Duration),
    Cron {
        cron: Box<croner::Cron>,
        zone: TimeZone,
    },
}

/// Parses a schedule as robfig/cron's `SecondOptional | Minute | Hour | Dom | Month | Dow
/// | Descriptor` parser does, or says why not.
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let text = text.trim();
    let (zone, spec) = match text
        .strip_prefix("TZ=")
        .or_else(|| text.strip_prefix("CRON_TZ="))
    {
        Some(rest) => {
            let (name, spec) = rest
                .split_once(' ')
                .ok_or("a time zone prefix must be followed by the schedule")?;
            (zone_named(name)?, spec.trim())
        }
        // robfig uses the scheduler's location: the process's local time.
        None => (TimeZone::system(), text),
    };
    if let Some(every) = spec.strip_prefix("@every ") {
        let d = go_duration(every.trim())?;
        // robfig: at least a second, sub-seconds dropped.
        let whole = d.as_secs().max(1);
        return Ok(Schedule::Every(Duration::from_secs(whole)));
    }
    let spec = match spec {
        "@midnight" => "@daily",
        s => s,
    };
    if !spec.starts_with('@') {
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if !(5..=6).contains(&fields.len()) {
            return Err(format!(
                "expected 5 or 6 fields (seconds optional), found {}",
                fields.len()
            ));
        }
        // Month and weekday names aside, robfig knows no L, W, # or +.
        const NAMES: [&str; 19] = [
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT",
        ];
        let mut bare = spec.to_ascii_uppercase();
        for name in NAMES {
            bare = bare.replace(name, "");
        }
        if let Some(c) = bare.chars().find(|c| matches!(c, 'L' | 'W' | '#' | '+')) {
            return Err(format!("{c:?} is not cron syntax daprd's parser accepts"));
        }
        let weekdays = fields[fields.len() - 1];
        if weekdays
            .split([',', '-', '/'])
            .any(|n| n.parse::<u32>().is_ok_and(|n| n > 6))
        {
            return Err(format!(
                "day of week {weekdays:?}: days are 0-6 (Sunday is 0)"
            ));
        }
    }
    // robfig takes `?` as `*` in any field; croner only in the day fields.
    let spec = spec.replace('?', "*");
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .sloppy_ranges(true)
        .build()
        .parse(&spec)
        .map_err(|e| e.to_string())?;
    Ok(Schedule::Cron {
        cron: Box::new(cron),
        zone,
    })
}

/// A zone as Go's `time.LoadLocation` names it: `Local`, `UTC`, or an IANA name from the
/// system's tz database.
fn zone_named(name: &str) -> Result<TimeZone, String> {
    match name {
        "Local" => Ok(TimeZone::system()),
        "UTC" | "" => Ok(TimeZone::UTC),
        _ => TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}")),
    }
}

/// Go's `time.ParseDuration`: signed decimal numbers with units ns, us (µs), ms, s, m, h,
/// concatenated (`1h30m`, `1.5s`). A negative duration is returned as zero.
fn go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a Go duration (like 2s, 1m30s, 1.5h)");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number = &rest[..number_len];
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(unit).ok_or_else(bad)?;
        let mut scale = unit;
        for digit in fraction.bytes() {
            if !digit.is_ascii_digit() {
                return Err(bad());
            }
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        nanos = nanos.checked_add(part).ok_or_else(bad)?;
    }
    if nanos > i64::MAX as u128 {
        return Err(bad());
    }
    Ok(if negative {
        Duration::ZERO
    } else {
        Duration::from_nanos(nanos as u64)
    })
}

impl Schedule {
    /// The first tick strictly after `previous`.
    pub fn next_after(&self, previous: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every(d) => previous
                .checked_add(SignedDuration::try_from(*d).ok()?)
                .ok(),
            Schedule::Cron { cron, zone } => cron
                .find_next_occurrence(&previous.to_zoned(zone.clone()), false)
                .ok()
                .map(|z| z.timestamp()),
        }
    }
}

/// Go's `Time.String()` of a UTC time, as daprd writes `readTimeUTC`:
/// `2026-12-07 06:00:01.000000123 +0000 UTC`, trailing zeros of the fraction dropped.
pub fn go_utc_string(t: Timestamp) -> String {
    let civil = t.to_zoned(TimeZone::UTC);
    let mut out = civil.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = civil.subsec_nanosecond();
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// The whole second at or before `t`: robfig counts `@every` from there.
fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Runs until the trigger stops; ticks being delivered then finish or give up. A tick
/// fires only while `leader` is true: with several replicas, on the one holding the cron
/// Lease.
pub async fn run(
    rt: Arc<TriggerRuntime>,
    source: CronSource,
    leader: tokio::sync::watch::Receiver<bool>,
) {
    let schedule = match parse_schedule(&source.schedule) {
        Ok(s) => s,
        Err(e) => {
            // Checked when compiled; a zone removed from the system since is possible.
            tracing::error!(trigger = %rt.key, error = %e, "invalid schedule; trigger idle until its configuration changes");
            rt.stopping().await;
            return;
        }
    };
    let hold = source.hold_timeout.unwrap_or_else(|| rt.hold_timeout());
    let mut ticks = tokio::task::JoinSet::new();
    let mut previous = whole_second(Timestamp::now());
    tracing::info!(trigger = %rt.key, schedule = %source.schedule, "cron trigger started");
    loop {
        let Some(next) = schedule.next_after(previous) else {
            tracing::warn!(trigger = %rt.key, "the schedule has no further occurrence");
            rt.stopping().await;
            break;
        };
        let wait = Timestamp::now().duration_until(next);
        if wait.is_positive() {
            tokio::select! {
                _ = tokio::time::sleep(wait.unsigned_abs()) => {}
                _ = rt.stopping() => break,
            }
            // The monotonic clock can run ahead of the wall clock by a little: never fire
            // before the scheduled time.
            let early = Timestamp::now().duration_until(next);
            if early.is_positive() {
                tokio::time::sleep(early.unsigned_abs()).await;
            }
        }
        previous = next;
        // Occurrences that passed while the process could not run (suspended, the clock
        // stepped forward) are missed, as robfig skips them, but counted.
        let now = Timestamp::now();
        while let Some(after) = schedule.next_after(previous).filter(|a| *a <= now) {
            rt.count(event_outcome::MISSED);
            tracing::warn!(trigger = %rt.key, scheduled = %previous, "cron tick missed: its time passed while fngate could not run");
            previous = after;
        }
        while ticks.try_join_next().is_some() {}
        if !*leader.borrow() {
            tracing::debug!(trigger = %rt.key, scheduled = %previous, "cron tick left to the replica holding the cron lease");
            continue;
        }
        let rt = rt.clone();
        ticks.spawn(async move { tick(&rt, previous, hold).await });
    }
    while ticks.join_next().await.is_some() {}
    tracing::info!(trigger = %rt.key, "cron trigger stopped");
}

/// One tick: delivered once, or dropped on a failure (daprd does not retry a tick), or
/// missed when no endpoint was ready within `hold`.
async fn tick(rt: &TriggerRuntime, scheduled: Timestamp, hold: Duration) {
    let event = Event {
        data: Bytes::new(),
        metadata: vec![
            // The scheduler's location, which for daprd is always Go's `time.Local`.
            ("timeZone".into(), "Local".to_owned()),
            ("readTimeUTC".into(), go_utc_string(Timestamp::now())),
        ],
        topic: String::new(),
        position: format!("cron/{}", scheduled.as_second()),
        received: Instant::now(),
    };
    match tokio::time::timeout(hold, rt.attempt(&event, 1)).await {
        Err(_) => {
            rt.count(event_outcome::MISSED);
            tracing::warn!(trigger = %rt.key, %scheduled, hold = ?hold, "cron tick missed: no ready endpoint answered within the hold timeout");
        }
        Ok(None) => {}
        Ok(Some(Answer::Success)) => rt.record(&event, Settled::Delivered),
        Ok(Some(answer)) => {
            rt.count(event_outcome::FAILED);
            tracing::debug!(trigger = %rt.key, %scheduled, reason = answer.reason().unwrap_or(""), "cron tick failed; dropped, as daprd drops it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// The next `n` ticks after `from`, as RFC 3339 UTC.
    fn ticks(schedule: &str, from: &str, n: usize) -> Vec<String> {
        let s = parse_schedule(schedule).unwrap();
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.to_string()
            })
            .collect()
    }

    // Expected values worked out by hand from robfig/cron v3's documented semantics.
    #[test]
    fn robfig_schedules_fire_when_robfig_fires_them() {
        let from = "2026-12-07T10:15:30Z"; // a Monday
        let table: &[(&str, &[&str])] = &[
            // 5 fields: minute resolution, second 0.
            (
                "TZ=UTC */5 * * * *",
                &["2026-12-07T10:20:00Z", "2026-12-07T10:25:00Z"],
            ),
            // 6 fields: seconds first.
            (
                "TZ=UTC 15 * * * * *",
                &["2026-12-07T10:16:15Z", "2026-12-07T10:17:15Z"],
            ),
            (
                "TZ=UTC */20 * * * * *",
                &["2026-12-07T10:15:40Z", "2026-12-07T10:16:00Z"],
            ),
            // robfig's N/step: from N to the end of the range.
            (
                "TZ=UTC 50/5 * * * * *",
                &[
                    "2026-12-07T10:15:50Z",
                    "2026-12-07T10:15:55Z",
                    "2026-12-07T10:16:50Z",
                ],
            ),
            (
                "TZ=UTC 0 0 * * MON-FRI",
                &["2026-12-08T00:00:00Z", "2026-12-09T00:00:00Z"],
            ),
            ("TZ=UTC 0 0 * DEC WED", &["2026-12-09T00:00:00Z"]),
            ("TZ=UTC 0 0 * JUL *", &["2027-07-01T00:00:00Z"]),
            // Weekdays 1-5 are Monday to Friday (0 is Sunday).
            (
                "TZ=UTC 0 12 * * 1-5",
                &["2026-12-07T12:00:00Z", "2026-12-08T12:00:00Z"],
            ),
            ("TZ=UTC 0 12 * * 0", &["2026-12-13T12:00:00Z"]),
            // Both day fields restricted: either matches (Dec 10 is a Thursday).
            (
                "TZ=UTC 0 0 10 * 1",
                &["2026-12-10T00:00:00Z", "2026-12-14T00:00:00Z"],
            ),
            // A `*/2` day of month counts as restricted, so the fields are ORed: the
            // odd days (*/2 from 1) and Mondays.
            (
                "TZ=UTC 0 0 */2 * 1",
                &["2026-12-09T00:00:00Z", "2026-12-11T00:00:00Z"],
            ),
            (
                "TZ=UTC 0 30 3-6,20-23 * * *",
                &["2026-12-07T20:30:00Z", "2026-12-07T21:30:00Z"],
            ),
            (
                "TZ=UTC @hourly",
                &["2026-12-07T11:00:00Z", "2026-12-07T12:00:00Z"],
            ),
            ("TZ=UTC @daily", &["2026-12-08T00:00:00Z"]),
            ("TZ=UTC @midnight", &["2026-12-08T00:00:00Z"]),
            ("TZ=UTC @weekly", &["2026-12-13T00:00:00Z"]),
            ("TZ=UTC @monthly", &["2027-01-01T00:00:00Z"]),
            ("TZ=UTC @yearly", &["2027-01-01T00:00:00Z"]),
            ("TZ=UTC @annually", &["2027-01-01T00:00:00Z"]),
            ("TZ=UTC 0 0 ? * *", &["2026-12-08T00:00:00Z"]),
            // Zones: 04:30 in New York is 09:30 UTC in December (EST, -5).
            (
                "CRON_TZ=America/New_York 0 30 4 * * *",
                &["2026-12-08T09:30:00Z"],
            ),
            ("TZ=Asia/Tokyo 0 9 * * *", &["2026-12-08T00:00:00Z"]),
            // From the previous tick, not from when it was computed.
            (
                "@every 2s",
                &["2026-12-07T10:15:32Z", "2026-12-07T10:15:34Z"],
            ),
            (
                "@every 1m30s",
                &["2026-12-07T10:17:00Z", "2026-12-07T10:18:30Z"],
            ),
            // Under a second rounds up to one; sub-seconds are dropped.
            ("@every 300ms", &["2026-12-07T10:15:31Z"]),
            ("@every 2.7s", &["2026-12-07T10:15:32Z"]),
            ("@every 1.5h", &["2026-12-07T11:45:30Z"]),
        ];
        for (schedule, expected) in table {
            assert_eq!(
                ticks(schedule, from, expected.len()),
                expected.to_vec(),
                "{schedule}"
            );
        }
    }

    #[test]
    fn a_zone_keeps_its_wall_time_across_daylight_saving() {
        // Berlin moves to summer time at 02:00 on March 29 2026: 01:00 is 00:00 UTC up
        // to that day, 23:00 UTC the day before from the next.
        assert_eq!(
            ticks("TZ=Europe/Berlin 0 1 * * *", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T00:00:00Z",
                "2026-03-29T00:00:00Z",
                "2026-03-29T23:00:00Z"
            ]
        );
    }

    #[test]
    fn what_robfig_rejects_is_rejected_with_the_reason() {
        for (schedule, reason) in [
            ("", "expected 5 or 6 fields"),
            ("* * * *", "expected 5 or 6 fields"),
            ("0 0 0 * * * 2027", "expected 5 or 6 fields"),
            ("0 0 L * *", "'L'"),
            ("0 0 * * 1#2", "'#'"),
            ("0 0 15W * *", "'W'"),
            ("0 0 * * 7", "days are 0-6"),
            ("61 * * * *", ""),
            ("TZ=Mars/Olympus 0 0 * * *", "unknown time zone"),
            ("TZ=UTC", "followed by the schedule"),
            ("@every", ""),
            ("@every 2", "not a Go duration"),
            ("@every 2x", "not a Go duration"),
            ("@every s", "not a Go duration"),
            ("@fortnightly", ""),
        ] {
            let e = parse_schedule(schedule).expect_err(schedule);
            assert!(e.contains(reason), "{schedule:?}: {e}");
        }
    }

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        for (text, nanos) in [
            ("2s", 2_000_000_000u64),
            ("1m30s", 90_000_000_000),
            ("1h", 3_600_000_000_000),
            ("1.5h", 5_400_000_000_000),
            (".5s", 500_000_000),
            ("300ms", 300_000_000),
            ("10us", 10_000),
            ("10µs", 10_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("0", 0),
            ("-2s", 0),
        ] {
            assert_eq!(go_duration(text), Ok(Duration::from_nanos(nanos)), "{text}");
        }
    }

    #[test]
    fn read_time_is_gos_time_string_in_utc() {
        assert_eq!(
            go_utc_string(at("2026-12-07T06:00:01.000000123Z")),
            "2026-12-07 06:00:01.000000123 +0000 UTC"
        );
        assert_eq!(
            go_utc_string(at("2026-12-07T06:00:01.5Z")),
            "2026-12-07 06:00:01.5 +0000 UTC"
        );
        assert_eq!(
            go_utc_string(at("2026-12-07T06:00:01Z")),
            "2026-12-07 06:00:01 +0000 UTC"
        );
    }
}
