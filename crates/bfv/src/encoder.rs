//! Plaintexts (polynomials with coefficients mod `t`) and the batching encoder.
//!
//! # Slot layout
//!
//! With `t` prime and `t ≡ 1 (mod 2N)`, `X^N + 1` splits modulo `t` into `N` linear factors
//! `X − ψ^e` (`ψ` a primitive `2N`-th root of unity mod `t`, `e` odd), and a plaintext is
//! determined by its `N` values `m(ψ^e)`: the slots. They form a `2 × N/2` matrix; slot `j`
//! of the vectors that [`BatchEncoder::encode`] takes and [`BatchEncoder::decode`] returns is
//! row `j / (N/2)`, column `c = j mod (N/2)`, and holds
//!
//! - row 0, column `c`: `m(ψ^(5^c mod 2N))`,
//! - row 1, column `c`: `m(ψ^(−5^c mod 2N))`.
//!
//! The automorphism `X ↦ X^g` maps `m(ψ^e)` to `m(ψ^(e·g))`, hence:
//!
//! - `g = 5^k mod 2N` rotates **both rows left by `k`** (new column `c` holds old column
//!   `c + k mod N/2`), the same direction as a CKKS rotation;
//! - `g = 2N − 1` **swaps the two rows**.
//!
//! `5` (rather than SEAL's `3`) is the generator: `⟨5⟩` and `⟨3⟩` both have order `N/2` and
//! together with `−1` generate `(Z/2N)^*`, and with `5` BFV rotations use the same Galois
//! elements as CKKS ([`hecnn_ring::RnsContext::galois_element`]), so one
//! [`hecnn_rlwe::KeyRequirements`] (`rotations` for row rotations, `conjugate` for the row
//! swap) describes the keys of both schemes. Lattigo's BGV/BFV makes the same choice.

use hecnn_ring::{Modulus, Ntt, ntt::ScalarNtt, ntt::bit_reverse, prime};

use crate::{BfvError, BfvParams};

/// A BFV plaintext: a polynomial with `N` coefficients in `[0, t)`, tied to its parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext {
    coeffs: Vec<u64>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plaintext")
            .field("n", &self.coeffs.len())
            .finish_non_exhaustive()
    }
}

impl Plaintext {
    /// The plaintext with coefficients `coeffs` (each in `[0, t)`, at most `N` of them; the
    /// rest are zero): the coefficient encoding, available for every `t`.
    ///
    /// # Errors
    /// [`BfvError::TooManyValues`], [`BfvError::ValueOutOfRange`].
    pub fn from_coeffs(params: &BfvParams, coeffs: &[u64]) -> Result<Self, BfvError> {
        let n = params.n();
        if coeffs.len() > n {
            return Err(BfvError::TooManyValues {
                values: coeffs.len(),
                slots: n,
            });
        }
        check_range(params.t(), coeffs)?;
        let mut c = coeffs.to_vec();
        c.resize(n, 0);
        Ok(Self::new(params, c))
    }

    /// The constant polynomial `value` (in `[0, t)`): an integer without batching. Products
    /// and sums of constants are the integer operations mod `t`.
    ///
    /// # Errors
    /// [`BfvError::ValueOutOfRange`].
    pub fn constant(params: &BfvParams, value: u64) -> Result<Self, BfvError> {
        Self::from_coeffs(params, &[value])
    }

    /// The constant `value` given as a signed integer in `(−t/2, t/2]`.
    ///
    /// # Errors
    /// [`BfvError::ValueOutOfRange`].
    pub fn constant_signed(params: &BfvParams, value: i64) -> Result<Self, BfvError> {
        Self::constant(params, reduce_signed(params.t(), 0, value)?)
    }

    pub(crate) fn new(params: &BfvParams, coeffs: Vec<u64>) -> Self {
        Self {
            coeffs,
            fingerprint: params.fingerprint(),
        }
    }

    /// The coefficients, in `[0, t)`.
    pub fn coeffs(&self) -> &[u64] {
        &self.coeffs
    }

    /// The constant coefficient (the integer of [`Plaintext::constant`]).
    pub fn constant_coeff(&self) -> u64 {
        self.coeffs.first().copied().unwrap_or(0)
    }

