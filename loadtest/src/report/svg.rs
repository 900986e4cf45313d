//! The run drawn as an SVG picture: latency over time, and p99 against rate.

use std::path::Path;

use plotters::prelude::*;

use super::*;

/// Picture size, pixels.
const SVG_WIDTH: u32 = 1200;
const SVG_PANEL_HEIGHT: u32 = 420;
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Lowest latency drawn on the log axis, ms.
const PLOT_MS_MIN: f64 = 0.01;

/// A log-axis range around `values` (ms): from half the smallest to twice the largest.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return PLOT_MS_MIN..1.0;
    }
    let lo = (lo / 2.0).max(PLOT_MS_MIN);
    lo..(hi * 2.0).max(lo * 10.0)
}

/// An axis label: no decimals on whole numbers, at most 3 significant digits otherwise.
fn axis_label(v: &f64) -> String {
    let v = *v;
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        let text = format!("{v:.decimals$}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn ms_of(us: u64) -> f64 {
    (us as f64 / 1000.0).max(PLOT_MS_MIN)
}

/// Draws the run: latency p50 / p99 / p99.9 over time per target (log scale, ms) and, if
/// the report has a sweep, p99 against rate per label with the baseline + 2.5 ms line.
pub fn write_svg(r: &ScenarioReport, path: &Path) -> anyhow::Result<()> {
    let panels = if r.sweep.is_empty() { 1 } else { 2 };
    let root = SVGBackend::new(path, (SVG_WIDTH, SVG_PANEL_HEIGHT * panels)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels as usize, 1));
    if let Some(area) = areas.first() {
        draw_timeline(r, area)?;
    }
    if let Some(area) = areas.get(1) {
        draw_sweep(r, area)?;
    }
    root.present()?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A timeline line: name, the window field it draws, stroke width, dashed.
type TimelineLine = (&'static str, fn(&Window) -> u64, u32, bool);

/// Which percentile lines the timeline draws.
const TIMELINE_LINES: [TimelineLine; 3] = [
    ("p50", |w| w.p50_us, 1, false),
    ("p99", |w| w.p99_us, 3, false),
    ("p99.9", |w| w.p999_us, 2, true),
];

fn draw_timeline(r: &ScenarioReport, area: &Area<'_>) -> anyhow::Result<()> {
    let windows = || {
        r.targets
            .iter()
            .flat_map(|t| t.timeline.iter())
            .filter(|w| w.count > 0)
    };
    let t_max = windows().map(|w| w.t_s + 1.0).fold(1.0f64, f64::max);
    let y = log_range(windows().flat_map(|w| [ms_of(w.p50_us), ms_of(w.p999_us)]));
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: latency over time, per second (p50 thin, p99 thick, p99.9 dashed)",
                r.scenario
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..t_max, y.log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("seconds into the measured phase")
        .y_desc("latency, ms (log)")
        .y_labels(8)
        .x_label_formatter(&axis_label)
        .y_label_formatter(&axis_label)
        .draw()?;
    for (i, t) in r.targets.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for (name, field, width, dashed) in TIMELINE_LINES {
            let points: Vec<(f64, f64)> = t
                .timeline
                .iter()
                .filter(|w| w.count > 0)
                .map(|w| (w.t_s + 0.5, ms_of(field(w))))
                .collect();
            let style = color.stroke_width(width);
            if dashed {
                chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?;
            } else {
                let series = chart.draw_series(LineSeries::new(points.clone(), style))?;
                if name == "p99" {
                    series
                        .label(format!("{} p50 / p99 / p99.9", t.label))
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 18, y)], color.stroke_width(3))
                        });
                }
            }
            // Markers, so that a run of a single second still shows.
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, width + 1, color.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

fn draw_sweep(r: &ScenarioReport, area: &Area<'_>) -> anyhow::Result<()> {
    let baseline = baseline_label(r);
    let margin_ms = KNEE_MARGIN_US as f64 / 1000.0;
    let mut by_label: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in &r.sweep {
        by_label
            .entry(p.label.as_str())
            .or_default()
            .push((p.rate_per_s, ms_of(p.p99_us)));
    }
    for points in by_label.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let limit: Vec<(f64, f64)> = by_label
        .get(baseline)
        .map(|points| points.iter().map(|&(x, y)| (x, y + margin_ms)).collect())
        .unwrap_or_default();
    let x_max = r.sweep.iter().map(|p| p.rate_per_s).fold(1.0f64, f64::max) * 1.05;
    let y = log_range(
        by_label
            .values()
            .chain([&limit])
            .flat_map(|points| points.iter().map(|p| p.1)),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "p99 against rate (dashed: {baseline} p99 + {margin_ms} ms, the knee criterion)"
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, y.log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("planned rate, requests/s")
        .y_desc("p99, ms (log)")
        .y_labels(8)
        .x_label_formatter(&axis_label)
        .y_label_formatter(&axis_label)
        .draw()?;
    for (i, (label, points)) in by_label.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(label.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(3)));
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    if !limit.is_empty() {
        chart
            .draw_series(DashedLineSeries::new(limit, 6, 4, BLACK.stroke_width(1)))?
            .label(format!("{baseline} + {margin_ms} ms"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
