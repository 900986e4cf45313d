//! The contract's error body: `{"error": {"code", "message", "fields": [...]}}`, and the
//! HTTP status that goes with each code.

use serde::Serialize;

/// Every error code of CONTRACT.md, with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    PiiInPing,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The request head is over the server's size or field-count limit (431).
    HeadersTooLarge,
    RateLimited,
    Overloaded,
    /// The exchange cannot sell right now and retrying soon will not help: its ledger
    /// failed (fail-stop until a restart). 503, without `Retry-After`.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::PiiInPing => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Overloaded | ErrorCode::Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::PiiInPing => "pii_in_ping",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// One problem with one field, named by its path (`lead.zip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub problem: String,
}

impl FieldProblem {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldProblem {
        FieldProblem {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// An error answer. `fields` lists every field problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub fields: Vec<FieldProblem>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    fields: &'a [FieldProblem],
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// An error built from field problems; the message names the first one and counts the rest.
    pub fn from_fields(code: ErrorCode, fields: Vec<FieldProblem>) -> ApiError {
        let message = match fields.as_slice() {
            [] => "invalid request".to_string(),
            [one] => format!("{}: {}", one.field, one.problem),
            [first, rest @ ..] => {
                format!(
                    "{}: {} (and {} more problems)",
                    first.field,
                    first.problem,
                    rest.len()
                )
            }
        };
        ApiError {
            code,
            message,
            fields,
        }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON body of the contract.
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                fields: &self.fields,
            },
        };
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(&body)
            .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"error body"}}"#.to_vec())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = ApiError::from_fields(
            ErrorCode::InvalidRequest,
            vec![FieldProblem::new("lead.zip", "must be 5 digits")],
        );
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["message"], "lead.zip: must be 5 digits");
        assert_eq!(v["error"]["fields"][0]["field"], "lead.zip");
        assert_eq!(e.status(), 400);
    }
}