    /// Fingerprint of the parameters this plaintext belongs to.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

fn check_range(t: u64, values: &[u64]) -> Result<(), BfvError> {
    match values.iter().position(|&v| v >= t) {
        Some(index) => Err(BfvError::ValueOutOfRange {
            index,
            value: values[index] as i128,
            t,
        }),
        None => Ok(()),
    }
}

/// `v` in `(−t/2, t/2]` as a residue mod `t`.
fn reduce_signed(t: u64, index: usize, v: i64) -> Result<u64, BfvError> {
    let half = (t / 2) as i128;
    let lo = -(((t - 1) / 2) as i128);
    let w = v as i128;
    if w < lo || w > half {
        return Err(BfvError::ValueOutOfRange { index, value: w, t });
    }
    Ok(w.rem_euclid(t as i128) as u64)
}

/// The batching (SIMD) encoder: `N` values mod `t` in the `2 × N/2` slot matrix described
/// in the module documentation.
#[derive(Debug)]
pub struct BatchEncoder {
    ntt: ScalarNtt,
    /// Evaluation-domain index of every slot.
    slot_index: Vec<usize>,
    t: u64,
    fingerprint: [u8; 32],
}

impl BatchEncoder {
    /// An encoder for `params`.
    ///
    /// # Errors
    /// [`BfvError::BatchingUnavailable`] unless `t` is a prime `≡ 1 (mod 2N)`.
    pub fn new(params: &BfvParams) -> Result<Self, BfvError> {
        let n = params.n();
        let t = params.t();
        if !params.batching() {
            return Err(BfvError::BatchingUnavailable { t, n });
        }
        let m = Modulus::new(t)?;
        let root = prime::min_primitive_root(&m, 2 * n as u64)?;
        let ntt = ScalarNtt::new(m, n, root)?;
        let log_n = params.rlwe().log_n();
        let two_n = 2 * n;
        let half = n / 2;
        let mut slot_index = vec![0usize; n];
        let mut g = 1usize;
        for c in 0..half {
            // The evaluation at ψ^e sits at index brev((e − 1)/2).
            slot_index[c] = bit_reverse((g - 1) / 2, log_n);
            slot_index[half + c] = bit_reverse((two_n - g - 1) / 2, log_n);
            g = g * 5 % two_n;
        }
        Ok(Self {
            ntt,
            slot_index,
            t,
            fingerprint: params.fingerprint(),
        })
    }

    /// Number of slots (`N`: two rows of `N/2`).
    pub fn slots(&self) -> usize {
        self.slot_index.len()
    }

    /// The plaintext whose slots hold `values` (each in `[0, t)`; at most `N`, the rest zero),
    /// slot `j` being row `j / (N/2)`, column `j mod (N/2)`.
    ///
    /// # Errors
    /// [`BfvError::TooManyValues`], [`BfvError::ValueOutOfRange`].
    pub fn encode(&self, values: &[u64]) -> Result<Plaintext, BfvError> {
        let n = self.slots();
        if values.len() > n {
            return Err(BfvError::TooManyValues {
                values: values.len(),
                slots: n,
            });
        }
        check_range(self.t, values)?;
        let mut eval = vec![0u64; n];
        for (&v, &idx) in values.iter().zip(&self.slot_index) {
            eval[idx] = v;
        }
        self.ntt.inverse(&mut eval);
        Ok(Plaintext {
            coeffs: eval,
            fingerprint: self.fingerprint,
        })
    }

    /// As [`BatchEncoder::encode`], for signed values in `(−t/2, t/2]`.
    ///
    /// # Errors
    /// [`BfvError::TooManyValues`], [`BfvError::ValueOutOfRange`].
    pub fn encode_signed(&self, values: &[i64]) -> Result<Plaintext, BfvError> {
        let v: Vec<u64> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| reduce_signed(self.t, i, v))
            .collect::<Result<_, _>>()?;
        self.encode(&v)
    }

    /// The `N` slot values of `pt`, in `[0, t)`.
    ///
    /// # Errors
    /// [`BfvError::ParamsMismatch`] for a plaintext of other parameters.
    pub fn decode(&self, pt: &Plaintext) -> Result<Vec<u64>, BfvError> {
        if pt.fingerprint != self.fingerprint {
            return Err(BfvError::ParamsMismatch);
        }
        let mut eval = pt.coeffs.clone();
        self.ntt.forward(&mut eval);
        Ok(self.slot_index.iter().map(|&i| eval[i]).collect())
    }

    /// The slot values centered into `(−t/2, t/2]`.
    ///
    /// # Errors
    /// See [`BatchEncoder::decode`].
    pub fn decode_signed(&self, pt: &Plaintext) -> Result<Vec<i64>, BfvError> {
        let half = self.t / 2;
        Ok(self
            .decode(pt)?
            .into_iter()
            .map(|v| {
                if v > half {
                    v as i64 - self.t as i64
                } else {
                    v as i64
                }
            })
            .collect())
    }
}
