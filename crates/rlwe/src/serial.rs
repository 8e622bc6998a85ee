//! Versioned, fingerprinted, size-bounded serialization of parameters, keys and ciphertexts.
//!
//! Every object is an envelope `{ magic, format version, kind, parameter fingerprint, body }`
//! encoded with `postcard`; polynomial limbs are raw little-endian words. Loading checks the
//! total size against a caller-given bound before parsing, the magic, version, kind and
//! fingerprint, every length against the parameters, and that every word is reduced modulo
//! its prime.

use std::sync::Arc;

use hecnn_ring::{Backend, Basis, Eval, RnsPoly, sampler::UNIFORM_EXPANSION_ID};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

use crate::{
    Ciphertext, EncapsulationKeys, EvaluationKeys, GaloisKey, KeyStorage, Params, ParamsLiteral,
    PublicKey, RelinKey, RlweError, SwitchingKey, keys::uniform_eval,
};

/// Magic bytes at the start of every hecnn object.
pub const MAGIC: [u8; 4] = *b"HECN";
/// Current format version: 2 appends a BLAKE3 checksum of everything before it, so a
/// flipped bit anywhere (a key word that stays below its prime included) is refused.
/// Version 1 objects (no checksum) are still read.
pub const FORMAT_VERSION: u16 = 2;

/// Bytes of the checksum that ends a version-2 object.
const CHECKSUM: usize = 32;

/// What an envelope holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Kind {
    /// Parameters.
    Params,
    /// A secret key (client only).
    SecretKey,
    /// A public key.
    PublicKey,
    /// Evaluation keys (relinearization and Galois).
    EvaluationKeys,
    /// A ciphertext.
    Ciphertext,
    /// Scheme-level payload (e.g. a CKKS ciphertext with its scale).
    Scheme,
    /// Bootstrapping's sparse-secret encapsulation keys.
    EncapsulationKeys,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    magic: [u8; 4],
    version: u16,
    kind: Kind,
    fingerprint: [u8; 32],
    body: T,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeHead {
    magic: [u8; 4],
    version: u16,
    kind: Kind,
    fingerprint: [u8; 32],
}

impl<T> Envelope<T> {
    /// The current version's envelope of `body` for `params`.
    fn current(kind: Kind, params: &Params, body: T) -> Self {
        Self {
            magic: MAGIC,
            version: FORMAT_VERSION,
            kind,
            fingerprint: params.fingerprint(),
            body,
        }
    }
}

/// Encodes `body` in an envelope for `params`.
pub fn encode<T: Serialize>(kind: Kind, params: &Params, body: &T) -> Vec<u8> {
    let env = Envelope::current(kind, params, body);
    // Serializing plain structs into a Vec cannot fail.
    let mut out = postcard::to_allocvec(&env).unwrap_or_default();
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// [`encode`] for secret bytes: the envelope is written into one buffer sized up front and
/// copied once into the result, both zeroed when dropped. (A `Vec` that grows while it is
/// written leaves the secret in the freed buffers it outgrew.)
pub fn encode_secret(kind: Kind, params: &Params, body: &[u8]) -> Zeroizing<Vec<u8>> {
    let env = Envelope::current(kind, params, body);
    // Magic, version, kind and fingerprint take at most 44 bytes, the body's length at most
    // 10: 64 leaves room to spare.
    let mut scratch = Zeroizing::new(vec![0u8; body.len() + 64]);
    let Ok(used) = postcard::to_slice(&env, &mut scratch[..]).map(|s| s.len()) else {
        // Not reachable with the bound above; the allocating path is correct, only less tidy.
        return Zeroizing::new(encode(kind, params, &body));
    };
    let mut out = Zeroizing::new(Vec::with_capacity(used + CHECKSUM));
    out.extend_from_slice(&scratch[..used]);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// The envelope's bytes without its checksum, once verified (version 2), or whole
/// (version 1).
fn verified(bytes: &[u8], version: u16) -> Result<&[u8], RlweError> {
    if version < 2 {
        return Ok(bytes);
    }
    let split = bytes
        .len()
        .checked_sub(CHECKSUM)
        .ok_or(RlweError::Malformed {
            what: "object shorter than its checksum",
        })?;
    let (body, sum) = bytes.split_at(split);
    if blake3::hash(body).as_bytes()[..] != sum[..] {
        return Err(RlweError::Malformed {
            what: "checksum (the object was damaged)",
        });
    }
    Ok(body)
}

/// Decodes a whole envelope: trailing bytes are refused (so that a version-2 object
/// relabelled as version 1 does not skip its checksum).
fn whole<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, RlweError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|_| RlweError::Malformed { what })?;
    if !rest.is_empty() {
        return Err(RlweError::Malformed { what });
    }
    Ok(value)
}

