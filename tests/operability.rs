//! Operability end to end: the metrics endpoint and textfile, the Grafana
//! dashboard's metric names, history (created, removed, closed at start),
//! `nsgroup status`, SIGHUP. Each test uses a private hierarchy and its own
//! database, status directory and loopback port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A configuration with the test's own history database and status
/// directory, no API socket, and `extra` lines.
struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: String,
    db: PathBuf,
}

fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    let run = dir.path().join("run");
    let text = format!(
        "{extra}\n[api]\nsocket = \"\"\n[history]\ndatabase = \"{}\"\n[status]\ndir = \"{}\"\n",
        db.display(),
        run.display()
    );
    let config = dir.path().join("nsgroup.toml");
    std::fs::write(&config, text).unwrap();
    Setup { dir: dir.path().to_path_buf(), config: config.display().to_string(), db, _dir: dir }
}

fn nsgroup(args: &[&str]) -> std::process::Output {
    Command::new(NSGROUP).args(args).output().unwrap()
}

fn status_json(h: &Hier, s: &Setup) -> serde_json::Value {
    let mount = h.mount.display().to_string();
    let out = nsgroup(&["status", "--json", "--hierarchy", &mount, "--root", &h.root, "--config", &s.config]);
    assert!(out.status.success(), "status: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The daemon's metrics address (it was started with port 0), from `nsgroup status`.
fn metrics_addr(h: &Hier, s: &Setup) -> String {
    status_json(h, s)["metrics_listen"].as_str().expect("metrics_listen in the status").to_string()
}

fn get(addr: &str, path: &str, openmetrics: bool) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = if openmetrics { "Accept: application/openmetrics-text; version=1.0.0\r\n" } else { "" };
    write!(c, "GET {path} HTTP/1.0\r\nHost: test\r\n{accept}\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `series` (name with labels, exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every sample line is `name{labels} value` with a number for the value.
fn assert_parseable(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{line}");
        names.push(name.to_string());
    }
    names
}

fn spawn_nodes(h: &mut Hier, n: usize) -> Vec<u32> {
    let pids: Vec<u32> = (0..n).map(|_| h.spawn(&["unshare", "--uts", "sleep", "60"]).pid).collect();
    for &pid in &pids {
        wait_for("the node", || h.in_own_node(pid, &h.root));
    }
    pids
}

#[test]
fn the_endpoint_counts_placements_and_shows_nodes() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let s = setup("");
    let d = Daemon::start(&h, &["--config", &s.config, "--metrics", "127.0.0.1:0"]);
    let addr = metrics_addr(&h, &s);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let pids = spawn_nodes(&mut h, 3);
    let mut text = String::new();
    wait_for("3 live nodes in the metrics", || {
        text = get(&addr, "/metrics", false);
        sample(&text, "nsgroup_nodes") == Some(3.0)
    });
    assert_parseable(&text);
    assert!(sample(&text, "nsgroup_placements_total").unwrap() >= 3.0, "{text}");
    assert!(sample(&text, "nsgroup_nodes_created_total").unwrap() >= 3.0);
    assert!(sample(&text, "nsgroup_events_total").unwrap() >= 3.0);
    assert!(sample(&text, "nsgroup_placement_latency_seconds_count").unwrap() >= 3.0);
    assert_eq!(sample(&text, "nsgroup_tasks"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "nsgroup_node_series_cut"), Some(0.0));
    assert!(text.contains("# TYPE nsgroup_events_total counter"));
    for pid in &pids {
        let id = std::fs::metadata(h.dir(&h.path(&format!("node_{pid}")))).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        assert_eq!(sample(&text, &format!("nsgroup_node_tasks{{id=\"{id}\",name=\"node_{pid}\"}}")), Some(1.0), "{text}");
    }
    // No paths in labels: bounded.
    assert!(!text.contains(&h.root), "{text}");
    let om = get(&addr, "/metrics", true);
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE nsgroup_events counter"), "{om}");
    h.kill_all();
    wait_for("the nodes removed in the metrics", || {
        let t = get(&addr, "/metrics", false);
        sample(&t, "nsgroup_nodes") == Some(0.0) && sample(&t, "nsgroup_nodes_removed_total").unwrap_or(0.0) >= 3.0
    });
    drop(d);
}

#[test]
fn series_are_capped_and_the_cut_counted() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let s = setup("[metrics]\nmax_node_series = 1\n");
    let _d = Daemon::start(&h, &["--config", &s.config, "--metrics", "127.0.0.1:0"]);
    let addr = metrics_addr(&h, &s);
    spawn_nodes(&mut h, 3);
    let mut text = String::new();
    wait_for("3 live nodes in the metrics", || {
        text = get(&addr, "/metrics", false);
        sample(&text, "nsgroup_nodes") == Some(3.0)
    });
    assert_eq!(text.matches("nsgroup_node_tasks{").count(), 1, "{text}");
    assert_eq!(sample(&text, "nsgroup_node_series_cut"), Some(2.0));
    h.kill_all();
}

