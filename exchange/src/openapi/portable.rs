//! Whether an operator's pattern (Rust `regex` syntax) can be a JSON Schema `pattern`:
//! read alike, as syntax, by ECMA-262 (with and without its `u` flag), Python's `re` and
//! Rust's `regex` ([`unportable_construct`]). One that is not is published as `x-pattern`
//! (black-box round 193a: such patterns made the whole document unusable to standard
//! tools).

/// The first construct of `pattern` (Rust `regex` syntax) that ECMA-262 (with and without
/// its `u` flag), Python's `re` and Rust's `regex` do not all read, or do not read alike,
/// as syntax, described for a document or a warning; `None` when there is none, so the
/// pattern can be a JSON Schema `pattern`. Conservative (a pattern it lets through compiles
/// everywhere; one it stops may still compile somewhere): it takes literals up to U+FFFF,
/// `.`, `^` and `$`, classes (negated or not) of single characters, ranges and
/// `\d \D \w \W \s \S`, the escapes `\t \n \r \f \v \xHH \uHHHH` and escaped syntax
/// characters (`^ $ \ . * + ? ( ) [ ] { } | /`, and `-` in a class), groups `(...)` and
/// `(?:...)`, alternation, and the quantifiers `* + ? {n} {n,} {n,m}` with their lazy `?`
/// forms. Nothing else: no word boundaries `\b \B` (read alike as syntax, not as meaning:
/// Rust's word characters are Unicode's, ECMA-262's ASCII's), flags or flag groups, named
/// groups, look-arounds, `\p`, braced escapes (`\x{...}`, `\u{...}`), `\U`, `\A \z \Z`,
/// POSIX classes, nested classes or class set operations (`&&`, `--`, `~~`, `||`), no `]`,
/// `{` or `}` outside a class but a quantifier's. What still differs (the Unicode-wide
/// `\d`, `\w`, `\s` and `.` of Rust, Python's `$` before a final newline and its `\w`
/// without combining marks, JavaScript without `u` reading a code point past U+FFFF as
/// two) is meaning, not syntax: `x-pattern-syntax` and API.md say it.
pub fn unportable_construct(pattern: &str) -> Option<String> {
    scan_pattern(&pattern.chars().collect::<Vec<_>>()).err()
}

/// What an escape or a class item is, as far as the scanner cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Atom {
    /// One code point (a range may start or end at it).
    Char(u32),
    /// `\d`, `\w`, `\s` and their negations.
    Class,
    /// `\b`, `\B`: nothing to quantify.
    Assertion,
}

fn scan_pattern(chars: &[char]) -> Result<(), String> {
    let mut i = 0;
    let mut open_groups = 0usize;
    // Whether the item before can be quantified (not an assertion, a quantifier, nor the
    // start of the pattern, a group or an alternative).
    let mut quantifiable = false;
    while let Some(&c) = chars.get(i) {
        match c {
            '\\' => {
                let (len, atom) = escape(chars, i, false)?;
                i += len;
                quantifiable = atom != Atom::Assertion;
            }
            '[' => {
                i += class(chars, i)?;
                quantifiable = true;
            }
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    if chars.get(i + 2) != Some(&':') {
                        return Err(group_kind(&chars[i..]));
                    }
                    i += 3;
                } else {
                    i += 1;
                }
                open_groups += 1;
                quantifiable = false;
            }
            ')' => {
                if open_groups == 0 {
                    return Err("a `)` that closes no group".into());
                }
                open_groups -= 1;
                i += 1;
                quantifiable = true;
            }
            '|' | '^' | '$' => {
                i += 1;
                quantifiable = false;
            }
            '*' | '+' | '?' | '{' => {
                let len = if c == '{' { counted(&chars[i..])? } else { 1 };
                if !quantifiable {
                    let q: String = chars[i..i + len].iter().collect();
                    return Err(format!(
                        "the quantifier `{q}` with nothing to repeat (at the start, after `(`, `|`, an anchor, `\\b` or another quantifier)"
                    ));
                }
                i += len;
                if chars.get(i) == Some(&'?') {
                    i += 1;
                }
                quantifiable = false;
            }
            ']' | '}' => return Err(format!("a bare `{c}` (not in a class or a quantifier)")),
            c if u32::from(c) > 0xFFFF => return Err(past_bmp(c)),
            _ => {
                i += 1;
                quantifiable = true;
            }
        }
    }
    if open_groups > 0 {
        return Err("a `(` never closed".into());
    }
    Ok(())
}

