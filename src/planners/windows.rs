//! The maintenance calendar: `maintenance.windows` parsed once (by `validate`) into openings that
//! can be asked "open now?" and "opens next when?", and the gate that `paused` and the calendar
//! put on every disruptive step. Pure; does not need a client.

use std::time::Duration;

use k8s_openapi::jiff::{Span, Timestamp, civil, tz::TimeZone};

use crate::crd::{MaintenanceWindow, SpecError, Weekday, parse_duration};
use crate::vocabulary::{Hold, Reason};

/// One window: the days it opens on (empty: every day), its opening time of day in UTC and how
/// long it stays open.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    days: Vec<Weekday>,
    hour: i8,
    minute: i8,
    length: Duration,
}

/// Where the calendar of `windows` stands at `now`, for a person (`kubectl orc status`):
/// `None` without windows, else whether one is open and when the next opens.
pub fn window_at(
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Result<Option<(bool, Option<Timestamp>)>, SpecError> {
    let calendar = Calendar::parse("spec.maintenance.windows", windows)?;
    Ok((!windows.is_empty()).then(|| (calendar.is_open(now), calendar.next_opening(now))))
}

/// `maintenance.windows`, parsed. No windows means always open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Calendar {
    windows: Vec<Window>,
}

impl Calendar {
    /// Parses `windows` (the list at `field`); the first unreadable one is the error, naming
    /// its index.
    pub(crate) fn parse(field: &'static str, windows: &[MaintenanceWindow]) -> Result<Self, SpecError> {
        let windows = windows
            .iter()
            .enumerate()
            .map(|(index, window)| {
                let invalid_start = || SpecError {
                    field,
                    message: format!("[{index}].start {:?} is not a time like 02:30", window.start),
                };
                let (hour, minute) = window.start.split_once(':').ok_or_else(invalid_start)?;
                let (hour, minute) = (
                    hour.parse::<i8>().map_err(|_| invalid_start())?,
                    minute.parse::<i8>().map_err(|_| invalid_start())?,
                );
                if !(0..24).contains(&hour) || !(0..60).contains(&minute) {
                    return Err(invalid_start());
                }
                let length = parse_duration(field, &window.duration).map_err(|e| SpecError {
                    message: format!("[{index}].duration: {}", e.message),
                    ..e
                })?;
                Ok(Window {
                    days: window.days.clone(),
                    hour,
                    minute,
                    length,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { windows })
    }

    /// Whether a window is open at `now` (UTC); always true without windows.
    pub(crate) fn is_open(&self, now: Timestamp) -> bool {
        self.windows.is_empty() || !self.open_at(now).is_empty()
    }

    /// The index of every window open at `now`.
    pub(crate) fn open_at(&self, now: Timestamp) -> Vec<usize> {
        (0..self.windows.len())
            .filter(|index| {
                Self::openings_of(&self.windows[*index], now)
                    .any(|(opens, length)| opens <= now && elapsed(opens, now) < length)
            })
            .collect()
    }

    /// The next moment after `now` a window opens or closes (`None` without windows).
    pub(crate) fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        self.openings(now)
            .flat_map(|(opens, length)| [Some(opens), opens.checked_add(length).ok()])
            .flatten()
            .filter(|at| *at > now)
            .min()
    }

    /// When the next window opens after `now` (`None` without windows).
    pub(crate) fn next_opening(&self, now: Timestamp) -> Option<Timestamp> {
        self.openings(now)
            .map(|(opens, _)| opens)
            .filter(|opens| *opens > now)
            .min()
    }

    /// Every opening from a week before `now` to a week after, with its length (a long window
    /// may have opened days ago).
    fn openings(&self, now: Timestamp) -> impl Iterator<Item = (Timestamp, Duration)> + '_ {
        self.windows
            .iter()
            .flat_map(move |window| Self::openings_of(window, now))
    }

    /// The openings of one window from a week before `now` to a week after.
    fn openings_of(window: &Window, now: Timestamp) -> impl Iterator<Item = (Timestamp, Duration)> + '_ {
        let today = now.to_zoned(TimeZone::UTC).date();
        (-7..=7i64).filter_map(move |offset| {
            let date = today.checked_add(Span::new().days(offset)).ok()?;
            if !window.days.is_empty() && !window.days.contains(&weekday(date)) {
                return None;
            }
            let opens = date.at(window.hour, window.minute, 0, 0).to_zoned(TimeZone::UTC).ok()?;
            Some((opens.timestamp(), window.length))
        })
    }
}

fn weekday(date: civil::Date) -> Weekday {
    match date.weekday() {
        civil::Weekday::Monday => Weekday::Mon,
        civil::Weekday::Tuesday => Weekday::Tue,
        civil::Weekday::Wednesday => Weekday::Wed,
        civil::Weekday::Thursday => Weekday::Thu,
        civil::Weekday::Friday => Weekday::Fri,
        civil::Weekday::Saturday => Weekday::Sat,
        civil::Weekday::Sunday => Weekday::Sun,
    }
}

