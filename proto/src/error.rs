//! The contract's error body: `{"error": {"code", "message", "fields": [...]}}`, and the
//! HTTP status that goes with each code.

use serde::Serialize;

/// Every error code of the wire contract (docs/API.md, "Errors"), with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    PiiInPing,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The request head is over the server's size or field-count limit (431).
    HeadersTooLarge,
    RateLimited,
    Overloaded,
    /// The exchange cannot sell right now and retrying soon will not help: its ledger
    /// failed (fail-stop until a restart). 503, without `Retry-After`.
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, in the contract's order (for series made before the first error).
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidRequest,
        ErrorCode::PiiInPing,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::HeadersTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::PiiInPing => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Overloaded | ErrorCode::Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::PiiInPing => "pii_in_ping",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// One problem with one field, named by its path (`lead.zip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub problem: String,
}

/// The longest field path a problem keeps, in characters (then `…`).
pub const FIELD_CHARS_MAX: usize = 256;
/// The longest problem text a problem keeps, in characters (then `…`).
pub const PROBLEM_CHARS_MAX: usize = 1_024;

impl FieldProblem {
    /// A problem, its path and text each cut to [`FIELD_CHARS_MAX`] and
    /// [`PROBLEM_CHARS_MAX`] characters: a list of problems stays bounded in bytes as
    /// well as in count (black-box round 134a: 100 keys of 20,000 characters made a
    /// 2 MB answer and a 2 MB log line).
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldProblem {
        FieldProblem {
            field: cut(field.into(), FIELD_CHARS_MAX),
            problem: cut(problem.into(), PROBLEM_CHARS_MAX),
        }
    }
}

/// `s`, or its first `max` characters and `…`.
fn cut(mut s: String, max: usize) -> String {
    if let Some((at, _)) = s.char_indices().nth(max) {
        s.truncate(at);
        s.push('…');
    }
    s
}

/// Whether a value says nothing: empty, or only characters that print as nothing: white
/// space, control characters, and Unicode's default-ignorable code points (zero-width
/// spaces and joiners, direction marks, the word joiner and its kin, the byte-order mark,
/// the soft hyphen, variation selectors, Hangul fillers, shorthand and musical format
/// controls, tag characters, and the unassigned code points Unicode says to show as
/// nothing), the interlinear annotation characters, the Egyptian hieroglyph format
/// controls and the blank Braille pattern. A copy-paste can carry any of them (black-box
/// rounds 27-28: a value of one zero-width space, then of one control character, counted
/// as consent given; round 191b: a blank required name sold; round 192a: the hieroglyph
/// format controls).
pub fn says_nothing(v: &str) -> bool {
    v.chars().all(invisible)
}

/// Whether `c` prints as nothing ([`says_nothing`]): white space, a control character or
/// one of [`INVISIBLE_RANGES`].
pub fn invisible(c: char) -> bool {
    // Below the first range (ASCII: most of an e-mail or a phone) no range is looked at.
    c.is_whitespace()
        || c.is_control()
        || (c >= INVISIBLE_RANGES[0].0
            && INVISIBLE_RANGES.iter().any(|&(lo, hi)| lo <= c && c <= hi))
}

/// The characters other than white space and control characters that print as nothing
/// ([`invisible`]), as inclusive ranges in code-point order (the seller API's OpenAPI
/// document spells the same set as a character class).
pub const INVISIBLE_RANGES: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{2800}', '\u{2800}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{16FE4}', '\u{16FE4}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D159}', '\u{1D159}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Whether `c` is invisible or reorders text when printed: a control character, or a
/// Unicode format character (bidirectional overrides and isolates such as U+202E, marks,
/// zero-width characters, the byte order mark). Names from the network that an error
/// echoes have these replaced, so a message reads as it is.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}')
        || (c >= INVISIBLE_RANGES[0].0
            && INVISIBLE_RANGES
                .iter()
                .chain(PRINTED_FORMAT_RANGES)
                .any(|&(lo, hi)| lo <= c && c <= hi))
}

