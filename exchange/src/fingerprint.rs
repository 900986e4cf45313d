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
/// The name the key is written under before it is renamed into place
/// ([`Fingerprinter::keep_in`]).
pub const KEY_NEW_FILE: &str = "FINGERPRINT_KEY.new";

/// Why [`Fingerprinter::keep_in`] could not keep the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    /// It could not be read to be compared (no file descriptor left, the directory's
    /// permissions taken away): not known to differ.
    #[error("{0}")]
    Unchecked(std::io::Error),
    /// It differed from the key in use (or could not be read by the exchange's user:
    /// [`KEY_UNREADABLE`]), as the `&str` says, and could not be written again.
    #[error("{0}")]
    NotWritten(std::io::Error, &'static str),
}

/// Why the key file was found not to hold the key in use when it is there but the
/// exchange's user cannot read it (its owner or mode was changed): a start could not
/// read it either, though its content is not known to differ.
pub const KEY_UNREADABLE: &str =
    "could not be read by the exchange's user (permission denied: its owner or mode was changed)";
/// Hex characters of a fingerprint (128 bits).
pub const FINGERPRINT_HEX: usize = 32;

/// Makes lead fingerprints with one key.
#[derive(Clone)]
pub struct Fingerprinter {
    key: [u8; 32],
    /// The HMAC keyed once (its inner and outer pads hashed): each fingerprint clones it.
    keyed: Option<Hmac<Sha256>>,
    /// The key file was made by this open (there was none).
    made: bool,
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
            made: false,
        }
    }

    /// The key's id: 16 hex digits of an HMAC under the key of a fixed text. It names the
    /// key (another key has another id) and reveals nothing of it; every start records it
    /// (`flush` with `start`), so the next start can tell a key swapped between runs.
    pub fn key_id(&self) -> String {
        let mut mac = match self.keyed.clone() {
            Some(m) => m,
            None => return String::new(),
        };
        mac.update(b"pingpost fingerprint key id v1");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// An HMAC-SHA256 keyed with this key, for other keyed digests of the ledger (the
    /// idempotency keys'), `None` only if the key could not key one.
    pub fn mac(&self) -> Option<Hmac<Sha256>> {
        self.keyed.clone()
    }

    /// Whether the key file was made by this open (there was none before).
    pub fn made(&self) -> bool {
        self.made
    }

    /// The key kept in `dir` (made on first use). An unreadable or malformed key file is
    /// an error naming it: the exchange does not start and silently change keys.
    pub fn open(dir: &Path) -> std::io::Result<Fingerprinter> {
        Fingerprinter::open_in(dir, dir)
    }

    /// [`Fingerprinter::open`] with the key file opened in `dir` (the ledger's locked
    /// directory) and named in messages as in `shown`.
    pub fn open_in(dir: &Path, shown: &Path) -> std::io::Result<Fingerprinter> {
        let f = Fingerprinter::load_in(dir, shown)?;
        f.persist_in(dir, shown)?;
        Ok(f)
    }

    /// The key kept in `dir`, or, when there is none, a new one that is not written yet
    /// ([`made`](Self::made); [`persist_in`](Self::persist_in) writes it): the start
    /// decides first whether a new key may be begun (black-box round 63a).
    pub fn load_in(dir: &Path, shown: &Path) -> std::io::Result<Fingerprinter> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = shown.join(KEY_FILE);
        let at = dir.join(KEY_FILE);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&at);
        // Every refusal says the way out (black-box round 64a).
        const WAY_OUT: &str = "restore the key from a backup, or move it aside and start once with --new-fingerprint-key (de-duplication then forgets the consumers sold before)";
        match opened {
            Ok(f) if !f.metadata().is_ok_and(|m| m.is_file()) => Err(std::io::Error::other(
                format!("{}: not a regular file; {WAY_OUT}", crate::cli_out::Shown(&path)),
            )),
            Ok(f) => {
                // A key file is 64 hex digits (and perhaps a newline): never read more.
                let mut text = String::new();
                f.take(1024).read_to_string(&mut text).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", crate::cli_out::Shown(&path)))
                })?;
                let mut key = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut key).map_err(|_| {
                    std::io::Error::other(format!(
                        "{}: not a 64-hex-digit fingerprint key; {WAY_OUT}",
                        crate::cli_out::Shown(&path)
                    ))
                })?;
                Ok(Fingerprinter::with_key(key))
            }
            // A symlink to nothing is not a missing key: a new one could not be written
            // there (round 64a: `--new-fingerprint-key` then failed with `File exists`).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&at).is_ok() =>
            {
                Err(std::io::Error::other(format!(
                    "{} is a symlink to a file that does not exist: put the key there, or remove the link and start once with --new-fingerprint-key (de-duplication then forgets the consumers sold before)",
                    crate::cli_out::Shown(&path)
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut f = Fingerprinter::ephemeral();
                f.made = true;
                Ok(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{}: {e}: the exchange's user must be able to read it (chown or chmod it: owner-only, readable by that user)",
                        crate::cli_out::Shown(&path)
                    ),
                ))
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", crate::cli_out::Shown(&path)),
            )),
        }
    }

    /// Keeps the key file in `dir` (named as in `shown`) holding this key, the one in use:
    /// `Ok(None)` when it does; otherwise (removed, moved away, replaced, rewritten or
    /// truncated in place, made unreadable while the exchange ran) it is written again,
    /// owner-only and synced, as `FINGERPRINT_KEY.new` renamed over it, and `Ok(Some(why))`
    /// says what it was found to be (black-box round 222a: an unreadable key was said as
    /// "removed, replaced or changed"). Black-box round
    /// 122a: a key rewritten in place went unseen, the next start refused the ledger, and
    /// the only copy of the key was the running exchange's. Only for an exchange whose
    /// start has persisted its key (a key that was read, or one [`persist_in`] wrote).
    pub fn keep_in(&self, dir: &Path, shown: &Path) -> Result<Option<&'static str>, KeepError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let want = hex::encode(self.key);
        // The key, owner-only (round 123a: a copy of mode 644 moved over it stayed so).
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(dir.join(KEY_FILE));
        let at_key = dir.join(KEY_FILE);
        let why =
            match key_file_differs(opened, &want, || std::fs::symlink_metadata(&at_key).is_ok()) {
                Ok(None) => return Ok(None),
                Ok(Some(why)) => why,
                // Not known to differ: said as it is, never as a changed key (black-box round
                // 220b: out of file descriptors, the keeper said the key file differed and
                // that a start would refuse the ledger, though nobody had touched it).
                Err(e) => {
                    return Err(KeepError::Unchecked(std::io::Error::new(
                        e.kind(),
                        format!(
                            "{}: could not be read to check it ({e})",
                            crate::cli_out::Shown(&shown.join(KEY_FILE)),
                        ),
                    )))
                }
            };
        self.write_again(dir, &want, why, shown)
            .map(|()| Some(why))
            .map_err(|e| KeepError::NotWritten(e, why))
    }

    /// [`keep_in`](Self::keep_in)'s writing of the key in use, the file having differed
    /// as `why` says.
    fn write_again(&self, dir: &Path, want: &str, why: &str, shown: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let at = |name: &str, e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (the key file {why}; it could not be written again)",
                    crate::cli_out::Shown(&shown.join(name))
                ),
            )
        };
        let new = dir.join(KEY_NEW_FILE);
        let renamed = (|| {
            // A stale `.new` (a crash between its write and its rename, or anything
            // another process put there) is replaced, never followed.
            let _ = std::fs::remove_file(&new);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&new)
                .map_err(|e| at(KEY_NEW_FILE, e))?;
            file.write_all(want.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| at(KEY_NEW_FILE, e))?;
            std::fs::rename(&new, dir.join(KEY_FILE)).map_err(|e| {
                let _ = std::fs::remove_file(&new);
                at(KEY_FILE, e)
            })
        })();
        if let Err(e) = renamed {
            // No new file could be put in place (something else at `.new`, a directory
            // at the key's name, a full directory): a regular file there is written over
            // in place, owner-only, as `HEAD` is (round 123a: a directory at `.new` left
            // the key emptied). Anything else stays refused, with the first reason.
            // Only the exchange's own file with no other name: a hard link to a file
            // elsewhere would hand the key to that file's owner (round 124a).
            let ours = |m: &std::fs::Metadata| {
                use std::os::unix::fs::MetadataExt as _;
                m.is_file() && m.nlink() == 1 && m.uid() == rustix::process::geteuid().as_raw()
            };
            let in_place = std::fs::OpenOptions::new()
                .write(true)
                .truncate(false)
                .custom_flags(
                    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
                )
                .open(dir.join(KEY_FILE))
                .ok()
                .filter(|f| f.metadata().is_ok_and(|m| ours(&m)));
            let Some(file) = in_place else {
                return Err(e);
            };
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .and_then(|()| file.set_len(0))
                .and_then(|()| (&file).write_all(want.as_bytes()))
                .and_then(|()| file.sync_all())
                .map_err(|e| at(KEY_FILE, e))?;
            return Ok(());
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| at(".", e))
    }

    /// Writes a key [`load_in`](Self::load_in) made (owner-only, synced); nothing for a
    /// key that was read.
    pub fn persist_in(&self, dir: &Path, shown: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if !self.made {
            return Ok(());
        }
        let path = shown.join(KEY_FILE);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(KEY_FILE))
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", crate::cli_out::Shown(&path)))
            })?;
        file.write_all(hex::encode(self.key).as_bytes())?;
        file.sync_all()?;
        std::fs::File::open(dir).and_then(|d| d.sync_all())
    }

    /// The keys of a lead's consumer in vertical `v` (none for a vertical that neither
    /// de-duplicates nor, with `suppression_on`, checks the suppression list): the
    /// seller's hash for each of the vertical's `dedup_keys` (`dedup`, 64 hex digits in
    /// either case; an empty value is as if absent) and, given the full lead, the hash of
    /// each key's field made here ([`field_hash`]). A seller's value that is not a SHA-256
    /// is a problem naming `dedup.KEY` (never the value).
    pub fn consumer_keys(
        &self,
        v: &crate::config::Vertical,
        suppression_on: bool,
        dedup: &std::collections::BTreeMap<String, String>,
        full: Option<&Lead>,
    ) -> Result<ConsumerKeys, Vec<proto::error::FieldProblem>> {
        let dedup_on = v.dedup.is_some();
        let mut out = ConsumerKeys::default();
        if !dedup_on && !suppression_on {
            return Ok(out);
        }
        let mut problems = Vec::new();
        // A phone (or e-mail address) is one consumer in whichever of the vertical's
        // phone (e-mail) keys it comes: its hash is made a digest under each of them, so
        // two phone fields swapped, or a number moved from one to the other, is the same
        // consumer (black-box round 172b: `phone` and `alt_phone` swapped sold twice).
        // Each key's own digest is as before, so the sales of earlier builds still match.
        let class = |spec: &crate::core::dedup::DedupKeySpec| {
            let field = v.schema.field(spec.field.as_deref()?)?;
            match field.kind {
                proto::FieldKind::Phone => Some(0u8),
                proto::FieldKind::Email => Some(1u8),
                _ => None,
            }
        };
        let classes: Vec<Option<u8>> = v.dedup_keys.iter().map(class).collect();
        let mut add = |at: usize, h: [u8; 32]| {
            if dedup_on {
                // Under its own key, and every other key of its kind.
                for (j, spec) in v.dedup_keys.iter().enumerate() {
                    if j == at || (classes[at].is_some() && classes[j] == classes[at]) {
                        out.digests.push(self.dedup_key(&v.name, &spec.name, &h));
                    }
                }
            }
            if suppression_on {
                out.hashes.push(h);
            }
        };
        for (at, spec) in v.dedup_keys.iter().enumerate() {
            match dedup.get(&spec.name).map(String::as_str) {
                None | Some("") => {}
                Some(text) => {
                    let mut h = [0u8; 32];
                    if text.len() == 64 && hex::decode_to_slice(text, &mut h).is_ok() {
                        add(at, h);
                    } else {
                        problems.push(proto::error::FieldProblem::new(
                            format!("dedup.{}", spec.name),
                            "must be a SHA-256 as 64 hex digits (of the consumer's value, normalized as docs/API.md says)",
                        ));
                    }
                }
            }
            let value = full
                .zip(spec.field.as_deref())
                .and_then(|(lead, f)| Some((lead.get(&v.schema, f)?, v.schema.field(f)?)));
            if let Some((proto::FieldValue::Str(text), field)) = value {
                if let Some(h) = field_hash(&field.kind, text) {
                    add(at, h);
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        out.digests.sort_unstable();
        out.hashes.sort_unstable();
        out.digests.dedup();
        out.hashes.dedup();
        Ok(out)
    }

    /// One dedup key: the HMAC of the vertical, the key's name and the hash (as 64
    /// lower-case hex digits), cut to 128 bits.
    fn dedup_key(
        &self,
        vertical: &str,
        name: &str,
        hash: &[u8; 32],
    ) -> crate::core::dedup::DedupKey {
        let mut out = [0u8; 16];
        let Some(mut mac) = self.keyed.clone() else {
            return out;
        };
        let hash_hex = hex::encode(hash);
        for b in [
            b"dedup".as_slice(),
            vertical.as_bytes(),
            name.as_bytes(),
            hash_hex.as_bytes(),
        ] {
            mac.update(&(b.len() as u64).to_le_bytes());
            mac.update(b);
        }
        let digest = mac.finalize().into_bytes();
        out.copy_from_slice(&digest[..16]);
        out
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
            // A SHA-256 in upper-case hex is the same hash (black-box round 30: the
            // fingerprint changed with the case).
            if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                part(v.to_ascii_lowercase().as_bytes());
            } else {
                part(v.as_bytes());
            }
        }
        let digest = mac.finalize().into_bytes();
        let mut out = hex::encode(digest);
        out.truncate(FINGERPRINT_HEX);
        out
    }
}

