//! The `Backend` boundary: batches of RNS limbs on some device.
//!
//! Primitives work on whole polynomials (all live limbs in one call) so that a GPU backend
//! can launch one kernel per primitive. Composite steps (gadget decomposition for key
//! switching, the key-switching inner product) are default methods built from the
//! primitives; a backend may override them with fused kernels. Scheme code is generic over
//! `B: Backend` and chooses the backend once per run.

use std::ops::Range;

use crate::{Basis, RingError, RnsContext};

/// An operand of a multi-term kernel: a buffer and the basis of its limbs.
pub type Operand<'a, B> = (&'a <B as Backend>::Buffer, Basis);

/// A sparse matrix of integer weights in compressed-row form, with every weight given by its
/// residue in each limb: row `k` has terms `row_ptr[k]..row_ptr[k+1]`, each an input index
/// `cols[t]` and residues `weights[pos][t]` for limb position `pos`.
#[derive(Clone, Copy, Debug)]
pub struct SparseRows<'a> {
    /// Row offsets (`rows + 1` entries).
    pub row_ptr: &'a [usize],
    /// Input index of every term.
    pub cols: &'a [u32],
    /// Per limb position: the residue of every term's weight.
    pub weights: &'a [Vec<u64>],
}

/// The owned storage behind a [`SparseRows`]: integer rows `(input, weight)` laid out in
/// compressed-row form, every weight reduced into every limb of `basis`. Batch-mode linear
/// layers of every scheme build their weighted sums from it.
#[derive(Clone, Debug, Default)]
pub struct SparseRowsOwned {
    row_ptr: Vec<usize>,
    cols: Vec<u32>,
    weights: Vec<Vec<u64>>,
}

impl SparseRowsOwned {
    /// Lays out `rows` (each a list of `(input index, weight)`) for the limbs of `basis`.
    ///
    /// # Errors
    /// [`RingError::IndexOutOfRange`] for an input index of `inputs` or more, or one above
    /// `u32::MAX`.
    pub fn new<W: Copy + Into<i128>>(
        ctx: &RnsContext,
        basis: Basis,
        rows: &[Vec<(usize, W)>],
        inputs: usize,
    ) -> Result<Self, RingError> {
        let mut row_ptr = Vec::with_capacity(rows.len() + 1);
        let mut cols = Vec::with_capacity(rows.iter().map(Vec::len).sum());
        row_ptr.push(0);
        for r in rows {
            for &(j, _) in r {
                let col = u32::try_from(j).ok().filter(|_| j < inputs);
                cols.push(col.ok_or(RingError::IndexOutOfRange {
                    index: j,
                    len: inputs.min(u32::MAX as usize + 1),
                })?);
            }
            row_ptr.push(cols.len());
        }
        let weights = (0..basis.len())
            .map(|pos| {
                let m = ctx.limb_modulus(&basis, pos);
                rows.iter()
                    .flatten()
                    .map(|&(_, w)| m.reduce_i128(w.into()))
                    .collect()
            })
            .collect();
        Ok(Self {
            row_ptr,
            cols,
            weights,
        })
    }

    /// The borrowed view the backends take.
    pub fn view(&self) -> SparseRows<'_> {
        SparseRows {
            row_ptr: &self.row_ptr,
            cols: &self.cols,
            weights: &self.weights,
        }
    }
}

/// A sparse matrix whose terms are polynomials, in compressed-row form: row `k` has terms
/// `row_ptr[k]..row_ptr[k+1]`, each an input index `cols[t]` and a weight polynomial
/// `weights[t]` (evaluation domain). The plaintext diagonals of a BSGS linear transform,
/// one row per giant step.
#[derive(Debug)]
pub struct PolyRows<'a, B: Backend + ?Sized> {
    /// Row offsets (`rows + 1` entries).
    pub row_ptr: &'a [usize],
    /// Input index of every term.
    pub cols: &'a [u32],
    /// Weight polynomial of every term.
    pub weights: &'a [Operand<'a, B>],
}

impl<B: Backend + ?Sized> Clone for PolyRows<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend + ?Sized> Copy for PolyRows<'_, B> {}

