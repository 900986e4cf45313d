//! `[verticals.NAME]` and their field schemas (`[verticals.NAME.fields]`).

use proto::json::{STRING_MAP_ENTRIES_MAX, STRING_MAP_KEY_LEN_MAX};
use proto::schema::{LEAD_FIELDS_MAX, STRING_LEN_MAX_DEFAULT};
use proto::{FieldKind, FieldSpec, Micros, VerticalSchema};
use toml::{Table, Value};

use super::reader::{
    as_str, join, no_duplicates, number, prints_as_written, str_list, toml_quoted, whole, Problems,
    Section,
};
use super::{ENUM_VALUE_LEN_MAX, FIELD_TYPES, PATTERN_SIZE_MAX_BYTES, TIMEOUT_MS_LIMIT};
use crate::config::{defaults, ServerConfig, Vertical};

/// A vertical's prices, kept when they read cleanly even if the rest of the vertical
/// did not, so the checks across sections (`price_problems`) still run on them (black-box
/// round 48: a field's problem hid a `floor` above `bid_max`).
#[derive(Debug, Clone)]
pub(super) struct VerticalPrices {
    pub name: String,
    pub floor: Micros,
    pub bid_max: Option<Micros>,
}

/// The vertical, when every part of it reads cleanly, and its prices, when they do.
pub(super) fn read_vertical(
    name: &str,
    mut s: Section<'_>,
    server: &ServerConfig,
    p: &mut Problems,
) -> (Option<Vertical>, Option<VerticalPrices>) {
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
    // Reported after the vertical is built (below): a well-formed vertical whose deadline
    // only disagrees with the server's reserve still goes through the checks across
    // sections, so their problems are listed with it (black-box round 47: a `floor` above
    // `bid_max` showed only once the deadline was fixed).
    let deadline_problem = (auction_deadline_ms <= server.response_reserve_ms).then(|| {
        (
            s.path_of("auction_deadline_ms"),
            format!(
                "must be more than server.response_reserve_ms ({} ms), which is kept back to answer the seller",
                server.response_reserve_ms
            ),
        )
    });
    let before_prices = p.len();
    let floor = s.money_opt(p, "floor").unwrap_or(Micros::ZERO);
    let bid_max = s.money_opt(p, "bid_max");
    if bid_max.is_some_and(|m| m <= Micros::ZERO) {
        p.at(&s.path_of("bid_max"), "must be more than 0");
    }
    let prices = (p.len() == before_prices).then(|| VerticalPrices {
        name: name.to_string(),
        floor,
        bid_max,
    });
    let consent_required = read_consent_required(&mut s, p);

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
    let names: Vec<&str> = field_entries.iter().map(|(name, _)| *name).collect();
    let fields: Vec<Option<FieldSpec>> = field_entries
        .into_iter()
        .map(|(field, section)| read_field(field, section, p))
        .collect();
    // Read against the fields that read cleanly, beside their problems (black-box round
    // 14: a field's problem hid every feature's); a feature of a refused field is left to
    // that field's problem.
    let refused: Vec<&str> = names
        .iter()
        .zip(&fields)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    // The `type` each refused field declares, when it reads as a string: a feature's kind
    // is checked against it beside the field's own problems (black-box round 210b: a
    // numeric feature of a field declared a string was said only once the field's other
    // problem was fixed).
    let table = s.table;
    let declared: Vec<(&str, &str)> = refused
        .iter()
        .filter_map(|name| {
            let t = table?
                .get("fields")?
                .as_table()?
                .get(*name)?
                .as_table()?
                .get("type")?
                .as_str()?;
            Some((*name, t))
        })
        .collect();
    let schema = VerticalSchema {
        fields: fields.iter().flatten().cloned().collect(),
    };
    let features = super::features::read_features(&mut s, &schema, &refused, &declared, p);
    // Routing names no field: its problems are reported with the fields' ones.
    let routing = super::features::read_routing(&mut s, p);
    let (dedup, dedup_keys) = read_dedup(&mut s, &schema, &refused, p);
    s.finish(p);

    let failed = p.len() > before;
    if let Some((path, problem)) = deadline_problem {
        p.at(&path, problem);
    }
    let fields = match fields.into_iter().collect::<Option<Vec<_>>>() {
        Some(fields) if !failed => fields,
        _ => return (None, prices),
    };
    let vertical = Vertical {
        name: name.to_string(),
        currency,
        auction_deadline_ms,
        floor,
        bid_max,
        schema: std::sync::Arc::new(VerticalSchema { fields }),
        features,
        routing,
        consent_required,
        dedup,
        dedup_keys,
    };
    (Some(vertical), prices)
}

