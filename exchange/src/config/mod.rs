//! Configuration: the validated model lives in the core (`pingpost_core::config`, re-exported
//! here); `load` turns a TOML document into it, reporting every error at once with its key
//! path.
//!
//! Layout of the loader (private modules; only the items re-exported below are public):
//!
//! - `load.rs`: the entry points (`load_str`, `load_file` and their `_with_env` forms),
//!   [`ConfigErrors`], TOML syntax errors, the bounds every section checks against, and the
//!   final assembly: the vertical name index, the seller key index (a key is valid for one
//!   seller only), `buyers_by_vertical` and the position keys.
//! - `load/reader.rs`: the reader, `Section` (a table, its key path, the keys read, unknown
//!   keys with a "did you mean"), `Problems` (every error as `path: message`) and the value
//!   helpers (whole numbers, money, string lists, names, display names).
//! - `load/server.rs`: `[server]`, including the listener keys, `[server.tls]` and
//!   `buyer_ca_path` (certificates are read and checked here).
//! - `load/admin.rs`: `[admin]` (admin listener and token).
//! - `load/verticals.rs`: `[verticals.NAME]` and their field schemas.
//! - `load/sellers.rs`: `[sellers.ID]` (key digests, payout models).
//! - `load/buyers.rs`: `[buyers.ID]` (URLs, secrets, targeting, caps, weekly schedules).
//! - `load/tests.rs`: the test helpers and whole-file tests (the shipped default file, the
//!   docs' minimal file, cross-references); `load/tests/{reader,server,verticals,sellers,
//!   buyers}.rs`: each section's tests.

mod load;

/// Most words (split at spaces and tabs) of a bearer key the listeners take: a key of
/// more than this is nobody's (`401`), so the loader's look for other parties' keys in a
/// buyer's signing secret (runs of at most this many words) misses none.
pub const KEY_WORDS_MAX: usize = 16;

pub use load::{
    budget_warnings, cap_warnings, load_file, load_file_with_env, load_str, load_str_with_env,
    pattern_warnings, shared_listener_problem, ConfigErrors, BUYERS_MAX, EDGE_SPACE, SELLERS_MAX,
};
pub use pingpost_core::config::*;

/// Is the variable `name` set in the process's environment to bytes that are not UTF-8
/// text? The loader's environment reader (`Option<String>`) gives `None` for it, as for
/// an unset one; a secret or token set so is refused as such, not said to be unset
/// (black-box rounds 56a and 57a).
pub fn env_is_not_text(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v.to_str().is_none())
}

/// An environment variable's name as messages and logs may show it. Conventional names
/// (`UPPER_CASE`, digits, `_`) are shown; anything else is not, because an operator who
/// pasted a secret where its variable's name belongs would otherwise see the secret
/// printed (a `whsec_` secret or a token can be letters, digits and `_` too).
pub fn shown_env_name(name: &str) -> &str {
    let conventional = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if conventional {
        name
    } else {
        "(name not shown: not an UPPER_CASE variable name; was a secret pasted here?)"
    }
}

/// Where buyers that sign with one key (`secret_env` or `secret_env_next`) send their
/// pings or posts to more than one host between them: each of them holds what signs the
/// exchange's requests to the others, so it could forge them (black-box round 169b). A
/// line per key for the start's log, a reload's and `--check-config`. Not an error:
/// buyers all on one host are one business's campaigns, which may well share a secret.
pub fn shared_secret_warnings(cfg: &Config) -> Vec<String> {
    use std::collections::HashMap;
    // Two secrets sign alike exactly when they hold the same key: each signs one fixed
    // message, and the signatures are compared (the keys themselves are not kept).
    // A host as one name: lower case, no final dot, an IP address in its canonical form
    // (`[::ffff:127.0.0.1]` is `127.0.0.1`; black-box round 172a: such spellings of one
    // host were warned of).
    let host_of = |url: &str| -> String {
        let host = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        match host_ip(&host) {
            Some(ip) => ip.to_string(),
            None => host.trim_end_matches('.').to_string(),
        }
    };
    let mut by_key: HashMap<String, Vec<(&str, Vec<String>)>> = HashMap::new();
    for b in &cfg.buyers {
        // Every host the buyer's requests go to: its pings carry the key as well as its
        // posts (black-box round 172a: a ping host shared with another buyer was not
        // looked at).
        let mut hosts: Vec<String> = std::iter::once(b.post_url.as_str())
            .chain(b.ping_url.as_deref())
            .map(host_of)
            .collect();
        hosts.sort();
        hosts.dedup();
        for secret in std::iter::once(&b.secret).chain(&b.secret_next) {
            let mac = secret.sign("msg_pingpost_shared_secret_check", 0, b"");
            let holders = by_key.entry(mac).or_default();
            // A buyer's two secrets come one after the other: only the last holder can
            // be this buyer (black-box round 245b: a search of every holder made 100,000
            // buyers sharing one secret take 20 s to load, not 3).
            if holders.last().is_none_or(|(id, _)| *id != b.id) {
                holders.push((b.id.as_str(), hosts.clone()));
            }
        }
    }
    let mut out: Vec<String> = by_key
        .into_values()
        .filter(|holders| {
            let mut all: Vec<&String> = holders.iter().flat_map(|(_, h)| h).collect();
            all.sort();
            all.dedup();
            holders.len() > 1 && all.len() > 1
        })
        .map(|holders| {
            let ids = named(holders.iter().map(|(id, _)| *id).collect());
            format!(
                "buyers {ids} sign with one key (their secret_env or secret_env_next hold the same secret) and their pings and posts go to more than one host: each of them could sign requests to the others as the exchange; give each buyer its own secret"
            )
        })
        .collect();
    out.sort();
    out
}

