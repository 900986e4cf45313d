//! `[verticals.NAME.features]` (what the models see) and `[verticals.NAME.routing]` (what
//! the award ranks by). Every problem is reported at once, each with its path.

use proto::{FieldKind, VerticalSchema};
use toml::Value;

use super::reader::{as_str, number, quoted_or_size, toml_quoted, whole, Problems, Section};
use crate::core::model::features::{
    BuyerFeature, ContextFeature, FeatureSpec, LeadFeature, LeadKind, CATEGORIES_MAX, FEATURES_MAX,
};
use crate::core::model::routing::{AwardMode, Routing};

/// The largest magnitude a numeric feature's field may reach: beyond it an `f32` (what
/// the models see) is infinite.
const F32_RANGE: f64 = f32::MAX as f64;

/// `features`: `None` when the vertical declares none (the models then see nothing and
/// only the cold-start rates serve).
pub(super) fn read_features(
    s: &mut Section<'_>,
    schema: &VerticalSchema,
    refused: &[&str],
    declared: &[(&str, &str)],
    p: &mut Problems,
) -> Option<FeatureSpec> {
    if !s.has("features") {
        s.opt("features");
        return None;
    }
    let mut f = s.section_or_empty(p, "features");
    let version = f
        .int_opt(p, "version", 1, i64::from(u32::MAX))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1);
    // Problems of the lists: an entry refused is not also "no feature declared" (but a
    // bad `version` does not hide that none is; black-box round 49).
    let problems_before = p.len();
    let mut lead = Vec::new();
    if let Some((path, v)) = f.opt("lead") {
        match v.as_array() {
            None => p.at(
                &path,
                "must be a list of { field = \"...\", kind = \"...\" } tables",
            ),
            Some(items) => {
                // Every field named so far, a refused one's too, so that a field listed
                // twice is said whatever its definition (black-box round 88b: a refused
                // field's second entry was said only once the field was fixed).
                let mut named: Vec<&str> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let field = item
                        .as_table()
                        .and_then(|t| t.get("field"))
                        .and_then(|f| f.as_str());
                    let twice = field.is_some_and(|f| named.contains(&f));
                    if let Some(field) = field {
                        if twice {
                            p.at(
                                &item_path,
                                format!("field {} is listed twice", toml_quoted(field)),
                            );
                        } else {
                            named.push(field);
                        }
                    }
                    if let Some(feature) =
                        read_lead_feature(&item_path, item, schema, refused, declared, p)
                    {
                        if !twice {
                            lead.push(feature);
                        }
                    }
                }
            }
        }
    }
    let context = named_list(
        &mut f,
        p,
        "context",
        ContextFeature::parse,
        |c| c.as_str(),
        &ContextFeature::ALL,
    );
    let buyer = named_list(
        &mut f,
        p,
        "buyer",
        BuyerFeature::parse,
        |b| b.as_str(),
        &BuyerFeature::ALL,
    );
    let total = lead.len() + context.len() + buyer.len();
    if total == 0 && p.len() == problems_before {
        p.at(
            &f.path_of("lead"),
            "declares no feature: list at least one under lead, context or buyer",
        );
    }
    if total > FEATURES_MAX {
        p.at(
            &f.path_of("lead"),
            format!("declares {total} features, more than the {FEATURES_MAX} allowed"),
        );
    }
    f.finish(p);
    Some(FeatureSpec {
        version,
        lead,
        context,
        buyer,
    })
}

