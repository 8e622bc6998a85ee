//! Parameter literals and checked parameters.

use std::ops::Range;
use std::sync::Arc;

use hecnn_ring::{NttKind, RnsContext, prime};
use serde::{Deserialize, Serialize};

use crate::{
    RlweError,
    security::{SecurityLevel, max_log_qp},
};

/// Distribution of the secret key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SecretDistribution {
    /// Uniform over `{-1, 0, 1}^n` (what the security table assumes).
    Ternary,
    /// Exactly `h` non-zero entries in `{-1, 1}`. Weaker than uniform ternary at the same
    /// size; only accepted with [`SecurityLevel::UncheckedForReproduction`] until an
    /// estimator-backed table exists.
    SparseTernary {
        /// Hamming weight.
        h: usize,
    },
}

/// What a user writes: sizes, not primes. [`ParamsLiteral::build`] generates the primes and
/// checks security.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsLiteral {
    /// log2 of the ring degree.
    pub log_n: u32,
    /// Bit sizes of the ciphertext primes `q_0, q_1, …` (`q_0` first). Primes after the first
    /// are chosen as close as possible to `2^bits`, alternating above and below.
    pub log_q: Vec<u32>,
    /// Bit sizes of the special primes `P` used by hybrid key switching.
    pub log_p: Vec<u32>,
    /// Number of gadget digits for key switching (`None`: one digit per `|P|` primes, i.e.
    /// `⌈|Q| / |P|⌉`).
    pub dnum: Option<usize>,
    /// Secret-key distribution.
    pub secret: SecretDistribution,
    /// Required security level, checked on the generated primes.
    pub security: SecurityLevel,
}

/// Checked parameters: generated primes, the RNS context and the key-switching digits.
#[derive(Debug)]
pub struct Params {
    literal: ParamsLiteral,
    q: Vec<u64>,
    p: Vec<u64>,
    digits: Vec<Range<usize>>,
    ctx: Arc<RnsContext>,
    log_qp: f64,
    fingerprint: [u8; 32],
}

/// The canonical form hashed into the fingerprint.
#[derive(Serialize)]
struct Canonical<'a> {
    domain: &'a str,
    log_n: u32,
    q: &'a [u64],
    p: &'a [u64],
    digits: Vec<(usize, usize)>,
    secret: SecretDistribution,
    security: SecurityLevel,
}

/// Most ciphertext primes a literal may ask for. hecnn's deepest chains (bootstrapping
/// included) use fewer than 64; the bound keeps a literal read from a file (parameters,
/// protected models) from asking for thousands of primes, each with its NTT tables.
pub const MAX_Q_PRIMES: usize = 128;
/// Most special primes a literal may ask for.
pub const MAX_P_PRIMES: usize = 32;

impl ParamsLiteral {
    /// Generates primes and checks everything, using the fastest NTT.
    ///
    /// # Errors
    /// [`RlweError::Insecure`] if `log2(QP)` exceeds the table bound, and
    /// [`RlweError::InvalidParams`] for inconsistent sizes (more than [`MAX_Q_PRIMES`]
    /// ciphertext or [`MAX_P_PRIMES`] special primes included).
    pub fn build(&self) -> Result<Params, RlweError> {
        self.build_with(NttKind::Fast)
    }

    /// As [`ParamsLiteral::build`], with an explicit NTT implementation.
    ///
    /// # Errors
    /// See [`ParamsLiteral::build`].
    pub fn build_with(&self, ntt: NttKind) -> Result<Params, RlweError> {
        let invalid = |reason: String| RlweError::InvalidParams { reason };
        if self.log_q.is_empty() {
            return Err(invalid("at least one ciphertext prime is required".into()));
        }
        if !(3..=17).contains(&self.log_n) {
            return Err(invalid(format!(
                "log_n = {} outside the supported range 3..=17",
                self.log_n
            )));
        }
        // Bounded before any prime is generated: a literal read from untrusted bytes could
        // otherwise ask for thousands of primes (and gigabytes of NTT tables).
        if self.log_q.len() > MAX_Q_PRIMES || self.log_p.len() > MAX_P_PRIMES {
            return Err(invalid(format!(
                "{} ciphertext and {} special primes (at most {MAX_Q_PRIMES} and {MAX_P_PRIMES})",
                self.log_q.len(),
                self.log_p.len()
            )));
        }
        let mut q = prime::ntt_primes(self.log_q[0], self.log_n, 1)?;
        let mut i = 1;
        while i < self.log_q.len() {
            let bits = self.log_q[i];
            let run = self.log_q[i..].iter().take_while(|&&b| b == bits).count();
            let ps = prime::ntt_primes_near(bits, self.log_n, run, &q)?;
            q.extend(ps);
            i += run;
        }
        let mut p: Vec<u64> = Vec::new();
        let mut i = 0;
        while i < self.log_p.len() {
            let bits = self.log_p[i];
            let run = self.log_p[i..].iter().take_while(|&&b| b == bits).count();
            let taken: Vec<u64> = q.iter().chain(&p).copied().collect();
            p.extend(prime::ntt_primes_excluding(bits, self.log_n, run, &taken)?);
            i += run;
        }
        self.with_primes(q, p, ntt)
    }

