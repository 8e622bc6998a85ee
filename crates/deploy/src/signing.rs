//! Protected models signed by their owner (Ed25519), so that an edge node runs only what
//! the owner published.
//!
//! A protected model's weights are encrypted, but encryption alone does not say *whose*
//! they are: anyone holding the owner's public key can encrypt other weights, and a flipped
//! bit in a ciphertext still decrypts to something. The owner therefore signs the whole
//! protected model, and the edge checks the signature against a key it got out of band
//! (`owner.pub`, never from the same place as the model) before it loads anything.
//!
//! Format (`HCNS`, version 1): magic, version (`u16` LE), the owner's 32-byte public key,
//! the 64-byte signature, then the protected model's bytes. The signature covers
//! [`DOMAIN`] followed by the model's bytes, so a signature made for anything else (another
//! format, another protocol using the same key) never verifies here.
//!
//! The public key travels in the file only to name the signer in errors: verification
//! compares it with the expected key first and never trusts it.

use std::fmt;
use std::path::Path;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use crate::DeployError;

/// Magic of a signed protected model.
pub const MAGIC: [u8; 4] = *b"HCNS";
/// Format version.
pub const VERSION: u16 = 1;
/// What the signature covers before the model's bytes.
pub const DOMAIN: &[u8] = b"hecnn signed protected model v1\0";
/// Prefix of the text form of an owner key.
const KEY_PREFIX: &str = "hecnn-owner-ed25519:";
const PUBLIC_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;
const HEADER_LEN: usize = MAGIC.len() + 2 + PUBLIC_LEN + SIGNATURE_LEN;

fn invalid(why: impl Into<String>) -> DeployError {
    DeployError::Signature(why.into())
}

/// The owner's signing key (Ed25519). Its PKCS#8 bytes are the secret: write them with
/// the secret-file discipline (0600 from the first byte, never partial).
pub struct SigningKey {
    pkcs8: Zeroizing<Vec<u8>>,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.owner_key())
    }
}

impl SigningKey {
    /// A fresh key from the operating system's generator.
    ///
    /// # Errors
    /// [`DeployError::Signature`] when the generator fails.
    pub fn generate() -> Result<Self, DeployError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| invalid("the system's random generator failed"))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Loads a key written by [`SigningKey::to_pkcs8`].
    ///
    /// # Errors
    /// [`DeployError::Signature`] for bytes that are not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, DeployError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .map_err(|_| invalid("not an Ed25519 signing key (PKCS#8) written by hecnn"))?;
        Ok(Self {
            pkcs8: Zeroizing::new(bytes.to_vec()),
            pair,
        })
    }

    /// The secret bytes (PKCS#8 v2).
    pub fn to_pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, for the edge.
    pub fn owner_key(&self) -> OwnerKey {
        let mut k = [0u8; PUBLIC_LEN];
        k.copy_from_slice(self.pair.public_key().as_ref());
        OwnerKey(k)
    }

    /// The protected model's bytes, signed.
    pub fn sign_model(&self, protected: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(DOMAIN.len() + protected.len());
        message.extend_from_slice(DOMAIN);
        message.extend_from_slice(protected);
        let sig = self.pair.sign(&message);
        let mut out = Vec::with_capacity(HEADER_LEN + protected.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(self.pair.public_key().as_ref());
        out.extend_from_slice(sig.as_ref());
        out.extend_from_slice(protected);
        out
    }
}

/// An owner's public key: what an edge pins to accept that owner's models.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerKey([u8; PUBLIC_LEN]);

impl OwnerKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_LEN] {
        &self.0
    }

    /// A short name for messages: the first 8 bytes of the key in hex.
    pub fn fingerprint(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The text form (`hecnn-owner-ed25519:` and 64 hex digits, one line).
    pub fn to_text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{KEY_PREFIX}{hex}\n")
    }

    /// Parses [`OwnerKey::to_text`] (surrounding white space allowed).
    ///
    /// # Errors
    /// [`DeployError::Signature`] naming what is wrong.
    pub fn from_text(text: &str) -> Result<Self, DeployError> {
        let hex = text
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| invalid(format!("an owner key starts with '{KEY_PREFIX}'")))?;
        if hex.len() != 2 * PUBLIC_LEN || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "an owner key has {} hex digits after '{KEY_PREFIX}'",
                2 * PUBLIC_LEN
            )));
        }
        let mut k = [0u8; PUBLIC_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| invalid("an owner key's hex digits"))?;
        }
        Ok(Self(k))
    }

    /// Reads an owner key file.
    ///
    /// # Errors
    /// I/O errors naming the file; [`DeployError::Signature`] for malformed keys.
    pub fn read(path: &Path) -> Result<Self, DeployError> {
        // An owner key is one short line; a larger file is not one.
        let bytes = hecnn_nn::compile::read_bounded(path, 4096)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| invalid(format!("{}: not text", path.display())))?;
        Self::from_text(text).map_err(|e| match e {
            DeployError::Signature(why) => invalid(format!("{}: {why}", path.display())),
            other => other,
        })
    }
}

