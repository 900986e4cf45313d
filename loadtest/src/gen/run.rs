//! The open-loop scheduler: one task that starts every request when it comes due and
//! drives them all to completion (see the module docs of [`crate::gen`]).
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::plan::{GenError, LoadPlan, Target};
use super::record::{ProgressFn, Recorder, RunResult, SampleFn};
use super::schedule::{MixSampler, Schedule};
use super::target::{check_loopback, Ctx, Job};
use super::SEND_EARLY_MAX;
/// Runs `plan` against `target`. See [`run_with`].
pub async fn run(
    plan: &LoadPlan,
    target: &Target,
    label: &str,
    progress: Option<ProgressFn<'_>>,
) -> Result<RunResult, GenError> {
    run_with(plan, target, label, progress, None).await
}

/// Runs `plan` against `target`, calling `progress` once a second and `on_sample` for
/// every finished call. Refuses non-loopback targets and plans out of bounds before
/// sending anything.
pub async fn run_with(
    plan: &LoadPlan,
    target: &Target,
    label: &str,
    progress: Option<ProgressFn<'_>>,
    on_sample: Option<SampleFn<'_>>,
) -> Result<RunResult, GenError> {
    let schedule = Schedule::new(plan)?;
    check_loopback(target)?;
    let mix = MixSampler::new(&plan.mix)?;
    let ctx = Ctx::new(plan, target)?;
    let mut rec = Recorder::new(label, progress, on_sample)?;
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let timeout = Duration::from_millis(plan.request_timeout_ms);
    let count_max = if plan.count_max == 0 {
        u64::MAX
    } else {
        plan.count_max
    };

    let start = Instant::now();
    rec.start(start, plan.warmup_s);
    let mut inflight = FuturesUnordered::new();
    let mut index = 0u64;
    let mut next_offset_s = schedule.offset_s(0);
    // When scheduling ended (the last planned time, or the end of the plan).
    let mut schedule_end: Option<Instant> = None;
    let mut stop_s = schedule.end_s;
    let sleep = tokio::time::sleep_until(start);
    tokio::pin!(sleep);

    loop {
        let now = Instant::now();
        rec.advance_ticks(now, inflight.len());
        while schedule_end.is_none() {
            match next_offset_s {
                Some(offset_s) if index < count_max && offset_s < schedule.end_s => {
                    let planned = start + Duration::from_secs_f64(offset_s);
                    if planned > now + SEND_EARLY_MAX {
                        break;
                    }
                    let origin = latency_origin(planned, now);
                    let measured = offset_s >= schedule.warmup_s;
                    let op = ctx.op(&mix, &mut rng);
                    if inflight.len() >= plan.in_flight_max {
                        rec.refused(index, origin, now, measured, op);
                    } else {
                        let lead = rng.gen_range(0..ctx.leads.len());
                        rec.issued(index, origin, measured, op);
                        inflight.push(ctx.call(Job::First {
                            index,
                            planned,
                            origin,
                            measured,
                            op,
                            lead,
                        }));
                    }
                    index += 1;
                    next_offset_s = schedule.offset_s(index);
                }
                _ => {
                    // Time-bound: scheduling ends with the plan. Count-bound (or the ramp
                    // ran dry): it ends now, where the next request would have gone.
                    stop_s = next_offset_s.map_or(schedule.end_s, |o| o.min(schedule.end_s));
                    let time_bound = index < count_max && next_offset_s.is_some();
                    schedule_end = Some(if time_bound {
                        start + Duration::from_secs_f64(schedule.end_s)
                    } else {
                        now
                    });
                }
            }
        }
        let wake = match schedule_end {
            None => match next_offset_s {
                Some(o) => {
                    let planned = start + Duration::from_secs_f64(o);
                    let early = planned.checked_sub(SEND_EARLY_MAX).unwrap_or(planned);
                    early.min(rec.next_tick)
                }
                None => rec.next_tick,
            },
            Some(end) => {
                let cut = end + timeout;
                if inflight.is_empty() {
                    break;
                }
                if now >= cut {
                    rec.cut_stragglers(now);
                    break;
                }
                cut.min(rec.next_tick)
            }
        };
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                // Close the windows that ended before this completion first.
                rec.advance_ticks(done.at, inflight.len());
                if let Some(job) = rec.finish(done) {
                    inflight.push(ctx.call(job));
                }
            }
            () = &mut sleep => {}
        }
    }
    drop(inflight);
    let measure_s = (stop_s - schedule.warmup_s).max(0.0);
    Ok(rec.into_result(measure_s))
}

/// Where a request's latency counts from (module docs): its planned time, so a late start
/// (the generator's own lag) counts against the target as a stall would; or, if it went
/// out early, the moment it went, so an early start never flatters it. The earlier of the
/// two. (Until 2026-12-01 this was the later of the two, which measured an early request
/// from its planned time, up to [`SEND_EARLY_MAX`] less than it
/// took, and a late one from when it went, leaving out the generator's lag.)
pub(crate) fn latency_origin(planned: Instant, now: Instant) -> Instant {
    planned.min(now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_from_the_earlier_of_the_planned_and_the_actual_start() {
        let planned = Instant::now() + Duration::from_secs(1);
        let early = planned - Duration::from_micros(700);
        let late = planned + Duration::from_millis(3);
        assert_eq!(
            latency_origin(planned, early),
            early,
            "sent early: from when it went"
        );
        assert_eq!(
            latency_origin(planned, late),
            planned,
            "sent late: from the plan"
        );
        assert_eq!(latency_origin(planned, planned), planned);
    }
}