/// When the key file in `dir` (named as in `shown`) can be read by other users than its
/// owner (black-box round 64a), makes it owner-only, and warns either way: at the start,
/// so the key keeper's first look does not find it so and say another process changed
/// it while the exchange ran (black-box round 227c). The file itself, never a symlink's
/// target (opened without following one).
pub fn make_owner_only(dir: &Path, shown: &Path) {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(dir.join(KEY_FILE))
    else {
        return;
    };
    let Ok(mode) = file.metadata().map(|m| m.permissions().mode()) else {
        return;
    };
    if mode & 0o077 == 0 {
        return;
    }
    match rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(mode & 0o700)) {
        Ok(()) => tracing::warn!(
            key = %shown.join(KEY_FILE).display(),
            "the lead fingerprint key was readable by other users than its owner (with it, anyone can test a guessed phone number against the ledger's digests): the start made it owner-only; keep its backups so"
        ),
        Err(e) => tracing::warn!(
            key = %shown.join(KEY_FILE).display(),
            error = %e,
            "the lead fingerprint key is readable by other users than its owner: with it, anyone can test a guessed phone number against the ledger's digests; make it owner-only (chmod 600)"
        ),
    }
}

/// What `pingpost ledger verify` says of the ledger `dir`'s `FINGERPRINT_KEY` against
/// the key ids its starts recorded (black-box round 63a: verify said nothing of a key a
/// start refuses): `Some((true, why))` when a start would refuse it (missing, or not a key
/// any run used), `Some((false, note))` when it is an earlier run's key, `None` when it is
/// the last run's or the ledger recorded no key id.
pub fn check_against_ledger(dir: &Path, upto: Option<u64>) -> Option<(bool, String)> {
    use serde_json::Value;
    let mut ids: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    let _ = crate::finance::for_each_unverified_upto(dir, upto, |e| {
        if e.kind == "flush" && e.value.get("start").and_then(Value::as_bool) == Some(true) {
            last = e
                .value
                .get("key_id")
                .and_then(Value::as_str)
                .map(String::from);
            if let Some(id) = &last {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        true
    });
    let last = last?;
    match Fingerprinter::load_in(dir, dir) {
        Err(e) => Some((true, e.to_string())),
        Ok(f) if f.made() => Some((
            true,
            format!(
                "{KEY_FILE} is missing, beside a ledger whose runs used one (the last start recorded id {last}): a start refuses this directory (restore the key, or start with --new-fingerprint-key)"
            ),
        )),
        Ok(f) => {
            let id = f.key_id();
            if id == last {
                None
            } else if ids.contains(&id) {
                Some((
                    false,
                    format!(
                        "{KEY_FILE} is the key of an earlier run (id {id}), not the last one's ({last}): de-duplication does not know the consumers sold under the other keys"
                    ),
                ))
            } else {
                Some((
                    true,
                    format!(
                        "{KEY_FILE} is not a key this ledger's runs used (its id is {id}; the last start recorded {last}): a start refuses this directory (restore the key, or start with --new-fingerprint-key)"
                    ),
                ))
            }
        }
    }
}

/// A lead's consumer keys ([`Fingerprinter::consumer_keys`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerKeys {
    /// The dedup keys, keyed digests (when the vertical de-duplicates): sorted, each once.
    pub digests: Vec<crate::core::dedup::DedupKey>,
    /// The SHA-256 hashes themselves (when the suppression list is on), checked against
    /// it and never kept: sorted, each once.
    pub hashes: Vec<[u8; 32]>,
}

/// The hash a post's own field is keyed by, as a seller would make it for its `dedup`
/// map: SHA-256 of the value normalized: a phone as the lead carries it (E.164,
/// `+18175550123`), an e-mail address or any other text trimmed and lower-cased. `None`
/// for a blank value.
pub fn field_hash(kind: &proto::FieldKind, value: &str) -> Option<[u8; 32]> {
    use sha2::Digest;
    // Characters that print as nothing (a zero-width space, a word joiner, a byte-order
    // mark, a soft hyphen, a direction override, a variation selector...) are dropped:
    // with one, a listed or sold e-mail address passed as another (black-box round 33).
    let visible: String = value
        .chars()
        .filter(|c| !crate::core::config::invisible(*c))
        .collect();
    let normalized = match kind {
        proto::FieldKind::Phone => visible,
        proto::FieldKind::Email => email_folded(&visible),
        _ => folded(&visible),
    };
    if normalized.is_empty() {
        return None;
    }
    Some(Sha256::digest(normalized.as_bytes()).into())
}

/// Text as its hash sees it. Unicode compatibility folding (NFKC) around the
/// lower-casing: a full-width `ｅ`, a mathematical `𝐞` or a ligature is the letter it
/// stands for, as a buyer's CRM that folds text would see it (black-box round 34:
/// `ｅvil@example.com` passed the suppression list of `evil@example.com`). Letters of
/// other scripts that merely look alike (Cyrillic `а`) are not folded: SECURITY.md. A
/// final sigma is a sigma: lower-casing makes `Σ` a `ς` or a `σ` by what follows it
/// (black-box round 160a: `ΑΣ1` and `ασ1` were two consumers).
fn folded(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lower = text.nfkc().collect::<String>().to_lowercase();
    // Folding may make characters that print as nothing (a compatibility form of one):
    // dropped again.
    lower
        .nfkc()
        .map(|c| if c == 'ς' { 'σ' } else { c })
        .filter(|c| !crate::core::config::invisible(*c))
        .collect()
}

/// An e-mail address as its hash sees it: the local part [`local_folded`], the domain
/// [`domain_folded`]. Characters an address cannot hold that folding made (a full-width
/// quote or bracket is a quote or bracket, `＠` an `@`: the validator refuses the ASCII
/// ones) are dropped, so `＂ana＂@example.com` is `ana@example.com` (black-box round
/// 160a).
fn email_folded(address: &str) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let can_hold = |c: &char| *c != '@' && !proto::schema::EMAIL_SPECIALS.contains(c);
    let local: String = local_folded(local).chars().filter(can_hold).collect();
    let domain: String = domain_folded(domain).chars().filter(can_hold).collect();
    if domain.is_empty() {
        local
    } else {
        format!("{local}@{domain}")
    }
}