/// Decodes and checks an envelope; `limit` bounds the input size in bytes.
///
/// # Errors
/// [`RlweError::TooLarge`], [`RlweError::Malformed`], [`RlweError::UnsupportedVersion`],
/// [`RlweError::WrongKind`], [`RlweError::ParamsMismatch`].
pub fn decode<T: DeserializeOwned>(
    kind: Kind,
    params: &Params,
    bytes: &[u8],
    limit: usize,
) -> Result<T, RlweError> {
    let version = check_head(kind, Some(params), bytes, limit)?;
    let env: Envelope<T> = whole(verified(bytes, version)?, "object body")?;
    Ok(env.body)
}

/// Checks the size, magic, version, kind and (when given) parameters of an envelope; its
/// format version.
fn check_head(
    kind: Kind,
    params: Option<&Params>,
    bytes: &[u8],
    limit: usize,
) -> Result<u16, RlweError> {
    if bytes.len() > limit {
        return Err(RlweError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (head, _): (EnvelopeHead, _) =
        postcard::take_from_bytes(bytes).map_err(|_| RlweError::Malformed {
            what: "object header",
        })?;
    if head.magic != MAGIC {
        return Err(RlweError::Malformed {
            what: "magic bytes (not a hecnn object)",
        });
    }
    if !(1..=FORMAT_VERSION).contains(&head.version) {
        return Err(RlweError::UnsupportedVersion {
            found: head.version,
            supported: FORMAT_VERSION,
        });
    }
    if head.kind != kind {
        return Err(RlweError::WrongKind {
            expected: format!("{kind:?}"),
            found: format!("{:?}", head.kind),
        });
    }
    if let Some(p) = params
        && head.fingerprint != p.fingerprint()
    {
        return Err(RlweError::ParamsMismatch);
    }
    Ok(head.version)
}

/// A polynomial on the wire: live limb counts and raw little-endian words.
#[derive(Serialize, Deserialize)]
pub struct PolyWire {
    q: u32,
    p: u32,
    words: Vec<u8>,
}

impl PolyWire {
    /// Downloads and packs a polynomial.
    ///
    /// # Errors
    /// Backend transfer failures.
    pub fn pack<B: Backend>(
        be: &B,
        params: &Params,
        poly: &RnsPoly<B, Eval>,
    ) -> Result<Self, RlweError> {
        let host = poly.to_host(be, params.ctx())?;
        let basis = poly.basis();
        Ok(Self {
            q: basis.q as u32,
            p: basis.p as u32,
            words: bytemuck::cast_slice(&host).to_vec(),
        })
    }

    /// Validates and uploads a polynomial; `expect` fixes the basis when it is known.
    ///
    /// # Errors
    /// [`RlweError::Malformed`] for a wrong basis, length or unreduced words.
    pub fn unpack<B: Backend>(
        &self,
        be: &B,
        params: &Params,
        expect: Option<Basis>,
    ) -> Result<RnsPoly<B, Eval>, RlweError> {
        let ctx = params.ctx();
        let basis = Basis::qp(self.q as usize, self.p as usize);
        if basis.q == 0 || basis.q > ctx.q_count() || basis.p > ctx.p_count() {
            return Err(RlweError::Malformed { what: "limb count" });
        }
        if expect.is_some_and(|e| e != basis) {
            return Err(RlweError::Malformed { what: "basis" });
        }
        if self.words.len() != basis.len() * params.n() * 8 {
            return Err(RlweError::Malformed {
                what: "polynomial length",
            });
        }
        let words: Vec<u64> = self
            .words
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        RnsPoly::from_host(be, ctx, basis, &words).map_err(|_| RlweError::Malformed {
            what: "unreduced polynomial coefficients",
        })
    }
}

#[derive(Serialize, Deserialize)]
struct CiphertextWire {
    parts: Vec<PolyWire>,
    /// (expansion algorithm id, seed of c_1) for seed-compressed ciphertexts.
    seed: Option<(u8, [u8; 32])>,
}

#[derive(Serialize, Deserialize)]
struct SwitchingKeyWire {
    galois: Option<u64>,
    b: Vec<PolyWire>,
    seeds: Vec<[u8; 32]>,
    expansion: u8,
}

#[derive(Serialize, Deserialize)]
struct EvaluationKeysWire {
    key_id: [u8; 32],
    relin: Option<SwitchingKeyWire>,
    galois: Vec<SwitchingKeyWire>,
}

#[derive(Serialize, Deserialize)]
struct EncapsulationKeysWire {
    key_id: [u8; 32],
    weight: u64,
    /// `s → s'`, in the restricted ring `q_0·p_0`.
    to_sparse: SwitchingKeyWire,
    /// `s' → s`, over all of `Q ∪ P`.
    to_dense: SwitchingKeyWire,
}

#[derive(Serialize, Deserialize)]
struct PublicKeyWire {
    key_id: [u8; 32],
    b: PolyWire,
    seed: [u8; 32],
    expansion: u8,
}

#[derive(Serialize, Deserialize)]
struct ParamsWire {
    literal: ParamsLiteral,
    q: Vec<u64>,
    p: Vec<u64>,
}

fn check_expansion(id: u8) -> Result<(), RlweError> {
    if id == UNIFORM_EXPANSION_ID {
        Ok(())
    } else {
        Err(RlweError::Malformed {
            what: "unknown seed-expansion algorithm",
        })
    }
}

impl Params {
    /// Serializes the parameters (literal and generated primes).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            Kind::Params,
            self,
            &ParamsWire {
                literal: self.literal().clone(),
                q: self.q().to_vec(),
                p: self.p().to_vec(),
            },
        )
    }

    /// Loads parameters, rebuilding (and re-checking security of) the literal, and verifying
    /// that the primes and fingerprint match.
    ///
    /// # Errors
    /// Malformed data, a failed security check, or mismatching primes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Arc<Self>, RlweError> {
        let version = check_head(Kind::Params, None, bytes, 1 << 20)?;
        let env: Envelope<ParamsWire> = whole(verified(bytes, version)?, "parameters")?;
        let params = env.body.literal.build()?;
        if params.q() != env.body.q.as_slice()
            || params.p() != env.body.p.as_slice()
            || params.fingerprint() != env.fingerprint
        {
            return Err(RlweError::ParamsMismatch);
        }
        Ok(Arc::new(params))
    }
}