fn named_list<T: Copy + PartialEq>(
    f: &mut Section<'_>,
    p: &mut Problems,
    key: &'static str,
    parse: fn(&str) -> Option<T>,
    name: fn(T) -> &'static str,
    all: &[T],
) -> Vec<T> {
    let mut out = Vec::new();
    for (item_path, item) in f.str_list(p, key) {
        match parse(item) {
            Some(x) if out.contains(&x) => {
                p.at(&item_path, format!("{} is listed twice", toml_quoted(item)))
            }
            Some(x) => out.push(x),
            None => {
                let known: Vec<&str> = all.iter().map(|x| name(*x)).collect();
                p.at(
                    &item_path,
                    format!(
                        "unknown {key} feature {item:?} (one of {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    out
}

fn read_lead_feature(
    path: &str,
    item: &Value,
    schema: &VerticalSchema,
    refused: &[&str],
    declared: &[(&str, &str)],
    p: &mut Problems,
) -> Option<LeadFeature> {
    let Some(t) = item.as_table() else {
        p.at(
            path,
            "must be a table such as { field = \"age\", kind = \"numeric\" }",
        );
        return None;
    };
    let before = p.len();
    let mut s = Section::new(path.to_string(), Some(t));
    let field = s.str_req(p, "field");
    let kind_name = s.str_req(p, "kind");
    let categories = s.opt("categories");
    s.finish(p);
    let (field, kind_name) = (field?, kind_name?);
    // A field whose own definition was refused: its problems are reported there, and
    // what does not depend on the field is checked here (black-box round 87a: an unknown
    // kind hid behind the field's problem, to show up only once the field was fixed).
    if refused.contains(&field) {
        // The kind against the type the field declares, when it declares a known one.
        let declared = declared
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, t)| *t)
            // Another declared type is that field's problem alone.
            .filter(|t| super::FIELD_TYPE_NAMES.contains(t));
        let fits = |types: &[&str]| declared.is_none_or(|t| types.contains(&t));
        let needs = match kind_name {
            "numeric" if !fits(&["integer", "number"]) => {
                Some("numeric needs an integer or number field")
            }
            "boolean" if !fits(&["boolean"]) => Some("boolean needs a boolean field"),
            "categorical" if !fits(&["enum", "state", "zip", "string"]) => {
                Some("categorical needs an enum, state, zip or string field")
            }
            _ => None,
        };
        if let Some(needs) = needs {
            p.at(
                &format!("{path}.kind"),
                format!("{needs}; {} is not one", toml_quoted(field)),
            );
        }
        match kind_name {
            "numeric" | "boolean" if categories.is_some() => p.at(
                &format!("{path}.categories"),
                "applies only to kind = \"categorical\"",
            ),
            "numeric" | "boolean" => {}
            "categorical" if categories.is_none() => p.at(
                &format!("{path}.categories"),
                "is required for a categorical feature: the fixed list whose positions are the encoding",
            ),
            "categorical" => {}
            other => p.at(
                &format!("{path}.kind"),
                format!("unknown kind {} (one of numeric, boolean, categorical)", toml_quoted(other)),
            ),
        }
        return None;
    }
    let Some(field_idx) = schema.field_index(field) else {
        p.at(
            &format!("{path}.field"),
            format!("unknown lead field {}", toml_quoted(field)),
        );
        return None;
    };
    let spec = schema.fields.get(field_idx)?;
    if spec.pii || !spec.ping {
        p.at(
            &format!("{path}.field"),
            format!("{} is not a ping field: a feature must be known when the lead is pinged, and never personal data", toml_quoted(field)),
        );
    }
    let kind = match kind_name {
        "numeric" => {
            match &spec.kind {
                // Every i64 is finite as an f32.
                FieldKind::Integer { .. } => {}
                FieldKind::Number { min, max } => {
                    if min.abs() > F32_RANGE || max.abs() > F32_RANGE {
                        p.at(
                            &format!("{path}.field"),
                            format!("{} must have min and max within ±3.4e38 to be a numeric feature (a model sees 32-bit floats, so a larger value would be infinite)", toml_quoted(field)),
                        );
                    }
                }
                _ => p.at(
                    &format!("{path}.kind"),
                    format!(
                        "numeric needs an integer or number field; {} is not one",
                        toml_quoted(field)
                    ),
                ),
            }
            if categories.is_some() {
                p.at(
                    &format!("{path}.categories"),
                    "applies only to kind = \"categorical\"",
                );
            }
            LeadKind::Numeric
        }
        "boolean" => {
            if !matches!(spec.kind, FieldKind::Boolean) {
                p.at(
                    &format!("{path}.kind"),
                    format!(
                        "boolean needs a boolean field; {} is not one",
                        toml_quoted(field)
                    ),
                );
            }
            if categories.is_some() {
                p.at(
                    &format!("{path}.categories"),
                    "applies only to kind = \"categorical\"",
                );
            }
            LeadKind::Boolean
        }
        "categorical" => {
            if !matches!(
                spec.kind,
                FieldKind::Enum(_) | FieldKind::State | FieldKind::Zip | FieldKind::String { .. }
            ) {
                p.at(
                    &format!("{path}.kind"),
                    format!(
                        "categorical needs an enum, state, zip or string field; {} is not one",
                        toml_quoted(field)
                    ),
                );
            }
            let mut list: Vec<String> = Vec::new();
            match categories {
                None => p.at(&format!("{path}.categories"), "is required for a categorical feature: the fixed list whose positions are the encoding"),
                Some((cpath, v)) => match v.as_array() {
                    None => p.at(&cpath, "must be a list of strings"),
                    Some(items) if items.is_empty() => p.at(&cpath, "must list at least one category"),
                    Some(items) if items.len() > CATEGORIES_MAX => {
                        p.at(&cpath, format!("lists {} categories, more than the {CATEGORIES_MAX} allowed", items.len()))
                    }
                    Some(items) => {
                        for (i, c) in items.iter().enumerate() {
                            let ip = format!("{cpath}[{i}]");
                            if let Some(c) = as_str(p, &ip, c) {
                                if list.iter().any(|x| x == c) {
                                    p.at(&ip, format!("{} is listed twice", quoted_or_size(c, "category")));
                                } else if let Some(why) = never_matches(&spec.kind, c) {
                                    // A category no lead can carry leaves the feature
                                    // missing for good (black-box round 182b).
                                    p.at(&ip, format!("{} never matches: {why}", quoted_or_size(c, "category")));
                                } else {
                                    list.push(c.to_string());
                                }
                            }
                        }
                    }
                },
            }
            LeadKind::Categorical { categories: list }
        }
        other => {
            p.at(
                &format!("{path}.kind"),
                format!(
                    "unknown kind {} (one of numeric, boolean, categorical)",
                    toml_quoted(other)
                ),
            );
            return None;
        }
    };
    if p.len() > before {
        return None;
    }
    Some(LeadFeature {
        field: field.to_string(),
        field_idx,
        kind,
    })
}

/// `routing`: defaults when absent.
pub(super) fn read_routing(s: &mut Section<'_>, p: &mut Problems) -> Routing {
    let mut r = s.section_or_empty(p, "routing");
    let mut out = Routing::default();
    match r.str_opt(p, "award") {
        None => {}
        Some("ev") => out.award = AwardMode::ExpectedValue,
        Some("price") => out.award = AwardMode::Price,
        Some(other) => p.at(
            &r.path_of("award"),
            format!(
                "unknown award {} (\"ev\": bid times the chance of realization, or \"price\")",
                toml_quoted(other)
            ),
        ),
    }
    if let Some((path, v)) = r.opt("explore_share") {
        match number(p, &path, v) {
            Some(x) if (0.0..=0.5).contains(&x) => {
                out.explore_ppm = (x * 1_000_000.0).round() as u32
            }
            Some(_) => p.at(&path, "must be between 0 and 0.5"),
            None => {}
        }
    }
    if let Some((path, v)) = r.opt("prior_weight") {
        if let Some(w) = whole(p, &path, v, 1, 1_000_000) {
            out.prior_weight = w as u32;
        }
    }
    if let Some((path, v)) = r.opt("drift_guard") {
        match number(p, &path, v) {
            Some(x) if (0.0..=100.0).contains(&x) => {
                out.drift_guard_milli = (x * 1000.0).round() as u32
            }
            Some(_) => p.at(
                &path,
                "must be between 0 and 100 (standard deviations; 0: off)",
            ),
            None => {}
        }
    }
    if let Some((path, v)) = r.opt("reject_streak_max") {
        if let Some(n) = whole(p, &path, v, 0, 1_000_000) {
            out.reject_streak_max = n as u32;
        }
    }
    if let Some((path, v)) = r.opt("reject_pause_ms") {
        if let Some(ms) = whole(p, &path, v, 1, 7 * 24 * 3_600_000) {
            out.reject_pause_ms = ms as u64;
        }
    }
    r.finish(p);
    out
}

/// Why `category` can never be the value of a field of `kind` (`None`: it can be): the
/// problem a lead with it would get (not one of an enum's values, not a US state code,
/// not five digits, longer than a string field's `len_max`, outside its `pattern`).
fn never_matches(kind: &FieldKind, category: &str) -> Option<String> {
    let why = proto::schema::refuses_text(kind, category)?;
    Some(match kind {
        FieldKind::Enum(_) => "it is not one of the enum field's values".into(),
        _ => format!("a lead with it is refused (the field's value {why})"),
    })
}
