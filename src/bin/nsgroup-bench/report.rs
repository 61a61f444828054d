//! The suite's report: its rows (each printed to stderr as it comes), the
//! Markdown table with the machine and the command, written to stdout and
//! between the markers of a report file.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// "3332.3 ms".
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The rows so far: measure, result, target, verdict.
#[derive(Default)]
pub struct Report {
    rows: Vec<[String; 4]>,
}

impl Report {
    pub fn row(&mut self, what: &str, value: String, target: &str, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        eprintln!("{what}: {value} ({target}) {verdict}");
        self.rows.push([what.into(), value, target.into(), verdict.into()]);
    }

    /// Prints the table, and writes it into `write` when given.
    pub fn print(&self, write: Option<&Path>) -> Result<()> {
        let command: Vec<String> = std::env::args().collect();
        let mut md = String::new();
        md.push_str(&format!("Machine: {}.\nCommand: `{}`.\n\n| measure | result | target | |\n| --- | --- | --- | --- |\n", machine(), command.join(" ")));
        for row in &self.rows {
            md.push_str(&format!("| {} | {} | {} | {} |\n", row[0], row[1], row[2], row[3]));
        }
        println!("{md}");
        if let Some(path) = write {
            write_report(path, &md)?;
        }
        Ok(())
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|s| s.trim().to_string()))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} × {cpu}, {} GiB, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem / 1024 / 1024,
        kernel.trim()
    )
}

/// Replaces the generated table between the markers of the report file.
fn write_report(path: &Path, table: &str) -> Result<()> {
    const BEGIN: &str = "<!-- nsgroup-bench:begin -->";
    const END: &str = "<!-- nsgroup-bench:end -->";
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| format!("# Benchmarks\n\n{BEGIN}\n{END}\n"));
    let (Some(a), Some(z)) = (old.find(BEGIN), old.find(END)) else {
        bail!("{} has no {BEGIN} … {END} markers", path.display());
    };
    let new = format!("{}{BEGIN}\n{table}{}", &old[..a], &old[z..]);
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
