//! Reading the history: the nodes as `nsgroup history` lists them, the
//! coalesced counts, and the `--since` syntax.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::NodeRow;

/// A node as `nsgroup history` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryRow {
    pub hierarchy: String,
    pub root: String,
    /// The node as recorded at its creation.
    #[serde(flatten)]
    pub node: NodeRow,
    /// None while the node exists (or existed when its daemon stopped).
    pub removed_unix: Option<u64>,
    /// Removed while no daemon watched: closed when the next one started
    /// (`removed_unix` is that start's time, the latest it can have been).
    pub closed_at_start: bool,
    /// Final usage (controller file key → value), when removed by the daemon.
    pub usage: Option<BTreeMap<String, u64>>,
}

/// Entries coalesced away in a minute.
#[derive(Clone, Debug, Serialize)]
pub struct CoalescedRow {
    pub hierarchy: String,
    pub root: String,
    pub minute_unix: u64,
    pub entries: u64,
}

/// What `nsgroup history` asks for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Nodes that existed at or after this time (created, or not yet removed).
    pub since_unix: Option<u64>,
    pub comm: Option<String>,
    pub limit: Option<u64>,
    /// Only the rows of this hierarchy (mount point) and root; None: every daemon's.
    pub scope: Option<(String, String)>,
}

/// Opens the database read-only (works while the daemon writes: WAL).
pub fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The columns [`history_row`] reads.
const ROW_COLUMNS: &str = "hierarchy, root, cgroup_id, path, ns_set, creator_pid, creator_comm, creator_uid, created_unix,
                removed_unix, closed_at_start, usage, COALESCE(owner_uid, creator_uid), restored_from";

fn history_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRow> {
    let set: String = r.get(4)?;
    let usage: Option<String> = r.get(11)?;
    Ok(HistoryRow {
        hierarchy: r.get(0)?,
        root: r.get(1)?,
        node: NodeRow {
            cgroup_id: r.get::<_, i64>(2)? as u64,
            path: r.get(3)?,
            set: serde_json::from_str(&set).unwrap_or_default(),
            creator_pid: r.get(5)?,
            creator_comm: r.get(6)?,
            creator_uid: r.get(7)?,
            owner_uid: r.get(12)?,
            created_unix: r.get::<_, i64>(8)? as u64,
            restored_from: r.get::<_, Option<String>>(13)?.and_then(|t| serde_json::from_str(&t).ok()),
        },
        removed_unix: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        closed_at_start: r.get::<_, i64>(10)? != 0,
        usage: usage.and_then(|u| serde_json::from_str(&u).ok()),
    })
}

/// The node in row `id`.
pub(super) fn row_by_id(conn: &Connection, id: i64) -> rusqlite::Result<Option<HistoryRow>> {
    conn.query_row(&format!("SELECT {ROW_COLUMNS} FROM nodes WHERE id = ?1"), params![id], history_row).optional()
}

/// The nodes matching `q`, oldest first.
pub fn query(conn: &Connection, q: &Query) -> rusqlite::Result<Vec<HistoryRow>> {
    let since = q.since_unix.map(|s| s as i64);
    let limit = q.limit.map_or(-1, |l| l as i64);
    let mut st = conn.prepare(&format!(
        "SELECT {ROW_COLUMNS}
         FROM nodes
         WHERE (?1 IS NULL OR created_unix >= ?1 OR removed_unix IS NULL OR removed_unix >= ?1)
           AND (?2 IS NULL OR creator_comm = ?2)
           AND (?4 IS NULL OR (hierarchy = ?4 AND root = ?5))
         ORDER BY created_unix, id LIMIT ?3"
    ))?;
    let (h, root) = q.scope.as_ref().map(|(h, r)| (h.as_str(), r.as_str())).unzip();
    let rows = st.query_map(params![since, q.comm, limit, h, root], history_row)?;
    rows.collect()
}

/// The per-minute counts of entries coalesced away, since `since_unix`, of `scope` (as [`Query::scope`]).
pub fn coalesced(conn: &Connection, since_unix: Option<u64>, scope: Option<&(String, String)>) -> rusqlite::Result<Vec<CoalescedRow>> {
    let mut st = conn.prepare(
        "SELECT hierarchy, root, minute_unix, entries FROM coalesced WHERE (?1 IS NULL OR minute_unix >= ?1)
           AND (?2 IS NULL OR (hierarchy = ?2 AND root = ?3)) ORDER BY minute_unix",
    )?;
    let (h, root) = scope.map(|(h, r)| (h.as_str(), r.as_str())).unzip();
    let rows = st.query_map(params![since_unix.map(|s| (s / 60 * 60) as i64), h, root], |r| {
        Ok(CoalescedRow {
            hierarchy: r.get(0)?,
            root: r.get(1)?,
            minute_unix: r.get::<_, i64>(2)? as u64,
            entries: r.get::<_, i64>(3)? as u64,
        })
    })?;
    rows.collect()
}

/// Parses `--since`: seconds since the epoch, or a duration ago (`90s`,
/// `15m`, `2h`, `7d`).
pub fn parse_since(text: &str, now_unix: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(t) = text.parse::<u64>() {
        return Ok(t);
    }
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = num.parse().map_err(|_| format!("{text:?}: want seconds since the epoch or a duration ago like 30m, 2h, 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    Ok(now_unix.saturating_sub(n.saturating_mul(secs)))
}

