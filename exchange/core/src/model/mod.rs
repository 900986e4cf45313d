//! AI routing in the core, pure Rust and no I/O: the feature vector ([`features`]), award
//! by expected value with cold start and exploration ([`routing`]), model manifests
//! ([`manifest`]) and the XGBoost tree evaluator ([`xgb`]).

pub mod features;
pub mod manifest;
pub mod routing;
pub mod xgb;

/// Most characters of a value from a model or manifest file that an error message quotes.
pub const QUOTE_CHARS_MAX: usize = 40;

/// `s` as an error message may quote it: at most [`QUOTE_CHARS_MAX`] characters (then
/// `…`), each hidden one (control, bidirectional, invisible: [`proto::error::is_hidden`])
/// as `?`, as the API's echoes show them.
pub fn excerpt(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(QUOTE_CHARS_MAX)
        .map(|c| if proto::error::is_hidden(c) { '?' } else { c })
        .collect();
    if s.chars().nth(QUOTE_CHARS_MAX).is_some() {
        out.push('…');
    }
    out
}

/// A parser's message (serde_json's quotes the value it met: `invalid type: string
/// "…"`, ``unknown variant `…` ``) with every quoted run cut to [`QUOTE_CHARS_MAX`]
/// characters (black-box round 46: a 340-character string in a model file was echoed
/// whole in the `400` and the log).
pub fn shorten_quotes(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(512));
    let mut quote: Option<char> = None;
    let mut inside = 0usize;
    let mut escaped = false;
    for c in msg.chars() {
        match quote {
            None => {
                if c == '"' || c == '`' {
                    quote = Some(c);
                    inside = 0;
                    escaped = false;
                }
                out.push(c);
            }
            Some(q) => {
                let closes = c == q && !escaped;
                escaped = q == '"' && c == '\\' && !escaped;
                if closes {
                    if inside > QUOTE_CHARS_MAX {
                        out.push('…');
                    }
                    out.push(c);
                    quote = None;
                    continue;
                }
                inside += 1;
                if inside <= QUOTE_CHARS_MAX {
                    out.push(if proto::error::is_hidden(c) { '?' } else { c });
                }
            }
        }
    }
    if quote.is_some() && inside > QUOTE_CHARS_MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod quote_tests {
    use super::*;

    #[test]
    fn quoted_values_are_cut_to_40_characters_and_the_rest_of_the_message_kept() {
        let long = "ana.diaz@example.com +18175550123 ".repeat(10);
        let msg = format!("invalid type: string \"{long}\", expected u32 at line 1 column 400");
        let short = shorten_quotes(&msg);
        assert_eq!(
            short,
            format!(
                "invalid type: string \"{}…\", expected u32 at line 1 column 400",
                &long[..40]
            )
        );
        // An escaped quote inside does not end the run; backticks are quotes too.
        let msg = format!("unknown variant `{long}`, expected one of `a`, `b` and \"x\\\"{long}\"");
        let short = shorten_quotes(&msg);
        assert!(!short.contains(&long[..41]), "{short}");
        assert!(short.ends_with("…\""), "{short}");
        assert!(short.contains("expected one of `a`, `b`"), "{short}");
        // Short quotes are untouched.
        assert_eq!(shorten_quotes("bad \"x\" at `y`"), "bad \"x\" at `y`");
        assert_eq!(excerpt(&long).chars().count(), 41);
        assert_eq!(excerpt("a\u{0}b\u{202e}c\u{200b}"), "a?b?c?");
    }

    /// Black-box round 46: a model or manifest file holding a long string where a number
    /// or a name belongs is refused with at most 40 characters of it quoted.
    #[test]
    fn a_model_or_manifest_with_a_long_string_is_quoted_40_characters_at_most() {
        let long = "ana.diaz@example.com +18175550123 ".repeat(10);
        for json in [
            format!(r#"{{"learner": "{long}"}}"#),
            format!(
                r#"{{"learner": {{"gradient_booster": {{"name": "gbtree", "model": {{"trees": [{{"split_indices": ["{long}"]}}]}}}}}}}}"#
            ),
        ] {
            let e = xgb::XgbModel::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(!e.contains(&long[..41]), "{e}");
            assert!(e.contains(&long[..40]), "{e}");
        }
        let e = manifest::Manifest::from_json(format!(r#"{{"format": "{long}"}}"#).as_bytes())
            .unwrap_err();
        assert!(!e.contains(&long[..41]), "{e}");
    }
}
