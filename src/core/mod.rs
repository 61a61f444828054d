//! The pure core: namespace sets, nodes, naming, limits and the tracker. No I/O.
pub mod cgpath;
pub mod escape;
pub mod histogram;
pub mod limit;
pub mod naming;
pub mod node;
pub mod nsset;
pub mod tracker;
pub mod unit;
