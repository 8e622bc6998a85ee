//! The scheme seam: what a runtime needs from a homomorphic scheme ([`Scheme`]), CKKS
//! itself ([`Ckks`]) and a packed cleartext stand-in that runs the same plan code on `f64`
//! slot vectors and simulates levels, scales and the modulus budget ([`Packed`]).
//!
//! Batch and single-image plans are written against [`Scheme`], so a second scheme (BFV,
//! exact integers) or a refresh step (bootstrapping inside a network) is an implementation
//! of this trait, not a change to the runtimes. The names follow CKKS (levels, scales,
//! rescaling); a scheme without rescaling keeps the scale at 1 and makes
//! [`Scheme::rescale_assign`] shed a prime, or nothing.

use std::collections::BTreeMap;

use hecnn_ckks::{BlockDiagonals, Ciphertext, CkksError, Evaluator, LinearTransform, Plaintext};
use hecnn_ring::Backend;

/// An operation a scheme refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemeError {
    /// From CKKS.
    #[error(transparent)]
    Ckks(#[from] CkksError),
    /// From BFV.
    #[error(transparent)]
    Bfv(#[from] hecnn_bfv::BfvError),
    /// An operation this scheme (or this build) does not provide.
    #[error("{op} is not available in {scheme}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The scheme.
        scheme: &'static str,
    },
    /// Operands that do not fit each other.
    #[error("operands do not fit: {0}")]
    Operands(&'static str),
    /// A value without the levels an operation needs.
    #[error("{needed} level(s) needed, {have} left")]
    Levels {
        /// Levels needed.
        needed: usize,
        /// Levels left.
        have: usize,
    },
    /// A value above the range an operation accepts (a refresh's bound).
    #[error("a value of magnitude {value:.4e} exceeds the bound {bound:.4e}")]
    Range {
        /// The largest magnitude.
        value: f64,
        /// The bound.
        bound: f64,
    },
    /// Values of different slot counts.
    #[error("slot counts differ: {lhs} and {rhs}")]
    Slots {
        /// The left operand's slots.
        lhs: usize,
        /// The right operand's slots.
        rhs: usize,
    },
}

/// The operations the runtimes need from a scheme. Values carry their level, scale and
/// degree; every method checks its operands.
pub trait Scheme: Sync {
    /// A ciphertext (or its cleartext stand-in).
    type Ct: Clone + Send + Sync;
    /// An encoded plaintext.
    type Pt: Send + Sync;
    /// An encoded block linear transform (diagonal method).
    type Transform: Send + Sync;
    /// The scheme's name, for messages.
    fn name(&self) -> &'static str;
    /// Level of a value.
    fn level(&self, ct: &Self::Ct) -> usize;
    /// Scale of a value.
    fn scale(&self, ct: &Self::Ct) -> f64;
    /// Degree of a value (1, or 2 before relinearization).
    fn degree(&self, ct: &Self::Ct) -> usize;
    /// Slots of a value.
    fn slots(&self, ct: &Self::Ct) -> usize;
    /// The prime dropped by a rescale at `level`.
    fn q_at(&self, level: usize) -> f64;
    /// The most slots a value may have (a simulator without a ring: unbounded).
    fn max_slots(&self) -> usize;
    /// Encodes real values into `slots` slots at `level` and `scale`.
    ///
    /// # Errors
    /// Too many values, bad level or scale.
    fn encode(
        &self,
        values: &[f64],
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<Self::Pt, SchemeError>;
    /// Encodes a block matrix of `shape` (outputs, inputs) ciphertexts at `level`, its
    /// diagonals at `scale`: inputs at scale `s` come out at `s · scale / q_level` after the
    /// transform's rescale (`q_level` keeps the input scale; another choice sets the
    /// output's scale at no cost in levels).
    ///
    /// # Errors
    /// Bad diagonals; encoding errors.
    fn encode_transform(
        &self,
        diagonals: &BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<Self::Transform, SchemeError>;
    /// As [`Scheme::encode_transform`], for a transform used once: a scheme may keep the
    /// diagonals as values and encode them a few at a time while the transform runs
    /// (bounded memory for layers too large to hold encoded). By default, encodes now.
    ///
    /// # Errors
    /// As [`Scheme::encode_transform`].
    fn defer_transform(
        &self,
        diagonals: BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<Self::Transform, SchemeError> {
        self.encode_transform(&diagonals, shape, slots, level, scale)
    }
    /// `a + b`.
    ///
    /// # Errors
    /// Scale, slot or level errors of the scheme.
    fn add(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct, SchemeError>;
    /// `a += b`.
    ///
    /// # Errors
    /// As [`Scheme::add`].
    fn add_assign(&self, a: &mut Self::Ct, b: &Self::Ct) -> Result<(), SchemeError> {
        *a = self.add(a, b)?;
        Ok(())
    }
    /// `a + p` for a plaintext at `a`'s level and scale.
    ///
    /// # Errors
    /// Level, scale or slot mismatches.
    fn add_plain(&self, a: &Self::Ct, p: &Self::Pt) -> Result<Self::Ct, SchemeError>;
    /// Adds a real constant to every slot.
    ///
    /// # Errors
    /// Overflow.
    fn add_const(&self, a: &Self::Ct, c: f64) -> Result<Self::Ct, SchemeError>;
    /// Tensor square (degree 2, scale squared, not rescaled).
    ///
    /// # Errors
    /// Degree errors.
    fn square(&self, a: &Self::Ct) -> Result<Self::Ct, SchemeError>;
    /// `a · b`, relinearized (scale the product's, not rescaled).
    ///
    /// # Errors
    /// Level or degree errors, a missing relinearization key.
    fn mul_relin(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct, SchemeError>;
    /// Relinearization.
    ///
    /// # Errors
    /// Missing key.
    fn relinearize(&self, a: Self::Ct) -> Result<Self::Ct, SchemeError>;
    /// Rescale by the last prime, in place.
    ///
    /// # Errors
    /// Out of levels.
    fn rescale_assign(&self, a: &mut Self::Ct) -> Result<(), SchemeError>;
    /// Rotates the slots left by `k` (slot `i` receives slot `i + k`).
    ///
    /// # Errors
    /// A missing rotation key.
    fn rotate(&self, a: &Self::Ct, k: i64) -> Result<Self::Ct, SchemeError>;
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
    ) -> Result<Vec<Self::Ct>, SchemeError>;
    /// A block transform: output `v` = `Σ_u M_{v,u}·cts[u]`, rescaled once.
    ///
    /// # Errors
    /// Wrong number of inputs, level or slot mismatches, missing rotation keys.
    fn transform(
        &self,
        cts: &[Self::Ct],
        t: &Self::Transform,
    ) -> Result<Vec<Self::Ct>, SchemeError>;
    /// Brings `a` down to `level` (below its own) at exactly `scale`: a multiplication by
    /// the constant 1 encoded at the right scale and one rescale. A residual addition
    /// aligns its skip branch with it.
    ///
    /// # Errors
    /// `a` not above `level`; overflow of the constant.
    fn adjust(&self, a: &Self::Ct, level: usize, scale: f64) -> Result<Self::Ct, SchemeError>;
    /// Level and scale of refreshed values ([`Scheme::refresh`]), or `None` when the
    /// scheme cannot refresh.
    fn refresh_output(&self) -> Option<(usize, f64)> {
        None
    }
    /// Brings a value whose slots are at most `bound` (a power of two) in magnitude back to
    /// a high level (bootstrapping): the same values at [`Scheme::refresh_output`]'s level
    /// and scale (the value is refreshed as `a / bound`, inside the range where
    /// bootstrapping is accurate, then multiplied back by the integer `bound`). The default
    /// refuses: no runtime plan inserts a refresh unless its scheme provides one.
    ///
    /// # Errors
    /// [`SchemeError::Unsupported`]; a value above its bound.
    fn refresh(&self, _a: &Self::Ct, _bound: f64) -> Result<Self::Ct, SchemeError> {
        Err(SchemeError::Unsupported {
            op: "refresh (bootstrapping)",
            scheme: self.name(),
        })
    }
    /// Maps over independent items, in parallel where possible.
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R>;
}

/// CKKS on a backend: the encrypted scheme is the evaluator itself (its inherent methods,
/// with errors lifted into [`SchemeError`]).
impl<B: Backend> Scheme for Evaluator<B> {
    type Ct = Ciphertext<B>;
    type Pt = Plaintext<B>;
    type Transform = LinearTransform<B>;
    fn name(&self) -> &'static str {
        "CKKS"
    }
    fn slots(&self, ct: &Ciphertext<B>) -> usize {
        ct.slots()
    }
    fn max_slots(&self) -> usize {
        Evaluator::params(self).max_slots()
    }
    fn encode(
        &self,
        values: &[f64],
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<Plaintext<B>, SchemeError> {
        Ok(Evaluator::encode_real(self, values, level, scale, slots)?)
    }
    fn encode_transform(
        &self,
        diagonals: &BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<LinearTransform<B>, SchemeError> {
        Ok(LinearTransform::blocks(
            self, diagonals, shape, slots, level, scale,
        )?)
    }
    fn defer_transform(
        &self,
        diagonals: BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<LinearTransform<B>, SchemeError> {
        Ok(LinearTransform::deferred(
            self, diagonals, shape, slots, level, scale,
        )?)
    }
    fn add_plain(&self, a: &Ciphertext<B>, p: &Plaintext<B>) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::add_plain(self, a, p)?)
    }
    fn mul_relin(
        &self,
        a: &Ciphertext<B>,
        b: &Ciphertext<B>,
    ) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::mul_relin(self, a, b)?)
    }
    fn rotate(&self, a: &Ciphertext<B>, k: i64) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::rotate(self, a, k)?)
    }
    fn transform(
        &self,
        cts: &[Ciphertext<B>],
        t: &LinearTransform<B>,
    ) -> Result<Vec<Ciphertext<B>>, SchemeError> {
        Ok(Evaluator::linear_transform_blocks(self, cts, t)?)
    }
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
        Evaluator::params(self).q_at(level)
    }
    fn add(&self, a: &Ciphertext<B>, b: &Ciphertext<B>) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::add(self, a, b)?)
    }
    fn add_assign(&self, a: &mut Ciphertext<B>, b: &Ciphertext<B>) -> Result<(), SchemeError> {
        Ok(Evaluator::add_assign(self, a, b)?)
    }
    fn add_const(&self, a: &Ciphertext<B>, c: f64) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::add_const(self, a, c)?)
    }
    fn square(&self, a: &Ciphertext<B>) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::mul(self, a, a)?)
    }
    fn relinearize(&self, a: Ciphertext<B>) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::relinearize(self, a)?)
    }
    fn rescale_assign(&self, a: &mut Ciphertext<B>) -> Result<(), SchemeError> {
        Ok(Evaluator::rescale_assign(self, a)?)
    }
    fn weighted_sums(
        &self,
        inputs: &[&Ciphertext<B>],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<Ciphertext<B>>, SchemeError> {
        Ok(Evaluator::weighted_sums(self, inputs, rows, biases, scale)?)
    }
    fn adjust(
        &self,
        a: &Ciphertext<B>,
        level: usize,
        scale: f64,
    ) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::adjust(self, a, level, scale)?)
    }
    fn refresh_output(&self) -> Option<(usize, f64)> {
        let scale = Evaluator::params(self).default_scale();
        self.refresh_level().map(|level| (level, scale))
    }
    fn refresh(&self, a: &Ciphertext<B>, bound: f64) -> Result<Ciphertext<B>, SchemeError> {
        Ok(Evaluator::refresh(self, a, bound)?)
    }
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        Evaluator::backend(self).par_map(items, f)
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

