//! Tests of `[verticals.NAME.features]`, `[verticals.NAME.routing]` and `[learning]`.

use super::*;
use crate::core::model::features::{BuyerFeature, ContextFeature, LeadKind};
use crate::core::model::routing::AwardMode;

fn feats(inline: &str) -> (&'static str, String) {
    ("#VERTICAL", format!("features = {inline}"))
}

fn has(errs: &[String], needle: &str) {
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in {errs:#?}"
    );
}

#[test]
fn features_routing_and_learning_load() {
    let (m, f) = feats(
        r#"{ version = 3, lead = [{ field = "state", kind = "categorical", categories = ["TX", "OK"] }, { field = "extra", kind = "numeric" }], context = ["hour_of_day", "seller"], buyer = ["buyer", "bid_ratio"] }"#,
    );
    let c = ok(&[
        (
            m,
            &(f + "\nrouting = { award = \"price\", explore_share = 0.2, prior_weight = 50, drift_guard = 2.5, reject_streak_max = 7, reject_pause_ms = 9000 }"),
        ),
        (
            "#FIELD",
            "type = \"integer\"\nmin = 0\nmax = 10\nping = true",
        ),
        (
            "#BUYER",
            "\n[learning]\nmodels_dir = \"/tmp/m\"\nmin_rows = 50\nretrain_every_s = 60\neta = 0.3\nheldout_max_rows = 300\nhalf_life_rows = 0",
        ),
    ]);
    let v = &c.verticals[0];
    let spec = v.features.as_ref().unwrap();
    assert_eq!(spec.version, 3);
    assert_eq!(spec.lead.len(), 2);
    assert_eq!(
        spec.lead[0].kind,
        LeadKind::Categorical {
            categories: vec!["TX".into(), "OK".into()]
        }
    );
    assert_eq!(spec.lead[1].kind, LeadKind::Numeric);
    assert_eq!(
        spec.lead[1].field_idx,
        v.schema.field_index("extra").unwrap()
    );
    assert_eq!(
        spec.context,
        [ContextFeature::HourOfDay, ContextFeature::Seller]
    );
    assert_eq!(spec.buyer, [BuyerFeature::Buyer, BuyerFeature::BidRatio]);
    assert_eq!(spec.len(), 6);
    assert_eq!(v.routing.award, AwardMode::Price);
    assert_eq!(v.routing.explore_ppm, 200_000);
    assert_eq!(v.routing.prior_weight, 50);
    assert_eq!(v.routing.drift_guard_milli, 2_500);
    assert_eq!(
        (v.routing.reject_streak_max, v.routing.reject_pause_ms),
        (7, 9_000)
    );
    assert_eq!(c.learning.heldout_max_rows, 300);
    assert_eq!(c.learning.half_life_rows, 0);
    assert_eq!(c.learning.models_dir, PathBuf::from("/tmp/m"));
    assert_eq!(c.learning.min_rows, 50);
    assert_eq!(c.learning.retrain_every_s, 60);
    assert!((c.learning.eta - 0.3).abs() < 1e-12);

    // Without the tables: no features, EV with the defaults, default learning.
    let c = ok(&[]);
    assert!(c.verticals[0].features.is_none());
    assert_eq!(c.verticals[0].routing.award, AwardMode::ExpectedValue);
    assert_eq!(c.verticals[0].routing.explore_ppm, 30_000);
    assert_eq!(c.learning, crate::config::LearningConfig::default());
    // The default configuration declares features for auto_insurance.
    let d = load_str_with_env(DEFAULT_TOML, &demo_env).unwrap();
    assert_eq!(d.verticals[0].features.as_ref().map(|f| f.len()), Some(16));
}

