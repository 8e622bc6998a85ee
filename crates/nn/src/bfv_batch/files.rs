//! BFV plans and batches of BFV ciphertexts as files: the compiler's checksummed envelope,
//! checked again when read (a plan is untrusted input to whoever loads it).

use std::{path::Path, sync::Arc};

use hecnn_bfv::{BfvParams, Ciphertext};
use hecnn_ring::Backend;

use super::{BfvPlan, Crt, Instances, bfv_error};
use crate::{
    NnError,
    compile::envelope::{self, Kind},
    quant::QuantLayer,
};

const PLAN: Kind = Kind {
    what: "BFV plan",
    magic: *b"HBFP",
    version: 1,
    remedy: "compile the model again with this build (hecnn compile --scheme bfv)",
    limit: MAX_PLAN_BYTES,
};

const BATCH: Kind = Kind {
    what: "BFV ciphertexts",
    magic: *b"HBFC",
    version: 1,
    remedy: "encrypt (or run) again with this build",
    limit: MAX_BATCH_BYTES,
};

/// Largest BFV plan file read (1 GiB).
pub const MAX_PLAN_BYTES: u64 = 1 << 30;
/// Largest file of BFV ciphertexts read (64 GiB); a plan bounds it further
/// ([`BfvPlan::batch_bytes_limit`]).
pub const MAX_BATCH_BYTES: u64 = 64 << 30;
/// Most layers a plan may have.
pub const MAX_PLAN_LAYERS: usize = 256;
/// Most weights (and biases) a plan may have in all.
pub const MAX_PLAN_TERMS: usize = 1 << 28;

impl BfvPlan {
    /// The plan in its checksummed envelope.
    ///
    /// # Errors
    /// Serialization failures.
    pub fn to_bytes(&self) -> Result<Vec<u8>, NnError> {
        envelope::seal(PLAN, self)
    }

    /// Whether `bytes` look like a BFV plan (its magic number).
    pub fn is_plan(bytes: &[u8]) -> bool {
        envelope::is(PLAN, bytes)
    }

