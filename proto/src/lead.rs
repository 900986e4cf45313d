//! A validated lead: typed values in the vertical's schema order. A `Lead` holds schema
//! indices, not names, so it is only meaningful next to the schema that validated it.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::schema::VerticalSchema;

/// One typed lead value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Str(String),
    Int(i64),
    Num(f64),
    Bool(bool),
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::Str(v) => s.serialize_str(v),
            FieldValue::Int(v) => s.serialize_i64(*v),
            FieldValue::Num(v) => s.serialize_f64(*v),
            FieldValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

impl FieldValue {
    /// The same value: a whole number equals the `Num` of the same value, so a reload
    /// that moved a field between `integer` and `number` does not make an honest post a
    /// `mismatch` (black-box round 142a); otherwise `==`.
    pub fn same_value(&self, other: &FieldValue) -> bool {
        // In i64's range (2^63 itself is not), whole, and the same.
        const TWO_63: f64 = 9_223_372_036_854_775_808.0;
        let whole =
            |n: f64, i: i64| (-TWO_63..TWO_63).contains(&n) && n.fract() == 0.0 && n as i64 == i;
        match (self, other) {
            (FieldValue::Int(i), FieldValue::Num(n)) | (FieldValue::Num(n), FieldValue::Int(i)) => {
                whole(*n, *i)
            }
            _ => self == other,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A lead validated against a [`VerticalSchema`], fields in schema order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Lead {
    fields: Vec<(usize, FieldValue)>,
}

impl Lead {
    pub(crate) fn from_parts(fields: Vec<(usize, FieldValue)>) -> Lead {
        Lead { fields }
    }

    /// `(name, value)` pairs in schema order.
    pub fn iter<'a>(
        &'a self,
        schema: &'a VerticalSchema,
    ) -> impl Iterator<Item = (&'a str, &'a FieldValue)> + 'a {
        self.fields
            .iter()
            .filter_map(move |(i, v)| schema.fields.get(*i).map(|f| (f.name.as_str(), v)))
    }

    /// The value of field `name`, if the lead carries it.
    pub fn get<'a>(&'a self, schema: &VerticalSchema, name: &str) -> Option<&'a FieldValue> {
        let idx = schema.field_index(name)?;
        self.fields.iter().find(|(i, _)| *i == idx).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The PII-free projection: only fields the schema lets travel in a ping and that are
    /// not PII. This is the only lead that may be sent to a buyer before it wins.
    pub fn ping_projection(&self, schema: &VerticalSchema) -> Lead {
        Lead {
            fields: self
                .fields
                .iter()
                .filter(|(i, _)| schema.fields.get(*i).is_some_and(|f| f.ping && !f.pii))
                .cloned()
                .collect(),
        }
    }

    /// Names of the ping fields whose values differ between this (the ping's lead, under
    /// `ping_schema`) and `post` (under `post_schema`): the ping fields of the schema the
    /// ping was made under, matched by name when a reload changed the schema since (a
    /// field present in one and absent in the other counts as a change; a field that
    /// became a ping field after the ping was not part of it).
    pub fn ping_field_changes<'a>(
        &self,
        ping_schema: &'a VerticalSchema,
        post: &Lead,
        post_schema: &VerticalSchema,
    ) -> Vec<&'a str> {
        ping_schema
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.ping && !f.pii)
            .filter(|&(i, f)| {
                let a = self.fields.iter().find(|(j, _)| *j == i).map(|(_, v)| v);
                // The same schema (no reload since the ping): the same index. Otherwise
                // the field of that name in the post's schema, if it still has one.
                let at = if std::ptr::eq(ping_schema, post_schema) {
                    Some(i)
                } else {
                    post_schema.field_index(&f.name)
                };
                let b = at.and_then(|at| post.fields.iter().find(|(j, _)| *j == at));
                match (a, b.map(|(_, v)| v)) {
                    (Some(a), Some(b)) => !a.same_value(b),
                    (a, b) => a.is_some() != b.is_some(),
                }
            })
            .map(|(_, f)| f.name.as_str())
            .collect()
    }

    /// A view that serializes the lead as a JSON object.
    pub fn json<'a>(&'a self, schema: &'a VerticalSchema) -> LeadJson<'a> {
        LeadJson { lead: self, schema }
    }
}

