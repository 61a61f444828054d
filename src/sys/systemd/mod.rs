//! The user managers' side of systemd hosts (docs/semantics.md §16, "Units
//! of the user's manager"): their D-Bus API ([`bus`]) and the worker that
//! asks them for sandboxes' scopes off the event loop ([`worker`]).
pub mod bus;
pub mod wire;
pub mod worker;
