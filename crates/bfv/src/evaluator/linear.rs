//! Integer-weighted sums of ciphertexts: the linear layers of batch-packed integer networks
//! (one image per slot, one ciphertext per neuron).

use hecnn_ring::{Backend, Basis, Eval, RnsPoly, backend::SparseRowsOwned};

use super::Evaluator;
use crate::{BfvError, Ciphertext, Plaintext};

impl<B: Backend> Evaluator<B> {
    /// Many weighted sums over the same inputs at once: output `k` is
    /// `Σ_{(j, w) ∈ rows[k]} w·cts[j] + biases[k]`, every weight and bias an integer (taken
    /// mod `t`; the invariant noise grows by `√Σ w²` for independent inputs, `Σ |w|` at
    /// worst). Inputs must share level and degree (1, or 2 for sums of unrelinearized
    /// products: relinearize the sums, not the products). The backend reads each input
    /// once per call, blocked over coefficients, with lazily reduced accumulation.
    ///
    /// # Errors
    /// [`BfvError::InvalidArgument`] for no input, rows and biases of different lengths or
    /// an index out of range; [`BfvError::LevelMismatch`] / [`BfvError::Degree`] for
    /// inputs that differ; [`BfvError::ParamsMismatch`].
    pub fn weighted_sums(
        &self,
        cts: &[&Ciphertext<B>],
        rows: &[Vec<(usize, i64)>],
        biases: &[i128],
    ) -> Result<Vec<Ciphertext<B>>, BfvError> {
        let first = cts.first().ok_or(BfvError::InvalidArgument {
            what: "weighted sums of no input",
        })?;
        if rows.len() != biases.len() {
            return Err(BfvError::InvalidArgument {
                what: "one bias per row",
            });
        }
        let (level, degree) = (first.level(), first.degree());
        for c in cts {
            self.check(c)?;
            if c.level() != level {
                return Err(BfvError::LevelMismatch {
                    lhs: level,
                    rhs: c.level(),
                });
            }
            Self::check_degree(c, degree)?;
        }
        let basis = Basis::q(level + 1);
        let (be, ctx) = (&self.be, self.params.rlwe().ctx());
        let sparse = SparseRowsOwned::new(ctx, basis, rows, cts.len())?;
        let sparse = sparse.view();
        let mut comps: Vec<std::vec::IntoIter<B::Buffer>> = Vec::with_capacity(degree + 1);
        for comp in 0..=degree {
            let inputs: Vec<_> = cts
                .iter()
                .map(|c| {
                    let p = &c.inner().parts()[comp];
                    (p.buffer(), p.basis())
                })
                .collect();
            let mut outs = (0..rows.len())
                .map(|_| be.alloc(basis.len() * ctx.n()))
                .collect::<Result<Vec<_>, _>>()?;
            be.weighted_sums(ctx, basis, &inputs, sparse, &mut outs);
            comps.push(outs.into_iter());
        }
        let t = self.params.t() as i128;
        let mut out = Vec::with_capacity(rows.len());
        for &bias in biases {
            let parts = comps
                .iter_mut()
                .map(|it| it.next().map(|b| RnsPoly::<B, Eval>::from_buffer(b, basis)))
                .collect::<Option<Vec<_>>>()
                .ok_or(BfvError::InvalidArgument {
                    what: "weighted sums",
                })?;
            let mut ct = self.wrap(hecnn_rlwe::Ciphertext::from_parts(parts)?);
            let b = bias.rem_euclid(t) as u64;
            if b != 0 {
                self.add_plain_assign(&mut ct, &Plaintext::constant(&self.params, b)?)?;
            }
            out.push(ct);
        }
        Ok(out)
    }
}
