//! Loading the configuration from TOML.
//!
//! The document is parsed into a `toml::Table` and walked by hand with a small reader,
//! [`Section`], that knows the key path it stands at and which keys it has read. Every
//! problem is collected as `path: message` (`buyers.acme.ping_timeout_ms: must be a whole
//! number between 1 and 60000`) instead of stopping at the first, so one run shows
//! everything wrong with a file: type errors, missing keys, values out of range, unknown
//! keys and references to things that do not exist. Every default is a constant of
//! [`super::defaults`]; docs/CONFIGURATION.md is the reference table of every key.
//!
//! Must never: panic on anything the file (or the environment) says, put a secret's value
//! in a message, or return a partly valid `Config`.

mod admin;
mod buyers;
mod features;
mod learning;
mod reader;
pub use reader::EDGE_SPACE;
mod sellers;
mod server;
#[cfg(test)]
mod tests;
mod verticals;
pub use buyers::{budget_warnings, cap_warnings};
pub use verticals::pattern_warnings;

use std::collections::HashMap;
use std::path::Path;

use proto::Micros;
use toml::{Table, Value};

use super::{
    AdminConfig, Buyer, BuyerKey, Config, PayoutModel, Seller, SellerIdx, SellerKey, Vertical,
    VerticalIdx,
};

use admin::read_admin;
use buyers::read_buyer;
use reader::{join, Problems, Section};
use sellers::read_seller;
use server::read_server;
use verticals::{read_vertical, VerticalPrices};

// Bounds on what the file may ask for. A value outside them is a mistake, not a tuning.
/// The largest configuration file read (10,000 buyers at ~1 KB each fit well within).
const CONFIG_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest request body a configuration may allow.
const BODY_BYTES_MAX_LIMIT: i64 = 16 * 1024 * 1024;
/// Smallest request body limit (a ping must fit).
const BODY_BYTES_MAX_FLOOR: i64 = 1024;
/// Longest auction deadline and buyer ping or post timeout.
const TIMEOUT_MS_LIMIT: i64 = 60_000;
/// Longest server-side wait (header read, shutdown grace).
const SERVER_WAIT_MS_LIMIT: i64 = 600_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Largest count limit (requests, connections) the server accepts.
const COUNT_LIMIT: i64 = 1_000_000;
/// Largest table size (open quotes, idempotency keys).
const TABLE_ENTRIES_LIMIT: i64 = 100_000_000;
/// Most buyers one configuration may list: every buyer id gets a stable key, and one
/// process hands out at most this many.
pub const BUYERS_MAX: usize = pingpost_core::ids::KEYS_MAX;
/// Most sellers one configuration may list, for the same reason.
pub const SELLERS_MAX: usize = pingpost_core::ids::KEYS_MAX;
/// Most buyers one auction may ping.
const FAN_OUT_LIMIT: i64 = 1_024;
/// Most buyers one post may try.
const POST_ATTEMPTS_LIMIT: i64 = 64;
/// Most consecutive failures before a breaker must open.
const BREAKER_FAILURES_LIMIT: i64 = 10_000;
/// Highest seller request rate.
const RATE_PER_S_LIMIT: i64 = 1_000_000;
/// Longest id, vertical name or field name.
const NAME_LEN_MAX: usize = 64;
/// Longest display name.
const DISPLAY_NAME_LEN_MAX: usize = 200;
/// Longest value of an enum field, in characters.
const ENUM_VALUE_LEN_MAX: usize = 128;
/// Most items in any list (all 5-digit ZIP prefixes fit).
const LIST_LEN_MAX: usize = 100_000;
/// Largest compiled size of a field pattern, so a pattern cannot eat memory.
const PATTERN_SIZE_MAX_BYTES: usize = 1 << 20;
const MINUTES_PER_DAY: u16 = 24 * 60;

/// The field types, as the unknown-type message lists them ([`FIELD_TYPE_NAMES`] joined).
const FIELD_TYPES: &str = "string, integer, number, boolean, enum, state, zip, email, phone, date";
/// The field types one by one (a feature's kind is checked against a refused field's).
const FIELD_TYPE_NAMES: [&str; 10] = [
    "string", "integer", "number", "boolean", "enum", "state", "zip", "email", "phone", "date",
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Every problem found in a configuration, each with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{}", crate::state::bounded_problem_line(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses and validates a configuration document, reading buyer secrets from the process
/// environment.
pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    load_str_with_env(text, &|name| std::env::var(name).ok())
}

