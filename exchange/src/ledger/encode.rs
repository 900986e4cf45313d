//! The ledger lines of an auction's records, written by hand: `auction`, `quote_opened`
//! and the quote hold records (`quote_reserved`, `quote_released`, `quote_expired`).
//!
//! Every auction with a quote writes three of these on the request's task, and serde's
//! derived serializer spent about 38k instructions per auction on them (profiled with
//! callgrind): it escapes every key at run time and writes each string in three pieces.
//! Here the keys are constant byte strings and a string needing no escape is copied
//! once. The bytes are exactly serde_json's: the tests compare both on generated records,
//! with strings that need every escape and floats that are not finite. Every other record
//! type (rare: posts, sales, dispositions) is still written by serde.
//!
//! The records are destructured field by field, so a field added to one of them does not
//! compile here until it is written.

use crate::core::auction::ModelVersions;
use crate::core::caps::Windows;
use crate::core::eligibility::SkipReason;
use crate::core::record::{
    write_rfc3339, AuctionRecord, BoundedBuyersRecord, BuyerLine, Head, HoldLine, LeadFields,
    QuoteHoldRecord, QuoteOpenedRecord, RankedLine, Record, SkippedBuyer, SkippedRecord,
};
use proto::FieldValue;

/// Writes `record` as its JSON line (without the newline) into `out` when it is one of
/// the records written by hand; `false` (and `out` untouched) for the others.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> bool {
    match record {
        Record::Auction(a) => auction(a, out),
        Record::QuoteOpened(q) => quote_opened(q, out),
        Record::QuoteReserved(h) => hold(b"quote_reserved", h, out),
        Record::QuoteReleased(h) => hold(b"quote_released", h, out),
        Record::QuoteExpired(h) => hold(b"quote_expired", h, out),
        _ => return false,
    }
    true
}

/// `{"type":"KIND","v":..,"generation":..,"at":".."` (the object is left open).
fn head(kind: &[u8], head: &Head, out: &mut Vec<u8>) {
    let Head { v, generation, at } = *head;
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind);
    out.extend_from_slice(b"\",\"v\":");
    int(v, out);
    out.extend_from_slice(b",\"generation\":");
    int(generation, out);
    out.extend_from_slice(b",\"at\":\"");
    write_rfc3339(at, out);
    out.push(b'"');
}

fn auction(a: &AuctionRecord<'_>, out: &mut Vec<u8>) {
    let AuctionRecord {
        head: h,
        auction_id,
        ping_id,
        seller,
        vertical,
        currency,
        test,
        direct,
        score,
        reserve_micros,
        skipped,
        fanout_limited,
        breaker_open,
        pings_in_flight_full,
        buyers,
        winner,
        bid_micros,
        seller_price_micros,
        no_bid,
        took_us,
        features_version,
        x,
        models,
        explore,
        lead_fingerprint,
        idempotency_key_sha256,
        body_sha256,
    } = a;
    head(b"auction", h, out);
    field_str(b",\"auction_id\":", auction_id, out);
    field_str(b",\"ping_id\":", ping_id, out);
    field_str(b",\"seller\":", seller, out);
    field_str(b",\"vertical\":", vertical, out);
    field_str(b",\"currency\":", currency, out);
    out.extend_from_slice(b",\"test\":");
    boolean(*test, out);
    out.extend_from_slice(b",\"direct\":");
    boolean(*direct, out);
    if let Some(s) = score {
        out.extend_from_slice(b",\"score\":");
        int(*s, out);
    }
    out.extend_from_slice(b",\"reserve_micros\":");
    int(*reserve_micros, out);
    out.extend_from_slice(b",\"skipped\":");
    skipped_record(skipped, out);
    if let Some(f) = fanout_limited {
        out.extend_from_slice(b",\"fanout_limited\":");
        bounded_buyers(f, out);
    }
    if let Some(b) = breaker_open {
        out.extend_from_slice(b",\"breaker_open\":");
        bounded_buyers(b, out);
    }
    if let Some(b) = pings_in_flight_full {
        out.extend_from_slice(b",\"pings_in_flight_full\":");
        bounded_buyers(b, out);
    }
    out.extend_from_slice(b",\"buyers\":[");
    for (i, line) in buyers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        buyer_line(line, out);
    }
    out.push(b']');
    if let Some(w) = winner {
        field_str(b",\"winner\":", w, out);
    }
    if let Some(b) = bid_micros {
        out.extend_from_slice(b",\"bid_micros\":");
        int(*b, out);
    }
    if let Some(p) = seller_price_micros {
        out.extend_from_slice(b",\"seller_price_micros\":");
        int(*p, out);
    }
    if let Some(n) = no_bid {
        field_str(b",\"no_bid\":", n, out);
    }
    out.extend_from_slice(b",\"took_us\":");
    int(*took_us, out);
    if let Some(f) = features_version {
        out.extend_from_slice(b",\"features_version\":");
        int(*f, out);
    }
    if !x.is_empty() {
        out.extend_from_slice(b",\"x\":");
        floats(x, out);
    }
    if !models.is_empty() {
        out.extend_from_slice(b",\"models\":");
        model_versions(models, out);
    }
    if *explore {
        out.extend_from_slice(b",\"explore\":true");
    }
    if let Some(f) = lead_fingerprint {
        field_str(b",\"lead_fingerprint\":", f, out);
    }
    if let Some(k) = idempotency_key_sha256 {
        field_str(b",\"idempotency_key_sha256\":", k, out);
    }
    if let Some(b) = body_sha256 {
        field_str(b",\"body_sha256\":", b, out);
    }
    out.push(b'}');
}

