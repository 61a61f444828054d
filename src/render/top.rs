//! `nsgroup top`'s frames: the header and one line per row, as plain text
//! (batch mode), as a JSON line, or drawn with ratatui in a terminal. Every
//! cell comes from [`cells`], so the three agree.

use std::io::{self, Write};

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table, TableState};
use serde::Serialize;

use super::text::{age, bytes};
use crate::core::escape::Escaped;
use crate::model::top::{Filter, Row, SortKey};

/// The columns, with their headings and widths (the last takes the rest).
pub const HEADINGS: [(&str, u16); 13] = [
    ("NAME", 28),
    ("CPU%", 6),
    ("MEM", 7),
    ("PEAK", 7),
    ("SWAP", 7),
    ("PIDS", 5),
    ("IO/s", 7),
    ("RX/s", 7),
    ("TX/s", 7),
    ("PSI c/m/io", 14),
    ("AGE", 6),
    ("OWNER", 6),
    ("COMMAND", 16),
];

/// The daemon's state as its status file tells it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DaemonState {
    pub pid: u32,
    /// The event source and its hooks.
    pub source: String,
    pub live_nodes: u64,
    /// Since the previous frame; none at the first.
    pub placements_per_s: Option<f64>,
    pub refusals: u64,
}

/// What a frame's header says.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// None: no daemon runs (the figures come from cgroupfs and /proc alone).
    pub daemon: Option<DaemonState>,
    pub now_unix: u64,
    pub sort: Option<SortKey>,
    pub reverse: bool,
    pub filter: Filter,
    /// Rows sampled (before the filter).
    pub sampled: usize,
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn rate(v: Option<f64>) -> String {
    opt(v, |r| bytes(r.round() as u64))
}

/// A row's cells, in [`HEADINGS`]' order; a figure not read is `-`.
pub fn cells(r: &Row) -> [String; 13] {
    let psi = if [r.psi_cpu, r.psi_memory, r.psi_io].iter().all(Option::is_none) {
        "-".to_string()
    } else {
        let one = |v: Option<f64>| opt(v, |x| format!("{x:.1}"));
        format!("{}/{}/{}", one(r.psi_cpu), one(r.psi_memory), one(r.psi_io))
    };
    [
        format!("{}{}", "  ".repeat(r.depth), Escaped(&r.name)),
        opt(r.cpu_percent, |c| format!("{c:.1}")),
        opt(r.memory_bytes, bytes),
        opt(r.memory_peak_bytes, bytes),
        opt(r.swap_bytes, bytes),
        r.pids.to_string(),
        rate(r.io_bytes_per_s),
        rate(r.rx_bytes_per_s),
        rate(r.tx_bytes_per_s),
        psi,
        opt(r.age_s, age),
        opt(r.owner, |o| o.to_string()),
        opt(r.command.as_deref(), |c| Escaped(c).to_string()),
    ]
}

/// The header's lines.
pub fn header_lines(h: &Header, shown: usize) -> [String; 2] {
    let daemon = match &h.daemon {
        Some(d) => format!(
            "daemon {} ({}): nodes {}, placements/s {}, refusals {}",
            d.pid,
            d.source,
            d.live_nodes,
            opt(d.placements_per_s, |p| format!("{p:.1}")),
            d.refusals
        ),
        None => "no daemon: read from cgroupfs and /proc".to_string(),
    };
    let mut view = format!("rows {shown}/{}", h.sampled);
    if let Some(k) = h.sort {
        view += &format!(", sorted by {}{}", k.name(), if h.reverse { " (reversed)" } else { "" });
    }
    if let Some(o) = h.filter.owner {
        view += &format!(", owner {o}");
    }
    if let Some(c) = &h.filter.command {
        view += &format!(", command ~ {}", Escaped(c));
    }
    [format!("nsgroup top - {} - {daemon}", clock(h.now_unix)), view]
}

/// `HH:MM:SS` (UTC) of a Unix time.
fn clock(unix: u64) -> String {
    format!("{:02}:{:02}:{:02}", unix / 3600 % 24, unix / 60 % 60, unix % 60)
}

