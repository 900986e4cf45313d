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

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use proto::money::MoneyError;
use proto::schema::{is_us_state, LEAD_FIELDS_MAX, STRING_LEN_MAX_DEFAULT};
use proto::signing::Secret;
use proto::{FieldKind, FieldSpec, Micros, VerticalSchema};
use toml::{Table, Value};

use super::{
    defaults, AdminConfig, AdminToken, BreakerConfig, Buyer, BuyerIdx, BuyerKey, Caps, Config,
    HttpVersion, ListenerSettings, MinuteRange, PayoutModel, Seller, SellerIdx, SellerKey,
    ServerConfig, TlsFiles, Vertical, VerticalIdx, WeeklySchedule,
};

// Bounds on what the file may ask for. A value outside them is a mistake, not a tuning.
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
/// Most items in any list (all 5-digit ZIP prefixes fit).
const LIST_LEN_MAX: usize = 100_000;
/// Largest compiled size of a field pattern, so a pattern cannot eat memory.
const PATTERN_SIZE_MAX_BYTES: usize = 1 << 20;
const MINUTES_PER_DAY: u16 = 24 * 60;

const FIELD_TYPES: &str = "string, integer, number, boolean, enum, state, zip, email, phone, date";
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Every problem found in a configuration, each with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
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
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![format!(
            "{}: cannot read the file: {e}",
            path.display()
        )])
    })?;
    load_str_with_env(&text, env)
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
    let verticals: Vec<Option<Vertical>> = vertical_entries
        .into_iter()
        .map(|(name, section)| read_vertical(name, section, &server, &mut p))
        .collect();

    let sellers: Vec<Option<Seller>> = top
        .entries(&mut p, "sellers")
        .into_iter()
        .map(|(id, section)| read_seller(id, section, &vertical_by_name, &mut p))
        .collect();
    let mut seller_by_key_sha256: HashMap<[u8; 32], SellerIdx> = HashMap::new();
    for (idx, seller) in sellers.iter().enumerate() {
        let Some(seller) = seller else { continue };
        // Both keys of every seller are in one index: a key is valid for one seller only.
        let keys = std::iter::once(("key_sha256", seller.key_sha256))
            .chain(seller.key_sha256_next.map(|k| ("key_sha256_next", k)));
        for (name, digest) in keys {
            if let Some(&first) = seller_by_key_sha256.get(&digest) {
                let first_id = sellers
                    .get(first)
                    .and_then(Option::as_ref)
                    .map_or("", |s| s.id.as_str());
                p.at(
                    &join(&join("sellers", &seller.id), name),
                    format!("the same key as {}", join("sellers", first_id)),
                );
            } else {
                seller_by_key_sha256.insert(digest, idx);
            }
        }
    }

    let buyers: Vec<Option<Buyer>> = top
        .entries(&mut p, "buyers")
        .into_iter()
        .map(|(id, section)| read_buyer(id, section, &vertical_by_name, env, &mut p))
        .collect();

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

    let mut buyers_by_vertical: Vec<Vec<BuyerIdx>> = vec![Vec::new(); verticals.len()];
    for (buyer_idx, buyer) in buyers.iter().enumerate() {
        for &v in &buyer.verticals {
            if let Some(list) = buyers_by_vertical.get_mut(v) {
                list.push(buyer_idx);
            }
        }
    }

    let mut config = Config {
        server,
        verticals,
        sellers,
        buyers,
        vertical_by_name,
        seller_by_key_sha256,
        buyers_by_vertical,
        buyer_by_key: HashMap::new(),
        seller_by_key: HashMap::new(),
        admin,
    };
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
            format!("line {line}, column {column}: invalid TOML: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

// ---------------------------------------------------------------------------------------
// The reader.

/// Problems found so far, each `path: message`.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn at(&mut self, path: &str, message: impl Display) {
        if path.is_empty() {
            self.0.push(message.to_string());
        } else {
            self.0.push(format!("{path}: {message}"));
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// `parent.key`, quoting a key that is not a bare TOML key.
fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// One table of the document, with its path and the keys read from it so far. Whatever
/// was not read by the time of [`Section::finish`] is an unknown key.
#[derive(Debug)]
struct Section<'a> {
    path: String,
    /// `None` stands for an absent, optional table: every key is absent.
    table: Option<&'a Table>,
    read: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(path: String, table: Option<&'a Table>) -> Section<'a> {
        Section {
            path,
            table,
            read: Vec::new(),
        }
    }

    fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn has(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.contains_key(key))
    }

    /// The value at `key` with its path, if present; marks `key` as known.
    fn opt(&mut self, key: &'static str) -> Option<(String, &'a Value)> {
        self.read.push(key);
        let value = self.table?.get(key)?;
        Some((self.path_of(key), value))
    }

    /// Like [`Section::opt`], recording a problem when the key is absent.
    fn req(&mut self, p: &mut Problems, key: &'static str) -> Option<(String, &'a Value)> {
        let found = self.opt(key);
        if found.is_none() {
            p.at(&self.path_of(key), "is required");
        }
        found
    }

    fn str_opt(&mut self, p: &mut Problems, key: &'static str) -> Option<&'a str> {
        let (path, v) = self.opt(key)?;
        as_str(p, &path, v)
    }

    fn str_req(&mut self, p: &mut Problems, key: &'static str) -> Option<&'a str> {
        let (path, v) = self.req(p, key)?;
        as_str(p, &path, v)
    }

    fn bool_or(&mut self, p: &mut Problems, key: &'static str, default: bool) -> bool {
        match self.opt(key) {
            None => default,
            Some((_, Value::Boolean(b))) => *b,
            Some((path, _)) => {
                p.at(&path, "must be true or false");
                default
            }
        }
    }

    /// A whole number in `lo..=hi`, if present and valid.
    fn int_opt(&mut self, p: &mut Problems, key: &'static str, lo: i64, hi: i64) -> Option<i64> {
        let (path, v) = self.opt(key)?;
        whole(p, &path, v, lo, hi)
    }

    fn u64_or(
        &mut self,
        p: &mut Problems,
        key: &'static str,
        lo: i64,
        hi: i64,
        default: u64,
    ) -> u64 {
        self.int_opt(p, key, lo, hi)
            .and_then(|i| u64::try_from(i).ok())
            .unwrap_or(default)
    }

    fn usize_or(
        &mut self,
        p: &mut Problems,
        key: &'static str,
        lo: i64,
        hi: i64,
        default: usize,
    ) -> usize {
        self.int_opt(p, key, lo, hi)
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(default)
    }

    fn u32_opt(&mut self, p: &mut Problems, key: &'static str, lo: i64, hi: i64) -> Option<u32> {
        self.int_opt(p, key, lo, hi)
            .and_then(|i| u32::try_from(i).ok())
    }

    fn money_opt(&mut self, p: &mut Problems, key: &'static str) -> Option<Micros> {
        let (path, v) = self.opt(key)?;
        money(p, &path, v)
    }

    /// An optional sub-table; absent (or not a table, which is recorded) reads as empty.
    fn section_or_empty(&mut self, p: &mut Problems, key: &'static str) -> Section<'a> {
        let path = self.path_of(key);
        match self.opt(key) {
            None => Section::new(path, None),
            Some((_, Value::Table(t))) => Section::new(path, Some(t)),
            Some(_) => {
                p.at(&path, "must be a table");
                Section::new(path, None)
            }
        }
    }

    /// A table of named tables (`[buyers.ID]`), in file order. Names must be short
    /// identifiers; an entry that is not a table is recorded and skipped.
    fn entries(&mut self, p: &mut Problems, key: &'static str) -> Vec<(&'a str, Section<'a>)> {
        let Some((path, v)) = self.opt(key) else {
            return Vec::new();
        };
        let Some(table) = v.as_table() else {
            p.at(
                &path,
                format!("must be a table of named tables, such as [{key}.NAME]"),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(table.len());
        for (name, value) in table {
            let entry_path = join(&path, name);
            if !is_name(name) {
                p.at(
                    &entry_path,
                    format!("the name must be 1 to {NAME_LEN_MAX} letters, digits, '_' or '-'"),
                );
            }
            match value.as_table() {
                Some(t) => out.push((name.as_str(), Section::new(entry_path, Some(t)))),
                None => p.at(&entry_path, "must be a table"),
            }
        }
        out
    }

    /// An optional list of strings; absent reads as empty.
    fn str_list(&mut self, p: &mut Problems, key: &'static str) -> Vec<(String, &'a str)> {
        match self.opt(key) {
            None => Vec::new(),
            Some((path, v)) => str_list(p, &path, v),
        }
    }

    /// A required, non-empty list of vertical names, resolved to indices.
    fn vertical_refs(
        &mut self,
        p: &mut Problems,
        key: &'static str,
        vertical_by_name: &HashMap<String, VerticalIdx>,
    ) -> Vec<VerticalIdx> {
        let Some((path, v)) = self.req(p, key) else {
            return Vec::new();
        };
        if v.as_array().is_some_and(Vec::is_empty) {
            p.at(&path, "must name at least one vertical");
        }
        let names = str_list(p, &path, v);
        no_duplicates(p, &names);
        let mut out = Vec::with_capacity(names.len());
        for (item_path, name) in names {
            match vertical_by_name.get(name) {
                Some(&idx) if !out.contains(&idx) => out.push(idx),
                Some(_) => {}
                None => p.at(&item_path, format!("unknown vertical {name:?}")),
            }
        }
        out
    }

    /// Records each of `keys` that is present as not applying here (`what` says why),
    /// rather than as an unknown key.
    fn reject(&mut self, p: &mut Problems, keys: &[&'static str], what: &str) {
        for key in keys {
            if self.read.contains(key) {
                continue;
            }
            if self.has(key) {
                p.at(&self.path_of(key), format!("does not apply to {what}"));
            }
            self.read.push(key);
        }
    }

    /// Records every key that was never read as unknown, suggesting a close known key.
    fn finish(self, p: &mut Problems) {
        self.finish_with_hint(p, "");
    }

    fn finish_with_hint(self, p: &mut Problems, hint: &str) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            if self.read.iter().any(|r| r == key) {
                continue;
            }
            let path = join(&self.path, key);
            let close = self
                .read
                .iter()
                .map(|known| (edit_distance(known, key), *known))
                .filter(|&(d, _)| d <= 2 && d * 3 <= key.chars().count())
                .min();
            match close {
                Some((_, known)) => p.at(&path, format!("unknown key (did you mean {known}?)")),
                None if !hint.is_empty() => p.at(&path, format!("unknown key ({hint})")),
                None => p.at(&path, "unknown key"),
            }
        }
    }
}

/// Levenshtein distance between two short keys (long keys are simply "far").
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() > NAME_LEN_MAX || b.len() > NAME_LEN_MAX {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn is_name(s: &str) -> bool {
    (1..=NAME_LEN_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn as_str<'a>(p: &mut Problems, path: &str, v: &'a Value) -> Option<&'a str> {
    match v {
        Value::String(s) => Some(s.as_str()),
        _ => {
            p.at(path, "must be a string");
            None
        }
    }
}

fn whole(p: &mut Problems, path: &str, v: &Value, lo: i64, hi: i64) -> Option<i64> {
    match v {
        Value::Integer(i) if (lo..=hi).contains(i) => Some(*i),
        _ => {
            p.at(
                path,
                format!("must be a whole number between {lo} and {hi}"),
            );
            None
        }
    }
}

/// Any finite number, integer or float.
fn number(p: &mut Problems, path: &str, v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => {
            p.at(path, "must be a finite number");
            None
        }
    }
}

/// The decimal text a number was written as: floats print as the shortest decimal that
/// reads back as the same float, which is what the author wrote.
fn decimal_text(v: &Value) -> Option<String> {
    match v {
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(format!("{f}")),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Money, written as a TOML integer, float or decimal string (`12.5`, `12`, `"12.50"`).
fn money(p: &mut Problems, path: &str, v: &Value) -> Option<Micros> {
    const SHAPE: &str = "must be an amount of money such as 12.50";
    let Some(text) = decimal_text(v) else {
        p.at(path, SHAPE);
        return None;
    };
    match Micros::parse_decimal(&text) {
        Ok(m) => Some(m),
        Err(MoneyError::NotFinite) => {
            p.at(path, SHAPE);
            None
        }
        Err(e) => {
            p.at(path, e);
            None
        }
    }
}

/// A list of strings; items that are not strings are recorded and skipped.
fn str_list<'a>(p: &mut Problems, path: &str, v: &'a Value) -> Vec<(String, &'a str)> {
    let Some(items) = v.as_array() else {
        p.at(path, "must be a list of strings");
        return Vec::new();
    };
    if items.len() > LIST_LEN_MAX {
        p.at(path, format!("must have at most {LIST_LEN_MAX} items"));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        if let Some(s) = as_str(p, &item_path, item) {
            out.push((item_path, s));
        }
    }
    out
}

fn no_duplicates(p: &mut Problems, items: &[(String, &str)]) {
    for (i, (path, s)) in items.iter().enumerate() {
        if items
            .get(..i)
            .is_some_and(|earlier| earlier.iter().any(|(_, e)| e == s))
        {
            p.at(path, format!("{s:?} is listed twice"));
        }
    }
}

fn display_name(p: &mut Problems, s: &mut Section<'_>, id: &str) -> String {
    match s.str_opt(p, "name") {
        None => id.to_string(),
        Some(name) if name.trim().is_empty() || name.chars().count() > DISPLAY_NAME_LEN_MAX => {
            p.at(
                &s.path_of("name"),
                format!("must be 1 to {DISPLAY_NAME_LEN_MAX} characters"),
            );
            id.to_string()
        }
        Some(name) => name.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// [server]

fn default_listen() -> SocketAddr {
    defaults::LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
}

fn read_server(mut s: Section<'_>, p: &mut Problems) -> ServerConfig {
    let listen = match s.opt("listen") {
        None => default_listen(),
        Some((path, v)) => match v.as_str().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => addr,
            _ => {
                p.at(&path, "must be a socket address such as \"127.0.0.1:8080\"");
                default_listen()
            }
        },
    };
    let body_bytes_max = s.usize_or(
        p,
        "body_bytes_max",
        BODY_BYTES_MAX_FLOOR,
        BODY_BYTES_MAX_LIMIT,
        defaults::BODY_BYTES_MAX,
    );
    let header_read_timeout_ms = s.u64_or(
        p,
        "header_read_timeout_ms",
        1,
        SERVER_WAIT_MS_LIMIT,
        defaults::HEADER_READ_TIMEOUT_MS,
    );
    let requests_in_flight_max = s.usize_or(
        p,
        "requests_in_flight_max",
        1,
        COUNT_LIMIT,
        defaults::REQUESTS_IN_FLIGHT_MAX,
    );
    let connections_max = s.usize_or(
        p,
        "connections_max",
        1,
        COUNT_LIMIT,
        defaults::CONNECTIONS_MAX,
    );
    let worker_threads = s.usize_or(p, "worker_threads", 0, 256, defaults::WORKER_THREADS);
    let shutdown_grace_ms = s.u64_or(
        p,
        "shutdown_grace_ms",
        0,
        SERVER_WAIT_MS_LIMIT,
        defaults::SHUTDOWN_GRACE_MS,
    );
    let quote_ttl_ms = s.u64_or(p, "quote_ttl_ms", 1, HOUR_MS, defaults::QUOTE_TTL_MS);
    let quotes_open_max = s.usize_or(
        p,
        "quotes_open_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::QUOTES_OPEN_MAX,
    );
    let idempotency_ttl_ms = s.u64_or(
        p,
        "idempotency_ttl_ms",
        1,
        30 * DAY_MS,
        defaults::IDEMPOTENCY_TTL_MS,
    );
    let idempotency_keys_max = s.usize_or(
        p,
        "idempotency_keys_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::IDEMPOTENCY_KEYS_MAX,
    );
    let idempotency_keys_per_seller_max = s.usize_or(
        p,
        "idempotency_keys_per_seller_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::IDEMPOTENCY_KEYS_PER_SELLER_MAX,
    );
    let ledger_path = match s.str_opt(p, "ledger_path") {
        None => PathBuf::from(defaults::LEDGER_PATH),
        Some("") => {
            p.at(&s.path_of("ledger_path"), "must not be empty");
            PathBuf::from(defaults::LEDGER_PATH)
        }
        Some(path) => PathBuf::from(path),
    };
    let buyers_per_auction_max = s.usize_or(
        p,
        "buyers_per_auction_max",
        1,
        FAN_OUT_LIMIT,
        defaults::BUYERS_PER_AUCTION_MAX,
    );
    let response_reserve_ms = s.u64_or(
        p,
        "response_reserve_ms",
        0,
        10_000,
        defaults::RESPONSE_RESERVE_MS,
    );
    let post_attempts_max = s.usize_or(
        p,
        "post_attempts_max",
        1,
        POST_ATTEMPTS_LIMIT,
        defaults::POST_ATTEMPTS_MAX,
    );
    let post_deadline_ms = s.u64_or(
        p,
        "post_deadline_ms",
        1,
        TIMEOUT_MS_LIMIT,
        defaults::POST_DEADLINE_MS,
    );

    let mut b = s.section_or_empty(p, "breaker");
    let breaker = BreakerConfig {
        enabled: b.bool_or(p, "enabled", true),
        failures: b
            .u32_opt(p, "failures", 1, BREAKER_FAILURES_LIMIT)
            .unwrap_or(defaults::BREAKER_FAILURES),
        open_ms: b.u64_or(p, "open_ms", 1, HOUR_MS, defaults::BREAKER_OPEN_MS),
        probe_interval_ms: b.u64_or(
            p,
            "probe_interval_ms",
            1,
            HOUR_MS,
            defaults::BREAKER_PROBE_INTERVAL_MS,
        ),
    };
    b.finish(p);
    let listener = read_listener(&mut s, p);
    s.finish(p);

    ServerConfig {
        listen,
        body_bytes_max,
        header_read_timeout_ms,
        requests_in_flight_max,
        connections_max,
        worker_threads,
        shutdown_grace_ms,
        quote_ttl_ms,
        quotes_open_max,
        idempotency_ttl_ms,
        idempotency_keys_max,
        idempotency_keys_per_seller_max,
        ledger_path,
        buyers_per_auction_max,
        response_reserve_ms,
        post_attempts_max,
        post_deadline_ms,
        breaker,
        listener,
    }
}

/// Largest `server.header_bytes_max`.
const HEADER_BYTES_MAX_LIMIT: i64 = 256 * 1024;
/// Largest `server.headers_max`.
const HEADERS_MAX_LIMIT: i64 = 10_000;

/// The listener's keys of `[server]`: per-IP limit, idle and HTTP/2 keep-alive timers,
/// header limits, `[server.tls]` and `buyer_ca_path`. The TLS files are read and checked
/// here, so a bad certificate is a configuration error, not a failed start.
fn read_listener(s: &mut Section<'_>, p: &mut Problems) -> ListenerSettings {
    let d = ListenerSettings::default();
    let connections_per_ip_max = s.usize_or(
        p,
        "connections_per_ip_max",
        0,
        COUNT_LIMIT,
        d.connections_per_ip_max,
    );
    let connections_per_ip_exempt_loopback = s.bool_or(
        p,
        "connections_per_ip_exempt_loopback",
        d.connections_per_ip_exempt_loopback,
    );
    let idle_timeout_ms = s.u64_or(
        p,
        "idle_timeout_ms",
        1,
        SERVER_WAIT_MS_LIMIT,
        d.idle_timeout_ms,
    );
    let h2_keepalive_interval_ms = s.u64_or(
        p,
        "h2_keepalive_interval_ms",
        0,
        SERVER_WAIT_MS_LIMIT,
        d.h2_keepalive_interval_ms,
    );
    let h2_keepalive_timeout_ms = s.u64_or(
        p,
        "h2_keepalive_timeout_ms",
        1,
        SERVER_WAIT_MS_LIMIT,
        d.h2_keepalive_timeout_ms,
    );
    let header_bytes_max = s.usize_or(
        p,
        "header_bytes_max",
        1024,
        HEADER_BYTES_MAX_LIMIT,
        d.header_bytes_max,
    );
    let headers_max = s.usize_or(p, "headers_max", 1, HEADERS_MAX_LIMIT, d.headers_max);
    let tls = if s.has("tls") {
        let mut t = s.section_or_empty(p, "tls");
        let cert = t.str_req(p, "cert_path");
        let key = t.str_req(p, "key_path");
        let path = t.path_of("cert_path");
        t.finish(p);
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert_path: PathBuf::from(cert),
                    key_path: PathBuf::from(key),
                };
                match bidder_sdk::listener::server_config_from_files(
                    &files.cert_path,
                    &files.key_path,
                ) {
                    Ok(_) => Some(files),
                    Err(e) => {
                        p.at(&path, e);
                        None
                    }
                }
            }
            _ => None,
        }
    } else {
        None
    };
    let buyer_ca_path = s.str_opt(p, "buyer_ca_path").and_then(|path| {
        let key = s.path_of("buyer_ca_path");
        match std::fs::read(path) {
            Err(e) => {
                p.at(&key, format!("cannot read {path}: {e}"));
                None
            }
            Ok(pem) => match bidder_sdk::listener::certificates_from_pem(&pem, path) {
                Ok(_) => Some(PathBuf::from(path)),
                Err(e) => {
                    p.at(&key, e);
                    None
                }
            },
        }
    });
    ListenerSettings {
        connections_per_ip_max,
        connections_per_ip_exempt_loopback,
        idle_timeout_ms,
        h2_keepalive_interval_ms,
        h2_keepalive_timeout_ms,
        header_bytes_max,
        headers_max,
        tls,
        buyer_ca_path,
    }
}

// ---------------------------------------------------------------------------------------
// [admin]

/// Shortest admin token accepted: a guessable token on the admin port is worse than none.
const ADMIN_TOKEN_LEN_MIN: usize = 16;
/// Longest admin token (it travels in a header).
const ADMIN_TOKEN_LEN_MAX: usize = 1024;

fn default_admin_listen() -> SocketAddr {
    defaults::ADMIN_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8081)))
}

fn read_admin(
    mut s: Section<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> AdminConfig {
    let listen = match s.opt("listen") {
        None => default_admin_listen(),
        Some((path, v)) => match v.as_str().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => addr,
            _ => {
                p.at(&path, "must be a socket address such as \"127.0.0.1:8081\"");
                default_admin_listen()
            }
        },
    };
    let token_env = match s.str_opt(p, "token_env") {
        None => defaults::ADMIN_TOKEN_ENV.to_string(),
        Some(name)
            if !name.is_empty()
                && name.len() <= NAME_LEN_MAX
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            name.to_string()
        }
        Some(_) => {
            p.at(
                &s.path_of("token_env"),
                "must be an environment variable name (letters, digits, _; up to 64)",
            );
            defaults::ADMIN_TOKEN_ENV.to_string()
        }
    };
    // The token's value never appears in a message, only the variable's name.
    let token = match env(&token_env).filter(|t| !t.is_empty()) {
        None => None,
        Some(t) if t.len() < ADMIN_TOKEN_LEN_MIN || t.len() > ADMIN_TOKEN_LEN_MAX => {
            p.at(
                &s.path_of("token_env"),
                format!(
                    "the token in ${token_env} must be {ADMIN_TOKEN_LEN_MIN} to \
                     {ADMIN_TOKEN_LEN_MAX} characters"
                ),
            );
            None
        }
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            p.at(
                &s.path_of("token_env"),
                format!("the token in ${token_env} must be visible ASCII characters"),
            );
            None
        }
        Some(t) => Some(AdminToken::new(t)),
    };
    if token.is_none() && !listen.ip().is_loopback() {
        // Without a token the admin listener does not start; on a non-loopback address
        // that is almost certainly a mistake, so say so rather than run without it.
        p.at(
            &s.path_of("listen"),
            format!("is not a loopback address, so ${token_env} must hold the admin token"),
        );
    }
    s.finish(p);
    AdminConfig {
        listen,
        token_env,
        token,
    }
}

