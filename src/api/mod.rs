//! nsgroup's local API: a Unix socket speaking JSON Lines (docs/api.md).
//!
//! - [`proto`]: the wire format (requests, answers, error codes, events);
//! - [`peer`]: who calls (SO_PEERCRED, /proc, pid races);
//! - [`handler`]: carrying one request out, as the permission model
//!   ([`crate::policy::perm`]) allows;
//! - [`server`]: the thread that serves the socket; [`events`]: the
//!   handle the daemon hands events to; [`conn`]: one client connection's buffers;
//!   [`capacity`]: the bounds on connections, requests and memory, and the
//!   share kept for the administrator; [`fanout`]: the events from the
//!   daemon's queue to the subscribers, through [`event_log`], the log all
//!   subscribers share; [`workers`]: the threads that carry requests out;
//! - [`listen`]: the socket on disk (one owner, mode, group);
//! - [`client`]: the command line's side of the socket;
//! - [`direct`]: the answer through the daemon, or without it (as root);
//! - [`strict`]: strict mode, the LSM BPF program that enforces the same
//!   rules on direct cgroupfs writes ([`crate::policy::strict`]: its table).

pub mod capacity;
pub mod client;
pub mod conn;
pub mod direct;
pub mod event_log;
pub mod events;
pub mod fanout;
pub mod handler;
pub mod listen;
pub mod peer;
pub mod proto;
pub mod server;
pub mod strict;
pub mod workers;
