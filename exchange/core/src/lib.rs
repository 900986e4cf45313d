//! The sans-IO auction core: eligibility, cap reservations, ranking and award, quotes and
//! their fallback order, buyer circuit breakers. Every function takes `now` (Unix
//! milliseconds) as an argument and does no I/O, so all of it is tested deterministically.
//!
//! What the core owns: every decision of an auction that does not need the network.
//! - [`schedule`]: is a buyer open now, in its own time zone.
//! - [`caps`]: per-buyer counts and budget per local hour, day, week and month, with
//!   reservations that a firm quote holds until it is posted or expires.
//! - [`eligibility`]: which buyers of a vertical may see a lead, and why the others not,
//!   through [`buyer_index`] (per-vertical sets of buyers by state and ZIP, over
//!   [`bitset`]s), rebuilt with every configuration.
//! - [`award`]: seller price under the payout model, reserve, rank order, fallback order.
//! - [`quotes`]: the firm quotes and the post state machine (a ping is posted once).
//! - [`breaker`]: which buyers are failing and when to probe them.
//! - [`dedup`]: which consumers were sold within their vertical's window, and which are
//!   being posted now (`duplicate`).
//! - [`auction`]: one auction as a state machine (who to ping until when, which answers
//!   count, the award), and [`post`]: one post as a state machine (who to deliver to
//!   next, with which cap hold, and what each outcome means).
//! - [`settlement`]: the one place a cap reservation is made and settled, and the
//!   interfaces the shell implements (cap store, buyer health); [`effect`]: what the
//!   machines ask the shell to do; [`record`]: the ledger's one record type.
//! - [`ids`]: stable buyer and seller keys, so per-party state survives a reload;
//!   [`slots`]: the grow-only tables keyed by them.
//!
//! Architecture invariant: the core makes every auction decision; the shell sends,
//! waits and carries out effects.
//!
//! Architecture invariant: the core never does I/O, never reads a clock (time is the
//! `now` argument), never spawns or awaits, and never panics on any input. It logs
//! nothing, so it can leak no PII; the shell logs the decisions it returns. Its shared
//! state (caps, quotes, breakers) is safe to call from many tasks at once.
//!
//! API boundary: the async shell (HTTP server, buyer clients, timers, ledger) calls these
//! functions and carries out their decisions and effects; it never changes caps or quote
//! state except through them.

pub mod auction;
pub mod award;
pub mod bitset;
pub mod breaker;
pub mod buyer_index;
pub mod caps;
pub mod compact;
pub mod config;
pub mod dedup;
pub mod effect;
pub mod eligibility;
pub mod ids;
pub mod model;
pub mod post;
pub mod quotes;
pub mod record;
pub mod schedule;
pub mod settlement;
pub mod slots;
#[cfg(test)]
mod tests_v2;
#[cfg(test)]
pub(crate) mod testutil;

/// Wall-clock time as Unix milliseconds. The shell's clock derives it from tokio's
/// (pausable) clock, so paused-time tests move it too.
pub type UnixMs = i64;
