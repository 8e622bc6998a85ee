//! Ciphertext engines for the batch runtime: CKKS itself ([`Encrypted`]) and a packed
//! cleartext stand-in that simulates levels, scales and the modulus budget ([`Packed`]).

use hecnn_ckks::{Ciphertext, CkksError, Evaluator};
use hecnn_ring::Backend;

/// The operations the batch runtime needs from a ciphertext engine: the encrypted engine
/// ([`Encrypted`]) and the cleartext / simulation engine ([`Packed`]) run the same plan code.
pub trait Engine: Sync {
    /// A ciphertext (or its cleartext stand-in).
    type Ct: Clone + Send + Sync;
    /// Level of a value.
    fn level(&self, ct: &Self::Ct) -> usize;
    /// Scale of a value.
    fn scale(&self, ct: &Self::Ct) -> f64;
    /// Degree of a value (1, or 2 before relinearization).
    fn degree(&self, ct: &Self::Ct) -> usize;
    /// The prime dropped by a rescale at `level`.
    fn q_at(&self, level: usize) -> f64;
    /// `a + b`.
    ///
    /// # Errors
    /// Scale, slot or level errors of the engine.
    fn add(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct, CkksError>;
    /// `a += b`.
    ///
    /// # Errors
    /// As [`Engine::add`].
    fn add_assign(&self, a: &mut Self::Ct, b: &Self::Ct) -> Result<(), CkksError> {
        *a = self.add(a, b)?;
        Ok(())
    }
    /// Adds a real constant to every slot.
    ///
    /// # Errors
    /// Overflow.
    fn add_const(&self, a: &Self::Ct, c: f64) -> Result<Self::Ct, CkksError>;
    /// Tensor square (degree 2, scale squared, not rescaled).
    ///
    /// # Errors
    /// Degree errors.
    fn square(&self, a: &Self::Ct) -> Result<Self::Ct, CkksError>;
    /// Relinearization.
    ///
    /// # Errors
    /// Missing key.
    fn relinearize(&self, a: Self::Ct) -> Result<Self::Ct, CkksError>;
    /// Rescale by the last prime.
    ///
    /// # Errors
    /// Out of levels.
    fn rescale(&self, a: &mut Self::Ct) -> Result<(), CkksError>;
    /// Integer-weighted sums of many outputs over the same inputs (see
    /// [`Evaluator::weighted_sums`]).
    ///
    /// # Errors
    /// Mismatched inputs.
    fn weighted_sums(
        &self,
        inputs: &[&Self::Ct],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<Self::Ct>, CkksError>;
    /// Maps over independent items, in parallel where possible.
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R>;
}

/// The encrypted engine: CKKS on a backend.
pub struct Encrypted<'a, B: Backend>(pub &'a Evaluator<B>);

impl<B: Backend> Engine for Encrypted<'_, B> {
    type Ct = Ciphertext<B>;
    fn level(&self, ct: &Ciphertext<B>) -> usize {
        ct.level()
    }
    fn scale(&self, ct: &Ciphertext<B>) -> f64 {
        ct.scale()
    }
    fn degree(&self, ct: &Ciphertext<B>) -> usize {
        ct.degree()
    }
    fn q_at(&self, level: usize) -> f64 {
        self.0.params().q_at(level)
    }
    fn add(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.0.add(a, b)
    }
    fn add_assign(&self, a: &mut Ciphertext<B>, b: &Ciphertext<B>) -> Result<(), CkksError> {
        self.0.add_assign(a, b)
    }
    fn add_const(&self, a: &Ciphertext<B>, c: f64) -> Result<Ciphertext<B>, CkksError> {
        self.0.add_const(a, c)
    }
    fn square(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.0.mul(a, a)
    }
    fn relinearize(&self, a: Ciphertext<B>) -> Result<Ciphertext<B>, CkksError> {
        self.0.relinearize(a)
    }
    fn rescale(&self, a: &mut Ciphertext<B>) -> Result<(), CkksError> {
        self.0.rescale_assign(a)
    }
    fn weighted_sums(
        &self,
        inputs: &[&Ciphertext<B>],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<Ciphertext<B>>, CkksError> {
        self.0.weighted_sums(inputs, rows, biases, scale)
    }
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        self.0.backend().par_map(items, f)
    }
}

/// A cleartext stand-in for a ciphertext: the decoded slot values with the level, scale and
/// degree CKKS would have.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedValue {
    /// Decoded values, one per slot.
    pub slots: Vec<f64>,
    /// Level.
    pub level: usize,
    /// Scale.
    pub scale: f64,
    /// Degree.
    pub degree: usize,
}

