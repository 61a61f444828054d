//! nsgroup: gives every set of Linux namespaces its own cgroup, automatically.
//!
//! Data flow: event sources ([`bpf`], [`source`]) → the [`pipeline`]: the
//! pure [`core::tracker`] decides, the [`policy`] checks, the placer carries
//! the decision out through a [`sys::cgroupfs::CgroupBackend`], and each
//! outcome goes to the [`sinks`]. The [`daemon`] is the loop around it. For
//! reading: samples ([`model::sample`]) → [`model`] → [`render`].
#![deny(unsafe_code)]

pub mod bpf;
pub mod core;
pub mod sys;
pub mod check;
pub mod config;
pub mod policy;
pub mod control;
pub mod pipeline;
pub mod source;
pub mod sinks;
pub mod daemon;
pub mod testing;
pub mod ffi;
pub mod model;
pub mod render;
pub mod api;
pub mod history;