/// Upper bound on the serialized size of a ciphertext of degree ≤ 2 for these parameters.
pub fn ciphertext_limit(params: &Params) -> usize {
    3 * params.poly_bytes(params.max_level()) + 4096
}

impl<B: Backend> Ciphertext<B> {
    /// Serializes (seed-compressed when possible).
    ///
    /// # Errors
    /// Backend transfer failures.
    pub fn to_bytes(&self, be: &B, params: &Params) -> Result<Vec<u8>, RlweError> {
        let wire = self.to_wire(be, params)?;
        Ok(encode(Kind::Ciphertext, params, &wire))
    }

    fn to_wire(&self, be: &B, params: &Params) -> Result<CiphertextWire, RlweError> {
        let (parts, seed) = match (self.seed(), self.parts()) {
            (Some(seed), [c0, _]) => (vec![c0], Some((UNIFORM_EXPANSION_ID, *seed))),
            _ => (self.parts().iter().collect(), None),
        };
        Ok(CiphertextWire {
            parts: parts
                .into_iter()
                .map(|p| PolyWire::pack(be, params, p))
                .collect::<Result<_, _>>()?,
            seed,
        })
    }

    /// Loads and validates a ciphertext for `params`.
    ///
    /// # Errors
    /// Size, format, fingerprint and content errors.
    pub fn from_bytes(be: &B, params: &Params, bytes: &[u8]) -> Result<Self, RlweError> {
        let wire: CiphertextWire =
            decode(Kind::Ciphertext, params, bytes, ciphertext_limit(params))?;
        Self::from_wire(be, params, &wire)
    }