/// Most dedup keys one vertical names.
pub const DEDUP_KEYS_MAX: usize = 8;
/// The longest dedup window, in days.
pub const DEDUP_WINDOW_DAYS_MAX: i64 = 365;

/// The keys that identify a consumer without `[dedup] keys`: every `phone` and `email`
/// field, named after it (`phone_sha256` for `phone`).
fn default_dedup_keys(schema: &VerticalSchema) -> Vec<crate::core::dedup::DedupKeySpec> {
    schema
        .fields
        .iter()
        .filter(|f| matches!(f.kind, FieldKind::Phone | FieldKind::Email))
        .map(|f| crate::core::dedup::DedupKeySpec {
            name: format!("{}_sha256", f.name),
            field: Some(f.name.clone()),
        })
        .collect()
}

/// `[verticals.NAME.dedup]`: `window_days` (30 unless set; 0 turns it off) and `keys`, a
/// table from each dedup key a seller's `dedup` map may hold to the lead field a post's
/// own hash of it is made from (`""`: the seller's hash only). Without `keys`, every
/// `phone` and `email` field is a key named after it (`phone_sha256` for `phone`). The
/// keys serve the suppression list too, with or without a window.
fn read_dedup(
    s: &mut Section<'_>,
    schema: &VerticalSchema,
    refused: &[&str],
    p: &mut Problems,
) -> (
    Option<crate::core::dedup::DedupConfig>,
    Vec<crate::core::dedup::DedupKeySpec>,
) {
    use crate::core::dedup::{DedupConfig, DedupKeySpec, DAY_MS};
    if !s.has("dedup") {
        let _ = s.opt("dedup");
        return (None, default_dedup_keys(schema));
    }
    let mut d = s.section_or_empty(p, "dedup");
    if d.table.is_none() {
        return (None, Vec::new());
    }
    let days = match d.opt("window_days") {
        None => Some(30),
        Some((path, v)) => whole(p, &path, v, 0, DEDUP_WINDOW_DAYS_MAX),
    };
    let ping_scope_all = match d.str_opt(p, "ping_scope") {
        None | Some("seller") => false,
        Some("all") => true,
        Some(other) => {
            p.at(
                &d.path_of("ping_scope"),
                format!("unknown scope {} (\"seller\": a ping is a duplicate of the seller's own sales only, or \"all\")", toml_quoted(other)),
            );
            false
        }
    };
    let keys_path = d.path_of("keys");
    let mut keys: Vec<DedupKeySpec> = Vec::new();
    match d.opt("keys") {
        None => {
            keys = default_dedup_keys(schema);
            if keys.is_empty() && days.unwrap_or(0) > 0 {
                p.at(
                    &keys_path,
                    "is required: the vertical has no phone or email field to make keys from; name the seller's dedup keys, such as keys = { phone_sha256 = \"\" }",
                );
            }
        }
        Some((path, v)) => {
            let Some(table) = v.as_table() else {
                p.at(
                    &path,
                    "must be a table from dedup key to lead field, such as { phone_sha256 = \"phone\" }",
                );
                return (None, Vec::new());
            };
            if table.is_empty() || table.len() > DEDUP_KEYS_MAX {
                p.at(&path, format!("must name 1 to {DEDUP_KEYS_MAX} keys"));
            }
            for (name, value) in table {
                let key_path = super::reader::join(&path, name);
                let n = name.chars().count();
                if n == 0
                    || n > STRING_MAP_KEY_LEN_MAX
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    p.at(
                        &key_path,
                        format!("the key must be 1 to {STRING_MAP_KEY_LEN_MAX} ASCII letters, digits, '_' or '-', such as phone_sha256"),
                    );
                    continue;
                }
                let Some(field) = as_str(p, &key_path, value) else {
                    continue;
                };
                if field.is_empty() {
                    keys.push(DedupKeySpec {
                        name: name.clone(),
                        field: None,
                    });
                    continue;
                }
                if refused.contains(&field) {
                    continue;
                }
                match schema.field(field) {
                    None => p.at(
                        &key_path,
                        format!("names {}, which is not a field of the vertical (\"\": the seller's hash only)", toml_quoted(field)),
                    ),
                    Some(f) if !matches!(f.kind, FieldKind::Phone | FieldKind::Email | FieldKind::String { .. }) => p.at(
                        &key_path,
                        format!("names {}, which is not a phone, email or string field", toml_quoted(field)),
                    ),
                    Some(f) if f.ping => p.at(
                        &key_path,
                        format!("names {}, a ping field: a key identifies a consumer, so it is made from a field only a post carries (drop `ping = true` from the field: a PII field is never a ping field)", toml_quoted(field)),
                    ),
                    Some(_) => keys.push(DedupKeySpec {
                        name: name.clone(),
                        field: Some(field.to_string()),
                    }),
                }
            }
        }
    }
    d.finish(p);
    let dedup = days.filter(|d| *d > 0).map(|days| DedupConfig {
        window_ms: days as u64 * DAY_MS,
        ping_scope_all,
    });
    (dedup, keys)
}

