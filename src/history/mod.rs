//! History: every node that existed (its path, set, creator, created and
//! removed times, final usage) in an embedded SQLite database, and the
//! entries coalesced away per minute.
//!
//! The daemon never writes it from its loop: [`Writer`] owns the connection
//! in a thread of its own, fed by a bounded channel; a full channel drops the
//! record and counts it ([`Writer::dropped`]). The database is in WAL mode, so
//! `nsgroup history` reads it (read-only) while the daemon writes.
//!
//! Rows belong to a hierarchy (its mount point) and root: several daemons may
//! share one database. At start the daemon sends the nodes that exist
//! ([`Msg::Start`]); rows of its hierarchy and root still open but no longer
//! present were removed while no daemon watched: they are closed with the
//! start's time and `closed_at_start`, and so are other hierarchies' and
//! roots' open rows whose node is provably gone
//! ([`crate::sys::mounts::node_gone`]: its hierarchy is mounted and the
//! node's directory is not there). `nsgroup history` shows one hierarchy
//! and root's rows unless asked for all ([`Query::scope`]).
//!
//! Each node also has a bounded timeline of what happened to it
//! ([`timeline`]): limits, freezes, kills, OOM kills, pressure crossings.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OptionalExtension};

use crate::core::node::Restored;
use serde::Serialize;

mod read;
pub mod timeline;

pub use read::{coalesced, open_ro, parse_since, query, CoalescedRow, HistoryRow, Query};
pub use timeline::{Happening, Timeline, Which};

/// How many records may wait for the writer before new ones are dropped.
pub const QUEUE: usize = 8192;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    hierarchy TEXT NOT NULL,
    root TEXT NOT NULL,
    cgroup_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    ns_set TEXT NOT NULL,
    creator_pid INTEGER NOT NULL,
    creator_comm TEXT NOT NULL,
    creator_uid INTEGER NOT NULL,
    owner_uid INTEGER,
    created_unix INTEGER NOT NULL,
    removed_unix INTEGER,
    closed_at_start INTEGER NOT NULL DEFAULT 0,
    usage TEXT
);
CREATE INDEX IF NOT EXISTS nodes_open ON nodes (hierarchy, root, cgroup_id) WHERE removed_unix IS NULL;
CREATE INDEX IF NOT EXISTS nodes_created ON nodes (created_unix);
CREATE TABLE IF NOT EXISTS coalesced (
    hierarchy TEXT NOT NULL,
    root TEXT NOT NULL,
    minute_unix INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    PRIMARY KEY (hierarchy, root, minute_unix)
);
";

/// A node as recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeRow {
    pub cgroup_id: u64,
    pub path: String,
    /// Namespace kind (`/proc/<pid>/ns` name) → inode, the kinds it has.
    pub set: BTreeMap<String, u64>,
    pub creator_pid: u32,
    pub creator_comm: String,
    pub creator_uid: u32,
    /// Who owns the node (docs/semantics.md §13 "Owners").
    pub owner_uid: u32,
    pub created_unix: u64,
    /// A node `nsgroup restore` made: the checkpoint and the node it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<Restored>,
}

/// What the daemon hands the writer.
#[derive(Debug)]
pub enum Msg {
    /// The nodes that exist at start (after adoption and the first reconcile).
    Start { live: Vec<NodeRow>, now_unix: u64 },
    Created(NodeRow),
    /// A node removed, with its final usage (controller file key → value).
    Removed { node: NodeRow, removed_unix: u64, usage: BTreeMap<String, u64> },
    /// Entries coalesced away (no node made) in the minute starting at `minute_unix`.
    Coalesced { minute_unix: u64, entries: u64 },
    /// Something happened to the live node `cgroup_id` (its timeline).
    Happened { cgroup_id: u64, happening: Happening },
    /// The writer stops after what came before (other threads' [`Recorder`]s
    /// may outlive the daemon's [`Writer`]).
    Stop,
}

