//! Plaintext matrix × ciphertext vector by the diagonal method with baby-step giant-step:
//! `M·v = Σ_g rot_g( Σ_b rot_{-g}(d_{g+b}) ⊙ rot_b(v) )`, baby steps hoisted (one
//! decomposition per input ciphertext), the inner sums accumulated lazily (one reduction per
//! output word), and a single rescale at the end.
//!
//! A transform may also act on a vector spread over several ciphertexts (a *block* matrix:
//! output ciphertext `v` = `Σ_u M_{v,u}·ct_u`): the baby-step rotations of every input
//! ciphertext are shared by all outputs, and each output pays its own giant steps.

use std::collections::{BTreeMap, BTreeSet};

use hecnn_ring::{
    Backend, Basis, Eval, RnsPoly,
    backend::{Operand, PolyRows},
};
use num_complex::Complex64;

use crate::{Ciphertext, CkksError, Evaluator, Plaintext};

/// The diagonals of a block matrix: `(output block, input block)` → diagonal index `k ∈
/// [0, slots)` → `d_k` with `d_k[i] = M_{v,u}[i][(i + k) mod slots]`.
pub type BlockDiagonals = BTreeMap<(usize, usize), BTreeMap<i64, Vec<Complex64>>>;

/// The diagonals one giant step multiplies: `(input block, baby step, pre-rotated diagonal)`.
type Group<B> = Vec<(usize, i64, Diagonal<B>)>;

/// A pre-rotated diagonal: encoded once ([`LinearTransform::blocks`]), or kept as its slot
/// values and encoded each time the transform runs ([`LinearTransform::deferred`]).
enum Diagonal<B: Backend> {
    Encoded(Plaintext<B>),
    Real(Vec<f64>),
    Complex(Vec<Complex64>),
}

/// Bytes of deferred diagonals encoded at once while a deferred transform runs (the
/// plaintexts of a few giant steps): large enough to keep every thread busy encoding,
/// small beside the keys.
pub const DEFERRED_CHUNK_BYTES: usize = 256 << 20;

/// A linear transform for one level: the pre-rotated diagonals grouped by output block and
/// giant step, encoded or deferred.
pub struct LinearTransform<B: Backend> {
    slots: usize,
    level: usize,
    n1: usize,
    scale: f64,
    inputs: usize,
    /// Bytes of deferred diagonals encoded at once.
    chunk_bytes: usize,
    /// Per output block: giant step → [(input block, baby step, pre-rotated diagonal)].
    groups: Vec<BTreeMap<i64, Group<B>>>,
}

impl<B: Backend> std::fmt::Debug for LinearTransform<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearTransform")
            .field("slots", &self.slots)
            .field("level", &self.level)
            .field("n1", &self.n1)
            .field("blocks", &(self.groups.len(), self.inputs))
            .field("diagonals", &self.diagonal_count())
            .finish()
    }
}

/// The non-zero diagonals of a dense `slots × slots` matrix: `d_k[i] = M[i][(i + k) mod slots]`.
///
/// # Errors
/// [`CkksError::InvalidArgument`] if the matrix is not square with `slots` rows.
pub fn diagonals_of(matrix: &[Vec<f64>]) -> Result<BTreeMap<i64, Vec<Complex64>>, CkksError> {
    let n = matrix.len();
    if matrix.iter().any(|r| r.len() != n) {
        return Err(CkksError::InvalidArgument {
            what: "matrix must be square",
        });
    }
    let mut out = BTreeMap::new();
    for k in 0..n {
        let d: Vec<Complex64> = (0..n)
            .map(|i| Complex64::new(matrix[i][(i + k) % n], 0.0))
            .collect();
        if d.iter().any(|z| z.norm() != 0.0) {
            out.insert(k as i64, d);
        }
    }
    Ok(out)
}

/// The baby and giant steps of a block transform with these diagonal indices (per
/// `(output, input)` block) for baby-step count `n1`: `(babies per input, giants per output)`.
type Steps = (
    BTreeMap<usize, BTreeSet<i64>>,
    BTreeMap<usize, BTreeSet<i64>>,
);

