//! The lead fingerprint every auction record carries: a keyed hash (HMAC-SHA256) of the
//! lead as pinged (the vertical, the ping fields in schema order and the seller's `dedup`
//! hashes), never the lead itself. The same lead pinged twice has the same fingerprint, so
//! finance can follow a lead across auctions, and without the key nobody can test a guess
//! (a phone number, say) against it.
//!
//! The key is 32 random bytes made at the first start and kept in the ledger directory
//! (`FINGERPRINT_KEY`, hex, owner-only permissions), so fingerprints stay comparable across
//! restarts of the same exchange and differ between exchanges.

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use proto::{Lead, VerticalSchema};
use sha2::Sha256;

/// The key file in the ledger directory.
pub const KEY_FILE: &str = "FINGERPRINT_KEY";
/// Hex characters of a fingerprint (128 bits).
pub const FINGERPRINT_HEX: usize = 32;

/// Makes lead fingerprints with one key.
#[derive(Clone)]
pub struct Fingerprinter {
    key: [u8; 32],
    /// The HMAC keyed once (its inner and outer pads hashed): each fingerprint clones it.
    keyed: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprinter { key: <hidden> }")
    }
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random key (not kept anywhere).
    pub fn ephemeral() -> Fingerprinter {
        Fingerprinter::with_key(rand::random())
    }

    fn with_key(key: [u8; 32]) -> Fingerprinter {
        Fingerprinter {
            key,
            keyed: Hmac::<Sha256>::new_from_slice(&key).ok(),
        }
    }

    /// The key kept in `dir` (made on first use). An unreadable or malformed key file is
    /// an error naming it: the exchange does not start and silently change keys.
    pub fn open(dir: &Path) -> std::io::Result<Fingerprinter> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut key).map_err(|_| {
                    std::io::Error::other(format!(
                        "{}: not a 64-hex-digit fingerprint key",
                        path.display()
                    ))
                })?;
                Ok(Fingerprinter::with_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = Fingerprinter::ephemeral();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                file.write_all(hex::encode(f.key).as_bytes())?;
                file.sync_all()?;
                Ok(f)
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            )),
        }
    }

    /// The fingerprint of a lead as pinged: 32 hex digits.
    pub fn of(
        &self,
        vertical: &str,
        schema: &VerticalSchema,
        lead: &Lead,
        dedup: &std::collections::BTreeMap<String, String>,
    ) -> String {
        let Some(mut mac) = self.keyed.clone() else {
            return String::new();
        };
        // Length-prefixed parts, so no two different leads feed the same bytes.
        let mut part = |b: &[u8]| {
            mac.update(&(b.len() as u64).to_le_bytes());
            mac.update(b);
        };
        part(vertical.as_bytes());
        // One buffer for every value's JSON (this runs once per auction).
        let mut json = Vec::with_capacity(64);
        for (name, value) in lead.iter(schema) {
            part(name.as_bytes());
            json.clear();
            let _ = serde_json::to_writer(&mut json, value);
            part(&json);
        }
        part(b"dedup");
        for (k, v) in dedup {
            part(k.as_bytes());
            part(v.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let mut out = hex::encode(digest);
        out.truncate(FINGERPRINT_HEX);
        out
    }
}

/// Whether the ledger directory `dir` holds any record (a segment file that is not
/// empty): a fingerprint key made there now replaces a lost one.
pub fn ledger_has_records(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_str()
                .and_then(crate::ledger::segments::segment_no)
                .is_some()
                && e.metadata().is_ok_and(|m| m.len() > 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_has_records_once_a_segment_holds_a_line() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!ledger_has_records(dir.path()));
        std::fs::write(dir.path().join("seg-00000001.jsonl"), b"").unwrap();
        std::fs::write(dir.path().join("torn-seg-00000001.jsonl-0.bin"), b"x").unwrap();
        assert!(
            !ledger_has_records(dir.path()),
            "empty segments and torn tails are no records"
        );
        std::fs::write(dir.path().join("seg-00000001.jsonl"), b"{}\n").unwrap();
        assert!(ledger_has_records(dir.path()));
    }

    #[test]
    fn the_key_is_made_once_kept_and_refused_when_malformed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = Fingerprinter::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let b = Fingerprinter::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.key, b.key);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), "not hex").unwrap_or_else(|e| panic!("{e}"));
        let e = Fingerprinter::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains(KEY_FILE), "{e}");
        assert!(!format!("{a:?}").contains(&hex::encode(a.key)));
    }
}