impl fmt::Display for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "owner key {}", self.fingerprint())
    }
}

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether `bytes` start as a signed protected model.
pub fn is_signed(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// The signer named in a signed model (not verified: for messages only).
pub fn claimed_signer(bytes: &[u8]) -> Option<OwnerKey> {
    let k = bytes.get(MAGIC.len() + 2..MAGIC.len() + 2 + PUBLIC_LEN)?;
    is_signed(bytes).then(|| {
        let mut a = [0u8; PUBLIC_LEN];
        a.copy_from_slice(k);
        OwnerKey(a)
    })
}

/// Checks that `signed` is a protected model signed by `expected`, and returns the model's
/// bytes. Nothing of the model is parsed before the signature holds.
///
/// # Errors
/// [`DeployError::Signature`]: not signed (an unsigned model is refused, not run), another
/// format version, signed by another key (both named), or a signature that does not
/// verify (the file was changed after signing).
pub fn verify_model<'a>(signed: &'a [u8], expected: &OwnerKey) -> Result<&'a [u8], DeployError> {
    if !is_signed(signed) {
        return Err(invalid(
            "the protected model is not signed: only a model signed by its owner is run \
             (protect it again with this version of hecnn)",
        ));
    }
    if signed.len() < HEADER_LEN {
        return Err(invalid(
            "a signed model shorter than its header (truncated)",
        ));
    }
    let version = u16::from_le_bytes([signed[4], signed[5]]);
    if version != VERSION {
        return Err(invalid(format!(
            "signed-model format version {version}; this build reads {VERSION}"
        )));
    }
    let (public, rest) = signed[6..].split_at(PUBLIC_LEN);
    let (sig, payload) = rest.split_at(SIGNATURE_LEN);
    if public != expected.as_bytes() {
        let signer = claimed_signer(signed).map_or_else(String::new, |k| k.fingerprint());
        return Err(invalid(format!(
            "the model claims to be signed by owner key {signer}, not by the expected {}",
            expected.fingerprint()
        )));
    }
    let mut message = Vec::with_capacity(DOMAIN.len() + payload.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(payload);
    UnparsedPublicKey::new(&ED25519, expected.as_bytes())
        .verify(&message, sig)
        .map_err(|_| {
            invalid(format!(
                "the signature of {} does not verify: the model was changed after it was signed",
                expected.fingerprint()
            ))
        })?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_model_verifies_only_intact_and_under_its_owner_key() {
        let owner = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let model = b"HCNP protected model bytes".repeat(100);
        let signed = owner.sign_model(&model);
        assert_eq!(
            verify_model(&signed, &owner.owner_key()).unwrap(),
            &model[..]
        );
        // Every single-bit flip, header and payload alike, is refused.
        for i in (0..signed.len()).step_by(7) {
            let mut bad = signed.clone();
            bad[i] ^= 1 << (i % 8);
            assert!(
                verify_model(&bad, &owner.owner_key()).is_err(),
                "bit at byte {i}"
            );
        }
        // Another owner's key, a model re-signed by another owner, unsigned bytes, truncation.
        let e = verify_model(&signed, &other.owner_key()).unwrap_err();
        assert!(
            e.to_string().contains(&owner.owner_key().fingerprint()),
            "{e}"
        );
        assert!(verify_model(&other.sign_model(&model), &owner.owner_key()).is_err());
        let e = verify_model(&model, &owner.owner_key()).unwrap_err();
        assert!(e.to_string().contains("not signed"), "{e}");
        assert!(verify_model(&signed[..HEADER_LEN - 1], &owner.owner_key()).is_err());
        // A signature over the same bytes without the domain prefix does not verify here.
        let raw = owner.pair.sign(&model);
        let mut forged = signed.clone();
        forged[6 + PUBLIC_LEN..HEADER_LEN].copy_from_slice(raw.as_ref());
        assert!(verify_model(&forged, &owner.owner_key()).is_err());
    }

    #[test]
    fn keys_round_trip_through_their_files_forms() {
        let k = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(k.to_pkcs8()).unwrap();
        assert_eq!(again.owner_key(), k.owner_key());
        let text = k.owner_key().to_text();
        assert_eq!(OwnerKey::from_text(&text).unwrap(), k.owner_key());
        assert!(OwnerKey::from_text("hecnn-owner-ed25519:00").is_err());
        assert!(OwnerKey::from_text(&text.replace("hecnn-owner", "other")).is_err());
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        assert!(!format!("{k:?}").contains(&format!("{:?}", &k.to_pkcs8()[..8])));
    }
}
