//! A rate limit per key (an owner, a node): at most `per_window` passes per
//! key per window, for at most `max_keys` keys at once (beyond them a new
//! key is refused until windows end).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Passes per key per window.
pub(crate) struct Rate<K> {
    window: Duration,
    per_window: u32,
    max_keys: usize,
    keys: HashMap<K, (Instant, u32)>,
}

impl<K: Hash + Eq + Copy> Rate<K> {
    pub(crate) fn new(window: Duration, per_window: u32, max_keys: usize) -> Rate<K> {
        Rate { window, per_window, max_keys, keys: HashMap::new() }
    }

    /// Whether `key` may pass at `now` (counted as passed when it may).
    pub(crate) fn allow(&mut self, key: K, now: Instant) -> bool {
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max_keys {
            let window = self.window;
            self.keys.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max_keys {
            return false;
        }
        let (start, n) = self.keys.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            (*start, *n) = (now, 0);
        }
        if *n >= self.per_window {
            return false;
        }
        *n += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_its_share_per_window_and_keys_are_bounded() {
        let t0 = Instant::now();
        let mut r = Rate::new(Duration::from_secs(10), 2, 2);
        assert!(r.allow(1, t0) && r.allow(1, t0));
        assert!(!r.allow(1, t0), "over its share");
        assert!(r.allow(2, t0), "another key has its own");
        assert!(!r.allow(3, t0), "no room for a third key");
        let later = t0 + Duration::from_secs(11);
        assert!(r.allow(3, later), "windows ended: room again");
        assert!(r.allow(1, later), "a new window");
    }
}
