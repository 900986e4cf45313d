//! A vertical's field schema and the validation of a lead against it.
//!
//! The schema says, for every lead field, its type, whether it is required, whether it may
//! travel in a ping (and so to every eligible buyer), and whether it is PII. Validation
//! reports every problem at once, each with its path (`lead.zip`), and never panics on
//! any input.

use regex::Regex;
use simd_json::{OwnedValue, StaticNode};

use crate::error::FieldProblem;
use crate::lead::{FieldValue, Lead};

/// A personal field's problem in a ping: what a `pii_in_ping` answer leads with.
pub const PII_IN_PING_PROBLEM: &str = "is personal data and not allowed in a ping";

/// Longest string value accepted in any lead field unless the schema says less.
pub const STRING_LEN_MAX_DEFAULT: usize = 1024;
/// Most fields a lead may carry, whatever the schema says.
pub const LEAD_FIELDS_MAX: usize = 256;

/// The characters of RFC 5322 that an e-mail address may hold only in a quoted local part,
/// a comment or a domain literal (`"bob"@example.com`, `bob(x)@example.com`,
/// `bob@[192.0.2.1]`): a quoted or commented local part is the mailbox of another
/// spelling, and a domain literal names a host, not a domain; an address holding one is
/// refused (black-box round 159b: `"blocked"@example.com` passed the
/// suppression list of `blocked@example.com`, and a sold consumer sold again).
pub const EMAIL_SPECIALS: [char; 11] = ['"', '(', ')', ',', ':', ';', '<', '>', '[', ']', '\\'];

/// What separates an e-mail domain's labels: a dot, or an ideographic full stop (`。`) or
/// one of its compatibility forms (`｡`, `．`), as IDNA reads them (black-box round 160a:
/// `x@exämple。com` was refused though `。` is a dot).
pub const EMAIL_DOTS: [char; 4] = ['.', '\u{3002}', '\u{FF61}', '\u{FF0E}'];

/// The problem of an e-mail address holding one of [`EMAIL_SPECIALS`].
pub const EMAIL_SPECIALS_PROBLEM: &str = "must be an e-mail address without quotes, comments or brackets (none of \" ( ) , : ; < > [ ] \\)";

/// The type of one lead field, and its constraints.
#[derive(Debug, Clone)]
pub enum FieldKind {
    /// Free text, at most `len_max` characters, optionally matching `pattern` (anchored).
    String {
        len_max: usize,
        pattern: Option<Regex>,
    },
    /// A whole number within `[min, max]`.
    Integer {
        min: i64,
        max: i64,
    },
    /// Any number within `[min, max]`.
    Number {
        min: f64,
        max: f64,
    },
    Boolean,
    /// One of a fixed set of strings.
    Enum(Vec<String>),
    /// A US state or territory, two upper-case letters (`TX`).
    State,
    /// A five-digit US ZIP code (`76180`).
    Zip,
    /// An e-mail address (one `@`, a dot in the domain).
    Email,
    /// A phone number in E.164 form (`+18175550123`).
    Phone,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
}

/// One field of a vertical's schema.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    /// Required in a full lead (post, direct post); in a ping only if `ping` is also set.
    pub required: bool,
    /// May travel in a ping, and so be sent to every eligible buyer.
    pub ping: bool,
    /// Personal data: refused in a ping (`pii_in_ping`), never sent to a losing buyer, never logged.
    pub pii: bool,
}

/// A vertical's fields, in a fixed order (the order leads are stored and sent in).
#[derive(Debug, Clone, Default)]
pub struct VerticalSchema {
    /// The fields, in order. Names are unique (the loader reads them as the keys of one
    /// TOML table); [`VerticalSchema::validate`] relies on it.
    pub fields: Vec<FieldSpec>,
}

/// Which lead a body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadMode {
    /// A ping: only ping fields, never PII.
    Ping,
    /// A full lead (post or direct post): every field of the schema.
    Full,
}

/// What validation found wrong. `pii` is set when any problem is a PII field in a ping,
/// which makes the answer `pii_in_ping` rather than `invalid_request`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadProblems {
    pub problems: Vec<FieldProblem>,
    pub pii: bool,
}

/// Every US state and territory code.
pub const US_STATES: &[&str] = &[
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
    "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
    "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA",
    "WV", "WI", "WY", "PR", "VI", "GU", "AS", "MP",
];