/// Serializes a [`Lead`] as a JSON object with the schema's names.
#[derive(Debug, Clone, Copy)]
pub struct LeadJson<'a> {
    lead: &'a Lead,
    schema: &'a VerticalSchema,
}

impl Serialize for LeadJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.lead.fields.len()))?;
        for (name, value) in self.lead.iter(self.schema) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A [`Lead`] packed into one allocation, for leads kept a long time (the ping-time lead
/// of an open quote): its fields in order, each as a LEB128 schema index, a tag byte and
/// the value (a string as a LEB128 length and its bytes, a number as 8 little-endian
/// bytes, a boolean in its tag). [`PackedLead::unpack`] gives the same lead back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackedLead(Box<[u8]>);

const TAG_STR: u8 = 0;
const TAG_INT: u8 = 1;
const TAG_NUM: u8 = 2;
const TAG_FALSE: u8 = 3;
const TAG_TRUE: u8 = 4;

fn put_leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads one LEB128 number at `*at`; `None` past the end (never for a packed lead).
fn get_leb128(b: &[u8], at: &mut usize) -> Option<usize> {
    let mut n = 0usize;
    let mut shift = 0u32;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        n |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(n);
        }
        shift += 7;
    }
}

fn get_8(b: &[u8], at: &mut usize) -> Option<[u8; 8]> {
    let v: [u8; 8] = b.get(*at..*at + 8)?.try_into().ok()?;
    *at += 8;
    Some(v)
}

impl Lead {
    /// The lead packed into one allocation (see [`PackedLead`]).
    pub fn pack(&self) -> PackedLead {
        let size: usize = self
            .fields
            .iter()
            .map(|(_, v)| {
                3 + match v {
                    FieldValue::Str(s) => 2 + s.len(),
                    FieldValue::Int(_) | FieldValue::Num(_) => 8,
                    FieldValue::Bool(_) => 0,
                }
            })
            .sum();
        let mut out = Vec::with_capacity(size);
        for (i, v) in &self.fields {
            put_leb128(&mut out, *i);
            match v {
                FieldValue::Str(s) => {
                    out.push(TAG_STR);
                    put_leb128(&mut out, s.len());
                    out.extend_from_slice(s.as_bytes());
                }
                FieldValue::Int(n) => {
                    out.push(TAG_INT);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                FieldValue::Num(x) => {
                    out.push(TAG_NUM);
                    out.extend_from_slice(&x.to_bits().to_le_bytes());
                }
                FieldValue::Bool(b) => out.push(if *b { TAG_TRUE } else { TAG_FALSE }),
            }
        }
        PackedLead(out.into_boxed_slice())
    }
}

impl PackedLead {
    /// The lead that was packed.
    pub fn unpack(&self) -> Lead {
        let b = &self.0;
        let mut fields = Vec::new();
        let mut at = 0;
        while at < b.len() {
            match Self::field(b, &mut at) {
                Some(f) => fields.push(f),
                // Only `pack` makes a PackedLead, so this is unreachable; stop rather
                // than make up a value.
                None => break,
            }
        }
        Lead { fields }
    }

    fn field(b: &[u8], at: &mut usize) -> Option<(usize, FieldValue)> {
        let i = get_leb128(b, at)?;
        let tag = *b.get(*at)?;
        *at += 1;
        let v = match tag {
            TAG_STR => {
                let len = get_leb128(b, at)?;
                let s = std::str::from_utf8(b.get(*at..*at + len)?).ok()?;
                *at += len;
                FieldValue::Str(s.to_string())
            }
            TAG_INT => FieldValue::Int(i64::from_le_bytes(get_8(b, at)?)),
            TAG_NUM => FieldValue::Num(f64::from_bits(u64::from_le_bytes(get_8(b, at)?))),
            TAG_FALSE => FieldValue::Bool(false),
            TAG_TRUE => FieldValue::Bool(true),
            _ => return None,
        };
        Some((i, v))
    }

