//! The RNS context: ring degree, the moduli chain `Q = q_0·…·q_{L}` and the special primes
//! `P = p_0·…·p_{K-1}`, NTT plans and the constants that basis conversions need.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::{
    RingError,
    modulus::Modulus,
    ntt::{Ntt, NttKind, bit_reverse, build_ntt},
    simd::{IfmaModulus, WideModulus},
};

/// Which limbs a polynomial holds: the first `q` primes of the Q chain, followed by the
/// first `p` special primes (in practice `p` is 0 or all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Basis {
    /// Number of live Q limbs (`level + 1`).
    pub q: usize,
    /// Number of live P limbs.
    pub p: usize,
}

impl Basis {
    /// Q limbs only.
    pub const fn q(q: usize) -> Self {
        Self { q, p: 0 }
    }

    /// Q and P limbs.
    pub const fn qp(q: usize, p: usize) -> Self {
        Self { q, p }
    }

    /// Total number of limbs.
    pub const fn len(&self) -> usize {
        self.q + self.p
    }

    /// Whether the basis holds no limb.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every limb of `other` is also in `self`.
    pub const fn contains(&self, other: &Basis) -> bool {
        other.q <= self.q && other.p <= self.p
    }

    /// Index in the context's modulus list of this basis' limb at `pos`.
    #[inline]
    pub fn global(&self, ctx: &RnsContext, pos: usize) -> usize {
        if pos < self.q {
            pos
        } else {
            ctx.q_count() + (pos - self.q)
        }
    }

    /// Position in this basis of the limb whose modulus has index `global`.
    #[inline]
    pub fn position(&self, ctx: &RnsContext, global: usize) -> Option<usize> {
        if global < ctx.q_count() {
            (global < self.q).then_some(global)
        } else {
            let j = global - ctx.q_count();
            (j < self.p).then_some(self.q + j)
        }
    }
}

/// Ring degree, moduli, NTT plans and cached automorphism tables.
pub struct RnsContext {
    log_n: u32,
    n: usize,
    moduli: Vec<Modulus>,
    q_count: usize,
    ntts: Vec<Box<dyn Ntt>>,
    ntt_kind: NttKind,
    ifma: Vec<Option<IfmaModulus>>,
    wide: Vec<Option<WideModulus>>,
    /// Eval-domain automorphism permutations, by Galois element.
    perms: RwLock<HashMap<usize, Arc<Vec<u32>>>>,
}

impl std::fmt::Debug for RnsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RnsContext")
            .field("log_n", &self.log_n)
            .field("q", &self.q_values())
            .field("p", &self.p_values())
            .field("ntt", &self.ntt_kind)
            .finish()
    }
}

impl RnsContext {
    /// Builds a context for `X^(2^log_n) + 1` with the given Q and P primes.
    ///
    /// # Errors
    /// If a prime is invalid, repeated, or not `≡ 1 (mod 2n)`.
    pub fn new(log_n: u32, q: &[u64], p: &[u64], ntt_kind: NttKind) -> Result<Self, RingError> {
        if !(1..=17).contains(&log_n) {
            return Err(RingError::InvalidDegree { log_n });
        }
        if q.is_empty() {
            return Err(RingError::EmptyBasis);
        }
        let n = 1usize << log_n;
        let all: Vec<u64> = q.iter().chain(p).copied().collect();
        for (i, v) in all.iter().enumerate() {
            if all[..i].contains(v) {
                return Err(RingError::DuplicateModulus { value: *v });
            }
        }
        let moduli = all
            .iter()
            .map(|&v| Modulus::new(v))
            .collect::<Result<Vec<_>, _>>()?;
        let ntts = moduli
            .iter()
            .map(|&m| build_ntt(ntt_kind, m, n))
            .collect::<Result<Vec<_>, _>>()?;
        let ifma = moduli.iter().map(IfmaModulus::new).collect();
        let wide = moduli.iter().map(WideModulus::new).collect();
        Ok(Self {
            log_n,
            n,
            ifma,
            wide,
            moduli,
            q_count: q.len(),
            ntts,
            ntt_kind,
            perms: RwLock::new(HashMap::new()),
        })
    }

