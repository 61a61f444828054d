//! The system edge: procfs, cgroupfs, mounts, service notification.
pub mod cgroupfs;
pub mod connector;
pub mod delegation;
pub mod error;
pub mod locate;
pub mod lock;
pub mod mounts;
pub mod notify;
pub mod owner;
pub mod procfs;
pub mod scan;
pub mod subtree;
