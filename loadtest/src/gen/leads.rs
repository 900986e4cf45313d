//! Leads and request bodies: realistic seeded auto-insurance leads, the pool a run
//! cycles through, and the buyer-ping and post bodies built from them.
use bytes::{BufMut, Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};
use serde_json::{json, Value};

use super::{BUYER_PING_VERTICAL, LEAD_POOL};
/// Builds a realistic auto-insurance lead: `(ping lead, full lead)`. The ping lead has
/// state, a ZIP whose prefix belongs to that state, age, credit tier, homeowner, insured
/// and vehicle year, never any PII; the full lead adds first and last name, a `+1` E.164
/// phone (area code of the state, fictional 555 exchange) and an `example.com` e-mail.
pub fn auto_insurance_lead(rng: &mut impl Rng) -> (Value, Value) {
    let total: f64 = STATES.iter().map(|s| s.weight).sum();
    let mut pick = rng.gen_range(0.0..total);
    let mut state = &STATES[0];
    for s in STATES {
        if pick < s.weight {
            state = s;
            break;
        }
        pick -= s.weight;
    }
    let prefix = rng.gen_range(state.zip3.0..=state.zip3.1);
    let zip = format!("{prefix:03}{:02}", rng.gen_range(0..100));
    let age: f64 = Normal::new(42.0, 15.0).map_or(42.0, |d| d.sample(rng));
    let age = (age.round() as i64).clamp(16, 85);
    let credit = {
        let x: f64 = rng.gen();
        match x {
            x if x < 0.15 => "poor",
            x if x < 0.40 => "fair",
            x if x < 0.80 => "good",
            _ => "excellent",
        }
    };
    let homeowner_p = match age {
        ..=24 => 0.15,
        25..=34 => 0.45,
        _ => 0.70,
    };
    let vehicle_age = Exp::new(1.0 / 8.0).map_or(8.0, |d| d.sample(rng));
    let vehicle_year = 2026 - (vehicle_age as i64).clamp(0, 30);
    let ping = json!({
        "state": state.code,
        "zip": zip,
        "age": age,
        "homeowner": rng.gen_bool(homeowner_p),
        "credit": credit,
        "insured": rng.gen_bool(0.78),
        "vehicle_year": vehicle_year,
    });
    let first = FIRST_NAMES[rng.gen_range(0..FIRST_NAMES.len())];
    let last = LAST_NAMES[rng.gen_range(0..LAST_NAMES.len())];
    let area = state.area_codes[rng.gen_range(0..state.area_codes.len())];
    let mut full = ping.clone();
    if let Value::Object(m) = &mut full {
        m.insert("first_name".into(), json!(first));
        m.insert("last_name".into(), json!(last));
        m.insert(
            "phone".into(),
            json!(format!("+1{area}555{:04}", rng.gen_range(0..10_000))),
        );
        m.insert(
            "email".into(),
            json!(format!(
                "{}.{}{}@example.com",
                first.to_ascii_lowercase(),
                last.to_ascii_lowercase(),
                rng.gen_range(1..1000)
            )),
        );
    }
    (ping, full)
}