impl<B: Backend + ?Sized> PolyRows<'_, B> {
    /// Number of rows.
    #[must_use]
    pub fn rows(&self) -> usize {
        self.row_ptr.len().saturating_sub(1)
    }
}

/// A compute backend for RNS polynomial arithmetic.
///
/// Buffers hold limbs limb-major (`[limb][n]`). In every kernel, `basis` describes the
/// destination; each source operand comes with its own basis, which must contain the
/// destination's limbs (so a key over `Q ∪ P` can be used at any level without copying).
/// Kernels trust the caller on these invariants (checked by [`crate::RnsPoly`]); they are
/// infallible except where noted.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A device buffer of `u64` words.
    type Buffer: Clone + Send + Sync + std::fmt::Debug;

    /// Human-readable name, e.g. `cpu(2 threads)`.
    fn name(&self) -> String;

    /// Allocates `words` zeroed words.
    ///
    /// # Errors
    /// [`RingError::Backend`] if the device is out of memory.
    fn alloc(&self, words: usize) -> Result<Self::Buffer, RingError>;

    /// Copies host words to a new device buffer.
    ///
    /// # Errors
    /// [`RingError::Backend`] on transfer failure.
    fn upload(&self, host: &[u64]) -> Result<Self::Buffer, RingError>;

    /// A buffer of `words` words written by `fill`, which must leave reduced limbs. The
    /// default fills a host vector and uploads it; a host backend fills its buffer in place
    /// (one large allocation instead of two and a copy).
    ///
    /// # Errors
    /// [`RingError::Backend`] on allocation or transfer failure.
    fn fill_buffer(
        &self,
        words: usize,
        fill: &mut dyn FnMut(&mut [u64]),
    ) -> Result<Self::Buffer, RingError> {
        let mut host = vec![0u64; words];
        fill(&mut host);
        self.upload(&host)
    }

    /// Copies the first `words` words of a buffer to the host.
    ///
    /// # Errors
    /// [`RingError::Backend`] on transfer failure or if the buffer is shorter.
    fn download(&self, buf: &Self::Buffer, words: usize) -> Result<Vec<u64>, RingError>;

    /// Overwrites a buffer with zeros in a way the compiler may not elide (for secrets).
    fn zeroize(&self, buf: &mut Self::Buffer);

    /// Forward NTT of every limb of `basis`.
    fn ntt_forward(&self, ctx: &RnsContext, basis: Basis, buf: &mut Self::Buffer);

    /// Inverse NTT of every limb of `basis`.
    fn ntt_inverse(&self, ctx: &RnsContext, basis: Basis, buf: &mut Self::Buffer);

    /// `dst += src`.
    fn add_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut Self::Buffer,
        src: &Self::Buffer,
        src_basis: Basis,
    );

    /// `dst -= src`.
    fn sub_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut Self::Buffer,
        src: &Self::Buffer,
        src_basis: Basis,
    );

    /// `dst = -dst`.
    fn neg_assign(&self, ctx: &RnsContext, basis: Basis, dst: &mut Self::Buffer);

    /// `dst ⊙= src` (evaluation domain).
    fn mul_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut Self::Buffer,
        src: &Self::Buffer,
        src_basis: Basis,
    );

    /// `dst = [dst +] Σ_j a_j[perm] ⊙ b_j` with lazy reduction (one reduction per output
    /// word for up to 32 terms). `perm`, if given, permutes the `a_j` operands' coefficients
    /// (`a_j[perm[i]]`), which fuses an evaluation-domain automorphism into the sum.
    #[allow(clippy::too_many_arguments)]
    fn mul_sum(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut Self::Buffer,
        a: &[Operand<'_, Self>],
        b: &[Operand<'_, Self>],
        perm: Option<&[u32]>,
        accumulate: bool,
    );

    /// `dst = [dst +] Σ_j src_j · s_j` where `s_j` is a constant given by its residue in every
    /// limb of `basis` (`scalars[j][pos]`): the weighted sums of batch-mode linear layers.
    fn scalar_mul_sum(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut Self::Buffer,
        srcs: &[Operand<'_, Self>],
        scalars: &[Vec<u64>],
        accumulate: bool,
    );

    /// `outputs[k] = Σ_t inputs[cols[t]] · weight[t]` over the terms of row `k`, for all rows at
    /// once (a sparse integer matrix times a vector of polynomials). Backends block over
    /// coefficients so every input is read from memory once per call rather than once per
    /// term: the linear layers of batch-packed networks.
    fn weighted_sums(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        inputs: &[Operand<'_, Self>],
        rows: SparseRows<'_>,
        outputs: &mut [Self::Buffer],
    );

    /// For every row `k` of `rows` and both components `c` of the input pairs:
    /// `outputs[k][c] = Σ_t inputs[cols[t]][c] ⊙ weights[t]` over the terms of row `k`
    /// (evaluation domain), every output over `basis`. This is the plaintext-matrix part of a
    /// BSGS linear transform, all giant steps at once: a backend blocks over coefficients
    /// so that each weight is read from memory once per call, for both components, and the
    /// inputs (rotated ciphertexts) stay in cache while every row is accumulated.
    ///
    /// Outputs are overwritten (an empty row gives zero); rows beyond `outputs.len()` are
    /// ignored and outputs beyond the rows left as they are. Operands are reduced limbs whose
    /// bases contain `basis`. The default runs two [`Backend::mul_sum`] calls per row.
    ///
    /// # Panics
    /// May panic if a column or term index is out of range or `row_ptr` decreases: rows are
    /// built by the caller (a linear transform's own plan), never read from outside.
    fn mul_sums_pair(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        inputs: &[[Operand<'_, Self>; 2]],
        rows: PolyRows<'_, Self>,
        outputs: &mut [[Self::Buffer; 2]],
    ) {
        for (k, out) in outputs.iter_mut().enumerate().take(rows.rows()) {
            let terms = rows.row_ptr[k]..rows.row_ptr[k + 1];
            let w = &rows.weights[terms.clone()];
            for (c, dst) in out.iter_mut().enumerate() {
                let a: Vec<Operand<'_, Self>> = rows.cols[terms.clone()]
                    .iter()
                    .map(|&j| inputs[j as usize][c])
                    .collect();
                self.mul_sum(ctx, basis, dst, &a, w, None, false);
            }
        }
    }

    /// Multiplies limb `i` by `scalars[i]`.
    fn mul_scalar_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut Self::Buffer,
        scalars: &[u64],
    );

    /// Adds the constant polynomial with residues `scalars[i]` (evaluation domain: to every
    /// word; coefficient domain: to the constant coefficient).
    fn add_scalar_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut Self::Buffer,
        scalars: &[u64],
        eval: bool,
    );

    /// `dst = src(X^galois)` in either domain.
    ///
    /// # Errors
    /// [`RingError::InvalidGaloisElement`].
    fn automorphism(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        src: &Self::Buffer,
        dst: &mut Self::Buffer,
        galois: usize,
        eval: bool,
    ) -> Result<(), RingError>;

    /// Divide-and-round by the last Q limb of `basis` (evaluation domain in and out). The
    /// result occupies the first `basis.q - 1` limbs.
    fn rescale(&self, ctx: &RnsContext, basis: Basis, buf: &mut Self::Buffer);

    /// ModUp of one gadget digit: given `c` over `Q_l` (`l = q - 1`) in both domains, writes
    /// into `out` (basis `Q_l ∪ P`, evaluation domain) a polynomial congruent to `c` modulo
    /// the digit's primes `Q_digit` (fast basis conversion from `Q_digit` to all other primes).
    fn mod_up(
        &self,
        ctx: &RnsContext,
        q: usize,
        digit: Range<usize>,
        c_coeff: &Self::Buffer,
        c_eval: &Self::Buffer,
        out: &mut Self::Buffer,
    );

    /// ModDown: maps `x` over `Q_l ∪ P` (evaluation domain) to `⌊x / P⌉` over `Q_l`; the
    /// result occupies the first `q` limbs, and the `P` limbs after them are scratch
    /// (a backend may overwrite them).
    fn mod_down(&self, ctx: &RnsContext, q: usize, buf: &mut Self::Buffer);

    /// Maps `f` over independent items (e.g. one ciphertext per neuron), in parallel where the
    /// backend can. Kernels called from `f` share the backend's resources. The default is
    /// sequential.
    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        items.into_iter().map(f).collect()
    }

    /// How many items [`Backend::par_map`] works on at once (a CPU backend's thread count); a
    /// service sizes its batches by it. The default, matching the sequential `par_map`, is 1.
    fn parallelism(&self) -> usize {
        1
    }

    /// Runs `f` with the backend's workers at hand: a CPU backend enters its thread pool
    /// once, so the many small parallel sections of one evaluation start without a
    /// cross-thread handoff each. The default runs `f` as it is.
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Gadget decomposition for hybrid key switching: the ModUp of every digit of `d`
    /// (evaluation domain, `q` limbs), each over `Q_l ∪ P` in the evaluation domain.
    ///
    /// # Errors
    /// Allocation failure.
    fn decompose(
        &self,
        ctx: &RnsContext,
        q: usize,
        d_eval: &Self::Buffer,
        digits: &[Range<usize>],
    ) -> Result<Vec<Self::Buffer>, RingError> {
        let mut coeff = d_eval.clone();
        self.ntt_inverse(ctx, Basis::q(q), &mut coeff);
        let ext = Basis::qp(q, ctx.p_count());
        digits
            .iter()
            .filter(|r| r.start < q)
            .map(|r| {
                let mut out = self.alloc(ext.len() * ctx.n())?;
                self.mod_up(ctx, q, r.start..r.end.min(q), &coeff, d_eval, &mut out);
                Ok(out)
            })
            .collect()
    }

    /// Key-switching inner product and ModDown: returns
    /// `(⌊Σ_j σ(d_j)·b_j / P⌉, ⌊Σ_j σ(d_j)·a_j / P⌉)` over `Q_l`, where `σ` is the optional
    /// evaluation-domain permutation and `(b_j, a_j)` are key digits over `key_basis`
    /// (`Q_k ∪ P` with `k ≥ l`: a key restricted to the levels it is used at holds fewer
    /// limbs and digits).
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`] if there are more digits than key components;
    /// [`RingError::BasisMismatch`] if the key's basis does not cover `Q_l ∪ P`.
    fn key_switch_decomposed(
        &self,
        ctx: &RnsContext,
        q: usize,
        parts: &[Self::Buffer],
        key: &[(&Self::Buffer, &Self::Buffer)],
        key_basis: Basis,
        perm: Option<&[u32]>,
    ) -> Result<(Self::Buffer, Self::Buffer), RingError> {
        let ext = check_key_switch(ctx, q, parts.len(), key.len(), key_basis)?;
        let a: Vec<Operand<'_, Self>> = parts.iter().map(|p| (p, ext)).collect();
        let kb: Vec<Operand<'_, Self>> = key.iter().map(|k| (k.0, key_basis)).collect();
        let ka: Vec<Operand<'_, Self>> = key.iter().map(|k| (k.1, key_basis)).collect();
        let mut c0 = self.alloc(ext.len() * ctx.n())?;
        let mut c1 = self.alloc(ext.len() * ctx.n())?;
        self.mul_sum(ctx, ext, &mut c0, &a, &kb[..a.len()], perm, false);
        self.mul_sum(ctx, ext, &mut c1, &a, &ka[..a.len()], perm, false);
        self.mod_down(ctx, q, &mut c0);
        self.mod_down(ctx, q, &mut c1);
        Ok((c0, c1))
    }
}

/// Checks a key-switching inner product's shapes: at least as many key digits as decomposed
/// digits, and a key basis covering `Q_l ∪ P` (`q` live Q limbs). Returns the extended basis
/// `Q_l ∪ P`. For backends overriding [`Backend::key_switch_decomposed`].
///
/// # Errors
/// [`RingError::LengthMismatch`], [`RingError::BasisMismatch`].
pub fn check_key_switch(
    ctx: &RnsContext,
    q: usize,
    digits: usize,
    key_digits: usize,
    key_basis: Basis,
) -> Result<Basis, RingError> {
    if digits > key_digits {
        return Err(RingError::LengthMismatch {
            expected: key_digits,
            found: digits,
        });
    }
    let ext = Basis::qp(q, ctx.p_count());
    if key_basis.q < q || key_basis.p != ctx.p_count() || key_basis.q > ctx.q_count() {
        return Err(RingError::BasisMismatch {
            lhs: key_basis,
            rhs: ext,
        });
    }
    Ok(ext)
}
