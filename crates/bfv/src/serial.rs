//! Serialization of BFV parameters, ciphertexts and plaintexts on top of the RLWE layer's
//! versioned, fingerprinted, size-bounded and BLAKE3-checksummed envelopes
//! ([`hecnn_rlwe::serial`]).
//!
//! Every BFV object carries, besides the RLWE envelope (which binds it to the RLWE
//! parameters' fingerprint), a small metadata record `(tag, BFV fingerprint, t)`: the tag
//! says what the object is, the BFV fingerprint (a hash of the RLWE fingerprint and `t`, see
//! [`BfvParams::fingerprint`]) binds it to the plaintext modulus. Loading checks, in order:
//! the size bound, the envelope (magic, version, kind, RLWE fingerprint, checksum), the
//! object's shape against the parameters, then the tag, `t` and the BFV fingerprint.
//!
//! - **Ciphertexts** ([`Ciphertext::to_bytes`]): [`serial::encode_with_meta`], the RLWE
//!   ciphertext wire (seed-compressed for a fresh secret-key encryption, at any level,
//!   degree 1 or 2) with the metadata, exactly as CKKS carries its scale.
//! - **Plaintexts** ([`Plaintext::to_bytes`]): a scheme envelope holding the metadata and the
//!   `N` coefficients (postcard varints, so small `t` gives small plaintexts).
//! - **Parameters** ([`BfvParams::to_bytes`]): the RLWE parameters' own envelope
//!   ([`hecnn_rlwe::Params::to_bytes`]: literal and generated primes) followed by a
//!   fixed-size ([`PARAMS_TAIL_BYTES`]) scheme envelope under those parameters holding the
//!   metadata. Loading rebuilds (and re-checks the security of) the RLWE parameters, then
//!   rebuilds the BFV parameters with the stored `t` and compares fingerprints.
//!
//! Errors: a size above the bound is [`RlweError::TooLarge`], damaged or ill-shaped input
//! [`RlweError::Malformed`] (both inside [`BfvError::Rlwe`]), other RLWE parameters
//! [`BfvError::ParamsMismatch`], another `t` [`BfvError::PlainModulusMismatch`]. Nothing is
//! allocated beyond the size bound, which is checked before parsing.

use std::sync::Arc;

use hecnn_ring::Backend;
use hecnn_rlwe::serial::{self, Kind};
use hecnn_rlwe::{Params, RlweError};

use crate::{BfvError, BfvParams, Ciphertext, Plaintext};

/// Metadata of every BFV object: (what it is, BFV fingerprint, `t`).
type Meta = (u8, [u8; 32], u64);

/// Metadata of the parameters' tail, fixed-size so that the tail can be split off.
type ParamsMeta = (u8, [u8; 32], [u8; 8]);

const TAG_CIPHERTEXT: u8 = 1;
const TAG_PLAINTEXT: u8 = 2;
const TAG_PARAMS: u8 = 3;

/// Size in bytes of the scheme envelope that ends serialized [`BfvParams`]: magic (4),
/// version (1), kind (1), RLWE fingerprint (32), tag (1), BFV fingerprint (32), `t` (8),
/// checksum (32).
pub const PARAMS_TAIL_BYTES: usize = 111;

/// Upper bound on the serialized size of RLWE parameters (as [`Params::from_bytes`] takes).
const RLWE_PARAMS_LIMIT: usize = 1 << 20;

/// The RLWE layer's "other parameters" as the BFV one.
fn map_rlwe(e: RlweError) -> BfvError {
    match e {
        RlweError::ParamsMismatch => BfvError::ParamsMismatch,
        e => BfvError::Rlwe(e),
    }
}

fn malformed(what: &'static str) -> BfvError {
    BfvError::Rlwe(RlweError::Malformed { what })
}

/// Checks an object's tag, plaintext modulus and BFV fingerprint against `params`.
fn check_meta(
    params: &BfvParams,
    tag: u8,
    expected: u8,
    fingerprint: &[u8; 32],
    t: u64,
) -> Result<(), BfvError> {
    if tag != expected {
        return Err(malformed(
            "BFV object tag (not the expected kind of object)",
        ));
    }
    if t != params.t() {
        return Err(BfvError::PlainModulusMismatch {
            expected: params.t(),
            found: t,
        });
    }
    params.check(fingerprint)
}

impl<B: Backend> Ciphertext<B> {
    /// Serializes the ciphertext (any level, degree 1 or 2; seed-compressed while it is an
    /// unmodified secret-key encryption) with `t` and the BFV fingerprint.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] for a ciphertext of other parameters; backend transfer
    /// failures.
    pub fn to_bytes(&self, be: &B, params: &BfvParams) -> Result<Vec<u8>, BfvError> {
        params.check(&self.fingerprint())?;
        let meta: Meta = (TAG_CIPHERTEXT, params.fingerprint(), params.t());
        serial::encode_with_meta(be, params.rlwe(), self.inner(), &meta).map_err(map_rlwe)
    }

