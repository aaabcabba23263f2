//! Alert events in the order they happened, read a page at a time after a cursor (an
//! `alert_events.id`): what the API's event stream sends, and where a reconnecting client
//! resumes.
//!
//! Event ids are given inside the write transaction and SQLite lets one writer in at a time,
//! so an event committed later always has a greater id: "after the last id sent" misses none.

use rusqlite::{Connection, params};

use super::store::{EVENT_COLUMNS, Pending, pending_of};
use crate::store::StoreError;

/// Which events a reader wants: those of alerts in this orchard, block and severity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Only {
    pub orchard: Option<String>,
    pub block: Option<String>,
    pub severity: Option<String>,
}

/// Events after a cursor, oldest first, and where the next page starts.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Pending>,
    /// Every event up to here has been looked at: the last one on a full page, else the newest
    /// event when the page was read, so events the filter skips are not read again.
    pub cursor: i64,
    /// The page was full: there may be more up to the newest event, read on without waiting.
    pub more: bool,
}

/// The id of the newest event, 0 without any.
pub fn newest(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM alert_events")?
        .query_row([], |r| r.get(0))?)
}

/// Where a stream starts: after the event the client last had, else after the newest (nothing
/// old). An id past the newest is not of this store (a reinstall): it starts at the newest.
pub fn start_after(resume: Option<i64>, newest: i64) -> i64 {
    resume.map_or(newest, |id| id.clamp(0, newest))
}

/// At most `limit` events of `only` after `cursor`, up to the newest event now.
pub fn after(
    conn: &Connection,
    cursor: i64,
    only: &Only,
    limit: usize,
) -> Result<Page, StoreError> {
    let head = newest(conn)?;
    // Each row read with its alert; a row whose alert is gone is `None`, yet moves the cursor.
    let rows: Vec<(i64, Option<Pending>)> = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} \
             FROM alert_events e JOIN alerts a ON a.id = e.alert \
             WHERE e.id > ?1 AND e.id <= ?2 \
             AND (?3 IS NULL OR a.orchard = ?3) AND (?4 IS NULL OR a.block = ?4) \
             AND (?5 IS NULL OR a.severity = ?5) \
             ORDER BY e.id LIMIT ?6"
        ))?
        .query_map(
            params![
                cursor,
                head,
                only.orchard,
                only.block,
                only.severity,
                limit as i64
            ],
            |r| Ok((r.get(0)?, pending_of(conn, r, false)?)),
        )?
        .collect::<Result<_, _>>()?;
    let more = rows.len() == limit;
    let next = next_cursor(cursor, head, rows.last().map(|r| r.0), more);
    let events = rows.into_iter().filter_map(|(_, p)| p).collect();
    Ok(Page {
        events,
        cursor: next,
        more,
    })
}

