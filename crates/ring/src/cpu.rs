//! Multi-threaded CPU backend: rayon across limbs, `tfhe-ntt` (AVX-512/IFMA) or the scalar
//! NTT per limb, lazy 128-bit accumulation in multiply-sum kernels.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use crate::{
    AlignedVec, Backend, Basis, RingError, RnsContext,
    backend::{Operand, PolyRows},
    modulus::Modulus,
};

/// The CPU backend. It owns its rayon thread pool, so thread counts are explicit per backend
/// (benchmarks compare 1 and 2 threads in one process).
#[derive(Clone)]
pub struct CpuBackend {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuBackend({} threads)", self.threads)
    }
}

impl CpuBackend {
    /// A backend with `threads` worker threads (0 = one per available core).
    ///
    /// # Errors
    /// [`RingError::Backend`] if the thread pool cannot be created.
    pub fn new(threads: usize) -> Result<Self, RingError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hecnn-cpu-{i}"))
            .build()
            .map_err(|e| RingError::Backend(format!("thread pool: {e}")))?;
        Ok(Self {
            pool: Arc::new(pool),
            threads,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

#[inline]
fn limb(buf: &AlignedVec, pos: usize, n: usize) -> &[u64] {
    &buf.as_slice()[pos * n..(pos + 1) * n]
}

/// Position of the limb with global index `g` in `b` (the caller checked containment).
#[inline]
fn pos_of(ctx: &RnsContext, b: &Basis, g: usize) -> usize {
    debug_assert!(b.position(ctx, g).is_some());
    if g < ctx.q_count() {
        g
    } else {
        b.q + (g - ctx.q_count())
    }
}

/// The limb with global index `g` of one operand.
fn limb_op<'a>(
    ctx: &RnsContext,
    (x, bs): Operand<'a, CpuBackend>,
    g: usize,
    n: usize,
) -> &'a [u64] {
    limb(x, pos_of(ctx, &bs, g), n)
}

/// The limbs with global index `g` of every operand.
fn limbs_of<'a>(
    ctx: &RnsContext,
    ops: &[Operand<'a, CpuBackend>],
    g: usize,
    n: usize,
) -> Vec<&'a [u64]> {
    ops.iter()
        .map(|(x, bs)| limb(x, pos_of(ctx, bs, g), n))
        .collect()
}

/// `Π_{i ∈ digit, i ≠ skip} q_i mod m`.
fn prod_mod(ctx: &RnsContext, digit: Range<usize>, skip: Option<usize>, m: &Modulus) -> u64 {
    digit
        .filter(|&i| Some(i) != skip)
        .fold(1 % m.value(), |acc, i| {
            m.mul(acc, m.reduce(ctx.modulus(i).value()))
        })
}

/// `out[i] = Σ_j y_j[i]·c_j mod q_g` (fast basis conversion); IFMA when the CPU allows:
/// for targets below 2^50 (`sources_fit`: every source prime is below 2^50, which enables
/// the lazy accumulating kernel; wider sources are split), and for wider targets in 52-bit
/// digits with a Montgomery finish; else 128-bit lazy accumulation.
fn dot_const(
    ctx: &RnsContext,
    g: usize,
    out: &mut [u64],
    y: &[&[u64]],
    consts: &[u64],
    sources_fit: bool,
) {
    let m = ctx.modulus(g);
    if let Some(c) = ctx.ifma(g) {
        if sources_fit && c.dot_lazy(out, y, consts, false) {
            return;
        }
        if c.dot_const(out, y, consts, !sources_fit) {
            return;
        }
    } else if ctx.wide(g).is_some_and(|w| w.dot_const(out, y, consts)) {
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc: u128 = 0;
        for (yj, &cj) in y.iter().zip(consts) {
            acc += yj[i] as u128 * cj as u128;
        }
        *o = m.reduce_u128_any(acc);
    }
}

/// `d[i] = d[i]·w mod q_g` for a reduced constant `w` (Shoup): IFMA where the CPU and prime
/// allow, else scalar.
fn mul_const_limb(ctx: &RnsContext, g: usize, d: &mut [u64], w: u64) {
    if ctx
        .ifma(g)
        .is_some_and(|c| c.mul_shoup_assign(d, w, c.shoup(w)))
    {
        return;
    }
    let m = ctx.modulus(g);
    let ws = m.shoup(w);
    for x in d.iter_mut() {
        *x = m.mul_shoup(*x, w, ws);
    }
}

