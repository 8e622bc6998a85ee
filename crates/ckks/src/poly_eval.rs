//! Polynomial evaluation in the Chebyshev basis.
//!
//! `p(x) = Σ c_i T_i(x)` on an interval `[a, b]` is evaluated by recursive Chebyshev
//! division `p = q·T_k + r` (`k` a power of two) down to leaves `Σ_{i<2^l} c_i T_i`, with
//! Chebyshev polynomials `T_i` computed on demand from `T_{a+b} = 2·T_a·T_b − T_{|a−b|}`.
//! Every sub-result is produced directly at a *target* level and scale: leaf coefficients are
//! encoded as integers at exactly the scale that lands the sum on the target after one
//! rescale, and the quotient of each division is evaluated for the scale that the product
//! with `T_k` turns into the target. Scales are therefore tracked exactly, and the depth is
//! `⌈log2(d+1)⌉` (plus one level for the change of variable when `[a, b] ≠ [-1, 1]`). The leaf
//! size is the one that keeps this depth with the fewest ciphertext products.

use std::collections::HashMap;

use hecnn_ring::Backend;

use crate::{Ciphertext, CkksError, Evaluator};

/// A polynomial in the Chebyshev basis on `[a, b]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChebyshevPoly {
    coeffs: Vec<f64>,
    a: f64,
    b: f64,
}

impl ChebyshevPoly {
    /// From coefficients `c_0, …, c_d` on `[a, b]`.
    ///
    /// # Errors
    /// [`CkksError::InvalidArgument`] for an empty or degenerate interval or no coefficients.
    pub fn new(coeffs: Vec<f64>, a: f64, b: f64) -> Result<Self, CkksError> {
        if coeffs.is_empty()
            || a >= b
            || !a.is_finite()
            || !b.is_finite()
            || a.is_nan()
            || b.is_nan()
        {
            return Err(CkksError::InvalidArgument {
                what: "Chebyshev polynomial needs coefficients and a finite interval a < b",
            });
        }
        Ok(Self { coeffs, a, b })
    }

    /// Interpolates `f` at the `degree + 1` Chebyshev nodes of `[a, b]`.
    ///
    /// # Errors
    /// See [`ChebyshevPoly::new`].
    pub fn interpolate(
        f: impl Fn(f64) -> f64,
        degree: usize,
        a: f64,
        b: f64,
    ) -> Result<Self, CkksError> {
        let m = degree + 1;
        let nodes: Vec<f64> = (0..m)
            .map(|k| (std::f64::consts::PI * (k as f64 + 0.5) / m as f64).cos())
            .collect();
        let values: Vec<f64> = nodes
            .iter()
            .map(|&t| f((b - a) / 2.0 * t + (a + b) / 2.0))
            .collect();
        let coeffs = (0..m)
            .map(|j| {
                let s: f64 = nodes
                    .iter()
                    .zip(&values)
                    .enumerate()
                    .map(|(k, (_, &v))| {
                        v * (std::f64::consts::PI * j as f64 * (k as f64 + 0.5) / m as f64).cos()
                    })
                    .sum();
                s * if j == 0 { 1.0 } else { 2.0 } / m as f64
            })
            .collect();
        Self::new(coeffs, a, b)
    }

    /// The polynomial `Σ a_i x^i` (monomial coefficients) re-expressed on `[a, b]`.
    ///
    /// # Errors
    /// See [`ChebyshevPoly::new`].
    pub fn from_monomial(mono: &[f64], a: f64, b: f64) -> Result<Self, CkksError> {
        let f = |x: f64| mono.iter().rev().fold(0.0, |acc, &c| acc * x + c);
        Self::interpolate(f, mono.len().saturating_sub(1), a, b)
    }

    /// Degree (index of the last coefficient).
    pub fn degree(&self) -> usize {
        self.coeffs.len() - 1
    }

    /// Coefficients.
    pub fn coeffs(&self) -> &[f64] {
        &self.coeffs
    }

    /// The interval.
    pub fn interval(&self) -> (f64, f64) {
        (self.a, self.b)
    }