    fn from_wire(be: &B, params: &Params, wire: &CiphertextWire) -> Result<Self, RlweError> {
        let first = wire.parts.first().ok_or(RlweError::Malformed {
            what: "ciphertext without components",
        })?;
        let basis = Basis::q(first.q as usize);
        let mut parts = wire
            .parts
            .iter()
            .map(|p| p.unpack(be, params, Some(basis)))
            .collect::<Result<Vec<_>, _>>()?;
        match wire.seed {
            Some((id, seed)) => {
                check_expansion(id)?;
                if parts.len() != 1 {
                    return Err(RlweError::Malformed {
                        what: "seeded ciphertext component count",
                    });
                }
                parts.push(uniform_eval(be, params, basis, &seed)?);
                Ok(Ciphertext::with_seed(parts, Some(seed)))
            }
            None => {
                if parts.len() > 3 {
                    return Err(RlweError::Malformed {
                        what: "ciphertext degree",
                    });
                }
                Ciphertext::from_parts(parts)
            }
        }
    }
}

/// Serializes a scheme-level ciphertext: the RLWE ciphertext plus scheme metadata `M`.
///
/// # Errors
/// Backend transfer failures.
pub fn encode_with_meta<B: Backend, M: Serialize>(
    be: &B,
    params: &Params,
    ct: &Ciphertext<B>,
    meta: &M,
) -> Result<Vec<u8>, RlweError> {
    let wire = ct.to_wire(be, params)?;
    Ok(encode(Kind::Scheme, params, &(meta, wire)))
}

/// Loads a scheme-level ciphertext written by [`encode_with_meta`].
///
/// # Errors
/// Size, format, fingerprint and content errors.
pub fn decode_with_meta<B: Backend, M: DeserializeOwned>(
    be: &B,
    params: &Params,
    bytes: &[u8],
) -> Result<(Ciphertext<B>, M), RlweError> {
    let (meta, wire): (M, CiphertextWire) =
        decode(Kind::Scheme, params, bytes, ciphertext_limit(params))?;
    Ok((Ciphertext::from_wire(be, params, &wire)?, meta))
}

impl<B: Backend> PublicKey<B> {
    /// Serializes `b` and the seed of `a`.
    ///
    /// # Errors
    /// Backend transfer failures.
    pub fn to_bytes(&self, be: &B) -> Result<Vec<u8>, RlweError> {
        let wire = PublicKeyWire {
            key_id: self.id,
            b: PolyWire::pack(be, &self.params, &self.b)?,
            seed: self.seed,
            expansion: UNIFORM_EXPANSION_ID,
        };
        Ok(encode(Kind::PublicKey, &self.params, &wire))
    }

    /// Loads a public key.
    ///
    /// # Errors
    /// Size, format, fingerprint and content errors.
    pub fn from_bytes(be: &B, params: &Arc<Params>, bytes: &[u8]) -> Result<Self, RlweError> {
        let wire: PublicKeyWire = decode(
            Kind::PublicKey,
            params,
            bytes,
            params.poly_bytes(params.max_level()) + 4096,
        )?;
        check_expansion(wire.expansion)?;
        let b = wire
            .b
            .unpack(be, params, Some(Basis::q(params.q().len())))?;
        Self::from_b_and_seed(be, params, wire.key_id, b, wire.seed)
    }
}

impl<B: Backend> SwitchingKey<B> {
    fn to_wire(
        &self,
        be: &B,
        params: &Params,
        galois: Option<usize>,
    ) -> Result<SwitchingKeyWire, RlweError> {
        Ok(SwitchingKeyWire {
            galois: galois.map(|g| g as u64),
            b: self
                .parts
                .iter()
                .map(|(b, _)| PolyWire::pack(be, params, b))
                .collect::<Result<_, _>>()?,
            seeds: self.seeds.clone(),
            expansion: UNIFORM_EXPANSION_ID,
        })
    }