// ---------------------------------------------------------------------------------------
// [verticals.NAME]

fn read_vertical(
    name: &str,
    mut s: Section<'_>,
    server: &ServerConfig,
    p: &mut Problems,
) -> Option<Vertical> {
    let before = p.len();
    let currency = match s.str_opt(p, "currency") {
        None => defaults::CURRENCY.to_string(),
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => c.to_string(),
        Some(_) => {
            p.at(
                &s.path_of("currency"),
                "must be three upper-case letters such as \"USD\"",
            );
            defaults::CURRENCY.to_string()
        }
    };
    let auction_deadline_ms = s.u64_or(
        p,
        "auction_deadline_ms",
        1,
        TIMEOUT_MS_LIMIT,
        defaults::AUCTION_DEADLINE_MS,
    );
    if auction_deadline_ms <= server.response_reserve_ms {
        p.at(
            &s.path_of("auction_deadline_ms"),
            format!(
                "must be more than server.response_reserve_ms ({} ms), which is kept back to answer the seller",
                server.response_reserve_ms
            ),
        );
    }
    let floor = s.money_opt(p, "floor").unwrap_or(Micros::ZERO);
    let bid_max = s.money_opt(p, "bid_max");
    if bid_max.is_some_and(|m| m <= Micros::ZERO) {
        p.at(&s.path_of("bid_max"), "must be more than 0");
    }

    if !s.has("fields") {
        p.at(
            &s.path_of("fields"),
            "is required: at least one [verticals.NAME.fields.FIELD] table",
        );
    }
    let field_entries = s.entries(p, "fields");
    if s.table
        .and_then(|t| t.get("fields"))
        .and_then(Value::as_table)
        .is_some_and(Table::is_empty)
    {
        p.at(&s.path_of("fields"), "must define at least one field");
    }
    if field_entries.len() > LEAD_FIELDS_MAX {
        p.at(
            &s.path_of("fields"),
            format!("must define at most {LEAD_FIELDS_MAX} fields"),
        );
    }
    let fields: Vec<Option<FieldSpec>> = field_entries
        .into_iter()
        .map(|(field, section)| read_field(field, section, p))
        .collect();
    s.finish(p);

    if p.len() > before {
        return None;
    }
    let fields = fields.into_iter().collect::<Option<Vec<_>>>()?;
    Some(Vertical {
        name: name.to_string(),
        currency,
        auction_deadline_ms,
        floor,
        bid_max,
        schema: VerticalSchema { fields },
    })
}