/// Reads, parses and validates a configuration file, reading buyer secrets from the
/// process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load_file`] with the environment given as a lookup function (tests, embedding).
pub fn load_file_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let bytes =
        bidder_sdk::listener::read_file_bounded(path, CONFIG_FILE_BYTES_MAX).map_err(|e| {
            // Not `path: ...`: a reload's answer would take a relative file name
            // (`live.toml`) for a key path (black-box round 147a); under `config`, as a
            // syntax error is.
            // A pipe or a process substitution (`--config <(...)`) says why it cannot be
            // used, and what to do (black-box round 242b: only "not a regular file").
            let why = if e.kind() == std::io::ErrorKind::InvalidInput {
                "; the configuration is read from a regular file, at the start and again at every reload, which a pipe, a FIFO or a process substitution such as <(...) cannot give: write it to a file and name that"
            } else {
                ""
            };
            ConfigErrors(vec![format!(
                "cannot read {}: {e}{why}",
                crate::cli_out::shown_path(path)
            )])
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        ConfigErrors(vec![format!(
            "cannot read {}: it is not UTF-8 text",
            crate::cli_out::shown_path(path)
        )])
    })?;
    load_str_with_env(&text, env)
}

/// Whether `n` parties of `kind` (`sellers`, `buyers`) are past `max`, said at `kind`.
fn past_party_limit(p: &mut Problems, kind: &str, n: usize, max: usize) -> bool {
    if n > max {
        p.at(
            kind,
            format!("{n} {kind} configured; at most {max} (the stable-key limit of one process)"),
        );
    }
    n > max
}

/// Why the admin listener cannot start beside a seller listener on `listen`, if it
/// cannot: both would bind the same port, and the second would fail at start naming no
/// other process. Also checked after a `--listen` override.
pub fn shared_listener_problem(
    admin: &AdminConfig,
    listen: std::net::SocketAddr,
) -> Option<String> {
    let a = admin.listen;
    let overlap = a.ip() == listen.ip() || a.ip().is_unspecified() || listen.ip().is_unspecified();
    (admin.token.is_some() && a.port() == listen.port() && a.port() != 0 && overlap).then(|| {
        format!(
            "is the seller listener's port too (server.listen = \"{listen}\"): give the admin listener its own"
        )
    })
}

/// The longest suppression file read, in bytes (10 million hashes with their newlines
/// take 650 MB).
pub const SUPPRESSION_FILE_BYTES_MAX: u64 = 1 << 30;
/// The most hashes a suppression file may list.
pub const SUPPRESSION_ENTRIES_MAX: usize = 10_000_000;
/// Bad lines of a suppression file named one by one (the rest are counted).
const SUPPRESSION_PROBLEMS_NAMED_MAX: usize = 10;

