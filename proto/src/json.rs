//! Small helpers that pull typed envelope fields out of a parsed JSON object while
//! collecting every problem with its path. Nothing here panics on any input.

use std::collections::BTreeMap;

use simd_json::{OwnedValue, StaticNode};

use crate::error::{ApiError, ErrorCode, FieldProblem};
use crate::money::Micros;

/// Most entries in a string map (`source`, `dedup`, `consent`).
pub const STRING_MAP_ENTRIES_MAX: usize = 32;
/// Longest value in a string map, in characters.
pub const STRING_MAP_VALUE_LEN_MAX: usize = 2048;
/// Longest key in a string map, in characters.
pub const STRING_MAP_KEY_LEN_MAX: usize = 64;

/// Deepest nesting of arrays and objects accepted in a seller's body (`/v1/ping`,
/// `/v1/post`, `/v1/leads`), the top-level object counting as level 1. Checked by
/// [`check_depth`] before any parser runs: simd-json and serde build and drop values
/// recursively, so a 60 KB body of `[` would otherwise overflow a worker's stack and
/// abort the process. A real body is 2 or 3 levels deep.
pub const SELLER_BODY_DEPTH_MAX: usize = 64;
/// Deepest nesting accepted in a buyer's ping or post answer (see
/// [`SELLER_BODY_DEPTH_MAX`]); a real answer is 1 level deep. A deeper answer is an
/// invalid answer (`too_deep`), counted as no bid or a rejection.
pub const BUYER_ANSWER_DEPTH_MAX: usize = 32;
/// Deepest nesting accepted in a ping or post the bidder SDK receives from the exchange.
pub const EXCHANGE_MESSAGE_DEPTH_MAX: usize = 64;

/// A JSON text nested deeper than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("JSON nested deeper than {depth_max} levels")]
pub struct TooDeep {
    /// The limit that was exceeded.
    pub depth_max: usize,
}

/// Why a `Content-Type` value is not JSON this project reads, if it is not: the media
/// type must be `application/json`, and a `charset`, if given, UTF-8 (RFC 8259). One
/// rule for the bodies sellers send and the answers buyers send.
pub fn media_type_problem(content_type: &str) -> Option<&'static str> {
    let mut parts = content_type.split(';');
    if !parts
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Some("Content-Type must be application/json");
    }
    for param in parts {
        if let Some((name, value)) = param.split_once('=') {
            let value = value.trim().trim_matches('"');
            if name.trim().eq_ignore_ascii_case("charset")
                && !value.eq_ignore_ascii_case("utf-8")
                && !value.eq_ignore_ascii_case("utf8")
            {
                return Some("the body must be UTF-8 (charset=utf-8, or no charset)");
            }
        }
    }
    None
}

/// Checks that `bytes` never nests arrays and objects deeper than `depth_max` levels,
/// without parsing them: one pass, no recursion, no allocation. Brackets inside strings
/// (with their `\"` and `\\` escapes) do not count. Invalid JSON that is not too deep
/// passes, to be refused by the parser; unbalanced closers never make the depth negative.
pub fn check_depth(bytes: &[u8], depth_max: usize) -> Result<(), TooDeep> {
    check_depth_to_end(bytes, depth_max).map(|_| ())
}

