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

/// The fewest key bytes a buyer's signing secret may stand for (the text itself, or the
/// base64 after `whsec_`): the exchange refuses a buyer whose secret is shorter, and the
/// bidder SDK will not serve with one (black-box round 49b: a one-character secret was
/// accepted, and a short key can be guessed from one signed request).
pub const SECRET_BYTES_MIN: usize = 16;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// A signing key. Debug never prints the bytes. It keeps the HMAC state keyed once, so
/// signing a message costs only the message's own hashing.
#[derive(Clone)]
pub struct Secret {
    keyed: Hmac<Sha256>,
    key_len: usize,
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
    #[error("a webhook header is missing, empty, or not visible ASCII")]
    MissingHeader,
    #[error("a webhook header appears more than once")]
    RepeatedHeader,
    #[error("webhook-timestamp is not Unix seconds: digits only, at most 12 (a millisecond timestamp is too long)")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 300 s from now")]
    TimestampOutOfTolerance,
    #[error("no v1 signature matches")]
    Mismatch,
}

/// The key bytes a secret's text stands for: base64 after `whsec_`, else the text itself.
/// (Two texts that stand for the same key sign alike.)
pub fn key_bytes(text: &str) -> Result<Vec<u8>, SignatureError> {
    let bytes = match text.strip_prefix("whsec_") {
        Some(b64) => STANDARD
            .decode(b64)
            .map_err(|_| SignatureError::BadSecret)?,
        None => text.as_bytes().to_vec(),
    };
    if bytes.is_empty() {
        return Err(SignatureError::BadSecret);
    }
    Ok(bytes)
}

impl Secret {
    pub fn new(text: &str) -> Result<Secret, SignatureError> {
        let bytes = key_bytes(text)?;
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(&bytes).map_err(|_| SignatureError::BadSecret)?;
        Ok(Secret {
            keyed,
            key_len: bytes.len(),
        })
    }

    /// How many key bytes the secret stands for (at least [`SECRET_BYTES_MIN`] for a buyer
    /// of the exchange).
    pub fn key_len(&self) -> usize {
        self.key_len
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
    /// The MAC is computed once, over the timestamp header exactly as sent (1 to
    /// [`TIMESTAMP_DIGITS_MAX`] ASCII digits: no sign, space or other text), and compared
    /// with at most [`SIGNATURES_MAX`] candidates, so a header full of candidates costs
    /// no more than one.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_s: i64,
    ) -> Result<(), SignatureError> {
        let (Some(id), Some(ts_text), Some(sig)) = (id, timestamp, signature) else {
            return Err(SignatureError::MissingHeader);
        };
        let digits_only = !ts_text.is_empty()
            && ts_text.len() <= TIMESTAMP_DIGITS_MAX
            && ts_text.bytes().all(|b| b.is_ascii_digit());
        if !digits_only {
            return Err(SignatureError::BadTimestamp);
        }
        let ts: i64 = ts_text.parse().map_err(|_| SignatureError::BadTimestamp)?;
        // abs_diff cannot overflow, whatever the two i64s (`now_s - ts` can).
        if now_s.abs_diff(ts) > TIMESTAMP_TOLERANCE_S.unsigned_abs() {
            return Err(SignatureError::TimestampOutOfTolerance);
        }
        // An empty `webhook-id` is no id: a buyer keying its de-duplication on it would
        // take every such message for one.
        if id.is_empty() {
            return Err(SignatureError::MissingHeader);
        }
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        let candidates = sig
            .split_whitespace()
            .filter_map(|c| c.strip_prefix("v1,"))
            .take(SIGNATURES_MAX);
        for b64 in candidates {
            let Ok(tag) = STANDARD.decode(b64) else {
                continue;
            };
            // A clone of the finished state: the body is hashed once, whatever the count.
            if mac.clone().verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Most digits in `webhook-timestamp` (Unix seconds fit in 11 until the year 5138).
pub const TIMESTAMP_DIGITS_MAX: usize = 12;
/// Most `v1,` signatures tried from one `webhook-signature` header (key rotation needs
/// two or three); the rest are ignored.
pub const SIGNATURES_MAX: usize = 8;

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
        // API.md's second example: a plain-text secret is its UTF-8 bytes.
        let plain = Secret::new("plain-secret").unwrap();
        assert_eq!(
            plain.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,3Iu+JbC8cHey9rJURLZfxQoX30vMfLebm9Kn1ePn6f4="
        );
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
        // An empty id, even signed as such, is no id.
        let empty_id_sig = s.sign("", 1000, b"body");
        assert_eq!(
            s.verify(Some(""), Some("1000"), Some(&empty_id_sig), b"body", 1000),
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
        let biggest = 999_999_999_999; // TIMESTAMP_DIGITS_MAX digits
        for (ts, now_s) in [
            (0, now),
            (biggest, now),
            (0, i64::MAX),
            (biggest, i64::MIN),
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
        // Not digits only, or too many of them: not a timestamp, whatever the clock.
        for ts in [
            "-9223372036854775808",
            "9223372036854775808",
            "1000000000000",
            "-1",
            "+1700000000",
            " 1700000000",
            "1700000000 ",
            "1e3",
            "",
        ] {
            assert_eq!(
                s.verify(Some("id1"), Some(ts), Some("v1,AAAA"), b"body", now),
                Err(SignatureError::BadTimestamp),
                "{ts:?}"
            );
        }
        // The same extreme on both sides is in tolerance (and then checked by signature).
        let sig = s.sign("id1", biggest, b"body");
        assert_eq!(
            s.verify(
                Some("id1"),
                Some(&biggest.to_string()),
                Some(&sig),
                b"body",
                biggest
            ),
            Ok(())
        );
    }

    #[test]
    fn the_mac_covers_the_timestamp_header_as_sent() {
        let s = Secret::new("topsecret").unwrap();
        let now = 1_700_000_000;
        // Signed over "1700000000": a header of "01700000000" is another message.
        let sig = s.sign("id1", now, b"body");
        assert_eq!(
            s.verify(Some("id1"), Some("01700000000"), Some(&sig), b"body", now),
            Err(SignatureError::Mismatch)
        );
        // A sender that signs its header text with a leading zero is verified as sent.
        let mut mac = s.keyed.clone();
        mac.update(b"id1.01700000000.body");
        let mut zero = String::from("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), &mut zero);
        assert_eq!(
            s.verify(Some("id1"), Some("01700000000"), Some(&zero), b"body", now),
            Ok(())
        );
    }

    #[test]
    fn only_the_first_candidates_are_tried() {
        let s = Secret::new("topsecret").unwrap();
        let now = 1_700_000_000;
        let sig = s.sign("id1", now, b"body");
        let ts = now.to_string();
        let with_before = |n: usize| {
            let mut h = "v1,AAAA ".repeat(n);
            h.push_str(&sig);
            h
        };
        // The good one among the first SIGNATURES_MAX candidates matches; past them it is
        // never looked at. Candidates that are not `v1,` do not count.
        let last_tried = with_before(SIGNATURES_MAX - 1);
        assert_eq!(
            s.verify(Some("id1"), Some(&ts), Some(&last_tried), b"body", now),
            Ok(())
        );
        let untried = with_before(SIGNATURES_MAX);
        assert_eq!(
            s.verify(Some("id1"), Some(&ts), Some(&untried), b"body", now),
            Err(SignatureError::Mismatch)
        );
        let others = format!("{}{sig}", "v2,AAAA ".repeat(50));
        assert_eq!(
            s.verify(Some("id1"), Some(&ts), Some(&others), b"body", now),
            Ok(())
        );
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
