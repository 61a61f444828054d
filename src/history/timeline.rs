//! A node's timeline: what happened to it between its creation and its
//! removal (limits applied, freezes, thaws, kills, OOM kills, pressure
//! crossings), one row per happening in the `events` table, tied to the
//! node's row in `nodes`. At most [`MAX_PER_NODE`] rows per node: older ones
//! are dropped and counted on the node (`events_dropped`). Retention removes
//! a node's events with the node.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::HistoryRow;

/// The most events kept per node; older ones are dropped (and counted).
pub const MAX_PER_NODE: u64 = 256;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    node INTEGER NOT NULL,
    at_unix INTEGER NOT NULL,
    what TEXT NOT NULL,
    by TEXT NOT NULL,
    uid INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node ON events (node, id);
";

/// One thing that happened to a node, as the daemon records it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Happening {
    pub at_unix: u64,
    /// `limit`, `freeze`, `thaw`, `kill`, `oom_kill`, `pressure`.
    pub what: String,
    /// Who did it: `policy` (the configuration), `api` (a request, with the
    /// caller's `uid`), `kernel` (OOM kills, pressure).
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// What it did (file and value, counts, the victim, ...).
    pub detail: BTreeMap<String, serde_json::Value>,
}

/// Databases written before timelines get the dropped count.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    let has = conn.prepare("SELECT 1 FROM pragma_table_info('nodes') WHERE name = 'events_dropped'")?.exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE nodes ADD COLUMN events_dropped INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Records `h` on the open row of node `cgroup_id` (`row`), dropping the
/// oldest beyond [`MAX_PER_NODE`].
pub(super) fn record(tx: &Connection, row: i64, h: &Happening) -> rusqlite::Result<()> {
    let detail = serde_json::to_string(&h.detail).unwrap_or_else(|_| "{}".into());
    tx.execute(
        "INSERT INTO events (node, at_unix, what, by, uid, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![row, h.at_unix as i64, h.what, h.by, h.uid, detail],
    )?;
    let count: i64 = tx.query_row("SELECT COUNT(*) FROM events WHERE node = ?1", params![row], |r| r.get(0))?;
    let excess = count - MAX_PER_NODE as i64;
    if excess > 0 {
        tx.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE node = ?1 ORDER BY id LIMIT ?2)", params![row, excess])?;
        tx.execute("UPDATE nodes SET events_dropped = events_dropped + ?1 WHERE id = ?2", params![excess, row])?;
    }
    Ok(())
}

/// How long after its removal a node's row still takes what happened to it
/// before (seconds).
const LATE_S: u64 = 10;

/// The row of node `cgroup_id` removed at or after `at_unix` (less [`LATE_S`]).
pub(super) fn removed_since(tx: &Connection, hierarchy: &str, root: &str, cgroup_id: u64, at_unix: u64) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "SELECT id FROM nodes WHERE hierarchy = ?1 AND root = ?2 AND cgroup_id = ?3 AND removed_unix >= ?4 ORDER BY id DESC LIMIT 1",
        params![hierarchy, root, cgroup_id as i64, at_unix.saturating_sub(LATE_S) as i64],
        |r| r.get(0),
    )
    .optional()
}

/// Deletes the events of nodes no longer recorded (after retention).
pub(super) fn orphans(tx: &Connection) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM events WHERE node NOT IN (SELECT id FROM nodes)", [])?;
    Ok(())
}

/// A node's life: its row, what happened to it (oldest first), and how
/// many older events were dropped.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub node: HistoryRow,
    pub events: Vec<Happening>,
    pub events_dropped: u64,
}

/// Which node a timeline is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    /// A node's path (the newest node there: the live one first).
    Path(String),
    /// A process: the live node among the cgroups it is in now (its
    /// `/proc/<pid>/cgroup` paths), else the last node it created.
    Pid { pid: u32, cgroups: Vec<String> },
}

/// The id of the row `which` names, if any.
fn find(conn: &Connection, which: &Which) -> rusqlite::Result<Option<i64>> {
    const NEWEST: &str = "ORDER BY removed_unix IS NOT NULL, created_unix DESC, id DESC LIMIT 1";
    match which {
        Which::Path(path) => conn.query_row(&format!("SELECT id FROM nodes WHERE path = ?1 {NEWEST}"), params![path], |r| r.get(0)).optional(),
        Which::Pid { pid, cgroups } => {
            for path in cgroups {
                let live = conn
                    .query_row("SELECT id FROM nodes WHERE path = ?1 AND removed_unix IS NULL ORDER BY id DESC LIMIT 1", params![path], |r| r.get(0))
                    .optional()?;
                if live.is_some() {
                    return Ok(live);
                }
            }
            conn.query_row(&format!("SELECT id FROM nodes WHERE creator_pid = ?1 {NEWEST}"), params![pid], |r| r.get(0)).optional()
        }
    }
}