fn split_steps(indices: &BTreeMap<(usize, usize), BTreeSet<i64>>, n1: i64) -> Steps {
    let (mut babies, mut giants): Steps = Default::default();
    for (&(v, u), idx) in indices {
        for &k in idx {
            babies.entry(u).or_default().insert(k % n1);
            giants.entry(v).or_default().insert(k - k % n1);
        }
    }
    (babies, giants)
}

/// Chooses the baby-step count `n1` (a power of two) minimising the rotation cost: the
/// baby steps of every input, each weighted by `baby_weight` (a hoisted baby step's cost
/// relative to a giant step's), plus the giant steps of every output. Ties go to the
/// smaller `n1`.
fn choose_n1(
    indices: &BTreeMap<(usize, usize), BTreeSet<i64>>,
    slots: usize,
    baby_weight: f64,
) -> usize {
    let mut best = (f64::INFINITY, 1);
    let mut n1 = 1;
    while n1 <= slots {
        let (babies, giants) = split_steps(indices, n1 as i64);
        let cost = baby_weight * babies.values().map(BTreeSet::len).sum::<usize>() as f64
            + giants.values().map(BTreeSet::len).sum::<usize>() as f64;
        if cost < best.0 {
            best = (cost, n1);
        }
        n1 <<= 1;
    }
    best.1
}

/// The weight [`LinearTransform::blocks`] gives a hoisted baby step against a giant step: at
/// the ring degrees and digit counts of the CNN presets they cost nearly the same
/// (RESULTS §6b). Where the decomposition dominates a key switch (large rings, many digits:
/// bootstrapping) a smaller weight buys fewer giant steps with more baby steps
/// ([`LinearTransform::blocks_weighted`]).
pub const DEFAULT_BABY_WEIGHT: f64 = 1.0;

/// Rotation counts of a block transform: `(hoisted baby-step rotations, giant-step
/// rotations)`, zero steps excluded (for cost estimates before anything is encoded).
pub fn block_rotation_counts(
    indices: &BTreeMap<(usize, usize), BTreeSet<i64>>,
    slots: usize,
) -> (usize, usize) {
    block_rotation_counts_weighted(indices, slots, DEFAULT_BABY_WEIGHT)
}

/// As [`block_rotation_counts`], for a transform encoded with
/// [`LinearTransform::blocks_weighted`] and this `baby_weight`.
pub(crate) fn block_rotation_counts_weighted(
    indices: &BTreeMap<(usize, usize), BTreeSet<i64>>,
    slots: usize,
    baby_weight: f64,
) -> (usize, usize) {
    let (babies, giants) = split_steps(indices, choose_n1(indices, slots, baby_weight) as i64);
    let nonzero = |m: &BTreeMap<usize, BTreeSet<i64>>| -> usize {
        m.values()
            .map(|s| s.iter().filter(|&&k| k != 0).count())
            .sum()
    };
    (nonzero(&babies), nonzero(&giants))
}

/// The rotation steps a block transform with these diagonal indices will need (computable
/// before key generation, so the exact key set can be requested).
pub fn block_rotations(
    indices: &BTreeMap<(usize, usize), BTreeSet<i64>>,
    slots: usize,
) -> BTreeSet<i64> {
    block_rotations_weighted(indices, slots, DEFAULT_BABY_WEIGHT)
}

/// As [`block_rotations`], for a transform encoded with
/// [`LinearTransform::blocks_weighted`] and this `baby_weight`.
pub fn block_rotations_weighted(
    indices: &BTreeMap<(usize, usize), BTreeSet<i64>>,
    slots: usize,
    baby_weight: f64,
) -> BTreeSet<i64> {
    let (babies, giants) = split_steps(indices, choose_n1(indices, slots, baby_weight) as i64);
    let mut out: BTreeSet<i64> = babies
        .into_values()
        .chain(giants.into_values())
        .flatten()
        .collect();
    out.remove(&0);
    out
}

