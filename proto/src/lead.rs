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

    /// Names of the ping fields whose values differ between this (the ping's lead) and
    /// `post` (present in one and absent in the other counts as a change).
    pub fn ping_field_changes<'a>(&self, post: &Lead, schema: &'a VerticalSchema) -> Vec<&'a str> {
        schema
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.ping && !f.pii)
            .filter(|(i, _)| {
                let a = self.fields.iter().find(|(j, _)| j == i).map(|(_, v)| v);
                let b = post.fields.iter().find(|(j, _)| j == i).map(|(_, v)| v);
                a != b
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