/// A block transform in the clear: the real parts of the diagonals, the shape, the level.
pub struct PackedTransform {
    diagonals: BTreeMap<(usize, usize), BTreeMap<i64, Vec<f64>>>,
    shape: (usize, usize),
    slots: usize,
    level: usize,
    scale: f64,
}

/// The cleartext scheme: runs a plan on packed `f64` slot vectors exactly as the encrypted
/// scheme would (integer weights, scales, levels, lazy squares, rotations, diagonals),
/// without encryption noise or rescale rounding, and simulates the modulus budget: it
/// records the smallest headroom `log2(Q_level / 2) − log2(max |value · scale|)` over every
/// intermediate value. Its refresh ([`Packed::with_refresh`]) models bootstrapping: the
/// level and scale it gives back, the bound and message ratio it accepts, and its error,
/// so plans that bootstrap can be checked without keys.
pub struct Packed {
    q: Vec<f64>,
    headroom: std::sync::Mutex<f64>,
    refresh: Option<PackedRefresh>,
}

/// What the packed scheme's refresh models: the level and scale bootstrapping gives back and
/// its error, uniform in `±bound · 2^-precision_bits` on every slot (deterministic: a fixed
/// generator), so that a simulated plan shows what bootstrapping's precision does to the
/// logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PackedRefresh {
    /// Level of refreshed values.
    pub level: usize,
    /// Their scale (for a bound of 1).
    pub scale: f64,
    /// Bits of precision relative to the bound (`f64::INFINITY`: exact).
    pub precision_bits: f64,
    /// The largest scale times bound bootstrapping accepts (`q_0` over its message ratio).
    pub max_scale: f64,
}