/// The timeline of the node `which` names, if the history has one.
pub fn timeline(conn: &Connection, which: &Which) -> rusqlite::Result<Option<Timeline>> {
    let Some(id) = find(conn, which)? else { return Ok(None) };
    let Some(node) = super::read::row_by_id(conn, id)? else { return Ok(None) };
    let dropped: i64 = conn.query_row("SELECT events_dropped FROM nodes WHERE id = ?1", params![id], |r| r.get(0))?;
    let mut st = conn.prepare("SELECT at_unix, what, by, uid, detail FROM events WHERE node = ?1 ORDER BY id")?;
    let events = st
        .query_map(params![id], |r| {
            let detail: String = r.get(4)?;
            Ok(Happening {
                at_unix: r.get::<_, i64>(0)? as u64,
                what: r.get(1)?,
                by: r.get(2)?,
                uid: r.get(3)?,
                detail: serde_json::from_str(&detail).unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Timeline { node, events, events_dropped: dropped as u64 }))
}

#[cfg(test)]
mod tests {
    use super::super::{apply, apply_retention, open_ro, open_rw, Msg, NodeRow, Retention};
    use super::*;

    fn node(id: u64, path: &str, pid: u32) -> NodeRow {
        NodeRow { cgroup_id: id, path: path.into(), creator_pid: pid, creator_comm: "unshare".into(), created_unix: 100 + id, ..NodeRow::default() }
    }

    fn happened(id: u64, at: u64, what: &str) -> Msg {
        let detail = [("n".to_string(), serde_json::json!(at))].into();
        Msg::Happened { cgroup_id: id, happening: Happening { at_unix: at, what: what.into(), by: "api".into(), uid: Some(1000), detail } }
    }

    #[test]
    fn a_timeline_is_bounded_per_node_and_counts_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let conn = open_rw(&db).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(node(1, "/t/node_1", 1))).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(node(2, "/t/node_2", 2))).unwrap();
        for at in 0..MAX_PER_NODE + 10 {
            apply(&conn, "/m", "/t", happened(1, at, "freeze")).unwrap();
        }
        apply(&conn, "/m", "/t", happened(2, 5, "kill")).unwrap();
        // Not recorded: no timeline to add to.
        apply(&conn, "/m", "/t", happened(9, 5, "kill")).unwrap();
        // Told after the removal it caused (an API worker's kill): still the node's.
        apply(&conn, "/m", "/t", Msg::Removed { node: node(2, "/t/node_2", 2), removed_unix: 6, usage: Default::default() }).unwrap();
        apply(&conn, "/m", "/t", happened(2, 6, "kill")).unwrap();
        let ro = open_ro(&db).unwrap();
        let t = timeline(&ro, &Which::Path("/t/node_1".into())).unwrap().unwrap();
        assert_eq!(t.events.len() as u64, MAX_PER_NODE);
        assert_eq!(t.events_dropped, 10);
        assert_eq!(t.events[0].at_unix, 10, "the oldest go first");
        assert_eq!(t.events[0].uid, Some(1000));
        let t2 = timeline(&ro, &Which::Path("/t/node_2".into())).unwrap().unwrap();
        assert_eq!((t2.events.len(), t2.events[1].what.as_str(), t2.events_dropped), (2, "kill", 0));
        assert!(timeline(&ro, &Which::Path("/t/node_9".into())).unwrap().is_none());
        // Retention takes a node's events with it.
        apply(&conn, "/m", "/t", Msg::Removed { node: node(1, "/t/node_1", 1), removed_unix: 200, usage: Default::default() }).unwrap();
        apply_retention(&conn, Retention { days: 1, rows: 0 }, 200 + 86_400 * 2).unwrap();
        let left: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 0, "both nodes' events went with them");
    }

    #[test]
    fn a_pid_names_its_live_node_else_the_last_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let conn = open_rw(&db).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(node(1, "/t/node_7", 7))).unwrap();
        apply(&conn, "/m", "/t", Msg::Removed { node: node(1, "/t/node_7", 7), removed_unix: 150, usage: Default::default() }).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(node(2, "/t/node_7", 7))).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(node(3, "/t/node_8", 8))).unwrap();
        let ro = open_ro(&db).unwrap();
        let id = |w: Which| timeline(&ro, &w).unwrap().map(|t| t.node.node.cgroup_id);
        // Pid 7 now lives in node_8 (its live node), or nowhere we know (the last it made).
        assert_eq!(id(Which::Pid { pid: 7, cgroups: vec!["/".into(), "/t/node_8".into()] }), Some(3));
        assert_eq!(id(Which::Pid { pid: 7, cgroups: vec!["/elsewhere".into()] }), Some(2));
        assert_eq!(id(Which::Pid { pid: 99, cgroups: vec![] }), None);
        // A path: the live node there, not the removed one.
        assert_eq!(id(Which::Path("/t/node_7".into())), Some(2));
    }
}
