//! `nsgroup top`: the nodes live, one row each, nested (like systemd-cgtop);
//! keys freeze, thaw and kill the selected node through the API. Batch mode
//! prints plain-text frames, `--json` one JSON line per frame. Each interval
//! samples cgroupfs and /proc once; keys only redraw.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use nsgroup::api::direct::{self, Reach};
use nsgroup::api::proto::{Request, Target};
use nsgroup::config::Config;
use nsgroup::core::cgpath::canonical;
use nsgroup::core::node::CgroupId;
use nsgroup::core::escape::Escaped;
use nsgroup::model::top::{Filter, Rows, Sampler, SortKey};
use nsgroup::model::{Creator, Units};
use nsgroup::render::top::{self as frame, DaemonState, Header};
use nsgroup::sys::clock::unix_now;
use nsgroup::sys::locate::locate;
use nsgroup::sys::procfs::ProcFs;
use nsgroup::sys::status_file::{status_path, Counters, StatusFile};

use super::{require_cgroup, At};

/// `nsgroup top`'s arguments.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    at: At,
    /// The subtree to show (and the daemon's root, for its status). Default:
    /// the configuration's root, else /.
    #[arg(long, value_name = "CGROUP", value_parser = canonical)]
    root: Option<String>,
    /// Batch mode: print plain-text frames to stdout, no keys (like top -b).
    #[arg(short = 'b', long)]
    batch: bool,
    /// Stop after this many frames (default: forever; in batch mode too).
    #[arg(short = 'n', long, value_name = "N")]
    iterations: Option<u64>,
    /// Seconds between samples.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 2.0, value_parser = delay)]
    delay: f64,
    /// One JSON object per frame and line (implies batch mode; docs/operations.md).
    #[arg(long)]
    json: bool,
    /// The column siblings are sorted by.
    #[arg(short = 's', long, value_enum, default_value_t = Key(SortKey::Cpu))]
    sort: Key,
    /// Reverse the order.
    #[arg(short = 'r', long)]
    reverse: bool,
    /// Only nodes of this owner (and the cgroups leading to them).
    #[arg(long, value_name = "UID")]
    owner: Option<u32>,
    /// Only nodes whose creator's command contains this.
    #[arg(long, value_name = "TEXT")]
    command: Option<String>,
    /// The daemon's API socket, for the keys (default: $NSGROUP_SOCKET, else /run/nsgroup/api.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Configuration file, for the root and status.dir. Default: /etc/nsgroup/nsgroup.toml if present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn delay(s: &str) -> Result<f64, String> {
    let d: f64 = s.parse().map_err(|_| format!("{s} is not a number of seconds"))?;
    if d.is_finite() && (0.1..=3600.0).contains(&d) { Ok(d) } else { Err("between 0.1 and 3600 seconds".into()) }
}

/// [`SortKey`] as a flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key(SortKey);

flag_value!(Key, SortKey::ALL);

/// Where the daemon's state is read, and the rate of its placements.
struct StatusReader {
    status: Option<PathBuf>,
    last: Option<(Instant, u64)>,
}

impl StatusReader {
    /// The daemon's state from its status file; `None` when none runs.
    fn read(&mut self) -> Option<DaemonState> {
        let text = std::fs::read_to_string(self.status.as_ref()?).ok()?;
        let s: StatusFile = serde_json::from_str(&text).ok()?;
        if !std::path::Path::new(&format!("/proc/{}", s.pid)).exists() {
            return None;
        }
        let Counters { placements, refusals, live_nodes, .. } = s.counters;
        let now = Instant::now();
        let per_s = self.last.map(|(at, before)| placements.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64().max(1e-3));
        self.last = Some((now, placements));
        Some(DaemonState { pid: s.pid, source: s.source, live_nodes, placements_per_s: per_s, refusals })
    }
}

/// One interval's sample and what the view adds to it.
struct State {
    sampler: Sampler,
    /// Where the daemon's API is (for the creators of others' nodes).
    reach: Reach,
    daemon: StatusReader,
    started: Instant,
    rows: Rows,
    header: Header,
}

impl State {
    fn sample(&mut self) -> anyhow::Result<()> {
        let now = unix_now();
        let Some((rows, _unreadable)) = self.sampler.sample(self.started.elapsed().as_secs_f64(), now)? else {
            bail!("the subtree vanished while being read");
        };
        self.header.sampled = rows.len();
        self.header.now_unix = now;
        self.header.daemon = self.daemon.read();
        self.rows = rows;
        // Another user's nodes' records are root's to read: the daemon's
        // list tells who made them (a user sees everything).
        if self.rows.lack_creators() {
            if let Ok(answer) = direct::answer(&self.reach, &Request::List { all: false }) {
                self.rows.fill_creators(&creators_in(&answer["data"]["tree"]));
            }
        }
        Ok(())
    }
}