/// `[suppression]`: `path`, a text file of SHA-256 hashes (64 hex digits, either case),
/// one per line; blank lines and lines starting with `#` are skipped. Read at every load,
/// so a reload picks up an edited file. A bad line is a problem naming its number, never
/// its text.
fn read_suppression(mut s: Section<'_>, p: &mut Problems) -> crate::core::dedup::Suppression {
    let Some(path_text) = s.str_opt(p, "path") else {
        if s.table.is_some() && !s.has("path") {
            p.at(
                &s.path_of("path"),
                "is required: the file of SHA-256 hashes, one per line",
            );
        }
        s.finish(p);
        return Default::default();
    };
    let at = s.path_of("path");
    s.finish(p);
    if path_text.is_empty() {
        p.at(&at, "must name a file");
        return Default::default();
    }
    let path = std::path::PathBuf::from(path_text);
    // Only a regular file: reading a FIFO or a device could block the load, and with it
    // every reload (black-box round 30: a FIFO hung them and filled the admin slots).
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            p.at(
                &at,
                format!("{}: not a regular file", crate::cli_out::Shown(&path)),
            );
            return Default::default();
        }
        Err(e) => {
            p.at(&at, format!("{}: {e}", crate::cli_out::Shown(&path)));
            return Default::default();
        }
    }
    // A file over the bound by its length is refused before any of it is read (black-box
    // round 244c: a 1.1 GB file was read, 2 GB of memory at its peak, and then refused);
    // one that grows while it is read is bounded too (the SDK's bounded read).
    let bytes = match bidder_sdk::listener::read_file_bounded(&path, SUPPRESSION_FILE_BYTES_MAX) {
        Ok(bytes) => bytes,
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::InvalidData {
                format!("longer than {SUPPRESSION_FILE_BYTES_MAX} bytes")
            } else {
                e.to_string()
            };
            p.at(&at, format!("{}: {why}", crate::cli_out::Shown(&path)));
            return Default::default();
        }
    };
    let mut hashes = std::collections::HashSet::new();
    let mut bad = 0usize;
    // A byte-order mark (as some editors save text) is not part of the first line.
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let mut h = [0u8; 32];
        if line.len() != 64 || hex::decode_to_slice(line, &mut h).is_err() {
            bad += 1;
            if bad <= SUPPRESSION_PROBLEMS_NAMED_MAX {
                p.at(
                    &at,
                    format!(
                        "{} line {}: not a SHA-256 (64 hex digits)",
                        crate::cli_out::Shown(&path),
                        n + 1
                    ),
                );
            }
            continue;
        }
        hashes.insert(h);
        if hashes.len() > SUPPRESSION_ENTRIES_MAX {
            p.at(
                &at,
                format!(
                    "{}: more than {SUPPRESSION_ENTRIES_MAX} hashes",
                    crate::cli_out::Shown(&path)
                ),
            );
            return Default::default();
        }
    }
    if bad > SUPPRESSION_PROBLEMS_NAMED_MAX {
        p.at(
            &at,
            format!(
                "{}: {} more lines that are not SHA-256 hashes",
                crate::cli_out::Shown(&path),
                bad - SUPPRESSION_PROBLEMS_NAMED_MAX
            ),
        );
    }
    crate::core::dedup::Suppression::new(hashes, path)
}