/// Is `s` a US state or territory code?
pub fn is_us_state(s: &str) -> bool {
    US_STATES.contains(&s)
}

impl VerticalSchema {
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// Validates a JSON object as a lead in `mode`. `path` prefixes field names in problems
    /// (`lead`). Returns the typed lead in schema order, or every problem found.
    pub fn validate(
        &self,
        value: &OwnedValue,
        mode: LeadMode,
        path: &str,
    ) -> Result<Lead, LeadProblems> {
        let mut out = LeadProblems::default();
        let obj = match value {
            OwnedValue::Object(o) => o,
            _ => {
                out.problems
                    .push(FieldProblem::new(path, "must be an object"));
                return Err(out);
            }
        };
        // Too many fields: said once, and the stray names are not listed one by one; the
        // schema's own fields are still checked below, so a personal field in a ping is
        // still `pii_in_ping` (black-box round 36: it was hidden behind the count).
        let too_many = obj.len() > LEAD_FIELDS_MAX;
        if too_many {
            out.problems.push(FieldProblem::new(
                path,
                format!("must have at most {LEAD_FIELDS_MAX} fields"),
            ));
        }
        // Unknown fields first, so the answer names every stray key. Schema field names
        // are unique, so when every key of the object is a schema field (the common case,
        // found by counting below without a search per key) there is nothing to name.
        let known = self
            .fields
            .iter()
            .filter(|f| obj.contains_key(f.name.as_str()))
            .count();
        if known < obj.len() && !too_many {
            let mut unknown: Vec<&str> = obj
                .keys()
                .map(|k| k.as_str())
                .filter(|k| self.field(k).is_none())
                .collect();
            unknown.sort_unstable();
            for k in unknown {
                out.problems.push(FieldProblem::new(
                    format!("{path}.{}", crate::error::printable_name(k)),
                    crate::error::UNKNOWN_FIELD,
                ));
            }
        }
        let mut fields = Vec::with_capacity(obj.len());
        for (index, spec) in self.fields.iter().enumerate() {
            let fpath = || format!("{path}.{}", spec.name);
            let given = obj.get(spec.name.as_str());
            let present = given.filter(|v| !matches!(v, OwnedValue::Static(StaticNode::Null)));
            // A ping names no field that is not a ping field, not even as `null` (the
            // ping's schema in /openapi.json has no such property).
            let present = match (given, mode) {
                (Some(v), LeadMode::Ping) if spec.pii || !spec.ping => Some(v),
                _ => present,
            };
            let null = matches!(given, Some(OwnedValue::Static(StaticNode::Null)));
            match (present, mode) {
                // A personal field named as `null` carries no personal data: refused as a
                // field a ping does not have, not as `pii_in_ping` (black-box round 105a:
                // a seller could take that answer for a privacy incident).
                (Some(_), LeadMode::Ping) if (spec.pii || !spec.ping) && null => {
                    out.problems
                        .push(FieldProblem::new(fpath(), NOT_A_PING_FIELD_NULL));
                }
                (Some(_), LeadMode::Ping) if spec.pii => {
                    out.pii = true;
                    out.problems
                        .push(FieldProblem::new(fpath(), PII_IN_PING_PROBLEM));
                }
                (Some(_), LeadMode::Ping) if !spec.ping => {
                    out.problems.push(FieldProblem::new(
                        fpath(),
                        "is not allowed in a ping; send it with the post",
                    ));
                }
                // A required text that says nothing is no value, whatever else it breaks
                // (a pattern, the control characters): a buyer would pay for a lead
                // without the field (black-box round 191b: `"first_name": "  "` sold;
                // round 192a: a blank value a pattern refused was told the pattern).
                (Some(v), _)
                    if spec.required
                        && matches!(spec.kind, FieldKind::String { .. })
                        && as_str(v).is_some_and(crate::error::says_nothing) =>
                {
                    out.problems
                        .push(FieldProblem::new(fpath(), REQUIRED_BLANK));
                }
                (Some(v), _) => match check_value(&spec.kind, v) {
                    Ok(fv) => fields.push((index, fv)),
                    Err(problem) => out.problems.push(FieldProblem::new(fpath(), problem)),
                },
                // Sent as `null`, said so (black-box round 104a: "is required" read as if
                // the field had not been sent).
                (None, LeadMode::Ping) if spec.required && spec.ping => {
                    out.problems
                        .push(FieldProblem::new(fpath(), required_problem(given)));
                }
                (None, LeadMode::Full) if spec.required => {
                    out.problems
                        .push(FieldProblem::new(fpath(), required_problem(given)));
                }
                (None, _) => {}
            }
        }
        if out.problems.is_empty() {
            Ok(Lead::from_parts(fields))
        } else {
            Err(out)
        }
    }
}

