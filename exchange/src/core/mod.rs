//! The sans-IO auction core: eligibility, cap reservations, ranking and award, quotes and
//! their fallback order, buyer circuit breakers. Every function takes `now` (Unix
//! milliseconds) as an argument and does no I/O, so all of it is tested deterministically.

/// Wall-clock time as Unix milliseconds. The shell's clock derives it from tokio's
/// (pausable) clock, so paused-time tests move it too.
pub type UnixMs = i64;
