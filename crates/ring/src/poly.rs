//! RNS polynomials: one limb-major buffer `[limb][n]` owned by a backend, a basis
//! descriptor, and the representation domain in the type.

use std::marker::PhantomData;

use crate::{Backend, Basis, RingError, RnsContext};

/// Coefficient representation (marker type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coeff;
/// Evaluation (NTT) representation (marker type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eval;

/// A representation domain: [`Coeff`] or [`Eval`].
pub trait Domain: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// Whether this is the evaluation (NTT) domain.
    const IS_EVAL: bool;
}
impl Domain for Coeff {
    const IS_EVAL: bool = false;
}
impl Domain for Eval {
    const IS_EVAL: bool = true;
}

/// A polynomial of `Z_Q[X]/(X^n+1)` in RNS form, stored limb-major on a backend.
///
/// The buffer may hold more limbs than are live (dropping a level only shrinks the basis).
pub struct RnsPoly<B: Backend, D: Domain> {
    buf: B::Buffer,
    basis: Basis,
    _domain: PhantomData<D>,
}

impl<B: Backend, D: Domain> Clone for RnsPoly<B, D> {
    fn clone(&self) -> Self {
        Self {
            buf: self.buf.clone(),
            basis: self.basis,
            _domain: PhantomData,
        }
    }
}

impl<B: Backend, D: Domain> std::fmt::Debug for RnsPoly<B, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RnsPoly")
            .field("basis", &self.basis)
            .field("eval", &D::IS_EVAL)
            .finish_non_exhaustive()
    }
}

impl<B: Backend, D: Domain> RnsPoly<B, D> {
    /// The zero polynomial over `basis`.
    ///
    /// # Errors
    /// Backend allocation failure.
    pub fn zero(be: &B, ctx: &RnsContext, basis: Basis) -> Result<Self, RingError> {
        Ok(Self {
            buf: be.alloc(basis.len() * ctx.n())?,
            basis,
            _domain: PhantomData,
        })
    }

    /// Uploads host limbs (`basis.len() · n` words, each limb reduced modulo its prime).
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`] for a wrong length, [`RingError::UnreducedInput`] when a
    /// word is not below its modulus.
    pub fn from_host(
        be: &B,
        ctx: &RnsContext,
        basis: Basis,
        host: &[u64],
    ) -> Result<Self, RingError> {
        let n = ctx.n();
        if host.len() != basis.len() * n {
            return Err(RingError::LengthMismatch {
                expected: basis.len() * n,
                found: host.len(),
            });
        }
        if basis.q > ctx.q_count() || basis.p > ctx.p_count() {
            return Err(RingError::BasisOutOfRange {
                basis,
                q: ctx.q_count(),
                p: ctx.p_count(),
            });
        }
        for (pos, limb) in host.chunks_exact(n).enumerate() {
            let q = ctx.limb_modulus(&basis, pos).value();
            if limb.iter().any(|&x| x >= q) {
                return Err(RingError::UnreducedInput { limb: pos });
            }
        }
        Ok(Self {
            buf: be.upload(host)?,
            basis,
            _domain: PhantomData,
        })
    }

    /// Wraps a backend buffer. The caller guarantees the contents are reduced limbs of `basis`.
    pub fn from_buffer(buf: B::Buffer, basis: Basis) -> Self {
        Self {
            buf,
            basis,
            _domain: PhantomData,
        }
    }

    /// Copies the live limbs to the host.
    ///
    /// # Errors
    /// Backend transfer failure.
    pub fn to_host(&self, be: &B, ctx: &RnsContext) -> Result<Vec<u64>, RingError> {
        be.download(&self.buf, self.basis.len() * ctx.n())
    }

    /// The basis of the live limbs.
    pub fn basis(&self) -> Basis {
        self.basis
    }

    /// The backend buffer.
    pub fn buffer(&self) -> &B::Buffer {
        &self.buf
    }

    /// The backend buffer, mutably.
    pub fn buffer_mut(&mut self) -> &mut B::Buffer {
        &mut self.buf
    }

    /// Splits into buffer and basis.
    pub fn into_parts(self) -> (B::Buffer, Basis) {
        (self.buf, self.basis)
    }

    /// Keeps only the first `q` Q limbs (drops levels); only for polynomials without P limbs.
    ///
    /// # Errors
    /// [`RingError::BasisOutOfRange`] if `q` is zero or larger than the live count, or the
    /// polynomial has P limbs.
    pub fn truncate_q(&mut self, q: usize) -> Result<(), RingError> {
        if q == 0 || q > self.basis.q || self.basis.p != 0 {
            return Err(RingError::BasisOutOfRange {
                basis: Basis::q(q),
                q: self.basis.q,
                p: self.basis.p,
            });
        }
        self.basis.q = q;
        Ok(())
    }

    fn check_operand(&self, other: &Basis) -> Result<(), RingError> {
        if other.contains(&self.basis) {
            Ok(())
        } else {
            Err(RingError::BasisMismatch {
                lhs: self.basis,
                rhs: *other,
            })
        }
    }

    /// `self += other` (other's basis must contain self's).
    ///
    /// # Errors
    /// [`RingError::BasisMismatch`].
    pub fn add_assign(&mut self, be: &B, ctx: &RnsContext, other: &Self) -> Result<(), RingError> {
        self.check_operand(&other.basis)?;
        be.add_assign(ctx, self.basis, &mut self.buf, &other.buf, other.basis);
        Ok(())
    }

    /// `self -= other` (other's basis must contain self's).
    ///
    /// # Errors
    /// [`RingError::BasisMismatch`].
    pub fn sub_assign(&mut self, be: &B, ctx: &RnsContext, other: &Self) -> Result<(), RingError> {
        self.check_operand(&other.basis)?;
        be.sub_assign(ctx, self.basis, &mut self.buf, &other.buf, other.basis);
        Ok(())
    }

    /// `self = -self`.
    pub fn neg_assign(&mut self, be: &B, ctx: &RnsContext) {
        be.neg_assign(ctx, self.basis, &mut self.buf);
    }

    /// Multiplies limb `i` by `scalars[i]` (one residue per live limb).
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`] if `scalars` has the wrong length.
    pub fn mul_scalar_assign(
        &mut self,
        be: &B,
        ctx: &RnsContext,
        scalars: &[u64],
    ) -> Result<(), RingError> {
        if scalars.len() != self.basis.len() {
            return Err(RingError::LengthMismatch {
                expected: self.basis.len(),
                found: scalars.len(),
            });
        }
        be.mul_scalar_assign(ctx, self.basis, &mut self.buf, scalars);
        Ok(())
    }

    /// Adds the constant polynomial with residues `scalars` (one per live limb).
    ///
    /// # Errors
    /// [`RingError::LengthMismatch`] if `scalars` has the wrong length.
    pub fn add_scalar_assign(
        &mut self,
        be: &B,
        ctx: &RnsContext,
        scalars: &[u64],
    ) -> Result<(), RingError> {
        if scalars.len() != self.basis.len() {
            return Err(RingError::LengthMismatch {
                expected: self.basis.len(),
                found: scalars.len(),
            });
        }
        be.add_scalar_assign(ctx, self.basis, &mut self.buf, scalars, D::IS_EVAL);
        Ok(())
    }

    /// Applies `X ↦ X^galois`, returning a new polynomial.
    ///
    /// # Errors
    /// [`RingError::InvalidGaloisElement`] or allocation failure.
    pub fn automorphism(&self, be: &B, ctx: &RnsContext, galois: usize) -> Result<Self, RingError> {
        ctx.check_galois(galois)?;
        let mut out = Self::zero(be, ctx, self.basis)?;
        be.automorphism(ctx, self.basis, &self.buf, &mut out.buf, galois, D::IS_EVAL)?;
        Ok(out)
    }
}