/// The rotation steps a transform with these diagonal indices will need (computable before
/// key generation, so the exact key set can be requested).
pub fn bsgs_rotations(indices: &BTreeSet<i64>, slots: usize) -> BTreeSet<i64> {
    block_rotations(&BTreeMap::from([((0, 0), indices.clone())]), slots)
}

impl<B: Backend> LinearTransform<B> {
    /// Encodes the diagonals (index `k ∈ [0, slots)` → `d_k`) at `level`. The diagonals are
    /// encoded at scale `q_level`, so the transform's final rescale restores the input scale.
    ///
    /// # Errors
    /// Bad diagonal indices or lengths; encoding errors.
    pub fn new(
        eval: &Evaluator<B>,
        diagonals: &BTreeMap<i64, Vec<Complex64>>,
        slots: usize,
        level: usize,
    ) -> Result<Self, CkksError> {
        Self::with_scale(eval, diagonals, slots, level, eval.params().q_at(level))
    }

    /// As [`LinearTransform::new`], with the diagonals encoded at `scale`: the output scale
    /// is the input scale times `scale / q_level` (scale changes ride on the transform's
    /// rescale at no extra level).
    ///
    /// # Errors
    /// See [`LinearTransform::new`]; [`CkksError::InvalidScale`] for a scale below 1.
    pub fn with_scale(
        eval: &Evaluator<B>,
        diagonals: &BTreeMap<i64, Vec<Complex64>>,
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        let blocks = BTreeMap::from([((0, 0), diagonals.clone())]);
        Self::blocks(eval, &blocks, (1, 1), slots, level, scale)
    }

    /// Encodes a block matrix acting on `shape.1` input ciphertexts and producing `shape.0`
    /// output ciphertexts of `slots` slots each, at `level` and `scale` (see
    /// [`LinearTransform::with_scale`]). Blocks absent from `diagonals` are zero; every
    /// output needs at least one non-zero block.
    ///
    /// # Errors
    /// Block indices outside `shape`, an output without diagonals, bad diagonal indices or
    /// lengths; encoding errors.
    pub fn blocks(
        eval: &Evaluator<B>,
        diagonals: &BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        Self::blocks_weighted(
            eval,
            diagonals,
            shape,
            slots,
            level,
            scale,
            DEFAULT_BABY_WEIGHT,
        )
    }

    /// As [`LinearTransform::blocks`], splitting the diagonals into baby and giant steps for
    /// a hoisted baby step that costs `baby_weight` giant steps (request its keys with
    /// [`block_rotations_weighted`] and the same weight).
    ///
    /// # Errors
    /// See [`LinearTransform::blocks`]; [`CkksError::InvalidArgument`] for a weight that is
    /// not positive and finite.
    pub fn blocks_weighted(
        eval: &Evaluator<B>,
        diagonals: &BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
        baby_weight: f64,
    ) -> Result<Self, CkksError> {
        let n1 = check_blocks(diagonals, shape, slots, level, scale, baby_weight)?;
        // The diagonals are encoded independently, in parallel (the embedding's FFT and the
        // reduction into the limbs are sequential per plaintext); the results are collected
        // in order, so the transform is the same whatever the thread count.
        let jobs: Vec<(usize, usize, i64, &Vec<Complex64>)> = diagonals
            .iter()
            .flat_map(|(&(v, u), block)| block.iter().map(move |(&k, d)| (v, u, k, d)))
            .collect();
        let encoded = eval.backend().par_map(jobs, |(v, u, k, d)| {
            let b = k % n1 as i64;
            let g = k - b;
            // rot_{-g}(d)[i] = d[(i - g) mod slots]
            let rotated: Vec<Complex64> = (0..slots)
                .map(|i| d[(i as i64 - g).rem_euclid(slots as i64) as usize])
                .collect();
            eval.encode(&rotated, level, scale, slots)
                .map(|pt| (v, u, g, b, pt))
        });
        let mut groups: Vec<BTreeMap<i64, Group<B>>> =
            (0..shape.0).map(|_| BTreeMap::new()).collect();
        for item in encoded {
            let (v, u, g, b, pt) = item?;
            groups[v]
                .entry(g)
                .or_default()
                .push((u, b, Diagonal::Encoded(pt)));
        }
        Ok(Self {
            slots,
            level,
            n1,
            scale,
            inputs: shape.1,
            chunk_bytes: DEFERRED_CHUNK_BYTES,
            groups,
        })
    }

