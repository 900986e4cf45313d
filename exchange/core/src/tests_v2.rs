//! Deterministic tests of the auction core v2 (the auction and post state machines and
//! the settlement), every one with explicit `now`: no clock, no sleeps, no sockets.

use proto::buyer::BidOutcome;
use proto::seller::NoBidReason;
use proto::Micros;

use crate::auction::{bid_expires_at, Auction, AuctionParams, Award, NO_TIME_LEFT};
use crate::award::PriceRanker;
use crate::breaker::BreakerBook;
use crate::caps::CapBook;
use crate::config::{BuyerKey, Caps, Config, SellerKey};
use crate::effect::{Effect, PostKind};
use crate::post::{AttemptResult, PostParams, PostPlan, PostStep, UnsoldReason};
use crate::record::{BuyerOutcome, Record};
use crate::settlement::{CapOp, Settlement};
use crate::testutil::{breaker_cfg, buyer, config_with, lead};
use crate::UnixMs;

const T: UnixMs = 1_700_000_000_000;
const TX: &str = r#"{"state":"TX","zip":"76180","age":42}"#;

fn m(units: i64) -> Micros {
    Micros(units * 1_000_000)
}

static NO_CONSENT: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

fn params(cfg: &Config, arrival: UnixMs) -> AuctionParams<'_> {
    AuctionParams {
        config: cfg,
        ranker: &PriceRanker,
        generation: 42,
        seller: 0,
        vertical: 0,
        score: None,
        min_price: None,
        consent: &NO_CONSENT,
        screen: None,
        refuse_award: None,
        test: false,
        direct: false,
        auction_id: "au_t",
        ping_id: "pg_t",
        arrival,
        lead_x: &[],
        features_version: None,
        models: Default::default(),
        lead_fingerprint: None,
        idempotency: None,
    }
}

fn bid(price: Micros, expires_in_ms: Option<u64>) -> Option<BidOutcome> {
    Some(BidOutcome::Bid {
        price,
        bid_id: Some("b".into()),
        expires_in_ms,
        currency: None,
    })
}

/// A config of `n` buyers with ping timeouts `timeouts` (ms), deadline 150, reserve 2.
fn cfg_timeouts(timeouts: &[u64]) -> Config {
    let buyers = timeouts
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let mut b = buyer(i);
            b.ping_timeout_ms = t;
            b
        })
        .collect();
    let mut cfg = config_with(buyers);
    cfg.verticals[0].auction_deadline_ms = 150;
    cfg.server.response_reserve_ms = 2;
    cfg
}

/// Carries out cap effects the way the shell does (one function, through the settlement)
/// and returns every effect for inspection.
fn run<'a>(
    settlement: &Settlement<'_>,
    effects: impl Iterator<Item = Effect<'a>>,
) -> Vec<Effect<'a>> {
    let mut out = Vec::new();
    for e in effects {
        if let Effect::Cap(op) = &e {
            assert!(settlement.settle(op), "a reservation settled twice: {op:?}");
        }
        out.push(e);
    }
    out
}

fn auction_record<'e, 'a>(effects: &'e [Effect<'a>]) -> &'e crate::record::AuctionRecord<'a> {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Record(Record::Auction(a)) => Some(a),
            _ => None,
        })
        .expect("an auction record")
}

// ---------------------------------------------------------------------------------------
// Collection

#[test]
fn each_buyer_is_bounded_by_its_timeout_or_the_deadline_less_the_reserve() {
    let cfg = cfg_timeouts(&[100, 500]);
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    let a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T + 10);
    let orders: Vec<_> = a.pings().map(|o| (o.buyer, o.bound, o.tmax_ms)).collect();
    // b0: now + 100 = T+110 < T+148; b1: deadline 150 - reserve 2 = T+148.
    assert_eq!(orders, [(0, T + 110, 100), (1, T + 148, 138)]);
    assert_eq!(a.poll_timeout(), Some(T + 110));
}