/// Keys that belong to one field type only.
const TYPED_FIELD_KEYS: [&str; 5] = ["len_max", "pattern", "min", "max", "values"];

fn read_field(name: &str, mut s: Section<'_>, p: &mut Problems) -> Option<FieldSpec> {
    let before = p.len();
    let type_name = s.str_req(p, "type");
    let required = s.bool_or(p, "required", false);
    let ping = s.bool_or(p, "ping", false);
    let pii = s.bool_or(p, "pii", false);
    if pii && ping {
        p.at(
            &s.path_of("ping"),
            "must be false for a PII field: personal data never travels in a ping",
        );
    }

    let kind = match type_name {
        None => None,
        Some("string") => {
            let len_max = s.usize_or(
                p,
                "len_max",
                1,
                STRING_LEN_MAX_DEFAULT as i64,
                STRING_LEN_MAX_DEFAULT,
            );
            let pattern = match s.opt("pattern") {
                None => None,
                Some((path, v)) => {
                    as_str(p, &path, v).and_then(|pat| compile_pattern(p, &path, pat))
                }
            };
            Some(FieldKind::String { len_max, pattern })
        }
        Some("integer") => {
            let min = s
                .opt("min")
                .and_then(|(path, v)| whole(p, &path, v, i64::MIN, i64::MAX));
            let max = s
                .opt("max")
                .and_then(|(path, v)| whole(p, &path, v, i64::MIN, i64::MAX));
            let (min, max) = (min.unwrap_or(i64::MIN), max.unwrap_or(i64::MAX));
            if min > max {
                p.at(&s.path_of("max"), format!("must be at least min ({min})"));
            }
            Some(FieldKind::Integer { min, max })
        }
        Some("number") => {
            let min = s.opt("min").and_then(|(path, v)| number(p, &path, v));
            let max = s.opt("max").and_then(|(path, v)| number(p, &path, v));
            let (min, max) = (min.unwrap_or(f64::MIN), max.unwrap_or(f64::MAX));
            if min > max {
                p.at(&s.path_of("max"), format!("must be at least min ({min})"));
            }
            Some(FieldKind::Number { min, max })
        }
        Some("enum") => {
            let values = match s.req(p, "values") {
                None => Vec::new(),
                Some((path, v)) => {
                    let items = str_list(p, &path, v);
                    if v.as_array().is_some_and(Vec::is_empty) {
                        p.at(&path, "must list at least one value");
                    }
                    for (item_path, item) in &items {
                        if item.is_empty() {
                            p.at(item_path, "must not be empty");
                        }
                    }
                    no_duplicates(p, &items);
                    items
                        .into_iter()
                        .map(|(_, item)| item.to_string())
                        .collect()
                }
            };
            Some(FieldKind::Enum(values))
        }
        Some("boolean") => Some(FieldKind::Boolean),
        Some("state") => Some(FieldKind::State),
        Some("zip") => Some(FieldKind::Zip),
        Some("email") => Some(FieldKind::Email),
        Some("phone") => Some(FieldKind::Phone),
        Some("date") => Some(FieldKind::Date),
        Some(other) => {
            p.at(
                &s.path_of("type"),
                format!("unknown type {other:?} (one of {FIELD_TYPES})"),
            );
            None
        }
    };
    if let (Some(t @ ("email" | "phone")), false) = (type_name, pii) {
        // The contract names e-mail addresses and phone numbers as personal data.
        p.at(
            &s.path_of("pii"),
            format!("must be true for a {t} field: it is personal data"),
        );
    }
    if let Some(t) = type_name.filter(|_| kind.is_some()) {
        s.reject(p, &TYPED_FIELD_KEYS, &format!("a {t} field"));
    }
    s.finish(p);

    if p.len() > before {
        return None;
    }
    Some(FieldSpec {
        name: name.to_string(),
        kind: kind?,
        required,
        ping,
        pii,
    })
}