/// What a `(?` group that is not `(?:` is.
fn group_kind(group: &[char]) -> String {
    let head: String = group
        .iter()
        .take(16)
        .take_while(|c| c.is_ascii_graphic())
        .collect();
    let rest = head.get(2..).unwrap_or("");
    if rest.starts_with("P<")
        || (rest.starts_with('<') && !rest.starts_with("<=") && !rest.starts_with("<!"))
    {
        "a named group (`(?P<name>...)`, `(?<name>...)`)".into()
    } else if rest.starts_with('#') {
        "a comment group `(?#...)`".into()
    } else if ["=", "!", "<=", "<!"].iter().any(|l| rest.starts_with(l)) {
        "a look-around (`(?=...)`, `(?!...)`, `(?<=...)`, `(?<!...)`)".into()
    } else {
        let flags = match head.find([')', ':']) {
            Some(end) if head[end..].starts_with(':') => format!("{}...)", &head[..=end]),
            Some(end) => head[..=end].to_string(),
            None => head,
        };
        format!("the inline flags `{flags}`")
    }
}

/// A code point past U+FFFF, which ECMA-262 without the `u` flag reads as two UTF-16
/// units (a quantifier takes the second, a class range between them is refused).
fn past_bmp(c: char) -> String {
    format!(
        "U+{:04X}, a character past U+FFFF (two UTF-16 units to ECMA-262 without the `u` flag)",
        u32::from(c)
    )
}

/// The escape at `chars[i]` (a `\`): its length and what it is.
fn escape(chars: &[char], i: usize, in_class: bool) -> Result<(usize, Atom), String> {
    let Some(&e) = chars.get(i + 1) else {
        return Err("a `\\` that ends the pattern".into());
    };
    let hex = |n: usize| -> Option<u32> {
        let digits = chars.get(i + 2..i + 2 + n)?;
        let text: String = digits.iter().collect();
        (digits.iter().all(char::is_ascii_hexdigit))
            .then(|| u32::from_str_radix(&text, 16).ok())
            .flatten()
    };
    let code = |e: char| u32::from(e);
    Ok(match e {
        'd' | 'D' | 'w' | 'W' | 's' | 'S' => (2, Atom::Class),
        // A word boundary is read alike as syntax, but not as meaning: Rust's word
        // characters are Unicode's (`é`, a combining mark), ECMA-262's only ASCII's, with
        // or without `u` (black-box round 197a: `.\b.` refused `aé` where JavaScript
        // took it).
        'b' | 'B' if !in_class => {
            return Err(format!(
                "the word boundary `\\{e}` (Rust's word characters are Unicode's, ECMA-262's only ASCII's)"
            ))
        }
        'b' | 'B' => return Err(format!("`\\{e}` inside a class")),
        't' => (2, Atom::Char(0x09)),
        'n' => (2, Atom::Char(0x0A)),
        'v' => (2, Atom::Char(0x0B)),
        'f' => (2, Atom::Char(0x0C)),
        'r' => (2, Atom::Char(0x0D)),
        'x' | 'u' if chars.get(i + 2) == Some(&'{') => {
            return Err(format!("the braced escape `\\{e}{{...}}`"));
        }
        'x' => match hex(2) {
            Some(v) => (4, Atom::Char(v)),
            None => return Err("a `\\x` without two hex digits".into()),
        },
        'u' => match hex(4) {
            Some(v) if (0xD800..=0xDFFF).contains(&v) => {
                return Err(format!("the surrogate escape `\\u{v:04X}`"));
            }
            Some(v) => (6, Atom::Char(v)),
            None => return Err("a `\\u` without four hex digits".into()),
        },
        'p' | 'P' => {
            return Err(format!(
                "the Unicode class `\\{e}` (`\\{e}{{L}}`, `\\{e}N`)"
            ))
        }
        'A' | 'z' | 'Z' => return Err(format!("the anchor `\\{e}`")),
        '^' | '$' | '\\' | '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|'
        | '/' => (2, Atom::Char(code(e))),
        '-' if in_class => (2, Atom::Char(code(e))),
        e if e.is_ascii_graphic() => return Err(format!("the escape `\\{e}`")),
        e => return Err(format!("the escape `\\` before U+{:04X}", code(e))),
    })
}