/// Writes one plain-text frame: the header, the headings, a line per row,
/// a blank line; lines cut to `width` when given.
pub fn write_text(out: &mut impl Write, h: &Header, rows: &[&Row], width: Option<usize>) -> io::Result<()> {
    let cut = |s: String| match width {
        Some(w) if s.chars().count() > w => s.chars().take(w).collect(),
        _ => s,
    };
    for l in header_lines(h, rows.len()) {
        writeln!(out, "{}", cut(l))?;
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (c, (_, w))) in cells.iter().zip(HEADINGS).enumerate() {
            if i + 1 == HEADINGS.len() {
                s += c;
            } else {
                s += &format!("{c:<w$} ", w = usize::from(w));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", cut(line(&HEADINGS.map(|(h, _)| h.to_string()))))?;
    for r in rows {
        writeln!(out, "{}", cut(line(&cells(r))))?;
    }
    writeln!(out)
}

#[derive(Serialize)]
struct JsonFrame<'a> {
    unix: u64,
    daemon: &'a Option<DaemonState>,
    rows: &'a [&'a Row],
}

/// Writes one frame as a JSON line: `{"unix", "daemon", "rows": [...]}`.
pub fn write_json(out: &mut impl Write, h: &Header, rows: &[&Row]) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &JsonFrame { unix: h.now_unix, daemon: &h.daemon, rows })?;
    writeln!(out)
}

/// Draws a frame in the terminal: the header, the table with the selected
/// row highlighted (scrolled into view), the status line, the keys.
pub fn draw(f: &mut ratatui::Frame, h: &Header, rows: &[&Row], selected: Option<usize>, status: &str) {
    let [head, table, foot] = Layout::vertical([Constraint::Length(2), Constraint::Min(1), Constraint::Length(2)]).areas(f.area());
    f.render_widget(Paragraph::new(header_lines(h, rows.len()).map(Line::from).to_vec()), head);
    let widths = HEADINGS.map(|(_, w)| Constraint::Length(w));
    let mut widths = widths.to_vec();
    *widths.last_mut().expect("columns") = Constraint::Min(8);
    let headings = TableRow::new(HEADINGS.map(|(h, _)| Cell::from(h))).style(Style::new().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| TableRow::new(cells(r).map(Cell::from)));
    let t = Table::new(body, widths).header(headings).row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(selected);
    f.render_stateful_widget(t, table, &mut state);
    let keys = "q quit  f freeze  t thaw  k kill  up/down select  sort: c cpu m mem s swap p pids i io n net P psi a age o owner e command . name  r reverse  u mine  / command";
    f.render_widget(Paragraph::new(vec![Line::from(status.to_string()), Line::from(keys)]), foot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::top::{Previous, Rows};
    use crate::model::{Creator, Readings, TreeNode, Usage};

    fn tree() -> TreeNode {
        let leaf = TreeNode {
            path: "/t/node_7".into(),
            name: "node_7".into(),
            cgroup_id: 7,
            node: true,
            creator: Some(Creator { pid: 7, comm: "sleep\u{1b}[2J".into(), uid: 0, owner: 0, created_unix: 40 }),
            usage: Usage { cgroup: [("memory_bytes".to_string(), 2 << 20)].into(), ..Usage::default() },
            subtree_usage: Usage { tasks: 1, ..Usage::default() },
            ..leaf_like()
        };
        TreeNode { path: "/t".into(), name: "t".into(), cgroup_id: 1, children: vec![leaf], ..leaf_like() }
    }

    fn leaf_like() -> TreeNode {
        TreeNode {
            path: String::new(),
            name: String::new(),
            cgroup_id: 0,
            node: false,
            namespaces: vec![],
            creator: None,
            tasks: vec![],
            usage: Usage::default(),
            subtree_usage: Usage::default(),
            unreadable_tasks: 0,
            readings: Readings::default(),
            children: vec![],
        }
    }

    #[test]
    fn a_text_frame_has_the_header_and_a_row_per_node_escaped() {
        let (rows, _) = Rows::of(&tree(), &Previous::default(), 0.0, 100);
        let view = rows.view(SortKey::Name, false, &Filter::default());
        let h = Header { now_unix: 100, sampled: rows.len(), ..Header::default() };
        let mut out = Vec::new();
        write_text(&mut out, &h, &view, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("no daemon"), "{text}");
        assert!(lines[2].starts_with("NAME ") && lines[2].ends_with("COMMAND"), "{text}");
        assert!(lines[4].starts_with("  node_7 ") && lines[4].contains(" 2.0M ") && lines[4].ends_with(" 1m00s  0      sleep\\x1b[2J"), "{text}");
        assert!(!text.contains('\u{1b}'));
        let mut out = Vec::new();
        write_json(&mut out, &h, &view).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rows"][1]["command"], "sleep\u{1b}[2J");
        assert_eq!(v["rows"][1]["cpu_percent"], serde_json::Value::Null);
        assert_eq!(v["daemon"], serde_json::Value::Null);
    }
}