/// An auction that ends past its vertical's deadline (the shell's timers ran late: a
/// host whose cores are busy, black-box round 219a) says by how much, once, for the
/// shell's `pingpost_auction_deadline_overruns_total`; one that ends at the deadline or
/// before says nothing.
#[test]
fn an_auction_that_ends_past_its_deadline_says_by_how_much() {
    let cfg = cfg_timeouts(&[100]);
    let caps = CapBook::new(1);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(1, breaker_cfg());
    let overruns = |took_us: u64| {
        let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
        a.on_answer(0, bid(m(10), None), 50, T + 50);
        let award = a.finish(&s, T + (took_us / 1000) as i64, took_us);
        if let Some(r) = award.reservation {
            assert!(s.settle(&crate::settlement::CapOp::Release(r)));
        }
        a.effects()
            .filter_map(|e| match e {
                Effect::DeadlineOverrun { late_us } => Some(late_us),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(overruns(50_000), [0u64; 0]);
    assert_eq!(overruns(150_000), [0u64; 0], "at the deadline: in time");
    assert_eq!(overruns(150_001), [1]);
    assert_eq!(overruns(172_500), [22_500]);
}

#[test]
fn answers_before_and_at_the_bound_count_after_it_are_late() {
    let cfg = cfg_timeouts(&[100, 100, 100]);
    let caps = CapBook::new(3);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(3, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    // Bounds are all T+100.
    a.on_answer(0, bid(m(10), None), 50, T + 99); // before
    a.on_answer(1, bid(m(20), None), 50, T + 100); // at: still in time
    assert_eq!(a.poll_timeout(), Some(T + 100));
    a.on_answer(2, bid(m(30), None), 50, T + 101); // after: late, never used
    a.handle_timeout(T + 101);
    assert_eq!(a.poll_timeout(), None);
    let award = a.finish(&s, T + 101, 101_000);
    let effects = run(&s, a.effects());
    assert_eq!(
        award.winner().map(|w| w.bid.buyer),
        Some(BuyerKey(1)),
        "the late 30 lost"
    );
    assert!(effects.contains(&Effect::LateAnswer { buyer: 2 }));
    let rec = auction_record(&effects);
    let outcomes: Vec<_> = rec.buyers.iter().map(|l| (l.buyer, l.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("b0", BuyerOutcome::Bid),
            ("b1", BuyerOutcome::Bid),
            ("b2", BuyerOutcome::Timeout)
        ]
    );
    // The timed-out buyer's breaker learns a failure; the others a success.
    assert!(effects.contains(&Effect::Ping {
        buyer: 2,
        outcome: BuyerOutcome::Timeout,
        took_us: None,
        breaker: Some(false)
    }));
    assert_eq!(rec.head.generation, 42);
}

#[test]
fn a_timeout_at_the_bound_comes_before_a_later_answer() {
    let cfg = cfg_timeouts(&[100]);
    let caps = CapBook::new(1);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(1, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    a.handle_timeout(T + 99);
    assert_eq!(a.poll_timeout(), Some(T + 100), "not yet at the bound");
    a.handle_timeout(T + 100);
    assert_eq!(a.poll_timeout(), None);
    // The answer that comes now (even stamped at the bound) is too late: timed out.
    a.on_answer(0, bid(m(10), None), 100, T + 100);
    let award = a.finish(&s, T + 100, 0);
    assert_eq!(award.no_bid, Some(NoBidReason::NoBids));
    let effects = run(&s, a.effects());
    assert!(effects.contains(&Effect::LateAnswer { buyer: 0 }));
}

#[test]
fn everyone_answering_early_ends_collection() {
    let cfg = cfg_timeouts(&[100, 100]);
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    a.on_answer(1, Some(BidOutcome::NoBid { reason: None }), 5_000, T + 5);
    assert_eq!(a.poll_timeout(), Some(T + 100));
    a.on_answer(0, bid(m(12), None), 7_000, T + 7);
    assert_eq!(a.poll_timeout(), None, "done at T+7, not at the bound");
    let award = a.finish(&s, T + 7, 7_000);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(0)));
    assert_eq!(caps.outstanding(BuyerKey(0)), 1, "the winner's cap is held");
}

/// A pass's reason, when the buyer gave one as a code, is on its line of the auction
/// record (before: dropped, so an operator could not see why buyers pass).
#[test]
fn a_pass_keeps_its_reason_on_the_buyers_line() {
    let cfg = cfg_timeouts(&[100, 100]);
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    let reason = Some("outside_criteria".to_string());
    a.on_answer(0, Some(BidOutcome::NoBid { reason }), 5_000, T + 5);
    a.on_answer(1, Some(BidOutcome::NoBid { reason: None }), 6_000, T + 6);
    let award = a.finish(&s, T + 6, 6_000);
    assert_eq!(award.no_bid, Some(NoBidReason::NoBids));
    let effects = run(&s, a.effects());
    let rec = auction_record(&effects);
    let reasons: Vec<_> = rec
        .buyers
        .iter()
        .map(|l| (l.outcome, l.reason.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            (BuyerOutcome::NoBid, Some("outside_criteria")),
            (BuyerOutcome::NoBid, None)
        ]
    );
    let json = serde_json::to_value(&rec.buyers).unwrap();
    assert_eq!(json[0]["reason"], "outside_criteria");
    assert!(json[1].get("reason").is_none(), "{json}");
}

/// A vertical's `consent_required`: without the key (or with it blank) no buyer is
/// pinged, no cap is looked at or held, and the no-bid reason says why; with it, the
/// auction runs as usual.
#[test]
fn a_lead_without_required_consent_pings_nobody_and_says_consent_required() {
    let mut cfg = cfg_timeouts(&[100, 100]);
    cfg.verticals[0].consent_required = vec!["trustedform_cert_url".into()];
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    let blank: std::collections::BTreeMap<String, String> =
        [("trustedform_cert_url".to_string(), " ".to_string())].into();
    // Characters that print as nothing are no consent either (one zero-width space was,
    // then one control character, a musical format control, a variation selector 17).
    let invisible: Vec<std::collections::BTreeMap<String, String>> = [
        "\u{200B}\u{FEFF} \u{2060}\u{00AD}",
        "\u{0001}",
        "\u{007F}\u{0085}\u{009F}",
        "\u{FFF9}\u{FFFB}\u{FFF0}",
        "\u{1BCA0}\u{1D173}",
        "\u{E0100}\u{E01EF}\u{E0FFF}",
        "\u{2800}",
    ]
    .iter()
    .map(|v| [("trustedform_cert_url".to_string(), v.to_string())].into())
    .collect();
    for consent in [&NO_CONSENT, &blank].into_iter().chain(&invisible) {
        let mut p = params(&cfg, T);
        p.consent = consent;
        let mut a = Auction::new(p, &lead(TX), &s, &br, T);
        assert_eq!(a.ping_count(), 0, "{consent:?}");
        assert_eq!(a.poll_timeout(), None);
        let award = a.finish(&s, T, 0);
        assert_eq!(award.no_bid, Some(NoBidReason::ConsentRequired));
        assert_eq!(award.reservation, None);
        let effects = run(&s, a.effects());
        let rec = auction_record(&effects);
        assert_eq!(rec.no_bid, Some("consent_required"));
        assert!(rec.buyers.is_empty(), "no buyer line: nobody was pinged");
    }
    let given: std::collections::BTreeMap<String, String> = [(
        "trustedform_cert_url".to_string(),
        "https://cert".to_string(),
    )]
    .into();
    let mut p = params(&cfg, T);
    p.consent = &given;
    let mut a = Auction::new(p, &lead(TX), &s, &br, T);
    assert_eq!(a.ping_count(), 2);
    a.on_answer(0, bid(m(12), None), 1_000, T + 1);
    a.on_answer(1, bid(m(10), None), 1_000, T + 1);
    let award = a.finish(&s, T + 1, 1_000);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(0)));
    assert_eq!(caps.outstanding(BuyerKey(0)), 1);
}

/// A lead screened out as a duplicate pings nobody, holds no cap and says `duplicate`,
/// even with consent missing too (the screen is the first reason); a post of a quote
/// found to be a duplicate is answered `duplicate` and its hold released for it.
#[test]
fn a_duplicate_pings_nobody_and_its_post_releases_the_hold() {
    let mut cfg = cfg_timeouts(&[100, 100]);
    cfg.verticals[0].consent_required = vec!["trustedform_cert_url".into()];
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    let mut p = params(&cfg, T);
    p.screen = Some(NoBidReason::Duplicate);
    let mut a = Auction::new(p, &lead(TX), &s, &br, T);
    assert_eq!(a.ping_count(), 0);
    assert_eq!(a.poll_timeout(), None);
    let award = a.finish(&s, T, 0);
    assert_eq!(award.no_bid, Some(NoBidReason::Duplicate));
    assert_eq!(award.reservation, None);
    let effects = run(&s, a.effects());
    let rec = auction_record(&effects);
    assert_eq!(rec.no_bid, Some("duplicate"));
    assert!(rec.buyers.is_empty());
    assert_eq!(caps.outstanding(BuyerKey(0)), 0);

    let hold = caps.reserve(BuyerKey(0), &cfg.buyers[0], m(10), T).unwrap();
    // The refusals below say what to release; nothing here carries it out.
    let held = caps.outstanding(BuyerKey(0));
    let r = crate::post::refuse_before_delivery(crate::post::BeforeDelivery::Duplicate, Some(hold));
    let answer = r.answer("pg_1");
    assert_eq!(answer.status, proto::seller::PostStatus::Duplicate);
    assert_eq!(
        answer.reason.as_deref(),
        Some(crate::post::DUPLICATE_REASON)
    );
    assert_eq!(
        r.holdless_end(7, "pg_1", &[], T),
        None,
        "its hold's release records it"
    );
    let (hold, why) = r.release.unwrap();
    assert_eq!(why, Some(crate::settlement::release_reason::DUPLICATE));
    // A quote that held nothing (a test lead's) is closed by a record of its own.
    let holdless =
        crate::post::refuse_before_delivery(crate::post::BeforeDelivery::Suppressed, None);
    match holdless.holdless_end(7, "pg_2", &[], T) {
        Some(crate::record::Record::QuoteReleased(h)) => {
            assert_eq!(
                (h.ping_id, h.buyer, h.price_micros, h.reason, h.test),
                (Some("pg_2"), "", 0, Some("suppressed"), true)
            );
        }
        other => panic!("{other:?}"),
    }
    let expired = crate::post::refuse_before_delivery(crate::post::BeforeDelivery::Expired, None);
    assert_eq!(expired.holdless_end(7, "pg_3", &[], T), None);
    // A consumer on the suppression list: answered `suppressed`, the hold released for it.
    let r =
        crate::post::refuse_before_delivery(crate::post::BeforeDelivery::Suppressed, Some(hold));
    let answer = r.answer("pg_1");
    assert_eq!(answer.status, proto::seller::PostStatus::Suppressed);
    assert_eq!(
        answer.reason.as_deref(),
        Some(crate::post::SUPPRESSED_REASON)
    );
    assert_eq!(
        r.release.map(|(_, why)| why),
        Some(Some(crate::settlement::release_reason::SUPPRESSED))
    );
    let mut p = params(&cfg, T);
    p.screen = Some(NoBidReason::Suppressed);
    let mut a = Auction::new(p, &lead(TX), &s, &br, T);
    assert_eq!(a.ping_count(), 0);
    assert_eq!(a.finish(&s, T, 0).no_bid, Some(NoBidReason::Suppressed));

    // Another seller's consumer on a direct post: the auction runs; a bid that clears
    // the reserve makes the answer `duplicate`, holding nothing; none, its own reason.
    let cfg = cfg_timeouts(&[100, 100]);
    for (price, want) in [(12, NoBidReason::Duplicate), (0, NoBidReason::BelowReserve)] {
        let mut p = params(&cfg, T);
        p.refuse_award = Some(NoBidReason::Duplicate);
        p.min_price = Some(m(5));
        let mut a = Auction::new(p, &lead(TX), &s, &br, T);
        assert_eq!(a.ping_count(), 2, "buyers are pinged");
        a.on_answer(0, bid(m(price.max(1)), None), 1_000, T + 1);
        a.on_answer(1, bid(m(1), None), 1_000, T + 1);
        let award = a.finish(&s, T + 1, 1_000);
        assert_eq!(award.no_bid, Some(want), "{price}");
        assert!(award.winner().is_none() && award.reservation.is_none());
        assert_eq!(caps.outstanding(BuyerKey(0)), held, "nothing more held");
        let effects = run(&s, a.effects());
        assert_eq!(auction_record(&effects).no_bid, Some(want.as_str()));
    }
}

/// A bid that names a currency other than the vertical's is no bid (`invalid`,
/// `currency`): its amount means something else. Naming the vertical's is a bid.
#[test]
fn a_bid_in_another_currency_is_invalid() {
    let cfg = cfg_timeouts(&[100, 100]);
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    let in_currency = |c: &[u8; 3], price| {
        Some(BidOutcome::Bid {
            price,
            bid_id: None,
            expires_in_ms: None,
            currency: Some(*c),
        })
    };
    assert_eq!(cfg.verticals[0].currency, "USD");
    a.on_answer(0, in_currency(b"EUR", m(20)), 1_000, T + 1);
    a.on_answer(1, in_currency(b"USD", m(10)), 1_000, T + 1);
    let award = a.finish(&s, T + 1, 1_000);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(1)));
    let effects = run(&s, a.effects());
    let rec = auction_record(&effects);
    let eur = rec
        .buyers
        .iter()
        .find(|l| l.idx == 0)
        .expect("buyer 0's line");
    assert_eq!(eur.outcome, BuyerOutcome::Invalid);
    assert_eq!(eur.detail, Some("currency"));
    assert_eq!(eur.bid_micros, None);
}