/// `consent_required`: consent keys, each as a seller's `consent` map may hold one
/// (1-64 characters, at most [`STRING_MAP_ENTRIES_MAX`] keys, none twice).
fn read_consent_required(s: &mut Section<'_>, p: &mut Problems) -> Vec<String> {
    let items = s.str_list(p, "consent_required");
    if items.len() > STRING_MAP_ENTRIES_MAX {
        p.at(
            &s.path_of("consent_required"),
            format!(
                "must list at most {STRING_MAP_ENTRIES_MAX} keys (a request's consent holds at most {STRING_MAP_ENTRIES_MAX})"
            ),
        );
        return Vec::new();
    }
    no_duplicates(p, &items);
    let mut out = Vec::with_capacity(items.len());
    for (path, key) in items {
        let n = key.chars().count();
        // An invisible character pasted into a key makes every request of the vertical
        // lack it, and nobody can see why (black-box round 28).
        let hidden = key
            .chars()
            .any(|c| c != ' ' && crate::core::config::invisible(c));
        if n == 0 || n > STRING_MAP_KEY_LEN_MAX || key.trim() != key || hidden {
            p.at(
                &path,
                format!("must be a consent key of 1 to {STRING_MAP_KEY_LEN_MAX} characters without surrounding spaces or invisible characters, such as \"trustedform_cert_url\""),
            );
        } else {
            out.push(key.to_string());
        }
    }
    out
}

/// An enum's values: each travels from a seller to every buyer as written and is listed
/// in the error a wrong value gets, so each is 1 to [`ENUM_VALUE_LEN_MAX`] characters
/// that print, without surrounding spaces (black-box round 181a: NUL, a direction
/// override, an escape sequence, a zero-width space and a blank value were accepted,
/// went to buyers and were echoed raw, while a `string` field refuses them). Two values
/// that are one text once normalised (Unicode NFKC: "Å" written as one character or as
/// "A" and a ring) are refused: a seller's software may send either.
fn enum_values(p: &mut Problems, items: &[(String, &str)]) {
    use unicode_normalization::UnicodeNormalization;
    let mut normalised: std::collections::HashMap<String, (&str, &str)> =
        std::collections::HashMap::with_capacity(items.len());
    for (path, item) in items {
        let n = item.chars().count();
        if n == 0 {
            p.at(path, "must not be empty");
            continue;
        }
        // Nothing invisible anywhere, joiners and variation selectors between letters
        // included, which a display name may hold (black-box round 182b: "ab" and
        // "a\u200Db" were two values that print alike).
        let hidden = item
            .chars()
            .any(|c| c != ' ' && crate::core::config::invisible(c));
        if n > ENUM_VALUE_LEN_MAX || item.trim() != *item || hidden || !prints_as_written(item) {
            let shown = if n > ENUM_VALUE_LEN_MAX {
                format!("a value of {n} characters")
            } else {
                format!("{} ({})", toml_quoted(item), code_points(item))
            };
            p.at(
                path,
                format!(
                    "{shown}: must be 1 to {ENUM_VALUE_LEN_MAX} characters that print, without surrounding spaces (no control characters or line breaks, nor characters that print as nothing such as zero-width joiners, variation selectors or direction marks): sellers send it and buyers receive it as written"
                ),
            );
            continue;
        }
        let folded: String = item.nfkc().collect();
        match normalised.get(&folded) {
            Some((other_path, other)) if other != item => p.at(
                path,
                format!(
                    "{} ({}) is {} ({}, {other_path}) once normalised (Unicode NFKC): a seller's software may send either; list one",
                    toml_quoted(item),
                    code_points(item),
                    toml_quoted(other),
                    code_points(other)
                ),
            ),
            Some(_) => {}
            None => {
                normalised.insert(folded, (path, item));
            }
        }
    }
}