/// Compiles a field pattern anchored at both ends, so it must match the whole value.
fn compile_pattern(p: &mut Problems, path: &str, pattern: &str) -> Option<regex::Regex> {
    match regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(PATTERN_SIZE_MAX_BYTES)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            // regex prints a multi-line picture of the pattern; its last line says what is wrong.
            let text = e.to_string();
            let why = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let why = why.trim().trim_start_matches("error: ");
            p.at(path, format!("is not a valid regular expression: {why}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// [sellers.ID]

fn read_seller(
    id: &str,
    mut s: Section<'_>,
    vertical_by_name: &HashMap<String, VerticalIdx>,
    p: &mut Problems,
) -> Option<Seller> {
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
    let verticals = s.vertical_refs(p, "verticals", vertical_by_name);
    let payout = s
        .req(p, "payout")
        .and_then(|(path, v)| read_payout(p, path, v));
    let reserve = s.money_opt(p, "reserve");
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
    s.finish(p);

    if p.len() > before {
        return None;
    }
    Some(Seller {
        id: id.to_string(),
        key: SellerKey::default(),
        name,
        key_sha256: key_sha256?,
        key_sha256_next,
        verticals,
        payout: payout?,
        reserve,
        rate_per_s,
        quotes_open_max,
        idempotency_keys_max,
    })
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
        None => None,
        Some("revenue_share") => match s.req(p, "share_pct") {
            None => None,
            Some((pct_path, pct)) => {
                let bp = share_bp(pct);
                if bp.is_none() {
                    p.at(&pct_path, "must be a percentage between 0 and 100 with at most two decimals, such as 82.5");
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
                format!("unknown payout model {other:?} (revenue_share or fixed_margin)"),
            );
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

// ---------------------------------------------------------------------------------------
// [buyers.ID]

fn read_buyer(
    id: &str,
    mut s: Section<'_>,
    vertical_by_name: &HashMap<String, VerticalIdx>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Option<Buyer> {
    let before = p.len();
    let name = display_name(p, &mut s, id);
    let ping_url = s
        .str_opt(p, "ping_url")
        .and_then(|u| check_url(p, &s.path_of("ping_url"), u));
    let post_url = s
        .str_req(p, "post_url")
        .and_then(|u| check_url(p, &s.path_of("post_url"), u));
    let http = match s.opt("http") {
        None => HttpVersion::Http1,
        Some((_, Value::String(v))) if v == "1.1" => HttpVersion::Http1,
        Some((_, Value::String(v))) if v == "2" => HttpVersion::Http2,
        Some((path, _)) => {
            p.at(&path, "must be \"1.1\" or \"2\"");
            HttpVersion::Http1
        }
    };
    let secret_env = s.str_req(p, "secret_env");
    let secret = secret_env.and_then(|var| read_secret(p, &s.path_of("secret_env"), var, env));
    let ping_timeout_ms = s.u64_or(
        p,
        "ping_timeout_ms",
        1,
        TIMEOUT_MS_LIMIT,
        defaults::PING_TIMEOUT_MS,
    );
    let post_timeout_ms = s.u64_or(
        p,
        "post_timeout_ms",
        1,
        TIMEOUT_MS_LIMIT,
        defaults::POST_TIMEOUT_MS,
    );
    let verticals = s.vertical_refs(p, "verticals", vertical_by_name);

    let states_include = states(p, &mut s, "states_include");
    let states_exclude = states(p, &mut s, "states_exclude");
    for (path, state) in &states_exclude {
        if states_include.iter().any(|(_, inc)| inc == state) {
            p.at(path, format!("{state:?} is also in states_include"));
        }
    }
    let zip_prefixes = s.str_list(p, "zip_prefixes");
    for (path, prefix) in &zip_prefixes {
        if !(1..=5).contains(&prefix.len()) || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            p.at(path, "must be 1 to 5 digits");
        }
    }
    no_duplicates(p, &zip_prefixes);

    let timezone = match s.str_opt(p, "timezone") {
        None => chrono_tz::Tz::UTC,
        Some(tz) => tz.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            p.at(
                &s.path_of("timezone"),
                format!("unknown time zone {tz:?} (an IANA name such as \"America/Chicago\")"),
            );
            chrono_tz::Tz::UTC
        }),
    };
    let schedule = s
        .opt("schedule")
        .and_then(|(path, v)| read_schedule(p, path, v));
    let score_floor = s
        .int_opt(p, "score_floor", 0, 100)
        .and_then(|f| u8::try_from(f).ok());

    let mut c = s.section_or_empty(p, "caps");
    let cap_max = i64::from(u32::MAX);
    let mut caps = Caps {
        hourly: c.u32_opt(p, "hourly", 1, cap_max),
        daily: c.u32_opt(p, "daily", 1, cap_max),
        weekly: c.u32_opt(p, "weekly", 1, cap_max),
        monthly: c.u32_opt(p, "monthly", 1, cap_max),
        budget_daily: None,
    };
    c.finish(p);
    caps.budget_daily = s.money_opt(p, "budget_daily");

    let allow_plaintext = s.bool_or(p, "allow_plaintext", false);
    if !allow_plaintext {
        for (key, url) in [
            ("ping_url", ping_url.as_deref()),
            ("post_url", post_url.as_deref()),
        ] {
            if let Some(url) = url {
                if !plaintext_allowed(url) {
                    p.at(
                        &s.path_of(key),
                        "is http:// to a host that is not loopback: full leads would travel in cleartext; use https://, or set allow_plaintext = true for this buyer",
                    );
                }
            }
        }
    }
    let fixed_price = s.money_opt(p, "fixed_price");
    match (s.has("ping_url"), s.has("fixed_price")) {
        (false, false) => p.at(
            &s.path_of("fixed_price"),
            "is required for a buyer without ping_url (a fixed-price buyer); a pinged buyer needs ping_url",
        ),
        (true, true) => p.at(
            &s.path_of("fixed_price"),
            "applies only to a buyer without ping_url; a pinged buyer's price is its bid",
        ),
        _ => {}
    }
    s.finish(p);

    if p.len() > before {
        return None;
    }
    Some(Buyer {
        id: id.to_string(),
        key: BuyerKey::default(),
        name,
        ping_url,
        post_url: post_url?,
        http,
        secret_env: secret_env?.to_string(),
        secret: secret?,
        ping_timeout_ms,
        post_timeout_ms,
        verticals,
        states_include: states_include
            .into_iter()
            .map(|(_, st)| st.to_string())
            .collect(),
        states_exclude: states_exclude
            .into_iter()
            .map(|(_, st)| st.to_string())
            .collect(),
        zip_prefixes: zip_prefixes
            .into_iter()
            .map(|(_, z)| z.to_string())
            .collect(),
        timezone,
        schedule,
        score_floor,
        caps,
        fixed_price,
        allow_plaintext,
    })
}

/// Whether `url` may be used without `allow_plaintext`: `https://`, or `http://` to a
/// loopback host (127.0.0.0/8, ::1, localhost).
fn plaintext_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return true; // Reported by check_url.
    };
    if uri.scheme_str() != Some("http") {
        return true;
    }
    let host = uri.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An `http://` or `https://` URL with a host.
fn check_url(p: &mut Problems, path: &str, url: &str) -> Option<String> {
    let uri = match url.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(_) => {
            p.at(
                path,
                "must be an http:// or https:// URL such as \"https://buyer.example/ping\"",
            );
            return None;
        }
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        p.at(
            path,
            "must be an http:// or https:// URL such as \"https://buyer.example/ping\"",
        );
        return None;
    }
    if uri.host().is_none_or(str::is_empty) {
        p.at(path, "must name a host");
        return None;
    }
    Some(url.to_string())
}

/// Reads the signing secret from the environment. Messages name the variable, never its value.
fn read_secret(
    p: &mut Problems,
    path: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Secret> {
    let valid_name = !var.is_empty()
        && !var.starts_with(|c: char| c.is_ascii_digit())
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid_name {
        p.at(
            path,
            "must be an environment variable name (letters, digits and _)",
        );
        return None;
    }
    let Some(text) = env(var) else {
        p.at(path, format!("environment variable {var} is not set"));
        return None;
    };
    match Secret::new(&text) {
        Ok(secret) => Some(secret),
        Err(_) => {
            p.at(path, format!("environment variable {var} does not hold a valid secret (empty, or not base64 after whsec_)"));
            None
        }
    }
}

fn states<'a>(p: &mut Problems, s: &mut Section<'a>, key: &'static str) -> Vec<(String, &'a str)> {
    let list = s.str_list(p, key);
    for (path, state) in &list {
        if !is_us_state(state) {
            p.at(
                path,
                format!("{state:?} is not a US state code (two upper-case letters such as \"TX\")"),
            );
        }
    }
    no_duplicates(p, &list);
    list
}

fn read_schedule(p: &mut Problems, path: String, v: &Value) -> Option<WeeklySchedule> {
    let Some(table) = v.as_table() else {
        p.at(
            &path,
            "must be a table of days such as { mon = [\"08:00-20:00\"] }",
        );
        return None;
    };
    let mut s = Section::new(path, Some(table));
    let mut days: [Vec<MinuteRange>; 7] = Default::default();
    for (day, ranges) in DAYS.iter().zip(days.iter_mut()) {
        if let Some((day_path, v)) = s.opt(day) {
            *ranges = read_day(p, &day_path, v);
        }
    }
    s.finish_with_hint(p, "days are mon, tue, wed, thu, fri, sat, sun");
    Some(WeeklySchedule { days })
}

/// One day's open ranges, sorted; overlapping ranges are recorded.
fn read_day(p: &mut Problems, path: &str, v: &Value) -> Vec<MinuteRange> {
    let mut ranges = Vec::new();
    for (item_path, text) in str_list(p, path, v) {
        match parse_range(text) {
            Ok(r) => ranges.push(r),
            Err(why) => p.at(&item_path, why),
        }
    }
    ranges.sort_by_key(|r| (r.start, r.end));
    for pair in ranges.windows(2) {
        if let [a, b] = pair {
            if b.start < a.end {
                p.at(
                    path,
                    format!("ranges {} and {} overlap", show_range(*a), show_range(*b)),
                );
            }
        }
    }
    ranges
}

/// `"HH:MM-HH:MM"`, end after start; the end may be `24:00`.
fn parse_range(text: &str) -> Result<MinuteRange, String> {
    let shape = || format!("{text:?} must be a range \"HH:MM-HH:MM\" such as \"08:00-20:00\"");
    let (start, end) = text.split_once('-').ok_or_else(shape)?;
    let start = parse_clock(start.trim())
        .filter(|&m| m < MINUTES_PER_DAY)
        .ok_or_else(shape)?;
    let end = parse_clock(end.trim()).ok_or_else(shape)?;
    if start >= end {
        return Err(format!(
            "{text:?} must end after it starts (split a range that crosses midnight in two)"
        ));
    }
    Ok(MinuteRange { start, end })
}

/// `HH:MM` as minutes after midnight, `00:00` to `24:00`.
fn parse_clock(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= MINUTES_PER_DAY).then_some(minutes)
}

fn show_range(r: MinuteRange) -> String {
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        r.start / 60,
        r.start % 60,
        r.end / 60,
        r.end % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

    fn demo_env(name: &str) -> Option<String> {
        name.strip_prefix("PINGPOST_DEMO_SECRET_")
            .map(|n| format!("demo-secret-{n}"))
    }

    const KEY: &str = "19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176";

    /// A small valid configuration. Tests splice extra lines in at the `#SERVER`,
    /// `#VERTICAL`, `#FIELD`, `#SELLER` and `#BUYER` markers.
    const BASE: &str = r#"
[server]
#SERVER

[verticals.auto]
#VERTICAL
[verticals.auto.fields]
state = { type = "state", required = true, ping = true }
phone = { type = "phone", required = true, pii = true }
[verticals.auto.fields.extra]
#FIELD

[sellers.s1]
key_sha256 = "19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176"
verticals = ["auto"]
payout = { model = "revenue_share", share_pct = 80 }
#SELLER

[buyers.acme]
ping_url = "http://127.0.0.1:9101/ping"
post_url = "http://127.0.0.1:9101/post"
secret_env = "ACME_SECRET"
verticals = ["auto"]
#BUYER
"#;

    fn test_env(name: &str) -> Option<String> {
        match name {
            "ACME_SECRET" => Some("top-secret-value".into()),
            "BAD_SECRET" => Some("whsec_!!!not-base64".into()),
            "EMPTY_SECRET" => Some(String::new()),
            _ => None,
        }
    }

    /// BASE with `edits` spliced in; the extra field defaults to a plain string.
    fn doc(edits: &[(&str, &str)]) -> String {
        let mut text = BASE.to_string();
        let field_set = edits.iter().any(|(m, _)| *m == "#FIELD");
        if !field_set {
            text = text.replace("#FIELD", "type = \"string\"");
        }
        for (marker, lines) in edits {
            text = text.replace(marker, lines);
        }
        text
    }

    fn load(edits: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        load_str_with_env(&doc(edits), &test_env)
    }

    fn errors(edits: &[(&str, &str)]) -> Vec<String> {
        match load(edits) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    fn ok(edits: &[(&str, &str)]) -> Config {
        match load(edits) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    #[test]
    fn default_config_loads() {
        let config = load_str_with_env(DEFAULT_TOML, &demo_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            config.server.ledger_path,
            PathBuf::from("pingpost-ledger.jsonl")
        );

        let (vi, auto) = config.vertical("auto_insurance").unwrap();
        assert_eq!(vi, 0);
        assert_eq!(auto.auction_deadline_ms, 150);
        assert_eq!(auto.floor, Micros(1_000_000));
        assert_eq!(auto.currency, "USD");
        let names: Vec<_> = auto.schema.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "state",
                "zip",
                "age",
                "homeowner",
                "credit",
                "insured",
                "vehicle_year",
                "city",
                "first_name",
                "last_name",
                "phone",
                "email",
                "street_address",
                "birth_date"
            ]
        );
        for f in &auto.schema.fields {
            assert!(!(f.ping && f.pii), "{}", f.name);
        }
        assert!(matches!(
            auto.schema.field("age").unwrap().kind,
            FieldKind::Integer { min: 16, max: 120 }
        ));
        assert!(
            auto.schema.field("phone").unwrap().required && auto.schema.field("phone").unwrap().pii
        );

        let digest: [u8; 32] = Sha256::digest(b"demo-seller-key").into();
        let seller = &config.sellers[config.seller_by_key_sha256[&digest]];
        assert_eq!(seller.id, "demo");
        assert_eq!(seller.payout, PayoutModel::RevenueShare { share_bp: 8000 });

        assert_eq!(config.buyers.len(), 5);
        assert_eq!(config.buyers_by_vertical, vec![vec![0, 1, 2, 3, 4]]);
        let pinged: Vec<_> = config
            .buyers
            .iter()
            .filter(|b| b.ping_url.is_some())
            .collect();
        assert_eq!(pinged.len(), 4);
        assert!(pinged.iter().any(|b| b.http == HttpVersion::Http2));
        assert!(pinged.iter().any(|b| b.schedule.is_some()));
        let fixed: Vec<_> = config
            .buyers
            .iter()
            .filter(|b| b.fixed_price.is_some())
            .collect();
        assert_eq!(fixed.len(), 1);
        assert_eq!(fixed[0].fixed_price, Some(Micros(4_000_000)));
        assert_eq!(fixed[0].post_url, "http://127.0.0.1:9105/post");
        // The demo must always sell a TX lead: two pinged buyers that are always open for TX.
        let tx_always = pinged
            .iter()
            .filter(|b| b.schedule.is_none())
            .filter(|b| b.states_include.is_empty() || b.states_include.iter().any(|s| s == "TX"))
            .filter(|b| !b.states_exclude.iter().any(|s| s == "TX"))
            .filter(|b| b.zip_prefixes.is_empty())
            .count();
        assert!(tx_always >= 2);
        let zones: Vec<_> = config.buyers.iter().map(|b| b.timezone.name()).collect();
        for tz in [
            "America/Chicago",
            "America/New_York",
            "America/Los_Angeles",
            "UTC",
        ] {
            assert!(zones.contains(&tz), "{tz}");
        }
    }

    #[test]
    fn default_config_without_secrets_names_each_variable() {
        let err = load_str_with_env(DEFAULT_TOML, &|_| None).unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        for (i, e) in err.0.iter().enumerate() {
            assert!(
                e.contains(".secret_env: environment variable PINGPOST_DEMO_SECRET_"),
                "{e}"
            );
            assert!(e.ends_with(&format!("_{} is not set", i + 1)), "{e}");
        }
    }

    #[test]
    fn the_minimal_file_in_the_docs_loads() {
        let docs = include_str!("../../../docs/CONFIGURATION.md");
        let after = docs.split("## A minimal file").nth(1).unwrap();
        let toml = after
            .split("```toml")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let env = |name: &str| (name == "ACME_WEBHOOK_SECRET").then(|| "s".to_string());
        let c = load_str_with_env(toml, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.verticals.len(), c.sellers.len(), c.buyers.len()),
            (1, 1, 1)
        );
    }

    #[test]
    fn base_loads() {
        let c = ok(&[]);
        assert_eq!(c.server.body_bytes_max, defaults::BODY_BYTES_MAX);
        assert_eq!(c.server.breaker.failures, defaults::BREAKER_FAILURES);
        assert_eq!(c.verticals[0].currency, defaults::CURRENCY);
        assert_eq!(
            c.verticals[0].auction_deadline_ms,
            defaults::AUCTION_DEADLINE_MS
        );
        assert_eq!(c.verticals[0].floor, Micros::ZERO);
        let b = &c.buyers[0];
        assert_eq!(b.name, "acme");
        assert_eq!(b.http, HttpVersion::Http1);
        assert_eq!(b.timezone, chrono_tz::Tz::UTC);
        assert_eq!(b.ping_timeout_ms, defaults::PING_TIMEOUT_MS);
        assert_eq!(b.post_timeout_ms, defaults::POST_TIMEOUT_MS);
        assert_eq!(b.schedule, None);
        assert_eq!(b.caps, Caps::default());
        assert_eq!(c.sellers[0].name, "s1");
        assert!(matches!(
            c.verticals[0].schema.fields[2].kind,
            FieldKind::String {
                len_max: STRING_LEN_MAX_DEFAULT,
                pattern: None
            }
        ));
        assert!(default_listen() == defaults::LISTEN.parse().unwrap());
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let text = format!(
            r#"
[server]
listen = "localhost"
[server.breaker]
failures = 0

[verticals.auto]
currency = "usd"
[verticals.auto.fields]
state = {{ type = "state", required = true, ping = true }}
phone = {{ type = "phone", required = true, pii = true, ping = true }}

[sellers.s1]
key_sha256 = "{KEY}"
verticals = ["auto"]
payout = {{ model = "revenue_share", share_pct = 80 }}
colour = "red"

[buyers.acme]
ping_url = "ftp://127.0.0.1/ping"
post_url = "http://127.0.0.1:9101/post"
secret_env = "ACME_SECRET"
ping_timeout_ms = 0
verticals = ["auto", "boats"]
schedule = {{ mon = ["20:00-08:00"] }}
"#
        );
        let err = load_str_with_env(&text, &test_env).unwrap_err();
        assert_eq!(
            err.0,
            [
                "server.listen: must be a socket address such as \"127.0.0.1:8080\"",
                "server.breaker.failures: must be a whole number between 1 and 10000",
                "verticals.auto.currency: must be three upper-case letters such as \"USD\"",
                "verticals.auto.fields.phone.ping: must be false for a PII field: personal data never travels in a ping",
                "sellers.s1.colour: unknown key",
                "buyers.acme.ping_url: must be an http:// or https:// URL such as \"https://buyer.example/ping\"",
                "buyers.acme.ping_timeout_ms: must be a whole number between 1 and 60000",
                "buyers.acme.verticals[1]: unknown vertical \"boats\"",
                "buyers.acme.schedule.mon[0]: \"20:00-08:00\" must end after it starts (split a range that crosses midnight in two)",
            ]
        );
        // Display: one problem a line.
        assert_eq!(err.to_string().lines().count(), 9);
    }

    #[test]
    fn syntax_error_is_one_error_with_its_line() {
        let err = load_str_with_env(
            "[server]\nlisten = \"127.0.0.1:8080\"\nbody_bytes_max = = 3\n",
            &test_env,
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].starts_with("line 3, column "), "{}", err.0[0]);
        let err = load_str_with_env("a = 1\na = 2\n", &test_env).unwrap_err();
        assert!(err.0[0].starts_with("line 2"), "{}", err.0[0]);
        let err = load_str_with_env("x = [1,\n", &test_env).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(!err.0[0].contains('\n'), "{}", err.0[0]);
    }

    #[test]
    fn missing_sections_and_keys() {
        assert_eq!(
            load_str_with_env("", &test_env).unwrap_err().0,
            ["verticals: is required: at least one [verticals.NAME] table"]
        );
        assert_eq!(
            load_str_with_env("verticals = {}", &test_env)
                .unwrap_err()
                .0,
            ["verticals: must define at least one vertical"]
        );
        assert_eq!(
            load_str_with_env("[verticals.auto]", &test_env).unwrap_err().0,
            ["verticals.auto.fields: is required: at least one [verticals.NAME.fields.FIELD] table"]
        );
        let text = r#"
[verticals.auto.fields]
state = { type = "state" }
[sellers.s1]
[buyers.b1]
"#;
        assert_eq!(
            load_str_with_env(text, &test_env).unwrap_err().0,
            [
                "sellers.s1.key_sha256: is required",
                "sellers.s1.verticals: is required",
                "sellers.s1.payout: is required",
                "buyers.b1.post_url: is required",
                "buyers.b1.secret_env: is required",
                "buyers.b1.verticals: is required",
                "buyers.b1.fixed_price: is required for a buyer without ping_url (a fixed-price buyer); a pinged buyer needs ping_url",
            ]
        );
    }

    #[test]
    fn unknown_keys_at_every_level() {
        assert_eq!(
            errors(&[
                ("#SERVER", "colour = 1\nlisen = \"127.0.0.1:1\"\n[server.breaker]\nfailure = 3"),
                ("#VERTICAL", "flor = 1"),
                ("#FIELD", "type = \"string\"\nrequird = true"),
                ("#SELLER", "verticalz = []"),
                ("#BUYER", "caps = { daly = 3 }\nschedule = { monday = [] }\nping_timout_ms = 5"),
            ]),
            [
                "server.breaker.failure: unknown key (did you mean failures?)",
                "server.colour: unknown key",
                "server.lisen: unknown key (did you mean listen?)",
                "verticals.auto.fields.extra.requird: unknown key (did you mean required?)",
                "verticals.auto.flor: unknown key (did you mean floor?)",
                "sellers.s1.verticalz: unknown key (did you mean verticals?)",
                "buyers.acme.schedule.monday: unknown key (days are mon, tue, wed, thu, fri, sat, sun)",
                "buyers.acme.caps.daly: unknown key (did you mean daily?)",
                "buyers.acme.ping_timout_ms: unknown key (did you mean ping_timeout_ms?)",
            ]
        );
        assert_eq!(
            load_str_with_env(
                "[verticals.a.fields]\nx = { type = \"zip\" }\n[extra]",
                &test_env
            )
            .unwrap_err()
            .0,
            ["extra: unknown key"]
        );
    }

    #[test]
    fn server_keys() {
        let c = ok(&[(
            "#SERVER",
            "listen = \"0.0.0.0:9000\"\nbody_bytes_max = 2048\nheader_read_timeout_ms = 7\nrequests_in_flight_max = 8\n\
             connections_max = 9\nshutdown_grace_ms = 0\nquote_ttl_ms = 11\nquotes_open_max = 12\nidempotency_ttl_ms = 13\n\
             idempotency_keys_max = 14\nledger_path = \"/tmp/l.jsonl\"\nbuyers_per_auction_max = 15\nresponse_reserve_ms = 16\n\
             post_attempts_max = 17\nbreaker = { failures = 18, open_ms = 19, probe_interval_ms = 20 }",
        )]);
        let s = &c.server;
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            (
                s.body_bytes_max,
                s.header_read_timeout_ms,
                s.requests_in_flight_max,
                s.connections_max
            ),
            (2048, 7, 8, 9)
        );
        assert_eq!(
            (s.shutdown_grace_ms, s.quote_ttl_ms, s.quotes_open_max),
            (0, 11, 12)
        );
        assert_eq!((s.idempotency_ttl_ms, s.idempotency_keys_max), (13, 14));
        assert_eq!(s.ledger_path, PathBuf::from("/tmp/l.jsonl"));
        assert_eq!(
            (
                s.buyers_per_auction_max,
                s.response_reserve_ms,
                s.post_attempts_max
            ),
            (15, 16, 17)
        );
        assert_eq!(
            s.breaker,
            BreakerConfig {
                enabled: true,
                failures: 18,
                open_ms: 19,
                probe_interval_ms: 20
            }
        );

        assert_eq!(
            errors(&[(
                "#SERVER",
                "body_bytes_max = 10\nledger_path = \"\"\nresponse_reserve_ms = \"2\"\nbreaker = 5"
            )]),
            [
                "server.body_bytes_max: must be a whole number between 1024 and 16777216",
                "server.ledger_path: must not be empty",
                "server.response_reserve_ms: must be a whole number between 0 and 10000",
                "server.breaker: must be a table",
            ]
        );
        assert_eq!(
            errors(&[("#SERVER", "response_reserve_ms = 200")]),
            ["verticals.auto.auction_deadline_ms: must be more than server.response_reserve_ms (200 ms), which is kept back to answer the seller"]
        );
    }

    #[test]
    fn vertical_keys() {
        let c = ok(&[(
            "#VERTICAL",
            "currency = \"EUR\"\nauction_deadline_ms = 300\nfloor = 1.25",
        )]);
        let v = &c.verticals[0];
        assert_eq!(
            (v.currency.as_str(), v.auction_deadline_ms, v.floor),
            ("EUR", 300, Micros(1_250_000))
        );
        assert_eq!(
            errors(&[("#VERTICAL", "auction_deadline_ms = 60001\nfloor = -1")]),
            [
                "verticals.auto.auction_deadline_ms: must be a whole number between 1 and 60000",
                "verticals.auto.floor: must not be negative",
            ]
        );
    }

    #[test]
    fn field_types_and_their_checks() {
        let field = |lines: &str| errors(&[("#FIELD", lines)]);
        let kind = |lines: &str| {
            ok(&[("#FIELD", lines)]).verticals[0].schema.fields[2]
                .kind
                .clone()
        };

        assert!(matches!(
            kind("type = \"integer\"\nmin = 16\nmax = 120"),
            FieldKind::Integer { min: 16, max: 120 }
        ));
        assert!(matches!(
            kind("type = \"integer\""),
            FieldKind::Integer {
                min: i64::MIN,
                max: i64::MAX
            }
        ));
        assert!(
            matches!(kind("type = \"number\"\nmin = 0\nmax = 2.5"), FieldKind::Number { min, max } if min == 0.0 && max == 2.5)
        );
        assert!(matches!(
            kind("type = \"string\"\nlen_max = 5"),
            FieldKind::String {
                len_max: 5,
                pattern: None
            }
        ));
        for (t, k) in [
            ("boolean", "Boolean"),
            ("state", "State"),
            ("zip", "Zip"),
            ("date", "Date"),
        ] {
            assert_eq!(format!("{:?}", kind(&format!("type = \"{t}\""))), k);
        }
        match kind("type = \"enum\"\nvalues = [\"a\", \"b\"]") {
            FieldKind::Enum(v) => assert_eq!(v, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        // Patterns are anchored: they must match the whole value.
        match kind("type = \"string\"\npattern = \"[A-Z]{2}\"") {
            FieldKind::String {
                pattern: Some(re), ..
            } => {
                assert!(re.is_match("AB"));
                assert!(!re.is_match("xABx"));
            }
            other => panic!("{other:?}"),
        }
        let spec = &ok(&[("#FIELD", "type = \"email\"\nrequired = true\npii = true")]).verticals[0]
            .schema
            .fields[2];
        assert!(spec.required && spec.pii && !spec.ping);

        let p = "verticals.auto.fields.extra";
        assert_eq!(
            field("type = \"colour\""),
            [format!(
                "{p}.type: unknown type \"colour\" (one of {FIELD_TYPES})"
            )]
        );
        assert_eq!(field("required = true"), [format!("{p}.type: is required")]);
        assert_eq!(
            field("type = \"integer\"\nmin = 5\nmax = 1"),
            [format!("{p}.max: must be at least min (5)")]
        );
        assert_eq!(
            field("type = \"number\"\nmin = \"x\""),
            [format!("{p}.min: must be a finite number")]
        );
        assert_eq!(
            field("type = \"string\"\nlen_max = 0"),
            [format!(
                "{p}.len_max: must be a whole number between 1 and 1024"
            )]
        );
        assert_eq!(
            field("type = \"enum\""),
            [format!("{p}.values: is required")]
        );
        assert_eq!(
            field("type = \"enum\"\nvalues = []"),
            [format!("{p}.values: must list at least one value")]
        );
        assert_eq!(
            field("type = \"enum\"\nvalues = [\"a\", \"\", 3, \"a\"]"),
            [
                format!("{p}.values[2]: must be a string"),
                format!("{p}.values[1]: must not be empty"),
                format!("{p}.values[3]: \"a\" is listed twice"),
            ]
        );
        assert_eq!(
            field("type = \"zip\"\nmin = 3\nvalues = []"),
            [
                format!("{p}.min: does not apply to a zip field"),
                format!("{p}.values: does not apply to a zip field")
            ]
        );
        assert_eq!(
            field("type = \"phone\"\nping = true"),
            [format!(
                "{p}.pii: must be true for a phone field: it is personal data"
            )]
        );
        assert_eq!(
            field("type = \"string\"\nrequired = \"yes\""),
            [format!("{p}.required: must be true or false")]
        );
        let bad = field("type = \"string\"\npattern = \"[a-\"");
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].starts_with(&format!("{p}.pattern: is not a valid regular expression: ")),
            "{}",
            bad[0]
        );
        assert!(!bad[0].contains('\n'));
        assert_eq!(
            load_str_with_env("[verticals.a.fields.\"bad name\"]\ntype = \"zip\"", &test_env).unwrap_err().0,
            ["verticals.a.fields.\"bad name\": the name must be 1 to 64 letters, digits, '_' or '-'"]
        );
    }

    #[test]
    fn field_order_is_file_order() {
        let text = "[verticals.v.fields]\nzz = { type = \"zip\" }\naa = { type = \"state\" }\n[verticals.v.fields.mm]\ntype = \"date\"";
        let c = load_str_with_env(text, &test_env).unwrap();
        let names: Vec<_> = c.verticals[0]
            .schema
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["zz", "aa", "mm"]);
    }

    #[test]
    fn seller_keys() {
        let c = ok(&[(
            "#SELLER",
            "name = \"Seller One\"\nreserve = \"0.75\"\nrate_per_s = 50",
        )]);
        let s = &c.sellers[0];
        assert_eq!(
            (s.name.as_str(), s.reserve, s.rate_per_s),
            ("Seller One", Some(Micros(750_000)), Some(50))
        );
        assert_eq!(s.verticals, [0]);

        let with_payout = |payout: &str| {
            load_str_with_env(
                &doc(&[]).replace("{ model = \"revenue_share\", share_pct = 80 }", payout),
                &test_env,
            )
        };
        let payout = |text: &str| with_payout(text).map(|c| c.sellers[0].payout);
        assert_eq!(
            payout("{ model = \"revenue_share\", share_pct = 82.5 }"),
            Ok(PayoutModel::RevenueShare { share_bp: 8250 })
        );
        assert_eq!(
            payout("{ model = \"revenue_share\", share_pct = 100 }"),
            Ok(PayoutModel::RevenueShare { share_bp: 10_000 })
        );
        assert_eq!(
            payout("{ model = \"fixed_margin\", margin = 2.00 }"),
            Ok(PayoutModel::FixedMargin {
                margin: Micros(2_000_000)
            })
        );
        let pct = "sellers.s1.payout.share_pct: must be a percentage between 0 and 100 with at most two decimals, such as 82.5";
        assert_eq!(
            payout("{ model = \"revenue_share\", share_pct = 82.555 }")
                .unwrap_err()
                .0,
            [pct]
        );
        assert_eq!(
            payout("{ model = \"revenue_share\", share_pct = 101 }")
                .unwrap_err()
                .0,
            [pct]
        );
        assert_eq!(
            payout("{ model = \"revenue_share\", share_pct = -5 }")
                .unwrap_err()
                .0,
            [pct]
        );
        assert_eq!(
            payout("{ model = \"revenue_share\", margin = 1 }")
                .unwrap_err()
                .0,
            [
                "sellers.s1.payout.share_pct: is required",
                "sellers.s1.payout.margin: unknown key"
            ]
        );
        assert_eq!(
            payout("{ model = \"cpa\" }").unwrap_err().0,
            ["sellers.s1.payout.model: unknown payout model \"cpa\" (revenue_share or fixed_margin)"]
        );
        assert_eq!(
            payout("\"80%\"").unwrap_err().0,
            ["sellers.s1.payout: must be a table such as { model = \"revenue_share\", share_pct = 80 }"]
        );

        let bad = doc(&[("#SELLER", "rate_per_s = 0\nname = \"\"")]).replace(KEY, "abc");
        assert_eq!(
            load_str_with_env(&bad, &test_env).unwrap_err().0,
            [
                "sellers.s1.name: must be 1 to 200 characters",
                "sellers.s1.key_sha256: must be 64 hex digits: the SHA-256 of the seller's key",
                "sellers.s1.rate_per_s: must be a whole number between 1 and 1000000",
            ]
        );
        let no_verticals =
            doc(&[]).replace("verticals = [\"auto\"]\npayout", "verticals = []\npayout");
        assert_eq!(
            load_str_with_env(&no_verticals, &test_env).unwrap_err().0,
            ["sellers.s1.verticals: must name at least one vertical"]
        );
    }

    #[test]
    fn duplicate_seller_keys() {
        let extra = format!(
            "\n[sellers.s2]\nkey_sha256 = \"{}\"\nverticals = [\"auto\"]\npayout = {{ model = \"fixed_margin\", margin = 1 }}\n",
            KEY.to_uppercase()
        );
        let text = doc(&[]) + &extra;
        assert_eq!(
            load_str_with_env(&text, &test_env).unwrap_err().0,
            ["sellers.s2.key_sha256: the same key as sellers.s1"]
        );
    }

    #[test]
    fn buyer_keys() {
        let c = ok(&[(
            "#BUYER",
            "name = \"Acme Insurance LLC\"\nhttp = \"2\"\nping_timeout_ms = 80\npost_timeout_ms = 900\n\
             states_include = [\"TX\", \"OK\"]\nzip_prefixes = [\"761\", \"75\"]\ntimezone = \"America/Chicago\"\n\
             score_floor = 40\ncaps = { hourly = 1, daily = 2, weekly = 3, monthly = 4 }\nbudget_daily = 500",
        )]);
        let b = &c.buyers[0];
        assert_eq!(b.name, "Acme Insurance LLC");
        assert_eq!(b.http, HttpVersion::Http2);
        assert_eq!((b.ping_timeout_ms, b.post_timeout_ms), (80, 900));
        assert_eq!(b.states_include, ["TX", "OK"]);
        assert_eq!(b.zip_prefixes, ["761", "75"]);
        assert_eq!(b.timezone, chrono_tz::America::Chicago);
        assert_eq!(b.score_floor, Some(40));
        assert_eq!(
            b.caps,
            Caps {
                hourly: Some(1),
                daily: Some(2),
                weekly: Some(3),
                monthly: Some(4),
                budget_daily: Some(Micros(500_000_000))
            }
        );
        assert_eq!(b.secret_env, "ACME_SECRET");
        assert_eq!(
            b.secret.sign("id", 1, b"x"),
            Secret::new("top-secret-value").unwrap().sign("id", 1, b"x")
        );
        assert_eq!(c.buyers_by_vertical, [vec![0]]);

        let p = "buyers.acme";
        assert_eq!(
            errors(&[(
                "#BUYER",
                "http = \"3\"\npost_timeout_ms = 60001\nstates_include = [\"TX\", \"tx\", \"TX\"]\nstates_exclude = [\"TX\", \"CA\"]\n\
                 zip_prefixes = [\"7618a\", \"\", \"123456\"]\ntimezone = \"Mars/Olympus\"\nscore_floor = 101\n\
                 caps = { hourly = 0, daily = -1 }\nbudget_daily = 0.0000001"
            )]),
            [
                format!("{p}.http: must be \"1.1\" or \"2\""),
                format!("{p}.post_timeout_ms: must be a whole number between 1 and 60000"),
                format!("{p}.states_include[1]: \"tx\" is not a US state code (two upper-case letters such as \"TX\")"),
                format!("{p}.states_include[2]: \"TX\" is listed twice"),
                format!("{p}.states_exclude[0]: \"TX\" is also in states_include"),
                format!("{p}.zip_prefixes[0]: must be 1 to 5 digits"),
                format!("{p}.zip_prefixes[1]: must be 1 to 5 digits"),
                format!("{p}.zip_prefixes[2]: must be 1 to 5 digits"),
                format!("{p}.timezone: unknown time zone \"Mars/Olympus\" (an IANA name such as \"America/Chicago\")"),
                format!("{p}.score_floor: must be a whole number between 0 and 100"),
                format!("{p}.caps.hourly: must be a whole number between 1 and 4294967295"),
                format!("{p}.caps.daily: must be a whole number between 1 and 4294967295"),
                format!("{p}.budget_daily: must have at most 6 decimal places"),
            ]
        );
        // Exclusions alone are fine.
        assert_eq!(
            ok(&[("#BUYER", "states_exclude = [\"CA\"]")]).buyers[0].states_exclude,
            ["CA"]
        );
    }

    #[test]
    fn buyer_urls() {
        let with_ping = |url: &str| {
            let text = doc(&[]).replace("http://127.0.0.1:9101/ping", url);
            load_str_with_env(&text, &test_env).map(|c| c.buyers[0].ping_url.clone())
        };
        assert_eq!(
            with_ping("https://buyer.example/v1/ping?x=1"),
            Ok(Some("https://buyer.example/v1/ping?x=1".into()))
        );
        let scheme = "buyers.acme.ping_url: must be an http:// or https:// URL such as \"https://buyer.example/ping\"";
        for bad in [
            "ftp://x/ping",
            "/ping",
            "127.0.0.1:9101/ping",
            "not a url",
            "",
        ] {
            assert_eq!(with_ping(bad).unwrap_err().0, [scheme], "{bad}");
        }
    }

    #[test]
    fn fixed_price_buyers() {
        let fixed = doc(&[("#BUYER", "fixed_price = 4.00")])
            .replace("ping_url = \"http://127.0.0.1:9101/ping\"\n", "");
        let c = load_str_with_env(&fixed, &test_env).unwrap();
        assert_eq!(
            (c.buyers[0].ping_url.as_deref(), c.buyers[0].fixed_price),
            (None, Some(Micros(4_000_000)))
        );
        assert_eq!(
            errors(&[("#BUYER", "fixed_price = 4")]),
            ["buyers.acme.fixed_price: applies only to a buyer without ping_url; a pinged buyer's price is its bid"]
        );
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        let run = |var: &str| {
            let text = doc(&[]).replace("\"ACME_SECRET\"", &format!("\"{var}\""));
            load_str_with_env(&text, &test_env).unwrap_err().0
        };
        assert_eq!(
            run("NOPE"),
            ["buyers.acme.secret_env: environment variable NOPE is not set"]
        );
        assert_eq!(
            run("BAD_SECRET"),
            ["buyers.acme.secret_env: environment variable BAD_SECRET does not hold a valid secret (empty, or not base64 after whsec_)"]
        );
        assert_eq!(
            run("EMPTY_SECRET"),
            ["buyers.acme.secret_env: environment variable EMPTY_SECRET does not hold a valid secret (empty, or not base64 after whsec_)"]
        );
        assert_eq!(run("A=B"), ["buyers.acme.secret_env: must be an environment variable name (letters, digits and _)"]);
        for e in run("BAD_SECRET").iter().chain(&run("NOPE")) {
            assert!(
                !e.contains("not-base64") && !e.contains("top-secret"),
                "{e}"
            );
        }
        // Debug of a loaded config does not show the secret either.
        assert!(!format!("{:?}", ok(&[])).contains("top-secret-value"));
    }

    #[test]
    fn vertical_references() {
        let text = doc(&[]).replace(
            "verticals = [\"auto\"]\n#BUYER",
            "verticals = [\"auto\", \"auto\", 3, \"boats\"]\n",
        );
        assert_eq!(
            load_str_with_env(&text, &test_env).unwrap_err().0,
            [
                "buyers.acme.verticals[2]: must be a string",
                "buyers.acme.verticals[1]: \"auto\" is listed twice",
                "buyers.acme.verticals[3]: unknown vertical \"boats\"",
            ]
        );
        // A broken vertical does not make its users "unknown" too.
        let errs = errors(&[("#VERTICAL", "currency = 1")]);
        assert_eq!(errs, ["verticals.auto.currency: must be a string"]);
    }

    #[test]
    fn buyers_by_vertical_is_ascending() {
        let text = r#"
[verticals.a.fields]
x = { type = "zip" }
[verticals.b.fields]
x = { type = "zip" }
[buyers.one]
post_url = "https://h/post"
fixed_price = 1
secret_env = "ACME_SECRET"
verticals = ["b"]
[buyers.two]
post_url = "https://h/post"
fixed_price = 1
secret_env = "ACME_SECRET"
verticals = ["b", "a"]
[buyers.three]
post_url = "https://h/post"
fixed_price = 1
secret_env = "ACME_SECRET"
verticals = ["a", "b"]
"#;
        let c = load_str_with_env(text, &test_env).unwrap();
        assert_eq!(c.buyers_by_vertical, [vec![1, 2], vec![0, 1, 2]]);
        assert_eq!(c.vertical_by_name["b"], 1);
        assert_eq!(c.buyers[1].verticals, [1, 0]);
    }

    #[test]
    fn money_forms_are_exact() {
        let floor =
            |v: &str| load(&[("#VERTICAL", &format!("floor = {v}"))]).map(|c| c.verticals[0].floor);
        assert_eq!(floor("0.1"), Ok(Micros(100_000)));
        assert_eq!(floor("2.675"), Ok(Micros(2_675_000)));
        assert_eq!(floor("3"), Ok(Micros(3_000_000)));
        assert_eq!(floor("\"12.50\""), Ok(Micros(12_500_000)));
        assert_eq!(floor("0.000001"), Ok(Micros(1)));
        let shape = ["verticals.auto.floor: must be an amount of money such as 12.50"];
        assert_eq!(floor("\"twelve\"").unwrap_err().0, shape);
        assert_eq!(floor("true").unwrap_err().0, shape);
        assert_eq!(floor("nan").unwrap_err().0, shape);
        assert_eq!(floor("inf").unwrap_err().0, shape);
        assert_eq!(
            floor("1e10").unwrap_err().0,
            ["verticals.auto.floor: must be at most 1000000000"]
        );
    }

    #[test]
    fn schedules() {
        let schedule = |s: &str| {
            load(&[("#BUYER", &format!("schedule = {s}"))]).map(|c| c.buyers[0].schedule.clone())
        };
        let r = |start, end| MinuteRange { start, end };
        let week = schedule("{ mon = [\"13:00-24:00\", \"08:00-12:30\"], sun = [] }")
            .unwrap()
            .unwrap();
        assert_eq!(week.days[0], [r(480, 750), r(780, 1440)]);
        assert!(week.days[1..].iter().all(Vec::is_empty));
        // Touching ranges do not overlap (they are half-open).
        assert!(schedule("{ fri = [\"08:00-12:00\", \"12:00-13:00\"] }").is_ok());
        assert_eq!(
            schedule("{}").unwrap().unwrap().days,
            <[Vec<MinuteRange>; 7]>::default()
        );

        let p = "buyers.acme.schedule";
        assert_eq!(
            schedule("{ tue = [\"08:00-12:00\", \"11:00-13:00\"], wed = \"08:00-09:00\", thu = [\"8:00-9:00\", \"24:00-24:00\", \"10:00-10:00\"] }").unwrap_err().0,
            [
                format!("{p}.tue: ranges 08:00-12:00 and 11:00-13:00 overlap"),
                format!("{p}.wed: must be a list of strings"),
                format!("{p}.thu[0]: \"8:00-9:00\" must be a range \"HH:MM-HH:MM\" such as \"08:00-20:00\""),
                format!("{p}.thu[1]: \"24:00-24:00\" must be a range \"HH:MM-HH:MM\" such as \"08:00-20:00\""),
                format!("{p}.thu[2]: \"10:00-10:00\" must end after it starts (split a range that crosses midnight in two)"),
            ]
        );
        assert_eq!(
            schedule("\"weekdays\"").unwrap_err().0,
            [format!(
                "{p}: must be a table of days such as {{ mon = [\"08:00-20:00\"] }}"
            )]
        );
    }

    #[test]
    fn clock_and_range_parsing() {
        assert_eq!(parse_clock("00:00"), Some(0));
        assert_eq!(parse_clock("23:59"), Some(1439));
        assert_eq!(parse_clock("24:00"), Some(1440));
        for bad in [
            "24:01", "12:60", "1:00", "12:0", "ab:cd", "1200", "+1:00", "-1:00",
        ] {
            assert_eq!(parse_clock(bad), None, "{bad}");
        }
        assert_eq!(
            parse_range("08:00 - 20:00"),
            Ok(MinuteRange {
                start: 480,
                end: 1200
            })
        );
        assert!(parse_range("08:00").is_err());
        assert!(parse_range("08:00-20:00-21:00").is_err());
        assert_eq!(
            show_range(MinuteRange {
                start: 65,
                end: 1440
            }),
            "01:05-24:00"
        );
    }

    #[test]
    fn keys_with_odd_names_are_quoted_in_paths() {
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(join("", "b"), "b");
        assert_eq!(join("a", "b c"), "a.\"b c\"");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn load_file_reports_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = load_file_with_env(&missing, &test_env).unwrap_err();
        assert!(err.0[0].starts_with(&format!("{}: cannot read the file: ", missing.display())));
        let path = dir.path().join("ok.toml");
        std::fs::write(&path, doc(&[])).unwrap();
        assert!(load_file_with_env(&path, &test_env).is_ok());
    }
}