    /// log2 of the ring degree.
    pub fn log_n(&self) -> u32 {
        self.log_n
    }
    /// Ring degree `n`.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Number of Q primes.
    pub fn q_count(&self) -> usize {
        self.q_count
    }
    /// Number of P primes.
    pub fn p_count(&self) -> usize {
        self.moduli.len() - self.q_count
    }
    /// All moduli, Q then P.
    pub fn moduli(&self) -> &[Modulus] {
        &self.moduli
    }
    /// The modulus with global index `i`.
    pub fn modulus(&self, i: usize) -> &Modulus {
        &self.moduli[i]
    }
    /// The NTT for the modulus with global index `i`.
    pub fn ntt(&self, i: usize) -> &dyn Ntt {
        self.ntts[i].as_ref()
    }
    /// IFMA constants of the modulus with global index `i`, when the CPU and prime allow.
    pub fn ifma(&self, i: usize) -> Option<&IfmaModulus> {
        self.ifma[i].as_ref()
    }
    /// Wide-prime IFMA constants (primes of 2^50 to 2^61) of the modulus with global index
    /// `i`, when the CPU and prime allow.
    pub fn wide(&self, i: usize) -> Option<&WideModulus> {
        self.wide[i].as_ref()
    }
    /// Which NTT implementation this context uses.
    pub fn ntt_kind(&self) -> NttKind {
        self.ntt_kind
    }
    /// Q prime values.
    pub fn q_values(&self) -> Vec<u64> {
        self.moduli[..self.q_count]
            .iter()
            .map(|m| m.value())
            .collect()
    }
    /// P prime values.
    pub fn p_values(&self) -> Vec<u64> {
        self.moduli[self.q_count..]
            .iter()
            .map(|m| m.value())
            .collect()
    }
    /// The full basis `Q ∪ P`.
    pub fn full_basis(&self) -> Basis {
        Basis::qp(self.q_count, self.p_count())
    }
    /// The modulus of limb `pos` in `basis`.
    #[inline]
    pub fn limb_modulus(&self, basis: &Basis, pos: usize) -> &Modulus {
        &self.moduli[basis.global(self, pos)]
    }
    /// The moduli of `basis`, in limb order.
    pub fn basis_moduli(&self, basis: &Basis) -> Vec<Modulus> {
        (0..basis.len())
            .map(|i| *self.limb_modulus(basis, i))
            .collect()
    }

    /// Eval-domain index permutation for the automorphism `X ↦ X^galois`:
    /// `out[i] = in[perm[i]]`.
    ///
    /// # Errors
    /// [`RingError::InvalidGaloisElement`] unless `galois` is odd and below `2n`.
    pub fn eval_permutation(&self, galois: usize) -> Result<Arc<Vec<u32>>, RingError> {
        self.check_galois(galois)?;
        if let Ok(map) = self.perms.read()
            && let Some(p) = map.get(&galois)
        {
            return Ok(Arc::clone(p));
        }
        let two_n = 2 * self.n;
        let perm: Vec<u32> = (0..self.n)
            .map(|i| {
                let e = 2 * bit_reverse(i, self.log_n) + 1;
                let ge = (galois * e) % two_n;
                bit_reverse((ge - 1) / 2, self.log_n) as u32
            })
            .collect();
        let perm = Arc::new(perm);
        if let Ok(mut map) = self.perms.write() {
            map.insert(galois, Arc::clone(&perm));
        }
        Ok(perm)
    }

    /// Checks that `basis` holds no more limbs than this context has.
    ///
    /// # Errors
    /// [`RingError::BasisOutOfRange`].
    pub fn check_basis(&self, basis: Basis) -> Result<(), RingError> {
        if basis.q > self.q_count() || basis.p > self.p_count() {
            return Err(RingError::BasisOutOfRange {
                basis,
                q: self.q_count(),
                p: self.p_count(),
            });
        }
        Ok(())
    }

    /// Checks that `galois` is a valid Galois element (odd, in `[1, 2n)`).
    ///
    /// # Errors
    /// [`RingError::InvalidGaloisElement`].
    pub fn check_galois(&self, galois: usize) -> Result<(), RingError> {
        if galois.is_multiple_of(2) || galois >= 2 * self.n {
            return Err(RingError::InvalidGaloisElement { galois, n: self.n });
        }
        Ok(())
    }

    /// Galois element of a rotation of the CKKS/BFV slots by `step` (`5^step mod 2n`;
    /// negative steps rotate the other way).
    pub fn galois_element(&self, step: i64) -> usize {
        let two_n = 2 * self.n as u64;
        let order = (self.n / 2) as i64; // order of 5 in Z_2n^*
        let e = step.rem_euclid(order) as u64;
        let mut r = 1u64;
        let mut b = 5u64;
        let mut k = e;
        while k > 0 {
            if k & 1 == 1 {
                r = r * b % two_n;
            }
            b = b * b % two_n;
            k >>= 1;
        }
        r as usize
    }

    /// Galois element of complex conjugation (`2n - 1`).
    pub fn galois_conjugate(&self) -> usize {
        2 * self.n - 1
    }

    /// `log2` of the product of the moduli in `basis`.
    pub fn log_modulus(&self, basis: &Basis) -> f64 {
        (0..basis.len())
            .map(|i| (self.limb_modulus(basis, i).value() as f64).log2())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_positions_roundtrip() {
        let q = crate::prime::ntt_primes(40, 4, 4).unwrap();
        let p = crate::prime::ntt_primes(45, 4, 2).unwrap();
        let ctx = RnsContext::new(4, &q, &p, NttKind::Fast).unwrap();
        let b = Basis::qp(2, 2);
        for pos in 0..b.len() {
            assert_eq!(b.position(&ctx, b.global(&ctx, pos)), Some(pos));
        }
        assert_eq!(b.position(&ctx, 3), None);
        assert!(RnsContext::new(4, &[q[0], q[0]], &[], NttKind::Fast).is_err());
        assert!(ctx.eval_permutation(4).is_err());
    }
}
