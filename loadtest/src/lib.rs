//! # loadtest: the instrument behind every pingpost performance figure
//!
//! - `sim`: simulated buyers built on the bidder SDK, each with its own latency
//!   distribution, bid probability, prices, hangs, errors and post rejects; and the
//!   exchange configuration that points at them.
//! - `relay`: the speed-of-light reference, a bare fan-out server with no logic.
//! - `gen`: the open-loop load generator (latency from the planned send time, so
//!   coordinated omission is corrected), HdrHistogram percentiles.
//! - `report`: tables, JSON and SVG pictures of a run.
//! - `p4`: P4, a failing buyer is isolated: the run's figures against its targets, and
//!   the verdict.
//! - `p8`: P8, the post path: the exchange's own timing of each sale, from the buyer's
//!   accept to the seller's answer with the sale on disk, read from its histogram.
//! - `ports`: loopback ports for the exchange's listeners, distinct within a run.
//! - `swap`: P6, hot swap under load: synthetic XGBoost model sets, the configuration
//!   that serves them, and the task that swaps models and reloads the configuration.
//!
//! Every load run is bounded in count and time and only ever targets loopback.

pub mod children;
pub mod gen;
pub mod market;
pub mod p4;
pub mod p8;
pub mod ports;
pub mod relay;
pub mod report;
pub mod sim;
pub mod swap;
