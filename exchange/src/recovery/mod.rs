//! Recovery at start: after the ledger has verified itself ([`crate::ledger::Ledger::open`])
//! and before the exchange serves, the ledger is replayed to rebuild what lives only in
//! memory:
//!
//! - caps and budgets: every `sale` counts in the windows it was sold in (its `windows`;
//!   a record without them, written before format 4, or written in another zone than the
//!   buyer's configured one, counts in the windows of its time in the buyer's zone); so
//!   does every delivery with a `post_sent` record and no outcome (when in doubt, count
//!   it), and every late accept (`post_attempt` with outcome `late_accept`: the buyer
//!   accepted after its timeout and has the lead). A buyer that is not configured now is
//!   counted too, under the stable key of its id (interned now), so a reload that brings
//!   it back finds its counts (its zone is not known: its leads count in the windows they
//!   were written with, and the cap book carries them into the zone it comes back with);
//! - idempotency keys: a `post_sent` record names its request's key (as SHA-256); a retry
//!   with that key gets the stored answer (`sold` or `unsold` from the post's outcome, or
//!   `500` when the outcome is unknown) and delivers nothing;
//! - the sold-lead index (`POST /v1/dispositions`): every `sale` (the newest
//!   `server.sold_leads_max`), with the outcomes its `disposition` records took and its
//!   `refund`, so a repeat after a restart is still refused;
//! - buyers' idempotency keys (`POST /v1/dispositions`): a `disposition` record names its
//!   request's key and body (as SHA-256); a retry with that key gets the `200` it was
//!   given, rebuilt from the record and its lead's `refund` by the function that built it
//!   ([`crate::dispositions::answer_json`]), and writes nothing;
//! - deliveries whose outcome is unknown (a `post_sent` with no `sale` or `post_attempt`
//!   of the same lead and attempt): counted, logged at start, listed by
//!   `pingpost ledger verify`.
//!
//! - finished posts: a quote that was posted (sold or unsold) or expired is put back as
//!   finished, so a repeated `/v1/post` of its `ping_id` gets the first answer again;
//! - open quotes: every `quote_opened` with no sale, `unsold`, release or expiry of its
//!   ping, and not yet expired, is firm again with its cap hold (see `restore::restore_quote`).
//!
//! Never: panics on a record it cannot read (a line that is not a record it knows is
//! skipped: the ledger's own verification already vouched for every line).
//!
//! [`recover`] reads the ledger and checks the fingerprint key; `scan` reads the records
//! back ([`Scan`]); `apply` applies them to the starting exchange ([`apply`]); `restore`
//! puts back what is open or finished, one kind at a time; `answers` rebuilds the answers
//! a retry gets.

mod answers;
mod apply;
mod restore;
mod scan;

use std::collections::HashSet;

use crate::core::UnixMs;
use crate::state::AppState;

pub use answers::{outcome_unknown, OUTCOME_UNKNOWN};
pub use apply::{apply, Recovered};
pub use scan::{BuyerEvent, KeyedDisposition, KeyedPing, Sale, Scan, Sent};

/// Most unknown-outcome deliveries named one by one in the start log (the count is
/// always logged).
pub const UNKNOWN_LOGGED_MAX: usize = 100;

/// Whether the fingerprint key may serve this ledger (black-box rounds 62c and 63a):
/// another valid key (restored from the wrong backup, made by hand), or a missing one
/// beside a ledger whose runs recorded theirs, would leave every consumer sold within the
/// dedup window unknown to de-duplication, and sold again. Refused unless the start says
/// `--new-fingerprint-key`. A key an earlier run used (not the last one: say, the old key
/// put back after a start made a new one) is taken, with a warning naming what it does
/// not know. A ledger whose starts recorded no key id (from before key ids) is taken as
/// it is.
fn check_fingerprint_key(state: &AppState, scan: &Scan) -> std::io::Result<()> {
    let Some(last) = &scan.key_id else {
        // A ledger from before key ids: a missing key is made anew, and said once.
        if state.fingerprint.made() && scan.records > 0 {
            tracing::warn!(
                key = %state.ledger.dir().join(crate::fingerprint::KEY_FILE).display(),
                "lead fingerprint key missing beside a ledger that has records (from before key ids): a new key was made, so de-duplication does not know the consumers sold before and lead fingerprints from now on cannot be compared with the earlier ones; restore the old key from a backup (and restart) at once, before anything is sold under the new one"
            );
        }
        return Ok(());
    };
    let new_allowed = state.runtime.load().config.server.new_fingerprint_key;
    let fp = &state.fingerprint;
    let dir = state.ledger.dir().display();
    let key = crate::fingerprint::KEY_FILE;
    if fp.made() {
        if new_allowed {
            tracing::warn!(
                last_key_id = %last,
                new_key_id = %fp.key_id(),
                "{key} was missing and a new key is begun (--new-fingerprint-key): de-duplication does not know the consumers sold before, the idempotency keys of the runs before (counted in the replay's idempotency_keys) match no retry, so their retries run again, and lead fingerprints do not compare with earlier ones; keep this key from now on (putting the old one back later would forget, in turn, the consumers sold under this one)"
            );
            return Ok(());
        }
        return Err(std::io::Error::other(format!(
            "{key} is missing in {dir}, beside a ledger whose runs used one (the last start recorded id {last}): de-duplication would not know the consumers sold before, and lead fingerprints would not compare; restore the key from a backup, or, to begin a new key on purpose, start once with --new-fingerprint-key"
        )));
    }
    let now = fp.key_id();
    if now == *last {
        return Ok(());
    }
    if scan.key_ids.contains(&now) {
        let others: Vec<&str> = scan
            .key_ids
            .iter()
            .filter(|id| **id != now)
            .map(String::as_str)
            .collect();
        tracing::warn!(
            key_id = %now,
            last_key_id = %last,
            other_key_ids = %others.join(","),
            "{key} is the key of an earlier run, not the last one's: the consumers sold in runs under the other keys are not known to de-duplication, and can be sold again within their window"
        );
        return Ok(());
    }
    if new_allowed {
        tracing::warn!(
            key_id = %now,
            last_key_id = %last,
            "{key} is not a key this ledger's runs used, and is taken (--new-fingerprint-key): de-duplication does not know the consumers sold before, and the idempotency keys of the runs before (counted in the replay's idempotency_keys) match no retry, so their retries run again"
        );
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{key} in {dir} is not a key this ledger's runs used (its id is {now}; the last start recorded {last}): de-duplication would not know the consumers sold before, and lead fingerprints would not compare; restore the key from a backup, or, to begin with this key on purpose, start once with --new-fingerprint-key"
    )))
}