/// Parties named in one warning line at most; the rest are counted.
const SELLERS_NAMED_MAX: usize = 5;

/// `ids` joined, the first [`SELLERS_NAMED_MAX`] named and the rest counted
/// (`a, b, c, d, e and 3 more`).
fn named(ids: Vec<&str>) -> String {
    let more = ids.len().saturating_sub(SELLERS_NAMED_MAX);
    let mut s = ids[..ids.len() - more].join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// The IP address a URL's host names, canonical (`[::ffff:127.0.0.1]` is `127.0.0.1`),
/// with or without its brackets; `None` for a name.
pub fn host_ip(host: &str) -> Option<std::net::IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Every warning a configuration gives (not errors: an operator may mean them), for the
/// start's log, a reload's and `--check-config`: [`shared_bound_warnings`],
/// [`shared_secret_warnings`], [`pattern_warnings`], [`cap_warnings`], then
/// [`budget_warnings`].
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = shared_bound_warnings(cfg);
    out.extend(shared_secret_warnings(cfg));
    out.extend(pattern_warnings(cfg));
    out.extend(cap_warnings(cfg));
    out.extend(budget_warnings(cfg));
    out
}

/// Where, with more than one seller, one seller's own bound reaches a bound all sellers
/// share, so that it alone could take the whole of it and leave the others `503` (open
/// quotes until they expire, idempotency keys for their retention): each a line for the
/// start's log, a reload's and `--check-config` (black-box round 121b: `--check-config`
/// said "configuration OK" while one seller could hold every open quote). Not an error:
/// an operator may mean it.
pub fn shared_bound_warnings(cfg: &Config) -> Vec<String> {
    if cfg.sellers.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    // Each named by the key to change, as errors are (black-box round 203a: `sellers.ID.…
    // of s1` could not be pasted back into the file).
    let quotes: Vec<String> = cfg
        .sellers
        .iter()
        .filter(|s| s.quotes_open_max >= cfg.server.quotes_open_max)
        .map(|s| format!("sellers.{}.quotes_open_max", s.id))
        .collect();
    let is_are = |n: usize| if n == 1 { "is" } else { "are" };
    if !quotes.is_empty() {
        out.push(format!(
            "{} {} not below server.quotes_open_max ({}): such a seller alone can hold every open quote, and the other sellers' pings are then answered 503 until its quotes expire; give it a lower quotes_open_max, or raise server.quotes_open_max",
            named(quotes.iter().map(String::as_str).collect()),
            is_are(quotes.len()),
            cfg.server.quotes_open_max
        ));
    }
    let over: Vec<usize> = (0..cfg.sellers.len())
        .filter(|&i| cfg.idempotency_keys_max_of(i) >= cfg.server.idempotency_keys_max)
        .collect();
    // Sellers of their own quota by its key; those on the shared default once, by the
    // default's key (black-box round 204a: it was named once per seller).
    let mut keys: Vec<String> = over
        .iter()
        .filter(|&&i| cfg.sellers[i].idempotency_keys_max.is_some())
        .map(|&i| format!("sellers.{}.idempotency_keys_max", cfg.sellers[i].id))
        .collect();
    let on_default: Vec<&str> = over
        .iter()
        .filter(|&&i| cfg.sellers[i].idempotency_keys_max.is_none())
        .map(|&i| cfg.sellers[i].id.as_str())
        .collect();
    if !on_default.is_empty() {
        keys.push(format!(
            "server.idempotency_keys_per_seller_max (the quota of {})",
            named(on_default)
        ));
    }
    if !keys.is_empty() {
        out.push(format!(
            "the idempotency key quota of {} {} not below server.idempotency_keys_max ({}): such a seller alone can hold every key, and the other sellers' requests with a new key are then answered 503 until its keys expire (a day or more); lower its quota, or raise server.idempotency_keys_max",
            named(keys.iter().map(String::as_str).collect()),
            is_are(over.len()),
            cfg.server.idempotency_keys_max
        ));
    }
    out
}
