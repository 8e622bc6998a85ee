//! NTT-friendly prime generation and primitive roots of unity.

use crate::{RingError, modulus::Modulus};

/// Deterministic Miller–Rabin primality test for 64-bit integers.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let mut d = n - 1;
    let mut s = 0;
    while d.is_multiple_of(2) {
        d /= 2;
        s += 1;
    }
    let mulmod = |a: u64, b: u64| ((a as u128 * b as u128) % n as u128) as u64;
    let powmod = |mut a: u64, mut e: u64| {
        let mut r = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                r = mulmod(r, a);
            }
            a = mulmod(a, a);
            e >>= 1;
        }
        r
    };
    'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = powmod(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mulmod(x, x);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// Generates `count` distinct primes `q ≡ 1 (mod 2^(log_n+1))` of exactly `bits` bits,
/// the largest ones first (closest to `2^bits` from below).
///
/// Used for key-switching and base primes, where only the size matters.
///
/// # Errors
/// [`RingError::NotEnoughPrimes`] if the range is exhausted, [`RingError::InvalidModulus`]
/// for unsupported sizes.
pub fn ntt_primes(bits: u32, log_n: u32, count: usize) -> Result<Vec<u64>, RingError> {
    ntt_primes_excluding(bits, log_n, count, &[])
}

/// Like [`ntt_primes`] but skips the primes in `exclude`.
///
/// # Errors
/// See [`ntt_primes`].
pub fn ntt_primes_excluding(
    bits: u32,
    log_n: u32,
    count: usize,
    exclude: &[u64],
) -> Result<Vec<u64>, RingError> {
    check_bits(bits, log_n)?;
    let m = 1u64 << (log_n + 1);
    let lo = 1u64 << (bits - 1);
    // Largest candidate ≡ 1 mod m below 2^bits.
    let mut c = ((1u64 << bits) - 1) / m * m + 1;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if c < lo {
            return Err(RingError::NotEnoughPrimes { bits, log_n, count });
        }
        if is_prime(c) && !exclude.contains(&c) {
            out.push(c);
        }
        c -= m;
    }
    Ok(out)
}

/// Generates `count` distinct NTT-friendly primes as close as possible to `2^bits`,
/// alternating above and below it so that the product of consecutive primes stays close to
/// `2^(bits·k)`. This keeps the CKKS scale stable across rescales.
///
/// # Errors
/// See [`ntt_primes`].
pub fn ntt_primes_near(
    bits: u32,
    log_n: u32,
    count: usize,
    exclude: &[u64],
) -> Result<Vec<u64>, RingError> {
    check_bits(bits, log_n)?;
    if bits + 1 > crate::modulus::MAX_MODULUS_BITS {
        return Err(RingError::InvalidModulus { value: 1 << bits });
    }
    let m = 1u64 << (log_n + 1);
    let center = 1u64 << bits;
    let mut up = center + 1;
    let mut down = center - m + 1;
    let (lo, hi) = (center >> 1, center << 1);
    let mut out = Vec::with_capacity(count);
    let mut ratio = 1.0f64; // product of chosen primes / 2^(bits·k)
    while out.len() < count {
        // Advance both cursors to the next prime.
        while up < hi && (!is_prime(up) || exclude.contains(&up) || out.contains(&up)) {
            up += m;
        }
        while down > lo && (!is_prime(down) || exclude.contains(&down) || out.contains(&down)) {
            down -= m;
        }
        let up_ok = up < hi;
        let down_ok = down > lo;
        let pick_up = match (up_ok, down_ok) {
            (false, false) => return Err(RingError::NotEnoughPrimes { bits, log_n, count }),
            (true, false) => true,
            (false, true) => false,
            (true, true) => ratio < 1.0,
        };
        let p = if pick_up { up } else { down };
        ratio *= p as f64 / center as f64;
        out.push(p);
    }
    Ok(out)
}

fn check_bits(bits: u32, log_n: u32) -> Result<(), RingError> {
    if !(log_n + 2..=crate::modulus::MAX_MODULUS_BITS).contains(&bits) || log_n > 20 {
        return Err(RingError::InvalidModulus {
            value: 1u64.checked_shl(bits).unwrap_or(0),
        });
    }
    Ok(())
}

/// Finds the smallest primitive `2n`-th root of unity modulo the prime `q` (n a power of two).
///
/// # Errors
/// [`RingError::NoRootOfUnity`] if `q ≢ 1 (mod 2n)`.
pub fn min_primitive_root(q: &Modulus, two_n: u64) -> Result<u64, RingError> {
    let qv = q.value();
    if !two_n.is_power_of_two() || !(qv - 1).is_multiple_of(two_n) {
        return Err(RingError::NoRootOfUnity {
            modulus: qv,
            order: two_n,
        });
    }
    // Any generator candidate g gives g^((q-1)/2n); it is primitive iff its (n)-th power is -1.
    let exp = (qv - 1) / two_n;
    let mut root = None;
    for g in 2..qv {
        let w = q.pow(g, exp);
        if q.pow(w, two_n / 2) == qv - 1 {
            root = Some(w);
            break;
        }
    }
    let w = root.ok_or(RingError::NoRootOfUnity {
        modulus: qv,
        order: two_n,
    })?;
    // The smallest primitive root is the minimum over odd powers of w.
    let w2 = q.mul(w, w);
    let mut cur = w;
    let mut best = w;
    for _ in 0..two_n / 2 {
        best = best.min(cur);
        cur = q.mul(cur, w2);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_are_ntt_friendly() {
        for (bits, log_n) in [(30, 10), (40, 14), (49, 16), (55, 16), (61, 16)] {
            let ps = ntt_primes(bits, log_n, 5).unwrap();
            for p in &ps {
                assert!(is_prime(*p));
                assert_eq!(p % (1 << (log_n + 1)), 1);
                assert_eq!(64 - p.leading_zeros(), bits);
            }
        }
        let near = ntt_primes_near(40, 14, 8, &[]).unwrap();
        let log_prod: f64 = near.iter().map(|&p| (p as f64).log2()).sum();
        assert!((log_prod - 320.0).abs() < 0.01, "{log_prod}");
    }

    #[test]
    fn primality_small_cases() {
        let naive = |n: u64| {
            n >= 2
                && (2..n)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        for n in 0..5000 {
            assert_eq!(is_prime(n), naive(n), "{n}");
        }
        assert!(is_prime(0x1fff_ffff_ffe0_0001));
        assert!(!is_prime(0x1fff_ffff_ffe0_0001u64 * 3));
    }

    #[test]
    fn root_is_primitive() {
        let q = Modulus::new(ntt_primes(50, 12, 1).unwrap()[0]).unwrap();
        let w = min_primitive_root(&q, 1 << 13).unwrap();
        assert_eq!(q.pow(w, 1 << 12), q.value() - 1);
    }
}