    /// Reads and checks a plan: envelope, then every structural invariant the runtime
    /// relies on (layer shapes and indices, one flag and one budget per layer, plaintext
    /// moduli that batch on the ring and recombine), so a damaged or hostile file is an
    /// error, never a panic.
    ///
    /// # Errors
    /// [`NnError::Format`], [`NnError::Version`], [`NnError::Checksum`], [`NnError::TooLarge`]
    /// and parameter errors.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NnError> {
        let plan = Self::from_bytes_allowing_insecure(bytes)?;
        if plan.ring.security.bits().is_none() {
            return Err(NnError::Mismatch {
                what: "security level",
                expected: "128, 192 or 256 bits, checked".into(),
                found: format!("{}: compile the model again", plan.ring.security),
            });
        }
        Ok(plan)
    }

    /// As [`BfvPlan::from_bytes`], also accepting a plan on unchecked (insecure) toy
    /// parameters: for tests and reproductions only.
    ///
    /// # Errors
    /// As [`BfvPlan::from_bytes`], except the security check.
    pub fn from_bytes_allowing_insecure(bytes: &[u8]) -> Result<Self, NnError> {
        let mut plan: Self = envelope::open(PLAN, bytes)?;
        plan.validate()?;
        Ok(plan)
    }

    /// Writes the plan to `path` atomically.
    ///
    /// # Errors
    /// [`NnError::Io`].
    pub fn save(&self, path: &Path) -> Result<(), NnError> {
        crate::data::write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a plan from `path` (at most [`MAX_PLAN_BYTES`]).
    ///
    /// # Errors
    /// As [`BfvPlan::from_bytes`], and [`NnError::Io`].
    pub fn load(path: &Path) -> Result<Self, NnError> {
        Self::from_bytes(&crate::compile::read_bounded(path, MAX_PLAN_BYTES)?)
    }

    /// The largest file of `per_instance` ciphertexts per instance a reader of this plan
    /// accepts: every ciphertext at its largest (degree 2, every prime) plus the envelope.
    ///
    /// # Errors
    /// Parameter errors.
    pub fn batch_bytes_limit(&self, per_instance: usize) -> Result<u64, NnError> {
        let rlwe = self.rlwe()?;
        let one = hecnn_rlwe::serial::ciphertext_limit(&rlwe) as u64 + 256;
        Ok((per_instance as u64)
            .saturating_mul(self.moduli.len() as u64)
            .saturating_mul(one)
            .saturating_add(4096)
            .min(MAX_BATCH_BYTES))
    }

    /// BLAKE3 of the plan's bytes: ciphertext files name the plan they belong to.
    ///
    /// # Errors
    /// Serialization failures.
    pub fn fingerprint(&self) -> Result<[u8; 32], NnError> {
        Ok(*blake3::hash(&self.to_bytes()?).as_bytes())
    }

    /// Checks what the runtime relies on and re-derives what exactness rests on: the
    /// worst-case bound (the stored one must be what the network gives), moduli whose exact
    /// product exceeds twice it, the relinearization schedule, and a positive predicted
    /// budget under every modulus (the stored budgets are replaced by the recomputed ones).
    /// The checksum is not a signature: an edited plan must fail here, not decrypt to
    /// wrong integers.
    fn validate(&mut self) -> Result<(), NnError> {
        let bad = |reason: String| NnError::Format {
            what: PLAN.what,
            reason,
        };
        self.quant
            .check_structure(crate::ir::MAX_INPUT_VALUES, MAX_PLAN_LAYERS, MAX_PLAN_TERMS)
            .map_err(bad)?;
        let layers = self.quant.layers();
        if self.lazy.len() != layers.len() || self.budgets.len() != layers.len() {
            return Err(bad(
                "one relinearization flag and one budget per layer".into()
            ));
        }
        for (i, layer) in layers.iter().enumerate() {
            if let QuantLayer::Square { node } = layer
                && self.lazy[i]
                && !matches!(layers.get(i + 1), Some(QuantLayer::Linear { .. }))
            {
                return Err(bad(format!(
                    "square '{node}' waits for a linear layer that does not follow"
                )));
            }
        }
        if self.lazy != super::lazy_squares(&self.quant) {
            return Err(bad(
                "a relinearization schedule other than the planner's".into()
            ));
        }
        let bound = self.quant.bounds()?.output_magnitude();
        if bound != self.output_bound {
            return Err(bad(format!(
                "an output bound of {} where the network gives {bound}",
                self.output_bound
            )));
        }
        let crt = Crt::new(&self.moduli)?;
        if !super::holds(crt.product(), bound) {
            return Err(bad(format!(
                "plaintext moduli of product {} cannot hold outputs within ±{bound}",
                crt.product()
            )));
        }
        // The moduli must batch on the ring, and the network's noise must fit each of them.
        let rlwe = self.rlwe()?;
        let mut worst: Option<Vec<f64>> = None;
        for &t in &self.moduli {
            let p = BfvParams::new(Arc::clone(&rlwe), t).map_err(|e| bfv_error("plan", e))?;
            if !p.batching() {
                return Err(bad(format!(
                    "plaintext modulus {t} does not batch on the ring"
                )));
            }
            let b = super::predict(&rlwe, t, &self.quant, &self.lazy)
                .map_err(|e| bfv_error("plan", e))?;
            if super::floor_budget(&b) <= 0.0 {
                return Err(bad(format!(
                    "the network's noise exhausts the budget under plaintext modulus {t}"
                )));
            }
            if worst
                .as_ref()
                .is_none_or(|w| super::floor_budget(&b) < super::floor_budget(w))
            {
                worst = Some(b);
            }
        }
        self.budgets = worst.unwrap_or_default();
        Ok(())
    }
}

/// The body of a file of BFV ciphertexts.
#[derive(serde::Serialize, serde::Deserialize)]
struct BatchBody {
    /// [`BfvPlan::fingerprint`] of the plan they belong to.
    plan: [u8; 32],
    /// Images in the batch.
    images: u64,
    /// Per instance, every ciphertext's bytes.
    instances: Vec<Vec<Vec<u8>>>,
}

/// Serializes a batch of ciphertexts (`cts[instance][k]`) for `images` images under `plan`.
///
/// # Errors
/// Ciphertexts of other parameters; the wrong number of instances.
pub fn batch_to_bytes<B: Backend>(
    plan: &BfvPlan,
    params: &[Arc<BfvParams>],
    be: &B,
    images: usize,
    cts: &[Vec<Ciphertext<B>>],
) -> Result<Vec<u8>, NnError> {
    if cts.len() != params.len() {
        return Err(NnError::Mismatch {
            what: "ciphertext instances",
            expected: params.len().to_string(),
            found: cts.len().to_string(),
        });
    }
    let instances = cts
        .iter()
        .zip(params)
        .map(|(list, p)| list.iter().map(|ct| ct.to_bytes(be, p)).collect())
        .collect::<Result<_, _>>()
        .map_err(|e| bfv_error("ciphertexts", e))?;
    envelope::seal(
        BATCH,
        &BatchBody {
            plan: plan.fingerprint()?,
            images: images as u64,
            instances,
        },
    )
}