    /// Checks and assembles parameters from already generated primes.
    fn with_primes(&self, q: Vec<u64>, p: Vec<u64>, ntt: NttKind) -> Result<Params, RlweError> {
        let invalid = |reason: String| RlweError::InvalidParams { reason };
        let log_q: f64 = q.iter().map(|&v| (v as f64).log2()).sum();
        let log_p: f64 = p.iter().map(|&v| (v as f64).log2()).sum();
        let log_qp = log_q + log_p;

        if let SecretDistribution::SparseTernary { h } = self.secret {
            if h == 0 || h > 1 << self.log_n {
                return Err(invalid(format!("Hamming weight {h} out of range")));
            }
            if self.security != SecurityLevel::UncheckedForReproduction {
                return Err(RlweError::Insecure {
                    log_n: self.log_n,
                    log_qp,
                    max: 0,
                    level: self.security,
                    reason: "sparse secrets are not covered by the HE-standard table; use a \
                             uniform ternary secret or SecurityLevel::UncheckedForReproduction"
                        .into(),
                });
            }
        }
        if self.security != SecurityLevel::UncheckedForReproduction {
            let max = max_log_qp(self.log_n, self.security).ok_or_else(|| RlweError::Insecure {
                log_n: self.log_n,
                log_qp,
                max: 0,
                level: self.security,
                reason: "no table entry for this ring degree".into(),
            })?;
            if log_qp > max as f64 {
                return Err(RlweError::Insecure {
                    log_n: self.log_n,
                    log_qp,
                    max,
                    level: self.security,
                    reason: "log2(QP) exceeds the bound".into(),
                });
            }
        }

        let digits = if p.is_empty() {
            Vec::new()
        } else {
            let dnum = self.dnum.unwrap_or_else(|| q.len().div_ceil(p.len()));
            if dnum == 0 || dnum > q.len() {
                return Err(invalid(format!(
                    "dnum = {dnum} must be between 1 and the number of Q primes ({})",
                    q.len()
                )));
            }
            let alpha = q.len().div_ceil(dnum);
            let digits: Vec<Range<usize>> = (0..q.len())
                .step_by(alpha)
                .map(|s| s..(s + alpha).min(q.len()))
                .collect();
            let max_digit = digits
                .iter()
                .map(|r| q[r.clone()].iter().map(|&v| (v as f64).log2()).sum::<f64>())
                .fold(0.0, f64::max);
            // Key-switching noise grows like Q_digit / P: allow at most one bit of excess.
            if log_p + 1.0 < max_digit {
                return Err(invalid(format!(
                    "the special modulus P ({log_p:.1} bits) must cover the largest key-switching \
                     digit ({max_digit:.1} bits): add P primes or raise dnum"
                )));
            }
            digits
        };

        let ctx = RnsContext::new(self.log_n, &q, &p, ntt)?;
        let canonical = Canonical {
            domain: "hecnn/params/v1",
            log_n: self.log_n,
            q: &q,
            p: &p,
            digits: digits.iter().map(|r| (r.start, r.end)).collect(),
            secret: self.secret,
            security: self.security,
        };
        let bytes = postcard::to_allocvec(&canonical).map_err(|e| invalid(e.to_string()))?;
        let fingerprint = *blake3::hash(&bytes).as_bytes();
        Ok(Params {
            literal: self.clone(),
            q,
            p,
            digits,
            ctx: Arc::new(ctx),
            log_qp,
            fingerprint,
        })
    }
}

impl Params {
    /// The ring of these parameters restricted to the first `q_count` ciphertext primes and
    /// the first `p_count` special primes, with one key-switching digit and the secret
    /// distribution `secret`.
    ///
    /// This is the small-modulus ring of sparse-secret encapsulation (Bossuat et al., 2022):
    /// a key switch from the dense secret to a sparse one is published only modulo
    /// `q_0·p_0`, where a sparse secret stays secure although it would not at the full
    /// `Q·P`. The HE-standard table covers uniform ternary secrets only, so the result is
    /// marked [`SecurityLevel::UncheckedForReproduction`]: the caller checks the modulus
    /// against the bound it relies on.
    ///
    /// # Errors
    /// [`RlweError::InvalidParams`] for counts outside `1..=` the available primes.
    pub fn restricted(
        &self,
        q_count: usize,
        p_count: usize,
        secret: SecretDistribution,
    ) -> Result<Params, RlweError> {
        if q_count == 0 || q_count > self.q.len() || p_count == 0 || p_count > self.p.len() {
            return Err(RlweError::InvalidParams {
                reason: format!(
                    "restriction to {q_count} Q and {p_count} P primes of {} and {}",
                    self.q.len(),
                    self.p.len()
                ),
            });
        }
        let q = self.q[..q_count].to_vec();
        let p = self.p[..p_count].to_vec();
        let bits = |v: &[u64]| v.iter().map(|&x| 64 - x.leading_zeros()).collect();
        let literal = ParamsLiteral {
            log_n: self.literal.log_n,
            log_q: bits(&q),
            log_p: bits(&p),
            dnum: Some(1),
            secret,
            security: SecurityLevel::UncheckedForReproduction,
        };
        literal.with_primes(q, p, self.ctx.ntt_kind())
    }

