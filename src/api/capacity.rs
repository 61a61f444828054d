//! The API's capacity, as pure accounting: who may open one more
//! connection or start one more request, and which connections go first
//! when the memory the server holds for them is spent. No I/O here: the
//! server ([`super::server`]) asks, and acts on the answers.
//!
//! - Callers with CAP_SYS_ADMIN in the daemon's user namespace (root, for a
//!   system daemon) are [`Class::Admin`]: a share of every [`Pool`] is kept
//!   for them, so that no user, and no number of users together, can take
//!   the administrator's access to its own daemon.
//! - Everyone else counts against its owner ([`Class::User`]): the user its
//!   set belongs to, a user's subordinate uids included
//!   ([`crate::sys::owner`]); a caller that could not be identified counts
//!   as one owner of its own kind.

use std::collections::HashMap;

/// Connections at once, over all callers.
pub const MAX_CONNECTIONS: usize = 1024;
/// Of [`MAX_CONNECTIONS`], kept for [`Class::Admin`] callers.
pub const ADMIN_CONNECTIONS: usize = 64;
/// Connections at once per owner without CAP_SYS_ADMIN.
pub const CONNECTIONS_PER_OWNER: usize = 128;
/// Requests under way (queued for a worker or being carried out) at once.
pub const MAX_JOBS: usize = 256;
/// Of [`MAX_JOBS`], kept for [`Class::Admin`] callers.
pub const ADMIN_JOBS: usize = 32;
/// Requests under way at once per owner without CAP_SYS_ADMIN.
pub const JOBS_PER_OWNER: usize = 16;
/// The bytes the server may hold for all connections together: unread
/// answers, unfinished request lines, and the events not yet sent to every
/// subscriber. Beyond it, connections are dropped ([`victims`]).
pub const MEMORY_BUDGET: usize = 32 << 20;

/// Whom a connection counts as, fixed when it is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// CAP_SYS_ADMIN in the daemon's user namespace when it connected.
    Admin,
    /// Anyone else, by owner; `None`: the caller could not be identified.
    User(Option<u32>),
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Class::Admin => write!(f, "a caller with CAP_SYS_ADMIN"),
            Class::User(Some(owner)) => write!(f, "user {owner}"),
            Class::User(None) => write!(f, "callers that could not be identified"),
        }
    }
}

/// Why a [`Pool`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Every slot is taken.
    All { size: usize },
    /// The slots open to callers without CAP_SYS_ADMIN are taken; `kept`
    /// more are kept for those with it.
    Users { size: usize, kept: usize },
    /// The owner holds its share.
    Owner { class: Class, share: usize },
}

/// What a refused connection is told, after "too many connections".
impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::All { size } => write!(f, "({size}); retry later"),
            Full::Users { size, kept } => write!(f, "of callers without CAP_SYS_ADMIN ({size}; {kept} more are kept for callers with it); retry later"),
            Full::Owner { class, share } => write!(f, "of {class} (at most {share} per user, its subordinate uids included); close some"),
        }
    }
}

/// A number of slots (connections, or requests under way): at most `size`
/// in all, `kept` of them only for [`Class::Admin`], at most `share` per
/// owner of the others.
#[derive(Debug)]
pub struct Pool {
    size: usize,
    kept: usize,
    share: usize,
    admin: usize,
    users: usize,
    per_owner: HashMap<Option<u32>, usize>,
}

impl Pool {
    pub fn new(size: usize, kept: usize, share: usize) -> Pool {
        assert!(kept <= size && share <= size, "a pool's shares fit in it");
        Pool { size, kept, share, admin: 0, users: 0, per_owner: HashMap::new() }
    }

    /// The connections pool of the server.
    pub fn connections() -> Pool {
        Pool::new(MAX_CONNECTIONS, ADMIN_CONNECTIONS, CONNECTIONS_PER_OWNER)
    }

    /// The requests-under-way pool of the server.
    pub fn jobs() -> Pool {
        Pool::new(MAX_JOBS, ADMIN_JOBS, JOBS_PER_OWNER)
    }