/// `d[i] = (d[i] − s[i])·w mod q_g` for reduced operands and constant `w`: IFMA where the
/// CPU and prime allow, else scalar.
fn sub_mul_const_limb(ctx: &RnsContext, g: usize, d: &mut [u64], s: &[u64], w: u64) {
    if ctx
        .ifma(g)
        .is_some_and(|c| c.sub_mul_shoup_assign(d, s, w, c.shoup(w)))
    {
        return;
    }
    let m = ctx.modulus(g);
    let ws = m.shoup(w);
    for (x, &y) in d.iter_mut().zip(s) {
        *x = m.mul_shoup(m.sub(*x, y), w, ws);
    }
}

/// `d = [d +] Σ_j a_j[perm] ⊙ b_j` over one limb (global index `g`): the IFMA kernels where
/// the CPU and prime allow, else scalar.
fn mul_sum_limb(
    ctx: &RnsContext,
    g: usize,
    d: &mut [u64],
    al: &[&[u64]],
    bl: &[&[u64]],
    perm: Option<&[u32]>,
    accumulate: bool,
) {
    if ctx
        .ifma(g)
        .is_some_and(|c| c.mul_sum(d, al, bl, perm, accumulate))
    {
        return;
    }
    if perm.is_none()
        && ctx
            .wide(g)
            .is_some_and(|c| c.mul_sum(d, al, bl, accumulate))
    {
        return;
    }
    mul_sum_scalar(ctx.modulus(g), d, al, bl, perm, accumulate);
}

/// Both `out_k = Σ_j a_j[perm] ⊙ b_kj` (`k = 0, 1`) over one limb (global index `g`), in one
/// pass over the shared `a_j` where a kernel allows: IFMA (`blocked`: terms outermost, for
/// many terms read from memory) or the wide-prime kernel, neither with `perm`; else one
/// [`mul_sum_limb`] per output.
fn mul_sum_pair_limb(
    ctx: &RnsContext,
    g: usize,
    [d0, d1]: [&mut [u64]; 2],
    a: &[&[u64]],
    [b0, b1]: [&[&[u64]]; 2],
    perm: Option<&[u32]>,
    blocked: bool,
) {
    if perm.is_none() {
        let done = match (ctx.ifma(g), ctx.wide(g)) {
            (Some(c), _) if blocked => c.mul_sum_pair_blocked([&mut *d0, &mut *d1], a, [b0, b1]),
            (Some(c), _) => c.mul_sum_pair([&mut *d0, &mut *d1], a, [b0, b1]),
            (None, Some(c)) => c.mul_sum_pair([&mut *d0, &mut *d1], a, [b0, b1]),
            (None, None) => false,
        };
        if done {
            return;
        }
    }
    mul_sum_limb(ctx, g, d0, a, b0, perm, false);
    mul_sum_limb(ctx, g, d1, a, b1, perm, false);
}

/// Scalar `d = [d +] Σ_j a_j[perm] ⊙ b_j` with 128-bit lazy accumulation: up to 32 products
/// of `< 2^122` each (plus the carried-in value) fit in a `u128` before one reduction.
fn mul_sum_scalar(
    m: &Modulus,
    d: &mut [u64],
    al: &[&[u64]],
    bl: &[&[u64]],
    perm: Option<&[u32]>,
    accumulate: bool,
) {
    const CHUNK: usize = 32;
    let n = d.len();
    let mut acc = vec![0u128; n];
    if accumulate {
        for (a, &x) in acc.iter_mut().zip(d.iter()) {
            *a = x as u128;
        }
    }
    for (ac, bc) in al.chunks(CHUNK).zip(bl.chunks(CHUNK)) {
        for (x, y) in ac.iter().zip(bc) {
            match perm {
                None => {
                    for ((a, &xv), &yv) in acc.iter_mut().zip(x.iter()).zip(y.iter()) {
                        *a += xv as u128 * yv as u128;
                    }
                }
                Some(p) => {
                    for ((a, &pi), &yv) in acc.iter_mut().zip(p).zip(y.iter()) {
                        *a += x[pi as usize] as u128 * yv as u128;
                    }
                }
            }
        }
        // Reduce once per chunk so the next chunk starts from a value below q.
        for a in acc.iter_mut() {
            *a = m.reduce_u128_any(*a) as u128;
        }
    }
    for (o, &a) in d.iter_mut().zip(&acc) {
        *o = a as u64;
    }
}