    /// The literal these parameters were built from.
    pub fn literal(&self) -> &ParamsLiteral {
        &self.literal
    }
    /// The RNS context (moduli and NTT plans).
    pub fn ctx(&self) -> &RnsContext {
        &self.ctx
    }
    /// Shared handle to the RNS context.
    pub fn ctx_arc(&self) -> Arc<RnsContext> {
        Arc::clone(&self.ctx)
    }
    /// Ring degree.
    pub fn n(&self) -> usize {
        1 << self.literal.log_n
    }
    /// log2 of the ring degree.
    pub fn log_n(&self) -> u32 {
        self.literal.log_n
    }
    /// The Q primes.
    pub fn q(&self) -> &[u64] {
        &self.q
    }
    /// The P primes.
    pub fn p(&self) -> &[u64] {
        &self.p
    }
    /// The highest level (number of Q primes − 1).
    pub fn max_level(&self) -> usize {
        self.q.len() - 1
    }
    /// Key-switching digits (ranges of Q indices).
    pub fn digits(&self) -> &[Range<usize>] {
        &self.digits
    }
    /// Number of key-switching digits.
    pub fn dnum(&self) -> usize {
        self.digits.len()
    }
    /// `log2(Q·P)` of the generated primes.
    pub fn log_qp(&self) -> f64 {
        self.log_qp
    }
    /// `log2(Q)`.
    pub fn log_q(&self) -> f64 {
        self.q.iter().map(|&v| (v as f64).log2()).sum()
    }
    /// The secret distribution.
    pub fn secret(&self) -> SecretDistribution {
        self.literal.secret
    }
    /// The security level that was requested and checked.
    pub fn security(&self) -> SecurityLevel {
        self.literal.security
    }
    /// Stable fingerprint (BLAKE3 of the canonical serialization of the primes and options).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
    /// Short hex form of the fingerprint, for reports.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
    /// Size in bytes of one evaluation-domain polynomial at `level` (no P limbs).
    pub fn poly_bytes(&self, level: usize) -> usize {
        (level + 1) * self.n() * 8
    }
    /// Size in bytes of one seed-compressed key-switching key (every level).
    pub fn switching_key_bytes(&self) -> usize {
        self.switching_key_bytes_at(self.max_level())
    }
    /// Digits of a key-switching key restricted to ciphertexts at `level` or below.
    pub fn digits_at(&self, level: usize) -> usize {
        self.digits.iter().filter(|d| d.start <= level).count()
    }
    /// Size in bytes of one seed-compressed key-switching key restricted to ciphertexts at
    /// `level` or below: its digits hold the limbs of `Q_level ∪ P`.
    pub fn switching_key_bytes_at(&self, level: usize) -> usize {
        let level = level.min(self.max_level());
        let digits = self.digits_at(level);
        digits * (level + 1 + self.p.len()) * self.n() * 8 + digits * 32
    }
    /// Size in bytes of one key-switching key restricted to `level`, in memory (both halves
    /// of every digit).
    pub fn expanded_switching_key_bytes_at(&self, level: usize) -> usize {
        let level = level.min(self.max_level());
        2 * self.digits_at(level) * (level + 1 + self.p.len()) * self.n() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(log_n: u32, log_q: Vec<u32>, log_p: Vec<u32>) -> ParamsLiteral {
        ParamsLiteral {
            log_n,
            log_q,
            log_p,
            dnum: None,
            secret: SecretDistribution::Ternary,
            security: SecurityLevel::Bits128,
        }
    }

    #[test]
    fn builds_and_checks_security() {
        let p = lit(14, vec![50, 40, 40, 40], vec![50, 50]).build().unwrap();
        assert_eq!(p.q().len(), 4);
        assert_eq!(p.dnum(), 2);
        assert!(p.log_qp() < 438.0);
        let err = lit(13, vec![60; 4], vec![60]).build().unwrap_err();
        assert!(matches!(err, RlweError::Insecure { max: 218, .. }), "{err}");
        let mut sparse = lit(14, vec![50, 40], vec![50]);
        sparse.secret = SecretDistribution::SparseTernary { h: 64 };
        assert!(matches!(sparse.build(), Err(RlweError::Insecure { .. })));
        sparse.security = SecurityLevel::UncheckedForReproduction;
        assert!(sparse.build().is_ok());
    }

    #[test]
    fn fingerprint_is_stable_and_distinguishes() {
        let a = lit(12, vec![30, 30], vec![40]).build().unwrap();
        let b = lit(12, vec![30, 30], vec![40]).build().unwrap();
        let c = lit(12, vec![30, 31], vec![40]).build().unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn special_modulus_must_cover_digits() {
        let mut l = lit(14, vec![50, 40, 40, 40], vec![40]);
        l.dnum = Some(1);
        assert!(matches!(l.build(), Err(RlweError::InvalidParams { .. })));
    }
}
