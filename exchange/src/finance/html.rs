//! The `--html` page: one self-contained file (inline CSS, inline SVG charts drawn here,
//! no script, no network), readable offline and printable.
//!
//! Every figure is also in a machine-readable attribute, so a browser check can compare
//! the rendered page with the JSON report: each table is `<table id="by-day">` (and
//! `by-seller`, `by-buyer`, `by-vertical`), each row `<tr data-key=".." data-currency="..">`
//! and each figure `<td data-col="revenue_micros" data-value="14400000">14.40</td>`; each
//! chart bar is `<rect data-chart="day" data-series="revenue" data-key=".."
//! data-value="..">`.

use std::fmt::Write as _;
use std::path::Path;

use super::money;
use super::report::{range_text, By, Reports, Row};

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px}\
table{border-collapse:collapse;margin:8px 0 16px}\
th,td{border:1px solid #ccc;padding:3px 8px}td.n{text-align:right;font-variant-numeric:tabular-nums}\
tr.total td{font-weight:bold;background:#f3f3f3}th{background:#e8eef7}\
.note{color:#555}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}\
svg{background:#fafafa;border:1px solid #ddd}";

const REVENUE: &str = "#3b6fb6";
const MARGIN: &str = "#e08a1e";

/// The whole page.
pub fn page(reports: &Reports, dir: &Path) -> String {
    let mut out = String::new();
    let day = reports.by.get(&By::Day);
    let (from, to) = day.map_or((None, None), |r| (r.from.clone(), r.to.clone()));
    let zone = day.map_or("UTC", |r| r.zone);
    let range = range_text(from.as_deref(), to.as_deref());
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>pingpost P&amp;L, {range}</title><style>{CSS}</style></head><body>\n\
<h1>pingpost profit and loss</h1>\n<p>Ledger <code>{dir}</code>, {range} ({zone} days). Test leads are left out\
{excl}. Money in currency units; revenue is what buyers pay, payouts what sellers get, margin the difference. \
Revenue, payouts and margin are net of refunds (returned leads refunded inside the buyer's return window).</p>\n",
        range = esc(&range),
        zone = esc(zone),
        dir = esc(&crate::cli_out::Shown(dir).to_string()),
        excl = day.map_or(String::new(), |r| format!(
            " ({} test auction(s), {} test sale(s))",
            r.excluded.test_auctions, r.excluded.test_sales
        )),
    );
    if let Some(r) = day {
        totals_block(&mut out, &r.totals);
        for n in &r.notes {
            let _ = writeln!(out, "<p class=\"note\">Note: {}</p>", esc(n));
        }
    }
    for by in [By::Day, By::Buyer] {
        if let Some(r) = reports.by.get(&by) {
            let _ = writeln!(out, "<h2>Revenue and margin by {}</h2>", by.as_str());
            let currencies: Vec<&str> = r.totals.iter().map(|t| t.currency.as_str()).collect();
            if r.rows.is_empty() {
                let _ = writeln!(out, "<p>No records in this range.</p>");
            }
            for cur in currencies {
                let rows: Vec<&Row> = r.rows.iter().filter(|x| x.currency == cur).collect();
                chart(&mut out, by, cur, &rows);
            }
        }
    }
    for by in By::ALL {
        if let Some(r) = reports.by.get(&by) {
            let _ = writeln!(out, "<h2>By {}</h2>", by.as_str());
            table(&mut out, by, &r.rows, &r.totals);
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn totals_block(out: &mut String, totals: &[Row]) {
    out.push_str("<p>");
    if totals.is_empty() {
        out.push_str("No sales in this range.");
    }
    for t in totals {
        let cur = esc(&t.currency);
        let _ = write!(
            out,
            "<span class=\"total\" data-currency=\"{cur}\">Total {cur}: revenue \
<b id=\"total-revenue-{cur}\" data-value=\"{rv}\">{rvs}</b>, payouts <b id=\"total-payouts-{cur}\" data-value=\"{pv}\">{pvs}</b>, \
margin <b id=\"total-margin-{cur}\" data-value=\"{mv}\">{mvs}</b> from <b id=\"total-sales-{cur}\" data-value=\"{s}\">{s}</b> sale(s).</span> ",
            rv = t.revenue_micros,
            rvs = money(t.revenue_micros),
            pv = t.payouts_micros,
            pvs = money(t.payouts_micros),
            mv = t.margin_micros,
            mvs = money(t.margin_micros),
            s = t.sales,
        );
    }
    out.push_str("</p>\n");
}

fn table(out: &mut String, by: By, rows: &[Row], totals: &[Row]) {
    let _ = writeln!(
        out,
        "<table id=\"by-{b}\"><thead><tr><th>{b}</th><th>currency</th><th>pings</th><th>bids</th>\
<th>quotes</th><th>sales</th><th>revenue</th><th>payouts</th><th>margin</th><th>returns</th><th>refunds</th></tr></thead><tbody>",
        b = by.as_str()
    );
    for (r, total) in rows
        .iter()
        .map(|r| (r, false))
        .chain(totals.iter().map(|t| (t, true)))
    {
        let _ = write!(
            out,
            "<tr{cls} data-key=\"{k}\" data-currency=\"{c}\"><td>{k}</td><td>{c}</td>",
            cls = if total { " class=\"total\"" } else { "" },
            k = esc(&r.key),
            c = esc(&r.currency),
        );
        for (col, v) in [
            ("pings", r.pings),
            ("bids", r.bids),
            ("quotes", r.quotes),
            ("sales", r.sales),
        ] {
            let _ = write!(
                out,
                "<td class=\"n\" data-col=\"{col}\" data-value=\"{v}\">{v}</td>"
            );
        }
        for (col, v) in [
            ("revenue_micros", r.revenue_micros),
            ("payouts_micros", r.payouts_micros),
            ("margin_micros", r.margin_micros),
        ] {
            let _ = write!(
                out,
                "<td class=\"n\" data-col=\"{col}\" data-value=\"{v}\">{}</td>",
                money(v)
            );
        }
        let _ = writeln!(
            out,
            "<td class=\"n\" data-col=\"returns\" data-value=\"{r}\">{r}</td>\
<td class=\"n\" data-col=\"refunds_micros\" data-value=\"{f}\">{fs}</td></tr>",
            r = r.returns,
            f = r.refunds_micros,
            fs = money(r.refunds_micros),
        );
    }
    out.push_str("</tbody></table>\n");
}

/// A grouped bar chart: revenue and margin per key, drawn as SVG rectangles with a
/// y axis in currency units.
fn chart(out: &mut String, by: By, currency: &str, rows: &[&Row]) {
    const W: i64 = 900;
    const H: i64 = 300;
    const LEFT: i64 = 80;
    const BOTTOM: i64 = 60;
    const TOP: i64 = 20;
    let plot_h = H - BOTTOM - TOP;
    let max = rows
        .iter()
        .map(|r| r.revenue_micros.max(r.margin_micros))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = rows.len().max(1) as i64;
    let slot = ((W - LEFT - 20) / n).max(1);
    let bar = (slot * 2 / 5).clamp(1, 48);
    let cur = esc(currency);
    let _ = writeln!(
        out,
        "<div class=\"legend\"><span style=\"background:{REVENUE}\"></span>revenue ({cur})\
<span style=\"background:{MARGIN}\"></span>margin ({cur})</div>\n\
<svg id=\"chart-{b}-{cur}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
aria-label=\"revenue and margin by {b} in {cur}\">",
        b = by.as_str()
    );
    // Axis with 4 gridlines.
    for i in 0..=4i64 {
        let v = max * i128::from(i) / 4;
        let y = TOP + plot_h - plot_h * i / 4;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#ddd\"/>\
<text x=\"{tx}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\">{label}</text>",
            x2 = W - 10,
            tx = LEFT - 6,
            ty = y + 4,
            label = money(v),
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let x0 = LEFT + 10 + slot * i as i64;
        let k = esc(&r.key);
        for (j, (series, v, color)) in [
            ("revenue", r.revenue_micros, REVENUE),
            ("margin", r.margin_micros, MARGIN),
        ]
        .into_iter()
        .enumerate()
        {
            // At most `plot_h`: the cast cannot truncate.
            let h = (v.max(0) * i128::from(plot_h) / max) as i64;
            let x = x0 + bar * j as i64;
            let _ = writeln!(
                out,
                "<rect data-chart=\"{b}\" data-series=\"{series}\" data-key=\"{k}\" data-currency=\"{cur}\" data-value=\"{v}\" \
x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{h}\" fill=\"{color}\"><title>{k}: {series} {m} {cur}</title></rect>",
                b = by.as_str(),
                y = TOP + plot_h - h,
                m = money(v),
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{tx}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\" transform=\"rotate(-30 {tx} {ty})\">{k}</text>",
            tx = x0 + bar,
            ty = H - BOTTOM + 16,
        );
    }
    out.push_str("</svg>\n");
}