    /// Loads a key over all of `Q ∪ P` or restricted to a prefix `Q_k ∪ P`: every digit's
    /// `b` over the same basis, one digit per gadget digit meeting `Q_k`.
    fn from_wire(
        be: &B,
        params: &Params,
        wire: &SwitchingKeyWire,
        storage: KeyStorage,
    ) -> Result<Self, RlweError> {
        check_expansion(wire.expansion)?;
        let ctx = params.ctx();
        let q = wire.b.first().map_or(0, |b| b.q as usize);
        if q == 0 || q > ctx.q_count() {
            return Err(RlweError::Malformed {
                what: "switching-key limb count",
            });
        }
        let basis = Basis::qp(q, ctx.p_count());
        let digits = params.digits_at(q - 1);
        if wire.b.len() != digits || wire.seeds.len() != digits {
            return Err(RlweError::Malformed {
                what: "switching-key digit count",
            });
        }
        let mut parts = Vec::with_capacity(wire.b.len());
        for (b, seed) in wire.b.iter().zip(&wire.seeds) {
            let b = b.unpack(be, params, Some(basis))?;
            let a = match storage {
                KeyStorage::Expanded => Some(uniform_eval(be, params, basis, seed)?),
                KeyStorage::Compact => None,
            };
            parts.push((b, a));
        }
        Ok(Self {
            parts,
            seeds: wire.seeds.clone(),
            basis,
        })
    }
}

impl<B: Backend> EvaluationKeys<B> {
    /// Serializes the relinearization and Galois keys (seed-compressed).
    ///
    /// # Errors
    /// Backend transfer failures.
    pub fn to_bytes(&self, be: &B) -> Result<Vec<u8>, RlweError> {
        let params = &self.params;
        let wire = EvaluationKeysWire {
            key_id: self.id,
            relin: self
                .relin
                .as_ref()
                .map(|r| r.0.to_wire(be, params, None))
                .transpose()?,
            galois: self
                .galois
                .values()
                .map(|g| g.key.to_wire(be, params, Some(g.galois)))
                .collect::<Result<_, _>>()?,
        };
        Ok(encode(Kind::EvaluationKeys, params, &wire))
    }

    /// Loads evaluation keys; `max_keys` bounds the number of switching keys accepted.
    ///
    /// # Errors
    /// Size, format, fingerprint and content errors.
    pub fn from_bytes(
        be: &B,
        params: &Arc<Params>,
        bytes: &[u8],
        max_keys: usize,
    ) -> Result<Self, RlweError> {
        Self::from_bytes_with(be, params, bytes, max_keys, KeyStorage::Expanded)
    }

    /// As [`EvaluationKeys::from_bytes`], each key held as `storage` says.
    ///
    /// # Errors
    /// Size, format, fingerprint and content errors.
    pub fn from_bytes_with(
        be: &B,
        params: &Arc<Params>,
        bytes: &[u8],
        max_keys: usize,
        storage: KeyStorage,
    ) -> Result<Self, RlweError> {
        let limit = max_keys.saturating_mul(params.switching_key_bytes() + 4096);
        let wire: EvaluationKeysWire = decode(Kind::EvaluationKeys, params, bytes, limit)?;
        let relin = wire
            .relin
            .as_ref()
            .map(|w| SwitchingKey::from_wire(be, params, w, storage).map(RelinKey))
            .transpose()?;
        let mut keys = EvaluationKeys {
            params: Arc::clone(params),
            id: wire.key_id,
            relin,
            galois: Default::default(),
        };
        for w in &wire.galois {
            let g = w.galois.ok_or(RlweError::Malformed {
                what: "Galois key without element",
            })? as usize;
            params.ctx().check_galois(g)?;
            keys.insert_galois(GaloisKey {
                galois: g,
                key: SwitchingKey::from_wire(be, params, w, storage)?,
            });
        }
        Ok(keys)
    }
}

impl<B: Backend> EncapsulationKeys<B> {
    /// Serializes both keys (seed-compressed). The restricted ring of the sparse-secret key
    /// follows from the parameters and the weight, so only the weight is written.
    ///
    /// # Errors
    /// Backend transfer failures.
    pub fn to_bytes(&self, be: &B) -> Result<Vec<u8>, RlweError> {
        let wire = EncapsulationKeysWire {
            key_id: self.id,
            weight: self.weight as u64,
            to_sparse: self.to_sparse.to_wire(be, &self.small, None)?,
            to_dense: self.to_dense.to_wire(be, &self.params, None)?,
        };
        Ok(encode(Kind::EncapsulationKeys, &self.params, &wire))
    }

