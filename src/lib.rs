//! nsgroup: gives every set of Linux namespaces its own cgroup, automatically.
//!
//! Data flow: event sources ([`bpf`], or [`source::reconcile`]'s /proc walk)
//! → the pure [`core::tracker`] that decides → the [`placer`] that carries the
//! decisions out through a [`sys::cgroupfs::CgroupBackend`]. For reading:
//! samples ([`model::sample`]) → [`model`] → [`render`].
#![deny(unsafe_code)]

pub mod bpf;
pub mod core;
pub mod sys;
pub mod placer;
pub mod check;
pub mod config;
pub mod control;
pub mod reconcile;
pub mod source;
pub mod daemon;
pub mod ffi;
pub mod model;
pub mod render;
pub mod api;
pub mod history;
