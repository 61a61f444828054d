//! The system edge: procfs, cgroupfs, mounts, service notification.
pub mod cgroupfs;
pub mod error;
pub mod mounts;
pub mod notify;
pub mod procfs;
