//! Request bodies: ping, full and direct-post leads.

use serde_json::{json, Value};

use super::VERTICAL;

/// A ping lead (no PII) in `state`.
pub fn ping_lead(state: &str) -> Value {
    json!({"state": state, "zip": "76180", "age": 42, "credit": "good"})
}

/// The full lead matching [`ping_lead`].
pub fn full_lead(state: &str) -> Value {
    json!({
        "state": state, "zip": "76180", "age": 42, "credit": "good",
        "first_name": "Ana", "last_name": "Diaz", "phone": "+18175550123", "email": "ana@example.com"
    })
}

/// A `/v1/ping` body for a lead in `state`.
pub fn ping_body(state: &str) -> Value {
    json!({"vertical": VERTICAL, "lead": ping_lead(state)})
}

/// A `/v1/post` body for `ping_id` with the full lead in `state`.
pub fn post_body(ping_id: &str, state: &str) -> Value {
    json!({"ping_id": ping_id, "lead": full_lead(state), "consent": {"jornaya_leadid": "LL-1"}})
}

/// A `/v1/leads` (direct post) body.
pub fn direct_body(state: &str) -> Value {
    json!({"vertical": VERTICAL, "lead": full_lead(state)})
}