/// [`load_str`] with the environment given as a lookup function: `env(name)` is the value
/// of the variable `name` if it is set. Buyer secrets are read through it and nothing else.
pub fn load_str_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let root: Table = text
        .parse()
        .map_err(|e| ConfigErrors(vec![syntax_error(text, &e)]))?;
    let mut p = Problems::default();
    let mut top = Section::new(String::new(), Some(&root));

    let server_section = top.section_or_empty(&mut p, "server");
    let server = read_server(server_section, &mut p);
    let admin_section = top.section_or_empty(&mut p, "admin");
    let admin = read_admin(admin_section, env, &mut p);
    let learning_section = top.section_or_empty(&mut p, "learning");
    let learning = learning::read_learning(learning_section, &mut p);
    let suppression_section = top.section_or_empty(&mut p, "suppression");
    let suppression = read_suppression(suppression_section, &mut p);
    if let Some(problem) = shared_listener_problem(&admin, server.listen) {
        p.at("admin.listen", problem);
    }
    // A `[server.tls]` that is there but refused (its own errors say why) is not "missing"
    // (black-box round 65b: both were said).
    let tls_given = root.get("server").and_then(|s| s.get("tls")).is_some();
    if !admin.listen.ip().to_canonical().is_loopback()
        && server.listener.tls.is_none()
        && !tls_given
    {
        // The admin token and the metrics would cross the network in cleartext.
        p.at(
            "admin.listen",
            "is not a loopback address, so [server.tls] must be set (the admin listener \
             then speaks HTTPS with the same certificate)",
        );
    }

    if !root.contains_key("verticals") {
        p.at(
            "verticals",
            "is required: at least one [verticals.NAME] table",
        );
    }
    let vertical_entries = top.entries(&mut p, "verticals");
    if root
        .get("verticals")
        .and_then(Value::as_table)
        .is_some_and(Table::is_empty)
    {
        p.at("verticals", "must define at least one vertical");
    }
    // Names are indexed before the verticals are read, so a broken vertical does not also
    // make every seller and buyer that names it "unknown".
    let vertical_by_name: HashMap<String, VerticalIdx> = vertical_entries
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.to_string(), i))
        .collect();
    let (verticals, vertical_prices): (Vec<Option<Vertical>>, Vec<Option<VerticalPrices>>) =
        vertical_entries
            .into_iter()
            .map(|(name, section)| read_vertical(name, section, &server, &mut p))
            .unzip();

    let seller_entries = top.entries(&mut p, "sellers");
    let buyer_entries = top.entries(&mut p, "buyers");
    // Refused before any party is read: a file past a limit costs no more than parsing
    // (black-box round 147a: a start took 100,002 sellers, said one error and answered
    // every ping `capped`). Both limits are said (round 148a: only the sellers' was).
    let sellers_past = past_party_limit(&mut p, "sellers", seller_entries.len(), SELLERS_MAX);
    if past_party_limit(&mut p, "buyers", buyer_entries.len(), BUYERS_MAX) || sellers_past {
        return Err(ConfigErrors(p.0));
    }
    let (sellers, seller_prices): (Vec<Option<Seller>>, Vec<Option<PartyPrices>>) = seller_entries
        .into_iter()
        .map(|(id, section)| read_seller(id, section, &vertical_by_name, &mut p))
        .unzip();
    // Every party's keys, read from the file itself: a key shared by two parties is found
    // even when one of them has another problem (black-box round 13: a seller with a bad
    // payout hid the duplicate key, and the buyer key's message named the wrong seller).
    let seller_by_key_sha256 = shared_key_problems(&root, &sellers, &admin, &mut p);

    let (buyers, buyer_prices): (Vec<Option<Buyer>>, Vec<Option<PartyPrices>>) = buyer_entries
        .into_iter()
        .map(|(id, section)| read_buyer(id, section, &vertical_by_name, env, &mut p))
        .unzip();
    let buyer_by_key_sha256 = buyer_key_index(&buyers);
    // Nor a buyer's signing secret: that buyer would hold the admin listener (black-box
    // round 49: accepted). One variable named for both is said whatever it holds, set
    // or not (round 51: an unset one showed only once set).
    let secret_vars = |b: &Value| -> Vec<(&'static str, String)> {
        ["secret_env", "secret_env_next"]
            .into_iter()
            .filter_map(|k| Some((k, b.get(k)?.as_str()?.to_string())))
            .collect()
    };
    let same_variable: Vec<(&str, &'static str)> = root
        .get("buyers")
        .and_then(Value::as_table)
        .into_iter()
        .flatten()
        .flat_map(|(id, b)| {
            secret_vars(b)
                .into_iter()
                .filter(|(_, var)| *var == admin.token_env)
                .map(move |(k, _)| (id.as_str(), k))
        })
        .collect();
    for (id, key) in &same_variable {
        let shown = crate::config::shown_env_name(&admin.token_env);
        p.at(
            "admin.token_env",
            format!(
                "names ${shown}, the variable buyers.{id}.{key} names too: the admin \
                 token would be that buyer's signing secret; give the admin listener a \
                 variable of its own"
            ),
        );
    }
    // Each buyer's signing secrets as set, with the keys a holder could present from
    // each ([`bearer_texts`]): read once for the admin token's check and the parties'.
    let secrets: Vec<BuyerSecret<'_>> = buyers
        .iter()
        .flatten()
        .flat_map(|b| {
            root.get("buyers")
                .and_then(|t| t.get(b.id.as_str()))
                .map(secret_vars)
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |(key, var)| {
                    let secret = env(&var)?;
                    let presentable = bearer_texts(&secret);
                    Some(BuyerSecret {
                        buyer: b,
                        key,
                        var,
                        secret,
                        presentable,
                    })
                })
        })
        .collect();
    if let Some(token) = &admin.token {
        // The same key, however each is written (round 52: `whsec_` and base64 of the
        // token's bytes signed alike and passed).
        let token_key = std::str::from_utf8(token.as_bytes())
            .ok()
            .and_then(|t| proto::signing::key_bytes(t).ok());
        for s in secrets.iter().filter(|s| {
            !same_variable
                .iter()
                .any(|(id, _)| *id == s.buyer.id.as_str())
        }) {
            let same_key = s
                .presentable
                .iter()
                .any(|t| t.as_bytes() == token.as_bytes())
                || proto::signing::key_bytes(&s.secret)
                    .ok()
                    .is_some_and(|k| token_key == Some(k));
            if same_key {
                let shown = crate::config::shown_env_name(&admin.token_env);
                p.at(
                    "admin.token_env",
                    format!(
                        "the admin token (${shown}, or the demo's made-up one) can be \
                         taken from the signing secret of buyers.{} (buyers.{}.{}), \
                         which that buyer receives: give the admin listener a token of its \
                         own",
                        s.buyer.id, s.buyer.id, s.key
                    ),
                );
            }
        }
    }
    secret_is_key_problems(
        &secrets,
        &buyers,
        &seller_by_key_sha256,
        &sellers,
        &buyer_by_key_sha256,
        &mut p,
    );
    geography_problems(&root, &mut p);
    price_problems(&vertical_prices, &seller_prices, &buyer_prices, &mut p);

    top.finish(&mut p);
    if !p.0.is_empty() {
        return Err(ConfigErrors(p.0));
    }

    // No problem was recorded, so every reader returned a value (a reader returns `None`
    // only after recording why).
    let incomplete = || {
        ConfigErrors(vec![
            "internal error: a section was rejected without a reason".into(),
        ])
    };
    let verticals: Vec<Vertical> = verticals
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(incomplete)?;
    let sellers: Vec<Seller> = sellers
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(incomplete)?;
    let buyers: Vec<Buyer> = buyers
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(incomplete)?;

    let mut config = Config {
        server,
        verticals,
        sellers,
        buyers,
        vertical_by_name,
        seller_by_key_sha256,
        buyer_by_key_sha256,
        buyers_by_vertical: Vec::new(),
        index: Default::default(),
        buyer_by_key: HashMap::new(),
        seller_by_key: HashMap::new(),
        admin,
        learning,
        suppression: std::sync::Arc::new(suppression),
    };
    // The eligibility index is built here, on the loading thread (a reload runs off the
    // auction threads), and swapped in with the configuration.
    config.index_buyers();
    // Positions as keys, so a loaded `Config` is consistent on its own; the exchange
    // re-keys it with its id registry (stable across reloads).
    let (mut nb, mut ns) = (0u32, 0u32);
    config.set_keys(
        |_| {
            nb += 1;
            BuyerKey(nb - 1)
        },
        |_| {
            ns += 1;
            SellerKey(ns - 1)
        },
    );
    Ok(config)
}