    /// Evaluates in the clear (Clenshaw's recurrence).
    pub fn eval(&self, x: f64) -> f64 {
        let t = (2.0 * x - self.a - self.b) / (self.b - self.a);
        let (mut b1, mut b2) = (0.0, 0.0);
        for &c in self.coeffs.iter().skip(1).rev() {
            let b0 = 2.0 * t * b1 - b2 + c;
            b2 = b1;
            b1 = b0;
        }
        t * b1 - b2 + self.coeffs[0]
    }

    fn needs_affine(&self) -> bool {
        self.a != -1.0 || self.b != 1.0
    }

    /// Ciphertext products (relinearizations) the homomorphic evaluation performs.
    pub fn products(&self) -> usize {
        plan_products(&self.coeffs, best_leaf(&self.coeffs))
    }

    /// Levels the homomorphic evaluation consumes.
    pub fn depth(&self) -> usize {
        let d = plan_depth(&self.coeffs, best_leaf(&self.coeffs));
        d + usize::from(self.needs_affine())
    }
}

/// Levels consumed to compute `T_i` (`⌈log2 i⌉`).
fn t_depth(i: usize) -> usize {
    if i <= 1 {
        0
    } else {
        (usize::BITS - (i - 1).leading_zeros()) as usize
    }
}

fn effective_degree(c: &[f64]) -> usize {
    c.iter().rposition(|&x| x != 0.0).unwrap_or(0)
}

/// Depth of the recursive evaluation with leaves of degree `< 2^l`.
fn plan_depth(c: &[f64], l: u32) -> usize {
    let d = effective_degree(c);
    if d < (1 << l) {
        return (1..=d)
            .filter(|&i| c[i] != 0.0)
            .map(|i| t_depth(i) + 1)
            .max()
            .unwrap_or(0);
    }
    let k = 1usize << (usize::BITS - 1 - d.leading_zeros()); // largest power of two ≤ d
    let (q, r) = divide(c, k);
    let dq = if effective_degree(&q) == 0 {
        t_depth(k) + 1
    } else {
        plan_depth(&q, l).max(t_depth(k)) + 1
    };
    dq.max(plan_depth(&r, l))
}

/// The factors `T_i` is computed from: `T_i = 2·T_a·T_b − T_{a−b}` with `a` the largest
/// power of two below `i` and `b = i − a` (so the depth of `T_i` is `⌈log2 i⌉`), for `i ≥ 2`.
fn power_factors(i: usize) -> (usize, usize) {
    let a = 1usize << (t_depth(i) - 1);
    (a, i - a)
}

/// Ciphertext products (relinearizations) the evaluation with leaves of degree `< 2^l`
/// performs: every `T_i` the leaves and divisions read (with the `T_a`, `T_b`, `T_{a−b}`
/// that [`PowerCache`] computes them from), plus one product per non-constant quotient.
fn plan_products(c: &[f64], l: u32) -> usize {
    fn walk(c: &[f64], l: u32, powers: &mut std::collections::BTreeSet<usize>) -> usize {
        let d = effective_degree(c);
        if d < (1 << l) {
            powers.extend((2..=d).filter(|&i| c[i] != 0.0));
            return 0;
        }
        let k = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let (q, r) = divide(c, k);
        powers.insert(k);
        let mut products = 0;
        if effective_degree(&q) != 0 {
            products += 1 + walk(&q, l, powers);
        }
        if r.iter().any(|&x| x != 0.0) {
            products += walk(&r, l, powers);
        }
        products
    }
    fn close(i: usize, done: &mut std::collections::BTreeSet<usize>) {
        if i <= 1 || done.contains(&i) {
            return;
        }
        let (a, b) = power_factors(i);
        close(a, done);
        close(b, done);
        if a != b {
            close(a - b, done);
        }
        done.insert(i);
    }
    let mut powers = std::collections::BTreeSet::new();
    let products = walk(c, l, &mut powers);
    let mut done = std::collections::BTreeSet::new();
    for &i in &powers {
        close(i, &mut done);
    }
    products + done.len()
}

/// The leaf size `2^l` with the fewest ciphertext products among those that keep the
/// optimal depth: small leaves need few powers but many division products, large leaves
/// the reverse (degree 39: 13 products with leaves of degree < 8, 32 with leaves < 32).
fn best_leaf(c: &[f64]) -> u32 {
    let d = effective_degree(c).max(1);
    let optimal = plan_depth(c, 1);
    (1..=(usize::BITS - d.leading_zeros()))
        .filter(|&l| plan_depth(c, l) <= optimal)
        .min_by_key(|&l| (plan_products(c, l), std::cmp::Reverse(l)))
        .unwrap_or(1)
}