#[test]
fn no_time_left_means_not_pinged_and_no_breaker_penalty() {
    let cfg = cfg_timeouts(&[100]);
    let caps = CapBook::new(1);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(1, breaker_cfg());
    // The request arrived 148 ms ago: the deadline less the reserve has passed.
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T + 148);
    assert_eq!(a.ping_count(), 0);
    assert_eq!(a.poll_timeout(), None);
    let award = a.finish(&s, T + 148, 0);
    // Nobody was pinged, so it is not `no_bids` ("buyers were pinged and none bid").
    assert_eq!(award.no_bid, Some(NoBidReason::NoEligibleBuyers));
    let effects = run(&s, a.effects());
    let rec = auction_record(&effects);
    assert_eq!(rec.buyers[0].detail, Some(NO_TIME_LEFT));
    assert!(effects.contains(&Effect::Ping {
        buyer: 0,
        outcome: BuyerOutcome::Timeout,
        took_us: None,
        breaker: None
    }));
}

#[test]
fn no_time_left_does_not_spend_a_half_open_probe() {
    let cfg = cfg_timeouts(&[100]);
    let caps = CapBook::new(1);
    let s = Settlement::new(&caps);
    let bc = breaker_cfg();
    let br = BreakerBook::new(1, bc);
    for i in 0..bc.failures.max(1) {
        br.record(BuyerKey(0), false, T + i64::from(i));
    }
    assert!(br.is_open(BuyerKey(0)));
    // Past the open time a probe is due. An auction with no time left must not take it.
    let probe_at = T + i64::try_from(bc.open_ms).unwrap() + 10;
    let late = Auction::new(params(&cfg, probe_at - 148), &lead(TX), &s, &br, probe_at);
    assert_eq!(late.ping_count(), 0);
    // The next auction, with time, gets the probe at once.
    let a = Auction::new(params(&cfg, probe_at), &lead(TX), &s, &br, probe_at);
    assert_eq!(a.ping_count(), 1, "the probe was still due");
}

// ---------------------------------------------------------------------------------------
// Award

#[test]
fn a_bid_above_bid_max_is_a_no_bid_counted_and_recorded() {
    let mut cfg = cfg_timeouts(&[100, 100]);
    cfg.verticals[0].bid_max = Some(m(100));
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(1850), None), 10, T + 10);
    a.on_answer(1, bid(m(100), None), 10, T + 10); // at the ceiling: fine
    let award = a.finish(&s, T + 10, 0);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(1)));
    let effects = run(&s, a.effects());
    assert!(effects.contains(&Effect::Ping {
        buyer: 0,
        outcome: BuyerOutcome::BidAboveMax,
        took_us: Some(10),
        breaker: Some(true)
    }));
    let rec = auction_record(&effects);
    assert_eq!(rec.buyers[0].outcome.as_str(), "bid_above_max");
    assert_eq!(rec.buyers[0].bid_micros, Some(m(1850).0));

    // Alone, it leaves the seller with no bid.
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(1850), None), 10, T + 10);
    a.on_answer(1, Some(BidOutcome::NoBid { reason: None }), 10, T + 10);
    let award = a.finish(&s, T + 10, 0);
    assert_eq!(award.no_bid, Some(NoBidReason::NoBids));
    run(&s, a.effects());
}

#[test]
fn a_bid_expired_by_the_award_neither_wins_nor_falls_back() {
    let cfg = cfg_timeouts(&[100, 100, 100]);
    let caps = CapBook::new(3);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(3, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    // Highest bid, but it holds for 0 ms; the second holds 20 ms and the award comes at
    // 20 ms (a bid is good until its expiry, not at it); the third holds long enough.
    a.on_answer(0, bid(m(30), Some(0)), 5, T + 5);
    a.on_answer(1, bid(m(25), Some(20)), 15, T + 15);
    a.on_answer(2, bid(m(10), Some(60_000)), 20, T + 20);
    let award = a.finish(&s, T + 20, 0);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(2)));
    assert_eq!(award.ranked.len(), 1, "an expired bid is not a fallback");
    assert!(award.quote_expires_at(60_000, T + 20) > T + 20);
    let effects = run(&s, a.effects());
    for buyer in [0, 1] {
        assert!(
            effects.contains(&Effect::Ping {
                buyer,
                outcome: BuyerOutcome::BidExpired,
                took_us: Some(if buyer == 0 { 5 } else { 15 }),
                breaker: Some(true)
            }),
            "buyer {buyer}: {effects:?}"
        );
    }
    let rec = auction_record(&effects);
    assert_eq!(rec.buyers[0].outcome.as_str(), "bid_expired");
    assert_eq!(rec.buyers[0].bid_micros, Some(m(30).0));

    // Alone, an expired bid leaves the seller with no bid rather than a dead quote.
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(30), Some(0)), 5, T + 5);
    a.on_answer(1, Some(BidOutcome::NoBid { reason: None }), 5, T + 5);
    a.on_answer(2, Some(BidOutcome::NoBid { reason: None }), 5, T + 5);
    let award = a.finish(&s, T + 5, 0);
    assert_eq!(award.no_bid, Some(NoBidReason::NoBids));
    run(&s, a.effects());
}

#[test]
fn a_ping_s_bid_shorter_than_the_quote_minimum_cannot_win_but_a_direct_post_s_can() {
    let mut cfg = cfg_timeouts(&[100, 100]);
    cfg.server.quote_min_ms = 5_000;
    let caps = CapBook::new(2);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(2, breaker_cfg());
    // The highest bid holds 4,999 ms: one short of the quote's least life.
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(30), Some(4_999)), 5, T + 5);
    a.on_answer(1, bid(m(10), Some(5_000)), 5, T + 5);
    let award = a.finish(&s, T + 5, 0);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(1)));
    assert_eq!(award.ranked.len(), 1, "a short bid is no fallback either");
    assert_eq!(award.quote_expires_at(60_000, T + 5), T + 5_000);
    let effects = run(&s, a.effects());
    let rec = auction_record(&effects);
    assert_eq!(rec.buyers[0].outcome.as_str(), "bid_expired");
    assert_eq!(rec.buyers[0].detail, Some("quote_min_ms"));
    assert_eq!(rec.buyers[0].bid_micros, Some(m(30).0));
    assert!(effects.contains(&Effect::Ping {
        buyer: 0,
        outcome: BuyerOutcome::BidExpired,
        took_us: Some(5),
        breaker: Some(true)
    }));

    // A direct post delivers at once: the same bid wins it.
    let mut direct = params(&cfg, T);
    direct.direct = true;
    let mut a = Auction::new(direct, &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(30), Some(4_999)), 5, T + 5);
    a.on_answer(1, bid(m(10), Some(5_000)), 5, T + 5);
    let award = a.finish(&s, T + 5, 0);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(0)));
    run(&s, a.effects());

    // The least life is never more than the quote TTL; 0 turns it off.
    for (ttl, min, expires, wins) in [
        (1_000, 5_000, 999, false),
        (1_000, 5_000, 1_000, true),
        (60_000, 0, 1, true),
    ] {
        cfg.server.quote_ttl_ms = ttl;
        cfg.server.quote_min_ms = min;
        let caps = CapBook::new(2);
        let s = Settlement::new(&caps);
        let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
        a.on_answer(0, bid(m(30), Some(expires)), 0, T);
        a.on_answer(1, Some(BidOutcome::NoBid { reason: None }), 0, T);
        let award = a.finish(&s, T, 0);
        assert_eq!(
            award.winner().is_some(),
            wins,
            "ttl {ttl}, min {min}, expires {expires}"
        );
        run(&s, a.effects());
    }
}

/// A direct post's hold lasts until its post's deadline, not the quote TTL: in the last
/// minute of an hour whose next hour is full (the clock set back across a restart), a
/// ping is refused (its quote would be firm into the full hour) but a direct post, whose
/// delivery ends within the hour, sells (black-box round 90a: refused `capped` for a
/// whole `quote_ttl_ms` before the hour's end).
#[test]
fn a_direct_post_holds_its_buyer_until_its_post_deadline_not_the_quote_ttl() {
    let mut cfg = cfg_timeouts(&[100]);
    cfg.server.quote_ttl_ms = 60_000;
    cfg.server.post_deadline_ms = 5_000;
    cfg.buyers[0].caps = Caps {
        hourly: Some(1),
        ..Caps::default()
    };
    let hour = T - T % 3_600_000 + 3_600_000;
    let tz = cfg.buyers[0].timezone;
    let caps = CapBook::new(1);
    // The next hour already holds its one lead.
    let next = crate::caps::Windows::at(tz, hour + 10_000).unwrap();
    assert!(caps.restore_sold(BuyerKey(0), Some(tz), &next, m(1)));
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(1, breaker_cfg());
    let now = hour - 30_000;
    for (direct, sells) in [(false, false), (true, true)] {
        let mut p = params(&cfg, now);
        p.direct = direct;
        let mut a = Auction::new(p, &lead(TX), &s, &br, now);
        a.on_answer(0, bid(m(30), None), 1, now + 1);
        let award = a.finish(&s, now + 1, 0);
        let sold = award.winner().is_some();
        let effects = run(&s, a.effects());
        let rec = auction_record(&effects);
        assert_eq!(sold, sells, "direct {direct}: {:?}", rec.buyers);
    }
}

