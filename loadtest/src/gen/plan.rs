//! What a run is asked to do: the target, the call mix, the rate schedule and the plan;
//! and why a run can refuse to start.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::relay::FanoutTarget;
/// What a run loads.
#[derive(Debug, Clone)]
pub enum Target {
    /// The exchange's seller API.
    Exchange {
        addr: SocketAddr,
        seller_key: String,
        vertical: String,
    },
    /// The speed-of-light relay: POST a buyer-ping-shaped JSON, it fans out.
    Relay { addr: SocketAddr },
    /// The direct-to-buyer baseline: the generator itself fans out to the buyers with
    /// [`Fanout`](crate::relay::Fanout).
    Direct {
        targets: Vec<FanoutTarget>,
        deadline_ms: u64,
    },
}

/// Which seller calls an exchange run makes, as fractions (normalized by their sum; all
/// zero means pings only). Relay and direct targets always do pings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Mix {
    /// `/v1/ping` alone.
    pub ping: f64,
    /// `/v1/ping`, then `/v1/post` of the full lead when the ping answered `bid`.
    pub ping_post: f64,
    /// `/v1/leads`: the full lead in one call.
    pub direct_post: f64,
}

impl Mix {
    /// Pings only.
    pub const PING: Mix = Mix {
        ping: 1.0,
        ping_post: 0.0,
        direct_post: 0.0,
    };
}

/// How the planned rate moves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RateSchedule {
    /// The same rate throughout, warm-up included.
    Constant { rate_per_s: f64 },
    /// `from_per_s` during warm-up, then linear from `from_per_s` to `to_per_s` over the
    /// measured phase.
    Ramp { from_per_s: f64, to_per_s: f64 },
}

/// One run's plan.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub schedule: RateSchedule,
    /// Sent but not recorded: lets connections, caches and the target settle.
    pub warmup_s: f64,
    /// Recorded phase.
    pub measure_s: f64,
    /// Stop after this many requests (warm-up included) even if time remains; 0 = no
    /// count bound (the time bound always holds).
    pub count_max: u64,
    /// Requests outstanding at once; one more is refused, not queued (module docs).
    pub in_flight_max: usize,
    /// Per call (a ping and its post are separate calls); also the longest wait for
    /// stragglers after the last planned request.
    pub request_timeout_ms: u64,
    pub mix: Mix,
    /// Seeds the leads and the mix: the same seed sends the same requests.
    pub seed: u64,
    /// HTTP/1.1 keep-alive connections to the target (not used by the direct target).
    pub connections: usize,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error(
        "refusing to load {0}: the load generator only targets loopback \
         (127.0.0.0/8, ::1 or localhost), never another machine"
    )]
    NotLoopback(String),
    #[error("invalid load plan: {0}")]
    InvalidPlan(String),
    #[error("could not create a histogram: {0}")]
    Histogram(String),
}
