//! The system edge: procfs, cgroupfs, mounts, service notification, the
//! status file.
pub mod cgroup_dir;
pub mod clock;
pub mod cgroupfs;
pub mod connector;
pub mod delegation;
pub mod error;
pub mod hierarchy;
pub mod locate;
pub mod lock;
pub mod mounts;
pub mod notify;
pub mod owner;
pub mod procfs;
pub mod scan;
pub mod status_file;
pub mod subtree;