/// Time from `since` to `now`, zero if `now` is earlier.
pub(crate) fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// The hold a person (`paused`, an `approval` not given yet) or the calendar (`windows`) puts
/// on every disruptive step.
pub(crate) fn gate(
    paused: bool,
    approval: Option<&Hold>,
    window_open: bool,
    next_window: Option<Timestamp>,
) -> Option<Hold> {
    if paused {
        Some(Hold::new(Reason::Paused, "maintenance.paused is set"))
    } else if let Some(approval) = approval {
        Some(approval.clone())
    } else if !window_open {
        Some(Hold::new(
            Reason::OutsideWindow,
            match next_window {
                Some(opens) => format!("no maintenance window is open; the next opens at {opens}"),
                None => "no maintenance window is open".to_string(),
            },
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: Vec<Weekday>, start: &str, duration: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            days,
            start: start.into(),
            duration: duration.into(),
        }
    }

    fn calendar(windows: &[MaintenanceWindow]) -> Calendar {
        Calendar::parse("spec.maintenance.windows", windows).unwrap()
    }

    #[test]
    fn windows_open_by_day_and_time_in_utc() {
        // 2026-11-28 is a Saturday.
        let sat_0230: Timestamp = "2026-11-28T02:30:00Z".parse().unwrap();
        let sat_0630: Timestamp = "2026-11-28T06:30:00Z".parse().unwrap();
        let weekend = calendar(&[window(vec![Weekday::Sat, Weekday::Sun], "02:00", "4h")]);
        assert!(weekend.is_open(sat_0230));
        assert!(!weekend.is_open(sat_0630));
        assert!(!calendar(&[window(vec![Weekday::Mon], "02:00", "4h")]).is_open(sat_0230));
        let overnight = calendar(&[window(vec![Weekday::Fri], "23:00", "4h")]);
        assert!(
            overnight.is_open("2026-11-28T01:00:00Z".parse().unwrap()),
            "opened Friday, still open Saturday"
        );
        assert!(calendar(&[]).is_open(sat_0630), "no windows: always");
        assert_eq!(
            weekend.next_opening(sat_0630),
            Some("2026-11-29T02:00:00Z".parse().unwrap()),
            "Sunday's opening"
        );
        assert_eq!(
            calendar(&[window(vec![Weekday::Fri], "23:00", "1h")]).next_opening(sat_0630),
            Some("2026-12-04T23:00:00Z".parse().unwrap()),
            "next week's Friday"
        );
        assert_eq!(calendar(&[]).next_opening(sat_0630), None);
        let both = calendar(&[
            window(vec![Weekday::Sat], "02:00", "4h"),
            window(vec![Weekday::Sat], "06:00", "1h"),
        ]);
        assert_eq!(both.open_at(sat_0230), vec![0]);
        assert_eq!(both.open_at(sat_0630), vec![1]);
        assert_eq!(
            both.next_change(sat_0230),
            Some("2026-11-28T06:00:00Z".parse().unwrap()),
            "the first closes as the second opens"
        );
        assert_eq!(calendar(&[]).next_change(sat_0630), None);
    }

    #[test]
    fn an_unreadable_window_is_a_spec_error_naming_it() {
        let good = window(vec![], "02:00", "1h");
        for (bad, says) in [
            (window(vec![], "2am", "1h"), "[1].start \"2am\""),
            (window(vec![], "25:00", "1h"), "[1].start \"25:00\""),
            (window(vec![], "02:00", "an hour"), "[1].duration"),
        ] {
            let error = Calendar::parse("spec.maintenance.windows", &[good.clone(), bad]).unwrap_err();
            assert_eq!(error.field, "spec.maintenance.windows");
            assert!(error.message.contains(says), "{error}");
        }
    }

    #[test]
    fn the_gate_names_the_next_opening() {
        let opens: Timestamp = "2026-11-29T02:00:00Z".parse().unwrap();
        let hold = gate(false, None, false, Some(opens)).unwrap();
        assert_eq!(hold.reason, Reason::OutsideWindow);
        assert!(
            hold.message.contains("the next opens at 2026-11-29T02:00:00Z"),
            "{}",
            hold.message
        );
        assert_eq!(gate(true, None, false, None).unwrap().reason, Reason::Paused);
        assert_eq!(gate(false, None, true, None), None);
        let approval = Hold::new(Reason::AwaitingApproval, "approve generation 4");
        assert_eq!(
            gate(false, Some(&approval), false, Some(opens)).unwrap().reason,
            Reason::AwaitingApproval,
            "approving is what a person can do now; the window comes by itself"
        );
    }
}