fn skipped_record(s: &SkippedRecord<'_>, out: &mut Vec<u8>) {
    let SkippedRecord {
        total,
        by_reason,
        first,
    } = s;
    out.extend_from_slice(b"{\"total\":");
    int(*total, out);
    out.extend_from_slice(b",\"by_reason\":{");
    let mut any = false;
    for (reason, count) in SkipReason::ALL.iter().zip(by_reason.0) {
        if count > 0 {
            if any {
                out.push(b',');
            }
            any = true;
            string(reason.as_str(), out);
            out.push(b':');
            int(count, out);
        }
    }
    out.push(b'}');
    if !first.is_empty() {
        out.extend_from_slice(b",\"first\":[");
        for (i, SkippedBuyer { buyer, reason }) in first.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            field_str(b"{\"buyer\":", buyer, out);
            field_str(b",\"reason\":", reason, out);
            out.push(b'}');
        }
        out.push(b']');
    }
    out.push(b'}');
}

fn bounded_buyers(f: &BoundedBuyersRecord<'_>, out: &mut Vec<u8>) {
    let BoundedBuyersRecord { total, first } = f;
    out.extend_from_slice(b"{\"total\":");
    int(*total, out);
    out.extend_from_slice(b",\"first\":");
    strings(first.iter().copied(), out);
    out.push(b'}');
}

fn buyer_line(l: &BuyerLine<'_>, out: &mut Vec<u8>) {
    let BuyerLine {
        idx: _,
        buyer,
        outcome,
        bid_micros,
        detail,
        reason,
        took_us,
        p_ppm,
        p_est_ppm,
        bx,
    } = l;
    field_str(b"{\"buyer\":", buyer, out);
    field_str(b",\"outcome\":", outcome.as_str(), out);
    if let Some(b) = bid_micros {
        out.extend_from_slice(b",\"bid_micros\":");
        int(*b, out);
    }
    if let Some(d) = detail {
        field_str(b",\"detail\":", d, out);
    }
    if let Some(r) = reason {
        field_str(b",\"reason\":", r, out);
    }
    if let Some(t) = took_us {
        out.extend_from_slice(b",\"took_us\":");
        int(*t, out);
    }
    if let Some(p) = p_ppm {
        out.extend_from_slice(b",\"p_ppm\":");
        int(*p, out);
    }
    if let Some(p) = p_est_ppm {
        out.extend_from_slice(b",\"p_est_ppm\":");
        int(*p, out);
    }
    if let Some(bx) = bx {
        out.extend_from_slice(b",\"bx\":");
        floats(bx, out);
    }
    out.push(b'}');
}

