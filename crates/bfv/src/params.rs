//! BFV parameters (RLWE parameters plus the plaintext modulus `t`), their derived RNS
//! constants, and named presets.
//!
//! Assumptions on `t`: `2 ≤ t < 2^60` and `t` coprime with every ciphertext prime (so `Q` is
//! invertible modulo `t`, which exact decryption needs). `t` may exceed a ciphertext prime;
//! nothing requires `t < q_i`. Batching additionally needs `t` prime and `t ≡ 1 (mod 2N)`.
//! Useful parameters have `Q_l ≫ t` at every level used: a level whose `Q_l` is below
//! `2t·N` has no noise budget left.

use std::sync::Arc;

use hecnn_ring::{Modulus, RnsContext, prime};
use hecnn_rlwe::{Params, ParamsLiteral, SecretDistribution, SecurityLevel};

use crate::BfvError;
use crate::rns::{ExactScaler, HpsScaler, inv_mod, mul_mod};

/// Largest supported plaintext modulus (exclusive).
pub const MAX_PLAIN_MODULUS: u64 = 1 << 60;

/// Bit size of the auxiliary primes `R` of the HPS multiplication.
const AUX_PRIME_BITS: u32 = 60;

/// Constants of one level `l` (the basis `Q_l = q_0 ⋯ q_l`).
#[derive(Debug)]
pub(crate) struct LevelConsts {
    /// `[⌊Q_l/t⌋]_{q_i}` for `i ≤ l`.
    pub(crate) delta: Vec<u64>,
    /// `[Q_l]_t`.
    pub(crate) q_mod_t: u64,
    /// HPS scale-and-round over `Q_l ∪ R`.
    pub(crate) hps: HpsScaler,
    /// Exact decryption over `Q_l`.
    pub(crate) exact: ExactScaler,
    /// `log2 Q_l`.
    pub(crate) log_q: f64,
}

/// BFV parameters: checked RLWE parameters, the plaintext modulus `t`, and what the scheme
/// derives from them (`Δ_l = ⌊Q_l/t⌋` in RNS form per level, the auxiliary basis `R` and
/// its context for the HPS multiplication, the exact-decryption constants).
pub struct BfvParams {
    rlwe: Arc<Params>,
    t: u64,
    batching: bool,
    fingerprint: [u8; 32],
    levels: Vec<LevelConsts>,
    /// `Q` followed by `R` (as the context's "special" primes): the tensor-product ring.
    aux: Arc<RnsContext>,
}

impl std::fmt::Debug for BfvParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BfvParams")
            .field("log_n", &self.rlwe.log_n())
            .field("log_qp", &self.rlwe.log_qp())
            .field("t", &self.t)
            .field("batching", &self.batching)
            .field("aux_primes", &self.aux.p_count())
            .finish()
    }
}

impl BfvParams {
    /// Wraps checked RLWE parameters with the plaintext modulus `t`.
    ///
    /// # Errors
    /// [`BfvError::InvalidPlainModulus`] if `t < 2`, `t ≥ 2^60`, or `t` shares a factor with
    /// a ciphertext prime; ring errors while building the auxiliary basis.
    pub fn new(rlwe: Arc<Params>, t: u64) -> Result<Self, BfvError> {
        let bad = |reason| BfvError::InvalidPlainModulus { t, reason };
        if t < 2 {
            return Err(bad("must be at least 2"));
        }
        if t >= MAX_PLAIN_MODULUS {
            return Err(bad("must be below 2^60"));
        }
        if rlwe.q().iter().any(|&q| t.is_multiple_of(q)) {
            return Err(bad("must be coprime with every ciphertext prime"));
        }
        let n = rlwe.n() as u64;
        let batching = prime::is_prime(t) && t % (2 * n) == 1;
        let log_n = rlwe.log_n();

        // R > 2^4·t·N·Q (see `rns`): enough 60-bit primes, distinct from Q, P (and t).
        let need = rlwe.log_q() + (t as f64).log2() + log_n as f64 + 4.0;
        let count = (need / (AUX_PRIME_BITS as f64 - 1.0)).ceil() as usize;
        let mut taken: Vec<u64> = rlwe.q().iter().chain(rlwe.p()).copied().collect();
        taken.push(t);
        let r = prime::ntt_primes_excluding(AUX_PRIME_BITS, log_n, count, &taken)?;
        let aux = Arc::new(RnsContext::new(log_n, rlwe.q(), &r, rlwe.ctx().ntt_kind())?);
        let r_mod: Vec<Modulus> = aux
            .p_values()
            .iter()
            .map(|&v| Modulus::new(v))
            .collect::<Result<_, _>>()?;

        let q_mod: Vec<Modulus> = rlwe.ctx().moduli()[..rlwe.q().len()].to_vec();
        let mut levels = Vec::with_capacity(q_mod.len());
        for l in 0..q_mod.len() {
            let q = &q_mod[..=l];
            // ⌊Q/t⌋ = (Q − [Q]_t)/t ≡ −[Q]_t·t^{-1} (mod q_i).
            let q_mod_t = q
                .iter()
                .fold(1 % t, |acc, m| mul_mod(acc, m.value() % t, t));
            let delta = q
                .iter()
                .map(|m| {
                    let t_inv = m.inv(m.reduce(t))?;
                    Ok(m.mul(m.neg(m.reduce(q_mod_t)), t_inv))
                })
                .collect::<Result<Vec<_>, hecnn_ring::RingError>>()?;
            if inv_mod(q_mod_t, t).is_none() {
                return Err(bad("must be coprime with Q"));
            }
            levels.push(LevelConsts {
                delta,
                q_mod_t,
                hps: HpsScaler::new(q, &r_mod, t)?,
                exact: ExactScaler::new(q, t)?,
                log_q: q.iter().map(|m| (m.value() as f64).log2()).sum(),
            });
        }
        Ok(Self {
            fingerprint: fingerprint_for(&rlwe, t),
            rlwe,
            t,
            batching,
            levels,
            aux,
        })
    }

