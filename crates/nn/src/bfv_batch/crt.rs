//! Plaintext CRT: residues modulo coprime plaintext moduli recombined into one integer.

use crate::NnError;

/// Coprime moduli whose product `T` is below `2^127`, with Garner's constants: residues
/// `a_i mod t_i` recombine into the unique integer in `(−T/2, T/2]` with those residues.
#[derive(Clone, Debug, PartialEq)]
pub struct Crt {
    moduli: Vec<u64>,
    /// `(t_0·…·t_{i−1})^{-1} mod t_i`.
    inverses: Vec<u64>,
    product: u128,
}

/// Largest product of the moduli (`2^127`: the centered result fits in `i128`).
pub const MAX_CRT_BITS: u32 = 127;

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

fn inv_mod(a: u64, m: u64) -> Option<u64> {
    // Extended Euclid over i128.
    let (mut r0, mut r1) = (m as i128, (a % m) as i128);
    let (mut s0, mut s1) = (0i128, 1i128);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (s0, s1) = (s1, s0 - q * s1);
    }
    (r0 == 1).then(|| s0.rem_euclid(m as i128) as u64)
}

impl Crt {
    /// The constants for `moduli` (each at least 2, pairwise coprime, product below
    /// `2^127`).
    ///
    /// # Errors
    /// [`NnError::Quantization`] naming what is wrong.
    pub fn new(moduli: &[u64]) -> Result<Self, NnError> {
        let bad = |why: &str| NnError::Quantization {
            what: format!("plaintext moduli {moduli:?}"),
            why: why.into(),
        };
        if moduli.is_empty() || moduli.iter().any(|&t| t < 2) {
            return Err(bad("need at least one modulus, each at least 2"));
        }
        let mut product: u128 = 1;
        let mut inverses = Vec::with_capacity(moduli.len());
        for &t in moduli {
            let p = (product % t as u128) as u64;
            inverses.push(inv_mod(p, t).ok_or_else(|| bad("not pairwise coprime"))?);
            product = product
                .checked_mul(t as u128)
                .filter(|&p| p < 1u128 << MAX_CRT_BITS)
                .ok_or_else(|| bad("their product reaches 2^127"))?;
        }
        Ok(Self {
            moduli: moduli.to_vec(),
            inverses,
            product,
        })
    }

    /// The moduli.
    pub fn moduli(&self) -> &[u64] {
        &self.moduli
    }

    /// Their product `T`.
    pub fn product(&self) -> u128 {
        self.product
    }

    /// The integer in `(−T/2, T/2]` with residue `residues[i]` mod `t_i` (Garner's mixed
    /// radix: every step in 64-bit modular arithmetic, the sum in `u128`).
    ///
    /// # Errors
    /// [`NnError::Internal`] for the wrong number of residues.
    pub fn combine(&self, residues: &[u64]) -> Result<i128, NnError> {
        if residues.len() != self.moduli.len() {
            return Err(NnError::Internal(format!(
                "{} residues for {} moduli",
                residues.len(),
                self.moduli.len()
            )));
        }
        // x = v_0 + v_1·t_0 + v_2·t_0·t_1 + …, with v_i < t_i.
        let mut x: u128 = 0;
        let mut radix: u128 = 1;
        for ((&t, &inv), &a) in self.moduli.iter().zip(&self.inverses).zip(residues) {
            let x_mod = (x % t as u128) as u64;
            let diff = (a % t + t - x_mod) % t;
            let v = mul_mod(diff, inv, t);
            x += v as u128 * radix;
            radix *= t as u128;
        }
        Ok(if x > self.product / 2 {
            -((self.product - x) as i128)
        } else {
            x as i128
        })
    }

    /// The residue of a signed integer modulo `t_i` (`None` for `i` out of range).
    pub fn residue(&self, v: i128, i: usize) -> Option<u64> {
        let t = *self.moduli.get(i)? as i128;
        Some(v.rem_euclid(t) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residues_recombine_to_the_centered_integer() {
        let crt = Crt::new(&[(1 << 40) - 87, 65537, 786433]).unwrap();
        let half = (crt.product() / 2) as i128;
        for v in [
            0i128,
            1,
            -1,
            12345678901234567,
            -98765432109876543,
            half,
            -half + 1,
        ] {
            let r: Vec<u64> = (0..3).map(|i| crt.residue(v, i).unwrap()).collect();
            assert_eq!(crt.combine(&r).unwrap(), v, "{v}");
        }
    }

    #[test]
    fn refuses_moduli_that_are_not_coprime_or_too_large() {
        assert!(Crt::new(&[6, 9]).is_err());
        assert!(Crt::new(&[]).is_err());
        assert!(Crt::new(&[1 << 63, (1 << 63) - 25, 3]).is_err());
        assert!(Crt::new(&[(1 << 61) - 1]).is_ok());
    }
}