/// [`check_depth`], returning also where the first array or object of `bytes` closes
/// (the offset past its last bracket), when it does: what follows it, but white space, is
/// text after the JSON value.
fn check_depth_to_end(bytes: &[u8], depth_max: usize) -> Result<Option<usize>, TooDeep> {
    let mut depth = 0usize;
    let mut end = None;
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => {
                // Inside a string only `"` and `\\` matter: jump between them (most of a
                // body's bytes are keys and string values).
                loop {
                    let Some(at) = memchr::memchr2(b'"', b'\\', bytes.get(i..).unwrap_or_default())
                    else {
                        // An unterminated string: no structure follows.
                        return Ok(end);
                    };
                    let found = bytes.get(i + at).copied();
                    // Past the `"` (string over) or past the escaped byte.
                    i += at + if found == Some(b'"') { 1 } else { 2 };
                    if found == Some(b'"') {
                        break;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return Err(TooDeep { depth_max });
                }
            }
            b']' | b'}' => {
                if depth == 1 && end.is_none() {
                    end = Some(i);
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
    Ok(end)
}

/// Where text after a body's first array or object begins (white space skipped), if
/// any: `{} x` has it at byte 3.
fn text_after_value(bytes: &[u8], end: Option<usize>) -> Option<usize> {
    let first = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    if !matches!(bytes[first], b'{' | b'[') {
        return None;
    }
    let end = end?;
    let rest = bytes.get(end..)?;
    rest.iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map(|at| end + at)
}

/// A `\u` escape of a UTF-16 surrogate that is not half of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON: the \\u escape at byte {at} is half of a UTF-16 surrogate pair without the other half")]
pub struct LoneSurrogate {
    /// Offset of the escape's backslash in the body.
    pub at: usize,
}

/// Checks every `\u` escape of `bytes` for lone UTF-16 surrogates: a high surrogate
/// (`\ud800` to `\udbff`) must be followed at once by a low one (`\udc00` to
/// `\udfff`), and a low one must not stand alone. simd-json turns a lone high surrogate
/// into a NUL character instead of refusing it (simd-lite/simd-json#481), which would
/// change a seller's text silently. One pass from backslash to backslash, no allocation;
/// anything else wrong with an escape is left to the parser.
pub fn check_surrogates(bytes: &[u8]) -> Result<(), LoneSurrogate> {
    let hex4 = |at: usize| -> Option<u16> {
        let digits = bytes.get(at..at + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        u16::from_str_radix(text, 16).ok()
    };
    let mut i = 0usize;
    while let Some(found) = memchr::memchr(b'\\', bytes.get(i..).unwrap_or_default()) {
        let at = i + found;
        if bytes.get(at + 1) != Some(&b'u') {
            // `\\`, `\"` and the other two-byte escapes.
            i = at + 2;
            continue;
        }
        match hex4(at + 2) {
            Some(0xD800..=0xDBFF) => {
                let low = (bytes.get(at + 6) == Some(&b'\\') && bytes.get(at + 7) == Some(&b'u'))
                    .then(|| hex4(at + 8))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err(LoneSurrogate { at });
                }
                i = at + 12;
            }
            Some(0xDC00..=0xDFFF) => return Err(LoneSurrogate { at }),
            _ => i = at + 6,
        }
    }
    Ok(())
}

/// A name that appears twice in one JSON object. RFC 8259 leaves such a text's meaning
/// to the reader (simd-json keeps both entries and a lookup finds the first; many
/// parsers keep the last), so it is refused rather than read one way here and another
/// way by whoever reads the same bytes next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the name \"{name}\" appears more than once in one object")]
pub struct DuplicateName {
    /// The repeated name: at most 64 characters, control characters as `?`.
    pub name: String,
    /// Where it is, as a field path (`lead.state`, `x[1].k`; at the top level the name
    /// alone), each name in it as a field path shows one
    /// ([`crate::error::printable_name`]). Empty for a buyer's answer, whose problem is
    /// reported without a path.
    pub path: String,
}

/// Names per object up to which repeats are found by comparing every pair; larger
/// objects are sorted (on the stack up to [`STACK_NAMES_MAX`] names).
const PAIRWISE_NAMES_MAX: usize = 8;
/// Names per object sorted without an allocation (a lead has at most
/// `LEAD_FIELDS_MAX` fields; larger objects are sorted in a `Vec`).
const STACK_NAMES_MAX: usize = 64;

/// The first name that appears twice among `names`, if one does.
fn repeated_name<'a>(names: impl Iterator<Item = &'a str>, len: usize) -> Option<&'a str> {
    fn adjacent<'a>(sorted: &mut [&'a str]) -> Option<&'a str> {
        sorted.sort_unstable();
        sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
    }
    if len < 2 {
        return None;
    }
    if len <= PAIRWISE_NAMES_MAX {
        let mut seen: [&str; PAIRWISE_NAMES_MAX] = [""; PAIRWISE_NAMES_MAX];
        for (i, name) in names.enumerate().take(PAIRWISE_NAMES_MAX) {
            if seen[..i].contains(&name) {
                return Some(name);
            }
            seen[i] = name;
        }
        return None;
    }
    if len <= STACK_NAMES_MAX {
        let mut buf: [&str; STACK_NAMES_MAX] = [""; STACK_NAMES_MAX];
        let mut n = 0;
        for (slot, name) in buf.iter_mut().zip(names) {
            *slot = name;
            n += 1;
        }
        return adjacent(&mut buf[..n]);
    }
    adjacent(&mut names.collect::<Vec<_>>())
}

