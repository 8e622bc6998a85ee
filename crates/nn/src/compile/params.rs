//! The one parameter generator: every packing's CKKS parameters come from here, as a
//! modulus chain chosen by a policy ([`Chain`]) for a depth and a ring degree, and the
//! smallest ring degree that holds a plan ([`smallest_ring`]).
//!
//! The three chains differ in what their values need: batch packing keeps every
//! intermediate value below 2^17 at a 2^30 scale (one image per slot: no rotations, two-prime
//! digits); single-image packing spends the security budget on the largest scale and
//! special primes (hoisted rotations dominate); a protected model's encrypted weights take
//! a 2^60 scale and a two-prime output level, so that its decryptions can be noise-flooded
//! ([`PROTECT_LOG_SCALE`]). The batch and single-image primes stay below 2^50, the reach of
//! the IFMA kernels; the protected chain's level primes use the wide (50–61-bit) kernels.

use std::sync::Arc;

use hecnn_ckks::CkksParams;
use hecnn_rlwe::{ParamsLiteral, SecretDistribution, SecurityLevel};

use crate::NnError;

/// A modulus-chain policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// Batch packing (HCNN): 49-bit base prime, 30-bit level primes, two 49-bit special primes.
    Batch,
    /// Single-image packing: the largest scale the security table allows at the degree.
    Single,
    /// A protected model's encrypted part, sized for noise-flooded decryption: a two-prime
    /// output level (61 + 25 bits), 60-bit levels, one 61-bit special prime.
    Protected,
    /// A protected model's encrypted part before flooding was sized for (49-bit output
    /// prime, 40-bit levels, one 49-bit special prime): smaller rings, but its outputs
    /// cannot be flooded (`hecnn bench protected --unflooded` compares the two).
    ProtectedUnflooded,
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Batch => "batch packing",
            Self::Single => "single-image packing",
            Self::Protected => "the protected part",
            Self::ProtectedUnflooded => "the protected part (unflooded)",
        })
    }
}

/// The parameter literal of `chain` for `depth` levels at ring degree `2^log_n`, and its
/// working scale in bits; `None` when the chain cannot be built at that degree (single-image
/// packing: not even its smallest scale fits the security table).
pub fn literal(
    chain: Chain,
    depth: usize,
    log_n: u32,
    security: SecurityLevel,
) -> Option<(ParamsLiteral, u32)> {
    match chain {
        Chain::Batch => Some(batch(depth, log_n, security)),
        Chain::Single => single(depth, log_n, security),
        Chain::Protected => Some(protected(depth, log_n, security)),
        Chain::ProtectedUnflooded => Some(protected_unflooded(depth, log_n, security)),
    }
}

/// The smallest ring degree in `log_ns` whose parameters of `chain` for `depth` levels pass
/// the security check at `security` and that `fits` accepts (a plan whose layouts need the
/// slots); its parameters and what `fits` returned.
///
/// # Errors
/// [`NnError::NoParameters`] with the last reason a degree was refused; an error of `fits`
/// other than [`NnError::TooFewSlots`] at once (more slots would not help).
pub fn smallest_ring<T>(
    chain: Chain,
    depth: usize,
    security: SecurityLevel,
    log_ns: std::ops::RangeInclusive<u32>,
    mut fits: impl FnMut(&Arc<CkksParams>) -> Result<T, NnError>,
) -> Result<(Arc<CkksParams>, T), NnError> {
    let (lo, hi) = (*log_ns.start(), *log_ns.end());
    let mut last = None;
    for log_n in log_ns {
        let Some((lit, log_scale)) = literal(chain, depth, log_n, security) else {
            last = Some(format!("N = 2^{log_n} leaves no room for {depth} levels"));
            continue;
        };
        let params = match CkksParams::from_literal(&lit, log_scale) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                last = Some(format!("at N = 2^{log_n}: {e}"));
                continue;
            }
        };
        match fits(&params) {
            Ok(t) => return Ok((params, t)),
            Err(e @ NnError::TooFewSlots { .. }) => last = Some(format!("at N = 2^{log_n}: {e}")),
            Err(e) => return Err(e),
        }
    }
    Err(NnError::NoParameters {
        chain,
        reason: format!(
            "no ring degree from 2^{lo} to 2^{hi} runs {depth} levels at {security:?}{}",
            last.map(|e| format!(" ({e})")).unwrap_or_default()
        ),
    })
}