    /// Slots taken in all.
    pub fn taken(&self) -> usize {
        self.admin + self.users
    }

    /// Slots `class` holds (for an admin: all admins together).
    pub fn held_by(&self, class: Class) -> usize {
        match class {
            Class::Admin => self.admin,
            Class::User(owner) => self.per_owner.get(&owner).copied().unwrap_or(0),
        }
    }

    /// Whether `class` could take a slot now.
    pub fn check(&self, class: Class) -> Result<(), Full> {
        if self.taken() >= self.size {
            return Err(Full::All { size: self.size });
        }
        let Class::User(owner) = class else { return Ok(()) };
        if self.users >= self.size - self.kept {
            return Err(Full::Users { size: self.size - self.kept, kept: self.kept });
        }
        if self.per_owner.get(&owner).copied().unwrap_or(0) >= self.share {
            return Err(Full::Owner { class, share: self.share });
        }
        Ok(())
    }

    /// Takes a slot for `class`, or says why not.
    pub fn take(&mut self, class: Class) -> Result<(), Full> {
        self.check(class)?;
        match class {
            Class::Admin => self.admin += 1,
            Class::User(owner) => {
                self.users += 1;
                *self.per_owner.entry(owner).or_insert(0) += 1;
            }
        }
        Ok(())
    }

    /// Gives back a slot `class` took.
    pub fn release(&mut self, class: Class) {
        match class {
            Class::Admin => self.admin = self.admin.saturating_sub(1),
            Class::User(owner) => {
                self.users = self.users.saturating_sub(1);
                if let Some(n) = self.per_owner.get_mut(&owner) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_owner.remove(&owner);
                    }
                }
            }
        }
    }
}

/// What one connection holds, for [`victims`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding {
    pub key: u64,
    pub class: Class,
    /// Bytes of its own: unread answers, unfinished request lines.
    pub own: usize,
    /// A subscriber's events not yet sent to it (bytes of the shared log).
    pub behind: Option<usize>,
    /// Its last send found its socket full: it is not reading.
    pub stalled: bool,
}

