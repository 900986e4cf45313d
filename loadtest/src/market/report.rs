//! The market's report: JSON (everything), a markdown summary in the loadtest report
//! style, and an SVG of realized revenue per lead over the held-out leads (rolling
//! window) for the three legs, with the drift marked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::accounting::LegSummary;
use super::accounting::{
    recovery, replay_lead, revenue_series, rolling_mean, summarize, Rank, Recovery,
};
use super::config::Leg;
use super::run::MarketRun;
use super::world::{lead, BuyerProfile, World, DRIFT_BASE_MARGIN};
use super::MarketOpts;

/// EV must realize at least this times the price-only leg.
pub const TARGET_EV_OVER_PRICE: f64 = 1.25;
/// EV must realize at least this times the oracle.
pub const TARGET_EV_OVER_ORACLE: f64 = 0.95;
/// After the drift, the rolling EV/oracle ratio must get back to this.
pub const RECOVERY_RATIO: f64 = 0.9;
/// Points per series in the JSON and the picture, at most.
const SERIES_POINTS_MAX: usize = 1_000;

/// One target, met or missed (or not measured).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The goal, e.g. `>= 1.25`.
    pub goal: String,
    /// The measured value.
    pub value: Option<f64>,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
    /// Decimals the table shows the value with (0 for a count of leads: black-box round
    /// 232b saw `187.000`).
    #[serde(skip)]
    pub digits: usize,
}