#[test]
fn every_metric_of_the_dashboard_is_served() {
    // On cgroup2 a node has pressure files; a node with a network namespace
    // of its own has network series.
    let Some(mut h) = Hier::try_new(Kind::V2) else { return };
    let s = setup("");
    let _d = Daemon::start(&h, &["--config", &s.config, "--metrics", "127.0.0.1:0"]);
    let addr = metrics_addr(&h, &s);
    spawn_nodes(&mut h, 1);
    let net = h.spawn(&["unshare", "--uts", "--net", "sleep", "60"]).pid;
    wait_for("the network node", || h.in_own_node(net, &h.root));
    let mut text = String::new();
    wait_for("the nodes in the metrics", || {
        text = get(&addr, "/metrics", false);
        sample(&text, "nsgroup_nodes") == Some(2.0)
    });
    let served = assert_parseable(&text);
    let dashboard = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let mut used = Vec::new();
    let b = dashboard.as_bytes();
    let mut i = 0;
    while let Some(at) = dashboard[i..].find("nsgroup_") {
        let start = i + at;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || **c == b'_').count();
        used.push(dashboard[start..end].to_string());
        i = end;
    }
    used.sort();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        assert!(served.contains(&name), "the dashboard uses {name}, which /metrics does not serve:\n{text}");
    }
    h.kill_all();
}

#[test]
fn the_textfile_is_written_atomically_and_parses() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let s = setup("[metrics]\nfile_interval_seconds = 1\n");
    let file = s.dir.join("textfile/nsgroup.prom");
    let _d = Daemon::start(&h, &["--config", &s.config, "--metrics-file", file.to_str().unwrap()]);
    spawn_nodes(&mut h, 2);
    let mut text = String::new();
    wait_for("the textfile with 2 nodes", || {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        sample(&text, "nsgroup_nodes") == Some(2.0)
    });
    let names = assert_parseable(&text);
    assert!(names.iter().any(|n| n == "nsgroup_placements_total"));
    assert!(!text.contains("# EOF"), "the textfile collector wants the Prometheus text format");
    // Only the file: its temporary files are renamed over it.
    let entries: Vec<_> = std::fs::read_dir(file.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(entries.iter().all(|e| e == "nsgroup.prom" || e.to_string_lossy().ends_with(".tmp")), "{entries:?}");
    h.kill_all();
}

fn history_json(s: &Setup, extra: &[&str]) -> serde_json::Value {
    let db = s.db.display().to_string();
    let mut args = vec!["history", "--json", "--database", &db];
    if !extra.contains(&"--hierarchy") {
        args.push("--all");
    }
    args.extend_from_slice(extra);
    let out = nsgroup(&args);
    assert!(out.status.success(), "history: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn history_rows(s: &Setup, extra: &[&str]) -> Vec<serde_json::Value> {
    if !s.db.exists() {
        return vec![];
    }
    history_json(s, extra)["nodes"].as_array().cloned().unwrap_or_default()
}

#[test]
fn history_records_a_node_created_and_removed() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let s = setup("");
    let d = Daemon::start(&h, &["--config", &s.config]);
    let pid = spawn_nodes(&mut h, 1)[0];
    let path = h.path(&format!("node_{pid}"));
    h.kill_all();
    wait_for("the node removed", || h.node_paths().is_empty());
    let mut row = serde_json::Value::Null;
    wait_for("the removal in the history", || {
        row = history_rows(&s, &[]).into_iter().find(|r| r["path"] == path.as_str()).unwrap_or_default();
        !row["removed_unix"].is_null()
    });
    assert_eq!(row["creator_pid"], pid);
    assert_eq!(row["creator_comm"], "unshare");
    assert_eq!(row["creator_uid"], 0);
    assert_eq!(row["closed_at_start"], false);
    assert_eq!(row["hierarchy"], h.mount.display().to_string());
    assert!(row["set"]["uts"].as_u64().is_some_and(|i| i > 0), "{row}");
    let (created, removed) = (row["created_unix"].as_u64().unwrap(), row["removed_unix"].as_u64().unwrap());
    assert!(created > 1_600_000_000 && removed >= created, "{row}");
    assert!(row["usage"].is_object(), "{row}");
    // Filters, while the daemon runs.
    assert_eq!(history_rows(&s, &["--comm", "unshare"]).len(), 1);
    assert!(history_rows(&s, &["--comm", "nosuchcomm"]).is_empty());
    assert_eq!(history_rows(&s, &["--since", "1h"]).len(), 1);
    assert!(history_rows(&s, &["--since", &(removed + 100).to_string()]).is_empty());
    // One daemon's rows: its hierarchy and root's.
    let mount = h.mount.display().to_string();
    assert_eq!(history_rows(&s, &["--hierarchy", &mount, "--root", &h.root]).len(), 1);
    assert!(history_rows(&s, &["--hierarchy", &mount, "--root", "/elsewhere"]).is_empty());
    // The text form, and without the daemon.
    drop(d);
    let out = nsgroup(&["history", "--all", "--database", s.db.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("{mount}{path}")) && text.contains("unshare"), "{text}");
}

