//! Stand-in for the AVX-512 IFMA kernels on other architectures: never available, so every
//! caller takes the scalar path.

use crate::modulus::Modulus;

/// Whether IFMA kernels are available (never, on this architecture).
pub fn ifma_available() -> bool {
    false
}

/// Never constructed on this architecture.
#[derive(Clone, Copy, Debug)]
pub struct IfmaModulus(());

#[allow(missing_docs, clippy::unused_self)]
impl IfmaModulus {
    pub fn new(_m: &Modulus) -> Option<Self> {
        None
    }
    pub fn shoup(&self, _w: u64) -> u64 {
        0
    }
    pub fn mul_assign(&self, _d: &mut [u64], _s: &[u64]) -> bool {
        false
    }
    pub fn mul_shoup_assign(&self, _d: &mut [u64], _w: u64, _ws: u64) -> bool {
        false
    }
    pub fn sub_mul_shoup_assign(&self, _d: &mut [u64], _s: &[u64], _w: u64, _ws: u64) -> bool {
        false
    }
    pub fn mul_sum(
        &self,
        _o: &mut [u64],
        _a: &[&[u64]],
        _b: &[&[u64]],
        _p: Option<&[u32]>,
        _acc: bool,
    ) -> bool {
        false
    }
    pub fn mul_sum_pair(&self, _o: [&mut [u64]; 2], _a: &[&[u64]], _b: [&[&[u64]]; 2]) -> bool {
        false
    }
    pub fn mul_sum_pair_blocked(
        &self,
        _o: [&mut [u64]; 2],
        _a: &[&[u64]],
        _b: [&[&[u64]]; 2],
    ) -> bool {
        false
    }
    pub fn dot_const(&self, _o: &mut [u64], _y: &[&[u64]], _c: &[u64], _wide: bool) -> bool {
        false
    }
    pub fn dot_lazy(&self, _o: &mut [u64], _y: &[&[u64]], _w: &[u64], _acc: bool) -> bool {
        false
    }
    pub fn weighted_sums_limb(
        &self,
        _o: &mut [&mut [u64]],
        _i: &[&[u64]],
        _r: &[usize],
        _c: &[u32],
        _w: &[u64],
    ) -> bool {
        false
    }
    pub fn reduce_assign(&self, _d: &mut [u64]) -> bool {
        false
    }
}

/// Never constructed on this architecture.
#[derive(Clone, Copy, Debug)]
pub struct WideModulus(());

#[allow(missing_docs, clippy::unused_self)]
impl WideModulus {
    pub fn new(_m: &Modulus) -> Option<Self> {
        None
    }
    pub fn dot_const(&self, _o: &mut [u64], _y: &[&[u64]], _c: &[u64]) -> bool {
        false
    }
    pub fn mul_sum(&self, _o: &mut [u64], _a: &[&[u64]], _b: &[&[u64]], _acc: bool) -> bool {
        false
    }
    pub fn mul_sum_pair(&self, _o: [&mut [u64]; 2], _a: &[&[u64]], _b: [&[&[u64]]; 2]) -> bool {
        false
    }
}
