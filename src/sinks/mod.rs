//! The sinks: who hears of the pipeline's outcomes, in the order they hear
//! of them — the log ([`log`]), the local API's subscribers ([`api`], which
//! also holds strict mode), operability ([`ops`]: the counters, metrics,
//! history and status file), and the watches on nodes ([`watch`]: OOM kills).

pub mod api;
mod error;
pub mod log;
pub mod ops;
mod rate;
mod reports;
pub mod watch;

pub use error::SinkError;

use crate::pipeline::outcome::{Outcome, Sink};

/// Every sink, in the order they hear of an outcome.
pub struct Sinks {
    pub log: log::Log,
    pub api: api::ApiHost,
    pub ops: ops::Ops,
    pub watch: watch::Watch,
}

impl Sinks {
    pub fn new(api: api::ApiHost, ops: ops::Ops, watch: watch::Watch) -> Sinks {
        Sinks { log: log::Log::default(), api, ops, watch }
    }

    fn all(&mut self) -> [&mut dyn Sink; 4] {
        [&mut self.log, &mut self.api, &mut self.ops, &mut self.watch]
    }

    /// Hands `outcome` to every sink.
    pub fn publish(&mut self, outcome: Outcome<'_>) {
        for sink in self.all() {
            sink.take(&outcome);
        }
    }

    /// Whether any sink follows nodes (a reconcile then reports the nodes it made).
    pub fn follow_nodes(&mut self) -> bool {
        self.all().iter().any(|s| s.follows_nodes())
    }
}