#[test]
fn the_award_walks_down_while_reservations_fail() {
    let mut cfg = cfg_timeouts(&[100, 100, 100]);
    for b in &mut cfg.buyers {
        b.caps = Caps {
            daily: Some(1),
            ..Caps::default()
        };
    }
    let caps = CapBook::new(3);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(3, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    assert_eq!(a.ping_count(), 3);
    // Between eligibility and the award, other auctions take buyers 0 and 1's last lead.
    let other0 = caps.reserve(BuyerKey(0), &cfg.buyers[0], m(1), T).unwrap();
    let _other1 = caps.reserve(BuyerKey(1), &cfg.buyers[1], m(1), T).unwrap();
    a.on_answer(0, bid(m(30), None), 1, T + 1);
    a.on_answer(1, bid(m(20), None), 1, T + 1);
    a.on_answer(2, bid(m(10), None), 1, T + 1);
    let award = a.finish(&s, T + 1, 0);
    assert_eq!(award.winner().map(|w| w.bid.buyer), Some(BuyerKey(2)));
    assert_eq!(award.ranked.len(), 1, "the capped ones are not fallbacks");
    let effects = run(&s, a.effects());
    let capped: Vec<_> = auction_record(&effects)
        .buyers
        .iter()
        .filter(|l| l.outcome == BuyerOutcome::CappedAtAward)
        .map(|l| l.buyer)
        .collect();
    assert_eq!(capped, ["b0", "b1"]);
    // Each is counted (`pingpost_buyer_capped_at_award_total`, black-box round 38).
    let counted: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::CappedAtAward { buyer } => Some(*buyer),
            _ => None,
        })
        .collect();
    assert_eq!(counted, [0, 1]);

    // Every bid capped: `capped`.
    caps.release(&other0);
    let _ = caps.reserve(BuyerKey(0), &cfg.buyers[0], m(1), T).unwrap();
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    assert!(
        a.pings().all(|o| o.buyer != 2),
        "buyer 2 holds the quote above"
    );
    a.handle_timeout(T + 100);
    let award = a.finish(&s, T + 100, 0);
    assert_eq!(
        award.no_bid,
        Some(NoBidReason::Capped),
        "all skipped on caps"
    );
}

#[test]
fn test_leads_reserve_nothing() {
    let mut cfg = cfg_timeouts(&[100]);
    cfg.buyers[0].caps.daily = Some(1);
    let caps = CapBook::new(1);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(1, breaker_cfg());
    let mut p = params(&cfg, T);
    p.test = true;
    let mut a = Auction::new(p, &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(10), None), 1, T + 1);
    let award = a.finish(&s, T + 1, 0);
    assert!(award.winner().is_some());
    assert_eq!(award.reservation, None);
    assert_eq!(caps.outstanding(BuyerKey(0)), 0);
}

#[test]
fn no_bid_reasons_are_decided_without_strings() {
    let br = BreakerBook::new(2, breaker_cfg());
    // Nobody takes the vertical.
    let cfg = config_with(vec![]);
    let caps = CapBook::new(0);
    let s = Settlement::new(&caps);
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    assert_eq!(
        a.finish(&s, T, 0).no_bid,
        Some(NoBidReason::NoEligibleBuyers)
    );
    // Filtered out by state: no eligible buyers.
    let mut cfg = cfg_timeouts(&[100]);
    cfg.buyers[0].states_include = vec!["CA".into()];
    cfg.index_buyers();
    let caps = CapBook::new(1);
    let s = Settlement::new(&caps);
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    assert_eq!(
        a.finish(&s, T, 0).no_bid,
        Some(NoBidReason::NoEligibleBuyers)
    );
    // Bids under the reserve.
    let cfg = cfg_timeouts(&[100]);
    let mut p = params(&cfg, T);
    p.min_price = Some(m(50));
    let mut a = Auction::new(p, &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(10), None), 1, T + 1);
    assert_eq!(
        a.finish(&s, T + 1, 0).no_bid,
        Some(NoBidReason::BelowReserve)
    );
    // Every buyer's breaker open: no eligible buyers (nobody could be asked).
    let br_open = BreakerBook::new(1, breaker_cfg());
    for i in 0..10 {
        br_open.record(BuyerKey(0), false, T + i);
    }
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br_open, T + 10);
    assert_eq!(a.ping_count(), 0);
    let award = a.finish(&s, T + 10, 0);
    assert_eq!(award.no_bid, Some(NoBidReason::NoEligibleBuyers));
    let effects = run(&s, a.effects());
    // Counted in a bounded summary, not a line each (black-box round 133a: 5,000 lines
    // in each record with 5,000 buyers down); its metric still sees the skip.
    let record = auction_record(&effects);
    assert!(record.buyers.is_empty(), "{:?}", record.buyers);
    let open = record.breaker_open.as_ref().expect("the breaker summary");
    assert_eq!((open.total, open.first.len()), (1, 1));
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Ping {
            outcome: BuyerOutcome::SkippedBreaker,
            ..
        }
    )));
}

#[test]
fn a_huge_expires_in_ms_saturates() {
    assert_eq!(bid_expires_at(T, Some(u64::MAX)), Some(i64::MAX));
    assert_eq!(bid_expires_at(T, Some(60_000)), Some(T + 60_000));
    assert_eq!(bid_expires_at(T, None), None);
    let cfg = cfg_timeouts(&[100]);
    let caps = CapBook::new(1);
    let s = Settlement::new(&caps);
    let br = BreakerBook::new(1, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    a.on_answer(0, bid(m(10), Some(u64::MAX)), 1, T + 1);
    let award = a.finish(&s, T + 1, 0);
    // The quote TTL applies; the quote is not born expired.
    assert_eq!(award.quote_expires_at(60_000, T + 1), T + 60_000);
    // A bid that holds for less than the TTL shortens the quote; never before `now`.
    let short = Award {
        ranked: award.ranked.clone(),
        reservation: None,
        no_bid: None,
        arrival: T,
    };
    let mut r = short.clone();
    r.ranked[0].bid.expires_in_ms = Some(5);
    assert_eq!(r.quote_expires_at(60_000, T + 1), T + 5);
    assert_eq!(r.quote_expires_at(60_000, T + 9), T + 9);
}

// ---------------------------------------------------------------------------------------
// Post plan

/// Four buyers bidding 20, 18, 17, 16 (seller price 16 at 80 %): quoted 16, so all three
/// fallbacks cover it. The winner's cap is reserved as the quote's hold.
struct Fixture {
    cfg: Config,
    caps: CapBook,
}

impl Fixture {
    fn new(post_deadline_ms: u64) -> Fixture {
        let mut cfg = cfg_timeouts(&[100, 100, 100, 100]);
        cfg.server.post_deadline_ms = post_deadline_ms;
        // Short-lived fallback bids are what some of these tests are about: no least
        // quote life keeps them out of the award.
        cfg.server.quote_min_ms = 0;
        for b in &mut cfg.buyers {
            b.post_timeout_ms = 2_000;
        }
        Fixture {
            caps: CapBook::new(4),
            cfg,
        }
    }

    fn award(&self, expires: [Option<u64>; 4]) -> Award {
        let s = Settlement::new(&self.caps);
        let br = BreakerBook::new(4, breaker_cfg());
        let mut a = Auction::new(params(&self.cfg, T), &lead(TX), &s, &br, T);
        for (i, price) in [20, 18, 17, 16].into_iter().enumerate() {
            a.on_answer(i, bid(m(price), expires[i]), 1, T + 1);
        }
        let award = a.finish(&s, T + 1, 0);
        run(&s, a.effects());
        award
    }

    fn plan(&self, award: Award, now: UnixMs) -> PostPlan<'_> {
        plan_on(&self.cfg, award, now, &[])
    }

    fn held(&self) -> Vec<usize> {
        (0..4).map(|b| self.caps.outstanding(BuyerKey(b))).collect()
    }
}

/// A post plan for `award` on `cfg` (the configuration serving at post time), the
/// winner's hold taken from the quote; `removed` are bidders a reload removed.
fn plan_on<'a>(
    cfg: &'a Config,
    award: Award,
    now: UnixMs,
    removed: &'a [(BuyerKey, String)],
) -> PostPlan<'a> {
    let quoted = award
        .ranked
        .first()
        .map_or(Micros::ZERO, |r| r.seller_price);
    PostPlan::new(
        PostParams {
            config: cfg,
            generation: 42,
            seller: 0,
            vertical: 0,
            test: false,
            quoted,
            currency: "USD",
            auction_id: "au_t",
            ping_id: "pg_t",
            lead_id: "ld_t",
            auction_arrival: T,
            from_quote: true,
            removed,
            idempotency: None,
            dedup: &[],
            guard_epoch: 9,
        },
        award.ranked,
        award.reservation,
        now,
    )
}

