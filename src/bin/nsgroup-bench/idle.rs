//! Part 4, idle: the daemon's wakeups over a period with no event, and its RSS.

use std::time::Duration;

use anyhow::Result;

use crate::daemon::Measured;
use crate::hierarchy::Bench;
use crate::report::Report;

pub fn part(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    let d = b.start(&[])?;
    let idle = Duration::from_secs(if q { 10 } else { 60 });
    let (_, w0) = d.cpu_and_wakeups();
    std::thread::sleep(idle);
    let (_, w1) = d.cpu_and_wakeups();
    let rss = d.status_field("VmRSS:");
    d.stop()?;
    r.row(
        &format!("idle for {} s: daemon wakeups; RSS", idle.as_secs()),
        format!("{} ({:.2}/s); {:.1} MiB", w1 - w0, (w1 - w0) as f64 / idle.as_secs_f64(), rss as f64 / 1024.0),
        "no periodic wakeups, RSS ≤ 16 MiB",
        Some(w1 - w0 <= 1 && rss <= 16 * 1024),
    );
    Ok(())
}