/// The words for a name given twice in one object, as every refusal of one says them.
pub fn duplicate_name_text(name: &str) -> String {
    duplicate(name).to_string()
}

fn duplicate(name: &str) -> DuplicateName {
    DuplicateName {
        name: name
            .chars()
            .take(64)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
        path: String::new(),
    }
}

/// Checks that no object in `value`, at any depth, has a name twice. The depth is
/// bounded by [`check_depth`], which runs before any parse.
pub fn check_duplicate_names(value: &OwnedValue) -> Result<(), DuplicateName> {
    match value {
        OwnedValue::Object(o) => {
            if let Some(name) = repeated_name(o.keys().map(String::as_str), o.len()) {
                let mut d = duplicate(name);
                d.path = crate::error::printable_name(name);
                return Err(d);
            }
            // The path is built on the way out, only for the one found (round 56b: the
            // problem was under `body`, whatever object held the name).
            o.iter().try_for_each(|(k, v)| {
                check_duplicate_names(v).map_err(|mut d| {
                    let sep = if d.path.starts_with('[') { "" } else { "." };
                    d.path = format!("{}{sep}{}", crate::error::printable_name(k), d.path);
                    d
                })
            })
        }
        OwnedValue::Array(a) => a.iter().enumerate().try_for_each(|(i, v)| {
            check_duplicate_names(v).map_err(|mut d| {
                let sep = if d.path.starts_with('[') { "" } else { "." };
                d.path = format!("[{i}]{sep}{}", d.path);
                d
            })
        }),
        OwnedValue::Static(_) | OwnedValue::String(_) => Ok(()),
    }
}

/// [`check_duplicate_names`] for a borrowed value (buyer answers).
pub fn check_duplicate_names_borrowed(
    value: &simd_json::BorrowedValue<'_>,
) -> Result<(), DuplicateName> {
    use simd_json::BorrowedValue;
    match value {
        BorrowedValue::Object(o) => {
            if let Some(name) = repeated_name(o.keys().map(|k| k.as_ref()), o.len()) {
                return Err(duplicate(name));
            }
            o.values().try_for_each(check_duplicate_names_borrowed)
        }
        BorrowedValue::Array(a) => a.iter().try_for_each(check_duplicate_names_borrowed),
        BorrowedValue::Static(_) | BorrowedValue::String(_) => Ok(()),
    }
}

/// Parses a seller's body as JSON; a syntax error, nesting deeper than
/// [`SELLER_BODY_DEPTH_MAX`], or a name repeated in one object
/// ([`check_duplicate_names`]) is `invalid_request`. The buffer is used as scratch.
pub fn parse_value(buf: &mut [u8]) -> Result<OwnedValue, ApiError> {
    parse_value_with_depth(buf, SELLER_BODY_DEPTH_MAX)
}

/// [`parse_value`] with another depth limit.
pub fn parse_value_with_depth(buf: &mut [u8], depth_max: usize) -> Result<OwnedValue, ApiError> {
    let end = check_depth_to_end(buf, depth_max).map_err(|e| {
        ApiError::from_fields(
            ErrorCode::InvalidRequest,
            vec![FieldProblem::new("body", e.to_string())],
        )
    })?;
    check_surrogates(buf).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    // Text after the value: the value alone is parsed, to name its own error first, and
    // then the text is named where it begins (black-box round 71b: `{} x` was "a
    // character that cannot start or continue a JSON value" at byte 1, the `}`).
    let (buf, after) = match (text_after_value(buf, end), end) {
        (Some(at), Some(end)) => (&mut buf[..end], Some(at)),
        _ => (buf, None),
    };
    let value = simd_json::to_owned_value(buf).map_err(|e| {
        // The parser checks UTF-8 before it writes to the buffer, and gives an error's
        // position inside a string as the string's own: find the byte in the body.
        let at = match (e.error(), std::str::from_utf8(buf)) {
            (simd_json::ErrorType::InvalidUtf8, Err(bad)) => Some(bad.valid_up_to()),
            _ => None,
        };
        let message = match at {
            Some(at) => format!("malformed JSON at byte {at}: bytes that are not UTF-8"),
            None => syntax_error_message(&e),
        };
        ApiError::new(ErrorCode::InvalidRequest, message)
    })?;
    if let Some(at) = after {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("malformed JSON at byte {at}: more text after the JSON value"),
        ));
    }
    check_duplicate_names(&value).map_err(|e| {
        ApiError::from_fields(
            ErrorCode::InvalidRequest,
            vec![FieldProblem::new(e.path.as_str(), e.to_string())],
        )
    })?;
    Ok(value)
}

