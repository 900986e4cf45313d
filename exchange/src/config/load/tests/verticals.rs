//! Tests of `[verticals.NAME]` and field schemas.

use proto::{FieldKind, Micros};

use super::*;

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
fn consent_required_keys() {
    let c = ok(&[(
        "#VERTICAL",
        "consent_required = [\"trustedform_cert_url\", \"jornaya_leadid\"]",
    )]);
    assert_eq!(
        c.verticals[0].consent_required,
        ["trustedform_cert_url", "jornaya_leadid"]
    );
    assert!(ok(&[]).verticals[0].consent_required.is_empty());
    let long = "k".repeat(65);
    assert_eq!(
        errors(&[(
            "#VERTICAL",
            &format!("consent_required = [\"a\", \"\", \" b\", \"{long}\", \"a\", 3]"),
        )]),
        [
            "verticals.auto.consent_required[5]: must be a string",
            "verticals.auto.consent_required[4]: \"a\" is listed twice",
            "verticals.auto.consent_required[1]: must be a consent key of 1 to 64 characters without surrounding spaces or invisible characters, such as \"trustedform_cert_url\"",
            "verticals.auto.consent_required[2]: must be a consent key of 1 to 64 characters without surrounding spaces or invisible characters, such as \"trustedform_cert_url\"",
            "verticals.auto.consent_required[3]: must be a consent key of 1 to 64 characters without surrounding spaces or invisible characters, such as \"trustedform_cert_url\"",
        ]
    );
    for hidden in ["\\u200b", "tf\\u200b", "\\ufefftf", "a\\u0001b"] {
        assert_eq!(
            errors(&[("#VERTICAL", &format!("consent_required = [\"{hidden}\"]"))]),
            ["verticals.auto.consent_required[0]: must be a consent key of 1 to 64 characters without surrounding spaces or invisible characters, such as \"trustedform_cert_url\""],
            "{hidden}"
        );
    }
    let many: Vec<String> = (0..33).map(|i| format!("\"k{i}\"")).collect();
    assert_eq!(
        errors(&[("#VERTICAL", &format!("consent_required = [{}]", many.join(", ")))]),
        ["verticals.auto.consent_required: must list at most 32 keys (a request's consent holds at most 32)"]
    );
    assert_eq!(
        errors(&[("#VERTICAL", "consent_required = \"trustedform_cert_url\"")]),
        ["verticals.auto.consent_required: must be a list of strings"]
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
        field("type = \"number\"\nmin = \"2.5\""),
        [format!("{p}.min: must be a number, written without quotes")]
    );
    // Not a number in quotes either: the quotes are not all that is wrong.
    assert_eq!(
        field("type = \"number\"\nmin = \"x\""),
        [format!("{p}.min: must be a number")]
    );
    assert_eq!(
        field("type = \"number\"\nmin = nan"),
        [format!("{p}.min: must be a finite number")]
    );
    assert_eq!(
        field("type = \"number\"\nmin = true"),
        [format!("{p}.min: must be a number")]
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
        field("type = \"email\"\nmin = 3"),
        [
            format!("{p}.pii: must be true for an email field: it is personal data"),
            format!("{p}.min: does not apply to an email field")
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
    // Valid only once anchored (round 142a: it then matched `123` and anything after).
    for escape in [r"[0-9]{3})|(x", r"a)(b"] {
        let bad = field(&format!("type = \"string\"\npattern = '{escape}'"));
        assert_eq!(bad.len(), 1, "{escape}: {bad:?}");
        assert!(
            bad[0].starts_with(&format!("{p}.pattern: is not a valid regular expression: ")),
            "{}",
            bad[0]
        );
    }
    assert_eq!(
        load_str_with_env(
            "[verticals.a.fields.\"bad name\"]\ntype = \"zip\"",
            &test_env
        )
        .unwrap_err()
        .0,
        ["verticals.a.fields.\"bad name\": the name must be 1 to 64 ASCII letters, digits, '_' or '-'"]
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
fn dedup_window_and_keys() {
    use crate::core::dedup::{DedupKeySpec, DAY_MS};
    let plain = ok(&[]);
    assert!(plain.verticals[0].dedup.is_none(), "off without [dedup]");
    assert_eq!(
        plain.verticals[0].dedup_keys.len(),
        1,
        "the phone field is a key all the same (for the suppression list)"
    );
    let c = ok(&[("#VERTICAL", "dedup = {}")]);
    let d = c.verticals[0].dedup.as_ref().unwrap();
    assert_eq!(d.window_ms, 30 * DAY_MS, "30 days unless set");
    assert_eq!(
        c.verticals[0].dedup_keys,
        [DedupKeySpec {
            name: "phone_sha256".into(),
            field: Some("phone".into()),
        }],
        "every phone and email field, by default"
    );
    let c = ok(&[
        (
            "#VERTICAL",
            "dedup = { window_days = 7, keys = { phone_sha256 = \"phone\", ssn_sha256 = \"\", note_sha256 = \"extra\" } }",
        ),
        ("#FIELD", "type = \"string\"\npii = true"),
    ]);
    let d = c.verticals[0].dedup.as_ref().unwrap();
    assert_eq!(d.window_ms, 7 * DAY_MS);
    let keys: Vec<(&str, Option<&str>)> = c.verticals[0]
        .dedup_keys
        .iter()
        .map(|k| (k.name.as_str(), k.field.as_deref()))
        .collect();
    assert_eq!(
        keys,
        [
            ("phone_sha256", Some("phone")),
            ("ssn_sha256", None),
            ("note_sha256", Some("extra")),
        ],
        "in file order"
    );
    let off = ok(&[(
        "#VERTICAL",
        "dedup = { window_days = 0, keys = { ssn_sha256 = \"\" } }",
    )]);
    assert!(off.verticals[0].dedup.is_none(), "0 turns it off");
    assert_eq!(
        off.verticals[0].dedup_keys[0].name, "ssn_sha256",
        "its keys stay"
    );
}

#[test]
fn bad_dedup_is_named() {
    for (line, field, needle) in [
        (
            "dedup = { window_days = 366 }",
            None,
            "verticals.auto.dedup.window_days: must be a whole number between 0 and 365",
        ),
        ("dedup = { window_days = 1.5 }", None, "dedup.window_days"),
        ("dedup = 3", None, "verticals.auto.dedup: must be a table"),
        (
            "dedup = { keys = { phone_sha256 = \"fax\" } }",
            None,
            "verticals.auto.dedup.keys.phone_sha256: names \"fax\", which is not a field",
        ),
        (
            "dedup = { keys = { state_sha256 = \"state\" } }",
            None,
            "not a phone, email or string field",
        ),
        (
            "dedup = { keys = { x_sha256 = \"extra\" } }",
            Some("type = \"string\"\nping = true"),
            // What to change (black-box rounds 89a and 91a: `pii = true` alone is refused too).
            "a ping field: a key identifies a consumer, so it is made from a field only a post carries (drop `ping = true` from the field: a PII field is never a ping field)",
        ),
        (
            "dedup = { keys = { \"a b\" = \"phone\" } }",
            None,
            "the key must be 1 to 64 ASCII letters",
        ),
        ("dedup = { keys = {} }", None, "must name 1 to 8 keys"),
        (
            "dedup = { keys = [\"phone\"] }",
            None,
            "must be a table from dedup key to lead field",
        ),
        (
            "dedup = { keys = { phone_sha256 = 3 } }",
            None,
            "dedup.keys.phone_sha256: must be a string",
        ),
        ("dedup = { window = 30 }", None, "unknown key"),
        (
            "dedup = { ping_scope = \"world\" }",
            None,
            "verticals.auto.dedup.ping_scope: unknown scope \"world\"",
        ),
    ] {
        let mut edits = vec![("#VERTICAL", line)];
        if let Some(f) = field {
            edits.push(("#FIELD", f));
        }
        let errs = errors(&edits);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{line}: no error containing {needle:?} in {errs:#?}"
        );
    }
}

#[test]
fn suppression_list_loads_and_bad_lines_are_named_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("dnc.txt");
    let h = |c: char| c.to_string().repeat(64);
    std::fs::write(
        &list,
        format!("# comment\n\n  {}  \n{}\r\n{}\n", h('a'), h('B'), h('a')),
    )
    .unwrap();
    let table = |path: &str| format!("\n[suppression]\npath = {path:?}");
    let c = ok(&[("#BUYER", &table(&list.display().to_string()))]);
    assert!(c.suppression.is_on());
    assert_eq!(
        c.suppression.len(),
        2,
        "a repeat counts once; case is ignored"
    );
    let mut b = [0u8; 32];
    hex::decode_to_slice(h('b'), &mut b).unwrap();
    assert!(c.suppression.lists_any(&[[0; 32], b]));
    assert!(!ok(&[]).suppression.is_on(), "off without the table");

    // Bad lines by number (never their text), the first ten, then a count.
    let secret = "+18175550123";
    let mut text = format!("{}\n{secret}\n", h('c'));
    for _ in 0..11 {
        text.push_str("zz\n");
    }
    std::fs::write(&list, &text).unwrap();
    let errs = errors(&[("#BUYER", &table(&list.display().to_string()))]);
    assert_eq!(errs.len(), 11, "{errs:#?}");
    assert!(
        errs[0].starts_with("suppression.path: ")
            && errs[0].ends_with("line 2: not a SHA-256 (64 hex digits)"),
        "{errs:#?}"
    );
    assert!(
        errs[10].ends_with("2 more lines that are not SHA-256 hashes"),
        "{errs:#?}"
    );
    assert!(!errs.iter().any(|e| e.contains(secret)));

    // A byte-order mark before the first line is skipped.
    std::fs::write(&list, format!("\u{feff}{}\n", h('d'))).unwrap();
    let c = ok(&[("#BUYER", &table(&list.display().to_string()))]);
    assert_eq!(c.suppression.len(), 1);
    // Only a regular file is read: a FIFO would block every reload (black-box round 30).
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let missing = dir.path().join("nope.txt");
    // Over the bound by its length (sparse files: nothing is written or read).
    let just_over = dir.path().join("just-over.txt");
    let huge = dir.path().join("huge.txt");
    for (file, len) in [
        (
            &just_over,
            crate::config::load::SUPPRESSION_FILE_BYTES_MAX + 1,
        ),
        (&huge, 1 << 40),
    ] {
        std::fs::File::create(file).unwrap().set_len(len).unwrap();
    }
    for (edit, needle) in [
        (
            table(&just_over.display().to_string()),
            "just-over.txt: longer than 1073741824 bytes",
        ),
        (
            table(&huge.display().to_string()),
            "huge.txt: longer than 1073741824 bytes",
        ),
        (
            table(&fifo.display().to_string()),
            "fifo: not a regular file",
        ),
        (
            table(&dir.path().display().to_string()),
            ": not a regular file",
        ),
        (
            table(&missing.display().to_string()),
            "nope.txt: No such file",
        ),
        (table(""), "suppression.path: must name a file"),
        (
            "\n[suppression]\nfile = \"x\"".to_string(),
            "suppression.path: is required",
        ),
        (
            "\n[suppression]\npath = 3".to_string(),
            "suppression.path: must be a string",
        ),
    ] {
        let errs = errors(&[("#BUYER", &edit)]);
        assert!(errs.iter().any(|e| e.contains(needle)), "{edit}: {errs:#?}");
    }
}

/// Black-box round 29: a bad `window_days` hid every other problem of `[dedup]`.
#[test]
fn a_bad_window_does_not_hide_the_other_dedup_problems() {
    let errs = errors(&[(
        "#VERTICAL",
        "dedup = { window_days = 400, windw = 1, keys = { \"bad key!\" = \"phone\", e = \"state\" } }",
    )]);
    for needle in [
        "dedup.window_days: must be a whole number between 0 and 365",
        "dedup.windw: unknown key",
        "the key must be 1 to 64 ASCII letters",
        "dedup.keys.e: names \"state\", which is not a phone, email or string field",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "no {needle:?} in {errs:#?}"
        );
    }
    let c = ok(&[("#VERTICAL", "dedup = { ping_scope = \"all\" }")]);
    assert!(c.verticals[0].dedup.as_ref().unwrap().ping_scope_all);
    let c = ok(&[("#VERTICAL", "dedup = {}")]);
    assert!(
        !c.verticals[0].dedup.as_ref().unwrap().ping_scope_all,
        "\"seller\" by default"
    );
}

/// Black-box round 181a: an enum's values went to every buyer and into error messages as
/// written, control characters, direction overrides and invisible ones included, and
/// values that are one text once normalised were two values.
#[test]
fn enum_values_print_and_are_distinct_once_normalised() {
    let p = "verticals.auto.fields.extra";
    let field = |values: &str| {
        errors(&[(
            "#FIELD",
            &format!("type = \"enum\"\nping = true\nvalues = [{values}]"),
        )])
    };
    const RULE: &str = "must be 1 to 128 characters that print, without surrounding spaces (no control characters or line breaks, nor characters that print as nothing such as zero-width joiners, variation selectors or direction marks): sellers send it and buyers receive it as written";
    for (bad, shown) in [
        (r#""a\u0000b""#, r#""a\u0000b" (U+0061 U+0000 U+0062)"#),
        (r#""x\u202Ey""#, r#""x\u202Ey" (U+0078 U+202E U+0079)"#),
        (
            r#""\u001B[2J""#,
            r#""\u001B[2J" (U+001B U+005B U+0032 U+004A)"#,
        ),
        (r#""z\u200B""#, r#""z\u200B" (U+007A U+200B)"#),
        (r#"" ""#, r#"" " (U+0020)"#),
        (r#""\n""#, r#""\n" (U+000A)"#),
        (
            r#"" single""#,
            r#"" single" (U+0020 U+0073 U+0069 U+006E U+0067 U+006C U+0065)"#,
        ),
        // Between two letters too (black-box round 182b: "a\u200Db" printed as "ab").
        (r#""a\u200Db""#, r#""a\u200Db" (U+0061 U+200D U+0062)"#),
        (r#""a\u200Cb""#, r#""a\u200Cb" (U+0061 U+200C U+0062)"#),
        (r#""a\uFE0Fb""#, r#""a\uFE0Fb" (U+0061 U+FE0F U+0062)"#),
        (
            r#""a\U000E01EFb""#,
            r#""a\U000E01EFb" (U+0061 U+E01EF U+0062)"#,
        ),
        (r#""a\u180Bb""#, r#""a\u180Bb" (U+0061 U+180B U+0062)"#),
    ] {
        assert_eq!(
            field(&format!("\"ok\", {bad}")),
            [format!("{p}.values[1]: {shown}: {RULE}")],
            "{bad}"
        );
    }
    let long = "a".repeat(129);
    assert_eq!(
        field(&format!("\"{long}\"")),
        [format!("{p}.values[0]: a value of 129 characters: {RULE}")]
    );
    // At the limit, inner spaces, accents and other scripts are values like any other.
    let limit = "a".repeat(128);
    assert!(field(&format!(
        "\"{limit}\", \"single family\", \"Ångström\", \"日本\""
    ))
    .is_empty());
    // "Å" as one character, as "A" and a combining ring (shown escaped, as it prints as
    // the one before), and as the ångström sign.
    assert_eq!(
        field(r#""\u00C5", "A\u030A", "\u212B", "B""#),
        [
            format!("{p}.values[1]: \"A\\u030A\" (U+0041 U+030A) is \"\u{C5}\" (U+00C5, {p}.values[0]) once normalised (Unicode NFKC): a seller's software may send either; list one"),
            format!("{p}.values[2]: \"\u{212B}\" (U+212B) is \"\u{C5}\" (U+00C5, {p}.values[0]) once normalised (Unicode NFKC): a seller's software may send either; list one"),
        ]
    );
    // Case is not folded: "a" and "A" are two values, as a seller sends them.
    assert!(field(r#""a", "A""#).is_empty());
}

/// Black-box round 181a: `state` and `State` were two fields, and only one drove the
/// geography filters; names told apart by letter case alone are refused in every table
/// of named tables.
#[test]
fn names_that_differ_only_in_case_are_refused() {
    assert_eq!(
        errors(&[(
            "#VERTICAL",
            "[verticals.auto.fields.State]\ntype = \"state\"\nping = true\n",
        )]),
        ["verticals.auto.fields.state: differs from verticals.auto.fields.State only in letter case: names must differ in more than case"]
    );
    assert_eq!(
        errors(&[(
            "#BUYER",
            "[buyers.ACME]\nping_url = \"http://127.0.0.1:9102/ping\"\npost_url = \"http://127.0.0.1:9102/post\"\nsecret_env = \"ACME_SECRET\"\nverticals = [\"auto\"]\n",
        )]),
        ["buyers.ACME: differs from buyers.acme only in letter case: names must differ in more than case"]
    );
}

/// A pattern that JSON Schema's ECMA-262 or Python's `re` cannot read as Rust does is
/// loaded (the exchange checks it), with a warning naming the field: `/openapi.json`
/// publishes it as `x-pattern` (a tester's report: `(?i)abc`, `\p{L}+` and the like made
/// the whole document unusable to standard tools). A portable one gives none.
#[test]
fn a_pattern_only_rust_reads_is_warned_of() {
    let c = ok(&[("#FIELD", "type = \"string\"\npattern = '(?i)abc'")]);
    assert_eq!(crate::config::pattern_warnings(&c).len(), 1);
    let w = crate::config::warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("verticals.auto.fields.extra.pattern: uses the inline flags `(?i)`"),
        "{}",
        w[0]
    );
    assert!(
        w[0].contains("publishes it as x-pattern, not as a JSON Schema pattern"),
        "{}",
        w[0]
    );
    for pattern in [
        r"\p{L}+",
        r"\x{41}",
        r"(?P<n>a)",
        r"a\z",
        r"(?s:.)",
        r"\u{263a}",
        r"[[:digit:]]+",
        r"[a-z&&[^x]]+",
        r"\pN",
        r"\Aab",
        r"a(?-u:\w)",
    ] {
        let c = ok(&[(
            "#FIELD",
            &format!("type = \"string\"\npattern = '{pattern}'"),
        )]);
        let w = crate::config::warnings(&c);
        assert_eq!(w.len(), 1, "{pattern}: {w:?}");
        assert!(
            w[0].starts_with("verticals.auto.fields.extra.pattern: uses "),
            "{}",
            w[0]
        );
    }
    for pattern in [
        "[A-Z]{2}[0-9]+",
        "[0-9]{3}-[0-9]{4}",
        "(?:a|b)+",
        r"\d{5}(-\d{4})?",
    ] {
        let c = ok(&[(
            "#FIELD",
            &format!("type = \"string\"\npattern = '{pattern}'"),
        )]);
        assert!(crate::config::warnings(&c).is_empty(), "{pattern}");
    }
}

/// The unknown-type message's list and the list a feature's kind is checked against are
/// the same types.
#[test]
fn the_field_type_list_is_its_names_joined() {
    assert_eq!(FIELD_TYPE_NAMES.join(", "), FIELD_TYPES);
}