/// An e-mail address's local part as its hash sees it: [`folded`], then mapped as IDNA
/// maps a domain's labels (full case folding, past lower-casing: `ᾳ` is `αι`, a combining
/// `ͅ` is `ι`), with `ß` as `ss` (a CRM that folds case sees one address: black-box round
/// 162a sold `xᾳ@…` after `xαι@…`, and `xß@…` after `xss@…`). Text IDNA cannot map (an
/// `xn--` that is not Punycode) is kept as folded.
fn local_folded(local: &str) -> String {
    let folded_local = folded(local);
    let mapped = match idna::domain_to_unicode(&folded_local) {
        (mapped, _) if !mapped.contains(char::REPLACEMENT_CHARACTER) => folded(&mapped),
        _ => folded_local,
    };
    mapped.replace('ß', "ss")
}

/// An e-mail domain as its hash sees it: each label as IDNA (UTS 46, non-transitional)
/// writes it in Unicode, then [`folded`]. An `xn--` label (Punycode) is the text it
/// encodes, so `xn--exmple-cua.com` is `exämple.com` (black-box round 159b), even when
/// IDNA would not register it (`xn--exmple-xna`, an upper-case `Ä`; `xn--example-oka`, a
/// soft hyphen: round 160a); a label that is not Punycode stays as it is. IDNA's mapping
/// goes past lower-casing (`ᾀ` is `ἀι`, a combining `ͅ` is `ι`: round 161a); `ß` stays
/// `ß` (IDNA 2008: `straße.de` and `strasse.de` are two domains). An ideographic full stop
/// (`。`, or `｡` and `．`, which fold to it and to `.`) is a dot (round 159b), and empty
/// labels are dropped: the dot that ends the domain (the root's, `example.com.`; round
/// 161a: a trailing dot made by folding sold a listed consumer), and `..` (round 162a;
/// the validator refuses both as written, not as folding or decoding makes them). The Unicode form, not the ASCII one, so
/// that the keys of addresses already sold under a Unicode domain stay what they were.
fn domain_folded(domain: &str) -> String {
    let labels: Vec<String> = folded(domain)
        .replace('\u{3002}', ".")
        .split('.')
        .map(|label| {
            let text = label
                .strip_prefix("xn--")
                .and_then(idna::punycode::decode_to_string)
                .unwrap_or_else(|| label.to_string());
            match idna::domain_to_unicode(&text) {
                (mapped, _) if !mapped.contains(char::REPLACEMENT_CHARACTER) => folded(&mapped),
                _ => folded(&text),
            }
        })
        .collect();
    // A label may have decoded to text with a full stop in it (`xn--com-bz3b` is `com。`:
    // round 162a), and empty labels (`example..com`, a label of a soft hyphen alone) and
    // the root's trailing dot name no label: the domain is its non-empty labels.
    labels
        .join(".")
        .replace('\u{3002}', ".")
        .split('.')
        .filter(|label| !label.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// Dedup keys as a record writes them: 32 hex digits each.
pub fn dedup_hex(keys: &[crate::core::dedup::DedupKey]) -> Vec<String> {
    keys.iter().map(hex::encode).collect()
}

/// Dedup keys read back from a record (malformed entries are skipped).
pub fn dedup_of_hex<'a>(
    hex_keys: impl Iterator<Item = &'a str>,
) -> Vec<crate::core::dedup::DedupKey> {
    hex_keys
        .filter_map(|h| {
            let mut k = [0u8; 16];
            hex::decode_to_slice(h, &mut k).ok().map(|()| k)
        })
        .collect()
}

/// Whether the key file, as `opened` (no symlink followed), differs from `want` (the key
/// in use, hex): `Ok(None)` it holds it, owner-only; `Ok(Some(why))` it does not (gone, a
/// symlink, not a regular file, readable by others, another key or none); `Err` when that
/// cannot be told (it could not be opened or read for another reason, such as no file
/// descriptor left).
fn key_file_differs(
    opened: std::io::Result<std::fs::File>,
    want: &str,
    seen: impl FnOnce() -> bool,
) -> std::io::Result<Option<&'static str>> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some("was missing")),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(Some("was a symlink"))
        }
        // The file there, not readable by the exchange's user: a start could not read it
        // either. Permission denied for the directory (the file cannot even be looked
        // at) tells nothing of the file (black-box round 221a: taken for a changed key).
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && seen() => {
            return Ok(Some(KEY_UNREADABLE))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Some("was not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Ok(Some("was readable or writable by others"));
    }
    let mut text = String::new();
    file.take(1024).read_to_string(&mut text).map_or_else(
        |e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Ok(Some("held another key"))
            } else {
                Err(e)
            }
        },
        // The key in upper-case hex is the same key, as a start reads it (black-box round
        // 227c: it was said to hold another key, and written again).
        |_| Ok((!text.trim().eq_ignore_ascii_case(want)).then_some("held another key, or none")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is made in the directory the ledger locked, even when the path the ledger
    /// was opened by (a symlink) names another directory by then (black-box round 40: a
    /// symlink swapped during start put the key in one directory and the ledger in the
    /// other).
    #[tokio::test]
    async fn the_key_is_made_in_the_directory_the_ledger_locked() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b, link) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("l"),
        );
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
        }
        std::os::unix::fs::symlink(&a, &link).unwrap_or_else(|e| panic!("{e}"));
        let ledger =
            crate::ledger::Ledger::open(&link, 4096, |_| {}).unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(&link).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&b, &link).unwrap_or_else(|e| panic!("{e}"));
        Fingerprinter::open_in(&ledger.locked_dir(), ledger.dir())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(a.join(KEY_FILE).exists(), "beside the locked ledger");
        assert!(!b.join(KEY_FILE).exists(), "not where the path points now");
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
        // Each refusal says the way out (black-box round 64a), and none blocks or is
        // taken for a missing key.
        assert!(e.to_string().contains("--new-fingerprint-key"), "{e}");
        assert!(!format!("{a:?}").contains(&hex::encode(a.key)));
        let key = dir.path().join(KEY_FILE);
        std::fs::remove_file(&key).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(&key).unwrap_or_else(|e| panic!("{e}"));
        let e = Fingerprinter::load_in(dir.path(), dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir(&key).unwrap_or_else(|e| panic!("{e}"));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &key,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = Fingerprinter::load_in(dir.path(), dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_file(&key).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &key)
            .unwrap_or_else(|e| panic!("{e}"));
        let e = Fingerprinter::load_in(dir.path(), dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("is a symlink to a file that does not exist"),
            "{e}"
        );
    }

    /// Black-box round 33: an e-mail with a character that prints as nothing hashed as
    /// another consumer, past the suppression list and de-duplication.
    #[test]
    fn characters_that_print_as_nothing_do_not_change_a_field_hash() {
        let email = proto::FieldKind::Email;
        let plain = field_hash(&email, "ana@example.com");
        for v in [
            "ana@example.com\u{200b}",
            "\u{feff}Ana@Example.com",
            "an\u{00ad}a@exam\u{2060}ple.com",
            "ana@example.com\u{fe0f}\u{e0041}",
            " ana@example.com\u{202e} ",
        ] {
            assert_eq!(field_hash(&email, v), plain, "{v:?}");
        }
        assert_ne!(field_hash(&email, "anna@example.com"), plain);
        assert_eq!(field_hash(&email, "\u{200b} "), None);
    }

    /// Black-box round 34: a full-width letter (`ｅvil@example.com`) hashed as another
    /// consumer, past the suppression list and de-duplication. Compatibility forms fold
    /// to the letters they stand for (NFKC); distinct addresses stay distinct.
    #[test]
    fn compatibility_forms_of_letters_do_not_change_a_field_hash() {
        let email = proto::FieldKind::Email;
        let plain = field_hash(&email, "evil@example.com");
        for v in [
            "\u{ff45}vil@example.com",               // full-width e
            "\u{ff25}VIL@\u{ff25}XAMPLE\u{ff0e}COM", // full-width E and dot, upper case
            "\u{1d41e}vil@example.com",              // mathematical bold e
            "\u{24d4}vil@example.com",               // circled e
        ] {
            assert_eq!(field_hash(&email, v), plain, "{v:?}");
        }
        // A ligature folds too: `ﬁ` is `fi`.
        assert_eq!(
            field_hash(&email, "\u{fb01}@example.com"),
            field_hash(&email, "fi@example.com")
        );
        // Distinct ASCII addresses stay distinct (no look-alike folding: `rn` is not `m`).
        assert_ne!(
            field_hash(&email, "rn@example.com"),
            field_hash(&email, "m@example.com")
        );
        assert_ne!(field_hash(&email, "evil@example.org"), plain);
        // A phone is hashed as given (it is E.164 ASCII digits by then).
        assert_ne!(
            field_hash(&proto::FieldKind::Phone, "+18175550123"),
            field_hash(&proto::FieldKind::Phone, "+1817555012\u{ff13}")
        );
    }

    /// Black-box round 159b: an internationalized domain in its ASCII form
    /// (`xn--exmple-cua.com`), or written with an ideographic full stop (`。`), hashed as
    /// another consumer and sold it again within the dedup window. The domain is folded
    /// to its Unicode form (IDNA); an address already sold under a Unicode domain keeps
    /// its hash, and a string field is not touched.
    #[test]
    fn an_e_mail_domain_in_its_idna_forms_does_not_change_a_field_hash() {
        use sha2::Digest;
        let email = proto::FieldKind::Email;
        let unicode = field_hash(&email, "bob@ex\u{e4}mple.com");
        assert_eq!(
            unicode,
            Some(Sha256::digest("bob@ex\u{e4}mple.com".as_bytes()).into()),
            "the hash an address under a Unicode domain had before"
        );
        for v in [
            "bob@xn--exmple-cua.com",
            "BOB@XN--EXMPLE-CUA.COM",
            "bob@EX\u{c4}MPLE.COM",
        ] {
            assert_eq!(field_hash(&email, v), unicode, "{v:?}");
        }
        let plain = field_hash(&email, "zed@mail.example.com");
        assert_eq!(plain, Some(Sha256::digest(b"zed@mail.example.com").into()));
        for v in [
            "zed@mail.example\u{3002}com", // ideographic full stop
            "zed@mail.example\u{ff61}com", // half-width ideographic full stop
            "zed@mail.example\u{ff0e}com", // full-width full stop
        ] {
            assert_eq!(field_hash(&email, v), plain, "{v:?}");
        }
        // Round 160a: a label IDNA would not register is still read (an upper-case `Ä`,
        // a soft hyphen or a joiner inside, the Punycode of plain ASCII).
        assert_eq!(field_hash(&email, "bob@xn--exmple-xna.com"), unicode);
        let example = field_hash(&email, "bob@example.com");
        for v in [
            "bob@xn--example-oka.com",
            "bob@xn--example-j06c.com",
            "bob@xn--example-.com",
        ] {
            assert_eq!(field_hash(&email, v), example, "{v:?}");
        }
        // Round 160a: lower-casing made `ΑΣ1` `ας1` (a final sigma), another consumer
        // than `ασ1`; in the local part too.
        let greek = field_hash(&email, "greek@\u{3b1}\u{3c3}1.com");
        for v in [
            "greek@\u{391}\u{3a3}1.com",
            "greek@\u{3b1}\u{3c2}1.com",
            "greek@xn--1-ylb8c.com",
            "GREEK@\u{391}\u{3a3}1.COM",
        ] {
            assert_eq!(field_hash(&email, v), greek, "{v:?}");
        }
        assert_eq!(
            field_hash(&email, "\u{391}\u{3a3}1@example.com"),
            field_hash(&email, "\u{3b1}\u{3c3}1@example.com")
        );
        // Round 160a: full-width quotes, brackets and `＠` fold to characters an address
        // cannot hold (the validator refuses the ASCII ones): dropped.
        let ana = field_hash(&email, "ana@example.com");
        for v in [
            "\u{ff02}ana\u{ff02}@example.com",
            "ana@\u{ff3b}example.com\u{ff3d}",
            "a\u{ff08}\u{ff09}na@example.com",
            "an\u{ff20}a@example.com",
        ] {
            assert_eq!(field_hash(&email, v), ana, "{v:?}");
        }
        // Round 161a: a dot that ends the domain, made by folding or left by an empty
        // last label, is the root's; IDNA's mapping past lower-casing; `ß` is not `ss`.
        for v in [
            "ana@example.com.\u{200b}",
            "ana@example.com\u{fe52}",
            "ana@example.com\u{2024}",
            "ana@example.com\u{3002}\u{200b}",
            "ana@example.com.xn--",
        ] {
            assert_eq!(field_hash(&email, v), ana, "{v:?}");
        }
        assert_eq!(
            field_hash(&email, "zoe@\u{1f80}.gr"),
            field_hash(&email, "zoe@\u{1f00}\u{3b9}.gr")
        );
        assert_eq!(
            field_hash(&email, "zoe@a\u{345}.gr"),
            field_hash(&email, "zoe@a\u{3b9}.gr")
        );
        assert_eq!(
            field_hash(&email, "bob@STRA\u{1e9e}E.de"),
            field_hash(&email, "bob@stra\u{df}e.de")
        );
        assert_ne!(
            field_hash(&email, "bob@stra\u{df}e.de"),
            field_hash(&email, "bob@strasse.de")
        );
        // Round 162a: a label that decodes to text ending in a full stop; empty labels;
        // the local part's full case folding and `ß` as `ss`.
        for v in [
            "ana@example.xn--com-bz3b",
            "ana@example.xn--com-ec7s",
            "ana@example.xn--com-w16s",
            "ana@example..com",
            "ana@xn--kba.example.com",
            "ana@example.\u{ad}.com",
        ] {
            assert_eq!(field_hash(&email, v), ana, "{v:?}");
        }
        for (one, other) in [
            ("x\u{3b1}\u{3b9}@example.com", "x\u{1fb3}@example.com"),
            ("x\u{3b1}\u{3b9}@example.com", "x\u{3b1}\u{345}@example.com"),
            ("xss@example.com", "x\u{df}@example.com"),
            ("xss@example.com", "X\u{1e9e}@example.com"),
        ] {
            assert_eq!(
                field_hash(&email, one),
                field_hash(&email, other),
                "{other:?}"
            );
        }
        // The local part is not IDNA's: a dot or case there is kept as it was folded.
        assert_ne!(field_hash(&email, "z.ed@mail.example.com"), plain);
        // A domain IDNA refuses (an `xn--` label that is not Punycode) is kept as it is.
        assert_eq!(
            field_hash(&email, "bob@xn--zz.com"),
            Some(Sha256::digest(b"bob@xn--zz.com").into())
        );
        // Only e-mail fields: a string that looks like an address is hashed as folded.
        let text = proto::FieldKind::String {
            len_max: 100,
            pattern: None,
        };
        assert_ne!(
            field_hash(&text, "bob@xn--exmple-cua.com"),
            field_hash(&text, "bob@ex\u{e4}mple.com")
        );
    }

    /// Black-box round 30: the same hash in upper-case hex made another fingerprint.
    #[test]
    fn a_dedup_hash_s_case_does_not_change_the_fingerprint() {
        let f = Fingerprinter::ephemeral();
        let schema = VerticalSchema { fields: Vec::new() };
        let lead = Lead::default();
        let h = hex::encode([0xab; 32]);
        let of = |v: &str| {
            let map = [("phone_sha256".to_string(), v.to_string())].into();
            f.of("auto", &schema, &lead, &map)
        };
        assert_eq!(of(&h), of(&h.to_uppercase()));
        assert_ne!(of(&h), of(&hex::encode([0xac; 32])));
        // Not a SHA-256: taken as it is.
        assert_ne!(of("AbC"), of("abc"));
    }

    /// Black-box round 220b: a key file that could not be opened for want of file
    /// descriptors was told as changed ("a start would refuse this ledger"). Only what
    /// shows a change is one; anything else is not known either way.
    #[test]
    fn a_key_file_that_cannot_be_looked_at_is_not_told_as_changed() {
        let want = hex::encode([7u8; 32]);
        let errno = |e: rustix::io::Errno| Err(std::io::Error::from_raw_os_error(e.raw_os_error()));
        for e in [
            rustix::io::Errno::MFILE,
            rustix::io::Errno::NFILE,
            rustix::io::Errno::NOMEM,
            rustix::io::Errno::IO,
        ] {
            assert!(key_file_differs(errno(e), &want, || true).is_err(), "{e:?}");
        }
        assert_eq!(
            key_file_differs(errno(rustix::io::Errno::NOENT), &want, || false).unwrap(),
            Some("was missing")
        );
        assert_eq!(
            key_file_differs(errno(rustix::io::Errno::LOOP), &want, || true).unwrap(),
            Some("was a symlink")
        );
        // Permission denied: the file there (it can be looked at) is unreadable, which a
        // start would be refused for too; for a directory whose permissions were taken
        // away (the file cannot be looked at), nothing is known (black-box round 221a).
        // Said as unreadable, never as another key (black-box round 222a).
        assert_eq!(
            key_file_differs(errno(rustix::io::Errno::ACCESS), &want, || true).unwrap(),
            Some(KEY_UNREADABLE)
        );
        assert!(key_file_differs(errno(rustix::io::Errno::ACCESS), &want, || false).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = |text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt as _;
            let p = dir.path().join("k");
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            Ok(std::fs::File::open(&p).unwrap())
        };
        assert_eq!(
            key_file_differs(file(&want, 0o600), &want, || true).unwrap(),
            None
        );
        assert_eq!(
            key_file_differs(file(&format!("{want}\n"), 0o600), &want, || true).unwrap(),
            None
        );
        // The same key in upper case, as a start takes it (black-box round 227c).
        assert_eq!(
            key_file_differs(file(&want.to_uppercase(), 0o600), &want, || true).unwrap(),
            None
        );
        assert!(key_file_differs(file(&want, 0o644), &want, || true)
            .unwrap()
            .is_some());
        assert!(key_file_differs(file("", 0o600), &want, || true)
            .unwrap()
            .is_some());
        assert!(
            key_file_differs(file(&"ab".repeat(32), 0o600), &want, || true)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            key_file_differs(Ok(std::fs::File::open(dir.path()).unwrap()), &want, || true).unwrap(),
            Some("was not a regular file")
        );
    }

    /// Black-box round 227c: a key file readable by others at the start was only warned
    /// of, so the key keeper's first look found it so and said another process had
    /// changed it while the exchange ran. The start makes it owner-only; a symlink's
    /// target is never changed.
    #[test]
    fn a_key_readable_by_others_is_made_owner_only_at_the_start() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        make_owner_only(dir.path(), dir.path());
        assert_eq!(mode(&key), 0o600);
        let before = std::fs::read(&key).unwrap();
        make_owner_only(dir.path(), dir.path());
        assert_eq!((mode(&key), std::fs::read(&key).unwrap()), (0o600, before));
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("key");
        std::fs::write(&target, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink(&target, &key).unwrap();
        make_owner_only(dir.path(), dir.path());
        assert_eq!(mode(&target), 0o644, "a symlink's target is left as it is");
    }
}
