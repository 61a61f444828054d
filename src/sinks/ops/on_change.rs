//! A job run on a timer after the counters changed since it last ran, one
//! timer at a time (the status file's rewrite, the counter log).

use crate::sys::status_file::Counters;

/// When such a job last ran, and whether its timer is due.
#[derive(Default)]
pub(super) struct OnChange {
    armed: bool,
    last: Option<Counters>,
}

impl OnChange {
    /// Whether to ask for the timer now (and it is then asked for): the
    /// counters changed since the job last ran, and no timer is due.
    pub(super) fn arm(&mut self, counters: &Counters) -> bool {
        let wanted = !self.armed && self.changed(counters);
        self.armed |= wanted;
        wanted
    }

    /// The job ran with `counters`.
    pub(super) fn ran(&mut self, counters: &Counters) {
        self.armed = false;
        self.last = Some(counters.clone());
    }

    /// Whether the counters differ from those it last ran with.
    pub(super) fn changed(&self, counters: &Counters) -> bool {
        self.last.as_ref() != Some(counters)
    }

    pub(super) fn never_ran(&self) -> bool {
        self.last.is_none()
    }
}