    /// As [`LinearTransform::blocks`], with the diagonals kept as slot values (real ones as
    /// `f64`: a sixteenth of a plaintext's limbs at a network's levels) and encoded a few
    /// giant steps at a time each time the transform runs ([`DEFERRED_CHUNK_BYTES`]). For
    /// transforms too large to hold encoded (a ResNet's convolutions at N = 2^16: 1,575
    /// diagonals of 11 limbs, 8.5 GiB, in one layer); evaluation pays the encoding.
    ///
    /// # Errors
    /// See [`LinearTransform::blocks`].
    pub fn deferred(
        eval: &Evaluator<B>,
        diagonals: BlockDiagonals,
        shape: (usize, usize),
        slots: usize,
        level: usize,
        scale: f64,
    ) -> Result<Self, CkksError> {
        let n1 = check_blocks(&diagonals, shape, slots, level, scale, DEFAULT_BABY_WEIGHT)?;
        // Only the evaluator's parameters are needed to encode later; the evaluator itself is
        // asked for so that a transform is always built against the parameters it runs with.
        if slots > eval.params().max_slots() {
            return Err(CkksError::InvalidArgument {
                what: "more slots than the parameters have",
            });
        }
        let mut groups: Vec<BTreeMap<i64, Group<B>>> =
            (0..shape.0).map(|_| BTreeMap::new()).collect();
        for ((v, u), block) in diagonals {
            for (k, mut d) in block {
                let b = k % n1 as i64;
                let g = k - b;
                // rot_{-g}(d)[i] = d[(i - g) mod slots]
                d.rotate_right(g.rem_euclid(slots as i64) as usize);
                let diagonal = if d.iter().all(|z| z.im == 0.0) {
                    Diagonal::Real(d.iter().map(|z| z.re).collect())
                } else {
                    Diagonal::Complex(d)
                };
                groups[v].entry(g).or_default().push((u, b, diagonal));
            }
        }
        Ok(Self {
            slots,
            level,
            n1,
            scale,
            inputs: shape.1,
            chunk_bytes: DEFERRED_CHUNK_BYTES,
            groups,
        })
    }

    /// Encodes a dense real matrix.
    ///
    /// # Errors
    /// See [`LinearTransform::new`].
    pub fn from_matrix(
        eval: &Evaluator<B>,
        matrix: &[Vec<f64>],
        level: usize,
    ) -> Result<Self, CkksError> {
        let slots = matrix.len();
        Self::new(eval, &diagonals_of(matrix)?, slots, level)
    }

    /// The rotation steps evaluating this transform needs.
    pub fn rotations(&self) -> BTreeSet<i64> {
        let mut out = BTreeSet::new();
        for groups in &self.groups {
            for (&g, items) in groups {
                out.insert(g);
                out.extend(items.iter().map(|&(_, b, _)| b));
            }
        }
        out.remove(&0);
        out
    }

    /// Baby-step count.
    pub fn n1(&self) -> usize {
        self.n1
    }

    /// Level the diagonals are encoded at.
    pub fn level(&self) -> usize {
        self.level
    }

    /// Scale the diagonals are encoded at.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Slot count the transform acts on.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// `(output ciphertexts, input ciphertexts)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.groups.len(), self.inputs)
    }

    /// Number of diagonals (plaintext products per evaluation).
    pub fn diagonal_count(&self) -> usize {
        self.groups
            .iter()
            .flat_map(BTreeMap::values)
            .map(Vec::len)
            .sum()
    }

    /// The same transform encoding at most about `bytes` of deferred diagonals at once (at
    /// least one giant step's): less memory, less parallel encoding.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes;
        self
    }

    /// Whether the diagonals are encoded while the transform runs
    /// ([`LinearTransform::deferred`]).
    pub fn is_deferred(&self) -> bool {
        self.groups
            .iter()
            .flat_map(BTreeMap::values)
            .flatten()
            .any(|(_, _, d)| !matches!(d, Diagonal::Encoded(_)))
    }
}

