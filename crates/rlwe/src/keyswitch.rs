//! Hybrid key switching (special primes `P`, `dnum` digits), relinearization, automorphisms,
//! and hoisted automorphisms (decompose once, rotate many).

use hecnn_ring::{Backend, Basis, Eval, RnsPoly};

use crate::{Ciphertext, GaloisKey, Params, PolyPair, RelinKey, RlweError, SwitchingKey};

/// The gadget decomposition (ModUp of every digit) of a ciphertext's `c_1`, reusable for
/// several automorphisms of the same ciphertext.
pub struct Decomposition<B: Backend> {
    parts: Vec<B::Buffer>,
    q: usize,
}

impl<B: Backend> Decomposition<B> {
    /// Level of the decomposed ciphertext.
    pub fn level(&self) -> usize {
        self.q - 1
    }
}

/// Decomposes `d` (evaluation domain over `Q_l`).
///
/// # Errors
/// [`RlweError::NoSpecialPrimes`]; backend failures.
pub fn decompose<B: Backend>(
    be: &B,
    params: &Params,
    d: &RnsPoly<B, Eval>,
) -> Result<Decomposition<B>, RlweError> {
    if params.p().is_empty() {
        return Err(RlweError::NoSpecialPrimes);
    }
    let q = d.basis().q;
    let parts = be.decompose(params.ctx(), q, d.buffer(), params.digits())?;
    Ok(Decomposition { parts, q })
}

/// Applies a switching key to a decomposition, optionally fused with an evaluation-domain
/// automorphism: returns `(k_0, k_1)` over `Q_l` with `k_0 + k_1·s ≈ σ(d)·s'`.
///
/// # Errors
/// [`RlweError::KeyLevel`] for a key restricted below the decomposition's level; backend
/// failures.
pub fn switch_decomposed<B: Backend>(
    be: &B,
    params: &Params,
    dec: &Decomposition<B>,
    key: &SwitchingKey<B>,
    galois: Option<usize>,
) -> Result<PolyPair<B>, RlweError> {
    let ctx = params.ctx();
    if dec.level() > key.max_level() {
        return Err(RlweError::KeyLevel {
            level: dec.level(),
            key_level: key.max_level(),
        });
    }
    let perm = galois.map(|g| ctx.eval_permutation(g)).transpose()?;
    let mut fresh = Vec::new();
    let buffers = key.digit_buffers(params, be, dec.parts.len(), &mut fresh)?;
    let (k0, k1) = be.key_switch_decomposed(
        ctx,
        dec.q,
        &dec.parts,
        &buffers,
        key.basis,
        perm.as_deref().map(|p| p.as_slice()),
    )?;
    let basis = Basis::q(dec.q);
    Ok((
        RnsPoly::from_buffer(k0, basis),
        RnsPoly::from_buffer(k1, basis),
    ))
}

/// Relinearizes a degree-2 ciphertext to degree 1.
///
/// # Errors
/// [`RlweError::Malformed`] unless the degree is 2; backend failures.
pub fn relinearize<B: Backend>(
    be: &B,
    params: &Params,
    ct: Ciphertext<B>,
    rlk: &RelinKey<B>,
) -> Result<Ciphertext<B>, RlweError> {
    if ct.degree() != 2 {
        return Err(RlweError::Malformed {
            what: "relinearization expects a degree-2 ciphertext",
        });
    }
    let ctx = params.ctx();
    let mut parts = ct.into_parts();
    let c2 = parts.pop().ok_or(RlweError::Malformed { what: "degree" })?;
    let dec = decompose(be, params, &c2)?;
    let (k0, k1) = switch_decomposed(be, params, &dec, &rlk.0, None)?;
    let mut c1 = parts.pop().ok_or(RlweError::Malformed { what: "degree" })?;
    let mut c0 = parts.pop().ok_or(RlweError::Malformed { what: "degree" })?;
    c0.add_assign(be, ctx, &k0)?;
    c1.add_assign(be, ctx, &k1)?;
    Ciphertext::from_parts(vec![c0, c1])
}

/// Applies `X ↦ X^g` to a degree-1 ciphertext and switches back to `s`.
///
/// # Errors
/// Degree other than 1; backend failures.
pub fn apply_galois<B: Backend>(
    be: &B,
    params: &Params,
    ct: &Ciphertext<B>,
    gk: &GaloisKey<B>,
) -> Result<Ciphertext<B>, RlweError> {
    let dec = decompose_ct(be, params, ct)?;
    apply_galois_hoisted(be, params, ct, &dec, gk)
}

/// Decomposes `c_1` of a degree-1 ciphertext for hoisted automorphisms.
///
/// # Errors
/// Degree other than 1; backend failures.
pub fn decompose_ct<B: Backend>(
    be: &B,
    params: &Params,
    ct: &Ciphertext<B>,
) -> Result<Decomposition<B>, RlweError> {
    match ct.parts() {
        [_, c1] => decompose(be, params, c1),
        _ => Err(RlweError::Malformed {
            what: "automorphisms expect a degree-1 ciphertext",
        }),
    }
}

/// Applies `X ↦ X^g` using a precomputed decomposition of `ct`'s `c_1`: one inner product
/// and ModDown per automorphism, the automorphism fused into the inner product.
///
/// # Errors
/// Decomposition of another level; backend failures.
pub fn apply_galois_hoisted<B: Backend>(
    be: &B,
    params: &Params,
    ct: &Ciphertext<B>,
    dec: &Decomposition<B>,
    gk: &GaloisKey<B>,
) -> Result<Ciphertext<B>, RlweError> {
    let ctx = params.ctx();
    let [c0, _] = ct.parts() else {
        return Err(RlweError::Malformed {
            what: "automorphisms expect a degree-1 ciphertext",
        });
    };
    if dec.level() != ct.level() {
        return Err(RlweError::LevelMismatch {
            lhs: ct.level(),
            rhs: dec.level(),
        });
    }
    // The key switches from s to σ⁻¹(s) (see `SecretKey::galois_key`): switch c_1 as it is,
    // then apply σ to (c_0 + v_0, v_1).
    let (mut v0, v1) = switch_decomposed(be, params, dec, &gk.key, None)?;
    v0.add_assign(be, ctx, c0)?;
    Ciphertext::from_parts(vec![
        v0.automorphism(be, ctx, gk.galois)?,
        v1.automorphism(be, ctx, gk.galois)?,
    ])
}
