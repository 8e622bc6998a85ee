//! Word-size modular arithmetic for NTT-friendly primes below 2^62.
//!
//! Two reductions are provided:
//! - **Barrett** ([`Modulus::mul`], [`Modulus::reduce_u128`]) for products of two
//!   variable operands;
//! - **Shoup** ([`Modulus::shoup`], [`Modulus::mul_shoup`]) for products with a constant
//!   operand that is reused (twiddles, keys, weights), one high multiplication cheaper.
//!
//! All functions are branch-free on their operands (conditional subtractions use masks),
//! so they may be applied to secret data.

use crate::RingError;

/// Largest supported modulus bit size.
pub const MAX_MODULUS_BITS: u32 = 61;

/// A prime modulus `q < 2^61` with precomputed Barrett constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    value: u64,
    bits: u32,
    /// floor(2^(2·bits) / q), at most `bits + 1` bits.
    barrett: u64,
    /// floor(2^128 / q) as (low, high) words, for reducing arbitrary 128-bit values.
    wide: (u64, u64),
}

/// Returns `x - q` if `x >= q`, otherwise `x`, without branching.
#[inline(always)]
fn csub(x: u64, q: u64) -> u64 {
    let (d, borrow) = x.overflowing_sub(q);
    // borrow == true means x < q: keep x.
    let mask = (borrow as u64).wrapping_neg();
    (d & !mask) | (x & mask)
}

impl Modulus {
    /// Creates a modulus. It must be odd, at least 3 and below 2^61.
    ///
    /// # Errors
    /// [`RingError::InvalidModulus`] if the value is out of range or even.
    pub fn new(value: u64) -> Result<Self, RingError> {
        if value < 3 || value.is_multiple_of(2) || value >= (1u64 << MAX_MODULUS_BITS) {
            return Err(RingError::InvalidModulus { value });
        }
        let bits = 64 - value.leading_zeros();
        let barrett = ((1u128 << (2 * bits)) / value as u128) as u64;
        let wide = u128::MAX / value as u128;
        Ok(Self {
            value,
            bits,
            barrett,
            wide: (wide as u64, (wide >> 64) as u64),
        })
    }

    /// The modulus value `q`.
    #[inline(always)]
    pub const fn value(&self) -> u64 {
        self.value
    }

    /// Bit length of `q`.
    #[inline(always)]
    pub const fn bits(&self) -> u32 {
        self.bits
    }