/// What [`price_problems`] reads of a seller (`payout`, `reserve`) or a fixed-price buyer
/// (`fixed_price`), with its verticals: kept whenever those keys read cleanly, so a
/// party's unrelated problem does not hide its prices' (black-box round 110c: a seller's
/// bad `name` hid its `reserve` that could never be met until a second check).
pub(super) struct PartyPrices {
    pub(super) id: String,
    pub(super) verticals: Vec<VerticalIdx>,
    pub(super) payout: Option<PayoutModel>,
    pub(super) reserve: Option<Micros>,
    pub(super) fixed_price: Option<Micros>,
}

/// Prices that can never sell, found across sections (black-box round 37: each passed
/// the check and quietly sold nothing, or sold at a price the guard was for). With a
/// `bid_max`, the highest bid a vertical takes:
/// - a `floor` above it: no bid could clear the floor;
/// - a seller whose payout on `bid_max` is nothing, or under its `reserve` or the floor:
///   none of its leads in that vertical could ever be quoted;
/// - a fixed-price buyer whose `fixed_price` is above it: its standing bid would win at
///   a price that `bid_max` exists to refuse.
fn price_problems(
    verticals: &[Option<VerticalPrices>],
    sellers: &[Option<PartyPrices>],
    buyers: &[Option<PartyPrices>],
    p: &mut Problems,
) {
    let bid_max_of = |v: usize| {
        verticals
            .get(v)
            .and_then(Option::as_ref)
            .and_then(|v| v.bid_max.map(|m| (v, m)))
    };
    for v in verticals.iter().flatten() {
        if let Some(max) = v.bid_max.filter(|m| v.floor > *m) {
            p.at(
                &format!("verticals.{}.floor", v.name),
                format!(
                    "{} is above bid_max ({max}): no bid could ever clear it",
                    v.floor
                ),
            );
        }
    }
    for s in sellers.iter().flatten() {
        // A share of 0 % never sells whatever the bids: documented, and a way to stop a
        // seller without removing it.
        let Some(payout) = s.payout else { continue };
        if matches!(payout, PayoutModel::RevenueShare { share_bp: 0 }) {
            continue;
        }
        for (v, max) in s.verticals.iter().filter_map(|v| bid_max_of(*v)) {
            if v.floor > max {
                continue; // said at the floor
            }
            let best = payout.seller_price(max);
            let own = s.reserve.unwrap_or(Micros::ZERO);
            if best <= Micros::ZERO || best < own.max(v.floor) {
                // At the key to change: the payout when it pays nothing or only the
                // vertical's floor is out of reach, else the seller's own reserve.
                let (key, why) = if best <= Micros::ZERO {
                    ("payout", "nothing".to_string())
                } else if own >= v.floor {
                    ("reserve", format!("{best}, under its reserve of {own}"))
                } else {
                    (
                        "payout",
                        format!("{best}, under the vertical's floor of {}", v.floor),
                    )
                };
                p.at(
                    &format!("sellers.{}.{key}", s.id),
                    format!(
                        "in vertical {}, the highest bid it takes (bid_max {max}) would pay this seller {why}: none of its leads there could ever be quoted",
                        v.name
                    ),
                );
            }
        }
    }
    for b in buyers.iter().flatten() {
        let Some(price) = b.fixed_price else {
            continue;
        };
        // A standing bid no seller of the vertical could be quoted on: under the floor,
        // or paying every seller that could sell there (a share of 0 aside) less than
        // the floor or its reserve (black-box round 203a: `fixed_price = 0.5` under a
        // floor of 1.00 passed, and every lead went `below_reserve`).
        for (vi, v) in b
            .verticals
            .iter()
            .filter_map(|vi| Some((*vi, verticals.get(*vi)?.as_ref()?)))
        {
            let selling: Vec<&PartyPrices> = sellers
                .iter()
                .flatten()
                .filter(|s| {
                    s.verticals.contains(&vi)
                        && !matches!(
                            s.payout,
                            None | Some(PayoutModel::RevenueShare { share_bp: 0 })
                        )
                })
                .collect();
            let quoted = |s: &&PartyPrices| {
                s.payout.is_some_and(|payout| {
                    let paid = payout.seller_price(price);
                    paid > Micros::ZERO && paid >= s.reserve.unwrap_or(Micros::ZERO).max(v.floor)
                })
            };
            let why = if price < v.floor {
                Some(format!(
                    "{price} is under verticals.{}.floor ({}): no bid under the floor is quoted, so this buyer could never buy there",
                    v.name, v.floor
                ))
            } else if !selling.is_empty() && !selling.iter().any(quoted) {
                Some(format!(
                    "{price} would pay no seller of vertical {} enough to be quoted (after each seller's payout, under the floor of {} or the seller's reserve), so this buyer could never buy there",
                    v.name, v.floor
                ))
            } else {
                None
            };
            if let Some(why) = why {
                p.at(&format!("buyers.{}.fixed_price", b.id), why);
            }
        }
        for (v, max) in b.verticals.iter().filter_map(|v| bid_max_of(*v)) {
            if price > max {
                p.at(
                    &format!("buyers.{}.fixed_price", b.id),
                    format!(
                        "{price} is above verticals.{}.bid_max ({max}), the highest bid that vertical takes",
                        v.name
                    ),
                );
            }
        }
    }
}