#[test]
fn a_node_removed_while_the_daemon_was_down_is_closed_at_the_next_start() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let s = setup("");
    let mut d = Daemon::start(&h, &["--config", &s.config]);
    let pids = spawn_nodes(&mut h, 2);
    let (gone, stays) = (pids[0], pids[1]);
    let gone_path = h.path(&format!("node_{gone}"));
    let stays_path = h.path(&format!("node_{stays}"));
    wait_for("both nodes in the history", || history_rows(&s, &[]).len() == 2);
    d.crash();
    h.kill(gone);
    wait_for("the node empty", || std::fs::read_to_string(h.dir(&gone_path).join("tasks")).is_ok_and(|t| t.is_empty()));
    std::fs::remove_dir(h.dir(&gone_path)).unwrap();
    let _d = Daemon::start(&h, &["--config", &s.config]);
    let mut rows = vec![];
    wait_for("the node closed at start", || {
        rows = history_rows(&s, &[]);
        rows.iter().any(|r| r["path"] == gone_path.as_str() && r["closed_at_start"] == true)
    });
    let gone_row = rows.iter().find(|r| r["path"] == gone_path.as_str()).unwrap();
    assert!(gone_row["removed_unix"].as_u64().is_some());
    let stays_rows: Vec<_> = rows.iter().filter(|r| r["path"] == stays_path.as_str()).collect();
    assert_eq!(stays_rows.len(), 1, "adopted, not recorded twice: {rows:?}");
    assert!(stays_rows[0]["removed_unix"].is_null());
    let out = nsgroup(&["history", "--all", "--database", s.db.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("closed when the next one started"));
    h.kill_all();
}

#[test]
fn status_shows_hooks_costs_and_counters() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let s = setup("");
    let d = Daemon::start(&h, &["--config", &s.config]);
    spawn_nodes(&mut h, 1);
    let mount = h.mount.display().to_string();
    let json = status_json(&h, &s);
    assert_eq!(json["pid"], d.pid());
    assert_eq!(json["running"], true);
    assert!(json["source"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(json["mount_options"].as_str().is_some_and(|o| o.contains("name=")), "{json}");
    let tracepoints = json["syscall_tracepoints"].as_bool().unwrap();
    let out = nsgroup(&["status", "--hierarchy", &mount, "--root", &h.root, "--config", &s.config]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    for needle in ["hooks", "why", "favordynmods", "mount", "events", "placements", "nodes", "up "] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    if tracepoints {
        assert!(text.contains("every syscall of every task") && text.contains("getppid"), "{text}");
    }
    // The counters follow (the file is rewritten within 5 s of a change).
    wait_for("the placement in the status", || status_json(&h, &s)["counters"]["placements"].as_u64().unwrap_or(0) >= 1);
    h.kill_all();
    drop(d);
    // No daemon: exit 3, and says so.
    let mut d2 = Daemon::start(&h, &["--config", &s.config]);
    d2.stop();
    let out = nsgroup(&["status", "--hierarchy", &mount, "--root", &h.root, "--config", &s.config]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no nsgroup daemon runs"));
}

#[test]
fn sighup_does_not_kill_the_daemon() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let s = setup("");
    let mut d = Daemon::start(&h, &["--config", &s.config]);
    signal(d.pid(), rustix::process::Signal::HUP);
    wait_for("SIGHUP logged", || d.log_text().contains("SIGHUP"));
    assert!(d.running(), "{}", d.log_text());
    // Still placing.
    spawn_nodes(&mut h, 1);
    h.kill_all();
    assert!(d.stop().success());
}