/// Parameters from a literal read from a file: its sizes bounded before any prime is
/// generated (a crafted literal could otherwise ask for thousands of primes), then built
/// and checked against its security level.
///
/// # Errors
/// [`NnError::Format`] for sizes beyond what hecnn generates; parameter errors.
pub fn from_record(lit: &ParamsLiteral, log_scale: u32) -> Result<CkksParams, NnError> {
    let bad = |reason: String| NnError::Format {
        what: "parameters",
        reason,
    };
    if !(10..=17).contains(&lit.log_n) {
        return Err(bad(format!(
            "ring degree 2^{} outside 2^10..2^17",
            lit.log_n
        )));
    }
    if lit.log_q.is_empty() || lit.log_q.len() > 64 || lit.log_p.is_empty() || lit.log_p.len() > 16
    {
        return Err(bad(format!(
            "{} Q primes and {} P primes (at most 64 and 16)",
            lit.log_q.len(),
            lit.log_p.len()
        )));
    }
    if lit
        .log_q
        .iter()
        .chain(&lit.log_p)
        .any(|&b| !(14..=61).contains(&b))
        || !(10..=60).contains(&log_scale)
    {
        return Err(bad("prime or scale sizes outside 14..61 bits".into()));
    }
    Ok(CkksParams::from_literal(lit, log_scale)?)
}

/// Scale bits of the levels between refreshes in a bootstrapped single-image chain. With
/// bootstrapping's base prime (the largest 60-bit NTT prime, below 2^60) and its message
/// ratio of 2^10, a value refreshed at this scale may be as large as 2^(59 − 10 − 36) =
/// 2^[`VALUE_BOUND_BITS`] ([`REFRESH_BOUND_BITS`]); at 2^40 (the bootstrapping preset's)
/// it could not exceed 2^9.
pub const REFRESH_LOG_SCALE: u32 = 36;

/// Values are refreshed as `value / 2^REFRESH_BOUND_BITS`: the bound every single-image
/// value stays below ([`VALUE_BOUND_BITS`]). Bootstrapping's error, relative to the unit
/// range, is multiplied by it.
pub const REFRESH_BOUND_BITS: u32 = VALUE_BOUND_BITS;

/// Levels between refreshes without a security level to size them (reproductions, toy
/// tests).
pub const UNCHECKED_REFRESH_LEVELS: usize = 6;

/// A bootstrapped single-image chain at ring degree `2^log_n` for ciphertexts of `slots`
/// slots: bootstrapping's levels ([`hecnn_ckks::bootstrap::bootstrap_literal_with`]) and
/// `levels` levels of [`REFRESH_LOG_SCALE`] bits between refreshes, or as many as the
/// security table allows (at N = 2^16 and 128 bits: 11). Returns the literal, the scale
/// bits and the bootstrapping circuit; `None` when the ring cannot hold the circuit and at
/// least two levels.
pub fn bootstrapped(
    log_n: u32,
    slots: usize,
    levels: Option<usize>,
    security: SecurityLevel,
) -> Option<(ParamsLiteral, u32, hecnn_ckks::BootstrapConfig)> {
    use hecnn_ckks::bootstrap::bootstrap_literal_with;
    let config = hecnn_ckks::BootstrapConfig::new(slots);
    let lit = |r| bootstrap_literal_with(log_n, r, REFRESH_LOG_SCALE, &config, security).ok();
    let bits = |l: &ParamsLiteral| l.log_q.iter().chain(&l.log_p).sum::<u32>();
    let residual = match (levels, hecnn_rlwe::security::max_log_qp(log_n, security)) {
        (Some(r), _) => r,
        (None, None) => UNCHECKED_REFRESH_LEVELS,
        (None, Some(budget)) => {
            let base = bits(&lit(0)?);
            (budget.checked_sub(base)? / REFRESH_LOG_SCALE) as usize
        }
    };
    if !(2..=super::MAX_REFRESH_LEVELS).contains(&residual) {
        return None;
    }
    Some((lit(residual)?, REFRESH_LOG_SCALE, config))
}