impl<B: Backend> RnsPoly<B, Coeff> {
    /// Forward NTT of every live limb.
    pub fn into_eval(mut self, be: &B, ctx: &RnsContext) -> RnsPoly<B, Eval> {
        be.ntt_forward(ctx, self.basis, &mut self.buf);
        RnsPoly::from_buffer(self.buf, self.basis)
    }
}

impl<B: Backend> RnsPoly<B, Eval> {
    /// Inverse NTT of every live limb.
    pub fn into_coeff(mut self, be: &B, ctx: &RnsContext) -> RnsPoly<B, Coeff> {
        be.ntt_inverse(ctx, self.basis, &mut self.buf);
        RnsPoly::from_buffer(self.buf, self.basis)
    }

    /// `self ⊙= other` (pointwise; other's basis must contain self's).
    ///
    /// # Errors
    /// [`RingError::BasisMismatch`].
    pub fn mul_assign(&mut self, be: &B, ctx: &RnsContext, other: &Self) -> Result<(), RingError> {
        self.check_operand(&other.basis)?;
        be.mul_assign(ctx, self.basis, &mut self.buf, &other.buf, other.basis);
        Ok(())
    }

    /// `a ⊙ b` over `basis` into a new polynomial, written in one pass (no copy of `a`
    /// first, as `a.clone()` then [`RnsPoly::mul_assign`] would make).
    ///
    /// # Errors
    /// [`RingError::BasisMismatch`] unless both operands' bases contain `basis`; allocation
    /// failure.
    pub fn product(
        be: &B,
        ctx: &RnsContext,
        basis: Basis,
        a: &Self,
        b: &Self,
    ) -> Result<Self, RingError> {
        let mut out = Self::zero(be, ctx, basis)?;
        out.check_operand(&a.basis)?;
        out.check_operand(&b.basis)?;
        be.mul_sum(
            ctx,
            basis,
            &mut out.buf,
            &[(&a.buf, a.basis)],
            &[(&b.buf, b.basis)],
            None,
            false,
        );
        Ok(out)
    }

    /// `self += a ⊙ b`.
    ///
    /// # Errors
    /// [`RingError::BasisMismatch`].
    pub fn mul_acc(
        &mut self,
        be: &B,
        ctx: &RnsContext,
        a: &Self,
        b: &Self,
    ) -> Result<(), RingError> {
        self.check_operand(&a.basis)?;
        self.check_operand(&b.basis)?;
        be.mul_sum(
            ctx,
            self.basis,
            &mut self.buf,
            &[(&a.buf, a.basis)],
            &[(&b.buf, b.basis)],
            None,
            true,
        );
        Ok(())
    }

    /// Divides by the last live Q prime and rounds (CKKS rescale); the level drops by one.
    ///
    /// # Errors
    /// [`RingError::BasisOutOfRange`] with fewer than two Q limbs or with P limbs.
    pub fn rescale_assign(&mut self, be: &B, ctx: &RnsContext) -> Result<(), RingError> {
        if self.basis.q < 2 || self.basis.p != 0 {
            return Err(RingError::BasisOutOfRange {
                basis: self.basis,
                q: ctx.q_count(),
                p: 0,
            });
        }
        be.rescale(ctx, self.basis, &mut self.buf);
        self.basis.q -= 1;
        Ok(())
    }
}