fn deliver_to(step: PostStep) -> usize {
    match step {
        PostStep::Deliver(a) => a.buyer,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[test]
fn the_winner_accepts_commit_and_a_durable_sale() {
    let f = Fixture::new(5_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    plan.on_result(
        AttemptResult::Accepted {
            buyer_lead_id: Some("crm-1".into()),
        },
        T + 1_010,
    );
    assert!(matches!(plan.next(&s, T + 1_010), PostStep::Sold(a) if a.buyer == 0));
    let effects = run(&s, plan.effects());
    // Write-ahead: the delivery's durable `post_sent` record comes before it.
    assert!(matches!(&effects[0], Effect::Record(r @ Record::PostSent(_)) if r.is_durable()));
    assert!(matches!(effects[1], Effect::Cap(CapOp::Commit(_))));
    let sale = effects.iter().find_map(|e| match e {
        Effect::Record(r @ Record::Sale(_)) => Some(r),
        _ => None,
    });
    assert!(sale.is_some_and(|r| r.is_durable()));
    assert_eq!(f.held(), [0, 0, 0, 0]);
    assert_eq!(
        f.caps
            .usage(BuyerKey(0), &f.cfg.buyers[0], T + 1_010)
            .sold_day,
        1
    );
}

#[test]
fn a_late_accept_sells_in_the_place_kept_for_it_never_past_the_cap() {
    let mut f = Fixture::new(5_000);
    for b in &mut f.cfg.buyers {
        b.caps = Caps {
            daily: Some(1),
            ..Caps::default()
        };
    }
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    plan.on_result(AttemptResult::Timeout, T + 1_300);
    let late = plan.take_late_hold().expect("kept");
    let _ = plan.next(&s, T + 1_300);
    run(&s, plan.effects());
    // Buyer 0 is at its cap of 1 while its answer is awaited: no other lead can take it.
    assert!(f
        .caps
        .reserve(BuyerKey(0), &f.cfg.buyers[0], m(1), T + 1_400)
        .is_err());
    // It accepts late: the kept place becomes the sale, counted once.
    run(&s, [crate::post::settle_late(late, true)].into_iter());
    let u = f.caps.usage(BuyerKey(0), &f.cfg.buyers[0], T + 2_000);
    assert_eq!((u.sold_day, u.reserved), (1, 0));
    assert!(f
        .caps
        .reserve(BuyerKey(0), &f.cfg.buyers[0], m(1), T + 2_000)
        .is_err());
}

#[test]
fn a_late_hold_the_shell_did_not_take_is_released_not_lost() {
    let f = Fixture::new(5_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    plan.on_result(AttemptResult::Timeout, T + 1_100);
    // The shell forgets `take_late_hold`; the next timeout must not lose buyer 0's hold.
    assert_eq!(deliver_to(plan.next(&s, T + 1_100)), 1);
    run(&s, plan.effects());
    assert_eq!(f.held(), [1, 1, 0, 0]);
    plan.on_result(AttemptResult::Timeout, T + 1_200);
    run(&s, plan.effects());
    assert_eq!(f.held(), [0, 1, 0, 0], "buyer 0's untaken hold released");
    assert_eq!(plan.take_late_hold().map(|r| r.buyer), Some(BuyerKey(1)));
}

#[test]
fn a_rejection_releases_and_falls_back_with_a_new_reservation() {
    let f = Fixture::new(5_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    assert_eq!(f.held(), [1, 0, 0, 0]);
    plan.on_result(AttemptResult::Rejected { reason: None }, T + 1_010);
    let step = plan.next(&s, T + 1_010);
    run(&s, plan.effects());
    assert_eq!(deliver_to(step), 1);
    assert_eq!(
        f.held(),
        [0, 1, 0, 0],
        "the winner's hold released, buyer 1 holds"
    );
    plan.on_result(AttemptResult::Timeout, T + 3_010);
    // A timeout keeps buyer 1's hold for its late answer: the plan hands it over and
    // moves on; buyer 1's place stays taken meanwhile.
    let late = plan.take_late_hold().expect("the timed-out attempt's hold");
    assert_eq!(late.buyer, BuyerKey(1));
    assert!(plan.take_late_hold().is_none(), "handed over once");
    assert_eq!(deliver_to(plan.next(&s, T + 3_010)), 2);
    plan.on_result(AttemptResult::Error, T + 3_020);
    assert!(
        plan.take_late_hold().is_none(),
        "only a timeout keeps a hold"
    );
    assert_eq!(deliver_to(plan.next(&s, T + 3_020)), 3);
    plan.on_result(AttemptResult::Invalid("garbage"), T + 3_030);
    let step = plan.next(&s, T + 3_030);
    let effects = run(&s, plan.effects());
    assert_eq!(step, PostStep::Unsold(UnsoldReason::AllBuyersRejected));
    assert_eq!(f.held(), [0, 1, 0, 0], "buyer 1's place is kept");
    // No late accept: the place is free again, and nothing was sold.
    run(&s, [crate::post::settle_late(late, false)].into_iter());
    assert_eq!(f.held(), [0, 0, 0, 0]);
    assert_eq!(
        f.caps
            .usage(BuyerKey(1), &f.cfg.buyers[1], T + 3_040)
            .sold_day,
        0
    );
    let kinds: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Post { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [PostKind::Timeout, PostKind::Error, PostKind::Invalid]
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Record(r @ Record::Unsold(_)) if r.is_durable())));
}

#[test]
fn an_expired_fallback_bid_is_skipped_and_a_huge_expiry_is_not_expired() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    // Buyer 1's bid held 500 ms; buyer 2's "forever" (u64::MAX, which once wrapped to -1).
    let mut plan = f.plan(f.award([None, Some(500), Some(u64::MAX), None]), T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    plan.on_result(AttemptResult::Rejected { reason: None }, T + 1_010);
    assert_eq!(
        deliver_to(plan.next(&s, T + 1_010)),
        2,
        "1 expired at T+500"
    );
    let effects = run(&s, plan.effects());
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Record(Record::PostAttempt(p)) if p.buyer == "b1" && p.outcome == "bid_expired"
    )));
    assert_eq!(
        f.held(),
        [0, 0, 1, 0],
        "nothing reserved for the expired bid"
    );
}

/// `server.post_attempts_max` counts deliveries: a fallback skipped without one (its bid
/// expired, its cap full) does not use one up (black-box round 15: with 5 attempts, a
/// rejecting winner and four expired fallbacks ended the post `all_buyers_rejected`
/// although a sixth bidder would have bought).
#[test]
fn skipped_fallbacks_do_not_use_up_the_posts_attempts() {
    let mut f = Fixture::new(60_000);
    f.cfg.server.post_attempts_max = 2;
    let s = Settlement::new(&f.caps);
    // Buyer 1's bid held 500 ms: expired at the post.
    let award = f.award([None, Some(500), None, None]);
    assert_eq!(award.ranked.len(), 4, "a quote keeps twice the deliveries");
    let mut plan = f.plan(award, T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    plan.on_result(AttemptResult::Rejected { reason: None }, T + 1_010);
    assert_eq!(
        deliver_to(plan.next(&s, T + 1_010)),
        2,
        "1 is skipped, and 2 is the second delivery"
    );
    plan.on_result(AttemptResult::Rejected { reason: None }, T + 1_020);
    assert_eq!(
        plan.next(&s, T + 1_020),
        PostStep::Unsold(UnsoldReason::AllBuyersRejected),
        "two deliveries: buyer 3 is not tried"
    );
    let effects = run(&s, plan.effects());
    let outcomes: Vec<(&str, &str)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(Record::PostAttempt(p)) => Some((p.buyer, p.outcome)),
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("b0", "rejected"),
            ("b1", "bid_expired"),
            ("b2", "rejected")
        ]
    );
    assert_eq!(f.held(), [0, 0, 0, 0], "every hold released");
}

/// The deadline cut the last candidate's attempt short: the post ended on the deadline,
/// and says so (`post_deadline`), not `all_buyers_rejected`; when every buyer answered
/// no in time it is `all_buyers_rejected`.
#[test]
fn a_post_the_deadline_ends_on_its_last_candidate_says_post_deadline() {
    for (last, want) in [
        (AttemptResult::Timeout, UnsoldReason::PostDeadline),
        (
            AttemptResult::Rejected { reason: None },
            UnsoldReason::AllBuyersRejected,
        ),
    ] {
        let f = Fixture::new(1_000);
        let s = Settlement::new(&f.caps);
        let start = T + 1_000;
        let mut plan = f.plan(f.award([None; 4]), start);
        let mut now = start;
        for i in 0..4 {
            let PostStep::Deliver(a) = plan.next(&s, now) else {
                panic!("delivery {i}")
            };
            run(&s, plan.effects());
            if i < 3 {
                now += 10;
                plan.on_result(AttemptResult::Rejected { reason: None }, now);
            } else {
                // The last fallback: its bound is what the deadline left.
                assert_eq!(a.timeout_ms, 1_000 - 30);
                now = if matches!(last, AttemptResult::Timeout) {
                    start + 1_000
                } else {
                    now + 10
                };
                plan.on_result(last.clone(), now);
            }
            if let Some(late) = plan.take_late_hold() {
                run(&s, [crate::post::settle_late(late, false)].into_iter());
            }
        }
        let step = plan.next(&s, now);
        let effects = run(&s, plan.effects());
        assert_eq!(step, PostStep::Unsold(want));
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Record(Record::Unsold(u)) if u.reason == want.as_str() && u.attempts == 4
        )));
        assert_eq!(f.held(), [0, 0, 0, 0]);
    }
}

