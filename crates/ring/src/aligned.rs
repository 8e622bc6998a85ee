//! 64-byte aligned, zero-initialised `u64` storage (one cache line / one AVX-512 register).

use bytemuck::{Pod, Zeroable};

#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// A heap buffer of `u64` words whose start is 64-byte aligned.
#[derive(Clone, Debug, Default)]
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// A zeroed buffer of `len` words.
    pub fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line::default(); len.div_ceil(8)],
            len,
        }
    }

    /// Copies `data` into a new aligned buffer.
    pub fn from_slice(data: &[u64]) -> Self {
        let mut v = Self::zeroed(data.len());
        v.as_mut_slice().copy_from_slice(data);
        v
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no words.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The words as a slice.
    pub fn as_slice(&self) -> &[u64] {
        &bytemuck::cast_slice::<Line, u64>(&self.lines)[..self.len]
    }

    /// The words as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [u64] {
        &mut bytemuck::cast_slice_mut::<Line, u64>(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligned_to_64_bytes() {
        let v = super::AlignedVec::zeroed(100);
        assert_eq!(v.as_slice().as_ptr() as usize % 64, 0);
        assert_eq!(v.len(), 100);
        assert!(v.as_slice().iter().all(|&x| x == 0));
    }
}