/// A handle that queues records for the writer from other threads (the
/// API's workers); never blocks, like [`Writer::send`].
#[derive(Clone)]
pub struct Recorder {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// Queues `msg`; a full queue drops it and counts it.
    pub fn send(&self, msg: Msg) {
        if self.tx.try_send(msg).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread and its channel.
pub struct Writer {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

/// Retention: removed nodes older than `days` (0: none) go, and beyond `rows` (0: no limit).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub days: u64,
    pub rows: u64,
}

/// Opens (creating it and its directory) the database for writing.
pub fn open_rw(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    add_column(&conn, "owner_uid", "INTEGER")?;
    add_column(&conn, "restored_from", "TEXT")?;
    timeline::migrate(&conn)?;
    // Creator names and uids: root's and its group's only.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640));
    Ok(conn)
}

impl Writer {
    /// Opens the database and starts the writer thread, for the rows of
    /// `hierarchy` (its mount point) and `root`.
    pub fn start(path: &Path, hierarchy: String, root: String, retention: Retention) -> rusqlite::Result<Writer> {
        let conn = open_rw(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("nsgroup-history".into())
            .spawn(move || write_all(conn, rx, &hierarchy, &root, retention))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Writer { tx: Some(tx), thread: Some(thread), dropped: Arc::new(AtomicU64::new(0)) })
    }

    /// Queues `msg`; never blocks (a full queue drops it and counts it).
    pub fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A handle for other threads, counted with this writer's drops.
    pub fn recorder(&self) -> Option<Recorder> {
        self.tx.as_ref().map(|tx| Recorder { tx: tx.clone(), dropped: Arc::clone(&self.dropped) })
    }

    /// Records dropped because the queue was full (or the writer had failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    /// Lets the writer finish what is queued (at exit).
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_all(mut conn: Connection, rx: Receiver<Msg>, hierarchy: &str, root: &str, retention: Retention) {
    let mut since_prune = 0u64;
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { break };
        // What has queued up meanwhile goes in one transaction.
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if let Some(at) = batch.iter().position(|m| matches!(m, Msg::Stop)) {
            batch.truncate(at);
            stopping = true;
        }
        since_prune += batch.len() as u64;
        let start = batch.iter().find_map(|m| match m {
            Msg::Start { now_unix, .. } => Some(*now_unix),
            _ => None,
        });
        let prune = start.is_some() || since_prune >= 1000;
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for msg in batch {
                apply(&tx, hierarchy, root, msg)?;
            }
            if let Some(now_unix) = start {
                let mounts = crate::sys::mounts::read_mountinfo(Path::new("/proc/self/mountinfo")).unwrap_or_default();
                close_gone_elsewhere(&tx, hierarchy, root, now_unix, &|h, p, id| crate::sys::mounts::node_gone(&mounts, h, p, id))?;
            }
            if prune {
                apply_retention(&tx, retention, crate::sys::clock::unix_now())?;
            }
            tx.commit()
        })();
        if prune {
            since_prune = 0;
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "writing the history database failed; these records are lost");
        }
    }
}

/// Databases written before a column get it: owners (their rows read as
/// their creator's: `COALESCE(owner_uid, creator_uid)`), restores (none).
fn add_column(conn: &Connection, name: &str, kind: &str) -> rusqlite::Result<()> {
    let has = conn.prepare("SELECT 1 FROM pragma_table_info('nodes') WHERE name = ?1")?.exists([name])?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE nodes ADD COLUMN {name} {kind}"))?;
    }
    Ok(())
}

fn set_json(set: &BTreeMap<String, u64>) -> String {
    serde_json::to_string(set).unwrap_or_else(|_| "{}".into())
}

fn insert(tx: &Connection, hierarchy: &str, root: &str, n: &NodeRow) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO nodes (hierarchy, root, cgroup_id, path, ns_set, creator_pid, creator_comm, creator_uid, owner_uid, created_unix, restored_from)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            hierarchy,
            root,
            n.cgroup_id as i64,
            n.path,
            set_json(&n.set),
            n.creator_pid,
            n.creator_comm,
            n.creator_uid,
            n.owner_uid,
            n.created_unix as i64,
            n.restored_from.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default())
        ],
    )?;
    Ok(())
}

fn open_row(tx: &Connection, hierarchy: &str, root: &str, cgroup_id: u64) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "SELECT id FROM nodes WHERE hierarchy = ?1 AND root = ?2 AND cgroup_id = ?3 AND removed_unix IS NULL ORDER BY id DESC LIMIT 1",
        params![hierarchy, root, cgroup_id as i64],
        |r| r.get(0),
    )
    .optional()
}

