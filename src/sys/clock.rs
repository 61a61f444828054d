//! The wall clock, for node records and the history.

/// Seconds since the epoch (0 on a clock set before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