/// Scale bits of a protected model's parameters ([`Chain::Protected`]): features are
/// encoded at `2^60`, the weights of each layer at its level's prime (near `2^60`), so the
/// outputs keep the scale `2^60`.
///
/// Why so large: a decryption that leaves the owner is flooded with a Gaussian of standard
/// deviation `σ = √(12τ)·2^(s/2)·E` (`hecnn_ckks::flooding`), `2^26.8·E` at the defaults,
/// and every logit then moves by about `σ·√(N/2) / scale`. The output noise `E` does not
/// grow with the scale (the fresh noise of the encrypted weights and features times the
/// features and weights, key switching, rescaling: `2^13`–`2^20` in `bench/RESULTS.md`
/// §9b), so the scale buys the precision back: at `2^40` the flooding moves each logit by
/// `±10^3`, at `2^60` by `10^-3` to `3·10^-2` (the bound's and the ring's share). Two
/// limits stop the scale there: the primes (at most 61 bits in the ring crate, and the
/// level primes straddle `2^60`) and the encoder, whose `f64` arithmetic leaves a relative
/// error near `2^-52` that larger scales would only copy.
pub const PROTECT_LOG_SCALE: u32 = 60;

/// Bits of the two primes of a protected model's output level ([`Chain::Protected`]): the
/// outputs stay at level 1, where the modulus (`2^86`) holds a logit up to `2^24` at the
/// `2^60` scale and a flooding up to the sampler's `2^48` with the decryption's `2^8`
/// margin (`hecnn_ckks::Decryptor::decrypt_flooded` refuses a wider one). The base prime
/// is the larger (CKKS parameters keep the scale below it).
pub const PROTECT_OUTPUT_LOG_Q: [u32; 2] = [61, 25];

/// Bits of the special prime of [`Chain::Protected`]: above every ciphertext prime, so
/// that key switching with one-prime digits adds noise far below the output's.
pub const PROTECT_SPECIAL_LOG_P: u32 = 61;

/// Scale bits of the unflooded protected chain ([`Chain::ProtectedUnflooded`]).
pub const UNFLOODED_PROTECT_LOG_SCALE: u32 = 40;

/// A protected model's chain for flooded decryption ([`PROTECT_LOG_SCALE`]): the two
/// output primes of [`PROTECT_OUTPUT_LOG_Q`], one 60-bit prime per level, one 61-bit
/// special prime. `depth + 1` levels: the result is decrypted at level 1.
fn protected(depth: usize, log_n: u32, security: SecurityLevel) -> (ParamsLiteral, u32) {
    let mut log_q = PROTECT_OUTPUT_LOG_Q.to_vec();
    log_q.extend(std::iter::repeat_n(PROTECT_LOG_SCALE, depth));
    (
        ParamsLiteral {
            log_n,
            log_q,
            log_p: vec![PROTECT_SPECIAL_LOG_P],
            dnum: None,
            secret: SecretDistribution::Ternary,
            security,
        },
        PROTECT_LOG_SCALE,
    )
}

/// The unflooded protected chain: a 49-bit output prime, one 40-bit prime per level, one
/// 49-bit special prime.
fn protected_unflooded(depth: usize, log_n: u32, security: SecurityLevel) -> (ParamsLiteral, u32) {
    let mut log_q = vec![49];
    log_q.extend(std::iter::repeat_n(UNFLOODED_PROTECT_LOG_SCALE, depth));
    (
        ParamsLiteral {
            log_n,
            log_q,
            log_p: vec![49],
            dnum: None,
            secret: SecretDistribution::Ternary,
            security,
        },
        UNFLOODED_PROTECT_LOG_SCALE,
    )
}

/// Working scale of batch-mode ciphertexts (bits): the rescaling primes are near 2^30, below
/// the 2^50 of the IFMA kernels; CNN logits need far less precision than this to keep their
/// argmax (measured by `hecnn eval`: max |Δ logit| 7e-3 on MNIST, 2e-2 on CIFAR-10).
pub const BATCH_LOG_SCALE: u32 = 30;

/// CKKS parameters for a batch-mode plan of `depth` levels at ring degree `2^log_n`: a
/// 49-bit base prime (every intermediate and output value must stay below about 2^17 in
/// magnitude at the 2^30 working scale; [`crate::batch::check_ranges`] verifies this on
/// calibration data), `depth` primes near the scale, and 49-bit special primes
/// covering two-prime digits for relinearization. All primes are below 2^50 (IFMA).
fn batch(
    depth: usize,
    log_n: u32,
    security: hecnn_rlwe::SecurityLevel,
) -> (hecnn_rlwe::ParamsLiteral, u32) {
    let mut log_q = vec![49];
    log_q.extend(std::iter::repeat_n(BATCH_LOG_SCALE, depth));
    (
        hecnn_rlwe::ParamsLiteral {
            log_n,
            log_q,
            log_p: vec![49, 49],
            dnum: Some((depth + 1).div_ceil(2)),
            secret: hecnn_rlwe::SecretDistribution::Ternary,
            security,
        },
        BATCH_LOG_SCALE,
    )
}