/// The class at `chars[start]` (a `[`): its length.
fn class(chars: &[char], start: usize) -> Result<usize, String> {
    let mut j = start + 1;
    if chars.get(j) == Some(&'^') {
        j += 1;
    }
    if chars.get(j) == Some(&']') {
        return Err(
            "a `]` first in a class (`[]...]`, `[^]...]`: a literal `]` to Python and Rust, an empty class to ECMA-262)".into(),
        );
    }
    let first = j;
    loop {
        match chars.get(j) {
            None => return Err("a `[` never closed".into()),
            Some(']') => return Ok(j + 1 - start),
            Some(_) => {}
        }
        let (len, lo) = class_item(chars, j, first)?;
        j += len;
        // `-` between two items, not last: a range.
        if chars.get(j) == Some(&'-') && chars.get(j + 1).is_some_and(|&c| c != ']') {
            if chars.get(j + 1) == Some(&'-') {
                return Err("the class set operation `--`".into());
            }
            let (len, hi) = class_item(chars, j + 1, first)?;
            match (lo, hi) {
                (Atom::Char(lo), Atom::Char(hi)) if lo <= hi => {}
                (Atom::Char(_), Atom::Char(_)) => {
                    return Err("a class range out of order".into());
                }
                _ => {
                    return Err(
                        "a class range with `\\d`, `\\w` or `\\s` at an end (`[\\d-z]`)".into(),
                    );
                }
            }
            j += 1 + len;
        }
    }
}

/// One item of a class at `chars[j]`: its length and what it is.
fn class_item(chars: &[char], j: usize, first: usize) -> Result<(usize, Atom), String> {
    let c = chars[j];
    if matches!(c, '&' | '~' | '|' | '-') && chars.get(j + 1) == Some(&c) {
        return Err(format!("the class set operation `{c}{c}`"));
    }
    match c {
        '\\' => escape(chars, j, true),
        '[' if chars.get(j + 1) == Some(&':') => Err("a POSIX class (`[[:digit:]]`)".into()),
        '[' => Err("a `[` inside a class (a nested class to Rust)".into()),
        '-' if j != first && chars.get(j + 1) != Some(&']') => {
            Err("a `-` inside a class that is neither a range nor first or last (`[a-c-e]`)".into())
        }
        c if u32::from(c) > 0xFFFF => Err(past_bmp(c)),
        c => Ok((1, Atom::Char(u32::from(c)))),
    }
}