/// Geography filters read the lead's ping fields named `state` and `zip`
/// (`eligibility::STATE_FIELD`, `ZIP_FIELD`): a buyer that filters on one its vertical
/// does not have, as a ping field of that type, would never be offered a lead (an
/// include filter) or would get the leads it excludes: a problem at the filter's key.
fn geography_problems(root: &Table, p: &mut Problems) {
    use pingpost_core::eligibility::{STATE_FIELD, ZIP_FIELD};
    // Read from the file's own tables, so a buyer's filter is checked even when its
    // vertical (or the buyer) has another problem (black-box round 13: a field's bad
    // `len_max` hid this one).
    fn table(v: Option<&Value>) -> Option<&Table> {
        v.and_then(Value::as_table)
    }
    let (Some(buyers), Some(verticals)) = (table(root.get("buyers")), table(root.get("verticals")))
    else {
        return;
    };
    for (id, buyer) in buyers {
        let Some(buyer) = buyer.as_table() else {
            continue;
        };
        let names = buyer
            .get("verticals")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default();
        for name in names {
            let Some(fields) = verticals.get(name).and_then(|v| table(v.get("fields"))) else {
                continue;
            };
            let has = |field: &str, kind: &str| {
                table(fields.get(field)).is_some_and(|f| {
                    f.get("type").and_then(Value::as_str) == Some(kind)
                        && f.get("ping").and_then(Value::as_bool) == Some(true)
                        && f.get("pii").and_then(Value::as_bool) != Some(true)
                })
            };
            let set = |key: &str| {
                buyer
                    .get(key)
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            };
            for (key, field, kind) in [
                ("states_include", STATE_FIELD, "state"),
                ("states_exclude", STATE_FIELD, "state"),
                ("zip_prefixes", ZIP_FIELD, "zip"),
            ] {
                if set(key) && !has(field, kind) {
                    p.at(
                        &join(&join("buyers", id), key),
                        format!(
                            "vertical {name} has no ping field named `{field}` of type \"{kind}\", \
                             which this filter reads, so it could never apply; name the field \
                             `{field}` with `ping = true`, or drop the filter"
                        ),
                    );
                }
            }
        }
    }
}