/// Values in single-image mode stay below `2^VALUE_BOUND_BITS` in magnitude: the base prime
/// is `VALUE_BOUND_BITS + 1` bits above the scale, so a result decrypted at the last level
/// does not wrap ([`crate::single::SinglePlan::max_slot_magnitude`] checks a model against it).
pub const VALUE_BOUND_BITS: u32 = 13;

/// The smallest working scale (bits) in single-image mode: what the MNIST network's five
/// levels can have at N = 2^13 and 128-bit security (batch mode uses 2^30). The evaluation
/// noise then stays near 2^-14 of a unit value.
pub const MIN_LOG_SCALE: u32 = 26;

/// The largest working scale (bits) in single-image mode: the base and special primes
/// (14 and 16 bits above the scale) stay below 2^50, the reach of the 52-bit IFMA kernels.
pub const MAX_LOG_SCALE: u32 = 33;

/// CKKS parameters for a single-image plan of `depth` levels at ring degree `2^log_n`, and
/// their working scale in bits: `depth` primes near the scale `2^s`, a base prime of
/// `s + 14` bits (values must stay below 2^[`VALUE_BOUND_BITS`] in magnitude) and `α` special primes of
/// `s + 16` bits with digits of at most `α` primes (each special prime is above every Q
/// prime, so the special modulus covers every digit).
///
/// The scale is the largest in [`MIN_LOG_SCALE`]`..=`[`MAX_LOG_SCALE`] whose modulus with one
/// special prime, `(depth + 2)·s + 30` bits, fits the security table at `2^log_n` with a bit
/// to spare: the number of primes, hence the cost, does not depend on it, and every extra
/// bit halves the evaluation error. Then `α ≤ 3` is the largest the remaining budget holds
/// (CIFAR-10's seven levels at 2^14: `α = 3`, three digits instead of eight). `None` when not
/// even [`MIN_LOG_SCALE`] fits. Without a security level to check (reproductions) the scale
/// is [`MIN_LOG_SCALE`] and `α = 1`.
fn single(
    depth: usize,
    log_n: u32,
    security: hecnn_rlwe::SecurityLevel,
) -> Option<(hecnn_rlwe::ParamsLiteral, u32)> {
    let budget = hecnn_rlwe::security::max_log_qp(log_n, security);
    let s = match budget {
        None => MIN_LOG_SCALE,
        Some(budget) => {
            let s = (budget.checked_sub(31)? as usize / (depth + 2)).min(MAX_LOG_SCALE as usize);
            u32::try_from(s).ok().filter(|&s| s >= MIN_LOG_SCALE)?
        }
    };
    let log_q_bits = (depth as u32 + 1) * s + VALUE_BOUND_BITS + 1;
    // Special primes: as many as the budget leaves room for, up to three. Each one more
    // cuts the digits, hence the ModUp transforms and the key size, at no cost in security
    // (the ring's budget is the limit); past three the special primes' own transforms in
    // ModUp and ModDown cost about what fewer digits save.
    let alpha = match budget {
        None => 1,
        Some(budget) => (1..=3u32.min(depth as u32 + 1))
            .rev()
            .find(|&a| log_q_bits + a * (s + 16) < budget)
            .unwrap_or(1),
    };
    // Digits hold `⌈(depth + 1)/dnum⌉` primes, which may be fewer than `alpha` (four Q
    // primes in two digits of two): no more special primes than the largest digit uses.
    let dnum = (depth + 1).div_ceil(alpha as usize);
    let alpha = (depth + 1).div_ceil(dnum);
    let mut log_q = vec![s + VALUE_BOUND_BITS + 1];
    log_q.extend(std::iter::repeat_n(s, depth));
    Some((
        hecnn_rlwe::ParamsLiteral {
            log_n,
            log_q,
            log_p: vec![s + 16; alpha],
            dnum: Some(dnum),
            secret: hecnn_rlwe::SecretDistribution::Ternary,
            security,
        },
        s,
    ))
}

