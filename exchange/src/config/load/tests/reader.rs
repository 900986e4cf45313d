//! Tests of the reader: money forms, key paths.

use proto::Micros;

use super::*;
use crate::config::load::reader::edit_distance;

#[test]
fn money_forms_are_exact() {
    let floor =
        |v: &str| load(&[("#VERTICAL", &format!("floor = {v}"))]).map(|c| c.verticals[0].floor);
    assert_eq!(floor("0.1"), Ok(Micros(100_000)));
    assert_eq!(floor("2.675"), Ok(Micros(2_675_000)));
    assert_eq!(floor("3"), Ok(Micros(3_000_000)));
    assert_eq!(floor("\"12.50\""), Ok(Micros(12_500_000)));
    assert_eq!(floor("0.000001"), Ok(Micros(1)));
    // Zeros at the end are not precision, in a float or a string (black-box round 49:
    // the string was refused as too precise).
    assert_eq!(floor("1.0000000"), Ok(Micros(1_000_000)));
    assert_eq!(floor("\"1.0000000\""), Ok(Micros(1_000_000)));
    assert!(floor("\"1.0000001\"").is_err());
    // Zero is zero, however signed; a string is the digits alone, without padding.
    for zero in ["-0", "-0.0", "\"-0\"", "\"-0.00\""] {
        assert_eq!(floor(zero), Ok(Micros(0)), "{zero}");
    }
    assert!(floor("\"-1\"").is_err());
    for padded in ["\"  4\"", "\"4 \"", "\"+4\""] {
        assert!(floor(padded).is_err(), "{padded}");
    }
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
fn keys_with_odd_names_are_quoted_in_paths() {
    assert_eq!(join("a", "b"), "a.b");
    assert_eq!(join("", "b"), "b");
    assert_eq!(join("a", "b c"), "a.\"b c\"");
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    // Two neighbouring letters swapped are one edit.
    assert_eq!(edit_distance("dialy", "daily"), 1);
    assert_eq!(edit_distance("tsl", "tls"), 1);
    assert_eq!(edit_distance("ab", "ba"), 1);
    assert_eq!(edit_distance("abc", "ca"), 3);
    assert_eq!(edit_distance("", "abc"), 3);
}

/// Black-box round 87a: a quoted key was written in Rust's form (`"r\u{202e}x"`), which
/// is not TOML, so the path could not be pasted back into the file. Each key now reads
/// back as itself, and no control or invisible character is printed raw.
#[test]
fn a_quoted_key_path_is_toml_that_reads_back_as_the_key() {
    use crate::config::load::reader::toml_quoted;
    for key in [
        "bad name",
        "a: b",
        "q\"uote\\b",
        "it's",
        "a\nb\tc\rd",
        "e\u{1b}[31mred",
        "r\u{202e}x",
        "zero\u{200b}width",
        "\u{7f}del",
        "é😀 ünï",
        "",
    ] {
        let quoted = toml_quoted(key);
        let table: toml::Table =
            toml::from_str(&format!("{quoted} = 1")).unwrap_or_else(|e| panic!("{quoted}: {e}"));
        assert_eq!(table.keys().collect::<Vec<_>>(), [key], "{quoted}");
        assert!(
            !quoted
                .chars()
                .any(|c| c.is_control() || matches!(c, '\u{202e}' | '\u{200b}')),
            "{quoted:?}"
        );
    }
    assert_eq!(toml_quoted("r\u{202e}x"), "\"r\\u202Ex\"");
    assert_eq!(toml_quoted("e\u{1b}["), "\"e\\u001B[\"");
    assert_eq!(toml_quoted("a\"b"), "\"a\\\"b\"");
}
