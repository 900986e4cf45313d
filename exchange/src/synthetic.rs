//! Synthetic configurations with many buyers, for the sizing tests and the benchmarks
//! (docs/BENCHMARKS.md, P7, P9 and P10): a buyer network shaped like a large operator's,
//! where most contracts take one state each and a few take the lead being measured.
//!
//! Never used by the exchange itself; every buyer points at the discard port on
//! loopback, so a configuration made here never sends a lead anywhere if started.

use std::fmt::Write as _;

/// The 49 states (and DC) other than Texas that the filler buyers spread over.
pub const OTHER_STATES: [&str; 49] = [
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
    "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
    "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "UT", "VT", "VA", "WA", "WV",
    "WI",
];

/// The shape of a synthetic configuration.
#[derive(Debug, Clone)]
pub struct ManyBuyers {
    /// Buyers configured in all.
    pub total: usize,
    /// How many of them take Texas leads (the first ones); the others take one other
    /// state each, some with ZIP prefixes, schedules and caps.
    pub texas: usize,
    /// The environment variable every buyer's secret is read from.
    pub secret_env: String,
}

/// The seller key of every synthetic configuration (its SHA-256 is in the document).
pub const SELLER_KEY: &str = "synthetic-seller-key";

/// A configuration document with `m.total` buyers in one vertical (`auto_insurance`).
pub fn many_buyers_toml(m: &ManyBuyers) -> String {
    let mut t = String::with_capacity(1_024 + m.total * 320);
    let _ = write!(
        t,
        r#"[server]
listen = "127.0.0.1:0"
ledger_path = "/dev/null"

[verticals.auto_insurance]
currency = "USD"
auction_deadline_ms = 150
floor = 1.00

[verticals.auto_insurance.fields]
state = {{ type = "state", required = true, ping = true }}
zip = {{ type = "zip", required = true, ping = true }}
age = {{ type = "integer", min = 16, max = 120, ping = true }}
homeowner = {{ type = "boolean", ping = true }}
credit = {{ type = "enum", values = ["poor", "fair", "good", "excellent"], ping = true }}
vehicle_year = {{ type = "integer", min = 1980, max = 2030, ping = true }}
first_name = {{ type = "string", len_max = 64, required = true, pii = true }}
phone = {{ type = "phone", required = true, pii = true }}

[sellers.synthetic]
key_sha256 = "{key}"
verticals = ["auto_insurance"]
payout = {{ model = "revenue_share", share_pct = 80 }}
"#,
        key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(SELLER_KEY)),
    );
    let zones = [
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Los_Angeles",
    ];
    for i in 0..m.total {
        let state = if i < m.texas {
            "TX"
        } else {
            OTHER_STATES[i % OTHER_STATES.len()]
        };
        let _ = write!(
            t,
            "\n[buyers.b{i}]\nping_url = \"http://127.0.0.1:9/ping\"\npost_url = \"http://127.0.0.1:9/post\"\nsecret_env = \"{env}\"\nverticals = [\"auto_insurance\"]\nstates_include = [\"{state}\"]\ntimezone = \"{tz}\"\n",
            env = m.secret_env,
            tz = zones[i % zones.len()],
        );
        if i >= m.texas {
            if i % 3 == 0 {
                let _ = writeln!(
                    t,
                    "zip_prefixes = [\"{:03}\", \"{:03}\"]",
                    i % 1000,
                    (i + 7) % 1000
                );
            }
            if i % 4 == 0 {
                t.push_str("schedule = { mon = [\"08:00-20:00\"], tue = [\"08:00-20:00\"], wed = [\"08:00-20:00\"], thu = [\"08:00-20:00\"], fri = [\"08:00-18:00\"] }\n");
            }
            if i % 2 == 0 {
                t.push_str("caps = { hourly = 50, daily = 400 }\nbudget_daily = 5000.00\n");
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_with_the_asked_shape() {
        let m = ManyBuyers {
            total: 120,
            texas: 3,
            secret_env: "SYNTH_SECRET".into(),
        };
        let cfg = crate::config::load_str_with_env(&many_buyers_toml(&m), &|name: &str| {
            Some(format!("synthetic-secret-{name}"))
        })
        .unwrap();
        assert_eq!(cfg.buyers.len(), 120);
        let texas = cfg
            .buyers
            .iter()
            .filter(|b| b.states_include == ["TX"])
            .count();
        assert_eq!(texas, 3);
    }
}
