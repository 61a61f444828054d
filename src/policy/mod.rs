//! Policy, in one place: what the daemon checks before it acts on a task's
//! behalf ([`gate`]: the seed's rules, identity, delegation), the users'
//! quotas ([`quota`]), what the configuration's filters and limit rules
//! say of a task or a new node ([`rules`]), the API's permission table
//! ([`perm`], with a caller's [`territory`]) and strict mode's ([`strict`]).

pub mod gate;
pub mod perm;
pub mod quota;
pub mod rules;
pub mod strict;
pub mod territory;