/// The ping a buyer receives (contract: buyer protocol), for the relay and direct
/// targets: `{"auction_id", "vertical", "lead", "tmax_ms", "test": false}`.
pub fn buyer_ping_body(lead: &Value, auction_id: &str, tmax_ms: u64) -> Bytes {
    let body = json!({
        "auction_id": auction_id,
        "vertical": BUYER_PING_VERTICAL,
        "lead": lead,
        "tmax_ms": tmax_ms,
        "test": false,
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// [`buyer_ping_body`] from a lead already serialized; `auction_id` must need no JSON
/// escaping (the generator's ids are `au_lt` and hex digits, `_` and digits).
pub(super) fn buyer_ping_bytes(lead_json: &[u8], auction_id: &str, tmax_ms: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(lead_json.len() + 96);
    b.put_slice(b"{\"auction_id\":\"");
    b.put_slice(auction_id.as_bytes());
    b.put_slice(b"\",\"vertical\":\"");
    b.put_slice(BUYER_PING_VERTICAL.as_bytes());
    b.put_slice(b"\",\"lead\":");
    b.put_slice(lead_json);
    b.put_slice(b",\"tmax_ms\":");
    b.put_slice(tmax_ms.to_string().as_bytes());
    b.put_slice(b",\"test\":false}");
    b.freeze()
}

/// A lead, serialized once before the run.
#[derive(Debug)]
pub(super) struct PooledLead {
    /// The PII-free lead object.
    pub(super) ping_lead: Bytes,
    /// The full lead object.
    pub(super) full_lead: Bytes,
    /// `/v1/ping` body.
    pub(super) exchange_ping: Bytes,
    /// `/v1/leads` body.
    pub(super) direct_post: Bytes,
}

pub(super) fn lead_pool(seed: u64, vertical: &str) -> Vec<PooledLead> {
    // Its own stream, so the mix and lead choices do not shift when the pool changes.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1ead_5eed_0000_0001);
    (0..LEAD_POOL)
        .map(|_| {
            let (ping, full) = auto_insurance_lead(&mut rng);
            let to_bytes = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
            PooledLead {
                ping_lead: to_bytes(&ping),
                full_lead: to_bytes(&full),
                exchange_ping: to_bytes(&json!({"vertical": vertical, "lead": ping})),
                direct_post: to_bytes(&json!({"vertical": vertical, "lead": full})),
            }
        })
        .collect()
}

/// `{"ping_id": ..., "lead": <full lead>}`
pub(super) fn post_body(ping_id: &str, full_lead: &[u8]) -> Bytes {
    let id = serde_json::to_string(ping_id).unwrap_or_else(|_| "\"\"".into());
    let mut b = BytesMut::with_capacity(full_lead.len() + id.len() + 24);
    b.put_slice(b"{\"ping_id\":");
    b.put_slice(id.as_bytes());
    b.put_slice(b",\"lead\":");
    b.put_slice(full_lead);
    b.put_slice(b"}");
    b.freeze()
}

/// A state: population weight, its 3-digit ZIP prefix range and some area codes.
#[derive(Debug)]
struct StateData {
    code: &'static str,
    weight: f64,
    zip3: (u16, u16),
    area_codes: &'static [u16],
}

const fn st(
    code: &'static str,
    weight: f64,
    zip3: (u16, u16),
    area_codes: &'static [u16],
) -> StateData {
    StateData {
        code,
        weight,
        zip3,
        area_codes,
    }
}

/// The 31 most populous states with their real ZIP prefix ranges (USPS) and area codes.
const STATES: &[StateData] = &[
    st("CA", 11.7, (900, 961), &[213, 310, 415, 619, 714, 916]),
    st("TX", 9.0, (750, 799), &[214, 512, 713, 817, 210]),
    st("FL", 6.7, (320, 349), &[305, 407, 813, 904]),
    st("NY", 5.9, (100, 149), &[212, 315, 516, 716, 718]),
    st("PA", 3.9, (150, 196), &[215, 412, 717]),
    st("IL", 3.8, (600, 629), &[312, 630, 773]),
    st("OH", 3.5, (430, 458), &[216, 513, 614]),
    st("GA", 3.3, (300, 319), &[404, 678, 912]),
    st("NC", 3.2, (270, 289), &[704, 919, 336]),
    st("MI", 3.0, (480, 499), &[313, 616, 248]),
    st("NJ", 2.8, (70, 89), &[201, 732, 973]),
    st("VA", 2.6, (220, 246), &[703, 757, 804]),
    st("WA", 2.3, (980, 994), &[206, 253, 509]),
    st("AZ", 2.2, (850, 865), &[480, 520, 602]),
    st("MA", 2.1, (10, 27), &[617, 508, 413]),
    st("TN", 2.1, (370, 385), &[615, 901, 865]),
    st("IN", 2.0, (460, 479), &[317, 219, 812]),
    st("MO", 1.8, (630, 658), &[314, 816, 417]),
    st("MD", 1.8, (206, 219), &[410, 301, 443]),
    st("WI", 1.8, (530, 549), &[414, 608, 920]),
    st("CO", 1.8, (800, 816), &[303, 719, 970]),
    st("MN", 1.7, (550, 567), &[612, 651, 218]),
    st("SC", 1.6, (290, 299), &[803, 843, 864]),
    st("AL", 1.5, (350, 369), &[205, 251, 334]),
    st("LA", 1.4, (700, 714), &[504, 225, 318]),
    st("KY", 1.4, (400, 427), &[502, 859, 270]),
    st("OR", 1.3, (970, 979), &[503, 541, 971]),
    st("OK", 1.2, (730, 749), &[405, 918, 580]),
    st("CT", 1.1, (60, 69), &[203, 860, 475]),
    st("UT", 1.0, (840, 847), &[801, 385, 435]),
    st("NV", 1.0, (889, 898), &[702, 775, 725]),
];

const FIRST_NAMES: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hector", "Imani", "James", "Keiko",
    "Luis", "Maria", "Noah", "Olivia", "Priya", "Quinn", "Rosa", "Samuel", "Tran", "Uma", "Victor",
    "Wendy", "Xavier", "Yusuf", "Zoe",
];

const LAST_NAMES: &[&str] = &[
    "Diaz", "Nguyen", "Okafor", "Smith", "Kowalski", "Ito", "Johnson", "Garcia", "Brown", "Miller",
    "Davis", "Martinez", "Lopez", "Wilson", "Anderson", "Thomas", "Patel", "Kim", "Jackson",
    "White", "Harris", "Clark", "Lewis", "Walker",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leads_are_realistic_and_ping_leads_carry_no_pii() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let (ping, full) = auto_insurance_lead(&mut rng);
            for pii in ["first_name", "last_name", "phone", "email"] {
                assert!(ping.get(pii).is_none());
                assert!(full.get(pii).is_some());
            }
            let state = ping["state"].as_str().unwrap();
            let zip = ping["zip"].as_str().unwrap();
            assert_eq!(zip.len(), 5);
            let prefix: u16 = zip[..3].parse().unwrap();
            let s = STATES.iter().find(|s| s.code == state).unwrap();
            assert!((s.zip3.0..=s.zip3.1).contains(&prefix), "{state} {zip}");
            let age = ping["age"].as_i64().unwrap();
            assert!((16..=85).contains(&age));
            let year = ping["vehicle_year"].as_i64().unwrap();
            assert!((1996..=2026).contains(&year));
            let phone = full["phone"].as_str().unwrap();
            assert!(phone.starts_with("+1") && phone.len() == 12, "{phone}");
            assert!(full["email"].as_str().unwrap().ends_with("@example.com"));
        }
    }

    #[test]
    fn buyer_ping_bytes_match_the_json_builder() {
        let lead = json!({"state": "TX", "zip": "76180", "age": 42});
        let fast = buyer_ping_bytes(&serde_json::to_vec(&lead).unwrap(), "au_lt7", 150);
        let slow = buyer_ping_body(&lead, "au_lt7", 150);
        let a: Value = serde_json::from_slice(&fast).unwrap();
        let b: Value = serde_json::from_slice(&slow).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["tmax_ms"], 150);
        let post: Value = serde_json::from_slice(&post_body("pg_\"x", b"{\"a\":1}")).unwrap();
        assert_eq!(post["ping_id"], "pg_\"x");
    }
}