impl Packed {
    /// An engine for the Q primes of a parameter set.
    pub fn new(q: &[u64]) -> Self {
        Self {
            q: q.iter().map(|&v| v as f64).collect(),
            headroom: std::sync::Mutex::new(f64::INFINITY),
            refresh: None,
        }
    }

    /// The engine with a refresh (what bootstrapping gives back, and its error).
    pub fn with_refresh(mut self, refresh: PackedRefresh) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// The same engine (primes and refresh) with a headroom record of its own, so that runs
    /// on several threads each measure their own.
    pub fn fresh(&self) -> Self {
        Self {
            q: self.q.clone(),
            headroom: std::sync::Mutex::new(f64::INFINITY),
            refresh: self.refresh,
        }
    }

    /// The smallest headroom (bits) seen so far; negative means the value would wrap modulo Q.
    pub fn min_headroom_bits(&self) -> f64 {
        self.headroom.lock().map_or(f64::NEG_INFINITY, |h| *h)
    }

    /// Forgets the headroom seen so far (to measure one run at a time).
    pub fn reset_headroom(&self) {
        if let Ok(mut h) = self.headroom.lock() {
            *h = f64::INFINITY;
        }
    }

    fn record(&self, v: &PackedValue) {
        let top = v.level.min(self.q.len().saturating_sub(1));
        let log_q: f64 = self.q.iter().take(top + 1).map(|q| q.log2()).sum();
        let max = v.slots.iter().fold(0.0f64, |m, x| {
            if x.is_finite() {
                m.max(x.abs())
            } else {
                f64::INFINITY
            }
        }) * v.scale;
        let bits = log_q - 1.0 - max.max(1.0).log2();
        if let Ok(mut h) = self.headroom.lock() {
            *h = h.min(bits);
        }
    }