/// The problem of a field a ping does not have (personal, or sent only with the post)
/// named in a ping as `null`.
const NOT_A_PING_FIELD_NULL: &str =
    "is not allowed in a ping, not even as null; send it with the post";

/// A required text field's problem when its value says nothing.
pub const REQUIRED_BLANK: &str = "is required: a value of only white space or characters that print as nothing (control characters, zero-width or invisible characters) is none";

/// A required field's problem: missing, or sent as `null` (which counts as absent).
fn required_problem(given: Option<&OwnedValue>) -> &'static str {
    if given.is_some() {
        crate::error::REQUIRED_NULL
    } else {
        "is required"
    }
}

/// Why a field of `kind` refuses `text` as its value (`None`: it takes it), as a lead's
/// validation says it: for a configuration that names values a field must be able to
/// hold (a categorical feature's categories).
pub fn refuses_text(kind: &FieldKind, text: &str) -> Option<String> {
    check_value(kind, &OwnedValue::String(text.into())).err()
}

fn check_value(kind: &FieldKind, v: &OwnedValue) -> Result<FieldValue, String> {
    match kind {
        FieldKind::String { len_max, pattern } => {
            let s = as_str(v).ok_or("must be a string")?;
            if s.chars().count() > *len_max {
                return Err(format!("must be at most {len_max} characters"));
            }
            // A NUL cuts the value short in a buyer's C-string code, and a direction
            // override shows a buyer's staff another text than the one stored (black-box
            // round 67c: `"Ana\u202e\u0000"` was sold as a first name). Tabs and line
            // breaks stay allowed (free text).
            if crate::error::has_unsafe_text(s) {
                return Err(crate::error::UNSAFE_TEXT.into());
            }
            if let Some(re) = pattern {
                if !re.is_match(s) {
                    return Err(format!("must match {}", re.as_str()));
                }
            }
            Ok(FieldValue::Str(s.to_string()))
        }
        FieldKind::Integer { min, max } => {
            // A whole number past what an i64 (or a double, exactly) holds is out of the
            // range, not "not a whole number" (black-box round 45).
            let out_of_range = || format!("must be between {min} and {max}");
            let i = match v {
                OwnedValue::Static(StaticNode::I64(i)) => *i,
                OwnedValue::Static(StaticNode::U64(u)) => {
                    i64::try_from(*u).map_err(|_| out_of_range())?
                }
                OwnedValue::Static(StaticNode::F64(f)) if f.is_finite() && f.fract() == 0.0 => {
                    if f.abs() >= 9.0e15 {
                        return Err(out_of_range());
                    }
                    *f as i64
                }
                _ => return Err("must be a whole number".into()),
            };
            if i < *min || i > *max {
                return Err(out_of_range());
            }
            Ok(FieldValue::Int(i))
        }
        FieldKind::Number { min, max } => {
            let f = match v {
                OwnedValue::Static(StaticNode::I64(i)) => *i as f64,
                OwnedValue::Static(StaticNode::U64(u)) => *u as f64,
                OwnedValue::Static(StaticNode::F64(f)) => *f,
                _ => return Err("must be a number".into()),
            };
            if !f.is_finite() || f < *min || f > *max {
                return Err(format!(
                    "must be between {} and {}",
                    shown_bound(*min),
                    shown_bound(*max)
                ));
            }
            Ok(FieldValue::Num(f))
        }
        FieldKind::Boolean => match v {
            OwnedValue::Static(StaticNode::Bool(b)) => Ok(FieldValue::Bool(*b)),
            _ => Err("must be true or false".into()),
        },
        FieldKind::Enum(values) => {
            let s = as_str(v).ok_or("must be a string")?;
            if values.iter().any(|x| x == s) {
                Ok(FieldValue::Str(s.to_string()))
            } else {
                Err(one_of(values))
            }
        }
        FieldKind::State => {
            let s = as_str(v).ok_or("must be a string")?;
            if is_us_state(s) {
                Ok(FieldValue::Str(s.to_string()))
            } else {
                Err("must be a two-letter US state code".into())
            }
        }
        FieldKind::Zip => {
            let s = as_str(v).ok_or("must be a string")?;
            if s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()) {
                Ok(FieldValue::Str(s.to_string()))
            } else {
                Err("must be 5 digits".into())
            }
        }
        FieldKind::Email => {
            let s = as_str(v).ok_or("must be a string")?;
            if s.contains(EMAIL_SPECIALS) {
                return Err(EMAIL_SPECIALS_PROBLEM.into());
            }
            // A direction override shows a buyer's staff another address than the one
            // stored, as in a string field (black-box round 160a).
            if crate::error::has_unsafe_text(s) {
                return Err(crate::error::UNSAFE_TEXT.into());
            }
            let ok = s.chars().count() <= 254
                && match s.split_once('@') {
                    Some((local, domain)) => {
                        // At least two labels, none empty (black-box round 162a:
                        // `example..com` was taken, and sold as a new consumer).
                        !local.is_empty()
                            && !domain.contains('@')
                            && domain.split(EMAIL_DOTS).count() >= 2
                            && domain.split(EMAIL_DOTS).all(|label| !label.is_empty())
                            // White space as Rust and ECMA-262 (the served
                            // schema's `\s`) both see it: ECMA's includes U+FEFF.
                            && !s
                                .chars()
                                .any(|c| c.is_whitespace() || c.is_control() || c == '\u{feff}')
                    }
                    None => false,
                };
            if ok {
                Ok(FieldValue::Str(s.to_string()))
            } else {
                Err("must be an e-mail address".into())
            }
        }
        FieldKind::Phone => {
            let s = as_str(v).ok_or("must be a string")?;
            let digits = s.strip_prefix('+').unwrap_or("");
            if (8..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0')
            {
                Ok(FieldValue::Str(s.to_string()))
            } else {
                Err("must be an E.164 phone number such as +18175550123".into())
            }
        }
        FieldKind::Date => {
            let s = as_str(v).ok_or("must be a string")?;
            if is_date(s) {
                Ok(FieldValue::Str(s.to_string()))
            } else {
                // The whole rule (round 56b: `1899-12-31` was told only the format).
                Err(
                    "must be a real calendar date as YYYY-MM-DD, from 1900-01-01 to 2200-12-31"
                        .into(),
                )
            }
        }
    }
}

