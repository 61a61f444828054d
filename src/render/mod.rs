//! Renderers of the tree model: text (like systemd-cgls), JSON, OpenMetrics.
pub mod json;
pub mod metrics;
pub mod text;
