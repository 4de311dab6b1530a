//! Postgres claims held in open transactions ([`ClaimMode::Transaction`](crate::ClaimMode)).
//!
//! A claim is `SELECT … FOR UPDATE SKIP LOCKED` in a transaction left open while the batch is
//! published; `complete` and `fail` run in it and commit. Claiming writes nothing, so a claim
//! plus a complete costs about what one `DELETE … RETURNING` costs. Every settle commits, so
//! what it reports is durable: rows of the claim that are still unsettled get a lease first.
//! Settles find their rows by `ctid`: rows this transaction has locked cannot move, and a
//! TID scan skips the index descent per row that a lookup by key costs.
//!
//! The transactions run on the pool's sqlx connections directly ([`txn`]).
//!
//! [`share`] is the part of a pool held claims may take, [`txn`] a claim's transaction on a
//! pooled connection, [`state`] a store's open claims, [`claim`] the claims and settles.

mod claim;
mod share;
mod state;
mod txn;

pub(crate) use share::PoolShare;
pub(crate) use state::{HeldClaims, MIN_POOL, Prepared};