fn model_versions(m: &ModelVersions<'_>, out: &mut Vec<u8>) {
    let ModelVersions {
        lead_score,
        realization,
    } = m;
    out.push(b'{');
    if let Some(l) = lead_score {
        field_str(b"\"lead_score\":", l, out);
    }
    if let Some(r) = realization {
        if lead_score.is_some() {
            out.push(b',');
        }
        field_str(b"\"realization\":", r, out);
    }
    out.push(b'}');
}

fn quote_opened(q: &QuoteOpenedRecord<'_>, out: &mut Vec<u8>) {
    let QuoteOpenedRecord {
        head: h,
        ping_id,
        auction_id,
        seller,
        vertical,
        test,
        price_micros,
        currency,
        expires_at_ms,
        auctioned_at_ms,
        score,
        lead,
        ranked,
        hold,
        dedup,
    } = q;
    head(b"quote_opened", h, out);
    field_str(b",\"ping_id\":", ping_id, out);
    field_str(b",\"auction_id\":", auction_id, out);
    field_str(b",\"seller\":", seller, out);
    field_str(b",\"vertical\":", vertical, out);
    out.extend_from_slice(b",\"test\":");
    boolean(*test, out);
    out.extend_from_slice(b",\"price_micros\":");
    int(*price_micros, out);
    field_str(b",\"currency\":", currency, out);
    out.extend_from_slice(b",\"expires_at_ms\":");
    int(*expires_at_ms, out);
    out.extend_from_slice(b",\"auctioned_at_ms\":");
    int(*auctioned_at_ms, out);
    if let Some(s) = score {
        out.extend_from_slice(b",\"score\":");
        int(*s, out);
    }
    out.extend_from_slice(b",\"lead\":");
    lead_fields(lead, out);
    out.extend_from_slice(b",\"ranked\":[");
    for (i, r) in ranked.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        ranked_line(r, out);
    }
    out.push(b']');
    if let Some(h) = hold {
        out.extend_from_slice(b",\"hold\":");
        hold_line(h, out);
    }
    if !dedup.is_empty() {
        out.extend_from_slice(b",\"dedup\":");
        strings(dedup.iter().map(String::as_str), out);
    }
    out.push(b'}');
}

fn lead_fields(l: &LeadFields<'_>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (name, value)) in l.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(name, out);
        out.push(b':');
        match value {
            FieldValue::Str(s) => string(s, out),
            FieldValue::Int(n) => int(*n, out),
            FieldValue::Num(n) => float64(*n, out),
            FieldValue::Bool(b) => boolean(*b, out),
        }
    }
    out.push(b'}');
}

fn ranked_line(r: &RankedLine<'_>, out: &mut Vec<u8>) {
    let RankedLine {
        buyer,
        price_micros,
        bid_id,
        expires_in_ms,
        fixed,
        seller_price_micros,
        value,
        p_ppm,
    } = r;
    field_str(b"{\"buyer\":", buyer, out);
    out.extend_from_slice(b",\"price_micros\":");
    int(*price_micros, out);
    if let Some(b) = bid_id {
        field_str(b",\"bid_id\":", b, out);
    }
    if let Some(e) = expires_in_ms {
        out.extend_from_slice(b",\"expires_in_ms\":");
        int(*e, out);
    }
    out.extend_from_slice(b",\"fixed\":");
    boolean(*fixed, out);
    out.extend_from_slice(b",\"seller_price_micros\":");
    int(*seller_price_micros, out);
    out.extend_from_slice(b",\"value\":");
    int(*value, out);
    if let Some(p) = p_ppm {
        out.extend_from_slice(b",\"p_ppm\":");
        int(*p, out);
    }
    out.push(b'}');
}

fn hold_line(h: &HoldLine<'_>, out: &mut Vec<u8>) {
    let HoldLine {
        buyer,
        price_micros,
        windows,
    } = h;
    field_str(b"{\"buyer\":", buyer, out);
    out.extend_from_slice(b",\"price_micros\":");
    int(*price_micros, out);
    out.extend_from_slice(b",\"windows\":");
    windows_object(windows, out);
    out.push(b'}');
}