#[cfg(test)]
mod tests {
    use hecnn_rlwe::SecurityLevel;

    use super::*;

    fn scale(depth: usize, log_n: u32, security: SecurityLevel) -> Option<u32> {
        literal(Chain::Single, depth, log_n, security).map(|(_, s)| s)
    }

    #[test]
    fn the_scale_is_the_largest_the_security_table_allows() {
        // MNIST: five levels at 2^13 (218 bits at 128-bit) leave 26-bit primes.
        assert_eq!(scale(5, 13, SecurityLevel::Bits128), Some(26));
        // CIFAR-10: seven levels at 2^14 (438 bits) could take 45, IFMA's reach caps at 33.
        assert_eq!(scale(7, 14, SecurityLevel::Bits128), Some(MAX_LOG_SCALE));
        // Too deep for the ring: the next degree is needed.
        assert_eq!(scale(7, 13, SecurityLevel::Bits128), None);
        assert_eq!(scale(5, 13, SecurityLevel::Bits192), None);
        assert_eq!(
            scale(3, 13, SecurityLevel::UncheckedForReproduction),
            Some(MIN_LOG_SCALE)
        );
        for depth in 1..12 {
            for log_n in 13..=16 {
                let budget =
                    hecnn_rlwe::security::max_log_qp(log_n, SecurityLevel::Bits128).unwrap_or(0);
                let need = |s: u32| (depth as u32 + 2) * s + 30;
                let Some((lit, s)) = literal(Chain::Single, depth, log_n, SecurityLevel::Bits128)
                else {
                    assert!(need(MIN_LOG_SCALE) >= budget, "depth {depth}, 2^{log_n}");
                    assert!(log_n < 16, "2^16 holds {depth} levels");
                    continue;
                };
                let bits: u32 = lit.log_q.iter().chain(&lit.log_p).sum();
                assert!(bits < budget, "depth {depth}, 2^{log_n}");
                // The largest such scale.
                assert!(
                    s == MAX_LOG_SCALE || need(s + 1) >= budget,
                    "depth {depth}, 2^{log_n}"
                );
                assert!(lit.log_p[0] > *lit.log_q.iter().max().unwrap_or(&0));
                assert!(lit.log_p[0] < 50 && (MIN_LOG_SCALE..=MAX_LOG_SCALE).contains(&s));
            }
        }
    }

    #[test]
    fn spare_budget_buys_special_primes_and_fewer_digits() {
        let special = |depth, log_n| {
            let (lit, _) = literal(Chain::Single, depth, log_n, SecurityLevel::Bits128).unwrap();
            (lit.log_p.len(), lit.dnum)
        };
        // MNIST: 212 of 218 bits, no room for a second special prime.
        assert_eq!(special(5, 13), (1, Some(6)));
        // CIFAR-10: 278 + 3·49 = 425 of 438 bits.
        assert_eq!(special(7, 14), (3, Some(3)));
        // Four Q primes: three special primes would fit, but two digits of two use two.
        assert_eq!(special(3, 14), (2, Some(2)));
        for depth in 1..12 {
            for log_n in 13..=16 {
                let Some((lit, s)) = literal(Chain::Single, depth, log_n, SecurityLevel::Bits128)
                else {
                    continue;
                };
                let budget =
                    hecnn_rlwe::security::max_log_qp(log_n, SecurityLevel::Bits128).unwrap_or(0);
                let alpha = lit.log_p.len();
                let bits: u32 = lit.log_q.iter().chain(&lit.log_p).sum();
                // One more special prime (up to three) would not fit or not cut a digit.
                let fewer_digits = (depth + 1).div_ceil(alpha + 1) < lit.dnum.unwrap_or(0);
                assert!(
                    alpha >= 3 || !fewer_digits || bits + s + 16 >= budget,
                    "depth {depth}, 2^{log_n}"
                );
                // Every special prime is used by the widest digit.
                if log_n <= 14 {
                    let built = lit.build().unwrap();
                    let widest = built.digits().iter().map(ExactSizeIterator::len).max();
                    assert_eq!(widest, Some(alpha), "depth {depth}, 2^{log_n}");
                }
            }
        }
        let (lit, _) = literal(
            Chain::Single,
            3,
            13,
            SecurityLevel::UncheckedForReproduction,
        )
        .unwrap();
        assert_eq!((lit.log_p.len(), lit.dnum), (1, Some(4)));
    }
}
