//! `[sellers.ID]`: key digests and payout models.

use std::collections::HashMap;

use proto::Micros;
use toml::Value;

use super::reader::{
    as_str, decimal_text, display_name, join, money, toml_quoted, Problems, Section,
};
use super::{PartyPrices, COUNT_LIMIT, RATE_PER_S_LIMIT, TABLE_ENTRIES_LIMIT};
use crate::config::{defaults, PayoutModel, Seller, SellerKey, VerticalIdx};

pub(super) fn read_seller(
    id: &str,
    mut s: Section<'_>,
    vertical_by_name: &HashMap<String, VerticalIdx>,
    p: &mut Problems,
) -> (Option<Seller>, Option<PartyPrices>) {
    let before = p.len();
    let name = display_name(p, &mut s, id);
    let key_sha256 = s
        .req(p, "key_sha256")
        .and_then(|(path, v)| key_digest(p, &path, v));
    // A second valid key, for rotation (docs/OPERATIONS.md).
    let key_sha256_next = s
        .opt("key_sha256_next")
        .and_then(|(path, v)| key_digest(p, &path, v));
    if key_sha256.is_some() && key_sha256 == key_sha256_next {
        p.at(
            &join(&join("sellers", id), "key_sha256_next"),
            "must differ from key_sha256",
        );
    }
    let at_prices = p.len();
    let verticals = s.vertical_refs(p, "verticals", vertical_by_name);
    let payout = s
        .req(p, "payout")
        .and_then(|(path, v)| read_payout(p, path, v));
    let reserve = s.money_opt(p, "reserve");
    // Whenever these three read cleanly, whatever else of the seller does not.
    let prices = payout
        .filter(|_| p.len() == at_prices)
        .map(|payout| PartyPrices {
            id: id.to_string(),
            verticals: verticals.clone(),
            payout: Some(payout),
            reserve,
            fixed_price: None,
        });
    let rate_per_s = s.u32_opt(p, "rate_per_s", 1, RATE_PER_S_LIMIT);
    let quotes_open_max = s.usize_or(
        p,
        "quotes_open_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::SELLER_QUOTES_OPEN_MAX,
    );
    let idempotency_keys_max = s
        .int_opt(p, "idempotency_keys_max", 1, TABLE_ENTRIES_LIMIT)
        .and_then(|i| usize::try_from(i).ok());
    let requests_in_flight_max = s
        .int_opt(p, "requests_in_flight_max", 1, TABLE_ENTRIES_LIMIT)
        .and_then(|i| usize::try_from(i).ok());
    let connections_max = s
        .int_opt(p, "connections_max", 1, COUNT_LIMIT)
        .and_then(|i| usize::try_from(i).ok());
    s.finish(p);

    if p.len() > before {
        return (None, prices);
    }
    let seller = key_sha256.zip(payout).map(|(key_sha256, payout)| Seller {
        id: id.to_string(),
        key: SellerKey::default(),
        name,
        key_sha256,
        key_sha256_next,
        verticals,
        payout,
        reserve,
        rate_per_s,
        quotes_open_max,
        idempotency_keys_max,
        requests_in_flight_max,
        connections_max,
    });
    (seller, prices)
}

/// A seller key's SHA-256 as 64 hex digits.
fn key_digest(p: &mut Problems, path: &str, v: &Value) -> Option<[u8; 32]> {
    let text = as_str(p, path, v)?;
    let mut digest = [0u8; 32];
    match hex::decode_to_slice(text, &mut digest) {
        Ok(()) => Some(digest),
        Err(_) => {
            p.at(
                path,
                "must be 64 hex digits: the SHA-256 of the seller's key",
            );
            None
        }
    }
}

fn read_payout(p: &mut Problems, path: String, v: &Value) -> Option<PayoutModel> {
    let Some(table) = v.as_table() else {
        p.at(
            &path,
            "must be a table such as { model = \"revenue_share\", share_pct = 80 }",
        );
        return None;
    };
    let mut s = Section::new(path, Some(table));
    let payout = match s.str_req(p, "model") {
        None => {
            // No model: its keys are not unknown, just unread (black-box round 22).
            s.opt("share_pct");
            s.opt("margin");
            None
        }
        Some("revenue_share") => match s.req(p, "share_pct") {
            None => None,
            Some((pct_path, pct)) => {
                let bp = share_bp(pct);
                if bp.is_none() {
                    // Written with its sign (black-box round 204a: `"80 %"` was told only
                    // the range).
                    let sign = match pct {
                        toml::Value::String(t) if t.trim_end().ends_with('%') => {
                            " (written without the % sign)"
                        }
                        _ => "",
                    };
                    p.at(
                        &pct_path,
                        format!("must be a percentage between 0 and 100 with at most two decimals, such as 82.5{sign}"),
                    );
                }
                bp.map(|share_bp| PayoutModel::RevenueShare { share_bp })
            }
        },
        Some("fixed_margin") => match s.req(p, "margin") {
            None => None,
            Some((margin_path, m)) => {
                money(p, &margin_path, m).map(|margin| PayoutModel::FixedMargin { margin })
            }
        },
        Some(other) => {
            p.at(
                &s.path_of("model"),
                format!(
                    "unknown payout model {} (revenue_share or fixed_margin)",
                    toml_quoted(other)
                ),
            );
            // A model's own keys are not unknown: the model is (black-box round 22: a
            // misspelt model also flagged `margin`).
            s.opt("share_pct");
            s.opt("margin");
            None
        }
    };
    s.finish(p);
    payout
}

/// A percentage (`80`, `82.5`, `"82.55"`) as basis points, exactly, if it is within
/// 0..=100 and has at most two decimals.
fn share_bp(v: &Value) -> Option<u32> {
    // Read as micros (pct * 10^6) so the decimals are exact: 1 bp = 10^4 micro-percent.
    let micro_pct = Micros::parse_decimal(&decimal_text(v)?).ok()?.0;
    if micro_pct > 100 * 1_000_000 || micro_pct % 10_000 != 0 {
        return None;
    }
    u32::try_from(micro_pct / 10_000).ok()
}
