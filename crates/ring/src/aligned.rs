//! 64-byte aligned, zero-initialised `u64` storage (one cache line / one AVX-512 register).
//!
//! The buffer over-allocates one cache line of `u64` and starts at the first 64-byte aligned
//! word. Allocating through `vec![0u64; …]` lets the allocator hand out memory that is
//! already zero (fresh pages) without writing it again, which matters for the many large,
//! short-lived polynomial buffers of an evaluation.

const LINE: usize = 8; // u64 words per 64-byte line

/// A heap buffer of `u64` words whose start is 64-byte aligned.
#[derive(Debug, Default)]
pub struct AlignedVec {
    raw: Vec<u64>,
    offset: usize,
    len: usize,
}

fn aligned_offset(v: &[u64]) -> usize {
    let misalign = (v.as_ptr() as usize % 64) / 8;
    (LINE - misalign) % LINE
}

impl AlignedVec {
    /// A zeroed buffer of `len` words.
    pub fn zeroed(len: usize) -> Self {
        let raw = vec![0u64; len + LINE];
        let offset = aligned_offset(&raw);
        Self { raw, offset, len }
    }

    /// Copies `data` into a new aligned buffer (one pass: the words are written once, not
    /// zeroed first).
    pub fn from_slice(data: &[u64]) -> Self {
        let mut raw = Vec::with_capacity(data.len() + LINE);
        // The start of the allocation fixes the offset; the padding words are zero.
        let offset = aligned_offset(&raw);
        raw.resize(offset, 0);
        raw.extend_from_slice(data);
        raw.resize(data.len() + LINE, 0);
        Self {
            raw,
            offset,
            len: data.len(),
        }
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
        &self.raw[self.offset..self.offset + self.len]
    }

    /// The words as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [u64] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
}

impl Clone for AlignedVec {
    fn clone(&self) -> Self {
        // The clone's allocation may sit at another alignment: recompute the offset.
        Self::from_slice(self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligned_to_64_bytes() {
        for len in [0, 1, 100, 1 << 14] {
            let v = super::AlignedVec::zeroed(len);
            assert_eq!(v.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(v.len(), len);
            assert!(v.as_slice().iter().all(|&x| x == 0));
            let c = v.clone();
            assert_eq!(c.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(c.as_slice(), v.as_slice());
        }
    }
}