/// The cleartext engine: runs a plan on packed `f64` slot vectors exactly as the encrypted
/// engine would (integer weights, scales, levels, lazy squares), without noise, and
/// simulates the modulus budget: it records the smallest headroom
/// `log2(Q_level / 2) − log2(max |value · scale|)` over every intermediate value.
pub struct Packed {
    q: Vec<f64>,
    headroom: std::sync::Mutex<f64>,
}

impl Packed {
    /// An engine for the Q primes of a parameter set.
    pub fn new(q: &[u64]) -> Self {
        Self {
            q: q.iter().map(|&v| v as f64).collect(),
            headroom: std::sync::Mutex::new(f64::INFINITY),
        }
    }

    /// The smallest headroom (bits) seen so far; negative means the value would wrap modulo Q.
    pub fn min_headroom_bits(&self) -> f64 {
        self.headroom.lock().map_or(f64::NEG_INFINITY, |h| *h)
    }

    fn record(&self, v: &PackedValue) {
        let log_q: f64 = self.q[..=v.level.min(self.q.len() - 1)]
            .iter()
            .map(|q| q.log2())
            .sum();
        let max = v.slots.iter().fold(0.0f64, |m, x| m.max(x.abs())) * v.scale;
        let bits = log_q - 1.0 - max.max(1.0).log2();
        if let Ok(mut h) = self.headroom.lock() {
            *h = h.min(bits);
        }
    }

    /// Wraps input values (one vector of slot values per input neuron) at `level` and
    /// `scale`.
    pub fn inputs(&self, columns: Vec<Vec<f64>>, level: usize, scale: f64) -> Vec<PackedValue> {
        columns
            .into_iter()
            .map(|slots| PackedValue {
                slots,
                level,
                scale,
                degree: 1,
            })
            .collect()
    }

    fn done(&self, v: PackedValue) -> Result<PackedValue, CkksError> {
        self.record(&v);
        Ok(v)
    }
}

impl Engine for Packed {
    type Ct = PackedValue;
    fn level(&self, ct: &PackedValue) -> usize {
        ct.level
    }
    fn scale(&self, ct: &PackedValue) -> f64 {
        ct.scale
    }
    fn degree(&self, ct: &PackedValue) -> usize {
        ct.degree
    }
    fn q_at(&self, level: usize) -> f64 {
        self.q.get(level).copied().unwrap_or(1.0)
    }
    fn add(&self, a: &PackedValue, b: &PackedValue) -> Result<PackedValue, CkksError> {
        let slots = a.slots.iter().zip(&b.slots).map(|(x, y)| x + y).collect();
        self.done(PackedValue {
            slots,
            level: a.level.min(b.level),
            scale: a.scale,
            degree: a.degree.max(b.degree),
        })
    }
    fn add_const(&self, a: &PackedValue, c: f64) -> Result<PackedValue, CkksError> {
        let k = (c * a.scale).round() / a.scale;
        self.done(PackedValue {
            slots: a.slots.iter().map(|x| x + k).collect(),
            ..a.clone()
        })
    }
    fn square(&self, a: &PackedValue) -> Result<PackedValue, CkksError> {
        self.done(PackedValue {
            slots: a.slots.iter().map(|x| x * x).collect(),
            level: a.level,
            scale: a.scale * a.scale,
            degree: 2,
        })
    }
    fn relinearize(&self, a: PackedValue) -> Result<PackedValue, CkksError> {
        Ok(PackedValue { degree: 1, ..a })
    }
    fn rescale(&self, a: &mut PackedValue) -> Result<(), CkksError> {
        if a.level == 0 {
            return Err(CkksError::LevelTooLow { needed: 1, have: 0 });
        }
        a.scale /= self.q_at(a.level);
        a.level -= 1;
        Ok(())
    }
    fn weighted_sums(
        &self,
        inputs: &[&PackedValue],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<PackedValue>, CkksError> {
        let first = inputs.first().ok_or(CkksError::InvalidArgument {
            what: "weighted sums of no input",
        })?;
        let level = inputs.iter().map(|v| v.level).min().unwrap_or(0);
        let n = first.slots.len();
        rows.iter()
            .zip(biases)
            .map(|(row, &bias)| {
                // content = Σ W·(v·s_in) + bias, declared at `scale`.
                let mut slots = vec![bias as f64; n];
                for &(j, w) in row {
                    let v = inputs[j];
                    for (o, x) in slots.iter_mut().zip(&v.slots) {
                        *o += w as f64 * x * v.scale;
                    }
                }
                slots.iter_mut().for_each(|o| *o /= scale);
                self.done(PackedValue {
                    slots,
                    level,
                    scale,
                    degree: first.degree,
                })
            })
            .collect()
    }
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        items.into_iter().map(f).collect()
    }
}
