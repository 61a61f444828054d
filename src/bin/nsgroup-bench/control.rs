//! The control part (issue 11): parts 1 and 2 again under the mirrored
//! setting ([`crate::mirrored`]); its rows are ratios to the plain rows of
//! the same run.

use std::time::Duration;

use crate::latency::Latencies;
use crate::mirrored::PIDS_MAX;
use crate::report::{ms, Report};
use crate::storm::Storms;

/// The control part's rows: the extra cost per node as ratios to the plain
/// rows of the same run (when the part ran: its rounds are there).
pub fn rows(r: &mut Report, latencies: Option<&Latencies>, storms: Option<&Storms>) {
    let setting = format!("with mirrors (pids, freezer) and a limit (pids.max = {PIDS_MAX})");
    if let Some(Latencies { samples, plain, mirrored: Some(with) }) = latencies {
        let x = |with: u64, without: u64| format!("{:.2}×", with as f64 / without.max(1) as f64);
        let (h, daemon, plain_daemon) = (&with.task, &with.daemon, &plain.daemon);
        r.row(
            &format!(
                "{setting}: placement latency seen by the task (in its node and both mirrors), {} unshares at 1,000/s (p50 / p99 / max); as a ratio to the plain row",
                h.count()
            ),
            format!(
                "{} / {} / {} µs; p50 {}, p99 {}",
                h.quantile(0.5),
                h.quantile(0.99),
                h.max(),
                x(h.quantile(0.5), plain.task.quantile(0.5)),
                x(h.quantile(0.99), plain.task.quantile(0.99))
            ),
            "",
            (h.count() != u64::from(*samples)).then_some(false),
        );
        r.row(
            &format!("{setting}: daemon's event-to-moved latency (to the move in the tracked hierarchy, before the mirrors) (p50 / p99 / max); as a ratio to the plain row"),
            format!("{} / {} / {} µs; p50 {}, p99 {}", daemon[0], daemon[1], daemon[2], x(daemon[0], plain_daemon[0]), x(daemon[1], plain_daemon[1])),
            "",
            None,
        );
        let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        r.row(
            &format!("daemon's time on a CPU per node in part 1 (made, placed, removed; schedstat): plain / {setting}"),
            format!(
                "{} / {} = {:.2}×",
                us(plain.run_per_node),
                us(with.run_per_node),
                with.run_per_node.as_secs_f64() / plain.run_per_node.as_secs_f64().max(f64::MIN_POSITIVE)
            ),
            "",
            None,
        );
    }
    if let Some(Storms { plain, mirrored: Some(s) }) = storms {
        r.row(
            &format!(
                "{setting}: fork+unshare storm: {} tasks forked at {:.0}/s, all placed (node and both mirrors) after; as a ratio to the plain row",
                s.count, s.fork_rate
            ),
            format!(
                "{} ({:.0} placements/s), daemon CPU {} ms ({:.0} µs per node); time {:.2}×, placements/s {:.2}×, daemon CPU per node {:.2}×",
                ms(s.converged),
                s.placements_per_s(),
                s.cpu_ms,
                s.cpu_us_per_node(),
                s.converged.as_secs_f64() / plain.converged.as_secs_f64(),
                s.placements_per_s() / plain.placements_per_s(),
                s.cpu_us_per_node() / plain.cpu_us_per_node().max(f64::MIN_POSITIVE)
            ),
            "",
            None,
        );
        let (limited, mirrors) = s.limited.unwrap_or_default();
        r.row(
            &format!("{setting}: tasks misplaced at quiescence; BPF events lost; tasks not mirrored (pids, freezer); pids mirrors with pids.max = {PIDS_MAX}"),
            format!("{}; {}; {}; {limited} of {mirrors}", s.misplaced, s.lost, s.not_mirrored),
            "0 misplaced, every node mirrored with its limit",
            Some(s.misplaced == 0 && s.not_mirrored.split(", ").all(|n| n == "0") && limited == s.count as usize && mirrors == s.count as usize),
        );
    }
}