fn windows_object(w: &Windows, out: &mut Vec<u8>) {
    let Windows {
        hour_start_ms,
        day,
        week,
        month,
    } = *w;
    out.extend_from_slice(b"{\"hour_start_ms\":");
    int(hour_start_ms, out);
    out.extend_from_slice(b",\"day\":");
    int(day, out);
    out.extend_from_slice(b",\"week\":");
    int(week, out);
    out.extend_from_slice(b",\"month\":");
    int(month, out);
    out.push(b'}');
}

fn hold(kind: &[u8], r: &QuoteHoldRecord<'_>, out: &mut Vec<u8>) {
    let QuoteHoldRecord {
        head: h,
        ping_id,
        buyer,
        price_micros,
        reason,
        changed_fields,
        test,
    } = r;
    head(kind, h, out);
    if let Some(p) = ping_id {
        field_str(b",\"ping_id\":", p, out);
    }
    field_str(b",\"buyer\":", buyer, out);
    out.extend_from_slice(b",\"price_micros\":");
    int(*price_micros, out);
    if let Some(r) = reason {
        field_str(b",\"reason\":", r, out);
    }
    if !changed_fields.is_empty() {
        out.extend_from_slice(b",\"changed_fields\":");
        strings(changed_fields.iter().map(String::as_str), out);
    }
    if *test {
        out.extend_from_slice(b",\"test\":true");
    }
    out.push(b'}');
}

/// `key` (the constant bytes `,"name":`) then `value` as a JSON string.
fn field_str(key: &[u8], value: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(key);
    string(value, out);
}

fn strings<'s>(items: impl Iterator<Item = &'s str>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(s, out);
    }
    out.push(b']');
}