impl CpuBackend {
    fn zip_limbs(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        src: &AlignedVec,
        src_basis: Basis,
        f: impl Fn(usize, &mut [u64], &[u64]) + Sync,
    ) {
        let n = ctx.n();
        self.pool.install(|| {
            dst.as_mut_slice()[..basis.len() * n]
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(pos, d)| {
                    let g = basis.global(ctx, pos);
                    f(g, d, limb(src, pos_of(ctx, &src_basis, g), n));
                });
        });
    }

    /// Cuts the first `limbs` limbs of every output into spans of coefficients (multiples of
    /// `align`), about two per thread: task `(pos, offset, pieces)` owns the span at `offset`
    /// of limb `pos` of every output, in the outputs' order. Tasks by (limb, span) keep the
    /// threads balanced even on an odd limb count.
    fn span_tasks<'a>(
        &self,
        n: usize,
        limbs: usize,
        align: usize,
        outputs: impl Iterator<Item = &'a mut AlignedVec>,
    ) -> Vec<(usize, usize, Vec<&'a mut [u64]>)> {
        let parts = (2 * self.threads).div_ceil(limbs.max(1)).max(1);
        let span = n.div_ceil(parts).next_multiple_of(align).min(n);
        let per_limb = n.div_ceil(span);
        let mut tasks: Vec<(usize, usize, Vec<&mut [u64]>)> = (0..limbs)
            .flat_map(|pos| (0..per_limb).map(move |p| (pos, p * span, Vec::new())))
            .collect();
        for out in outputs {
            for (pos, words) in out.as_mut_slice()[..limbs * n].chunks_mut(n).enumerate() {
                for (p, piece) in words.chunks_mut(span).enumerate() {
                    tasks[pos * per_limb + p].2.push(piece);
                }
            }
        }
        tasks
    }

    fn each_limb(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        f: impl Fn(usize, usize, &mut [u64]) + Sync,
    ) {
        let n = ctx.n();
        self.pool.install(|| {
            dst.as_mut_slice()[..basis.len() * n]
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(pos, d)| f(pos, basis.global(ctx, pos), d));
        });
    }
}

impl Backend for CpuBackend {
    type Buffer = AlignedVec;

    fn name(&self) -> String {
        format!("cpu({} threads)", self.threads)
    }

    fn alloc(&self, words: usize) -> Result<AlignedVec, RingError> {
        Ok(AlignedVec::zeroed(words))
    }

    fn upload(&self, host: &[u64]) -> Result<AlignedVec, RingError> {
        Ok(AlignedVec::from_slice(host))
    }

    fn fill_buffer(
        &self,
        words: usize,
        fill: &mut dyn FnMut(&mut [u64]),
    ) -> Result<AlignedVec, RingError> {
        let mut buf = self.alloc(words)?;
        fill(&mut buf.as_mut_slice()[..words]);
        Ok(buf)
    }

    fn download(&self, buf: &AlignedVec, words: usize) -> Result<Vec<u64>, RingError> {
        buf.as_slice()
            .get(..words)
            .map(<[u64]>::to_vec)
            .ok_or(RingError::LengthMismatch {
                expected: words,
                found: buf.len(),
            })
    }

    fn parallelism(&self) -> usize {
        self.threads
    }