/// The length of the counted quantifier at `chars[0]` (a `{`): `{n}`, `{n,}` or `{n,m}`
/// with `n <= m`, each below 2^32 - 1 (Python's limit).
fn counted(chars: &[char]) -> Result<usize, String> {
    let not_one = || "a `{` that is no quantifier `{n}`, `{n,}` or `{n,m}`".to_string();
    let number = |from: usize| -> (usize, Option<u32>) {
        let digits: String = chars[from..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let value = digits.parse::<u32>().ok().filter(|&v| v < u32::MAX);
        (digits.len(), value)
    };
    let (n_len, n) = number(1);
    if n_len == 0 {
        return Err(not_one());
    }
    let n = n.ok_or_else(|| "a repetition count of 2^32 - 1 or more".to_string())?;
    let mut j = 1 + n_len;
    if chars.get(j) == Some(&',') {
        let (m_len, m) = number(j + 1);
        if m_len > 0 {
            let m = m.ok_or_else(|| "a repetition count of 2^32 - 1 or more".to_string())?;
            if m < n {
                return Err(format!("the quantifier `{{{n},{m}}}` out of order"));
            }
        }
        j += 1 + m_len;
    }
    if chars.get(j) != Some(&'}') {
        return Err(not_one());
    }
    Ok(j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::{
        says_something_pattern, DATE_PATTERN, EMAIL_PATTERN, PHONE_PATTERN, SAFE_TEXT_PATTERN,
    };

    /// Every construct the scanner lets through, alone and in real patterns: each compiles
    /// with Rust's `regex` too (ECMA-262 and Python read them alike as syntax).
    #[test]
    fn portable_patterns_are_told_portable() {
        for p in [
            "abc",
            "a.c",
            "^abc$",
            "a^b",
            "[abc]",
            "[^abc]",
            "[a-z]",
            "[^A-Za-z0-9_-]",
            "[-a]",
            "[a-]",
            "[^-a]",
            "[\\d-]",
            "[a^]",
            "[a&b~c|d]",
            r"\d\D\w\W\s\S",
            r"[\d\D\w\W\s\S]",
            r"\t\n\r\f\v",
            r"[\t\n\r\f\v]",
            r"\x41\xff",
            r"[\x00-\x1f]",
            r"\u0041\uFFFF",
            r"[\u202a-\u202e]",
            r"\^\$\\\.\*\+\?\(\)\[\]\{\}\|\/",
            r"[\^\$\\\.\*\+\?\(\)\[\]\{\}\|\/\-]",
            r"[!-\-]",
            "(a)",
            "(?:a)",
            "()",
            "(a|b|)",
            "a*b+c?",
            "a*?b+?c??",
            "a{2}b{2,}c{2,3}d{0,0}",
            "a{2}?b{2,}?c{2,3}?",
            "(?:a|b)+",
            "[A-Z]{2}[0-9]+",
            "[0-9]{3}-[0-9]{4}",
            r"\d{5}(-\d{4})?",
            "caf\u{e9} \u{65e5}\u{672c}",
            "a\nb #c",
            "a/b",
            "a,b:c;d<e>f=g!h@i#j%k&l'm\"n`o~p",
            "",
        ] {
            assert_eq!(unportable_construct(p), None, "{p:?}");
            regex::Regex::new(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        }
        // The exchange's own patterns.
        for p in [
            SAFE_TEXT_PATTERN,
            EMAIL_PATTERN,
            PHONE_PATTERN,
            DATE_PATTERN,
            &says_something_pattern(),
        ] {
            assert_eq!(unportable_construct(p), None, "{p}");
        }
    }

    /// Every construct only Rust reads (or reads its own way), and every one the three
    /// engines do not agree on as syntax, is told, as what it is.
    #[test]
    fn rust_only_patterns_are_told_what_they_use() {
        for (p, what) in [
            // Inline flags and flag groups.
            ("(?i)abc", "inline flags `(?i)`"),
            ("(?s:.)", "inline flags `(?s:...)`"),
            ("a(?-u:\\w)", "inline flags `(?-u:...)`"),
            ("(?x) a", "inline flags"),
            ("(?#c)a", "comment group"),
            // Named groups, look-arounds.
            ("(?P<n>a)", "named group"),
            ("(?<n>a)", "named group"),
            ("(?=a)", "look-around"),
            ("(?!a)", "look-around"),
            ("(?<=a)b", "look-around"),
            ("(?<!a)b", "look-around"),
            // Unicode classes, braced and long escapes.
            (r"\p{L}+", r"Unicode class `\p`"),
            (r"\pN", r"Unicode class `\p`"),
            (r"\P{L}", r"Unicode class `\P`"),
            (r"[\p{L}]", r"Unicode class `\p`"),
            (r"\x{41}", r"braced escape `\x{...}`"),
            (r"\u{263a}", r"braced escape `\u{...}`"),
            (r"[\x{41}]", r"braced escape `\x{...}`"),
            (r"\U0001F600", r"escape `\U`"),
            (r"\x4", r"`\x` without two hex digits"),
            (r"\u004", r"`\u` without four hex digits"),
            (r"\uD83D", "surrogate"),
            // Anchors only Rust (or Python) has.
            (r"a\z", r"anchor `\z`"),
            (r"\Aab", r"anchor `\A`"),
            (r"a\Z", r"anchor `\Z`"),
            // POSIX classes, set operations, nested classes.
            ("[[:digit:]]+", "POSIX class"),
            ("[a-z&&[^x]]+", "`&&`"),
            ("[a&&b]", "`&&`"),
            ("[a-z--x]", "`--`"),
            ("[--x]", "`--`"),
            ("[a~~b]", "`~~`"),
            ("[a||b]", "`||`"),
            ("[a[b]]", "`[` inside a class"),
            ("[a-c-e]", "neither a range nor first or last"),
            (r"[\d-z]", "class range with"),
            (r"[a-\d]", "class range with"),
            ("[z-a]", "out of order"),
            ("[]a]", "`]` first in a class"),
            ("[^]a]", "`]` first in a class"),
            ("[]", "`]` first in a class"),
            ("[abc", "never closed"),
            // Bare brackets and braces.
            ("a]", "bare `]`"),
            ("a}", "bare `}`"),
            ("a{", "no quantifier"),
            ("a{x}", "no quantifier"),
            ("a{,3}", "no quantifier"),
            ("a{ 2}", "no quantifier"),
            ("a{3,2}", "out of order"),
            ("a{4294967295}", "2^32 - 1"),
            // Quantifiers with nothing to repeat, or on another.
            ("*a", "nothing to repeat"),
            ("a**", "nothing to repeat"),
            ("a++", "nothing to repeat"),
            ("a+??", "nothing to repeat"),
            ("a{2}{3}", "nothing to repeat"),
            ("^*a", "nothing to repeat"),
            ("a$+", "nothing to repeat"),
            (r"\b+", "the word boundary `\\b`"),
            (r"\bword\B", "the word boundary `\\b`"),
            (r"a\B.", "the word boundary `\\B`"),
            ("(*a)", "nothing to repeat"),
            ("a|?", "nothing to repeat"),
            // Other escapes.
            (r"\a", r"escape `\a`"),
            (r"\e", r"escape `\e`"),
            (r"\0", r"escape `\0`"),
            (r"(a)\1", r"escape `\1`"),
            (r"\k<n>", r"escape `\k`"),
            (r"\cA", r"escape `\c`"),
            (r"\-", r"escape `\-`"),
            (r"\#", r"escape `\#`"),
            (r"\ ", "U+0020"),
            (r"\<a\>", r"escape `\<`"),
            (r"[\b]", r"`\b` inside a class"),
            ("a\\", "ends the pattern"),
            // Groups out of balance; characters past U+FFFF.
            ("(a", "never closed"),
            ("a)", "closes no group"),
            ("\u{1F600}+", "U+1F600"),
            ("[\u{1F600}-\u{1F64F}]", "U+1F600"),
        ] {
            let told = unportable_construct(p).unwrap_or_else(|| panic!("{p:?} told portable"));
            assert!(told.contains(what), "{p:?}: {told}");
            // Anchored as the loader anchors it, too.
            assert!(
                unportable_construct(&format!("^(?:{p})$")).is_some(),
                "{p:?} anchored"
            );
        }
    }
}
