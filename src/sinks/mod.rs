//! The sinks: who hears of the pipeline's outcomes, in the order they hear
//! of them — the log ([`log`]), the local API's subscribers ([`api`], which
//! also holds strict mode), and operability ([`ops`]: the counters, metrics,
//! history and status file).

pub mod api;
mod error;
pub mod log;
pub mod ops;
mod reports;

pub use error::SinkError;

use crate::pipeline::outcome::{Outcome, Sink};

/// Every sink, in the order they hear of an outcome.
pub struct Sinks {
    pub log: log::Log,
    pub api: api::ApiHost,
    pub ops: ops::Ops,
}

impl Sinks {
    pub fn new(api: api::ApiHost, ops: ops::Ops) -> Sinks {
        Sinks { log: log::Log::default(), api, ops }
    }

    fn all(&mut self) -> [&mut dyn Sink; 3] {
        [&mut self.log, &mut self.api, &mut self.ops]
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