    /// `(a + b) mod q` for `a, b < q`.
    #[inline(always)]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        debug_assert!(a < self.value && b < self.value);
        csub(a + b, self.value)
    }

    /// `(a - b) mod q` for `a, b < q`.
    #[inline(always)]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        debug_assert!(a < self.value && b < self.value);
        csub(a + self.value - b, self.value)
    }

    /// `-a mod q` for `a < q`.
    #[inline(always)]
    pub fn neg(&self, a: u64) -> u64 {
        debug_assert!(a < self.value);
        let nz = ((a != 0) as u64).wrapping_neg();
        (self.value - a) & nz
    }

    /// Reduces a 128-bit value `x < 2^(2·bits)` (e.g. any product of two residues).
    #[inline(always)]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        debug_assert!(x < (1u128 << (2 * self.bits)));
        let t = (x >> (self.bits - 1)) as u64;
        let qhat = ((t as u128 * self.barrett as u128) >> (self.bits + 1)) as u64;
        let r = (x as u64).wrapping_sub(qhat.wrapping_mul(self.value));
        csub(csub(r, self.value), self.value)
    }

    /// Reduces an arbitrary 64-bit value.
    #[inline(always)]
    pub fn reduce(&self, x: u64) -> u64 {
        if self.bits <= 32 {
            // x may exceed 2^(2·bits): fall back to division (not on hot paths).
            return x % self.value;
        }
        self.reduce_u128(x as u128)
    }

    /// Reduces an arbitrary 128-bit value (used for lazily accumulated sums of products).
    #[inline(always)]
    pub fn reduce_u128_any(&self, x: u128) -> u64 {
        let (xl, xh) = (x as u64, (x >> 64) as u64);
        let (ml, mh) = self.wide;
        // qhat = floor(x · floor(2^128/q) / 2^128), computed from the four partial products
        // while dropping the lowest one's low half; it undershoots the quotient by at most 2.
        let a = (xl as u128 * ml as u128) >> 64;
        let b = xl as u128 * mh as u128;
        let c = xh as u128 * ml as u128;
        let mid = a + (b as u64 as u128) + (c as u64 as u128);
        let qhat = (xh as u128 * mh as u128) + (b >> 64) + (c >> 64) + (mid >> 64);
        let r = xl.wrapping_sub((qhat as u64).wrapping_mul(self.value));
        csub(csub(r, self.value), self.value)
    }

    /// Reduces a signed 128-bit integer into `[0, q)`.
    #[inline]
    pub fn reduce_i128(&self, x: i128) -> u64 {
        let r = self.reduce_u128_any(x.unsigned_abs());
        if x < 0 { self.neg(r) } else { r }
    }

    /// Reduces a signed 64-bit integer into `[0, q)`, branch-free on the sign.
    #[inline(always)]
    pub fn reduce_i64(&self, x: i64) -> u64 {
        let r = self.reduce(x.unsigned_abs());
        let neg = self.neg(r);
        let mask = ((x < 0) as u64).wrapping_neg();
        (neg & mask) | (r & !mask)
    }

    /// `(a · b) mod q` for `a, b < q` (Barrett).
    #[inline(always)]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// Shoup constant `floor(w · 2^64 / q)` for a fixed operand `w < q`.
    #[inline]
    pub fn shoup(&self, w: u64) -> u64 {
        debug_assert!(w < self.value);
        (((w as u128) << 64) / self.value as u128) as u64
    }

    /// `(a · w) mod q` with `w_shoup = self.shoup(w)`; `a` may be any value below 2^64.
    #[inline(always)]
    pub fn mul_shoup(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        csub(self.mul_shoup_lazy(a, w, w_shoup), self.value)
    }

    /// Lazy Shoup product in `[0, 2q)`.
    #[inline(always)]
    pub fn mul_shoup_lazy(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        let qhat = ((a as u128 * w_shoup as u128) >> 64) as u64;
        a.wrapping_mul(w)
            .wrapping_sub(qhat.wrapping_mul(self.value))
    }

    /// `a^e mod q` by square-and-multiply (variable time in `e`, which is public).
    pub fn pow(&self, mut a: u64, mut e: u64) -> u64 {
        let mut r = 1 % self.value;
        a = self.reduce(a);
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, a);
            }
            a = self.mul(a, a);
            e >>= 1;
        }
        r
    }

    /// Multiplicative inverse modulo the prime `q`.
    ///
    /// # Errors
    /// [`RingError::NotInvertible`] when `a ≡ 0 (mod q)`.
    pub fn inv(&self, a: u64) -> Result<u64, RingError> {
        let a = self.reduce(a);
        if a == 0 {
            return Err(RingError::NotInvertible {
                value: a,
                modulus: self.value,
            });
        }
        Ok(self.pow(a, self.value - 2))
    }

    /// Maps a residue to its centered representative in `(-q/2, q/2]`.
    #[inline(always)]
    pub fn center(&self, a: u64) -> i64 {
        if a > self.value / 2 {
            a as i64 - self.value as i64
        } else {
            a as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q61() -> Modulus {
        Modulus::new(0x1fff_ffff_ffe0_0001).unwrap()
    }

    proptest! {
        #[test]
        fn mul_matches_u128(a in any::<u64>(), b in any::<u64>(), bits in 20u32..=61) {
            let qv = crate::prime::ntt_primes(bits, 10, 1).unwrap()[0];
            let q = Modulus::new(qv).unwrap();
            let (a, b) = (a % qv, b % qv);
            let want = ((a as u128 * b as u128) % qv as u128) as u64;
            prop_assert_eq!(q.mul(a, b), want);
            prop_assert_eq!(q.mul_shoup(a, b, q.shoup(b)), want);
            prop_assert_eq!(q.add(a, b), ((a as u128 + b as u128) % qv as u128) as u64);
            prop_assert_eq!(q.sub(a, b), ((a as u128 + qv as u128 - b as u128) % qv as u128) as u64);
            prop_assert_eq!(q.add(q.neg(a), a), 0);
        }

        #[test]
        fn reduce_wide(x in any::<u128>(), bits in 20u32..=61) {
            let qv = crate::prime::ntt_primes(bits, 10, 1).unwrap()[0];
            let q = Modulus::new(qv).unwrap();
            prop_assert_eq!(q.reduce_u128_any(x), (x % qv as u128) as u64);
            prop_assert_eq!(q.reduce_u128_any(u128::MAX - (x >> 3)), ((u128::MAX - (x >> 3)) % qv as u128) as u64);
        }

        #[test]
        fn reduce_signed(x in any::<i64>()) {
            let q = q61();
            let want = (x as i128).rem_euclid(q.value() as i128) as u64;
            prop_assert_eq!(q.reduce_i64(x), want);
            prop_assert_eq!(q.reduce_i128(x as i128 * 1_000_003), ((x as i128 * 1_000_003).rem_euclid(q.value() as i128)) as u64);
        }
    }

    #[test]
    fn inverse_and_errors() {
        let q = q61();
        let a = 123_456_789;
        assert_eq!(q.mul(a, q.inv(a).unwrap()), 1);
        assert!(q.inv(0).is_err());
        assert!(Modulus::new(4).is_err());
        assert!(Modulus::new(1 << 62).is_err());
    }
}
