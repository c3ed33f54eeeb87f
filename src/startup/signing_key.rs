//! Where the checkpoint signing key comes from: the operator's key from
//! `AUDIT_SIGNING_KEY_FILE`, or one the service creates on first start (in
//! that file, or in the database so every replica signs with the same key).

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::config::IntegrityConfig;
use crate::integrity::{Notary, SigningKey};
use crate::store::Store;

/// Name of the database secret holding the generated key's seed.
const SIGNING_SEED_SECRET: &str = "checkpoint_signing_seed";

/// Loads (or creates) the key the configuration names.
pub async fn load_notary(config: &IntegrityConfig, store: &Store) -> anyhow::Result<Notary> {
    let key = match &config.signing_key_file {
        Some(path) => key_from_file(path, &config.origin)?,
        None => {
            let seed = store
                .shared_secret(SIGNING_SEED_SECRET)
                .await
                .context("loading the checkpoint signing key")?;
            let seed: [u8; 32] = seed
                .try_into()
                .map_err(|_| anyhow::anyhow!("the stored checkpoint signing key is not 32 bytes"))?;
            SigningKey::from_seed(&config.origin, seed)?
        }
    };
    Notary::new(&config.origin, key)
}

/// Reads the key file, or creates it (mode 0600) with a new key named
/// `name` when it does not exist.
fn key_from_file(path: &Path, name: &str) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            SigningKey::parse(&text).with_context(|| format!("reading the signing key in {}", path.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(name)?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("creating the signing key file {}", path.display()))?;
            writeln!(file, "{}", key.encode())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), verifier_key = %key.verifier().encode(),
                "created a checkpoint signing key");
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.key");
        let created = key_from_file(&path, "audit.example.com").unwrap();
        let reread = key_from_file(&path, "ignored-name").unwrap();
        assert_eq!(created.seed(), reread.seed());
        assert_eq!(reread.name(), "audit.example.com");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_malformed_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.key");
        std::fs::write(&path, "not a key").unwrap();
        assert!(key_from_file(&path, "x").is_err());
    }
}