/// The format characters (Unicode category Cf) that are not in [`INVISIBLE_RANGES`]: they
/// print a sign of their own (the Arabic number signs, the Kaithi number signs), so a
/// value of them says something, but an echoed name has them replaced all the same
/// ([`is_hidden`]).
const PRINTED_FORMAT_RANGES: &[(char, char)] = &[
    ('\u{0600}', '\u{0605}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
];

/// Whether `text` holds a control character other than a tab or a line break, or a
/// text-direction override or isolate (U+202A to U+202E, U+2066 to U+2069): what a lead's
/// strings may not carry (a NUL cuts a value short in a buyer's C code; an override shows
/// a buyer's staff another text than the one stored).
pub fn has_unsafe_text(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

/// The problem [`has_unsafe_text`] finds, in words.
pub const UNSAFE_TEXT: &str = "must not contain control characters (other than tabs and line breaks) or text-direction overrides and isolates (U+202A to U+202E, U+2066 to U+2069)";

/// `text` as a message may quote it: its first `max` characters (then `…`), each hidden
/// one ([`is_hidden`]: a line break, an escape, a text-direction override) as `?`, so what
/// it quotes can neither forge a line nor drive a terminal.
pub fn shown_text(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if is_hidden(c) { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// The first of `args` that holds a hidden character ([`is_hidden`]: a line break, an
/// escape, a text-direction override), as [`shown_text`] shows it. No option of the
/// command-line tools takes one, and an error quoting it could forge a line or drive the
/// terminal (black-box round 149a), so the tools refuse it before parsing.
pub fn hidden_arg(args: &[String]) -> Option<String> {
    args.iter()
        .find(|a| a.chars().any(is_hidden))
        .map(|a| shown_text(a, ARG_CHARS_MAX))
}

/// Most characters of a command-line argument [`quoted_args_shown`] leaves as given.
pub const ARG_CHARS_MAX: usize = 256;

/// `rendered` (an argument parser's error, which quotes the argument it refused as given)
/// with every argument of `args` that holds a hidden character or is longer than
/// [`ARG_CHARS_MAX`] (and the value after `=` of an `--option=value`) replaced by its
/// [`shown_text`] (black-box round 149a: `--listen $'x\nFORGED'` printed a line of its own).
pub fn quoted_args_shown(rendered: &str, args: &[String]) -> String {
    let mut out = rendered.to_string();
    let risky = |a: &str| a.chars().count() > ARG_CHARS_MAX || a.chars().any(is_hidden);
    let mut parts: Vec<&str> = Vec::new();
    for a in args {
        parts.push(a);
        if let Some((_, value)) = a.split_once('=') {
            parts.push(value);
        }
    }
    // Longest first, so a value is not replaced inside its own `--option=value`.
    parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in parts {
        if !p.is_empty() && risky(p) && out.contains(p) {
            out = out.replace(p, &shown_text(p, ARG_CHARS_MAX));
        }
    }
    out
}

/// A name from the network as an error echoes it: its first 64 characters, each hidden
/// one ([`is_hidden`]) as `?`.
pub fn printable_name(name: &str) -> String {
    // A cut name says so, as a configuration's cut paths do (black-box round 135a).
    shown_text(name, 64)
}

/// The problem of a name the body should not have: one text wherever a body is read, so
/// [`ApiError::from_fields`] can list the known fields' problems first.
pub const UNKNOWN_FIELD: &str = "unknown field";

/// The problem of a required field sent as `null` (which counts as not sent).
pub const REQUIRED_NULL: &str = "is required; null counts as not sent";

/// The most field problems an error lists: past it, the message counts the rest (a body
/// of thousands of unknown names must not get an answer larger than itself).
pub const FIELDS_LISTED_MAX: usize = 100;

/// An error answer. `fields` lists every field problem found, not just the first (at most
/// [`FIELDS_LISTED_MAX`] of them; the message counts them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub fields: Vec<FieldProblem>,
    /// The request's stream or connection was gone before the answer (the client reset
    /// the stream or closed the connection while its body was arriving, or the
    /// connection was closed to make room): the answer reaches nobody, so a server does
    /// not count it among its error answers.
    pub unheard: bool,
    /// A `409 conflict` that ends by itself (another request of the same key, ping or
    /// consumer still in flight): its answer carries `Retry-After`, so a client tells it
    /// by machine from one that never succeeds (a key reused with another body;
    /// black-box round 210a: only the message told them apart).
    pub retry_later: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    fields: &'a [FieldProblem],
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            fields: Vec::new(),
            unheard: false,
            retry_later: false,
        }
    }

    /// This error, marked as one that ends by itself (the field `retry_later`).
    pub fn mark_retry_later(mut self) -> ApiError {
        self.retry_later = true;
        self
    }

    /// This error, marked as one whose answer reaches nobody (the field `unheard`).
    pub fn mark_unheard(mut self) -> ApiError {
        self.unheard = true;
        self
    }

    /// An error built from field problems; the message names the first one and counts the
    /// rest. The first [`FIELDS_LISTED_MAX`] are listed.
    pub fn from_fields(code: ErrorCode, mut fields: Vec<FieldProblem>) -> ApiError {
        if fields.len() > FIELDS_LISTED_MAX {
            // Known fields' problems (a personal field in a ping among them) before the
            // unknown names, so the ones listed explain the answer (black-box round 11: a
            // `pii_in_ping` listed 100 unknown names and not the personal field).
            fields.sort_by_key(|f| f.problem == UNKNOWN_FIELD);
        }
        let mut message = match fields.as_slice() {
            [] => "invalid request".to_string(),
            [one] => format!("{}: {}", one.field, one.problem),
            [first, rest @ ..] => {
                format!(
                    "{}: {} (and {} more problem{})",
                    first.field,
                    first.problem,
                    rest.len(),
                    if rest.len() == 1 { "" } else { "s" }
                )
            }
        };
        if fields.len() > FIELDS_LISTED_MAX {
            fields.truncate(FIELDS_LISTED_MAX);
            message.push_str(&format!("; the first {FIELDS_LISTED_MAX} are listed"));
        }
        ApiError {
            code,
            message,
            fields,
            unheard: false,
            retry_later: false,
        }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON body of the contract.
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                fields: &self.fields,
            },
        };
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(&body)
            .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"error body"}}"#.to_vec())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_problem_is_bounded_in_characters() {
        let long = "k".repeat(20_000);
        let p = FieldProblem::new(format!("server.{long}"), format!("unknown key {long}"));
        assert_eq!(p.field.chars().count(), FIELD_CHARS_MAX + 1);
        assert!(p.field.starts_with("server.kkk") && p.field.ends_with('…'));
        assert_eq!(p.problem.chars().count(), PROBLEM_CHARS_MAX + 1);
        // Short ones, and a cut inside multi-byte characters, stay whole characters.
        assert_eq!(FieldProblem::new("lead.zip", "required").field, "lead.zip");
        let wide = FieldProblem::new("é".repeat(300), "x");
        assert_eq!(wide.field, format!("{}…", "é".repeat(FIELD_CHARS_MAX)));
    }

    #[test]
    fn body_shape() {
        let e = ApiError::from_fields(
            ErrorCode::InvalidRequest,
            vec![FieldProblem::new("lead.zip", "must be 5 digits")],
        );
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["message"], "lead.zip: must be 5 digits");
        assert_eq!(v["error"]["fields"][0]["field"], "lead.zip");
        assert_eq!(e.status(), 400);
    }

    /// 5,000 unknown names got a 219 KB answer (black-box round 9): the first 100 are
    /// listed and the message counts them all.
    #[test]
    fn an_error_lists_at_most_a_hundred_problems_and_counts_them_all() {
        let many = (0..5000)
            .map(|i| FieldProblem::new(format!("lead.f{i}"), "unknown field"))
            .collect();
        let e = ApiError::from_fields(ErrorCode::InvalidRequest, many);
        assert_eq!(e.fields.len(), FIELDS_LISTED_MAX);
        assert_eq!(e.fields[99].field, "lead.f99");
        assert_eq!(
            e.message,
            "lead.f0: unknown field (and 4999 more problems); the first 100 are listed"
        );
        assert!(e.to_json().len() < 8 * 1024);
        // Past the limit, known fields' problems are listed before unknown names.
        let mut many: Vec<_> = (0..150)
            .map(|i| FieldProblem::new(format!("lead.f{i:03}"), "unknown field"))
            .collect();
        many.push(FieldProblem::new(
            "lead.first_name",
            "is personal data and not allowed in a ping",
        ));
        let e = ApiError::from_fields(ErrorCode::PiiInPing, many);
        assert_eq!(e.fields[0].field, "lead.first_name");
        assert!(
            e.message.starts_with("lead.first_name: is personal data"),
            "{}",
            e.message
        );
        assert_eq!(e.fields.len(), FIELDS_LISTED_MAX);
        let few: Vec<_> = (0..3)
            .map(|i| FieldProblem::new(format!("f{i}"), "x"))
            .collect();
        let e = ApiError::from_fields(ErrorCode::InvalidRequest, few);
        assert_eq!(
            (e.fields.len(), e.message.as_str()),
            (3, "f0: x (and 2 more problems)")
        );
        // One more is "problem" (black-box round 35: "(and 1 more problems)").
        let two: Vec<_> = (0..2)
            .map(|i| FieldProblem::new(format!("f{i}"), "x"))
            .collect();
        let e = ApiError::from_fields(ErrorCode::InvalidRequest, two);
        assert_eq!(e.message, "f0: x (and 1 more problem)");
    }

    #[test]
    fn bidirectional_overrides_and_invisible_characters_are_hidden() {
        for c in [
            '\u{202E}',
            '\u{2066}',
            '\u{200B}',
            '\u{200F}',
            '\u{FEFF}',
            '\u{7}',
            '\u{85}',
            '\u{2028}',
            '\u{2029}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{FE0F}',
            '\u{E0100}',
            '\u{3164}',
            '\u{0600}',
            '\u{1D173}',
        ] {
            assert!(is_hidden(c), "{:?}", c);
        }
        for c in ['a', 'é', '字', ' ', '-', '\u{2010}'] {
            assert!(!is_hidden(c), "{:?}", c);
        }
        // One list: every character that prints as nothing, white space aside, is hidden
        // in an echo too; the format characters that print a sign are hidden, and say
        // something.
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            if invisible(c) && !c.is_whitespace() {
                assert!(is_hidden(c), "{:?}", c);
            }
        }
        for c in ['\u{0600}', '\u{06DD}', '\u{110BD}'] {
            assert!(is_hidden(c) && !invisible(c), "{:?}", c);
        }
        assert_eq!(printable_name("x\u{202E}evil\u{1b}[31m"), "x?evil?[31m");
        assert_eq!(
            printable_name(&"n".repeat(100)),
            format!("{}…", "n".repeat(64))
        );
        assert_eq!(printable_name(&"n".repeat(64)), "n".repeat(64));
    }

    /// Black-box round 149a: an argument parser's error quoted the value it refused as
    /// given, line breaks and escapes included.
    #[test]
    fn an_argument_a_parser_quotes_is_shown_safely() {
        let args = [
            "pingpost".to_string(),
            "--listen".into(),
            "127.0.0.1:1\nFORGED \u{1b}[2J".into(),
            format!("--ledger={}", "l".repeat(5_000)),
        ];
        let rendered = format!(
            "error: invalid value '{}' for '--listen <LISTEN>'\nerror: '{}'\n",
            args[2],
            "l".repeat(5_000)
        );
        let shown = quoted_args_shown(&rendered, &args);
        assert!(
            shown.starts_with("error: invalid value '127.0.0.1:1?FORGED ?[2J' for"),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 2, "{shown}");
        assert!(shown.len() < 600, "{}", shown.len());
        // A plain argument is left as it is.
        assert_eq!(
            quoted_args_shown("error: 'abc'", &["abc".into()]),
            "error: 'abc'"
        );
        assert_eq!(shown_text("a\u{202e}b", 1), "a…");
        assert_eq!(hidden_arg(&args), Some("127.0.0.1:1?FORGED ?[2J".into()));
        assert_eq!(hidden_arg(&args[3..]), None);
    }
}
