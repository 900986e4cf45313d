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

/// Parses bytes as JSON; a syntax error is `invalid_request`. The buffer is used as scratch.
pub fn parse_value(buf: &mut [u8]) -> Result<OwnedValue, ApiError> {
    simd_json::to_owned_value(buf)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("malformed JSON: {e}")))
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
        if v.is_none() && self.obj.is_some() {
            self.problem(key, "is required");
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
        let mut bad = Vec::new();
        for (k, v) in o.iter() {
            match v {
                // Characters, as JSON Schema's maxLength counts them (the OpenAPI documents).
                OwnedValue::String(s)
                    if s.chars().count() <= STRING_MAP_VALUE_LEN_MAX
                        && k.chars().count() <= STRING_MAP_KEY_LEN_MAX =>
                {
                    out.insert(k.to_string(), s.to_string());
                }
                OwnedValue::String(_) => {
                    bad.push((k.chars().take(64).collect::<String>(), "is too long"))
                }
                _ => bad.push((k.chars().take(64).collect::<String>(), "must be a string")),
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
            .map(|k| k.chars().take(64).collect())
            .collect();
        unknown.sort();
        for k in unknown {
            self.problems.push(FieldProblem::new(k, "unknown field"));
        }
    }
}