    /// Builds a literal and wraps it.
    ///
    /// # Errors
    /// Parameter generation and security-check failures; see [`BfvParams::new`].
    pub fn from_literal(lit: &ParamsLiteral, t: u64) -> Result<Self, BfvError> {
        Self::new(Arc::new(lit.build()?), t)
    }

    /// The RLWE parameters.
    pub fn rlwe(&self) -> &Arc<Params> {
        &self.rlwe
    }
    /// The plaintext modulus `t`.
    pub fn t(&self) -> u64 {
        self.t
    }
    /// Whether the batching encoder is available (`t` prime, `t ≡ 1 mod 2N`).
    pub fn batching(&self) -> bool {
        self.batching
    }
    /// Ring degree `N` (also the number of slots with batching).
    pub fn n(&self) -> usize {
        self.rlwe.n()
    }
    /// Highest level (number of ciphertext primes − 1).
    pub fn max_level(&self) -> usize {
        self.rlwe.max_level()
    }
    /// `log2 Q_l` at `level` (0 for a level above the maximum).
    pub fn log_q_at(&self, level: usize) -> f64 {
        self.levels.get(level).map_or(0.0, |l| l.log_q)
    }
    /// The auxiliary primes `R` of the HPS multiplication.
    pub fn aux_primes(&self) -> Vec<u64> {
        self.aux.p_values()
    }
    /// `Δ_l = ⌊Q_l/t⌋` in RNS form (one residue per prime of `Q_l`).
    ///
    /// # Errors
    /// [`BfvError::InvalidArgument`] for a level above [`BfvParams::max_level`].
    pub fn delta(&self, level: usize) -> Result<&[u64], BfvError> {
        Ok(&self.level(level)?.delta)
    }
    /// Stable fingerprint: the RLWE fingerprint and `t`.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    pub(crate) fn level(&self, level: usize) -> Result<&LevelConsts, BfvError> {
        self.levels.get(level).ok_or(BfvError::InvalidArgument {
            what: "level above the parameters' maximum",
        })
    }

    /// Tensor products whose sum one HPS scaling at `level` handles exactly: `R` is sized
    /// for one product (`R > 2^4·t·N·Q`, see [`crate::rns`]), and a sum of `k` grows the
    /// scaled value by up to `k`, so `k` may reach `2^⌊log2 R − log2(2^4·t·N·Q_level)⌋`.
    pub(crate) fn dot_capacity(&self, level: usize) -> usize {
        let log_r: f64 = self.aux.p_values().iter().map(|&r| (r as f64).log2()).sum();
        let need =
            self.log_q_at(level) + (self.t as f64).log2() + f64::from(self.rlwe.log_n()) + 4.0;
        let slack = (log_r - need).floor().clamp(0.0, 20.0);
        1usize << slack as u32
    }

    pub(crate) fn aux(&self) -> &RnsContext {
        &self.aux
    }

    pub(crate) fn check(&self, fingerprint: &[u8; 32]) -> Result<(), BfvError> {
        if *fingerprint == self.fingerprint {
            Ok(())
        } else {
            Err(BfvError::ParamsMismatch)
        }
    }

    pub(crate) fn check_rlwe(&self, rlwe: &Params) -> Result<(), BfvError> {
        if rlwe.fingerprint() == self.rlwe.fingerprint() {
            Ok(())
        } else {
            Err(BfvError::ParamsMismatch)
        }
    }

    /// `t` centered into `(−t/2, t/2]`.
    pub(crate) fn center(&self, v: u64) -> i64 {
        if v > self.t / 2 {
            v as i64 - self.t as i64
        } else {
            v as i64
        }
    }
}

/// The fingerprint of BFV parameters: the RLWE parameters' and `t`.
pub(crate) fn fingerprint_for(rlwe: &Params, t: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"hecnn/bfv/params/v1");
    h.update(&rlwe.fingerprint());
    h.update(&t.to_le_bytes());
    *h.finalize().as_bytes()
}

