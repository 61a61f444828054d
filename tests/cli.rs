//! The command line as a new user meets it, end to end on the real binary:
//! what tree and check do with tasks they cannot read, check's exit codes,
//! the message on a host without nsgroup's hierarchy, help, write errors,
//! and the text tree's width, columns and figures.

mod common;
use common::*;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion, its stdout captured; one still running after
/// 20 s is killed and fails the test.
fn finish(cmd: &mut Command) -> Output {
    finish_into(cmd, Stdio::piped())
}

/// The same with stdout going to `stdout`.
fn finish_into(cmd: &mut Command, stdout: Stdio) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(stdout).stderr(Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} still running after 20 s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// `nsgroup SUBCOMMAND --hierarchy <h> --root <h.root> EXTRA…`.
fn on(h: &Hier, subcommand: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(NSGROUP);
    cmd.arg(subcommand).arg("--hierarchy").arg(&h.mount).args(["--root", &h.root]).args(extra);
    cmd
}

/// The same, run as uid 65534.
fn as_nobody_on(h: &Hier, subcommand: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", NSGROUP, subcommand, "--hierarchy"])
        .arg(&h.mount)
        .args(["--root", &h.root])
        .args(extra);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn tree_and_check_leave_out_what_they_cannot_read_and_say_so() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let task = h.spawn(&["sleep", "60"]);
    // Some kernels let any user read another's namespace links (Debian's
    // 5.10 does): nothing to leave out there.
    let ns = format!("/proc/{}/ns/mnt", task.pid);
    let nobody_reads = finish(Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "stat", "-L", &ns]));
    if nobody_reads.status.success() {
        skip(&format!("uid 65534 may read root's {ns} on this kernel: no task to leave out"));
        return;
    }
    // uid 65534 may not read root's /proc/<pid>/ns: the task is left out, counted.
    let out = finish(&mut as_nobody_on(&h, "tree", &["--all", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tree = json(&out);
    assert_eq!((tree["unreadable_tasks"].as_u64(), tree["tasks"].as_array().map(Vec::len)), (Some(1), Some(0)), "{tree}");
    let err = text(&out.stderr);
    assert!(err.contains("left out 1 task whose /proc entries could not be read") && err.contains("root is needed for a full view"), "{err}");
    let out = finish(&mut as_nobody_on(&h, "check", &["--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out)["unreadable_tasks"], 1);
    assert!(text(&out.stderr).contains("root is needed for a full view"), "{}", text(&out.stderr));
    // Root reads it: no note.
    let out = finish(&mut on(&h, "tree", &["--all", "--json"]));
    let tree = json(&out);
    assert_eq!((tree["unreadable_tasks"].as_u64(), tree["tasks"][0]["pid"].as_u64()), (Some(0), Some(task.pid.into())));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn tree_and_check_over_the_whole_host_do_not_stop_at_an_unreadable_task() {
    if !privileged() {
        return;
    }
    // Any hierarchy of the host with every task in it; only read.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.starts_with("cgroup2 ") && left.split(' ').nth(3) == Some("/")).then(|| left.split(' ').nth(4).unwrap().to_string())
    }) else {
        eprintln!("skipped: no cgroup2 mount to read the whole host from");
        return;
    };
    let tree = finish(Command::new(NSGROUP).args(["tree", "--hierarchy", &mount]));
    assert!(tree.status.success(), "{}", text(&tree.stderr));
    let check = finish(Command::new(NSGROUP).args(["check", "--hierarchy", &mount]));
    assert!(matches!(check.status.code(), Some(0 | 1)), "check could not run: {}", text(&check.stderr));
    assert!(text(&check.stdout).contains(" tasks, "), "{}", text(&check.stdout));
    // Where PID 1 hides its namespaces even from root (as on the development
    // machine), both say what they left out.
    let hidden = std::fs::metadata("/proc/1/task/1/ns/cgroup").is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    if hidden {
        for out in [&tree, &check] {
            let err = text(&out.stderr);
            assert!(err.contains("whose /proc entries could not be read") && !err.contains("root is needed"), "{err}");
        }
    }
}

#[test]
fn check_exits_0_when_it_holds_1_when_it_does_not_2_when_it_cannot_run() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let _plain = h.spawn(&["sleep", "60"]);
    let out = finish(&mut on(&h, "check", &[]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // No daemon: a task in a new set stays outside any node.
    let _entered = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    let out = finish(&mut on(&h, "check", &[]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the invariant does not hold: 1 misplaced tasks"), "{}", text(&out.stderr));
    let out = finish(Command::new(NSGROUP).args(["check", "--hierarchy"]).arg(&h.mount).args(["--root", "/missing"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cgroup /missing does not exist"), "{}", text(&out.stderr));
    let out = finish(&mut on(&h, "check", &["--config", "/nonexistent/nsgroup.toml"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn without_its_hierarchy_tree_says_how_to_get_it() {
    if !privileged() {
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fields = |l: &str| -> Option<(String, String, String)> {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, opts) = (r.next()?.to_string(), r.nth(1)?.to_string());
        Some((left.split(' ').nth(4)?.to_string(), fstype, opts))
    };
    let mounts: Vec<_> = mountinfo.lines().filter_map(fields).collect();
    if mounts.iter().any(|(point, fstype, _)| point == "/sys/fs/cgroup" && fstype == "cgroup2") {
        eprintln!("skipped: a pure cgroup2 host, where nsgroup uses the unified hierarchy");
        return;
    }
    // In a mount namespace of its own, without any name=nsgroup mount.
    let own: Vec<String> = mounts
        .iter()
        .filter(|(_, fstype, opts)| fstype == "cgroup" && opts.split(',').any(|o| o == "name=nsgroup"))
        .map(|(point, _, _)| point.clone())
        .collect();
    let (_dir, config) = config_file("");
    for args in [&["tree"][..], &["check", "--config", &config][..]] {
        let subcommand = args[0];
        let out = finish(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", "for m in $OWN; do umount \"$m\" || exit 99; done; exec \"$@\"", "sh"])
                .arg(NSGROUP)
                .args(args)
                .env("OWN", own.join(" ")),
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(if subcommand == "check" { 2 } else { 1 }), "{err}");
        assert!(
            err.contains("nsgroup's own hierarchy (name=nsgroup)") && err.contains("is not mounted")
                && err.contains("`nsgroup run` mounts it at /sys/fs/cgroup/nsgroup") && err.contains("--hierarchy PATH"),
            "{err}"
        );
        assert!(!err.contains("no cgroup hierarchy is mounted"), "{err}");
    }
}

#[test]
fn tree_help_says_what_root_means_for_tree() {
    let help = |sub: &str| text(&finish(Command::new(NSGROUP).args([sub, "--help"])).stdout);
    let tree = help("tree");
    assert!(tree.contains("The subtree to show") && !tree.contains("tracked and moved"), "{tree}");
    assert!(help("run").contains("The subtree whose tasks are tracked and moved"));
    assert!(help("check").contains("The subtree to check"));
}

#[test]
fn write_errors_name_what_was_written_and_a_closed_pipe_is_success() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let _task = h.spawn(&["sleep", "60"]);
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = finish_into(&mut on(&h, "tree", &["--all"]), full().into());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("writing the tree to stdout: No space left on device"), "{}", text(&out.stderr));
    let out = finish_into(&mut on(&h, "check", &[]), full().into());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("writing the verdict to stdout: No space left on device"), "{}", text(&out.stderr));
    for (sub, extra) in [("tree", &["--all", "-Ojson"][..]), ("check", &["--json"][..])] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = finish_into(&mut on(&h, sub, extra), writer.into());
        assert_eq!(out.status.code(), Some(0), "{sub}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{sub}: {}", text(&out.stderr));
    }
}

/// Runs `shell` in a pseudo-terminal (script(1)); its output lines.
fn in_terminal(shell: &str, columns: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", shell, "/dev/null"]).env_remove("COLUMNS");
    if let Some(c) = columns {
        cmd.env("COLUMNS", c);
    }
    let out = finish(&mut cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(|l| l.trim_end_matches('\r').to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn long_lines_are_cut_to_the_terminal_width_only_on_a_terminal() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    h.mkdir(&h.path("a-cgroup-with-a-name-far-longer-than-forty-columns"));
    let tree = format!("{NSGROUP} tree --all --hierarchy {} --root {}", h.mount.display(), h.root);
    let cut = |lines: &[String], width: usize| {
        assert!(lines.iter().all(|l| l.chars().count() <= width), "{lines:#?}");
        assert!(lines.iter().any(|l| l.chars().count() == width && l.ends_with('…')), "{lines:#?}");
    };
    cut(&in_terminal(&tree, Some("40")), 40);
    cut(&in_terminal(&format!("stty cols 37 && exec {tree}"), None), 37);
    let piped = finish(on(&h, "tree", &["--all"]).env("COLUMNS", "40"));
    assert!(text(&piped.stdout).contains("-far-longer-than-forty-columns  (tasks 0"), "{}", text(&piped.stdout));
}

#[test]
fn node_lines_show_the_columns_asked_for() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let mut d = Daemon::start(&h, &[]);
    let root = h.root.clone();
    let p = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    h.expect_in(p.pid, &format!("{root}/node_{}", p.pid));
    let out = finish(&mut on(&h, "tree", &["-o", "age,creator,uid"]));
    let shown = text(&out.stdout);
    let line = shown.lines().find(|l| l.contains(&format!("node_{}", p.pid))).unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains("(age ") && line.contains(&format!(" creator {} unshare uid 0)", p.pid)), "{shown}");
    assert!(!line.contains("tasks"), "-o replaces the default columns: {shown}");
    let out = finish(&mut on(&h, "tree", &["-o", "bogus"]));
    assert_eq!(out.status.code(), Some(2));
    d.stop();
}

#[test]
fn figures_count_what_is_listed_and_a_split_process_once() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let _plain = h.spawn(&["sleep", "60"]);
    // A process whose second thread entered a new set and sits in a node of
    // its own, while its leader stays in the root (v1 moves threads).
    let mut w = h.spawn(&[WORKLOAD, "thread-unshare"]);
    let thread = w.read_json()["thread"].as_u64().unwrap() as u32;
    let node = h.path(&format!("node_{thread}"));
    h.mkdir(&node);
    h.move_task(thread, &node);
    h.expect_in(thread, &node);
    let listed = |n: &serde_json::Value| -> u64 {
        fn count(n: &serde_json::Value) -> u64 {
            n["tasks"].as_array().unwrap().len() as u64 + n["children"].as_array().unwrap().iter().map(count).sum::<u64>()
        }
        count(n)
    };
    let tree = json(&finish(&mut on(&h, "tree", &["--json"])));
    assert_eq!((tree["subtree_usage"]["tasks"].as_u64(), listed(&tree)), (Some(1), 1), "only the node's task: {tree}");
    let text_tree = text(&finish(&mut on(&h, "tree", &[])).stdout);
    assert!(text_tree.lines().next().unwrap().contains("(tasks 1 "), "{text_tree}");
    let all = json(&finish(&mut on(&h, "tree", &["--all", "--json"])));
    assert_eq!((all["subtree_usage"]["tasks"].as_u64(), listed(&all)), (Some(3), 3), "{all}");
    // The root's own tasks are sleep and the workload's leader: both
    // processes, so everything below adds no memory (the thread's process is
    // counted already).
    assert!(all["children"][0]["usage"]["rss_bytes"].as_u64().unwrap() > 0, "{all}");
    assert_eq!(all["usage"]["processes"], 2, "{all}");
    assert_eq!(all["subtree_usage"]["processes"], 2, "{all}");
    assert_eq!(all["subtree_usage"]["rss_bytes"], all["usage"]["rss_bytes"], "{all}");
    w.close_stdin();
}

#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let help = text(&finish(Command::new(NSGROUP).arg("--help")).stdout);
    let subcommands: Vec<&str> = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(subcommands.len() >= 3, "{help}");
    let dir = tempfile::tempdir().unwrap();
    let out = finish(Command::new(NSGROUP).arg("generate-assets").arg("--out").arg(dir.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |rel: &str| std::fs::read_to_string(dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let main_page = read("man/nsgroup.8");
    assert!(main_page.contains(".TH NSGROUP 8"), "{main_page}");
    let mut pages: Vec<String> =
        std::fs::read_dir(dir.path().join("man")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let mut expected: Vec<String> = subcommands.iter().map(|s| format!("nsgroup-{s}.8")).chain(["nsgroup.8".to_string()]).collect();
    expected.sort();
    assert_eq!(pages, expected, "one page per subcommand, and nsgroup(8)");
    for s in &subcommands {
        let page = read(&format!("man/nsgroup-{s}.8"));
        assert!(page.contains(&format!(".TH NSGROUP-{} 8", s.to_uppercase())) && page.contains(&format!("nsgroup {s}")), "{page}");
        assert!(main_page.contains(&format!("nsgroup\\-{s}(8)")), "nsgroup(8) does not list {s}: {main_page}");
        for completion in ["completions/nsgroup.bash", "completions/_nsgroup", "completions/nsgroup.fish"] {
            assert!(read(completion).contains(s), "{completion} lacks {s}");
        }
    }
    for completion in ["completions/nsgroup.bash", "completions/_nsgroup", "completions/nsgroup.fish"] {
        assert!(!read(completion).contains("generate-assets"), "{completion} offers the hidden command");
    }
}

#[test]
fn openmetrics_has_cpu_as_a_counter_bounded_labels_and_sorted_series() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    // Created in this order, so that their ids (inode numbers) sort unlike their names.
    for name in ["b-plain", "a\"quoted"] {
        h.mkdir(&h.path(name));
    }
    let out = finish(&mut on(&h, "tree", &["--all", "-O", "openmetrics"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metrics = text(&out.stdout);
    assert!(metrics.contains("# TYPE nsgroup_cpu_seconds counter\n") && metrics.ends_with("# EOF\n"), "{metrics}");
    let series: Vec<&str> = metrics.lines().filter(|l| l.starts_with("nsgroup_cpu_seconds")).collect();
    assert_eq!(series.len(), 3, "{metrics}");
    assert!(series.iter().all(|l| l.starts_with("nsgroup_cpu_seconds_total{id=\"")), "{metrics}");
    assert!(metrics.contains(",name=\"a\\\"quoted\"}"), "{metrics}");
    assert!(!metrics.contains("path=") && !metrics.contains(&format!("{}/", h.root)), "labels name no paths: {metrics}");
    let ids: Vec<u64> = metrics
        .lines()
        .filter(|l| l.starts_with("nsgroup_tasks{"))
        .map(|l| l.split('"').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(ids.len() == 3 && ids.windows(2).all(|w| w[0] < w[1]), "sorted by cgroup id: {ids:?}");
}