/// The creators of the nodes in a `list` answer's tree, by cgroup id.
fn creators_in(tree: &serde_json::Value) -> HashMap<CgroupId, Creator> {
    let mut out = HashMap::new();
    let mut stack = vec![tree];
    while let Some(n) = stack.pop() {
        let c = &n["creator"];
        if let (Some(id), Some(pid), Some(comm), Some(uid), Some(owner)) =
            (n["cgroup_id"].as_u64(), c["pid"].as_u64(), c["comm"].as_str(), c["uid"].as_u64(), c["owner"].as_u64())
        {
            let created_unix = c["created_unix"].as_u64().unwrap_or(0);
            out.insert(id, Creator { pid: pid as u32, comm: comm.to_string(), uid: uid as u32, owner: owner as u32, created_unix });
        }
        stack.extend(n["children"].as_array().into_iter().flatten());
    }
    out
}

/// Runs `nsgroup top`.
pub fn top(args: TopArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let at = args.at.hierarchy.clone().or(config.hierarchy.clone());
    let located = locate(at.as_deref(), false)?;
    let root = args.root.clone().unwrap_or(config.root.clone());
    require_cgroup(&located.hierarchy, &root)?;
    let status = (!config.status.dir.as_os_str().is_empty())
        .then(|| status_path(&config.status.dir, &located.hierarchy, &root).ok())
        .flatten();
    let proc = ProcFs::new("/proc");
    let me = std::process::id();
    let base = proc.ns_set(me, me)?.unwrap_or_default();
    let units = Units { clock_ticks: rustix::param::clock_ticks_per_second(), page_size: rustix::param::page_size() as u64 };
    let reach = Reach { socket: super::api::socket_path(args.socket.as_deref()), hierarchy: Some(located.hierarchy.mount().to_path_buf()) };
    let header = Header {
        sort: Some(args.sort.0),
        reverse: args.reverse,
        filter: Filter { owner: args.owner, command: args.command.clone() },
        ..Header::default()
    };
    let mut state = State {
        sampler: Sampler::new(located.hierarchy.clone(), root, proc, base, units),
        reach: reach.clone(),
        daemon: StatusReader { status, last: None },
        started: Instant::now(),
        rows: Rows::default(),
        header,
    };
    let interval = Duration::from_secs_f64(args.delay);
    if args.batch || args.json {
        return batch(&mut state, &args, interval);
    }
    if !io::stdout().is_terminal() {
        bail!("nsgroup top needs a terminal; -b prints plain-text frames, --json JSON lines");
    }
    interactive(&mut state, &reach, interval, args.iterations)
}

fn batch(state: &mut State, args: &TopArgs, interval: Duration) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    let mut frames = 0;
    loop {
        state.sample()?;
        let h = &state.header;
        let rows = state.rows.view(h.sort.unwrap_or(SortKey::Cpu), h.reverse, &h.filter);
        let written = if args.json { frame::write_json(&mut out, h, &rows) } else { frame::write_text(&mut out, h, &rows, None) };
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e).context("writing a frame to stdout"),
        }
        frames += 1;
        if args.iterations.is_some_and(|n| frames >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(interval);
    }
}

/// The terminal in raw mode on the alternate screen, restored when dropped.
struct Screen(Terminal<CrosstermBackend<io::Stdout>>);

impl Screen {
    fn open() -> anyhow::Result<Screen> {
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        crossterm::execute!(io::stdout(), EnterAlternateScreen).context("entering the alternate screen")?;
        Ok(Screen(Terminal::new(CrosstermBackend::new(io::stdout())).context("opening the terminal")?))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
        let _ = crossterm::execute!(io::stdout(), LeaveAlternateScreen);
        let _ = self.0.show_cursor();
    }
}

/// What the keys change between samples.
struct View {
    /// The selected row, by cgroup id (it stays selected when rows move).
    selected: Option<u64>,
    status: String,
    /// Typing a command filter: the text so far.
    typing: Option<String>,
}