/// One leg's result.
#[derive(Debug, Clone, Serialize)]
pub struct LegReport {
    /// The leg.
    pub leg: Leg,
    /// What it realized on the held-out leads.
    pub summary: LegSummary,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct MarketReport {
    /// `"market"`.
    pub scenario: String,
    /// UTC time of the report.
    pub date: String,
    /// `git rev-parse --short HEAD`.
    pub commit: String,
    /// The options.
    pub opts: MarketOpts,
    /// The buyers (profiles, with their truth).
    pub buyers: Vec<BuyerProfile>,
    /// Their config ids.
    pub buyer_ids: Vec<String>,
    /// The drift buyer's base margin after the drift.
    pub drift_base_margin: f32,
    /// The learning period (EV leg, no model).
    pub learning: Option<LegSummary>,
    /// The held-out legs.
    pub legs: Vec<LegReport>,
    /// EV / price-only realized revenue per lead.
    pub ev_over_price: Option<f64>,
    /// EV / oracle.
    pub ev_over_oracle: Option<f64>,
    /// The targets.
    pub targets: Vec<Target>,
    /// Each leg against the idealized replays (informational, no target): price /
    /// replay-by-price (close to 1 when the exchange awards and falls back as modelled),
    /// EV and oracle / replay-by-true-EV (how much of the ideal lift they realize).
    pub versus_replay: BTreeMap<String, f64>,
    /// An idealized exchange on the same held-out leads and draws (no exploration, no
    /// estimation error, the exchange's fallback rule): ranking by price, and by bid x
    /// the true P. What the price and oracle legs should come close to.
    pub replay: BTreeMap<String, LegSummary>,
    /// After the drift.
    pub recovery: Option<Recovery>,
    /// The version `pingpost train` printed.
    pub trained_version: Option<String>,
    /// Dispositions refused, per leg, with the first refusal.
    pub disposition_errors: Vec<(Leg, u64, Option<String>)>,
    /// What was skipped or failed.
    pub notes: Vec<String>,
    /// Seconds per phase.
    pub phase_s: Vec<(String, f64)>,
    /// Rolling realized revenue per lead per leg: `(held-out lead, dollars)`.
    pub rolling: BTreeMap<String, Vec<(u64, f64)>>,
    /// Realized revenue per lead of each simulated day, per leg (`learning` for the
    /// learning period).
    pub by_day: BTreeMap<String, Vec<f64>>,
}

/// Realized dollars per lead of each `per_day`-lead day (the last one may be partial).
pub fn per_day(outcomes: &[super::accounting::LeadOutcome], per_day: u64) -> Vec<f64> {
    outcomes
        .chunks(per_day.max(1) as usize)
        .map(|day| {
            let sum: i64 = day.iter().map(|o| o.realized_micros()).sum();
            sum as f64 / 1e6 / day.len().max(1) as f64
        })
        .collect()
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn cmd_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Builds the report from what the run measured.
pub fn build(o: &MarketOpts, world: &World, run: &MarketRun) -> MarketReport {
    let n = world.buyers.len();
    let per_lead = |leg: Leg| {
        run.held_out
            .iter()
            .find(|(l, outs)| *l == leg && !outs.is_empty())
            .map(|(_, outs)| summarize(outs, n).realized_per_lead)
    };
    let ev_over_price = ratio(per_lead(Leg::Ev), per_lead(Leg::Price));
    let ev_over_oracle = ratio(per_lead(Leg::Ev), per_lead(Leg::Oracle));
    let series = |leg: Leg| {
        run.held_out
            .iter()
            .find(|(l, _)| *l == leg)
            .map(|(_, outs)| revenue_series(outs))
    };
    let rec = match (o.drift_at_lead, series(Leg::Ev), series(Leg::Oracle)) {
        (Some(d), Some(ev), Some(or)) if !ev.is_empty() && !or.is_empty() => {
            Some(recovery(&ev, &or, d as usize, o.window, RECOVERY_RATIO))
        }
        _ => None,
    };
    let met = |v: Option<f64>, goal: f64| v.map(|v| v >= goal);
    let mut targets = vec![
        Target {
            name: "EV / price-only realized revenue per lead".into(),
            goal: format!(">= {TARGET_EV_OVER_PRICE}"),
            value: ev_over_price,
            met: met(ev_over_price, TARGET_EV_OVER_PRICE),
            digits: 3,
        },
        Target {
            name: "EV / oracle realized revenue per lead".into(),
            goal: format!(">= {TARGET_EV_OVER_ORACLE}"),
            value: ev_over_oracle,
            met: met(ev_over_oracle, TARGET_EV_OVER_ORACLE),
            digits: 3,
        },
    ];
    if let Some(r) = &rec {
        targets.push(Target {
            name: format!("drift: leads until the rolling EV/oracle ratio ({}-lead window) is back to >= {RECOVERY_RATIO} for good", r.window),
            goal: "reached within the run".into(),
            value: r.recovered_after_leads.map(|x| x as f64),
            met: Some(r.recovered_after_leads.is_some()),
            digits: 0,
        });
    }
    let test = o.learn_leads()..o.learn_leads() + o.test_leads();
    let mut replay = BTreeMap::new();
    let mut replayed = Vec::new();
    for (name, rank) in [("price", Rank::Price), ("true_ev", Rank::TrueEv)] {
        let outs: Vec<_> = test
            .clone()
            .map(|i| replay_lead(world, i, &lead(world.seed, i).features, rank))
            .collect();
        replay.insert(name.to_string(), summarize(&outs, n));
        replayed.push((format!("replay_{name}"), outs));
    }
    let mut versus_replay = BTreeMap::new();
    for (leg, reference) in [
        (Leg::Price, "price"),
        (Leg::Ev, "true_ev"),
        (Leg::Oracle, "true_ev"),
    ] {
        let ideal = replay.get(reference).map(|s| s.realized_per_lead);
        if let Some(x) = ratio(per_lead(leg), ideal) {
            versus_replay.insert(format!("{} / replay {reference}", leg.name()), x);
        }
    }
    let mut rolling = BTreeMap::new();
    let legs = run
        .held_out
        .iter()
        .map(|(leg, outs)| (leg.name().to_string(), outs))
        .chain(replayed.iter().map(|(name, outs)| (name.clone(), outs)));
    for (name, outs) in legs {
        let r = rolling_mean(&revenue_series(outs), o.window);
        let stride = (r.len() / SERIES_POINTS_MAX).max(1);
        let points: Vec<(u64, f64)> = r
            .iter()
            .enumerate()
            .filter(|(i, _)| i % stride == 0 || *i + 1 == r.len())
            .filter_map(|(i, v)| v.map(|v| (i as u64, v)))
            .collect();
        rolling.insert(name, points);
    }
    let mut by_day = BTreeMap::new();
    if !run.learning.is_empty() {
        by_day.insert(
            "learning".to_string(),
            per_day(&run.learning, o.leads_per_day),
        );
    }
    for (leg, outs) in &run.held_out {
        by_day.insert(leg.name().to_string(), per_day(outs, o.leads_per_day));
    }
    MarketReport {
        scenario: "market".into(),
        date: cmd_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        commit: Some(cmd_line("git", &["rev-parse", "--short", "HEAD"]))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown: not run in a git checkout".into()),
        opts: o.clone(),
        buyers: world.buyers.clone(),
        buyer_ids: world.ids.clone(),
        drift_base_margin: DRIFT_BASE_MARGIN,
        learning: (!run.learning.is_empty()).then(|| summarize(&run.learning, n)),
        legs: run
            .held_out
            .iter()
            .map(|(leg, outs)| LegReport {
                leg: *leg,
                summary: summarize(outs, n),
            })
            .collect(),
        ev_over_price,
        ev_over_oracle,
        targets,
        versus_replay,
        replay,
        recovery: rec,
        trained_version: run.trained_version.clone(),
        disposition_errors: run.disposition_errors.clone(),
        notes: run.notes.clone(),
        phase_s: run.phase_s.clone(),
        rolling,
        by_day,
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

/// The markdown summary (what `docs/BENCHMARKS.md` quotes).
pub fn markdown(r: &MarketReport) -> String {
    let o = &r.opts;
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# loadtest run market (seed {}, commit {}, {})\n",
        o.seed, r.commit, r.date
    );
    let _ = writeln!(
        m,
        "{} buyers; {} leads/day; learning {}, held-out {} days ({} leads); drift: {}; EV leg `retrain_after_dispositions` = {}; rolling window {} leads.\n",
        r.buyers.len(),
        o.leads_per_day,
        if r.learning.is_some() {
            format!("{} days ({} leads)", o.learn_days, o.learn_leads())
        } else {
            "not run".to_string()
        },
        o.test_days,
        o.test_leads(),
        match o.drift_at_lead {
            Some(d) => format!("buyer `{}` at held-out lead {d} (base margin -> {})", r.buyer_ids.get(o.drift_buyer).map_or("?", |s| s.as_str()), r.drift_base_margin),
            None => "none".into(),
        },
        if o.retrain_after > 0 { o.retrain_after.to_string() } else { "unset".into() },
        o.window,
    );
    m.push_str("| leg | leads | quoted | sold | kept | returned | rejected posts | errors | realized $/lead |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut row = |name: &str, s: &LegSummary| {
        let _ = writeln!(
            m,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.3} |",
            s.leads,
            s.quoted,
            s.sold,
            s.kept,
            s.returned,
            s.rejected_posts,
            s.errors,
            s.realized_per_lead
        );
    };
    if let Some(l) = &r.learning {
        row("learning (EV, no model)", l);
    }
    for l in &r.legs {
        row(l.leg.name(), &l.summary);
    }
    for (name, s) in &r.replay {
        row(&format!("replay: ideal {name}"), s);
    }
    m.push_str("\n| target | goal | value | verdict |\n|---|---|---|---|\n");
    for t in &r.targets {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            fmt_opt(t.value, t.digits),
            verdict(t.met)
        );
    }
    if !r.versus_replay.is_empty() {
        let list: Vec<String> = r
            .versus_replay
            .iter()
            .map(|(k, v)| format!("{k} = {v:.3}"))
            .collect();
        let _ = writeln!(
            m,
            "\nAgainst the ideal replays (no target): {}.",
            list.join("; ")
        );
    }
    if let Some(rec) = &r.recovery {
        let _ = writeln!(
            m,
            "\nDrift at held-out lead {}: lowest rolling EV/oracle ratio after it {}; {}.",
            rec.drift_at,
            fmt_opt(rec.min_ratio_after_drift, 3),
            match rec.recovered_after_leads {
                Some(n) => format!("back to >= {} after {n} leads and stayed there to the end of the run (the first whole window after the drift counts {} leads)", rec.threshold, rec.window),
                None => format!("not back to >= {} for good within the run", rec.threshold),
            }
        );
    }
    m.push_str("\nSold (kept) per buyer, held-out:\n\n| buyer |");
    let cols: Vec<(String, &LegSummary)> = r
        .legs
        .iter()
        .map(|l| (l.leg.name().to_string(), &l.summary))
        .chain(r.replay.iter().map(|(k, s)| (format!("replay {k}"), s)))
        .collect();
    for (name, _) in &cols {
        let _ = write!(m, " {name} |");
    }
    m.push_str("\n|---|");
    for _ in &cols {
        m.push_str("---|");
    }
    m.push('\n');
    for (k, id) in r.buyer_ids.iter().enumerate() {
        let _ = write!(m, "| {id} |");
        for (_, s) in &cols {
            let _ = write!(
                m,
                " {} ({}) |",
                s.sold_by_buyer.get(k).unwrap_or(&0),
                s.kept_by_buyer.get(k).unwrap_or(&0)
            );
        }
        m.push('\n');
    }
    if !r.by_day.is_empty() {
        m.push_str("\nRealized $/lead by day:\n\n");
        for (name, days) in &r.by_day {
            let list: Vec<String> = days.iter().map(|d| format!("{d:.2}")).collect();
            let _ = writeln!(m, "- {name}: {}", list.join(", "));
        }
    }
    if let Some(v) = &r.trained_version {
        let _ = writeln!(m, "\n`pingpost train` produced version `{v}`.");
    }
    for (leg, n, first) in &r.disposition_errors {
        if *n > 0 {
            let _ = writeln!(
                m,
                "\n{}: {n} dispositions refused; first: {}",
                leg.name(),
                first.as_deref().unwrap_or("-")
            );
        }
    }
    if !r.notes.is_empty() {
        m.push_str("\nNotes:\n");
        for n in &r.notes {
            let _ = writeln!(m, "- {n}");
        }
    }
    let phases: Vec<String> = r
        .phase_s
        .iter()
        .map(|(p, s)| format!("{p} {s:.1} s"))
        .collect();
    if !phases.is_empty() {
        let _ = writeln!(m, "\nPhases: {}.", phases.join(", "));
    }
    m
}

const LEG_COLORS: [(Leg, RGBColor); 3] = [
    (Leg::Price, RGBColor(0x99, 0x99, 0x99)),
    (Leg::Ev, RGBColor(0x1f, 0x77, 0xb4)),
    (Leg::Oracle, RGBColor(0xd6, 0x27, 0x28)),
];

/// The picture: rolling realized revenue per lead over the held-out leads, one line per
/// leg, the drift as a dashed vertical line.
pub fn write_svg(r: &MarketReport, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = r.opts.test_leads().max(1) as f64;
    let y_max = r
        .rolling
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(1.0_f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "market (seed {}): realized revenue per lead, rolling {} leads",
                r.opts.seed, r.opts.window
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("held-out lead")
        .y_desc("$ per lead offered")
        .draw()?;
    for (leg, color) in LEG_COLORS {
        let Some(points) = r.rolling.get(leg.name()) else {
            continue;
        };
        let pts: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(leg.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    for (name, color) in [
        ("replay_price", LEG_COLORS[0].1),
        ("replay_true_ev", LEG_COLORS[2].1),
    ] {
        let Some(points) = r.rolling.get(name) else {
            continue;
        };
        let pts: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x as f64, y)).collect();
        chart
            .draw_series(DashedLineSeries::new(
                pts,
                3,
                3,
                color.mix(0.6).stroke_width(1),
            ))?
            .label(format!("{name} (ideal, no exchange)"))
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], color.mix(0.6).stroke_width(1))
            });
    }
    if let Some(d) = r.opts.drift_at_lead {
        let d = d as f64;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(d, 0.0), (d, y_max)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label("drift")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `report.json`, `report.md` and `report.svg` into `dir`.
pub fn write_all(r: &MarketReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    write_svg(r, &dir.join("report.svg"))
}