/// Checks a block transform's arguments; returns the baby-step count.
fn check_blocks(
    diagonals: &BlockDiagonals,
    shape: (usize, usize),
    slots: usize,
    level: usize,
    scale: f64,
    baby_weight: f64,
) -> Result<usize, CkksError> {
    let (outputs, inputs) = shape;
    if !(scale.is_finite() && scale >= 1.0) {
        return Err(CkksError::InvalidScale { scale });
    }
    if !(baby_weight.is_finite() && baby_weight > 0.0) {
        return Err(CkksError::InvalidArgument {
            what: "the baby-step weight must be positive and finite",
        });
    }
    if level == 0 {
        return Err(CkksError::LevelTooLow { needed: 1, have: 0 });
    }
    if outputs == 0 || inputs == 0 {
        return Err(CkksError::InvalidArgument {
            what: "a block transform needs at least one input and one output ciphertext",
        });
    }
    let bad_index = diagonals.values().any(|m| {
        m.iter()
            .any(|(&k, d)| k < 0 || k >= slots as i64 || d.len() != slots)
    });
    if bad_index {
        return Err(CkksError::InvalidArgument {
            what: "diagonal index outside [0, slots) or diagonal of the wrong length",
        });
    }
    if diagonals.keys().any(|&(v, u)| v >= outputs || u >= inputs)
        || (0..outputs).any(|v| !diagonals.keys().any(|&(w, _)| w == v))
    {
        return Err(CkksError::InvalidArgument {
            what: "block outside the transform's shape, or an output block without diagonals",
        });
    }
    let indices: BTreeMap<(usize, usize), BTreeSet<i64>> = diagonals
        .iter()
        .map(|(&vu, m)| (vu, m.keys().copied().collect()))
        .collect();
    Ok(choose_n1(&indices, slots, baby_weight))
}

impl<B: Backend> Evaluator<B> {
    /// Computes `M·v` for the encrypted vector `v` (rescaled once at the end: the result is
    /// one level lower, at the input scale).
    ///
    /// # Errors
    /// Level or slot mismatches, missing rotation keys, a block transform.
    pub fn linear_transform(
        &self,
        ct: &Ciphertext<B>,
        lt: &LinearTransform<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        let mut out = self.linear_transform_blocks(std::slice::from_ref(ct), lt)?;
        match (out.pop(), out.is_empty()) {
            (Some(ct), true) => Ok(ct),
            _ => Err(CkksError::InvalidArgument {
                what: "a block transform with several outputs: use linear_transform_blocks",
            }),
        }
    }

