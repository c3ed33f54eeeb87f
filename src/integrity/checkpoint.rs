//! Signed checkpoints: a tree size and root hash in the C2SP
//! `tlog-checkpoint` text format, signed as a C2SP `signed-note` with
//! Ed25519, so any note verifier (Go's `golang.org/x/mod/sumdb/note`,
//! `litetlog`, ...) can check them with the service's verifier key.
//!
//! ```text
//! audit-service/acme            <- origin: the log's name, one per tenant
//! 42                            <- tree size
//! 3q2+7w...=                    <- root hash, base64
//! Timestamp: 1763890000123456   <- extension line: unix microseconds
//!
//! — audit-service Ab3x...       <- key name, base64(key hash || signature)
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// Signature algorithm byte of Ed25519 in signed-note keys.
const ALG_ED25519: u8 = 0x01;
/// Prefix of an encoded signing key, as Go's `note` package writes it.
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";
/// Leads each signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// Name of the extension line carrying the signing time.
const TIMESTAMP_PREFIX: &str = "Timestamp: ";

/// Why a key or a note was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The key text is not a signed-note Ed25519 key.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// The note is not a signed checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No signature line of the verifier's key.
    #[error("checkpoint carries no signature by key {0}")]
    Unsigned(String),
    /// A signature of the verifier's key that does not verify.
    #[error("checkpoint signature by key {0} does not verify")]
    BadSignature(String),
}

/// The key that signs checkpoints.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key of the 32-byte Ed25519 `seed`, signing as `name`.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// A new random key signing as `name`.
    pub fn generate(name: &str) -> Result<Self, CheckpointError> {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
        Self::from_seed(name, seed)
    }

    /// Parses `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`, the text
    /// form Go's `note.GenerateKey` writes.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let malformed = |why: &str| CheckpointError::MalformedKey(why.to_owned());
        let rest = text
            .trim()
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or_else(|| malformed("a signing key starts with PRIVATE+KEY+"))?;
        let (name, hash, key) = split_key(rest)?;
        let seed: [u8; 32] = key
            .try_into()
            .map_err(|_| malformed("an Ed25519 seed is 32 bytes"))?;
        let signer = Self::from_seed(name, seed)?;
        if signer.verifier().key_hash != hash {
            return Err(malformed("key hash does not match the key"));
        }
        Ok(signer)
    }

    /// The text form [`parse`](Self::parse) reads. Secret: store it as such.
    pub fn encode(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!(
            "{PRIVATE_KEY_PREFIX}{}+{:08x}+{}",
            self.name,
            self.verifier().key_hash,
            BASE64.encode(key)
        )
    }

    /// The 32-byte seed.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key's name, as signature lines carry it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey::new(&self.name, self.key.verifying_key())
    }

    /// Signs the checkpoint and returns the whole note: body, blank line,
    /// signature line.
    pub fn sign(&self, checkpoint: &Checkpoint) -> SignedCheckpoint {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes()).to_bytes();
        let mut blob = self.verifier().key_hash.to_be_bytes().to_vec();
        blob.extend_from_slice(&signature);
        let note = format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        );
        SignedCheckpoint {
            checkpoint: checkpoint.clone(),
            note,
            signature: signature.to_vec(),
        }
    }
}

/// The public key that checks checkpoints, in the signed-note verifier-key
/// text form `<name>+<hash>+<base64(0x01 || public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_hash: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifierKey {
    fn new(name: &str, key: ed25519_dalek::VerifyingKey) -> Self {
        // signed-note: the first four bytes of SHA-256(name || "\n" || 0x01 || key).
        let digest = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update(b"\n")
            .chain_update([ALG_ED25519])
            .chain_update(key.as_bytes())
            .finalize();
        let key_hash = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        Self {
            name: name.to_owned(),
            key_hash,
            key,
        }
    }

    /// Parses the verifier-key text form.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let (name, hash, key) = split_key(text.trim())?;
        let bytes: [u8; 32] = key
            .try_into()
            .map_err(|_| CheckpointError::MalformedKey("an Ed25519 public key is 32 bytes".into()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| CheckpointError::MalformedKey("not an Ed25519 public key".into()))?;
        check_key_name(name)?;
        let verifier = Self::new(name, key);
        if verifier.key_hash != hash {
            return Err(CheckpointError::MalformedKey(
                "key hash does not match the key".into(),
            ));
        }
        Ok(verifier)
    }

    /// The text form [`parse`](Self::parse) reads.
    pub fn encode(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_hash, BASE64.encode(key))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Checks the note's signature by this key and parses the checkpoint.
    /// Signatures by other keys are ignored, as signed-note prescribes.
    pub fn open(&self, note: &str) -> Result<SignedCheckpoint, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| malformed("no blank line before the signatures"))?;
        let (body, signatures) = (&note[..=split], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(malformed("the note does not end with a newline"));
        }
        let mut found = None;
        for line in signatures.lines() {
            let line = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or_else(|| malformed("a signature line starts with an em dash and a space"))?;
            let (name, blob) = line
                .split_once(' ')
                .ok_or_else(|| malformed("a signature line is `— <name> <signature>`"))?;
            let blob = BASE64
                .decode(blob)
                .map_err(|_| malformed("a signature is base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.key_hash.to_be_bytes() {
                continue;
            }
            let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
            self.key
                .verify(body.as_bytes(), &signature)
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
            found = Some(signature.to_bytes().to_vec());
        }
        let signature = found.ok_or_else(|| CheckpointError::Unsigned(self.name.clone()))?;
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint::parse_body(body)?,
            note: note.to_owned(),
            signature,
        })
    }
}

