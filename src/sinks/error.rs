//! Why a sink could not start.

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
}