/// A JSON syntax error in words, with the byte it is at. Never the bytes themselves (a
/// post's body holds PII), and never the parser's internal names.
pub fn syntax_error_message(e: &simd_json::Error) -> String {
    use simd_json::ErrorType as T;
    let what = match e.error() {
        // Found before parsing, with no position.
        T::Syntax => {
            return "malformed JSON: a string, object or array is not closed, brackets do not match, or a string holds a raw control character (escape it: \\n, \\u0001)"
                .into()
        }
        // The end of the body, where no byte is worth naming (black-box round 209a: a
        // body of white space only was "at byte 0", and it ends at byte 3).
        T::Eof | T::UnterminatedString => {
            return "malformed JSON: the body ends before the JSON value does".into()
        }
        T::ExpectedObjectContent => "a name, ',' or '}' expected in an object",
        T::ExpectedArrayContent => "a value, ',' or ']' expected in an array",
        T::TrailingData => "more text after the JSON value",
        T::InvalidNumber | T::InvalidExponent | T::Overflow => {
            "a number that is not valid JSON or is out of a double's range (past about 1.8e308)"
        }
        // Found inside a string, whose own offset the parser gives: no byte.
        T::InvalidEscape | T::InvalidUnicodeEscape | T::InvalidUnicodeCodepoint => {
            return "malformed JSON: a string holds a backslash escape that is not valid JSON"
                .into()
        }
        T::InvalidUtf8 => return "malformed JSON: bytes that are not UTF-8".into(),
        T::ExpectedObjectColon => "a ':' expected after a name",
        T::ExpectedMapComma | T::ExpectedArrayComma => "a ',' expected between values",
        T::ExpectedObjectKey | T::KeyMustBeAString => "a quoted name expected",
        T::InputTooLarge => "a body too large to parse",
        _ => "a character that cannot start or continue a JSON value",
    };
    format!("malformed JSON at byte {}: {what}", e.index())
}

/// Walks one JSON object, taking fields by name and recording problems.
#[derive(Debug)]
pub struct ObjectReader<'a> {
    obj: Option<&'a simd_json::owned::Object>,
    taken: Vec<&'static str>,
    pub problems: Vec<FieldProblem>,
}

