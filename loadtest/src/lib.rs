//! Placeholder until the loadtest issue fills this crate.
