//! Policy, in one place: what the daemon checks before it acts on a task's
//! behalf ([`gate`]: the seed's rules, identity, delegation), the users'
//! quotas ([`quota`]), and what the configuration's filters and limit rules
//! say of a task or a new node ([`rules`]).

pub mod gate;
pub mod quota;
pub mod rules;
