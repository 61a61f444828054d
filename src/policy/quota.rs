//! Per-user bounds on node creation: how many live nodes a user's tasks may
//! have, and how fast they may create them (a token bucket per owner: the
//! uid a set is owned by, so that a user's subordinate uids are that user,
//! see [`crate::sys::owner`]). One user
//! holding or churning sets never locks the others out.

use std::collections::HashMap;
use std::time::Instant;

use crate::core::tracker::Refusal;

/// How many buckets are kept before idle (full) ones are forgotten.
const MAX_BUCKETS: usize = 4096;

/// The bounds, from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Live nodes per creator uid.
    pub max_nodes_per_user: usize,
    /// Creations per second per uid; bursts of twice as many.
    pub creations_per_second: u32,
    /// Uids neither bound applies to.
    pub exempt_uids: Vec<u32>,
}

/// The creation rate of one uid.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-user bounds and the state of each user's bucket.
#[derive(Debug)]
pub struct UserQuotas {
    limits: QuotaLimits,
    buckets: HashMap<u32, Bucket>,
}

impl UserQuotas {
    pub fn new(limits: QuotaLimits) -> UserQuotas {
        UserQuotas { limits, buckets: HashMap::new() }
    }

    fn burst(&self) -> f64 {
        2.0 * f64::from(self.limits.creations_per_second)
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let earned = now.saturating_duration_since(b.at).as_secs_f64() * f64::from(self.limits.creations_per_second);
        b.tokens = (b.tokens + earned).min(self.burst());
        b.at = now;
    }

    /// Whether a task owned by `owner`, who has `live` nodes, may create one
    /// more at `now`; an admitted creation takes a token.
    pub fn admit(&mut self, owner: u32, live: usize, now: Instant) -> Result<(), Refusal> {
        let uid = owner;
        if self.limits.exempt_uids.contains(&uid) {
            return Ok(());
        }
        if live >= self.limits.max_nodes_per_user {
            return Err(Refusal::UserQuota { owner, live });
        }
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&uid) {
            self.forget_idle(now);
        }
        let mut b = self.buckets.get(&uid).copied().unwrap_or(Bucket { tokens: self.burst(), at: now });
        self.refill(&mut b, now);
        let admitted = b.tokens >= 1.0;
        if admitted {
            b.tokens -= 1.0;
        }
        self.buckets.insert(uid, b);
        if admitted { Ok(()) } else { Err(Refusal::UserRate { owner }) }
    }

    /// Forgets the buckets that have filled up again: they say nothing a new one would not.
    fn forget_idle(&mut self, now: Instant) {
        let (rate, burst) = (f64::from(self.limits.creations_per_second), self.burst());
        self.buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn quotas() -> UserQuotas {
        UserQuotas::new(QuotaLimits { max_nodes_per_user: 3, creations_per_second: 10, exempt_uids: vec![0] })
    }

    #[test]
    fn live_nodes_are_bounded_per_user_and_exempt_uids_pass() {
        let mut q = quotas();
        let now = Instant::now();
        assert_eq!(q.admit(1000, 2, now), Ok(()));
        assert_eq!(q.admit(1000, 3, now), Err(Refusal::UserQuota { owner: 1000, live: 3 }));
        assert_eq!(q.admit(1001, 0, now), Ok(()), "another user is not affected");
        assert_eq!(q.admit(0, 1_000_000, now), Ok(()));
    }

    #[test]
    fn the_rate_allows_a_burst_then_refills() {
        let mut q = quotas();
        let t0 = Instant::now();
        let admitted = (0..100).filter(|_| q.admit(7, 0, t0).is_ok()).count();
        assert_eq!(admitted, 20, "a burst of twice the rate");
        assert_eq!(q.admit(7, 0, t0), Err(Refusal::UserRate { owner: 7 }));
        assert_eq!(q.admit(8, 0, t0), Ok(()), "other users keep their own bucket");
        let later = t0 + Duration::from_millis(500);
        let refilled = (0..100).filter(|_| q.admit(7, 0, later).is_ok()).count();
        assert_eq!(refilled, 5);
    }

    #[test]
    fn buckets_stay_bounded() {
        let mut q = quotas();
        let t0 = Instant::now();
        for uid in 1..=(MAX_BUCKETS as u32 + 10) {
            q.admit(uid, 0, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(10);
        q.admit(1_000_000, 0, later).unwrap();
        assert!(q.buckets.len() <= MAX_BUCKETS);
    }
}