/// "U+0041 U+030A": the code points of `s`, at most 16 then "…", to tell apart texts
/// that print alike.
fn code_points(s: &str) -> String {
    let mut out: Vec<String> = s
        .chars()
        .take(16)
        .map(|c| format!("U+{:04X}", u32::from(c)))
        .collect();
    if s.chars().nth(16).is_some() {
        out.push("…".into());
    }
    out.join(" ")
}

/// "a string", "an email", "an enum", "an integer": the article a field type takes.
fn with_article(t: &str) -> String {
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {t}")
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
                    enum_values(p, &items);
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
                format!("unknown type {} (one of {FIELD_TYPES})", toml_quoted(other)),
            );
            None
        }
    };
    if let (Some(t @ ("email" | "phone")), false) = (type_name, pii) {
        // The contract names e-mail addresses and phone numbers as personal data.
        p.at(
            &s.path_of("pii"),
            format!(
                "must be true for {} field: it is personal data",
                with_article(t)
            ),
        );
    }
    if let Some(t) = type_name.filter(|_| kind.is_some()) {
        s.reject(p, &TYPED_FIELD_KEYS, &format!("{} field", with_article(t)));
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

/// Where a string field's `pattern` uses a construct that JSON Schema's ECMA-262 (with or
/// without its `u` flag) or Python's `re` does not read as Rust does
/// ([`crate::openapi::unportable_construct`]): `GET /openapi.json` publishes it as
/// `x-pattern`, not as a JSON Schema `pattern` (one such pattern made the whole document
/// unusable to spec validators, Python's `jsonschema` and JavaScript). A line per field
/// for the start's log, a reload's and `--check-config`. Not an error: the exchange
/// checks the pattern as written.
pub fn pattern_warnings(cfg: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    for v in &cfg.verticals {
        for f in &v.schema.fields {
            let FieldKind::String {
                pattern: Some(re), ..
            } = &f.kind
            else {
                continue;
            };
            let Some(what) = crate::openapi::unportable_construct(re.as_str()) else {
                continue;
            };
            let path = join(&join(&join("verticals", &v.name), "fields"), &f.name);
            out.push(format!(
                "{path}.pattern: uses {what}, which JSON Schema's ECMA-262 or Python's re do not read as Rust does: GET /openapi.json publishes it as x-pattern, not as a JSON Schema pattern, so validators and clients generated from the document do not check it (the exchange does); with only literals, classes and ranges, \\d \\w \\s, groups, alternation and quantifiers it is published as a pattern"
            ));
        }
    }
    out
}

/// Compiles a field pattern anchored at both ends, so it must match the whole value. The
/// pattern must be valid on its own first: `[0-9]{3})|(x` is not, but anchored it read
/// `^(?:[0-9]{3})|(x)$`, which matched `123` followed by anything (black-box round 142a).
fn compile_pattern(p: &mut Problems, path: &str, pattern: &str) -> Option<regex::Regex> {
    let build = |text: &str| {
        regex::RegexBuilder::new(text)
            .size_limit(PATTERN_SIZE_MAX_BYTES)
            .build()
    };
    match build(pattern).and_then(|_| build(&format!("^(?:{pattern})$"))) {
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