/// Reads a batch written by [`batch_to_bytes`] for `plan`: the plan's fingerprint, the
/// number of instances and of ciphertexts per instance (`per_instance`), and every
/// ciphertext against its instance's parameters (`t` included).
///
/// # Errors
/// Files of another plan or damaged ones; ciphertexts of other parameters.
pub fn batch_from_bytes<B: Backend>(
    plan: &BfvPlan,
    params: &[Arc<BfvParams>],
    be: &B,
    per_instance: usize,
    bytes: &[u8],
) -> Result<(usize, Instances<B>), NnError> {
    let body: BatchBody = envelope::open(BATCH, bytes)?;
    if body.plan != plan.fingerprint()? {
        return Err(NnError::Mismatch {
            what: "BFV ciphertexts",
            expected: "ciphertexts made for this plan".into(),
            found: "ciphertexts of another compiled model".into(),
        });
    }
    let images = usize::try_from(body.images)
        .ok()
        .filter(|&n| (1..=plan.slots()).contains(&n))
        .ok_or_else(|| NnError::Format {
            what: BATCH.what,
            reason: format!(
                "{} images in a batch of {} slots",
                body.images,
                plan.slots()
            ),
        })?;
    if body.instances.len() != params.len()
        || body.instances.iter().any(|l| l.len() != per_instance)
    {
        return Err(NnError::Mismatch {
            what: "BFV ciphertexts",
            expected: format!("{} instances of {per_instance}", params.len()),
            found: format!("{} instances", body.instances.len()),
        });
    }
    let cts = body
        .instances
        .iter()
        .zip(params)
        .map(|(list, p)| {
            list.iter()
                .map(|b| Ciphertext::from_bytes(be, p, b))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| bfv_error("ciphertexts", e))?;
    Ok((images, cts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Model, Op, Tensor,
        ir::{Dense, Node},
        quant::{QuantModel, QuantSpec},
    };
    use hecnn_rlwe::{ParamsLiteral, SecretDistribution, SecurityLevel};

    fn plan() -> BfvPlan {
        let node = |name: &str, op, inputs| Node {
            name: name.into(),
            op,
            inputs,
        };
        let model = Model {
            name: "t".into(),
            input_shape: [1, 1, 4],
            nodes: vec![
                node("x", Op::Input, vec![]),
                node("flat", Op::Flatten, vec![0]),
                node(
                    "fc",
                    Op::Dense(Dense {
                        weight: Tensor::new(
                            vec![3, 4],
                            vec![
                                0.5, -0.25, 1.0, 0.125, 0.3, 0.2, -0.1, 0.9, 1.0, 1.0, -1.0, 0.5,
                            ],
                        )
                        .unwrap(),
                        bias: vec![0.1, 0.0, -0.2],
                    }),
                    vec![1],
                ),
                node("sq", Op::Poly(vec![0.0, 0.0, 1.0]), vec![2]),
                node(
                    "out",
                    Op::Dense(Dense {
                        weight: Tensor::new(vec![2, 3], vec![1.0, -0.5, 0.25, 0.75, 0.5, -1.0])
                            .unwrap(),
                        bias: vec![0.0, 0.3],
                    }),
                    vec![3],
                ),
            ],
            output: 4,
        };
        let quant = QuantModel::quantize(&model, &QuantSpec::default()).unwrap();
        let ring = ParamsLiteral {
            log_n: 10,
            log_q: vec![45; 3],
            log_p: vec![45],
            dnum: None,
            secret: SecretDistribution::Ternary,
            security: SecurityLevel::UncheckedForReproduction,
        };
        super::super::plan(
            quant,
            &super::super::BfvOptions {
                ring: Some(ring),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn reread(p: &BfvPlan) -> Result<BfvPlan, NnError> {
        BfvPlan::from_bytes_allowing_insecure(&envelope::seal(PLAN, p).unwrap())
    }

    #[test]
    fn edited_plans_are_refused_where_exactness_rests_on_them() {
        let good = plan();
        assert_eq!(reread(&good).unwrap(), good);
        // A smaller stored bound (a larger weight would do the same).
        let mut p = good.clone();
        p.output_bound /= 2;
        assert!(matches!(reread(&p), Err(NnError::Format { .. })));
        // Moduli too small for the outputs.
        let mut p = good.clone();
        p.moduli = vec![12289];
        assert!(reread(&p).is_err());
        // Another relinearization schedule.
        let mut p = good.clone();
        p.lazy = vec![false; p.lazy.len()];
        assert!(matches!(reread(&p), Err(NnError::Format { .. })));
        // Budgets are recomputed, not trusted.
        let mut p = good.clone();
        p.budgets = vec![1e9; p.budgets.len()];
        assert_eq!(reread(&p).unwrap().budgets, good.budgets);
        // Unchecked parameters need the explicit opt-in.
        let bytes = good.to_bytes().unwrap();
        assert!(matches!(
            BfvPlan::from_bytes(&bytes),
            Err(NnError::Mismatch {
                what: "security level",
                ..
            })
        ));
    }
}