    /// Computes a block transform: output `v` = `Σ_u M_{v,u}·cts[u]`, each rescaled once.
    ///
    /// # Errors
    /// A wrong number of inputs, level or slot mismatches, missing rotation keys.
    pub fn linear_transform_blocks(
        &self,
        cts: &[Ciphertext<B>],
        lt: &LinearTransform<B>,
    ) -> Result<Vec<Ciphertext<B>>, CkksError> {
        if cts.len() != lt.inputs {
            return Err(CkksError::InvalidArgument {
                what: "the number of input ciphertexts differs from the transform's",
            });
        }
        let mut inputs = Vec::with_capacity(cts.len());
        for ct in cts {
            if ct.slots() != lt.slots {
                return Err(CkksError::SlotMismatch {
                    lhs: ct.slots(),
                    rhs: lt.slots,
                });
            }
            if ct.scale() != cts[0].scale() {
                return Err(CkksError::InvalidArgument {
                    what: "input ciphertexts of a block transform at different scales",
                });
            }
            inputs.push(if ct.level() > lt.level {
                self.drop_to_level(ct, lt.level)?
            } else if ct.level() < lt.level {
                return Err(CkksError::LevelTooLow {
                    needed: lt.level,
                    have: ct.level(),
                });
            } else {
                ct.clone()
            });
        }
        // Hoisted baby steps of every input ciphertext, shared by all outputs.
        let mut babies: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); lt.inputs];
        for groups in &lt.groups {
            for items in groups.values() {
                for &(u, b, _) in items {
                    babies[u].insert(b);
                }
            }
        }
        let mut baby: BTreeMap<(usize, i64), Ciphertext<B>> = BTreeMap::new();
        for (u, steps) in babies.iter().enumerate() {
            let steps: Vec<i64> = steps.iter().copied().collect();
            if steps.is_empty() {
                continue;
            }
            for (k, r) in steps.iter().zip(self.rotate_hoisted(&inputs[u], &steps)?) {
                baby.insert((u, *k), r);
            }
        }
        drop(inputs);

        // Every baby-step rotation gets an index; one row per giant step.
        let index: BTreeMap<(usize, i64), u32> =
            baby.keys().zip(0u32..).map(|(&k, i)| (k, i)).collect();
        let mut baby_parts: Vec<[Operand<'_, B>; 2]> = Vec::with_capacity(baby.len());
        for ct in baby.values() {
            let [c0, c1] = ct.inner().parts() else {
                return Err(CkksError::InvalidArgument {
                    what: "a rotated ciphertext with other than two parts",
                });
            };
            baby_parts.push([(c0.buffer(), c0.basis()), (c1.buffer(), c1.basis())]);
        }
        let ctx = self.ctx();
        let basis = Basis::q(lt.level + 1);
        let scale = cts[0].scale() * lt.scale;
        // Deferred diagonals are encoded a chunk of giant steps at a time.
        let per_chunk = (lt.chunk_bytes / (basis.len() * ctx.n() * 8)).max(1);
        let mut outputs = Vec::with_capacity(lt.groups.len());
        for groups in &lt.groups {
            let giants: Vec<(&i64, &Group<B>)> = groups.iter().collect();
            let mut total: Option<Ciphertext<B>> = None;
            let mut start = 0;
            while start < giants.len() {
                let mut end = start;
                let mut deferred = 0;
                while end < giants.len() && (end == start || deferred < per_chunk) {
                    deferred += giants[end]
                        .1
                        .iter()
                        .filter(|(_, _, d)| !matches!(d, Diagonal::Encoded(_)))
                        .count();
                    end += 1;
                }
                let chunk = &giants[start..end];
                start = end;
                let sum = self.giant_steps(chunk, lt, &index, &baby_parts, scale)?;
                total = Some(match total {
                    None => sum,
                    Some(mut t) => {
                        self.add_assign(&mut t, &sum)?;
                        t
                    }
                });
            }
            let mut out = total.ok_or(CkksError::InvalidArgument {
                what: "linear transform without diagonals",
            })?;
            self.rescale_assign(&mut out)?;
            outputs.push(out);
        }
        Ok(outputs)
    }

    /// `Σ_g rot_g(Σ_b d_{g,b} ⊙ rot_b(v))` over the giant steps of `chunk` (not rescaled),
    /// its deferred diagonals encoded first, in parallel.
    fn giant_steps(
        &self,
        chunk: &[(&i64, &Group<B>)],
        lt: &LinearTransform<B>,
        index: &BTreeMap<(usize, i64), u32>,
        baby_parts: &[[Operand<'_, B>; 2]],
        scale: f64,
    ) -> Result<Ciphertext<B>, CkksError> {
        let (be, ctx) = (self.backend(), self.ctx());
        let basis = Basis::q(lt.level + 1);
        let jobs: Vec<&Diagonal<B>> = chunk
            .iter()
            .flat_map(|(_, items)| items.iter().map(|(_, _, d)| d))
            .filter(|d| !matches!(d, Diagonal::Encoded(_)))
            .collect();
        let clock = std::time::Instant::now();
        let count = jobs.len() as u64;
        let fresh = be.par_map(jobs, |d| match d {
            Diagonal::Real(x) => self.encode_real(x, lt.level, lt.scale, lt.slots),
            Diagonal::Complex(z) => self.encode(z, lt.level, lt.scale, lt.slots),
            Diagonal::Encoded(_) => Err(CkksError::InvalidArgument {
                what: "an encoded diagonal among the deferred ones",
            }),
        });
        let fresh: Vec<Plaintext<B>> = fresh.into_iter().collect::<Result<_, _>>()?;
        if count > 0 {
            let c = self.counters();
            crate::evaluator::Counters::add(&c.deferred_encodings, count);
            let ns = u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
            crate::evaluator::Counters::add(&c.deferred_encoding_ns, ns);
        }
        let mut fresh = fresh.iter();
        let mut row_ptr = vec![0usize];
        let (mut cols, mut weights) = (Vec::new(), Vec::new());
        for (_, items) in chunk {
            for (u, b, d) in items.iter() {
                cols.push(*index.get(&(*u, *b)).ok_or(CkksError::InvalidArgument {
                    what: "missing baby-step rotation",
                })?);
                let pt = match d {
                    Diagonal::Encoded(pt) => pt,
                    _ => fresh.next().ok_or(CkksError::InvalidArgument {
                        what: "a deferred diagonal left unencoded",
                    })?,
                };
                weights.push((pt.poly().buffer(), pt.poly().basis()));
            }
            row_ptr.push(cols.len());
        }
        // The plaintext products of every giant step in one coefficient-blocked pass (each
        // diagonal read once for both ciphertext parts), then the giant-step rotations in
        // parallel: they are independent, and at small ring degrees a single key switch is
        // too short to split well across threads.
        let words = basis.len() * ctx.n();
        let mut sums = Vec::with_capacity(chunk.len());
        for _ in 0..chunk.len() {
            sums.push([be.alloc(words)?, be.alloc(words)?]);
        }
        let rows = PolyRows {
            row_ptr: &row_ptr,
            cols: &cols,
            weights: &weights,
        };
        be.mul_sums_pair(ctx, basis, baby_parts, rows, &mut sums);
        let jobs: Vec<(i64, [B::Buffer; 2])> = chunk.iter().map(|(g, _)| **g).zip(sums).collect();
        let rotated = be.par_map(jobs, |(g, [c0, c1])| -> Result<Ciphertext<B>, CkksError> {
            let inner = hecnn_rlwe::Ciphertext::from_parts(vec![
                RnsPoly::<B, Eval>::from_buffer(c0, basis),
                RnsPoly::<B, Eval>::from_buffer(c1, basis),
            ])?;
            self.rotate(&Ciphertext::new(inner, scale, lt.slots), g)
        });
        let mut total: Option<Ciphertext<B>> = None;
        for group in rotated {
            let group = group?;
            total = Some(match total {
                None => group,
                Some(mut t) => {
                    self.add_assign(&mut t, &group)?;
                    t
                }
            });
        }
        total.ok_or(CkksError::InvalidArgument {
            what: "linear transform without diagonals",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets of four merged butterfly stages (CoeffToSlot's middle factors):
    /// `{-15..=15}·32` modulo 2^15.
    fn merged_stages() -> BTreeMap<(usize, usize), BTreeSet<i64>> {
        let slots = 1i64 << 15;
        let idx = (-15..=15)
            .map(|k: i64| (k * 32).rem_euclid(slots))
            .collect();
        BTreeMap::from([((0, 0), idx)])
    }

    fn counts(n1: usize) -> (usize, usize) {
        let (b, g) = split_steps(&merged_stages(), n1 as i64);
        let nonzero = |m: BTreeMap<usize, BTreeSet<i64>>| {
            m.into_values().flatten().filter(|&k| k != 0).count()
        };
        (nonzero(b), nonzero(g))
    }

    #[test]
    fn cheaper_baby_steps_buy_fewer_giant_steps() {
        let slots = 1 << 15;
        let equal = choose_n1(&merged_stages(), slots, DEFAULT_BABY_WEIGHT);
        let cheap = choose_n1(&merged_stages(), slots, 0.4);
        assert_eq!(counts(equal), (3, 7));
        assert_eq!(counts(cheap), (7, 3));
        // The key set follows the weight.
        assert_ne!(
            block_rotations(&merged_stages(), slots),
            block_rotations_weighted(&merged_stages(), slots, 0.4)
        );
    }
}