/// The key digests of every seller (`key_sha256`, `key_sha256_next`) and buyer, read
/// from the file's own tables, so a key shared by two parties is found whatever else is
/// wrong with either: a seller's or buyer's second use of a key already taken (by any
/// seller or buyer) is a problem at the later one (a key must say who is calling).
/// Returns the sellers' index, by digest to the position of the seller read (only for
/// sellers that read cleanly).
/// The admin token must not be one of those keys either: whoever holds that key would
/// hold the admin listener too.
fn shared_key_problems(
    root: &Table,
    sellers: &[Option<Seller>],
    admin: &crate::config::AdminConfig,
    p: &mut Problems,
) -> HashMap<[u8; 32], SellerIdx> {
    let digest = |v: &Value| -> Option<[u8; 32]> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(v.as_str()?, &mut d).ok()?;
        Some(d)
    };
    let mut owner: HashMap<[u8; 32], String> = HashMap::new();
    let mut seller_index: HashMap<[u8; 32], SellerIdx> = HashMap::new();
    let seller_pos: HashMap<&str, SellerIdx> = sellers
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((s.as_ref()?.id.as_str(), i)))
        .collect();
    for kind in ["sellers", "buyers"] {
        let Some(parties) = root.get(kind).and_then(Value::as_table) else {
            continue;
        };
        for (id, party) in parties {
            let Some(table) = party.as_table() else {
                continue;
            };
            for name in ["key_sha256", "key_sha256_next"] {
                let Some(d) = table.get(name).and_then(digest) else {
                    continue;
                };
                let here = join(kind, id);
                match owner.get(&d) {
                    // The party's own two keys: its reader says they must differ.
                    Some(first) if *first == here => {}
                    Some(first) => p.at(&join(&here, name), format!("the same key as {first}")),
                    None => {
                        owner.insert(d, here);
                        if let (true, Some(&pos)) = (kind == "sellers", seller_pos.get(id.as_str()))
                        {
                            seller_index.insert(d, pos);
                        }
                    }
                }
            }
        }
    }
    if let Some(token) = &admin.token {
        use sha2::Digest;
        let d: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(party) = owner.get(&d) {
            let shown = crate::config::shown_env_name(&admin.token_env);
            p.at(
                "admin.token_env",
                format!(
                    "the admin token (${shown}, or the demo's made-up one) is also the key \
                     of {party}: give the admin listener a token of its own"
                ),
            );
        }
    }
    seller_index
}

/// One of a buyer's signing secrets (`secret_env` or `secret_env_next`), as its variable
/// holds it, with the keys a holder could present from it ([`bearer_texts`]).
struct BuyerSecret<'a> {
    buyer: &'a Buyer,
    key: &'static str,
    var: String,
    secret: String,
    presentable: std::collections::HashSet<String>,
}