fn interactive(state: &mut State, reach: &Reach, interval: Duration, iterations: Option<u64>) -> anyhow::Result<ExitCode> {
    let mut screen = Screen::open()?;
    let mut view = View { selected: None, status: String::new(), typing: None };
    let mut frames = 0u64;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            state.sample()?;
            frames += 1;
            next = Instant::now() + interval;
        }
        let h = &state.header;
        let rows = state.rows.view(h.sort.unwrap_or(SortKey::Cpu), h.reverse, &h.filter);
        let index = view.selected.and_then(|id| rows.iter().position(|r| r.cgroup_id == id));
        // At first the first node (another user's nodes may not look like
        // nodes: their records are root's to read), else the first row below the top.
        let index = index.or_else(|| rows.iter().position(|r| r.node)).or_else(|| rows.get(1).map(|_| 1)).or((!rows.is_empty()).then_some(0));
        view.selected = index.map(|i| rows[i].cgroup_id);
        let status = match &view.typing {
            Some(t) => format!("command filter: {}_", Escaped(t)),
            None => view.status.clone(),
        };
        screen.0.draw(|f| frame::draw(f, h, &rows, index, &status)).context("drawing")?;
        // Any row below the top is asked about: the daemon says what is a node and whose.
        let target = index.filter(|&i| rows[i].depth > 0).map(|i| rows[i].path.clone());
        let count = rows.len();
        drop(rows);
        if iterations.is_some_and(|n| frames >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        if !event::poll(next.saturating_duration_since(Instant::now())).context("reading the terminal")? {
            continue;
        }
        let Event::Key(key) = event::read().context("reading the terminal")? else { continue };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        if let Some(text) = view.typing.as_mut() {
            match key.code {
                KeyCode::Enter => {
                    state.header.filter.command = Some(text.clone()).filter(|t| !t.is_empty());
                    view.typing = None;
                }
                KeyCode::Esc => view.typing = None,
                KeyCode::Backspace => drop(text.pop()),
                KeyCode::Char(c) if text.len() < 64 => text.push(c),
                _ => {}
            }
            continue;
        }
        match on_key(key, state, &mut view, index, count) {
            Some(Action::Quit) => return Ok(ExitCode::SUCCESS),
            Some(Action::Act(verb)) => {
                view.status = match target {
                    Some(path) => act(reach, verb, &path),
                    None => "select a node first (the top is none)".into(),
                };
                next = Instant::now();
            }
            None => {}
        }
    }
}

enum Action {
    Quit,
    Act(Verb),
}

#[derive(Clone, Copy)]
enum Verb {
    Freeze,
    Thaw,
    Kill,
}

/// Applies a key to the view; what it asks beyond.
fn on_key(key: KeyEvent, state: &mut State, view: &mut View, index: Option<usize>, count: usize) -> Option<Action> {
    let h = &mut state.header;
    let mut sort_by = |k: SortKey| {
        h.sort = Some(k);
        None
    };
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Action::Quit),
        KeyCode::Char('f') => Some(Action::Act(Verb::Freeze)),
        KeyCode::Char('t') => Some(Action::Act(Verb::Thaw)),
        KeyCode::Char('k') => Some(Action::Act(Verb::Kill)),
        KeyCode::Char('c') => sort_by(SortKey::Cpu),
        KeyCode::Char('m') => sort_by(SortKey::Memory),
        KeyCode::Char('s') => sort_by(SortKey::Swap),
        KeyCode::Char('p') => sort_by(SortKey::Pids),
        KeyCode::Char('i') => sort_by(SortKey::Io),
        KeyCode::Char('n') => sort_by(SortKey::Rx),
        KeyCode::Char('P') => sort_by(SortKey::Psi),
        KeyCode::Char('a') => sort_by(SortKey::Age),
        KeyCode::Char('o') => sort_by(SortKey::Owner),
        KeyCode::Char('e') => sort_by(SortKey::Command),
        KeyCode::Char('.') => sort_by(SortKey::Name),
        KeyCode::Char('r') => {
            h.reverse = !h.reverse;
            None
        }
        KeyCode::Char('u') => {
            let me = rustix::process::getuid().as_raw();
            h.filter.owner = if h.filter.owner.is_some() { None } else { Some(me) };
            None
        }
        KeyCode::Char('/') => {
            view.typing = Some(h.filter.command.clone().unwrap_or_default());
            None
        }
        KeyCode::Up | KeyCode::Down | KeyCode::PageUp | KeyCode::PageDown | KeyCode::Home | KeyCode::End => {
            let i = index.unwrap_or(0) as i64;
            let to = match key.code {
                KeyCode::Up => i - 1,
                KeyCode::Down => i + 1,
                KeyCode::PageUp => i - 20,
                KeyCode::PageDown => i + 20,
                KeyCode::Home => 0,
                _ => count as i64 - 1,
            };
            let to = to.clamp(0, count.saturating_sub(1) as i64) as usize;
            let rows = state.rows.view(h.sort.unwrap_or(SortKey::Cpu), h.reverse, &h.filter);
            view.selected = rows.get(to).map(|r| r.cgroup_id);
            None
        }
        _ => None,
    }
}

/// Carries out a verb through the API (or directly as root without a
/// daemon); the status line that says how it went.
fn act(reach: &Reach, verb: Verb, path: &str) -> String {
    let target = Target::Path(path.to_string());
    let (request, done) = match verb {
        Verb::Freeze => (Request::Freeze { target }, "froze"),
        Verb::Thaw => (Request::Thaw { target }, "thawed"),
        Verb::Kill => (Request::Kill { target }, "killed"),
    };
    match direct::answer(reach, &request) {
        Ok(a) if a["type"] == "error" => format!("refused: {}", Escaped(a["error"]["message"].as_str().unwrap_or("the daemon refused"))),
        Ok(_) => format!("{done} {}", Escaped(path)),
        Err(e) => format!("failed: {e}"),
    }
}