/// A named BFV preset. Names carry `N` (as `log2 N`), the total `log2(QP)` of the generated
/// primes, `t`, and the security level where it is not 128 bits. All use a uniform ternary
/// secret, σ = 3.2, hybrid key switching with one special prime per digit, and
/// `t = 65537` (prime, `≡ 1 mod 2^17`: batching for every `N ≤ 2^16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// N = 2^13, three 54-bit ciphertext primes and one 54-bit special prime (log QP ≈ 216,
    /// bound 218), 128-bit. Measured: 141 bits of fresh noise budget (secret-key
    /// encryption), about 27 bits per multiplication: depth 5.
    N13Qp216T65537,
    /// N = 2^14, six 54-bit ciphertext primes and two 54-bit special primes (log QP ≈ 432,
    /// bound 438), 128-bit. Measured: 303 bits of fresh budget, about 29 bits per
    /// multiplication: depth 10.
    N14Qp432T65537,
    /// N = 2^14, four 50-bit ciphertext primes and two 50-bit special primes (log QP ≈ 300,
    /// bound 305), 192-bit. About 170 bits of fresh budget (log Q − 30): depth 5.
    N14Qp300T65537S192,
    /// N = 2^14, three 54-bit ciphertext primes and one 54-bit special prime (log QP ≈ 216,
    /// bound 237), 256-bit. About 130 bits of fresh budget: depth 4.
    N14Qp216T65537S256,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 4] = [
        Preset::N13Qp216T65537,
        Preset::N14Qp432T65537,
        Preset::N14Qp300T65537S192,
        Preset::N14Qp216T65537S256,
    ];

    /// The preset's name, e.g. `N13_QP216_T65537`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::N13Qp216T65537 => "N13_QP216_T65537",
            Preset::N14Qp432T65537 => "N14_QP432_T65537",
            Preset::N14Qp300T65537S192 => "N14_QP300_T65537_S192",
            Preset::N14Qp216T65537S256 => "N14_QP216_T65537_S256",
        }
    }

    /// Looks a preset up by name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The plaintext modulus.
    pub fn t(self) -> u64 {
        65537
    }

    /// The RLWE parameter literal.
    pub fn literal(self) -> ParamsLiteral {
        let (log_n, bits, q_count, p_count, security) = match self {
            Preset::N13Qp216T65537 => (13, 54, 3, 1, SecurityLevel::Bits128),
            Preset::N14Qp432T65537 => (14, 54, 6, 2, SecurityLevel::Bits128),
            Preset::N14Qp300T65537S192 => (14, 50, 4, 2, SecurityLevel::Bits192),
            Preset::N14Qp216T65537S256 => (14, 54, 3, 1, SecurityLevel::Bits256),
        };
        ParamsLiteral {
            log_n,
            log_q: vec![bits; q_count],
            log_p: vec![bits; p_count],
            dnum: None,
            secret: SecretDistribution::Ternary,
            security,
        }
    }

    /// Builds the checked parameters (security checked on the generated primes).
    ///
    /// # Errors
    /// Never for the shipped presets (they are checked in tests); kept fallible because the
    /// security check runs on the generated primes.
    pub fn build(self) -> Result<Arc<BfvParams>, BfvError> {
        Ok(Arc::new(BfvParams::from_literal(
            &self.literal(),
            self.t(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_build_and_match_their_names() {
        for p in Preset::ALL {
            let params = p.build().unwrap();
            let qp = params.rlwe().log_qp().round() as u32;
            assert!(
                p.name().contains(&format!("QP{qp}_")),
                "{} has log QP {qp}",
                p.name()
            );
            assert!(params.batching());
            assert_eq!(Preset::from_name(&p.name().to_lowercase()), Some(p));
            let bound =
                hecnn_rlwe::security::max_log_qp(params.rlwe().log_n(), params.rlwe().security())
                    .unwrap();
            assert!(params.rlwe().log_qp() <= bound as f64);
        }
    }

    #[test]
    fn delta_is_floor_q_over_t() {
        let lit = ParamsLiteral {
            log_n: 4,
            log_q: vec![30, 30],
            log_p: vec![31],
            dnum: None,
            secret: SecretDistribution::Ternary,
            security: SecurityLevel::UncheckedForReproduction,
        };
        let p = BfvParams::from_literal(&lit, 97).unwrap();
        assert!(p.batching()); // 97 ≡ 1 (mod 32)
        assert!(!BfvParams::from_literal(&lit, 17).unwrap().batching());
        let q = p.rlwe().q();
        let big_q = q[0] as u128 * q[1] as u128;
        let delta = big_q / 97;
        for (i, &qi) in q.iter().enumerate() {
            assert_eq!(p.delta(1).unwrap()[i] as u128, delta % qi as u128);
        }
    }
}