    /// Loads encapsulation keys made for `params`, the dense key held as `storage` says
    /// (the sparse-secret key is two limbs and always expanded).
    ///
    /// # Errors
    /// Size, format, fingerprint and content errors; a weight outside `1..=N`; a key that
    /// does not span its whole ring (encapsulation keys are never restricted to a level).
    pub fn from_bytes_with(
        be: &B,
        params: &Arc<Params>,
        bytes: &[u8],
        storage: KeyStorage,
    ) -> Result<Self, RlweError> {
        // The dense key plus the two-limb one, with room for the envelope.
        let limit = params
            .switching_key_bytes()
            .saturating_mul(2)
            .saturating_add(8192);
        let wire: EncapsulationKeysWire = decode(Kind::EncapsulationKeys, params, bytes, limit)?;
        if wire.to_sparse.galois.is_some() || wire.to_dense.galois.is_some() {
            return Err(RlweError::Malformed {
                what: "encapsulation key with a Galois element",
            });
        }
        let weight = usize::try_from(wire.weight).map_err(|_| RlweError::Malformed {
            what: "encapsulation weight",
        })?;
        let small = crate::encapsulation::small_params(params, weight)?;
        let to_sparse = SwitchingKey::from_wire(be, &small, &wire.to_sparse, KeyStorage::Expanded)?;
        let to_dense = SwitchingKey::from_wire(be, params, &wire.to_dense, storage)?;
        let full = |k: &SwitchingKey<B>, p: &Params| k.basis.q == p.ctx().q_count();
        if !full(&to_sparse, &small) || !full(&to_dense, params) {
            return Err(RlweError::Malformed {
                what: "encapsulation key restricted to a level",
            });
        }
        Ok(Self {
            params: Arc::clone(params),
            small,
            id: wire.key_id,
            weight,
            to_sparse,
            to_dense,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SecretDistribution, SecretKey, SecurityLevel};
    use hecnn_ring::{CpuBackend, Prng};

    fn params() -> Arc<Params> {
        let lit = ParamsLiteral {
            log_n: 10,
            log_q: vec![55, 40, 40, 40],
            log_p: vec![55, 55],
            dnum: Some(2),
            secret: SecretDistribution::Ternary,
            security: SecurityLevel::UncheckedForReproduction,
        };
        Arc::new(lit.build().unwrap())
    }

    /// The secret path writes the same bytes as the general one (files stay readable), for
    /// bodies of every length class the length prefix has.
    #[test]
    fn secret_encoding_is_the_envelope_byte_for_byte() {
        let params = params();
        for len in [0usize, 1, 127, 128, 1 << 14, (1 << 16) + 32] {
            let body: Vec<u8> = (0..len).map(|i| (i % 3) as u8).collect();
            let general = encode(Kind::SecretKey, &params, &body.as_slice());
            let secret = encode_secret(Kind::SecretKey, &params, &body);
            assert_eq!(general, *secret, "body of {len} bytes");
            assert_eq!(secret.capacity(), secret.len(), "one allocation, exact");
        }
    }

    /// Parameters read from bytes are bounded before any prime is generated: a small file
    /// asking for thousands of primes at N = 2^17 (found by `fuzz/`, target `rlwe_serial`:
    /// gigabytes of NTT tables) is refused at once, as is one just past the bound.
    #[test]
    fn parameters_asking_for_too_many_primes_are_refused_before_generation() {
        let params = params();
        // The huge one last: without the bound the small ones fail first (a mismatch of
        // primes instead of the bound), before the huge one exhausts memory.
        for (log_n, q_count, p_count) in [
            (4, crate::MAX_Q_PRIMES + 1, 1),
            (4, 2, crate::MAX_P_PRIMES + 1),
            (17, 20_000, 1),
        ] {
            let wire = ParamsWire {
                literal: ParamsLiteral {
                    log_n,
                    log_q: vec![40; q_count],
                    log_p: vec![55; p_count],
                    dnum: None,
                    secret: SecretDistribution::Ternary,
                    security: SecurityLevel::UncheckedForReproduction,
                },
                q: vec![],
                p: vec![],
            };
            let bytes = encode(Kind::Params, &params, &wire);
            // The bound's message: refused before generation, not for a mismatch after it.
            let err = Params::from_bytes(&bytes).unwrap_err();
            assert!(
                matches!(&err, RlweError::InvalidParams { reason } if reason.contains("at most")),
                "{q_count} Q and {p_count} P primes: {err}"
            );
        }
        // The bound leaves room for every chain hecnn builds (at most 64 primes).
        let mut lit = params.literal().clone();
        lit.log_q = vec![40; 64];
        lit.log_n = 4;
        let built = lit.build();
        assert!(
            !matches!(&built, Err(RlweError::InvalidParams { reason }) if reason.contains("at most")),
            "64 primes refused by the bound"
        );
    }

    /// A restricted key's digits must all share one basis, and a key needs at least one
    /// digit: wires that break either are refused, not loaded or indexed out of bounds.
    #[test]
    fn switching_key_wires_with_mixed_bases_or_no_digits_are_refused() {
        let params = params();
        let be = CpuBackend::new(1).unwrap();
        let mut rng = Prng::from_seed([5; 32]);
        let sk = SecretKey::generate(&params, &mut rng).unwrap();
        let full = sk.galois_key_at(&be, 5, 3, &mut rng).unwrap();
        let low = sk.galois_key_at(&be, 5, 1, &mut rng).unwrap();
        let full = full.key.to_wire(&be, &params, Some(5)).unwrap();
        let low = low.key.to_wire(&be, &params, Some(5)).unwrap();
        assert_eq!(full.b.len(), 2);
        assert_eq!(low.b.len(), 1);
        for storage in [KeyStorage::Expanded, KeyStorage::Compact] {
            let load = |w: &SwitchingKeyWire| {
                SwitchingKey::<CpuBackend>::from_wire(&be, &params, w, storage)
            };
            assert!(load(&full).is_ok());
            assert!(load(&low).is_ok());
            // The right digit count, but the second digit over the low key's basis.
            let mixed = SwitchingKeyWire {
                galois: Some(5),
                b: vec![clone_poly(&full.b[0]), clone_poly(&low.b[0])],
                seeds: full.seeds.clone(),
                expansion: full.expansion,
            };
            assert!(load(&mixed).is_err());
            let empty = SwitchingKeyWire {
                galois: Some(5),
                b: vec![],
                seeds: vec![],
                expansion: full.expansion,
            };
            assert!(matches!(load(&empty), Err(RlweError::Malformed { .. })));
            // Digits without their seeds.
            let unseeded = SwitchingKeyWire {
                galois: Some(5),
                b: full.b.iter().map(clone_poly).collect(),
                seeds: vec![full.seeds[0]],
                expansion: full.expansion,
            };
            assert!(matches!(load(&unseeded), Err(RlweError::Malformed { .. })));
        }
    }

    /// Encapsulation-key files with a Galois element, an impossible weight, a key
    /// restricted to a level or too many bytes are refused.
    #[test]
    fn malformed_encapsulation_keys_are_refused() {
        let params = params();
        let be = CpuBackend::new(1).unwrap();
        let mut rng = Prng::from_seed([6; 32]);
        let sk = SecretKey::generate(&params, &mut rng).unwrap();
        let keys = sk.encapsulation_keys(&be, 8, &mut rng).unwrap();
        let bytes = keys.to_bytes(&be).unwrap();
        let load = |b: &[u8]| {
            EncapsulationKeys::<CpuBackend>::from_bytes_with(&be, &params, b, KeyStorage::Expanded)
        };
        assert_eq!(load(&bytes).unwrap().weight(), 8);
        let wire = || -> EncapsulationKeysWire {
            decode(Kind::EncapsulationKeys, &params, &bytes, usize::MAX).unwrap()
        };
        let reencode = |w: &EncapsulationKeysWire| encode(Kind::EncapsulationKeys, &params, w);

        let mut w = wire();
        w.to_dense.galois = Some(5);
        assert!(matches!(
            load(&reencode(&w)),
            Err(RlweError::Malformed { .. })
        ));
        for weight in [0, params.n() as u64 + 1, u64::MAX] {
            let mut w = wire();
            w.weight = weight;
            assert!(load(&reencode(&w)).is_err(), "weight {weight}");
        }
        let restricted = sk.galois_key_at(&be, 5, 1, &mut rng).unwrap();
        let mut w = wire();
        w.to_dense = restricted.key.to_wire(&be, &params, None).unwrap();
        assert!(matches!(
            load(&reencode(&w)),
            Err(RlweError::Malformed { .. })
        ));
        let mut padded = bytes.clone();
        padded.resize(2 * params.switching_key_bytes() + 8193, 0);
        assert!(matches!(load(&padded), Err(RlweError::TooLarge { .. })));
    }

    fn clone_poly(p: &PolyWire) -> PolyWire {
        PolyWire {
            q: p.q,
            p: p.p,
            words: p.words.clone(),
        }
    }
}
