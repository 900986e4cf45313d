//! When requests go out and what each one does: the planned offsets that integrate the
//! rate schedule (with the plan's bounds checked), and the call mix.
use rand::Rng;

use super::plan::{GenError, LoadPlan, Mix, RateSchedule};
use super::record::SampleKind;
use super::{
    CONNECTIONS_MAX, IN_FLIGHT_MAX_MAX, RATE_PER_S_MAX, REQUEST_TIMEOUT_MS_MAX, RUN_S_MAX,
};

/// Planned offsets: `offset_s(i)` is when request `i` goes out, seconds after the start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    pub(super) warmup_s: f64,
    measure_s: f64,
    pub(super) end_s: f64,
    /// Rate during warm-up and at the start of the measured phase.
    from_per_s: f64,
    /// Rate change per second of the measured phase.
    slope_per_s2: f64,
    /// Requests planned in the warm-up (fractional: the cumulative count).
    warmup_count: f64,
}

impl Schedule {
    pub(super) fn new(plan: &LoadPlan) -> Result<Schedule, GenError> {
        let bad = |m: String| Err(GenError::InvalidPlan(m));
        let (from, to) = match plan.schedule {
            RateSchedule::Constant { rate_per_s } => (rate_per_s, rate_per_s),
            RateSchedule::Ramp {
                from_per_s,
                to_per_s,
            } => (from_per_s, to_per_s),
        };
        for (name, r) in [("rate", from), ("ramp end rate", to)] {
            if !(0.0..=RATE_PER_S_MAX).contains(&r) {
                return bad(format!("{name} {r}/s is outside 0..={RATE_PER_S_MAX}/s"));
            }
        }
        if from <= 0.0 && to <= 0.0 {
            return bad("the rate must be above 0/s".into());
        }
        for (name, s) in [("warmup_s", plan.warmup_s), ("measure_s", plan.measure_s)] {
            if !(0.0..=RUN_S_MAX).contains(&s) {
                return bad(format!("{name} {s} is outside 0..={RUN_S_MAX} s"));
            }
        }
        let end_s = plan.warmup_s + plan.measure_s;
        if end_s > RUN_S_MAX || end_s <= 0.0 {
            return bad(format!(
                "warm-up plus measured phase must be above 0 and at most {RUN_S_MAX} s"
            ));
        }
        if plan.in_flight_max == 0 || plan.in_flight_max > IN_FLIGHT_MAX_MAX {
            return bad(format!(
                "in_flight_max {} is outside 1..={IN_FLIGHT_MAX_MAX}",
                plan.in_flight_max
            ));
        }
        if plan.connections == 0 || plan.connections > CONNECTIONS_MAX {
            return bad(format!(
                "connections {} is outside 1..={CONNECTIONS_MAX}",
                plan.connections
            ));
        }
        if plan.request_timeout_ms == 0 || plan.request_timeout_ms > REQUEST_TIMEOUT_MS_MAX {
            return bad(format!(
                "request_timeout_ms {} is outside 1..={REQUEST_TIMEOUT_MS_MAX}",
                plan.request_timeout_ms
            ));
        }
        let slope = if plan.measure_s > 0.0 {
            (to - from) / plan.measure_s
        } else {
            0.0
        };
        Ok(Schedule {
            warmup_s: plan.warmup_s,
            measure_s: plan.measure_s,
            end_s,
            from_per_s: from,
            slope_per_s2: slope,
            warmup_count: from * plan.warmup_s,
        })
    }

    /// When request `i` is planned, or `None` if the schedule never reaches it.
    pub(super) fn offset_s(&self, i: u64) -> Option<f64> {
        let n = i as f64;
        if n < self.warmup_count {
            return Some(n / self.from_per_s);
        }
        // Cumulative count in the measured phase: N(t) = a t + k t^2 / 2; solve for t in
        // the form that stays exact when k is 0 and stable when a is 0.
        let left = n - self.warmup_count;
        let (a, k) = (self.from_per_s, self.slope_per_s2);
        if left <= 0.0 {
            return Some(self.warmup_s);
        }
        let disc = a * a + 2.0 * k * left;
        if disc < 0.0 {
            return None;
        }
        let denom = a + disc.sqrt();
        if denom <= 0.0 {
            return None;
        }
        let t = 2.0 * left / denom;
        if !t.is_finite() || t > self.measure_s {
            return None;
        }
        Some(self.warmup_s + t)
    }
}

/// What one request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Ping,
    PingPost,
    DirectPost,
    Relay,
    Direct,
}

impl Op {
    /// Which histogram the first call of this op goes to.
    pub(super) fn kind(self) -> SampleKind {
        if self == Op::DirectPost {
            SampleKind::Post
        } else {
            SampleKind::Auction
        }
    }
}