    /// Runs `f` inside this backend's thread pool (so nested rayon calls use it).
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn par_map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        self.pool.install(|| items.into_par_iter().map(f).collect())
    }

    fn zeroize(&self, buf: &mut AlignedVec) {
        zeroize::Zeroize::zeroize(buf.as_mut_slice());
    }

    fn ntt_forward(&self, ctx: &RnsContext, basis: Basis, buf: &mut AlignedVec) {
        self.each_limb(ctx, basis, buf, |_, g, d| ctx.ntt(g).forward(d));
    }

    fn ntt_inverse(&self, ctx: &RnsContext, basis: Basis, buf: &mut AlignedVec) {
        self.each_limb(ctx, basis, buf, |_, g, d| ctx.ntt(g).inverse(d));
    }

    fn add_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        src: &AlignedVec,
        src_basis: Basis,
    ) {
        self.zip_limbs(ctx, basis, dst, src, src_basis, |g, d, s| {
            let m = ctx.modulus(g);
            for (x, &y) in d.iter_mut().zip(s) {
                *x = m.add(*x, y);
            }
        });
    }

    fn sub_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        src: &AlignedVec,
        src_basis: Basis,
    ) {
        self.zip_limbs(ctx, basis, dst, src, src_basis, |g, d, s| {
            let m = ctx.modulus(g);
            for (x, &y) in d.iter_mut().zip(s) {
                *x = m.sub(*x, y);
            }
        });
    }

    fn neg_assign(&self, ctx: &RnsContext, basis: Basis, dst: &mut AlignedVec) {
        self.each_limb(ctx, basis, dst, |_, g, d| {
            let m = ctx.modulus(g);
            for x in d.iter_mut() {
                *x = m.neg(*x);
            }
        });
    }

    fn mul_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        src: &AlignedVec,
        src_basis: Basis,
    ) {
        self.zip_limbs(ctx, basis, dst, src, src_basis, |g, d, s| {
            if ctx.ifma(g).is_some_and(|c| c.mul_assign(d, s)) {
                return;
            }
            // 50–61-bit primes: the wide IFMA product (one term of the multiply-sum) into a
            // scratch limb, then copied back.
            if let Some(w) = ctx.wide(g) {
                let mut out = vec![0u64; d.len()];
                if w.mul_sum(&mut out, &[d], &[s], false) {
                    d.copy_from_slice(&out);
                    return;
                }
            }
            let m = ctx.modulus(g);
            for (x, &y) in d.iter_mut().zip(s) {
                *x = m.mul(*x, y);
            }
        });
    }

    fn mul_sum(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        a: &[Operand<'_, Self>],
        b: &[Operand<'_, Self>],
        perm: Option<&[u32]>,
        accumulate: bool,
    ) {
        let n = ctx.n();
        self.each_limb(ctx, basis, dst, |_, g, d| {
            let al = limbs_of(ctx, a, g, n);
            let bl = limbs_of(ctx, b, g, n);
            mul_sum_limb(ctx, g, d, &al, &bl, perm, accumulate);
        });
    }

    fn key_switch_decomposed(
        &self,
        ctx: &RnsContext,
        q: usize,
        parts: &[AlignedVec],
        key: &[(&AlignedVec, &AlignedVec)],
        key_basis: Basis,
        perm: Option<&[u32]>,
    ) -> Result<(AlignedVec, AlignedVec), RingError> {
        let ext = crate::backend::check_key_switch(ctx, q, parts.len(), key.len(), key_basis)?;
        let key = &key[..parts.len()];
        let n = ctx.n();
        let mut c0 = self.alloc(ext.len() * n)?;
        let mut c1 = self.alloc(ext.len() * n)?;
        // Both outputs per limb in one pass, so every digit is read once.
        self.pool.install(|| {
            c0.as_mut_slice()[..ext.len() * n]
                .par_chunks_mut(n)
                .zip(c1.as_mut_slice()[..ext.len() * n].par_chunks_mut(n))
                .enumerate()
                .for_each(|(pos, (d0, d1))| {
                    let g = ext.global(ctx, pos);
                    let al: Vec<&[u64]> = parts
                        .iter()
                        .map(|x| limb(x, pos_of(ctx, &ext, g), n))
                        .collect();
                    let kpos = pos_of(ctx, &key_basis, g);
                    let b0: Vec<&[u64]> = key.iter().map(|k| limb(k.0, kpos, n)).collect();
                    let b1: Vec<&[u64]> = key.iter().map(|k| limb(k.1, kpos, n)).collect();
                    mul_sum_pair_limb(ctx, g, [d0, d1], &al, [&b0, &b1], perm, false);
                });
        });
        self.mod_down(ctx, q, &mut c0);
        self.mod_down(ctx, q, &mut c1);
        Ok((c0, c1))
    }

    fn scalar_mul_sum(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        srcs: &[Operand<'_, Self>],
        scalars: &[Vec<u64>],
        accumulate: bool,
    ) {
        let n = ctx.n();
        self.each_limb(ctx, basis, dst, |pos, g, d| {
            let m = ctx.modulus(g);
            let ys = limbs_of(ctx, srcs, g, n);
            let ws: Vec<u64> = scalars.iter().map(|s| m.reduce(s[pos])).collect();
            if ctx
                .ifma(g)
                .is_some_and(|c| c.dot_lazy(d, &ys, &ws, accumulate))
            {
                return;
            }
            let shoup: Vec<u64> = ws.iter().map(|&w| m.shoup(w)).collect();
            for (i, o) in d.iter_mut().enumerate() {
                let mut acc = if accumulate { *o } else { 0 };
                for ((y, &w), &ws) in ys.iter().zip(&ws).zip(&shoup) {
                    acc = m.add(acc, m.mul_shoup(y[i], w, ws));
                }
                *o = acc;
            }
        });
    }

    fn weighted_sums(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        inputs: &[Operand<'_, Self>],
        rows: crate::backend::SparseRows<'_>,
        outputs: &mut [AlignedVec],
    ) {
        // Coefficients per block: one block of every input (e.g. 720 × 1 KiB) stays in L2
        // while all rows are accumulated.
        const BLOCK: usize = 32;
        let n = ctx.n();
        let limbs = basis.len();
        let nrows = rows.row_ptr.len().saturating_sub(1);
        let tasks = self.span_tasks(n, limbs, BLOCK, outputs.iter_mut());
        self.pool.install(|| {
            tasks.into_par_iter().for_each(|(pos, offset, mut outs)| {
                let g = basis.global(ctx, pos);
                let m = ctx.modulus(g);
                let len = outs.first().map_or(0, |o| o.len());
                let ins: Vec<&[u64]> = inputs
                    .iter()
                    .map(|(x, bs)| &limb(x, pos_of(ctx, bs, g), n)[offset..offset + len])
                    .collect();
                let ws = &rows.weights[pos];
                if ctx.ifma(g).is_some_and(|c| {
                    c.weighted_sums_limb(&mut outs[..nrows], &ins, rows.row_ptr, rows.cols, ws)
                }) {
                    return;
                }
                let mut ys: Vec<&[u64]> = Vec::new();
                for start in (0..len).step_by(BLOCK) {
                    let end = (start + BLOCK).min(len);
                    for (k, out) in outs.iter_mut().enumerate().take(nrows) {
                        let terms = rows.row_ptr[k]..rows.row_ptr[k + 1];
                        let dst = &mut out[start..end];
                        ys.clear();
                        ys.extend(
                            rows.cols[terms.clone()]
                                .iter()
                                .map(|&j| &ins[j as usize][start..end]),
                        );
                        let w = &ws[terms];
                        for (i, o) in dst.iter_mut().enumerate() {
                            let mut acc: u128 = 0;
                            for (chunk_y, chunk_w) in ys.chunks(32).zip(w.chunks(32)) {
                                for (y, &wv) in chunk_y.iter().zip(chunk_w) {
                                    acc += y[i] as u128 * wv as u128;
                                }
                                acc = m.reduce_u128_any(acc) as u128;
                            }
                            *o = acc as u64;
                        }
                    }
                }
            });
        });
    }

    fn mul_sums_pair(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        inputs: &[[Operand<'_, Self>; 2]],
        rows: PolyRows<'_, Self>,
        outputs: &mut [[AlignedVec; 2]],
    ) {
        let n = ctx.n();
        let limbs = basis.len();
        let nrows = rows.rows().min(outputs.len());
        // Coefficients per block (a power of two): one block of both components of every
        // input, 16 bytes per coefficient and input, fits in 512 KiB, half of a typical
        // per-core L2, while every row is accumulated, so the weights are the only stream
        // from memory. Beyond 512 inputs the 64-coefficient floor takes more.
        let fit = (512 << 10) / (16 * inputs.len().max(1));
        let block = (1usize << fit.max(1).ilog2()).clamp(64, 1024).min(n);
        // Each task's pieces are component-interleaved (`2k + c`).
        let outs = outputs
            .iter_mut()
            .take(nrows)
            .flat_map(|pair| pair.iter_mut());
        let tasks = self.span_tasks(n, limbs, block, outs);
        self.pool.install(|| {
            tasks.into_par_iter().for_each(|(pos, offset, mut outs)| {
                let g = basis.global(ctx, pos);
                let len = outs.first().map_or(0, |o| o.len());
                let limb_of = |op| &limb_op(ctx, op, g, n)[offset..];
                let ins: Vec<[&[u64]; 2]> = inputs
                    .iter()
                    .map(|pair| [limb_of(pair[0]), limb_of(pair[1])])
                    .collect();
                let ws: Vec<&[u64]> = rows.weights.iter().map(|&w| limb_of(w)).collect();
                let (mut a, mut b0, mut b1) = (Vec::new(), Vec::new(), Vec::new());
                for start in (0..len).step_by(block) {
                    let end = (start + block).min(len);
                    for (k, pair) in outs.chunks_exact_mut(2).enumerate() {
                        let [d0, d1] = pair else { continue };
                        let terms = rows.row_ptr[k]..rows.row_ptr[k + 1];
                        a.clear();
                        b0.clear();
                        b1.clear();
                        for t in terms {
                            let [x0, x1] = ins[rows.cols[t] as usize];
                            a.push(&ws[t][start..end]);
                            b0.push(&x0[start..end]);
                            b1.push(&x1[start..end]);
                        }
                        let out = [&mut d0[start..end], &mut d1[start..end]];
                        mul_sum_pair_limb(ctx, g, out, &a, [&b0, &b1], None, true);
                    }
                }
            });
        });
    }

    fn mul_scalar_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        scalars: &[u64],
    ) {
        self.each_limb(ctx, basis, dst, |pos, g, d| {
            mul_const_limb(ctx, g, d, ctx.modulus(g).reduce(scalars[pos]));
        });
    }

    fn add_scalar_assign(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        dst: &mut AlignedVec,
        scalars: &[u64],
        eval: bool,
    ) {
        self.each_limb(ctx, basis, dst, |pos, g, d| {
            let m = ctx.modulus(g);
            let s = m.reduce(scalars[pos]);
            if eval {
                for x in d.iter_mut() {
                    *x = m.add(*x, s);
                }
            } else if let Some(x) = d.first_mut() {
                *x = m.add(*x, s);
            }
        });
    }

    fn automorphism(
        &self,
        ctx: &RnsContext,
        basis: Basis,
        src: &AlignedVec,
        dst: &mut AlignedVec,
        galois: usize,
        eval: bool,
    ) -> Result<(), RingError> {
        let n = ctx.n();
        if eval {
            let perm = ctx.eval_permutation(galois)?;
            self.zip_limbs(ctx, basis, dst, src, basis, |_, d, s| {
                for (x, &p) in d.iter_mut().zip(perm.iter()) {
                    *x = s[p as usize];
                }
            });
        } else {
            ctx.check_galois(galois)?;
            let two_n = 2 * n;
            self.zip_limbs(ctx, basis, dst, src, basis, |g, d, s| {
                let m = ctx.modulus(g);
                for (i, &c) in s.iter().enumerate() {
                    let j = (i * galois) % two_n;
                    if j < n {
                        d[j] = c;
                    } else {
                        d[j - n] = m.neg(c);
                    }
                }
            });
        }
        Ok(())
    }

    fn rescale(&self, ctx: &RnsContext, basis: Basis, buf: &mut AlignedVec) {
        let n = ctx.n();
        let last = basis.q - 1;
        let ql = *ctx.modulus(last);
        let half = ql.value() >> 1;
        let (head, tail) = buf.as_mut_slice().split_at_mut(last * n);
        let mut t = tail[..n].to_vec();
        ctx.ntt(last).inverse(&mut t);
        for x in t.iter_mut() {
            *x = ql.add(*x, half); // [c + ⌊q_l/2⌋]_{q_l}: rounds instead of flooring
        }
        self.pool.install(|| {
            head.par_chunks_mut(n).enumerate().for_each(|(i, d)| {
                let m = ctx.modulus(i);
                let half_i = m.reduce(half);
                // q_l is a different prime, hence invertible modulo q_i.
                let inv = m.inv(ql.value()).unwrap_or(0);
                if let Some(c) = ctx.ifma(i) {
                    // [t - h]_{q_i} = [t + (q_i - [h]_{q_i})]_{q_i}, all below 2^52.
                    let off = m.value() - half_i;
                    let mut tmp: Vec<u64> = t.iter().map(|&x| x + off).collect();
                    if c.reduce_assign(&mut tmp) {
                        ctx.ntt(i).forward(&mut tmp);
                        if c.sub_mul_shoup_assign(d, &tmp, inv, c.shoup(inv)) {
                            return;
                        }
                    }
                }
                let mut tmp: Vec<u64> = t.iter().map(|&x| m.sub(m.reduce(x), half_i)).collect();
                ctx.ntt(i).forward(&mut tmp);
                sub_mul_const_limb(ctx, i, d, &tmp, inv);
            });
        });
    }

    fn mod_up(
        &self,
        ctx: &RnsContext,
        q: usize,
        digit: Range<usize>,
        c_coeff: &AlignedVec,
        c_eval: &AlignedVec,
        out: &mut AlignedVec,
    ) {
        let n = ctx.n();
        let ext = Basis::qp(q, ctx.p_count());
        // y_j = c_j · (Q_D / q_j)^{-1} mod q_j
        let digit_fits_ifma = digit
            .clone()
            .all(|j| ctx.modulus(j).value() < crate::simd::IFMA_MAX_MODULUS);
        let y: Vec<Vec<u64>> = self.pool.install(|| {
            digit
                .clone()
                .into_par_iter()
                .map(|j| {
                    let m = ctx.modulus(j);
                    let inv = m.inv(prod_mod(ctx, digit.clone(), Some(j), m)).unwrap_or(0);
                    let mut v = limb(c_coeff, j, n).to_vec();
                    mul_const_limb(ctx, j, &mut v, inv);
                    v
                })
                .collect()
        });
        let y_refs: Vec<&[u64]> = y.iter().map(Vec::as_slice).collect();
        self.each_limb(ctx, ext, out, |_, g, d| {
            if digit.contains(&g) {
                d.copy_from_slice(limb(c_eval, g, n));
                return;
            }
            let m = ctx.modulus(g);
            let consts: Vec<u64> = digit
                .clone()
                .map(|j| prod_mod(ctx, digit.clone(), Some(j), m))
                .collect();
            dot_const(ctx, g, d, &y_refs, &consts, digit_fits_ifma);
            ctx.ntt(g).forward(d);
        });
    }

    fn mod_down(&self, ctx: &RnsContext, q: usize, buf: &mut AlignedVec) {
        let n = ctx.n();
        let k = ctx.p_count();
        let qc = ctx.q_count();
        let (head, tail) = buf.as_mut_slice().split_at_mut(q * n);
        let p_range = qc..qc + k;
        let p_fits_ifma = p_range
            .clone()
            .all(|g| ctx.modulus(g).value() < crate::simd::IFMA_MAX_MODULUS);
        // y_j = [x]_{p_j} · (P / p_j)^{-1} mod p_j, in the coefficient domain, computed in
        // place: the P limbs are not part of the result.
        self.pool.install(|| {
            tail[..k * n]
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(j, v)| {
                    let g = qc + j;
                    let m = ctx.modulus(g);
                    ctx.ntt(g).inverse(v);
                    let inv = m
                        .inv(prod_mod(ctx, p_range.clone(), Some(g), m))
                        .unwrap_or(0);
                    mul_const_limb(ctx, g, v, inv);
                });
        });
        let y: Vec<&[u64]> = tail[..k * n].chunks(n).collect();
        self.pool.install(|| {
            head.par_chunks_mut(n).enumerate().for_each_init(
                || vec![0u64; n],
                |conv, (i, d)| {
                    let m = ctx.modulus(i);
                    let consts: Vec<u64> = p_range
                        .clone()
                        .map(|g| prod_mod(ctx, p_range.clone(), Some(g), m))
                        .collect();
                    dot_const(ctx, i, conv, &y, &consts, p_fits_ifma);
                    ctx.ntt(i).forward(conv);
                    let p_inv = m.inv(prod_mod(ctx, p_range.clone(), None, m)).unwrap_or(0);
                    sub_mul_const_limb(ctx, i, d, conv, p_inv);
                },
            );
        });
    }
}