/// A full page ends at its last event; a short one has seen everything up to `head`.
fn next_cursor(cursor: i64, head: i64, last: Option<i64>, full: bool) -> i64 {
    match last {
        Some(last) if full => last,
        _ => head.max(cursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::parse;
    use crate::alerts::store::{StaffAction, act, fire};
    use crate::config::StoreSettings;
    use crate::model::{Kind, SeriesKey};

    /// The test's own rule, so the shipped pack can change without changing this test.
    const FROST: &str = r#"
[[rule]]
id = "frost"
kind = "threshold"
measure = "air_temperature"
severity = "warning"
below = 0.0
action.en = "Frost in {block}"
action.zh = "{block} 霜冻"
"#;

    fn series(orchard: &str, device: &str) -> SeriesKey {
        SeriesKey {
            orchard: orchard.parse().unwrap(),
            block: "B1".parse().unwrap(),
            device: device.parse().unwrap(),
            kind: Kind::AirTemperature,
            depth_cm: None,
        }
    }

    /// Reads every page after `from` as a stream would, `limit` at a time.
    fn follow(conn: &Connection, from: i64, only: &Only, limit: usize) -> (Vec<i64>, usize) {
        let (mut seen, mut reads, mut cursor) = (Vec::new(), 0, from);
        loop {
            let page = after(conn, cursor, only, limit).unwrap();
            reads += 1;
            assert!(page.events.len() <= limit);
            seen.extend(page.events.iter().map(|p| p.event));
            cursor = page.cursor;
            if !page.more {
                return (seen, reads);
            }
        }
    }

    #[test]
    fn a_reconnecting_reader_gets_every_later_event_once_in_order_in_bounded_pages() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            path: dir.path().join("o.db"),
            ..StoreSettings::default()
        };
        let mut c = crate::store::open_writer(&settings).unwrap();
        assert_eq!(newest(&c).unwrap(), 0);
        let mut problems = Vec::new();
        let rule = parse("frost.toml", FROST, &mut problems).remove(0);
        assert!(problems.is_empty(), "{problems:?}");
        let mut alerts = Vec::new();
        {
            let tx = c.transaction().unwrap();
            for (i, orchard) in ["fengjie", "wanzhou"].iter().cycle().take(7).enumerate() {
                let s = series(orchard, &format!("d{i}"));
                alerts.push(fire(&tx, &rule, &s, 0, 600_000, -1.0).unwrap().unwrap());
            }
            tx.commit().unwrap();
        }
        act(&mut c, alerts[0], StaffAction::Acknowledge, "Li Wei", None).unwrap();
        let all: Vec<i64> = (1..=8).collect();
        assert_eq!(newest(&c).unwrap(), 8);

        let everyone = Only::default();
        assert_eq!(follow(&c, 0, &everyone, 3).0, all);
        assert_eq!(follow(&c, 3, &everyone, 3).0, all[3..]);
        assert_eq!(follow(&c, 8, &everyone, 3), (vec![], 1));

        // The acknowledgement carries its alert as it is now, and who answered.
        let page = after(&c, 7, &everyone, 3).unwrap();
        let ack = &page.events[0];
        assert_eq!(
            (ack.kind.as_str(), ack.by.as_deref()),
            ("acknowledged", Some("Li Wei"))
        );
        assert_eq!(ack.alert.id, alerts[0]);
        assert_eq!(ack.alert.state, "acknowledged");

        // fengjie's events are 1, 3, 5, 7 (fired) and 8 (its acknowledgement).
        let fengjie = Only {
            orchard: Some("fengjie".into()),
            ..Only::default()
        };
        assert_eq!(follow(&c, 0, &fengjie, 2).0, [1, 3, 5, 7, 8]);
        assert_eq!(follow(&c, 5, &fengjie, 2).0, [7, 8]);

        // A filter that matches nothing moves the cursor past what it looked at, at once.
        let nobody = Only {
            orchard: Some("jiangjin".into()),
            ..Only::default()
        };
        let page = after(&c, 0, &nobody, 100).unwrap();
        assert!(page.events.is_empty());
        assert_eq!((page.cursor, page.more), (8, false));
        let warnings = Only {
            severity: Some("warning".into()),
            ..Only::default()
        };
        assert_eq!(follow(&c, 0, &warnings, 100).0, all);
        let critical = Only {
            severity: Some("critical".into()),
            ..Only::default()
        };
        assert_eq!(follow(&c, 0, &critical, 100).0, Vec::<i64>::new());
    }

    #[test]
    fn a_stream_starts_after_the_clients_last_event_or_at_the_newest() {
        assert_eq!(start_after(None, 41), 41, "nothing old without an id");
        assert_eq!(start_after(Some(0), 41), 0, "since=0: everything");
        assert_eq!(start_after(Some(17), 41), 17);
        assert_eq!(start_after(Some(900), 41), 41, "an id of another store");
        assert_eq!(start_after(Some(-3), 41), 0);
    }

    #[test]
    fn a_full_page_ends_at_its_last_event_and_a_short_one_at_the_head() {
        assert_eq!(next_cursor(10, 500, Some(110), true), 110);
        assert_eq!(next_cursor(10, 500, Some(120), false), 500);
        assert_eq!(next_cursor(10, 500, None, false), 500);
        assert_eq!(next_cursor(600, 500, None, false), 600, "never backwards");
    }
}
