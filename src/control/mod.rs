//! Nodes as units of control: limits written before the first task moves
//! in, mirrors in v1 controller hierarchies, and the verbs (freeze, thaw,
//! kill) on a node's subtree, and what `limit` may write without
//! CAP_SYS_ADMIN (only tighter values).

pub mod checkpoint;
pub mod exec;
pub mod mirror;
pub mod tighten;
pub mod verbs;