#[test]
fn the_post_deadline_bounds_every_attempt_and_ends_the_post() {
    let f = Fixture::new(300);
    let s = Settlement::new(&f.caps);
    let start = T + 1_000;
    let mut plan = f.plan(f.award([None; 4]), start);
    assert_eq!(plan.deadline(), start + 300);
    let PostStep::Deliver(a) = plan.next(&s, start) else {
        panic!("a delivery")
    };
    assert_eq!(a.timeout_ms, 300, "min(post timeout 2000, 300 left)");
    plan.on_result(AttemptResult::Timeout, start + 300);
    // The winner's hold is kept for its late answer (only); no fallback is reserved past
    // the deadline.
    let late = plan.take_late_hold().expect("kept for the late answer");
    let step = plan.next(&s, start + 300);
    let effects = run(&s, plan.effects());
    assert_eq!(step, PostStep::Unsold(UnsoldReason::PostDeadline));
    assert_eq!(f.held(), [1, 0, 0, 0]);
    run(&s, [crate::post::settle_late(late, false)].into_iter());
    assert_eq!(f.held(), [0, 0, 0, 0]);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Record(Record::Unsold(u)) if u.reason == "post_deadline" && u.attempts == 1
    )));
    // Asked again, the same answer; nothing more happens.
    assert_eq!(plan.next(&s, start + 400), step);
    assert!(run(&s, plan.effects()).is_empty());

    // Part-way: a fallback gets only what is left.
    let f = Fixture::new(300);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), start);
    plan.next(&s, start);
    plan.on_result(AttemptResult::Rejected { reason: None }, start + 250);
    let PostStep::Deliver(a) = plan.next(&s, start + 250) else {
        panic!("a delivery")
    };
    assert_eq!((a.buyer, a.timeout_ms), (1, 50));
    run(&s, plan.effects());
}

#[test]
fn a_timeout_the_post_deadline_cut_short_teaches_nothing_and_says_so() {
    // Black-box round 28: a buyer ahead of an honest fallback stalled until the post
    // deadline; the fallback's timeout, forced by the time left, paused it.
    let attempt = |effects: &[Effect<'_>]| -> (Option<bool>, Option<String>) {
        let teaches = effects.iter().find_map(|e| match e {
            Effect::Post { teaches, .. } => Some(*teaches),
            _ => None,
        });
        let reason = effects.iter().find_map(|e| match e {
            Effect::Record(Record::PostAttempt(p)) if p.outcome == "timeout" => {
                Some(p.reason.clone())
            }
            _ => None,
        });
        (teaches, reason.flatten())
    };
    // 300 ms left, the buyer's own timeout 2,000: cut short.
    let f = Fixture::new(300);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    plan.next(&s, T + 1_000);
    plan.on_result(AttemptResult::Timeout, T + 1_300);
    let late = plan.take_late_hold();
    let effects = run(&s, plan.effects());
    assert_eq!(
        attempt(&effects),
        (Some(false), Some("post_deadline".to_string()))
    );
    if let Some(l) = late {
        run(&s, [crate::post::settle_late(l, false)].into_iter());
    }
    // Its whole own timeout: the buyer's doing, it teaches.
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    plan.next(&s, T + 1_000);
    plan.on_result(AttemptResult::Timeout, T + 3_000);
    let late = plan.take_late_hold();
    let effects = run(&s, plan.effects());
    assert_eq!(attempt(&effects), (Some(true), None));
    if let Some(l) = late {
        run(&s, [crate::post::settle_late(l, false)].into_iter());
    }
}

#[test]
fn a_shell_failure_during_fallback_never_leaks_or_overwrites_a_hold() {
    // The old fallback loop reserved a fallback's cap, then on a failure before delivery
    // (`continue`) reserved the next one over it: the first hold leaked for good.
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    plan.on_result(AttemptResult::Rejected { reason: None }, T + 1_001);
    assert_eq!(deliver_to(plan.next(&s, T + 1_001)), 1);
    run(&s, plan.effects());
    assert_eq!(f.held(), [0, 1, 0, 0]);
    // The shell failed (a ledger or encoding error) and reports the attempt as not sent.
    plan.on_result(AttemptResult::NotSent, T + 1_002);
    assert_eq!(deliver_to(plan.next(&s, T + 1_002)), 2);
    run(&s, plan.effects());
    assert_eq!(
        f.held(),
        [0, 0, 1, 0],
        "buyer 1's hold was released, not overwritten"
    );
    // The shell failed again and did not report at all: the plan settles it itself.
    assert_eq!(deliver_to(plan.next(&s, T + 1_003)), 3);
    run(&s, plan.effects());
    assert_eq!(f.held(), [0, 0, 0, 1]);
    plan.on_result(
        AttemptResult::Accepted {
            buyer_lead_id: None,
        },
        T + 1_004,
    );
    assert!(matches!(plan.next(&s, T + 1_004), PostStep::Sold(a) if a.buyer == 3));
    let effects = run(&s, plan.effects());
    assert_eq!(f.held(), [0, 0, 0, 0]);
    assert_eq!(
        f.caps
            .usage(BuyerKey(3), &f.cfg.buyers[3], T + 1_004)
            .sold_day,
        1
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Record(Record::Sale(_)))));
}

#[test]
fn a_capped_fallback_is_skipped_and_nothing_is_held_for_it() {
    let mut f = Fixture::new(60_000);
    f.cfg.buyers[1].caps.daily = Some(1);
    let s = Settlement::new(&f.caps);
    let award = f.award([None; 4]);
    // Buyer 1 sells its last lead elsewhere before the post.
    let other = f
        .caps
        .reserve(BuyerKey(1), &f.cfg.buyers[1], m(1), T)
        .unwrap();
    let mut plan = f.plan(award, T + 1_000);
    plan.next(&s, T + 1_000);
    plan.on_result(AttemptResult::Rejected { reason: None }, T + 1_001);
    assert_eq!(deliver_to(plan.next(&s, T + 1_001)), 2);
    let effects = run(&s, plan.effects());
    assert!(effects.contains(&Effect::Post {
        buyer: 1,
        outcome: PostKind::Capped,
        p_model_ppm: None,
        teaches: false,
        at: T + 1_001,
        lead_id: "ld_t",
        guard_epoch: 9,
    }));
    assert_eq!(
        f.held(),
        [0, 1, 1, 0],
        "only the other auction's hold and buyer 2's"
    );
    f.caps.release(&other);
}

/// Buyers the shell says are busy (too many deliveries still heard out after their
/// timeout) are not delivered to: the winner's hold goes back as `buyer_busy`, a busy
/// fallback is never reserved, each is recorded `busy`, and the post goes on.
#[test]
fn a_busy_winner_and_a_busy_fallback_are_skipped_and_hold_nothing() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    assert_eq!(f.held(), [1, 0, 0, 0], "the winner's quote hold");
    let mut asked = Vec::new();
    let mut admit = |k: BuyerKey| {
        asked.push(k.0);
        k.0 >= 2
    };
    let a = match plan.next_admitting(&s, T + 1_000, &mut admit) {
        PostStep::Deliver(a) => a,
        other => panic!("expected a delivery, got {other:?}"),
    };
    assert_eq!(
        (a.buyer, a.attempt),
        (2, 2),
        "buyers 0 and 1 were candidates 0 and 1"
    );
    assert_eq!(asked, [0, 1, 2]);
    let effects = run(&s, plan.effects());
    assert_eq!(f.held(), [0, 0, 1, 0], "nothing held for a busy buyer");
    for (buyer, attempt) in [("b0", 0), ("b1", 1)] {
        assert!(
            effects.iter().any(|e| matches!(
                e,
                Effect::Record(Record::PostAttempt(p))
                    if p.buyer == buyer && p.attempt == attempt && p.outcome == "busy"
            )),
            "{buyer}: {effects:?}"
        );
    }
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Record(Record::QuoteReleased(q)) if q.buyer == "b0" && q.reason == Some("buyer_busy")
    )));
    for buyer in [0, 1] {
        assert!(effects.contains(&Effect::Post {
            buyer,
            outcome: PostKind::Busy,
            p_model_ppm: None,
            teaches: false,
            at: T + 1_000,
            lead_id: "ld_t",
            guard_epoch: 9,
        }));
    }
    // Buyer 2 rejects; buyer 3 is busy too: nobody is left who was tried and accepted.
    plan.on_result(AttemptResult::Rejected { reason: None }, T + 1_001);
    let step = plan.next_admitting(&s, T + 1_001, &mut |k: BuyerKey| k.0 == 2);
    assert_eq!(step, PostStep::Unsold(UnsoldReason::AllBuyersRejected));
    run(&s, plan.effects());
    assert_eq!(f.held(), [0, 0, 0, 0]);
}

/// Every candidate busy: nothing was sent, `no_buyer_available`, every hold back.
#[test]
fn every_candidate_busy_is_unsold_no_buyer_available() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    let step = plan.next_admitting(&s, T + 1_000, &mut |_| false);
    assert_eq!(step, PostStep::Unsold(UnsoldReason::NoBuyerAvailable));
    let effects = run(&s, plan.effects());
    assert_eq!(f.held(), [0, 0, 0, 0]);
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::Record(Record::PostSent(_)))));
}