/// Cumulative thresholds of the mix.
#[derive(Debug, Clone, Copy)]
pub(super) struct MixSampler {
    ping_upto: f64,
    ping_post_upto: f64,
}

impl MixSampler {
    pub(super) fn new(mix: &Mix) -> Result<MixSampler, GenError> {
        let parts = [mix.ping, mix.ping_post, mix.direct_post];
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(GenError::InvalidPlan(format!(
                "mix fractions must be finite and >= 0, got {mix:?}"
            )));
        }
        let total: f64 = parts.iter().sum();
        if total <= 0.0 {
            return Ok(MixSampler {
                ping_upto: 1.0,
                ping_post_upto: 1.0,
            });
        }
        Ok(MixSampler {
            ping_upto: mix.ping / total,
            ping_post_upto: (mix.ping + mix.ping_post) / total,
        })
    }

    pub(super) fn pick(&self, rng: &mut impl Rng) -> Op {
        let x: f64 = rng.gen();
        if x < self.ping_upto {
            Op::Ping
        } else if x < self.ping_post_upto {
            Op::PingPost
        } else {
            Op::DirectPost
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: RateSchedule, warmup_s: f64, measure_s: f64) -> LoadPlan {
        LoadPlan {
            schedule,
            warmup_s,
            measure_s,
            count_max: 0,
            in_flight_max: 100,
            request_timeout_ms: 1000,
            mix: Mix::PING,
            seed: 1,
            connections: 4,
        }
    }

    fn count_until(s: &Schedule, end_s: f64) -> u64 {
        let mut i = 0;
        while let Some(o) = s.offset_s(i) {
            if o >= end_s {
                break;
            }
            i += 1;
        }
        i
    }

    #[test]
    fn constant_schedule_is_evenly_spaced() {
        let s = Schedule::new(&plan(
            RateSchedule::Constant { rate_per_s: 1000.0 },
            1.0,
            2.0,
        ))
        .unwrap();
        assert_eq!(s.offset_s(0), Some(0.0));
        assert!((s.offset_s(500).unwrap() - 0.5).abs() < 1e-12);
        assert!((s.offset_s(1500).unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(count_until(&s, s.warmup_s), 1000);
        assert_eq!(count_until(&s, s.end_s), 3000);
    }

    #[test]
    fn ramp_integrates_the_rate() {
        // 100/s during 1 s of warm-up, then 100 -> 300/s over 2 s: 100 + (100+300)/2*2.
        let s = Schedule::new(&plan(
            RateSchedule::Ramp {
                from_per_s: 100.0,
                to_per_s: 300.0,
            },
            1.0,
            2.0,
        ))
        .unwrap();
        assert_eq!(count_until(&s, s.warmup_s), 100);
        let total = count_until(&s, s.end_s);
        assert!((total as i64 - 500).abs() <= 1, "{total}");
        // Halfway through the ramp: 100 of warm-up + 100/s * 1 s + (100/s^2) * 1 s^2 / 2.
        let mid = count_until(&s, 2.0);
        assert!((mid as i64 - 250).abs() <= 1, "{mid}");
        // Ramps down and from zero work too.
        let down = Schedule::new(&plan(
            RateSchedule::Ramp {
                from_per_s: 300.0,
                to_per_s: 0.0,
            },
            0.0,
            2.0,
        ))
        .unwrap();
        let n = count_until(&down, down.end_s);
        assert!((n as i64 - 300).abs() <= 1, "{n}");
        let up = Schedule::new(&plan(
            RateSchedule::Ramp {
                from_per_s: 0.0,
                to_per_s: 300.0,
            },
            1.0,
            2.0,
        ))
        .unwrap();
        let n = count_until(&up, up.end_s);
        assert!((n as i64 - 300).abs() <= 1, "{n}");
    }

    #[test]
    fn bad_plans_are_refused() {
        for p in [
            plan(RateSchedule::Constant { rate_per_s: 0.0 }, 1.0, 1.0),
            plan(
                RateSchedule::Constant {
                    rate_per_s: f64::NAN,
                },
                1.0,
                1.0,
            ),
            plan(RateSchedule::Constant { rate_per_s: 10.0 }, -1.0, 1.0),
            plan(RateSchedule::Constant { rate_per_s: 10.0 }, 0.0, 1e9),
            LoadPlan {
                connections: 0,
                ..plan(RateSchedule::Constant { rate_per_s: 10.0 }, 0.0, 1.0)
            },
        ] {
            assert!(
                matches!(Schedule::new(&p), Err(GenError::InvalidPlan(_))),
                "{p:?}"
            );
        }
    }
}