/// The connections to drop so that what the server holds fits in `budget`:
/// `own` bytes of every connection, plus the shared event log, which spans
/// the subscriber most behind (`log` bytes now; `log - most behind` of it is
/// held whoever subscribes). Never an admin's connection. First the stalled
/// subscribers, the most behind first; then the connections holding the
/// most bytes of their own.
pub fn victims(holdings: &[Holding], log: usize, budget: usize) -> Vec<u64> {
    let behind = |h: &Holding| h.behind.unwrap_or(0);
    let mut own: usize = holdings.iter().map(|h| h.own).sum();
    if own + log <= budget {
        return vec![];
    }
    let slack = log.saturating_sub(holdings.iter().map(behind).max().unwrap_or(0));
    let stalled_subscriber = |h: &Holding| h.stalled && behind(h) > 0;
    let mut order: Vec<&Holding> = holdings.iter().filter(|h| h.class != Class::Admin && (h.own > 0 || behind(h) > 0)).collect();
    order.sort_by_key(|h| (!stalled_subscriber(h), std::cmp::Reverse(if stalled_subscriber(h) { behind(h) } else { h.own }), h.key));
    let (mut chosen, mut dropped) = (Vec::new(), std::collections::HashSet::new());
    for victim in order {
        chosen.push(victim.key);
        dropped.insert(victim.key);
        own -= victim.own;
        let log_left = holdings.iter().filter(|h| !dropped.contains(&h.key)).filter_map(|h| h.behind).max().map_or(0, |b| b + slack);
        if own + log_left <= budget {
            break;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Class = Class::User(Some(1000));
    const B: Class = Class::User(Some(1001));

    #[test]
    fn one_owner_gets_its_share_and_no_more() {
        let mut p = Pool::new(10, 2, 3);
        for _ in 0..3 {
            p.take(A).unwrap();
        }
        assert_eq!(p.take(A), Err(Full::Owner { class: A, share: 3 }));
        assert_eq!(p.held_by(A), 3);
        // Another owner is not affected; a released slot can be taken again.
        p.take(B).unwrap();
        p.release(A);
        p.take(A).unwrap();
        assert_eq!((p.taken(), p.held_by(A), p.held_by(B)), (4, 3, 1));
    }

    #[test]
    fn the_admins_reserve_is_kept_whatever_the_users_do() {
        let mut p = Pool::new(10, 2, 3);
        // Many owners together take all the users may take: 8.
        let mut taken = 0;
        for owner in 0..20 {
            while p.take(Class::User(Some(owner))).is_ok() {
                taken += 1;
            }
        }
        assert_eq!(taken, 8);
        assert_eq!(p.check(Class::User(Some(99))), Err(Full::Users { size: 8, kept: 2 }));
        // Unidentified callers are one owner among the others.
        assert!(p.check(Class::User(None)).is_err());
        // Admins get the two kept, then nothing is left for anyone.
        p.take(Class::Admin).unwrap();
        p.take(Class::Admin).unwrap();
        assert_eq!(p.take(Class::Admin), Err(Full::All { size: 10 }));
        // Admins may also take what users leave free.
        p.release(Class::User(Some(0)));
        p.take(Class::Admin).unwrap();
        assert_eq!(p.held_by(Class::Admin), 3);
        assert_eq!(p.check(Class::User(Some(0))), Err(Full::All { size: 10 }));
    }

    #[test]
    fn unidentified_callers_share_one_owners_share() {
        let mut p = Pool::new(10, 0, 2);
        p.take(Class::User(None)).unwrap();
        p.take(Class::User(None)).unwrap();
        assert_eq!(p.take(Class::User(None)), Err(Full::Owner { class: Class::User(None), share: 2 }));
        p.release(Class::User(None));
        p.release(Class::User(None));
        p.release(Class::User(None));
        assert_eq!(p.taken(), 0, "releasing more than was taken does not wrap");
    }

    #[test]
    fn the_server_pools_keep_room_for_the_admin() {
        let (c, j) = (Pool::connections(), Pool::jobs());
        assert!(c.size - c.kept >= CONNECTIONS_PER_OWNER && c.kept > 0);
        assert!(j.size - j.kept >= JOBS_PER_OWNER && j.kept > 0);
    }

    fn holding(key: u64, class: Class, own: usize, behind: Option<usize>, stalled: bool) -> Holding {
        Holding { key, class, own, behind, stalled }
    }

    #[test]
    fn within_the_budget_nobody_is_dropped() {
        let h = [holding(1, A, 10, Some(50), true), holding(2, B, 30, None, false)];
        assert_eq!(victims(&h, 60, 100), Vec::<u64>::new());
    }

    #[test]
    fn stalled_subscribers_go_first_the_most_behind_first() {
        // The log spans the most behind (90) plus 10 of slack.
        let h = [
            holding(1, A, 0, Some(40), true),
            holding(2, B, 0, Some(90), true),
            holding(3, A, 0, Some(5), false),
            holding(4, B, 30, None, false),
        ];
        // 30 + 100 = 130 > 100: dropping 2 leaves a log of 40 + 10: 80.
        assert_eq!(victims(&h, 100, 100), vec![2]);
        // A tighter budget drops 1 too (30 + 5 + 10 = 45), then connection 4.
        assert_eq!(victims(&h, 100, 45), vec![2, 1]);
        assert_eq!(victims(&h, 100, 20), vec![2, 1, 4]);
    }

    #[test]
    fn then_the_connections_holding_the_most_and_never_an_admin() {
        let h = [
            holding(1, Class::Admin, 500, None, true),
            holding(2, A, 100, None, true),
            holding(3, B, 300, None, false),
            holding(4, A, 0, Some(0), true),
        ];
        assert_eq!(victims(&h, 0, 700), vec![3]);
        assert_eq!(victims(&h, 0, 550), vec![3, 2]);
        // The admin's own bytes stay, even beyond the budget; a subscriber
        // that holds nothing is not dropped for nothing.
        assert_eq!(victims(&h, 0, 100), vec![3, 2]);
    }
}