    /// Loads and validates a ciphertext for `params` (size bounded by
    /// [`serial::ciphertext_limit`]).
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] (other RLWE parameters or BFV fingerprint),
    /// [`BfvError::PlainModulusMismatch`] (another `t`), and inside [`BfvError::Rlwe`]:
    /// `TooLarge`, `Malformed` (damaged, truncated, ill-shaped or unreduced input),
    /// `UnsupportedVersion`, `WrongKind`.
    pub fn from_bytes(be: &B, params: &BfvParams, bytes: &[u8]) -> Result<Self, BfvError> {
        let (inner, (tag, fingerprint, t)): (_, Meta) =
            serial::decode_with_meta(be, params.rlwe(), bytes).map_err(map_rlwe)?;
        check_meta(params, tag, TAG_CIPHERTEXT, &fingerprint, t)?;
        Ok(Self::new(inner, fingerprint))
    }
}

impl Plaintext {
    /// Serializes the plaintext's coefficients with `t` and the BFV fingerprint.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] for a plaintext of other parameters.
    pub fn to_bytes(&self, params: &BfvParams) -> Result<Vec<u8>, BfvError> {
        params.check(&self.fingerprint())?;
        let meta: Meta = (TAG_PLAINTEXT, params.fingerprint(), params.t());
        Ok(serial::encode(
            Kind::Scheme,
            params.rlwe(),
            &(meta, self.coeffs()),
        ))
    }

    /// Upper bound on the serialized size of a plaintext for `params`.
    pub fn bytes_limit(params: &BfvParams) -> usize {
        // A u64 varint takes at most 10 bytes; the envelope and metadata well under 4096.
        params.n().saturating_mul(10).saturating_add(4096)
    }

    /// Loads and validates a plaintext for `params`: exactly `N` coefficients, each below `t`.
    ///
    /// # Errors
    /// As [`Ciphertext::from_bytes`]; `Malformed` for a wrong coefficient count or a
    /// coefficient not below `t`.
    pub fn from_bytes(params: &BfvParams, bytes: &[u8]) -> Result<Self, BfvError> {
        let ((tag, fingerprint, t), coeffs): (Meta, Vec<u64>) = serial::decode(
            Kind::Scheme,
            params.rlwe(),
            bytes,
            Self::bytes_limit(params),
        )
        .map_err(map_rlwe)?;
        check_meta(params, tag, TAG_PLAINTEXT, &fingerprint, t)?;
        if coeffs.len() != params.n() {
            return Err(malformed("plaintext coefficient count"));
        }
        if coeffs.iter().any(|&c| c >= params.t()) {
            return Err(malformed("plaintext coefficient not below t"));
        }
        Ok(Self::new(params, coeffs))
    }
}

impl BfvParams {
    /// Serializes the parameters: the RLWE parameters' envelope (literal and primes)
    /// followed by a [`PARAMS_TAIL_BYTES`]-byte scheme envelope with `t` and the BFV
    /// fingerprint (see the [module documentation](crate::serial)).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.rlwe().to_bytes();
        let meta: ParamsMeta = (TAG_PARAMS, self.fingerprint(), self.t().to_le_bytes());
        out.extend(serial::encode(Kind::Scheme, self.rlwe(), &meta));
        out
    }

    /// Loads parameters written by [`BfvParams::to_bytes`]: rebuilds the RLWE parameters
    /// (re-checking security and the generated primes), then the BFV parameters with the
    /// stored `t`, and checks the BFV fingerprint.
    ///
    /// # Errors
    /// Inside [`BfvError::Rlwe`]: `TooLarge` (above 1 MiB plus the tail), `Malformed`,
    /// `UnsupportedVersion`, `WrongKind`, failed security checks; [`BfvError::ParamsMismatch`]
    /// when the parts disagree; [`BfvError::InvalidPlainModulus`] for an unusable `t`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Arc<Self>, BfvError> {
        let limit = RLWE_PARAMS_LIMIT + PARAMS_TAIL_BYTES;
        if bytes.len() > limit {
            return Err(BfvError::Rlwe(RlweError::TooLarge {
                size: bytes.len(),
                limit,
            }));
        }
        let split = bytes
            .len()
            .checked_sub(PARAMS_TAIL_BYTES)
            .ok_or_else(|| malformed("BFV parameters shorter than their tail"))?;
        let (head, tail) = bytes.split_at(split);
        let rlwe = Params::from_bytes(head).map_err(map_rlwe)?;
        let (tag, fingerprint, t): ParamsMeta =
            serial::decode(Kind::Scheme, &rlwe, tail, PARAMS_TAIL_BYTES).map_err(map_rlwe)?;
        if tag != TAG_PARAMS {
            return Err(malformed(
                "BFV object tag (not the expected kind of object)",
            ));
        }
        let params = Self::new(rlwe, u64::from_le_bytes(t))?;
        params.check(&fingerprint)?;
        Ok(Arc::new(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail of the parameters has the documented fixed size.
    #[test]
    fn params_tail_size_is_fixed() {
        let lit = hecnn_rlwe::ParamsLiteral {
            log_n: 4,
            log_q: vec![30, 30],
            log_p: vec![31],
            dnum: None,
            secret: hecnn_rlwe::SecretDistribution::Ternary,
            security: hecnn_rlwe::SecurityLevel::UncheckedForReproduction,
        };
        let rlwe = lit.build().unwrap();
        for t in [2u64, 97, (1 << 60) - 1] {
            let meta: ParamsMeta = (TAG_PARAMS, [0xff; 32], t.to_le_bytes());
            assert_eq!(
                serial::encode(Kind::Scheme, &rlwe, &meta).len(),
                PARAMS_TAIL_BYTES
            );
        }
    }
}