/// "must be one of a, b, c": the values listed until the problem's bound
/// ([`crate::error::PROBLEM_CHARS_MAX`]), then "…", so a long list is never joined whole
/// for a request that will see only its start.
fn one_of(values: &[String]) -> String {
    let mut out = String::from("must be one of ");
    for (i, v) in values.iter().enumerate() {
        if out.len() >= crate::error::PROBLEM_CHARS_MAX {
            out.push('…');
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(v);
    }
    out
}

fn as_str(v: &OwnedValue) -> Option<&str> {
    match v {
        OwnedValue::String(s) => Some(s.as_str()),
        _ => None,
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1900..=2200).contains(&y) && d >= 1 && d <= days
}

/// A number bound as a person reads it: plain decimals for the everyday range, and
/// scientific notation past it (black-box round 231c: a bound of `1e300` was written out
/// as a 301-digit decimal in the error message).
fn shown_bound(f: f64) -> String {
    let a = f.abs();
    if a != 0.0 && !(1e-6..1e16).contains(&a) {
        format!("{f:e}")
    } else {
        f.to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A refusal's problems as (field, problem) pairs.
    fn pairs(err: &LeadProblems) -> Vec<(&str, &str)> {
        err.problems
            .iter()
            .map(|p| (p.field.as_str(), p.problem.as_str()))
            .collect()
    }

    /// The auto-insurance schema the tests share.
    pub fn auto_schema() -> VerticalSchema {
        let f = |name: &str, kind: FieldKind, required: bool, ping: bool, pii: bool| FieldSpec {
            name: name.into(),
            kind,
            required,
            ping,
            pii,
        };
        VerticalSchema {
            fields: vec![
                f("state", FieldKind::State, true, true, false),
                f("zip", FieldKind::Zip, true, true, false),
                f(
                    "age",
                    FieldKind::Integer { min: 16, max: 120 },
                    false,
                    true,
                    false,
                ),
                f("homeowner", FieldKind::Boolean, false, true, false),
                f(
                    "credit",
                    FieldKind::Enum(vec![
                        "poor".into(),
                        "fair".into(),
                        "good".into(),
                        "excellent".into(),
                    ]),
                    false,
                    true,
                    false,
                ),
                f(
                    "city",
                    FieldKind::String {
                        len_max: 64,
                        pattern: None,
                    },
                    false,
                    false,
                    false,
                ),
                f(
                    "first_name",
                    FieldKind::String {
                        len_max: 64,
                        pattern: None,
                    },
                    true,
                    false,
                    true,
                ),
                f(
                    "last_name",
                    FieldKind::String {
                        len_max: 64,
                        pattern: None,
                    },
                    true,
                    false,
                    true,
                ),
                f("phone", FieldKind::Phone, true, false, true),
                f("email", FieldKind::Email, false, false, true),
                f("birth_date", FieldKind::Date, false, false, true),
            ],
        }
    }

    /// A wrong enum value's problem lists the values; a long list only up to the
    /// problem's bound, never joined whole for a request that sees only its start.
    #[test]
    fn one_of_lists_the_values_up_to_the_bound() {
        let few: Vec<String> = vec!["poor".into(), "fair".into()];
        assert_eq!(one_of(&few), "must be one of poor, fair");
        let many: Vec<String> = (0..100_000).map(|i| format!("value_{i}")).collect();
        let said = one_of(&many);
        assert!(
            said.starts_with("must be one of value_0, value_1, "),
            "{said}"
        );
        assert!(said.ends_with('…'), "{said}");
        assert!(
            said.len() < crate::error::PROBLEM_CHARS_MAX + 64,
            "{}",
            said.len()
        );
    }

    fn parse(s: &str) -> OwnedValue {
        let mut b = s.as_bytes().to_vec();
        simd_json::to_owned_value(&mut b).unwrap()
    }

    /// Black-box round 67c: a NUL and a direction override were sold in a first name.
    /// Control characters other than tabs and line breaks, and the direction overrides
    /// and isolates, are refused in a string field, naming the field, never echoing it.
    #[test]
    fn a_string_field_refuses_control_characters_and_direction_overrides() {
        let full = |first: &str| {
            let body = serde_json::json!({"state": "TX", "zip": "76180", "first_name": first,
                "last_name": "Diaz", "phone": "+18175550123"})
            .to_string();
            auto_schema().validate(&parse(&body), LeadMode::Full, "lead")
        };
        for bad in [
            "Ana\u{0}",
            "Ana\u{202E}",
            "A\u{1B}[31m",
            "Ana\u{2066}x",
            "Ana\u{85}",
            "Ana\u{7F}",
        ] {
            let e = full(bad).unwrap_err();
            let p = &e.problems;
            assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
            assert_eq!(p[0].field, "lead.first_name");
            assert!(p[0].problem.contains("control characters"), "{p:?}");
            assert!(!p[0].problem.contains("Ana"), "{p:?}");
        }
        for good in [
            "Ana",
            "Ana\tMaría",
            "line one\r\nline two",
            "زهرا\u{200C}ی",
            "👩\u{200D}💻",
        ] {
            assert!(full(good).is_ok(), "{good:?}");
        }
    }

    /// Black-box round 159b: `"blocked"@example.com` (a quoted local part, the mailbox
    /// `blocked@example.com`) passed that address's suppression list and sold a consumer
    /// again. An address with a quote, comment, domain literal or any other of RFC 5322's
    /// specials but `@` and `.` is refused, naming the field and not echoing the value;
    /// plain addresses, plus-addresses and Unicode ones are taken.
    #[test]
    fn an_e_mail_address_with_quotes_comments_or_brackets_is_refused() {
        let full = |email: &str| {
            let body = serde_json::json!({"state": "TX", "zip": "76180", "first_name": "Ana",
                "last_name": "Diaz", "phone": "+18175550123", "email": email})
            .to_string();
            auto_schema().validate(&parse(&body), LeadMode::Full, "lead")
        };
        for bad in [
            "\"blocked\"@example.com",
            "\"bl\\ocked\"@example.com",
            "blocked(comment)@example.com",
            "zed@[mail.example.com]",
            "zed@[192.0.2.1]",
            "a,b@example.com",
            "a;b@example.com",
            "a:b@example.com",
            "<ana@example.com>",
            "a\\b@example.com",
        ] {
            let e = full(bad).unwrap_err();
            let p = &e.problems;
            assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
            assert_eq!(p[0].field, "lead.email");
            assert_eq!(p[0].problem, EMAIL_SPECIALS_PROBLEM, "{bad:?}");
            assert!(!p[0].problem.contains("blocked"), "{p:?}");
        }
        for good in [
            "blocked@example.com",
            "ana+x@example.com",
            "o'brien@example.com",
            "jos\u{e9}@ex\u{e4}mple.com",
            "bob@xn--exmple-cua.com",
            // Round 160a: an ideographic full stop (or a form of it) is a dot.
            "bob@ex\u{e4}mple\u{3002}com",
            "bob@ex\u{e4}mple\u{ff61}com",
            "bob@ex\u{e4}mple\u{ff0e}com",
        ] {
            assert!(full(good).is_ok(), "{good:?}");
        }
        // Round 162a: an empty label (`..`) is refused as written.
        for bad in [
            "bob@\u{3002}com",
            "bob@com\u{ff0e}",
            "bob@com",
            "bob@example..com",
            "bob@example.\u{3002}com",
        ] {
            let e = full(bad).unwrap_err();
            assert_eq!(
                e.problems[0].problem, "must be an e-mail address",
                "{bad:?}"
            );
        }
        // Round 160a: a direction override is refused as in a string field.
        for bad in ["d\u{202e}@x.com", "d@x.co\u{2066}m"] {
            let e = full(bad).unwrap_err();
            assert_eq!(e.problems[0].problem, crate::error::UNSAFE_TEXT, "{bad:?}");
        }
    }

    #[test]
    fn ping_ok_in_schema_order() {
        let lead = auto_schema()
            .validate(
                &parse(r#"{"zip":"76180","state":"TX","age":42}"#),
                LeadMode::Ping,
                "lead",
            )
            .unwrap();
        let names: Vec<_> = lead
            .iter(&auto_schema())
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(names, ["state", "zip", "age"]);
    }

    /// A ping names no post-only or personal field, not even as `null` (black-box round
    /// 9: `"email": null` and `"city": null` were taken as absent and the ping bid, though
    /// the ping's schema has no such property); a ping field given `null` is absent, and
    /// a full lead may name any field `null`. A personal field named as `null` carries no
    /// personal data: it is not `pii_in_ping` (black-box round 105a); with a value it is.
    #[test]
    fn a_ping_names_no_post_only_or_personal_field_even_as_null() {
        let err = auto_schema()
            .validate(
                &parse(r#"{"state":"TX","zip":"76180","age":null,"email":null,"city":null}"#),
                LeadMode::Ping,
                "lead",
            )
            .unwrap_err();
        let problems = pairs(&err);
        assert_eq!(
            problems,
            [
                ("lead.city", NOT_A_PING_FIELD_NULL),
                ("lead.email", NOT_A_PING_FIELD_NULL),
            ]
        );
        assert!(!err.pii, "a null is no personal data");
        let err = auto_schema()
            .validate(
                &parse(r#"{"state":"TX","zip":"76180","email":"a@b.co","city":"X"}"#),
                LeadMode::Ping,
                "lead",
            )
            .unwrap_err();
        let problems = pairs(&err);
        assert_eq!(
            problems,
            [
                (
                    "lead.city",
                    "is not allowed in a ping; send it with the post"
                ),
                ("lead.email", "is personal data and not allowed in a ping"),
            ]
        );
        assert!(err.pii);
        let full = r#"{"state":"TX","zip":"76180","first_name":"A","last_name":"B",
            "phone":"+18175550123","email":null,"city":null}"#;
        assert!(auto_schema()
            .validate(&parse(full), LeadMode::Full, "lead")
            .is_ok());
    }

    /// A required field sent as `null` is said to be null, not missing (black-box round
    /// 104a: "is required" read as if it had not been sent), in a ping and a full lead.
    #[test]
    fn a_required_field_sent_as_null_is_said_to_be_null() {
        let problems = |body: &str, mode| {
            auto_schema()
                .validate(&parse(body), mode, "lead")
                .unwrap_err()
                .problems
                .into_iter()
                .map(|p| (p.field, p.problem))
                .collect::<Vec<_>>()
        };
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            problems(r#"{"state":null}"#, LeadMode::Ping),
            [
                s("lead.state", "is required; null counts as not sent"),
                s("lead.zip", "is required"),
            ]
        );
        let full = r#"{"state":"TX","zip":"76180","first_name":null,"last_name":"B",
            "phone":"+18175550123"}"#;
        assert_eq!(
            problems(full, LeadMode::Full),
            [s("lead.first_name", "is required; null counts as not sent")]
        );
    }

    /// Round 191b: a required text that says nothing (empty, white space, characters that
    /// print as nothing) is refused as no value; an optional one is taken as sent.
    #[test]
    fn a_required_text_that_says_nothing_is_refused() {
        let lead = |first: &str, city: &str| {
            parse(&format!(
                r#"{{"state":"TX","zip":"76180","first_name":{},"last_name":"B",
                "phone":"+18175550123","city":{}}}"#,
                serde_json::to_string(first).unwrap(),
                serde_json::to_string(city).unwrap()
            ))
        };
        for blank in [
            "",
            " ",
            "\t\n ",
            "\u{200B}\u{FEFF}",
            "\u{3000}\u{E0041}",
            "\u{2800}",
        ] {
            let err = auto_schema()
                .validate(&lead(blank, blank), LeadMode::Full, "lead")
                .unwrap_err();
            let problems = pairs(&err);
            assert_eq!(problems, [("lead.first_name", REQUIRED_BLANK)], "{blank:?}");
        }
        // Said as blank before a pattern or the control characters are (round 192a), in a
        // ping as in a full lead.
        let sku = VerticalSchema {
            fields: vec![FieldSpec {
                name: "sku".into(),
                kind: FieldKind::String {
                    len_max: 8,
                    pattern: Some(regex::Regex::new("^(?:[A-Z]{2}[0-9]+)$").unwrap()),
                },
                required: true,
                ping: true,
                pii: false,
            }],
        };
        for blank in ["", "\u{200B}", "\n", "\u{0}", "          \u{3000}"] {
            for mode in [LeadMode::Ping, LeadMode::Full] {
                let err = sku
                    .validate(
                        &parse(&serde_json::json!({"sku": blank}).to_string()),
                        mode,
                        "lead",
                    )
                    .unwrap_err();
                assert_eq!(pairs(&err), [("lead.sku", REQUIRED_BLANK)], "{blank:?}");
            }
        }
        for named in ["A", " Ana ", "\u{200B}A", "\u{1F600}"] {
            assert!(
                auto_schema()
                    .validate(&lead(named, ""), LeadMode::Full, "lead")
                    .is_ok(),
                "{named:?}"
            );
        }
    }

    #[test]
    fn every_problem_at_once() {
        let err = auto_schema()
            .validate(
                &parse(r#"{"zip":"7618","age":"x","color":1,"credit":"meh"}"#),
                LeadMode::Ping,
                "lead",
            )
            .unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "lead.color",
                "lead.state",
                "lead.zip",
                "lead.age",
                "lead.credit"
            ]
        );
        assert!(!err.pii);
        assert_eq!(err.problems[2].problem, "must be 5 digits");
    }

    /// A whole number past an i64 or past a double's exact range is out of the field's
    /// range, not "not a whole number" (black-box round 45: `"age": 2^64`); a fraction
    /// is still not a whole number.
    #[test]
    fn a_whole_number_too_large_is_out_of_range_and_a_fraction_is_not_whole() {
        for (age, problem) in [
            ("18446744073709551616", "must be between 16 and 120"),
            ("9223372036854775808", "must be between 16 and 120"),
            ("1e300", "must be between 16 and 120"),
            ("-1e20", "must be between 16 and 120"),
            ("121", "must be between 16 and 120"),
            ("42.5", "must be a whole number"),
            ("\"42\"", "must be a whole number"),
        ] {
            let err = auto_schema()
                .validate(
                    &parse(&format!(r#"{{"zip":"76180","state":"TX","age":{age}}}"#)),
                    LeadMode::Ping,
                    "lead",
                )
                .unwrap_err();
            assert_eq!(err.problems.len(), 1, "{age}");
            assert_eq!(err.problems[0].field, "lead.age", "{age}");
            assert_eq!(err.problems[0].problem, problem, "{age}");
        }
    }

    /// A number field's bounds are said as a person reads them: plain within the everyday
    /// range, in scientific notation past it (black-box round 231c: `1e300` was written
    /// out as 301 digits).
    #[test]
    fn a_number_out_of_range_says_its_bounds_readably() {
        let schema = |min: f64, max: f64| VerticalSchema {
            fields: vec![FieldSpec {
                name: "score".into(),
                kind: FieldKind::Number { min, max },
                required: true,
                ping: true,
                pii: false,
            }],
        };
        for (min, max, value, problem) in [
            (-1e300, 1e300, "1e301", "must be between -1e300 and 1e300"),
            (
                -1e300,
                1e300,
                "-1.7e308",
                "must be between -1e300 and 1e300",
            ),
            (0.0, 1.5e20, "2e20", "must be between 0 and 1.5e20"),
            (1e-9, 0.5, "0.75", "must be between 1e-9 and 0.5"),
            (-2.5, 100.25, "100.5", "must be between -2.5 and 100.25"),
            (0.0, 1e15, "1e16", "must be between 0 and 1000000000000000"),
        ] {
            let err = schema(min, max)
                .validate(
                    &parse(&format!(r#"{{"score":{value}}}"#)),
                    LeadMode::Ping,
                    "lead",
                )
                .unwrap_err();
            assert_eq!(pairs(&err), [("lead.score", problem)], "{value}");
        }
        assert!(schema(-1e300, 1e300)
            .validate(&parse(r#"{"score":1e299}"#), LeadMode::Ping, "lead")
            .is_ok());
    }

    #[test]
    fn pii_in_ping_is_flagged() {
        let err = auto_schema()
            .validate(
                &parse(r#"{"zip":"76180","state":"TX","phone":"+18175550123"}"#),
                LeadMode::Ping,
                "lead",
            )
            .unwrap_err();
        assert!(err.pii);
        assert_eq!(err.problems[0].field, "lead.phone");
    }

    /// Black-box round 36: past 256 fields the answer was the count alone, hiding a
    /// personal field in a ping (not `pii_in_ping`) and the schema fields' problems.
    #[test]
    fn too_many_fields_still_finds_pii_and_the_schema_fields_problems() {
        let mut text = String::from(r#"{"zip":"7","state":"TX","phone":"+18175550123""#);
        for i in 0..LEAD_FIELDS_MAX {
            text.push_str(&format!(r#","f{i}":1"#));
        }
        text.push('}');
        let err = auto_schema()
            .validate(&parse(&text), LeadMode::Ping, "lead")
            .unwrap_err();
        assert!(err.pii);
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        // The count, then the schema's fields; the stray names are not listed one by one.
        assert_eq!(
            fields,
            ["lead", "lead.zip", "lead.phone"],
            "{:?}",
            err.problems
        );
        assert_eq!(err.problems[0].problem, "must have at most 256 fields");
    }

    #[test]
    fn full_lead_requires_pii_fields() {
        let err = auto_schema()
            .validate(
                &parse(r#"{"zip":"76180","state":"TX"}"#),
                LeadMode::Full,
                "lead",
            )
            .unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["lead.first_name", "lead.last_name", "lead.phone"]);
    }

    #[test]
    fn dates() {
        assert!(is_date("2024-02-29"));
        assert!(!is_date("2023-02-29"));
        assert!(!is_date("2023-13-01"));
        assert!(!is_date("2023-1-01"));
        assert!(is_date("1900-01-01") && is_date("2200-12-31"));
        assert!(!is_date("1899-12-31") && !is_date("2201-01-01"));
        // Out of range in the right format: the message says the range (round 56b).
        let v = OwnedValue::from("1899-12-31");
        let e = check_value(&FieldKind::Date, &v).unwrap_err();
        assert!(e.contains("from 1900-01-01 to 2200-12-31"), "{e}");
    }
}