#[test]
fn every_bad_feature_is_named() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{ lead = [{ field = "nope", kind = "numeric" }] }"#,
            "unknown lead field \"nope\"",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "numeric" }] }"#,
            "numeric needs an integer or number field",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "boolean" }] }"#,
            "boolean needs a boolean field",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "fuzzy" }] }"#,
            "unknown kind \"fuzzy\"",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "categorical" }] }"#,
            "is required for a categorical feature",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "categorical", categories = [] }] }"#,
            "at least one category",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "categorical", categories = ["TX", "TX"] }] }"#,
            "listed twice",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "categorical", categories = [1] }] }"#,
            "must be a string",
        ),
        (
            r#"{ lead = [{ field = "phone", kind = "categorical", categories = ["x"] }] }"#,
            "not a ping field",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "categorical", categories = ["TX"] }, { field = "state", kind = "categorical", categories = ["TX"] }] }"#,
            "listed twice",
        ),
        (
            r#"{ lead = [{ field = "state", kind = "categorical", categories = ["TX"], colour = 1 }] }"#,
            "unknown key",
        ),
        (r#"{ lead = ["state"] }"#, "must be a table"),
        (
            r#"{ context = ["weather"] }"#,
            "unknown context feature \"weather\"",
        ),
        (r#"{ buyer = ["mood"] }"#, "unknown buyer feature \"mood\""),
        (r#"{ buyer = ["buyer", "buyer"] }"#, "listed twice"),
        (r#"{ }"#, "declares no feature"),
        (r#"{ version = 0, buyer = ["buyer"] }"#, "version"),
        (r#"{ buyer = ["buyer"], extra = 1 }"#, "unknown key"),
    ];
    for (inline, needle) in cases {
        let (m, f) = feats(inline);
        let errs = errors(&[(m, &f)]);
        assert!(!errs.is_empty(), "{inline} loaded");
        has(&errs, needle);
    }
    // The one entry refused is its only problem, not also "declares no feature" at
    // `lead` (black-box round 10).
    for inline in [r#"{ buyer = ["bid"] }"#, r#"{ context = ["weather"] }"#] {
        let (m, f) = feats(inline);
        let errs = errors(&[(m, &f)]);
        assert_eq!(errs.len(), 1, "{inline}: {errs:?}");
        assert!(
            !errs[0].contains("declares no feature"),
            "{inline}: {errs:?}"
        );
    }
    // A bad `version` does not hide that no feature is declared (black-box round 49).
    let (m, f) = feats(r#"{ version = 4294967296 }"#);
    let errs = errors(&[(m, &f)]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    has(&errs, "version");
    has(&errs, "declares no feature");
    // A number field a float cannot hold is no numeric feature (it would be infinite).
    let (m, f) = feats(r#"{ lead = [{ field = "extra", kind = "numeric" }] }"#);
    let errs = errors(&[(m, &f), ("#FIELD", "type = \"number\"\nping = true")]);
    has(&errs, "within ±3.4e38");
    let (m, f) = feats(r#"{ lead = [{ field = "extra", kind = "numeric" }] }"#);
    assert!(errors(&[
        (m, &f),
        (
            "#FIELD",
            "type = \"number\"\nmin = -1e6\nmax = 1e6\nping = true"
        )
    ])
    .is_empty());
}

/// Black-box round 182b: a category no lead can carry (not one of an enum's values, not
/// a state code, not five digits) loaded, and left its feature missing for good.
#[test]
fn a_category_that_never_matches_is_refused() {
    let p = "verticals.auto.features.lead[0].categories";
    let enum_field = (
        "#FIELD",
        "type = \"enum\"\nping = true\nvalues = [\"a\", \"b\"]",
    );
    let (m, f) = feats(
        r#"{ lead = [{ field = "extra", kind = "categorical", categories = ["a", "c", "b\u200B"] }] }"#,
    );
    assert_eq!(
        errors(&[(m, &f), enum_field]),
        [
            format!("{p}[1]: \"c\" never matches: it is not one of the enum field's values"),
            format!("{p}[2]: \"b\\u200B\" never matches: it is not one of the enum field's values"),
        ]
    );
    let (m, f) = feats(
        r#"{ lead = [{ field = "state", kind = "categorical", categories = ["TX", "tx", "XX"] }] }"#,
    );
    assert_eq!(
        errors(&[(m, &f)]),
        [
            format!("{p}[1]: \"tx\" never matches: a lead with it is refused (the field's value must be a two-letter US state code)"),
            format!("{p}[2]: \"XX\" never matches: a lead with it is refused (the field's value must be a two-letter US state code)"),
        ]
    );
    let (m, f) = feats(
        r#"{ lead = [{ field = "zip", kind = "categorical", categories = ["76180", "7618", "7618x"] }] }"#,
    );
    assert_eq!(
        errors(&[(m, &f)]),
        [
            format!("{p}[1]: \"7618\" never matches: a lead with it is refused (the field's value must be 5 digits)"),
            format!("{p}[2]: \"7618x\" never matches: a lead with it is refused (the field's value must be 5 digits)"),
        ]
    );
    // A string field's: past its len_max, outside its pattern (black-box round 184a).
    let (m, f) = feats(
        r#"{ lead = [{ field = "extra", kind = "categorical", categories = ["ABC", "abcdef", "abc"] }] }"#,
    );
    assert_eq!(
        errors(&[(m, &f), ("#FIELD", "type = \"string\"\nlen_max = 5\npattern = \"[A-Za-z]{3}\"\nping = true")]),
        [
            format!("{p}[1]: \"abcdef\" never matches: a lead with it is refused (the field's value must be at most 5 characters)"),
        ]
    );
    let (m, f) = feats(
        r#"{ lead = [{ field = "extra", kind = "categorical", categories = ["ABC", "AB1"] }] }"#,
    );
    let e = errors(&[
        (m, &f),
        (
            "#FIELD",
            "type = \"string\"\npattern = \"[A-Z]{3}\"\nping = true",
        ),
    ]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "{p}[1]: \"AB1\" never matches: a lead with it is refused"
        )),
        "{e:?}"
    );
    // A long one is told by its size, so the reason is not cut off (black-box round 185a).
    let long = "x".repeat(1_025);
    let (m, f) = feats(&format!(
        r#"{{ lead = [{{ field = "extra", kind = "categorical", categories = ["{long}"] }}] }}"#
    ));
    assert_eq!(
        errors(&[(m, &f), ("#FIELD", "type = \"string\"\nping = true")]),
        [format!("{p}[0]: a category of 1025 characters never matches: a lead with it is refused (the field's value must be at most 1024 characters)")]
    );
    // Values a field can hold load.
    let (m, f) = feats(
        r#"{ lead = [{ field = "extra", kind = "categorical", categories = ["anything", "b"] }] }"#,
    );
    assert!(errors(&[(m, &f), ("#FIELD", "type = \"string\"\nping = true")]).is_empty());
}

#[test]
fn bad_routing_and_learning_are_named() {
    for (line, needle) in [
        ("routing = { award = \"auction\" }", "unknown award"),
        ("routing = { explore_share = 0.9 }", "between 0 and 0.5"),
        ("routing = { prior_weight = 0 }", "prior_weight"),
        ("routing = { drift_guard = -1 }", "between 0 and 100"),
        ("routing = { reject_streak_max = -1 }", "reject_streak_max"),
        ("routing = { reject_pause_ms = 0 }", "reject_pause_ms"),
        ("routing = { reject_pause_ms = 1.5 }", "reject_pause_ms"),
        ("routing = { colour = 1 }", "unknown key"),
        // A number with a unit is told to drop it (black-box round 203a).
        (
            "routing = { explore_share = \"3%\" }",
            "explore_share: must be a number, written without quotes or a unit",
        ),
        (
            "routing = { drift_guard = \"3sd\" }",
            "drift_guard: must be a number, written without quotes or a unit",
        ),
    ] {
        has(&errors(&[("#VERTICAL", line)]), needle);
        // A broken field does not hide them: every problem at once.
        let both = errors(&[
            ("#VERTICAL", line),
            ("#FIELD", "type = \"number\"\nmin = 5\nmax = 1"),
        ]);
        has(&both, needle);
        has(&both, "verticals.auto.fields.extra");
    }
    for (line, needle) in [
        ("heldout_pct = 90", "heldout_pct"),
        ("heldout_max_rows = -1", "heldout_max_rows"),
        ("half_life_rows = 1.5", "half_life_rows"),
        ("min_rows = 1", "min_rows"),
        ("eta = 0", "more than 0"),
        ("max_depth = 40", "max_depth"),
        ("models_dir = \"\"", "models_dir"),
        ("tutor = 1", "unknown key"),
    ] {
        has(
            &errors(&[("#BUYER", &format!("\n[learning]\n{line}"))]),
            needle,
        );
    }
}

/// Black-box round 14: a field's problem hid every problem of the vertical's features.
/// They are read against the fields that read cleanly; a feature naming the refused
/// field is left to that field's problem.
#[test]
fn feature_problems_are_listed_beside_a_fields_problems() {
    let (m, f) = feats(
        r#"{ version = 0, lead = [{ field = "extra", kind = "numeric" }, { field = "ssn", kind = "numeric" }, { field = "extra", kind = "bogus" }, { field = "extra", kind = "categorical" }], context = ["moon_phase"] }"#,
    );
    let errs = errors(&[(m, &f), ("#FIELD", "type = \"integer\"\nmin = 5\nmax = 1")]);
    has(
        &errs,
        "verticals.auto.fields.extra.max: must be at least min",
    );
    has(&errs, "verticals.auto.features.version");
    has(
        &errs,
        "verticals.auto.features.lead[1].field: unknown lead field \"ssn\"",
    );
    has(&errs, "verticals.auto.features.context[0]");
    assert!(
        !errs.iter().any(|e| e.contains("lead[0]")),
        "the refused field's feature is left to it: {errs:#?}"
    );
    // What does not depend on the refused field is still said (black-box round 87a).
    has(
        &errs,
        "verticals.auto.features.lead[2].kind: unknown kind \"bogus\"",
    );
    has(
        &errs,
        "verticals.auto.features.lead[3].categories: is required for a categorical feature",
    );
    // ...and a refused field listed twice (black-box round 88b).
    let (m, f) = feats(
        r#"{ lead = [{ field = "extra", kind = "numeric" }, { field = "extra", kind = "numeric" }] }"#,
    );
    let errs = errors(&[(m, &f), ("#FIELD", "type = \"integer\"\nmin = 5\nmax = 1")]);
    has(
        &errs,
        "verticals.auto.features.lead[1]: field \"extra\" is listed twice",
    );
    // ...and a kind the refused field's declared type cannot have (black-box round 210b:
    // said only once the field's own problem was fixed); a kind its type can have is
    // left to the field.
    let string_with_min = ("#FIELD", "type = \"string\"\nmin = 18\nping = true");
    let (m, f) = feats(r#"{ lead = [{ field = "extra", kind = "numeric" }] }"#);
    let errs = errors(&[(m, &f), string_with_min]);
    has(&errs, "verticals.auto.fields.extra.min");
    has(
        &errs,
        "verticals.auto.features.lead[0].kind: numeric needs an integer or number field; \"extra\" is not one",
    );
    let (m, f) =
        feats(r#"{ lead = [{ field = "extra", kind = "categorical", categories = ["a"] }] }"#);
    let errs = errors(&[(m, &f), string_with_min]);
    has(&errs, "verticals.auto.fields.extra.min");
    assert!(!errs.iter().any(|e| e.contains("lead[0]")), "{errs:#?}");
}