/// What a checkpoint states: the log `origin` had `size` leaves with hash
/// `root` at `time_micros`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (`<AUDIT_LOG_ORIGIN>/<tenant>`).
    pub origin: String,
    /// Leaves in the tree.
    pub size: u64,
    /// Root hash of the tree.
    pub root: Hash,
    /// When it was signed, unix microseconds.
    pub time_micros: i64,
}

impl Checkpoint {
    /// The signed text: origin, size, base64 root, the timestamp extension
    /// line; each line ends with a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n{TIMESTAMP_PREFIX}{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root),
            self.time_micros
        )
    }

    fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| malformed("no origin"))?;
        let size = lines
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| malformed("the second line is the tree size, a decimal number"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| BASE64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| malformed("the third line is the root hash, 32 bytes in base64"))?;
        let time_micros = lines
            .find_map(|line| line.strip_prefix(TIMESTAMP_PREFIX))
            .and_then(|t| t.parse().ok())
            .unwrap_or_default();
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            time_micros,
        })
    }
}

/// A checkpoint with its note and the raw Ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What is signed.
    pub checkpoint: Checkpoint,
    /// The whole signed note.
    pub note: String,
    /// The 64-byte signature over [`Checkpoint::body`].
    pub signature: Vec<u8>,
}

fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(CheckpointError::MalformedKey(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// Splits `<name>+<hash hex>+<base64(0x01 || key)>` and returns the key bytes.
fn split_key(text: &str) -> Result<(&str, u32, Vec<u8>), CheckpointError> {
    let malformed = |why: &str| CheckpointError::MalformedKey(why.to_owned());
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("a key is <name>+<hash>+<key>"));
    };
    if hash.len() != 8 {
        return Err(malformed("the key hash is 8 hex digits"));
    }
    let hash = u32::from_str_radix(hash, 16).map_err(|_| malformed("the key hash is 8 hex digits"))?;
    let key = BASE64.decode(key).map_err(|_| malformed("the key is base64"))?;
    match key.split_first() {
        Some((&ALG_ED25519, rest)) => Ok((name, hash, rest.to_vec())),
        _ => Err(malformed("only Ed25519 keys (algorithm 1) are supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "audit.example.com/acme".into(),
            size: 42,
            root: [7; 32],
            time_micros: 1_763_890_000_123_456,
        }
    }

    #[test]
    fn a_signed_checkpoint_opens_with_the_verifier_key() {
        let key = SigningKey::generate("audit.example.com").unwrap();
        let signed = key.sign(&checkpoint());
        assert!(signed.note.starts_with("audit.example.com/acme\n42\n"));
        assert!(signed.note.contains("\n\n\u{2014} audit.example.com "));
        assert_eq!(key.verifier().open(&signed.note).unwrap(), signed);
        assert_eq!(signed.checkpoint, checkpoint());
    }

    #[test]
    fn an_edited_checkpoint_is_refused() {
        let key = SigningKey::generate("audit.example.com").unwrap();
        let note = key.sign(&checkpoint()).note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            key.verifier().open(&note),
            Err(CheckpointError::BadSignature("audit.example.com".into()))
        );
    }

    #[test]
    fn another_keys_signature_is_not_accepted() {
        let key = SigningKey::generate("audit.example.com").unwrap();
        let other = SigningKey::generate("audit.example.com").unwrap();
        let note = other.sign(&checkpoint()).note;
        assert!(matches!(
            key.verifier().open(&note),
            Err(CheckpointError::Unsigned(_))
        ));
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let key = SigningKey::generate("audit.example.com").unwrap();
        let parsed = SigningKey::parse(&key.encode()).unwrap();
        assert_eq!(parsed.seed(), key.seed());
        assert_eq!(
            VerifierKey::parse(&key.verifier().encode()).unwrap(),
            key.verifier()
        );
        let mut tampered = key.verifier().encode();
        tampered.replace_range(..1, "b");
        assert!(VerifierKey::parse(&tampered).is_err());
    }

    /// The public key of RFC 8032's first Ed25519 test vector, wrapped in
    /// the signed-note layout: `0x01 || key`, named, with the key hash.
    #[test]
    fn keys_follow_the_signed_note_layout() {
        let seed = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = SigningKey::from_seed("example.com", seed).unwrap();
        let verifier = key.verifier().encode();
        let mut parts = verifier.splitn(3, '+');
        assert_eq!(parts.next(), Some("example.com"));
        let hash = parts.next().unwrap();
        let raw = BASE64.decode(parts.next().unwrap()).unwrap();
        assert_eq!(raw[0], ALG_ED25519);
        assert_eq!(
            raw[1..],
            hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let digest = Sha256::digest([b"example.com\n".as_slice(), &raw].concat());
        assert_eq!(
            hash,
            format!(
                "{:02x}{:02x}{:02x}{:02x}",
                digest[0], digest[1], digest[2], digest[3]
            )
        );
    }

    fn hex32(text: &str) -> [u8; 32] {
        let bytes: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }
}