    /// Bytes held (the one allocation).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod packed_tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            ".{0,300}".prop_map(FieldValue::Str),
            any::<i64>().prop_map(FieldValue::Int),
            any::<f64>().prop_map(FieldValue::Num),
            any::<bool>().prop_map(FieldValue::Bool),
        ]
    }

    /// Equal as stored: numbers compared by their bits (NaN included).
    fn same(a: &Lead, b: &Lead) -> bool {
        a.fields.len() == b.fields.len()
            && a.fields.iter().zip(&b.fields).all(|((i, x), (j, y))| {
                i == j
                    && match (x, y) {
                        (FieldValue::Num(x), FieldValue::Num(y)) => x.to_bits() == y.to_bits(),
                        _ => x == y,
                    }
            })
    }

    /// Black-box rounds 141a and 142a: across a reload, the ping fields are the ping-time
    /// schema's, found by name in the post's schema, and a whole number is the same value
    /// as an `integer` and as a `number`.
    #[test]
    fn ping_field_changes_are_by_name_and_by_value_across_schemas() {
        use crate::schema::{FieldKind, FieldSpec};
        let field = |name: &str, kind: FieldKind, ping: bool| FieldSpec {
            name: name.into(),
            kind,
            required: false,
            ping,
            pii: false,
        };
        let (int, num) = (
            FieldKind::Integer { min: 0, max: 200 },
            FieldKind::Number {
                min: 0.0,
                max: 200.0,
            },
        );
        let at_ping = VerticalSchema {
            fields: vec![
                field("zip", FieldKind::Zip, true),
                field("age", int.clone(), true),
            ],
        };
        // Reordered, `age` a `number` and post-only, a new ping field.
        let at_post = VerticalSchema {
            fields: vec![
                field("new", FieldKind::Boolean, true),
                field("age", num, false),
                field("zip", FieldKind::Zip, true),
            ],
        };
        let ping = Lead::from_parts(vec![
            (0, FieldValue::Str("76180".into())),
            (1, FieldValue::Int(40)),
        ]);
        let post = |age: Option<FieldValue>, zip: &str| {
            let mut f = vec![(0, FieldValue::Bool(true))];
            f.extend(age.map(|a| (1, a)));
            f.push((2, FieldValue::Str(zip.into())));
            Lead::from_parts(f)
        };
        let changes = |p: &Lead| ping.ping_field_changes(&at_ping, p, &at_post);
        assert!(changes(&post(Some(FieldValue::Num(40.0)), "76180")).is_empty());
        assert_eq!(
            changes(&post(Some(FieldValue::Num(40.5)), "76180")),
            ["age"]
        );
        assert_eq!(changes(&post(None, "76180")), ["age"]);
        assert_eq!(
            changes(&post(Some(FieldValue::Num(40.0)), "76181")),
            ["zip"]
        );
        // The same schema: by index, as before.
        let same = Lead::from_parts(vec![
            (0, FieldValue::Str("76180".into())),
            (1, FieldValue::Int(41)),
        ]);
        assert_eq!(ping.ping_field_changes(&at_ping, &same, &at_ping), ["age"]);
        assert!(FieldValue::Int(i64::MAX).same_value(&FieldValue::Int(i64::MAX)));
        assert!(!FieldValue::Int(i64::MAX).same_value(&FieldValue::Num(2f64.powi(63))));
        assert!(!FieldValue::Int(1).same_value(&FieldValue::Str("1".into())));
    }

    #[test]
    fn an_empty_lead_packs_to_nothing() {
        let p = Lead::default().pack();
        assert!(p.is_empty());
        assert_eq!(p.unpack(), Lead::default());
    }

    #[test]
    fn a_ping_lead_packs_small() {
        let lead = Lead::from_parts(vec![
            (0, FieldValue::Str("TX".into())),
            (1, FieldValue::Str("76180".into())),
            (2, FieldValue::Int(42)),
            (3, FieldValue::Bool(true)),
            (4, FieldValue::Str("good".into())),
            (5, FieldValue::Bool(false)),
            (6, FieldValue::Int(2019)),
        ]);
        let p = lead.pack();
        assert_eq!(p.len(), 44);
        assert_eq!(p.unpack(), lead);
    }

    proptest! {
        #[test]
        fn unpack_gives_the_packed_lead(
            fields in proptest::collection::vec((0usize..100_000, value()), 0..40)
        ) {
            let lead = Lead::from_parts(fields);
            prop_assert!(same(&lead.pack().unpack(), &lead));
        }
    }
}
