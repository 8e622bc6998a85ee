//! Where a value's neurons sit in the slots.
//!
//! A *grid* holds a `C×H×W` value in frames of `fh × fw` slots (row-major, `frames_per_ct =
//! slots / (fh·fw)` frames per ciphertext). With gaps `(gy, gx)`, pixel `(y, x)` of a channel
//! sits at row `gy·y` and column `gx·x` of its frame, and the `gy·gx` channels that share a
//! frame are multiplexed into the gaps (channel offset `(a, b)`, `a < gy`, `b < gx`). A
//! strided convolution or pooling whose output keeps its input's frame and multiplies the
//! gaps by its stride needs only the diagonals of its kernel's offsets, with no re-packing
//! (the multiplexed layouts of Lee et al. and HyPHEN's gap packing). The planner prices that
//! gapped grid against a dense one and keeps the cheaper; when the gapped grid does not fit
//! the slots, the dense grid (a re-pack folded into the same diagonals) is the fallback.
//!
//! A *vector* puts neuron `o` at flat position `o` (ciphertext `o / slots`). A *summed*
//! vector (dense layers with few outputs, Halevi–Shoup's hybrid method) computes partial
//! sums at every slot `s ≡ o (mod m)` and adds them with `log2(slots / m)` rotations.

/// A grid layout (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grid {
    /// `C, H, W` of the value.
    pub chw: [usize; 3],
    /// Gaps `(gy, gx)` between a channel's pixels.
    pub gap: (usize, usize),
    /// Frame `(fh, fw)` in slots.
    pub frame: (usize, usize),
}

impl Grid {
    /// The input layout: gap 1, one frame per channel.
    pub fn dense(chw: [usize; 3]) -> Self {
        Self {
            chw,
            gap: (1, 1),
            frame: (chw[1], chw[2]),
        }
    }

    fn frame_len(&self) -> usize {
        self.frame.0 * self.frame.1
    }

    /// Whether the value fits its frames and a frame fits a ciphertext.
    pub fn fits(&self, slots: usize) -> bool {
        let [_, h, w] = self.chw;
        self.gap.0 * h <= self.frame.0
            && self.gap.1 * w <= self.frame.1
            && self.frame_len() <= slots
            && self.frame_len() > 0
    }

    /// Flat position (`ciphertext · slots + slot`) of every neuron, `C×H×W` order.
    /// Requires [`Grid::fits`].
    pub fn positions(&self, slots: usize) -> Vec<usize> {
        let [c, h, w] = self.chw;
        let (gy, gx) = self.gap;
        let per_ct = slots / self.frame_len();
        let mut out = Vec::with_capacity(c * h * w);
        for ch in 0..c {
            let frame = ch / (gy * gx);
            let (a, b) = ((ch % (gy * gx)) / gx, ch % gx);
            let base = (frame / per_ct) * slots + (frame % per_ct) * self.frame_len();
            for y in 0..h {
                for x in 0..w {
                    out.push(base + (gy * y + a) * self.frame.1 + gx * x + b);
                }
            }
        }
        out
    }

    /// A short description for reports.
    pub fn describe(&self, slots: usize) -> String {
        let frames = self.chw[0].div_ceil(self.gap.0 * self.gap.1);
        format!(
            "grid: {frames} frames of {}×{} ({} per ciphertext), gap {}×{}",
            self.frame.0,
            self.frame.1,
            slots / self.frame_len(),
            self.gap.0,
            self.gap.1,
        )
    }
}

/// Ciphertexts that flat positions occupy (at least one).
pub(crate) fn cts_of(positions: &[usize], slots: usize) -> usize {
    positions.iter().max().map_or(1, |&m| m / slots.max(1) + 1)
}

/// How a linear stage places its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// Every output neuron at the given flat position.
    Place(Vec<usize>),
    /// Output `o` summed from partial rows at every slot `≡ o (mod m)` of one ciphertext.
    Summed { m: usize },
}

impl Target {
    /// Flat positions of the stage's outputs once it has run.
    pub fn positions(&self, outputs: usize) -> Vec<usize> {
        match self {
            Self::Place(p) => p.clone(),
            Self::Summed { .. } => (0..outputs).collect(),
        }
    }

    /// The rotate-and-add steps after the transform (none for [`Target::Place`]).
    pub fn sum_steps(&self, slots: usize) -> Vec<i64> {
        match *self {
            Self::Place(_) => Vec::new(),
            Self::Summed { m } => {
                let mut steps = Vec::new();
                let mut s = m;
                while s < slots {
                    steps.push(s as i64);
                    s *= 2;
                }
                steps
            }
        }
    }

    /// Ciphertexts the stage's transform writes.
    pub fn cts(&self, slots: usize) -> usize {
        match self {
            Self::Place(p) => cts_of(p, slots),
            Self::Summed { .. } => 1,
        }
    }

    /// Calls `f(v, u, k, slot, neuron j, row o)` for every matrix entry `(o, j)` of `rows`
    /// (inputs at `input`): output ciphertext `v`, input ciphertext `u`, diagonal `k`, and
    /// the output slot where the diagonal holds the entry.
    pub fn entries(
        &self,
        rows: &[crate::linear::Row],
        input: &[usize],
        slots: usize,
        mut f: impl FnMut(usize, usize, i64, usize, f64),
    ) {
        for (o, row) in rows.iter().enumerate() {
            for &(j, w) in &row.terms {
                let p = input[j];
                let (u, sp) = (p / slots, p % slots);
                match self {
                    Self::Place(place) => {
                        let q = place[o];
                        let (v, so) = (q / slots, q % slots);
                        let k = (sp + slots - so) % slots;
                        f(v, u, k as i64, so, w);
                    }
                    Self::Summed { m } => {
                        let k = (sp + m * slots - o) % m;
                        let s = (sp + slots - k) % slots;
                        f(0, u, k as i64, s, w);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_positions_are_distinct_and_multiplexed() {
        let g = Grid {
            chw: [5, 3, 3],
            gap: (2, 2),
            frame: (6, 6),
        };
        assert!(g.fits(64));
        let p = g.positions(64);
        let mut s = p.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), p.len());
        // Channel 1 is channel 0 shifted by one column; channel 4 starts the second frame,
        // which does not fit beside the first in 64 slots, so it opens ciphertext 1.
        assert_eq!(p[9], p[0] + 1);
        assert_eq!(p[3], 2 * 6);
        assert_eq!(p[4 * 9], 64);
    }

    #[test]
    fn summed_entries_land_on_the_residue_of_their_output() {
        let rows = vec![
            crate::linear::Row {
                terms: (0..8).map(|j| (j, 1.0)).collect(),
                bias: 0.0,
            };
            3
        ];
        let input: Vec<usize> = (0..8).map(|j| 3 * j).collect();
        let t = Target::Summed { m: 4 };
        t.entries(&rows, &input, 32, |v, _, k, s, _| {
            assert_eq!(v, 0);
            assert!((0..4).contains(&k));
            assert!(s < 32);
        });
        let mut seen = Vec::new();
        t.entries(&rows[..1], &input, 32, |_, _, k, s, _| {
            assert_eq!(s % 4, 0, "row 0's partial sums sit at slots ≡ 0 (mod 4)");
            seen.push((s + k as usize) % 32);
        });
        seen.sort_unstable();
        assert_eq!(seen, input);
        assert_eq!(t.sum_steps(32), vec![4, 8, 16]);
    }
}