impl<'a> ObjectReader<'a> {
    /// A reader over `value`; if it is not an object, that is the (only) problem.
    pub fn new(value: &'a OwnedValue) -> ObjectReader<'a> {
        match value {
            OwnedValue::Object(o) => ObjectReader {
                obj: Some(o),
                taken: Vec::new(),
                problems: Vec::new(),
            },
            _ => ObjectReader {
                obj: None,
                taken: Vec::new(),
                problems: vec![FieldProblem::new("body", "must be a JSON object")],
            },
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a OwnedValue> {
        self.taken.push(key);
        self.obj?
            .get(key)
            .filter(|v| !matches!(v, OwnedValue::Static(StaticNode::Null)))
    }

    fn problem(&mut self, field: &str, problem: impl Into<String>) {
        self.problems.push(FieldProblem::new(field, problem));
    }

    /// A required field of any type.
    pub fn value(&mut self, key: &'static str) -> Option<&'a OwnedValue> {
        let v = self.get(key);
        if let (None, Some(obj)) = (v, self.obj) {
            // Sent as `null`, said so (black-box round 105a: "is required" read as if the
            // field had not been sent), as a lead's required fields say it.
            let problem = if obj.contains_key(key) {
                crate::error::REQUIRED_NULL
            } else {
                "is required"
            };
            self.problem(key, problem);
        }
        v
    }

    /// A required string of at most `len_max` bytes.
    pub fn string(&mut self, key: &'static str, len_max: usize) -> Option<String> {
        let v = self.value(key)?;
        self.check_str(key, v, len_max)
    }

    /// An optional string of at most `len_max` bytes.
    pub fn string_opt(&mut self, key: &'static str, len_max: usize) -> Option<String> {
        let v = self.get(key)?;
        self.check_str(key, v, len_max)
    }

    fn check_str(&mut self, key: &str, v: &OwnedValue, len_max: usize) -> Option<String> {
        match v {
            OwnedValue::String(s) if s.is_empty() => {
                self.problem(key, "must not be empty");
                None
            }
            // Characters, as JSON Schema's maxLength counts them (the OpenAPI documents).
            OwnedValue::String(s) if s.chars().count() <= len_max => Some(s.to_string()),
            OwnedValue::String(_) => {
                self.problem(key, format!("must be at most {len_max} characters"));
                None
            }
            _ => {
                self.problem(key, "must be a string");
                None
            }
        }
    }

    /// An optional boolean, `false` when absent.
    pub fn bool_or_false(&mut self, key: &'static str) -> bool {
        match self.get(key) {
            None => false,
            Some(OwnedValue::Static(StaticNode::Bool(b))) => *b,
            Some(_) => {
                self.problem(key, "must be true or false");
                false
            }
        }
    }

    /// An optional amount of money.
    pub fn money_opt(&mut self, key: &'static str) -> Option<Micros> {
        let v = self.get(key)?;
        let f = match v {
            OwnedValue::Static(StaticNode::I64(i)) => *i as f64,
            OwnedValue::Static(StaticNode::U64(u)) => *u as f64,
            OwnedValue::Static(StaticNode::F64(f)) => *f,
            _ => {
                self.problem(key, "must be a number");
                return None;
            }
        };
        match Micros::from_decimal_f64(f) {
            Ok(m) => Some(m),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    /// An optional object whose values are all strings, bounded in size.
    pub fn string_map(&mut self, key: &'static str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = self.get(key) else { return out };
        let OwnedValue::Object(o) = v else {
            self.problem(key, "must be an object of strings");
            return out;
        };
        if o.len() > STRING_MAP_ENTRIES_MAX {
            self.problem(
                key,
                format!("must have at most {STRING_MAP_ENTRIES_MAX} entries"),
            );
            return out;
        }
        let mut bad: Vec<(String, std::borrow::Cow<'static, str>)> = Vec::new();
        for (k, v) in o.iter() {
            match v {
                // Characters, as JSON Schema's maxLength counts them (the OpenAPI documents).
                // Which of the two, and its limit (black-box round 104a: "is too long" on a
                // key echoed cut to 64 characters read as a value problem).
                _ if k.chars().count() > STRING_MAP_KEY_LEN_MAX => bad.push((
                    crate::error::printable_name(k),
                    format!("the name must be at most {STRING_MAP_KEY_LEN_MAX} characters").into(),
                )),
                OwnedValue::String(s) if s.chars().count() > STRING_MAP_VALUE_LEN_MAX => {
                    bad.push((
                        crate::error::printable_name(k),
                        format!("must be at most {STRING_MAP_VALUE_LEN_MAX} characters").into(),
                    ));
                }
                // As a lead's strings (black-box round 69c: a NUL and an override in a
                // consent token went to the buyer).
                OwnedValue::String(s)
                    if crate::error::has_unsafe_text(s) || crate::error::has_unsafe_text(k) =>
                {
                    bad.push((
                        crate::error::printable_name(k),
                        crate::error::UNSAFE_TEXT.into(),
                    ));
                }
                OwnedValue::String(s) => {
                    out.insert(k.to_string(), s.to_string());
                }
                _ => bad.push((crate::error::printable_name(k), "must be a string".into())),
            }
        }
        bad.sort();
        for (k, p) in bad {
            self.problem(&format!("{key}.{k}"), p);
        }
        out
    }

    /// Records every key of the object that no accessor asked for as unknown.
    pub fn finish_unknown(&mut self) {
        let Some(obj) = self.obj else { return };
        let mut unknown: Vec<String> = obj
            .keys()
            .filter(|k| !self.taken.contains(&k.as_str()))
            .map(|k| crate::error::printable_name(k))
            .collect();
        unknown.sort();
        for k in unknown {
            self.problems
                .push(FieldProblem::new(k, crate::error::UNKNOWN_FIELD));
        }
    }
}

#[cfg(test)]
mod tests {
    /// A body that ends before its value says so without a byte (black-box round 209a:
    /// white space only was "at byte 0"), whatever precedes its end.
    #[test]
    fn a_body_that_ends_early_names_no_byte() {
        for body in ["   ", "", "{\"a\":", "[1, ", "\"abc"] {
            let mut buf = body.as_bytes().to_vec();
            let e = parse_value(&mut buf).unwrap_err();
            let said = e.to_string();
            assert!(!said.contains("at byte"), "{body:?}: {said}");
            assert!(said.contains("malformed JSON"), "{body:?}: {said}");
        }
    }

    use super::*;

    fn nested(depth: usize) -> Vec<u8> {
        let mut v = vec![b'['; depth];
        v.extend(std::iter::repeat_n(b']', depth));
        v
    }

    #[test]
    fn a_syntax_error_is_told_in_words_with_its_byte_and_never_echoes_the_body() {
        let cases: [(&str, &str); 15] = [
            (r#"{"email": "janedoe"#, "is not closed"),
            (
                r#"{"email": janedoe}"#,
                "at byte 10: a character that cannot",
            ),
            (r#"{"email" "janedoe"}"#, "at byte 9: a ':'"),
            (
                r#"{"email": "janedoe" "zip": 1}"#,
                "at byte 20: a name, ','",
            ),
            (r#"{"zip": 0janedoe}"#, "at byte 9: a number"),
            // Text after the value, named where it begins (black-box round 71b: at the
            // value's last byte, as a character that cannot start a value).
            (
                r#"{"email": "janedoe"} janedoe"#,
                "at byte 21: more text after the JSON value",
            ),
            ("{} x", "at byte 3: more text after the JSON value"),
            ("[1,2]   junk", "at byte 8: more text after the JSON value"),
            ("{}}", "at byte 2: more text after the JSON value"),
            // An error inside the value comes first.
            ("{\"a\":tru} x", "at byte 5: a character that cannot"),
            (r#"{janedoe: 1}"#, "at byte 1: a name, ','"),
            // Inside a string: no byte of the string's own (black-box round 9).
            (
                r#"{"zip": "1", "email": "janedoe\x"}"#,
                "a string holds a backslash escape",
            ),
            (
                r#"{"email": "janedoe\u12G4"}"#,
                "a string holds a backslash escape",
            ),
            ("{\"email\": \"jane\u{1}doe\"}", "a raw control character"),
            (
                r#"{"zip": 1e400, "email": "janedoe"}"#,
                "at byte 8: a number that is not valid JSON or is out of",
            ),
        ];
        // Bytes that are not UTF-8 are named at their byte in the body, not the string.
        let mut b = br#"{"zip": "1", "email": "jane"#.to_vec();
        b.push(0xff);
        b.extend_from_slice(br#"doe"}"#);
        let e = parse_value(&mut b).unwrap_err();
        assert_eq!(
            e.message,
            "malformed JSON at byte 27: bytes that are not UTF-8"
        );
        for (body, words) in cases {
            let mut b = body.as_bytes().to_vec();
            let e = parse_value(&mut b).unwrap_err();
            let msg = e.message.clone();
            assert!(msg.starts_with("malformed JSON"), "{body}: {msg}");
            assert!(msg.contains(words), "{body}: {msg}");
            for leak in ["janedoe", "Error", "Tape", "'j'", "'0'"] {
                assert!(!msg.contains(leak), "{body}: {msg}");
            }
        }
    }

    #[test]
    fn a_name_twice_in_any_object_is_refused_with_its_name() {
        let wide: String = (0..40).map(|i| format!(r#""f{i}":{i},"#)).collect();
        let cases: [(String, &str); 6] = [
            (r#"{"a":1,"a":2}"#.into(), "a"),
            (
                r#"{"lead":{"state":"TX","zip":"1","state":"CA"}}"#.into(),
                "state",
            ),
            (r#"{"x":[{"k":1},{"k":1,"k":2}]}"#.into(), "k"),
            (format!(r#"{{{wide}"f7":0}}"#), "f7"),
            (format!(r#"{{{wide}{wide}"x":0}}"#), "f0"),
            (r#"{"\u0001":1,"\u0001":2}"#.into(), "?"),
        ];
        for (body, name) in cases {
            let mut b = body.clone().into_bytes();
            let e = parse_value(&mut b).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{body}");
            assert_eq!(e.fields.len(), 1, "{body}");
            // Named where it is (round 56b: always `body`).
            let path = match name {
                "state" => "lead.state",
                "k" => "x[1].k",
                other => other,
            };
            assert_eq!(e.fields[0].field, path, "{body}");
            assert_eq!(
                e.fields[0].problem,
                format!("the name \"{name}\" appears more than once in one object"),
                "{body}"
            );
        }
        // The same name in different objects, and distinct names, are fine.
        let wide_ok = format!(r#"{{{wide}"last":0}}"#);
        let wider: String = (0..70).map(|i| format!(r#""g{i}":{i},"#)).collect();
        let wider_ok = format!(r#"{{{wider}"last":0}}"#);
        for ok in [
            r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#,
            r#"{"ab":1,"ba":2,"a":3,"b":4}"#,
            wide_ok.as_str(),
            wider_ok.as_str(),
        ] {
            assert!(parse_value(&mut ok.as_bytes().to_vec()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn lone_surrogate_escapes_are_refused_and_pairs_pass() {
        let ok: [&[u8]; 7] = [
            br#"{"a":"plain"}"#,
            br#"{"a":"\ud83d\ude00"}"#,
            br#"{"a":"\u00e9\u0041\uffff"}"#,
            // An escaped backslash before `ud800` is text, not an escape.
            br#"{"a":"\\ud800"}"#,
            br#"{"a":"\"\\\n\t"}"#,
            // Broken escapes are the parser's to refuse.
            br#"{"a":"\uzzzz"}"#,
            br#"{"a":"\u12"#,
        ];
        for body in ok {
            assert_eq!(
                check_surrogates(body),
                Ok(()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let lone: [(&[u8], usize); 7] = [
            (br#"{"a":"A\ud800B"}"#, 7),
            (br#"{"a":"\ud800"}"#, 6),
            (br#"{"a":"A\udbff"}"#, 7),
            (br#"{"a":"\udc00x"}"#, 6),
            (br#"{"a":"\ud800\u0041"}"#, 6),
            (br#"{"a":"\ud800\ud800"}"#, 6),
            (br#"{"a":"ok \ud83d\ude00 then \\ and \ud83d"}"#, 34),
        ];
        for (body, at) in lone {
            assert_eq!(
                check_surrogates(body),
                Err(LoneSurrogate { at }),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Through the seller's parse: `invalid_request`, naming the byte.
        let mut body = br#"{"a":"A\ud800B"}"#.to_vec();
        let e = parse_value(&mut body).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("byte 7"), "{}", e.message);
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert_eq!(check_depth(b"", 0), Ok(()));
        assert_eq!(check_depth(b"1", 0), Ok(()));
        assert_eq!(check_depth(b"{}", 0), Err(TooDeep { depth_max: 0 }));
        assert_eq!(check_depth(b"{}", 1), Ok(()));
        assert_eq!(check_depth(br#"{"a":[{"b":[]}]}"#, 4), Ok(()));
        assert_eq!(
            check_depth(br#"{"a":[{"b":[]}]}"#, 3),
            Err(TooDeep { depth_max: 3 })
        );
        // Siblings do not add up.
        assert_eq!(check_depth(b"[[],[],{},[[]]]", 3), Ok(()));
        assert_eq!(
            check_depth(b"[[],[],{},[[]]]", 2),
            Err(TooDeep { depth_max: 2 })
        );
    }

    /// The plain byte-by-byte scan `check_depth` replaced: the reference it must match.
    fn depth_reference(bytes: &[u8], depth_max: usize) -> Result<(), TooDeep> {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > depth_max {
                        return Err(TooDeep { depth_max });
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn depth_matches_the_byte_by_byte_reference(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"[]{}\"\\a:,1 ".to_vec()),
                0..200,
            ),
            depth_max in 0usize..6,
        ) {
            proptest::prop_assert_eq!(
                check_depth(&bytes, depth_max),
                depth_reference(&bytes, depth_max)
            );
        }
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(check_depth(br#"{"a":"[[[[{{{{"}"#, 1), Ok(()));
        assert_eq!(check_depth(br#"["]]]]]]", [[]]"#, 3), Ok(()));
        assert_eq!(
            check_depth(br#"["]]]]]]", [[]]"#, 2),
            Err(TooDeep { depth_max: 2 })
        );
        // Keys too.
        assert_eq!(check_depth(br#"{"[[[[":1}"#, 1), Ok(()));
    }

    #[test]
    fn escapes_inside_strings() {
        // An escaped quote does not end the string: the brackets after it are still text.
        assert_eq!(check_depth(br#"{"a":"x\"[[[[["}"#, 1), Ok(()));
        // An escaped backslash does not escape the closing quote: the brackets count.
        assert_eq!(check_depth(br#"{"a":"x\\",  "b":[[]]}"#, 3), Ok(()));
        assert_eq!(
            check_depth(br#"{"a":"x\\",  "b":[[]]}"#, 2),
            Err(TooDeep { depth_max: 2 })
        );
        // Unicode escapes and non-ASCII text are plain string bytes.
        assert_eq!(check_depth("{\"a\":\"\\u005b é [\"}".as_bytes(), 1), Ok(()));
        // An unterminated string hides what follows; the parser refuses it anyway.
        assert_eq!(check_depth(br#"{"a":"[[[["#, 1), Ok(()));
    }

    #[test]
    fn exactly_at_the_limit_and_one_past() {
        for limit in [
            SELLER_BODY_DEPTH_MAX,
            BUYER_ANSWER_DEPTH_MAX,
            EXCHANGE_MESSAGE_DEPTH_MAX,
        ] {
            assert_eq!(check_depth(&nested(limit), limit), Ok(()));
            assert_eq!(
                check_depth(&nested(limit + 1), limit),
                Err(TooDeep { depth_max: limit })
            );
        }
        // At the seller limit the parser gets the body; one past, it never does.
        assert!(parse_value(&mut nested(SELLER_BODY_DEPTH_MAX)).is_ok());
        let e = parse_value(&mut nested(SELLER_BODY_DEPTH_MAX + 1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.message, "body: JSON nested deeper than 64 levels");
        assert_eq!(e.fields[0].field, "body");
    }

    #[test]
    fn thirty_thousand_deep_is_refused_without_recursion() {
        let mut body = nested(30_000);
        assert_eq!(
            check_depth(&body, SELLER_BODY_DEPTH_MAX),
            Err(TooDeep { depth_max: 64 })
        );
        let e = parse_value(&mut body).unwrap_err();
        assert_eq!(e.message, "body: JSON nested deeper than 64 levels");
        // Objects as well as arrays.
        let mut objects = b"{\"a\":".repeat(30_000);
        objects.extend(b"1");
        objects.extend(b"}".repeat(30_000));
        assert!(parse_value(&mut objects).is_err());
    }

    #[test]
    fn unbalanced_closers_never_go_negative() {
        // `]]]]` first must not buy room for deeper nesting afterwards.
        let mut v = b"]]]]]]".to_vec();
        v.extend(nested(3));
        assert_eq!(check_depth(&v, 2), Err(TooDeep { depth_max: 2 }));
        assert_eq!(check_depth(&v, 3), Ok(()));
    }

    #[test]
    fn custom_limit() {
        assert!(parse_value_with_depth(&mut nested(2), 2).is_ok());
        let e = parse_value_with_depth(&mut nested(3), 2).unwrap_err();
        assert_eq!(e.message, "body: JSON nested deeper than 2 levels");
    }
}