fn floats(xs: &[f32], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, x) in xs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if x.is_finite() {
            out.extend_from_slice(zmij::Buffer::new().format_finite(*x).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}

fn float64(x: f64, out: &mut Vec<u8>) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

fn int<I: itoa::Integer>(n: I, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn boolean(b: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// `s` as a JSON string, escaped as serde_json escapes: `"` and `\`, and the control
/// characters below U+0020 (`\b \t \n \f \r`, the others as `\u00XX` in lower-case hex);
/// everything else as it is.
fn string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{BuyerOutcome, ReasonCounts};
    use proptest::prelude::*;

    /// serde_json's line for `record`, which the hand-written one must equal.
    fn by_serde(record: &Record<'_>) -> Vec<u8> {
        serde_json::to_vec(record).expect("a record serializes")
    }

    fn by_hand(record: &Record<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(
            encode(record, &mut out),
            "{} is written by hand",
            record.kind()
        );
        out
    }

    /// Strings that need every escape, mixed with any other character.
    fn text() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1}', '\u{1f}', '\u{7f}',
            '/', 'é', '\u{2028}', '😀',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special, Just('a')], 0..10)
            .prop_map(|cs| cs.into_iter().collect())
    }

    const STATICS: [&str; 4] = ["late", "a\"b\\c", "tab\there", "outside_criteria"];

    fn a_static() -> impl Strategy<Value = &'static str> {
        prop::sample::select(STATICS.to_vec())
    }

    fn at() -> impl Strategy<Value = i64> {
        // Mostly this century; sometimes past chrono's range or before year 0.
        prop_oneof![4 => 0i64..4_102_444_800_000, 1 => any::<i64>()]
    }

    #[derive(Debug, Clone)]
    struct World {
        s: Vec<String>,
        flags: Vec<bool>,
        nums: Vec<i64>,
        uints: Vec<u64>,
        x: Vec<f32>,
        bx: Vec<Vec<f32>>,
        at: i64,
        statics: Vec<&'static str>,
        outcomes: Vec<usize>,
        reasons: [u32; 5],
        lead: Vec<(String, u8, String, i64, f64, bool)>,
    }

    fn world() -> impl Strategy<Value = World> {
        (
            prop::collection::vec(text(), 24),
            prop::collection::vec(any::<bool>(), 44),
            prop::collection::vec(any::<i64>(), 16),
            prop::collection::vec(any::<u64>(), 8),
            prop::collection::vec(prop::num::f32::ANY, 0..6),
            prop::collection::vec(prop::collection::vec(prop::num::f32::ANY, 0..4), 0..5),
            at(),
            prop::collection::vec(a_static(), 6),
            prop::collection::vec(0usize..11, 0..5),
            prop::array::uniform5(prop_oneof![Just(0u32), any::<u32>()]),
            prop::collection::vec(
                (
                    text(),
                    0u8..4,
                    text(),
                    any::<i64>(),
                    prop::num::f64::ANY,
                    any::<bool>(),
                ),
                0..5,
            ),
        )
            .prop_map(
                |(s, flags, nums, uints, x, bx, at, statics, outcomes, reasons, lead)| World {
                    s,
                    flags,
                    nums,
                    uints,
                    x,
                    bx,
                    at,
                    statics,
                    outcomes,
                    reasons,
                    lead,
                },
            )
    }

    const OUTCOMES: [BuyerOutcome; 11] = [
        BuyerOutcome::SkippedBreaker,
        BuyerOutcome::SkippedBusy,
        BuyerOutcome::Timeout,
        BuyerOutcome::Bid,
        BuyerOutcome::NoBid,
        BuyerOutcome::BidAboveMax,
        BuyerOutcome::BidExpired,
        BuyerOutcome::Invalid,
        BuyerOutcome::Error,
        BuyerOutcome::FixedPrice,
        BuyerOutcome::CappedAtAward,
    ];

    fn opt<T>(on: bool, v: T) -> Option<T> {
        on.then_some(v)
    }

    fn auction_record(w: &World) -> AuctionRecord<'_> {
        let f = &w.flags;
        let s = |i: usize| w.s[i].as_str();
        AuctionRecord {
            head: Head::new(w.uints[0], w.at),
            auction_id: s(0),
            ping_id: s(1),
            seller: s(2),
            vertical: s(3),
            currency: s(4),
            test: f[0],
            direct: f[1],
            score: opt(f[2], w.uints[1] as u8),
            reserve_micros: w.nums[0],
            skipped: SkippedRecord {
                total: w.reasons.iter().fold(0u32, |a, b| a.wrapping_add(*b)),
                by_reason: ReasonCounts(w.reasons),
                first: if f[3] {
                    vec![
                        SkippedBuyer {
                            buyer: s(5),
                            reason: w.statics[0],
                        },
                        SkippedBuyer {
                            buyer: s(6),
                            reason: w.statics[1],
                        },
                    ]
                } else {
                    Vec::new()
                },
            },
            fanout_limited: opt(
                f[4],
                BoundedBuyersRecord {
                    total: w.uints[2] as u32,
                    first: if f[5] { vec![s(7), s(8)] } else { Vec::new() },
                },
            ),
            breaker_open: opt(
                f[40],
                BoundedBuyersRecord {
                    total: w.uints[6] as u32,
                    first: if f[41] { vec![s(8)] } else { Vec::new() },
                },
            ),
            pings_in_flight_full: opt(
                f[42],
                BoundedBuyersRecord {
                    total: w.uints[5] as u32,
                    first: if f[43] { vec![s(7)] } else { Vec::new() },
                },
            ),
            buyers: w
                .outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let g = &f[10 + 5 * i..];
                    BuyerLine {
                        idx: i,
                        buyer: s(9 + i),
                        outcome: OUTCOMES[*o],
                        bid_micros: opt(g[0], w.nums[1 + i]),
                        detail: opt(g[1], w.statics[2]),
                        reason: opt(g[2], w.s[14 + i].clone()),
                        took_us: opt(g[3], w.uints[3 + i % 4]),
                        p_ppm: opt(g[4], w.uints[4] as u32),
                        p_est_ppm: opt(g[4] && g[3], w.uints[2] as u32),
                        bx: w.bx.get(i).cloned(),
                    }
                })
                .collect(),
            winner: opt(f[6], s(19)),
            bid_micros: opt(f[7], w.nums[8]),
            seller_price_micros: opt(f[8], w.nums[9]),
            no_bid: opt(f[9], w.statics[3]),
            took_us: w.uints[5],
            features_version: opt(f[35], w.uints[6] as u32),
            x: &w.x,
            models: ModelVersions {
                lead_score: opt(f[36], s(20)),
                realization: opt(f[37], s(21)),
            },
            explore: f[38],
            lead_fingerprint: opt(f[39], s(22)),
            idempotency_key_sha256: opt(f[35] && f[36], s(23)),
            body_sha256: opt(f[37] && f[38], s(0)),
        }
    }

    fn quote_opened_record<'w>(w: &'w World, values: &'w [FieldValue]) -> QuoteOpenedRecord<'w> {
        let f = &w.flags;
        let s = |i: usize| w.s[i].as_str();
        QuoteOpenedRecord {
            head: Head::new(w.uints[7], w.at),
            ping_id: s(1),
            auction_id: s(0),
            seller: s(2),
            vertical: s(3),
            test: f[0],
            price_micros: w.nums[10],
            currency: s(4),
            expires_at_ms: w.nums[11],
            auctioned_at_ms: w.nums[12],
            score: opt(f[1], w.uints[0] as u8),
            lead: LeadFields(
                w.lead
                    .iter()
                    .zip(values)
                    .map(|(l, v)| (l.0.as_str(), v))
                    .collect(),
            ),
            ranked: (0..w.outcomes.len())
                .map(|i| {
                    let g = &f[10 + 5 * i..];
                    RankedLine {
                        buyer: s(9 + i),
                        price_micros: w.nums[1 + i],
                        bid_id: opt(g[0], s(14 + i)),
                        expires_in_ms: opt(g[1], w.uints[3 + i % 4]),
                        fixed: g[2],
                        seller_price_micros: w.nums[6 + i % 2],
                        value: w.nums[13],
                        p_ppm: opt(g[3], w.uints[1] as u32),
                    }
                })
                .collect(),
            hold: opt(
                f[2],
                HoldLine {
                    buyer: s(19),
                    price_micros: w.nums[14],
                    windows: Windows {
                        hour_start_ms: w.nums[15],
                        day: w.nums[0],
                        week: w.nums[1],
                        month: w.nums[2],
                    },
                },
            ),
            dedup: if f[3] { &w.s[20..23] } else { &[] },
        }
    }

    fn field_values(w: &World) -> Vec<FieldValue> {
        w.lead
            .iter()
            .map(|(_, kind, s, n, x, b)| match kind {
                0 => FieldValue::Str(s.clone()),
                1 => FieldValue::Int(*n),
                2 => FieldValue::Num(*x),
                _ => FieldValue::Bool(*b),
            })
            .collect()
    }

    fn hold_record(w: &World) -> QuoteHoldRecord<'_> {
        let f = &w.flags;
        QuoteHoldRecord {
            head: Head::new(w.uints[2], w.at),
            ping_id: opt(f[0], w.s[1].as_str()),
            buyer: &w.s[9],
            price_micros: w.nums[3],
            reason: opt(f[1], w.statics[4]),
            changed_fields: if f[2] { &w.s[10..13] } else { &[] },
            test: f[3],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn an_auction_is_written_as_serde_writes_it(w in world()) {
            let r = Record::Auction(auction_record(&w));
            prop_assert_eq!(String::from_utf8(by_hand(&r)), String::from_utf8(by_serde(&r)));
        }

        #[test]
        fn a_quote_opened_is_written_as_serde_writes_it(w in world()) {
            let values = field_values(&w);
            let r = Record::QuoteOpened(quote_opened_record(&w, &values));
            prop_assert_eq!(String::from_utf8(by_hand(&r)), String::from_utf8(by_serde(&r)));
        }

        #[test]
        fn the_hold_records_are_written_as_serde_writes_them(w in world()) {
            for r in [
                Record::QuoteReserved(hold_record(&w)),
                Record::QuoteReleased(hold_record(&w)),
                Record::QuoteExpired(hold_record(&w)),
            ] {
                prop_assert_eq!(String::from_utf8(by_hand(&r)), String::from_utf8(by_serde(&r)));
            }
        }
    }

    #[test]
    fn other_records_are_left_to_serde() {
        let mut out = Vec::new();
        let flush = Record::Flush(crate::core::record::FlushRecord {
            head: Head::new(1, 0),
            start: true,
            key_id: Some("0123456789abcdef"),
        });
        assert!(!encode(&flush, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn every_escape_is_serde_s() {
        let all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        let mut out = Vec::new();
        string(&all, &mut out);
        assert_eq!(out, serde_json::to_vec(&all).expect("a string serializes"));
    }
}