    /// Wraps input values (one vector of slot values per input ciphertext) at `level` and
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

    fn done(&self, v: PackedValue) -> Result<PackedValue, SchemeError> {
        self.record(&v);
        Ok(v)
    }

    fn same_slots(a: &PackedValue, b: &PackedValue) -> Result<(), SchemeError> {
        if a.slots.len() == b.slots.len() {
            Ok(())
        } else {
            Err(SchemeError::Slots {
                lhs: a.slots.len(),
                rhs: b.slots.len(),
            })
        }
    }
}

impl Scheme for Packed {
    type Ct = PackedValue;
    type Pt = PackedValue;
    type Transform = PackedTransform;
    fn name(&self) -> &'static str {
        "packed cleartext"
    }
    fn level(&self, ct: &PackedValue) -> usize {
        ct.level
    }
    fn scale(&self, ct: &PackedValue) -> f64 {
        ct.scale
    }
    fn degree(&self, ct: &PackedValue) -> usize {
        ct.degree
    }
    fn slots(&self, ct: &PackedValue) -> usize {
        ct.slots.len()
    }
    fn max_slots(&self) -> usize {
        usize::MAX
    }
    fn q_at(&self, level: usize) -> f64 {
        self.q.get(level).copied().unwrap_or(1.0)
    }
    fn encode(
        &self,
        values: &[f64],
        level: usize,
        scale: f64,
        slots: usize,
    ) -> Result<PackedValue, SchemeError> {
        if values.len() > slots {
            return Err(SchemeError::Operands("more values than slots"));
        }
        let mut v: Vec<f64> = values.iter().map(|x| (x * scale).round() / scale).collect();
        v.resize(slots, 0.0);
        Ok(PackedValue {
            slots: v,
            level,
            scale,
            degree: 1,
        })
    }
    fn encode_transform(
        &self,
        diagonals: &BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<PackedTransform, SchemeError> {
        if !(scale.is_finite() && scale >= 1.0) {
            return Err(SchemeError::Operands("a transform scale below 1"));
        }
        let mut real = BTreeMap::new();
        for (&(v, u), diags) in diagonals {
            if v >= shape.0 || u >= shape.1 {
                return Err(SchemeError::Operands(
                    "a block outside the transform's shape",
                ));
            }
            let block: BTreeMap<i64, Vec<f64>> = diags
                .iter()
                .map(|(&k, d)| {
                    (
                        k,
                        d.iter().map(|c| (c.re * scale).round() / scale).collect(),
                    )
                })
                .collect();
            if block.values().any(|d| d.len() != slots) {
                return Err(SchemeError::Operands("a diagonal of the wrong length"));
            }
            real.insert((v, u), block);
        }
        Ok(PackedTransform {
            diagonals: real,
            shape,
            slots,
            level,
            scale,
        })
    }
    fn add(&self, a: &PackedValue, b: &PackedValue) -> Result<PackedValue, SchemeError> {
        Self::same_slots(a, b)?;
        // CKKS adds only values at the same scale (up to the rounding of scale products).
        if ((a.scale - b.scale) / a.scale).abs() > 1e-12 {
            return Err(SchemeError::Operands(
                "an addition of values at different scales",
            ));
        }
        let slots = a.slots.iter().zip(&b.slots).map(|(x, y)| x + y).collect();
        self.done(PackedValue {
            slots,
            level: a.level.min(b.level),
            scale: a.scale,
            degree: a.degree.max(b.degree),
        })
    }
    fn add_plain(&self, a: &PackedValue, p: &PackedValue) -> Result<PackedValue, SchemeError> {
        self.add(a, p)
    }
    fn add_const(&self, a: &PackedValue, c: f64) -> Result<PackedValue, SchemeError> {
        let k = (c * a.scale).round() / a.scale;
        self.done(PackedValue {
            slots: a.slots.iter().map(|x| x + k).collect(),
            ..a.clone()
        })
    }
    fn square(&self, a: &PackedValue) -> Result<PackedValue, SchemeError> {
        self.done(PackedValue {
            slots: a.slots.iter().map(|x| x * x).collect(),
            level: a.level,
            scale: a.scale * a.scale,
            degree: 2,
        })
    }
    fn mul_relin(&self, a: &PackedValue, b: &PackedValue) -> Result<PackedValue, SchemeError> {
        Self::same_slots(a, b)?;
        self.done(PackedValue {
            slots: a.slots.iter().zip(&b.slots).map(|(x, y)| x * y).collect(),
            level: a.level.min(b.level),
            scale: a.scale * b.scale,
            degree: 1,
        })
    }
    fn relinearize(&self, a: PackedValue) -> Result<PackedValue, SchemeError> {
        Ok(PackedValue { degree: 1, ..a })
    }
    fn rescale_assign(&self, a: &mut PackedValue) -> Result<(), SchemeError> {
        if a.level == 0 {
            return Err(SchemeError::Levels { needed: 1, have: 0 });
        }
        a.scale /= self.q_at(a.level);
        a.level -= 1;
        Ok(())
    }
    fn rotate(&self, a: &PackedValue, k: i64) -> Result<PackedValue, SchemeError> {
        let n = a.slots.len();
        let mut slots = a.slots.clone();
        if n > 0 {
            slots.rotate_left(k.rem_euclid(n as i64) as usize);
        }
        Ok(PackedValue { slots, ..a.clone() })
    }
    fn weighted_sums(
        &self,
        inputs: &[&PackedValue],
        rows: &[Vec<(usize, i128)>],
        biases: &[i128],
        scale: f64,
    ) -> Result<Vec<PackedValue>, SchemeError> {
        let first = inputs
            .first()
            .ok_or(SchemeError::Operands("weighted sums of no input"))?;
        let level = inputs.iter().map(|v| v.level).min().unwrap_or(0);
        let n = first.slots.len();
        rows.iter()
            .zip(biases)
            .map(|(row, &bias)| {
                // content = Σ W·(v·s_in) + bias, declared at `scale`.
                let mut slots = vec![bias as f64; n];
                for &(j, w) in row {
                    let v = inputs
                        .get(j)
                        .ok_or(SchemeError::Operands("a weight on a missing input"))?;
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
    fn transform(
        &self,
        cts: &[PackedValue],
        t: &PackedTransform,
    ) -> Result<Vec<PackedValue>, SchemeError> {
        if cts.len() != t.shape.1 {
            return Err(SchemeError::Operands(
                "the number of input ciphertexts differs from the transform's",
            ));
        }
        let first = cts
            .first()
            .ok_or(SchemeError::Operands("a transform of no input"))?;
        if cts
            .iter()
            .any(|c| c.slots.len() != t.slots || c.scale != first.scale)
        {
            return Err(SchemeError::Operands("inputs of other slots or scales"));
        }
        if cts.iter().any(|c| c.level < t.level) || t.level == 0 {
            return Err(SchemeError::Levels {
                needed: t.level.max(1),
                have: cts.iter().map(|c| c.level).min().unwrap_or(0),
            });
        }
        let n = t.slots;
        let mut out = vec![vec![0.0; n]; t.shape.0];
        for (&(v, u), diags) in &t.diagonals {
            let (Some(o), Some(x)) = (out.get_mut(v), cts.get(u)) else {
                continue;
            };
            for (&k, d) in diags {
                // out[i] += d[i] · x[(i + k) mod n], as two contiguous runs (no division per
                // slot, so the loops vectorise); the sums are the same, in the same order.
                let k = k.rem_euclid(n as i64) as usize;
                let (o_head, o_tail) = o.split_at_mut(n - k);
                let (d_head, d_tail) = d.split_at(n - k);
                let (x_tail, x_head) = x.slots.split_at(k);
                for ((o, &w), &v) in o_head.iter_mut().zip(d_head).zip(x_head) {
                    *o += w * v;
                }
                for ((o, &w), &v) in o_tail.iter_mut().zip(d_tail).zip(x_tail) {
                    *o += w * v;
                }
            }
        }
        out.into_iter()
            .map(|slots| {
                self.done(PackedValue {
                    slots,
                    level: t.level - 1,
                    scale: first.scale * t.scale / self.q_at(t.level),
                    degree: 1,
                })
            })
            .collect()
    }
    fn adjust(
        &self,
        a: &PackedValue,
        level: usize,
        scale: f64,
    ) -> Result<PackedValue, SchemeError> {
        if a.level <= level {
            return Err(SchemeError::Levels {
                needed: level + 1,
                have: a.level,
            });
        }
        // The constant CKKS multiplies by is rounded to an integer: model its rounding.
        let factor = scale * self.q_at(level + 1) / a.scale;
        let k = factor.round();
        // CKKS multiplies by `k` as an i128 below 2^126 and refuses 0.
        if !k.is_finite() || k == 0.0 || k.abs() >= 2f64.powi(126) {
            return Err(SchemeError::Operands("a scale adjustment out of range"));
        }
        let ratio = k / factor;
        self.done(PackedValue {
            slots: a.slots.iter().map(|v| v * ratio).collect(),
            level,
            scale,
            degree: a.degree,
        })
    }
    fn refresh_output(&self) -> Option<(usize, f64)> {
        self.refresh.map(|r| (r.level, r.scale))
    }
    fn refresh(&self, a: &PackedValue, bound: f64) -> Result<PackedValue, SchemeError> {
        let Some(r) = self.refresh else {
            return Err(SchemeError::Unsupported {
                op: "refresh (bootstrapping)",
                scheme: self.name(),
            });
        };
        if !(bound >= 1.0 && bound <= f64::from(1u32 << 30) && bound.log2().fract() == 0.0) {
            return Err(SchemeError::Operands(
                "a refresh bound that is not a power of two from 1 to 2^30",
            ));
        }
        if a.scale * bound > r.max_scale {
            return Err(SchemeError::Operands(
                "a value's scale times its bound above what bootstrapping's message ratio accepts",
            ));
        }
        let largest = a.slots.iter().fold(0.0f64, |m, x| {
            if x.is_finite() {
                m.max(x.abs())
            } else {
                f64::INFINITY
            }
        });
        if largest > bound {
            return Err(SchemeError::Range {
                value: largest,
                bound,
            });
        }
        // Bootstrapping's error: a fixed-seed generator per refreshed value (its content),
        // so that reruns agree.
        let error = bound * (-r.precision_bits).exp2();
        let mut state = a.slots.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, x| {
            (h ^ x.to_bits()).wrapping_mul(0x0000_0100_0000_01b3)
        }) | 1;
        let slots = a
            .slots
            .iter()
            .map(|x| {
                if error == 0.0 {
                    return *x;
                }
                // xorshift64*: uniform in [-1, 1).
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let u =
                    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
                x + error * (2.0 * u - 1.0)
            })
            .collect();
        self.done(PackedValue {
            slots,
            level: r.level,
            scale: r.scale,
            degree: 1,
        })
    }
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        items.into_iter().map(f).collect()
    }
}