fn apply(tx: &Connection, hierarchy: &str, root: &str, msg: Msg) -> rusqlite::Result<()> {
    match msg {
        Msg::Start { live, now_unix } => {
            let ids: HashSet<u64> = live.iter().map(|n| n.cgroup_id).collect();
            let open: Vec<(i64, i64)> = {
                let mut st = tx.prepare("SELECT id, cgroup_id FROM nodes WHERE hierarchy = ?1 AND root = ?2 AND removed_unix IS NULL")?;
                let rows = st.query_map(params![hierarchy, root], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut recorded = HashSet::new();
            for (row, cgroup_id) in open {
                if ids.contains(&(cgroup_id as u64)) {
                    recorded.insert(cgroup_id as u64);
                } else {
                    tx.execute("UPDATE nodes SET removed_unix = ?1, closed_at_start = 1 WHERE id = ?2", params![now_unix as i64, row])?;
                }
            }
            for n in live.iter().filter(|n| !recorded.contains(&n.cgroup_id)) {
                insert(tx, hierarchy, root, n)?;
            }
        }
        Msg::Created(n) => {
            if open_row(tx, hierarchy, root, n.cgroup_id)?.is_none() {
                insert(tx, hierarchy, root, &n)?;
            }
        }
        Msg::Removed { node, removed_unix, usage } => {
            let row = match open_row(tx, hierarchy, root, node.cgroup_id)? {
                Some(row) => row,
                None => {
                    insert(tx, hierarchy, root, &node)?;
                    tx.last_insert_rowid()
                }
            };
            let usage = serde_json::to_string(&usage).unwrap_or_else(|_| "{}".into());
            tx.execute("UPDATE nodes SET removed_unix = ?1, usage = ?2 WHERE id = ?3", params![removed_unix as i64, usage, row])?;
        }
        Msg::Coalesced { minute_unix, entries } => {
            tx.execute(
                "INSERT INTO coalesced (hierarchy, root, minute_unix, entries) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (hierarchy, root, minute_unix) DO UPDATE SET entries = entries + excluded.entries",
                params![hierarchy, root, minute_unix as i64, entries as i64],
            )?;
        }
        // The live node's row; else one removed since (a kill's record,
        // from an API worker, may come after the removal it caused); a node
        // never recorded has no timeline to add to.
        Msg::Stop => {}
        Msg::Happened { cgroup_id, happening } => {
            let row = match open_row(tx, hierarchy, root, cgroup_id)? {
                Some(row) => Some(row),
                None => timeline::removed_since(tx, hierarchy, root, cgroup_id, happening.at_unix)?,
            };
            if let Some(row) = row {
                timeline::record(tx, row, &happening)?;
            }
        }
    }
    Ok(())
}

/// At a start: closes the open rows of other hierarchies and roots whose
/// node `gone` proves gone (given its hierarchy, path and cgroup id), with
/// the start's time and `closed_at_start`.
fn close_gone_elsewhere(tx: &Connection, hierarchy: &str, root: &str, now_unix: u64, gone: &dyn Fn(&str, &str, u64) -> bool) -> rusqlite::Result<()> {
    let open: Vec<(i64, String, String, i64)> = {
        let mut st = tx.prepare("SELECT id, hierarchy, path, cgroup_id FROM nodes WHERE removed_unix IS NULL AND NOT (hierarchy = ?1 AND root = ?2)")?;
        let rows = st.query_map(params![hierarchy, root], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (row, h, path, cgroup_id) in open {
        if gone(&h, &path, cgroup_id as u64) {
            tx.execute("UPDATE nodes SET removed_unix = ?1, closed_at_start = 1 WHERE id = ?2", params![now_unix as i64, row])?;
        }
    }
    Ok(())
}

/// Deletes removed nodes older than the retention's days, then the oldest
/// removed ones beyond its rows.
pub fn apply_retention(tx: &Connection, r: Retention, now_unix: u64) -> rusqlite::Result<()> {
    if r.days > 0 {
        let before = now_unix.saturating_sub(r.days * 86_400) as i64;
        tx.execute("DELETE FROM nodes WHERE removed_unix IS NOT NULL AND removed_unix < ?1", params![before])?;
        tx.execute("DELETE FROM coalesced WHERE minute_unix < ?1", params![before])?;
    }
    if r.rows > 0 {
        let total: i64 = tx.query_row("SELECT COUNT(*) FROM nodes", [], |row| row.get(0))?;
        let excess = total - r.rows as i64;
        if excess > 0 {
            tx.execute(
                "DELETE FROM nodes WHERE id IN (SELECT id FROM nodes WHERE removed_unix IS NOT NULL ORDER BY removed_unix, id LIMIT ?1)",
                params![excess],
            )?;
        }
    }
    timeline::orphans(tx)?;
    Ok(())
}

/// The database path `nsgroup history` reads by default.
pub fn default_path() -> PathBuf {
    PathBuf::from(crate::config::DEFAULT_HISTORY_DB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, comm: &str) -> NodeRow {
        NodeRow {
            cgroup_id: id,
            path: format!("/t/node_{id}"),
            set: [("uts".to_string(), 4026531838 + id)].into(),
            creator_pid: id as u32,
            creator_comm: comm.into(),
            creator_uid: 200_000 + id as u32,
            owner_uid: 1000,
            created_unix: 1000 + id,
            restored_from: None,
        }
    }

    #[test]
    fn a_database_from_before_owners_gets_the_column_and_reads_creators_as_owners() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("old.sqlite");
        let old = Connection::open(&db).unwrap();
        old.execute_batch(&SCHEMA.replace("    owner_uid INTEGER,\n", "")).unwrap();
        old.execute(
            "INSERT INTO nodes (hierarchy, root, cgroup_id, path, ns_set, creator_pid, creator_comm, creator_uid, created_unix) VALUES ('/m', '/t', 9, '/t/node_9', '{}', 9, 'old', 1234, 5)",
            [],
        )
        .unwrap();
        drop(old);
        let conn = open_rw(&db).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(row(1, "new"))).unwrap();
        let rows = query(&open_ro(&db).unwrap(), &Query::default()).unwrap();
        let owners: Vec<(u32, u32)> = rows.iter().map(|r| (r.node.creator_uid, r.node.owner_uid)).collect();
        assert_eq!(owners, vec![(1234, 1234), (200_001, 1000)]);
    }

    #[test]
    fn created_removed_and_closed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let conn = open_rw(&db).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(row(1, "unshare"))).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(row(2, "sleep"))).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(row(3, "sleep"))).unwrap();
        // Another daemon's rows are left alone.
        apply(&conn, "/other", "/t", Msg::Created(row(2, "x"))).unwrap();
        apply(&conn, "/m", "/t", Msg::Removed { node: row(1, "unshare"), removed_unix: 2000, usage: [("pids.peak".into(), 3)].into() })
            .unwrap();
        // Restart: 2 is gone, 3 lives on, 4 was adopted.
        apply(&conn, "/m", "/t", Msg::Start { live: vec![row(3, "sleep"), row(4, "sh")], now_unix: 3000 }).unwrap();
        apply(&conn, "/m", "/t", Msg::Coalesced { minute_unix: 60, entries: 2 }).unwrap();
        apply(&conn, "/m", "/t", Msg::Coalesced { minute_unix: 60, entries: 3 }).unwrap();
        let ro = open_ro(&db).unwrap();
        let all = query(&ro, &Query::default()).unwrap();
        let mine: Vec<_> = all.iter().filter(|r| r.hierarchy == "/m").collect();
        assert_eq!(mine.len(), 4, "{all:?}");
        assert_eq!((mine[0].removed_unix, mine[0].closed_at_start), (Some(2000), false));
        assert_eq!(mine[0].usage.as_ref().unwrap()["pids.peak"], 3);
        assert_eq!((mine[1].removed_unix, mine[1].closed_at_start), (Some(3000), true));
        assert_eq!(mine[2].removed_unix, None);
        assert_eq!(mine[3].node.creator_comm, "sh");
        assert!(all.iter().any(|r| r.hierarchy == "/other" && r.removed_unix.is_none()));
        let q = Query { comm: Some("unshare".into()), ..Query::default() };
        assert_eq!(query(&ro, &q).unwrap().len(), 1);
        assert_eq!(coalesced(&ro, None, None).unwrap()[0].entries, 5);
        let scope = Some(("/other".to_string(), "/t".to_string()));
        assert!(coalesced(&ro, None, scope.as_ref()).unwrap().is_empty());
        let theirs = query(&ro, &Query { scope, ..Query::default() }).unwrap();
        assert_eq!(theirs.iter().map(|r| r.node.creator_comm.as_str()).collect::<Vec<_>>(), ["x"], "one daemon's rows");
        // Retention by rows drops the oldest removed first.
        apply_retention(&conn, Retention { days: 0, rows: 4 }, 4000).unwrap();
        assert_eq!(query(&ro, &Query::default()).unwrap().len(), 4);
        assert!(query(&ro, &Query::default()).unwrap().iter().all(|r| r.node.creator_comm != "unshare"));
        // And by age.
        apply_retention(&conn, Retention { days: 1, rows: 0 }, 3000 + 86_400 * 2).unwrap();
        assert!(query(&ro, &Query::default()).unwrap().iter().all(|r| r.removed_unix.is_none()));
    }

    #[test]
    fn a_start_closes_other_daemons_rows_only_when_their_node_is_provably_gone() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_rw(&dir.path().join("h.sqlite")).unwrap();
        apply(&conn, "/gone", "/t", Msg::Created(row(1, "a"))).unwrap();
        apply(&conn, "/gone", "/t", Msg::Created(row(2, "b"))).unwrap();
        apply(&conn, "/m", "/t", Msg::Created(row(3, "mine"))).unwrap();
        let gone = |h: &str, _: &str, id: u64| h == "/gone" && id == 1;
        close_gone_elsewhere(&conn, "/m", "/t", 3000, &gone).unwrap();
        let rows = query(&conn, &Query::default()).unwrap();
        let state: Vec<(&str, Option<u64>, bool)> = rows.iter().map(|r| (r.node.creator_comm.as_str(), r.removed_unix, r.closed_at_start)).collect();
        assert_eq!(state, [("a", Some(3000), true), ("b", None, false), ("mine", None, false)]);
    }

    #[test]
    fn a_node_is_gone_only_in_a_mounted_hierarchy_without_its_directory() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("node_5")).unwrap();
        let ino = std::fs::metadata(dir.path().join("node_5")).unwrap().ino();
        let at = dir.path().display().to_string();
        let line = format!("40 25 0:35 / {at} rw,relatime shared:14 - cgroup2 cgroup2 rw\n");
        let mounts = crate::sys::mounts::parse_mountinfo(&line);
        use crate::sys::mounts::node_gone;
        assert!(!node_gone(&mounts, &at, "/node_5", ino));
        assert!(node_gone(&mounts, &at, "/node_5", ino + 1), "another cgroup at its path");
        assert!(node_gone(&mounts, &at, "/node_6", 9));
        assert!(!node_gone(&[], &at, "/node_6", 9), "an unmounted hierarchy proves nothing");
    }

    #[test]
    fn a_restored_node_names_the_node_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let conn = open_rw(&db).unwrap();
        apply(&conn, "/m", "/t", Msg::Removed { node: row(1, "unshare"), removed_unix: 2000, usage: BTreeMap::new() }).unwrap();
        let from = Restored { dir: "/var/lib/img".into(), restored_unix: 2100, from_path: "/t/node_1".into(), from_cgroup_id: 1 };
        apply(&conn, "/m", "/t", Msg::Created(NodeRow { restored_from: Some(from.clone()), ..row(2, "sh") })).unwrap();
        let rows = query(&open_ro(&db).unwrap(), &Query::default()).unwrap();
        assert_eq!(rows[0].node.restored_from, None);
        assert_eq!(rows[1].node.restored_from.as_ref(), Some(&from));
        assert_eq!(rows[1].node.restored_from.as_ref().map(|f| f.from_cgroup_id), Some(rows[0].node.cgroup_id));
        let v = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(v["restored_from"]["from_path"], "/t/node_1");
        assert!(serde_json::to_value(&rows[0]).unwrap().get("restored_from").is_none());
    }

    #[test]
    fn since_parses_times_and_durations() {
        assert_eq!(parse_since("1700000000", 0), Ok(1_700_000_000));
        assert_eq!(parse_since("2h", 10_000), Ok(10_000 - 7200));
        assert_eq!(parse_since("7d", 1_000_000), Ok(1_000_000 - 7 * 86_400));
        assert!(parse_since("yesterday", 0).is_err());
    }

    #[test]
    fn the_writer_stops_while_a_recorder_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let w = Writer::start(&db, "/m".into(), "/t".into(), Retention { days: 0, rows: 0 }).unwrap();
        let recorder = w.recorder().unwrap();
        w.send(Msg::Created(row(1, "x")));
        drop(w);
        assert_eq!(query(&open_ro(&db).unwrap(), &Query::default()).unwrap().len(), 1, "what came before is written");
        recorder.send(Msg::Created(row(2, "x")));
    }

    #[test]
    fn the_writer_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(&dir.path().join("h.sqlite"), "/m".into(), "/t".into(), Retention { days: 0, rows: 0 }).unwrap();
        for i in 0..(QUEUE as u64 * 3) {
            w.send(Msg::Created(row(i, "x")));
        }
        drop(w);
    }
}
