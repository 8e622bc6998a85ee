//! Secrets at rest: the owner's secret keys and node tokens are sealed with
//! ChaCha20-Poly1305 under a master key kept outside the registry database.
//!
//! The associated data binds a sealed record to its purpose and row (e.g. `model-secret:7`),
//! so a sealed key copied into another row does not open.

use std::path::Path;

use chacha20poly1305::{
    ChaCha20Poly1305, Key, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use zeroize::Zeroizing;

use crate::{DeployError, files};

const NONCE_LEN: usize = 12;

/// The master key (256 bits, zeroized on drop).
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// Loads the master key from `path`, or creates it there (mode 0600) when absent.
    ///
    /// Keep the file on other storage than the registry (a mounted secret, a hardware-backed
    /// volume): a copy of the database alone then reveals no secret key.
    ///
    /// # Errors
    /// I/O errors and a file of the wrong size.
    pub fn load_or_create(path: &Path) -> Result<Self, DeployError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    DeployError::Config(format!(
                        "{}: a master key is exactly 32 bytes",
                        path.display()
                    ))
                })?;
                Ok(Self(Zeroizing::new(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                getrandom::fill(key.as_mut_slice())
                    .map_err(|e| DeployError::Config(format!("no randomness: {e}")))?;
                files::write_private(path, key.as_slice())?;
                Ok(Self(key))
            }
            Err(e) => Err(DeployError::io(path, e)),
        }
    }

    /// Loads an existing master key.
    ///
    /// # Errors
    /// I/O errors (a missing file included) and a file of the wrong size.
    pub fn load(path: &Path) -> Result<Self, DeployError> {
        if !path.exists() {
            return Err(DeployError::Config(format!(
                "{}: no master key",
                path.display()
            )));
        }
        Self::load_or_create(path)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()))
    }

    /// Seals `plain` for the purpose `aad`: a random nonce followed by the ciphertext and tag.
    ///
    /// # Errors
    /// [`DeployError::Config`] when no randomness is available.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, DeployError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| DeployError::Config(format!("no randomness: {e}")))?;
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| DeployError::Unseal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] sealed for the same purpose.
    ///
    /// # Errors
    /// [`DeployError::Unseal`] for another key, another purpose or altered bytes.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, DeployError> {
        if sealed.len() < NONCE_LEN {
            return Err(DeployError::Unseal);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| DeployError::Unseal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_with_their_key_and_purpose() {
        let dir = std::env::temp_dir().join(format!("hecnn-vault-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let _ = std::fs::remove_file(&path);
        let k = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        let sealed = k.seal("model-secret:1", b"the secret").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"the secret"));
        assert_eq!(
            again.open("model-secret:1", &sealed).unwrap().as_slice(),
            b"the secret"
        );
        assert!(matches!(
            k.open("model-secret:2", &sealed),
            Err(DeployError::Unseal)
        ));
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(matches!(
            k.open("model-secret:1", &bad),
            Err(DeployError::Unseal)
        ));
        let other = MasterKey::load_or_create(&dir.join("other.key")).unwrap();
        assert!(matches!(
            other.open("model-secret:1", &sealed),
            Err(DeployError::Unseal)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
