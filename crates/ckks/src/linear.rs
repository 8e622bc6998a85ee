//! Plaintext matrix × ciphertext vector by the diagonal method with baby-step giant-step:
//! `M·v = Σ_g rot_g( Σ_b rot_{-g}(d_{g+b}) ⊙ rot_b(v) )`, baby steps hoisted (one
//! decomposition), the inner sums accumulated lazily (one reduction per output word), and a
//! single rescale at the end.

use std::collections::{BTreeMap, BTreeSet};

use hecnn_ring::{Backend, Basis, Eval, RnsPoly, backend::Operand};
use num_complex::Complex64;

use crate::{Ciphertext, CkksError, Evaluator, Plaintext};

/// A linear transform encoded for one level: the pre-rotated diagonals grouped by giant step.
pub struct LinearTransform<B: Backend> {
    slots: usize,
    level: usize,
    n1: usize,
    scale: f64,
    /// giant step → [(baby step, pre-rotated diagonal)]
    groups: BTreeMap<i64, Vec<(i64, Plaintext<B>)>>,
}

impl<B: Backend> std::fmt::Debug for LinearTransform<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearTransform")
            .field("slots", &self.slots)
            .field("level", &self.level)
            .field("n1", &self.n1)
            .field(
                "diagonals",
                &self.groups.values().map(Vec::len).sum::<usize>(),
            )
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

/// Chooses the baby-step count `n1` (a power of two) minimising rotations.
fn choose_n1(indices: &BTreeSet<i64>, slots: usize) -> usize {
    let mut best = (usize::MAX, 1);
    let mut n1 = 1;
    while n1 <= slots {
        let babies: BTreeSet<i64> = indices.iter().map(|k| k % n1 as i64).collect();
        let giants: BTreeSet<i64> = indices.iter().map(|k| k - k % n1 as i64).collect();
        let cost = babies.len() + giants.len();
        if cost < best.0 {
            best = (cost, n1);
        }
        n1 <<= 1;
    }
    best.1
}

/// The rotation steps a transform with these diagonal indices will need (computable before
/// key generation, so the exact key set can be requested).
pub fn bsgs_rotations(indices: &BTreeSet<i64>, slots: usize) -> BTreeSet<i64> {
    let n1 = choose_n1(indices, slots) as i64;
    let mut out = BTreeSet::new();
    for &k in indices {
        out.insert(k % n1);
        out.insert(k - k % n1);
    }
    out.remove(&0);
    out
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
        if !(scale.is_finite() && scale >= 1.0) {
            return Err(CkksError::InvalidScale { scale });
        }
        if level == 0 {
            return Err(CkksError::LevelTooLow { needed: 1, have: 0 });
        }
        let indices: BTreeSet<i64> = diagonals.keys().copied().collect();
        if indices.iter().any(|&k| k < 0 || k >= slots as i64)
            || diagonals.values().any(|d| d.len() != slots)
        {
            return Err(CkksError::InvalidArgument {
                what: "diagonal index outside [0, slots) or diagonal of the wrong length",
            });
        }
        let n1 = choose_n1(&indices, slots);
        let mut groups: BTreeMap<i64, Vec<(i64, Plaintext<B>)>> = BTreeMap::new();
        for (&k, d) in diagonals {
            let b = k % n1 as i64;
            let g = k - b;
            // rot_{-g}(d)[i] = d[(i - g) mod slots]
            let rotated: Vec<Complex64> = (0..slots)
                .map(|i| d[(i as i64 - g).rem_euclid(slots as i64) as usize])
                .collect();
            let pt = eval.encode(&rotated, level, scale, slots)?;
            groups.entry(g).or_default().push((b, pt));
        }
        Ok(Self {
            slots,
            level,
            n1,
            scale,
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
        for (&g, items) in &self.groups {
            if g != 0 {
                out.insert(g);
            }
            out.extend(items.iter().map(|(b, _)| *b).filter(|&b| b != 0));
        }
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

    /// Number of encoded diagonals.
    pub fn diagonal_count(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}

impl<B: Backend> Evaluator<B> {
    /// Computes `M·v` for the encrypted vector `v` (rescaled once at the end: the result is
    /// one level lower, at the input scale).
    ///
    /// # Errors
    /// Level or slot mismatches, missing rotation keys.
    pub fn linear_transform(
        &self,
        ct: &Ciphertext<B>,
        lt: &LinearTransform<B>,
    ) -> Result<Ciphertext<B>, CkksError> {
        if ct.slots() != lt.slots {
            return Err(CkksError::SlotMismatch {
                lhs: ct.slots(),
                rhs: lt.slots,
            });
        }
        let ct = if ct.level() > lt.level {
            self.drop_to_level(ct, lt.level)?
        } else if ct.level() < lt.level {
            return Err(CkksError::LevelTooLow {
                needed: lt.level,
                have: ct.level(),
            });
        } else {
            ct.clone()
        };
        let babies: BTreeSet<i64> = lt
            .groups
            .values()
            .flat_map(|v| v.iter().map(|(b, _)| *b))
            .collect();
        let baby_steps: Vec<i64> = babies.iter().copied().collect();
        let rotated = self.rotate_hoisted(&ct, &baby_steps)?;
        let baby: BTreeMap<i64, &Ciphertext<B>> =
            baby_steps.iter().copied().zip(rotated.iter()).collect();

        let (be, ctx) = (self.backend(), self.ctx());
        let basis = Basis::q(lt.level + 1);
        let mut total: Option<Ciphertext<B>> = None;
        for (&g, items) in &lt.groups {
            let mut parts = Vec::with_capacity(2);
            for comp in 0..2 {
                let mut acc = RnsPoly::<B, Eval>::zero(be, ctx, basis)?;
                let a: Vec<Operand<'_, B>> = items
                    .iter()
                    .map(|(b, _)| {
                        let p = &baby[b].inner().parts()[comp];
                        (p.buffer(), p.basis())
                    })
                    .collect();
                let w: Vec<Operand<'_, B>> = items
                    .iter()
                    .map(|(_, pt)| (pt.poly().buffer(), pt.poly().basis()))
                    .collect();
                be.mul_sum(ctx, basis, acc.buffer_mut(), &a, &w, None, false);
                parts.push(acc);
            }
            let inner = hecnn_rlwe::Ciphertext::from_parts(parts)?;
            let group = Ciphertext::new(inner, ct.scale() * lt.scale, ct.slots());
            let group = self.rotate(&group, g)?;
            total = Some(match total {
                None => group,
                Some(t) => self.add(&t, &group)?,
            });
        }
        let mut out = total.ok_or(CkksError::InvalidArgument {
            what: "linear transform without diagonals",
        })?;
        self.rescale_assign(&mut out)?;
        Ok(out)
    }
}
