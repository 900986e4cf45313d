//! The reader: [`Section`] (one table of the document, its key path and the keys read
//! from it), [`Problems`] (every error collected as `path: message`) and the value
//! helpers every section uses (whole numbers, money, string lists, names).

use std::collections::HashMap;
use std::fmt::Display;

use proto::money::MoneyError;
use proto::Micros;
use toml::{Table, Value};

use super::{DISPLAY_NAME_LEN_MAX, LIST_LEN_MAX, NAME_LEN_MAX};
use crate::config::VerticalIdx;

/// The refusal of a directory path with a space (or other white space) at its start or
/// end, which makes a directory of that name (black-box round 147a: `ledger_path = " "`
/// passed, for a ledger in a directory named by one space).
pub const EDGE_SPACE: &str =
    "starts or ends with white space, which would be part of the directory's name: write the path without it";

/// Problems found so far, each `path: message`.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn at(&mut self, path: &str, message: impl Display) {
        if path.is_empty() {
            self.0.push(message.to_string());
        } else {
            self.0.push(format!("{path}: {message}"));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// `parent.key`, quoting a key that is not a bare TOML key ([`toml_quoted`]).
pub(super) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        toml_quoted(key)
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `key` as a TOML basic string, so a path can be pasted back into the file (black-box
/// round 87a: Rust's `\u{202e}` is not TOML). `"` and `\` are escaped, so are the
/// control characters (`\n`, `\t`, `\u001B`) and every character Rust would not print
/// as itself (a text-direction override, `\u202E`): nothing raw reaches a terminal.
pub(super) fn toml_quoted(key: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(key.len() + 2);
    out.push('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\'' => out.push('\''),
            // Characters that print as nothing too, which Rust prints as themselves
            // (black-box round 184a: a Hangul filler was shown raw, and as `?` once the
            // problem line was made safe, so the value could not be pasted back).
            c if c.escape_debug().count() > 1
                || (c != ' ' && pingpost_core::config::invisible(c))
                || proto::error::is_hidden(c) =>
            {
                let n = u32::from(c);
                let _ = if n <= 0xFFFF {
                    write!(out, "\\u{n:04X}")
                } else {
                    write!(out, "\\U{n:08X}")
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as [`toml_quoted`] shows it, or, past 128 characters, "a `what` of N characters"
/// (black-box round 185a: a category of 1,025 characters filled the problem's line, and
/// its reason was cut off).
pub(super) fn quoted_or_size(s: &str, what: &str) -> String {
    let n = s.chars().count();
    if n > 128 {
        format!("a {what} of {n} characters")
    } else {
        toml_quoted(s)
    }
}

/// One table of the document, with its path and the keys read from it so far. Whatever
/// was not read by the time of [`Section::finish`] is an unknown key.
#[derive(Debug)]
pub(super) struct Section<'a> {
    path: String,
    /// `None` stands for an absent, optional table: every key is absent.
    pub(super) table: Option<&'a Table>,
    read: Vec<&'static str>,
}

impl<'a> Section<'a> {
    pub(super) fn new(path: String, table: Option<&'a Table>) -> Section<'a> {
        Section {
            path,
            table,
            read: Vec::new(),
        }
    }

    pub(super) fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.contains_key(key))
    }

    /// The value at `key` with its path, if present; marks `key` as known.
    pub(super) fn opt(&mut self, key: &'static str) -> Option<(String, &'a Value)> {
        self.read.push(key);
        let value = self.table?.get(key)?;
        Some((self.path_of(key), value))
    }

    /// Like [`Section::opt`], recording a problem when the key is absent.
    pub(super) fn req(
        &mut self,
        p: &mut Problems,
        key: &'static str,
    ) -> Option<(String, &'a Value)> {
        let found = self.opt(key);
        if found.is_none() {
            p.at(&self.path_of(key), "is required");
        }
        found
    }

    pub(super) fn str_opt(&mut self, p: &mut Problems, key: &'static str) -> Option<&'a str> {
        let (path, v) = self.opt(key)?;
        as_str(p, &path, v)
    }

    pub(super) fn str_req(&mut self, p: &mut Problems, key: &'static str) -> Option<&'a str> {
        let (path, v) = self.req(p, key)?;
        as_str(p, &path, v)
    }

    pub(super) fn bool_or(&mut self, p: &mut Problems, key: &'static str, default: bool) -> bool {
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
    pub(super) fn int_opt(
        &mut self,
        p: &mut Problems,
        key: &'static str,
        lo: i64,
        hi: i64,
    ) -> Option<i64> {
        let (path, v) = self.opt(key)?;
        whole(p, &path, v, lo, hi)
    }

    pub(super) fn u64_or(
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

    pub(super) fn usize_or(
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

    pub(super) fn u32_opt(
        &mut self,
        p: &mut Problems,
        key: &'static str,
        lo: i64,
        hi: i64,
    ) -> Option<u32> {
        self.int_opt(p, key, lo, hi)
            .and_then(|i| u32::try_from(i).ok())
    }

    pub(super) fn money_opt(&mut self, p: &mut Problems, key: &'static str) -> Option<Micros> {
        let (path, v) = self.opt(key)?;
        money(p, &path, v)
    }

    /// An optional sub-table; absent (or not a table, which is recorded) reads as empty.
    pub(super) fn section_or_empty(&mut self, p: &mut Problems, key: &'static str) -> Section<'a> {
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
    pub(super) fn entries(
        &mut self,
        p: &mut Problems,
        key: &'static str,
    ) -> Vec<(&'a str, Section<'a>)> {
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
        // Names told apart by letter case alone (`state` and `State`, `acme` and `Acme`)
        // are one name to a reader of a report or a log, and only one of two such fields
        // drives the geography filters (black-box round 181a): refused.
        let mut lower: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
        for (name, value) in table {
            let entry_path = join(&path, name);
            let twin = lower.insert(name.to_ascii_lowercase(), name);
            if let Some(twin) = twin.filter(|_| is_name(name)) {
                p.at(
                    &entry_path,
                    format!(
                        "differs from {} only in letter case: names must differ in more than case",
                        join(&path, twin)
                    ),
                );
            } else if !is_name(name) {
                p.at(
                    &entry_path,
                    format!(
                        "the name must be 1 to {NAME_LEN_MAX} ASCII letters, digits, '_' or '-'"
                    ),
                );
            } else if key != "fields" && name.eq_ignore_ascii_case("total") {
                // `ledger report` groups by day, seller, buyer and vertical and ends each
                // grouping with its `total` line: a party of that name could not be told
                // from it in CSV or in the table (black-box round 94b).
                p.at(
                    &entry_path,
                    "the name total is reserved (the total line of `pingpost ledger report`): choose another",
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
    pub(super) fn str_list(
        &mut self,
        p: &mut Problems,
        key: &'static str,
    ) -> Vec<(String, &'a str)> {
        match self.opt(key) {
            None => Vec::new(),
            Some((path, v)) => str_list(p, &path, v),
        }
    }

    /// A required, non-empty list of vertical names, resolved to indices.
    pub(super) fn vertical_refs(
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
                None => p.at(
                    &item_path,
                    format!("unknown vertical {}", toml_quoted(name)),
                ),
            }
        }
        out
    }

    /// Records each of `keys` that is present as not applying here (`what` says why),
    /// rather than as an unknown key.
    pub(super) fn reject(&mut self, p: &mut Problems, keys: &[&'static str], what: &str) {
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
    pub(super) fn finish(self, p: &mut Problems) {
        self.finish_with_hint(p, "");
    }

    pub(super) fn finish_with_hint(self, p: &mut Problems, hint: &str) {
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
                .min()
                .or_else(|| {
                    // A key cut short, such as a unit suffix left off (`quote_ttl` for
                    // `quote_ttl_ms`, `hour` for `hourly`: black-box round 22), when one
                    // known key alone starts with it.
                    let mut longer = self.read.iter().filter(|known| {
                        key.chars().count() >= 3 && known.starts_with(key.as_str())
                    });
                    match (longer.next(), longer.next()) {
                        (Some(known), None) => Some((0, *known)),
                        _ => None,
                    }
                });
            match close {
                Some((_, known)) => p.at(&path, format!("unknown key (did you mean {known}?)")),
                None if !hint.is_empty() => p.at(&path, format!("unknown key ({hint})")),
                None => p.at(&path, "unknown key"),
            }
        }
    }
}

/// Edit distance between two short keys (long keys are simply "far"): insertions,
/// deletions, substitutions and swaps of two neighbouring letters each count 1 (the
/// optimal string alignment distance; black-box round 198c: `dialy` and `tsl` were two
/// edits from `daily` and `tls`, too far to be suggested).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() > NAME_LEN_MAX || b.len() > NAME_LEN_MAX {
        return usize::MAX;
    }
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            let mut d = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && *ca == b[j - 1] && a[i - 1] == *cb {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// Whether `name` is an environment variable name a shell can set: ASCII letters, digits
/// and `_`, not starting with a digit (black-box round 203a: `admin.token_env = "1ABC"`
/// was taken, while `secret_env` refused it without saying why).
/// `_` alone is none: the shell sets it to the path of the program it runs (black-box
/// round 204a: `token_env = "_"` made the admin token `/usr/bin/timeout`).
pub(super) fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name != "_"
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What [`is_env_name`] asks, for messages.
pub(super) const ENV_NAME_RULE: &str =
    "must be an environment variable name (ASCII letters, digits and _, not starting with a digit, and not _ alone, which the shell sets itself)";

fn is_name(s: &str) -> bool {
    (1..=NAME_LEN_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn as_str<'a>(p: &mut Problems, path: &str, v: &'a Value) -> Option<&'a str> {
    match v {
        Value::String(s) => Some(s.as_str()),
        _ => {
            p.at(path, "must be a string");
            None
        }
    }
}

pub(super) fn whole(p: &mut Problems, path: &str, v: &Value, lo: i64, hi: i64) -> Option<i64> {
    match v {
        Value::Integer(i) if (lo..=hi).contains(i) => Some(*i),
        _ => {
            // A quoted number is said to be one (black-box round 101a: `"20"` was told it
            // must be a whole number between 1 and 1000000).
            // Only when the quotes are all that is wrong (round 102a: `"2.5"` was told to
            // drop them, and would be refused without them too).
            let quoted = match v {
                Value::String(s) if s.parse::<i64>().is_ok_and(|i| (lo..=hi).contains(&i)) => {
                    ", written without quotes".to_string()
                }
                // A number with a unit (black-box round 198c: `"200ms"` was told only the
                // range): the unit is the key's own.
                Value::String(s) if with_unit(s) => match unit_of_key(path) {
                    Some(unit) => format!(", written without quotes or a unit (it is in {unit})"),
                    None => ", written without quotes or a unit".to_string(),
                },
                _ => String::new(),
            };
            p.at(
                path,
                format!("must be a whole number between {lo} and {hi}{quoted}"),
            );
            None
        }
    }
}

/// `"200ms"`, `"5 s"`, `"3 leads"`, `"200/s"`, `"3%"`, `"0.5 USD"`: a number followed by a
/// short unit.
fn with_unit(s: &str) -> bool {
    let t = s.trim();
    let end = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && c == '-')))
        .map_or(t.len(), |(i, _)| i);
    let (number, unit) = t.split_at(end);
    let unit = unit.trim_start();
    number.parse::<f64>().is_ok_and(f64::is_finite)
        && (1..=8).contains(&unit.len())
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'%' || b == b'/')
}

/// The unit a key's name gives it (`auction_deadline_ms`: milliseconds).
fn unit_of_key(path: &str) -> Option<&'static str> {
    let key = path.rsplit('.').next().unwrap_or(path);
    let key = key.strip_suffix("_max").unwrap_or(key);
    if key.ends_with("_per_s") {
        return None;
    }
    [
        ("_ms", "milliseconds"),
        ("_s", "seconds"),
        ("_days", "days"),
        ("_bytes", "bytes"),
        ("_pct", "percent"),
    ]
    .into_iter()
    .find(|(suffix, _)| key.ends_with(suffix))
    .map(|(_, unit)| unit)
}

/// Any finite number, integer or float.
pub(super) fn number(p: &mut Problems, path: &str, v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        // Said for what it is (black-box round 100b: `explore_share = "0.1"` was told it
        // "must be a finite number").
        Value::Float(_) => {
            p.at(path, "must be a finite number");
            None
        }
        Value::String(s) if s.parse::<f64>().is_ok_and(f64::is_finite) => {
            p.at(path, "must be a number, written without quotes");
            None
        }
        // A number with a unit (black-box round 203a: `"3%"` was told only "must be a
        // number").
        Value::String(s) if with_unit(s) => {
            p.at(path, "must be a number, written without quotes or a unit");
            None
        }
        _ => {
            p.at(path, "must be a number");
            None
        }
    }
}

/// The decimal text a number was written as: floats print as the shortest decimal that
/// reads back as the same float, which is what the author wrote.
/// A decimal written as a TOML integer, float or string, as text for an exact reading.
/// One rule for money and percentages: zero is zero however it is signed (`-0`, `-0.0`,
/// `"-0"`), and a string is the number alone (`" 4"` is refused as `"+4"` is: black-box
/// rounds 10 and 14 found padded strings taken in one key and not another).
pub(super) fn decimal_text(v: &Value) -> Option<String> {
    match v {
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) if *f == 0.0 => Some("0".to_string()),
        Value::Float(f) => Some(format!("{f}")),
        Value::String(s) if s.trim() != s => None,
        Value::String(s) => match s.strip_prefix('-') {
            Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b == b'0' || b == b'.') => {
                Some("0".to_string())
            }
            _ => Some(s.clone()),
        },
        _ => None,
    }
}

/// Money, written as a TOML integer, float or decimal string (`12.5`, `12`, `"12.50"`),
/// read by [`decimal_text`]'s rule.
pub(super) fn money(p: &mut Problems, path: &str, v: &Value) -> Option<Micros> {
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
pub(super) fn str_list<'a>(p: &mut Problems, path: &str, v: &'a Value) -> Vec<(String, &'a str)> {
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

/// Records every item that repeats an earlier one. Linear: a list may hold
/// [`LIST_LEN_MAX`] items (100,000 ZIP prefixes checked pairwise took 12 s a list).
pub(super) fn no_duplicates(p: &mut Problems, items: &[(String, &str)]) {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for (path, s) in items {
        if !seen.insert(*s) {
            p.at(path, format!("{} is listed twice", toml_quoted(s)));
        }
    }
}

pub(super) fn display_name(p: &mut Problems, s: &mut Section<'_>, id: &str) -> String {
    match s.str_opt(p, "name") {
        None => id.to_string(),
        Some(name) if name.trim().is_empty() || name.chars().count() > DISPLAY_NAME_LEN_MAX => {
            p.at(
                &s.path_of("name"),
                format!("must be 1 to {DISPLAY_NAME_LEN_MAX} characters"),
            );
            id.to_string()
        }
        // Names go back to sellers (`sold`), into the ledger and onto the demo's lines:
        // each character must print (black-box rounds 37-38: `"Acme\nINFO fake"` passed,
        // and so did direction marks, fillers and a name of one Hangul filler).
        Some(name) if !prints_as_written(name) => {
            p.at(
                &s.path_of("name"),
                "must not contain control characters (line breaks, tabs) or characters that print as nothing (zero-width and direction marks, fillers, tags); a zero-width joiner or non-joiner may join two characters, and at most four combining marks may sit on one character (none on nothing)",
            );
            id.to_string()
        }
        Some(name) => name.to_string(),
    }
}

/// Whether every character of `name` prints: no control character, line or paragraph
/// separator, or character that prints as nothing (Unicode's default-ignorable code
/// points and the other format characters: zero-width spaces, direction marks and
/// overrides, the soft hyphen, fillers, the byte-order mark, tags), except the marks that
/// join or vary the character before them, where a name needs them, one at a time: a
/// zero-width joiner or non-joiner between two printing characters (Persian `می‌خواهم`,
/// emoji sequences), a variation selector after one (emoji presentation, ideographic
/// variants, Mongolian's free variation selectors), up to four combining marks on a
/// printing character, and the tags of a subdivision flag that displays (England,
/// Scotland, Wales; black-box rounds 39-40: runs of joiners and selectors, and tags
/// spelling hidden text, passed). Noncharacters and private-use characters, which have no
/// look of their own, are refused. Spaces other than line breaks and tabs are fine.
pub(super) fn prints_as_written(name: &str) -> bool {
    use pingpost_core::config::invisible;
    /// What came last.
    #[derive(Clone, Copy, PartialEq)]
    enum Last {
        Start,
        Space,
        Printing,
        /// A variation selector after a printing character.
        Selector,
        Joiner,
        /// The black flag (U+1F3F4), which a subdivision's tags may follow.
        Flag,
        /// So many tag letters or digits after the flag, the cancel tag not yet seen.
        Tags(u8),
        /// So many combining marks after a printing character.
        Marks(u8),
    }
    /// The subdivision flags that display (Unicode's recommended set): any other tag
    /// sequence shows as a bare black flag with its text hidden (black-box round 40).
    const FLAGS: [&str; 3] = ["gbeng", "gbsct", "gbwls"];
    let mut last = Last::Start;
    let mut tags = String::new();
    for c in name.chars() {
        let tag_letter = matches!(c, '\u{E0061}'..='\u{E007A}' | '\u{E0030}'..='\u{E0039}');
        // Characters with no look of their own: noncharacters and private use.
        if matches!(c, '\u{FDD0}'..='\u{FDEF}' | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..)
            || (c as u32) & 0xFFFE == 0xFFFE
        {
            return false;
        }
        last = match (last, c) {
            // A subdivision flag that displays: the black flag, its tag letters, the
            // cancel tag; nothing else hides in tags.
            (Last::Flag | Last::Tags(_), _) if tag_letter => {
                let n = match last {
                    Last::Tags(n) if n >= 6 => return false,
                    Last::Tags(n) => n + 1,
                    _ => {
                        tags.clear();
                        1
                    }
                };
                tags.push(char::from_u32(c as u32 - 0xE0000).unwrap_or('?'));
                Last::Tags(n)
            }
            (Last::Tags(_), '\u{E007F}') if FLAGS.contains(&tags.as_str()) => Last::Printing,
            (Last::Tags(_), _) => return false,
            (_, '\u{E0000}'..='\u{E007F}') => return false,
            // One joiner between two printing characters (an emoji may end in its
            // selector).
            (
                Last::Printing | Last::Flag | Last::Selector | Last::Marks(_),
                '\u{200C}' | '\u{200D}',
            ) => Last::Joiner,
            (_, '\u{200C}' | '\u{200D}') => return false,
            // One variation selector after a printing character (Mongolian's free
            // variation selectors too).
            (
                Last::Printing | Last::Flag | Last::Marks(_),
                '\u{FE00}'..='\u{FE0F}'
                | '\u{E0100}'..='\u{E01EF}'
                | '\u{180B}'..='\u{180D}'
                | '\u{180F}',
            ) => Last::Selector,
            (
                _,
                '\u{FE00}'..='\u{FE0F}'
                | '\u{E0100}'..='\u{E01EF}'
                | '\u{180B}'..='\u{180D}'
                | '\u{180F}',
            ) => return false,
            (Last::Joiner, c) if c.is_whitespace() => return false,
            (_, c)
                if c.is_whitespace()
                    && !c.is_control()
                    && !matches!(c, '\u{2028}' | '\u{2029}') =>
            {
                Last::Space
            }
            (_, c) if invisible(c) || proto::error::is_hidden(c) => return false,
            // Combining marks on a printing character, at most four (accents, not a
            // stack that spills over its neighbours, nor a mark on nothing).
            (Last::Printing | Last::Flag | Last::Selector, c)
                if unicode_normalization::char::is_combining_mark(c) =>
            {
                Last::Marks(1)
            }
            (Last::Marks(n), c) if unicode_normalization::char::is_combining_mark(c) => {
                if n >= 4 {
                    return false;
                }
                Last::Marks(n + 1)
            }
            (_, c) if unicode_normalization::char::is_combining_mark(c) => return false,
            (_, '\u{1F3F4}') => Last::Flag,
            _ => Last::Printing,
        };
    }
    !matches!(last, Last::Joiner | Last::Tags(_))
}
