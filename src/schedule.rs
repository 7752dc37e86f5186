//! When a timer fires: `cron` (5 or 6 fields, in an IANA time zone, through croner),
//! `every` (on a grid of the interval counted from the Unix epoch, so the grid survives
//! restarts) and `at` (once). Pure time arithmetic, tested with fixed instants.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron { cron: Box<Cron>, tz: Tz },
    Every(Duration),
    At(DateTime<Utc>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Schedule {
    /// Parses a cron expression in `tz` (default UTC); an expression that never fires is
    /// refused too.
    pub fn cron(expr: &str, tz: Option<&str>) -> Result<Schedule, String> {
        let tz = match tz {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                format!("unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")
            })?,
        };
        let cron = Cron::from_str(expr).map_err(|e| {
            format!("cron {expr:?} does not parse ({e}): write 5 fields (minute first) or 6 (seconds first)")
        })?;
        let schedule = Schedule::Cron {
            cron: Box::new(cron),
            tz,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!("cron {expr:?} never fires"));
        }
        Ok(schedule)
    }

    pub fn every(interval: Duration) -> Result<Schedule, String> {
        if interval < Duration::from_millis(10) {
            return Err(format!("every {interval:?} is too short: use 10ms or more"));
        }
        Ok(Schedule::Every(interval))
    }

    pub fn at(text: &str) -> Result<Schedule, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Schedule::At(t.with_timezone(&Utc)))
            .map_err(|e| {
                format!(
                    "at {text:?} is not an RFC 3339 time ({e}), such as \"2026-12-01T09:00:00Z\""
                )
            })
    }

    /// Identifies the schedule: a timer whose key changes is a new timer, so editing a
    /// schedule never counts as having missed runs.
    pub fn key(&self) -> String {
        match self {
            Schedule::Cron { cron, tz } => format!("cron {} {}", cron.pattern, tz.name()),
            Schedule::Every(d) => format!("every {}ms", d.as_millis()),
            Schedule::At(t) => format!("at {}", t.to_rfc3339()),
        }
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, tz } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|next| next.with_timezone(&Utc)),
            Schedule::Every(interval) => {
                let step = interval.as_millis() as i64;
                let now = t.timestamp_millis();
                let next = (now.div_euclid(step) + 1) * step;
                Utc.timestamp_millis_opt(next).single()
            }
            Schedule::At(at) => (*at > t).then_some(*at),
        }
    }

    /// The next `n` occurrences after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = t;
        while out.len() < n {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            out.push(next);
            cursor = next;
        }
        out
    }

    /// An occurrence as RFC 3339, in the schedule's own time zone.
    pub fn format(&self, t: DateTime<Utc>) -> String {
        match self {
            Schedule::Cron { tz, .. } => t
                .with_timezone(tz)
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            _ => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn local(schedule: &Schedule, after: &str, n: usize) -> Vec<String> {
        schedule
            .upcoming(utc(after), n)
            .into_iter()
            .map(|t| schedule.format(t))
            .collect()
    }

    #[test]
    fn every_is_on_a_grid_from_the_epoch() {
        let s = Schedule::every(Duration::from_millis(200)).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00.050Z")),
            Some(utc("2026-01-01T00:00:00.200Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00.200Z")),
            Some(utc("2026-01-01T00:00:00.400Z"))
        );
    }

    #[test]
    fn cron_takes_five_or_six_fields_and_refuses_what_never_fires() {
        let five = Schedule::cron("30 2 * * *", None).unwrap();
        assert_eq!(
            five.next_after(utc("2026-05-01T00:00:00Z")),
            Some(utc("2026-05-01T02:30:00Z"))
        );
        let six = Schedule::cron("15 30 2 * * *", None).unwrap();
        assert_eq!(
            six.next_after(utc("2026-05-01T00:00:00Z")),
            Some(utc("2026-05-01T02:30:15Z"))
        );
        assert!(
            Schedule::cron("0 0 30 2 *", None)
                .unwrap_err()
                .contains("never fires")
        );
        assert!(
            Schedule::cron("nope", None)
                .unwrap_err()
                .contains("does not parse")
        );
        assert!(
            Schedule::cron("* * * * *", Some("Mars/Olympus"))
                .unwrap_err()
                .contains("unknown time zone")
        );
    }

    #[test]
    fn at_fires_once() {
        let s = Schedule::at("2026-12-01T09:00:00+01:00").unwrap();
        assert_eq!(
            s.next_after(utc("2026-12-01T07:00:00Z")),
            Some(utc("2026-12-01T08:00:00Z"))
        );
        assert_eq!(s.next_after(utc("2026-12-01T08:00:00Z")), None);
    }

    /// Spring forward in New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT. As croner
    /// documents, a fixed-time job in the gap runs right after it, once; an interval job
    /// skips the missing hour.
    #[test]
    fn cron_in_new_york_on_the_spring_forward_day() {
        let ny = Some("America/New_York");
        let fixed = Schedule::cron("0 30 2 * * *", ny).unwrap();
        assert_eq!(
            local(&fixed, "2026-03-07T12:00:00Z", 2),
            [
                "2026-03-08T03:00:00.000-04:00",
                "2026-03-09T02:30:00.000-04:00"
            ]
        );
        let hourly = Schedule::cron("0 30 * * * *", ny).unwrap();
        assert_eq!(
            local(&hourly, "2026-03-08T05:45:00Z", 3),
            [
                "2026-03-08T01:30:00.000-05:00",
                "2026-03-08T03:30:00.000-04:00",
                "2026-03-08T04:30:00.000-04:00"
            ]
        );
    }

    /// Fall back in New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST. A fixed-time
    /// job in the repeated hour runs once, at the first pass; an interval job runs in both.
    #[test]
    fn cron_in_new_york_on_the_fall_back_day() {
        let ny = Some("America/New_York");
        let fixed = Schedule::cron("0 30 1 * * *", ny).unwrap();
        assert_eq!(
            local(&fixed, "2026-10-31T12:00:00Z", 2),
            [
                "2026-11-01T01:30:00.000-04:00",
                "2026-11-02T01:30:00.000-05:00"
            ]
        );
        let hourly = Schedule::cron("0 30 * * * *", ny).unwrap();
        assert_eq!(
            local(&hourly, "2026-11-01T04:45:00Z", 3),
            [
                "2026-11-01T01:30:00.000-04:00",
                "2026-11-01T01:30:00.000-05:00",
                "2026-11-01T02:30:00.000-05:00"
            ]
        );
    }
}