/// Chebyshev division by `T_k` (`k ≤ deg < 2k`): `p = q·T_k + r`, using
/// `T_{k+i} = 2·T_k·T_i − T_{k−i}`.
fn divide(c: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let d = effective_degree(c);
    let mut q = vec![0.0; d - k + 1];
    let mut r = c[..k].to_vec();
    q[0] = c[k];
    for i in 1..=d - k {
        q[i] = 2.0 * c[k + i];
        r[k - i] -= c[k + i];
    }
    (q, r)
}

struct PowerCache<'e, B: Backend> {
    eval: &'e Evaluator<B>,
    t: HashMap<usize, Ciphertext<B>>,
}

impl<B: Backend> PowerCache<'_, B> {
    /// `T_i(x)`, computed on demand.
    fn get(&mut self, i: usize) -> Result<Ciphertext<B>, CkksError> {
        if let Some(t) = self.t.get(&i) {
            return Ok(t.clone());
        }
        let (a, b) = power_factors(i);
        let ta = self.get(a)?;
        let tb = self.get(b)?;
        let e = self.eval;
        let mut prod = e.mul_relin(&ta, &tb)?;
        e.mul_int_big_assign(&mut prod, 2)?;
        let s = prod.scale();
        if a == b {
            e.add_int_assign(&mut prod, -Evaluator::<B>::round_to_i128(s)?)?;
        } else {
            let mut tc = self.get(a - b)?;
            e.drop_to_level_assign(&mut tc, prod.level())?;
            let k = Evaluator::<B>::round_to_i128(s / tc.scale())?;
            e.mul_int_big_assign(&mut tc, k)?;
            e.combine(&mut prod, &tc, true, false)?;
        }
        e.rescale_assign(&mut prod)?;
        self.t.insert(i, prod.clone());
        Ok(prod)
    }
}

impl<B: Backend> Evaluator<B> {
    /// Evaluates `p(ct)` slot-wise. The result is at `ct.level() − p.depth()` with scale
    /// `target_scale` (default: the input's scale).
    ///
    /// # Errors
    /// [`CkksError::LevelTooLow`] if the ciphertext has fewer levels than the depth; missing
    /// relinearization key.
    pub fn evaluate_chebyshev(
        &self,
        ct: &Ciphertext<B>,
        p: &ChebyshevPoly,
        target_scale: Option<f64>,
    ) -> Result<Ciphertext<B>, CkksError> {
        let depth = p.depth();
        if ct.level() < depth {
            return Err(CkksError::LevelTooLow {
                needed: depth,
                have: ct.level(),
            });
        }
        let target_scale = target_scale.unwrap_or(ct.scale());
        let x = if p.needs_affine() {
            // t = (2x − a − b)/(b − a)
            let (a, b) = p.interval();
            let mut t = self.mul_const(ct, 2.0 / (b - a))?;
            self.rescale_assign(&mut t)?;
            self.add_const(&t, -(a + b) / (b - a))?
        } else {
            ct.clone()
        };
        let l = best_leaf(&p.coeffs);
        let mut cache = PowerCache {
            eval: self,
            t: HashMap::from([(1, x.clone())]),
        };
        let target_level = ct.level() - depth;
        self.eval_rec(
            &p.coeffs,
            l,
            target_level,
            target_scale,
            &mut cache,
            x.slots(),
        )
    }

    fn eval_rec(
        &self,
        c: &[f64],
        l: u32,
        level: usize,
        scale: f64,
        cache: &mut PowerCache<'_, B>,
        slots: usize,
    ) -> Result<Ciphertext<B>, CkksError> {
        let d = effective_degree(c);
        if d < (1 << l) {
            return self.eval_leaf(c, level, scale, cache, slots);
        }
        let k = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let (q, r) = divide(c, k);
        let mut tk = cache.get(k)?;
        self.drop_to_level_assign(&mut tk, level + 1)?;
        let mut prod = if effective_degree(&q) == 0 {
            // q·T_k is linear in T_k: a scaled integer multiple.
            let factor =
                Self::round_to_i128(q[0] * scale * self.params().q_at(level + 1) / tk.scale())?;
            self.mul_int_big_assign(&mut tk, factor)?;
            tk.set_scale(scale * self.params().q_at(level + 1));
            tk
        } else {
            let q_scale = scale * self.params().q_at(level + 1) / tk.scale();
            let qv = self.eval_rec(&q, l, level + 1, q_scale, cache, slots)?;
            let mut p = self.mul_relin(&qv, &tk)?;
            p.set_scale(scale * self.params().q_at(level + 1));
            p
        };
        self.rescale_assign(&mut prod)?;
        prod.set_scale(scale);
        if r.iter().any(|&x| x != 0.0) {
            let rv = self.eval_rec(&r, l, level, scale, cache, slots)?;
            self.combine(&mut prod, &rv, false, false)?;
        }
        Ok(prod)
    }

