//! Renderers of the tree model: text (like systemd-cgls), JSON, OpenMetrics;
//! and the metrics text exposition the tree's and the daemon's metrics share.
pub mod exposition;
pub mod json;
pub mod metrics;
pub mod text;
pub mod top;
