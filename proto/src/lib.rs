//! # proto: the pingpost wire contract in code
//!
//! Types for every message of the wire contract (docs/API.md: seller API, buyer protocol,
//! errors), their
//! parsing from untrusted bytes (simd-json) into typed, validated values, and the
//! Standard Webhooks signatures both sides use.
//!
//! Architecture invariant: no I/O and no tokio here; parsing never panics, whatever the
//! bytes, and reports every field problem at once with its path.

pub mod buyer;
pub mod error;
pub mod json;
pub mod lead;
pub mod money;
pub mod schema;
pub mod seller;
pub mod signing;

pub use error::{ApiError, ErrorCode, FieldProblem};
pub use lead::{FieldValue, Lead, PackedLead};
pub use money::Micros;
pub use schema::{FieldKind, FieldSpec, LeadMode, VerticalSchema};