#[test]
fn nothing_to_deliver_is_unsold_no_bids() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(
        Award {
            ranked: vec![],
            reservation: None,
            no_bid: Some(NoBidReason::NoBids),
            arrival: T,
        },
        T,
    );
    assert_eq!(plan.next(&s, T), PostStep::Unsold(UnsoldReason::NoBids));
    assert!(run(&s, plan.effects()).is_empty());
}

// ---------------------------------------------------------------------------------------
// Open quotes per seller

#[test]
fn a_seller_past_its_open_quote_limit_is_refused_and_counts_come_back() {
    use crate::quotes::{BeginPost, Quote, QuoteBook, QuoteRefused};
    let q = |id: &str, seller: u32| Quote {
        ping_id: id.into(),
        auction_id: format!("au_{id}"),
        seller: SellerKey(seller),
        vertical: 0,
        vertical_name: "auto".into(),
        lead: lead(TX),
        schema: std::sync::Arc::new(crate::testutil::schema()),
        test: false,
        price: m(10),
        currency: "USD".into(),
        expires_at: T + 1_000,
        auctioned_at: T,
        ranked: Vec::new(),
        reservation: None,
        score: None,
        dedup: Vec::new(),
        guard_epoch: 0,
    };
    let book = QuoteBook::new(100, 10_000).with_sellers(2);
    book.insert_limited(q("a", 0), 2).unwrap();
    book.insert_limited(q("b", 0), 2).unwrap();
    assert_eq!(
        book.insert_limited(q("c", 0), 2),
        Err(QuoteRefused::SellerLimit)
    );
    // Another seller is not held back by seller 0's quotes.
    book.insert_limited(q("d", 1), 2).unwrap();
    assert_eq!(
        (
            book.seller_open_count(SellerKey(0)),
            book.seller_open_count(SellerKey(1))
        ),
        (2, 1)
    );
    assert_eq!(book.open_count(), 3, "the refused quote took no place");
    // Posting and finishing one, and expiring another, make room again.
    let BeginPost::Post(_) = book.begin_post("a", SellerKey(0), T + 1) else {
        panic!("post")
    };
    assert_eq!(
        book.seller_open_count(SellerKey(0)),
        2,
        "posting still counts"
    );
    book.finish(
        "a",
        proto::seller::PostAnswer::status_only(proto::seller::PostStatus::Unsold, None),
        T + 2,
    );
    assert_eq!(book.seller_open_count(SellerKey(0)), 1);
    book.sweep(T + 1_000);
    assert_eq!(
        (
            book.seller_open_count(SellerKey(0)),
            book.seller_open_count(SellerKey(1))
        ),
        (0, 0)
    );
    book.insert_limited(q("e", 0), 2).unwrap();
}

// A reload changed the vertical's currency between the quote and the post

#[test]
fn a_sale_is_recorded_in_the_quotes_currency_not_one_a_reload_set_since() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let award = f.award([None; 4]);
    // The quote was made in USD; the configuration serving at post time says JPY.
    let mut after = f.cfg.clone();
    after.verticals[0].currency = "JPY".into();
    let mut plan = plan_on(&after, award, T + 1_000, &[]);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    plan.on_result(
        AttemptResult::Accepted {
            buyer_lead_id: None,
        },
        T + 1_010,
    );
    assert!(matches!(plan.next(&s, T + 1_010), PostStep::Sold(_)));
    let effects = run(&s, plan.effects());
    let sale = effects
        .iter()
        .find_map(|e| match e {
            Effect::Record(Record::Sale(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("a sale record");
    assert_eq!(
        sale.currency, "USD",
        "the quote's currency, never relabelled"
    );
    assert_eq!(sale.seller_price_micros, 16_000_000);
}

// A reload removed the winner between the quote and the post

#[test]
fn a_winner_a_reload_removed_is_skipped_its_hold_released_and_the_lead_falls_back() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let award = f.award([None; 4]);
    assert_eq!(f.held(), [1, 0, 0, 0], "the quote holds the winner's cap");
    // The configuration serving at post time no longer has b0; the others keep their keys.
    let mut buyers = f.cfg.buyers.clone();
    buyers.remove(0);
    let mut after = config_with(buyers);
    after.server = f.cfg.server.clone();
    assert!(after.buyer_by_key(BuyerKey(0)).is_none());
    let removed = [(BuyerKey(0), "b0".to_string())];
    let mut plan = plan_on(&after, award, T + 1_000, &removed);
    // The first delivery goes to the runner-up (b1, position 0 in the new configuration).
    let PostStep::Deliver(a) = plan.next(&s, T + 1_000) else {
        panic!("a fallback is delivered to")
    };
    assert_eq!(after.buyers[a.buyer].key, BuyerKey(1));
    let effects = run(&s, plan.effects());
    assert_eq!(f.held(), [0, 1, 0, 0], "b0's hold released, b1's taken");
    let lines: Vec<String> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(r) => serde_json::to_string(r).ok(),
            _ => None,
        })
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("\"quote_released\"")
            && l.contains("\"buyer\":\"b0\"")
            && l.contains("\"buyer_removed\"")),
        "the release names the removed buyer by its former id: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("\"post_attempt\"")
            && l.contains("\"buyer\":\"b0\"")
            && l.contains("\"outcome\":\"buyer_removed\"")),
        "{lines:?}"
    );
}

#[test]
fn when_every_bidder_was_removed_the_post_is_unsold_buyer_removed_and_holds_nothing() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let award = f.award([None; 4]);
    let mut after = config_with(Vec::new());
    after.server = f.cfg.server.clone();
    let mut plan = plan_on(&after, award, T + 1_000, &[]);
    assert_eq!(
        plan.next(&s, T + 1_000),
        PostStep::Unsold(UnsoldReason::BuyerRemoved)
    );
    run(&s, plan.effects());
    assert_eq!(f.held(), [0, 0, 0, 0]);
}

/// A reload removed the winner and the fallbacks still configured were skipped (their
/// bids expired): no buyer was tried, and not because of the reload alone, so the post
/// is `no_buyer_available`, not `buyer_removed` (black-box round 16).
#[test]
fn a_removed_winner_and_skipped_fallbacks_are_no_buyer_available() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    // Every fallback's bid held 500 ms: expired at the post.
    let award = f.award([None, Some(500), Some(500), Some(500)]);
    let mut buyers = f.cfg.buyers.clone();
    buyers.remove(0);
    let mut after = config_with(buyers);
    after.server = f.cfg.server.clone();
    let removed = [(BuyerKey(0), "b0".to_string())];
    let mut plan = plan_on(&after, award, T + 1_000, &removed);
    assert_eq!(
        plan.next(&s, T + 1_000),
        PostStep::Unsold(UnsoldReason::NoBuyerAvailable)
    );
    assert_eq!(plan.sent(), 0);
    run(&s, plan.effects());
    assert_eq!(f.held(), [0, 0, 0, 0]);
}

/// More buyers than an auction record names (`SKIP_NAMES_MAX` and 10), at most
/// `fanout_max` pinged: their count, configuration, caps and breakers.
fn past_the_skip_names(fanout_max: usize) -> (usize, Config, CapBook, BreakerBook) {
    let n = crate::eligibility::SKIP_NAMES_MAX + 10;
    let mut cfg = cfg_timeouts(&vec![100; n]);
    cfg.server.buyers_per_auction_max = fanout_max;
    (n, cfg, CapBook::new(n), BreakerBook::new(n, breaker_cfg()))
}

/// Eligible buyers past `server.buyers_per_auction_max` are a bounded summary in the
/// record (how many, and the first few by id) and one metric count, never a line (and a
/// metric series) each: with 10,000 eligible buyers a line each made a 621 KB record.
#[test]
fn buyers_past_the_fan_out_limit_are_counted_not_listed() {
    let (n, mut cfg, caps, br) = past_the_skip_names(2);
    let s = Settlement::new(&caps);
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    let pinged: Vec<usize> = a.pings().map(|o| o.buyer).collect();
    assert_eq!(pinged, [0, 1]);
    a.on_answer(0, bid(m(10), None), 5, T + 5);
    a.on_answer(1, bid(m(20), None), 5, T + 5);
    let award = a.finish(&s, T + 5, 5_000);
    assert!(award.winner().is_some());
    let effects = run(&s, a.effects());
    let r = auction_record(&effects);
    assert_eq!(r.buyers.len(), 2, "a line for each pinged buyer only");
    let f = r.fanout_limited.as_ref().expect("the fan-out summary");
    assert_eq!(f.total as usize, n - 2);
    let want: Vec<String> = (2..2 + crate::eligibility::SKIP_NAMES_MAX)
        .map(|i| cfg.buyers[i].id.clone())
        .collect();
    assert_eq!(f.first, want.iter().map(String::as_str).collect::<Vec<_>>());
    let counted: Vec<u32> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::FanoutLimited { count } => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(counted, [(n - 2) as u32]);
    // Under the limit: no summary at all.
    cfg.server.buyers_per_auction_max = n;
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &br, T);
    let _ = a.finish(&s, T + 200, 200_000);
    let effects = run(&s, a.effects());
    assert!(auction_record(&effects).fanout_limited.is_none());
}