/// Reads the ledger in `state`'s directory and replays it ([`apply`]), logging what was
/// rebuilt and every delivery whose outcome is unknown.
pub fn recover(state: &AppState) -> std::io::Result<Recovered> {
    let scan = Scan::of_dir(state.ledger.dir(), None)?;
    check_fingerprint_key(state, &scan)?;
    for (line, why) in scan.unreadable.iter().take(10) {
        tracing::warn!(
            line,
            why = %why,
            dir = %state.ledger.dir().display(),
            "ledger: a line that is not a readable record was skipped at start (line number counted across the segments in order; `pingpost ledger verify` names its segment and refuses the ledger's money)"
        );
    }
    if scan.unreadable.len() > 10 {
        tracing::warn!(
            more = scan.unreadable.len() - 10,
            "ledger: more lines that are not readable records were skipped at start"
        );
    }
    if scan.newer > 0 {
        tracing::warn!(
            records = scan.newer,
            reads_up_to = crate::core::record::RECORD_VERSION,
            dir = %state.ledger.dir().display(),
            "ledger: records of a format version newer than this pingpost writes were read as their type says (a newer pingpost wrote them: run that one)"
        );
    }
    if !scan.unknown_types.is_empty() {
        let types = scan
            .unknown_types
            .iter()
            .map(|(t, n)| format!("{n} of type {}", proto::error::printable_name(t)))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            dir = %state.ledger.dir().display(),
            "ledger: records of a type this pingpost does not know were skipped at start ({types}): a newer pingpost wrote them (run that one; caps, quotes and keys they count are not rebuilt here)"
        );
    }
    if let Some(behind_ms) = clock_behind_ledger(scan.last_at, state.clock.now_ms()) {
        tracing::warn!(
            behind_ms,
            dir = %state.ledger.dir().display(),
            "the system clock is behind the ledger's last record (set back since the last run?): this run's records are dated before it, each lead counts in its own caps' window (a window already at its cap stays there), and buyers that check webhook timestamps against a right clock may refuse the exchange's requests"
        );
    }
    let r = apply(state, &scan);
    // The cold-start rates: what each buyer did, replayed in order.
    let configured: HashSet<crate::config::BuyerKey> = state
        .runtime
        .load()
        .config
        .buyers
        .iter()
        .map(|b| b.key)
        .collect();
    for (buyer, event) in &scan.buyer_events {
        // Buyers configured now only (one keyed for its counts alone learns nothing).
        let Some(key) = state
            .ids
            .buyer_key(buyer)
            .filter(|k| configured.contains(k))
        else {
            continue;
        };
        match event {
            BuyerEvent::Accepted(at) => state.stats.on_post(key, true, None, *at, 0),
            BuyerEvent::Rejected(at) => state.stats.on_post(key, false, None, *at, 0),
            BuyerEvent::Returned => state.stats.on_return(key, None),
        }
    }
    for s in scan.unknown().take(UNKNOWN_LOGGED_MAX) {
        tracing::warn!(
            lead_id = %s.lead_id,
            auction_id = %s.auction_id,
            buyer = %s.buyer,
            attempt = s.attempt,
            price_micros = s.price_micros,
            "ledger: delivered, outcome unknown (counted against the buyer's caps)"
        );
    }
    tracing::info!(
        records = r.records,
        sales_counted = r.sales_counted,
        unknown_outcomes = r.unknown,
        unknown_counted = r.unknown_counted,
        late_accepts_counted = r.late_counted,
        late_unknown_counted = r.late_unknown_counted,
        idempotency_keys = r.keys,
        disposition_idempotency_keys = r.disposition_keys,
        open_quotes = r.quotes,
        finished_posts = r.finished_posts,
        quotes_expired_while_down = r.expired_while_down,
        test_quotes_expired = r.test_quotes_expired,
        quotes_not_restored = r.quotes_not_restored,
        holds_without_quote = r.holds_without_quote,
        sold_leads = r.sold_leads,
        dispositions = r.dispositions,
        "ledger replayed: caps, budgets, open quotes, idempotency keys and sold leads rebuilt"
    );
    Ok(r)
}

/// How far `now` is behind the ledger's last record time, when by more than
/// [`crate::clock::STEP_TOLERANCE_MS`] (black-box round 246b: a start with the clock set
/// back said nothing; only a step back while running was warned of).
pub fn clock_behind_ledger(last_at: UnixMs, now: UnixMs) -> Option<i64> {
    let behind = last_at.saturating_sub(now);
    (behind > crate::clock::STEP_TOLERANCE_MS).then_some(behind)
}

#[cfg(test)]
mod tests;