/// A buyer's signing secret from which another party's API key can be taken
/// ([`bearer_texts`]): the buyer receives the secret with every request it is
/// signed for, so it could call the exchange as that party: sell as a seller, or file
/// another buyer's returns (black-box round 183a: accepted). Named by variable, never
/// by value.
fn secret_is_key_problems(
    secrets: &[BuyerSecret<'_>],
    buyers: &[Option<Buyer>],
    seller_by_key: &HashMap<[u8; 32], SellerIdx>,
    sellers: &[Option<Seller>],
    buyer_by_key: &HashMap<[u8; 32], usize>,
    p: &mut Problems,
) {
    use sha2::Digest as _;
    for s in secrets {
        // Its own key is no other party's.
        let own = format!("buyers.{}", s.buyer.id);
        let mut owners: Vec<String> = Vec::new();
        for text in &s.presentable {
            let d: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
            let seller = seller_by_key
                .get(&d)
                .and_then(|&i| sellers.get(i)?.as_ref())
                .map(|o| format!("sellers.{}", o.id));
            let buyer = buyer_by_key
                .get(&d)
                .and_then(|&i| buyers.get(i)?.as_ref())
                .map(|o| format!("buyers.{}", o.id));
            for owner in seller.into_iter().chain(buyer) {
                if owner != own && !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
        for owner in owners {
            p.at(
                &format!("buyers.{}.{}", s.buyer.id, s.key),
                format!(
                    "${} holds the API key of {owner}: buyers.{} receives its signing secret with every request and could call the exchange as {owner}; give each its own",
                    crate::config::shown_env_name(&s.var),
                    s.buyer.id
                ),
            );
        }
    }
}

/// The API keys a holder of `secret` could present from it. A listener takes a bearer
/// key as the text after `Bearer`, inner spaces and tabs kept, the white space around it
/// taken off, in visible ASCII and of at most [`crate::config::KEY_WORDS_MAX`] words: so
/// every run of up to that many words (split at spaces and tabs, the white space between
/// them as written) of every stretch of visible ASCII, spaces and tabs, in the secret and
/// in the bytes its `whsec_` form decodes to. Black-box rounds 184a, 185a and 186a: a seller's key with a trailing
/// newline, after `Bearer `, of several words among others, or beside a byte that is not
/// UTF-8 in a `whsec_` secret passed as a buyer's secret. A key glued to other visible
/// characters (`key.`) is not found: give each party a random secret.
fn bearer_texts(secret: &str) -> std::collections::HashSet<String> {
    let decoded = proto::signing::key_bytes(secret).ok();
    let mut out = std::collections::HashSet::new();
    for bytes in std::iter::once(secret.as_bytes()).chain(decoded.as_deref()) {
        let stretches = bytes.split(|&b| !(b == b'\t' || (0x20..=0x7e).contains(&b)));
        for stretch in stretches {
            // Visible ASCII, spaces and tabs: UTF-8.
            let Ok(text) = std::str::from_utf8(stretch) else {
                continue;
            };
            let mut words: Vec<(usize, usize)> = Vec::new();
            let mut start = None;
            for (i, c) in text
                .char_indices()
                .chain(std::iter::once((text.len(), ' ')))
            {
                match (c == ' ' || c == '\t', start) {
                    (true, Some(s)) => {
                        words.push((s, i));
                        start = None;
                    }
                    (false, None) => start = Some(i),
                    _ => {}
                }
            }
            for (i, &(from, _)) in words.iter().enumerate() {
                for &(_, to) in words.iter().skip(i).take(crate::config::KEY_WORDS_MAX) {
                    out.insert(text[from..to].to_string());
                }
            }
        }
    }
    out
}

/// The buyers' key digests, by digest to the buyer's position (duplicates are refused
/// by [`shared_key_problems`], so each digest has one buyer).
fn buyer_key_index(buyers: &[Option<Buyer>]) -> HashMap<[u8; 32], usize> {
    let mut by_digest = HashMap::new();
    for (idx, buyer) in buyers.iter().enumerate() {
        let Some(buyer) = buyer else { continue };
        for digest in buyer.key_sha256.iter().chain(buyer.key_sha256_next.iter()) {
            by_digest.entry(*digest).or_insert(idx);
        }
    }
    by_digest
}

/// A TOML syntax error as one problem with its line and column.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    // toml's message may run over several lines; keep one problem on one line.
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let key = key_at(text, line)
                .map(|k| format!(" (at {k})"))
                .unwrap_or_default();
            format!("line {line}, column {column}{key}: invalid TOML: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

/// The dotted key that a `key = value` line `line` (1-based) of `text` sets, with the
/// table header above it (`server.quote_ttl_ms`), so a syntax error in a value (a number
/// too large for 64 bits) names its key; `None` when the line sets no key this simple
/// reading recognises (the error's line and column still say where it is). Names are
/// shown as written, sanitized and cut to 64 characters.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.checked_sub(1)?)?;
    let (key, _) = this.split_once('=')?;
    let key = key.trim();
    let simple = |k: &str| {
        !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if !simple(key) {
        return None;
    }
    let table = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.strip_suffix(']')?;
        let inner = inner.trim_start_matches('[').trim_end_matches(']').trim();
        Some(inner.to_string())
    });
    Some(match table {
        Some(t) if simple(&t) => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}
