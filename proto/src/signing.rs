//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! A secret written as `whsec_<base64>` is the base64-decoded bytes (the scheme's own
//! form); any other secret string is used as its UTF-8 bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signed timestamp may be from the receiver's clock.
pub const TIMESTAMP_TOLERANCE_S: i64 = 300;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// A signing key. Debug never prints the bytes. It keeps the HMAC state keyed once, so
/// signing a message costs only the message's own hashing.
#[derive(Clone)]
pub struct Secret {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the secret is empty or not valid base64 after whsec_")]
    BadSecret,
    #[error("a webhook header is missing")]
    MissingHeader,
    #[error("webhook-timestamp is not a number")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 300 s from now")]
    TimestampOutOfTolerance,
    #[error("no v1 signature matches")]
    Mismatch,
}

impl Secret {
    pub fn new(text: &str) -> Result<Secret, SignatureError> {
        let bytes = match text.strip_prefix("whsec_") {
            Some(b64) => STANDARD
                .decode(b64)
                .map_err(|_| SignatureError::BadSecret)?,
            None => text.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(&bytes).map_err(|_| SignatureError::BadSecret)?;
        Ok(Secret { keyed })
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for this message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        // "v1," and 44 base64 characters, without the formatting machinery.
        let mut out = String::with_capacity(3 + 44);
        out.push_str("v1,");
        STANDARD.encode_string(tag, &mut out);
        out
    }

    /// Checks a message's headers against the body at `now` (Unix seconds). The signature
    /// header may hold several space-separated signatures (key rotation); one must match.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_s: i64,
    ) -> Result<(), SignatureError> {
        let (Some(id), Some(ts), Some(sig)) = (id, timestamp, signature) else {
            return Err(SignatureError::MissingHeader);
        };
        let ts: i64 = ts
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        // abs_diff cannot overflow, whatever the two i64s (`now_s - ts` can).
        if now_s.abs_diff(ts) > TIMESTAMP_TOLERANCE_S.unsigned_abs() {
            return Err(SignatureError::TimestampOutOfTolerance);
        }
        for candidate in sig.split_whitespace() {
            let Some(b64) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = STANDARD.decode(b64) else {
                continue;
            };
            if self.mac(id, ts, body).verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_vector() {
        // The test vector of the Standard Webhooks reference libraries.
        let s = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            s.verify(
                Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                Some("1614265330"),
                Some(&sig),
                body,
                1614265330
            ),
            Ok(())
        );
    }

    #[test]
    fn rejects() {
        let s = Secret::new("topsecret").unwrap();
        let sig = s.sign("id1", 1000, b"body");
        assert_eq!(
            s.verify(Some("id1"), Some("1000"), Some(&sig), b"body", 1000 + 301),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        assert_eq!(
            s.verify(Some("id1"), Some("1000"), Some(&sig), b"bodx", 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify(Some("id2"), Some("1000"), Some(&sig), b"body", 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify(None, Some("1000"), Some(&sig), b"body", 1000),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            s.verify(Some("id1"), Some("x"), Some(&sig), b"body", 1000),
            Err(SignatureError::BadTimestamp)
        );
        let rotated = format!("v1,AAAA {sig}");
        assert_eq!(
            s.verify(Some("id1"), Some("1000"), Some(&rotated), b"body", 1000),
            Ok(())
        );
        assert!(Secret::new("").is_err());
        assert!(Secret::new("whsec_!!").is_err());
    }

    #[test]
    fn extreme_timestamps_are_out_of_tolerance_not_a_panic() {
        let s = Secret::new("topsecret").unwrap();
        let now = 1_700_000_000;
        for (ts, now_s) in [
            (i64::MIN, now),
            (i64::MAX, now),
            (i64::MIN, i64::MAX),
            (i64::MAX, i64::MIN),
            (i64::MIN + 1, i64::MAX),
            (0, i64::MIN),
        ] {
            let sig = s.sign("id1", ts, b"body");
            let header = ts.to_string();
            assert_eq!(
                s.verify(Some("id1"), Some(&header), Some(&sig), b"body", now_s),
                Err(SignatureError::TimestampOutOfTolerance),
                "ts {ts}, now {now_s}"
            );
        }
        // The header of the issue, as text.
        assert_eq!(
            s.verify(
                Some("id1"),
                Some("-9223372036854775808"),
                Some("v1,AAAA"),
                b"body",
                now
            ),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        // Past i64 either way: not a number.
        for ts in ["9223372036854775808", "-9223372036854775809", "1e3", ""] {
            assert_eq!(
                s.verify(Some("id1"), Some(ts), Some("v1,AAAA"), b"body", now),
                Err(SignatureError::BadTimestamp),
                "{ts:?}"
            );
        }
        // Same extremes on both sides are in tolerance (and then checked by signature).
        for t in [i64::MIN, i64::MAX] {
            let sig = s.sign("id1", t, b"body");
            assert_eq!(
                s.verify(Some("id1"), Some(&t.to_string()), Some(&sig), b"body", t),
                Ok(())
            );
        }
    }

    #[test]
    fn tolerance_boundary() {
        let s = Secret::new("topsecret").unwrap();
        let now = 1_700_000_000;
        for (offset, ok) in [
            (-301, false),
            (-300, true),
            (-299, true),
            (0, true),
            (299, true),
            (300, true),
            (301, false),
        ] {
            let ts = now + offset;
            let sig = s.sign("id1", ts, b"body");
            let r = s.verify(Some("id1"), Some(&ts.to_string()), Some(&sig), b"body", now);
            if ok {
                assert_eq!(r, Ok(()), "offset {offset}");
            } else {
                assert_eq!(
                    r,
                    Err(SignatureError::TimestampOutOfTolerance),
                    "offset {offset}"
                );
            }
        }
    }
}