    /// `Σ c_i T_i` landing exactly on (`level`, `scale`) after one rescale.
    fn eval_leaf(
        &self,
        c: &[f64],
        level: usize,
        scale: f64,
        cache: &mut PowerCache<'_, B>,
        slots: usize,
    ) -> Result<Ciphertext<B>, CkksError> {
        let d = effective_degree(c);
        if d == 0 {
            return self.trivial(c[0], level, scale, slots);
        }
        let q_next = self.params().q_at(level + 1);
        let big = scale * q_next;
        let mut acc: Option<Ciphertext<B>> = None;
        for (i, &ci) in c.iter().enumerate().take(d + 1).skip(1) {
            if ci == 0.0 {
                continue;
            }
            let mut t = cache.get(i)?;
            self.drop_to_level_assign(&mut t, level + 1)?;
            let k = Self::round_to_i128(ci * big / t.scale())?;
            self.mul_int_big_assign(&mut t, k)?;
            t.set_scale(big);
            match acc.as_mut() {
                None => acc = Some(t),
                Some(a) => self.combine(a, &t, false, false)?,
            }
        }
        let mut acc = acc.ok_or(CkksError::InvalidArgument { what: "empty leaf" })?;
        self.add_int_assign(&mut acc, Self::round_to_i128(c[0] * big)?)?;
        self.rescale_assign(&mut acc)?;
        acc.set_scale(scale);
        Ok(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_optimal() {
        for d in [1usize, 2, 3, 4, 7, 8, 15, 16, 31, 63, 100] {
            let p = ChebyshevPoly::new(vec![0.5; d + 1], -1.0, 1.0).unwrap();
            let want = (usize::BITS - d.leading_zeros()) as usize; // ⌈log2(d+1)⌉
            assert_eq!(p.depth(), want, "degree {d}");
        }
    }

    #[test]
    fn leaves_minimise_the_products() {
        // The EvalMod interpolant's shape: a dense degree-39 polynomial.
        let c: Vec<f64> = (0..40).map(|i| 1.0 / (1.0 + i as f64)).collect();
        let l = best_leaf(&c);
        assert_eq!(plan_depth(&c, l), 6);
        assert_eq!((l, plan_products(&c, l)), (3, 13));
        assert_eq!(plan_products(&c, 5), 32);
        // A leaf-only polynomial: T_2..T_7 and nothing else.
        assert_eq!(plan_products(&[1.0; 8], 3), 6);
    }

    #[test]
    fn division_identity_holds() {
        let c: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
        let (q, r) = divide(&c, 8);
        let cheb = |c: &[f64], x: f64| ChebyshevPoly::new(c.to_vec(), -1.0, 1.0).unwrap().eval(x);
        for x in [-0.9, -0.2, 0.3, 0.77] {
            let t8 = (8.0 * f64::acos(x)).cos();
            assert!((cheb(&c, x) - (cheb(&q, x) * t8 + cheb(&r, x))).abs() < 1e-12);
        }
    }

    #[test]
    fn interpolation_is_accurate() {
        let p = ChebyshevPoly::interpolate(f64::exp, 15, -2.0, 3.0).unwrap();
        for x in [-2.0, -0.5, 1.0, 2.9] {
            assert!((p.eval(x) - x.exp()).abs() < 1e-9);
        }
        let sq = ChebyshevPoly::from_monomial(&[1.0, 2.0, 1.0], -4.0, 4.0).unwrap();
        assert!((sq.eval(3.0) - 16.0).abs() < 1e-9);
    }
}