/// Eligible buyers skipped for an open breaker are a bounded summary too (how many, the
/// first few by id), each still counted in its own `skipped_breaker` metric, and they
/// take no fan-out place (black-box round 133a: a line each made 310 KB records with
/// 5,000 buyers down).
#[test]
fn buyers_skipped_for_an_open_breaker_are_counted_not_listed() {
    let (n, cfg, caps, br) = past_the_skip_names(2);
    let s = Settlement::new(&caps);
    // Every buyer but the last two fails until its breaker opens.
    for b in 0..n - 2 {
        for i in 0..10 {
            br.record(BuyerKey(b as u32), false, T + i);
        }
    }
    let mut a = Auction::new(params(&cfg, T + 10), &lead(TX), &s, &br, T + 10);
    let pinged: Vec<usize> = a.pings().map(|o| o.buyer).collect();
    assert_eq!(pinged, [n - 2, n - 1], "the open breakers took no place");
    let _ = a.finish(&s, T + 200, 190_000);
    let effects = run(&s, a.effects());
    let r = auction_record(&effects);
    assert_eq!(r.buyers.len(), 2, "a line for each pinged buyer only");
    let open = r.breaker_open.as_ref().expect("the breaker summary");
    assert_eq!(open.total as usize, n - 2);
    let want: Vec<String> = (0..crate::eligibility::SKIP_NAMES_MAX)
        .map(|i| cfg.buyers[i].id.clone())
        .collect();
    assert_eq!(
        open.first,
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let skips = effects
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Ping {
                    outcome: BuyerOutcome::SkippedBreaker,
                    ..
                }
            )
        })
        .count();
    assert_eq!(skips, n - 2, "each skipped buyer's metric");
    // No breaker open: no summary at all.
    let fresh = BreakerBook::new(n, breaker_cfg());
    let mut a = Auction::new(params(&cfg, T), &lead(TX), &s, &fresh, T);
    let _ = a.finish(&s, T + 200, 200_000);
    let effects = run(&s, a.effects());
    assert!(auction_record(&effects).breaker_open.is_none());
}

/// Places among each buyer's pings in flight, over a [`BreakerBook`]: what the shell's
/// health does, in memory.
struct Places {
    breakers: BreakerBook,
    held: std::sync::Mutex<Vec<usize>>,
}

impl crate::settlement::BuyerHealth for Places {
    fn admit(&self, key: BuyerKey, now: UnixMs) -> crate::breaker::Admit {
        self.breakers.admit(key, now)
    }
    fn record(&self, key: BuyerKey, ok: bool, now: UnixMs) {
        self.breakers.record(key, ok, now);
    }
    fn take_ping_place(&self, key: BuyerKey, max: Option<u32>) -> bool {
        let mut held = self.held.lock().unwrap();
        let n = &mut held[key.0 as usize];
        match max {
            Some(max) if *n >= max as usize => false,
            Some(_) => {
                *n += 1;
                true
            }
            None => true,
        }
    }
    fn give_back_ping_place(&self, key: BuyerKey) {
        self.held.lock().unwrap()[key.0 as usize] -= 1;
    }
}

/// Black-box round 161b: one seller's bursts timed a shared buyer out, its breaker opened
/// and every seller lost it. A buyer with `pings_in_flight_max` holding that many pings
/// is skipped (`pings_in_flight_full`, its `skipped_busy` metric), taking no fan-out
/// place and teaching its breaker nothing; a buyer whose breaker is open gives back the
/// place it took; a buyer without the limit is never counted.
#[test]
fn a_buyer_holding_its_pings_in_flight_is_skipped_and_its_breaker_learns_nothing() {
    let (n, mut cfg, caps, br) = past_the_skip_names(1_024);
    cfg.buyers[0].pings_in_flight_max = Some(1);
    cfg.buyers[1].pings_in_flight_max = Some(2);
    cfg.buyers[2].pings_in_flight_max = Some(1);
    let s = Settlement::new(&caps);
    // Buyer 2's breaker is open.
    for i in 0..10 {
        br.record(BuyerKey(2), false, T + i);
    }
    let health = Places {
        breakers: br,
        held: std::sync::Mutex::new(vec![0; n]),
    };
    // Buyer 0 already holds its one ping (an earlier auction's, still in flight).
    health.held.lock().unwrap()[0] = 1;
    let mut a = Auction::new(params(&cfg, T + 10), &lead(TX), &s, &health, T + 10);
    let pinged: Vec<usize> = a.pings().map(|o| o.buyer).collect();
    assert!(!pinged.contains(&0), "buyer 0 is busy: {pinged:?}");
    assert!(pinged.contains(&1));
    assert!(!pinged.contains(&2), "buyer 2's breaker is open");
    assert_eq!(pinged.len(), n - 2);
    // Buyer 1 took one place; buyer 2 gave back the one it took; others are not counted.
    let held = health.held.lock().unwrap().clone();
    assert_eq!(&held[..4], &[1, 1, 0, 0]);
    for slot in 0..pinged.len() {
        a.on_answer(slot, bid(m(10), None), 5, T + 15);
    }
    let _ = a.finish(&s, T + 15, 5_000);
    let effects = run(&s, a.effects());
    let r = auction_record(&effects);
    let busy = r.pings_in_flight_full.as_ref().expect("the busy summary");
    assert_eq!(busy.total, 1);
    assert_eq!(busy.first, [cfg.buyers[0].id.as_str()]);
    assert_eq!(r.breaker_open.as_ref().map(|b| b.total), Some(1));
    assert!(
        r.buyers.iter().all(|l| l.idx != 0),
        "no line for a busy buyer"
    );
    let busy_pings: Vec<&Effect<'_>> = effects
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Ping {
                    outcome: BuyerOutcome::SkippedBusy,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(busy_pings.len(), 1);
    assert!(
        matches!(
            busy_pings[0],
            Effect::Ping {
                buyer: 0,
                breaker: None,
                ..
            }
        ),
        "{busy_pings:?}"
    );
    // A second auction while buyer 1 still holds one: it takes its second place; a third
    // finds it full.
    let a2 = Auction::new(params(&cfg, T + 20), &lead(TX), &s, &health, T + 20);
    assert!(a2.pings().any(|o| o.buyer == 1));
    let a3 = Auction::new(params(&cfg, T + 20), &lead(TX), &s, &health, T + 20);
    assert!(!a3.pings().any(|o| o.buyer == 1), "buyer 1 holds 2 of 2");
    assert_eq!(health.held.lock().unwrap()[1], 2);
}

/// A buyer that cannot be reached is sent nothing: its attempt has no `post_sent` (the
/// shell asks for that record with `sending` only once the connection is made), it is an
/// `error` with reason `not_connected`, its hold goes back, and the post falls back.
/// Black-box round 92a: the `post_sent` came with the attempt, before the connection was
/// tried, so a connection that failed while the ledger failed left "outcome unknown".
#[test]
fn an_unreachable_buyer_leaves_no_post_sent_and_the_post_falls_back() {
    let f = Fixture::new(60_000);
    let s = Settlement::new(&f.caps);
    let mut plan = f.plan(f.award([None; 4]), T + 1_000);
    assert_eq!(deliver_to(plan.next(&s, T + 1_000)), 0);
    let before = run(&s, plan.effects());
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, Effect::Record(Record::PostSent(_)))),
        "no post_sent before the buyer is reached: {before:?}"
    );
    plan.on_result(AttemptResult::NotConnected, T + 1_001);
    assert_eq!(deliver_to(plan.next(&s, T + 1_001)), 1);
    let effects = run(&s, plan.effects());
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::Record(Record::PostSent(_)))));
    let attempt = effects.iter().find_map(|e| match e {
        Effect::Record(Record::PostAttempt(r)) => Some(r),
        _ => None,
    });
    assert!(
        attempt.is_some_and(|r| r.attempt == 0
            && r.outcome == "error"
            && r.reason.as_deref() == Some(crate::post::NOT_CONNECTED)),
        "{effects:?}"
    );
    // It teaches the rates: the lead was not taken, and the endpoint is the buyer's
    // (AI.md; black-box round 140b asked which was meant).
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::Post {
                buyer: 0,
                teaches: true,
                ..
            }
        )),
        "{effects:?}"
    );
    assert_eq!(f.held(), [0, 1, 0, 0], "the winner's hold went back");
    // The fallback is reached: its `post_sent` is queued, durable, once (a second call
    // adds nothing), before its outcome.
    plan.sending(T + 1_002);
    plan.sending(T + 1_002);
    plan.on_result(
        AttemptResult::Accepted {
            buyer_lead_id: None,
        },
        T + 1_003,
    );
    assert!(matches!(plan.next(&s, T + 1_003), PostStep::Sold(a) if a.buyer == 1));
    let effects = run(&s, plan.effects());
    let sent: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(r @ Record::PostSent(p)) => Some((r.is_durable(), p.attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [(true, 1)]);
    assert!(matches!(&effects[0], Effect::Record(Record::PostSent(_))));
    assert_eq!(f.held(), [0, 0, 0, 0]);
}
